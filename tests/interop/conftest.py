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
