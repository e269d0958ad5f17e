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

use std::sync::{Arc, Weak};

use crate::message::{FieldTable, Message};
use crate::mq::{ConnectionId, MqResult};

/// Queue type, from `x-queue-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// The default: a log with an ack-tracking cursor.
    Classic,
    /// Accepted for compatibility; same engine as classic (single node), durable only.
    Quorum,
    /// A replayable log; consumers choose where to start.
    Stream,
}

/// What happens when a publish would exceed `x-max-length` / `x-max-length-bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (dead-letter, reason `maxlen`) the oldest ready messages. The default.
    DropHead,
    /// Refuse the new message (publisher confirm nack).
    RejectPublish,
    /// Refuse the new message and dead-letter it (reason `maxlen`).
    RejectPublishDlx,
}

/// A queue's settings, parsed and validated from its declare arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSettings {
    /// Queue type.
    pub queue_type: QueueType,
    /// Survives a restart.
    pub durable: bool,
    /// Owned by one connection; deleted when it closes.
    pub exclusive: Option<ConnectionId>,
    /// Deleted once its last consumer is cancelled (after having had one).
    pub auto_delete: bool,
    /// `x-message-ttl`, milliseconds.
    pub message_ttl_ms: Option<u64>,
    /// `x-expires`: deleted after this long unused, milliseconds.
    pub expires_ms: Option<u64>,
    /// `x-max-length`: ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: ready message body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority` (1–255).
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-consumer-timeout`, milliseconds (else the broker default).
    pub consumer_timeout_ms: Option<u64>,
    /// The declare arguments as given, for equivalence checks and listing.
    pub arguments: crate::message::FieldTable,
}

impl QueueSettings {
    /// Parses and validates declare flags and arguments (`x-message-ttl`, `x-expires`,
    /// `x-max-length`, …) with RabbitMQ's error texts for invalid values (PRECONDITION_FAILED
    /// `invalid arg 'x-max-length' for queue 'q' in vhost '/': …`).
    pub fn parse(
        vhost: &str,
        queue: &str,
        durable: bool,
        exclusive: Option<ConnectionId>,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> MqResult<QueueSettings> {
        let _ = (vhost, queue, durable, exclusive, auto_delete, arguments);
        todo!("queuecore")
    }
}

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
    _private: (),
}

impl Consumer {
    /// The consumer's tag.
    pub fn tag(&self) -> &str {
        todo!("queuecore")
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
    },
    /// Refused by `x-overflow: reject-publish(-dlx)`: nack the publisher.
    Rejected,
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    _private: (),
}

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
        let _ = (env, vhost, name, settings);
        todo!("queuecore")
    }

    /// Deletes the queue: its consumers end with [`ConsumerEnd::QueueDeleted`], its logs and
    /// ack state are removed. Returns the ready message count it had.
    pub fn delete(&self) -> MqResult<u64> {
        todo!("queuecore")
    }

    /// Queue name.
    pub fn name(&self) -> &str {
        todo!("queuecore")
    }

    /// Settings it was declared with.
    pub fn settings(&self) -> &QueueSettings {
        todo!("queuecore")
    }

    /// Ready messages (not delivered-and-unacked).
    pub fn message_count(&self) -> u64 {
        todo!("queuecore")
    }

    /// Registered consumers.
    pub fn consumer_count(&self) -> u32 {
        todo!("queuecore")
    }

    /// Stores `message` (applying length limits and overflow) and wakes a consumer.
    pub fn enqueue(&self, message: &Message) -> MqResult<EnqueueOutcome> {
        let _ = message;
        todo!("queuecore")
    }

    /// Registers a consumer. Errors: ACCESS_REFUSED when an exclusive consumer exists (or
    /// this one is exclusive and others exist), PRECONDITION_FAILED for a stream consumer
    /// without the needed arguments.
    pub fn add_consumer(&self, spec: ConsumerSpec) -> MqResult<Arc<Consumer>> {
        let _ = spec;
        todo!("queuecore")
    }

    /// Waits for the next message for `consumer` (honouring single-active-consumer,
    /// consumer priority and round-robin between consumers). `Err(end)` when the consumer's
    /// deliveries are over. The caller only asks when it has prefetch credit.
    pub async fn next_delivery(
        &self,
        consumer: &Consumer,
    ) -> std::result::Result<Delivery, ConsumerEnd> {
        let _ = consumer;
        todo!("queuecore")
    }

    /// Unregisters a consumer (its unacked messages are the channel's to settle). May
    /// auto-delete the queue.
    pub fn remove_consumer(&self, consumer: &Consumer) {
        let _ = consumer;
        todo!("queuecore")
    }

    /// `basic.get`: the next ready message, if any.
    pub fn get(&self, no_ack: bool) -> MqResult<Option<Delivery>> {
        let _ = no_ack;
        todo!("queuecore")
    }

    /// Settles acknowledged deliveries.
    pub fn ack(&self, ids: &[DeliveryId]) -> MqResult<()> {
        let _ = ids;
        todo!("queuecore")
    }

    /// Rejects deliveries: requeued (to be redelivered first, flagged redelivered) or
    /// dead-lettered / dropped.
    pub fn reject(&self, ids: &[DeliveryId], requeue: bool) -> MqResult<()> {
        let _ = (ids, requeue);
        todo!("queuecore")
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> MqResult<u64> {
        todo!("queuecore")
    }
}
