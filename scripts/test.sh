#!/usr/bin/env bash
# Ferry's one test command (README): installs what it needs, then runs every suite and stops
# at the first failure.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh interop         # only some steps (setup always runs first)
#
# Steps, in order: fmt clippy unit build interop kafka-python rabbitmq.
# Installs, only when missing: Debian's kcat and amqp-tools (apt-get), and a Python venv in
# .venv with the pinned client libraries of tests/interop/requirements.txt (pip; honours
# PIP_FIND_LINKS). The rabbitmq step installs Debian's rabbitmq-server and runs the AMQP
# suite against it, so the suite keeps encoding RabbitMQ's real behaviour.
# PYTEST_ADDOPTS is passed through to both pytest runs.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/tests/interop/requirements.txt"
# confluent-kafka is pinned here rather than in requirements.txt so that a missing release
# can fall back to the newest 2.x (with a warning) instead of failing the whole install.
CONFLUENT_KAFKA_PIN="confluent-kafka==2.16.1"
CONFLUENT_KAFKA_FALLBACK="confluent-kafka>=2,<3"
ALL_STEPS=(fmt clippy unit build interop kafka-python rabbitmq)
# Bound for the whole interop pytest run (each test has its own 120 s bound as well).
INTEROP_TIMEOUT_S=1800
# Not exported: the broker reads FERRY_* variables as its configuration (and warns about
# unknown ones), so this reaches only the test runners that need it.
FERRY_BIN="${FERRY_BIN:-$ROOT/target/debug/ferry}"
# Port of the private RabbitMQ node the rabbitmq step starts (a broker already listening there
# is reused instead).
RABBITMQ_SUITE_PORT="${RABBITMQ_SUITE_PORT:-5672}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export DEBIAN_FRONTEND=noninteractive

started_at=$SECONDS
step_started_at=$SECONDS
current_step="setup"

log() { printf '\n==> %s\n' "$*"; }
elapsed() { local s=$1; printf '%dm%02ds' $((s / 60)) $((s % 60)); }
fail() {
  printf '\nFAILED: step "%s": %s (after %s)\n' "$current_step" "$*" "$(elapsed $((SECONDS - started_at)))" >&2
  exit 1
}
begin() {
  current_step="$1"
  step_started_at=$SECONDS
  log "$1: $2"
}
done_step() { echo "--- $current_step ok ($(elapsed $((SECONDS - step_started_at))))"; }
trap 'fail "command failed: ${BASH_COMMAND}"' ERR

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo -n "$@"
  else
    fail "need root (or sudo) to run: $*"
  fi
}

apt_updated=0
apt_install() {
  if [[ $apt_updated -eq 0 ]]; then
    as_root apt-get update -qq >/dev/null || fail "apt-get update failed"
    apt_updated=1
  fi
  local out
  out="$(as_root apt-get install -y -qq --no-install-recommends "$@" 2>&1)" \
    || { echo "$out" >&2; fail "apt-get install $* failed"; }
}

setup() {
  begin setup "tools, system packages and the Python venv"
  local tool
  for tool in cargo rustc python3 tar timeout; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
  done
  cargo fmt --version >/dev/null 2>&1 || fail "rustfmt is missing (rustup component add rustfmt)"
  cargo clippy --version >/dev/null 2>&1 || fail "clippy is missing (rustup component add clippy)"

  local missing=()
  command -v kcat >/dev/null || missing+=(kcat)
  command -v amqp-publish >/dev/null || missing+=(amqp-tools)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  command -v kcat >/dev/null || fail "kcat still missing after apt-get install"
  command -v amqp-publish >/dev/null || fail "amqp-tools still missing after apt-get install"

  if [[ -n "${PIP_FIND_LINKS:-}" && ! -e "${PIP_FIND_LINKS%% *}" ]]; then
    unset PIP_FIND_LINKS  # a stale local wheel cache path would only add warnings
  fi
  local stamp="$VENV/.ferry-requirements"
  local want
  want="$(cat "$REQUIREMENTS"; echo "$CONFLUENT_KAFKA_PIN"; python3 --version)"
  if [[ ! -x "$VENV/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "creating $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv failed"
    "$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS" || fail "pip install -r $REQUIREMENTS failed"
    if ! "$VENV/bin/python" -m pip install --quiet "$CONFLUENT_KAFKA_PIN" 2>/dev/null; then
      echo "WARNING: $CONFLUENT_KAFKA_PIN is not available; installing the newest $CONFLUENT_KAFKA_FALLBACK" >&2
      "$VENV/bin/python" -m pip install --quiet "$CONFLUENT_KAFKA_FALLBACK" \
        || fail "pip install $CONFLUENT_KAFKA_FALLBACK failed"
    fi
    printf '%s' "$want" >"$stamp"
  fi
  "$VENV/bin/python" - <<'EOF' || fail "the venv's client libraries do not import"
import aio_pika, aiokafka, confluent_kafka, kafka, pika, pytest
print("clients: confluent-kafka %s (librdkafka %s), kafka-python %s, aiokafka %s, pika %s, "
      "aio-pika %s, pytest %s"
      % (confluent_kafka.__version__, confluent_kafka.libversion()[0], kafka.__version__,
         aiokafka.__version__, pika.__version__, aio_pika.__version__, pytest.__version__))
EOF
  kcat -V | sed -n 's/^Version /kcat: /p'
  done_step
}

step_fmt() {
  begin fmt "cargo fmt --check"
  cargo fmt --all --check || fail "code is not formatted (run cargo fmt)"
  done_step
}

step_clippy() {
  begin clippy "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --locked --workspace --all-targets --quiet -- -D warnings || fail "clippy found problems"
  done_step
}

step_unit() {
  begin unit "cargo test --workspace"
  # The CLI tests run the binary, which would read the tooling's FERRY_BIN as its own config.
  env -u FERRY_BIN -u FERRY_EXTRA_ARGS cargo test --locked --workspace || fail "Rust tests failed"
  done_step
}

step_build() {
  begin build "cargo build (the ferry binary)"
  cargo build --locked --quiet || fail "cargo build failed"
  [[ -x "$FERRY_BIN" ]] || fail "cargo build produced no $FERRY_BIN"
  done_step
}

step_interop() {
  begin interop "real-client interop tests (tests/interop)"
  [[ -x "$FERRY_BIN" ]] || fail "no broker binary at $FERRY_BIN (run the build step)"
  (cd "$ROOT/tests/interop" &&
    FERRY_BIN="$FERRY_BIN" timeout --signal=TERM --kill-after=30 "$INTEROP_TIMEOUT_S" \
      "$VENV/bin/python" -m pytest) ||
    fail "interop tests failed"
  done_step
}

step_kafka_python() {
  begin kafka-python "kafka-python's own integration suite against Ferry"
  PYTHON="$VENV/bin/python" FERRY_BIN="$FERRY_BIN" "$ROOT/scripts/kafka-python-suite.sh" || fail "kafka-python's integration suite failed"
  done_step
}

step_rabbitmq() {
  begin rabbitmq "the AMQP suite against RabbitMQ 3.10 from Debian (the suite's own check)"
  "$ROOT/scripts/amqp-rabbitmq-suite.sh" "$RABBITMQ_SUITE_PORT" -q || fail "the AMQP suite failed against RabbitMQ"
  done_step
}

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
  [[ " ${ALL_STEPS[*]} " == *" $s "* ]] || fail "unknown step '$s' (steps: ${ALL_STEPS[*]})"
done

setup
for s in "${ALL_STEPS[@]}"; do
  [[ " ${steps[*]} " == *" $s "* ]] || continue
  "step_${s//-/_}"
done
printf '\nALL PASSED: %s (%s)\n' "${steps[*]}" "$(elapsed $((SECONDS - started_at)))"
