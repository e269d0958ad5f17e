#!/usr/bin/env bash
# Runs the AMQP 0-9-1 interop suite (tests/interop/test_amqp_*.py) against real RabbitMQ, so the
# suite is known to encode RabbitMQ's behaviour rather than our reading of it.
#
#   ./scripts/amqp-rabbitmq-suite.sh              # RabbitMQ on 127.0.0.1:5672
#   ./scripts/amqp-rabbitmq-suite.sh 5673 -x -q   # another port; the rest goes to pytest
#
# - Installs Debian's rabbitmq-server and amqp-tools with apt-get when missing (needs root).
# - Reuses a broker already listening on the port (administered with plain `rabbitmqctl`);
#   otherwise starts a private node (own node name, data dir and ports) and stops only that.
# - Uses the repository's .venv (creating it from tests/interop/requirements.txt if needed).
# The durability, consumer-timeout and alarm tests start one more private node of their own.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/tests/interop/requirements.txt"
CONFLUENT_KAFKA_PIN="confluent-kafka==2.16.1"
PORT="${1:-5672}"
[[ $# -gt 0 ]] && shift
# A RabbitMQ node boots in ~8-15 s here; this bounds it.
START_TIMEOUT_S=120
STOP_TIMEOUT_S=60
# Bound for the whole pytest run (each test has its own bound as well).
SUITE_TIMEOUT_S=1800
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '==> %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"
  else fail "need root (or sudo) to run: $*"
  fi
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- system packages -----------------------------------------------------------------------
missing=()
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || missing+=(rabbitmq-server)
command -v amqp-publish >/dev/null || missing+=(amqp-tools)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq >/dev/null || fail "apt-get update failed"
  # The package's own service start is refused on machines without an init system; the
  # install still succeeds and the node is started by hand below.
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || fail "apt-get install ${missing[*]} failed"
fi
command -v amqp-publish >/dev/null || fail "amqp-tools missing after apt-get install"

# --- Python venv -----------------------------------------------------------------------------
if ! "$VENV/bin/python" -c 'import pika, aio_pika, pytest, pytest_timeout, confluent_kafka' 2>/dev/null; then
  log "installing the interop clients into $VENV"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" || fail "python3 -m venv failed"
  "$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS" "$CONFLUENT_KAFKA_PIN" || fail "pip install failed"
fi

# --- the broker ------------------------------------------------------------------------------
node=""
node_dir=""
node_pid=""
stop_node() {
  [[ -n "$node" ]] || return 0
  log "stopping private RabbitMQ node $node"
  timeout "$STOP_TIMEOUT_S" as_root runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq \
    /usr/lib/rabbitmq/bin/rabbitmqctl -n "$node" stop >/dev/null 2>&1 || true
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while [[ -n "$node_pid" ]] && kill -0 "$node_pid" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do
    sleep 0.2
  done
  if [[ -n "$node_pid" ]] && kill -0 "$node_pid" 2>/dev/null; then
    kill -9 "$node_pid" 2>/dev/null || true
  fi
  wait "$node_pid" 2>/dev/null || true
  [[ -f "$node_dir/node.pid" ]] && kill -9 "$(cat "$node_dir/node.pid")" 2>/dev/null || true
  rm -rf "$node_dir"
  node=""
}
trap stop_node EXIT

ctl=(rabbitmqctl)
if listening "$PORT"; then
  log "reusing the AMQP broker already listening on 127.0.0.1:$PORT"
else
  node="ferrysuite$$@localhost"
  node_dir="$(mktemp -d /tmp/ferry-rabbitmq-suite.XXXXXX)"
  mkdir -p "$node_dir/mnesia" "$node_dir/log"
  echo "[]." >"$node_dir/enabled_plugins"
  printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users.guest = true\n' "$PORT" >"$node_dir/rabbitmq.conf"
  as_root chown -R rabbitmq:rabbitmq "$node_dir"
  # Erlang distribution port of the node: any free one.
  dist_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  log "starting private RabbitMQ node $node on 127.0.0.1:$PORT (data in $node_dir)"
  as_root runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$PORT" RABBITMQ_DIST_PORT="$dist_port" \
    RABBITMQ_MNESIA_BASE="$node_dir/mnesia" RABBITMQ_LOG_BASE="$node_dir/log" \
    RABBITMQ_PID_FILE="$node_dir/node.pid" RABBITMQ_ENABLED_PLUGINS_FILE="$node_dir/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$node_dir/rabbitmq.conf" \
    /usr/lib/rabbitmq/bin/rabbitmq-server >"$node_dir/stdout.log" 2>&1 &
  node_pid=$!
  deadline=$((SECONDS + START_TIMEOUT_S))
  until listening "$PORT"; do
    kill -0 "$node_pid" 2>/dev/null || { tail -30 "$node_dir/stdout.log" >&2; fail "RabbitMQ exited during start"; }
    [[ $SECONDS -lt $deadline ]] || { tail -30 "$node_dir/stdout.log" >&2; fail "RabbitMQ not listening after ${START_TIMEOUT_S}s"; }
    sleep 0.5
  done
  ctl=(rabbitmqctl -n "$node")
fi
rabbit_version="$("${ctl[@]}" version 2>/dev/null || echo unknown)"
log "RabbitMQ $rabbit_version on 127.0.0.1:$PORT"

# --- the suite -------------------------------------------------------------------------------
cd "$ROOT/tests/interop"
started=$SECONDS
set +e
AMQP_TARGET="127.0.0.1:$PORT" AMQP_TARGET_KIND=rabbitmq AMQP_TARGET_RABBITMQCTL="${ctl[*]}" \
  timeout --signal=TERM --kill-after=30 "$SUITE_TIMEOUT_S" \
  "$VENV/bin/python" -m pytest test_amqp_*.py "$@"
rc=$?
set -e
log "AMQP suite against RabbitMQ finished with exit code $rc in $((SECONDS - started))s"
exit "$rc"
