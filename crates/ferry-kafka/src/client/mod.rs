//! A small Kafka client for Ferry's command-line tools, on the client side of the
//! `kafka-protocol` codec.
//!
//! It keeps one connection per broker with one request in flight, routes partition
//! requests to the leader named by Metadata, and finds group coordinators with
//! FindCoordinator, so it works against any Kafka-compatible cluster and not only a
//! single Ferry node. Every request is time-bounded; errors are typed and carry Kafka's
//! error names. It is deliberately sequential: a CLI waits for each answer anyway.
//!
//! ```no_run
//! # async fn demo() -> ferry_kafka::client::Result<()> {
//! use ferry_kafka::client::{Client, ClientConfig};
//! let mut client = Client::connect(ClientConfig::new("localhost:9092")).await?;
//! client.create_topic("events", Some(3), &[], false).await?;
//! # Ok(()) }
//! ```

mod admin;
mod connection;
mod error;
mod group;
mod partitioner;
mod records;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition as WireFetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};

pub use admin::{ConfigAlteration, ConfigEntryInfo};
pub use error::{ClientError, KafkaError, Result};
pub use group::{
    range_assign, CommittedOffsetInfo, GroupDescriptionInfo, GroupListing, GroupMember,
    HeartbeatOutcome, MemberInfo,
};
pub use kafka_protocol::records::Compression;
pub use kafka_protocol::ResponseError;
pub use partitioner::{murmur2, partition_for_key};
pub use records::{
    decode_batches, encode_batch, parse_compression, ConsumedRecord, DecodedRecords, ProducerRecord,
};

use connection::{millis, Connection};

/// Newest Metadata version used (v13 only adds a top-level error code).
const METADATA_MAX_VERSION: i16 = 12;
/// Newest Produce version used: v13 addresses topics by id.
const PRODUCE_MAX_VERSION: i16 = 12;
/// Newest Fetch version used: v13 addresses topics by id.
const FETCH_MAX_VERSION: i16 = 12;
/// Newest ListOffsets version used.
const LIST_OFFSETS_MAX_VERSION: i16 = 10;
/// How often a metadata lookup is retried while a new topic gets its leaders.
const METADATA_RETRIES: u32 = 10;
/// How often a produce is retried after an error that proves nothing was written.
const PRODUCE_RETRIES: u32 = 5;
/// Pause between retries.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Default time a request may take before the client gives up.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `isolation_level` READ_UNCOMMITTED.
const READ_UNCOMMITTED: i8 = 0;
/// ListOffsets timestamp asking for the log start.
const EARLIEST_TIMESTAMP: i64 = -2;
/// ListOffsets timestamp asking for the log end.
const LATEST_TIMESTAMP: i64 = -1;

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Comma-separated `host:port` list; the first that answers is used.
    pub bootstrap: String,
    /// `client.id` sent with each request.
    pub client_id: String,
    /// Upper bound on each request (long polls add their own wait on top).
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// Settings for `bootstrap` with the default client id and timeout.
    pub fn new(bootstrap: impl Into<String>) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap.into(),
            client_id: "ferry-cli".to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Produce acknowledgement level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: the broker sends no response.
    None,
    /// acks=1: the leader appended.
    Leader,
    /// acks=all: every in-sync replica has it (on Ferry `flush=sync` topics: fsynced).
    All,
}

impl Acks {
    fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// A broker of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id.
    pub node_id: i32,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
}

/// What Metadata says about the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Brokers by node id.
    pub brokers: Vec<BrokerInfo>,
    /// The controller's node id (-1 if unknown).
    pub controller_id: i32,
    /// Cluster id, if the broker has one.
    pub cluster_id: Option<String>,
    /// Topics asked for (or all).
    pub topics: Vec<TopicMetadata>,
}

/// One topic in a Metadata response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Topic name.
    pub name: String,
    /// Whether it is an internal topic (`__consumer_offsets`).
    pub internal: bool,
    /// Error for the whole topic (unknown topic, leader not yet elected…).
    pub error: Option<KafkaError>,
    /// Partitions in index order.
    pub partitions: Vec<PartitionMetadata>,
}

/// One partition in a Metadata response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Partition index.
    pub partition: i32,
    /// Leader node id, -1 when there is none.
    pub leader: i32,
    /// Leader epoch, -1 when not reported.
    pub leader_epoch: i32,
    /// Replica node ids.
    pub replicas: Vec<i32>,
    /// In-sync replica node ids.
    pub isr: Vec<i32>,
    /// Error of this partition.
    pub error: Option<KafkaError>,
}

/// Where a fetch should read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchPosition {
    /// Partition index.
    pub partition: i32,
    /// Next offset to read.
    pub offset: i64,
    /// Most bytes wanted from this partition.
    pub max_bytes: i32,
}

/// One partition of a fetch result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedPartition {
    /// Partition index.
    pub partition: i32,
    /// Error for this partition (OFFSET_OUT_OF_RANGE…).
    pub error: Option<KafkaError>,
    /// High watermark: offset after the last committed record.
    pub high_watermark: i64,
    /// First offset still in the log.
    pub log_start_offset: i64,
    /// Decoded records from the fetch offset on.
    pub records: DecodedRecords,
}

/// An offset lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetQuery {
    /// The first offset still in the log.
    Earliest,
    /// The offset the next record will get.
    Latest,
    /// The first offset whose timestamp is at or after this many ms since the epoch.
    Timestamp(i64),
}

impl OffsetQuery {
    fn wire(self) -> i64 {
        match self {
            OffsetQuery::Earliest => EARLIEST_TIMESTAMP,
            OffsetQuery::Latest => LATEST_TIMESTAMP,
            OffsetQuery::Timestamp(ms) => ms,
        }
    }
}

/// The answer to one offset lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedOffset {
    /// Partition index.
    pub partition: i32,
    /// The offset; -1 when a timestamp lookup found no record at or after the time.
    pub offset: i64,
    /// Timestamp of that record, -1 when not applicable.
    pub timestamp_ms: i64,
}

/// Which connection a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Target {
    /// Any broker: the bootstrap connection.
    Any,
    /// A broker by node id.
    Node(i32),
}

/// A Kafka client: connections, cached metadata and the requests the CLI needs.
pub struct Client {
    config: ClientConfig,
    connections: HashMap<Target, Connection>,
    /// node id -> "host:port" as advertised.
    brokers: BTreeMap<i32, String>,
    controller_id: i32,
    topics: HashMap<String, TopicMetadata>,
    /// group id -> coordinator node id.
    coordinators: HashMap<String, i32>,
}

impl Client {
    /// Connects to the first bootstrap server that answers and learns the cluster.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let mut client = Client {
            config,
            connections: HashMap::new(),
            brokers: BTreeMap::new(),
            controller_id: -1,
            topics: HashMap::new(),
            coordinators: HashMap::new(),
        };
        client.connection(Target::Any).await?;
        client.metadata(Some(&[]), false).await?;
        Ok(client)
    }

    /// The configured request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// Closes every connection in an orderly way.
    pub async fn close(mut self) {
        for (_, conn) in self.connections.drain() {
            conn.close().await;
        }
    }

    async fn connection(&mut self, target: Target) -> Result<&mut Connection> {
        if !self.connections.contains_key(&target) {
            let conn = match target {
                Target::Node(id) if self.brokers.contains_key(&id) => {
                    let addr = self.brokers[&id].clone();
                    Connection::connect(&addr, &self.config.client_id, self.config.request_timeout)
                        .await?
                }
                // An unknown node: fall back to the bootstrap servers.
                Target::Node(_) | Target::Any => self.connect_bootstrap().await?,
            };
            self.connections.insert(target, conn);
        }
        self.connections
            .get_mut(&target)
            .ok_or_else(|| ClientError::Invalid("connection vanished".to_owned()))
    }

    async fn connect_bootstrap(&self) -> Result<Connection> {
        let mut last_error = ClientError::Invalid("no bootstrap server given".to_owned());
        for addr in self
            .config
            .bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Connection::connect(addr, &self.config.client_id, self.config.request_timeout)
                .await
            {
                Ok(conn) => return Ok(conn),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Sends a request built for the negotiated version to `target`; a broken connection
    /// is dropped so that the next request reconnects.
    async fn request<Req, F>(
        &mut self,
        target: Target,
        cap: i16,
        extra_wait: Duration,
        build: F,
    ) -> Result<(i16, Req::Response)>
    where
        Req: Request,
        F: FnOnce(i16) -> Result<Req>,
    {
        let timeout = self.config.request_timeout + extra_wait;
        let conn = self.connection(target).await?;
        let version = conn.version::<Req>(cap)?;
        let request = build(version)?;
        match conn.send(&request, version, timeout).await {
            Ok(response) => Ok((version, response)),
            Err(e) => {
                if e.breaks_connection() {
                    self.connections.remove(&target);
                }
                Err(e)
            }
        }
    }

    /// Sends a request that gets no response (Produce acks=0).
    async fn request_oneway<Req, F>(&mut self, target: Target, cap: i16, build: F) -> Result<()>
    where
        Req: Request,
        F: FnOnce(i16) -> Result<Req>,
    {
        let timeout = self.config.request_timeout;
        let conn = self.connection(target).await?;
        let version = conn.version::<Req>(cap)?;
        let request = build(version)?;
        let result = conn.send_oneway(&request, version, timeout).await;
        if result.as_ref().is_err_and(ClientError::breaks_connection) {
            self.connections.remove(&target);
        }
        result
    }

    // ---- metadata ----

    /// Metadata for `topics` (`None` = every topic); updates the cached brokers and leaders.
    pub async fn metadata(
        &mut self,
        topics: Option<&[&str]>,
        allow_auto_create: bool,
    ) -> Result<ClusterMetadata> {
        let (_, response) = self
            .request::<MetadataRequest, _>(
                Target::Any,
                METADATA_MAX_VERSION,
                Duration::ZERO,
                |version| {
                    let mut request = MetadataRequest::default().with_topics(topics.map(|names| {
                        names
                            .iter()
                            .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                            .collect()
                    }));
                    if version >= 4 {
                        request.allow_auto_topic_creation = allow_auto_create;
                    }
                    Ok(request)
                },
            )
            .await?;
        let brokers: Vec<BrokerInfo> = response
            .brokers
            .iter()
            .map(|b| BrokerInfo {
                node_id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
            })
            .collect();
        for b in &brokers {
            let addr = join_host_port(&b.host, b.port);
            if self.brokers.get(&b.node_id) != Some(&addr) {
                // The broker moved: a cached connection to it is stale.
                self.connections.remove(&Target::Node(b.node_id));
                self.brokers.insert(b.node_id, addr);
            }
        }
        self.controller_id = response.controller_id.0;
        let topics: Vec<TopicMetadata> = response
            .topics
            .iter()
            .map(|t| TopicMetadata {
                name: t.name.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                internal: t.is_internal,
                error: KafkaError::from_code(t.error_code, None),
                partitions: {
                    let mut partitions: Vec<PartitionMetadata> = t
                        .partitions
                        .iter()
                        .map(|p| PartitionMetadata {
                            partition: p.partition_index,
                            leader: p.leader_id.0,
                            leader_epoch: p.leader_epoch,
                            replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                            isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                            error: KafkaError::from_code(p.error_code, None),
                        })
                        .collect();
                    partitions.sort_by_key(|p| p.partition);
                    partitions
                },
            })
            .collect();
        for t in &topics {
            if t.error.is_none() {
                self.topics.insert(t.name.clone(), t.clone());
            } else {
                self.topics.remove(&t.name);
            }
        }
        Ok(ClusterMetadata {
            brokers,
            controller_id: self.controller_id,
            cluster_id: response.cluster_id.map(|c| c.to_string()),
            topics,
        })
    }

    /// A topic with a leader for every partition, waiting briefly for a just-created one.
    pub async fn topic(&mut self, name: &str, allow_auto_create: bool) -> Result<TopicMetadata> {
        let mut attempt = 0;
        loop {
            let metadata = self.metadata(Some(&[name]), allow_auto_create).await?;
            let topic = metadata
                .topics
                .into_iter()
                .find(|t| t.name == name)
                .ok_or_else(|| ClientError::Protocol {
                    addr: self.config.bootstrap.clone(),
                    reason: format!("metadata response without topic {name}"),
                })?;
            let pending = match &topic.error {
                Some(e)
                    if e.is_retriable() && e.kind() != ResponseError::UnknownTopicOrPartition =>
                {
                    true
                }
                Some(e)
                    if e.kind() == ResponseError::UnknownTopicOrPartition && allow_auto_create =>
                {
                    true
                }
                Some(e) => {
                    return Err(ClientError::Kafka {
                        context: format!("topic {name}"),
                        error: e.clone(),
                    })
                }
                None => {
                    topic.partitions.is_empty() || topic.partitions.iter().any(|p| p.leader < 0)
                }
            };
            if !pending {
                return Ok(topic);
            }
            attempt += 1;
            if attempt > METADATA_RETRIES {
                let error = topic.error.unwrap_or_else(leader_not_available);
                return Err(ClientError::Kafka {
                    context: format!("topic {name}"),
                    error,
                });
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    /// The cached topic, or a fresh Metadata lookup.
    async fn cached_topic(&mut self, name: &str, allow_auto_create: bool) -> Result<TopicMetadata> {
        match self.topics.get(name) {
            Some(t) => Ok(t.clone()),
            None => self.topic(name, allow_auto_create).await,
        }
    }

    async fn leader(
        &mut self,
        topic: &str,
        partition: i32,
        allow_auto_create: bool,
    ) -> Result<i32> {
        let metadata = self.cached_topic(topic, allow_auto_create).await?;
        metadata
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.leader)
            .ok_or_else(|| {
                ClientError::Invalid(format!(
                    "topic {topic} has no partition {partition} (it has {})",
                    metadata.partitions.len()
                ))
            })
    }

    // ---- data ----

    /// Appends one encoded batch to a partition; returns its base offset (`None` for
    /// acks=0). Retries, after refreshing metadata, errors that prove nothing was written.
    pub async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        acks: Acks,
    ) -> Result<Option<i64>> {
        let timeout_ms = i32::try_from(millis(self.config.request_timeout)).unwrap_or(i32::MAX);
        let mut attempt = 0;
        loop {
            let leader = self.leader(topic, partition, true).await?;
            let build = |_version: i16| {
                Ok(ProduceRequest::default()
                    .with_acks(acks.wire())
                    .with_timeout_ms(timeout_ms)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(topic_name(topic))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(batch.clone()))])]))
            };
            if acks == Acks::None {
                self.request_oneway::<ProduceRequest, _>(
                    Target::Node(leader),
                    PRODUCE_MAX_VERSION,
                    build,
                )
                .await?;
                return Ok(None);
            }
            let (_, response) = self
                .request::<ProduceRequest, _>(
                    Target::Node(leader),
                    PRODUCE_MAX_VERSION,
                    Duration::ZERO,
                    build,
                )
                .await?;
            let result = response
                .responses
                .iter()
                .flat_map(|t| t.partition_responses.iter())
                .find(|p| p.index == partition)
                .ok_or_else(|| ClientError::Protocol {
                    addr: format!("node {leader}"),
                    reason: format!("produce response without partition {partition}"),
                })?;
            match KafkaError::from_code(result.error_code, result.error_message.as_deref()) {
                None => return Ok(Some(result.base_offset)),
                Some(error) if attempt < PRODUCE_RETRIES && not_written(&error) => {
                    attempt += 1;
                    self.topics.remove(topic);
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Some(error) => {
                    return Err(ClientError::Kafka {
                        context: format!("produce to {topic}/{partition}"),
                        error,
                    })
                }
            }
        }
    }

    /// Long-polls `positions` of `topic`: waits up to `max_wait` for `min_bytes`. Partition
    /// errors are returned per partition, not as `Err`.
    pub async fn fetch(
        &mut self,
        topic: &str,
        positions: &[FetchPosition],
        max_wait: Duration,
        min_bytes: i32,
        max_bytes: i32,
    ) -> Result<Vec<FetchedPartition>> {
        let mut by_leader: BTreeMap<i32, Vec<FetchPosition>> = BTreeMap::new();
        for p in positions {
            let leader = self.leader(topic, p.partition, false).await?;
            by_leader.entry(leader).or_default().push(*p);
        }
        let max_wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
        let mut out = Vec::with_capacity(positions.len());
        for (leader, positions) in by_leader {
            let (_, response) = self
                .request::<FetchRequest, _>(
                    Target::Node(leader),
                    FETCH_MAX_VERSION,
                    max_wait,
                    |_version| {
                        Ok(FetchRequest::default()
                            .with_max_wait_ms(max_wait_ms)
                            .with_min_bytes(min_bytes)
                            .with_max_bytes(max_bytes)
                            .with_isolation_level(READ_UNCOMMITTED)
                            .with_topics(vec![FetchTopic::default()
                                .with_topic(topic_name(topic))
                                .with_partitions(
                                    positions
                                        .iter()
                                        .map(|p| {
                                            WireFetchPartition::default()
                                                .with_partition(p.partition)
                                                .with_fetch_offset(p.offset)
                                                .with_partition_max_bytes(p.max_bytes)
                                        })
                                        .collect(),
                                )]))
                    },
                )
                .await?;
            if let Some(error) = KafkaError::from_code(response.error_code, None) {
                return Err(ClientError::Kafka {
                    context: format!("fetch from {topic}"),
                    error,
                });
            }
            for t in response.responses {
                for p in t.partitions {
                    let fetch_offset = positions
                        .iter()
                        .find(|pos| pos.partition == p.partition_index)
                        .map_or(0, |pos| pos.offset);
                    let error = KafkaError::from_code(p.error_code, None);
                    if error.as_ref().is_some_and(|e| {
                        matches!(
                            e.kind(),
                            ResponseError::NotLeaderOrFollower
                                | ResponseError::UnknownTopicOrPartition
                        )
                    }) {
                        self.topics.remove(topic); // leader moved or topic changed
                    }
                    let records = match (&error, p.records) {
                        (None, Some(data)) => {
                            decode_batches(p.partition_index, data, fetch_offset)?
                        }
                        _ => DecodedRecords::default(),
                    };
                    out.push(FetchedPartition {
                        partition: p.partition_index,
                        error,
                        high_watermark: p.high_watermark,
                        log_start_offset: p.log_start_offset,
                        records,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Looks up offsets of partitions of `topic`.
    pub async fn list_offsets(
        &mut self,
        topic: &str,
        queries: &[(i32, OffsetQuery)],
    ) -> Result<Vec<ListedOffset>> {
        let mut by_leader: BTreeMap<i32, Vec<(i32, OffsetQuery)>> = BTreeMap::new();
        for &(partition, query) in queries {
            let leader = self.leader(topic, partition, false).await?;
            by_leader
                .entry(leader)
                .or_default()
                .push((partition, query));
        }
        let timeout_ms = i32::try_from(millis(self.config.request_timeout)).unwrap_or(i32::MAX);
        let mut out = Vec::with_capacity(queries.len());
        for (leader, queries) in by_leader {
            let (_, response) = self
                .request::<ListOffsetsRequest, _>(
                    Target::Node(leader),
                    LIST_OFFSETS_MAX_VERSION,
                    Duration::ZERO,
                    |version| {
                        let mut request = ListOffsetsRequest::default()
                            .with_replica_id(BrokerId(-1))
                            .with_topics(vec![ListOffsetsTopic::default()
                                .with_name(topic_name(topic))
                                .with_partitions(
                                    queries
                                        .iter()
                                        .map(|&(partition, query)| {
                                            ListOffsetsPartition::default()
                                                .with_partition_index(partition)
                                                .with_timestamp(query.wire())
                                        })
                                        .collect(),
                                )]);
                        if version >= 2 {
                            request.isolation_level = READ_UNCOMMITTED;
                        }
                        if version >= 10 {
                            request.timeout_ms = timeout_ms;
                        }
                        Ok(request)
                    },
                )
                .await?;
            for t in response.topics {
                for p in t.partitions {
                    error::check(p.error_code, None, || {
                        format!("offsets of {topic}/{}", p.partition_index)
                    })?;
                    out.push(ListedOffset {
                        partition: p.partition_index,
                        offset: p.offset,
                        timestamp_ms: p.timestamp,
                    });
                }
            }
        }
        out.sort_by_key(|o| o.partition);
        Ok(out)
    }

    /// A round trip to the leader of `topic`/`partition`: once it returns, every request
    /// sent before on that connection (acks=0 produces included) has been processed.
    pub async fn barrier(&mut self, topic: &str, partition: i32) -> Result<()> {
        self.list_offsets(topic, &[(partition, OffsetQuery::Latest)])
            .await
            .map(drop)
    }
}

/// Errors after which a produce certainly wrote nothing, so a retry cannot duplicate.
fn not_written(error: &KafkaError) -> bool {
    matches!(
        error.kind(),
        ResponseError::NotLeaderOrFollower
            | ResponseError::LeaderNotAvailable
            | ResponseError::UnknownTopicOrPartition
    )
}

fn leader_not_available() -> KafkaError {
    KafkaError {
        code: 5,
        name: "LEADER_NOT_AVAILABLE".to_owned(),
        message: None,
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// `host:port`, bracketing IPv6 literals.
fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_joining() {
        assert_eq!(join_host_port("localhost", 9092), "localhost:9092");
        assert_eq!(join_host_port("::1", 9092), "[::1]:9092");
    }
}
