"""kafka-python 3.0 (idempotent producer by default): produce/consume, groups, admin, offsets_for_times."""

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import InvalidPartitionsError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

import kafka_wire
from helpers import unique, wait_until

# Every blocking kafka-python call gets this bound.
TIMEOUT_S = 30
TIMEOUT_MS = TIMEOUT_S * 1000


def kp_admin(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=TIMEOUT_MS)


def kp_create(bootstrap, topic, partitions=1, configs=None):
    with kp_admin(bootstrap) as adm:
        adm.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1,
                                   "configs": configs or {}}}, wait_for_metadata=True)
    return topic


def kp_consume(bootstrap, n, topics=(), assign=None, **config):
    """Consume exactly `n` records (bounded) and return them."""
    c = KafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=TIMEOUT_MS, **config)
    try:
        if assign:
            c.assign(assign)
        out = []
        for rec in c:
            out.append(rec)
            if len(out) == n:
                break
        assert len(out) == n, f"consumed {len(out)} of {n}"
        if config.get("group_id") and not config.get("enable_auto_commit", True):
            c.commit()
        return out
    finally:
        c.close()


def test_idempotent_produce_and_consume(bootstrap):
    topic = kp_create(bootstrap, unique("kp"), partitions=4)
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    assert p.config["enable_idempotence"] is True, "kafka-python 3 should default to idempotence"
    keys = [f"k{i % 16}".encode() for i in range(200)]
    futures = [p.send(topic, key=k, value=f"v{i}".encode()) for i, k in enumerate(keys)]
    metas = [f.get(timeout=TIMEOUT_S) for f in futures]
    p.close(timeout=TIMEOUT_S)

    # The Java-compatible partitioner (murmur2) decided each partition.
    for k, meta in zip(keys, metas):
        assert meta.partition == (murmur2(k) & 0x7FFFFFFF) % 4
    recs = kp_consume(bootstrap, 200, topics=(topic,), group_id=None)
    assert sorted((r.key, r.value) for r in recs) == sorted((k, f"v{i}".encode()) for i, k in enumerate(keys))
    for r in recs:
        assert r.partition == (murmur2(r.key) & 0x7FFFFFFF) % 4

    # The batches on disk carry the producer id the broker assigned and per-partition
    # sequence numbers that start at 0 and have no gaps.
    pids = set()
    for part in range(4):
        batches = kafka_wire.fetch_all_batches(bootstrap, topic, part)
        expected_seq = 0
        for b in batches:
            assert b.producer_id >= 0 and b.base_sequence == expected_seq, b
            expected_seq += b.record_count
            pids.add((b.producer_id, b.producer_epoch))
        assert expected_seq == sum(1 for m in metas if m.partition == part)
    assert len(pids) == 1, pids


def test_group_commit_and_resume(bootstrap):
    topic = kp_create(bootstrap, unique("kpg"), partitions=2)
    group = unique("kpgroup")
    p = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(20):
        p.send(topic, value=f"m{i}".encode(), partition=i % 2)
    p.flush(timeout=TIMEOUT_S)

    first = kp_consume(bootstrap, 20, topics=(topic,), group_id=group, enable_auto_commit=False)
    assert sorted(r.value for r in first) == sorted(f"m{i}".encode() for i in range(20))

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        committed = {part: c.committed(TopicPartition(topic, part)) for part in (0, 1)}
    finally:
        c.close()
    assert committed == {0: 10, 1: 10}

    for i in range(20, 24):
        p.send(topic, value=f"m{i}".encode(), partition=i % 2)
    p.flush(timeout=TIMEOUT_S)
    p.close()
    resumed = kp_consume(bootstrap, 4, topics=(topic,), group_id=group, enable_auto_commit=False)
    assert sorted(r.value for r in resumed) == sorted(f"m{i}".encode() for i in range(20, 24))


def test_admin_basics(bootstrap):
    topic = unique("kpadm")
    with kp_admin(bootstrap) as adm:
        adm.create_topics([NewTopic(topic, 3, 1, topic_configs={"retention.ms": "7200000"})])
        wait_until("topic listed", lambda: topic in adm.list_topics())
        described = adm.describe_topics([topic])
        assert len(described) == 1 and len(described[0]["partitions"]) == 3

        configs = adm.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        assert configs["topic"][topic]["retention.ms"]["value"] == "7200000"

        with pytest.raises(TopicAlreadyExistsError):
            adm.create_topics([NewTopic(topic, 1, 1)])
        # librdkafka refuses -7 before sending; kafka-python lets the broker judge it.
        with pytest.raises(InvalidPartitionsError):
            adm.create_topics([NewTopic(unique("kpneg"), -7, 1)])

        adm.delete_topics([topic])
        wait_until("topic deleted", lambda: topic not in adm.list_topics())


def test_offsets_for_times(bootstrap):
    topic = kp_create(bootstrap, unique("kpts"), partitions=1)
    base = int(time.time() * 1000) - 120_000
    p = KafkaProducer(bootstrap_servers=bootstrap)
    metas = [p.send(topic, value=f"t{i}".encode(), partition=0, timestamp_ms=base + 500 * i).get(timeout=TIMEOUT_S)
             for i in range(12)]
    p.close()
    assert [m.offset for m in metas] == list(range(12))

    c = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=TIMEOUT_MS)
    tp = TopicPartition(topic, 0)
    try:
        hit = c.offsets_for_times({tp: base + 500 * 7})[tp]
        assert (hit.offset, hit.timestamp) == (7, base + 3500)
        between = c.offsets_for_times({tp: base + 500 * 7 + 1})[tp]
        assert (between.offset, between.timestamp) == (8, base + 4000)
        first = c.offsets_for_times({tp: 0})[tp]
        assert (first.offset, first.timestamp) == (0, base)
        assert c.offsets_for_times({tp: base + 500 * 12})[tp] is None
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: 12}
    finally:
        c.close()


def test_incremental_fetch_session(bootstrap):
    """kafka-python fetches in a KIP-227 session: after the first (full) fetch it lists only
    the partitions it moved on, and the broker answers only those with news. Every record
    still arrives once, in order, across waves of produce spread over all partitions."""
    partitions = 24
    topic = kp_create(bootstrap, unique("kpsession"), partitions=partitions)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             fetch_max_wait_ms=100, request_timeout_ms=TIMEOUT_MS)
    try:
        consumer.assign([TopicPartition(topic, i) for i in range(partitions)])
        got = {i: [] for i in range(partitions)}
        sent = 0
        for wave in range(4):
            # Later waves touch only some partitions, so most of the session is quiet.
            touched = range(partitions) if wave % 2 == 0 else range(0, partitions, 5)
            for i in touched:
                for n in range(3):
                    producer.send(topic, partition=i, value=f"{wave}-{n}".encode())
                    sent += 1
            producer.flush(timeout=TIMEOUT_S)

            def drained():
                for records in consumer.poll(timeout_ms=200).values():
                    for rec in records:
                        got[rec.partition].append(rec.value.decode())
                return sum(map(len, got.values())) >= sent
            wait_until(f"wave {wave} consumed", drained, timeout_s=TIMEOUT_S, interval_s=0)
        for i in range(partitions):
            waves = [w for w in range(4) if w % 2 == 0 or i % 5 == 0]
            assert got[i] == [f"{w}-{n}" for w in waves for n in range(3)], f"partition {i}"
        # The consumer really was in a session: the broker gave it an id, and it has moved
        # past the session's first incremental epoch.
        sessions = [h.next_metadata for h in consumer._fetcher._session_handlers.values()]
        assert any(m.session_id > 0 and m.epoch > 1 for m in sessions), \
            [(m.session_id, m.epoch) for m in sessions]
    finally:
        consumer.close()
        producer.close(timeout=TIMEOUT_S)
