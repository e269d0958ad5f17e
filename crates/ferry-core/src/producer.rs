//! Idempotent producers: producer ids and epochs, per-partition sequence tracking.
//!
//! Per partition and producer id the broker remembers the epoch and the last
//! [`PRODUCER_BATCHES_CACHED`] batches (first/last sequence and offset). A batch that
//! repeats one of them is a retry and gets the original offset without being written; any
//! other batch must continue the sequence. The rules are Kafka's (`ProducerStateManager`),
//! including KIP-360: a producer id the partition does not know may start at any sequence,
//! because its state may have expired.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{CoreError, Result};

/// Batches remembered per producer for duplicate detection (Kafka's limit on in-flight
/// requests per idempotent connection).
pub(crate) const PRODUCER_BATCHES_CACHED: usize = 5;
/// Producer state untouched for this long is dropped (Kafka's `producer.id.expiration.ms`).
pub(crate) const PRODUCER_STATE_EXPIRY_MS: i64 = 24 * 3600 * 1000;
/// Producer ids are reserved durably in blocks of this many, so most allocations need no
/// disk write; a restart skips the rest of the block (ids are never reused).
pub(crate) const PRODUCER_ID_BLOCK: i64 = 1000;

/// One remembered batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What one producer did last on one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first, at most [`PRODUCER_BATCHES_CACHED`].
    pub batches: VecDeque<BatchMeta>,
    /// Broker time of the last append (for expiry).
    pub last_append_ms: i64,
}

/// A producer's entry as stored in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerSnapshot {
    pub id: i64,
    #[serde(flatten)]
    pub entry: ProducerEntry,
}

/// Outcome of checking an idempotent batch against the producer state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// Append it, then [`ProducerStates::record`] it.
    Append,
    /// A retry of this already-written batch: acknowledge without writing.
    Duplicate(BatchMeta),
}

/// The identity and sequence range of one idempotent batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdempotentBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

/// Sequence after `seq`; sequences wrap from `i32::MAX` to 0 as in Kafka.
pub(crate) fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// Sequence of the last record of a batch starting at `base_seq`.
pub(crate) fn last_sequence(base_seq: i32, last_offset_delta: i32) -> i32 {
    ((base_seq as i64 + last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32
}

/// Producer state of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    /// Checks `batch` against the state; does not change it.
    pub fn check(&self, batch: &IdempotentBatch) -> Result<SequenceCheck> {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            // Unknown to this partition (new, or expired): accept any sequence (KIP-360).
            return Ok(SequenceCheck::Append);
        };
        if batch.epoch < entry.epoch {
            return Err(CoreError::InvalidProducerEpoch);
        }
        if batch.epoch > entry.epoch {
            if batch.first_seq != 0 {
                return Err(CoreError::OutOfOrderSequence(format!(
                    "producer {} epoch {} must start at sequence 0, got {}",
                    batch.producer_id, batch.epoch, batch.first_seq
                )));
            }
            return Ok(SequenceCheck::Append);
        }
        if let Some(seen) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == batch.first_seq && b.last_seq == batch.last_seq)
        {
            return Ok(SequenceCheck::Duplicate(*seen));
        }
        match entry.batches.back() {
            Some(last) if batch.first_seq != next_sequence(last.last_seq) => {
                Err(CoreError::OutOfOrderSequence(format!(
                    "producer {} expected sequence {}, got {}",
                    batch.producer_id,
                    next_sequence(last.last_seq),
                    batch.first_seq
                )))
            }
            _ => Ok(SequenceCheck::Append),
        }
    }

    /// Records an appended batch (also used when replaying the log, where a different
    /// epoch simply starts over).
    pub fn record(&mut self, producer_id: i64, epoch: i16, meta: BatchMeta, now_ms: i64) {
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch,
                batches: VecDeque::with_capacity(PRODUCER_BATCHES_CACHED),
                last_append_ms: now_ms,
            });
        if entry.epoch != epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(meta);
        while entry.batches.len() > PRODUCER_BATCHES_CACHED {
            entry.batches.pop_front();
        }
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
    }

    /// Drops producers whose last append is older than `max_age_ms`.
    pub fn expire(&mut self, now_ms: i64, max_age_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_append_ms) <= max_age_ms);
        before - self.producers.len()
    }

    /// Forgets batches at or past `log_end` (the log lost its tail in a crash after the
    /// snapshot was taken); producers left without batches are dropped.
    pub fn truncate(&mut self, log_end: i64) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.last_offset < log_end);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }

    /// Number of producers tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// The state as snapshot entries, sorted by producer id.
    pub fn snapshot(&self) -> Vec<ProducerSnapshot> {
        let mut out: Vec<ProducerSnapshot> = self
            .producers
            .iter()
            .map(|(id, entry)| ProducerSnapshot {
                id: *id,
                entry: entry.clone(),
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }

    /// Rebuilds the state from snapshot entries.
    pub fn restore(entries: Vec<ProducerSnapshot>) -> ProducerStates {
        let producers = entries
            .into_iter()
            .map(|mut p| {
                while p.entry.batches.len() > PRODUCER_BATCHES_CACHED {
                    p.entry.batches.pop_front();
                }
                (p.id, p.entry)
            })
            .collect();
        ProducerStates { producers }
    }
}

/// Hands out producer ids from durably reserved blocks.
#[derive(Debug)]
pub(crate) struct ProducerIdAllocator {
    next: i64,
    /// Ids below this are reserved on disk.
    reserved_end: i64,
}

impl ProducerIdAllocator {
    /// Starts after everything ever reserved.
    pub fn new(reserved_end: i64) -> Self {
        ProducerIdAllocator {
            next: reserved_end,
            reserved_end,
        }
    }

    /// The next id, or `Err(new_reserved_end)` when a new block must be persisted first
    /// (then call [`ProducerIdAllocator::reserved`] and retry).
    pub fn next_id(&mut self) -> std::result::Result<i64, i64> {
        if self.next >= self.reserved_end {
            return Err(self.reserved_end.saturating_add(PRODUCER_ID_BLOCK));
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }

    /// Records that ids below `reserved_end` are now reserved on disk.
    pub fn reserved(&mut self, reserved_end: i64) {
        assert!(
            reserved_end >= self.reserved_end,
            "producer id reservations only grow"
        );
        self.reserved_end = reserved_end;
    }

    /// Whether `id` was handed out by this broker (now or before a restart).
    pub fn was_issued(&self, id: i64) -> bool {
        id >= 0 && id < self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> IdempotentBatch {
        IdempotentBatch {
            producer_id,
            epoch,
            first_seq,
            last_seq: last_sequence(first_seq, count - 1),
        }
    }

    fn append(states: &mut ProducerStates, b: IdempotentBatch, offset: i64) -> SequenceCheck {
        let check = states.check(&b).expect("accepted");
        if check == SequenceCheck::Append {
            let count = (b.last_seq as i64 - b.first_seq as i64).rem_euclid(i32::MAX as i64 + 1);
            let meta = BatchMeta {
                first_seq: b.first_seq,
                last_seq: b.last_seq,
                first_offset: offset,
                last_offset: offset + count,
            };
            states.record(b.producer_id, b.epoch, meta, 0);
        }
        check
    }

    #[test]
    fn sequences_continue_and_duplicates_are_found() {
        let mut s = ProducerStates::default();
        assert_eq!(append(&mut s, batch(1, 0, 0, 3), 10), SequenceCheck::Append);
        assert_eq!(append(&mut s, batch(1, 0, 3, 2), 13), SequenceCheck::Append);
        match s.check(&batch(1, 0, 0, 3)).expect("dup") {
            SequenceCheck::Duplicate(meta) => assert_eq!(meta.first_offset, 10),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.check(&batch(1, 0, 6, 1)),
            Err(CoreError::OutOfOrderSequence(_))
        ));
        assert!(matches!(
            s.check(&batch(1, 0, 4, 1)),
            Err(CoreError::OutOfOrderSequence(_))
        ));
        assert_eq!(
            s.check(&batch(1, 0, 5, 1)).expect("next"),
            SequenceCheck::Append
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            append(&mut s, batch(1, 0, i, 1), i as i64);
        }
        assert!(matches!(
            s.check(&batch(1, 0, 0, 1)),
            Err(CoreError::OutOfOrderSequence(_))
        ));
        assert!(matches!(
            s.check(&batch(1, 0, 2, 1)),
            Ok(SequenceCheck::Duplicate(_))
        ));
        assert!(matches!(
            s.check(&batch(1, 0, 6, 1)),
            Ok(SequenceCheck::Duplicate(_))
        ));
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut s = ProducerStates::default();
        append(&mut s, batch(7, 3, 0, 1), 0);
        assert!(matches!(
            s.check(&batch(7, 2, 1, 1)),
            Err(CoreError::InvalidProducerEpoch)
        ));
        assert!(matches!(
            s.check(&batch(7, 4, 1, 1)),
            Err(CoreError::OutOfOrderSequence(_))
        ));
        assert_eq!(append(&mut s, batch(7, 4, 0, 1), 1), SequenceCheck::Append);
        assert!(matches!(
            s.check(&batch(7, 3, 1, 1)),
            Err(CoreError::InvalidProducerEpoch)
        ));
    }

    #[test]
    fn unknown_producers_may_start_anywhere_and_sequences_wrap() {
        let mut s = ProducerStates::default();
        assert_eq!(
            append(&mut s, batch(9, 0, i32::MAX - 1, 2), 0),
            SequenceCheck::Append
        );
        assert_eq!(
            s.check(&batch(9, 0, 0, 1)).expect("wrapped"),
            SequenceCheck::Append
        );
        assert_eq!(last_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX), 0);
    }

    #[test]
    fn snapshot_round_trips_and_truncates() {
        let mut s = ProducerStates::default();
        append(&mut s, batch(1, 0, 0, 2), 0);
        append(&mut s, batch(1, 0, 2, 2), 2);
        append(&mut s, batch(2, 1, 0, 1), 4);
        let json = serde_json::to_vec(&s.snapshot()).expect("json");
        let back: Vec<ProducerSnapshot> = serde_json::from_slice(&json).expect("parse");
        let mut restored = ProducerStates::restore(back);
        assert_eq!(restored, s);
        restored.truncate(4);
        assert_eq!(restored.len(), 1, "producer 2's only batch was lost");
        assert!(matches!(
            restored.check(&batch(1, 0, 2, 2)),
            Ok(SequenceCheck::Duplicate(_))
        ));
        restored.truncate(2);
        assert!(matches!(
            restored.check(&batch(1, 0, 2, 2)),
            Ok(SequenceCheck::Append)
        ));
        assert_eq!(
            s.expire(PRODUCER_STATE_EXPIRY_MS + 1, PRODUCER_STATE_EXPIRY_MS),
            2
        );
    }

    #[test]
    fn ids_come_from_reserved_blocks() {
        let mut ids = ProducerIdAllocator::new(0);
        let end = ids.next_id().expect_err("nothing reserved yet");
        assert_eq!(end, PRODUCER_ID_BLOCK);
        ids.reserved(end);
        assert_eq!(ids.next_id(), Ok(0));
        assert_eq!(ids.next_id(), Ok(1));
        assert!(ids.was_issued(1));
        assert!(!ids.was_issued(2));
        let mut after_restart = ProducerIdAllocator::new(end);
        assert!(
            after_restart.next_id().is_err(),
            "a restart never reuses the old block"
        );
    }
}
