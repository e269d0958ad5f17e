//! Consumer groups: membership, generations, rebalances, assignments (opaque bytes chosen
//! by the group leader client-side) and committed offsets.
//!
//! The state machine follows Kafka's classic group protocol (Empty → PreparingRebalance →
//! CompletingRebalance → Stable, Dead), which other protocols can reuse for their own
//! "group of consumers sharing work" needs. Committed offsets are records in the internal
//! `__consumer_offsets` log, replayed at startup.
//!
//! Layout: [`state`] is the membership state machine (no I/O, time passed in),
//! [`offsets`] the committed offsets in memory, [`records`] the format of the offsets log
//! and its replay, [`sink`] where records are written. [`GroupCoordinator`] ties them
//! together behind one lock, writes to the log before changing memory, waits for
//! durability outside the lock and runs a background task for deadlines.

mod offsets;
mod records;
mod sink;
mod state;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_storage::{FlushPolicy, Store};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::internal::InternalLog;
use crate::{CoreError, Result};
use offsets::{OffsetEntry, OffsetTable};
use records::{group_record, offset_record, OffsetValue, OFFSETS_LOG_NAME};
use sink::{append_chunked, record_bytes, Appended, RecordSink};
use state::{GroupEvent, GroupTable, Now};

/// Coordinator settings.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// Smallest session timeout a member may ask for (else `InvalidSessionTimeout`).
    pub min_session_timeout_ms: i32,
    /// Largest session timeout a member may ask for.
    pub max_session_timeout_ms: i32,
    /// Delay of the first rebalance of an empty group, to let members arrive together.
    pub initial_rebalance_delay_ms: u64,
    /// Members per group (else `GroupMaxSizeReached`).
    pub max_group_size: usize,
    /// Committed offsets of empty groups older than this are expired.
    pub offsets_retention_ms: i64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 0,
            max_group_size: 1000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// A JoinGroup request.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a new member.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: String,
    /// (protocol name, member metadata) in the member's preference order.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// JoinGroup v4+: a new member first gets `MemberIdRequired` with its id.
    pub require_known_member_id: bool,
    pub client_id: String,
    pub client_host: String,
}

/// One member as seen by the leader in a JoinGroup response.
#[derive(Clone, Debug)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// A JoinGroup response.
#[derive(Clone, Debug)]
pub struct JoinResponse {
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// All members with their metadata for the selected protocol; only for the leader.
    pub members: Vec<JoinedMember>,
}

/// A SyncGroup request.
#[derive(Clone, Debug)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// (member id, assignment), from the leader only.
    pub assignments: Vec<(String, Bytes)>,
}

/// A SyncGroup response.
#[derive(Clone, Debug)]
pub struct SyncResponse {
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// One offset to commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// One committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

/// A group in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    /// Kafka state name: Empty, PreparingRebalance, CompletingRebalance, Stable, Dead.
    pub state: &'static str,
}

/// A described member.
#[derive(Clone, Debug)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A described group.
#[derive(Clone, Debug)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// How the offsets log reaches disk. Asynchronous with a short interval, as Kafka does for
/// `__consumer_offsets` (it never fsyncs per commit): an append is in the page cache when
/// the commit is answered, so a crash of the broker process loses nothing, and an OS
/// crash loses at most the last interval of commits — which only makes consumers re-read
/// a few messages (at-least-once), never skip any. A per-commit fsync would put the disk
/// on the path of every auto-commit of every consumer for no gain in that guarantee.
const OFFSETS_FLUSH: FlushPolicy = FlushPolicy::Async {
    interval_ms: 100,
    bytes: 1 << 20,
};
/// Groups whose deadlines are handled per step of the background task (each is bounded
/// by the group size), so one step never holds the lock for long.
const TIMER_GROUPS_PER_STEP_MAX: usize = 256;
/// Interval of the pass that expires old offsets and forgets empty groups (Kafka's
/// `offsets.retention.check.interval.ms`).
const CLEANUP_INTERVAL_MS: u64 = 10 * 60 * 1000;
/// Groups examined per step of that pass.
const CLEANUP_GROUPS_PER_STEP_MAX: usize = 512;
/// Longest sleep of the background task when nothing is due.
const IDLE_WAKE_MS: u64 = 60 * 1000;
/// The offsets log is rewritten as a snapshot of the live state (and everything before
/// it dropped) once it holds this many bytes more than the last snapshot...
const SNAPSHOT_MIN_BYTES: u64 = 64 << 20;
/// ...and at least this many times the size of the live state. Only whole segments
/// (64 MiB for internal logs) can be dropped, hence the minimum; the factor keeps the
/// cost of snapshots proportional to the commits that made them necessary.
const SNAPSHOT_GROWTH_FACTOR: u64 = 4;
/// Largest metadata string of a committed offset (Kafka's `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Committed offsets one group may hold (memory bound against commits to made-up topics).
pub const OFFSETS_PER_GROUP_MAX: usize = 100_000;

/// The group coordinator (one per node; a single node coordinates every group).
pub struct GroupCoordinator {
    inner: Arc<Inner>,
    /// Dropping it (or sending `true`) stops the background task.
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    settings: GroupSettings,
    shared: Mutex<Shared>,
    /// Only written under the `shared` lock, so the log order is the order of changes.
    sink: Box<dyn RecordSink>,
    /// Wakes the background task when a new (maybe earlier) deadline exists.
    wake: Notify,
    /// Origin of the monotonic clock (tokio's, so tests can pause time).
    epoch: tokio::time::Instant,
    /// [`SNAPSHOT_MIN_BYTES`], smaller in tests.
    snapshot_min_bytes: u64,
}

struct Shared {
    table: GroupTable,
    offsets: OffsetTable,
    closed: bool,
    cleanup: Cleanup,
    /// Bytes in the offsets log since (and including) the last snapshot.
    log_bytes: u64,
    /// Bytes of the live state when it was last measured (replay or snapshot).
    live_bytes: u64,
}

impl Shared {
    /// Every live record: group metadata and committed offsets.
    fn snapshot_records(&self) -> Vec<sink::Record> {
        let groups = self
            .table
            .metadata_snapshot()
            .into_iter()
            .map(|(group_id, value)| group_record(&group_id, Some(&value)));
        let offsets = self
            .offsets
            .iter()
            .map(|(group_id, topic, partition, entry)| {
                let value = OffsetValue {
                    offset: entry.offset,
                    leader_epoch: entry.leader_epoch,
                    metadata: entry.metadata.clone(),
                    commit_timestamp_ms: entry.commit_timestamp_ms,
                };
                offset_record(group_id, topic, partition, Some(&value))
            });
        groups.chain(offsets).collect()
    }
}

/// Progress of the periodic offset-expiry pass.
struct Cleanup {
    next_pass_ms: u64,
    /// `Some` while a pass is under way: the last group examined (`""` before the first).
    cursor: Option<String>,
}

impl GroupCoordinator {
    /// Opens the coordinator: replays committed offsets from `__consumer_offsets` and
    /// starts the session-expiry task (needs a tokio runtime).
    pub fn open(store: Arc<Store>, settings: GroupSettings) -> Result<GroupCoordinator> {
        let (log, records) = InternalLog::open(&store, OFFSETS_LOG_NAME, OFFSETS_FLUSH)?;
        let records = records.into_iter().map(|record| (record.key, record.value));
        GroupCoordinator::with_sink(Box::new(log), records, settings)
    }

    /// Opens a coordinator over any record sink, replaying `records` (its previous
    /// content). Needs a tokio runtime.
    pub(crate) fn with_sink(
        sink: Box<dyn RecordSink>,
        records: impl IntoIterator<Item = sink::Record>,
        settings: GroupSettings,
    ) -> Result<GroupCoordinator> {
        GroupCoordinator::with_sink_and_snapshot_size(sink, records, settings, SNAPSHOT_MIN_BYTES)
    }

    /// [`GroupCoordinator::with_sink`] with another minimum log growth between snapshots.
    fn with_sink_and_snapshot_size(
        sink: Box<dyn RecordSink>,
        records: impl IntoIterator<Item = sink::Record>,
        settings: GroupSettings,
        snapshot_min_bytes: u64,
    ) -> Result<GroupCoordinator> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| CoreError::CoordinatorNotAvailable)?;
        let epoch = tokio::time::Instant::now();
        let now = Now {
            mono_ms: 0,
            wall_ms: crate::internal::now_ms(),
        };
        let mut log_bytes = 0;
        let replayed = records::replay(records.into_iter().inspect(|record| {
            log_bytes += record_bytes(record);
        }));
        let mut table = GroupTable::new(settings.clone());
        for (group_id, value) in &replayed.groups {
            table.restore(group_id, Some(value), now);
        }
        for group_id in replayed.offsets.group_ids() {
            if !table.contains(group_id) {
                table.restore(group_id, None, now);
            }
        }
        tracing::info!(
            groups = table.len(),
            log_bytes,
            "{OFFSETS_LOG_NAME} replayed"
        );
        let mut shared = Shared {
            table,
            offsets: replayed.offsets,
            closed: false,
            cleanup: Cleanup {
                next_pass_ms: CLEANUP_INTERVAL_MS,
                cursor: None,
            },
            log_bytes,
            live_bytes: 0,
        };
        shared.live_bytes = shared.snapshot_records().iter().map(record_bytes).sum();
        let inner = Arc::new(Inner {
            settings,
            shared: Mutex::new(shared),
            sink,
            wake: Notify::new(),
            epoch,
            snapshot_min_bytes,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = runtime.spawn(run_background(inner.clone(), stop_rx));
        Ok(GroupCoordinator {
            inner,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Flushes the offsets log and stops background work.
    pub async fn shutdown(&self) -> Result<()> {
        {
            let mut shared = self.inner.shared.lock();
            shared.closed = true;
            shared.table.close();
        }
        let _ = self.stop.send(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            // The task only ends by this signal; a panic in it has been logged by tokio.
            let _ = task.await;
        }
        self.inner.sink.flush()
    }

    /// JoinGroup: completes when the rebalance completes (or with an error).
    pub async fn join(&self, request: JoinRequest) -> Result<JoinResponse> {
        let (reply, answer) = oneshot::channel();
        {
            let now = self.inner.now();
            let mut shared = self.inner.lock_open()?;
            shared.table.join(request, now, reply);
            self.inner.persist_events(&mut shared, now);
        }
        self.inner.wake.notify_one();
        answer
            .await
            .unwrap_or(Err(CoreError::CoordinatorNotAvailable))
    }

    /// SyncGroup: followers wait for the leader's assignment.
    pub async fn sync(&self, request: SyncRequest) -> Result<SyncResponse> {
        let (reply, answer) = oneshot::channel();
        {
            let now = self.inner.now();
            let mut shared = self.inner.lock_open()?;
            shared.table.sync(request, now, reply);
            self.inner.persist_events(&mut shared, now);
        }
        self.inner.wake.notify_one();
        answer
            .await
            .unwrap_or(Err(CoreError::CoordinatorNotAvailable))
    }

    /// Heartbeat: `RebalanceInProgress` tells the member to rejoin.
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<()> {
        let now = self.inner.now();
        let mut shared = self.inner.lock_open()?;
        shared
            .table
            .heartbeat(group_id, generation_id, member_id, group_instance_id, now)
    }

    /// LeaveGroup for one or more members; per-member results.
    pub fn leave(
        &self,
        group_id: &str,
        members: Vec<(String, Option<String>)>,
    ) -> Result<Vec<(String, Result<()>)>> {
        let results = {
            let now = self.inner.now();
            let mut shared = self.inner.lock_open()?;
            let results = shared.table.leave(group_id, members, now)?;
            self.inner.persist_events(&mut shared, now);
            results
        };
        self.inner.wake.notify_one();
        Ok(results)
    }

    /// OffsetCommit. `generation_id = -1` with an empty member id is a commit without
    /// membership (simple consumer / admin), allowed when the group is empty. Per-offset
    /// results.
    ///
    /// An error that concerns the whole request (unknown member, illegal generation,
    /// rebalance in progress, storage failure) is returned as `Err` and applies to every
    /// partition; per-offset errors (metadata too large, too many offsets) are in the list.
    /// The answer comes once the offsets are in the offsets log.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        offsets: Vec<CommitOffset>,
    ) -> Result<Vec<Result<()>>> {
        let (results, appended) = {
            let now = self.inner.now();
            let mut shared = self.inner.lock_open()?;
            shared.table.validate_commit(
                group_id,
                generation_id,
                member_id,
                group_instance_id,
                now,
            )?;
            let mut results = Vec::with_capacity(offsets.len());
            let mut accepted = Vec::with_capacity(offsets.len());
            let mut count = shared.offsets.count(group_id);
            for offset in offsets {
                if offset
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX)
                {
                    results.push(Err(CoreError::MessageTooLarge(format!(
                        "offset metadata is longer than {OFFSET_METADATA_BYTES_MAX} bytes"
                    ))));
                    continue;
                }
                if !shared
                    .offsets
                    .contains(group_id, &offset.topic, offset.partition)
                {
                    if count >= OFFSETS_PER_GROUP_MAX {
                        results.push(Err(CoreError::PolicyViolation(format!(
                            "group {group_id} has {OFFSETS_PER_GROUP_MAX} committed offsets already"
                        ))));
                        continue;
                    }
                    count += 1;
                }
                results.push(Ok(()));
                accepted.push(offset);
            }
            let values: Vec<(CommitOffset, OffsetValue)> = accepted
                .into_iter()
                .map(|offset| {
                    let value = OffsetValue {
                        offset: offset.offset,
                        leader_epoch: offset.leader_epoch,
                        metadata: offset.metadata.clone(),
                        commit_timestamp_ms: now.wall_ms,
                    };
                    (offset, value)
                })
                .collect();
            let records = values
                .iter()
                .map(|(o, value)| offset_record(group_id, &o.topic, o.partition, Some(value)))
                .collect();
            // Log first, memory second: what a fetch sees is always in the log.
            let appended = self.inner.append(&mut shared, records, now)?;
            for (offset, value) in values {
                shared.offsets.insert(
                    group_id,
                    offset.topic,
                    offset.partition,
                    OffsetEntry {
                        offset: value.offset,
                        leader_epoch: value.leader_epoch,
                        metadata: value.metadata,
                        commit_timestamp_ms: value.commit_timestamp_ms,
                    },
                );
            }
            self.inner.persist_events(&mut shared, now);
            if self.inner.needs_snapshot(&shared) {
                self.inner.wake.notify_one();
            }
            (results, appended)
        };
        for batch in appended {
            batch.wait().await?;
        }
        Ok(results)
    }

    /// OffsetFetch: `None` = every committed offset of the group.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, u32)]>,
    ) -> Result<Vec<CommittedOffset>> {
        let shared = self.inner.lock_open()?;
        Ok(shared.offsets.fetch(group_id, partitions))
    }

    /// Groups known to the coordinator (with members or committed offsets).
    pub fn list_groups(&self) -> Vec<GroupListing> {
        self.inner.shared.lock().table.list()
    }

    /// DescribeGroups for one group; an unknown group is described as `Dead`.
    pub fn describe_group(&self, group_id: &str) -> GroupDescription {
        self.inner.shared.lock().table.describe(group_id)
    }

    /// DeleteGroups: only empty groups; removes their committed offsets.
    pub async fn delete_group(&self, group_id: &str) -> Result<()> {
        let appended = {
            let now = self.inner.now();
            let mut shared = self.inner.lock_open()?;
            shared.table.check_deletable(group_id)?;
            let mut records: Vec<sink::Record> = shared
                .offsets
                .fetch(group_id, None)
                .iter()
                .map(|o| offset_record(group_id, &o.topic, o.partition, None))
                .collect();
            records.push(group_record(group_id, None));
            let appended = self.inner.append(&mut shared, records, now)?;
            shared.offsets.remove_group(group_id);
            shared.table.remove_group(group_id);
            tracing::info!(group = group_id, "group deleted");
            appended
        };
        for batch in appended {
            batch.wait().await?;
        }
        Ok(())
    }

    /// Removes committed offsets of a deleted topic from every group.
    pub async fn remove_topic_offsets(&self, topic: &str) -> Result<()> {
        let appended = {
            let now = self.inner.now();
            let mut shared = self.inner.shared.lock();
            let keys = shared.offsets.topic_keys(topic);
            if keys.is_empty() {
                return Ok(());
            }
            let records = keys
                .iter()
                .map(|(group, partition)| offset_record(group, topic, *partition, None))
                .collect();
            let appended = self.inner.append(&mut shared, records, now)?;
            for (group, partition) in &keys {
                shared.offsets.remove(group, topic, *partition);
            }
            appended
        };
        for batch in appended {
            batch.wait().await?;
        }
        Ok(())
    }

    /// The coordinator's settings.
    pub fn settings(&self) -> &GroupSettings {
        &self.inner.settings
    }
}

impl Inner {
    fn now(&self) -> Now {
        Now {
            mono_ms: self.epoch.elapsed().as_millis() as u64,
            wall_ms: crate::internal::now_ms(),
        }
    }

    fn lock_open(&self) -> Result<parking_lot::MutexGuard<'_, Shared>> {
        let shared = self.shared.lock();
        if shared.closed {
            return Err(CoreError::CoordinatorNotAvailable);
        }
        Ok(shared)
    }

    /// Appends records to the offsets log (callers hold the lock, so the log order is the
    /// order of the changes).
    fn append(
        &self,
        shared: &mut Shared,
        records: Vec<sink::Record>,
        now: Now,
    ) -> Result<Vec<Appended>> {
        let bytes: u64 = records.iter().map(record_bytes).sum();
        let appended = append_chunked(&*self.sink, records, now.wall_ms)?;
        shared.log_bytes = shared.log_bytes.saturating_add(bytes);
        Ok(appended)
    }

    fn needs_snapshot(&self, shared: &Shared) -> bool {
        let threshold = self
            .snapshot_min_bytes
            .max(shared.live_bytes.saturating_mul(SNAPSHOT_GROWTH_FACTOR));
        shared.log_bytes > threshold
    }

    /// Rewrites the live state at the end of the offsets log and drops what came before,
    /// once enough superseded records have piled up: the log (and the replay at startup)
    /// stays proportional to the live state, not to the number of commits ever made.
    fn maybe_snapshot(&self, shared: &mut Shared, now: Now) {
        if !self.needs_snapshot(shared) {
            return;
        }
        let start = self.sink.end_offset();
        let records = shared.snapshot_records();
        let bytes: u64 = records.iter().map(record_bytes).sum();
        let written = append_chunked(&*self.sink, records, now.wall_ms)
            // The old records may only go once the snapshot is on disk.
            .and_then(|_| self.sink.flush())
            .and_then(|()| self.sink.delete_before(start));
        match written {
            Ok(()) => {
                tracing::info!(
                    before_bytes = shared.log_bytes,
                    after_bytes = bytes,
                    "{OFFSETS_LOG_NAME}: snapshot written, older records dropped"
                );
                shared.log_bytes = bytes;
                shared.live_bytes = bytes;
            }
            Err(error) => {
                // The log still replays to the right state (the snapshot, complete or
                // not, repeats live values); try again after as much growth again.
                tracing::warn!(%error, "{OFFSETS_LOG_NAME}: snapshot failed");
                shared.live_bytes = shared.live_bytes.max(bytes);
                shared.log_bytes = bytes;
            }
        }
    }

    /// Writes the group metadata changes of the last operation (under the lock, so that
    /// the log keeps their order). Not waited for: losing one only loses a generation
    /// number and the time a group became empty.
    fn persist_events(&self, shared: &mut Shared, now: Now) {
        let records: Vec<sink::Record> = shared
            .table
            .take_events()
            .into_iter()
            .map(|event| match event {
                GroupEvent::Metadata { group_id, value } => group_record(&group_id, Some(&value)),
            })
            .collect();
        if records.is_empty() {
            return;
        }
        if let Err(error) = self.append(shared, records, now) {
            tracing::warn!(%error, "{OFFSETS_LOG_NAME}: could not write group metadata");
        }
    }

    /// One step of background work: due deadlines, then a slice of the cleanup pass.
    /// Returns when the next step is due (monotonic ms).
    fn step(&self) -> u64 {
        let now = self.now();
        let mut shared = self.shared.lock();
        if shared.closed {
            return now.mono_ms.saturating_add(IDLE_WAKE_MS);
        }
        let more_due = shared.table.tick(now, TIMER_GROUPS_PER_STEP_MAX);
        self.cleanup_step(&mut shared, now);
        self.persist_events(&mut shared, now);
        self.maybe_snapshot(&mut shared, now);
        if more_due || shared.cleanup.cursor.is_some() {
            return now.mono_ms;
        }
        let next = shared.table.next_deadline_ms().unwrap_or(u64::MAX);
        next.min(shared.cleanup.next_pass_ms)
            .min(now.mono_ms.saturating_add(IDLE_WAKE_MS))
    }

    /// Expires committed offsets past the retention and forgets empty groups without
    /// offsets, a slice of groups at a time.
    fn cleanup_step(&self, shared: &mut Shared, now: Now) {
        if shared.cleanup.cursor.is_none() {
            if now.mono_ms < shared.cleanup.next_pass_ms {
                return;
            }
            shared.cleanup.cursor = Some(String::new());
            shared.cleanup.next_pass_ms = now.mono_ms.saturating_add(CLEANUP_INTERVAL_MS);
        }
        let after = shared.cleanup.cursor.clone().filter(|c| !c.is_empty());
        let group_ids = shared
            .table
            .group_ids_after(after.as_deref(), CLEANUP_GROUPS_PER_STEP_MAX);
        shared.cleanup.cursor = if group_ids.len() < CLEANUP_GROUPS_PER_STEP_MAX {
            None
        } else {
            group_ids.last().cloned()
        };
        let retention_ms = self.settings.offsets_retention_ms;
        let mut records = Vec::new();
        let mut expired = Vec::new();
        let mut forgotten = Vec::new();
        for group_id in group_ids {
            let base = shared.table.expiry_base(&group_id, now);
            let partitions = shared
                .offsets
                .expired(&group_id, base, retention_ms, now.wall_ms);
            let remaining = shared.offsets.count(&group_id) - partitions.len();
            for (topic, partition) in partitions {
                records.push(offset_record(&group_id, &topic, partition, None));
                expired.push((group_id.clone(), topic, partition));
            }
            if remaining == 0 && shared.table.is_idle(&group_id) {
                records.push(group_record(&group_id, None));
                forgotten.push(group_id);
            }
        }
        if records.is_empty() {
            return;
        }
        // Tombstones first: if they cannot be written, memory keeps the offsets too.
        if let Err(error) = self.append(shared, records, now) {
            tracing::warn!(%error, "{OFFSETS_LOG_NAME}: could not write expired offsets");
            return;
        }
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), "expired committed offsets");
        }
        for (group_id, topic, partition) in expired {
            shared.offsets.remove(&group_id, &topic, partition);
        }
        for group_id in forgotten {
            tracing::debug!(group = %group_id, "forgetting empty group");
            shared.table.remove_group(&group_id);
        }
    }
}

/// The background task: sleeps until the next deadline (or a wake-up) and runs a step.
async fn run_background(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        let next_ms = inner.step();
        // A step is bounded but steps can follow each other (a long cleanup pass): let
        // the requests that wait for the lock in.
        tokio::task::yield_now().await;
        let at = inner.epoch + Duration::from_millis(next_ms);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = inner.wake.notified() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod storage_tests;
