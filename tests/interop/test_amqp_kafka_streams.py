"""One store, many protocols: a stream queue is a Kafka topic of the same name.

AMQP messages published to stream `s` are Kafka records of topic `s` (routing key = key,
body = value, AMQP headers = Kafka headers of the same names, AMQP properties = Kafka headers
`amqp.<property>`), and Kafka-produced records reach AMQP stream consumers the same way back.
The mapping lives in amqp_target.py (`kafka_record_for_amqp`, `amqp_message_for_kafka`).
"""

import time

import pika
import pytest
from confluent_kafka import TopicPartition

from amqp_target import amqp_message_for_kafka, kafka_record_for_amqp, unique
from helpers import consume_n, consumer, producer

pytestmark = [
    pytest.mark.timeout(60, method="signal"),
    pytest.mark.ferry_only(reason="RabbitMQ has no Kafka listener: stream queues as Kafka topics are Ferry's"),
]


@pytest.fixture
def kafka(amqp):
    if amqp.kafka_bootstrap is None:
        pytest.skip("the Ferry target's Kafka listener is unknown (set AMQP_TARGET_KAFKA)")
    return amqp.kafka_bootstrap


def declare_stream(ch, name):
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})


def test_amqp_stream_is_readable_as_kafka_topic(amqp, conn, kafka, cleanup):
    s = cleanup.queue(unique("s"))
    ch = conn.channel()
    ch.confirm_delivery()
    declare_stream(ch, s)
    sent = []
    for i in range(5):
        props = pika.BasicProperties(
            content_type="application/json", message_id=f"m-{i}", correlation_id=f"c-{i}", delivery_mode=2,
            headers={"tenant": "acme", "attempt": str(i)},
        )
        body = b'{"n": %d}' % i
        ch.basic_publish("", s, body, props)
        sent.append(kafka_record_for_amqp(s, body, props))
    c = consumer(kafka)
    try:
        c.assign([TopicPartition(s, 0, 0)])
        got = consume_n(c, 5)
    finally:
        c.close()
    assert [m.offset() for m in got] == list(range(5))
    for msg, (key, value, headers) in zip(got, sent):
        assert msg.key() == key
        assert msg.value() == value
        assert dict(msg.headers() or []) == headers


def test_kafka_records_reach_amqp_stream_consumers(amqp, conn, kafka, cleanup):
    s = cleanup.queue(unique("s"))
    ch = conn.channel()
    declare_stream(ch, s)
    p = producer(kafka)
    records = [
        (b"rk-%d" % i, b"value-%d" % i, [("tenant", b"acme"), ("amqp.content-type", b"text/plain"),
                                         ("amqp.message-id", b"kid-%d" % i)])
        for i in range(3)
    ]
    for key, value, headers in records:
        p.produce(s, key=key, value=value, headers=headers)
    assert p.flush(30) == 0
    ch.basic_qos(prefetch_count=10)
    got = []
    ch.basic_consume(s, lambda c, m, pr, b: (got.append((m, pr, b)), c.basic_ack(m.delivery_tag)),
                     arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert len(got) == 3
    for i, ((m, props, body), (key, value, headers)) in enumerate(zip(got, records)):
        want = amqp_message_for_kafka(key, value, headers)
        assert m.routing_key == want["routing_key"]
        assert body == want["body"]
        assert props.headers["x-stream-offset"] == i
        plain = {k: v for k, v in props.headers.items() if k != "x-stream-offset"}
        assert {k: (v.encode() if isinstance(v, str) else v) for k, v in plain.items()} == want["headers"]
        for attr, value in want["properties"].items():
            assert str(getattr(props, attr)) == value, attr


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_kafka_batches_reach_amqp_stream_consumers(amqp, conn, kafka, cleanup, codec):
    s = cleanup.queue(unique("s"))
    ch = conn.channel()
    declare_stream(ch, s)
    p = producer(kafka, compression_type=codec, linger_ms=200)
    values = [b"value %d " % i * 30 for i in range(25)]
    for i, value in enumerate(values):
        p.produce(s, key=b"k%d" % i, value=value)
    assert p.flush(30) == 0
    ch.basic_qos(prefetch_count=50)
    got = []
    ch.basic_consume(s, lambda c, m, pr, b: (got.append((pr.headers["x-stream-offset"], m.routing_key, b)),
                                             c.basic_ack(m.delivery_tag)),
                     arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + 10
    while len(got) < len(values) and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert got == [(i, "k%d" % i, value) for i, value in enumerate(values)]


def test_kafka_offsets_equal_stream_offsets(amqp, conn, kafka, cleanup):
    s = cleanup.queue(unique("s"))
    ch = conn.channel()
    ch.confirm_delivery()
    declare_stream(ch, s)
    for i in range(4):
        ch.basic_publish("", s, b"%d" % i)
    c = consumer(kafka)
    try:
        c.assign([TopicPartition(s, 0, 2)])
        got = consume_n(c, 2)
    finally:
        c.close()
    assert [(m.offset(), m.value()) for m in got] == [(2, b"2"), (3, b"3")]
