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

/// Builds uncompressed RecordBatch v2 batches (base offset 0; the log assigns offsets)
/// in one reused buffer, without allocating per record: the header is reserved up front,
/// each record is encoded in place, and [`BatchBuilder::finish`] fills in the header and
/// CRC and starts the next batch in the same buffer.
#[derive(Debug)]
pub struct BatchBuilder {
    /// The batch being built: a reserved header, then the encoded records.
    buf: BytesMut,
    /// Base timestamp given at construction; `None`: each batch's first record's.
    fixed_base_timestamp_ms: Option<i64>,
    base_timestamp_ms: i64,
    max_timestamp_ms: i64,
    record_count: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::reusable()
    }
}

/// A record header as pushed: a name and a nullable value.
pub type HeaderRef<'a> = (&'a str, Option<&'a [u8]>);

impl BatchBuilder {
    /// A builder whose records get `base_timestamp_ms` plus their `timestamp_delta`.
    pub fn new(base_timestamp_ms: i64) -> Self {
        BatchBuilder::with_base(Some(base_timestamp_ms))
    }

    /// A builder for a stream of batches (producers): each batch's base timestamp is its
    /// first record's.
    pub fn reusable() -> Self {
        BatchBuilder::with_base(None)
    }

    fn with_base(fixed_base_timestamp_ms: Option<i64>) -> Self {
        let mut buf = BytesMut::new();
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        let base = fixed_base_timestamp_ms.unwrap_or(0);
        BatchBuilder {
            buf,
            fixed_base_timestamp_ms,
            base_timestamp_ms: base,
            max_timestamp_ms: base,
            record_count: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
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

    /// Number of records pushed since the batch started.
    pub fn len(&self) -> usize {
        self.record_count as usize
    }

    /// Whether no record was pushed (an empty batch is rejected by `PartitionLog::append`).
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes the batch would have if finished now.
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Adds a record from owned parts (convenience for callers holding `Bytes`); its
    /// offset delta is its position in the batch.
    pub fn push(
        &mut self,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: Vec<(String, Option<Bytes>)>,
        timestamp_ms: i64,
    ) {
        let headers: Vec<HeaderRef<'_>> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_deref()))
            .collect();
        self.push_record(key.as_deref(), value.as_deref(), &headers, timestamp_ms);
    }

    /// Adds a record from borrowed parts, encoding it in place.
    pub fn push_record(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
        timestamp_ms: i64,
    ) {
        let value_len = value.map(<[u8]>::len);
        self.push_encoded(key, value_len, headers, timestamp_ms, |buf| {
            if let Some(value) = value {
                buf.put_slice(value);
            }
        });
    }

    /// Adds a record whose value is `value_prefix` followed by zero bytes up to
    /// `value_bytes` in all (at least the prefix): generated payloads without building
    /// them in a separate buffer first.
    pub fn push_padded(
        &mut self,
        key: Option<&[u8]>,
        value_prefix: &[u8],
        value_bytes: usize,
        timestamp_ms: i64,
    ) {
        let value_bytes = value_bytes.max(value_prefix.len());
        self.push_encoded(key, Some(value_bytes), &[], timestamp_ms, |buf| {
            buf.put_slice(value_prefix);
            buf.put_bytes(0, value_bytes - value_prefix.len());
        });
    }

    /// Encodes one record whose value (`value_len` bytes, `None` for null) is written by
    /// `put_value`.
    fn push_encoded(
        &mut self,
        key: Option<&[u8]>,
        value_len: Option<usize>,
        headers: &[HeaderRef<'_>],
        timestamp_ms: i64,
        put_value: impl FnOnce(&mut BytesMut),
    ) {
        if self.record_count == 0 {
            self.base_timestamp_ms = self.fixed_base_timestamp_ms.unwrap_or(timestamp_ms);
            self.max_timestamp_ms = timestamp_ms;
        } else {
            self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        }
        let timestamp_delta = timestamp_ms.wrapping_sub(self.base_timestamp_ms);
        let offset_delta = self.record_count as i64;
        let nullable_len = |len: Option<usize>| len.map_or(-1, |l| l as i64);
        let key_len = nullable_len(key.map(<[u8]>::len));
        let value_len_field = nullable_len(value_len);
        let headers_bytes: usize = headers
            .iter()
            .map(|(name, value)| {
                varlong_len(name.len() as i64)
                    + name.len()
                    + varlong_len(nullable_len(value.map(<[u8]>::len)))
                    + value.map_or(0, <[u8]>::len)
            })
            .sum();
        let body_len = 1
            + varlong_len(timestamp_delta)
            + varlong_len(offset_delta)
            + varlong_len(key_len)
            + key.map_or(0, <[u8]>::len)
            + varlong_len(value_len_field)
            + value_len.unwrap_or(0)
            + varlong_len(headers.len() as i64)
            + headers_bytes;
        self.buf.reserve(body_len + VARINT_BYTES_MAX);
        put_varlong(&mut self.buf, body_len as i64);
        self.buf.put_i8(0); // record attributes: unused
        put_varlong(&mut self.buf, timestamp_delta);
        put_varlong(&mut self.buf, offset_delta);
        put_nullable_bytes(&mut self.buf, key);
        put_varlong(&mut self.buf, value_len_field);
        put_value(&mut self.buf);
        put_varlong(&mut self.buf, headers.len() as i64);
        for (name, value) in headers {
            put_nullable_bytes(&mut self.buf, Some(name.as_bytes()));
            put_nullable_bytes(&mut self.buf, *value);
        }
        self.record_count += 1;
    }

    /// Fills in the header and CRC and returns the batch; the builder is empty again and
    /// builds the next batch in the same buffer (with the same producer fields).
    pub fn finish(&mut self) -> Bytes {
        let total = self.buf.len();
        let header = &mut self.buf[..BATCH_HEADER_BYTES];
        header[BASE_OFFSET_POS..BATCH_LENGTH_POS].copy_from_slice(&0i64.to_be_bytes());
        header[BATCH_LENGTH_POS..LEADER_EPOCH_POS]
            .copy_from_slice(&((total - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        // Partition leader epoch: assigned by the log.
        header[LEADER_EPOCH_POS..MAGIC_POS].copy_from_slice(&(-1i32).to_be_bytes());
        header[MAGIC_POS] = MAGIC_V2 as u8;
        // Attributes: uncompressed, create time.
        header[ATTRIBUTES_POS..LAST_OFFSET_DELTA_POS].copy_from_slice(&0i16.to_be_bytes());
        header[LAST_OFFSET_DELTA_POS..BASE_TIMESTAMP_POS]
            .copy_from_slice(&(self.record_count - 1).max(0).to_be_bytes());
        header[BASE_TIMESTAMP_POS..MAX_TIMESTAMP_POS]
            .copy_from_slice(&self.base_timestamp_ms.to_be_bytes());
        header[MAX_TIMESTAMP_POS..PRODUCER_ID_POS]
            .copy_from_slice(&self.max_timestamp_ms.to_be_bytes());
        header[PRODUCER_ID_POS..PRODUCER_EPOCH_POS]
            .copy_from_slice(&self.producer_id.to_be_bytes());
        header[PRODUCER_EPOCH_POS..BASE_SEQUENCE_POS]
            .copy_from_slice(&self.producer_epoch.to_be_bytes());
        header[BASE_SEQUENCE_POS..RECORD_COUNT_POS]
            .copy_from_slice(&self.base_sequence.to_be_bytes());
        header[RECORD_COUNT_POS..BATCH_HEADER_BYTES]
            .copy_from_slice(&self.record_count.to_be_bytes());
        let crc = compute_crc(&self.buf);
        self.buf[CRC_POS..ATTRIBUTES_POS].copy_from_slice(&crc.to_be_bytes());
        let batch = self.buf.split().freeze();
        self.buf.put_bytes(0, BATCH_HEADER_BYTES);
        self.record_count = 0;
        let base = self.fixed_base_timestamp_ms.unwrap_or(0);
        self.base_timestamp_ms = base;
        self.max_timestamp_ms = base;
        batch
    }

    /// Encodes the batch with its CRC.
    pub fn build(mut self) -> Bytes {
        self.finish()
    }
}

/// One record of an uncompressed records section, borrowed from it (no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Record key, `None` if null.
    pub key: Option<&'a [u8]>,
    /// Record value, `None` if null (a tombstone).
    pub value: Option<&'a [u8]>,
    /// The encoded headers (already checked by the walk that produced this view).
    headers: &'a [u8],
    header_count: usize,
}

impl<'a> RecordView<'a> {
    /// Number of record headers.
    pub fn header_count(&self) -> usize {
        self.header_count
    }

    /// Calls `each(name, value)` for every header, in order.
    pub fn for_each_header(&self, mut each: impl FnMut(&'a str, Option<&'a [u8]>)) -> Result<()> {
        let mut cursor = Cursor {
            buf: self.headers,
            pos: 0,
        };
        for _ in 0..self.header_count {
            let (name, value) = cursor.header()?;
            each(name, value);
        }
        Ok(())
    }
}

/// Walks the `count` records of an uncompressed records section (after the batch header,
/// or a decompressed records section) without allocating, checking every length, header
/// and that the records fill the section exactly; calls `visit` for each.
pub fn visit_records<'a, E: From<StorageError>>(
    body: &'a [u8],
    count: i32,
    mut visit: impl FnMut(RecordView<'a>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut cursor = Cursor { buf: body, pos: 0 };
    for _ in 0..count {
        let view = cursor.record()?;
        visit(view)?;
    }
    if cursor.pos != body.len() {
        return Err(corrupt(format!(
            "{} bytes after the last record",
            body.len() - cursor.pos
        ))
        .into());
    }
    Ok(())
}

/// Walks every record at or after `from_offset` in the whole batches at the start of
/// `records` (a fetch response's records: a partial batch at the end, which brokers may
/// send at the size limit, is ignored; control batches are skipped), calling
/// `visit(offset, record)`. Returns the offset after the last whole batch (`from_offset`
/// if none). Compressed batches are an error: the caller must decompress them.
pub fn visit_fetched_records<'a, E: From<StorageError>>(
    records: &'a [u8],
    from_offset: i64,
    mut visit: impl FnMut(i64, RecordView<'a>) -> std::result::Result<(), E>,
) -> std::result::Result<i64, E> {
    let mut next_offset = from_offset;
    let mut pos = 0;
    while records.len() - pos >= BATCH_HEADER_BYTES {
        let header = BatchHeader::parse(&records[pos..])?;
        let end = pos + header.total_bytes();
        if end > records.len() {
            break;
        }
        if header.compression() != 0 {
            return Err(corrupt(format!(
                "batch at offset {} is compressed with codec {}",
                header.base_offset,
                header.compression()
            ))
            .into());
        }
        if !header.is_control() && header.last_offset() >= from_offset {
            visit_records(
                &records[pos + BATCH_HEADER_BYTES..end],
                header.record_count,
                |record| {
                    let offset = header.base_offset + record.offset_delta as i64;
                    if offset >= from_offset {
                        visit(offset, record)
                    } else {
                        Ok(())
                    }
                },
            )?;
        }
        next_offset = next_offset.max(header.last_offset() + 1);
        pos = end;
    }
    Ok(next_offset)
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

/// Bytes at the start of a batch that hold every field the log rewrites on append (base
/// offset, batch length, partition leader epoch); the CRC covers none of them.
pub(crate) const REWRITTEN_PREFIX_BYTES: usize = LEADER_EPOCH_POS + 4;

/// The first [`REWRITTEN_PREFIX_BYTES`] of `batch` with its base offset and leader epoch
/// replaced, so that an append can write the new prefix and the rest of the producer's
/// bytes without copying the batch. `batch` must hold at least a whole header.
pub(crate) fn rewritten_prefix(
    batch: &[u8],
    base_offset: i64,
    leader_epoch: i32,
) -> [u8; REWRITTEN_PREFIX_BYTES] {
    let mut prefix = [0u8; REWRITTEN_PREFIX_BYTES];
    prefix.copy_from_slice(&batch[..REWRITTEN_PREFIX_BYTES]);
    set_base_offset_and_epoch(&mut prefix, base_offset, leader_epoch);
    prefix
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
    visit_records(body, count, |view: RecordView<'_>| {
        let mut headers = Vec::with_capacity(view.header_count());
        view.for_each_header(|name, value| {
            headers.push((name.to_string(), value.map(Bytes::copy_from_slice)));
        })?;
        records.push(Record {
            offset_delta: view.offset_delta,
            timestamp_delta: view.timestamp_delta,
            key: view.key.map(Bytes::copy_from_slice),
            value: view.value.map(Bytes::copy_from_slice),
            headers,
        });
        Ok::<(), StorageError>(())
    })?;
    Ok(records)
}

/// `(offset_delta, timestamp_delta)` of each record of an uncompressed records section;
/// used by timestamp lookups.
pub(crate) fn record_offsets_and_timestamps(body: &[u8], count: i32) -> Result<Vec<(i32, i64)>> {
    let mut out = Vec::with_capacity((count.max(0) as usize).min(body.len() / RECORD_BYTES_MIN));
    visit_records(body, count, |view: RecordView<'_>| {
        out.push((view.offset_delta, view.timestamp_delta));
        Ok::<(), StorageError>(())
    })?;
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

fn put_varlong(buf: &mut BytesMut, value: i64) {
    put_unsigned_varint(buf, zigzag(value));
}
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}
/// Bytes of `value` as a zigzag varint.
fn varlong_len(value: i64) -> usize {
    let bits = 64 - zigzag(value).leading_zeros() as usize;
    bits.div_ceil(7).max(1)
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
        None => put_varlong(buf, -1),
        Some(bytes) => {
            put_varlong(buf, bytes.len() as i64);
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
    /// One record header: a non-null UTF-8 name and a nullable value.
    fn header(&mut self) -> Result<HeaderRef<'a>> {
        let name = self
            .nullable_slice()?
            .ok_or_else(|| corrupt("record header with a null key".to_string()))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| corrupt("record header key is not UTF-8".to_string()))?;
        Ok((name, self.nullable_slice()?))
    }
    /// One whole record, checked to fill exactly its announced length.
    fn record(&mut self) -> Result<RecordView<'a>> {
        let record_len = self.varint()?;
        let record_len = usize::try_from(record_len)
            .map_err(|_| corrupt(format!("record length {record_len}")))?;
        let record_bytes = self.take(record_len)?;
        let mut rec = Cursor {
            buf: record_bytes,
            pos: 0,
        };
        let _attributes = rec.take(1)?;
        let timestamp_delta = rec.varlong()?;
        let offset_delta = rec.varint()?;
        let key = rec.nullable_slice()?;
        let value = rec.nullable_slice()?;
        let header_count = rec.varint()?;
        let header_count = usize::try_from(header_count)
            .map_err(|_| corrupt(format!("header count {header_count}")))?;
        let headers_start = rec.pos;
        for _ in 0..header_count {
            rec.header()?;
        }
        if rec.pos != record_bytes.len() {
            return Err(corrupt(format!(
                "record has {} trailing bytes",
                record_bytes.len() - rec.pos
            )));
        }
        Ok(RecordView {
            offset_delta,
            timestamp_delta,
            key,
            value,
            headers: &record_bytes[headers_start..],
            header_count,
        })
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
            put_varlong(&mut buf, value as i64);
            assert_eq!(buf.len(), varlong_len(value as i64));
            assert_eq!(
                Cursor { buf: &buf, pos: 0 }.varint().expect("decodes"),
                value
            );
        }
        for value in [0, -1, i64::MAX, i64::MIN, 1 << 40] {
            let mut buf = BytesMut::new();
            put_varlong(&mut buf, value);
            assert_eq!(buf.len(), varlong_len(value));
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
    fn reusable_builder_builds_batch_after_batch_in_place() {
        let mut builder = BatchBuilder::reusable().with_producer(9, 1, 0);
        for round in 0..3i64 {
            for i in 0..100i64 {
                let key = format!("k{i}");
                let key = (i % 2 == 0).then_some(key.as_bytes());
                builder.push_padded(key, b"stamp", 50 + i as usize, 10_000 * round + i);
            }
            builder.push_record(None, Some(b"v"), &[("h", Some(b"x")), ("n", None)], 5);
            assert_eq!(builder.len(), 101);
            let batch = builder.finish();
            assert!(builder.is_empty());
            let header = validate_batch(&batch, 1 << 20).expect("valid");
            assert_eq!(header.base_timestamp, 10_000 * round);
            assert_eq!(header.max_timestamp, 10_000 * round + 99);
            assert_eq!(header.producer_id, 9);
            let records = decode_records(&batch).expect("decodes");
            assert_eq!(records.len(), 101);
            assert_eq!(records[3].value.as_ref().map(|v| v.len()), Some(53));
            assert_eq!(
                records[3].value.as_ref().map(|v| &v[..5]),
                Some(&b"stamp"[..])
            );
            assert_eq!(records[4].key.as_deref(), Some(&b"k4"[..]));
            assert_eq!(records[100].headers.len(), 2);
            assert_eq!(records[100].timestamp_delta, 5 - 10_000 * round);
        }
    }

    #[test]
    fn fetched_records_are_visited_from_an_offset_and_a_partial_tail_is_ignored() {
        let mut builder = BatchBuilder::reusable();
        let mut joined = Vec::new();
        for batch_index in 0..3i64 {
            for i in 0..10u8 {
                builder.push_record(None, Some(&[i]), &[], 0);
            }
            let mut batch = builder.finish().to_vec();
            set_base_offset_and_epoch(&mut batch, batch_index * 10, 0);
            joined.extend_from_slice(&batch);
        }
        let cut = &joined[..joined.len() - 3];
        let mut seen = Vec::new();
        let next = visit_fetched_records(cut, 5, |offset, record| {
            seen.push((offset, record.value.map(|v| v[0])));
            Ok::<(), StorageError>(())
        })
        .expect("walk");
        assert_eq!(next, 20);
        assert_eq!(seen.len(), 15);
        assert_eq!(seen[0], (5, Some(5)));
        assert_eq!(seen[14], (19, Some(9)));
        let mut garbage = joined.clone();
        garbage[MAGIC_POS] = 9;
        assert!(visit_fetched_records(&garbage, 0, |_, _| Ok::<(), StorageError>(())).is_err());
        let mut compressed = joined;
        compressed[ATTRIBUTES_POS + 1] |= 0x1;
        assert!(visit_fetched_records(&compressed, 0, |_, _| Ok::<(), StorageError>(())).is_err());
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
