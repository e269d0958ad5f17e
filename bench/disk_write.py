#!/usr/bin/env python3
"""The disk's own pace for W5: what a writer that does nothing but write gets.

    python3 bench/disk_write.py DIR [GB]

Writes GB x 10^9 bytes (default 20) in 1 MB buffered writes to 16 files round-robin, as
W5's 16 partitions are written, with no fsync, and prints the MB/s of each 10^9 bytes, as
`ferry bench` reports W5's `produce_steps_mb_per_s`. Run it on the broker's data
filesystem in the same hour as W5, after `sync; echo 3 > /proc/sys/vm/drop_caches`. The
files are removed at the end.
"""

import os
import sys
import time

STEP = 1_000_000_000
WRITE = 1_000_000
FILES = 16


def main() -> None:
    directory = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f"disk-write-{i}.log") for i in range(FILES)]
    fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for p in paths]
    buffer = os.urandom(WRITE)
    rates = []
    started = time.monotonic()
    step_start = started
    try:
        for _ in range(steps):
            for i in range(STEP // WRITE):
                os.write(fds[i % FILES], buffer)
            now = time.monotonic()
            rates.append(STEP / 1e6 / (now - step_start))
            step_start = now
    finally:
        for fd in fds:
            os.close(fd)
        for path in paths:
            os.remove(path)
    whole = steps * STEP / 1e6 / (time.monotonic() - started)
    last5 = rates[-5:]
    print("per-GB MB/s:", " ".join(f"{r:.0f}" for r in rates))
    print(
        f"whole {whole:.1f} MB/s; last GB / first GB {rates[-1] / rates[0]:.0%}; "
        f"mean of the last {len(last5)} GB {sum(last5) / len(last5):.1f} MB/s"
    )


if __name__ == "__main__":
    main()
