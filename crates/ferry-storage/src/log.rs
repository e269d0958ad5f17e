//! One partition's log: segments, sparse indexes, retention, reads.

use std::sync::Arc;

use bytes::Bytes;

use crate::Result;

/// When appended data reaches stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Acknowledge after the append reaches the page cache; flush every `interval_ms` or
    /// every `bytes` appended, whichever comes first.
    Async { interval_ms: u64, bytes: u64 },
    /// Acknowledge only after the append is fsynced (group commit through the journal).
    Sync,
}

/// Per-log settings; topic configs map onto these.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// Roll to a new segment once the active one reaches this size.
    pub segment_bytes_max: u64,
    /// Roll to a new segment once the active one is this old (by first append time).
    pub segment_ms_max: u64,
    /// Add a sparse index entry every this many bytes.
    pub index_interval_bytes: u32,
    /// Delete whole segments whose newest record is older than this; `None` keeps forever.
    pub retention_ms: Option<i64>,
    /// Delete oldest whole segments while the log is larger than this; `None` = no limit.
    pub retention_bytes: Option<u64>,
    pub flush: FlushPolicy,
    /// Largest batch accepted by `append`.
    pub batch_bytes_max: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms_max: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushPolicy::Async { interval_ms: 1000, bytes: 64 << 20 },
            batch_bytes_max: 1 << 20,
        }
    }
}

/// What an append did.
#[derive(Debug)]
pub struct AppendResult {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Largest record timestamp in the appended batches.
    pub max_timestamp: i64,
    /// Resolves when the appended bytes are durable (immediately for `Async` logs).
    pub durable: Durability,
}

/// Resolves once an append is on stable storage.
#[derive(Debug)]
pub struct Durability {
    // storage helper: e.g. a journal position plus a watch receiver, or "already durable".
}

impl Durability {
    /// Waits until the append is durable, or fails if the journal could not be synced.
    pub async fn wait(self) -> Result<()> {
        todo!("storage helper")
    }
}

/// The bytes of whole batches read from a log.
#[derive(Clone, Debug, Default)]
pub struct ReadResult {
    /// Whole batches, starting with the batch that contains the requested offset.
    pub records: Bytes,
    /// Offset after the last record in `records` (where the next read continues).
    pub next_offset: i64,
}

/// One partition's append-only log.
#[derive(Debug)]
pub struct PartitionLog {
    // storage helper
    _private: Arc<()>,
}

impl PartitionLog {
    /// Appends one or more RecordBatch v2 batches (`records` as received from a producer).
    /// Validates each batch (magic 2, lengths, CRC32C), rewrites base offsets (contiguous
    /// from the log end) and the partition leader epoch, and writes them as one I/O.
    /// `now_ms` is the log append time. Fails without writing anything if any batch is
    /// invalid or larger than `batch_bytes_max`.
    pub fn append(&self, records: Bytes, leader_epoch: i32, now_ms: i64) -> Result<AppendResult> {
        todo!("storage helper")
    }

    /// Reads whole batches starting with the one containing `offset`, up to `max_bytes`
    /// (but always at least one whole batch if there is one), not past `max_offset`
    /// (exclusive; the high watermark). `offset == log_end_offset` returns no records.
    pub fn read(&self, offset: i64, max_bytes: u32, max_offset: i64) -> Result<ReadResult> {
        todo!("storage helper")
    }

    /// First offset still stored.
    pub fn log_start_offset(&self) -> i64 {
        todo!("storage helper")
    }
    /// Offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        todo!("storage helper")
    }
    /// Offset below which records are committed; equal to the log end on a single node.
    pub fn high_watermark(&self) -> i64 {
        todo!("storage helper")
    }
    /// The earliest offset whose record timestamp is >= `timestamp_ms`, with that record's
    /// timestamp; `None` if no record is that late.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        todo!("storage helper")
    }
    /// (offset, timestamp) of the record with the largest timestamp, if any.
    pub fn max_timestamp(&self) -> Result<Option<(i64, i64)>> {
        todo!("storage helper")
    }
    /// Raises the log start offset to `offset` (Kafka DeleteRecords) and deletes segments
    /// wholly below it. Returns the new log start offset.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        todo!("storage helper")
    }
    /// Deletes whole segments past the retention limits. Never deletes the active segment.
    /// Returns how many segments were deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        todo!("storage helper")
    }
    /// Replaces the log's settings (takes effect on the next append / retention pass).
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        todo!("storage helper")
    }
    /// Current settings.
    pub fn config(&self) -> LogConfig {
        todo!("storage helper")
    }
    /// Bytes stored in all segments.
    pub fn size_bytes(&self) -> u64 {
        todo!("storage helper")
    }
    /// Leader epoch of the last appended batch and the start offset of each epoch seen,
    /// ascending: `(epoch, start_offset)`.
    pub fn leader_epochs(&self) -> Vec<(i32, i64)> {
        todo!("storage helper")
    }
    /// fsyncs everything appended so far.
    pub fn flush(&self) -> Result<()> {
        todo!("storage helper")
    }
}
