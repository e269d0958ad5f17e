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

use crate::{CoreError, Result};

/// Bytes read per step while replaying.
const REPLAY_READ_BYTES: u32 = 4 << 20;
/// Internal logs keep everything (compaction is future work); segments stay small so a
/// future compaction can drop whole segments.
const INTERNAL_SEGMENT_BYTES: u64 = 64 << 20;

/// One internal state log.
#[derive(Debug)]
pub(crate) struct InternalLog {
    log: Arc<PartitionLog>,
}

/// One replayed record.
pub(crate) struct InternalRecord {
    pub key: Bytes,
    pub value: Option<Bytes>,
    pub timestamp_ms: i64,
}

impl InternalLog {
    /// Opens (creating) the internal log `name` and returns it with all its records.
    pub fn open(store: &Store, name: &str, flush: FlushPolicy) -> Result<(InternalLog, Vec<InternalRecord>)> {
        let config = LogConfig {
            segment_bytes_max: INTERNAL_SEGMENT_BYTES,
            segment_ms_max: i64::MAX as u64,
            retention_ms: None,
            retention_bytes: None,
            flush,
            ..LogConfig::default()
        };
        let log = store.open_log(&LogId { topic: name.to_string(), partition: 0 }, config)?;
        let mut records = Vec::new();
        let mut offset = log.log_start_offset();
        let end = log.high_watermark();
        while offset < end {
            let read = log.read(offset, REPLAY_READ_BYTES, end)?;
            if read.records.is_empty() {
                break;
            }
            for (header, batch) in split_batches(&read.records, true)? {
                for record in decode_records(&batch)? {
                    let record_offset = header.base_offset + record.offset_delta as i64;
                    if record_offset < offset {
                        continue;
                    }
                    let key = record.key.ok_or_else(|| {
                        CoreError::CorruptMessage(format!("{name}: record at {record_offset} has no key"))
                    })?;
                    records.push(InternalRecord {
                        key,
                        value: record.value,
                        timestamp_ms: header.base_timestamp + record.timestamp_delta,
                    });
                }
            }
            assert!(read.next_offset > offset, "internal log {name} read did not advance");
            offset = read.next_offset;
        }
        Ok((InternalLog { log }, records))
    }

    /// Appends records (key, value or tombstone) as one batch; the returned
    /// [`Durability`] resolves when they are on disk.
    pub fn append(&self, entries: Vec<(Bytes, Option<Bytes>)>, now_ms: i64) -> Result<Durability> {
        let mut builder = BatchBuilder::new(now_ms);
        for (key, value) in entries {
            builder.push(Some(key), value, Vec::new(), now_ms);
        }
        Ok(self.log.append(builder.build(), 0, now_ms)?.durable)
    }

    /// Flushes the log to disk.
    pub fn flush(&self) -> Result<()> {
        Ok(self.log.flush()?)
    }
}

/// Encodes a key or value as JSON bytes.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("internal state serializes to JSON"))
}

/// Decodes JSON bytes of an internal record.
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| CoreError::CorruptMessage(format!("internal record: {e}")))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
