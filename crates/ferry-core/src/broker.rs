//! The broker: topics, partitions and the data path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{ConfigEntry, ConfigOp, CoreError, GroupCoordinator, GroupSettings, Result, TopicConfig, TopicInfo};

/// Broker-wide settings (filled from Ferry's config file, env and flags).
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    /// This node's id (0 on a single node).
    pub node_id: i32,
    /// Create topics on first produce / metadata request.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics with `-1`.
    pub default_partitions: u32,
    /// Defaults every topic config falls back to.
    pub topic_defaults: TopicConfig,
    /// Group coordinator settings.
    pub groups: GroupSettings,
    /// How often retention runs.
    pub retention_check_interval_ms: u64,
}

/// Produce acknowledgement level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// No response at all; the adapter does not wait.
    None,
    /// After the leader appended.
    Leader,
    /// After all in-sync replicas have it; on `flush=sync` topics after fsync.
    All,
}

/// Result of one partition's produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceResult {
    pub base_offset: i64,
    /// Log-append time if the topic uses it, else -1.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

/// One partition of a fetch request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub max_bytes: u32,
}

/// One partition of a fetch response.
#[derive(Debug)]
pub struct FetchedPartition {
    pub error: Option<CoreError>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whole batches as stored.
    pub records: Bytes,
}

/// Which offset a ListOffsets-style lookup wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// First offset whose timestamp is >= this.
    Timestamp(i64),
    /// The record with the largest timestamp.
    MaxTimestamp,
}

/// The single-node broker core.
pub struct Broker {
    // C1
    groups: GroupCoordinator,
}

impl Broker {
    /// Opens the data directory, replays internal logs, starts background work
    /// (retention, group session expiry). Must be called inside a tokio runtime.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>> {
        todo!("core helper")
    }
    /// Stops accepting produce, flushes everything, writes a clean checkpoint.
    pub async fn shutdown(&self) -> Result<()> {
        todo!("core helper")
    }
    pub fn config(&self) -> &BrokerConfig {
        todo!("core helper")
    }
    pub fn node_id(&self) -> i32 {
        todo!("core helper")
    }
    /// The group coordinator.
    pub fn groups(&self) -> &GroupCoordinator {
        &self.groups
    }

    // ---- topics ----

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        todo!("core helper")
    }
    /// All topics, internal ones included (callers filter).
    pub fn topics(&self) -> Vec<TopicInfo> {
        todo!("core helper")
    }
    /// The topic, auto-creating it with defaults if allowed by `allow_auto_create` and the
    /// broker config.
    pub fn topic_or_create(&self, name: &str, allow_auto_create: bool) -> Result<TopicInfo> {
        todo!("core helper")
    }
    /// Creates a topic. `partitions = None` takes the default.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicInfo> {
        todo!("core helper")
    }
    /// Deletes a topic and its data.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        todo!("core helper")
    }
    /// Grows a topic to `total` partitions.
    pub fn create_partitions(&self, name: &str, total: u32, validate_only: bool) -> Result<()> {
        todo!("core helper")
    }
    /// Effective configuration of a topic.
    pub fn describe_topic_config(&self, name: &str) -> Result<Vec<ConfigEntry>> {
        todo!("core helper")
    }
    /// Changes a topic's configuration. `incremental = false` replaces all overrides with
    /// the `Set` ops (Kafka AlterConfigs); `true` applies each op (IncrementalAlterConfigs).
    pub fn alter_topic_config(
        &self,
        name: &str,
        ops: Vec<ConfigOp>,
        incremental: bool,
        validate_only: bool,
    ) -> Result<()> {
        todo!("core helper")
    }

    // ---- data ----

    /// Appends `records` (one or more RecordBatch v2, as received) to a partition. With
    /// idempotent batches checks producer epoch and sequence: an exact retry of one of the
    /// last 5 batches returns its original offset without writing; a gap is
    /// `OutOfOrderSequence`. With `Acks::All` on a `flush=sync` topic, returns only once
    /// durable.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: Bytes,
        acks: Acks,
    ) -> Result<ProduceResult> {
        todo!("core helper")
    }
    /// Reads from several partitions; waits up to `max_wait` until at least `min_bytes`
    /// are available in total (or the request is satisfiable), never busy-looping.
    /// `max_bytes` caps the response, but the first partition with data always returns
    /// at least one whole batch.
    pub async fn fetch(
        &self,
        partitions: &[FetchPartition],
        max_wait: Duration,
        min_bytes: u32,
        max_bytes: u32,
    ) -> Vec<FetchedPartition> {
        todo!("core helper")
    }
    /// Offset lookup: returns (offset, timestamp); timestamp is -1 where not applicable.
    /// A timestamp later than every record gives (log end, -1).
    pub fn list_offsets(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<(i64, i64)> {
        todo!("core helper")
    }
    /// Deletes records before `offset` (`-1` = high watermark); returns the new low
    /// watermark.
    pub fn delete_records(&self, topic: &str, partition: u32, offset: i64) -> Result<i64> {
        todo!("core helper")
    }
    /// (log start, high watermark, log end, leader epoch) of a partition.
    pub fn partition_offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets> {
        todo!("core helper")
    }
    /// For OffsetForLeaderEpoch: the end offset of `epoch` (start of the next epoch, or
    /// the log end) and the largest epoch <= `epoch`.
    pub fn end_offset_for_epoch(&self, topic: &str, partition: u32, epoch: i32) -> Result<(i32, i64)> {
        todo!("core helper")
    }

    // ---- producers ----

    /// Allocates a producer id (or bumps the epoch of `current` when given and valid).
    /// Ids are never reused across restarts.
    pub fn init_producer_id(
        &self,
        transactional_id: Option<&str>,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16)> {
        todo!("core helper")
    }
}

/// Offsets of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    pub leader_epoch: i32,
}

#[allow(dead_code)]
fn _unused(_: CoreError, _: Arc<()>) {}
