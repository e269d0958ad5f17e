#!/usr/bin/env bash
# Run kafka-python's own integration test suite against a Ferry broker.
#
# The suite ships in kafka-python's PyPI source distribution. It is downloaded and unpacked
# into a temporary directory at test time (nothing of it is committed), a Ferry broker is
# started on a free 127.0.0.1 port, and `pytest test/integration` runs with KAFKA_URI pointing
# at it. Tests that do not apply are deselected from tests/interop/kafka_python_suite_skips.txt
# (each with a reason, mirrored in docs/compatibility.md). Tests listed there as `rerun` hit a
# known race in the client itself; only when every failure of the run is such a test are
# they run again, at most RERUNS times, and a failure that stays fails the suite.
#
# Environment: PYTHON (default .venv/bin/python), FERRY_BIN (default target/debug/ferry),
# KAFKA_PYTHON_VERSION (default 3.0.12), KEEP_KAFKA_PYTHON_SUITE=1 keeps the temp dir.
# Extra arguments are passed to pytest (e.g. -k test_end_to_end).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
FERRY_BIN="${FERRY_BIN:-$ROOT/target/debug/ferry}"
KAFKA_PYTHON_VERSION="${KAFKA_PYTHON_VERSION:-3.0.12}"
# The broker version the suite's version-gated tests assume (its conftest reads KAFKA_VERSION).
KAFKA_VERSION_FOR_SUITE="4.0.0"
SKIPS="$ROOT/tests/interop/kafka_python_suite_skips.txt"
COMPAT_DOC="$ROOT/docs/compatibility.md"
SHIM="$ROOT/tests/interop/kafka_python_shim/service.py"
# The broker settings kafka-python's own test broker runs with (its
# servers/resources/*/kafka.properties): group.min.session.timeout.ms=1000 (test_group asks
# for 3 s sessions) and num.partitions=4 (what its fixtures expect of auto-created topics).
BROKER_ARGS=(--group-min-session-timeout-ms 1000 --default-partitions 4)
# Seconds the broker may take to listen, and to stop after SIGTERM.
BROKER_START_TIMEOUT_S=30
BROKER_STOP_TIMEOUT_S=15
# Per-test bound (the suite's own default is 300 s) and bound for the whole pytest run, so
# that a broker that hangs every test still fails CI in time.
TEST_TIMEOUT_S=120
SUITE_TIMEOUT_S=1500
# Runs again of `rerun` tests that failed (see above).
RERUNS=2

die() { echo "kafka-python-suite: $*" >&2; exit 1; }

[[ -x "$PYTHON" ]] || die "no Python at $PYTHON (run ./scripts/test.sh once to create .venv, or set PYTHON)"
[[ -x "$FERRY_BIN" ]] || die "no broker binary at $FERRY_BIN (run cargo build, or set FERRY_BIN)"
[[ -f "$SKIPS" ]] || die "missing $SKIPS"

# Read the list: "<node id> | <reason>" (deselected) or "rerun <node id> | <reason>" (run
# again after a failure), each reason required and documented.
deselect=()
rerunnable=()
while IFS= read -r line || [[ -n "$line" ]]; do
  [[ -z "${line//[[:space:]]/}" || "$line" == \#* ]] && continue
  node="${line%% | *}"
  reason="${line#* | }"
  node="${node%"${node##*[![:space:]]}"}"
  [[ "$line" == *" | "* && -n "${reason// /}" ]] || die "skip entry without a reason: $line"
  rerun=0
  if [[ "$node" == "rerun "* ]]; then
    rerun=1
    node="${node#rerun }"
  fi
  grep -qF -- "$node" "$COMPAT_DOC" 2>/dev/null \
    || die "skip entry $node is not listed in docs/compatibility.md"
  if [[ $rerun -eq 1 ]]; then
    rerunnable+=("$node")
  else
    deselect+=("--deselect" "$node")
  fi
done <"$SKIPS"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferry-kafka-python-suite.XXXXXX")"
BROKER_PID=""
cleanup() {
  if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 $((BROKER_STOP_TIMEOUT_S * 10))); do
      kill -0 "$BROKER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
  fi
  if [[ "${KEEP_KAFKA_PYTHON_SUITE:-0}" == 1 ]]; then
    echo "kafka-python-suite: kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

echo "kafka-python-suite: downloading kafka-python $KAFKA_PYTHON_VERSION source distribution"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
  "kafka-python==$KAFKA_PYTHON_VERSION" -d "$WORK/dist" \
  || die "could not download the kafka-python $KAFKA_PYTHON_VERSION sdist from PyPI"
sdist="$(find "$WORK/dist" -maxdepth 1 -name 'kafka_python-*.tar.gz' | head -n 1)"
[[ -n "$sdist" ]] || die "pip download produced no kafka_python-*.tar.gz"
tar -xzf "$sdist" -C "$WORK"
SRC="$WORK/kafka_python-$KAFKA_PYTHON_VERSION"
[[ -d "$SRC/test/integration" ]] || die "the sdist has no test/integration directory"

# The sdist omits test/__init__.py (without it the stdlib's `test` package shadows the
# suite's) and test/service.py (imported by its fixtures); supply both.
touch "$SRC/test/__init__.py"
[[ -f "$SRC/test/service.py" ]] || cp "$SHIM" "$SRC/test/service.py"
# Its fixtures insist that a Kafka distribution directory exists even for an external
# broker (nothing in it is used then): point them at an empty one.
mkdir -p "$WORK/kafka-root"

PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "kafka-python-suite: starting $FERRY_BIN on 127.0.0.1:$PORT"
# FERRY_* variables configure the broker; the test tooling's own are not passed on.
env -u FERRY_BIN -u FERRY_EXTRA_ARGS RUST_LOG="${RUST_LOG:-info}" "$FERRY_BIN" serve --data-dir "$WORK/data" --kafka-listen "127.0.0.1:$PORT" --http-listen 127.0.0.1:0 --amqp-listen 127.0.0.1:0 "${BROKER_ARGS[@]}" \
  >"$WORK/broker.log" 2>&1 </dev/null &
BROKER_PID=$!
"$PYTHON" - "$PORT" "$BROKER_START_TIMEOUT_S" "$BROKER_PID" <<'EOF' || { tail -n 40 "$WORK/broker.log" >&2; die "broker did not start"; }
import os, socket, sys, time
port, timeout, pid = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("broker exited")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(f"nothing listening on {port} after {timeout}s")
EOF

# Runs pytest on the suite with the given arguments, its output also in $WORK/pytest.out.
run_suite() {
  (
    cd "$SRC"
    KAFKA_VERSION="$KAFKA_VERSION_FOR_SUITE" KAFKA_URI="tcp://127.0.0.1:$PORT" KAFKA_ROOT="$WORK/kafka-root" \
      timeout --signal=TERM --kill-after=30 "$SUITE_TIMEOUT_S" \
      "$PYTHON" -m pytest -p no:cacheprovider -q -rfEs --timeout="$TEST_TIMEOUT_S" \
      -o log_level=INFO --show-capture=log "$@"
  ) 2>&1 | tee "$WORK/pytest.out"
  return "${PIPESTATUS[0]}"
}

# The failed node ids of the last run when all of them are `rerun` tests (and the run
# failed only by test failures, pytest's exit status 1); nothing otherwise.
rerun_candidates() {
  local status=$1 failed node known
  [[ $status -eq 1 && ${#rerunnable[@]} -gt 0 ]] || return 0
  failed="$(sed -n 's/^FAILED \([^ ]*\).*/\1/p' "$WORK/pytest.out")"
  [[ -n "$failed" ]] || return 0
  ! grep -q '^ERROR ' "$WORK/pytest.out" || return 0
  while IFS= read -r node; do
    known=0
    for prefix in "${rerunnable[@]}"; do
      [[ "$node" == "$prefix"* ]] && known=1
    done
    [[ $known -eq 1 ]] || return 0
  done <<<"$failed"
  echo "$failed"
}

echo "kafka-python-suite: running test/integration (${#deselect[@]} deselect args)"
status=0
run_suite test/integration "${deselect[@]}" "$@" || status=$?
for attempt in $(seq 1 "$RERUNS"); do
  again="$(rerun_candidates "$status")"
  [[ -n "$again" ]] || break
  mapfile -t nodes <<<"$again"
  echo "kafka-python-suite: failed only tests with a known client race (tests/interop/kafka_python_suite_skips.txt); again, $attempt of $RERUNS: ${nodes[*]}"
  status=0
  run_suite "${nodes[@]}" || status=$?
done

if ! kill -0 "$BROKER_PID" 2>/dev/null; then
  echo "kafka-python-suite: the broker died during the run; tail of its log:" >&2
  tail -n 60 "$WORK/broker.log" >&2
  exit 1
fi
if [[ $status -ne 0 ]]; then
  echo "kafka-python-suite: pytest exited with $status; tail of the broker log:" >&2
  tail -n 60 "$WORK/broker.log" >&2
  exit "$status"
fi
echo "kafka-python-suite: passed"
