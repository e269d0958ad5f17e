"""Stream queues (`x-queue-type: stream`): a replayable log read over AMQP 0-9-1 with
`x-stream-offset` (first, last, next, a numeric offset, a timestamp); consumers need a prefetch
and manual acknowledgement."""

import datetime
import time

import pika
import pytest

from amqp_target import channel_close, connection_close, unique

pytestmark = pytest.mark.timeout(30, method="signal")


def stream(conn, cleanup, n=0, prefix="stream", **args):
    ch = conn.channel()
    ch.confirm_delivery()
    q = cleanup.queue(unique(prefix))
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "stream", **args})
    for i in range(n):
        ch.basic_publish("", q, b"%d" % i)
    return q, ch


def read(conn, q, offset, want, timeout_s=5.0, quiet_s=0.5):
    """Consume from `offset` until `want` deliveries (or quiet for `quiet_s` after the deadline);
    returns the (body, x-stream-offset) pairs in delivery order."""
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)
    got = []

    def on_msg(c, m, p, b):
        got.append((b, p.headers.get("x-stream-offset")))
        c.basic_ack(m.delivery_tag)

    args = {} if offset is None else {"x-stream-offset": offset}
    tag = ch.basic_consume(q, on_msg, arguments=args)
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    conn.process_data_events(quiet_s)
    ch.basic_cancel(tag)
    ch.close()
    return got


def test_stream_from_first_replays_everything_with_offsets(conn, cleanup):
    q, _ = stream(conn, cleanup, 10)
    got = read(conn, q, "first", 10)
    assert [b for b, _ in got] == [b"%d" % i for i in range(10)]
    assert [o for _, o in got] == list(range(10))
    # Acknowledged messages stay in the log: a second reader gets them all again.
    assert [b for b, _ in read(conn, q, "first", 10)] == [b"%d" % i for i in range(10)]


def test_stream_default_offset_is_next(conn, cleanup):
    q, pub = stream(conn, cleanup, 3)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
    conn.process_data_events(0.5)
    assert got == []
    pub.basic_publish("", q, b"new")
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert got == [b"new"]


def test_stream_offset_next(conn, cleanup):
    q, pub = stream(conn, cleanup, 3)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: (got.append((b, p.headers["x-stream-offset"])), c.basic_ack(m.delivery_tag)),
                     arguments={"x-stream-offset": "next"})
    conn.process_data_events(0.5)
    pub.basic_publish("", q, b"n1")
    pub.basic_publish("", q, b"n2")
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert got == [(b"n1", 3), (b"n2", 4)]


def test_stream_offset_last_starts_at_the_last_chunk(conn, cleanup):
    q, _ = stream(conn, cleanup, 5)
    got = read(conn, q, "last", 1)
    # "last" starts at the last chunk: a suffix of the log, ending with its last message.
    assert got and got[-1] == (b"4", 4)
    assert [o for _, o in got] == list(range(got[0][1], 5))


def test_stream_numeric_offset(conn, cleanup):
    q, _ = stream(conn, cleanup, 10)
    got = read(conn, q, 6, 4)
    assert got == [(b"6", 6), (b"7", 7), (b"8", 8), (b"9", 9)]


def test_stream_offset_beyond_end_waits_for_new(conn, cleanup):
    q, pub = stream(conn, cleanup, 2)
    got = read(conn, q, 100, 1, timeout_s=0.5, quiet_s=0.2)
    assert got == []


def test_stream_timestamp_offset(conn, cleanup):
    q, pub = stream(conn, cleanup, 3)
    time.sleep(1.5)
    since = datetime.datetime.fromtimestamp(int(time.time()), datetime.timezone.utc).replace(tzinfo=None)
    time.sleep(1.5)
    for body in (b"late-0", b"late-1"):
        pub.basic_publish("", q, body)
    got = read(conn, q, since, 2)
    assert [b for b, _ in got] == [b"late-0", b"late-1"]


def test_stream_consumer_needs_prefetch(conn, cleanup):
    q, _ = stream(conn, cleanup)
    ch = conn.channel()
    code, text = channel_close(lambda: ch.basic_consume(q, lambda *a: None))
    assert (code, text) == (406, f"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{q}' in vhost '/''")


def test_stream_consumer_needs_manual_ack(amqp, cleanup):
    conn = amqp.connect()
    q, _ = stream(conn, cleanup)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    code, text = connection_close(lambda: ch.basic_consume(q, lambda *a: None, auto_ack=True))
    assert (code, text) == (540, f"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue '{q}' in vhost '/'")


def test_stream_basic_get_not_supported(amqp, cleanup):
    conn = amqp.connect()
    q, _ = stream(conn, cleanup, 1)
    code, text = connection_close(lambda: conn.channel().basic_get(q))
    assert (code, text) == (540, f"NOT_IMPLEMENTED - basic.get not supported by stream queues queue '{q}' in vhost '/'")


def test_stream_must_be_durable(conn, cleanup):
    q = cleanup.queue(unique("stream-nd"))
    code, text = channel_close(lambda: conn.channel().queue_declare(q, durable=False, arguments={"x-queue-type": "stream"}))
    assert (code, text) == (406, f"PRECONDITION_FAILED - invalid property 'non-durable' for queue '{q}' in vhost '/'")


def test_stream_accepts_retention_arguments(conn, cleanup):
    q, pub = stream(conn, cleanup, 1, prefix="stream-ret", **{"x-max-length-bytes": 10_000_000, "x-max-age": "7D",
                                                            "x-stream-max-segment-size-bytes": 1_000_000})
    assert [b for b, _ in read(conn, q, "first", 1)] == [b"0"]


@pytest.mark.parametrize("op", ["nack", "reject"])
def test_stream_nack_and_reject_not_supported(amqp, cleanup, op):
    conn = amqp.connect()
    q, _ = stream(conn, cleanup, 1)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m), arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert got
    action = ch.basic_nack if op == "nack" else ch.basic_reject
    code, text = connection_close(lambda: (action(got[0].delivery_tag, requeue=False), conn.process_data_events(2),
                                           ch.queue_declare(q, passive=True)))
    assert (code, text) == (540, f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues queue '{q}' in vhost '/'")


def test_stream_preserves_properties(conn, cleanup):
    q, pub = stream(conn, cleanup)
    pub.basic_publish("", q, b"p", pika.BasicProperties(content_type="text/plain", message_id="m-1",
                                                          headers={"h": "v"}, delivery_mode=2))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: (got.append((m, p, b)), c.basic_ack(m.delivery_tag)),
                     arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    m, p, b = got[0]
    assert b == b"p" and p.content_type == "text/plain" and p.message_id == "m-1" and p.headers["h"] == "v"
    assert m.routing_key == q and m.exchange == ""
