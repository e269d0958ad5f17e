"""A hand-written slice of the Kafka wire protocol for tests that need byte-level control.

Real clients never resend the same batch on purpose, never skip a sequence number and
never send garbage, so the tests that check those paths build requests here: a
RecordBatch v2 encoder (CRC32C over attributes..end), non-flexible request framing
(header v1), and decoders for the few responses the tests read (ApiVersions v0,
InitProducerId v0, Produce v3, Fetch v4). Versions are the oldest ones Kafka 4.0 still
serves (KIP-896), which keeps the encodings short and non-flexible.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

import crc32c

API_PRODUCE = 0
API_FETCH = 1
API_API_VERSIONS = 18
API_INIT_PRODUCER_ID = 22

ERR_NONE = 0
ERR_CORRUPT_MESSAGE = 2
ERR_UNSUPPORTED_VERSION = 35
ERR_OUT_OF_ORDER_SEQUENCE = 45
ERR_DUPLICATE_SEQUENCE = 46

COMPRESSION_NONE = 0
COMPRESSION_GZIP = 1
COMPRESSION_SNAPPY = 2
COMPRESSION_LZ4 = 3
COMPRESSION_ZSTD = 4
COMPRESSION_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}

# A response frame larger than this is treated as a protocol error by these tests.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Offset of the attributes field inside a RecordBatch v2 header.
BATCH_ATTRIBUTES_OFFSET = 21
# Size of a RecordBatch v2 header (through the record count).
BATCH_HEADER_BYTES = 61


# ---------------------------------------------------------------- primitives

def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    """Kafka STRING / NULLABLE_STRING (int16 length)."""
    if s is None:
        return i16(-1)
    raw = s.encode()
    return i16(len(raw)) + raw


def nbytes(b: bytes | None) -> bytes:
    """Kafka BYTES / NULLABLE_BYTES (int32 length)."""
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items: list[bytes]) -> bytes:
    """Kafka ARRAY (int32 count) of already-encoded items."""
    return i32(len(items)) + b"".join(items)


def uvarint(v: int) -> bytes:
    """Unsigned varint."""
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def compact_string(s: str) -> bytes:
    """COMPACT_STRING of a flexible version (uvarint length + 1)."""
    raw = s.encode()
    return uvarint(len(raw) + 1) + raw


def varint(v: int) -> bytes:
    """Zig-zag varint, as records use (also valid for varlong)."""
    z = (v << 1) ^ (v >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Reader:
    """Sequential big-endian decoder over one response body."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"truncated response: need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def i8(self) -> int:
        return struct.unpack(">b", self._take(1))[0]

    def i16(self) -> int:
        return struct.unpack(">h", self._take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def i64(self) -> int:
        return struct.unpack(">q", self._take(8))[0]

    def string(self) -> str | None:
        n = self.i16()
        return None if n < 0 else self._take(n).decode()

    def nbytes(self) -> bytes | None:
        n = self.i32()
        return None if n < 0 else self._take(n)

    def count(self) -> int:
        n = self.i32()
        if n < -1 or n > len(self.data):
            raise ValueError(f"implausible array length {n}")
        return max(n, 0)

    def uvarint(self) -> int:
        """Unsigned varint (flexible versions' lengths and tags)."""
        shift = value = 0
        while True:
            byte = self._take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 35:
                raise ValueError("varint too long")

    def tagged_fields(self) -> dict[int, bytes]:
        """A flexible version's tagged-field section."""
        fields = {}
        for _ in range(self.uvarint()):
            tag = self.uvarint()
            fields[tag] = self._take(self.uvarint())
        return fields

    def remaining(self) -> int:
        return len(self.data) - self.pos


# ---------------------------------------------------------------- record batches

@dataclass
class Record:
    """One record to encode."""

    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()


def encode_record(rec: Record, offset_delta: int, timestamp_delta: int) -> bytes:
    body = bytearray()
    body += i8(0)  # attributes (unused)
    body += varint(timestamp_delta)
    body += varint(offset_delta)
    for field in (rec.key, rec.value):
        if field is None:
            body += varint(-1)
        else:
            body += varint(len(field)) + field
    body += varint(len(rec.headers))
    for hkey, hval in rec.headers:
        raw = hkey.encode()
        body += varint(len(raw)) + raw
        body += varint(-1) if hval is None else varint(len(hval)) + hval
    return varint(len(body)) + bytes(body)


def record_batch(records: list[Record], *, producer_id: int = -1, producer_epoch: int = -1,
                 base_sequence: int = -1, timestamp_ms: int | None = None, base_offset: int = 0,
                 corrupt_crc: bool = False) -> bytes:
    """An uncompressed RecordBatch v2 with a correct (or deliberately wrong) CRC32C."""
    assert records, "a batch needs at least one record"
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    encoded = b"".join(encode_record(r, i, 0) for i, r in enumerate(records))
    after_crc = (
        i16(0)  # attributes: no compression, CreateTime, not transactional, not control
        + i32(len(records) - 1)  # last offset delta
        + i64(ts)  # base timestamp
        + i64(ts)  # max timestamp
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(len(records))
        + encoded
    )
    crc = crc32c.crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    partition_leader_epoch = -1
    magic = 2
    batch_length = 4 + 1 + 4 + len(after_crc)  # leader epoch + magic + crc + rest
    return (
        i64(base_offset)
        + i32(batch_length)
        + i32(partition_leader_epoch)
        + i8(magic)
        + struct.pack(">I", crc)
        + after_crc
    )


@dataclass
class BatchHeader:
    """The fixed fields of one stored RecordBatch v2, as served by Fetch."""

    base_offset: int
    length: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    crc_ok: bool

    @property
    def compression(self) -> int:
        return self.attributes & 0x07


def parse_batches(records: bytes) -> list[BatchHeader]:
    """Split a Fetch `records` blob into batch headers (a trailing partial batch is ignored, as clients do)."""
    out = []
    pos = 0
    while pos + BATCH_HEADER_BYTES <= len(records):
        base_offset, length = struct.unpack_from(">qi", records, pos)
        end = pos + 12 + length
        if length < BATCH_HEADER_BYTES - 12 or end > len(records):
            break
        _epoch, magic, crc = struct.unpack_from(">ibI", records, pos + 12)
        (attributes, last_delta, _base_ts, _max_ts, pid, pepoch, base_seq, count) = struct.unpack_from(
            ">hiqqqhii", records, pos + BATCH_ATTRIBUTES_OFFSET
        )
        crc_ok = crc32c.crc32c(records[pos + BATCH_ATTRIBUTES_OFFSET:end]) == crc
        out.append(BatchHeader(base_offset, length, magic, crc, attributes, last_delta, pid, pepoch,
                               base_seq, count, crc_ok))
        pos = end
    return out


# ---------------------------------------------------------------- connection

class ConnectionClosed(Exception):
    """The broker closed the connection."""


class KafkaConnection:
    """A blocking socket speaking length-prefixed Kafka frames, every read bounded."""

    def __init__(self, host: str, port: int, timeout_s: float = 10.0, client_id: str = "ferry-interop"):
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.settimeout(timeout_s)
        self.client_id = client_id
        self.next_correlation_id = 1

    @classmethod
    def to(cls, bootstrap: str, timeout_s: float = 10.0) -> "KafkaConnection":
        host, port = bootstrap.rsplit(":", 1)
        return cls(host, int(port), timeout_s)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, api_key: int, api_version: int, body: bytes, flexible_header: bool = False) -> int:
        """Send one request (header v1, or v2 when `flexible_header`); returns its correlation id."""
        cid = self.next_correlation_id
        self.next_correlation_id += 1
        header = i16(api_key) + i16(api_version) + i32(cid) + string(self.client_id)
        if flexible_header:
            header += b"\x00"  # empty tagged fields
        payload = header + body
        self.sock.sendall(i32(len(payload)) + payload)
        return cid

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionClosed(f"closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        """One response frame (without its length prefix)."""
        (size,) = struct.unpack(">i", self._read_exact(4))
        if size < 4 or size > MAX_RESPONSE_BYTES:
            raise ValueError(f"implausible response size {size}")
        return self._read_exact(size)

    def recv(self, correlation_id: int) -> Reader:
        """The body of the response to `correlation_id` (response header v0)."""
        r = Reader(self.recv_frame())
        got = r.i32()
        if got != correlation_id:
            raise AssertionError(f"response correlation id {got}, expected {correlation_id}")
        return r

    def wait_closed(self, timeout_s: float) -> bool:
        """True if the broker closes (or resets) the connection within `timeout_s`.

        Any bytes the broker sends first (an error response) are read and discarded.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
        return False


# ---------------------------------------------------------------- requests

@dataclass
class ApiVersionsResult:
    error_code: int
    versions: dict[int, tuple[int, int]]


def api_versions(conn: KafkaConnection, version: int = 0) -> ApiVersionsResult:
    """ApiVersions v0-v2 (non-flexible)."""
    assert 0 <= version <= 2
    cid = conn.send(API_API_VERSIONS, version, b"")
    return decode_api_versions_v0(conn.recv(cid))


def decode_api_versions_v0(r: Reader) -> ApiVersionsResult:
    """The v0 body: error code and the (key, min, max) list."""
    error = r.i16()
    versions = {}
    for _ in range(r.count()):
        key, lo, hi = r.i16(), r.i16(), r.i16()
        versions[key] = (lo, hi)
    return ApiVersionsResult(error, versions)


@dataclass
class ProducerId:
    error_code: int
    producer_id: int
    epoch: int


def init_producer_id(conn: KafkaConnection) -> ProducerId:
    """InitProducerId v0 for an idempotent (non-transactional) producer."""
    body = string(None) + i32(60000)
    cid = conn.send(API_INIT_PRODUCER_ID, 0, body)
    r = conn.recv(cid)
    _throttle = r.i32()
    return ProducerId(r.i16(), r.i64(), r.i16())


@dataclass
class ProduceResult:
    error_code: int
    base_offset: int


PRODUCE_VERSION = 3


def produce_request(topic: str, partition: int, batch: bytes, acks: int = -1, timeout_ms: int = 10000) -> bytes:
    """A Produce v3 request body with one batch for one partition."""
    return (
        string(None)  # transactional id
        + i16(acks)
        + i32(timeout_ms)
        + array([string(topic) + array([i32(partition) + nbytes(batch)])])
    )


def produce(conn: KafkaConnection, topic: str, partition: int, batch: bytes, acks: int = -1) -> ProduceResult:
    """Produce v3 of one batch; returns that partition's error code and base offset."""
    cid = conn.send(API_PRODUCE, PRODUCE_VERSION, produce_request(topic, partition, batch, acks))
    r = conn.recv(cid)
    results = []
    for _ in range(r.count()):
        name = r.string()
        for _ in range(r.count()):
            index, error, base_offset, _append_time = r.i32(), r.i16(), r.i64(), r.i64()
            if name == topic and index == partition:
                results.append(ProduceResult(error, base_offset))
    assert len(results) == 1, f"expected one partition result for {topic}/{partition}, got {results}"
    return results[0]


@dataclass
class FetchResult:
    error_code: int
    high_watermark: int
    records: bytes


def fetch(conn: KafkaConnection, topic: str, partition: int, offset: int,
          max_bytes: int = 4 * 1024 * 1024, max_wait_ms: int = 500) -> FetchResult:
    """Fetch v4 (read_uncommitted) from one partition."""
    body = (
        i32(-1)  # replica id: a consumer
        + i32(max_wait_ms)
        + i32(1)  # min bytes
        + i32(max_bytes)
        + i8(0)  # isolation level
        + array([string(topic) + array([i32(partition) + i64(offset) + i32(max_bytes)])])
    )
    cid = conn.send(API_FETCH, 4, body)
    r = conn.recv(cid)
    _throttle = r.i32()
    found = None
    for _ in range(r.count()):
        name = r.string()
        for _ in range(r.count()):
            index, error, hw, _lso = r.i32(), r.i16(), r.i64(), r.i64()
            for _ in range(r.count()):
                r.i64(), r.i64()
            records = r.nbytes() or b""
            if name == topic and index == partition:
                found = FetchResult(error, hw, records)
    assert found is not None, f"no fetch result for {topic}/{partition}"
    return found


def fetch_all_batches(bootstrap: str, topic: str, partition: int, timeout_s: float = 30.0) -> list[BatchHeader]:
    """Every batch header of a partition from offset 0 up to its high watermark."""
    batches: list[BatchHeader] = []
    offset = 0
    deadline = time.monotonic() + timeout_s
    with KafkaConnection.to(bootstrap) as conn:
        while True:
            assert time.monotonic() < deadline, f"fetching {topic}/{partition} took over {timeout_s}s"
            res = fetch(conn, topic, partition, offset)
            assert res.error_code == ERR_NONE, f"fetch error {res.error_code}"
            new = [b for b in parse_batches(res.records) if b.base_offset + b.last_offset_delta >= offset]
            batches.extend(new)
            if new:
                offset = new[-1].base_offset + new[-1].last_offset_delta + 1
            if offset >= res.high_watermark:
                return batches
