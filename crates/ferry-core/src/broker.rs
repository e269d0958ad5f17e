//! The broker: topics, partitions and the data path.
//!
//! Topic metadata and producer-id reservations live in the `__ferry_metadata` internal
//! log (written durably before a change becomes visible), producer-state snapshots in
//! `__ferry_producers`. Both are replayed by [`Broker::open`], which then opens every
//! partition log and rebuilds its producer state.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use ferry_storage::batch::{set_log_append_time, split_batches, BatchHeader};
use ferry_storage::{Chunk, FlushPolicy, LogId, Store, StoreConfig};
use parking_lot::{Mutex, RwLock};

use crate::listener::ListenerStats;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::alarm::{AlarmLimits, Alarms, Usage, ALARM_POLL_INTERVAL_MS};
use crate::internal::{now_ms, to_json, InternalLog};
use crate::metadata::{
    replay_producer_snapshots, MetadataKey, MetadataState, ProducerIdsRecord, TopicRecord,
    METADATA_LOG, PRODUCERS_LOG,
};
use crate::partition::{
    map_append_error, map_storage, AppendOutcome, Partition, PartitionKey, PartitionSnapshot,
    LEADER_EPOCH,
};
use crate::producer::{
    last_sequence, IdempotentBatch, ProducerIdAllocator, PRODUCER_STATE_EXPIRY_MS,
};
use crate::topic::{collision_key, is_internal_name, validate_topic_name, Topic};
use crate::watch::{ChangeSignal, PartitionHandle, PartitionWatch};
use crate::{
    ConfigEntry, ConfigOp, CoreError, GroupCoordinator, GroupSettings, Result, TopicConfig,
    TopicInfo,
};

/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Fetched records of a partition shorter than this are read into memory; longer ones
/// are answered as a region of the segment file, which a connection sends straight from
/// the page cache (`sendfile`). Below a page, a system call of its own costs more than
/// the copy it saves.
pub const FETCH_REGION_MIN_BYTES: usize = 4096;
/// Default for [`BrokerConfig::retention_check_interval_ms`] (Kafka's 5 minutes).
pub const DEFAULT_RETENTION_CHECK_INTERVAL_MS: u64 = 300_000;
/// Shortest retention interval honoured, so a zero in a config file cannot spin.
const RETENTION_CHECK_INTERVAL_MIN_MS: u64 = 10;
/// How often producer state is snapshotted: after a crash each partition re-reads what
/// was appended since its snapshot, so this bounds restart time (as the storage
/// checkpoint interval does).
const PRODUCER_SNAPSHOT_INTERVAL_MS: u64 = 5_000;
/// Records of a producer snapshot are appended in batches of about this many bytes.
const PRODUCER_SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Flushing of the producer-snapshot log: a lost snapshot only means a longer scan.
const PRODUCER_SNAPSHOT_FLUSH: FlushPolicy = FlushPolicy::Async {
    interval_ms: 1000,
    bytes: 16 << 20,
};
/// How long shutdown waits for in-flight appends before going on without them.
const SHUTDOWN_INFLIGHT_WAIT_MS: u64 = 30_000;

/// Broker-wide settings (filled from Ferry's config file, env and flags).
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Where all logs live.
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
    /// Users and permissions applied at every start, loopback-only users.
    pub auth: crate::auth::AuthConfig,
    /// Vhosts created at start if missing (config file `[[amqp.vhosts]]`).
    pub vhosts: Vec<String>,
    /// Memory and disk alarm thresholds.
    pub limits: crate::alarm::LimitsConfig,
}

impl BrokerConfig {
    /// Defaults for a single node storing its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            data_dir: data_dir.into(),
            node_id: 0,
            auto_create_topics: true,
            default_partitions: 1,
            topic_defaults: TopicConfig::default(),
            groups: GroupSettings::default(),
            retention_check_interval_ms: DEFAULT_RETENTION_CHECK_INTERVAL_MS,
            auth: crate::auth::AuthConfig::default(),
            vhosts: Vec::new(),
            limits: crate::alarm::LimitsConfig::default(),
        }
    }
}

/// Produce acknowledgement level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// No response at all; the adapter does not wait.
    None,
    /// After the leader appended; on `flush=sync` topics after fsync.
    Leader,
    /// After all in-sync replicas have it; on `flush=sync` topics after fsync.
    All,
}

/// Result of one partition's produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceResult {
    /// Offset of the first record written (or of the original batch for a retry).
    pub base_offset: i64,
    /// Log-append time if the topic uses it, else -1.
    pub log_append_time_ms: i64,
    /// The partition's log start offset after the append.
    pub log_start_offset: i64,
}

/// Looks partitions up by topic name and index, keeping the last topic found: a request
/// that lists a topic's partitions together (as fetches over thousands of them do) costs
/// one topic lookup per run of them.
struct PartitionResolver<'a> {
    broker: &'a Broker,
    last: Option<Arc<Topic>>,
}

impl<'a> PartitionResolver<'a> {
    fn new(broker: &'a Broker) -> Self {
        PartitionResolver { broker, last: None }
    }

    /// Partition `partition` of `topic`, with the topic, if both exist.
    fn find(&mut self, topic: &str, partition: u32) -> Option<(&Arc<Topic>, Arc<Partition>)> {
        if self.last.as_ref().is_none_or(|t| *t.info.name != *topic) {
            self.last = self.broker.topics.read().get(topic).cloned();
        }
        let found = self.last.as_ref()?;
        let partition = found.partitions.get(partition as usize).cloned()?;
        Some((found, partition))
    }
}

/// One partition of a fetch request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPartition {
    /// Topic name (shared by the partitions of one topic in a request).
    pub topic: Arc<str>,
    /// Partition index.
    pub partition: u32,
    /// First offset wanted.
    pub offset: i64,
    /// Most bytes for this partition (at least one batch if it is the first with data).
    pub max_bytes: u32,
}

/// One partition of a fetch response.
#[derive(Debug)]
pub struct FetchedPartition {
    /// Why this partition has no data (`UnknownTopicOrPartition`, `OffsetOutOfRange`).
    pub error: Option<CoreError>,
    /// High watermark (-1 if the partition is unknown).
    pub high_watermark: i64,
    /// Last stable offset (the high watermark: there are no transactions).
    pub last_stable_offset: i64,
    /// Log start offset (-1 if the partition is unknown).
    pub log_start_offset: i64,
    /// Whole batches as stored: a region of the segment file unless shorter than
    /// [`FETCH_REGION_MIN_BYTES`], to be sent without reading it into memory.
    pub records: Chunk,
}

impl FetchedPartition {
    /// An error answer for a partition.
    fn failed(error: CoreError, offsets: Option<(i64, i64)>) -> Self {
        let (log_start_offset, high_watermark) = offsets.unwrap_or((-1, -1));
        FetchedPartition {
            error: Some(error),
            high_watermark,
            last_stable_offset: high_watermark,
            log_start_offset,
            records: Chunk::default(),
        }
    }
}

/// Which offset a ListOffsets-style lookup wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
    /// First offset whose timestamp is >= this.
    Timestamp(i64),
    /// The record with the largest timestamp.
    MaxTimestamp,
}

/// Offsets of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First offset still stored.
    pub log_start_offset: i64,
    /// Offset below which records are committed (= log end on one node).
    pub high_watermark: i64,
    /// Offset of the next appended record.
    pub log_end_offset: i64,
    /// Current leader epoch.
    pub leader_epoch: i32,
}

/// The single-node broker core.
pub struct Broker {
    config: BrokerConfig,
    store: Arc<Store>,
    groups: GroupCoordinator,
    /// `__ferry_metadata`: topics and producer-id reservations.
    metadata: InternalLog,
    /// `__ferry_producers`: producer-state snapshots.
    producer_snapshots: Arc<InternalLog>,
    /// Live topics by name; a [`Topic`] is replaced as a whole on change.
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic changes with their metadata writes.
    admin: Mutex<()>,
    producer_ids: Mutex<ProducerIdAllocator>,
    /// Set once shutdown starts: produce fails with `ShuttingDown`.
    shutting_down: AtomicBool,
    /// Produce calls under way (shutdown waits for zero).
    inflight: AtomicUsize,
    /// Notified when `inflight` drops to zero.
    idle: Notify,
    /// Becomes `true` at shutdown: stops background tasks and wakes long polls.
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Connection counts of the protocol listeners (a few; looked up by name).
    listeners: Mutex<Vec<Arc<ListenerStats>>>,
    /// Appends so far (a snapshot is skipped when nothing was appended since the last).
    appends: AtomicU64,
    /// Serialises snapshots; holds the `appends` count of the last one.
    snapshot_lock: tokio::sync::Mutex<Option<u64>>,
    /// Whether shutdown has completed.
    shutdown_done: tokio::sync::Mutex<bool>,
    /// Virtual hosts: exchanges, bindings, queues.
    vhosts: crate::routing::VHosts,
    /// Users and permissions.
    auth: crate::auth::Auth,
    /// Alarm thresholds, defaults resolved at open; changeable at run time.
    alarm_limits: RwLock<AlarmLimits>,
    /// Current resource alarms (sampled by a background task).
    alarms: watch::Sender<Alarms>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("data_dir", &self.config.data_dir)
            .field("topics", &self.topics.read().len())
            .finish_non_exhaustive()
    }
}

/// Counts a produce call as in flight until dropped.
struct InflightGuard<'a>(&'a Broker);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What a fetch reads on each pass. [`Broker::fetch`] reads a fixed list; a Kafka fetch
/// session reads those of its partitions that may have news.
pub trait FetchPlan {
    /// The partitions to read in the next pass, in answer order, each with its handle
    /// (`None`: no such partition).
    fn next_pass(&mut self) -> (&[FetchPartition], &[Option<PartitionHandle>]);

    /// The wake-up for changes to the partitions the plan reads. Asked once, when the
    /// fetch first has to wait; the fetch then reads once more, so a plan may start
    /// watching its partitions here.
    fn signal(&mut self) -> ChangeSignal;
}

/// The plan of a fetch over a fixed list ([`Broker::list_plan`]): it watches the
/// partitions only once it waits, so a fetch over thousands of partitions that finds data
/// at once takes no per-partition lock.
pub struct ListPlan<'a> {
    partitions: &'a [FetchPartition],
    targets: Vec<Option<PartitionHandle>>,
    watch: Option<PartitionWatch>,
}

impl FetchPlan for ListPlan<'_> {
    fn next_pass(&mut self) -> (&[FetchPartition], &[Option<PartitionHandle>]) {
        (self.partitions, &self.targets)
    }

    fn signal(&mut self) -> ChangeSignal {
        let targets = &self.targets;
        self.watch
            .get_or_insert_with(|| {
                let mut watch = PartitionWatch::new();
                for (slot, target) in targets.iter().enumerate() {
                    if let Some(target) = target {
                        watch.watch(slot as u32, target);
                    }
                }
                watch
            })
            .signal()
    }
}

impl Broker {
    /// Opens the data directory, replays internal logs, starts background work
    /// (retention, group session expiry). Must be called inside a tokio runtime.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>> {
        let store = Store::open(StoreConfig::new(&config.data_dir))
            .map_err(|e| map_storage(e, "open store"))?;
        match Broker::open_on(store.clone(), config) {
            Ok(broker) => Ok(broker),
            Err(e) => {
                // Stop the store's threads; the open error is the one worth reporting.
                if let Err(shutdown) = store.shutdown() {
                    warn!(error = %shutdown, "store shutdown after a failed open");
                }
                Err(e)
            }
        }
    }

    /// Replays the internal logs of an opened store and starts the broker on it.
    fn open_on(store: Arc<Store>, config: BrokerConfig) -> Result<Arc<Broker>> {
        let now = now_ms();

        let (metadata, records) = InternalLog::open(&store, METADATA_LOG, FlushPolicy::Sync)?;
        let metadata_was_empty = records.is_empty();
        let state = MetadataState::replay(&records)?;
        drop(records);
        let (producer_snapshots, records) =
            InternalLog::open(&store, PRODUCERS_LOG, PRODUCER_SNAPSHOT_FLUSH)?;
        let mut snapshots = replay_producer_snapshots(&records)?;
        drop(records);

        let mut topics = BTreeMap::new();
        for (name, record) in state.topics {
            let config_resolved =
                resolve_stored_config(&config.topic_defaults, &name, &record.configs);
            let info = TopicInfo {
                name: name.clone(),
                id: record.id,
                partitions: record.partitions,
                internal: false,
                config: config_resolved,
            };
            let mut partitions = Vec::with_capacity(record.partitions as usize);
            for index in 0..record.partitions {
                let log = store
                    .open_log(
                        &LogId {
                            topic: name.clone(),
                            partition: index,
                        },
                        info.config.log_config(),
                    )
                    .map_err(|e| map_storage(e, &format!("open {name}-{index}")))?;
                let snapshot = snapshots
                    .remove(&PartitionKey {
                        topic: name.clone(),
                        partition: index,
                    })
                    .filter(|s| s.topic_id == record.id);
                partitions.push(Arc::new(Partition::open(&name, index, log, snapshot, now)?));
            }
            topics.insert(
                name,
                Arc::new(Topic {
                    info,
                    partitions,
                    created_ms: record.created_ms,
                }),
            );
        }
        // Persist the state just rebuilt: a snapshot that was ahead of a log cut short by
        // the crash must not survive into the next start (those offsets get new batches),
        // and the next start should not have to scan again.
        let opened: Vec<Arc<Topic>> = topics.values().cloned().collect();
        write_producer_snapshot(&producer_snapshots, &opened)?;
        drop(opened);
        if metadata_was_empty {
            let strays = store
                .log_ids()
                .into_iter()
                .filter(|id| !is_internal_name(&id.topic))
                .count();
            if strays > 0 {
                // Without any metadata, deleting data would be a guess: leave it alone.
                warn!(
                    logs = strays,
                    "data directory has partition logs but no topic metadata; ignoring them"
                );
            }
        } else {
            remove_stray_logs(&store, &topics);
        }

        let groups = GroupCoordinator::open(store.clone(), config.groups.clone())?;
        let auth = crate::auth::Auth::open(&store, &config.auth)?;
        let alarm_limits = config.limits.resolve();
        let (alarms, _) = watch::channel(alarm_limits.evaluate(Usage::sample(&config.data_dir)));
        let definitions = crate::routing::VHosts::load(&store)?;
        let queue_store = store.clone();
        let (stop, _) = watch::channel(false);
        let topic_count = topics.len();
        // Queues hold a weak reference to the broker (stream queues are its topics).
        let broker = Arc::new_cyclic(|weak| Broker {
            store,
            groups,
            metadata,
            producer_snapshots: Arc::new(producer_snapshots),
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            producer_ids: Mutex::new(ProducerIdAllocator::new(state.producer_ids_reserved_end)),
            shutting_down: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            stop,
            tasks: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
            appends: AtomicU64::new(0),
            snapshot_lock: tokio::sync::Mutex::new(Some(0)),
            shutdown_done: tokio::sync::Mutex::new(false),
            vhosts: crate::routing::VHosts::new(definitions, queue_store, weak.clone()),
            auth,
            alarm_limits: RwLock::new(alarm_limits),
            alarms,
            config,
        });
        // Durable queues reopen now that the broker exists.
        broker.vhosts.recover()?;
        broker.add_configured_vhosts()?;
        broker.spawn_background();
        info!(data_dir = %broker.config.data_dir.display(), topics = topic_count, "broker core open");
        Ok(broker)
    }

    /// Stops accepting produce, flushes everything, writes a clean checkpoint.
    pub async fn shutdown(&self) -> Result<()> {
        let mut done = self.shutdown_done.lock().await;
        if *done {
            return Ok(());
        }
        self.shutting_down.store(true, Ordering::Release);
        self.stop.send_replace(true);

        let drained =
            tokio::time::timeout(Duration::from_millis(SHUTDOWN_INFLIGHT_WAIT_MS), async {
                loop {
                    let idle = self.idle.notified();
                    tokio::pin!(idle);
                    idle.as_mut().enable();
                    if self.inflight.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    idle.await;
                }
            })
            .await;
        if drained.is_err() {
            warn!(
                inflight = self.inflight.load(Ordering::Acquire),
                "shutdown goes on with appends in flight"
            );
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            if let Err(e) = task.await {
                warn!(error = %e, "background task ended abnormally");
            }
        }

        let mut first_error = None;
        // Queues end their consumers and persist their cursors while the store still runs.
        self.vhosts.shutdown();
        if let Err(e) = self.snapshot_producers(true).await {
            warn!(error = %e, "final producer-state snapshot failed; the next start scans the logs");
            first_error.get_or_insert(e);
        }
        if let Err(e) = self.groups.shutdown().await {
            warn!(error = %e, "group coordinator shutdown failed");
            first_error.get_or_insert(e);
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(map_storage(e, "store shutdown"));
            }
            Err(e) => warn!(error = %e, "store shutdown task failed"),
        }
        *done = true;
        info!("broker core shut down");
        first_error.map_or(Ok(()), Err)
    }

    /// The settings the broker was opened with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Virtual hosts with their exchanges, bindings and queues.
    pub fn vhosts(&self) -> &crate::routing::VHosts {
        &self.vhosts
    }

    /// Users and permissions.
    pub fn auth(&self) -> &crate::auth::Auth {
        &self.auth
    }

    /// The resource alarms now and every change to come (sampled every
    /// [`crate::alarm::ALARM_POLL_INTERVAL_MS`]).
    pub fn alarms(&self) -> watch::Receiver<Alarms> {
        self.alarms.subscribe()
    }

    /// The connection counts of the listener of `protocol` ("AMQP", "Kafka"), registered
    /// on first use; a listener started again for the same protocol keeps counting.
    pub fn listener_stats(&self, protocol: &str) -> Arc<ListenerStats> {
        let mut listeners = self.listeners.lock();
        if let Some(found) = listeners.iter().find(|l| l.protocol() == protocol) {
            return found.clone();
        }
        let stats = Arc::new(ListenerStats::new(protocol));
        listeners.push(stats.clone());
        stats
    }

    /// Every registered listener's connection counts, in registration order.
    pub fn listeners(&self) -> Vec<Arc<ListenerStats>> {
        self.listeners.lock().clone()
    }

    /// The memory and disk alarm thresholds in force.
    pub fn alarm_limits(&self) -> AlarmLimits {
        *self.alarm_limits.read()
    }

    /// Changes the alarm thresholds until the next start (like RabbitMQ's
    /// `rabbitmqctl set_vm_memory_high_watermark`) and re-evaluates the alarms at once.
    pub fn set_alarm_limits(&self, limits: AlarmLimits) -> Alarms {
        *self.alarm_limits.write() = limits;
        info!(
            memory_high_watermark_bytes = limits.memory_high_watermark_bytes,
            disk_free_limit_bytes = limits.disk_free_limit_bytes,
            "alarm limits changed"
        );
        self.refresh_alarms()
    }

    /// Samples memory and disk, publishes a change of the alarms (logging it), and returns
    /// them.
    fn refresh_alarms(&self) -> Alarms {
        // Two small reads (/proc, statvfs): cheap enough for a runtime thread.
        let usage = Usage::sample(&self.config.data_dir);
        let limits = self.alarm_limits();
        let now = limits.evaluate(usage);
        self.alarms.send_if_modified(|current| {
            if *current == now {
                return false;
            }
            if now.memory != current.memory {
                if now.memory {
                    warn!(resident_bytes = ?usage.resident_bytes, limit_bytes = limits.memory_high_watermark_bytes, "memory resource limit alarm set: publishers are blocked");
                } else {
                    info!("memory resource limit alarm cleared");
                }
            }
            if now.disk != current.disk {
                if now.disk {
                    warn!(free_bytes = ?usage.disk_free_bytes, limit_bytes = limits.disk_free_limit_bytes, "disk resource limit alarm set: publishers are blocked");
                } else {
                    info!("disk resource limit alarm cleared");
                }
            }
            *current = now;
            true
        });
        now
    }

    /// Bytes stored by a partition's log (all its segments).
    pub fn partition_size_bytes(&self, topic: &str, partition: u32) -> Result<u64> {
        let partition = self.live_partition(topic, partition)?;
        Ok(partition.log.size_bytes())
    }

    /// Creates the vhosts named in the config that do not exist yet; the one place they
    /// are applied, at every start.
    fn add_configured_vhosts(&self) -> Result<()> {
        for vhost in &self.config.vhosts {
            self.vhosts
                .add(vhost)
                .map_err(|e| CoreError::InvalidConfig(format!("vhost {vhost:?}: {e}")))?;
        }
        Ok(())
    }

    /// This node's id.
    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    /// The group coordinator.
    pub fn groups(&self) -> &GroupCoordinator {
        &self.groups
    }

    /// Installs the decompressor the storage engine uses inside compressed batches:
    /// exact timestamp lookups, and records for AMQP stream consumers. The core knows no
    /// codecs; `ferry serve` installs the Kafka adapter's (`ferry_kafka::compression`).
    /// Without it, a lookup that lands in a compressed batch answers with the batch's
    /// first offset, and stream consumers skip compressed batches.
    pub fn set_decompressor(&self, decompressor: ferry_storage::Decompressor) {
        self.store.set_decompressor(decompressor);
    }

    // ---- topics ----

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        self.topics.read().get(name).map(|t| t.info.clone())
    }

    /// All topics, by name. Ferry's internal logs are not topics and are not listed.
    pub fn topics(&self) -> Vec<TopicInfo> {
        self.topics
            .read()
            .values()
            .map(|t| t.info.clone())
            .collect()
    }

    /// The topic, auto-creating it with defaults if allowed by `allow_auto_create` and the
    /// broker config.
    pub fn topic_or_create(&self, name: &str, allow_auto_create: bool) -> Result<TopicInfo> {
        if let Some(info) = self.topic(name) {
            return Ok(info);
        }
        if !(allow_auto_create && self.config.auto_create_topics) {
            return Err(CoreError::UnknownTopicOrPartition);
        }
        match self.create_topic(name, None, BTreeMap::new(), false) {
            Ok(info) => Ok(info),
            // Created meanwhile by another request.
            Err(CoreError::TopicAlreadyExists(_)) => {
                self.topic(name).ok_or(CoreError::UnknownTopicOrPartition)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a topic. `partitions = None` takes the default.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicInfo> {
        self.check_running()?;
        validate_topic_name(name)?;
        if is_internal_name(name) {
            return Err(CoreError::InvalidTopic(format!(
                "`{name}`: names starting with `__` are reserved for Ferry's internal logs"
            )));
        }
        let partitions = partitions.unwrap_or(self.config.default_partitions);
        validate_partition_count(partitions)?;
        let config = TopicConfig::resolve(&self.config.topic_defaults, configs)?;

        let _admin = self.admin.lock();
        {
            let topics = self.topics.read();
            if topics.contains_key(name) {
                return Err(CoreError::TopicAlreadyExists(name.to_string()));
            }
            let key = collision_key(name);
            if let Some(other) = topics.keys().find(|t| collision_key(t) == key) {
                return Err(CoreError::InvalidTopic(format!(
                    "`{name}` collides with existing topic `{other}` ('.' and '_' are interchangeable)"
                )));
            }
        }
        let info = TopicInfo {
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            partitions,
            internal: false,
            config,
        };
        if validate_only {
            return Ok(info);
        }
        let created_ms = now_ms();
        let opened = self.open_new_partitions(&info, 0..partitions)?;
        let record = TopicRecord {
            id: info.id,
            partitions,
            configs: info.config.overrides.clone(),
            created_ms,
        };
        if let Err(e) = self.write_topic_record(name, Some(&record)) {
            self.remove_logs(&opened);
            return Err(e);
        }
        self.topics.write().insert(
            name.to_string(),
            Arc::new(Topic {
                info: info.clone(),
                partitions: opened,
                created_ms,
            }),
        );
        info!(topic = name, partitions, id = %info.id, "topic created");
        Ok(info)
    }

    /// Deletes a topic, its data and every group's committed offsets for it; returns once
    /// all of that is done.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_running()?;
        {
            let _admin = self.admin.lock();
            let topic = self.live_topic(name)?;
            // The tombstone is durable before any data goes: a crash in between leaves
            // stray logs that the next start removes, never a topic without its data.
            self.write_topic_record(name, None)?;
            self.topics.write().remove(name);
            for partition in &topic.partitions {
                partition.mark_deleted();
            }
            self.remove_logs(&topic.partitions);
        }
        // Committed offsets go before the deletion is acknowledged, so a topic re-created
        // under the same name never inherits (or loses) offsets to a late cleanup.
        self.groups().remove_topic_offsets(name).await?;
        info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Grows a topic to `total` partitions.
    pub fn create_partitions(&self, name: &str, total: u32, validate_only: bool) -> Result<()> {
        self.check_running()?;
        let _admin = self.admin.lock();
        let topic = self.live_topic(name)?;
        let current = topic.info.partitions;
        if total == current {
            return Err(CoreError::InvalidPartitions(format!(
                "topic `{name}` already has {current} partitions"
            )));
        }
        if total < current {
            return Err(CoreError::InvalidPartitions(format!(
                "topic `{name}` has {current} partitions, more than the requested {total}; partitions can only be added"
            )));
        }
        validate_partition_count(total)?;
        if validate_only {
            return Ok(());
        }
        let added = self.open_new_partitions(&topic.info, current..total)?;
        let record = TopicRecord {
            id: topic.info.id,
            partitions: total,
            configs: topic.info.config.overrides.clone(),
            created_ms: topic.created_ms,
        };
        if let Err(e) = self.write_topic_record(name, Some(&record)) {
            self.remove_logs(&added);
            return Err(e);
        }
        let mut partitions = topic.partitions.clone();
        partitions.extend(added);
        let info = TopicInfo {
            partitions: total,
            ..topic.info.clone()
        };
        self.topics.write().insert(
            name.to_string(),
            Arc::new(Topic {
                info,
                partitions,
                created_ms: topic.created_ms,
            }),
        );
        info!(topic = name, from = current, to = total, "partitions added");
        Ok(())
    }

    /// Effective configuration of a topic.
    pub fn describe_topic_config(&self, name: &str) -> Result<Vec<ConfigEntry>> {
        let topic = self.live_topic(name)?;
        Ok(topic.info.config.entries(&self.config.topic_defaults))
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
        self.check_running()?;
        let _admin = self.admin.lock();
        let topic = self.live_topic(name)?;
        let overrides = TopicConfig::apply_ops(&topic.info.config.overrides, ops, incremental)?;
        let config = TopicConfig::resolve(&self.config.topic_defaults, overrides)?;
        if validate_only {
            return Ok(());
        }
        let record = TopicRecord {
            id: topic.info.id,
            partitions: topic.info.partitions,
            configs: config.overrides.clone(),
            created_ms: topic.created_ms,
        };
        self.write_topic_record(name, Some(&record))?;
        let log_config = config.log_config();
        for partition in &topic.partitions {
            if let Err(e) = partition.log.set_config(log_config.clone()) {
                // The metadata is the truth and the next start applies it; say so.
                warn!(topic = name, partition = partition.index, error = %e, "could not apply new log settings");
            }
        }
        let info = TopicInfo {
            config,
            ..topic.info.clone()
        };
        self.topics.write().insert(
            name.to_string(),
            Arc::new(Topic {
                info,
                partitions: topic.partitions.clone(),
                created_ms: topic.created_ms,
            }),
        );
        info!(topic = name, "topic config altered");
        Ok(())
    }

    // ---- data ----

    /// Appends `records` (one or more RecordBatch v2, as received) to a partition. With
    /// idempotent batches checks producer epoch and sequence: an exact retry of one of the
    /// last 5 batches returns its original offset without writing; a gap is
    /// `OutOfOrderSequence`. On a `flush=sync` topic, returns only once durable (unless
    /// `Acks::None`).
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: Bytes,
        acks: Acks,
    ) -> Result<ProduceResult> {
        let _inflight = self.begin_produce()?;
        let (topic, partition) = self
            .find_partition(topic, partition)
            .ok_or(CoreError::UnknownTopicOrPartition)?;
        let config = &topic.info.config;
        let batches = split_batches(&records, false).map_err(map_append_error)?;
        if batches.is_empty() {
            return Err(CoreError::CorruptMessage(
                "produce request carries no record batch".into(),
            ));
        }
        let mut idempotent = None;
        for (header, _) in &batches {
            check_produced_batch(header, config.max_message_bytes())?;
            if header.producer_id >= 0 {
                if batches.len() != 1 {
                    return Err(CoreError::InvalidRecord(
                        "an idempotent produce must carry exactly one record batch".into(),
                    ));
                }
                if header.base_sequence < 0 || header.producer_epoch < 0 {
                    return Err(CoreError::InvalidRecord(format!(
                        "producer {} sent a batch without a sequence or epoch",
                        header.producer_id
                    )));
                }
                idempotent = Some(IdempotentBatch {
                    producer_id: header.producer_id,
                    epoch: header.producer_epoch,
                    first_seq: header.base_sequence,
                    last_seq: last_sequence(header.base_sequence, header.last_offset_delta),
                });
            }
        }

        let now = now_ms();
        let log_append_time = config.log_append_time();
        let records = if log_append_time {
            let mut buf = records.to_vec();
            let mut position = 0;
            for (header, _) in &batches {
                let end = position + header.total_bytes();
                set_log_append_time(&mut buf[position..end], now).map_err(map_append_error)?;
                position = end;
            }
            Bytes::from(buf)
        } else {
            records
        };

        let outcome = partition.append(records, idempotent, now)?;
        let wait_durable = config.flush_sync() && acks != Acks::None;
        let base_offset = match outcome {
            AppendOutcome::Appended(appended) => {
                self.appends.fetch_add(1, Ordering::Relaxed);
                if wait_durable {
                    appended
                        .durable
                        .wait()
                        .await
                        .map_err(|e| map_storage(e, "fsync"))?;
                }
                appended.base_offset
            }
            AppendOutcome::Duplicate { base_offset } => {
                debug!(topic = %topic.info.name, partition = partition.index, base_offset, "duplicate batch acknowledged");
                if wait_durable {
                    // The original may still be waiting for its fsync: a retry must not be
                    // acknowledged before it, so flush this log (retries are rare).
                    let log = partition.log.clone();
                    tokio::task::spawn_blocking(move || log.flush())
                        .await
                        .map_err(|e| CoreError::Storage(join_error(e)))?
                        .map_err(|e| map_storage(e, "fsync"))?;
                }
                return Ok(ProduceResult {
                    base_offset,
                    log_append_time_ms: -1,
                    log_start_offset: partition.log.log_start_offset(),
                });
            }
        };
        Ok(ProduceResult {
            base_offset,
            log_append_time_ms: if log_append_time { now } else { -1 },
            log_start_offset: partition.log.log_start_offset(),
        })
    }

    /// Reads from several partitions; waits up to `max_wait` until at least `min_bytes`
    /// are available in total (or the request is satisfiable), never busy-looping.
    /// `max_bytes` caps the response, but the first partition with data always returns
    /// at least one whole batch. A partition error answers at once.
    pub async fn fetch(
        &self,
        partitions: &[FetchPartition],
        max_wait: Duration,
        min_bytes: u32,
        max_bytes: u32,
    ) -> Vec<FetchedPartition> {
        self.fetch_planned(
            &mut self.list_plan(partitions),
            max_wait,
            min_bytes,
            max_bytes,
        )
        .await
    }

    /// The plan that reads `partitions` on every pass.
    pub fn list_plan<'a>(&self, partitions: &'a [FetchPartition]) -> ListPlan<'a> {
        let mut resolver = PartitionResolver::new(self);
        let targets = partitions
            .iter()
            .map(|p| {
                resolver
                    .find(&p.topic, p.partition)
                    .map(|(_, found)| PartitionHandle(found))
            })
            .collect();
        ListPlan {
            partitions,
            targets,
            watch: None,
        }
    }

    /// [`fetch`](Self::fetch) with the partitions chosen by `plan` on each pass; the
    /// answers are those of the plan's last pass, in its order.
    pub async fn fetch_planned(
        &self,
        plan: &mut impl FetchPlan,
        max_wait: Duration,
        min_bytes: u32,
        max_bytes: u32,
    ) -> Vec<FetchedPartition> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut stop = self.stop.subscribe();
        let mut signal: Option<ChangeSignal> = None;
        loop {
            let (partitions, targets) = plan.next_pass();
            let (results, bytes, errors) = read_fetch(partitions, targets, max_bytes);
            let done = errors
                || bytes >= min_bytes as usize
                || tokio::time::Instant::now() >= deadline
                || *stop.borrow_and_update();
            if done {
                return results;
            }
            let Some(signal) = &signal else {
                // Look again once watching: an append between the read above and the
                // watch would otherwise not wake this fetch.
                signal = Some(plan.signal());
                continue;
            };
            tokio::select! {
                _ = signal.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// A handle on partition `partition` of `topic`, if it exists, for callers that
    /// fetch it again and again.
    pub fn partition_handle(&self, topic: &str, partition: u32) -> Option<PartitionHandle> {
        self.find_partition(topic, partition)
            .map(|(_, found)| PartitionHandle(found))
    }

    /// Offset lookup: returns (offset, timestamp); timestamp is -1 where not applicable.
    /// A timestamp later than every record gives (log end, -1).
    pub fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<(i64, i64)> {
        let partition = self.live_partition(topic, partition)?;
        let log = &partition.log;
        let context = || format!("{topic}-{}", partition.index);
        match spec {
            OffsetSpec::Earliest => Ok((log.log_start_offset(), -1)),
            OffsetSpec::Latest => Ok((log.high_watermark(), -1)),
            OffsetSpec::Timestamp(timestamp_ms) => {
                match log
                    .offset_for_timestamp(timestamp_ms)
                    .map_err(|e| map_storage(e, &context()))?
                {
                    Some((offset, timestamp)) => {
                        Ok((offset.max(log.log_start_offset()), timestamp))
                    }
                    None => Ok((log.high_watermark(), -1)),
                }
            }
            OffsetSpec::MaxTimestamp => Ok(log
                .max_timestamp()
                .map_err(|e| map_storage(e, &context()))?
                .unwrap_or((-1, -1))),
        }
    }

    /// Deletes records before `offset` (`-1` = high watermark); returns the new low
    /// watermark. An offset above the high watermark is `OffsetOutOfRange`.
    pub fn delete_records(&self, topic: &str, partition: u32, offset: i64) -> Result<i64> {
        self.check_running()?;
        let partition = self.live_partition(topic, partition)?;
        let log = &partition.log;
        let high_watermark = log.high_watermark();
        let target = if offset == -1 { high_watermark } else { offset };
        if target < 0 || target > high_watermark {
            return Err(CoreError::OffsetOutOfRange);
        }
        if target <= log.log_start_offset() {
            return Ok(log.log_start_offset());
        }
        let start = log
            .delete_records_before(target)
            .map_err(|e| map_storage(e, &format!("{topic}-{}", partition.index)))?;
        partition.changed();
        info!(
            topic,
            partition = partition.index,
            log_start_offset = start,
            "records deleted"
        );
        Ok(start)
    }

    /// (log start, high watermark, log end, leader epoch) of a partition.
    pub fn partition_offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets> {
        let partition = self.live_partition(topic, partition)?;
        let log = &partition.log;
        Ok(PartitionOffsets {
            log_start_offset: log.log_start_offset(),
            high_watermark: log.high_watermark(),
            log_end_offset: log.log_end_offset(),
            leader_epoch: LEADER_EPOCH,
        })
    }

    /// For OffsetForLeaderEpoch: the end offset of `epoch` (start of the next epoch, or
    /// the log end) and the largest epoch <= `epoch`. An epoch newer than every known one
    /// gives (-1, -1), as Kafka.
    pub fn end_offset_for_epoch(
        &self,
        topic: &str,
        partition: u32,
        epoch: i32,
    ) -> Result<(i32, i64)> {
        let partition = self.live_partition(topic, partition)?;
        let log = &partition.log;
        let mut epochs = log.leader_epochs();
        // The current leader epoch starts at the log end if nothing was written in it yet
        // (Kafka records it when the replica becomes leader).
        if epochs.last().is_none_or(|(last, _)| *last < LEADER_EPOCH) {
            epochs.push((LEADER_EPOCH, log.log_end_offset()));
        }
        Ok(end_offset_for(&epochs, epoch, log.log_end_offset()))
    }

    // ---- producers ----

    /// Allocates a producer id (or bumps the epoch of `current` when given and valid).
    /// Ids are never reused across restarts. Transactional ids are accepted but not
    /// tracked: transactions are not supported yet.
    pub fn init_producer_id(
        &self,
        transactional_id: Option<&str>,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16)> {
        self.check_running()?;
        if let Some(id) = transactional_id {
            debug!(
                transactional_id = id,
                "transactional id ignored: transactions are not supported"
            );
        }
        let mut ids = self.producer_ids.lock();
        if let Some((id, epoch)) = current {
            // KIP-360: a producer that hit a sequence error bumps its epoch and restarts
            // its sequences; when the epoch is exhausted it gets a new id.
            if ids.was_issued(id) && (0..i16::MAX - 1).contains(&epoch) {
                return Ok((id, epoch + 1));
            }
        }
        loop {
            match ids.next_id() {
                Ok(id) => return Ok((id, 0)),
                Err(reserved_end) => {
                    let key = to_json(&MetadataKey::ProducerIds);
                    let value = to_json(&ProducerIdsRecord { reserved_end });
                    self.metadata
                        .append_durable(vec![(key, Some(value))], now_ms())?;
                    ids.reserved(reserved_end);
                }
            }
        }
    }

    // ---- internals ----

    /// Fails with `ShuttingDown` once shutdown has started.
    fn check_running(&self) -> Result<()> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(CoreError::ShuttingDown);
        }
        Ok(())
    }

    /// Counts a produce in flight, or refuses it during shutdown.
    fn begin_produce(&self) -> Result<InflightGuard<'_>> {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let guard = InflightGuard(self);
        self.check_running()?;
        Ok(guard)
    }

    /// The storage engine (queues keep their logs on it).
    #[cfg(test)]
    pub(crate) fn queue_store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Partition 0 of topic `name`: the log of the stream queue stored as that topic.
    pub(crate) fn stream_partition(&self, name: &str) -> Option<Arc<Partition>> {
        self.find_partition(name, 0).map(|(_, partition)| partition)
    }

    /// A live partition with its topic.
    fn find_partition(&self, topic: &str, partition: u32) -> Option<(Arc<Topic>, Arc<Partition>)> {
        PartitionResolver::new(self)
            .find(topic, partition)
            .map(|(topic, found)| (topic.clone(), found))
    }

    /// Partition `partition` of `topic`, or `UnknownTopicOrPartition`.
    fn live_partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        self.find_partition(topic, partition)
            .map(|(_, partition)| partition)
            .ok_or(CoreError::UnknownTopicOrPartition)
    }

    /// The topic `name`, or `UnknownTopicOrPartition`.
    fn live_topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or(CoreError::UnknownTopicOrPartition)
    }

    /// Every live partition.
    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics
            .read()
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    /// Opens fresh logs for partitions `range` of a topic being created or grown; stray
    /// logs of the same name (left by a crash during an earlier delete) are removed
    /// first so that no old data reappears.
    fn open_new_partitions(
        &self,
        info: &TopicInfo,
        range: std::ops::Range<u32>,
    ) -> Result<Vec<Arc<Partition>>> {
        let existing: HashSet<LogId> = self.store.log_ids().into_iter().collect();
        let now = now_ms();
        let mut opened: Vec<Arc<Partition>> = Vec::with_capacity(range.len());
        for index in range {
            let id = LogId {
                topic: info.name.clone(),
                partition: index,
            };
            let result = (|| {
                if existing.contains(&id) {
                    warn!(topic = %info.name, partition = index, "removing stray log before creating the partition");
                    self.store
                        .remove_log(&id)
                        .map_err(|e| map_storage(e, "remove stray log"))?;
                }
                let log = self
                    .store
                    .open_log(&id, info.config.log_config())
                    .map_err(|e| map_storage(e, &format!("create {}-{index}", info.name)))?;
                Partition::open(&info.name, index, log, None, now)
            })();
            match result {
                Ok(partition) => opened.push(Arc::new(partition)),
                Err(e) => {
                    self.remove_logs(&opened);
                    return Err(e);
                }
            }
        }
        Ok(opened)
    }

    /// Removes the logs of `partitions`, logging failures (stray logs are removed at the
    /// next start).
    fn remove_logs(&self, partitions: &[Arc<Partition>]) {
        for partition in partitions {
            let id = LogId {
                topic: partition.topic.clone(),
                partition: partition.index,
            };
            if let Err(e) = self.store.remove_log(&id) {
                warn!(topic = %id.topic, partition = id.partition, error = %e, "could not remove partition log");
            }
        }
    }

    /// Durably writes (or with `None` deletes) a topic's metadata record.
    fn write_topic_record(&self, name: &str, record: Option<&TopicRecord>) -> Result<()> {
        let key = to_json(&MetadataKey::Topic {
            name: name.to_string(),
        });
        self.metadata
            .append_durable(vec![(key, record.map(to_json))], now_ms())
    }

    /// Writes a full producer-state snapshot of every partition (skipped when nothing
    /// was appended since the last one, unless `force`), then drops older snapshots.
    async fn snapshot_producers(&self, force: bool) -> Result<()> {
        let mut last = self.snapshot_lock.lock().await;
        let appends = self.appends.load(Ordering::Acquire);
        if !force && *last == Some(appends) {
            return Ok(());
        }
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        let log = self.producer_snapshots.clone();
        let written = tokio::task::spawn_blocking(move || write_producer_snapshot(&log, &topics))
            .await
            .map_err(|e| CoreError::Storage(join_error(e)))??;
        debug!(partitions = written, "producer state snapshotted");
        *last = Some(appends);
        Ok(())
    }

    /// Starts retention and producer-snapshot tasks; they stop at shutdown or when the
    /// broker is dropped.
    fn spawn_background(self: &Arc<Self>) {
        let retention_interval = Duration::from_millis(
            self.config
                .retention_check_interval_ms
                .max(RETENTION_CHECK_INTERVAL_MIN_MS),
        );
        let retention = tokio::spawn(retention_loop(
            Arc::downgrade(self),
            self.stop.subscribe(),
            retention_interval,
        ));
        let snapshots = tokio::spawn(snapshot_loop(
            Arc::downgrade(self),
            self.stop.subscribe(),
            Duration::from_millis(PRODUCER_SNAPSHOT_INTERVAL_MS),
        ));
        let alarms = tokio::spawn(alarm_loop(
            Arc::downgrade(self),
            self.stop.subscribe(),
            Duration::from_millis(ALARM_POLL_INTERVAL_MS),
        ));
        self.tasks.lock().extend([retention, snapshots, alarms]);
    }
}

/// Rejects batches a producer may not send, before anything is written.
fn check_produced_batch(header: &BatchHeader, max_message_bytes: u32) -> Result<()> {
    if header.total_bytes() > max_message_bytes as usize {
        return Err(CoreError::MessageTooLarge(format!(
            "batch of {} bytes exceeds max.message.bytes={max_message_bytes}",
            header.total_bytes()
        )));
    }
    if header.is_control() {
        return Err(CoreError::InvalidRecord(
            "control batches cannot be produced".into(),
        ));
    }
    if header.is_transactional() {
        return Err(CoreError::InvalidRecord(
            "transactional batches are not supported yet".into(),
        ));
    }
    Ok(())
}

/// One pass over the fetched partitions: (answers, bytes of records, whether any
/// partition has an error).
fn read_fetch(
    requests: &[FetchPartition],
    targets: &[Option<PartitionHandle>],
    max_bytes: u32,
) -> (Vec<FetchedPartition>, usize, bool) {
    let mut results = Vec::with_capacity(requests.len());
    let mut remaining = max_bytes as usize;
    let mut total = 0usize;
    let mut any_error = false;
    for (request, target) in requests.iter().zip(targets) {
        let Some(PartitionHandle(partition)) = target.as_ref().filter(|p| !p.is_deleted()) else {
            any_error = true;
            results.push(FetchedPartition::failed(
                CoreError::UnknownTopicOrPartition,
                None,
            ));
            continue;
        };
        let log = &partition.log;
        let (log_start, high_watermark, log_end) = log.offsets();
        if request.offset < log_start || request.offset > log_end {
            any_error = true;
            results.push(FetchedPartition::failed(
                CoreError::OffsetOutOfRange,
                Some((log_start, high_watermark)),
            ));
            continue;
        }
        let first_with_data = total == 0;
        let limit = (request.max_bytes as usize).min(remaining);
        let records = if request.offset >= high_watermark || (limit == 0 && !first_with_data) {
            Chunk::default()
        } else {
            // Only the first partition with data may exceed the limits (by one batch).
            let read = log.read_chunk(
                request.offset,
                limit as u32,
                high_watermark,
                !first_with_data,
                FETCH_REGION_MIN_BYTES,
            );
            match read {
                Ok(read) => {
                    if read.records.is_empty() {
                        // The next batch does not fit in what is left: the response is
                        // full. Looking for batches that would fit in the rest would cost
                        // a header read in each of the remaining partitions (thousands
                        // with many partitions) for a few bytes.
                        remaining = 0;
                    }
                    read.records
                }
                Err(e) => {
                    any_error = true;
                    let error = map_storage(e, &format!("{}-{}", request.topic, request.partition));
                    results.push(FetchedPartition::failed(
                        error,
                        Some((log_start, high_watermark)),
                    ));
                    continue;
                }
            }
        };
        total += records.len();
        remaining = remaining.saturating_sub(records.len());
        results.push(FetchedPartition {
            error: None,
            high_watermark,
            last_stable_offset: high_watermark,
            log_start_offset: log_start,
            records,
        });
    }
    (results, total, any_error)
}

/// Kafka's leader-epoch lookup over `(epoch, start offset)` entries in ascending order.
fn end_offset_for(epochs: &[(i32, i64)], requested: i32, log_end: i64) -> (i32, i64) {
    const UNDEFINED: (i32, i64) = (-1, -1);
    if requested < 0 {
        return UNDEFINED;
    }
    if epochs
        .last()
        .is_some_and(|(latest, _)| *latest == requested)
    {
        return (requested, log_end);
    }
    let Some(higher) = epochs.iter().find(|(e, _)| *e > requested) else {
        return UNDEFINED;
    };
    match epochs.iter().rev().find(|(e, _)| *e <= requested) {
        Some((floor, _)) => (*floor, higher.1),
        // Older than every known epoch: it ended where the first known one starts.
        None => (requested, higher.1),
    }
}

/// The partition count is in `1..=PARTITIONS_PER_TOPIC_MAX`.
fn validate_partition_count(partitions: u32) -> Result<()> {
    if partitions == 0 {
        return Err(CoreError::InvalidPartitions(
            "a topic needs at least one partition".into(),
        ));
    }
    if partitions > PARTITIONS_PER_TOPIC_MAX {
        return Err(CoreError::InvalidPartitions(format!(
            "{partitions} partitions requested; the limit is {PARTITIONS_PER_TOPIC_MAX}"
        )));
    }
    Ok(())
}

/// Resolves a stored topic's overrides, dropping (with a warning) any that this version
/// no longer accepts rather than refusing to start.
fn resolve_stored_config(
    defaults: &TopicConfig,
    topic: &str,
    configs: &BTreeMap<String, String>,
) -> TopicConfig {
    if let Ok(config) = TopicConfig::resolve(defaults, configs.clone()) {
        return config;
    }
    let mut kept = BTreeMap::new();
    for (key, value) in configs {
        let mut candidate = kept.clone();
        candidate.insert(key.clone(), value.clone());
        match TopicConfig::resolve(defaults, candidate) {
            Ok(_) => {
                kept.insert(key.clone(), value.clone());
            }
            Err(e) => warn!(topic, error = %e, "ignoring stored topic config"),
        }
    }
    TopicConfig::resolve(defaults, kept).unwrap_or_else(|_| defaults.clone())
}

/// Removes partition logs that belong to no topic (a crash between a topic's deletion
/// record and the removal of its logs leaves them behind).
fn remove_stray_logs(store: &Store, topics: &BTreeMap<String, Arc<Topic>>) {
    for id in store.log_ids() {
        if is_internal_name(&id.topic) {
            continue;
        }
        let live = topics
            .get(&id.topic)
            .is_some_and(|t| id.partition < t.info.partitions);
        if live {
            continue;
        }
        warn!(topic = %id.topic, partition = id.partition, "removing log of a deleted topic");
        if let Err(e) = store.remove_log(&id) {
            warn!(topic = %id.topic, partition = id.partition, error = %e, "could not remove stray log");
        }
    }
}

/// Appends one full snapshot of every partition's producer state, flushes it and drops
/// the snapshots it supersedes. Returns how many partitions it covered.
fn write_producer_snapshot(log: &InternalLog, topics: &[Arc<Topic>]) -> Result<usize> {
    let start = log.log_end_offset();
    let now = now_ms();
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0usize;
    let mut written = 0usize;
    for topic in topics {
        for partition in &topic.partitions {
            if partition.is_deleted() {
                continue;
            }
            let snapshot: PartitionSnapshot = partition.snapshot(topic.info.id);
            let key = to_json(&PartitionKey {
                topic: topic.info.name.clone(),
                partition: partition.index,
            });
            let value = to_json(&snapshot);
            chunk_bytes += key.len() + value.len();
            chunk.push((key, Some(value)));
            written += 1;
            if chunk_bytes >= PRODUCER_SNAPSHOT_CHUNK_BYTES {
                log.append(std::mem::take(&mut chunk), now)?;
                chunk_bytes = 0;
            }
        }
    }
    if !chunk.is_empty() {
        log.append(chunk, now)?;
    }
    // Durable before the older snapshots go.
    log.flush()?;
    if start > 0 {
        log.delete_before(start)?;
    }
    Ok(written)
}

/// Runs retention (and producer-state expiry) every `interval` until stopped.
async fn retention_loop(broker: Weak<Broker>, mut stop: watch::Receiver<bool>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(partitions) = broker.upgrade().map(|b| b.all_partitions()) else {
            return;
        };
        let now = now_ms();
        let pass = tokio::task::spawn_blocking(move || {
            for partition in partitions {
                if partition.is_deleted() {
                    continue;
                }
                match partition.log.enforce_retention(now) {
                    Ok(0) => {}
                    Ok(deleted) => {
                        partition.changed();
                        info!(topic = %partition.topic, partition = partition.index, segments = deleted, "retention deleted segments")
                    }
                    Err(e) => {
                        warn!(topic = %partition.topic, partition = partition.index, error = %e, "retention failed")
                    }
                }
                let expired = partition.expire_producers(now, PRODUCER_STATE_EXPIRY_MS);
                if expired > 0 {
                    debug!(topic = %partition.topic, partition = partition.index, expired, "producer state expired");
                }
            }
        })
        .await;
        if let Err(e) = pass {
            warn!(error = %e, "retention pass failed");
        }
    }
}

/// Snapshots producer state every `interval` until stopped.
async fn snapshot_loop(broker: Weak<Broker>, mut stop: watch::Receiver<bool>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; nothing changed yet.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if let Err(e) = broker.snapshot_producers(false).await {
            warn!(error = %e, "producer-state snapshot failed");
        }
    }
}

/// Samples memory and disk every `interval` and publishes alarm changes until stopped.
async fn alarm_loop(broker: Weak<Broker>, mut stop: watch::Receiver<bool>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        broker.refresh_alarms();
    }
}

/// A panicked or cancelled blocking task, as a storage error.
fn join_error(e: tokio::task::JoinError) -> ferry_storage::StorageError {
    ferry_storage::StorageError::Io {
        path: PathBuf::new(),
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_epoch_lookup_follows_kafka() {
        let epochs = [(0, 0), (2, 10), (5, 30)];
        assert_eq!(end_offset_for(&epochs, 5, 42), (5, 42));
        assert_eq!(end_offset_for(&epochs, 0, 42), (0, 10));
        assert_eq!(end_offset_for(&epochs, 1, 42), (0, 10));
        assert_eq!(end_offset_for(&epochs, 3, 42), (2, 30));
        assert_eq!(end_offset_for(&epochs, 6, 42), (-1, -1));
        assert_eq!(end_offset_for(&epochs, -1, 42), (-1, -1));
        assert_eq!(end_offset_for(&[(3, 5)], 1, 9), (1, 5));
        assert_eq!(end_offset_for(&[(0, 0)], 0, 0), (0, 0));
    }

    #[test]
    fn partition_counts_are_bounded() {
        assert!(matches!(
            validate_partition_count(0),
            Err(CoreError::InvalidPartitions(_))
        ));
        assert!(validate_partition_count(1).is_ok());
        assert!(validate_partition_count(PARTITIONS_PER_TOPIC_MAX).is_ok());
        assert!(matches!(
            validate_partition_count(PARTITIONS_PER_TOPIC_MAX + 1),
            Err(CoreError::InvalidPartitions(_))
        ));
    }
}
