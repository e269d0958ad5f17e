"""Clean shutdown on SIGTERM, and what must survive a restart: data, topic metadata and
configs, committed offsets, and idempotent-producer state.
"""

from confluent_kafka import TopicPartition

import kafka_wire as kw
from helpers import (
    ADMIN_TIMEOUT_S,
    consume_partition,
    consumer,
    create_topic,
    partition_count,
    produce_all,
    producer,
    topic_config,
    unique,
    watermarks,
)


def test_sigterm_exits_cleanly_and_keeps_async_data(broker_factory):
    broker = broker_factory("--flush-mode", "async")
    topic = create_topic(broker.bootstrap, unique("term"), partitions=2,
                         config={"flush.mode": "async", "retention.ms": "86400000"})
    values = [f"v{i}".encode() for i in range(500)]
    produce_all(producer(broker.bootstrap, acks="1"), topic, values, partition=1)

    code = broker.stop()
    assert code == 0, f"broker exited with {code} on SIGTERM (expected a clean 0)"

    broker.start()
    assert partition_count(broker.bootstrap, topic) == 2
    assert topic_config(broker.bootstrap, topic)["retention.ms"] == "86400000"
    assert watermarks(broker.bootstrap, topic, 1) == (0, 500)
    assert [m.value() for m in consume_partition(broker.bootstrap, topic, 1, 500)] == values


def test_committed_offsets_survive_restart(broker_factory):
    broker = broker_factory()
    topic = create_topic(broker.bootstrap, unique("offs"), partitions=2)
    group = unique("g")
    c = consumer(broker.bootstrap, group=group)
    c.commit(offsets=[TopicPartition(topic, 0, 17), TopicPartition(topic, 1, 3)], asynchronous=False)
    c.close()

    broker.restart(clean=False)  # even after kill -9

    c = consumer(broker.bootstrap, group=group)
    stored = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=ADMIN_TIMEOUT_S)
    c.close()
    assert [(tp.partition, tp.offset) for tp in stored] == [(0, 17), (1, 3)]


def test_producer_state_survives_restart(broker_factory):
    """A batch retried after the broker restarted is still recognised as a duplicate."""
    broker = broker_factory()
    topic = create_topic(broker.bootstrap, unique("pstate"), config={"flush.mode": "sync"})
    with kw.KafkaConnection.to(broker.bootstrap) as conn:
        pid = kw.init_producer_id(conn)
        assert pid.error_code == kw.ERR_NONE
        batch = kw.record_batch([kw.Record(b"once"), kw.Record(b"only")], producer_id=pid.producer_id,
                                producer_epoch=pid.epoch, base_sequence=0)
        first = kw.produce(conn, topic, 0, batch)
        assert (first.error_code, first.base_offset) == (kw.ERR_NONE, 0)

    broker.restart(clean=False)

    with kw.KafkaConnection.to(broker.bootstrap) as conn:
        again = kw.produce(conn, topic, 0, batch)
        assert (again.error_code, again.base_offset) == (kw.ERR_NONE, 0)
        nxt = kw.record_batch([kw.Record(b"then")], producer_id=pid.producer_id, producer_epoch=pid.epoch,
                              base_sequence=2)
        r = kw.produce(conn, topic, 0, nxt)
        assert (r.error_code, r.base_offset) == (kw.ERR_NONE, 2)
        # A new producer id is never one handed out before the restart.
        assert kw.init_producer_id(conn).producer_id != pid.producer_id
    assert watermarks(broker.bootstrap, topic, 0) == (0, 3)
