//! Records of the `__ferry_metadata` internal log: topics and producer-id reservations.
//!
//! Each record carries the whole current state of its key (last value wins), so replay
//! is a fold and a future compaction only needs to keep the newest record per key.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::internal::{from_json, InternalRecord};
use crate::partition::{PartitionKey, PartitionSnapshot};
use crate::Result;

/// Name of the internal log holding topic metadata and producer-id reservations.
pub(crate) const METADATA_LOG: &str = "__ferry_metadata";
/// Name of the internal log holding producer-state snapshots.
pub(crate) const PRODUCERS_LOG: &str = "__ferry_producers";

/// Key of a metadata record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum MetadataKey {
    /// A topic, by name; a tombstone deletes it.
    Topic { name: String },
    /// The producer-id reservation (one key for the whole broker).
    ProducerIds,
}

/// Value of a [`MetadataKey::Topic`] record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicRecord {
    pub id: uuid::Uuid,
    pub partitions: u32,
    /// Config overrides, as set by the user.
    pub configs: BTreeMap<String, String>,
    pub created_ms: i64,
}

/// Value of the [`MetadataKey::ProducerIds`] record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerIdsRecord {
    /// Every id below this may have been handed out.
    pub reserved_end: i64,
}

/// The metadata log folded into current state.
#[derive(Debug, Default)]
pub(crate) struct MetadataState {
    pub topics: BTreeMap<String, TopicRecord>,
    pub producer_ids_reserved_end: i64,
}

impl MetadataState {
    /// Folds replayed records, in log order.
    pub fn replay(records: &[InternalRecord]) -> Result<MetadataState> {
        let mut state = MetadataState::default();
        for record in records {
            match from_json::<MetadataKey>(&record.key)? {
                MetadataKey::Topic { name } => match &record.value {
                    Some(value) => {
                        state.topics.insert(name, from_json(value)?);
                    }
                    None => {
                        state.topics.remove(&name);
                    }
                },
                MetadataKey::ProducerIds => {
                    if let Some(value) = &record.value {
                        let ids: ProducerIdsRecord = from_json(value)?;
                        state.producer_ids_reserved_end =
                            state.producer_ids_reserved_end.max(ids.reserved_end);
                    }
                }
            }
        }
        Ok(state)
    }
}

/// Folds the producer-snapshot log into the newest snapshot per partition.
pub(crate) fn replay_producer_snapshots(
    records: &[InternalRecord],
) -> Result<HashMap<PartitionKey, PartitionSnapshot>> {
    let mut snapshots = HashMap::new();
    for record in records {
        let key: PartitionKey = from_json(&record.key)?;
        match &record.value {
            Some(value) => {
                snapshots.insert(key, from_json(value)?);
            }
            None => {
                snapshots.remove(&key);
            }
        }
    }
    Ok(snapshots)
}
