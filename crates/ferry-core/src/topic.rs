//! Topics: named, identified sets of partitions with a configuration.

use std::sync::Arc;

use crate::partition::Partition;
use crate::{CoreError, TopicConfig};

/// Longest topic name (Kafka's limit, so that `<topic>-<partition>` fits a file name).
pub const TOPIC_NAME_LEN_MAX: usize = 249;
/// Names with this prefix belong to Ferry's internal state logs and cannot be created.
pub const INTERNAL_NAME_PREFIX: &str = "__";

/// A snapshot of a topic's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Stable, non-zero id kept across restarts (Kafka topic id).
    pub id: uuid::Uuid,
    /// Number of partitions.
    pub partitions: u32,
    /// Internal topics (Ferry's own state) are hidden from listings and read-only.
    pub internal: bool,
    /// Effective configuration.
    pub config: TopicConfig,
}

/// Checks a topic name the way Kafka does: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.`/`..`.
pub fn validate_topic_name(name: &str) -> crate::Result<()> {
    if name.is_empty() {
        return Err(CoreError::InvalidTopic("topic name is empty".into()));
    }
    if name == "." || name == ".." {
        return Err(CoreError::InvalidTopic(format!(
            "topic name cannot be `{name}`"
        )));
    }
    if name.len() > TOPIC_NAME_LEN_MAX {
        return Err(CoreError::InvalidTopic(format!(
            "topic name is {} characters long; the limit is {TOPIC_NAME_LEN_MAX}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(CoreError::InvalidTopic(format!(
            "topic name `{name}` contains `{bad}`; only ASCII letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    Ok(())
}

/// Whether `name` is reserved for Ferry's internal logs.
pub fn is_internal_name(name: &str) -> bool {
    name.starts_with(INTERNAL_NAME_PREFIX)
}

/// Kafka forbids topics whose names differ only by `.` versus `_` (their metrics collide).
pub(crate) fn collision_key(name: &str) -> String {
    name.replace('.', "_")
}

/// A live topic: its metadata and its open partitions. Replaced as a whole (copy on
/// write) when its partition count or configuration changes; partitions are shared.
#[derive(Debug)]
pub(crate) struct Topic {
    pub info: TopicInfo,
    pub partitions: Vec<Arc<Partition>>,
    /// Creation time, kept in the metadata record.
    pub created_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        for ok in [
            "a",
            "orders",
            "a.b_c-D9",
            &"x".repeat(TOPIC_NAME_LEN_MAX),
            "...",
        ] {
            validate_topic_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "é",
            "a/b",
            &"x".repeat(TOPIC_NAME_LEN_MAX + 1),
        ] {
            assert!(
                matches!(validate_topic_name(bad), Err(CoreError::InvalidTopic(_))),
                "{bad:?}"
            );
        }
        assert!(is_internal_name("__consumer_offsets"));
        assert!(!is_internal_name("_a"));
        assert_eq!(collision_key("a.b_c"), "a_b_c");
    }
}
