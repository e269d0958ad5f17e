use bytes::Bytes;
use ferry_storage::batch::{decode_records, BatchBuilder};
use proptest::prelude::*;

use super::*;

/// Encodes `message` as a one-record batch and decodes it back.
fn round_trip(message: &Message) -> Message {
    let mut builder = BatchBuilder::new(1_000);
    message_to_record(&mut builder, message, 1_000);
    let batch = builder.build();
    let records = decode_records(&batch).expect("decodes");
    assert_eq!(records.len(), 1);
    message_from_record(&records[0]).expect("maps back")
}

fn x_death() -> FieldTable {
    let mut death = FieldTable::new();
    death.insert("count".into(), FieldValue::I64(2));
    death.insert(
        "reason".into(),
        FieldValue::LongString(Bytes::from("expired")),
    );
    death.insert("queue".into(), FieldValue::LongString(Bytes::from("q")));
    death.insert("time".into(), FieldValue::Timestamp(1_700_000_000));
    death.insert(
        "routing-keys".into(),
        FieldValue::Array(vec![FieldValue::LongString(Bytes::from("rk"))]),
    );
    let mut headers = FieldTable::new();
    headers.insert(
        "x-death".into(),
        FieldValue::Array(vec![FieldValue::Table(death)]),
    );
    headers.insert("n".into(), FieldValue::I32(-7));
    headers.insert(
        "price".into(),
        FieldValue::Decimal {
            scale: 2,
            value: 1234,
        },
    );
    headers.insert("flag".into(), FieldValue::Bool(true));
    headers.insert("nothing".into(), FieldValue::Void);
    headers
}

#[test]
fn amqp_message_round_trips_exactly() {
    let message = Message {
        exchange: "amq.direct".into(),
        routing_key: "orders.eu".into(),
        properties: Properties {
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            priority: Some(5),
            expiration: Some("60000".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("order".into()),
            headers: Some(x_death()),
            ..Properties::default()
        },
        body: Bytes::from_static(b"{\"id\":1}"),
    };
    assert_eq!(round_trip(&message), message);
    // No headers stays no headers; an empty table stays an empty table.
    let bare = Message {
        exchange: String::new(),
        routing_key: String::new(),
        properties: Properties::default(),
        body: Bytes::new(),
    };
    assert_eq!(round_trip(&bare), bare);
    let mut empty = bare.clone();
    empty.properties.headers = Some(FieldTable::new());
    assert_eq!(round_trip(&empty), empty);
}

#[test]
fn kafka_readers_see_text_headers() {
    let message = Message {
        exchange: "ex".into(),
        routing_key: "k".into(),
        properties: Properties {
            delivery_mode: Some(2),
            headers: Some(x_death()),
            ..Properties::default()
        },
        body: Bytes::from_static(b"b"),
    };
    let mut builder = BatchBuilder::new(0);
    message_to_record(&mut builder, &message, 0);
    let records = decode_records(&builder.build()).expect("decodes");
    let header = |name: &str| {
        records[0]
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    };
    assert_eq!(header("amqp.delivery-mode"), Some(Bytes::from("2")));
    assert_eq!(header("amqp.exchange"), Some(Bytes::from("ex")));
    assert_eq!(header("n"), Some(Bytes::from("-7")));
    assert_eq!(header("price"), Some(Bytes::from("12.34")));
    assert_eq!(header("flag"), Some(Bytes::from("true")));
    assert_eq!(header("nothing"), None);
    let death = header("x-death").expect("rendered");
    assert!(std::str::from_utf8(&death)
        .expect("utf-8")
        .contains("\"reason\":\"expired\""));
    assert_eq!(records[0].key, Some(Bytes::from("k")));
}

#[test]
fn kafka_records_decode_sensibly() {
    let mut builder = BatchBuilder::new(0);
    builder.push(
        Some(Bytes::from("key")),
        Some(Bytes::from("value")),
        vec![
            ("trace".into(), Some(Bytes::from("abc"))),
            ("empty".into(), None),
            ("amqp.content-type".into(), Some(Bytes::from("text/plain"))),
            ("amqp.priority".into(), Some(Bytes::from("not a number"))),
        ],
        0,
    );
    builder.push(None, None, vec![], 0);
    let records = decode_records(&builder.build()).expect("decodes");
    let first = message_from_record(&records[0]).expect("maps");
    assert_eq!(first.exchange, "");
    assert_eq!(first.routing_key, "key");
    assert_eq!(first.body, Bytes::from("value"));
    assert_eq!(first.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(first.properties.priority, None);
    let headers = first.properties.headers.expect("headers");
    assert_eq!(
        headers.get("trace"),
        Some(&FieldValue::LongString(Bytes::from("abc")))
    );
    assert_eq!(headers.get("empty"), Some(&FieldValue::Void));
    assert_eq!(headers.len(), 2);
    let second = message_from_record(&records[1]).expect("maps");
    assert_eq!(second.routing_key, "");
    assert!(second.body.is_empty());
    assert_eq!(second.properties.headers, None);
}

#[test]
fn corrupt_tables_are_errors_not_panics() {
    let mut buf = BytesMut::new();
    encode_table(&mut buf, &x_death());
    let full = buf.freeze();
    for cut in 0..full.len() {
        assert!(
            decode_table_bytes(&full.slice(..cut)).is_err(),
            "cut at {cut}"
        );
    }
    // A hostile count or nesting fails cleanly.
    assert!(decode_table_bytes(&Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f])).is_err());
    let mut deep = vec![1u8, 1, b'a'];
    for _ in 0..200 {
        deep.extend_from_slice(&[TAG_ARRAY, 1]);
    }
    deep.push(TAG_VOID);
    assert!(decode_table_bytes(&Bytes::from(deep)).is_err());
}

fn field_value() -> impl Strategy<Value = FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        (-1e30f32..1e30).prop_map(FieldValue::F32),
        (-1e300f64..1e300).prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        ".{0,8}".prop_map(FieldValue::ShortString),
        proptest::collection::vec(any::<u8>(), 0..16)
            .prop_map(|b| FieldValue::LongString(Bytes::from(b))),
        any::<u64>().prop_map(FieldValue::Timestamp),
        proptest::collection::vec(any::<u8>(), 0..16)
            .prop_map(|b| FieldValue::ByteArray(Bytes::from(b))),
        Just(FieldValue::Void),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            proptest::collection::vec((".{0,6}", inner), 0..6)
                .prop_map(|entries| FieldValue::Table(entries.into_iter().collect())),
        ]
    })
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(".{0,12}")
}

prop_compose! {
    fn message()(
        exchange in ".{0,10}",
        routing_key in ".{0,10}",
        headers in proptest::option::of(proptest::collection::vec((".{0,8}", field_value()), 0..6)),
        content_type in opt_text(),
        correlation_id in opt_text(),
        delivery_mode in proptest::option::of(any::<u8>()),
        priority in proptest::option::of(any::<u8>()),
        timestamp in proptest::option::of(any::<u64>()),
        user_id in opt_text(),
        cluster_id in opt_text(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) -> Message {
        Message {
            exchange,
            routing_key,
            properties: Properties {
                content_type,
                correlation_id,
                delivery_mode,
                priority,
                timestamp,
                user_id,
                cluster_id,
                headers: headers.map(|h| h.into_iter().collect()),
                ..Properties::default()
            },
            body: Bytes::from(body),
        }
    }
}

proptest! {
    #[test]
    fn any_message_round_trips(message in message()) {
        prop_assert_eq!(round_trip(&message), message);
    }

    #[test]
    fn arbitrary_table_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_table_bytes(&Bytes::from(bytes));
    }
}
