//! A partition: a log, its producer state and the wake-up for waiting fetches.
//!
//! Appends of one partition are serialised by the producer-state lock, so the sequence
//! check, the write and the state update are one step: two retries of the same batch can
//! never both be written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ferry_storage::batch::split_batches;
use ferry_storage::{AppendResult, PartitionLog, StorageError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::producer::{
    BatchMeta, IdempotentBatch, ProducerSnapshot, ProducerStates, SequenceCheck,
};
use crate::watch::WatchShared;
use crate::{CoreError, Result};

/// Leader epoch stamped on appended batches. A single node is leader of every partition
/// forever, in epoch 0; replication will make this per-partition state.
pub(crate) const LEADER_EPOCH: i32 = 0;
/// Bytes read per step when rebuilding producer state from the log.
const RECOVERY_READ_BYTES: u32 = 4 << 20;

/// Producer state of one partition as stored in `__ferry_producers`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PartitionSnapshot {
    /// Topic id, so that a recreated topic does not inherit a deleted one's state.
    pub topic_id: uuid::Uuid,
    /// The log end offset the state covers: batches before it are in `producers`.
    pub offset: i64,
    pub producers: Vec<ProducerSnapshot>,
}

/// Key of a [`PartitionSnapshot`] record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct PartitionKey {
    pub topic: String,
    pub partition: u32,
}

/// What [`Partition::append`] did.
#[derive(Debug)]
pub(crate) enum AppendOutcome {
    /// Written.
    Appended(AppendResult),
    /// A retry of an already-written batch; its original first offset.
    Duplicate { base_offset: i64 },
}

/// Someone told when a partition changes.
#[derive(Debug)]
enum Waiter {
    /// Woken (a stream queue's consumer).
    Notify(Arc<Notify>),
    /// Marked changed in its slot, and woken (a fetch or a fetch session).
    Watch(Arc<WatchShared>, u32),
}

/// One partition of a topic.
#[derive(Debug)]
pub(crate) struct Partition {
    pub topic: String,
    pub index: u32,
    pub log: Arc<PartitionLog>,
    /// Producer state; also the append lock.
    producers: Mutex<ProducerStates>,
    /// Who is told of changes: stream-queue consumers' wake-ups and fetch watches.
    waiters: Mutex<Vec<Waiter>>,
    /// Set when the topic is deleted (holders of an `Arc` must stop using it).
    deleted: AtomicBool,
}

impl Partition {
    /// Wraps an opened log, rebuilding producer state from `snapshot` (if any) plus the
    /// idempotent batch headers appended after it.
    pub fn open(
        topic: &str,
        index: u32,
        log: Arc<PartitionLog>,
        snapshot: Option<PartitionSnapshot>,
        now_ms: i64,
    ) -> Result<Partition> {
        let log_end = log.log_end_offset();
        let (mut producers, scan_from) = match snapshot {
            Some(s) => (ProducerStates::restore(s.producers), s.offset),
            None => (ProducerStates::default(), log.log_start_offset()),
        };
        if scan_from > log_end {
            // The log lost a tail the snapshot had seen (unflushed async data after a
            // crash): forget batches that are no longer there.
            producers.truncate(log_end);
        } else {
            scan_producer_batches(&log, scan_from, &mut producers, now_ms)
                .map_err(|e| map_storage(e, &format!("{topic}-{index}")))?;
        }
        Ok(Partition {
            topic: topic.to_string(),
            index,
            log,
            producers: Mutex::new(producers),
            waiters: Mutex::new(Vec::new()),
            deleted: AtomicBool::new(false),
        })
    }

    /// Appends `records` (already validated by the caller for size and shape). With an
    /// idempotent batch, checks and updates the producer state under the same lock as
    /// the write.
    pub fn append(
        &self,
        records: Bytes,
        idempotent: Option<IdempotentBatch>,
        now_ms: i64,
    ) -> Result<AppendOutcome> {
        if self.is_deleted() {
            return Err(CoreError::UnknownTopicOrPartition);
        }
        let mut producers = self.producers.lock();
        if let Some(batch) = &idempotent {
            if let SequenceCheck::Duplicate(meta) = producers.check(batch)? {
                return Ok(AppendOutcome::Duplicate {
                    base_offset: meta.first_offset,
                });
            }
        }
        let result = self
            .log
            .append(records, LEADER_EPOCH, now_ms)
            .map_err(map_append_error)?;
        if let Some(batch) = idempotent {
            let meta = BatchMeta {
                first_seq: batch.first_seq,
                last_seq: batch.last_seq,
                first_offset: result.base_offset,
                last_offset: result.last_offset,
            };
            producers.record(batch.producer_id, batch.epoch, meta, now_ms);
        }
        drop(producers);
        self.changed();
        Ok(AppendOutcome::Appended(result))
    }

    /// The producer state and the log end it covers, taken atomically with respect to
    /// appends.
    pub fn snapshot(&self, topic_id: uuid::Uuid) -> PartitionSnapshot {
        let producers = self.producers.lock();
        PartitionSnapshot {
            topic_id,
            offset: self.log.log_end_offset(),
            producers: producers.snapshot(),
        }
    }

    /// Drops producer state older than `max_age_ms`.
    pub fn expire_producers(&self, now_ms: i64, max_age_ms: i64) -> usize {
        self.producers.lock().expire(now_ms, max_age_ms)
    }

    /// Registers a wake-up, notified after every change until unregistered.
    pub fn register_waiter(&self, waiter: &Arc<Notify>) {
        self.waiters.lock().push(Waiter::Notify(waiter.clone()));
    }

    /// Removes a wake-up.
    pub fn unregister_waiter(&self, waiter: &Arc<Notify>) {
        self.waiters
            .lock()
            .retain(|w| !matches!(w, Waiter::Notify(n) if Arc::ptr_eq(n, waiter)));
    }

    /// Has `watch` told of every change, as its `slot`, until [`unwatch`](Self::unwatch).
    pub(crate) fn watch(&self, watch: &Arc<WatchShared>, slot: u32) {
        self.waiters.lock().push(Waiter::Watch(watch.clone(), slot));
    }

    /// Stops telling `watch` (in `slot`) of changes.
    pub(crate) fn unwatch(&self, watch: &Arc<WatchShared>, slot: u32) {
        self.waiters.lock().retain(
            |w| !matches!(w, Waiter::Watch(shared, s) if *s == slot && Arc::ptr_eq(shared, watch)),
        );
    }

    /// Tells every waiter and watch that the partition changed: records were appended or
    /// removed from the front, or the topic was deleted. (A wake-up with nobody waiting
    /// leaves a permit, so a waiter between two looks does not miss it.)
    pub fn changed(&self) {
        for waiter in self.waiters.lock().iter() {
            match waiter {
                Waiter::Notify(notify) => notify.notify_one(),
                Waiter::Watch(watch, slot) => watch.mark(*slot),
            }
        }
    }

    /// Marks the partition deleted and wakes its fetches so they see it.
    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.changed();
    }

    /// Whether the partition's topic was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
}

/// Replays idempotent batch headers from `from` to the high watermark into `producers`.
fn scan_producer_batches(
    log: &PartitionLog,
    from: i64,
    producers: &mut ProducerStates,
    now_ms: i64,
) -> std::result::Result<(), StorageError> {
    let end = log.high_watermark();
    let mut offset = from.max(log.log_start_offset());
    while offset < end {
        let read = log.read(offset, RECOVERY_READ_BYTES, end)?;
        if read.records.is_empty() {
            break;
        }
        for (header, _) in split_batches(&read.records, false)? {
            if header.producer_id < 0 || header.is_control() || header.last_offset() < offset {
                continue;
            }
            let meta = BatchMeta {
                first_seq: header.base_sequence,
                last_seq: crate::producer::last_sequence(
                    header.base_sequence,
                    header.last_offset_delta,
                ),
                first_offset: header.base_offset,
                last_offset: header.last_offset(),
            };
            producers.record(header.producer_id, header.producer_epoch, meta, now_ms);
        }
        if read.next_offset <= offset {
            return Err(StorageError::CorruptBatch(format!(
                "read at offset {offset} did not advance"
            )));
        }
        offset = read.next_offset;
    }
    Ok(())
}

/// Maps a storage error of the produce path to what the producer should hear.
pub(crate) fn map_append_error(e: StorageError) -> CoreError {
    match e {
        StorageError::CorruptBatch(why) => CoreError::CorruptMessage(why),
        StorageError::BatchTooLarge { size, max } => CoreError::MessageTooLarge(format!(
            "batch of {size} bytes exceeds the limit of {max} bytes"
        )),
        other => map_storage(other, "append"),
    }
}

/// Maps storage errors that are not about the data itself.
pub(crate) fn map_storage(e: StorageError, context: &str) -> CoreError {
    match e {
        StorageError::ShutDown => CoreError::ShuttingDown,
        StorageError::UnknownLog(_) => CoreError::UnknownTopicOrPartition,
        StorageError::OffsetOutOfRange { .. } => CoreError::OffsetOutOfRange,
        StorageError::CorruptBatch(why) => CoreError::CorruptMessage(format!("{context}: {why}")),
        other => CoreError::Storage(other),
    }
}

#[cfg(test)]
mod tests {
    use ferry_storage::batch::BatchBuilder;
    use ferry_storage::{LogConfig, LogId, Store, StoreConfig};

    use super::*;
    use crate::producer::last_sequence;

    fn idempotent(producer_id: i64, sequence: i32, records: usize) -> (Bytes, IdempotentBatch) {
        let mut builder = BatchBuilder::new(1).with_producer(producer_id, 0, sequence);
        for _ in 0..records {
            builder.push(None, Some(Bytes::from_static(b"v")), Vec::new(), 1);
        }
        let batch = IdempotentBatch {
            producer_id,
            epoch: 0,
            first_seq: sequence,
            last_seq: last_sequence(sequence, records as i32 - 1),
        };
        (builder.build(), batch)
    }

    #[test]
    fn producer_state_is_rebuilt_from_the_log_and_trimmed_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("store");
        let log = store
            .open_log(
                &LogId {
                    topic: "t".into(),
                    partition: 0,
                },
                LogConfig::default(),
            )
            .expect("log");
        let topic_id = uuid::Uuid::new_v4();
        let partition = Partition::open("t", 0, log.clone(), None, 0).expect("open");
        let (first, first_meta) = idempotent(4, 0, 2);
        let (second, second_meta) = idempotent(4, 2, 1);
        assert!(matches!(
            partition.append(first.clone(), Some(first_meta), 0),
            Ok(AppendOutcome::Appended(_))
        ));
        let early = partition.snapshot(topic_id);
        assert!(matches!(
            partition.append(second.clone(), Some(second_meta), 0),
            Ok(AppendOutcome::Appended(_))
        ));

        // No snapshot: everything comes from scanning batch headers.
        let scanned = Partition::open("t", 0, log.clone(), None, 0).expect("reopen");
        assert!(matches!(
            scanned.append(first.clone(), Some(first_meta), 0),
            Ok(AppendOutcome::Duplicate { base_offset: 0 })
        ));
        assert!(matches!(
            scanned.append(second.clone(), Some(second_meta), 0),
            Ok(AppendOutcome::Duplicate { base_offset: 2 })
        ));

        // An older snapshot plus the scan of what followed it.
        let resumed = Partition::open("t", 0, log.clone(), Some(early), 0).expect("reopen");
        assert!(matches!(
            resumed.append(second, Some(second_meta), 0),
            Ok(AppendOutcome::Duplicate { base_offset: 2 })
        ));

        // A snapshot ahead of the log (its tail was lost): batches past the end are forgotten.
        let ahead = PartitionSnapshot {
            offset: 1_000,
            ..partition.snapshot(topic_id)
        };
        let mut lost = ahead.clone();
        for producer in &mut lost.producers {
            for batch in &mut producer.entry.batches {
                batch.first_offset += 100;
                batch.last_offset += 100;
            }
        }
        let trimmed = Partition::open("t", 0, log, Some(lost), 0).expect("reopen");
        let (third, third_meta) = idempotent(4, 9, 1);
        assert!(
            matches!(
                trimmed.append(third, Some(third_meta), 0),
                Ok(AppendOutcome::Appended(_))
            ),
            "state for batches beyond the log is gone, so the producer is unknown again"
        );
        store.shutdown().expect("shutdown");
    }
}
