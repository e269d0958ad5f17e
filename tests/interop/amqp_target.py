"""The broker an AMQP 0-9-1 test talks to, chosen by address, and the few things a test needs
from it beyond the wire protocol: administration (vhosts, users, permissions), restart and
kill -9, and a raw-socket AMQP client for handshakes and hostile bytes.

Target selection (see conftest.py's `amqp` fixture):
- `AMQP_TARGET=host:port` (+ `AMQP_TARGET_USER`, `AMQP_TARGET_PASSWORD`, default guest/guest,
  and `AMQP_TARGET_KIND=rabbitmq|ferry|other`): an external broker. For an external Ferry,
  `AMQP_TARGET_KAFKA=host:port` names its Kafka listener and `AMQP_TARGET_ADMIN=host:port` its
  HTTP admin listener; for RabbitMQ, `AMQP_TARGET_RABBITMQCTL` the rabbitmqctl command.
- unset: the real `ferry` binary, started with `--amqp-listen 127.0.0.1:<free port>`.

Administration goes through `provision()`, the one place that knows how each kind of broker is
administered (rabbitmqctl for RabbitMQ; a config file and a fresh process for Ferry), so a
change in Ferry's admin interface changes only that function.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import pika

from ferry_process import FerryBroker, free_port, wait_for_port

# The AMQP 0-9-1 protocol header a client sends first.
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
# Frame types and the octet that ends every frame (AMQP 0-9-1 section 4.2.3).
FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
# How long a raw-socket read may block before the test fails instead of hanging.
RAW_READ_TIMEOUT_S = 10.0
# Upper bound for one pika blocking operation in these tests.
PIKA_BLOCKED_TIMEOUT_S = 10.0
# A private RabbitMQ node takes ~8-15 s to boot on this machine; this bounds it.
RABBITMQ_START_TIMEOUT_S = 90.0
RABBITMQ_STOP_TIMEOUT_S = 60.0
# rabbitmqctl calls are slow (an Erlang VM per call) but must not hang a test.
RABBITMQCTL_TIMEOUT_S = 60.0
# Consumer acknowledgement timeout given to brokers the suite configures itself (private
# RabbitMQ node, Ferry started by the fixture with a config file).
TEST_CONSUMER_TIMEOUT_MS = 2000


def unique(prefix: str) -> str:
    """A name no other test (or earlier run against a shared broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------------------------
# Targets


@dataclass
class AmqpTarget:
    """One AMQP broker under test and what the suite may do to it."""

    host: str
    port: int
    user: str = "guest"
    password: str = "guest"
    kind: str = "other"  # rabbitmq | ferry | other
    # Set when the suite controls the broker's process (Ferry started by the fixture, or a
    # private RabbitMQ node): restart and kill -9 are possible.
    process: "FerryBroker | PrivateRabbit | None" = None
    # Kafka bootstrap of the same broker (Ferry only), for the stream-as-topic tests.
    kafka_bootstrap: str | None = None
    # Command prefix that administers a RabbitMQ target.
    rabbitmqctl: list[str] = field(default_factory=lambda: ["rabbitmqctl"])

    @property
    def address(self) -> str:
        """`host:port` of the AMQP listener."""
        return f"{self.host}:{self.port}"

    @property
    def is_ferry(self) -> bool:
        return self.kind == "ferry"

    @property
    def is_rabbitmq(self) -> bool:
        return self.kind == "rabbitmq"

    @property
    def can_restart(self) -> bool:
        return self.process is not None

    def params(self, vhost: str = "/", user: str | None = None, password: str | None = None, **kw) -> pika.ConnectionParameters:
        """pika connection parameters for this broker (PLAIN credentials)."""
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("socket_timeout", PIKA_BLOCKED_TIMEOUT_S)
        kw.setdefault("blocked_connection_timeout", PIKA_BLOCKED_TIMEOUT_S)
        kw.setdefault("stack_timeout", PIKA_BLOCKED_TIMEOUT_S)
        return pika.ConnectionParameters(
            host=self.host,
            port=self.port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(user or self.user, password if password is not None else self.password),
            **kw,
        )

    def connect(self, vhost: str = "/", user: str | None = None, password: str | None = None, **kw) -> pika.BlockingConnection:
        """A pika blocking connection."""
        return pika.BlockingConnection(self.params(vhost, user, password, **kw))

    def url(self, vhost: str = "/", user: str | None = None, password: str | None = None) -> str:
        """An amqp:// URL for aio-pika and the amqp-tools CLI."""
        from urllib.parse import quote

        u = quote(user or self.user, safe="")
        p = quote(password if password is not None else self.password, safe="")
        return f"amqp://{u}:{p}@{self.host}:{self.port}/{quote(vhost, safe='')}"

    def restart(self, clean: bool = True) -> None:
        """Stop (SIGTERM when `clean`, else kill -9) and start again with the same data."""
        assert self.process is not None, "this target's process is not controlled by the suite"
        self.process.restart(clean=clean)

    def kill9(self) -> None:
        """Kill the broker with SIGKILL."""
        assert self.process is not None, "this target's process is not controlled by the suite"
        self.process.kill9()

    def start(self) -> None:
        """Start the (stopped) broker again with the same data."""
        assert self.process is not None, "this target's process is not controlled by the suite"
        self.process.start()


def target_from_env() -> AmqpTarget | None:
    """The external broker named by AMQP_TARGET, or None to start Ferry."""
    spec = os.environ.get("AMQP_TARGET")
    if not spec:
        return None
    host, _, port = spec.rpartition(":")
    return AmqpTarget(
        host=host or "127.0.0.1",
        port=int(port),
        user=os.environ.get("AMQP_TARGET_USER", "guest"),
        password=os.environ.get("AMQP_TARGET_PASSWORD", "guest"),
        kind=os.environ.get("AMQP_TARGET_KIND", "other"),
        rabbitmqctl=os.environ.get("AMQP_TARGET_RABBITMQCTL", "rabbitmqctl").split(),
        kafka_bootstrap=os.environ.get("AMQP_TARGET_KAFKA"),
    )


# Bound for the one handshake that checks a target is usable before any test runs.
PREFLIGHT_TIMEOUT_S = 10.0


def preflight(target: AmqpTarget) -> str | None:
    """None if the target completes a handshake and opens a channel within
    PREFLIGHT_TIMEOUT_S; otherwise why not (so the suite fails fast instead of every test
    waiting out its timeout on a broker that does not answer)."""
    try:
        with RawAmqp(target.host, target.port, timeout_s=PREFLIGHT_TIMEOUT_S) as raw:
            raw.handshake(target.user, target.password)
            raw.open_channel(1)
    except (OSError, ValueError, AssertionError, BrokerClosed, ConnectionClosed) as err:
        return f"{type(err).__name__}: {err}"
    return None


def ferry_target(broker: FerryBroker) -> AmqpTarget:
    """The AMQP side of a Ferry process started by the suite."""
    assert broker.amqp_port is not None, "this ferry binary has no AMQP listener (--amqp-listen)"
    return AmqpTarget(
        host=broker.host, port=broker.amqp_port, kind="ferry", process=broker, kafka_bootstrap=broker.bootstrap
    )


# --------------------------------------------------------------------------------------------
# A private RabbitMQ node the suite may kill -9 and restart


def rabbitmq_installed() -> bool:
    """True when Debian's rabbitmq-server is installed and we can run it as its own user."""
    try:
        pwd.getpwnam("rabbitmq")
    except KeyError:
        return False
    return os.geteuid() == 0 and Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists()


class PrivateRabbit:
    """A RabbitMQ node of its own (own name, ports, data dir), started as user `rabbitmq`.

    The shared RabbitMQ of the machine cannot be restarted by a test; this one can, which
    makes the durability and kill -9 tests meaningful against RabbitMQ too. Its config sets a
    short consumer acknowledgement timeout (RabbitMQ 3.10 has no per-queue one).
    """

    def __init__(self, consumer_timeout_ms: int = TEST_CONSUMER_TIMEOUT_MS):
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"ferrytest{uuid.uuid4().hex[:8]}@localhost"
        self.base = Path(tempfile.mkdtemp(prefix="ferry-rabbit-", dir="/tmp"))
        self.pid_file = self.base / "node.pid"
        self.log_path = self.base / "stdout.log"
        (self.base / "mnesia").mkdir()
        (self.base / "log").mkdir()
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"consumer_timeout = {consumer_timeout_ms}\n"
            "loopback_users.guest = true\n"
        )
        # The consumer timeout is checked on the channel tick (60 s by default): tick fast.
        (self.base / "advanced.config").write_text("[{rabbit, [{channel_tick_interval, 500}]}].\n")
        ids = pwd.getpwnam("rabbitmq")
        for path in [self.base, *self.base.rglob("*")]:
            os.chown(path, ids.pw_uid, ids.pw_gid)
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        ids = pwd.getpwnam("rabbitmq")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "FERRY_"))}
        env.update(
            HOME=ids.pw_dir,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
        )
        return env

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """rabbitmqctl against this node."""
        return subprocess.run(
            ["runuser", "-u", "rabbitmq", "--", "/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=RABBITMQCTL_TIMEOUT_S,
            check=check,
            cwd=self.base,
        )

    def start(self) -> "PrivateRabbit":
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["runuser", "-u", "rabbitmq", "--", "/usr/lib/rabbitmq/bin/rabbitmq-server"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.base,
            start_new_session=True,
        )
        log.close()
        wait_for_port("127.0.0.1", self.port, RABBITMQ_START_TIMEOUT_S, self.proc)
        return self

    def beam_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """A clean shutdown (`rabbitmqctl stop`), bounded; kill -9 if it does not finish."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.ctl("stop", check=False)
            self.proc.wait(timeout=RABBITMQ_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill9()

    def kill9(self) -> None:
        """SIGKILL the Erlang VM (and the wrapper processes around it)."""
        if self.proc is None:
            return
        pid = self.beam_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=RABBITMQ_STOP_TIMEOUT_S)
        # The port is free again only once the VM is gone.
        deadline = time.monotonic() + RABBITMQ_STOP_TIMEOUT_S
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self, clean: bool = True) -> "PrivateRabbit":
        if clean:
            self.stop()
        else:
            self.kill9()
        return self.start()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        """Stop the node and remove its data."""
        self.stop()
        self.kill9()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for path in [self.log_path, *sorted((self.base / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                texts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)


def private_rabbit_target(node: PrivateRabbit) -> AmqpTarget:
    """The AMQP side of a private RabbitMQ node."""
    return AmqpTarget(
        host="127.0.0.1",
        port=node.port,
        kind="rabbitmq",
        process=node,
        rabbitmqctl=["runuser", "-u", "rabbitmq", "--", "/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", node.name],
    )


# --------------------------------------------------------------------------------------------
# Administration: the one adapter per broker kind


@dataclass
class Definitions:
    """Users, vhosts and permissions a test needs on the broker."""

    users: list[tuple[str, str, list[str]]] = field(default_factory=list)  # name, password, tags
    vhosts: list[str] = field(default_factory=list)
    # user, vhost, configure, write, read (regular expressions, as in RabbitMQ)
    permissions: list[tuple[str, str, str, str, str]] = field(default_factory=list)


def ferry_config_toml(defs: Definitions, consumer_timeout_ms: int | None = None) -> str:
    """Ferry's config file carrying `defs` (the `[[amqp.*]]` sections of the plan)."""

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    if consumer_timeout_ms is not None:
        lines += ["[amqp]", f"consumer_timeout_ms = {consumer_timeout_ms}", ""]
    for name, password, tags in defs.users:
        lines += ["[[amqp.users]]", f"name = {q(name)}", f"password = {q(password)}",
                  "tags = [" + ", ".join(q(t) for t in tags) + "]", ""]
    for vhost in defs.vhosts:
        lines += ["[[amqp.vhosts]]", f"name = {q(vhost)}", ""]
    for user, vhost, conf, write, read in defs.permissions:
        lines += ["[[amqp.permissions]]", f"user = {q(user)}", f"vhost = {q(vhost)}",
                  f"configure = {q(conf)}", f"write = {q(write)}", f"read = {q(read)}", ""]
    return "\n".join(lines)


def _rabbitmqctl(target: AmqpTarget, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*target.rabbitmqctl, *args], capture_output=True, text=True, timeout=RABBITMQCTL_TIMEOUT_S, check=check
    )


def _ferry_cli(target: AmqpTarget, *args: str) -> None:
    """Ferry's admin CLI against a running external Ferry (AMQP_TARGET_ADMIN = its HTTP admin address)."""
    from ferry_process import ferry_binary

    admin = os.environ.get("AMQP_TARGET_ADMIN")
    assert admin, "set AMQP_TARGET_ADMIN=host:port (ferry's --http-listen) to administer an external Ferry"
    subprocess.run([str(ferry_binary()), *args, "--broker", admin], check=True, timeout=RABBITMQCTL_TIMEOUT_S,
                   capture_output=True, text=True)


@contextlib.contextmanager
def provision(target: AmqpTarget, defs: Definitions, start_ferry: Callable[..., FerryBroker] | None) -> Iterator[AmqpTarget]:
    """A broker that has `defs` (users, vhosts, permissions); removes them afterwards.

    RabbitMQ: rabbitmqctl on the target's node. Ferry started by the suite: a fresh process
    whose config file carries `defs` (`start_ferry(*extra_args)` starts it). External Ferry:
    its admin CLI. This is the only function that knows how each broker is administered.
    """
    if target.is_rabbitmq:
        try:
            for vhost in defs.vhosts:
                _rabbitmqctl(target, "add_vhost", vhost)
            for name, password, tags in defs.users:
                _rabbitmqctl(target, "add_user", name, password)
                if tags:
                    _rabbitmqctl(target, "set_user_tags", name, *tags)
            for user, vhost, conf, write, read in defs.permissions:
                _rabbitmqctl(target, "set_permissions", "-p", vhost, user, conf, write, read)
            yield target
        finally:
            for name, _, _ in defs.users:
                _rabbitmqctl(target, "delete_user", name, check=False)
            for vhost in defs.vhosts:
                _rabbitmqctl(target, "delete_vhost", vhost, check=False)
    elif target.is_ferry and target.process is not None:
        assert start_ferry is not None
        config = Path(tempfile.mkdtemp(prefix="ferry-amqp-config-")) / "ferry.toml"
        config.write_text(ferry_config_toml(defs))
        broker = start_ferry("--config", str(config))
        try:
            yield ferry_target(broker)
        finally:
            shutil.rmtree(config.parent, ignore_errors=True)
    elif target.is_ferry:
        try:
            for vhost in defs.vhosts:
                _ferry_cli(target, "vhost", "add", vhost)
            for name, password, tags in defs.users:
                _ferry_cli(target, "user", "add", name, "--password", password,
                           *[a for t in tags for a in ("--tags", t)])
            for user, vhost, conf, write, read in defs.permissions:
                _ferry_cli(target, "permissions", "set", "--vhost", vhost, user, conf, write, read)
            yield target
        finally:
            for name, _, _ in defs.users:
                with contextlib.suppress(subprocess.SubprocessError, AssertionError):
                    _ferry_cli(target, "user", "delete", name)
            for vhost in defs.vhosts:
                with contextlib.suppress(subprocess.SubprocessError, AssertionError):
                    _ferry_cli(target, "vhost", "delete", vhost)
    else:
        import pytest

        pytest.skip(f"no way to administer users and vhosts on a broker of kind {target.kind!r}")


# --------------------------------------------------------------------------------------------
# Stream queue <-> Kafka topic mapping (Ferry's plan; the one place that encodes it)

# AMQP basic properties carried as Kafka headers named `amqp.<property>` (values as UTF-8 text).
AMQP_PROPERTY_HEADERS = {
    "content_type": "amqp.content-type",
    "content_encoding": "amqp.content-encoding",
    "delivery_mode": "amqp.delivery-mode",
    "priority": "amqp.priority",
    "correlation_id": "amqp.correlation-id",
    "reply_to": "amqp.reply-to",
    "expiration": "amqp.expiration",
    "message_id": "amqp.message-id",
    "timestamp": "amqp.timestamp",
    "type": "amqp.type",
    "user_id": "amqp.user-id",
    "app_id": "amqp.app-id",
}


def kafka_record_for_amqp(routing_key: str, body: bytes, props: pika.BasicProperties) -> tuple[bytes, bytes, dict[str, bytes]]:
    """The Kafka (key, value, headers) a message published over AMQP is expected to become."""
    headers: dict[str, bytes] = {}
    for name, value in (props.headers or {}).items():
        headers[name] = value if isinstance(value, bytes) else str(value).encode()
    for attr, header in AMQP_PROPERTY_HEADERS.items():
        value = getattr(props, attr)
        if value is not None:
            headers[header] = str(value).encode()
    return routing_key.encode(), body, headers


def amqp_message_for_kafka(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> dict:
    """What an AMQP consumer is expected to see for a Kafka record: routing key, body,
    plain headers (the `amqp.*` ones become properties) and the properties by pika name."""
    plain = {}
    props = {}
    by_header = {v: k for k, v in AMQP_PROPERTY_HEADERS.items()}
    for name, val in headers:
        if name in by_header:
            props[by_header[name]] = val.decode()
        else:
            plain[name] = val
    return {"routing_key": key.decode(), "body": value, "headers": plain, "properties": props}


# --------------------------------------------------------------------------------------------
# A raw-socket AMQP 0-9-1 client: handshakes by hand (AMQPLAIN) and hostile frames


class ConnectionClosed(Exception):
    """The peer closed the TCP connection."""


def enc_shortstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">B", len(b)) + b


def enc_longstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


def enc_field_value(v) -> bytes:
    if isinstance(v, bool):
        return b"t" + struct.pack(">B", int(v))
    if isinstance(v, int):
        return b"l" + struct.pack(">q", v)
    if isinstance(v, (str, bytes)):
        return b"S" + enc_longstr(v)
    if isinstance(v, dict):
        return b"F" + enc_table(v)
    raise TypeError(f"cannot encode {v!r}")


def enc_table_body(t: dict) -> bytes:
    """A field table's entries without the 4-byte length (as AMQPLAIN's response wants)."""
    return b"".join(enc_shortstr(k) + enc_field_value(v) for k, v in t.items())


def enc_table(t: dict) -> bytes:
    body = enc_table_body(t)
    return struct.pack(">I", len(body)) + body


class Decoder:
    """Reads AMQP 0-9-1 domain values from a byte string."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def octet(self) -> int:
        return self.unpack(">B")[0]

    def short(self) -> int:
        return self.unpack(">H")[0]

    def long(self) -> int:
        return self.unpack(">I")[0]

    def shortstr(self) -> str:
        return self.take(self.octet()).decode()

    def longstr(self) -> bytes:
        return self.take(self.long())

    def value(self):
        kind = self.take(1)
        # RabbitMQ's dialect of the field types (`s` is a signed short, not a short string).
        simple = {b"t": ">B", b"b": ">b", b"B": ">B", b"s": ">h", b"u": ">H", b"I": ">i", b"i": ">I",
                  b"l": ">q", b"L": ">Q", b"f": ">f", b"d": ">d"}
        if kind in simple:
            v = self.unpack(simple[kind])[0]
            return bool(v) if kind == b"t" else v
        if kind == b"D":
            scale = self.octet()
            return Decimal(self.unpack(">i")[0]).scaleb(-scale)
        if kind in (b"S", b"x"):
            return self.longstr()
        if kind == b"T":
            return datetime.fromtimestamp(self.unpack(">Q")[0], timezone.utc)
        if kind == b"F":
            return self.table()
        if kind == b"A":
            sub = Decoder(self.longstr())
            items = []
            while sub.pos < len(sub.data):
                items.append(sub.value())
            return items
        if kind == b"V":
            return None
        raise ValueError(f"unknown field type {kind!r}")

    def table(self) -> dict:
        sub = Decoder(self.longstr())
        out = {}
        while sub.pos < len(sub.data):
            key = sub.shortstr()
            out[key] = sub.value()
        return out


@dataclass
class Frame:
    type: int
    channel: int
    payload: bytes

    @property
    def method(self) -> tuple[int, int] | None:
        if self.type != FRAME_METHOD or len(self.payload) < 4:
            return None
        return struct.unpack(">HH", self.payload[:4])

    def args(self) -> Decoder:
        d = Decoder(self.payload)
        d.take(4)
        return d


def frame(ftype: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    """One frame on the wire; `end` can be wrong on purpose."""
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes([end])


def method_frame(channel: int, class_id: int, method_id: int, args: bytes) -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack(">HH", class_id, method_id) + args)


@dataclass
class CloseInfo:
    """A connection.close (or channel.close) the broker sent."""

    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


class RawAmqp:
    """A hand-written AMQP 0-9-1 client over a plain socket, for what client libraries won't do."""

    def __init__(self, host: str, port: int, timeout_s: float = RAW_READ_TIMEOUT_S):
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.settimeout(timeout_s)
        self.buf = b""
        self.server_properties: dict = {}
        self.mechanisms: list[str] = []
        self.locales: list[str] = []
        self.version: tuple[int, int] = (0, 0)
        self.channel_max = 0
        self.frame_max = 0
        self.heartbeat = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> "RawAmqp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionClosed(f"peer closed after {len(self.buf)} of {n} bytes (buffer {self.buf[:64]!r})")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self) -> Frame:
        head = self.recv_exact(7)
        ftype, channel, size = struct.unpack(">BHI", head)
        if head[:4] == b"AMQP":
            raise ValueError(f"got a protocol header back: {head + self.recv_exact(1)!r}")
        payload = self.recv_exact(size)
        end = self.recv_exact(1)
        if end[0] != FRAME_END:
            raise ValueError(f"bad frame end {end!r}")
        return Frame(ftype, channel, payload)

    def recv_method(self, skip_heartbeats: bool = True) -> Frame:
        while True:
            f = self.recv_frame()
            if f.type == FRAME_HEARTBEAT and skip_heartbeats:
                continue
            return f

    def recv_start(self) -> None:
        """Send the protocol header and read connection.start."""
        self.send(PROTOCOL_HEADER)
        f = self.recv_method()
        assert f.method == (10, 10), f"expected connection.start, got {f}"
        d = f.args()
        self.version = (d.octet(), d.octet())
        self.server_properties = d.table()
        self.mechanisms = d.longstr().decode().split()
        self.locales = d.longstr().decode().split()

    def start_ok(self, mechanism: str, response: bytes) -> None:
        client_props = {"product": "ferry-interop-raw", "capabilities": {"authentication_failure_close": True}}
        self.send(method_frame(0, 10, 11, enc_table(client_props) + enc_shortstr(mechanism) + enc_longstr(response)
                               + enc_shortstr("en_US")))

    @staticmethod
    def amqplain_response(user: str, password: str) -> bytes:
        return enc_table_body({"LOGIN": user, "PASSWORD": password})

    @staticmethod
    def plain_response(user: str, password: str) -> bytes:
        return b"\x00" + user.encode() + b"\x00" + password.encode()

    def handshake(self, user: str, password: str, mechanism: str = "PLAIN", vhost: str = "/",
                  heartbeat: int | None = None, frame_max: int | None = None, channel_max: int | None = None) -> None:
        """The whole connection handshake; raises BrokerClosed if the broker refuses."""
        self.recv_start()
        resp = self.amqplain_response(user, password) if mechanism == "AMQPLAIN" else self.plain_response(user, password)
        self.start_ok(mechanism, resp)
        f = self.recv_method()
        self._raise_if_close(f)
        assert f.method == (10, 30), f"expected connection.tune, got {f}"
        d = f.args()
        self.channel_max, self.frame_max, self.heartbeat = d.short(), d.long(), d.short()
        cm = self.channel_max if channel_max is None else channel_max
        fm = self.frame_max if frame_max is None else frame_max
        hb = self.heartbeat if heartbeat is None else heartbeat
        self.send(method_frame(0, 10, 31, struct.pack(">HIH", cm, fm, hb)))
        self.channel_max, self.frame_max, self.heartbeat = cm, fm, hb
        self.send(method_frame(0, 10, 40, enc_shortstr(vhost) + enc_shortstr("") + b"\x00"))
        f = self.recv_method()
        self._raise_if_close(f)
        assert f.method == (10, 41), f"expected connection.open-ok, got {f}"

    @staticmethod
    def _raise_if_close(f: Frame) -> None:
        if f.method in ((10, 50), (20, 40)):
            d = f.args()
            raise BrokerClosed(CloseInfo(d.short(), d.shortstr(), d.short(), d.short()))

    def open_channel(self, channel: int = 1) -> None:
        self.send(method_frame(channel, 20, 10, enc_shortstr("")))
        f = self.recv_method()
        self._raise_if_close(f)
        assert f.method == (20, 11), f"expected channel.open-ok, got {f}"

    def expect_close(self) -> tuple[CloseInfo | None, bool]:
        """Read until the broker sends connection.close (answered with close-ok) or drops the
        socket. Returns (the close, or None if it just dropped the socket; whether the socket
        was then closed)."""
        info = None
        try:
            while True:
                f = self.recv_frame()
                if f.method == (10, 50):
                    d = f.args()
                    info = CloseInfo(d.short(), d.shortstr(), d.short(), d.short())
                    with contextlib.suppress(OSError):
                        self.send(method_frame(0, 10, 51, b""))
                    break
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
            return info, True
        # After close-ok the broker closes the socket.
        try:
            while True:
                self.recv_exact(len(self.buf) + 1)
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
            return info, True
        except TimeoutError:
            return info, False


class BrokerClosed(Exception):
    """The broker answered with connection.close or channel.close."""

    def __init__(self, info: CloseInfo):
        super().__init__(f"{info.reply_code} {info.reply_text} (class {info.class_id} method {info.method_id})")
        self.info = info


# --------------------------------------------------------------------------------------------
# Small helpers shared by the test modules


def channel_close(fn: Callable[[], object]) -> tuple[int, str]:
    """Run `fn`, which must make the broker close the channel; return (reply code, text)."""
    try:
        fn()
    except pika.exceptions.ChannelClosedByBroker as err:
        return err.reply_code, err.reply_text
    raise AssertionError("the broker did not close the channel")


def connection_close(fn: Callable[[], object]) -> tuple[int, str]:
    """Run `fn`, which must make the broker close the connection; return (reply code, text)."""
    import re

    try:
        fn()
    except pika.exceptions.ConnectionClosedByBroker as err:
        return err.reply_code, err.reply_text
    except pika.exceptions.AMQPConnectionError as err:
        # pika wraps a close during the handshake (ProbableAuthenticationError and friends)
        # in an error whose text quotes the broker's close: "(403) 'ACCESS_REFUSED - ...'".
        found = re.search(r"\((\d+)\) '(.*)'", str(err)) or re.search(r'\((\d+)\) "(.*)"', str(err))
        if found is None:
            raise
        return int(found.group(1)), found.group(2)
    raise AssertionError("the broker did not close the connection")


def wait_until(pred: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "condition"):
    """Poll `pred` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def get_bodies(ch, queue: str, limit: int = 10_000, auto_ack: bool = True) -> list[bytes]:
    """Drain `queue` with basic.get; the bodies in order."""
    out = []
    for _ in range(limit):
        method, _props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            break
        out.append(body)
    return out


def message_count(ch, queue: str) -> int:
    """Ready messages in `queue` (passive declare)."""
    return ch.queue_declare(queue, passive=True).method.message_count


def consume_n(conn: pika.BlockingConnection, ch, queue: str, n: int, timeout_s: float = 10.0, auto_ack: bool = False,
              **consume_kw) -> list[tuple]:
    """Consume `n` deliveries with basic.consume; returns (method, properties, body) tuples,
    unacknowledged unless auto_ack. Fails if fewer arrive within `timeout_s`."""
    got: list[tuple] = []
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append((m, p, b)), auto_ack=auto_ack, **consume_kw)
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    assert len(got) >= n, f"got {len(got)} of {n} deliveries from {queue} within {timeout_s}s"
    return got


# Bound for tidying up after a test (closing connections, deleting what it declared), so a broker
# that stopped answering cannot hang the suite in teardown.
TEARDOWN_TIMEOUT_S = 15.0


def bounded(fn: Callable[[], object], timeout_s: float) -> None:
    """Run `fn`, giving up after `timeout_s` (SIGALRM; main thread only) and on AMQP or socket
    errors: for teardown, where the test's own verdict is already in."""
    import signal
    import threading

    def on_alarm(_sig, _frame):
        raise TimeoutError(f"gave up after {timeout_s}s")

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        # pytest-timeout (method=signal) may have its own alarm running: put it back afterwards.
        outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
        started = time.monotonic()
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        fn()
    except (TimeoutError, OSError, pika.exceptions.AMQPError):
        pass
    finally:
        if in_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer_left > 0:
                signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 0.001))


def close_quietly(conn: pika.BlockingConnection) -> None:
    """Close a pika connection, bounded, ignoring errors."""
    if conn.is_open:
        bounded(conn.close, TEARDOWN_TIMEOUT_S)


class Cleanup:
    """Queues, exchanges, vhosts the test created on a shared broker, removed afterwards."""

    def __init__(self, target: AmqpTarget):
        self.target = target
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, name: str) -> str:
        self.queues.append(name)
        return name

    def exchange(self, name: str) -> str:
        self.exchanges.append(name)
        return name

    def run(self) -> None:
        """Delete what was registered (bounded: a hung broker cannot hang teardown)."""
        if self.queues or self.exchanges:
            bounded(self._run, TEARDOWN_TIMEOUT_S)

    def _run(self) -> None:
        try:
            conn = self.target.connect()
        except pika.exceptions.AMQPError:
            return
        try:
            for kind, names in (("queue", self.queues), ("exchange", self.exchanges)):
                for name in names:
                    try:
                        ch = conn.channel()
                        if kind == "queue":
                            ch.queue_delete(name)
                        else:
                            ch.exchange_delete(name)
                        ch.close()
                    except pika.exceptions.AMQPError:
                        if not conn.is_open:
                            return
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()


def queue_exists(conn: pika.BlockingConnection, queue: str) -> bool:
    """True if a passive declare of `queue` succeeds (on a throw-away channel)."""
    ch = conn.channel()
    try:
        ch.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as err:
        if err.reply_code == 404:
            return False
        raise
    ch.close()
    return True


def set_memory_alarm(target: AmqpTarget, on: bool) -> None:
    """Raise (`on`) or clear the broker's memory alarm, which blocks publishing connections.

    RabbitMQ: `rabbitmqctl set_vm_memory_high_watermark` on a node the suite controls (never the
    shared node). Ferry: `ferry limits set --memory-high-watermark-bytes 1|default` through the
    HTTP admin listener of a broker the suite started.
    """
    import pytest

    if target.is_rabbitmq and target.process is not None:
        args = ["absolute", "1"] if on else ["0.4"]
        _rabbitmqctl(target, "set_vm_memory_high_watermark", *args)
    elif target.is_ferry and getattr(target.process, "http_port", None) is not None:
        from ferry_process import ferry_binary

        admin = f"{target.process.host}:{target.process.http_port}"
        subprocess.run(
            [str(ferry_binary()), "limits", "set", "--memory-high-watermark-bytes", "1" if on else "default",
             "--http", admin],
            check=True, timeout=RABBITMQCTL_TIMEOUT_S, capture_output=True,
        )
    else:
        pytest.skip(f"no on-demand memory alarm for a broker of kind {target.kind!r}")
