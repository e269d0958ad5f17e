//! The records of the `__consumer_offsets` internal log and their replay.
//!
//! Two kinds of record share the log, told apart by the `type` field of the JSON key:
//! a committed offset (key: group, topic, partition) and a group's metadata (key: group;
//! value: protocol type, generation, when it became empty). A tombstone (no value) deletes
//! the key. Replay folds the records in log order: the last value per key wins.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::offsets::{OffsetEntry, OffsetTable};
use crate::internal::{from_json, to_json};

/// Name of the internal log holding committed offsets and group metadata.
pub(crate) const OFFSETS_LOG_NAME: &str = "__consumer_offsets";

/// Key of a record in the offsets log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum RecordKey {
    /// A committed offset of one partition.
    Offset {
        group: String,
        topic: String,
        partition: u32,
    },
    /// A group's metadata.
    Group { group: String },
}

/// Value of an offset record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

/// Value of a group metadata record, written at every generation change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupValue {
    /// `None` for groups that only commit offsets (no group membership).
    pub protocol_type: Option<String>,
    pub generation: i32,
    /// Wall-clock time the group became empty; `None` while it had members.
    pub empty_since_ms: Option<i64>,
}

/// Encodes an offset record (a tombstone when `value` is `None`).
pub(crate) fn offset_record(
    group: &str,
    topic: &str,
    partition: u32,
    value: Option<&OffsetValue>,
) -> (Bytes, Option<Bytes>) {
    let key = RecordKey::Offset {
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
    };
    (to_json(&key), value.map(to_json))
}

/// Encodes a group metadata record (a tombstone when `value` is `None`).
pub(crate) fn group_record(group: &str, value: Option<&GroupValue>) -> (Bytes, Option<Bytes>) {
    let key = RecordKey::Group {
        group: group.to_string(),
    };
    (to_json(&key), value.map(to_json))
}

/// The state rebuilt from the offsets log.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub offsets: OffsetTable,
    pub groups: HashMap<String, GroupValue>,
    /// Records that could not be decoded (skipped with a warning).
    pub skipped: usize,
}

/// Folds the records of the offsets log, in log order, into the state they describe.
pub(crate) fn replay(records: impl IntoIterator<Item = (Bytes, Option<Bytes>)>) -> Replayed {
    let mut replayed = Replayed::default();
    for (key, value) in records {
        if apply(&mut replayed, &key, value.as_deref()).is_err() {
            // A record this version cannot read (a newer format or a bug) must not keep
            // the broker from starting; the affected group simply loses that entry.
            replayed.skipped += 1;
        }
    }
    if replayed.skipped > 0 {
        tracing::warn!(
            skipped = replayed.skipped,
            "{OFFSETS_LOG_NAME}: undecodable records skipped during replay"
        );
    }
    replayed
}

fn apply(replayed: &mut Replayed, key: &[u8], value: Option<&[u8]>) -> crate::Result<()> {
    match from_json::<RecordKey>(key)? {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => match value {
            Some(value) => {
                let value: OffsetValue = from_json(value)?;
                replayed.offsets.insert(
                    &group,
                    topic,
                    partition,
                    OffsetEntry {
                        offset: value.offset,
                        leader_epoch: value.leader_epoch,
                        metadata: value.metadata,
                        commit_timestamp_ms: value.commit_timestamp_ms,
                    },
                );
            }
            None => replayed.offsets.remove(&group, &topic, partition),
        },
        RecordKey::Group { group } => match value {
            Some(value) => {
                replayed.groups.insert(group, from_json(value)?);
            }
            None => {
                replayed.groups.remove(&group);
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(offset: i64) -> OffsetValue {
        OffsetValue {
            offset,
            leader_epoch: 0,
            metadata: None,
            commit_timestamp_ms: 1,
        }
    }

    #[test]
    fn last_value_per_key_wins_and_tombstones_delete() {
        let group = GroupValue {
            protocol_type: Some("consumer".into()),
            generation: 3,
            empty_since_ms: None,
        };
        let records = vec![
            offset_record("g", "t", 0, Some(&value(5))),
            offset_record("g", "t", 0, Some(&value(9))),
            offset_record("g", "t", 1, Some(&value(2))),
            offset_record("g", "t", 1, None),
            group_record("g", Some(&group)),
            group_record("h", Some(&group)),
            group_record("h", None),
            (Bytes::from_static(b"not json"), None),
        ];
        let replayed = replay(records);
        assert_eq!(replayed.skipped, 1);
        assert_eq!(replayed.groups.len(), 1);
        assert_eq!(replayed.groups.get("g"), Some(&group));
        let fetched = replayed.offsets.fetch("g", None);
        assert_eq!(fetched.len(), 1);
        assert_eq!((fetched[0].partition, fetched[0].offset), (0, 9));
    }

    #[test]
    fn keys_encode_deterministically() {
        let (a, _) = offset_record("g", "t", 3, None);
        let (b, _) = offset_record("g", "t", 3, Some(&value(1)));
        assert_eq!(
            a, b,
            "a tombstone must carry the same key bytes as the record it deletes"
        );
    }
}
