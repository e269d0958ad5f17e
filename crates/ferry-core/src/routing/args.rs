//! Declare-argument equivalence with RabbitMQ's texts.
//!
//! A redeclare must match the existing exchange or queue on the flags and on a fixed set
//! of arguments (others are ignored, as in RabbitMQ). Integers of any width compare by
//! value, so do floats; other types must match exactly. The error text depends on which
//! side is missing: `received the value '2000' of type 'signedint' but current is none`,
//! `received '2000' but current is '1000'`.

use crate::message::{FieldTable, FieldValue};
use crate::mq::MqError;
use crate::queue::type_name;

/// Queue arguments RabbitMQ 3.10 compares on a classic queue's redeclare.
const CLASSIC_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-master-locator",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
];
/// Queue arguments compared on a quorum queue's redeclare.
const QUORUM_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-quorum-initial-group-size",
    "x-single-active-consumer",
    "x-queue-type",
];
/// Queue arguments compared on a stream queue's redeclare.
const STREAM_QUEUE_ARGS: &[&str] = &[
    "x-max-length-bytes",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
    "x-queue-type",
];
/// Exchange arguments compared on redeclare.
const EXCHANGE_ARGS: &[&str] = &["alternate-exchange"];

/// A value rendered as RabbitMQ renders it in texts (strings raw, numbers in decimal,
/// compound values in Erlang term syntax).
pub(crate) fn erlang_value(value: &FieldValue) -> String {
    match value {
        FieldValue::Bool(v) => v.to_string(),
        FieldValue::I8(v) => v.to_string(),
        FieldValue::U8(v) => v.to_string(),
        FieldValue::I16(v) => v.to_string(),
        FieldValue::U16(v) => v.to_string(),
        FieldValue::I32(v) => v.to_string(),
        FieldValue::U32(v) => v.to_string(),
        FieldValue::I64(v) => v.to_string(),
        FieldValue::F32(v) => format!("{v:?}"),
        FieldValue::F64(v) => format!("{v:?}"),
        FieldValue::Decimal { scale, value } => format!("{{{scale},{value}}}"),
        FieldValue::ShortString(s) => s.clone(),
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        FieldValue::Timestamp(v) => v.to_string(),
        FieldValue::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|v| format!("{{{},{}}}", type_name(v), erlang_term(v)))
                .collect();
            format!("[{}]", items.join(","))
        }
        FieldValue::Table(table) => {
            let items: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{{<<\"{k}\">>,{},{}}}", type_name(v), erlang_term(v)))
                .collect();
            format!("[{}]", items.join(","))
        }
        FieldValue::Void => "undefined".to_string(),
    }
}

/// A value inside a compound one: binaries in `<<"…">>` syntax.
fn erlang_term(value: &FieldValue) -> String {
    match value {
        FieldValue::ShortString(_) | FieldValue::LongString(_) | FieldValue::ByteArray(_) => {
            format!("<<\"{}\">>", erlang_value(value))
        }
        _ => erlang_value(value),
    }
}

/// Integers (and decimals) form one class, floats another: values within a class compare
/// by value.
fn type_class(value: &FieldValue) -> &'static str {
    match value {
        FieldValue::I8(_)
        | FieldValue::U8(_)
        | FieldValue::I16(_)
        | FieldValue::U16(_)
        | FieldValue::I32(_)
        | FieldValue::U32(_)
        | FieldValue::I64(_)
        | FieldValue::Decimal { .. } => "int",
        FieldValue::F32(_) | FieldValue::F64(_) => "float",
        other => type_name(other),
    }
}

fn int_value(value: &FieldValue) -> Option<i128> {
    Some(match value {
        FieldValue::I8(v) => i128::from(*v),
        FieldValue::U8(v) => i128::from(*v),
        FieldValue::I16(v) => i128::from(*v),
        FieldValue::U16(v) => i128::from(*v),
        FieldValue::I32(v) => i128::from(*v),
        FieldValue::U32(v) => i128::from(*v),
        FieldValue::I64(v) => i128::from(*v),
        _ => return None,
    })
}

fn float_value(value: &FieldValue) -> Option<f64> {
    match value {
        FieldValue::F32(v) => Some(f64::from(*v)),
        FieldValue::F64(v) => Some(*v),
        _ => None,
    }
}

/// Whether two argument values are equivalent for RabbitMQ.
fn equivalent(current: &FieldValue, received: &FieldValue) -> bool {
    if current == received {
        return true;
    }
    if type_class(current) == type_class(received) {
        if let (Some(a), Some(b)) = (int_value(current), int_value(received)) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (float_value(current), float_value(received)) {
            return a == b;
        }
    }
    // Different types holding the same Erlang term (a long string and a byte array with
    // the same bytes) are equal too.
    matches!(
        (current, received),
        (FieldValue::LongString(a), FieldValue::ByteArray(b))
            | (FieldValue::ByteArray(a), FieldValue::LongString(b)) if a == b
    )
}

/// What kind of resource is being redeclared, for the texts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Resource<'a> {
    /// `exchange 'x' in vhost '/'`
    Exchange { vhost: &'a str, name: &'a str },
    /// `queue 'q' in vhost '/'`
    Queue { vhost: &'a str, name: &'a str },
}

impl std::fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Exchange { vhost, name } => {
                write!(f, "exchange '{name}' in vhost '{vhost}'")
            }
            Resource::Queue { vhost, name } => write!(f, "queue '{name}' in vhost '{vhost}'"),
        }
    }
}

/// `inequivalent arg '<key>' for <resource>: received '<new>' but current is '<old>'` for a
/// flag or the exchange type.
pub(crate) fn field_mismatch(
    resource: Resource<'_>,
    key: &str,
    received: impl std::fmt::Display,
    current: impl std::fmt::Display,
) -> MqError {
    MqError::PreconditionFailed(format!(
        "inequivalent arg '{key}' for {resource}: received '{received}' but current is '{current}'"
    ))
}

/// Checks a flag of a redeclare.
pub(crate) fn assert_flag(
    resource: Resource<'_>,
    key: &str,
    received: bool,
    current: bool,
) -> Result<(), MqError> {
    if received == current {
        Ok(())
    } else {
        Err(field_mismatch(resource, key, received, current))
    }
}

fn describe(value: Option<&FieldValue>) -> String {
    match value {
        None => "none".to_string(),
        Some(v) => format!("the value '{}' of type '{}'", erlang_value(v), type_name(v)),
    }
}

fn assert_keys(
    resource: Resource<'_>,
    keys: &[&str],
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), MqError> {
    for &key in keys {
        let (old, new) = (current.get(key), received.get(key));
        // Classic is the default queue type: naming it or not is the same declaration.
        if key == "x-queue-type" && is_classic_or_absent(old) && is_classic_or_absent(new) {
            continue;
        }
        let ok = match (old, new) {
            (None, None) => true,
            (Some(a), Some(b)) => equivalent(a, b),
            _ => false,
        };
        if ok {
            continue;
        }
        let text = match (old, new) {
            (Some(a), Some(b)) => format!(
                "inequivalent arg '{key}' for {resource}: received '{}' but current is '{}'",
                erlang_value(b),
                erlang_value(a)
            ),
            _ => format!(
                "inequivalent arg '{key}' for {resource}: received {} but current is {}",
                describe(new),
                describe(old)
            ),
        };
        return Err(MqError::PreconditionFailed(text));
    }
    Ok(())
}

fn is_classic_or_absent(value: Option<&FieldValue>) -> bool {
    match value {
        None => true,
        Some(FieldValue::LongString(b)) => b.as_ref() == b"classic",
        Some(FieldValue::ShortString(s)) => s == "classic",
        Some(_) => false,
    }
}

/// The queue type named by declare arguments (`classic` when absent).
pub(crate) fn queue_type_name(arguments: &FieldTable) -> String {
    match arguments.get("x-queue-type") {
        Some(FieldValue::LongString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(FieldValue::ShortString(s)) => s.clone(),
        _ => "classic".to_string(),
    }
}

/// Checks the arguments of a queue redeclare against the queue's.
pub(crate) fn assert_queue_args(
    vhost: &str,
    name: &str,
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), MqError> {
    let keys = match queue_type_name(current).as_str() {
        "quorum" => QUORUM_QUEUE_ARGS,
        "stream" => STREAM_QUEUE_ARGS,
        _ => CLASSIC_QUEUE_ARGS,
    };
    assert_keys(Resource::Queue { vhost, name }, keys, current, received)
}

/// Checks the arguments of an exchange redeclare against the exchange's.
pub(crate) fn assert_exchange_args(
    vhost: &str,
    name: &str,
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), MqError> {
    assert_keys(
        Resource::Exchange { vhost, name },
        EXCHANGE_ARGS,
        current,
        received,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{s, table};

    fn text(r: Result<(), MqError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn queue_texts_match_rabbitmq() {
        let none = table(&[]);
        let ttl = table(&[("x-message-ttl", FieldValue::I32(1000))]);
        assert_eq!(
            text(assert_queue_args("/", "q", &none, &table(&[("x-message-ttl", FieldValue::I32(2000))]))),
            "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the value '2000' of type 'signedint' but current is none"
        );
        assert_eq!(
            text(assert_queue_args("/", "q", &ttl, &none)),
            "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '1000' of type 'signedint'"
        );
        assert_eq!(
            text(assert_queue_args("/", "q", &ttl, &table(&[("x-message-ttl", FieldValue::I64(1 << 40))]))),
            "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '1099511627776' but current is '1000'"
        );
        assert_eq!(
            text(assert_queue_args("/", "q", &ttl, &table(&[("x-message-ttl", s("1000"))]))),
            "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '1000' but current is '1000'"
        );
        assert_eq!(
            text(assert_queue_args("/", "q", &none, &table(&[("x-single-active-consumer", FieldValue::Bool(true))]))),
            "inequivalent arg 'x-single-active-consumer' for queue 'q' in vhost '/': received the value 'true' of type 'bool' but current is none"
        );
        // Widths do not matter, unknown keys are ignored.
        assert!(assert_queue_args(
            "/",
            "q",
            &ttl,
            &table(&[
                ("x-message-ttl", FieldValue::I64(1000)),
                ("foo", FieldValue::I8(1))
            ])
        )
        .is_ok());
    }

    #[test]
    fn queue_type_defaults_to_classic() {
        let none = table(&[]);
        let classic = table(&[("x-queue-type", s("classic"))]);
        let quorum = table(&[("x-queue-type", s("quorum"))]);
        assert!(assert_queue_args("/", "q", &none, &classic).is_ok());
        assert!(assert_queue_args("/", "q", &classic, &none).is_ok());
        assert_eq!(
            text(assert_queue_args("/", "q", &none, &quorum)),
            "inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received the value 'quorum' of type 'longstr' but current is none"
        );
        assert_eq!(
            text(assert_queue_args("/", "q", &classic, &quorum)),
            "inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received 'quorum' but current is 'classic'"
        );
        assert_eq!(
            text(assert_queue_args("/", "q", &quorum, &none)),
            "inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received none but current is the value 'quorum' of type 'longstr'"
        );
    }

    #[test]
    fn exchange_texts_match_rabbitmq() {
        let ae = table(&[("alternate-exchange", s("ae1"))]);
        assert_eq!(
            text(assert_exchange_args("/", "x", &ae, &table(&[]))),
            "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': received none but current is the value 'ae1' of type 'longstr'"
        );
        assert_eq!(
            text(assert_exchange_args("/", "x", &ae, &table(&[("alternate-exchange", s("ae2"))]))),
            "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': received 'ae2' but current is 'ae1'"
        );
        assert_eq!(
            text(assert_flag(Resource::Exchange { vhost: "/", name: "x" }, "durable", true, false)),
            "inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'true' but current is 'false'"
        );
    }
}
