"""Hostile bytes on one connection get an error or a close, never a hang or a broker crash,
while a confluent-kafka producer and consumer on the same broker carry on undisturbed.
"""

import random
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition

import kafka_wire as kw
from helpers import consumer, create_topic, producer, unique, watermarks

# How long the broker may take to close a connection it cannot serve.
CLOSE_TIMEOUT_S = 10.0
# The steady client's longest tolerated pause between two acknowledgements.
MAX_STALL_S = 5.0
# The broker's resident memory may not grow by more than this while being attacked.
MAX_RSS_GROWTH_BYTES = 256 * 1024 * 1024


def connect(bootstrap):
    return kw.KafkaConnection.to(bootstrap, timeout_s=CLOSE_TIMEOUT_S)


def closed_or_answered(conn: kw.KafkaConnection, correlation_id: int | None) -> str:
    """Wait (bounded) for the broker to close the connection or send one response frame."""
    conn.sock.settimeout(CLOSE_TIMEOUT_S)
    try:
        frame = conn.recv_frame()
    except (kw.ConnectionClosed, ConnectionResetError, BrokenPipeError):
        return "closed"
    except TimeoutError:
        raise AssertionError(f"broker neither answered nor closed within {CLOSE_TIMEOUT_S}s")
    if correlation_id is not None:
        got = kw.Reader(frame).i32()
        assert got == correlation_id, f"answer carries correlation id {got}, expected {correlation_id}"
    return "answered"


def assert_alive(bootstrap):
    """A fresh connection still gets a correct ApiVersions answer."""
    with connect(bootstrap) as conn:
        res = kw.api_versions(conn, 0)
    assert res.error_code == kw.ERR_NONE
    assert kw.API_PRODUCE in res.versions and kw.API_FETCH in res.versions


# Each bad input opens its own connection and asserts what the broker did with it.

def http_request(bootstrap):
    """'GET ' read as a length prefix is ~1.1 GB: refuse, do not wait for it."""
    with connect(bootstrap) as conn:
        conn.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert conn.wait_closed(CLOSE_TIMEOUT_S), "HTTP request on the Kafka port did not close the connection"


def huge_length_prefix(bootstrap):
    with connect(bootstrap) as conn:
        conn.send_raw(b"\x7f\xff\xff\xff" + b"\x00" * 64)
        assert conn.wait_closed(CLOSE_TIMEOUT_S), "0x7fffffff length prefix did not close the connection"


def negative_length_prefix(bootstrap):
    with connect(bootstrap) as conn:
        conn.send_raw(b"\xff\xff\xff\xf0" + b"\x00" * 16)
        assert conn.wait_closed(CLOSE_TIMEOUT_S), "negative length prefix did not close the connection"


def empty_frame(bootstrap):
    with connect(bootstrap) as conn:
        conn.send_raw(kw.i32(0))
        assert conn.wait_closed(CLOSE_TIMEOUT_S), "zero-length frame did not close the connection"


def random_framed_garbage(bootstrap):
    rng = random.Random(20240611)
    for _ in range(20):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        with connect(bootstrap) as conn:
            conn.send_raw(kw.i32(len(payload)) + payload)
            closed_or_answered(conn, None)


def unknown_api_key(bootstrap):
    with connect(bootstrap) as conn:
        cid = conn.send(12345, 0, b"\x00" * 8)
        closed_or_answered(conn, cid)


def unsupported_metadata_version(bootstrap):
    with connect(bootstrap) as conn:
        cid = conn.send(3, 99, b"\x00" * 8, flexible_header=True)
        closed_or_answered(conn, cid)


def unsupported_api_versions_version(bootstrap):
    """Kafka answers ApiVersions it cannot parse with a v0 body: error 35 and its own ranges."""
    with connect(bootstrap) as conn:
        cid = conn.send(kw.API_API_VERSIONS, 99, b"\x00", flexible_header=True)
        res = kw.decode_api_versions_v0(conn.recv(cid))
    assert res.error_code == kw.ERR_UNSUPPORTED_VERSION
    assert kw.API_API_VERSIONS in res.versions, res.versions
    lo, hi = res.versions[kw.API_API_VERSIONS]
    assert lo == 0 and hi >= 3, (lo, hi)


def truncated_request(bootstrap):
    with connect(bootstrap) as conn:
        conn.send_raw(kw.i32(100) + kw.i16(18) + kw.i16(0) + kw.i32(1))
        # The client vanishes mid-frame; nothing to assert on this socket.


def garbage_produce_body(bootstrap):
    with connect(bootstrap) as conn:
        body = kw.string(None) + kw.i16(-1) + kw.i32(1000) + kw.i32(1) + kw.i16(3000) + b"zz"
        cid = conn.send(kw.API_PRODUCE, kw.PRODUCE_VERSION, body)
        closed_or_answered(conn, cid)


def corrupt_batch(bootstrap, topic):
    """A batch whose CRC does not match is refused with CORRUPT_MESSAGE and not stored."""
    before = watermarks(bootstrap, topic, 0)
    with connect(bootstrap) as conn:
        batch = kw.record_batch([kw.Record(b"flipped")], corrupt_crc=True)
        res = kw.produce(conn, topic, 0, batch)
    assert res.error_code == kw.ERR_CORRUPT_MESSAGE, f"corrupt batch got error {res.error_code}"
    assert watermarks(bootstrap, topic, 0) == before


BAD_INPUTS = [
    http_request,
    huge_length_prefix,
    negative_length_prefix,
    empty_frame,
    random_framed_garbage,
    unknown_api_key,
    unsupported_metadata_version,
    unsupported_api_versions_version,
    truncated_request,
    garbage_produce_body,
]


@pytest.mark.parametrize("bad_input", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_gets_error_or_close(broker, bad_input):
    bad_input(broker.bootstrap)
    assert broker.is_running(), "the broker died"
    assert_alive(broker.bootstrap)


def test_corrupt_batch_is_refused(broker):
    topic = create_topic(broker.bootstrap, unique("corrupt"))
    corrupt_batch(broker.bootstrap, topic)
    assert_alive(broker.bootstrap)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


class SteadyClient(threading.Thread):
    """Produces one message every few milliseconds and consumes them back, until stopped."""

    def __init__(self, bootstrap, topic):
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.stop_event = threading.Event()
        self.sent, self.acked, self.errors, self.consumed = [], [], [], []
        self.ack_times = []
        self.failure = None

    def on_delivery(self, err, msg):
        if err is not None:
            self.errors.append(err)
        else:
            self.acked.append(msg.value())
            self.ack_times.append(time.monotonic())

    def run(self):
        try:
            p = producer(self.bootstrap, acks="all", linger_ms=0)
            c = consumer(self.bootstrap)
            c.assign([TopicPartition(self.topic, 0, 0)])
            i = 0
            while not self.stop_event.is_set():
                value = f"steady-{i}".encode()
                p.produce(self.topic, value=value, partition=0, on_delivery=self.on_delivery)
                self.sent.append(value)
                i += 1
                p.poll(0)
                self._drain(c, 0.02)
            assert p.flush(30) == 0, "steady producer could not flush"
            deadline = time.monotonic() + 30
            while len(self.consumed) < len(self.sent) and time.monotonic() < deadline:
                self._drain(c, 0.2)
            c.close()
        except BaseException as err:  # surfaced by the test thread
            self.failure = err

    def _drain(self, c, timeout):
        msg = c.poll(timeout)
        if msg is None:
            return
        if msg.error() is not None:
            if msg.error().code() != KafkaError._PARTITION_EOF:
                self.errors.append(msg.error())
            return
        self.consumed.append(msg.value())


def test_steady_client_unaffected_by_bad_connections(broker):
    topic = create_topic(broker.bootstrap, unique("steady"))
    side_topic = create_topic(broker.bootstrap, unique("corrupt-side"))
    rss_before = rss_bytes(broker.proc.pid)
    steady = SteadyClient(broker.bootstrap, topic)
    steady.start()
    try:
        # Let the steady client get going before the attack starts.
        deadline = time.monotonic() + 30
        while len(steady.acked) < 20:
            assert time.monotonic() < deadline and steady.is_alive(), "steady client never got going"
            time.sleep(0.05)
        acked_at_start = len(steady.acked)
        for _ in range(3):
            for bad_input in BAD_INPUTS:
                bad_input(broker.bootstrap)
            corrupt_batch(broker.bootstrap, side_topic)
        # Huge length prefixes in parallel: the broker must not reserve memory for them.
        conns = [connect(broker.bootstrap) for _ in range(20)]
        for conn in conns:
            conn.send_raw(b"\x7f\xff\xff\xff")
        for conn in conns:
            assert conn.wait_closed(CLOSE_TIMEOUT_S)
            conn.close()
        acked_during = len(steady.acked) - acked_at_start
    finally:
        steady.stop_event.set()
        steady.join(timeout=90)
    assert not steady.is_alive(), "steady client did not stop"
    assert steady.failure is None, f"steady client failed: {steady.failure!r}"
    assert not steady.errors, f"steady client saw errors: {steady.errors[:5]}"
    assert acked_during > 0, "steady client made no progress while bad connections were served"
    assert steady.acked == steady.sent, "some steady messages were not acknowledged, or out of order"
    assert steady.consumed == steady.sent, "steady consumer did not get exactly what was produced"
    gaps = [b - a for a, b in zip(steady.ack_times, steady.ack_times[1:])]
    assert max(gaps) < MAX_STALL_S, f"steady client stalled for {max(gaps):.1f}s"
    assert broker.is_running()
    growth = rss_bytes(broker.proc.pid) - rss_before
    assert growth < MAX_RSS_GROWTH_BYTES, f"broker RSS grew by {growth >> 20} MiB under bad input"
