"""Publishing: mandatory and basic.return, publisher confirms (acks, nacks), transactions, and
message properties/headers surviving the broker unchanged."""

import datetime
import struct
import time
from decimal import Decimal

import pika
import pytest

from amqp_target import (
    RawAmqp,
    channel_close,
    close_quietly,
    enc_shortstr,
    get_bodies,
    message_count,
    method_frame,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(30, method="signal")


def declare(ch, cleanup, prefix, **kw):
    q = cleanup.queue(unique(prefix))
    ch.queue_declare(q, **kw)
    return q


def test_mandatory_unroutable_is_returned_with_no_route(conn):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, props, body)))
    x = "amq.direct"
    ch.basic_publish(x, unique("nobody-bound"), b"lost", pika.BasicProperties(message_id="r1"), mandatory=True)
    wait_until(lambda: conn.process_data_events(0.05) or returned, what="basic.return")
    method, props, body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert method.exchange == x and body == b"lost" and props.message_id == "r1"


def test_mandatory_under_confirms_raises_unroutable(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as err:
        ch.basic_publish("", unique("no-such-queue"), b"lost", mandatory=True)
    assert err.value.messages[0].method.reply_code == 312


def test_not_mandatory_unroutable_is_dropped_and_acked(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", unique("no-such-queue"), b"dropped")  # acked, no error


def test_mandatory_routable_is_not_returned(conn, cleanup):
    ch = conn.channel()
    ch.confirm_delivery()
    q = declare(ch, cleanup, "mand-ok")
    ch.basic_publish("", q, b"ok", mandatory=True)
    assert get_bodies(ch, q) == [b"ok"]


def test_immediate_flag_is_not_implemented(amqp):
    """RabbitMQ 3 dropped `immediate`: publishing with it closes the connection with 540."""
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.handshake(amqp.user, amqp.password)
        raw.open_channel(1)
        raw.send(method_frame(1, 60, 40, b"\x00\x00" + enc_shortstr("") + enc_shortstr("q") + b"\x02"))
        from amqp_target import FRAME_HEADER, frame

        raw.send(frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, 0, 0)))
        info, closed = raw.expect_close()
        assert info is not None and (info.reply_code, info.reply_text) == (540, "NOT_IMPLEMENTED - immediate=true")
        assert (info.class_id, info.method_id) == (60, 40)


def test_confirms_ack_every_publish(conn, cleanup):
    ch = conn.channel()
    ch.confirm_delivery()
    q = declare(ch, cleanup, "confirm", durable=True)
    for i in range(100):
        ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    assert message_count(ch, q) == 100


def test_confirm_delivery_tags_by_hand(amqp, cleanup):
    """confirm.select-ok, then one basic.ack per publish with delivery tags 1, 2, 3..."""
    q = cleanup.queue(unique("confirm-raw"))
    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.handshake(amqp.user, amqp.password)
        raw.open_channel(1)
        raw.send(method_frame(1, 50, 10, b"\x00\x00" + enc_shortstr(q) + b"\x00" + struct.pack(">I", 0)))
        assert raw.recv_method().method == (50, 11)
        raw.send(method_frame(1, 85, 10, b"\x00"))
        assert raw.recv_method().method == (85, 11)
        from amqp_target import FRAME_BODY, FRAME_HEADER, frame

        for i in range(3):
            raw.send(method_frame(1, 60, 40, b"\x00\x00" + enc_shortstr("") + enc_shortstr(q) + b"\x00"))
            raw.send(frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, 1, 0)))
            raw.send(frame(FRAME_BODY, 1, b"x"))
        acked = set()
        while len(acked) < 3:
            f = raw.recv_method()
            assert f.method == (60, 80), f  # basic.ack
            d = f.args()
            tag, multiple = struct.unpack(">QB", d.take(9))
            acked |= set(range(1, tag + 1)) if multiple else {tag}
        assert acked == {1, 2, 3}


def test_transaction_commit_and_rollback_of_publishes(conn, cleanup):
    ch = conn.channel()
    q = declare(ch, cleanup, "tx-pub")
    ch.tx_select()
    ch.basic_publish("", q, b"rolled-back")
    assert message_count(ch, q) == 0  # not visible before commit
    ch.tx_rollback()
    ch.basic_publish("", q, b"c1")
    ch.basic_publish("", q, b"c2")
    ch.tx_commit()
    assert get_bodies(conn.channel(), q) == [b"c1", b"c2"]


def test_transaction_commit_and_rollback_of_acks(conn, cleanup):
    setup = conn.channel()
    setup.confirm_delivery()
    q = declare(setup, cleanup, "tx-ack")
    for body in (b"a", b"b"):
        setup.basic_publish("", q, body)
    ch = conn.channel()
    ch.tx_select()
    m1, _, _ = ch.basic_get(q)
    m2, _, _ = ch.basic_get(q)
    ch.basic_ack(m1.delivery_tag)
    ch.tx_rollback()  # the ack of m1 is discarded: m1 and m2 are still unacknowledged
    ch.basic_ack(m2.delivery_tag)
    ch.tx_commit()
    ch.close()  # m1 goes back to the queue, m2 was acknowledged
    m, _, body = setup.basic_get(q, auto_ack=True)
    assert body == b"a" and m.redelivered
    assert setup.basic_get(q)[0] is None


def test_tx_commit_without_select(conn):
    assert channel_close(lambda: conn.channel().tx_commit()) == (406, "PRECONDITION_FAILED - channel is not transactional")
    assert channel_close(lambda: conn.channel().tx_rollback()) == (406, "PRECONDITION_FAILED - channel is not transactional")


def test_tx_and_confirm_do_not_mix(conn):
    ch = conn.channel()
    ch.tx_select()
    assert channel_close(lambda: ch.confirm_delivery()) == (406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")
    ch = conn.channel()
    ch.confirm_delivery()
    assert channel_close(lambda: ch.tx_select()) == (406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode")


def test_properties_and_headers_round_trip(conn, cleanup):
    ch = conn.channel()
    ch.confirm_delivery()
    q = declare(ch, cleanup, "props")
    stamp = int(time.time())
    headers = {
        "str": "text",
        "int": 42,
        "neg": -7,
        "big": 2**40,
        "bool": True,
        "bytes": b"\x00\xffraw",
        "none": None,
        "list": [1, "two", [3]],
        "table": {"nested": {"deep": 1}},
        "decimal": Decimal("3.14"),
        "when": datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).replace(tzinfo=None),
    }
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", headers=headers, delivery_mode=2, priority=3,
        correlation_id="corr-1", reply_to="reply.q", expiration="60000", message_id="msg-1", timestamp=stamp,
        type="order.created", user_id=conn._impl.params.credentials.username, app_id="interop-tests",
    )
    ch.basic_publish("", q, b'{"a": 1}', props)
    method, got, body = ch.basic_get(q, auto_ack=True)
    assert body == b'{"a": 1}'
    for attr in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
                 "expiration", "message_id", "timestamp", "type", "user_id", "app_id"):
        assert getattr(got, attr) == getattr(props, attr), attr
    h = dict(got.headers)
    when = h.pop("when")
    assert when.replace(tzinfo=None) == headers["when"]
    expected = dict(headers)
    expected.pop("when")
    # Field-table strings come back as bytes or str depending on the type tag: compare loosely.
    assert h["str"] == "text" and h["int"] == 42 and h["neg"] == -7 and h["big"] == 2**40
    assert h["bool"] is True and h["bytes"] == b"\x00\xffraw" and h["none"] is None
    assert h["list"] == [1, "two", [3]] and h["table"] == {"nested": {"deep": 1}} and h["decimal"] == Decimal("3.14")


def test_user_id_must_match_the_connection_user(conn, cleanup):
    ch = conn.channel()
    q = declare(ch, cleanup, "userid")
    ch.basic_publish("", q, b"m", pika.BasicProperties(user_id="someone-else"))
    code, text = channel_close(lambda: ch.queue_declare(q, passive=True))
    user = conn._impl.params.credentials.username
    assert (code, text) == (406, f"PRECONDITION_FAILED - user_id property set to 'someone-else' but authenticated user was '{user}'")


@pytest.mark.parametrize("size", [0, 1, 131_072 - 8, 131_072, 1_000_000])
def test_body_sizes(conn, cleanup, size):
    ch = conn.channel()
    ch.confirm_delivery()
    q = declare(ch, cleanup, f"size{size}")
    body = bytes(i % 251 for i in range(size))
    ch.basic_publish("", q, body)
    assert ch.basic_get(q, auto_ack=True)[2] == body


def test_publish_many_then_count(conn, cleanup):
    ch = conn.channel()
    q = declare(ch, cleanup, "many")
    for i in range(2000):
        ch.basic_publish("", q, b"%d" % i)
    wait_until(lambda: message_count(ch, q) == 2000, what="2000 messages")
    assert [int(b) for b in get_bodies(ch, q)] == list(range(2000))



def test_confirming_publisher_is_not_slowed_by_a_saturated_consumer(amqp, conn, cleanup):
    """A one-at-a-time confirming publisher (pika's BlockingChannel waits for each confirm)
    filling a queue whose only consumer sits at its prefetch limit runs at full speed: a
    backlog behind a consumer that is not keeping pace is what the queue is for. (Ferry's
    back-pressure holds confirms only for consumers that would catch up within half a
    second; RabbitMQ does not slow this publisher either.)"""
    ch = conn.channel()
    q = declare(ch, cleanup, "flow-saturated")
    consumer_conn = amqp.connect()
    try:
        cch = consumer_conn.channel()
        cch.basic_qos(prefetch_count=5)
        delivered = []
        cch.basic_consume(q, lambda c, m, p, b: delivered.append(m.delivery_tag))  # never acks
        consumer_conn.process_data_events(0.2)
        ch.confirm_delivery()
        started = time.monotonic()
        for i in range(600):
            ch.basic_publish("", q, b"m%d" % i)
        elapsed = time.monotonic() - started
        consumer_conn.process_data_events(0.2)
        assert len(delivered) == 5
        assert message_count(ch, q) == 595
        # Unthrottled this takes well under a second; holding each confirm past the backlog of
        # 256 for even 50 ms would take over 17 s.
        assert elapsed < 8, f"600 confirmed publishes took {elapsed:.1f}s"
    finally:
        close_quietly(consumer_conn)
