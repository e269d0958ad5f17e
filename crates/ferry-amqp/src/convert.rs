//! Conversions between `amq-protocol`'s wire types and the core's message types
//! ([`Properties`], [`FieldTable`]), and the parsing of consume arguments the adapter owns
//! (`x-priority`, `x-stream-offset`).
//!
//! Strings going out as AMQP short strings are cut to 255 bytes on a character boundary:
//! a value that came from elsewhere (a Kafka header, a long error text) must not make the
//! encoder fail.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable as WireTable, LongString,
    ShortString,
};
use bytes::Bytes;
use ferry_core::message::{FieldTable, FieldValue, Properties};
use ferry_core::queue::{time_unit_ms, StreamStart};

/// Longest AMQP short string.
const SHORT_STRING_MAX: usize = 255;

/// `s` as a short string, cut to 255 bytes on a character boundary.
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(SHORT_STRING_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&s[..end]).unwrap_or_default()
}

/// A wire field table as the core's table.
pub fn table_from_wire(table: &WireTable) -> FieldTable {
    table
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_from_wire(v)))
        .collect()
}

fn value_from_wire(value: &AMQPValue) -> FieldValue {
    match value {
        AMQPValue::Boolean(v) => FieldValue::Bool(*v),
        AMQPValue::ShortShortInt(v) => FieldValue::I8(*v),
        AMQPValue::ShortShortUInt(v) => FieldValue::U8(*v),
        AMQPValue::ShortInt(v) => FieldValue::I16(*v),
        AMQPValue::ShortUInt(v) => FieldValue::U16(*v),
        AMQPValue::LongInt(v) => FieldValue::I32(*v),
        AMQPValue::LongUInt(v) => FieldValue::U32(*v),
        AMQPValue::LongLongInt(v) => FieldValue::I64(*v),
        AMQPValue::Float(v) => FieldValue::F32(*v),
        AMQPValue::Double(v) => FieldValue::F64(*v),
        AMQPValue::DecimalValue(d) => FieldValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => FieldValue::ShortString(s.as_str().to_owned()),
        AMQPValue::LongString(s) => FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::FieldArray(a) => {
            FieldValue::Array(a.as_slice().iter().map(value_from_wire).collect())
        }
        AMQPValue::Timestamp(t) => FieldValue::Timestamp(*t),
        AMQPValue::FieldTable(t) => FieldValue::Table(table_from_wire(t)),
        AMQPValue::ByteArray(b) => FieldValue::ByteArray(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => FieldValue::Void,
    }
}

/// The core's table as a wire table (keys longer than 255 bytes cannot be sent and are
/// cut).
pub fn table_to_wire(table: &FieldTable) -> WireTable {
    let mut out = WireTable::default();
    for (k, v) in table {
        out.insert(short(k), value_to_wire(v));
    }
    out
}

fn value_to_wire(value: &FieldValue) -> AMQPValue {
    match value {
        FieldValue::Bool(v) => AMQPValue::Boolean(*v),
        FieldValue::I8(v) => AMQPValue::ShortShortInt(*v),
        FieldValue::U8(v) => AMQPValue::ShortShortUInt(*v),
        FieldValue::I16(v) => AMQPValue::ShortInt(*v),
        FieldValue::U16(v) => AMQPValue::ShortUInt(*v),
        FieldValue::I32(v) => AMQPValue::LongInt(*v),
        FieldValue::U32(v) => AMQPValue::LongUInt(*v),
        FieldValue::I64(v) => AMQPValue::LongLongInt(*v),
        FieldValue::F32(v) => AMQPValue::Float(*v),
        FieldValue::F64(v) => AMQPValue::Double(*v),
        FieldValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        FieldValue::ShortString(s) => AMQPValue::ShortString(short(s)),
        FieldValue::LongString(b) => AMQPValue::LongString(LongString::from(b.to_vec())),
        FieldValue::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(value_to_wire).collect::<Vec<_>>(),
        )),
        FieldValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        FieldValue::Table(t) => AMQPValue::FieldTable(table_to_wire(t)),
        FieldValue::ByteArray(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        FieldValue::Void => AMQPValue::Void,
    }
}

fn string(s: &Option<ShortString>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_owned())
}

/// Wire basic properties as the core's.
pub fn properties_from_wire(p: &AMQPProperties) -> Properties {
    Properties {
        content_type: string(p.content_type()),
        content_encoding: string(p.content_encoding()),
        headers: p.headers().as_ref().map(table_from_wire),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: string(p.correlation_id()),
        reply_to: string(p.reply_to()),
        expiration: string(p.expiration()),
        message_id: string(p.message_id()),
        timestamp: *p.timestamp(),
        kind: string(p.kind()),
        user_id: string(p.user_id()),
        app_id: string(p.app_id()),
        cluster_id: string(p.cluster_id()),
    }
}

/// The core's properties as wire basic properties.
pub fn properties_to_wire(p: &Properties) -> AMQPProperties {
    let mut w = AMQPProperties::default();
    if let Some(v) = &p.content_type {
        w = w.with_content_type(short(v));
    }
    if let Some(v) = &p.content_encoding {
        w = w.with_content_encoding(short(v));
    }
    if let Some(v) = &p.headers {
        w = w.with_headers(table_to_wire(v));
    }
    if let Some(v) = p.delivery_mode {
        w = w.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        w = w.with_priority(v);
    }
    if let Some(v) = &p.correlation_id {
        w = w.with_correlation_id(short(v));
    }
    if let Some(v) = &p.reply_to {
        w = w.with_reply_to(short(v));
    }
    if let Some(v) = &p.expiration {
        w = w.with_expiration(short(v));
    }
    if let Some(v) = &p.message_id {
        w = w.with_message_id(short(v));
    }
    if let Some(v) = p.timestamp {
        w = w.with_timestamp(v);
    }
    if let Some(v) = &p.kind {
        w = w.with_type(short(v));
    }
    if let Some(v) = &p.user_id {
        w = w.with_user_id(short(v));
    }
    if let Some(v) = &p.app_id {
        w = w.with_app_id(short(v));
    }
    if let Some(v) = &p.cluster_id {
        w = w.with_cluster_id(short(v));
    }
    w
}

/// `x-stream-offset` of `basic.consume`, RabbitMQ's forms: `first`, `last`, `next`, an
/// offset (any integer type), a timestamp (`T`, seconds), or an interval string
/// (`<n>Y|M|D|h|m|s`, that long before `now_ms`). `Err` carries the text of the
/// PRECONDITION_FAILED.
pub fn stream_start(value: Option<&FieldValue>, now_ms: i64) -> Result<StreamStart, String> {
    let Some(value) = value else {
        return Ok(StreamStart::Next);
    };
    if let Some(offset) = value.as_integer() {
        return Ok(StreamStart::Offset(offset.max(0)));
    }
    let text = match value {
        FieldValue::Timestamp(secs) => {
            return Ok(StreamStart::Timestamp(
                i64::try_from(*secs)
                    .unwrap_or(i64::MAX / 1000)
                    .saturating_mul(1000),
            ))
        }
        FieldValue::LongString(b) => String::from_utf8_lossy(b).into_owned(),
        FieldValue::ShortString(s) => s.clone(),
        _ => return Err(format!("Invalid value for x-stream-offset: {value:?}")),
    };
    match text.as_str() {
        "first" => return Ok(StreamStart::First),
        "last" => return Ok(StreamStart::Last),
        "next" => return Ok(StreamStart::Next),
        _ => {}
    }
    let invalid = || format!("Invalid value for x-stream-offset: {text:?}");
    let unit_at = text.len().checked_sub(1).ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(unit_at);
    let n: i64 = digits.parse().map_err(|_| invalid())?;
    let unit_ms = time_unit_ms(unit).ok_or_else(invalid)?;
    if n < 0 {
        return Err(invalid());
    }
    Ok(StreamStart::Timestamp(
        now_ms.saturating_sub(n.saturating_mul(unit_ms)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_properties_round_trip() {
        let mut inner = FieldTable::new();
        inner.insert("n".into(), FieldValue::I64(-5));
        let mut headers = FieldTable::new();
        headers.insert(
            "s".into(),
            FieldValue::LongString(Bytes::from_static(b"text")),
        );
        headers.insert("t".into(), FieldValue::Table(inner));
        headers.insert(
            "a".into(),
            FieldValue::Array(vec![FieldValue::Bool(true), FieldValue::Void]),
        );
        headers.insert(
            "d".into(),
            FieldValue::Decimal {
                scale: 2,
                value: 150,
            },
        );
        let props = Properties {
            content_type: Some("text/plain".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(3),
            timestamp: Some(1_700_000_000),
            kind: Some("kind".into()),
            user_id: Some("guest".into()),
            ..Properties::default()
        };
        let wire = properties_to_wire(&props);
        let back = properties_from_wire(&wire);
        // Wire tables are sorted by key; compare as sets.
        let (mut a, mut b) = (props.clone(), back.clone());
        let (ha, hb) = (a.headers.take(), b.headers.take());
        assert_eq!(a, b);
        let (ha, hb) = (ha.expect("headers"), hb.expect("headers"));
        assert_eq!(ha.len(), hb.len());
        for (k, v) in &ha {
            assert_eq!(hb.get(k), Some(v), "{k}");
        }
    }

    #[test]
    fn long_strings_are_cut_on_char_boundaries() {
        let long = "é".repeat(200); // 400 bytes
        let s = short(&long);
        assert!(s.as_str().len() <= 255);
        assert_eq!(s.as_str().len(), 254);
    }

    #[test]
    fn stream_offsets() {
        let now = 10_000_000;
        let ls = |s: &str| FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()));
        assert_eq!(stream_start(None, now), Ok(StreamStart::Next));
        assert_eq!(
            stream_start(Some(&ls("first")), now),
            Ok(StreamStart::First)
        );
        assert_eq!(stream_start(Some(&ls("last")), now), Ok(StreamStart::Last));
        assert_eq!(stream_start(Some(&ls("next")), now), Ok(StreamStart::Next));
        assert_eq!(
            stream_start(Some(&FieldValue::I64(42)), now),
            Ok(StreamStart::Offset(42))
        );
        assert_eq!(
            stream_start(Some(&FieldValue::U8(7)), now),
            Ok(StreamStart::Offset(7))
        );
        assert_eq!(
            stream_start(Some(&FieldValue::Timestamp(1_000)), now),
            Ok(StreamStart::Timestamp(1_000_000))
        );
        assert_eq!(
            stream_start(Some(&ls("1h")), now),
            Ok(StreamStart::Timestamp(now - 3_600_000))
        );
        assert_eq!(
            stream_start(Some(&ls("30s")), now),
            Ok(StreamStart::Timestamp(now - 30_000))
        );
        assert!(stream_start(Some(&ls("soon")), now).is_err());
        assert!(stream_start(Some(&ls("")), now).is_err());
        assert!(stream_start(Some(&FieldValue::Bool(true)), now).is_err());
    }
}
