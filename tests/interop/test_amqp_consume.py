"""Consuming: basic.consume (exclusive, no-ack, cancel, server-sent cancel), basic.get, qos
prefetch, ack/nack/reject with multiple and requeue, the redelivered flag, unacknowledged
messages returned on channel and connection close, and the consumer acknowledgement timeout."""

import time

import pika
import pytest

from amqp_target import (
    TEST_CONSUMER_TIMEOUT_MS,
    channel_close,
    connection_close,
    consume_n,
    get_bodies,
    message_count,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(60, method="signal")


def setup_queue(conn, cleanup, prefix, n=0, **kw):
    """A fresh queue holding messages b'0'..b'n-1' (published under confirms)."""
    ch = conn.channel()
    ch.confirm_delivery()
    q = cleanup.queue(unique(prefix))
    ch.queue_declare(q, **kw)
    for i in range(n):
        ch.basic_publish("", q, b"%d" % i)
    ch.close()
    return q


def pump(conn, until, timeout_s=5.0):
    """Process I/O until `until()` is true (or fail)."""
    deadline = time.monotonic() + timeout_s
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("timed out pumping deliveries")
        conn.process_data_events(0.05)


def test_consume_delivers_in_order_with_consumer_tag(conn, cleanup):
    q = setup_queue(conn, cleanup, "consume", 5)
    ch = conn.channel()
    got = consume_n(conn, ch, q, 5, consumer_tag="my-tag")
    assert [b for _m, _p, b in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert all(m.consumer_tag == "my-tag" and m.routing_key == q and m.exchange == "" for m, _p, _b in got)
    assert [m.delivery_tag for m, _p, _b in got] == [1, 2, 3, 4, 5]
    assert not any(m.redelivered for m, _p, _b in got)


def test_server_generated_consumer_tag(conn, cleanup):
    q = setup_queue(conn, cleanup, "ctag")
    tag = conn.channel().basic_consume(q, lambda *a: None)
    assert tag.startswith("ctag")  # pika generates tags; the broker echoes them in consume-ok


def test_exclusive_consumer(amqp, conn, cleanup):
    q = setup_queue(conn, cleanup, "excl-consumer")
    conn.channel().basic_consume(q, lambda *a: None, exclusive=True)
    other = amqp.connect()
    try:
        assert channel_close(lambda: other.channel().basic_consume(q, lambda *a: None)) == (
            403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
    finally:
        other.close()


def test_exclusive_consume_when_queue_has_consumers(conn, cleanup):
    q = setup_queue(conn, cleanup, "excl-busy")
    conn.channel().basic_consume(q, lambda *a: None)
    assert channel_close(lambda: conn.channel().basic_consume(q, lambda *a: None, exclusive=True)) == (
        403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")


def test_duplicate_consumer_tag_closes_connection(amqp, cleanup):
    """pika refuses a duplicate tag client-side, so this speaks the wire by hand."""
    import struct

    from amqp_target import RawAmqp, enc_shortstr, method_frame

    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.handshake(amqp.user, amqp.password)
        raw.open_channel(1)
        raw.send(method_frame(1, 50, 10, b"\x00\x00" + enc_shortstr("") + b"\x08" + struct.pack(">I", 0)))
        q = raw.recv_method().args().shortstr()
        consume = method_frame(1, 60, 20, b"\x00\x00" + enc_shortstr(q) + enc_shortstr("same") + b"\x00" + struct.pack(">I", 0))
        raw.send(consume)
        assert raw.recv_method().method == (60, 21)  # basic.consume-ok
        raw.send(consume)
        info, closed = raw.expect_close()
        assert info is not None and closed
        assert (info.reply_code, info.reply_text) == (530, "NOT_ALLOWED - attempt to reuse consumer tag 'same'")
        assert (info.class_id, info.method_id) == (60, 20)


def test_consume_from_missing_queue(conn):
    q = unique("missing")
    assert channel_close(lambda: conn.channel().basic_consume(q, lambda *a: None)) == (
        404, f"NOT_FOUND - no queue '{q}' in vhost '/'")


def test_no_ack_consume_removes_messages(conn, cleanup):
    q = setup_queue(conn, cleanup, "noack", 3)
    ch = conn.channel()
    consume_n(conn, ch, q, 3, auto_ack=True)
    ch.close()
    assert message_count(conn.channel(), q) == 0


def test_cancel_stops_deliveries(conn, cleanup):
    q = setup_queue(conn, cleanup, "cancel")
    ch = conn.channel()
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    pub = conn.channel()
    pub.confirm_delivery()
    pub.basic_publish("", q, b"before")
    pump(conn, lambda: got)
    ch.basic_cancel(tag)
    pub.basic_publish("", q, b"after")
    conn.process_data_events(0.3)
    assert got == [b"before"]
    assert get_bodies(pub, q) == [b"after"]


def test_server_sends_cancel_when_queue_deleted(conn, cleanup):
    q = setup_queue(conn, cleanup, "srv-cancel")
    ch = conn.channel()
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    pump(conn, lambda: cancelled)
    assert cancelled == [tag]
    assert ch.is_open  # the channel survives the cancel


def test_basic_get_and_get_empty(conn, cleanup):
    q = setup_queue(conn, cleanup, "get", 2)
    ch = conn.channel()
    m, props, body = ch.basic_get(q)
    assert body == b"0" and m.message_count == 1 and not m.redelivered and m.routing_key == q
    ch.basic_ack(m.delivery_tag)
    m, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"1" and m.message_count == 0
    assert ch.basic_get(q) == (None, None, None)


def test_qos_prefetch_is_honoured(conn, cleanup):
    q = setup_queue(conn, cleanup, "prefetch", 10)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    pump(conn, lambda: len(got) >= 3)
    conn.process_data_events(0.5)
    assert len(got) == 3, "more than prefetch_count deliveries outstanding"
    ch.basic_ack(got[0].delivery_tag)
    pump(conn, lambda: len(got) >= 4)
    conn.process_data_events(0.3)
    assert len(got) == 4
    ch.basic_ack(got[3].delivery_tag, multiple=True)  # acks tags 2..4 as well
    pump(conn, lambda: len(got) >= 7)
    conn.process_data_events(0.3)
    assert len(got) == 7


def test_channel_wide_prefetch_is_shared_by_the_channel_consumers(conn, cleanup):
    """basic.qos global=true: one limit for all the channel's consumers (RabbitMQ 3.x). A
    consumer of an empty queue holds none of it: its sibling gets messages up to the limit."""
    idle = setup_queue(conn, cleanup, "gqos-idle")
    busy = setup_queue(conn, cleanup, "gqos-busy", 6)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2, global_qos=True)
    got = []
    ch.basic_consume(idle, lambda c, m, p, b: got.append((m, b)))
    ch.basic_consume(busy, lambda c, m, p, b: got.append((m, b)))
    pump(conn, lambda: len(got) >= 2)
    conn.process_data_events(0.5)
    assert [b for _m, b in got] == [b"0", b"1"], "the channel-wide limit is 2"
    ch.basic_ack(got[1][0].delivery_tag, multiple=True)
    pump(conn, lambda: len(got) >= 4)
    conn.process_data_events(0.3)
    assert [b for _m, b in got] == [b"0", b"1", b"2", b"3"]
    # A message for the idle queue takes its share of the same limit once there is room.
    pub = conn.channel()
    pub.confirm_delivery()
    pub.basic_publish("", idle, b"idle")
    conn.process_data_events(0.3)
    assert len(got) == 4, "no room left under the channel-wide limit"
    ch.basic_ack(got[2][0].delivery_tag)
    pump(conn, lambda: len(got) >= 5)
    conn.process_data_events(0.3)
    assert len(got) == 5 and got[4][1] in (b"idle", b"4")


def test_qos_prefetch_size_not_supported(conn):
    """RabbitMQ rejects a non-zero prefetch_size."""
    code, text = connection_close(lambda: conn.channel().basic_qos(prefetch_size=1000))
    assert (code, text) == (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)")


def test_ack_multiple(conn, cleanup):
    q = setup_queue(conn, cleanup, "ack-multi", 5)
    ch = conn.channel()
    got = consume_n(conn, ch, q, 5)
    ch.basic_ack(got[2][0].delivery_tag, multiple=True)
    ch.close()  # 3 and 4 were not acked: back to the queue
    assert get_bodies(conn.channel(), q) == [b"3", b"4"]


def test_nack_multiple_requeue_sets_redelivered_and_keeps_order(conn, cleanup):
    q = setup_queue(conn, cleanup, "nack-multi", 4)
    ch = conn.channel()
    ms = [ch.basic_get(q)[0] for _ in range(3)]
    ch.basic_nack(ms[2].delivery_tag, multiple=True, requeue=True)
    out = []
    for _ in range(4):
        m, _p, b = ch.basic_get(q, auto_ack=True)
        out.append((b, m.redelivered))
    # Requeued messages go back to their original positions, marked redelivered.
    assert out == [(b"0", True), (b"1", True), (b"2", True), (b"3", False)]


def test_nack_without_requeue_discards(conn, cleanup):
    q = setup_queue(conn, cleanup, "nack-drop", 2)
    ch = conn.channel()
    m = ch.basic_get(q)[0]
    ch.basic_nack(m.delivery_tag, requeue=False)
    assert get_bodies(ch, q) == [b"1"]


def test_reject_requeue_and_discard(conn, cleanup):
    q = setup_queue(conn, cleanup, "reject", 2)
    ch = conn.channel()
    m = ch.basic_get(q)[0]
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _p, b = ch.basic_get(q)
    assert b == b"0" and m.redelivered
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, _p, b = ch.basic_get(q, auto_ack=True)
    assert b == b"1" and not m.redelivered
    assert ch.basic_get(q)[0] is None


def test_ack_all_with_tag_zero_multiple(conn, cleanup):
    q = setup_queue(conn, cleanup, "ack-all", 3)
    ch = conn.channel()
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    ch.close()
    assert message_count(conn.channel(), q) == 0


@pytest.mark.parametrize("op", ["ack", "nack", "reject", "double-ack"])
def test_unknown_delivery_tag(conn, cleanup, op):
    q = setup_queue(conn, cleanup, "bad-tag", 1)
    ch = conn.channel()
    if op == "double-ack":
        m = ch.basic_get(q)[0]
        ch.basic_ack(m.delivery_tag)
        tag = m.delivery_tag
        fn = lambda: (ch.basic_ack(tag), ch.queue_declare(q, passive=True))  # noqa: E731
    else:
        tag = 99
        action = {"ack": ch.basic_ack, "nack": ch.basic_nack, "reject": ch.basic_reject}[op]
        fn = lambda: (action(tag), ch.queue_declare(q, passive=True))  # noqa: E731
    assert channel_close(fn) == (406, f"PRECONDITION_FAILED - unknown delivery tag {tag}")


def test_unacked_returned_on_channel_close(conn, cleanup):
    q = setup_queue(conn, cleanup, "ret-ch", 3)
    ch = conn.channel()
    consume_n(conn, ch, q, 3)
    assert message_count(conn.channel(), q) == 0
    ch.close()
    ch2 = conn.channel()
    got = [(ch2.basic_get(q, auto_ack=True)) for _ in range(3)]
    assert [b for _m, _p, b in got] == [b"0", b"1", b"2"]
    assert all(m.redelivered for m, _p, _b in got)


def test_unacked_returned_on_connection_close(amqp, conn, cleanup):
    q = setup_queue(conn, cleanup, "ret-conn", 2)
    other = amqp.connect()
    och = other.channel()
    consume_n(other, och, q, 2)
    other.close()
    ch = conn.channel()
    wait_until(lambda: message_count(ch, q) == 2, what="unacked messages back in the queue")
    m, _p, b = ch.basic_get(q, auto_ack=True)
    assert b == b"0" and m.redelivered


def test_unacked_returned_when_consumer_cancelled_and_channel_closed_by_error(conn, cleanup):
    q = setup_queue(conn, cleanup, "ret-err", 1)
    ch = conn.channel()
    consume_n(conn, ch, q, 1)
    channel_close(lambda: ch.queue_declare(unique("missing"), passive=True))
    m, _p, b = conn.channel().basic_get(q, auto_ack=True)
    assert b == b"0" and m.redelivered


def test_round_robin_between_consumers(amqp, conn, cleanup):
    q = setup_queue(conn, cleanup, "rr")
    ch1, ch2 = conn.channel(), conn.channel()
    got1, got2 = [], []
    ch1.basic_consume(q, lambda c, m, p, b: got1.append(b), auto_ack=True)
    ch2.basic_consume(q, lambda c, m, p, b: got2.append(b), auto_ack=True)
    pub = conn.channel()
    pub.confirm_delivery()
    for i in range(10):
        pub.basic_publish("", q, b"%d" % i)
    pump(conn, lambda: len(got1) + len(got2) == 10)
    assert len(got1) == 5 and len(got2) == 5


@pytest.mark.needs_restart
def test_consumer_ack_timeout_closes_channel(restartable, cleanup):
    """The broker runs with a short consumer timeout (TEST_CONSUMER_TIMEOUT_MS): RabbitMQ 3.10
    only has the node-wide `consumer_timeout` (no per-queue argument), checked on the channel
    tick, which the private node runs every 500 ms."""
    conn = restartable.connect()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        q = unique("ack-timeout")
        ch.queue_declare(q)
        ch.basic_publish("", q, b"slow")
        got = []
        closed = []
        ch._impl.add_on_close_callback(lambda _ch, reason: closed.append(reason))
        ch.basic_consume(q, lambda c, m, p, b: got.append(b))
        started = time.monotonic()
        pump(conn, lambda: closed, timeout_s=20)
        elapsed = time.monotonic() - started
        assert got == [b"slow"]
        assert isinstance(closed[0], pika.exceptions.ChannelClosedByBroker), closed
        assert closed[0].reply_code == 406
        assert closed[0].reply_text == (
            f"PRECONDITION_FAILED - delivery acknowledgement on channel {ch.channel_number} timed out. "
            f"Timeout value used: {TEST_CONSUMER_TIMEOUT_MS} ms. This timeout value can be configured, "
            "see consumers doc guide to learn more")
        assert elapsed >= TEST_CONSUMER_TIMEOUT_MS / 1000
        # The message goes back to the queue, redelivered.
        ch2 = conn.channel()
        m, _p, b = ch2.basic_get(q, auto_ack=True)
        assert b == b"slow" and m.redelivered
        ch2.queue_delete(q)
    finally:
        if conn.is_open:
            conn.close()


@pytest.mark.ferry_only(reason="RabbitMQ 3.10 has only the node-wide consumer_timeout; the per-queue "
                               "x-consumer-timeout argument arrived in RabbitMQ 3.12")
def test_per_queue_consumer_timeout_argument(amqp, cleanup):
    """Same close as the node-wide timeout (and RabbitMQ 3.12+'s per-queue one), with the queue's value."""
    conn = amqp.connect()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        q = cleanup.queue(unique("queue-ack-timeout"))
        ch.queue_declare(q, arguments={"x-consumer-timeout": 1000})
        ch.basic_publish("", q, b"slow")
        closed = []
        ch._impl.add_on_close_callback(lambda _ch, reason: closed.append(reason))
        ch.basic_consume(q, lambda *a: None)
        started = time.monotonic()
        pump(conn, lambda: closed, timeout_s=15)
        assert time.monotonic() - started >= 1.0
        assert isinstance(closed[0], pika.exceptions.ChannelClosedByBroker), closed
        assert (closed[0].reply_code, closed[0].reply_text) == (
            406, f"PRECONDITION_FAILED - delivery acknowledgement on channel {ch.channel_number} timed out. "
                 "Timeout value used: 1000 ms. This timeout value can be configured, see consumers doc guide "
                 "to learn more")
        m, _p, b = conn.channel().basic_get(q, auto_ack=True)
        assert b == b"slow" and m.redelivered
    finally:
        if conn.is_open:
            conn.close()


def test_basic_recover_requeue_redelivers_unacked(conn, cleanup):
    q = setup_queue(conn, cleanup, "recover", 2)
    ch = conn.channel()
    first = consume_n(conn, ch, q, 2)
    assert not any(m.redelivered for m, _p, _b in first)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m, b)))
    ch.basic_recover(requeue=True)
    pump(conn, lambda: len(got) >= 2)
    assert [b for _m, b in got] == [b"0", b"1"] and all(m.redelivered for m, _b in got)
    for m, _b in got:
        ch.basic_ack(m.delivery_tag)


def test_basic_recover_without_requeue_not_implemented(amqp):
    from amqp_target import RawAmqp, method_frame

    with RawAmqp(amqp.host, amqp.port) as raw:
        raw.handshake(amqp.user, amqp.password)
        raw.open_channel(1)
        raw.send(method_frame(1, 60, 110, b"\x00"))  # basic.recover requeue=false
        info, closed = raw.expect_close()
        assert info is not None and (info.reply_code, info.reply_text) == (540, "NOT_IMPLEMENTED - requeue=false")
        assert (info.class_id, info.method_id) == (60, 110)


def test_consumer_priorities(conn, cleanup):
    """A consumer with a higher x-priority gets the messages while it has prefetch capacity."""
    q = setup_queue(conn, cleanup, "cprio")
    low, high = conn.channel(), conn.channel()
    low.basic_qos(prefetch_count=10)
    high.basic_qos(prefetch_count=3)
    got_low, got_high = [], []
    low.basic_consume(q, lambda c, m, p, b: got_low.append(m), arguments={"x-priority": 1})
    high.basic_consume(q, lambda c, m, p, b: got_high.append(m), arguments={"x-priority": 10})
    pub = conn.channel()
    pub.confirm_delivery()
    for i in range(5):
        pub.basic_publish("", q, b"%d" % i)
    pump(conn, lambda: len(got_low) + len(got_high) == 5)
    assert len(got_high) == 3 and len(got_low) == 2
