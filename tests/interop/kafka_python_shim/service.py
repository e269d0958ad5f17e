"""Stand-in for kafka-python's `test/service.py`, which its 3.0.12 sdist does not ship.

The sdist's integration fixtures import `ExternalService` and `SpawnedService` from
`test.service`. scripts/kafka-python-suite.sh copies this file there. Only the external-broker
path is used against Ferry (KAFKA_URI is always set), so `SpawnedService` refuses to run.
"""

import logging

__all__ = ["ExternalService", "SpawnedService"]

log = logging.getLogger(__name__)


class ExternalService:
    """A broker that is already running at host:port (Ferry, started by the suite script)."""

    def __init__(self, host, port):
        log.info("Using already running service at %s:%d", host, port)
        self.host = host
        self.port = port

    def open(self):
        pass

    def close(self):
        pass

    def stop(self):
        pass

    def dump_logs(self):
        pass

    def wait_for(self, pattern, timeout=30):
        return True


class SpawnedService:
    """Spawning Kafka/ZooKeeper processes is not supported in Ferry's run of the suite."""

    def __init__(self, args=None, env=None):
        raise RuntimeError(
            "kafka-python's suite tried to spawn its own broker; against Ferry only tests that use "
            "the external broker (KAFKA_URI) can run. Deselect this test in "
            "tests/interop/kafka_python_suite_skips.txt."
        )
