//! Internal state logs: durable key/value records of metadata, offsets and producer ids,
//! kept on the same storage engine as user data and replayed at startup.
//!
//! Each record is one Kafka record whose key and value are JSON; a `None` value is a
//! tombstone. Replay yields every record in log order; the caller folds them into its
//! state (last value per key wins).

use std::sync::Arc;

use bytes::Bytes;
use ferry_storage::batch::{decode_records, split_batches, BatchBuilder};
use ferry_storage::{Durability, FlushPolicy, LogConfig, LogId, PartitionLog, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::partition::map_storage;
use crate::{CoreError, Result};

/// Bytes read per step while replaying.
const REPLAY_READ_BYTES: u32 = 4 << 20;
/// Internal logs keep everything (compaction is future work); segments stay small so a
/// future compaction can drop whole segments.
const INTERNAL_SEGMENT_BYTES: u64 = 64 << 20;
/// Largest batch an internal log accepts (a snapshot of many partitions' producer state
/// is written in batches up to this size).
pub(crate) const INTERNAL_BATCH_BYTES_MAX: u32 = 16 << 20;

/// One internal state log.
#[derive(Debug)]
pub(crate) struct InternalLog {
    log: Arc<PartitionLog>,
    name: String,
}

/// One replayed record.
pub(crate) struct InternalRecord {
    pub key: Bytes,
    pub value: Option<Bytes>,
    /// Record time (offset expiry in the group coordinator uses it).
    #[allow(dead_code)]
    pub timestamp_ms: i64,
}

impl InternalLog {
    /// Opens (creating) the internal log `name` and returns it with all its records.
    pub fn open(
        store: &Store,
        name: &str,
        flush: FlushPolicy,
    ) -> Result<(InternalLog, Vec<InternalRecord>)> {
        let config = LogConfig {
            segment_bytes_max: INTERNAL_SEGMENT_BYTES,
            segment_ms_max: i64::MAX as u64,
            retention_ms: None,
            retention_bytes: None,
            flush,
            batch_bytes_max: INTERNAL_BATCH_BYTES_MAX,
            ..LogConfig::default()
        };
        let log = store
            .open_log(
                &LogId {
                    topic: name.to_string(),
                    partition: 0,
                },
                config,
            )
            .map_err(|e| map_storage(e, name))?;
        let mut records = Vec::new();
        let mut offset = log.log_start_offset();
        let end = log.high_watermark();
        while offset < end {
            let read = log
                .read(offset, REPLAY_READ_BYTES, end)
                .map_err(|e| map_storage(e, name))?;
            if read.records.is_empty() {
                break;
            }
            for (header, batch) in
                split_batches(&read.records, true).map_err(|e| map_storage(e, name))?
            {
                for record in decode_records(&batch).map_err(|e| map_storage(e, name))? {
                    let record_offset = header.base_offset + record.offset_delta as i64;
                    if record_offset < offset {
                        continue;
                    }
                    let key = record.key.ok_or_else(|| {
                        CoreError::CorruptMessage(format!(
                            "{name}: record at {record_offset} has no key"
                        ))
                    })?;
                    records.push(InternalRecord {
                        key,
                        value: record.value,
                        timestamp_ms: header.base_timestamp + record.timestamp_delta,
                    });
                }
            }
            assert!(
                read.next_offset > offset,
                "internal log {name} read did not advance"
            );
            offset = read.next_offset;
        }
        Ok((
            InternalLog {
                log,
                name: name.to_string(),
            },
            records,
        ))
    }

    /// Appends records (key, value or tombstone) as one batch; the returned
    /// [`Durability`] resolves when they are on disk.
    pub fn append(&self, entries: Vec<(Bytes, Option<Bytes>)>, now_ms: i64) -> Result<Durability> {
        let mut builder = BatchBuilder::new(now_ms);
        for (key, value) in entries {
            builder.push(Some(key), value, Vec::new(), now_ms);
        }
        self.log
            .append(builder.build(), 0, now_ms)
            .map(|appended| appended.durable)
            .map_err(|e| map_storage(e, &self.name))
    }

    /// Appends records and returns once they are on disk, without a runtime: for the
    /// synchronous admin paths (topic changes, producer-id blocks), which are rare.
    pub fn append_durable(&self, entries: Vec<(Bytes, Option<Bytes>)>, now_ms: i64) -> Result<()> {
        let _durable = self.append(entries, now_ms)?;
        self.flush()
    }

    /// Flushes the log to disk.
    pub fn flush(&self) -> Result<()> {
        self.log.flush().map_err(|e| map_storage(e, &self.name))
    }

    /// Offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.log.log_end_offset()
    }

    /// Drops records before `offset` (whole segments below it are deleted): used once a
    /// newer full snapshot supersedes them.
    pub fn delete_before(&self, offset: i64) -> Result<i64> {
        self.log
            .delete_records_before(offset)
            .map_err(|e| map_storage(e, &self.name))
    }
}

/// Encodes a key or value as JSON bytes.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("internal state serializes to JSON"))
}

/// Decodes JSON bytes of an internal record.
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| CoreError::CorruptMessage(format!("internal record: {e}")))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
