//! Ferry's protocol-agnostic broker core.
//!
//! The core owns the nouns every protocol shares: *topics* (named sets of partitions),
//! *partitions* (an offset-addressed [`ferry_storage::PartitionLog`] plus producer state
//! and a high watermark), *producers* (idempotence), *groups* (members, generations,
//! assignments) and *committed offsets*. Protocol adapters translate their frames into
//! calls on [`Broker`] and map [`CoreError`] to their own error codes; no adapter holds a
//! business rule.
//!
//! All durable state (topic metadata, committed offsets, producer ids) is kept as records
//! in internal logs on the same storage engine, replayed at startup.

pub mod alarm;
pub mod auth;
mod broker;
mod config;
mod error;
pub mod group;
mod internal;
pub mod listener;
pub mod message;
mod metadata;
pub mod mq;
mod partition;
mod producer;
pub mod queue;
pub mod routing;
#[cfg(test)]
mod test_support;
mod topic;
mod watch;

pub use broker::{
    Acks, Broker, BrokerConfig, FetchPartition, FetchPlan, FetchedPartition, ListPlan, OffsetSpec,
    PartitionOffsets, ProduceResult, DEFAULT_RETENTION_CHECK_INTERVAL_MS, PARTITIONS_PER_TOPIC_MAX,
};
pub use config::{
    CleanupPolicy, CompressionType, ConfigEntry, ConfigOp, ConfigSource, FlushMode, TimestampType,
    TopicConfig,
};
pub use error::CoreError;
pub use group::{GroupCoordinator, GroupSettings};
pub use topic::{is_internal_name, validate_topic_name, TopicInfo, TOPIC_NAME_LEN_MAX};
pub use watch::{ChangeSignal, PartitionHandle, PartitionWatch, SlotSet};

/// Result type of this crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
