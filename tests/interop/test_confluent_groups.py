"""confluent-kafka consumer groups: client-side assignors with two members, and eviction of a dead member."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from ferry_process import FerryBroker
from helpers import consumer, create_topic, produce_all, producer, unique

PARTITIONS = 4
# Session timeout the members ask for; the broker is started with a lower minimum so that
# eviction tests run in seconds rather than Kafka's default 6 s minimum.
SESSION_TIMEOUT_MS = 3000
GROUP_MIN_SESSION_TIMEOUT_MS = 1000
STABLE_TIMEOUT_S = 60.0
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory):
    """This module's broker accepts short session timeouts."""
    broker = FerryBroker(
        tmp_path_factory.mktemp("ferry") / "data",
        ["--group-min-session-timeout-ms", str(GROUP_MIN_SESSION_TIMEOUT_MS)],
    ).start()
    try:
        yield broker
    finally:
        broker.stop()


class Member:
    """One consumer of the group plus what its rebalance callbacks saw."""

    def __init__(self, bootstrap, group, topic, strategy, name):
        self.name = name
        self.assigned_events = []
        self.revoked_events = []
        self.messages = []
        self.c = consumer(
            bootstrap,
            group=group,
            partition_assignment_strategy=strategy,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=300,
        )
        self.c.subscribe(
            [topic],
            on_assign=lambda _c, parts: self.assigned_events.append(sorted(p.partition for p in parts)),
            on_revoke=lambda _c, parts: self.revoked_events.append(sorted(p.partition for p in parts)),
        )

    def poll(self):
        msg = self.c.poll(0.1)
        if msg is not None:
            assert msg.error() is None, f"{self.name}: {msg.error()}"
            self.messages.append(msg)

    def partitions(self):
        return sorted(tp.partition for tp in self.c.assignment())


def poll_until_split(members, timeout_s=STABLE_TIMEOUT_S, stable_rounds=10):
    """Poll every member until each holds a non-empty, disjoint share covering all partitions."""
    deadline = time.monotonic() + timeout_s
    rounds = 0
    while time.monotonic() < deadline:
        for m in members:
            m.poll()
        shares = [m.partitions() for m in members]
        flat = [p for s in shares for p in s]
        if all(shares) and sorted(flat) == list(range(PARTITIONS)):
            rounds += 1
            if rounds >= stable_rounds:
                return shares
        else:
            rounds = 0
    raise AssertionError(f"group never split the partitions: {[(m.name, m.partitions()) for m in members]}")


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_two_members_share_partitions(bootstrap, strategy):
    topic = create_topic(bootstrap, unique(f"assign-{strategy}"), partitions=PARTITIONS)
    group = unique("g")
    first = Member(bootstrap, group, topic, strategy, "first")
    deadline = time.monotonic() + STABLE_TIMEOUT_S
    while first.partitions() != list(range(PARTITIONS)):
        assert time.monotonic() < deadline, f"first member never got all partitions: {first.partitions()}"
        first.poll()

    second = Member(bootstrap, group, topic, strategy, "second")
    shares = poll_until_split([first, second])
    assert sorted(len(s) for s in shares) == [2, 2], shares

    # The split has the shape of the assignor the members chose (one topic, four partitions).
    if strategy == "range":
        assert sorted(shares) == [[0, 1], [2, 3]], shares
    elif strategy == "roundrobin":
        assert sorted(shares) == [[0, 2], [1, 3]], shares
    else:
        # Cooperative: the first member gave up only the two partitions that moved, never
        # all four at once as an eager rebalance would.
        moved = [r for r in first.revoked_events if r]
        assert all(len(r) < PARTITIONS for r in moved), first.revoked_events
        assert moved and sorted(p for r in moved for p in r) == shares[1], (first.revoked_events, shares)

    # Every message reaches the member that owns its partition, once.
    p = producer(bootstrap, acks="all")
    for part in range(PARTITIONS):
        produce_all(p, topic, [f"p{part}-{i}".encode() for i in range(5)], partition=part)
    deadline = time.monotonic() + 60
    while sum(len(m.messages) for m in (first, second)) < PARTITIONS * 5:
        assert time.monotonic() < deadline, "messages not delivered to the members"
        first.poll()
        second.poll()
    for m in (first, second):
        assert {msg.partition() for msg in m.messages} <= set(m.partitions())
    all_values = sorted(msg.value() for m in (first, second) for msg in m.messages)
    assert all_values == sorted(f"p{part}-{i}".encode() for part in range(PARTITIONS) for i in range(5))
    first.c.close()
    second.c.close()


MEMBER_SCRIPT = r"""
import sys
from confluent_kafka import Consumer
bootstrap, group, topic, session_ms = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": int(session_ms),
              "heartbeat.interval.ms": 300, "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic], on_assign=lambda _c, parts: print("ASSIGNED", sorted(p.partition for p in parts), flush=True))
while True:
    c.poll(0.2)
"""


def test_dead_member_is_evicted_and_partitions_reassigned(bootstrap):
    topic = create_topic(bootstrap, unique("evict"), partitions=PARTITIONS)
    group = unique("g")
    # The doomed member runs in its own process so that SIGKILL stops it without a LeaveGroup.
    doomed = subprocess.Popen(
        [sys.executable, "-c", MEMBER_SCRIPT, bootstrap, group, topic, str(SESSION_TIMEOUT_MS)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + STABLE_TIMEOUT_S
        while "ASSIGNED" not in line:
            assert time.monotonic() < deadline, "doomed member never got an assignment"
            assert doomed.poll() is None, f"doomed member exited: {doomed.stdout.read()}"
            line = doomed.stdout.readline()

        survivor = Member(bootstrap, group, topic, "range", "survivor")
        # Wait until the survivor owns a strict, non-empty subset (the group is split in two).
        deadline = time.monotonic() + STABLE_TIMEOUT_S
        while not (0 < len(survivor.partitions()) < PARTITIONS):
            assert time.monotonic() < deadline, f"survivor never joined: {survivor.partitions()}"
            survivor.poll()
        for _ in range(10):
            survivor.poll()
        assert 0 < len(survivor.partitions()) < PARTITIONS

        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
        killed_at = time.monotonic()

        # After the session timeout the broker evicts the dead member; the survivor gets everything.
        deadline = killed_at + SESSION_TIMEOUT_MS / 1000 + 30
        while survivor.partitions() != list(range(PARTITIONS)):
            assert time.monotonic() < deadline, (
                f"dead member not evicted: survivor still has {survivor.partitions()} "
                f"{time.monotonic() - killed_at:.1f}s after the kill"
            )
            survivor.poll()
        took = time.monotonic() - killed_at
        # It was the session timeout that did it, not an instant leave.
        assert took >= SESSION_TIMEOUT_MS / 1000 * 0.5, f"reassigned after only {took:.2f}s"

        # The survivor now really consumes every partition.
        p = producer(bootstrap, acks="all")
        for part in range(PARTITIONS):
            produce_all(p, topic, [f"after-{part}".encode()], partition=part)
        deadline = time.monotonic() + 60
        while len(survivor.messages) < PARTITIONS:
            assert time.monotonic() < deadline, f"survivor got {len(survivor.messages)} of {PARTITIONS}"
            survivor.poll()
        assert sorted(m.value() for m in survivor.messages) == sorted(f"after-{p}".encode() for p in range(PARTITIONS))
        survivor.c.close()
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(timeout=10)


def test_committed_offsets_survive_member_change(bootstrap):
    """A second member that takes over a partition starts at the first member's commit."""
    topic = create_topic(bootstrap, unique("handover"), partitions=1)
    group = unique("g")
    p = producer(bootstrap, acks="all")
    produce_all(p, topic, [f"a{i}".encode() for i in range(10)], partition=0)
    first = consumer(bootstrap, group=group)
    first.subscribe([topic])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < 4:
        assert time.monotonic() < deadline
        msg = first.poll(0.2)
        if msg is not None and msg.error() is None:
            got.append(msg)
    first.commit(offsets=[TopicPartition(topic, 0, got[3].offset() + 1)], asynchronous=False)
    first.close()

    second = consumer(bootstrap, group=group)
    second.subscribe([topic])
    deadline = time.monotonic() + 60
    msg = None
    while msg is None or msg.error() is not None:
        assert time.monotonic() < deadline
        msg = second.poll(0.2)
    assert (msg.offset(), msg.value()) == (4, b"a4")
    second.close()
