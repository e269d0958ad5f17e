"""Hostile bytes on one AMQP connection close that connection with the right error (or drop
it, where RabbitMQ drops it), never hang it or disturb others: a pika client on the same broker
keeps publishing and consuming throughout.

RabbitMQ's FRAME_ERROR texts end with an Erlang term dump (e.g. `{frame_too_large,5000,4088}`),
so for those the tests check the code and the `FRAME_ERROR - ` prefix; the full texts RabbitMQ
3.10 sends are recorded in amqp_rabbitmq_texts.md.
"""

import struct
import threading
import time

import pika
import pytest

from amqp_target import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    RawAmqp,
    ConnectionClosed,
    enc_shortstr,
    frame,
    method_frame,
    unique,
)

pytestmark = pytest.mark.timeout(60, method="signal")

# The steady client's longest tolerated pause between two confirmed round trips.
MAX_STALL_S = 5.0
DECLARE_Q = b"\x00\x00" + enc_shortstr("q") + b"\x08" + struct.pack(">I", 0)
PUBLISH_Q = b"\x00\x00" + enc_shortstr("") + enc_shortstr("q") + b"\x00"


class SteadyClient(threading.Thread):
    """Publishes (with confirms) and gets back messages in a loop on its own connection."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self.target = target
        self.stop = threading.Event()
        self.rounds = 0
        self.max_stall = 0.0
        self.error: BaseException | None = None

    def run(self):
        try:
            conn = self.target.connect()
            ch = conn.channel()
            ch.confirm_delivery()
            q = ch.queue_declare("", exclusive=True).method.queue
            last = time.monotonic()
            while not self.stop.is_set():
                body = b"%d" % self.rounds
                ch.basic_publish("", q, body)
                m, _p, got = ch.basic_get(q, auto_ack=True)
                assert got == body, (got, body)
                self.rounds += 1
                now = time.monotonic()
                self.max_stall = max(self.max_stall, now - last)
                last = now
                time.sleep(0.01)
            conn.close()
        except BaseException as err:  # reported by the test
            self.error = err


@pytest.fixture(scope="module")
def steady(amqp):
    client = SteadyClient(amqp)
    client.start()
    yield client
    client.stop.set()
    client.join(timeout=10)
    assert client.error is None, f"the steady client failed: {client.error!r}"
    assert client.rounds > 0
    assert client.max_stall < MAX_STALL_S, f"the steady client stalled for {client.max_stall:.1f}s"


def opened(amqp, frame_max=None):
    raw = RawAmqp(amqp.host, amqp.port)
    raw.handshake(amqp.user, amqp.password, frame_max=frame_max)
    raw.open_channel(1)
    return raw


def check_steady(steady):
    before = steady.rounds
    deadline = time.monotonic() + MAX_STALL_S
    while steady.rounds == before and time.monotonic() < deadline and steady.error is None:
        time.sleep(0.05)
    assert steady.error is None, repr(steady.error)
    assert steady.rounds > before, "the steady client made no progress"


def test_non_amqp_protocol_header(amqp, steady):
    """An HTTP request instead of the protocol header gets the supported header, then a close."""
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv_exact(8) == b"AMQP\x00\x00\x09\x01"
        info, closed = raw.expect_close()
        assert info is None and closed
    check_steady(steady)


# (name, bytes to send after the handshake, frame_max, expected code, expected text or prefix,
#  class id, method id)
CASES = [
    ("unknown-frame-type", frame(9, 0, b"zz"), None, 501, "FRAME_ERROR - ", 0, 0),
    ("garbage-frame-type", b"\x41\x00\x01\x00\x00\x00\x03abc\xce", None, 501, "FRAME_ERROR - ", 0, 0),
    ("random-garbage", bytes(range(7, 70)), None, 501, "FRAME_ERROR - ", 0, 0),
    ("oversized-body-frame", frame(FRAME_BODY, 1, b"x" * 5000), 4096, 501, "FRAME_ERROR - ", 0, 0),
    ("oversized-declared-size", struct.pack(">BHI", FRAME_METHOD, 1, 0x7FFFFFFF) + b"x" * 100, 4096, 501, "FRAME_ERROR - ", 0, 0),
    ("bad-frame-end", method_frame(1, 20, 40, b"")[:-1] + b"\x00", None, 501, "FRAME_ERROR - ", 0, 0),
    ("truncated-method-arguments", method_frame(1, 50, 10, b"\x00"), None, 501, "FRAME_ERROR - cannot decode <<0>>", 50, 10),
    ("method-on-unopened-channel", method_frame(5, 50, 10, DECLARE_Q), None, 504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10),
    ("channel-method-on-channel-0", method_frame(0, 50, 10, DECLARE_Q), None, 504,
     "CHANNEL_ERROR - unexpected method in connection state running", 50, 10),
    ("second-channel-open", method_frame(1, 20, 10, enc_shortstr("")), None, 504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10),
    ("body-without-header", frame(FRAME_BODY, 1, b"abc"), None, 505,
     "UNEXPECTED_FRAME - expected method frame, got non method frame instead", 0, 0),
    ("header-without-method", frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, 3, 0)), None, 505,
     "UNEXPECTED_FRAME - expected method frame, got non method frame instead", 0, 0),
    ("heartbeat-on-channel-1", frame(FRAME_HEARTBEAT, 1, b""), None, 505, "UNEXPECTED_FRAME - type 8, all octets = <<>>", 0, 0),
    ("method-instead-of-content-header", method_frame(1, 60, 40, PUBLISH_Q) + method_frame(1, 50, 10, DECLARE_Q), None, 505,
     "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead", 60, 40),
    ("content-header-of-wrong-class", method_frame(1, 60, 40, PUBLISH_Q) + frame(FRAME_HEADER, 1, struct.pack(">HHQH", 50, 0, 2, 0)),
     None, 505, "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead", 60, 40),
]


@pytest.mark.parametrize("name,data,frame_max,code,text,class_id,method_id", CASES, ids=[c[0] for c in CASES])
def test_bad_frames_close_the_connection(amqp, steady, name, data, frame_max, code, text, class_id, method_id):
    with opened(amqp, frame_max) as raw:
        raw.send(data)
        info, closed = raw.expect_close()
        assert info is not None, f"{name}: the broker dropped the socket without connection.close"
        assert info.reply_code == code, info
        if text.endswith(" - "):
            assert info.reply_text.startswith(text), info
        else:
            assert info.reply_text == text, info
        assert (info.class_id, info.method_id) == (class_id, method_id), info
        assert closed, "the socket stayed open after connection.close-ok"
    check_steady(steady)


@pytest.mark.parametrize("name,data", [
    ("unknown-method-id", method_frame(1, 60, 99, b"")),
    ("unknown-class-id", method_frame(1, 999, 1, b"")),
])
def test_unknown_methods_drop_the_connection(amqp, steady, name, data):
    """RabbitMQ 3.10 drops the socket on an unknown class or method id without connection.close;
    a connection.close with 503 COMMAND_INVALID or 540 NOT_IMPLEMENTED is accepted as well."""
    with opened(amqp) as raw:
        raw.send(data)
        info, closed = raw.expect_close()
        assert closed
        assert info is None or info.reply_code in (503, 540), info
    check_steady(steady)


def test_truncated_frame_then_disconnect(amqp, steady):
    with opened(amqp) as raw:
        raw.send(method_frame(1, 50, 10, DECLARE_Q)[:5])
    check_steady(steady)


def test_many_garbage_connections(amqp, steady):
    for i in range(30):
        with RawAmqp(amqp.host, amqp.port) as raw:
            raw.send(bytes((i * 37 + j) % 256 for j in range(64)))
            # A bad protocol header is answered with the supported one, then the socket closes.
            assert raw.recv_exact(8) == b"AMQP\x00\x00\x09\x01"
            with pytest.raises((ConnectionClosed, ConnectionResetError)):
                raw.recv_exact(1)
    check_steady(steady)


def test_other_channels_of_a_pika_client_unaffected_by_channel_error(amqp, steady):
    conn = amqp.connect()
    try:
        good = conn.channel()
        bad = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            bad.queue_declare(unique("missing"), passive=True)
        q = good.queue_declare("", exclusive=True).method.queue
        good.confirm_delivery()
        good.basic_publish("", q, b"still-here")
        assert good.basic_get(q, auto_ack=True)[2] == b"still-here"
    finally:
        conn.close()
    check_steady(steady)
