//! Where the coordinator writes its records: the `__consumer_offsets` internal log, or
//! memory in tests (so the state machine and replay are testable without storage).

use bytes::Bytes;
use ferry_storage::Durability;

use crate::internal::InternalLog;
use crate::Result;

/// Largest slice of records appended as one batch: a group deletion or a big commit is
/// split so that no batch comes near the log's batch size limit.
pub(crate) const APPEND_CHUNK_BYTES_MAX: usize = 256 << 10;
/// Per-record overhead counted against [`APPEND_CHUNK_BYTES_MAX`] (record header varints).
const RECORD_OVERHEAD_BYTES: usize = 32;

/// One key/value record; `None` is a tombstone.
pub(crate) type Record = (Bytes, Option<Bytes>);

/// An append log of key/value records.
pub(crate) trait RecordSink: Send + Sync {
    /// Appends records in order, as one batch.
    fn append(&self, records: Vec<Record>, now_ms: i64) -> Result<Appended>;
    /// Makes everything appended so far durable.
    fn flush(&self) -> Result<()>;
}

/// An appended batch, possibly not yet durable.
pub(crate) enum Appended {
    /// Already durable (sinks without a durability step).
    #[cfg_attr(not(test), allow(dead_code))]
    Durable,
    /// Durable once the storage engine says so.
    Pending(Durability),
}

impl Appended {
    /// Waits until the batch is durable.
    pub async fn wait(self) -> Result<()> {
        match self {
            Appended::Durable => Ok(()),
            Appended::Pending(durability) => Ok(durability.wait().await?),
        }
    }
}

impl RecordSink for InternalLog {
    fn append(&self, records: Vec<Record>, now_ms: i64) -> Result<Appended> {
        Ok(Appended::Pending(InternalLog::append(
            self, records, now_ms,
        )?))
    }

    fn flush(&self) -> Result<()> {
        InternalLog::flush(self)
    }
}

/// Appends `records` in order, in batches of at most [`APPEND_CHUNK_BYTES_MAX`].
pub(crate) fn append_chunked(
    sink: &dyn RecordSink,
    records: Vec<Record>,
    now_ms: i64,
) -> Result<Vec<Appended>> {
    let mut appended = Vec::new();
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    for record in records {
        let size = record.0.len() + record.1.as_ref().map_or(0, Bytes::len) + RECORD_OVERHEAD_BYTES;
        if !chunk.is_empty() && chunk_bytes + size > APPEND_CHUNK_BYTES_MAX {
            appended.push(sink.append(std::mem::take(&mut chunk), now_ms)?);
            chunk_bytes = 0;
        }
        chunk_bytes += size;
        chunk.push(record);
    }
    if !chunk.is_empty() {
        appended.push(sink.append(chunk, now_ms)?);
    }
    Ok(appended)
}

/// Records kept in memory (tests): a reopened coordinator replays them.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct MemorySink {
    pub records: std::sync::Arc<parking_lot::Mutex<Vec<Record>>>,
    /// Number of `append` calls (batches).
    pub batches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[cfg(test)]
impl RecordSink for MemorySink {
    fn append(&self, records: Vec<Record>, _now_ms: i64) -> Result<Appended> {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.records.lock().extend(records);
        Ok(Appended::Durable)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_appends_are_split_in_order() {
        let sink = MemorySink::default();
        let value = Bytes::from(vec![b'x'; 10_000]);
        let records: Vec<Record> = (0..100)
            .map(|i| (Bytes::from(format!("k{i}")), Some(value.clone())))
            .collect();
        let appended = append_chunked(&sink, records.clone(), 0).expect("append");
        assert!(appended.len() >= 4, "1 MB of records must be split");
        assert_eq!(
            appended.len(),
            sink.batches.load(std::sync::atomic::Ordering::Relaxed)
        );
        assert_eq!(*sink.records.lock(), records);
        assert!(append_chunked(&sink, Vec::new(), 0)
            .expect("append")
            .is_empty());
    }
}
