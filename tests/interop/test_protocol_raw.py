"""Wire-level behaviour that clients depend on, checked byte by byte.

ApiVersions (every version, v3's response header), the advertised Produce range, acks=0,
and Fetch's long poll, minimum bytes and whole-batch rule.
"""

import threading
import time

import pytest

import kafka_wire as kw
from helpers import create_topic, unique, wait_until, watermarks

ERR_OFFSET_OUT_OF_RANGE = 1


@pytest.mark.parametrize("version", [0, 1, 2])
def test_api_versions_non_flexible(bootstrap, version):
    with kw.KafkaConnection.to(bootstrap) as conn:
        res = kw.api_versions(conn, version)
    assert res.error_code == kw.ERR_NONE
    for key in (kw.API_PRODUCE, kw.API_FETCH, 2, 3, 8, 9, 10, 11, 12, 13, 14, kw.API_API_VERSIONS, 19, 20,
                kw.API_INIT_PRODUCER_ID):
        assert key in res.versions, f"API key {key} not advertised"
        lo, hi = res.versions[key]
        assert 0 <= lo <= hi, (key, lo, hi)


def test_api_versions_v3_has_v0_response_header(bootstrap):
    """The ApiVersions response header is v0 even for the flexible v3 request (librdkafka relies on it)."""
    with kw.KafkaConnection.to(bootstrap) as conn:
        body = kw.compact_string("ferry-interop") + kw.compact_string("1.0") + b"\x00"
        cid = conn.send(kw.API_API_VERSIONS, 3, body, flexible_header=True)
        r = conn.recv(cid)
        error = r.i16()
        n = r.uvarint() - 1
        versions = {}
        for _ in range(n):
            key, lo, hi = r.i16(), r.i16(), r.i16()
            r.tagged_fields()
            versions[key] = (lo, hi)
        _throttle = r.i32()
        r.tagged_fields()
        assert r.remaining() == 0, f"{r.remaining()} unparsed bytes: is the response header flexible?"
    assert error == kw.ERR_NONE
    assert versions[kw.API_API_VERSIONS][1] >= 3
    assert kw.API_PRODUCE in versions and kw.API_FETCH in versions


def test_produce_range_starts_at_zero(bootstrap):
    """librdkafka < 2.11.1 (kcat 1.7.1) turns compression off unless Produce min version is 0."""
    with kw.KafkaConnection.to(bootstrap) as conn:
        res = kw.api_versions(conn, 0)
    assert res.versions[kw.API_PRODUCE][0] == 0
    assert res.versions[kw.API_PRODUCE][1] >= 7  # zstd needs Produce v7+


def test_acks_zero_gets_no_response(bootstrap):
    topic = create_topic(bootstrap, unique("acks0raw"))
    with kw.KafkaConnection.to(bootstrap) as conn:
        batch = kw.record_batch([kw.Record(b"fire-and-forget")])
        conn.send(kw.API_PRODUCE, kw.PRODUCE_VERSION, kw.produce_request(topic, 0, batch, acks=0))
        cid = conn.send(kw.API_API_VERSIONS, 0, b"")
        # The next frame on the wire must be the ApiVersions answer, not a Produce response.
        r = conn.recv(cid)
        assert kw.decode_api_versions_v0(r).error_code == kw.ERR_NONE
    wait_until("acks=0 record stored", lambda: watermarks(bootstrap, topic, 0)[1] == 1)


def test_fetch_honours_max_wait_on_empty_partition(bootstrap):
    topic = create_topic(bootstrap, unique("maxwait"))
    with kw.KafkaConnection.to(bootstrap) as conn:
        start = time.monotonic()
        res = kw.fetch(conn, topic, 0, 0, max_wait_ms=1500)
        took = time.monotonic() - start
    assert res.error_code == kw.ERR_NONE
    assert res.records == b"" or not kw.parse_batches(res.records)
    assert 1.2 <= took < 6.0, f"empty fetch with max_wait 1500 ms returned after {took:.2f}s"


def test_fetch_long_poll_wakes_on_new_data(bootstrap):
    topic = create_topic(bootstrap, unique("longpoll"))
    result = {}

    def long_poll():
        with kw.KafkaConnection.to(bootstrap, timeout_s=30) as conn:
            start = time.monotonic()
            result["res"] = kw.fetch(conn, topic, 0, 0, max_wait_ms=10000)
            result["took"] = time.monotonic() - start

    t = threading.Thread(target=long_poll)
    t.start()
    time.sleep(0.7)
    with kw.KafkaConnection.to(bootstrap) as conn:
        assert kw.produce(conn, topic, 0, kw.record_batch([kw.Record(b"wake")])).error_code == kw.ERR_NONE
    t.join(timeout=30)
    assert not t.is_alive()
    assert result["took"] < 5.0, f"long poll returned after {result['took']:.2f}s, not when data arrived"
    assert result["took"] >= 0.5, "fetch returned before any data existed (min_bytes=1 ignored?)"
    batches = kw.parse_batches(result["res"].records)
    assert len(batches) == 1 and batches[0].record_count == 1


def test_fetch_returns_whole_batches(bootstrap):
    topic = create_topic(bootstrap, unique("whole"))
    with kw.KafkaConnection.to(bootstrap) as conn:
        batch = kw.record_batch([kw.Record(f"r{i}".encode()) for i in range(10)])
        assert kw.produce(conn, topic, 0, batch).error_code == kw.ERR_NONE
        second = kw.record_batch([kw.Record(b"next")])
        assert kw.produce(conn, topic, 0, second).base_offset == 10

        # An offset inside the first batch returns that whole batch, from its base offset.
        res = kw.fetch(conn, topic, 0, 5)
        batches = kw.parse_batches(res.records)
        assert batches[0].base_offset == 0 and batches[0].record_count == 10
        assert all(b.crc_ok for b in batches)
        assert res.high_watermark == 11

        # max_bytes smaller than one batch still returns one complete batch.
        res = kw.fetch(conn, topic, 0, 0, max_bytes=1)
        batches = kw.parse_batches(res.records)
        assert len(batches) >= 1 and batches[0].record_count == 10 and batches[0].crc_ok

        # Past the log end: OFFSET_OUT_OF_RANGE.
        res = kw.fetch(conn, topic, 0, 50)
        assert res.error_code == ERR_OFFSET_OUT_OF_RANGE
