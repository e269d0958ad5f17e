//! Consume-side correctness: every produced message arrives once, in per-partition order.
//!
//! Producers number their messages per (partition, producer) from 0, so a consumer
//! expects exactly the next number from each producer on each partition. Anything
//! else is a duplicate (a number already seen) or a gap (a message lost or reordered).

use std::collections::HashMap;

/// What the checker found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckCounts {
    /// Messages that arrived in order.
    pub in_order: u64,
    /// Messages whose sequence had been seen before.
    pub duplicates: u64,
    /// Times a sequence skipped ahead (a lost or reordered message before it).
    pub gaps: u64,
    /// Values without a readable stamp.
    pub unreadable: u64,
}

impl CheckCounts {
    /// Adds another checker's counts.
    pub fn merge(&mut self, other: &CheckCounts) {
        self.in_order += other.in_order;
        self.duplicates += other.duplicates;
        self.gaps += other.gaps;
        self.unreadable += other.unreadable;
    }

    /// Whether nothing went wrong.
    pub fn clean(&self) -> bool {
        self.duplicates == 0 && self.gaps == 0 && self.unreadable == 0
    }
}

/// Tracks the next expected sequence per (partition, producer).
#[derive(Debug, Default)]
pub struct SequenceChecker {
    next: HashMap<(u32, u32), u64>,
    counts: CheckCounts,
}

impl SequenceChecker {
    /// A checker that has seen nothing.
    pub fn new() -> SequenceChecker {
        SequenceChecker::default()
    }

    /// Records one consumed message; returns whether it was the expected one.
    pub fn observe(&mut self, partition: u32, producer: u32, sequence: u64) -> bool {
        let next = self.next.entry((partition, producer)).or_insert(0);
        if sequence == *next {
            *next += 1;
            self.counts.in_order += 1;
            true
        } else if sequence < *next {
            self.counts.duplicates += 1;
            false
        } else {
            // Resynchronise after the gap so that one lost message counts once.
            self.counts.gaps += 1;
            *next = sequence + 1;
            false
        }
    }

    /// Records a value without a stamp.
    pub fn unreadable(&mut self) {
        self.counts.unreadable += 1;
    }

    /// The counts so far.
    pub fn counts(&self) -> CheckCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_streams_per_producer_and_partition_are_clean() {
        let mut c = SequenceChecker::new();
        for seq in 0..5 {
            assert!(c.observe(0, 1, seq));
            assert!(c.observe(0, 2, seq));
            assert!(c.observe(1, 1, seq));
        }
        assert_eq!(c.counts().in_order, 15);
        assert!(c.counts().clean());
    }

    #[test]
    fn duplicates_and_gaps_are_counted() {
        let mut c = SequenceChecker::new();
        assert!(c.observe(0, 0, 0));
        assert!(!c.observe(0, 0, 0)); // duplicate
        assert!(!c.observe(0, 0, 2)); // 1 lost
        assert!(c.observe(0, 0, 3));
        assert!(!c.observe(0, 0, 1)); // late: counted as duplicate of a passed number
        c.unreadable();
        let counts = c.counts();
        assert_eq!(
            counts,
            CheckCounts {
                in_order: 2,
                duplicates: 2,
                gaps: 1,
                unreadable: 1
            }
        );
        assert!(!counts.clean());
        let mut total = CheckCounts::default();
        total.merge(&counts);
        total.merge(&counts);
        assert_eq!(total.gaps, 2);
    }

    #[test]
    fn a_stream_not_starting_at_zero_is_a_gap() {
        let mut c = SequenceChecker::new();
        assert!(!c.observe(4, 0, 1));
        assert_eq!(c.counts().gaps, 1);
    }
}
