//! A message of the queue-and-routing model: routing key, properties (AMQP's basic
//! properties, with typed application headers) and body, and how it is stored as one
//! record of a RecordBatch v2 so that queues and stream queues share the log format —
//! and a stream queue reads as an ordinary Kafka topic.
//!
//! Record mapping (documented for users in `docs/compatibility.md`):
//! - record key = routing key (UTF-8), record value = body;
//! - each application header → a Kafka header of the same name, its value in text form
//!   (strings as-is, numbers in decimal, booleans `true`/`false`, others in a readable
//!   rendering) so Kafka consumers can read them;
//! - each set property → a Kafka header `amqp.<property>` (`amqp.content-type`,
//!   `amqp.delivery-mode`, `amqp.message-id`, …), text form;
//! - the exact typed header table in header `amqp.headers` (Ferry's own compact binary
//!   encoding of [`FieldTable`]) and the exchange in `amqp.exchange`, so that an AMQP
//!   consumer gets back exactly what an AMQP publisher sent;
//! - a record without `amqp.headers` (written by a Kafka producer) becomes a message whose
//!   headers are its Kafka headers as long strings, routing key its key.

use bytes::Bytes;
use indexmap::IndexMap;

/// A typed value of an AMQP field table (headers, arguments).
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s`
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: value × 10^-scale.
    Decimal {
        /// Digits after the point.
        scale: u8,
        /// Unscaled value.
        value: u32,
    },
    /// `s` short string (RabbitMQ never sends it in tables, but clients may).
    ShortString(String),
    /// `S` long string (bytes; usually UTF-8).
    LongString(Bytes),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T` seconds since the epoch.
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `x`
    ByteArray(Bytes),
    /// `V`
    Void,
}

/// An AMQP field table: names in insertion order.
pub type FieldTable = IndexMap<String, FieldValue>;

/// AMQP basic properties; every field optional, as on the wire.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Properties {
    /// `content-type`
    pub content_type: Option<String>,
    /// `content-encoding`
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 transient, 2 persistent.
    pub delivery_mode: Option<u8>,
    /// 0–9 (values above a queue's `x-max-priority` count as the maximum).
    pub priority: Option<u8>,
    /// `correlation-id`
    pub correlation_id: Option<String>,
    /// `reply-to`
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string (AMQP's odd choice).
    pub expiration: Option<String>,
    /// `message-id`
    pub message_id: Option<String>,
    /// Seconds since the epoch.
    pub timestamp: Option<u64>,
    /// `type`
    pub kind: Option<String>,
    /// `user-id` (validated against the connection's user, as RabbitMQ does).
    pub user_id: Option<String>,
    /// `app-id`
    pub app_id: Option<String>,
    /// `cluster-id` (deprecated in 0-9-1, kept as sent).
    pub cluster_id: Option<String>,
}

/// A message as routed and queued.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Basic properties.
    pub properties: Properties,
    /// The payload, never copied after receipt.
    pub body: Bytes,
}

impl Message {
    /// Whether the publisher asked for persistence (delivery mode 2).
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }

    /// Body plus property bytes, as counted by `x-max-length-bytes` (body only, as RabbitMQ).
    pub fn body_len(&self) -> u64 {
        self.body.len() as u64
    }
}

/// Appends `message` as one record to a batch under construction.
/// The inverse of [`message_from_record`].
pub fn message_to_record(
    builder: &mut ferry_storage::batch::BatchBuilder,
    message: &Message,
    timestamp_ms: i64,
) {
    let _ = (builder, message, timestamp_ms);
    todo!("queuecore: encode a message as one record (mapping in the module doc)")
}

/// Decodes a stored record into a message; records written by Kafka producers map as the
/// module doc says.
pub fn message_from_record(record: &ferry_storage::batch::Record) -> crate::mq::MqResult<Message> {
    let _ = record;
    todo!("queuecore: decode a record into a message (mapping in the module doc)")
}
