//! The classic (and quorum) queue engine: priority-level logs plus the cursor.
//!
//! Per level: the mark-delete position and settled ranges above it ([`LevelCursor`]), the
//! unacknowledged deliveries (kept with their message, so a requeue or dead-lettering needs
//! no read), the requeued messages (delivered again first, in offset order) and a bounded
//! read-ahead buffer of decoded messages at the read position. Everything else stays in
//! the log, so memory is bounded by unacked + requeued + read-ahead + settled ranges,
//! never by the backlog. One mutex guards the state; the append of an enqueue happens
//! under it, so offsets, counts and the read-ahead stay consistent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ferry_storage::batch::{decode_records, split_batches};
use ferry_storage::{FlushPolicy, LogConfig, LogId, PartitionLog, Store};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::acklog::{self, LevelCursor, ACK_RECORDS_PER_SNAPSHOT};
use super::{
    ConsumerEnd, ConsumerShared, DeadLetterReason, Delivery, DeliveryId, EnqueueOutcome, Overflow,
    QueueSettings, QueueType,
};
use crate::internal::now_ms;
use crate::message::{message_from_record, record_is_persistent, FieldTable, FieldValue, Message};
use crate::mq::{MqError, MqResult};

/// Most decoded messages kept ahead of the read position per level.
const READ_AHEAD_MESSAGES: usize = 256;
/// Bytes read from the log per read-ahead step (with `READ_AHEAD_MESSAGES`, what one
/// queue with a backlog holds in memory).
const READ_AHEAD_BYTES: u32 = 64 << 10;
/// Bytes read per step by the recovery scan.
const RECOVERY_READ_BYTES: u32 = 4 << 20;
/// Queue logs roll segments at this size, so consumed messages free disk in these steps.
#[cfg(not(test))]
const QUEUE_SEGMENT_BYTES: u64 = 64 << 20;
/// Small segments in tests, to see consumed ones deleted.
#[cfg(test)]
const QUEUE_SEGMENT_BYTES: u64 = 1 << 20;
/// Largest stored message batch (RabbitMQ's default `max_message_size` is 128 MiB).
const QUEUE_BATCH_BYTES_MAX: u32 = (128 << 20) + (64 << 10);
/// Most deliveries a consumer is handed ahead of taking them: a no-ack consumer's standing
/// window, and the most credit an acknowledging consumer's adapter grants at once (less
/// when its prefetch limit says so). Deliveries waiting in a consumer's mailbox keep the
/// round-robin between consumers strict while their delivery tasks are busy writing.
pub const CONSUMER_WINDOW: u32 = 32;
/// Flush interval of a non-durable queue's log (its data never needs to survive).
const TRANSIENT_FLUSH_MS: u64 = 5_000;
/// Least time between two deletions of consumed segments of one queue.
const TRUNCATE_INTERVAL_MS: i64 = 1_000;
/// Settle records are written at most this often while acks keep coming (each waits for
/// the next write; a crash may redeliver them, as with any unflushed ack)…
const ACK_COALESCE_MS: i64 = 10;
/// …unless this many ranges are pending.
const ACK_COALESCE_RANGES: usize = 256;
/// Longest sleep of a queue's maintenance task (segment deletion, ack-log snapshots).
pub(crate) const MAINTENANCE_INTERVAL_MS: i64 = 1_000;
/// Publisher back-pressure: while a queue with consumers holds more ready messages than
/// this, and its consumers would take them all within [`FLOW_DRAIN_MS`] at their current
/// pace, the confirms of messages published to it wait for the consumers to catch up
/// (RabbitMQ's credit flow has the same effect). A publisher with a bounded confirm window
/// then runs at the consumers' pace instead of building a backlog that only adds latency.
pub const FLOW_READY_LIMIT: u64 = 256;
/// Back-pressure applies only while the consumers would drain the ready messages within
/// this time. Slow or stuck consumers (a work queue being filled faster than its workers
/// run, or a consumer at its prefetch limit) never slow publishers down: a backlog there
/// is what the queue is for, as it is without consumers.
pub const FLOW_DRAIN_MS: u64 = 500;
/// Length of the window over which the consumers' pace is measured.
const FLOW_RATE_WINDOW_MS: i64 = 100;

/// A message out of the log, with what the cursor needs to know about it.
#[derive(Clone, Debug)]
struct Held {
    offset: i64,
    message: Message,
    /// When it was enqueued (its record timestamp): TTLs count from here.
    enqueued_ms: i64,
    redelivered: bool,
    /// Times it was returned to the queue (quorum queues' `x-delivery-count`).
    returns: u32,
    /// Body bytes, as `x-max-length-bytes` counts them.
    size: u64,
}

/// One priority level.
#[derive(Debug)]
struct Level {
    log: Arc<PartitionLog>,
    cursor: LevelCursor,
    /// Next offset to read into `buffer`.
    read_pos: i64,
    /// Offsets below were possibly delivered before the last restart.
    redelivered_below: i64,
    /// Highest delivered offset + 1 (persisted as the cursor's read position).
    delivered_below: i64,
    unacked: HashMap<i64, Held>,
    requeued: BTreeMap<i64, Held>,
    buffer: VecDeque<Held>,
    /// Settled ranges not yet written to the ack log.
    pending: Vec<(i64, i64)>,
    last_truncate_ms: i64,
}

impl Level {
    fn new(log: Arc<PartitionLog>, cursor: LevelCursor) -> Level {
        let mark = cursor.mark_delete;
        Level {
            log,
            redelivered_below: cursor.read_pos,
            delivered_below: cursor.read_pos,
            cursor,
            read_pos: mark,
            unacked: HashMap::new(),
            requeued: BTreeMap::new(),
            buffer: VecDeque::new(),
            pending: Vec::new(),
            last_truncate_ms: 0,
        }
    }

    fn settle(&mut self, start: i64, end: i64) {
        self.cursor.settle(start, end);
        match self.pending.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => self.pending.push((start, end)),
        }
    }

    /// Fills the read-ahead buffer from the log (when empty).
    fn refill(&mut self) -> MqResult<()> {
        let end = self.log.log_end_offset();
        while self.buffer.is_empty() && self.read_pos < end {
            let read = self.log.read(self.read_pos, READ_AHEAD_BYTES, end)?;
            if read.records.is_empty() || read.next_offset <= self.read_pos {
                break;
            }
            for (header, batch) in split_batches(&read.records, false)? {
                for record in decode_records(&batch)? {
                    let offset = header.base_offset + i64::from(record.offset_delta);
                    if offset < self.read_pos
                        || offset < self.cursor.mark_delete
                        || self.cursor.settled.contains(offset)
                    {
                        continue;
                    }
                    let message = message_from_record(&record)?;
                    let size = message.body_len();
                    self.buffer.push_back(Held {
                        offset,
                        message,
                        enqueued_ms: header.base_timestamp + record.timestamp_delta,
                        redelivered: offset < self.redelivered_below,
                        returns: 0,
                        size,
                    });
                }
            }
            self.read_pos = read.next_offset;
        }
        Ok(())
    }

    /// The next ready message of this level (requeued first), without removing it.
    fn peek(&mut self) -> MqResult<Option<&Held>> {
        if !self.requeued.is_empty() {
            return Ok(self.requeued.values().next());
        }
        if self.buffer.is_empty() {
            self.refill()?;
        }
        Ok(self.buffer.front())
    }

    /// Removes what [`Level::peek`] returned.
    fn pop(&mut self) -> Option<Held> {
        match self.requeued.pop_first() {
            Some((_, held)) => Some(held),
            None => self.buffer.pop_front(),
        }
    }
}

/// A registered consumer, as the queue sees it.
#[derive(Debug)]
struct Slot {
    id: u64,
    priority: i32,
    no_ack: bool,
    shared: Arc<ConsumerShared>,
    /// Deliveries handed over and not yet taken by `next_delivery`, oldest first.
    mailbox: VecDeque<Delivery>,
    /// Deliveries it may still be handed: what its adapter granted as prefetch allows
    /// ([`Classic::grant`]); a no-ack consumer's is a standing window of
    /// [`CONSUMER_WINDOW`] less its mailbox.
    credit: u32,
    /// When it was last handed a message (a sequence number): among consumers of equal
    /// priority with credit, the least recently served comes next (round-robin).
    served: u64,
}

/// Why the queue asks its vhost to delete it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// `auto_delete` and its last consumer went.
    AutoDelete,
    /// `x-expires`: unused for that long.
    Expired,
}

#[derive(Debug)]
struct State {
    levels: Vec<Level>,
    ready_count: u64,
    ready_bytes: u64,
    consumers: Vec<Slot>,
    next_seq: u64,
    /// Last consumer activity, `basic.get` or redeclare (`x-expires`).
    last_used_ms: i64,
    had_consumer: bool,
    /// A deletion to ask the vhost for, and whether it was asked already.
    delete_due: Option<DeleteReason>,
    delete_asked: bool,
    ack_records_since_snapshot: u64,
    /// Whether a ready message may carry a TTL (the maintenance task then looks at the
    /// heads; otherwise it leaves the read-ahead alone).
    may_expire: bool,
    /// Settled ranges wait for the maintenance task to write them.
    persist_due: bool,
    /// When settle records were last written.
    persisted_ms: i64,
    /// Whether the maintenance task knows of a deadline (an enqueue with a TTL wakes it
    /// only when not).
    timer_armed: bool,
    deleted: bool,
    /// The consumers' pace, for back-pressure: messages handed out in the current window,
    /// when it started, and the rate of the last complete window (messages per second).
    pace: Pace,
}

/// The consumers' recent pace (messages handed out per second).
#[derive(Debug, Default)]
struct Pace {
    window_start_ms: i64,
    in_window: u64,
    last_rate: u64,
}

impl Pace {
    /// Counts one message handed out at `now`.
    fn count(&mut self, now: i64) {
        let elapsed = now - self.window_start_ms;
        if elapsed >= FLOW_RATE_WINDOW_MS {
            self.last_rate = self.in_window * 1000 / elapsed.max(1) as u64;
            self.window_start_ms = now;
            self.in_window = 0;
        }
        self.in_window += 1;
    }

    /// Messages per second at `now`: the last complete window's, or — once the current
    /// window is over — the current one's, so a pace that stopped reads as zero.
    fn rate(&self, now: i64) -> u64 {
        let elapsed = now - self.window_start_ms;
        if elapsed >= FLOW_RATE_WINDOW_MS {
            self.in_window * 1000 / elapsed.max(1) as u64
        } else {
            self.last_rate
        }
    }
}

/// Dead letters produced under the lock, sent after it is released (the sink routes them,
/// possibly back into this queue).
pub(crate) type DeadLetters = Vec<(Message, DeadLetterReason)>;

/// The classic queue engine.
#[derive(Debug)]
pub(crate) struct Classic {
    state: Mutex<State>,
    ack_log: Option<Arc<PartitionLog>>,
    /// Every log of the queue (levels, then the ack log), for deletion.
    log_ids: Vec<LogId>,
    /// RabbitMQ's NOT_FOUND text for this queue once deleted.
    missing: String,
    /// Wakes the queue's maintenance task.
    wake: Arc<Notify>,
    /// A quorum queue: deliveries carry `x-delivery-count`, `x-delivery-limit` applies.
    quorum: bool,
    /// Quorum `x-delivery-limit`: a message returned more often is dead-lettered.
    delivery_limit: Option<u64>,
    /// Woken when the queue falls back under [`FLOW_READY_LIMIT`] (or loses its consumers,
    /// or is deleted): publishers held by back-pressure look again.
    flow: Notify,
    /// Publishers in [`Classic::flow_wait`]: `flow` is notified only when there are any,
    /// as `Notify::notify_waiters` takes a lock even with no one waiting and the delivery
    /// path would otherwise pay for it on every message.
    flow_waiters: AtomicUsize,
}

/// Counts a publisher in [`Classic::flow_wait`] for as long as it lives, so the count also
/// drops when the waiting future is cancelled.
struct FlowWaiter<'a>(&'a AtomicUsize);

impl<'a> FlowWaiter<'a> {
    fn register(count: &'a AtomicUsize) -> FlowWaiter<'a> {
        // Relaxed suffices: the waiter counts itself before it takes the state lock to
        // check, and notifiers read the count under that lock (see `wake_publishers`).
        count.fetch_add(1, Ordering::Relaxed);
        FlowWaiter(count)
    }
}

impl Drop for FlowWaiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The expiry time of a held message: enqueue time plus the smaller of the queue's and the
/// message's TTL.
fn expires_at(settings: &QueueSettings, held: &Held) -> Option<i64> {
    let per_message = held
        .message
        .properties
        .expiration
        .as_deref()
        .and_then(|e| e.trim().parse::<u64>().ok());
    let ttl = match (settings.message_ttl_ms, per_message) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(
        held.enqueued_ms
            .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
    )
}

/// A 128-bit FNV-1a hash of the queue's identity, in hex: the name of its storage logs
/// (vhost and queue names may hold characters a directory name may not).
pub fn storage_key(vhost: &str, queue: &str) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut hash = OFFSET;
    for byte in vhost.bytes().chain([0]).chain(queue.bytes()) {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    format!("{hash:032x}")
}

/// Topic prefix of queue message logs (`__ferry_q.<key>-<level>`).
pub const QUEUE_LOG_PREFIX: &str = "__ferry_q.";
/// Topic prefix of queue ack logs (`__ferry_qa.<key>-0`).
pub const ACK_LOG_PREFIX: &str = "__ferry_qa.";

/// The storage key of a queue log or ack log topic, if it is one.
pub fn storage_key_of_log(topic: &str) -> Option<&str> {
    topic
        .strip_prefix(QUEUE_LOG_PREFIX)
        .or_else(|| topic.strip_prefix(ACK_LOG_PREFIX))
}

impl Classic {
    /// Opens or recovers the queue's logs.
    pub fn open(
        store: &Store,
        vhost: &str,
        name: &str,
        settings: &QueueSettings,
        now: i64,
        wake: Arc<Notify>,
    ) -> MqResult<Classic> {
        let key = storage_key(vhost, name);
        let level_count = settings.max_priority.map_or(1, |p| usize::from(p) + 1);
        let mut log_ids: Vec<LogId> = (0..level_count as u32)
            .map(|partition| LogId {
                topic: format!("{QUEUE_LOG_PREFIX}{key}"),
                partition,
            })
            .collect();
        let ack_id = LogId {
            topic: format!("{ACK_LOG_PREFIX}{key}"),
            partition: 0,
        };
        // Logs of this name that this declaration does not use: a non-durable queue never
        // recovers anything, and no queue keeps levels it no longer has.
        let candidates = (0..=u32::from(u8::MAX))
            .map(|partition| LogId {
                topic: log_ids[0].topic.clone(),
                partition,
            })
            .chain([ack_id.clone()]);
        for id in candidates {
            let used = settings.durable && (log_ids.contains(&id) || id == ack_id);
            if !used && store.log(&id).is_some() {
                store.remove_log(&id)?;
            }
        }
        let config = LogConfig {
            segment_bytes_max: QUEUE_SEGMENT_BYTES,
            segment_ms_max: i64::MAX as u64,
            retention_ms: None,
            retention_bytes: None,
            flush: if settings.durable {
                FlushPolicy::Sync
            } else {
                FlushPolicy::Async {
                    interval_ms: TRANSIENT_FLUSH_MS,
                    bytes: QUEUE_SEGMENT_BYTES,
                }
            },
            batch_bytes_max: QUEUE_BATCH_BYTES_MAX,
            ..LogConfig::default()
        };
        let logs = log_ids
            .iter()
            .map(|id| store.open_log(id, config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let (ack_log, cursors, clean) = if settings.durable {
            let log = store.open_log(&ack_id, acklog::ack_log_config())?;
            let (cursors, clean) = acklog::replay(&log, level_count)?;
            (Some(log), cursors, clean)
        } else {
            (None, vec![LevelCursor::default(); level_count], true)
        };
        if ack_log.is_some() {
            log_ids.push(ack_id);
        }
        let mut state = State {
            levels: Vec::with_capacity(level_count),
            ready_count: 0,
            ready_bytes: 0,
            consumers: Vec::new(),
            next_seq: 0,
            last_used_ms: now,
            had_consumer: false,
            delete_due: None,
            delete_asked: false,
            ack_records_since_snapshot: 0,
            timer_armed: false,
            persist_due: false,
            persisted_ms: 0,
            may_expire: settings.message_ttl_ms.is_some(),
            deleted: false,
            pace: Pace::default(),
        };
        for (log, mut cursor) in logs.into_iter().zip(cursors) {
            let (start, end) = (log.log_start_offset(), log.log_end_offset());
            // The ack state may be ahead of a log that lost an unflushed tail, or behind
            // its start: clamp it to what is there.
            cursor.mark_delete = cursor.mark_delete.clamp(start, end);
            cursor.settled.remove_below(cursor.mark_delete);
            cursor.settled.remove_from(end);
            // After a crash the persisted read position may lag: flag every recovered
            // message redelivered rather than miss one that was delivered.
            cursor.read_pos = if clean { cursor.read_pos.min(end) } else { end };
            let mut level = Level::new(log, cursor);
            let (count, bytes) = recover_level(&mut level)?;
            // Recovered messages may carry a per-message expiration.
            state.may_expire |= count > 0;
            state.ready_count += count;
            state.ready_bytes += bytes;
            state.levels.push(level);
        }
        let classic = Classic {
            state: Mutex::new(state),
            ack_log,
            log_ids,
            missing: format!("no queue '{name}' in vhost '{vhost}'"),
            wake,
            quorum: settings.queue_type == QueueType::Quorum,
            delivery_limit: settings
                .arguments
                .get("x-delivery-limit")
                .and_then(FieldValue::as_integer)
                .and_then(|v| u64::try_from(v).ok()),
            flow: Notify::new(),
            flow_waiters: AtomicUsize::new(0),
        };
        {
            let mut st = classic.state.lock();
            classic.snapshot(&mut st, now, false);
        }
        Ok(classic)
    }

    /// Every storage log of the queue.
    pub fn log_ids(&self) -> &[LogId] {
        &self.log_ids
    }

    /// Writes a snapshot of every level's cursor (`clean` at a clean shutdown) and drops
    /// the ack records before it.
    fn snapshot(&self, st: &mut State, now: i64, clean: bool) {
        let Some(ack_log) = &self.ack_log else {
            return;
        };
        for level in &mut st.levels {
            level.cursor.read_pos = level.delivered_below;
            level.pending.clear();
        }
        let cursors: Vec<&LevelCursor> = st.levels.iter().map(|l| &l.cursor).collect();
        let record = acklog::snapshot_record(&cursors, clean);
        match acklog::append(ack_log, record, now).and_then(|offset| {
            ack_log.delete_records_before(offset)?;
            Ok(())
        }) {
            Ok(()) => st.ack_records_since_snapshot = 0,
            Err(e) => tracing::warn!("queue ack snapshot failed (acks since the last one may be redelivered after a crash): {e}"),
        }
    }

    /// Writes pending settle records, or leaves them to the maintenance task for up to
    /// `ACK_COALESCE_MS` (`force` writes now).
    fn persist(&self, st: &mut State, now: i64, force: bool) {
        let Some(ack_log) = &self.ack_log else {
            for level in &mut st.levels {
                level.pending.clear();
            }
            return;
        };
        let pending: usize = st.levels.iter().map(|l| l.pending.len()).sum();
        if pending == 0 {
            return;
        }
        if !force && pending < ACK_COALESCE_RANGES && now - st.persisted_ms < ACK_COALESCE_MS {
            if !st.persist_due {
                st.persist_due = true;
                self.wake.notify_one();
            }
            return;
        }
        st.persist_due = false;
        st.persisted_ms = now;
        for (index, level) in st.levels.iter_mut().enumerate() {
            if level.pending.is_empty() {
                continue;
            }
            let record = acklog::settle_record(index as u8, level.delivered_below, &level.pending);
            level.pending.clear();
            match acklog::append(ack_log, record, now) {
                Ok(_) => st.ack_records_since_snapshot += 1,
                Err(e) => tracing::warn!(
                    "queue ack record not written (may be redelivered after a restart): {e}"
                ),
            }
        }
    }

    fn check_live(&self, st: &State) -> MqResult<()> {
        if st.deleted {
            return Err(MqError::NotFound(self.missing.clone()));
        }
        Ok(())
    }

    /// Pops the next ready message across levels (highest first), expiring (and
    /// dead-lettering) messages whose TTL ran out on the way.
    fn pop_ready(
        st: &mut State,
        settings: &QueueSettings,
        now: i64,
        dead: &mut DeadLetters,
    ) -> MqResult<Option<(usize, Held)>> {
        for index in (0..st.levels.len()).rev() {
            loop {
                let level = &mut st.levels[index];
                if level.peek()?.is_none() {
                    break;
                }
                let Some(held) = level.pop() else { break };
                st.ready_count = st.ready_count.saturating_sub(1);
                st.ready_bytes = st.ready_bytes.saturating_sub(held.size);
                if expires_at(settings, &held).is_some_and(|at| now >= at) {
                    st.levels[index].settle(held.offset, held.offset + 1);
                    if settings.dead_letters() {
                        dead.push((held.message, DeadLetterReason::Expired));
                    }
                    continue;
                }
                return Ok(Some((index, held)));
            }
        }
        Ok(None)
    }

    /// Records a delivery; `track` keeps it unacked (else it is settled now).
    fn hand_out(
        &self,
        st: &mut State,
        index: usize,
        held: Held,
        track: bool,
        now: i64,
    ) -> Delivery {
        let level = &mut st.levels[index];
        level.delivered_below = level.delivered_below.max(held.offset + 1);
        let mut message = held.message.clone();
        if self.quorum && held.returns > 0 {
            message
                .properties
                .headers
                .get_or_insert_with(FieldTable::new)
                .insert(
                    "x-delivery-count".to_string(),
                    FieldValue::I64(i64::from(held.returns)),
                );
        }
        let delivery = Delivery {
            id: DeliveryId {
                level: index as u8,
                offset: held.offset,
            },
            message,
            redelivered: held.redelivered,
            remaining: st.ready_count,
        };
        if track {
            level.unacked.insert(held.offset, held);
        } else {
            level.settle(held.offset, held.offset + 1);
        }
        st.pace.count(now);
        if st.ready_count <= FLOW_READY_LIMIT {
            self.wake_publishers(st);
        }
        delivery
    }

    /// Whether publishers to this queue should wait: consumers lag more than
    /// [`FLOW_READY_LIMIT`] messages behind but take them fast enough to catch up within
    /// [`FLOW_DRAIN_MS`].
    fn flow_blocked(st: &State, now: i64) -> bool {
        let excess = st.ready_count.saturating_sub(FLOW_READY_LIMIT);
        !st.deleted
            && !st.consumers.is_empty()
            && excess > 0
            && st.ready_count.saturating_mul(1000)
                <= st.pace.rate(now).saturating_mul(FLOW_DRAIN_MS)
    }

    /// Wakes the publishers held by back-pressure, if any, to look again. Takes the state
    /// as proof that the caller holds the lock: a waiter counts itself before it takes the
    /// lock to check, so a count read here, after the change under the same lock, sees
    /// every waiter that checked before the change (those after it see the change).
    fn wake_publishers(&self, _locked: &State) {
        if self.flow_waiters.load(Ordering::Relaxed) > 0 {
            self.flow.notify_waiters();
        }
    }

    /// Publishers currently held in [`Classic::flow_wait`].
    #[cfg(test)]
    pub(crate) fn flow_waiters(&self) -> usize {
        self.flow_waiters.load(Ordering::Relaxed)
    }

    /// Publisher back-pressure: waits while [`Classic::flow_blocked`] holds, rechecking at
    /// least every `recheck` (the consumers' pace may stop without any event), and at most
    /// `max_hold` in all.
    pub async fn flow_wait(&self, recheck: std::time::Duration, max_hold: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + max_hold;
        // Counted, and the notification enabled, before each check: a wake between the
        // check and the wait is never lost.
        let _waiter = FlowWaiter::register(&self.flow_waiters);
        loop {
            let notified = self.flow.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !Self::flow_blocked(&self.state.lock(), now_ms()) {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at((now + recheck).min(deadline), notified).await;
        }
    }

    /// The consumer with credit (and room under its shared limit) to serve next:
    /// single-active-consumer serves only the first registered; otherwise the highest
    /// priority, then the least recently served, then the first registered.
    fn pick_consumer(st: &State, settings: &QueueSettings) -> Option<usize> {
        let ready = |s: &Slot| s.credit > 0 && s.shared.limit.as_ref().is_none_or(|l| l.has_room());
        if settings.single_active_consumer {
            return st.consumers.first().filter(|s| ready(s)).map(|_| 0);
        }
        st.consumers
            .iter()
            .enumerate()
            .filter(|(_, s)| ready(s))
            .min_by_key(|(i, s)| (std::cmp::Reverse(s.priority), s.served, *i))
            .map(|(i, _)| i)
    }

    /// Hands ready messages to consumers with credit, into their mailboxes.
    fn dispatch(
        &self,
        st: &mut State,
        settings: &QueueSettings,
        now: i64,
        dead: &mut DeadLetters,
    ) -> MqResult<()> {
        while let Some(slot) = Self::pick_consumer(st, settings) {
            let limit = st.consumers[slot].shared.limit.clone();
            // Another queue may have taken the last room since the pick: its delivery's
            // settlement wakes the consumers to look again.
            if limit.as_ref().is_some_and(|l| !l.try_take()) {
                break;
            }
            let Some((index, held)) = Self::pop_ready(st, settings, now, dead)? else {
                if let Some(limit) = limit {
                    limit.untake(1);
                }
                break;
            };
            let delivery = self.hand_out(st, index, held, true, now);
            st.next_seq += 1;
            let served = st.next_seq;
            let slot = &mut st.consumers[slot];
            slot.mailbox.push_back(delivery);
            slot.credit -= 1;
            slot.served = served;
            slot.shared.notify.notify_one();
        }
        Ok(())
    }

    /// Drops ready messages from the head while over a length limit (`drop-head`).
    fn enforce_limits(
        st: &mut State,
        settings: &QueueSettings,
        now: i64,
        dead: &mut DeadLetters,
    ) -> MqResult<()> {
        let over = |st: &State| {
            settings.max_length.is_some_and(|m| st.ready_count > m)
                || settings
                    .max_length_bytes
                    .is_some_and(|m| st.ready_bytes > m)
        };
        while over(st) {
            let Some((index, held)) = Self::pop_ready(st, settings, now, dead)? else {
                break;
            };
            st.levels[index].settle(held.offset, held.offset + 1);
            if settings.dead_letters() {
                dead.push((held.message, DeadLetterReason::MaxLen));
            }
        }
        Ok(())
    }

    /// Stores a message. `batch` is its encoded one-record batch.
    pub fn enqueue(
        &self,
        settings: &QueueSettings,
        message: &Message,
        batch: Bytes,
        now: i64,
        dead: &mut DeadLetters,
    ) -> MqResult<EnqueueOutcome> {
        let size = message.body_len();
        let index = match (settings.max_priority, message.properties.priority) {
            (Some(max), Some(p)) => usize::from(p.min(max)),
            _ => 0,
        };
        let mut st = self.state.lock();
        self.check_live(&st)?;
        if settings.overflow != Overflow::DropHead {
            let would_overflow = settings.max_length.is_some_and(|m| st.ready_count + 1 > m)
                || settings
                    .max_length_bytes
                    .is_some_and(|m| st.ready_bytes + size > m);
            if would_overflow {
                if settings.overflow == Overflow::RejectPublishDlx && settings.dead_letters() {
                    dead.push((message.clone(), DeadLetterReason::MaxLen));
                }
                return Ok(EnqueueOutcome::Rejected);
            }
        }
        let level = &mut st.levels[index];
        let appended = level.log.append(batch, 0, now)?;
        let offset = appended.base_offset;
        if level.read_pos == offset && level.buffer.len() < READ_AHEAD_MESSAGES {
            level.buffer.push_back(Held {
                offset,
                message: message.clone(),
                enqueued_ms: now,
                redelivered: false,
                returns: 0,
                size,
            });
            level.read_pos = offset + 1;
        }
        st.ready_count += 1;
        st.ready_bytes += size;
        // The message is stored: a failed read while handing out or dropping messages must
        // not make the publisher think it was not.
        // A message is offered to waiting consumers once before its TTL counts (RabbitMQ
        // delivers an `x-message-ttl: 0` message to a consumer that waits for it), hence
        // the expiry clock one millisecond back for this dispatch.
        if let Err(e) = self
            .dispatch(&mut st, settings, now - 1, dead)
            .and_then(|()| Self::enforce_limits(&mut st, settings, now, dead))
        {
            tracing::warn!("queue dispatch after an enqueue failed: {e}");
        }
        let expiring = settings.message_ttl_ms.is_some() || message.properties.expiration.is_some();
        st.may_expire |= expiring;
        if expiring && !st.timer_armed {
            st.timer_armed = true;
            self.wake.notify_one();
        }
        self.persist(&mut st, now, false);
        Ok(EnqueueOutcome::Enqueued {
            durable: appended.durable,
            throttled: Self::flow_blocked(&st, now),
        })
    }

    /// Gives the shared limit back what a leaving consumer was handed and never took.
    fn give_back_mailbox(slot: &Slot) {
        if let Some(limit) = &slot.shared.limit {
            limit.give_back(u32::try_from(slot.mailbox.len()).unwrap_or(u32::MAX));
        }
    }

    /// Registers a consumer slot; a no-ack consumer is handed ready messages at once.
    #[allow(clippy::too_many_arguments)]
    pub fn add_consumer(
        &self,
        settings: &QueueSettings,
        id: u64,
        priority: i32,
        no_ack: bool,
        shared: Arc<ConsumerShared>,
        now: i64,
        dead: &mut DeadLetters,
    ) {
        let mut st = self.state.lock();
        if st.deleted {
            shared.end(ConsumerEnd::QueueDeleted);
            return;
        }
        st.consumers.push(Slot {
            id,
            priority,
            no_ack,
            shared,
            mailbox: VecDeque::new(),
            credit: if no_ack { CONSUMER_WINDOW } else { 0 },
            served: 0,
        });
        st.had_consumer = true;
        st.last_used_ms = now;
        st.delete_due = None;
        if no_ack {
            if let Err(e) = self.dispatch(&mut st, settings, now, dead) {
                tracing::warn!("queue dispatch to a new consumer failed: {e}");
            }
        }
    }

    /// Ready messages.
    pub fn message_count(&self) -> u64 {
        self.state.lock().ready_count
    }

    /// Puts a delivered message back, to be delivered first; `redelivered` unless the
    /// consumer never took it. A quorum queue dead-letters it past `x-delivery-limit`.
    fn requeue(
        &self,
        st: &mut State,
        settings: &QueueSettings,
        id: DeliveryId,
        redelivered: bool,
        dead: &mut DeadLetters,
    ) {
        let Some(level) = st.levels.get_mut(usize::from(id.level)) else {
            return;
        };
        let Some(mut held) = level.unacked.remove(&id.offset) else {
            return;
        };
        held.redelivered |= redelivered;
        if redelivered {
            held.returns = held.returns.saturating_add(1);
            if self.quorum
                && self
                    .delivery_limit
                    .is_some_and(|limit| u64::from(held.returns) > limit)
            {
                level.settle(held.offset, held.offset + 1);
                if settings.dead_letters() {
                    dead.push((held.message, DeadLetterReason::DeliveryLimit));
                }
                return;
            }
        }
        st.ready_count += 1;
        st.ready_bytes += held.size;
        level.requeued.insert(held.offset, held);
    }

    /// Unregisters a consumer: deliveries it never took go back; may make the queue due
    /// for auto-delete.
    pub fn remove_consumer(
        &self,
        settings: &QueueSettings,
        id: u64,
        now: i64,
        dead: &mut DeadLetters,
    ) {
        let mut st = self.state.lock();
        let Some(pos) = st.consumers.iter().position(|s| s.id == id) else {
            return;
        };
        let slot = st.consumers.remove(pos);
        Self::give_back_mailbox(&slot);
        for delivery in slot.mailbox {
            self.requeue(&mut st, settings, delivery.id, false, dead);
        }
        st.last_used_ms = now;
        if st.consumers.is_empty() {
            if settings.auto_delete && st.had_consumer {
                st.delete_due = Some(DeleteReason::AutoDelete);
            }
            // x-expires counts from now.
            self.wake.notify_one();
            // No consumer left to wait for.
            self.wake_publishers(&st);
        } else if let Err(e) = self.dispatch(&mut st, settings, now, dead) {
            tracing::warn!("queue dispatch after a consumer left failed: {e}");
        }
        self.persist(&mut st, now, false);
    }

    /// Gives consumer `id` credit for `n` more deliveries (its adapter reserved them from
    /// its prefetch limit), and hands it ready messages at once. From then on a message is
    /// handed to it as it is enqueued, even before its delivery task asks: a consumer that
    /// has credit when `basic.consume-ok` goes out gets a message published right after
    /// it, `x-message-ttl: 0` included. No-ack consumers need no grants.
    pub fn grant(
        &self,
        settings: &QueueSettings,
        id: u64,
        n: u32,
        now: i64,
        dead: &mut DeadLetters,
    ) {
        let mut st = self.state.lock();
        let Some(slot) = st.consumers.iter_mut().find(|s| s.id == id) else {
            return;
        };
        slot.credit = slot.credit.saturating_add(n);
        if let Err(e) = self.dispatch(&mut st, settings, now, dead) {
            tracing::warn!("queue dispatch after a grant failed: {e}");
        }
    }

    /// Takes the oldest delivery handed to consumer `id`, if any. `Err` when the consumer
    /// is gone.
    pub fn poll_delivery(
        &self,
        settings: &QueueSettings,
        id: u64,
        now: i64,
        dead: &mut DeadLetters,
    ) -> Result<Option<Delivery>, ConsumerEnd> {
        let mut st = self.state.lock();
        let Some(slot) = st.consumers.iter_mut().find(|s| s.id == id) else {
            return Err(ConsumerEnd::QueueDeleted);
        };
        let Some(delivery) = slot.mailbox.pop_front() else {
            return Ok(None);
        };
        if slot.no_ack {
            // Its window opens by the one taken.
            slot.credit += 1;
            let level = &mut st.levels[usize::from(delivery.id.level)];
            level.unacked.remove(&delivery.id.offset);
            level.settle(delivery.id.offset, delivery.id.offset + 1);
            if let Err(e) = self.dispatch(&mut st, settings, now, dead) {
                tracing::warn!("queue dispatch failed: {e}");
            }
            self.persist(&mut st, now, false);
        }
        Ok(Some(delivery))
    }

    /// `basic.get`.
    pub fn get(
        &self,
        settings: &QueueSettings,
        no_ack: bool,
        now: i64,
        dead: &mut DeadLetters,
    ) -> MqResult<Option<Delivery>> {
        let mut st = self.state.lock();
        self.check_live(&st)?;
        st.last_used_ms = now;
        let popped = Self::pop_ready(&mut st, settings, now, dead)?;
        let delivery =
            popped.map(|(index, held)| self.hand_out(&mut st, index, held, !no_ack, now));
        self.persist(&mut st, now, false);
        Ok(delivery)
    }

    /// Settles acknowledged deliveries (unknown ids are ignored: the adapter validates tags).
    pub fn ack(&self, ids: &[DeliveryId], now: i64) {
        let mut st = self.state.lock();
        for id in ids {
            if let Some(level) = st.levels.get_mut(usize::from(id.level)) {
                if level.unacked.remove(&id.offset).is_some() {
                    level.settle(id.offset, id.offset + 1);
                }
            }
        }
        self.persist(&mut st, now, false);
    }

    /// Requeues or settles (dead-lettering) rejected deliveries.
    pub fn reject(
        &self,
        settings: &QueueSettings,
        ids: &[DeliveryId],
        requeue: bool,
        now: i64,
        dead: &mut DeadLetters,
    ) -> MqResult<()> {
        let mut st = self.state.lock();
        for id in ids {
            if requeue {
                self.requeue(&mut st, settings, *id, true, dead);
                continue;
            }
            if let Some(level) = st.levels.get_mut(usize::from(id.level)) {
                if let Some(held) = level.unacked.remove(&id.offset) {
                    level.settle(id.offset, id.offset + 1);
                    if settings.dead_letters() {
                        dead.push((held.message, DeadLetterReason::Rejected));
                    }
                }
            }
        }
        if requeue {
            self.dispatch(&mut st, settings, now, dead)?;
        }
        self.persist(&mut st, now, false);
        Ok(())
    }

    /// Settles every ready message (not dead-lettered, as RabbitMQ); returns how many.
    pub fn purge(&self, now: i64) -> MqResult<u64> {
        let mut st = self.state.lock();
        self.check_live(&st)?;
        let purged = st.ready_count;
        for level in &mut st.levels {
            let end = level.log.log_end_offset();
            let mut unacked: Vec<i64> = level.unacked.keys().copied().collect();
            unacked.sort_unstable();
            let mut from = level.cursor.mark_delete;
            for offset in unacked.into_iter().chain([end]) {
                if offset > from {
                    level.cursor.settle(from, offset);
                }
                from = offset + 1;
            }
            level.requeued.clear();
            level.buffer.clear();
            level.read_pos = end;
        }
        st.ready_count = 0;
        st.ready_bytes = 0;
        self.snapshot(&mut st, now, false);
        self.wake_publishers(&st);
        Ok(purged)
    }

    /// Marks the queue deleted and ends its consumers; returns the ready count it had.
    pub fn close(&self, end: ConsumerEnd, delete: bool, now: i64) -> u64 {
        let mut st = self.state.lock();
        if !delete {
            self.snapshot(&mut st, now, end == ConsumerEnd::Shutdown);
        }
        st.deleted |= delete;
        for slot in st.consumers.drain(..) {
            Self::give_back_mailbox(&slot);
            slot.shared.end(end.clone());
        }
        self.wake_publishers(&st);
        st.ready_count
    }

    /// Resets the `x-expires` clock (a redeclare counts as use).
    pub fn touch(&self, now: i64) {
        self.state.lock().last_used_ms = now;
    }

    /// Periodic work: expires messages at the heads, asks for deletion when due, deletes
    /// consumed segments, compacts the ack log. Returns the milliseconds until it is due
    /// again and a deletion to ask the vhost for.
    pub fn maintain(
        &self,
        settings: &QueueSettings,
        now: i64,
        dead: &mut DeadLetters,
    ) -> (i64, Option<DeleteReason>) {
        let mut st = self.state.lock();
        if st.deleted {
            return (MAINTENANCE_INTERVAL_MS, None);
        }
        let mut next = now + MAINTENANCE_INTERVAL_MS;
        let mut armed = false;
        let levels = if st.may_expire { st.levels.len() } else { 0 };
        for index in 0..levels {
            loop {
                let head = match st.levels[index].peek() {
                    Ok(head) => head.map(|h| expires_at(settings, h)),
                    Err(e) => {
                        tracing::warn!("queue read failed during expiry: {e}");
                        None
                    }
                };
                let Some(Some(at)) = head else { break };
                if now < at {
                    next = next.min(at);
                    armed = true;
                    break;
                }
                let level = &mut st.levels[index];
                if let Some(held) = level.pop() {
                    level.settle(held.offset, held.offset + 1);
                    st.ready_count = st.ready_count.saturating_sub(1);
                    st.ready_bytes = st.ready_bytes.saturating_sub(held.size);
                    if settings.dead_letters() {
                        dead.push((held.message, DeadLetterReason::Expired));
                    }
                }
            }
        }
        st.timer_armed = armed;
        if !Self::flow_blocked(&st, now) {
            // Expiry may have brought the queue under the limit.
            self.wake_publishers(&st);
        }
        if st.ready_count == 0 && settings.message_ttl_ms.is_none() {
            st.may_expire = false;
        }
        if let (Some(expires), true) = (settings.expires_ms, st.consumers.is_empty()) {
            let at = st.last_used_ms.saturating_add(expires as i64);
            if now >= at {
                st.delete_due.get_or_insert(DeleteReason::Expired);
            } else {
                next = next.min(at);
            }
        }
        let ask = match st.delete_due {
            Some(reason) if !st.delete_asked && st.consumers.is_empty() => {
                st.delete_asked = true;
                Some(reason)
            }
            _ => None,
        };
        for level in &mut st.levels {
            let target = level.cursor.mark_delete.min(level.log.log_end_offset() - 1);
            if target > level.log.log_start_offset()
                && now - level.last_truncate_ms >= TRUNCATE_INTERVAL_MS
            {
                level.last_truncate_ms = now;
                if let Err(e) = level.log.delete_records_before(target) {
                    tracing::warn!("deleting consumed queue segments failed: {e}");
                }
            }
        }
        if st.persist_due {
            let due = st.persisted_ms + ACK_COALESCE_MS;
            if now >= due {
                self.persist(&mut st, now, true);
            } else {
                next = next.min(due);
            }
        }
        if st.ack_records_since_snapshot >= ACK_RECORDS_PER_SNAPSHOT {
            self.snapshot(&mut st, now, false);
        }
        (next - now, ask)
    }
}

/// Recovery: counts a level's ready messages and bytes from its mark to its end, settling
/// transient messages written before the restart (RabbitMQ drops them too).
fn recover_level(level: &mut Level) -> MqResult<(u64, u64)> {
    let end = level.log.log_end_offset();
    let mut offset = level.cursor.mark_delete;
    let (mut count, mut bytes) = (0u64, 0u64);
    while offset < end {
        let read = level.log.read(offset, RECOVERY_READ_BYTES, end)?;
        if read.records.is_empty() || read.next_offset <= offset {
            break;
        }
        for (header, batch) in split_batches(&read.records, false)? {
            for record in decode_records(&batch)? {
                let at = header.base_offset + i64::from(record.offset_delta);
                if at < offset || at < level.cursor.mark_delete || level.cursor.settled.contains(at)
                {
                    continue;
                }
                if record_is_persistent(&record) {
                    count += 1;
                    bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
                } else {
                    level.cursor.settle(at, at + 1);
                }
            }
        }
        offset = read.next_offset;
    }
    level.read_pos = level.cursor.mark_delete;
    Ok((count, bytes))
}
