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
//! - the exchange in `amqp.exchange` (omitted for the default exchange `""`);
//! - the exact typed header table in header `amqp.headers` (Ferry's own compact binary
//!   encoding of [`FieldTable`]) unless the text headers already say it exactly (every
//!   value a long string, no name starting with `amqp.`, at least one header), so that an
//!   AMQP consumer gets back exactly what an AMQP publisher sent while a Kafka consumer of
//!   an ordinary message sees only readable headers;
//! - a record without `amqp.headers` (written by a Kafka producer, or by AMQP with only
//!   long-string headers) becomes a message whose headers are its Kafka headers other than
//!   `amqp.*` as long strings (a null value as void), routing key its key (`""` if null),
//!   body its value, properties its `amqp.<property>` headers (unparsable ones ignored).

use bytes::{BufMut, Bytes, BytesMut};
use ferry_storage::batch::{BatchBuilder, Record};
use indexmap::IndexMap;

use crate::mq::{MqError, MqResult};
use crate::CoreError;

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

impl FieldValue {
    /// The integer of an integer-typed value of any width (RabbitMQ's
    /// `?INTEGER_ARG_TYPES`); `None` for every other type.
    pub fn as_integer(&self) -> Option<i64> {
        Some(match self {
            FieldValue::I8(v) => (*v).into(),
            FieldValue::U8(v) => (*v).into(),
            FieldValue::I16(v) => (*v).into(),
            FieldValue::U16(v) => (*v).into(),
            FieldValue::I32(v) => (*v).into(),
            FieldValue::U32(v) => (*v).into(),
            FieldValue::I64(v) => *v,
            _ => return None,
        })
    }
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

/// Prefix of the Kafka headers that carry AMQP properties and Ferry's own fields.
const AMQP_HEADER_PREFIX: &str = "amqp.";
/// Header holding the exchange (absent for the default exchange).
const EXCHANGE_HEADER: &str = "amqp.exchange";
/// Header holding the exact typed application headers ([`encode_table`]).
const HEADERS_HEADER: &str = "amqp.headers";
/// Deepest nesting of tables and arrays decoded (x-death is 3 deep; this only stops
/// hostile input from exhausting the stack).
const TABLE_DEPTH_MAX: usize = 64;

/// Appends `message` as one record to a batch under construction.
/// The inverse of [`message_from_record`].
pub fn message_to_record(builder: &mut BatchBuilder, message: &Message, timestamp_ms: i64) {
    let props = &message.properties;
    let app_headers = props.headers.as_ref();
    let mut headers: Vec<(String, Option<Bytes>)> =
        Vec::with_capacity(3 + app_headers.map_or(0, |h| h.len()));
    if !message.exchange.is_empty() {
        headers.push((
            EXCHANGE_HEADER.to_string(),
            Some(Bytes::copy_from_slice(message.exchange.as_bytes())),
        ));
    }
    let mut text = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            headers.push((
                format!("{AMQP_HEADER_PREFIX}{name}"),
                Some(Bytes::from(value)),
            ));
        }
    };
    text("content-type", props.content_type.clone());
    text("content-encoding", props.content_encoding.clone());
    text("delivery-mode", props.delivery_mode.map(|v| v.to_string()));
    text("priority", props.priority.map(|v| v.to_string()));
    text("correlation-id", props.correlation_id.clone());
    text("reply-to", props.reply_to.clone());
    text("expiration", props.expiration.clone());
    text("message-id", props.message_id.clone());
    text("timestamp", props.timestamp.map(|v| v.to_string()));
    text("type", props.kind.clone());
    text("user-id", props.user_id.clone());
    text("app-id", props.app_id.clone());
    text("cluster-id", props.cluster_id.clone());
    if let Some(table) = app_headers {
        let exact_as_text = !table.is_empty()
            && table.iter().all(|(name, value)| {
                matches!(value, FieldValue::LongString(_)) && !name.starts_with(AMQP_HEADER_PREFIX)
            });
        if !exact_as_text {
            let mut buf = BytesMut::new();
            encode_table(&mut buf, table);
            headers.push((HEADERS_HEADER.to_string(), Some(buf.freeze())));
        }
        for (name, value) in table {
            headers.push((name.clone(), text_form(value)));
        }
    }
    let key = (!message.routing_key.is_empty())
        .then(|| Bytes::copy_from_slice(message.routing_key.as_bytes()));
    builder.push(key, Some(message.body.clone()), headers, timestamp_ms);
}

/// Decodes a stored record into a message; records written by Kafka producers map as the
/// module doc says.
pub fn message_from_record(record: &Record) -> MqResult<Message> {
    let routing_key = record
        .key
        .as_ref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let body = record.value.clone().unwrap_or_default();
    let mut properties = Properties::default();
    let mut exchange = None;
    let mut typed_headers = None;
    let mut kafka_headers = FieldTable::new();
    for (name, value) in &record.headers {
        let Some(prop) = name.strip_prefix(AMQP_HEADER_PREFIX) else {
            let value = match value {
                Some(v) => FieldValue::LongString(v.clone()),
                None => FieldValue::Void,
            };
            kafka_headers.entry(name.clone()).or_insert(value);
            continue;
        };
        let Some(value) = value else { continue };
        let text = || Some(String::from_utf8_lossy(value).into_owned());
        // The first occurrence wins: Ferry writes its own `amqp.*` headers before the
        // text copies of application headers, which could reuse those names.
        match prop {
            "exchange" if exchange.is_none() => exchange = text(),
            "headers" if typed_headers.is_none() => {
                typed_headers = Some(decode_table_bytes(value)?)
            }
            "content-type" if properties.content_type.is_none() => properties.content_type = text(),
            "content-encoding" if properties.content_encoding.is_none() => {
                properties.content_encoding = text()
            }
            "delivery-mode" if properties.delivery_mode.is_none() => {
                properties.delivery_mode = parse_text(value)
            }
            "priority" if properties.priority.is_none() => properties.priority = parse_text(value),
            "correlation-id" if properties.correlation_id.is_none() => {
                properties.correlation_id = text()
            }
            "reply-to" if properties.reply_to.is_none() => properties.reply_to = text(),
            "expiration" if properties.expiration.is_none() => properties.expiration = text(),
            "message-id" if properties.message_id.is_none() => properties.message_id = text(),
            "timestamp" if properties.timestamp.is_none() => {
                properties.timestamp = parse_text(value)
            }
            "type" if properties.kind.is_none() => properties.kind = text(),
            "user-id" if properties.user_id.is_none() => properties.user_id = text(),
            "app-id" if properties.app_id.is_none() => properties.app_id = text(),
            "cluster-id" if properties.cluster_id.is_none() => properties.cluster_id = text(),
            _ => {}
        }
    }
    properties.headers = match typed_headers {
        // The exact typed table (its text copies are ignored).
        Some(typed) => Some(typed),
        // Long strings only, or written by a Kafka producer: the plain headers.
        None => (!kafka_headers.is_empty()).then_some(kafka_headers),
    };
    Ok(Message {
        exchange: exchange.unwrap_or_default(),
        routing_key,
        properties,
        body,
    })
}

/// Whether a stored record is a persistent message (`amqp.delivery-mode` 2), read from its
/// headers without decoding the message (recovery drops transient ones).
pub(crate) fn record_is_persistent(record: &Record) -> bool {
    record
        .headers
        .iter()
        .find(|(name, _)| name == "amqp.delivery-mode")
        .is_some_and(|(_, value)| value.as_deref() == Some(b"2".as_slice()))
}

/// Parses a decimal text property; a value a Kafka producer wrote badly is ignored.
fn parse_text<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The readable text form of a header value for Kafka consumers; `None` for void.
fn text_form(value: &FieldValue) -> Option<Bytes> {
    let text = match value {
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => return Some(b.clone()),
        FieldValue::ShortString(s) => s.clone(),
        FieldValue::Void => return None,
        FieldValue::Bool(v) => v.to_string(),
        FieldValue::I8(v) => v.to_string(),
        FieldValue::U8(v) => v.to_string(),
        FieldValue::I16(v) => v.to_string(),
        FieldValue::U16(v) => v.to_string(),
        FieldValue::I32(v) => v.to_string(),
        FieldValue::U32(v) => v.to_string(),
        FieldValue::I64(v) => v.to_string(),
        FieldValue::F32(v) => v.to_string(),
        FieldValue::F64(v) => v.to_string(),
        FieldValue::Timestamp(v) => v.to_string(),
        FieldValue::Decimal { scale, value } => decimal_text(*scale, *value),
        FieldValue::Array(_) | FieldValue::Table(_) => json_form(value).to_string(),
    };
    Some(Bytes::from(text))
}

/// `value × 10^-scale` in decimal notation.
fn decimal_text(scale: u8, value: u32) -> String {
    let digits = value.to_string();
    let scale = scale as usize;
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// A JSON rendering of nested values (tables as objects, arrays as arrays).
fn json_form(value: &FieldValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        FieldValue::Bool(v) => Value::from(*v),
        FieldValue::I8(v) => Value::from(*v),
        FieldValue::U8(v) => Value::from(*v),
        FieldValue::I16(v) => Value::from(*v),
        FieldValue::U16(v) => Value::from(*v),
        FieldValue::I32(v) => Value::from(*v),
        FieldValue::U32(v) => Value::from(*v),
        FieldValue::I64(v) => Value::from(*v),
        FieldValue::F32(v) => Value::from(*v),
        FieldValue::F64(v) => Value::from(*v),
        FieldValue::Timestamp(v) => Value::from(*v),
        FieldValue::Decimal { scale, value } => Value::from(decimal_text(*scale, *value)),
        FieldValue::ShortString(s) => Value::from(s.as_str()),
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
            Value::from(String::from_utf8_lossy(b).into_owned())
        }
        FieldValue::Void => Value::Null,
        FieldValue::Array(items) => Value::Array(items.iter().map(json_form).collect()),
        FieldValue::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), json_form(v)))
                .collect(),
        ),
    }
}

// Ferry's binary encoding of a field table: a varint entry count, then per entry a
// length-prefixed name and a tagged value. Integers are (zigzag) varints, so small values
// take one or two bytes; every tag is distinct (unlike AMQP's, where `s` is ambiguous).
const TAG_BOOL: u8 = 1;
const TAG_I8: u8 = 2;
const TAG_U8: u8 = 3;
const TAG_I16: u8 = 4;
const TAG_U16: u8 = 5;
const TAG_I32: u8 = 6;
const TAG_U32: u8 = 7;
const TAG_I64: u8 = 8;
const TAG_F32: u8 = 9;
const TAG_F64: u8 = 10;
const TAG_DECIMAL: u8 = 11;
const TAG_SHORT_STRING: u8 = 12;
const TAG_LONG_STRING: u8 = 13;
const TAG_ARRAY: u8 = 14;
const TAG_TIMESTAMP: u8 = 15;
const TAG_TABLE: u8 = 16;
const TAG_BYTE_ARRAY: u8 = 17;
const TAG_VOID: u8 = 18;

/// Appends the binary encoding of `table` (see the tags above).
pub(crate) fn encode_table(buf: &mut BytesMut, table: &FieldTable) {
    put_uvarint(buf, table.len() as u64);
    for (name, value) in table {
        put_bytes(buf, name.as_bytes());
        encode_value(buf, value);
    }
}

fn encode_value(buf: &mut BytesMut, value: &FieldValue) {
    match value {
        FieldValue::Bool(v) => {
            buf.put_u8(TAG_BOOL);
            buf.put_u8(u8::from(*v));
        }
        FieldValue::I8(v) => {
            buf.put_u8(TAG_I8);
            buf.put_i8(*v);
        }
        FieldValue::U8(v) => {
            buf.put_u8(TAG_U8);
            buf.put_u8(*v);
        }
        FieldValue::I16(v) => {
            buf.put_u8(TAG_I16);
            put_svarint(buf, (*v).into());
        }
        FieldValue::U16(v) => {
            buf.put_u8(TAG_U16);
            put_uvarint(buf, (*v).into());
        }
        FieldValue::I32(v) => {
            buf.put_u8(TAG_I32);
            put_svarint(buf, (*v).into());
        }
        FieldValue::U32(v) => {
            buf.put_u8(TAG_U32);
            put_uvarint(buf, (*v).into());
        }
        FieldValue::I64(v) => {
            buf.put_u8(TAG_I64);
            put_svarint(buf, *v);
        }
        FieldValue::F32(v) => {
            buf.put_u8(TAG_F32);
            buf.put_u32(v.to_bits());
        }
        FieldValue::F64(v) => {
            buf.put_u8(TAG_F64);
            buf.put_u64(v.to_bits());
        }
        FieldValue::Decimal { scale, value } => {
            buf.put_u8(TAG_DECIMAL);
            buf.put_u8(*scale);
            put_uvarint(buf, (*value).into());
        }
        FieldValue::ShortString(s) => {
            buf.put_u8(TAG_SHORT_STRING);
            put_bytes(buf, s.as_bytes());
        }
        FieldValue::LongString(b) => {
            buf.put_u8(TAG_LONG_STRING);
            put_bytes(buf, b);
        }
        FieldValue::Array(items) => {
            buf.put_u8(TAG_ARRAY);
            put_uvarint(buf, items.len() as u64);
            for item in items {
                encode_value(buf, item);
            }
        }
        FieldValue::Timestamp(v) => {
            buf.put_u8(TAG_TIMESTAMP);
            put_uvarint(buf, *v);
        }
        FieldValue::Table(t) => {
            buf.put_u8(TAG_TABLE);
            encode_table(buf, t);
        }
        FieldValue::ByteArray(b) => {
            buf.put_u8(TAG_BYTE_ARRAY);
            put_bytes(buf, b);
        }
        FieldValue::Void => buf.put_u8(TAG_VOID),
    }
}

/// Decodes a whole buffer written by [`encode_table`].
pub(crate) fn decode_table_bytes(bytes: &Bytes) -> MqResult<FieldTable> {
    let mut reader = Reader { buf: bytes, pos: 0 };
    let table = reader.table(0)?;
    if reader.pos != bytes.len() {
        return Err(corrupt("trailing bytes after the header table"));
    }
    Ok(table)
}

fn corrupt(what: &str) -> MqError {
    MqError::Core(CoreError::CorruptMessage(format!(
        "stored AMQP headers: {what}"
    )))
}

/// Appends an unsigned LEB128 varint.
pub(crate) fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Appends a zigzag-encoded signed varint.
pub(crate) fn put_svarint(buf: &mut BytesMut, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    put_uvarint(buf, bytes.len() as u64);
    buf.put_slice(bytes);
}

/// Reads Ferry's compact encodings from a shared buffer (byte strings are zero-copy
/// slices of it).
pub(crate) struct Reader<'a> {
    pub buf: &'a Bytes,
    pub pos: usize,
}

impl Reader<'_> {
    /// One byte.
    pub fn u8(&mut self) -> MqResult<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| corrupt("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> MqResult<[u8; N]> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or_else(|| corrupt("truncated"))?;
        self.pos += N;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// An unsigned LEB128 varint (at most 10 bytes).
    pub fn uvarint(&mut self) -> MqResult<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(corrupt("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("varint longer than 10 bytes"))
    }

    /// A zigzag signed varint.
    pub fn svarint(&mut self) -> MqResult<i64> {
        let v = self.uvarint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn bytes(&mut self) -> MqResult<Bytes> {
        let len = self.uvarint()?;
        let len = usize::try_from(len).map_err(|_| corrupt("length"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| corrupt("length past the end"))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn string(&mut self) -> MqResult<String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("name is not UTF-8"))
    }

    /// A count of items, each taking at least one byte: never more than the bytes left.
    fn count(&mut self) -> MqResult<usize> {
        let n = self.uvarint()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(corrupt("count larger than the bytes left"));
        }
        Ok(n as usize)
    }

    fn table(&mut self, depth: usize) -> MqResult<FieldTable> {
        if depth > TABLE_DEPTH_MAX {
            return Err(corrupt("nested too deep"));
        }
        let n = self.count()?;
        let mut table = FieldTable::with_capacity(n);
        for _ in 0..n {
            let name = self.string()?;
            let value = self.value(depth)?;
            table.insert(name, value);
        }
        Ok(table)
    }

    fn value(&mut self, depth: usize) -> MqResult<FieldValue> {
        let narrow = |v: u64| u32::try_from(v).map_err(|_| corrupt("integer out of range"));
        Ok(match self.u8()? {
            TAG_BOOL => FieldValue::Bool(self.u8()? != 0),
            TAG_I8 => FieldValue::I8(self.u8()? as i8),
            TAG_U8 => FieldValue::U8(self.u8()?),
            TAG_I16 => FieldValue::I16(
                i16::try_from(self.svarint()?).map_err(|_| corrupt("integer out of range"))?,
            ),
            TAG_U16 => FieldValue::U16(
                u16::try_from(self.uvarint()?).map_err(|_| corrupt("integer out of range"))?,
            ),
            TAG_I32 => FieldValue::I32(
                i32::try_from(self.svarint()?).map_err(|_| corrupt("integer out of range"))?,
            ),
            TAG_U32 => FieldValue::U32(narrow(self.uvarint()?)?),
            TAG_I64 => FieldValue::I64(self.svarint()?),
            TAG_F32 => FieldValue::F32(f32::from_bits(u32::from_be_bytes(self.array()?))),
            TAG_F64 => FieldValue::F64(f64::from_bits(u64::from_be_bytes(self.array()?))),
            TAG_DECIMAL => {
                let scale = self.u8()?;
                FieldValue::Decimal {
                    scale,
                    value: narrow(self.uvarint()?)?,
                }
            }
            TAG_SHORT_STRING => FieldValue::ShortString(self.string()?),
            TAG_LONG_STRING => FieldValue::LongString(self.bytes()?),
            TAG_ARRAY => {
                if depth >= TABLE_DEPTH_MAX {
                    return Err(corrupt("nested too deep"));
                }
                let n = self.count()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                FieldValue::Array(items)
            }
            TAG_TIMESTAMP => FieldValue::Timestamp(self.uvarint()?),
            TAG_TABLE => FieldValue::Table(self.table(depth + 1)?),
            TAG_BYTE_ARRAY => FieldValue::ByteArray(self.bytes()?),
            TAG_VOID => FieldValue::Void,
            tag => return Err(corrupt(&format!("unknown value tag {tag}"))),
        })
    }
}

#[cfg(test)]
mod tests;
