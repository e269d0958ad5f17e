"""kill -9 the broker while an acks=all idempotent producer writes to a flush.mode=sync topic.

After a restart on the same data directory every acknowledged message must be there, at the
offset its acknowledgement named, in order, exactly once, and every record must pass the
client's CRC check.
"""

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition

from helpers import consumer, create_topic, unique, wait_until

PARTITIONS = 3
HERE = Path(__file__).resolve().parent
# Acknowledgements to see before each kill, and after the last restart before stopping.
ACKS_PER_PHASE = 300
# Crash/restart rounds.
CRASHES = 2
PHASE_TIMEOUT_S = 60.0
PRODUCER_EXIT_TIMEOUT_S = 170.0


def read_log(path: Path):
    ok, errors, done = [], [], []
    if not path.exists():
        return ok, errors, done
    for line in path.read_text().splitlines():
        parts = line.split(" ", 3)
        if parts[0] == "OK" and len(parts) == 4:
            ok.append((int(parts[1]), int(parts[2]), parts[3]))
        elif parts[0] == "ERR":
            errors.append(line)
        elif parts[0] == "DONE":
            done.append(line)
    return ok, errors, done


def read_everything(bootstrap: str, topic: str) -> dict[int, list[tuple[int, str]]]:
    """Every record of every partition, up to the high watermark, as (offset, value)."""
    c = consumer(bootstrap)
    out = {}
    try:
        for part in range(PARTITIONS):
            low, high = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10, cached=False)
            assert low == 0, f"partition {part} lost its head: low watermark {low}"
            c.assign([TopicPartition(topic, part, 0)])
            records = []
            deadline = time.monotonic() + 60
            while len(records) < high:
                assert time.monotonic() < deadline, f"partition {part}: read {len(records)} of {high}"
                msg = c.poll(0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    continue
                assert err is None, f"partition {part}: consumer error {err} (corrupt record served?)"
                records.append((msg.offset(), msg.value().decode()))
            out[part] = records
            c.unassign()
    finally:
        c.close()
    return out


@pytest.mark.timeout(480)
def test_kill9_during_acks_all_produce_loses_nothing_acknowledged(broker_factory, tmp_path):
    broker = broker_factory()
    topic = create_topic(broker.bootstrap, unique("crash"), partitions=PARTITIONS,
                         config={"flush.mode": "sync"})
    ack_log = tmp_path / "acks.log"
    stop_file = tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_producer.py"), broker.bootstrap, topic, str(PARTITIONS),
         str(ack_log), str(stop_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        acked_before_crash = []
        for crash in range(CRASHES):
            target = len(read_log(ack_log)[0]) + ACKS_PER_PHASE
            wait_until(f"{target} acknowledgements before crash {crash}",
                       lambda: len(read_log(ack_log)[0]) >= target and proc.poll() is None,
                       timeout_s=PHASE_TIMEOUT_S)
            broker.kill9()
            acked_before_crash.append(len(read_log(ack_log)[0]))
            broker.start()

        target = len(read_log(ack_log)[0]) + ACKS_PER_PHASE
        wait_until("acknowledgements after the last restart",
                   lambda: len(read_log(ack_log)[0]) >= target, timeout_s=PHASE_TIMEOUT_S)
        stop_file.touch()
        out, _ = proc.communicate(timeout=PRODUCER_EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    acked, errors, done = read_log(ack_log)
    assert not errors, f"producer saw delivery errors across the crash: {errors[:10]}"
    assert proc.returncode == 0 and done, f"producer did not finish cleanly: {done} {out.decode()[-2000:]}"

    stored = read_everything(broker.bootstrap, topic)
    for part in range(PARTITIONS):
        offsets = [o for o, _ in stored[part]]
        assert offsets == list(range(len(offsets))), f"partition {part}: offsets have holes"

    # No id is stored twice, anywhere (idempotence held across the crashes).
    all_values = [v for part in stored.values() for _, v in part]
    duplicates = sorted(v for v, n in Counter(all_values).items() if n > 1)
    assert not duplicates, f"stored twice: {duplicates[:10]}"
    assert all(v.startswith("id-") and v[3:].isdigit() for v in all_values), "unexpected record content"

    # Every acknowledged message is at exactly the offset its acknowledgement named.
    by_offset = {(part, o): v for part, recs in stored.items() for o, v in recs}
    missing = [(p, o, v) for p, o, v in acked if by_offset.get((p, o)) != v]
    assert not missing, f"{len(missing)} acknowledged messages missing or moved, e.g. {missing[:10]}"

    # In order: within a partition the producer's ids appear in the order they were sent.
    for part, recs in stored.items():
        ids = [int(v[3:]) for _, v in recs]
        assert ids == sorted(ids), f"partition {part} out of order"
        assert all(i % PARTITIONS == part for i in ids), f"partition {part} holds another partition's ids"

    # Everything the producer sent was acknowledged once the broker came back.
    assert len(acked) == len(all_values), (len(acked), len(all_values))
    assert acked_before_crash and min(acked_before_crash) >= ACKS_PER_PHASE
