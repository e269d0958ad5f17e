"""The `ferry` broker as a child process: start on a free port, stop, kill -9, restart."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from functools import lru_cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# How long a broker may take to accept connections after it was started.
BROKER_START_TIMEOUT_S = 30.0
# How long a broker may take to exit after SIGTERM before it is killed.
BROKER_STOP_TIMEOUT_S = 15.0
# Environment variables of the test tooling that must not reach the broker's FERRY_* config.
TOOLING_ENV_VARS = ("FERRY_BIN", "FERRY_EXTRA_ARGS")
# Lines of broker log shown when a test fails.
LOG_TAIL_LINES = 60


def ferry_binary() -> Path:
    """The broker binary under test."""
    return Path(os.environ.get("FERRY_BIN", REPO_ROOT / "target" / "debug" / "ferry"))


@lru_cache(maxsize=None)
def serve_help(binary: str) -> str:
    """`ferry serve --help` of a binary (read once), to tell which listener flags it has."""
    try:
        out = subprocess.run(
            [binary, "serve", "--help"], capture_output=True, text=True, timeout=BROKER_START_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout + out.stderr


def binary_has_amqp_listener(binary: str) -> bool:
    """True when `ferry serve` accepts `--amqp-listen`."""
    return "--amqp-listen" in serve_help(binary)


def binary_has_http_listener(binary: str) -> bool:
    """True when `ferry serve` accepts `--http-listen`."""
    return "--http-listen" in serve_help(binary)


def free_port() -> int:
    """An ephemeral 127.0.0.1 port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Block until host:port accepts a TCP connection, or raise."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")
            time.sleep(0.05)


class FerryBroker:
    """One broker process on a fixed port and data directory, restartable."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None, port: int | None = None):
        self.data_dir = data_dir
        self.extra_args = list(extra_args or [])
        self.port = port or free_port()
        self.host = "127.0.0.1"
        # Every broker gets its own AMQP port, so brokers never collide on the default 5672;
        # None when the binary has no AMQP listener.
        self.amqp_port = free_port() if binary_has_amqp_listener(str(ferry_binary())) else None
        # The same for the HTTP admin listener (default 8080).
        self.http_port = free_port() if binary_has_http_listener(str(ferry_binary())) else None
        self.log_path = data_dir.parent / f"{data_dir.name}-broker.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        """The `host:port` clients connect to."""
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The exact command line used to start the broker."""
        return [
            str(ferry_binary()),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--kafka-listen",
            self.bootstrap,
            *([] if self.amqp_port is None else ["--amqp-listen", f"{self.host}:{self.amqp_port}"]),
            *([] if self.http_port is None else ["--http-listen", f"{self.host}:{self.http_port}"]),
            *self.extra_args,
            # Lets CI add flags every broker needs (e.g. to turn off future listeners).
            *shlex.split(os.environ.get("FERRY_EXTRA_ARGS", "")),
        ]

    def start(self) -> "FerryBroker":
        """Start the process and wait (bounded) until its ports accept connections."""
        binary = ferry_binary()
        if not binary.exists():
            pytest.fail(f"broker binary {binary} not found: run `cargo build` or set FERRY_BIN", pytrace=False)
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # FERRY_* variables configure the broker; the test tooling's own are not passed on.
        env = {k: v for k, v in os.environ.items() if k not in TOOLING_ENV_VARS}
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        log.close()
        try:
            wait_for_port(self.host, self.port, BROKER_START_TIMEOUT_S, self.proc)
            if self.amqp_port is not None:
                wait_for_port(self.host, self.amqp_port, BROKER_START_TIMEOUT_S, self.proc)
        except (RuntimeError, TimeoutError) as err:
            self.kill9()
            pytest.fail(f"{err}\n--- broker log ---\n{self.log_tail()}", pytrace=False)
        return self

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=BROKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=BROKER_STOP_TIMEOUT_S)
            return None

    def kill9(self) -> None:
        """Kill the broker with SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=BROKER_STOP_TIMEOUT_S)

    def restart(self, clean: bool = True) -> "FerryBroker":
        """Stop (SIGTERM when `clean`, else SIGKILL) and start again on the same port and data dir."""
        if clean:
            self.stop()
        else:
            self.kill9()
        return self.start()

    def is_running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the broker's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])
