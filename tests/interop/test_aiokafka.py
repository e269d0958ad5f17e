"""aiokafka: produce/consume, group with commit and resume, offsets_for_times."""

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from helpers import create_topic, unique

# Bound for each awaited step.
STEP_TIMEOUT_S = 30


def run(coro, timeout_s=90):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def consume(c, n):
    out = []
    while len(out) < n:
        batch = await asyncio.wait_for(c.getmany(timeout_ms=500), STEP_TIMEOUT_S)
        for records in batch.values():
            out.extend(records)
    assert len(out) == n, f"got {len(out)} records, wanted {n}"
    return out


def test_produce_and_consume(bootstrap):
    topic = create_topic(bootstrap, unique("aio"), partitions=3)

    async def scenario():
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                             compression_type="gzip")
        await p.start()
        try:
            metas = await asyncio.gather(*[
                p.send_and_wait(topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode()) for i in range(60)
            ])
        finally:
            await p.stop()
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
        await c.start()
        try:
            recs = await consume(c, 60)
        finally:
            await c.stop()
        return metas, recs

    metas, recs = run(scenario())
    assert sorted(r.value for r in recs) == sorted(f"v{i}".encode() for i in range(60))
    placed = {(m.partition, m.offset) for m in metas}
    assert {(r.partition, r.offset) for r in recs} == placed
    by_key = {}
    for r in recs:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())


def test_group_commit_and_resume(bootstrap):
    topic = create_topic(bootstrap, unique("aiog"), partitions=2)
    group = unique("aiogroup")

    async def produce(values):
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            for i, v in enumerate(values):
                await p.send_and_wait(topic, value=v, partition=i % 2)
        finally:
            await p.stop()

    async def member(n):
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest")
        await c.start()
        try:
            recs = await consume(c, n)
            await c.commit()
            committed = {p: await c.committed(TopicPartition(topic, p)) for p in (0, 1)}
            return recs, committed
        finally:
            await c.stop()

    async def scenario():
        await produce([f"a{i}".encode() for i in range(10)])
        first, committed = await member(10)
        await produce([f"b{i}".encode() for i in range(4)])
        second, committed2 = await member(4)
        return first, committed, second, committed2

    first, committed, second, committed2 = run(scenario())
    assert sorted(r.value for r in first) == sorted(f"a{i}".encode() for i in range(10))
    assert committed == {0: 5, 1: 5}
    # The second member resumed at the commit: only the new records.
    assert sorted(r.value for r in second) == sorted(f"b{i}".encode() for i in range(4))
    assert committed2 == {0: 7, 1: 7}


def test_offsets_for_times(bootstrap):
    topic = create_topic(bootstrap, unique("aiots"), partitions=1)
    base = int(time.time() * 1000) - 30_000
    tp = TopicPartition(topic, 0)

    async def scenario():
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            for i in range(8):
                await p.send_and_wait(topic, value=f"t{i}".encode(), partition=0, timestamp_ms=base + 1000 * i)
        finally:
            await p.stop()
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await c.start()
        try:
            exact = (await c.offsets_for_times({tp: base + 3000}))[tp]
            between = (await c.offsets_for_times({tp: base + 3001}))[tp]
            past = (await c.offsets_for_times({tp: base + 9000}))[tp]
            ends = (await c.beginning_offsets([tp]), await c.end_offsets([tp]))
            return exact, between, past, ends
        finally:
            await c.stop()

    exact, between, past, ends = run(scenario())
    assert (exact.offset, exact.timestamp) == (3, base + 3000)
    assert (between.offset, between.timestamp) == (4, base + 4000)
    assert past is None
    assert ends == ({tp: 0}, {tp: 8})
