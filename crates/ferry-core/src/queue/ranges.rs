//! A set of log offsets kept as disjoint half-open ranges, so that long runs (a purge,
//! transient messages dropped at recovery, acks in order) cost one entry each.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent `[start, end)` ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// start → end (exclusive).
    ranges: BTreeMap<i64, i64>,
}

impl RangeSet {
    /// Adds `[start, end)`, merging with neighbours.
    pub fn insert_range(&mut self, mut start: i64, mut end: i64) {
        if start >= end {
            return;
        }
        // A range starting at or before `start` that reaches it absorbs the new one.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
            }
        }
        // Ranges starting inside (or right at the end of) the new one merge into it.
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
    }

    /// Adds one offset.
    #[cfg(test)]
    pub fn insert(&mut self, offset: i64) {
        self.insert_range(offset, offset + 1);
    }

    /// Whether `offset` is in the set.
    pub fn contains(&self, offset: i64) -> bool {
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &e)| offset < e)
    }

    /// If a range starts at `at`, removes it and returns its end (the next unsettled
    /// position after a mark that reached it).
    pub fn take_from(&mut self, at: i64) -> Option<i64> {
        self.ranges.remove(&at)
    }

    /// Drops everything below `at` (ranges straddling it are cut).
    pub fn remove_below(&mut self, at: i64) {
        let below: Vec<(i64, i64)> = self.ranges.range(..at).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in below {
            self.ranges.remove(&s);
            if e > at {
                self.ranges.insert(at, e);
            }
        }
    }

    /// Drops everything at or above `at`.
    pub fn remove_from(&mut self, at: i64) {
        let above: Vec<i64> = self.ranges.range(at..).map(|(&s, _)| s).collect();
        for s in above {
            self.ranges.remove(&s);
        }
        if let Some((&s, e)) = self.ranges.range_mut(..at).next_back() {
            if *e > at {
                *e = at;
            }
            let _ = s;
        }
    }

    /// How many offsets in `[start, end)` are in the set.
    #[cfg(test)]
    pub fn count_in(&self, start: i64, end: i64) -> u64 {
        let mut n = 0;
        let first = self
            .ranges
            .range(..=start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        for (&s, &e) in self.ranges.range(first..end) {
            let lo = s.max(start);
            let hi = e.min(end);
            if hi > lo {
                n += (hi - lo) as u64;
            }
        }
        n
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// Number of ranges (the memory it costs).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((0i64..60, 1i64..6, 0u8..3), 0..60)) {
            let mut set = RangeSet::default();
            let mut model = BTreeSet::new();
            for (start, len, op) in ops {
                match op {
                    0 => {
                        set.insert_range(start, start + len);
                        model.extend(start..start + len);
                    }
                    1 => {
                        set.remove_below(start);
                        model.retain(|o| *o >= start);
                    }
                    _ => {
                        set.remove_from(start + 30);
                        model.retain(|o| *o < start + 30);
                    }
                }
                let ranges: Vec<(i64, i64)> = set.iter().collect();
                for w in ranges.windows(2) {
                    prop_assert!(w[0].1 < w[1].0, "ranges overlap or touch: {:?}", ranges);
                }
                for o in -1..100 {
                    prop_assert_eq!(set.contains(o), model.contains(&o));
                }
                prop_assert_eq!(set.count_in(10, 40), model.range(10..40).count() as u64);
            }
        }
    }

    #[test]
    fn take_from_advances_a_mark() {
        let mut set = RangeSet::default();
        set.insert(3);
        set.insert(4);
        set.insert(7);
        assert_eq!(set.take_from(2), None);
        assert_eq!(set.take_from(3), Some(5));
        assert_eq!(set.len(), 1);
    }
}
