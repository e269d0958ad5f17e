"""confluent-kafka AdminClient against Ferry: topics, partitions, configs, groups, offsets, records."""

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from helpers import (
    ADMIN_TIMEOUT_S,
    admin,
    consume_n,
    consumer,
    create_topic,
    kafka_error_code,
    partition_count,
    produce_all,
    producer,
    topic_config,
    unique,
    wait_for_partitions,
    wait_until,
    watermarks,
)

ERR_INVALID_TOPIC = 17
ERR_TOPIC_ALREADY_EXISTS = 36
ERR_INVALID_PARTITIONS = 37
ERR_INVALID_REPLICATION_FACTOR = 38
ERR_INVALID_CONFIG = 40


def create_error(bootstrap, new_topic) -> int:
    """Create a topic that must be refused; return the broker's error code."""
    client = admin(bootstrap)
    fut = client.create_topics([new_topic], request_timeout=ADMIN_TIMEOUT_S)[new_topic.topic]
    with pytest.raises(KafkaException) as info:
        fut.result(timeout=ADMIN_TIMEOUT_S)
    return kafka_error_code(info.value)


def test_create_topic_with_partitions_and_configs(bootstrap):
    topic = create_topic(bootstrap, unique("adm"), partitions=3,
                         config={"retention.ms": "3600000", "max.message.bytes": "123456"})
    assert partition_count(bootstrap, topic) == 3
    cfg = topic_config(bootstrap, topic)
    assert cfg["retention.ms"] == "3600000"
    assert cfg["max.message.bytes"] == "123456"
    # The topic is usable right away on every partition.
    p = producer(bootstrap, acks="all")
    for part in range(3):
        produce_all(p, topic, [f"x{part}".encode()], partition=part)
    assert [watermarks(bootstrap, topic, part)[1] for part in range(3)] == [1, 1, 1]


def test_create_existing_topic_fails(bootstrap):
    topic = create_topic(bootstrap, unique("dup"))
    assert create_error(bootstrap, NewTopic(topic, 1, 1)) == ERR_TOPIC_ALREADY_EXISTS


def test_delete_topic(bootstrap):
    topic = create_topic(bootstrap, unique("del"), partitions=2)
    produce_all(producer(bootstrap), topic, [b"doomed"], partition=0)
    client = admin(bootstrap)
    futs = client.delete_topics([topic], request_timeout=ADMIN_TIMEOUT_S)
    futs[topic].result(timeout=ADMIN_TIMEOUT_S)
    wait_until("topic gone from metadata",
               lambda: topic not in admin(bootstrap).list_topics(timeout=10).topics)
    # A topic of the same name can be created again, and it starts empty.
    create_topic(bootstrap, topic, partitions=1)
    assert watermarks(bootstrap, topic, 0) == (0, 0)


def test_create_partitions(bootstrap):
    topic = create_topic(bootstrap, unique("grow"), partitions=2)
    client = admin(bootstrap)
    futs = client.create_partitions([NewPartitions(topic, 5)], request_timeout=ADMIN_TIMEOUT_S)
    futs[topic].result(timeout=ADMIN_TIMEOUT_S)
    wait_for_partitions(bootstrap, topic, 5)
    produce_all(producer(bootstrap), topic, [b"in-new-partition"], partition=4)
    assert watermarks(bootstrap, topic, 4) == (0, 1)

    # Shrinking is refused.
    client = admin(bootstrap)
    futs = client.create_partitions([NewPartitions(topic, 3)], request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as info:
        futs[topic].result(timeout=ADMIN_TIMEOUT_S)
    assert kafka_error_code(info.value) == ERR_INVALID_PARTITIONS


def test_alter_configs_incremental_and_legacy(bootstrap):
    topic = create_topic(bootstrap, unique("alter"), config={"retention.ms": "100000"})
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "200000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("flush.mode", "sync", incremental_operation=AlterConfigOpType.SET),
    ])
    client = admin(bootstrap)
    for fut in client.incremental_alter_configs([res]).values():
        fut.result(timeout=ADMIN_TIMEOUT_S)
    cfg = topic_config(bootstrap, topic)
    assert cfg["retention.ms"] == "200000"
    assert cfg["flush.mode"] == "sync"

    # Legacy AlterConfigs replaces the whole set of dynamic configs.
    legacy = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "300000"})
    client = admin(bootstrap)
    for fut in client.alter_configs([legacy]).values():
        fut.result(timeout=ADMIN_TIMEOUT_S)
    assert topic_config(bootstrap, topic)["retention.ms"] == "300000"

    # A value of the wrong type is refused and leaves the config unchanged.
    bad = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "not-a-number", incremental_operation=AlterConfigOpType.SET)])
    client = admin(bootstrap)
    [fut] = client.incremental_alter_configs([bad]).values()
    with pytest.raises(KafkaException) as info:
        fut.result(timeout=ADMIN_TIMEOUT_S)
    assert kafka_error_code(info.value) == ERR_INVALID_CONFIG
    assert topic_config(bootstrap, topic)["retention.ms"] == "300000"


def test_groups_list_describe_and_offsets(bootstrap):
    topic = create_topic(bootstrap, unique("grp"), partitions=2)
    group = unique("admin-group")
    p = producer(bootstrap, acks="all")
    produce_all(p, topic, [f"a{i}".encode() for i in range(7)], partition=0)
    produce_all(p, topic, [f"b{i}".encode() for i in range(5)], partition=1)

    c = consumer(bootstrap, group=group)
    c.subscribe([topic])
    consume_n(c, 12)
    # Commit less than everything so that lag is visible: 3 on p0 and 2 on p1.
    c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 3)], asynchronous=False)

    client = admin(bootstrap)
    listed = client.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S).result(timeout=ADMIN_TIMEOUT_S)
    assert group in {g.group_id for g in listed.valid}

    described = client.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_S)[group]
    desc = described.result(timeout=ADMIN_TIMEOUT_S)
    assert desc.group_id == group
    assert len(desc.members) == 1
    assert sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions) == [0, 1]
    assert desc.state.name == "STABLE"

    offsets_fut = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    offsets = {(tp.topic, tp.partition): tp.offset for tp in offsets_fut.result(timeout=ADMIN_TIMEOUT_S).topic_partitions}
    assert offsets == {(topic, 0): 4, (topic, 1): 3}
    lag = {part: watermarks(bootstrap, topic, part)[1] - offsets[(topic, part)] for part in (0, 1)}
    assert lag == {0: 3, 1: 2}
    c.close()


def test_delete_records(bootstrap):
    topic = create_topic(bootstrap, unique("trunc"))
    produce_all(producer(bootstrap, acks="all"), topic, [f"r{i}".encode() for i in range(20)], partition=0)
    client = admin(bootstrap)
    [fut] = client.delete_records([TopicPartition(topic, 0, 12)],
                                            request_timeout=ADMIN_TIMEOUT_S).values()
    result = fut.result(timeout=ADMIN_TIMEOUT_S)
    assert result.low_watermark == 12
    assert watermarks(bootstrap, topic, 0) == (12, 20)

    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, 0, -2)])  # OFFSET_BEGINNING
    got = consume_n(c, 8)
    assert [(m.offset(), m.value()) for m in got] == [(o, f"r{o}".encode()) for o in range(12, 20)]
    c.close()


@pytest.mark.parametrize("name", ["bad name", "bad/slash", "a" * 250, "..", "tópico"])
def test_invalid_topic_name(bootstrap, name):
    assert create_error(bootstrap, NewTopic(name, 1, 1)) == ERR_INVALID_TOPIC


def test_invalid_partition_count(bootstrap):
    # librdkafka itself refuses counts below -1; 0 reaches the broker (-7 is sent by the kafka-python test).
    assert create_error(bootstrap, NewTopic(unique("parts"), num_partitions=0, replication_factor=1)) \
        == ERR_INVALID_PARTITIONS


def test_replication_factor_above_broker_count(bootstrap):
    assert create_error(bootstrap, NewTopic(unique("rf"), num_partitions=1, replication_factor=3)) \
        == ERR_INVALID_REPLICATION_FACTOR


@pytest.mark.parametrize("config", [
    {"retention.ms": "soon"},
    {"max.message.bytes": "-5"},
    {"flush.mode": "sometimes"},
    {"no.such.config": "1"},
])
def test_invalid_config(bootstrap, config):
    name = unique("cfg")
    assert create_error(bootstrap, NewTopic(name, 1, 1, config=config)) == ERR_INVALID_CONFIG
    md = admin(bootstrap).list_topics(timeout=10)
    assert name not in md.topics, "a topic refused for its config was created anyway"


def test_auto_create_on_by_default(broker_factory):
    broker = broker_factory("--default-partitions", "3")
    topic = unique("auto")
    p = producer(broker.bootstrap, acks="all")
    delivered = produce_all(p, topic, [b"created-by-produce"])
    assert delivered[0].offset() == 0
    assert partition_count(broker.bootstrap, topic) == 3

    # A producer's metadata request for an unknown topic creates it too (librdkafka producers
    # always set allow_auto_topic_creation).
    other = unique("auto-md")
    md = p.list_topics(topic=other, timeout=10)
    wait_until("auto-created topic in metadata", lambda: partition_count(broker.bootstrap, other) == 3)
    assert md.topics[other].error is None or md.topics[other].error.code() == KafkaError.LEADER_NOT_AVAILABLE


def test_auto_create_off(broker_factory):
    broker = broker_factory("--no-auto-create-topics")
    topic = unique("noauto")
    md = admin(broker.bootstrap).list_topics(topic=topic, timeout=10)
    assert md.topics[topic].error is not None
    assert md.topics[topic].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    p = producer(broker.bootstrap, message_timeout_ms=5000, topic_metadata_propagation_max_ms=1000)
    errors = []
    p.produce(topic, value=b"nowhere", on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(20) == 0
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC), errors[0]
    assert topic not in admin(broker.bootstrap).list_topics(timeout=10).topics

    # Explicit creation still works (a new producer: the old one cached "unknown topic").
    create_topic(broker.bootstrap, topic, partitions=2)
    assert produce_all(producer(broker.bootstrap), topic, [b"now-it-exists"], partition=1)[0].offset() == 0
