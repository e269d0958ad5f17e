"""AMQP 0-9-1 connection negotiation: protocol header, SASL mechanisms (PLAIN, AMQPLAIN), the
server-properties capabilities table, refused logins, heartbeats, frame-max, channel-max and
many channels per connection."""

import struct
import time

import pika
import pytest

from amqp_target import (
    FRAME_BODY,
    FRAME_HEARTBEAT,
    BrokerClosed,
    ConnectionClosed,
    RawAmqp,
    connection_close,
    enc_shortstr,
    get_bodies,
    message_count,
    method_frame,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(30, method="signal")

# Capabilities a RabbitMQ client library looks for in connection.start (clients switch features
# on from them).
CAPABILITIES = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
]
# What RabbitMQ 3.10 says when a login fails (also sent by Ferry: clients and operators grep it).
LOGIN_REFUSED = "ACCESS_REFUSED - Login was refused using authentication mechanism {}. For details see the broker logfile."


def test_connection_start_advertises_mechanisms_and_capabilities(amqp):
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.recv_start()
        assert raw.version == (0, 9)
        assert "PLAIN" in raw.mechanisms and "AMQPLAIN" in raw.mechanisms, raw.mechanisms
        assert "en_US" in raw.locales
        props = raw.server_properties
        for key in ("product", "version", "platform", "capabilities"):
            assert key in props, f"server properties lack {key!r}: {props}"
        caps = props["capabilities"]
        for cap in CAPABILITIES:
            assert caps.get(cap) is True, f"capability {cap!r} missing or false in {caps}"


@pytest.mark.parametrize("mechanism", ["PLAIN", "AMQPLAIN"])
def test_handshake_by_hand(amqp, mechanism):
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.handshake(amqp.user, amqp.password, mechanism=mechanism)
        assert raw.frame_max >= 4096 and raw.channel_max > 0
        raw.open_channel(1)
        # queue.declare of a server-named exclusive queue works on the hand-made connection.
        raw.send(method_frame(1, 50, 10, b"\x00\x00" + enc_shortstr("") + b"\x08" + struct.pack(">I", 0)))
        f = raw.recv_method()
        assert f.method == (50, 11), f
        assert f.args().shortstr().startswith("amq.gen-")


@pytest.mark.parametrize("mechanism", ["PLAIN", "AMQPLAIN"])
def test_bad_password_gets_access_refused(amqp, mechanism):
    with RawAmqp(amqp.host, amqp.port) as raw:
        with pytest.raises(BrokerClosed) as err:
            raw.handshake(amqp.user, "not-the-password", mechanism=mechanism)
        info = err.value.info
        assert (info.reply_code, info.reply_text) == (403, LOGIN_REFUSED.format(mechanism))


def test_pika_bad_password(amqp):
    code, text = connection_close(lambda: amqp.connect(password="wrong-" + unique("pw")))
    assert (code, text) == (403, LOGIN_REFUSED.format("PLAIN"))


def test_unknown_user(amqp):
    code, text = connection_close(lambda: amqp.connect(user=unique("nobody"), password="x"))
    assert (code, text) == (403, LOGIN_REFUSED.format("PLAIN"))


def test_unknown_mechanism(amqp):
    """RabbitMQ logs `unknown authentication mechanism 'NOT-A-MECHANISM'` (command_invalid) and
    drops the socket without connection.tune or connection.close (after ~3 s)."""
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.recv_start()
        raw.start_ok("NOT-A-MECHANISM", b"x")
        info, closed = raw.expect_close()
        assert closed
        assert info is None, f"RabbitMQ sends no connection.close here, got {info}"


def test_unknown_vhost(amqp):
    vhost = unique("no-such-vhost")
    code, text = connection_close(lambda: amqp.connect(vhost=vhost))
    assert (code, text) == (530, f"NOT_ALLOWED - vhost {vhost} not found")


def test_protocol_header_mismatch_gets_supported_header(amqp):
    """A client speaking another protocol version is told which one the broker speaks."""
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.send(b"AMQP\x01\x01\x00\x0a")
        assert raw.recv_exact(8) == b"AMQP\x00\x00\x09\x01"
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            raw.recv_exact(1)


def test_heartbeats_are_negotiated_and_sent(amqp):
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.handshake(amqp.user, amqp.password, heartbeat=1)
        started = time.monotonic()
        f = raw.recv_method(skip_heartbeats=False)
        assert f.type == FRAME_HEARTBEAT and f.channel == 0, f
        assert time.monotonic() - started < 3.0


def test_silent_client_is_disconnected_after_missed_heartbeats(amqp):
    with RawAmqp(amqp.host, amqp.port, timeout_s=15) as raw:
        raw.handshake(amqp.user, amqp.password, heartbeat=1)
        started = time.monotonic()
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            while True:
                raw.recv_frame()
        # Two to three missed intervals, with scheduling slack.
        assert time.monotonic() - started < 10.0


def test_pika_heartbeat_frame_max_channel_max_negotiated(amqp):
    conn = amqp.connect(heartbeat=7, frame_max=8192, channel_max=16)
    try:
        params = conn._impl.params
        assert params.heartbeat == 7
        assert params.frame_max == 8192
        assert params.channel_max == 16
        # A body several times frame_max crosses the wire as many body frames and comes back whole.
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        body = bytes(range(256)) * 400
        ch.basic_publish("", q, body)
        method, _props, got = ch.basic_get(q, auto_ack=True)
        assert method is not None and got == body
    finally:
        conn.close()


def test_server_tune_and_large_body_frames_by_hand(amqp):
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.handshake(amqp.user, amqp.password, frame_max=4096)
        raw.open_channel(1)
        raw.send(method_frame(1, 50, 10, b"\x00\x00" + enc_shortstr("") + b"\x08" + struct.pack(">I", 0)))
        q = raw.recv_method().args().shortstr()
        body = b"x" * 10_000
        from amqp_target import FRAME_HEADER, frame

        raw.send(method_frame(1, 60, 40, b"\x00\x00" + enc_shortstr("") + enc_shortstr(q) + b"\x00"))
        raw.send(frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, len(body), 0)))
        for i in range(0, len(body), 4096 - 8):
            raw.send(frame(FRAME_BODY, 1, body[i:i + 4096 - 8]))
        raw.send(method_frame(1, 60, 70, b"\x00\x00" + enc_shortstr(q) + b"\x01"))
        f = raw.recv_method()
        assert f.method == (60, 71), f  # basic.get-ok
        header = raw.recv_method()
        assert header.type == FRAME_HEADER
        got = b""
        while len(got) < len(body):
            bf = raw.recv_method()
            assert bf.type == FRAME_BODY and len(bf.payload) + 8 <= 4096
            got += bf.payload
        assert got == body


def test_opening_more_channels_than_channel_max_closes_connection(amqp):
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.handshake(amqp.user, amqp.password, channel_max=2)
        raw.open_channel(1)
        raw.open_channel(2)
        raw.send(method_frame(3, 20, 10, enc_shortstr("")))
        info, closed = raw.expect_close()
        assert info is not None, "broker dropped the socket without connection.close"
        assert info.reply_code == 530
        assert info.reply_text == "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"


def test_many_channels_on_one_connection(amqp, conn, cleanup):
    channels = [conn.channel() for _ in range(200)]
    assert len({c.channel_number for c in channels}) == 200
    q = cleanup.queue(unique("many-ch"))
    channels[0].queue_declare(q, auto_delete=False)
    for i, c in enumerate(channels):
        c.basic_publish("", q, str(i).encode())
    wait_until(lambda: message_count(channels[1], q) == 200, what="200 messages in the queue")
    got = sorted(int(b) for b in get_bodies(channels[-1], q))
    assert got == list(range(200))
    # Closing some channels leaves the others working; a closed channel's number can be reused.
    for c in channels[:100]:
        c.close()
    again = conn.channel()
    again.basic_publish("", q, b"after")
    got = wait_until(lambda: channels[150].basic_get(q, auto_ack=True)[2], what="the message published after closes")
    assert got == b"after"


def test_channel_close_by_client_then_reuse(amqp, conn):
    ch = conn.channel()
    ch.close()
    ch2 = conn.channel()
    assert ch2.is_open
    ch2.queue_declare("", exclusive=True)


def test_connection_close_by_client(amqp):
    conn = amqp.connect()
    conn.channel()
    conn.close()
    assert conn.is_closed


def test_client_properties_reach_the_broker_and_blocked_capability(amqp):
    """pika announces connection.blocked; the broker accepts client properties unchanged."""
    params = amqp.params(client_properties={"connection_name": unique("named-connection")})
    conn = pika.BlockingConnection(params)
    try:
        assert conn.is_open
        caps = conn._impl.server_capabilities
        assert caps.get("connection.blocked") is True
    finally:
        conn.close()


def test_channel_flow(amqp):
    """channel.flow active=true is answered with flow-ok; RabbitMQ refuses active=false with a
    connection close (540), since it uses TCP back-pressure and connection.blocked instead."""
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.handshake(amqp.user, amqp.password)
        raw.open_channel(1)
        raw.send(method_frame(1, 20, 20, b"\x01"))
        f = raw.recv_method()
        assert f.method == (20, 21) and f.args().octet() == 1
        raw.send(method_frame(1, 20, 20, b"\x00"))
        info, closed = raw.expect_close()
        assert info is not None and (info.reply_code, info.reply_text) == (540, "NOT_IMPLEMENTED - active=false")
        assert (info.class_id, info.method_id) == (20, 20)
