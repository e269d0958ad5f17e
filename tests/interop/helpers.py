"""Small helpers shared by the interop tests: names, bounded waits, confluent-kafka shortcuts."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Callable, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

T = TypeVar("T")

# Default bound for admin operations and metadata propagation.
ADMIN_TIMEOUT_S = 30.0
# Default bound for a consumer to receive an expected set of messages.
CONSUME_TIMEOUT_S = 60.0
# librdkafka's own log lines go through Python logging (served by poll()), so pytest shows
# them with the test they belong to instead of a client outliving its broker filling stderr.
CLIENT_LOGGER = logging.getLogger("librdkafka")


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(what: str, predicate: Callable[[], T], timeout_s: float = ADMIN_TIMEOUT_S, interval_s: float = 0.1) -> T:
    """Poll `predicate` until it returns a truthy value; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last value: {last!r})")


def admin(bootstrap: str) -> AdminClient:
    """A confluent-kafka AdminClient.

    Keep it referenced until its futures resolve: a dropped client destroys its handle and
    fails them with _DESTROY.
    """
    return AdminClient({"bootstrap.servers": bootstrap, "logger": CLIENT_LOGGER})


def create_topic(bootstrap: str, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
    """Create a topic through the admin API and wait until metadata shows all its partitions."""
    client = admin(bootstrap)
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=ADMIN_TIMEOUT_S,
        request_timeout=ADMIN_TIMEOUT_S,
    )
    futures[name].result(timeout=ADMIN_TIMEOUT_S)
    wait_for_partitions(bootstrap, name, partitions)
    return name


def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    """A topic's configs as DescribeConfigs reports them."""
    res = ConfigResource(ResourceType.TOPIC, topic)
    client = admin(bootstrap)
    [fut] = client.describe_configs([res], request_timeout=ADMIN_TIMEOUT_S).values()
    return {name: entry.value for name, entry in fut.result(timeout=ADMIN_TIMEOUT_S).items()}


def partition_count(bootstrap: str, topic: str) -> int:
    """Number of partitions metadata reports for `topic` (0 when unknown)."""
    md = admin(bootstrap).list_topics(topic=topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return 0
    return len(t.partitions)


def wait_for_partitions(bootstrap: str, topic: str, partitions: int) -> None:
    """Wait until metadata reports exactly `partitions` partitions, each with a leader."""

    def ready():
        md = admin(bootstrap).list_topics(topic=topic, timeout=10)
        t = md.topics.get(topic)
        return (
            t is not None
            and t.error is None
            and len(t.partitions) == partitions
            and all(p.leader >= 0 for p in t.partitions.values())
        )

    wait_until(f"{partitions} partitions of {topic}", ready)


def producer(bootstrap: str, **config) -> Producer:
    """A confluent-kafka Producer with test-friendly bounds."""
    conf = {"bootstrap.servers": bootstrap, "message.timeout.ms": 30000, "linger.ms": 5, "logger": CLIENT_LOGGER}
    conf.update({k.replace("_", "."): v for k, v in config.items()})
    return Producer(conf)


def produce_all(p: Producer, topic: str, values: list[bytes], partition: int | None = None,
                key: bytes | None = None, timestamps: list[int] | None = None) -> list:
    """Produce `values`, flush (bounded), and return the delivered messages in send order.

    Fails the test on any delivery error.
    """
    delivered: dict[int, object] = {}
    errors: list = []

    def on_delivery(index):
        def cb(err, msg):
            if err is not None:
                errors.append((index, err))
            else:
                delivered[index] = msg
        return cb

    for i, value in enumerate(values):
        kwargs = {"value": value, "on_delivery": on_delivery(i)}
        if partition is not None:
            kwargs["partition"] = partition
        if key is not None:
            kwargs["key"] = key
        if timestamps is not None:
            kwargs["timestamp"] = timestamps[i]
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
    remaining = p.flush(ADMIN_TIMEOUT_S)
    assert remaining == 0, f"{remaining} messages still undelivered after flush"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert len(delivered) == len(values)
    return [delivered[i] for i in range(len(values))]


def consumer(bootstrap: str, group: str | None = None, **config) -> Consumer:
    """A confluent-kafka Consumer (a fresh unique group unless `group` is given)."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group or unique("g"),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "check.crcs": True,
        "enable.partition.eof": False,
        "logger": CLIENT_LOGGER,
    }
    conf.update({k.replace("_", "."): v for k, v in config.items()})
    return Consumer(conf)


def consume_n(c: Consumer, n: int, timeout_s: float = CONSUME_TIMEOUT_S) -> list:
    """Poll until `n` messages arrived (fails on a consumer error or on timeout)."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        assert time.monotonic() < deadline, f"received {len(out)} of {n} messages in {timeout_s}s"
        msg = c.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        out.append(msg)
    return out


def expect_no_more(c: Consumer, quiet_s: float = 3.0) -> None:
    """Assert that nothing (not even an error) arrives for `quiet_s` seconds."""
    deadline = time.monotonic() + quiet_s
    while time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is None:
            continue
        if msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF:
            continue
        raise AssertionError(f"unexpected message: {msg.error() or (msg.partition(), msg.offset(), msg.value())}")


def consume_partition(bootstrap: str, topic: str, partition: int, n: int, offset: int = 0) -> list:
    """Read `n` messages of one partition from `offset` with a manually assigned consumer."""
    c = consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        return consume_n(c, n)
    finally:
        c.close()


def watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    """(low, high) watermark of a partition, as the broker reports it."""
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


def kafka_error_code(exc: BaseException) -> int:
    """The Kafka error code inside a confluent-kafka exception."""
    assert isinstance(exc, KafkaException), f"expected a KafkaException, got {exc!r}"
    return exc.args[0].code()
