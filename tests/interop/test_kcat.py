"""Debian's kcat 1.7.1 (librdkafka 2.0.2): metadata, compressed produce, consume, group mode.

librdkafka before 2.11.1 silently drops compression when the broker's advertised Produce
range does not start at 0, so the codec of the stored batches is checked byte-wise.
"""

import shutil
import subprocess

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions

import kafka_wire
from helpers import ADMIN_TIMEOUT_S, admin, create_topic, unique

# Bound for each kcat invocation.
KCAT_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (scripts/test.sh installs it)")


def kcat(bootstrap, *args, stdin=None):
    proc = subprocess.run(["kcat", "-b", bootstrap, *args], input=stdin, capture_output=True,
                          timeout=KCAT_TIMEOUT_S)
    assert proc.returncode == 0, f"kcat {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}"
    return proc.stdout.decode()


def test_kcat_is_the_debian_build_with_old_librdkafka():
    """The suite targets kcat 1.7.1 on librdkafka 2.0.2 with every codec built in."""
    out = subprocess.run(["kcat", "-V"], capture_output=True, timeout=10).stdout.decode()
    assert "Version 1.7.1" in out and "librdkafka 2.0.2" in out, out
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        assert codec in out.split("builtin.features=")[1], out


def test_metadata_listing(bootstrap):
    topic = create_topic(bootstrap, unique("kcatmd"), partitions=3)
    out = kcat(bootstrap, "-L", "-t", topic)
    assert "1 brokers:" in out, out
    assert f'topic "{topic}" with 3 partitions' in out, out
    for part in range(3):
        assert f"partition {part}, leader " in out, out


@pytest.mark.parametrize("codec", ["snappy", "gzip", "lz4", "zstd"])
def test_compressed_produce_and_consume(bootstrap, codec):
    topic = create_topic(bootstrap, unique(f"kcat-{codec}"))
    lines = [f"{codec} line {i} " + "payload " * 20 for i in range(300)]
    kcat(bootstrap, "-P", "-t", topic, "-p", "0", "-z", codec, "-X", "linger.ms=100",
         stdin=("\n".join(lines) + "\n").encode())

    out = kcat(bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q", "-f", "%o %s\n")
    got = out.splitlines()
    assert [line.split(" ", 1)[1] for line in got] == lines
    assert [int(line.split(" ", 1)[0]) for line in got] == list(range(len(lines)))

    batches = kafka_wire.fetch_all_batches(bootstrap, topic, 0)
    assert sum(b.record_count for b in batches) == len(lines)
    codecs = {kafka_wire.COMPRESSION_NAMES[b.compression] for b in batches}
    assert codecs == {codec}, f"kcat -z {codec} stored batches with codecs {codecs} (compression silently off?)"


def test_keyed_produce_with_key_delimiter(bootstrap):
    topic = create_topic(bootstrap, unique("kcatkey"), partitions=4)
    lines = [f"user{i % 5}:event{i}" for i in range(50)]
    kcat(bootstrap, "-P", "-t", topic, "-K", ":", stdin=("\n".join(lines) + "\n").encode())
    out = kcat(bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%p|%k|%s\n")
    rows = [line.split("|") for line in out.splitlines()]
    assert sorted(f"{k}:{v}" for _, k, v in rows) == sorted(lines)
    by_key = {}
    for part, key, _ in rows:
        by_key.setdefault(key, set()).add(part)
    assert all(len(parts) == 1 for parts in by_key.values()), by_key


def test_group_mode_consume_and_commit(bootstrap):
    topic = create_topic(bootstrap, unique("kcatgrp"), partitions=2)
    group = unique("kcatgroup")
    lines = [f"g{i}" for i in range(40)]
    kcat(bootstrap, "-P", "-t", topic, stdin=("\n".join(lines) + "\n").encode())

    out = kcat(bootstrap, "-G", group, "-c", str(len(lines)), "-q", "-f", "%s\n",
               "-X", "auto.offset.reset=earliest", "-X", "enable.auto.commit=true",
               "-X", "auto.commit.interval.ms=100", topic)
    assert sorted(out.splitlines()) == sorted(lines)

    # kcat committed its position on close: the group's offsets cover every message.
    client = admin(bootstrap)
    fut = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    offsets = {tp.partition: tp.offset for tp in fut.result(timeout=ADMIN_TIMEOUT_S).topic_partitions}
    assert sum(offsets.values()) == len(lines), offsets
