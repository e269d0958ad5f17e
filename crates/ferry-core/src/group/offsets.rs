//! Committed offsets in memory: group → (topic, partition) → offset. Pure data; the
//! coordinator writes every change to the offsets log before applying it here.

use std::collections::{BTreeMap, HashMap};

use super::CommittedOffset;

/// One committed offset as kept in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

/// How the offsets of one group expire (Kafka's rules for the classic protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExpiryBase {
    /// The group uses membership and is empty: every offset expires `retention` after
    /// the group became empty.
    EmptySince(i64),
    /// The group only commits offsets (no membership): each offset expires `retention`
    /// after its own commit.
    CommitTime,
    /// The group has members: nothing expires.
    Never,
}

/// Committed offsets of every group.
#[derive(Debug, Default)]
pub(crate) struct OffsetTable {
    groups: HashMap<String, BTreeMap<(String, u32), OffsetEntry>>,
}

impl OffsetTable {
    /// Sets one committed offset.
    pub fn insert(&mut self, group: &str, topic: String, partition: u32, entry: OffsetEntry) {
        self.groups
            .entry(group.to_string())
            .or_default()
            .insert((topic, partition), entry);
    }

    /// Removes one committed offset (no-op if absent).
    pub fn remove(&mut self, group: &str, topic: &str, partition: u32) {
        if let Some(offsets) = self.groups.get_mut(group) {
            offsets.remove(&(topic.to_string(), partition));
            if offsets.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    /// Whether the group has any committed offset.
    #[cfg(test)]
    pub fn has_offsets(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Number of committed offsets of the group.
    pub fn count(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, BTreeMap::len)
    }

    /// Whether the group has an offset for this partition.
    pub fn contains(&self, group: &str, topic: &str, partition: u32) -> bool {
        self.groups
            .get(group)
            .is_some_and(|offsets| offsets.contains_key(&(topic.to_string(), partition)))
    }

    /// Every committed offset: (group, topic, partition, entry).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, u32, &OffsetEntry)> {
        self.groups.iter().flat_map(|(group, offsets)| {
            offsets.iter().map(move |((topic, partition), entry)| {
                (group.as_str(), topic.as_str(), *partition, entry)
            })
        })
    }

    /// Groups that have committed offsets.
    pub fn group_ids(&self) -> impl Iterator<Item = &String> {
        self.groups.keys()
    }

    /// The listed partitions (missing ones with offset -1), or every committed offset of
    /// the group sorted by topic and partition.
    pub fn fetch(&self, group: &str, partitions: Option<&[(String, u32)]>) -> Vec<CommittedOffset> {
        let offsets = self.groups.get(group);
        match partitions {
            Some(partitions) => partitions
                .iter()
                .map(|(topic, partition)| {
                    match offsets.and_then(|offsets| offsets.get(&(topic.clone(), *partition))) {
                        Some(entry) => committed(topic, *partition, entry),
                        None => CommittedOffset {
                            topic: topic.clone(),
                            partition: *partition,
                            offset: -1,
                            leader_epoch: -1,
                            metadata: None,
                            commit_timestamp_ms: -1,
                        },
                    }
                })
                .collect(),
            None => offsets
                .into_iter()
                .flatten()
                .map(|((topic, partition), entry)| committed(topic, *partition, entry))
                .collect(),
        }
    }

    /// Removes and returns the partitions of every committed offset of the group.
    pub fn remove_group(&mut self, group: &str) -> Vec<(String, u32)> {
        self.groups
            .remove(group)
            .map(|offsets| offsets.into_keys().collect())
            .unwrap_or_default()
    }

    /// The (group, partition) keys of every committed offset of `topic`.
    pub fn topic_keys(&self, topic: &str) -> Vec<(String, u32)> {
        let mut keys = Vec::new();
        for (group, offsets) in &self.groups {
            let from = (topic.to_string(), 0);
            for ((t, partition), _) in offsets.range(from..) {
                if t != topic {
                    break;
                }
                keys.push((group.clone(), *partition));
            }
        }
        keys
    }

    /// The partitions of the group's offsets that have expired at `now_ms`.
    pub fn expired(
        &self,
        group: &str,
        base: ExpiryBase,
        retention_ms: i64,
        now_ms: i64,
    ) -> Vec<(String, u32)> {
        let Some(offsets) = self.groups.get(group) else {
            return Vec::new();
        };
        let is_expired = |entry: &OffsetEntry| match base {
            ExpiryBase::EmptySince(since_ms) => now_ms.saturating_sub(since_ms) >= retention_ms,
            ExpiryBase::CommitTime => {
                now_ms.saturating_sub(entry.commit_timestamp_ms) >= retention_ms
            }
            ExpiryBase::Never => false,
        };
        offsets
            .iter()
            .filter(|(_, entry)| is_expired(entry))
            .map(|(key, _)| key.clone())
            .collect()
    }
}

fn committed(topic: &str, partition: u32, entry: &OffsetEntry) -> CommittedOffset {
    CommittedOffset {
        topic: topic.to_string(),
        partition,
        offset: entry.offset,
        leader_epoch: entry.leader_epoch,
        metadata: entry.metadata.clone(),
        commit_timestamp_ms: entry.commit_timestamp_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: i64, ts: i64) -> OffsetEntry {
        OffsetEntry {
            offset,
            leader_epoch: 1,
            metadata: Some("m".into()),
            commit_timestamp_ms: ts,
        }
    }

    #[test]
    fn fetch_listed_and_all() {
        let mut table = OffsetTable::default();
        table.insert("g", "b".into(), 1, entry(7, 0));
        table.insert("g", "a".into(), 0, entry(3, 0));
        let all = table.fetch("g", None);
        let keys: Vec<_> = all
            .iter()
            .map(|o| (o.topic.as_str(), o.partition, o.offset))
            .collect();
        assert_eq!(keys, vec![("a", 0, 3), ("b", 1, 7)]);

        let listed = table.fetch("g", Some(&[("b".into(), 1), ("b".into(), 2)]));
        assert_eq!(listed[0].offset, 7);
        assert_eq!(listed[0].metadata.as_deref(), Some("m"));
        assert_eq!((listed[1].offset, listed[1].leader_epoch), (-1, -1));
        assert!(table.fetch("unknown", None).is_empty());
    }

    #[test]
    fn topic_keys_only_match_the_topic() {
        let mut table = OffsetTable::default();
        table.insert("g", "t".into(), 0, entry(1, 0));
        table.insert("g", "t".into(), 3, entry(1, 0));
        table.insert("g", "tt".into(), 0, entry(1, 0));
        table.insert("h", "t".into(), 1, entry(1, 0));
        let mut keys = table.topic_keys("t");
        keys.sort();
        assert_eq!(
            keys,
            vec![
                ("g".to_string(), 0),
                ("g".to_string(), 3),
                ("h".to_string(), 1)
            ]
        );
    }

    #[test]
    fn expiry_rules() {
        let mut table = OffsetTable::default();
        table.insert("g", "t".into(), 0, entry(1, 100));
        table.insert("g", "t".into(), 1, entry(1, 900));
        assert_eq!(
            table.expired("g", ExpiryBase::CommitTime, 500, 1000),
            vec![("t".to_string(), 0)]
        );
        assert_eq!(
            table
                .expired("g", ExpiryBase::EmptySince(600), 500, 1000)
                .len(),
            0
        );
        assert_eq!(
            table
                .expired("g", ExpiryBase::EmptySince(400), 500, 1000)
                .len(),
            2
        );
        assert!(table.expired("g", ExpiryBase::Never, 0, 1000).is_empty());
        table.remove("g", "t", 0);
        table.remove("g", "t", 1);
        assert!(!table.has_offsets("g"));
    }
}
