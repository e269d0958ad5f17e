//! Topic configuration: Kafka-named keys (`retention.ms`, `segment.bytes`, …) plus Ferry's
//! own (`flush.mode`), parsed and validated in one place for every protocol.

use std::collections::BTreeMap;

use ferry_storage::LogConfig;

/// A topic's effective configuration. Keys not set on the topic fall back to the broker
/// defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicConfig {
    /// Explicitly set keys (as given, validated).
    pub overrides: BTreeMap<String, String>,
    // C1: typed fields, e.g. retention_ms, retention_bytes, segment_bytes, segment_ms,
    // max_message_bytes, flush_mode, flush_ms, flush_bytes, cleanup_policy,
    // message_timestamp_type, min_insync_replicas…
}

impl TopicConfig {
    /// Applies `overrides` on top of `defaults`; rejects unknown keys and bad values with
    /// `CoreError::InvalidConfig`.
    pub fn resolve(
        defaults: &TopicConfig,
        overrides: BTreeMap<String, String>,
    ) -> crate::Result<TopicConfig> {
        todo!("core helper")
    }
    /// Every config key with its effective value and where it came from (for describe).
    pub fn entries(&self, defaults: &TopicConfig) -> Vec<ConfigEntry> {
        todo!("core helper")
    }
    /// The storage settings this config implies.
    pub fn log_config(&self) -> LogConfig {
        todo!("core helper")
    }
    /// Largest record batch accepted (`max.message.bytes`).
    pub fn max_message_bytes(&self) -> u32 {
        todo!("core helper")
    }
    /// Whether batches get log-append time (`message.timestamp.type=LogAppendTime`).
    pub fn log_append_time(&self) -> bool {
        todo!("core helper")
    }
}

/// Where a config value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic.
    Topic,
    /// Broker default from Ferry's config file / flags.
    BrokerDefault,
    /// Built-in default.
    Default,
}

/// One described config key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub source: ConfigSource,
    pub read_only: bool,
    pub sensitive: bool,
    pub documentation: &'static str,
}

/// One change to a topic's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigOp {
    Set(String, String),
    Delete(String),
    /// Append to a list-valued key (incremental alter).
    Append(String, String),
    /// Remove from a list-valued key (incremental alter).
    Subtract(String, String),
}
