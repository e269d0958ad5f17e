//! Kafka RecordBatch v2: the one on-disk and on-wire message format.
//!
//! Layout (big-endian): baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 |
//! magic i8 (=2) | crc u32 (CRC32C of everything from `attributes` to the end) |
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records.
//!
//! Each record: length varint | attributes i8 | timestampDelta varlong |
//! offsetDelta varint | keyLength varint | key | valueLength varint | value |
//! headerCount varint | headers (keyLength varint, key, valueLength varint, value).
//! Varints are zigzag-encoded; a length of -1 means null.
//!
//! Everything here treats its input as hostile: every length is checked against the bytes
//! actually present before anything is sliced or allocated.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{Result, StorageError};

/// Bytes of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batchLength`'s coverage starts (baseOffset + batchLength).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only message format version Ferry stores.
pub const MAGIC_V2: i8 = 2;
/// Largest batch (header included) any parser here accepts, whatever the caller's limit:
/// the batch length is an i32 on the wire, and positions in a segment are u32.
pub const BATCH_BYTES_HARD_MAX: usize = i32::MAX as usize;

// Field positions within the fixed header.
const BASE_OFFSET_POS: usize = 0;
const BATCH_LENGTH_POS: usize = 8;
const LEADER_EPOCH_POS: usize = 12;
const MAGIC_POS: usize = 16;
const CRC_POS: usize = 17;
/// The CRC covers the batch from `attributes` to the end.
const ATTRIBUTES_POS: usize = 21;
const LAST_OFFSET_DELTA_POS: usize = 23;
const BASE_TIMESTAMP_POS: usize = 27;
const MAX_TIMESTAMP_POS: usize = 35;
const PRODUCER_ID_POS: usize = 43;
const PRODUCER_EPOCH_POS: usize = 51;
const BASE_SEQUENCE_POS: usize = 53;
const RECORD_COUNT_POS: usize = 57;

/// Attribute bit: timestamps are log-append times.
const ATTR_LOG_APPEND_TIME: i16 = 0x8;
/// Attribute bits of the compression codec.
const ATTR_COMPRESSION_MASK: i16 = 0x7;
/// The smallest possible encoded record: length, attributes, timestamp delta, offset delta,
/// key length, value length and header count, one byte each.
const RECORD_BYTES_MIN: usize = 7;
/// Longest varint (i32) and varlong (i64) encodings.
const VARINT_BYTES_MAX: usize = 5;
const VARLONG_BYTES_MAX: usize = 10;

/// The parsed fixed header of one record batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batchLength` field; the whole batch is `batch_length + 12` bytes.
    pub batch_length: i32,
    /// Leader epoch of the partition leader that appended the batch.
    pub partition_leader_epoch: i32,
    /// Message format version (always 2 here).
    pub magic: i8,
    /// CRC32C of the bytes from `attributes` to the end of the batch.
    pub crc: u32,
    /// Compression codec, timestamp type, transactional and control flags.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp that record timestamp deltas are relative to.
    pub base_timestamp: i64,
    /// Largest record timestamp (or the log-append time).
    pub max_timestamp: i64,
    /// Idempotent/transactional producer id, -1 if none.
    pub producer_id: i64,
    /// Producer epoch, -1 if none.
    pub producer_epoch: i16,
    /// Sequence number of the first record, -1 if none.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the fixed header at the start of `buf`. Does not check the CRC.
    ///
    /// Rejects what can never be a valid v2 batch: a short buffer, magic other than 2, a
    /// batch length shorter than the header, a negative record count or last offset delta.
    pub fn parse(buf: &[u8]) -> crate::Result<BatchHeader> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(corrupt(format!(
                "{} bytes cannot hold a {BATCH_HEADER_BYTES}-byte batch header",
                buf.len()
            )));
        }
        let header = BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET_POS),
            batch_length: be_i32(buf, BATCH_LENGTH_POS),
            partition_leader_epoch: be_i32(buf, LEADER_EPOCH_POS),
            magic: buf[MAGIC_POS] as i8,
            crc: be_u32(buf, CRC_POS),
            attributes: be_i16(buf, ATTRIBUTES_POS),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_POS),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_POS),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_POS),
            producer_id: be_i64(buf, PRODUCER_ID_POS),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH_POS),
            base_sequence: be_i32(buf, BASE_SEQUENCE_POS),
            record_count: be_i32(buf, RECORD_COUNT_POS),
        };
        if header.magic != MAGIC_V2 {
            return Err(corrupt(format!("magic {} is not 2", header.magic)));
        }
        if (header.batch_length as i64) < (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i64 {
            return Err(corrupt(format!(
                "batch length {} is shorter than the header",
                header.batch_length
            )));
        }
        if header.record_count < 0 {
            return Err(corrupt(format!(
                "record count {} is negative",
                header.record_count
            )));
        }
        if header.last_offset_delta < 0 {
            return Err(corrupt(format!(
                "last offset delta {} is negative",
                header.last_offset_delta
            )));
        }
        if header.base_offset < 0
            || header
                .base_offset
                .checked_add(header.last_offset_delta as i64)
                .is_none()
        {
            return Err(corrupt(format!(
                "base offset {} is out of range",
                header.base_offset
            )));
        }
        Ok(header)
    }
    /// Total bytes of the batch, header included.
    pub fn total_bytes(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD_BYTES
    }
    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    /// Compression codec from the attributes (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> u8 {
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }
    /// Whether the timestamps are log-append times (attribute bit 3).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }
    /// Whether the batch belongs to a transaction (attribute bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    /// Whether the batch is a control batch (attribute bit 5).
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// One record, decoded (for uncompressed batches written by Ferry itself: internal state
/// logs, and later other protocols). Kafka-produced batches are never re-encoded.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Record key, `None` if null.
    pub key: Option<bytes::Bytes>,
    /// Record value, `None` if null (a tombstone).
    pub value: Option<bytes::Bytes>,
    /// Record headers in order; a header value may be null.
    pub headers: Vec<(String, Option<bytes::Bytes>)>,
}

/// Builds one uncompressed RecordBatch v2 (base offset 0; the log assigns offsets).
#[derive(Debug, Default)]
pub struct BatchBuilder {
    base_timestamp_ms: i64,
    max_timestamp_ms: i64,
    record_count: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    /// Encoded records, appended as they are pushed.
    records: BytesMut,
}

impl BatchBuilder {
    /// A builder whose records get `base_timestamp_ms` plus their `timestamp_delta`.
    pub fn new(base_timestamp_ms: i64) -> Self {
        BatchBuilder {
            base_timestamp_ms,
            max_timestamp_ms: base_timestamp_ms,
            record_count: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: BytesMut::new(),
        }
    }
    /// Marks the batch as written by an idempotent producer (default: none, all -1).
    pub fn with_producer(
        mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }
    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.record_count as usize
    }
    /// Whether no record was pushed (an empty batch is rejected by `PartitionLog::append`).
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }
    /// Adds a record; its offset delta is its position in the batch.
    pub fn push(
        &mut self,
        key: Option<bytes::Bytes>,
        value: Option<bytes::Bytes>,
        headers: Vec<(String, Option<bytes::Bytes>)>,
        timestamp_ms: i64,
    ) {
        let mut body = BytesMut::with_capacity(
            32 + key.as_ref().map_or(0, |k| k.len())
                + value.as_ref().map_or(0, |v| v.len())
                + headers
                    .iter()
                    .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 10)
                    .sum::<usize>(),
        );
        body.put_i8(0); // record attributes: unused
        put_varlong(&mut body, timestamp_ms.wrapping_sub(self.base_timestamp_ms));
        put_varint(&mut body, self.record_count);
        put_nullable_bytes(&mut body, key.as_deref());
        put_nullable_bytes(&mut body, value.as_deref());
        put_varint(&mut body, headers.len() as i32);
        for (name, value) in &headers {
            put_nullable_bytes(&mut body, Some(name.as_bytes()));
            put_nullable_bytes(&mut body, value.as_deref());
        }
        put_varint(&mut self.records, body.len() as i32);
        self.records.put_slice(&body);
        self.max_timestamp_ms = if self.record_count == 0 {
            timestamp_ms
        } else {
            self.max_timestamp_ms.max(timestamp_ms)
        };
        self.record_count += 1;
    }
    /// Encodes the batch with its CRC.
    pub fn build(self) -> bytes::Bytes {
        let total = BATCH_HEADER_BYTES + self.records.len();
        let mut buf = BytesMut::with_capacity(total);
        buf.put_i64(0); // base offset: assigned by the log
        buf.put_i32((total - LOG_OVERHEAD_BYTES) as i32);
        buf.put_i32(-1); // partition leader epoch: assigned by the log
        buf.put_i8(MAGIC_V2);
        buf.put_u32(0); // CRC, filled in below
        buf.put_i16(0); // attributes: uncompressed, create time
        buf.put_i32((self.record_count - 1).max(0));
        buf.put_i64(self.base_timestamp_ms);
        buf.put_i64(self.max_timestamp_ms);
        buf.put_i64(self.producer_id);
        buf.put_i16(self.producer_epoch);
        buf.put_i32(self.base_sequence);
        buf.put_i32(self.record_count);
        buf.put_slice(&self.records);
        let crc = crc32c::crc32c(&buf[ATTRIBUTES_POS..]);
        buf[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        buf.freeze()
    }
}

/// Computes the CRC32C a batch should carry (over `attributes` to the end).
/// `batch` must be one whole batch of at least [`BATCH_HEADER_BYTES`].
fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_POS..])
}

/// Checks the header, that `batch` is exactly one whole batch, and its CRC.
pub fn verify_batch(batch: &[u8]) -> Result<BatchHeader> {
    let header = BatchHeader::parse(batch)?;
    if header.total_bytes() != batch.len() {
        return Err(corrupt(format!(
            "batch says {} bytes but {} are present",
            header.total_bytes(),
            batch.len()
        )));
    }
    let crc = compute_crc(batch);
    if crc != header.crc {
        return Err(corrupt(format!(
            "CRC mismatch at base offset {}: stored {:#010x}, computed {crc:#010x}",
            header.base_offset, header.crc
        )));
    }
    Ok(header)
}

/// Validates one batch that a client wants appended: [`verify_batch`], no larger than
/// `batch_bytes_max`, and Kafka's rules for producer batches: at least one record and a
/// record count that matches the offset range.
pub fn validate_batch(batch: &[u8], batch_bytes_max: usize) -> Result<BatchHeader> {
    if batch.len() >= BATCH_HEADER_BYTES {
        // Report an oversized batch as such rather than as a CRC problem.
        let length = be_i32(batch, BATCH_LENGTH_POS);
        let total = length as i64 + LOG_OVERHEAD_BYTES as i64;
        if total > batch_bytes_max as i64 {
            return Err(StorageError::BatchTooLarge {
                size: total.max(0) as usize,
                max: batch_bytes_max,
            });
        }
    }
    let header = verify_batch(batch)?;
    if header.record_count == 0 {
        return Err(corrupt("batch has no records".to_string()));
    }
    if header.record_count as i64 != header.last_offset_delta as i64 + 1 {
        return Err(corrupt(format!(
            "batch has {} records but last offset delta {}",
            header.record_count, header.last_offset_delta
        )));
    }
    Ok(header)
}

/// Marks a batch as carrying log-append time: sets attribute bit 3, sets `maxTimestamp` to
/// `now_ms` (which consumers then report for every record) and recomputes the CRC.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) -> Result<()> {
    let header = BatchHeader::parse(batch)?;
    if header.total_bytes() > batch.len() {
        return Err(corrupt(format!(
            "batch says {} bytes but {} are present",
            header.total_bytes(),
            batch.len()
        )));
    }
    let batch = &mut batch[..header.total_bytes()];
    let attributes = header.attributes | ATTR_LOG_APPEND_TIME;
    batch[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Rewrites the fields the CRC does not cover: base offset and partition leader epoch.
/// `batch` must hold at least a whole header.
pub(crate) fn set_base_offset_and_epoch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH_POS..LEADER_EPOCH_POS + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Splits `buf` into whole batches, checking each length (and CRC if `verify_crc`).
/// A trailing partial batch is an error.
pub fn split_batches(
    buf: &bytes::Bytes,
    verify_crc: bool,
) -> crate::Result<Vec<(BatchHeader, bytes::Bytes)>> {
    let mut batches = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let header = BatchHeader::parse(&buf[pos..])?;
        let end = pos + header.total_bytes();
        if end > buf.len() {
            return Err(corrupt(format!(
                "partial batch at byte {pos}: needs {} bytes, {} present",
                header.total_bytes(),
                buf.len() - pos
            )));
        }
        if verify_crc {
            verify_batch(&buf[pos..end])?;
        }
        batches.push((header, buf.slice(pos..end)));
        pos = end;
    }
    Ok(batches)
}

/// Decodes the records of one uncompressed batch. Compressed batches are an error here.
pub fn decode_records(batch: &[u8]) -> crate::Result<Vec<Record>> {
    let header = BatchHeader::parse(batch)?;
    if header.total_bytes() > batch.len() {
        return Err(corrupt(format!(
            "batch says {} bytes but {} are present",
            header.total_bytes(),
            batch.len()
        )));
    }
    if header.compression() != 0 {
        return Err(corrupt(format!(
            "cannot decode records of a batch compressed with codec {}",
            header.compression()
        )));
    }
    let body = &batch[BATCH_HEADER_BYTES..header.total_bytes()];
    decode_record_section(body, header.record_count)
}

/// Decodes `count` records from an uncompressed records section (after the batch header,
/// or a decompressed records section).
pub fn decode_record_section(body: &[u8], count: i32) -> Result<Vec<Record>> {
    // A hostile count cannot make us allocate more than the bytes could hold.
    let mut records =
        Vec::with_capacity((count.max(0) as usize).min(body.len() / RECORD_BYTES_MIN));
    let mut cursor = Cursor { buf: body, pos: 0 };
    for _ in 0..count {
        let record_len = cursor.varint()?;
        let record_len = usize::try_from(record_len)
            .map_err(|_| corrupt(format!("record length {record_len}")))?;
        let record_bytes = cursor.take(record_len)?;
        let mut rec = Cursor {
            buf: record_bytes,
            pos: 0,
        };
        let _attributes = rec.take(1)?;
        let timestamp_delta = rec.varlong()?;
        let offset_delta = rec.varint()?;
        let key = rec.nullable_bytes()?;
        let value = rec.nullable_bytes()?;
        let header_count = rec.varint()?;
        let header_count = usize::try_from(header_count)
            .map_err(|_| corrupt(format!("header count {header_count}")))?;
        // Each header needs at least two bytes (two lengths).
        let mut headers = Vec::with_capacity(header_count.min(record_len / 2));
        for _ in 0..header_count {
            let name = rec
                .nullable_slice()?
                .ok_or_else(|| corrupt("record header with a null key".to_string()))?;
            let name = std::str::from_utf8(name)
                .map_err(|_| corrupt("record header key is not UTF-8".to_string()))?
                .to_string();
            let value = rec.nullable_bytes()?;
            headers.push((name, value));
        }
        if rec.pos != record_bytes.len() {
            return Err(corrupt(format!(
                "record has {} trailing bytes",
                record_bytes.len() - rec.pos
            )));
        }
        records.push(Record {
            offset_delta,
            timestamp_delta,
            key,
            value,
            headers,
        });
    }
    if cursor.pos != body.len() {
        return Err(corrupt(format!(
            "{} bytes after the last record",
            body.len() - cursor.pos
        )));
    }
    Ok(records)
}

/// Walks the records section of an uncompressed batch without allocating, yielding
/// `(offset_delta, timestamp_delta)` of each record; used by timestamp lookups.
pub(crate) fn record_offsets_and_timestamps(body: &[u8], count: i32) -> Result<Vec<(i32, i64)>> {
    let mut out = Vec::with_capacity((count.max(0) as usize).min(body.len() / RECORD_BYTES_MIN));
    let mut cursor = Cursor { buf: body, pos: 0 };
    for _ in 0..count {
        let record_len = cursor.varint()?;
        let record_len = usize::try_from(record_len)
            .map_err(|_| corrupt(format!("record length {record_len}")))?;
        let record_bytes = cursor.take(record_len)?;
        let mut rec = Cursor {
            buf: record_bytes,
            pos: 0,
        };
        let _attributes = rec.take(1)?;
        let timestamp_delta = rec.varlong()?;
        let offset_delta = rec.varint()?;
        out.push((offset_delta, timestamp_delta));
    }
    Ok(out)
}

/// The records section of a batch (after the fixed header).
pub(crate) fn records_section(batch: &[u8]) -> &[u8] {
    batch.get(BATCH_HEADER_BYTES..).unwrap_or(&[])
}

fn corrupt(message: String) -> StorageError {
    StorageError::CorruptBatch(message)
}

// The big-endian readers take positions inside the fixed header, which callers have
// length-checked; they cannot go out of bounds.
fn be_i16(buf: &[u8], pos: usize) -> i16 {
    i16::from_be_bytes([buf[pos], buf[pos + 1]])
}
fn be_i32(buf: &[u8], pos: usize) -> i32 {
    i32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]])
}
fn be_u32(buf: &[u8], pos: usize) -> u32 {
    u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]])
}
fn be_i64(buf: &[u8], pos: usize) -> i64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[pos..pos + 8]);
    i64::from_be_bytes(bytes)
}

fn put_varint(buf: &mut BytesMut, value: i32) {
    put_unsigned_varint(buf, ((value << 1) ^ (value >> 31)) as u32 as u64);
}
fn put_varlong(buf: &mut BytesMut, value: i64) {
    put_unsigned_varint(buf, ((value << 1) ^ (value >> 63)) as u64);
}
fn put_unsigned_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}
fn put_nullable_bytes(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(buf, -1),
        Some(bytes) => {
            put_varint(buf, bytes.len() as i32);
            buf.put_slice(bytes);
        }
    }
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "needs {len} bytes at {}, only {} left",
                    self.pos,
                    self.buf.len() - self.pos
                ))
            })?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }
    fn unsigned_varint(&mut self, bytes_max: usize) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..bytes_max {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| corrupt("truncated varint".to_string()))?;
            self.pos += 1;
            value |= ((byte & 0x7f) as u64) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(corrupt("varint is too long".to_string()))
    }
    fn varint(&mut self) -> Result<i32> {
        let raw = self.unsigned_varint(VARINT_BYTES_MAX)?;
        let raw =
            u32::try_from(raw).map_err(|_| corrupt("varint overflows 32 bits".to_string()))?;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }
    fn varlong(&mut self) -> Result<i64> {
        let raw = self.unsigned_varint(VARLONG_BYTES_MAX)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }
    fn nullable_slice(&mut self) -> Result<Option<&'a [u8]>> {
        let len = self.varint()?;
        match len {
            -1 => Ok(None),
            len if len < 0 => Err(corrupt(format!("negative length {len}"))),
            len => Ok(Some(self.take(len as usize)?)),
        }
    }
    /// Reads a nullable byte string, copying it out (records are owned by the caller).
    fn nullable_bytes(&mut self) -> Result<Option<Bytes>> {
        Ok(self.nullable_slice()?.map(Bytes::copy_from_slice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_batch() -> Bytes {
        let mut builder = BatchBuilder::new(1_000);
        builder.push(
            Some(Bytes::from_static(b"k1")),
            Some(Bytes::from_static(b"v1")),
            vec![],
            1_000,
        );
        builder.push(
            None,
            Some(Bytes::from_static(b"v2")),
            vec![
                ("h".to_string(), Some(Bytes::from_static(b"x"))),
                ("n".to_string(), None),
            ],
            1_005,
        );
        builder.push(Some(Bytes::from_static(b"k3")), None, vec![], 990);
        builder.build()
    }

    #[test]
    fn build_parse_and_decode_round_trip() {
        let batch = sample_batch();
        let header = verify_batch(&batch).expect("valid batch");
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.base_timestamp, 1_000);
        assert_eq!(header.max_timestamp, 1_005);
        assert_eq!(header.producer_id, -1);
        assert_eq!(header.total_bytes(), batch.len());
        let records = decode_records(&batch).expect("decodes");
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(records[1].key, None);
        assert_eq!(records[1].offset_delta, 1);
        assert_eq!(records[1].timestamp_delta, 5);
        assert_eq!(
            records[1].headers[0],
            ("h".to_string(), Some(Bytes::from_static(b"x")))
        );
        assert_eq!(records[1].headers[1], ("n".to_string(), None));
        assert_eq!(records[2].value, None);
        assert_eq!(records[2].timestamp_delta, -10);
        validate_batch(&batch, 1 << 20).expect("acceptable for append");
    }

    #[test]
    fn varints_round_trip_extremes() {
        for value in [0, 1, -1, 63, -64, 64, i32::MAX, i32::MIN] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(
                Cursor { buf: &buf, pos: 0 }.varint().expect("decodes"),
                value
            );
        }
        for value in [0, -1, i64::MAX, i64::MIN, 1 << 40] {
            let mut buf = BytesMut::new();
            put_varlong(&mut buf, value);
            assert_eq!(
                Cursor { buf: &buf, pos: 0 }.varlong().expect("decodes"),
                value
            );
        }
    }

    #[test]
    fn crc_detects_flipped_bit_but_not_offset_rewrite() {
        let mut batch = sample_batch().to_vec();
        set_base_offset_and_epoch(&mut batch, 42, 7);
        let header = verify_batch(&batch).expect("offset and epoch are not covered by the CRC");
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.partition_leader_epoch, 7);
        let last = batch.len() - 1;
        batch[last] ^= 0x01;
        assert!(matches!(
            verify_batch(&batch),
            Err(StorageError::CorruptBatch(_))
        ));
    }

    #[test]
    fn log_append_time_sets_flag_and_keeps_crc_valid() {
        let mut batch = sample_batch().to_vec();
        set_log_append_time(&mut batch, 77_000).expect("sets");
        let header = verify_batch(&batch).expect("crc recomputed");
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, 77_000);
        assert_eq!(header.compression(), 0);
    }

    #[test]
    fn split_checks_lengths_and_partial_tail() {
        let a = sample_batch();
        let b = sample_batch();
        let mut joined = a.to_vec();
        joined.extend_from_slice(&b);
        let joined = Bytes::from(joined);
        let parts = split_batches(&joined, true).expect("two whole batches");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].1, b);
        let partial = joined.slice(..joined.len() - 1);
        assert!(split_batches(&partial, false).is_err());
        assert!(split_batches(&Bytes::new(), true)
            .expect("empty")
            .is_empty());
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let batch = sample_batch();
        let mut bad_magic = batch.to_vec();
        bad_magic[MAGIC_POS] = 1;
        assert!(BatchHeader::parse(&bad_magic).is_err());
        let mut short_len = batch.to_vec();
        short_len[BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4].copy_from_slice(&10i32.to_be_bytes());
        assert!(BatchHeader::parse(&short_len).is_err());
        let mut negative_len = batch.to_vec();
        negative_len[BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4]
            .copy_from_slice(&(-5i32).to_be_bytes());
        assert!(BatchHeader::parse(&negative_len).is_err());
        let mut huge_count = batch.to_vec();
        huge_count[RECORD_COUNT_POS..RECORD_COUNT_POS + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        // The CRC is not recomputed, but decode_records does not check it: it must fail on
        // the bytes rather than allocate for two billion records.
        assert!(decode_records(&huge_count).is_err());
        let mut negative_delta = batch.to_vec();
        negative_delta[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4]
            .copy_from_slice(&(-1i32).to_be_bytes());
        assert!(BatchHeader::parse(&negative_delta).is_err());
        assert!(BatchHeader::parse(&batch[..BATCH_HEADER_BYTES - 1]).is_err());
        let big = validate_batch(&batch, 10);
        assert!(matches!(big, Err(StorageError::BatchTooLarge { .. })));
    }

    #[test]
    fn validate_rejects_empty_and_inconsistent_batches() {
        let empty = BatchBuilder::new(0).build();
        assert!(verify_batch(&empty).is_ok());
        assert!(validate_batch(&empty, 1 << 20).is_err());
    }

    #[test]
    fn decode_rejects_compressed_batches() {
        let mut batch = sample_batch().to_vec();
        batch[ATTRIBUTES_POS + 1] |= 0x1;
        assert!(decode_records(&batch).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let buf = Bytes::from(data.clone());
            let _ = split_batches(&buf, true);
            let _ = decode_records(&data);
            let _ = validate_batch(&data, 1 << 20);
            let mut copy = data;
            let _ = set_log_append_time(&mut copy, 1);
        }

        #[test]
        fn mutated_batches_never_panic(pos in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut batch = sample_batch().to_vec();
            let pos = pos % batch.len();
            batch[pos] = byte;
            let _ = decode_records(&batch);
            let _ = split_batches(&Bytes::from(batch), true);
        }
    }
}
