//! Watches over partitions: which of them changed since last asked, and a wake-up when one
//! does.
//!
//! A fetch that waits for data, and a Kafka fetch session that keeps fetching the same
//! partitions, both watch them. Each watched partition has a slot number in the watch.
//! An append, records removed from the front (retention, DeleteRecords) and the topic's
//! deletion mark the slot changed and wake the watch's waiter. A fetch session over
//! 10,000 partitions then reads only those whose slots were marked, instead of looking at
//! every partition on every fetch.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::partition::Partition;

/// A partition resolved once, for callers that name it again and again (fetch sessions).
/// Check [`is_deleted`](Self::is_deleted) before trusting it: a deleted topic's handles
/// stay deleted even if a topic of the same name is created again.
#[derive(Clone, Debug)]
pub struct PartitionHandle(pub(crate) Arc<Partition>);

impl PartitionHandle {
    /// Whether the partition's topic was deleted.
    pub fn is_deleted(&self) -> bool {
        self.0.is_deleted()
    }
}

/// The part of a watch that partitions hold: changed slots and the waiter's wake-up.
#[derive(Debug, Default)]
pub(crate) struct WatchShared {
    /// Bit `slot` is set when the partition in that slot changed.
    changed: Mutex<Vec<u64>>,
    notify: Notify,
}

impl WatchShared {
    /// Marks `slot` changed and wakes the waiter (or leaves it a permit if none waits).
    pub(crate) fn mark(&self, slot: u32) {
        let (word, bit) = slot_bit(slot);
        {
            let mut changed = self.changed.lock();
            if changed.len() <= word {
                changed.resize(word + 1, 0);
            }
            changed[word] |= bit;
        }
        self.notify.notify_one();
    }
}

/// A set of slot numbers (which slots changed, say), as bits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotSet(Vec<u64>);

impl SlotSet {
    /// The slots in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(word, &bits)| {
            let base = word as u32 * 64;
            std::iter::successors((bits != 0).then_some(bits), |rest| {
                let next = rest & (rest - 1);
                (next != 0).then_some(next)
            })
            .map(move |rest| base + rest.trailing_zeros())
        })
    }

    /// Whether `slot` is in the set.
    pub fn contains(&self, slot: u32) -> bool {
        let (word, bit) = slot_bit(slot);
        self.0.get(word).is_some_and(|w| w & bit != 0)
    }

    /// Adds `slot`.
    pub fn insert(&mut self, slot: u32) {
        let (word, bit) = slot_bit(slot);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= bit;
    }

    /// Removes `slot`.
    pub fn remove(&mut self, slot: u32) {
        let (word, bit) = slot_bit(slot);
        if let Some(w) = self.0.get_mut(word) {
            *w &= !bit;
        }
    }

    /// Adds every slot of `other`.
    pub fn union(&mut self, other: &SlotSet) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine |= theirs;
        }
    }

    /// Whether no slot is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

fn slot_bit(slot: u32) -> (usize, u64) {
    (slot as usize / 64, 1 << (slot % 64))
}

/// A wake-up for a watch's waiter, usable without holding the watch.
#[derive(Clone, Debug)]
pub struct ChangeSignal(Arc<WatchShared>);

impl ChangeSignal {
    /// Returns once a watched partition changed since the last return (at once if one
    /// changed while nobody waited).
    pub async fn changed(&self) {
        self.0.notify.notified().await;
    }
}

/// A set of watched partitions, each in a slot chosen by the caller. Dropping the watch
/// stops watching them all.
#[derive(Debug, Default)]
pub struct PartitionWatch {
    shared: Arc<WatchShared>,
    /// The partition watched in each slot.
    watched: Vec<Option<Arc<Partition>>>,
}

impl PartitionWatch {
    /// A watch over no partitions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Watches `partition` in `slot`, replacing whatever that slot watched.
    pub fn watch(&mut self, slot: u32, partition: &PartitionHandle) {
        let index = slot as usize;
        if self.watched.len() <= index {
            self.watched.resize(index + 1, None);
        }
        if let Some(old) = &self.watched[index] {
            if Arc::ptr_eq(old, &partition.0) {
                return;
            }
            old.unwatch(&self.shared, slot);
        }
        partition.0.watch(&self.shared, slot);
        self.watched[index] = Some(partition.0.clone());
    }

    /// Stops watching the partition in `slot`, if any.
    pub fn unwatch(&mut self, slot: u32) {
        if let Some(old) = self.watched.get_mut(slot as usize).and_then(Option::take) {
            old.unwatch(&self.shared, slot);
        }
    }

    /// The slots marked changed since the last call, clearing them.
    pub fn take_changed(&self) -> SlotSet {
        SlotSet(std::mem::take(&mut *self.shared.changed.lock()))
    }

    /// The wake-up for this watch's changes.
    pub fn signal(&self) -> ChangeSignal {
        ChangeSignal(self.shared.clone())
    }
}

impl Drop for PartitionWatch {
    fn drop(&mut self) {
        for (slot, watched) in self.watched.iter().enumerate() {
            if let Some(partition) = watched {
                partition.unwatch(&self.shared, slot as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sets_hold_any_slot() {
        let mut set = SlotSet::default();
        assert!(set.is_empty());
        for slot in [130, 0, 63, 64] {
            set.insert(slot);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 63, 64, 130]);
        assert!(set.contains(63) && !set.contains(62) && !set.contains(100_000));
        set.remove(63);
        set.remove(100_000);
        let mut other = SlotSet::default();
        other.insert(1);
        other.insert(200);
        set.union(&other);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 1, 64, 130, 200]);
        for slot in set.clone().iter() {
            set.remove(slot);
        }
        assert!(set.is_empty());
        assert_eq!(set.iter().count(), 0);
    }
}
