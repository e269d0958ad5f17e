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
    /// Offset the next appended record gets.
    fn end_offset(&self) -> i64;
    /// Drops the records before `offset` (superseded by a snapshot written after them).
    fn delete_before(&self, offset: i64) -> Result<()>;
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

    fn end_offset(&self) -> i64 {
        self.log_end_offset()
    }

    fn delete_before(&self, offset: i64) -> Result<()> {
        InternalLog::delete_before(self, offset).map(|_| ())
    }
}

/// Bytes a record counts for in the log-size accounting that triggers snapshots.
pub(crate) fn record_bytes(record: &Record) -> u64 {
    (record.0.len() + record.1.as_ref().map_or(0, Bytes::len) + RECORD_OVERHEAD_BYTES) as u64
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
        let size = record_bytes(&record) as usize;
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
    log: std::sync::Arc<parking_lot::Mutex<MemoryLog>>,
}

#[cfg(test)]
#[derive(Default)]
struct MemoryLog {
    /// Offset of `records[0]`.
    start: i64,
    records: Vec<Record>,
    batches: usize,
}

#[cfg(test)]
impl MemorySink {
    /// The records still in the log, oldest first.
    pub fn records(&self) -> Vec<Record> {
        self.log.lock().records.clone()
    }

    /// Number of `append` calls (batches).
    pub fn batches(&self) -> usize {
        self.log.lock().batches
    }
}

#[cfg(test)]
impl RecordSink for MemorySink {
    fn append(&self, records: Vec<Record>, _now_ms: i64) -> Result<Appended> {
        let mut log = self.log.lock();
        log.batches += 1;
        log.records.extend(records);
        Ok(Appended::Durable)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn end_offset(&self) -> i64 {
        let log = self.log.lock();
        log.start + log.records.len() as i64
    }

    fn delete_before(&self, offset: i64) -> Result<()> {
        let mut log = self.log.lock();
        let count = usize::try_from(offset - log.start)
            .unwrap_or(0)
            .min(log.records.len());
        log.records.drain(..count);
        log.start += count as i64;
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
        assert_eq!(appended.len(), sink.batches());
        assert_eq!(sink.records(), records);
        assert!(append_chunked(&sink, Vec::new(), 0)
            .expect("append")
            .is_empty());
    }

    #[test]
    fn memory_sink_drops_records_before_an_offset() {
        let sink = MemorySink::default();
        let record = |k: &'static str| (Bytes::from_static(k.as_bytes()), None);
        append_chunked(&sink, vec![record("a"), record("b"), record("c")], 0).expect("append");
        assert_eq!(sink.end_offset(), 3);
        sink.delete_before(2).expect("delete");
        assert_eq!(sink.records(), vec![record("c")]);
        assert_eq!(sink.end_offset(), 3);
    }
}
