"""Fixtures that run the real `ferry` binary for the interop suites.

Every test talks to a broker process started from the binary the build produced
(`FERRY_BIN`, or `target/debug/ferry` at the repository root), listening on a free
127.0.0.1 port with a data directory under pytest's tmp_path. The broker's log is
kept in that directory and its tail is printed when a test fails.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from ferry_process import FerryBroker


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the item so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _print_logs_if_failed(request, brokers: list[FerryBroker]) -> None:
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for broker in brokers:
            print(f"\n--- tail of broker log {broker.log_path} ---\n{broker.log_tail()}")


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory) -> Iterator[FerryBroker]:
    """A broker shared by the tests of one module (tests use unique topic and group names)."""
    broker = FerryBroker(tmp_path_factory.mktemp("ferry") / "data").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def broker(module_broker: FerryBroker, request) -> Iterator[FerryBroker]:
    """The module's shared broker, restarted if an earlier test left it dead."""
    if not module_broker.is_running():
        module_broker.start()
    yield module_broker
    _print_logs_if_failed(request, [module_broker])


@pytest.fixture
def broker_factory(tmp_path, request) -> Iterator:
    """Start brokers with extra command-line flags; each is stopped after the test."""
    started: list[FerryBroker] = []

    def start(*extra_args: str) -> FerryBroker:
        broker = FerryBroker(tmp_path / f"data{len(started)}", list(extra_args))
        started.append(broker)
        return broker.start()

    yield start
    _print_logs_if_failed(request, started)
    for broker in started:
        broker.stop()


@pytest.fixture
def bootstrap(broker: FerryBroker) -> str:
    """Bootstrap address of the module's broker."""
    return broker.bootstrap


# ---------------------------------------------------------------------------------------------
# AMQP 0-9-1: the broker under test is chosen by address (see amqp_target.py).

import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from amqp_target import (  # noqa: E402
    AmqpTarget,
    PrivateRabbit,
    TEST_CONSUMER_TIMEOUT_MS,
    ferry_config_toml,
    ferry_target,
    Definitions,
    private_rabbit_target,
    rabbitmq_installed,
    target_from_env,
)
from ferry_process import binary_has_amqp_listener, ferry_binary  # noqa: E402


def amqp_target_kind() -> str:
    """The kind of AMQP broker under test: `ferry` unless AMQP_TARGET names another."""
    if target_from_env() is None:
        return "ferry"
    return os.environ.get("AMQP_TARGET_KIND", "other")


def pytest_collection_modifyitems(config, items):
    """`ferry_only` tests are skipped unless the AMQP target is Ferry."""
    kind = amqp_target_kind()
    for item in items:
        marker = item.get_closest_marker("ferry_only")
        if marker is not None and kind != "ferry":
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "Ferry-only behaviour")
            item.add_marker(pytest.mark.skip(reason=f"target is {kind}, not ferry: {reason}"))


def _start_ferry_for_amqp(data_dir: Path, *extra_args: str) -> FerryBroker:
    binary = ferry_binary()
    if binary.exists() and not binary_has_amqp_listener(str(binary)):
        pytest.fail(
            f"{binary} has no AMQP listener (`ferry serve --help` lists no --amqp-listen); "
            "point the suite at another broker with AMQP_TARGET=host:port",
            pytrace=False,
        )
    return FerryBroker(data_dir, list(extra_args)).start()


@pytest.fixture(scope="session")
def amqp(tmp_path_factory) -> Iterator[AmqpTarget]:
    """The AMQP broker under test: AMQP_TARGET, or a Ferry process started for the session."""
    from amqp_target import preflight

    external = target_from_env()
    if external is not None:
        problem = preflight(external)
        if problem is not None:
            pytest.fail(f"AMQP target {external.address} is not usable: {problem}", pytrace=False)
        yield external
        return
    broker = _start_ferry_for_amqp(tmp_path_factory.mktemp("ferry-amqp") / "data")
    try:
        target = ferry_target(broker)
        problem = preflight(target)
        if problem is not None:
            pytest.fail(f"ferry's AMQP listener {target.address} is not usable: {problem}\n"
                        f"--- broker log ---\n{broker.log_tail()}", pytrace=False)
        yield target
    finally:
        broker.stop()


@pytest.fixture
def start_ferry(tmp_path, request) -> Iterator:
    """Start extra Ferry processes (e.g. with a config file); each is stopped after the test."""
    started: list[FerryBroker] = []

    def start(*extra_args: str) -> FerryBroker:
        broker = _start_ferry_for_amqp(tmp_path / f"amqp-data{len(started)}", *extra_args)
        started.append(broker)
        return broker

    yield start
    _print_logs_if_failed(request, started)
    for broker in started:
        broker.stop()


@pytest.fixture(scope="session")
def controlled_amqp(amqp: AmqpTarget, tmp_path_factory) -> Iterator[AmqpTarget]:
    """A broker of the target's kind whose process the suite controls (restart, kill -9) and
    whose consumer acknowledgement timeout is TEST_CONSUMER_TIMEOUT_MS.

    Ferry: its own process, configured by file. RabbitMQ: a private node (own name, port and
    data dir) — the shared RabbitMQ of the machine is never restarted.
    """
    if amqp.is_ferry:
        config = Path(tempfile.mkdtemp(prefix="ferry-amqp-controlled-")) / "ferry.toml"
        config.write_text(ferry_config_toml(Definitions(), consumer_timeout_ms=TEST_CONSUMER_TIMEOUT_MS))
        broker = _start_ferry_for_amqp(tmp_path_factory.mktemp("ferry-amqp-controlled") / "data", "--config", str(config))
        try:
            yield ferry_target(broker)
        finally:
            broker.stop()
    elif amqp.is_rabbitmq:
        if not rabbitmq_installed():
            pytest.skip("needs a RabbitMQ node the suite may restart: rabbitmq-server is not installed or we are not root")
        node = PrivateRabbit()
        try:
            try:
                node.start()
            except (RuntimeError, TimeoutError) as err:
                pytest.fail(f"private RabbitMQ node did not start: {err}\n{node.log_tail()}", pytrace=False)
            yield private_rabbit_target(node)
        finally:
            node.cleanup()
    else:
        pytest.skip(f"cannot control the process of a broker of kind {amqp.kind!r}")


@pytest.fixture
def restartable(controlled_amqp: AmqpTarget) -> AmqpTarget:
    """The controlled broker, started again if an earlier test left it stopped."""
    if not controlled_amqp.process.is_running():
        controlled_amqp.start()
    return controlled_amqp


@pytest.fixture
def cleanup(amqp: AmqpTarget) -> Iterator:
    """Registers queues and exchanges a test declares; deletes them after the test."""
    from amqp_target import Cleanup

    registry = Cleanup(amqp)
    yield registry
    registry.run()


@pytest.fixture
def conn(amqp: AmqpTarget) -> Iterator:
    """A pika BlockingConnection to the AMQP target, closed (bounded) after the test."""
    from amqp_target import close_quietly

    connection = amqp.connect()
    yield connection
    close_quietly(connection)


@pytest.fixture
def ch(conn):
    """A channel on `conn`."""
    return conn.channel()


@pytest.fixture(scope="module")
def module_start_ferry(tmp_path_factory) -> Iterator:
    """Like `start_ferry`, but the processes live until the module's tests are done."""
    started: list[FerryBroker] = []

    def start(*extra_args: str) -> FerryBroker:
        broker = _start_ferry_for_amqp(tmp_path_factory.mktemp("ferry-amqp-module") / "data", *extra_args)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()
