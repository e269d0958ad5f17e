//! Kafka RecordBatch v2: the one on-disk and on-wire message format.
//!
//! Layout (big-endian): baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 |
//! magic i8 (=2) | crc u32 (CRC32C of everything from `attributes` to the end) |
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records.

/// Bytes of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batchLength`'s coverage starts (baseOffset + batchLength).
pub const LOG_OVERHEAD_BYTES: usize = 12;

/// The parsed fixed header of one record batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the `batchLength` field; the whole batch is `batch_length + 12` bytes.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the fixed header at the start of `buf`. Does not check the CRC.
    pub fn parse(buf: &[u8]) -> crate::Result<BatchHeader> {
        todo!("storage helper")
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
        (self.attributes & 0x7) as u8
    }
    /// Whether the timestamps are log-append times (attribute bit 3).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x8 != 0
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
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<bytes::Bytes>,
    pub value: Option<bytes::Bytes>,
    pub headers: Vec<(String, Option<bytes::Bytes>)>,
}

/// Builds one uncompressed RecordBatch v2 (base offset 0; the log assigns offsets).
#[derive(Debug, Default)]
pub struct BatchBuilder {
    // storage helper
}

impl BatchBuilder {
    /// A builder whose records get `base_timestamp_ms` plus their `timestamp_delta`.
    pub fn new(base_timestamp_ms: i64) -> Self {
        todo!("storage helper")
    }
    /// Adds a record; its offset delta is its position in the batch.
    pub fn push(&mut self, key: Option<bytes::Bytes>, value: Option<bytes::Bytes>, headers: Vec<(String, Option<bytes::Bytes>)>, timestamp_ms: i64) {
        todo!("storage helper")
    }
    /// Encodes the batch with its CRC.
    pub fn build(self) -> bytes::Bytes {
        todo!("storage helper")
    }
}

/// Splits `buf` into whole batches, checking each length (and CRC if `verify_crc`).
/// A trailing partial batch is an error.
pub fn split_batches(buf: &bytes::Bytes, verify_crc: bool) -> crate::Result<Vec<(BatchHeader, bytes::Bytes)>> {
    todo!("storage helper")
}

/// Decodes the records of one uncompressed batch. Compressed batches are an error here.
pub fn decode_records(batch: &[u8]) -> crate::Result<Vec<Record>> {
    todo!("storage helper")
}
