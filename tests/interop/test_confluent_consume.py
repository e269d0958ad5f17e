"""confluent-kafka consuming: group commit/resume, auto.offset.reset, seek, offsets_for_times."""

import time

import pytest

from confluent_kafka import KafkaError, TopicPartition

from helpers import (
    consume_n,
    consumer,
    create_topic,
    expect_no_more,
    produce_all,
    producer,
    unique,
    wait_until,
)


def wait_for_assignment(c, partitions: int, timeout_s: float = 60.0):
    """Poll (discarding nothing: the caller has produced nothing new yet) until assigned."""
    def assigned():
        msg = c.poll(0.2)
        assert msg is None or msg.error() is not None, "message arrived before the test produced any"
        return len(c.assignment()) == partitions
    wait_until(f"assignment of {partitions} partitions", assigned, timeout_s=timeout_s, interval_s=0)


def test_group_consume_commit_and_resume(bootstrap):
    topic = create_topic(bootstrap, unique("grp"), partitions=3)
    group = unique("group")
    p = producer(bootstrap, acks="all")
    first = [f"first-{i}".encode() for i in range(30)]
    for part in range(3):
        produce_all(p, topic, first[part::3], partition=part)

    c1 = consumer(bootstrap, group=group)
    c1.subscribe([topic])
    got = consume_n(c1, 30)
    assert sorted(m.value() for m in got) == sorted(first)
    committed = c1.commit(asynchronous=False)
    assert all(tp.error is None for tp in committed), committed
    assert {(tp.partition, tp.offset) for tp in committed} == {(0, 10), (1, 10), (2, 10)}
    c1.close()

    # A new member of the same group starts at the committed offsets: nothing old is redelivered.
    c2 = consumer(bootstrap, group=group)
    stored = c2.committed([TopicPartition(topic, part) for part in range(3)], timeout=30)
    assert {(tp.partition, tp.offset) for tp in stored} == {(0, 10), (1, 10), (2, 10)}
    c2.subscribe([topic])
    wait_for_assignment(c2, 3)
    second = [f"second-{i}".encode() for i in range(6)]
    for part in range(3):
        produce_all(p, topic, second[part::3], partition=part)
    got2 = consume_n(c2, 6)
    assert sorted(m.value() for m in got2) == sorted(second)
    assert all(m.offset() >= 10 for m in got2)
    expect_no_more(c2, 2.0)
    c2.close()


def test_auto_offset_reset_earliest_vs_latest(bootstrap):
    topic = create_topic(bootstrap, unique("reset"), partitions=1)
    p = producer(bootstrap, acks="all")
    old = [f"old-{i}".encode() for i in range(10)]
    produce_all(p, topic, old, partition=0)

    early = consumer(bootstrap, auto_offset_reset="earliest")
    early.subscribe([topic])
    assert [m.value() for m in consume_n(early, 10)] == old
    early.close()

    late = consumer(bootstrap, auto_offset_reset="latest", enable_partition_eof=True)
    late.subscribe([topic])
    # Reaching the end of the partition (an EOF event) means "latest" has been resolved to the
    # log end; only then is it safe to produce the messages it must see. Nothing old may arrive.
    deadline = time.monotonic() + 60
    eof_offset = None
    while eof_offset is None:
        assert time.monotonic() < deadline, "latest consumer never reached the end of the partition"
        msg = late.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is not None, f"old message delivered to a 'latest' consumer: {msg.value()}"
        assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
        eof_offset = msg.offset()
    assert eof_offset == 10

    new = [f"new-{i}".encode() for i in range(3)]
    produce_all(p, topic, new, partition=0)
    got = consume_n(late, 3)
    assert [m.value() for m in got] == new
    assert [m.offset() for m in got] == [10, 11, 12]
    expect_no_more(late, 2.0)
    late.close()


def test_assign_at_offset_and_seek(bootstrap):
    topic = create_topic(bootstrap, unique("seek"), partitions=2)
    p = producer(bootstrap, acks="all")
    values = [f"m{i}".encode() for i in range(20)]
    produce_all(p, topic, values, partition=1)

    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, 1, 5)])
    got = consume_n(c, 3)
    assert [(m.offset(), m.value()) for m in got] == [(5, b"m5"), (6, b"m6"), (7, b"m7")]

    c.seek(TopicPartition(topic, 1, 15))
    got = consume_n(c, 5)
    assert [(m.offset(), m.value()) for m in got] == [(o, f"m{o}".encode()) for o in range(15, 20)]

    c.seek(TopicPartition(topic, 1, 2))
    got = consume_n(c, 1)
    assert (got[0].offset(), got[0].value()) == (2, b"m2")
    c.close()


def test_offsets_for_times(bootstrap):
    topic = create_topic(bootstrap, unique("times"), partitions=1)
    p = producer(bootstrap, acks="all")
    base = int(time.time() * 1000) - 60_000
    stamps = [base + 1000 * i for i in range(10)]
    delivered = produce_all(p, topic, [f"t{i}".encode() for i in range(10)], partition=0, timestamps=stamps)
    assert [m.offset() for m in delivered] == list(range(10))

    c = consumer(bootstrap)

    def lookup(ts):
        [tp] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=30)
        assert tp.error is None, tp.error
        return tp.offset

    # The first offset whose timestamp is >= the one asked for.
    assert lookup(stamps[4]) == 4
    assert lookup(stamps[4] - 500) == 4
    assert lookup(stamps[4] + 1) == 5
    assert lookup(base - 10_000) == 0
    # Later than every record: the log end offset is returned as -1 (OFFSET_END).
    assert lookup(stamps[-1] + 10_000) == -1

    # The timestamps themselves round-trip.
    c.assign([TopicPartition(topic, 0, 0)])
    got = consume_n(c, 10)
    assert [m.timestamp()[1] for m in got] == stamps
    c.close()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_offsets_for_times_inside_one_compressed_batch(bootstrap, codec):
    """The lookup finds the record, not the start of its batch: the broker decompresses."""
    topic = create_topic(bootstrap, unique("ctimes"), partitions=1)
    # One batch: a long linger, one flush.
    p = producer(bootstrap, acks="all", compression_type=codec, linger_ms=1000)
    base = int(time.time() * 1000) - 60_000
    stamps = [base + 1000 * i for i in range(10)]
    produce_all(p, topic, [b"compressible %d " % i * 20 for i in range(10)], partition=0, timestamps=stamps)
    c = consumer(bootstrap)
    try:
        # One lookup per call: a list naming a partition twice gets one answer for all.
        found = [c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=30)[0].offset
                 for ts in (stamps[4], stamps[4] + 1, stamps[9])]
    finally:
        c.close()
    assert found == [4, 5, 9]
