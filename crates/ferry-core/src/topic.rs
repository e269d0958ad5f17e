//! Topics: named, identified sets of partitions with a configuration.

use crate::TopicConfig;

/// A snapshot of a topic's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicInfo {
    pub name: String,
    /// Stable, non-zero id kept across restarts (Kafka topic id).
    pub id: uuid::Uuid,
    pub partitions: u32,
    /// Internal topics (Ferry's own state) are hidden from listings and read-only.
    pub internal: bool,
    pub config: TopicConfig,
}

/// Checks a topic name the way Kafka does: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.`/`..`.
pub fn validate_topic_name(name: &str) -> crate::Result<()> {
    todo!("core helper")
}
