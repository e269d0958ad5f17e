"""confluent-kafka (librdkafka 2.16) producing: acks, compression, keyed partitioning, size limits."""

import zlib

import pytest
from confluent_kafka import KafkaError

import kafka_wire
from helpers import consume_partition, create_topic, produce_all, producer, unique, watermarks

MESSAGES = 200


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_produce_with_acks(bootstrap, acks):
    topic = create_topic(bootstrap, unique(f"acks{acks}"))
    values = [f"acks-{acks}-{i}".encode() for i in range(MESSAGES)]
    p = producer(bootstrap, acks=acks)
    delivered = produce_all(p, topic, values, partition=0)

    if acks != "0":
        # The broker acknowledged real offsets, in send order.
        assert [m.offset() for m in delivered] == list(range(MESSAGES))
    got = consume_partition(bootstrap, topic, 0, MESSAGES)
    assert [m.value() for m in got] == values
    assert [m.offset() for m in got] == list(range(MESSAGES))
    assert watermarks(bootstrap, topic, 0) == (0, MESSAGES)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compression_round_trip_and_stored_as_sent(bootstrap, codec):
    topic = create_topic(bootstrap, unique(f"codec-{codec}"))
    # Compressible values so that every codec really shrinks the batch.
    values = [(f"{codec}-{i:05d}-" + "abcdefgh" * 40).encode() for i in range(MESSAGES)]
    p = producer(bootstrap, compression_type=codec, linger_ms=50, acks="all")
    produce_all(p, topic, values, partition=0)

    got = consume_partition(bootstrap, topic, 0, MESSAGES)
    assert [m.value() for m in got] == values

    # The broker stores batches as the client sent them: the codec survives on disk and in Fetch.
    batches = kafka_wire.fetch_all_batches(bootstrap, topic, 0)
    assert batches, "fetch returned no batches"
    assert sum(b.record_count for b in batches) == MESSAGES
    assert all(b.crc_ok for b in batches), "a served batch failed its CRC32C"
    expected = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[codec]
    assert {kafka_wire.COMPRESSION_NAMES[b.compression] for b in batches} == {codec}
    assert all(b.compression == expected for b in batches)


def test_keyed_messages_follow_client_partitioner(bootstrap):
    partitions = 6
    topic = create_topic(bootstrap, unique("keyed"), partitions=partitions)
    p = producer(bootstrap, acks="all")
    keys = [f"key-{k}".encode() for k in range(24)]
    sent = []  # (key, value, delivered partition, offset)
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            sent.append((msg.key(), msg.value(), msg.partition(), msg.offset()))

    for i in range(240):
        key = keys[i % len(keys)]
        p.produce(topic, key=key, value=f"v{i}".encode(), on_delivery=on_delivery)
    assert p.flush(30) == 0
    assert not errors, errors
    assert len(sent) == 240

    by_key = {}
    for key, _, partition, _ in sent:
        by_key.setdefault(key, set()).add(partition)
    # Same key, same partition.
    assert all(len(parts) == 1 for parts in by_key.values()), by_key
    # librdkafka's default partitioner (consistent_random) is CRC32(key) % partition count:
    # this holds only if the broker reported the right partition count.
    for key, parts in by_key.items():
        assert parts == {zlib.crc32(key) % partitions}, key
    # The keys spread over several partitions (otherwise the test proves little).
    assert len({next(iter(v)) for v in by_key.values()}) >= 3

    # Each message is consumed from exactly the partition and offset its delivery report named.
    for partition in range(partitions):
        expected = sorted((off, key, value) for key, value, part, off in sent if part == partition)
        got = consume_partition(bootstrap, topic, partition, len(expected)) if expected else []
        assert [(m.offset(), m.key(), m.value()) for m in got] == expected


def test_too_large_message_is_rejected(bootstrap):
    limit = 10_000
    topic = create_topic(bootstrap, unique("toolarge"), config={"max.message.bytes": str(limit)})
    p = producer(bootstrap, acks="all", compression_type="none", linger_ms=0,
                 message_send_max_retries=0, message_timeout_ms=15000)
    results = []
    p.produce(topic, value=b"x" * (limit * 5), partition=0, on_delivery=lambda err, msg: results.append(err))
    assert p.flush(20) == 0
    assert len(results) == 1
    assert results[0] is not None, "a message 5x over max.message.bytes was accepted"
    assert results[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, results[0]

    # A message under the limit still goes through and nothing of the big one was stored.
    produce_all(p, topic, [b"small"], partition=0)
    got = consume_partition(bootstrap, topic, 0, 1)
    assert got[0].value() == b"small"
    assert got[0].offset() == 0
