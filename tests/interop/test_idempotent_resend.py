"""The idempotent producer path with a really resent batch and a real sequence gap.

No client resends on purpose, so the ProduceRequests are built by hand (kafka_wire): the
same bytes are sent twice with the same producer id, epoch and base sequence, and then a
batch that skips sequence numbers. What the broker stored is read back with confluent-kafka.
"""

import kafka_wire as kw
from helpers import consume_partition, create_topic, expect_no_more, consumer, unique, watermarks
from confluent_kafka import TopicPartition


def make_batch(pid, values, base_sequence):
    return kw.record_batch([kw.Record(v) for v in values], producer_id=pid.producer_id,
                           producer_epoch=pid.epoch, base_sequence=base_sequence)


def test_resent_batch_is_acknowledged_once_and_gap_is_refused(bootstrap):
    topic = create_topic(bootstrap, unique("idem"), partitions=1)
    with kw.KafkaConnection.to(bootstrap) as conn:
        pid = kw.init_producer_id(conn)
        assert pid.error_code == kw.ERR_NONE
        assert pid.producer_id >= 0 and pid.epoch >= 0, pid

        first = make_batch(pid, [b"a0", b"a1", b"a2"], base_sequence=0)
        r1 = kw.produce(conn, topic, 0, first)
        assert (r1.error_code, r1.base_offset) == (kw.ERR_NONE, 0)

        # The very same batch again, as a retry after a lost response would send it.
        r2 = kw.produce(conn, topic, 0, first)
        assert r2.error_code == kw.ERR_NONE, f"duplicate batch got error {r2.error_code}"
        assert r2.base_offset == r1.base_offset, "a retried batch must be acknowledged with its original offset"
        assert watermarks(bootstrap, topic, 0) == (0, 3), "the retried batch was written twice"

        # A retry arriving on a fresh connection (a reconnecting client) is also recognised.
        with kw.KafkaConnection.to(bootstrap) as conn2:
            r3 = kw.produce(conn2, topic, 0, first)
        assert (r3.error_code, r3.base_offset) == (kw.ERR_NONE, 0)

        # Sequence 3 is next; 7 leaves a gap.
        gap = make_batch(pid, [b"gap"], base_sequence=7)
        r4 = kw.produce(conn, topic, 0, gap)
        assert r4.error_code == kw.ERR_OUT_OF_ORDER_SEQUENCE, f"gap got error {r4.error_code}"

        # The producer carries on with the right sequence after the refusal.
        nxt = make_batch(pid, [b"a3", b"a4"], base_sequence=3)
        r5 = kw.produce(conn, topic, 0, nxt)
        assert (r5.error_code, r5.base_offset) == (kw.ERR_NONE, 3)

        # An older batch (not the latest) resent is still a duplicate, not a new write.
        r6 = kw.produce(conn, topic, 0, first)
        assert (r6.error_code, r6.base_offset) == (kw.ERR_NONE, 0)

    assert watermarks(bootstrap, topic, 0) == (0, 5)
    got = consume_partition(bootstrap, topic, 0, 5)
    assert [(m.offset(), m.value()) for m in got] == [(0, b"a0"), (1, b"a1"), (2, b"a2"), (3, b"a3"), (4, b"a4")]
    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, 0, 5)])
    expect_no_more(c, 2.0)
    c.close()


def test_producers_have_independent_sequences(bootstrap):
    topic = create_topic(bootstrap, unique("idem2"), partitions=2)
    with kw.KafkaConnection.to(bootstrap) as conn:
        a = kw.init_producer_id(conn)
        b = kw.init_producer_id(conn)
        assert a.error_code == b.error_code == kw.ERR_NONE
        assert a.producer_id != b.producer_id
        # Both start at sequence 0 on the same partition; neither is mistaken for the other's duplicate.
        ra = kw.produce(conn, topic, 0, make_batch(a, [b"from-a"], 0))
        rb = kw.produce(conn, topic, 0, make_batch(b, [b"from-b"], 0))
        assert (ra.error_code, rb.error_code) == (kw.ERR_NONE, kw.ERR_NONE)
        assert {ra.base_offset, rb.base_offset} == {0, 1}
        # Sequences are per partition: producer a starts again at 0 on partition 1.
        r1 = kw.produce(conn, topic, 1, make_batch(a, [b"a-on-p1"], 0))
        assert (r1.error_code, r1.base_offset) == (kw.ERR_NONE, 0)
    assert watermarks(bootstrap, topic, 0) == (0, 2)
    assert watermarks(bootstrap, topic, 1) == (0, 1)
