//! Queues: a log plus an ack-tracking cursor.
//!
//! A queue stores its messages as records in its own partition log(s) on the shared
//! storage engine (one log per priority level of an `x-max-priority` queue), and keeps a
//! *cursor*: the mark-delete position (everything before it is settled), the settled
//! offsets above it, the messages delivered and not yet acknowledged (with delivery
//! counts), and the requeued ones to deliver again first. Memory is bounded by the number
//! of unacknowledged messages and out-of-order acks, never by the backlog: a million
//! waiting messages cost their log segments, not RAM. Segments wholly below the mark-delete
//! position are deleted. Ack state is persisted so that a restart redelivers only what was
//! unacknowledged (marked redelivered), never what was acknowledged before the last
//! persisted ack state.
//!
//! A *stream* queue (`x-queue-type: stream`) is a plain log with no cursor: every consumer
//! reads from its own offset (`x-stream-offset`) and acks only grant credit. It is also a
//! Kafka topic of the same name.
//!
//! Queue semantics live here so every protocol gets them: TTL (`x-message-ttl`, per-message
//! expiration, expiring at the head as RabbitMQ does), length limits with overflow
//! behaviour, dead-lettering (handed to a [`DeadLetterSink`] with the reason), priorities,
//! single active consumer, redelivery and auto-delete.
//!
//! Storage layout: the queue `q` of vhost `v` keeps its messages in the logs
//! `__ferry_q.<key>-<level>` (`key` = [`storage_key`]`(v, q)`, a hash, since queue names
//! may hold anything) and, if durable, its persisted cursor in `__ferry_qa.<key>-0`
//! (see `acklog`). Durable queues' message logs are `flush=sync` (a persistent message is
//! confirmed after the group-committed fsync); non-durable ones are async and start empty.
//! Each classic queue has a maintenance task (TTL expiry at the heads, `x-expires` and
//! auto-delete requests through [`DeadLetterSink::delete_queue`], deletion of consumed
//! segments, coalesced ack records, ack-log snapshots).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ferry_storage::batch::BatchBuilder;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::internal::now_ms;
use crate::message::{message_to_record, Message};
use crate::mq::{ConnectionId, MqError, MqResult};
use crate::CoreError;

mod acklog;
mod classic;
mod ranges;
mod settings;
mod stream;
#[cfg(test)]
mod tests;

pub use classic::{
    storage_key, storage_key_of_log, DeleteReason, ACK_LOG_PREFIX, QUEUE_LOG_PREFIX,
};
use classic::{Classic, DeadLetters};
pub use classic::{CONSUMER_WINDOW, FLOW_DRAIN_MS, FLOW_READY_LIMIT};
pub use settings::{
    max_age_ms, queue_resource, time_unit_ms, type_name, Overflow, QueueSettings, QueueType,
    MAX_EXPIRY_MS, MAX_PRIORITY,
};
pub use stream::{stream_topic, STREAM_OFFSET_HEADER};
use stream::{Stream, StreamCursor};

/// Wait after a failed stream read before trying again (the log is being cut by retention
/// or the disk failed; never a busy loop).
const STREAM_RETRY_MS: u64 = 100;
/// A publisher held by back-pressure looks again at least this often (the consumers'
/// pace may drop without any event to wake it).
pub const FLOW_RECHECK: Duration = Duration::from_millis(20);
/// Longest a publisher is held by one queue's back-pressure.
pub const FLOW_MAX_HOLD: Duration = Duration::from_secs(1);

/// What a queue needs from the rest of the broker.
#[derive(Clone, Debug)]
pub struct QueueEnv {
    /// The storage engine holding queue logs.
    pub store: Arc<ferry_storage::Store>,
    /// The broker, for stream queues (which are Kafka topics of the same name).
    pub broker: Weak<crate::Broker>,
    /// Where dead letters go.
    pub dead_letters: Arc<dyn DeadLetterSink>,
}

/// Why a message is dead-lettered (the `reason` of its `x-death` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Rejected or nacked without requeue.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// Dropped by a length limit.
    MaxLen,
    /// Returned too often (quorum `x-delivery-limit`).
    DeliveryLimit,
}

impl DeadLetterReason {
    /// The `reason` text in `x-death`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::MaxLen => "maxlen",
            DeadLetterReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Where a queue sends its dead letters: the vhost's router, which adds the `x-death`
/// entry and publishes to the queue's dead-letter exchange.
pub trait DeadLetterSink: Send + Sync + std::fmt::Debug {
    /// Dead-letters `message`, which left `queue` for `reason`.
    fn dead_letter(
        &self,
        queue: &str,
        settings: &QueueSettings,
        message: Message,
        reason: DeadLetterReason,
    );

    /// The queue `queue` of `vhost` asks to be deleted (`auto_delete` after its last
    /// consumer went, or unused for `x-expires`): the vhost removes it with its bindings
    /// and calls [`Queue::delete`]. Called from the queue's maintenance task, never under a
    /// queue lock, at most once per queue.
    fn delete_queue(&self, vhost: &str, queue: &str, reason: DeleteReason) {
        let _ = (vhost, queue, reason);
    }
}

/// Identifies one delivered message within its queue (the log offset and priority level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId {
    /// Priority level's log (0 for queues without priorities).
    pub level: u8,
    /// Offset in that log.
    pub offset: i64,
}

/// A message handed to a consumer or to `basic.get`.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// What to ack / reject with.
    pub id: DeliveryId,
    /// The message.
    pub message: Message,
    /// Delivered before (and not acknowledged).
    pub redelivered: bool,
    /// Ready messages left after this one (for `basic.get-ok`).
    pub remaining: u64,
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamStart {
    /// The first message still stored.
    First,
    /// The last stored chunk (RabbitMQ: the last batch).
    Last,
    /// Only messages published from now on. The default.
    Next,
    /// This offset.
    Offset(i64),
    /// The first message at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// What a consumer asks for.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// Consumer tag (unique per channel; used in logs and admin listings).
    pub tag: String,
    /// Owning connection.
    pub connection: ConnectionId,
    /// No other consumer may consume from the queue while this one exists.
    pub exclusive: bool,
    /// Deliveries are settled when sent (no ack expected).
    pub no_ack: bool,
    /// `x-priority` of the consumer (higher served first); 0 by default.
    pub priority: i32,
    /// Stream queues: where to start.
    pub stream_start: StreamStart,
    /// A limit shared with other consumers (AMQP `basic.qos` global=true), taken from as
    /// messages are handed to this consumer; ignored when `no_ack`.
    pub shared_limit: Option<Arc<SharedLimit>>,
}

/// A prefetch limit several consumers share (AMQP `basic.qos` global=true, as RabbitMQ
/// 3.x): a queue takes one from it as it hands a message to one of them, their channel
/// gives it back as the delivery is settled. Taken at hand-out rather than reserved ahead,
/// so a consumer of an idle queue holds none of it.
#[derive(Debug, Default)]
pub struct SharedLimit {
    /// Most deliveries outstanding (0: unlimited).
    limit: AtomicU32,
    outstanding: AtomicU32,
    /// Woken when room may have appeared (a delivery given back under a limit, a new
    /// limit).
    freed: Notify,
}

impl SharedLimit {
    /// Sets the limit (0: unlimited); what is outstanding stays counted.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// Whether a limit is set.
    pub fn is_limited(&self) -> bool {
        self.limit.load(Ordering::Relaxed) != 0
    }

    /// Whether one more may be taken now.
    pub fn has_room(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit == 0 || self.outstanding.load(Ordering::Relaxed) < limit
    }

    /// Takes one if there is room.
    pub fn try_take(&self) -> bool {
        self.outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                let limit = self.limit.load(Ordering::Relaxed);
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes one regardless of the limit (a rolled-back transaction's deliveries return).
    pub fn take(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// Gives back `n` and, while a limit is set, wakes whoever waits for room (without
    /// one nothing waits for room, and settlements need not wake anyone).
    pub fn give_back(&self, n: u32) {
        if n > 0 {
            self.untake(n);
            if self.is_limited() {
                self.freed.notify_waiters();
            }
        }
    }

    /// Gives back `n` taken for nothing (no message to hand out), waking no one.
    pub(crate) fn untake(&self, n: u32) {
        let _ = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Completes when room may have appeared; enable it before looking, as with
    /// [`Notify::notified`].
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Outstanding deliveries.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// Why a consumer's deliveries ended (the adapter sends a server-side cancel or closes the
/// channel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerEnd {
    /// The queue was deleted.
    QueueDeleted,
    /// The broker is shutting down.
    Shutdown,
}

/// A registered consumer of a queue.
#[derive(Debug)]
pub struct Consumer {
    id: u64,
    spec: ConsumerSpec,
    shared: Arc<ConsumerShared>,
    /// Stream queues: the consumer's position.
    stream: Option<Mutex<StreamCursor>>,
}

impl Consumer {
    /// The consumer's tag.
    pub fn tag(&self) -> &str {
        &self.spec.tag
    }

    /// What it asked for.
    pub fn spec(&self) -> &ConsumerSpec {
        &self.spec
    }
}

/// The part of a consumer the queue keeps: its wake-up, its shared limit and why it ended.
#[derive(Debug, Default)]
pub(crate) struct ConsumerShared {
    /// Woken when a delivery is handed over or the consumer ends.
    pub notify: Arc<Notify>,
    /// The limit it shares with other consumers, if any (never for no-ack consumers).
    pub limit: Option<Arc<SharedLimit>>,
    end: Mutex<Option<ConsumerEnd>>,
}

impl ConsumerShared {
    /// Ends the consumer's deliveries (the first reason sticks).
    pub fn end(&self, end: ConsumerEnd) {
        self.end.lock().get_or_insert(end);
        self.notify.notify_one();
    }

    fn ended(&self) -> Option<ConsumerEnd> {
        self.end.lock().clone()
    }
}

/// Result of putting a message on a queue.
#[derive(Debug)]
pub enum EnqueueOutcome {
    /// Stored; `durable` resolves once it is on stable storage (immediately for transient
    /// messages or non-durable queues).
    Enqueued {
        /// Resolves when the message is durable.
        durable: ferry_storage::Durability,
        /// The queue's consumers lag behind: the publisher should wait for
        /// [`Queue::flow_wait`] before its confirm (back-pressure).
        throttled: bool,
    },
    /// Refused by `x-overflow: reject-publish(-dlx)`: nack the publisher.
    Rejected,
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    name: String,
    vhost: String,
    settings: QueueSettings,
    env: QueueEnv,
    engine: Engine,
    /// RabbitMQ's NOT_FOUND text for this queue, ready for the error path.
    missing: String,
    /// Consumers as (id, exclusive), for exclusivity checks and counts.
    consumers: Mutex<Vec<(u64, bool)>>,
    deleted: AtomicBool,
    /// Wakes the maintenance task.
    maintenance: Arc<Notify>,
}

#[derive(Debug)]
enum Engine {
    /// Boxed: a classic queue's state is several times a stream's.
    Classic(Box<Classic>),
    Stream(Stream),
}

/// Source of consumer ids (process-unique).
static NEXT_CONSUMER: AtomicU64 = AtomicU64::new(1);

impl Queue {
    /// Opens (creating or recovering) the queue `name` of `vhost`. Recovery restores the
    /// cursor from the persisted ack state; transient messages of a durable queue written
    /// before the restart are dropped, as RabbitMQ does.
    pub fn open(
        env: &QueueEnv,
        vhost: &str,
        name: &str,
        settings: QueueSettings,
    ) -> MqResult<Arc<Queue>> {
        let now = now_ms();
        let maintenance = Arc::new(Notify::new());
        let engine = match settings.queue_type {
            QueueType::Stream => {
                let broker = env
                    .broker
                    .upgrade()
                    .ok_or(MqError::Core(CoreError::ShuttingDown))?;
                Engine::Stream(Stream::open(&broker, vhost, name, &settings)?)
            }
            QueueType::Classic | QueueType::Quorum => Engine::Classic(Box::new(Classic::open(
                &env.store,
                vhost,
                name,
                &settings,
                now,
                maintenance.clone(),
            )?)),
        };
        let queue = Arc::new(Queue {
            name: name.to_string(),
            vhost: vhost.to_string(),
            missing: format!("no queue '{name}' in vhost '{vhost}'"),
            settings,
            env: env.clone(),
            engine,
            consumers: Mutex::new(Vec::new()),
            deleted: AtomicBool::new(false),
            maintenance,
        });
        if matches!(queue.engine, Engine::Classic(_)) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(maintain(Arc::downgrade(&queue), queue.maintenance.clone()));
                }
                Err(_) => tracing::warn!(
                    queue = name,
                    "queue opened outside a tokio runtime: no TTL timer, x-expires or segment cleanup"
                ),
            }
        }
        Ok(queue)
    }

    /// Deletes the queue: its consumers end with [`ConsumerEnd::QueueDeleted`], its logs and
    /// ack state are removed. Returns the ready message count it had.
    pub fn delete(&self) -> MqResult<u64> {
        if self.deleted.swap(true, Ordering::AcqRel) {
            return Ok(0);
        }
        self.maintenance.notify_one();
        match &self.engine {
            Engine::Classic(classic) => {
                let count = classic.close(ConsumerEnd::QueueDeleted, true, now_ms());
                self.consumers.lock().clear();
                for id in classic.log_ids() {
                    match self.env.store.remove_log(id) {
                        Ok(()) | Err(ferry_storage::StorageError::UnknownLog(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(count)
            }
            Engine::Stream(stream) => {
                let count = stream.message_count();
                self.consumers.lock().clear();
                stream.partition().mark_deleted();
                let topic = stream.topic().to_string();
                let broker = self.env.broker.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            if let Some(broker) = broker.upgrade() {
                                if let Err(e) = broker.delete_topic(&topic).await {
                                    tracing::warn!(
                                        topic,
                                        "deleting a stream queue's topic failed: {e}"
                                    );
                                }
                            }
                        });
                    }
                    Err(_) => tracing::warn!(topic, "stream topic not deleted: no tokio runtime"),
                }
                Ok(count)
            }
        }
    }

    /// Ends every consumer with [`ConsumerEnd::Shutdown`] and persists the cursor (call at
    /// broker shutdown, before the store shuts down).
    pub fn shutdown(&self) {
        match &self.engine {
            Engine::Classic(classic) => {
                classic.close(ConsumerEnd::Shutdown, false, now_ms());
            }
            Engine::Stream(_) => {}
        }
        self.consumers.lock().clear();
        self.maintenance.notify_one();
    }

    /// Queue name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vhost it belongs to.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Settings it was declared with.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Whether [`Queue::delete`] ran.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Counts as use for `x-expires` (call on every redeclare, passive or not).
    pub fn touch(&self) {
        if let Engine::Classic(classic) = &self.engine {
            classic.touch(now_ms());
            self.maintenance.notify_one();
        }
    }

    /// Ready messages (not delivered-and-unacked).
    pub fn message_count(&self) -> u64 {
        match &self.engine {
            Engine::Classic(classic) => classic.message_count(),
            Engine::Stream(stream) => stream.message_count(),
        }
    }

    /// Registered consumers.
    pub fn consumer_count(&self) -> u32 {
        self.consumers.lock().len() as u32
    }

    /// Stores `message` (applying length limits and overflow) and wakes a consumer.
    pub fn enqueue(&self, message: &Message) -> MqResult<EnqueueOutcome> {
        let now = now_ms();
        let mut builder = BatchBuilder::new(now);
        message_to_record(&mut builder, message, now);
        let batch = builder.build();
        match &self.engine {
            Engine::Classic(classic) => {
                let mut dead = Vec::new();
                let outcome = classic.enqueue(&self.settings, message, batch, now, &mut dead);
                self.send_dead_letters(dead);
                outcome
            }
            Engine::Stream(stream) => stream.enqueue(batch, now, &self.missing),
        }
    }

    /// Publisher back-pressure: waits while this queue has consumers, more than
    /// [`FLOW_READY_LIMIT`] ready messages, and consumers fast enough to take them within
    /// [`FLOW_DRAIN_MS`]; at most [`FLOW_MAX_HOLD`]. Returns at once for other queues.
    pub async fn flow_wait(&self) {
        if let Engine::Classic(classic) = &self.engine {
            classic.flow_wait(FLOW_RECHECK, FLOW_MAX_HOLD).await;
        }
    }

    /// Checks a stream consumer's flow control as RabbitMQ does: a prefetch count is
    /// required (PRECONDITION_FAILED) and automatic acks are not supported
    /// (NOT_IMPLEMENTED). Nothing to check for other queue types.
    pub fn check_stream_consumer(&self, prefetch: u16, no_ack: bool) -> MqResult<()> {
        if self.settings.queue_type != QueueType::Stream {
            return Ok(());
        }
        let rs = queue_resource(&self.vhost, &self.name);
        if no_ack {
            return Err(MqError::NotImplemented(format!(
                "automatic acknowledgement not supported by stream queues {rs}"
            )));
        }
        if prefetch == 0 {
            return Err(MqError::PreconditionFailed(format!(
                "consumer prefetch count is not set for '{rs}'"
            )));
        }
        Ok(())
    }

    /// Registers a consumer. Errors: ACCESS_REFUSED when an exclusive consumer exists (or
    /// this one is exclusive and others exist), PRECONDITION_FAILED for a stream consumer
    /// without the needed arguments.
    pub fn add_consumer(&self, spec: ConsumerSpec) -> MqResult<Arc<Consumer>> {
        if self.is_deleted() {
            return Err(MqError::NotFound(self.missing.clone()));
        }
        let stream = match &self.engine {
            Engine::Stream(stream) => {
                if spec.no_ack {
                    self.check_stream_consumer(1, true)?;
                }
                Some(Mutex::new(stream.start_cursor(spec.stream_start)?))
            }
            Engine::Classic(_) => None,
        };
        let id = NEXT_CONSUMER.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ConsumerShared {
            limit: spec.shared_limit.clone().filter(|_| !spec.no_ack),
            ..ConsumerShared::default()
        });
        {
            let mut consumers = self.consumers.lock();
            if consumers.iter().any(|(_, exclusive)| *exclusive)
                || (spec.exclusive && !consumers.is_empty())
            {
                return Err(MqError::AccessRefused(format!(
                    "{} in exclusive use",
                    queue_resource(&self.vhost, &self.name)
                )));
            }
            consumers.push((id, spec.exclusive));
        }
        match &self.engine {
            Engine::Classic(classic) => {
                let mut dead = Vec::new();
                classic.add_consumer(
                    &self.settings,
                    id,
                    spec.priority,
                    spec.no_ack,
                    shared.clone(),
                    now_ms(),
                    &mut dead,
                );
                self.send_dead_letters(dead);
            }
            Engine::Stream(stream) => stream.partition().register_waiter(&shared.notify),
        }
        Ok(Arc::new(Consumer {
            id,
            spec,
            shared,
            stream,
        }))
    }

    /// Gives an acknowledging `consumer` credit for `n` more deliveries, reserved from its
    /// prefetch limit: the queue hands it up to that many messages, as they come, without
    /// waiting for `next_delivery` to ask (so a message enqueued right after
    /// `basic.consume-ok` is not missed, nor expired at `x-message-ttl: 0`). No-ack
    /// consumers have a standing window of [`CONSUMER_WINDOW`]; streams read at their
    /// consumer's pace and need no grants.
    pub fn grant(&self, consumer: &Consumer, n: u32) {
        if let Engine::Classic(classic) = &self.engine {
            let mut dead = Vec::new();
            classic.grant(&self.settings, consumer.id, n, now_ms(), &mut dead);
            self.send_dead_letters(dead);
        }
    }

    /// Waits for the next message handed to `consumer` (the queue hands them out by
    /// single-active-consumer, consumer priority and strict round-robin among the
    /// consumers with credit). `Err(end)` when the consumer's deliveries are over. An
    /// acknowledging consumer of a classic queue is handed only as many as it was granted
    /// ([`Queue::grant`]); of a stream, the caller only asks when it has prefetch credit.
    pub async fn next_delivery(
        &self,
        consumer: &Consumer,
    ) -> std::result::Result<Delivery, ConsumerEnd> {
        loop {
            if let Some(end) = consumer.shared.ended() {
                return Err(end);
            }
            match &self.engine {
                Engine::Classic(classic) => {
                    let mut dead = Vec::new();
                    let polled =
                        classic.poll_delivery(&self.settings, consumer.id, now_ms(), &mut dead);
                    self.send_dead_letters(dead);
                    match polled {
                        Ok(Some(delivery)) => return Ok(delivery),
                        Ok(None) => {}
                        Err(end) => return Err(consumer.shared.ended().unwrap_or(end)),
                    }
                }
                Engine::Stream(stream) => {
                    if stream.partition().is_deleted() {
                        return Err(ConsumerEnd::QueueDeleted);
                    }
                    let Some(cursor) = &consumer.stream else {
                        return Err(ConsumerEnd::QueueDeleted);
                    };
                    // Room under a shared limit is taken before reading, given back when
                    // there was nothing to read.
                    let limit = consumer.shared.limit.as_deref();
                    if let Some(limit) = limit {
                        let freed = limit.freed();
                        tokio::pin!(freed);
                        freed.as_mut().enable();
                        if !limit.try_take() {
                            tokio::select! {
                                () = consumer.shared.notify.notified() => {}
                                () = freed => {}
                            }
                            continue;
                        }
                    }
                    let polled = stream.poll(&mut cursor.lock());
                    if !matches!(polled, Ok(Some(_))) {
                        if let Some(limit) = limit {
                            limit.untake(1);
                        }
                    }
                    match polled {
                        Ok(Some(delivery)) => return Ok(delivery),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(queue = %self.name, "stream read failed: {e}");
                            tokio::time::sleep(Duration::from_millis(STREAM_RETRY_MS)).await;
                            continue;
                        }
                    }
                }
            }
            consumer.shared.notify.notified().await;
        }
    }

    /// Unregisters a consumer (its unacked messages are the channel's to settle). May
    /// auto-delete the queue.
    pub fn remove_consumer(&self, consumer: &Consumer) {
        self.consumers.lock().retain(|(id, _)| *id != consumer.id);
        match &self.engine {
            Engine::Classic(classic) => {
                let mut dead = Vec::new();
                classic.remove_consumer(&self.settings, consumer.id, now_ms(), &mut dead);
                self.send_dead_letters(dead);
            }
            Engine::Stream(stream) => {
                stream
                    .partition()
                    .unregister_waiter(&consumer.shared.notify);
                if self.settings.auto_delete && self.consumers.lock().is_empty() {
                    self.env.dead_letters.delete_queue(
                        &self.vhost,
                        &self.name,
                        DeleteReason::AutoDelete,
                    );
                }
            }
        }
    }

    /// `basic.get`: the next ready message, if any.
    pub fn get(&self, no_ack: bool) -> MqResult<Option<Delivery>> {
        match &self.engine {
            Engine::Classic(classic) => {
                let mut dead = Vec::new();
                let got = classic.get(&self.settings, no_ack, now_ms(), &mut dead);
                self.send_dead_letters(dead);
                got
            }
            Engine::Stream(_) => Err(MqError::NotImplemented(format!(
                "basic.get not supported by stream queues {}",
                queue_resource(&self.vhost, &self.name)
            ))),
        }
    }

    /// Settles acknowledged deliveries.
    pub fn ack(&self, ids: &[DeliveryId]) -> MqResult<()> {
        if let Engine::Classic(classic) = &self.engine {
            classic.ack(ids, now_ms());
        }
        Ok(())
    }

    /// Rejects deliveries: requeued (to be redelivered first, flagged redelivered) or
    /// dead-lettered / dropped.
    pub fn reject(&self, ids: &[DeliveryId], requeue: bool) -> MqResult<()> {
        match &self.engine {
            Engine::Classic(classic) => {
                let mut dead = Vec::new();
                let result = classic.reject(&self.settings, ids, requeue, now_ms(), &mut dead);
                self.send_dead_letters(dead);
                result
            }
            Engine::Stream(_) => Err(MqError::NotImplemented(format!(
                "basic.nack and basic.reject not supported by stream queues {}",
                queue_resource(&self.vhost, &self.name)
            ))),
        }
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> MqResult<u64> {
        match &self.engine {
            Engine::Classic(classic) => classic.purge(now_ms()),
            Engine::Stream(_) => Ok(0),
        }
    }

    fn send_dead_letters(&self, dead: DeadLetters) {
        for (message, reason) in dead {
            self.env
                .dead_letters
                .dead_letter(&self.name, &self.settings, message, reason);
        }
    }

    /// One round of maintenance; the milliseconds until the next.
    fn maintain_once(&self) -> i64 {
        let Engine::Classic(classic) = &self.engine else {
            return classic::MAINTENANCE_INTERVAL_MS;
        };
        let mut dead = Vec::new();
        let (next, delete) = classic.maintain(&self.settings, now_ms(), &mut dead);
        self.send_dead_letters(dead);
        if let Some(reason) = delete {
            self.env
                .dead_letters
                .delete_queue(&self.vhost, &self.name, reason);
        }
        next
    }
}

/// A classic queue's maintenance task: message expiry at the heads (even with no
/// consumer), `x-expires` and auto-delete requests, deletion of consumed segments and
/// ack-log compaction. Holds the queue only while working.
async fn maintain(queue: Weak<Queue>, wake: Arc<Notify>) {
    loop {
        let sleep_ms = {
            let Some(queue) = queue.upgrade() else { return };
            if queue.is_deleted() {
                return;
            }
            queue.maintain_once()
        };
        let sleep =
            Duration::from_millis(sleep_ms.clamp(1, classic::MAINTENANCE_INTERVAL_MS) as u64);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
