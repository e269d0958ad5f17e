//! Headers-exchange matching, as RabbitMQ 3.10 does it.
//!
//! A binding's arguments are the pattern; `x-match` says how: `all` (the default) needs
//! every pattern header present with an equal value, `any` at least one. Pattern keys
//! starting with `x-` are ignored, except by `all-with-x` / `any-with-x` (which still ignore
//! `x-match` itself). A pattern value
//! of type void only asks for the header's presence. Values compare as Erlang's `==` does
//! on the decoded values: numbers by value whatever their width (and `1 == 1.0`), strings
//! and byte arrays by bytes, everything else structurally.

use crate::message::{FieldTable, FieldValue};
use crate::mq::{MqError, MqResult};

use crate::queue::type_name;

/// How a headers binding matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatchKind {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

/// Checks a headers binding's `x-match` argument (PRECONDITION_FAILED with RabbitMQ's text
/// when it is not one of the four values).
pub(crate) fn validate_binding(arguments: &FieldTable) -> MqResult<()> {
    match arguments.get("x-match") {
        None => Ok(()),
        Some(value) => match string_value(value) {
            Some(b"all" | b"any" | b"all-with-x" | b"any-with-x") => Ok(()),
            Some(other) if matches!(value, FieldValue::LongString(_)) => {
                Err(MqError::PreconditionFailed(format!(
                    "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
                    String::from_utf8_lossy(other)
                )))
            }
            _ => Err(MqError::PreconditionFailed(format!(
                "Invalid x-match field type {} (value {}); expected longstr",
                type_name(value),
                super::args::erlang_value(value)
            ))),
        },
    }
}

fn string_value(value: &FieldValue) -> Option<&[u8]> {
    match value {
        FieldValue::LongString(bytes) => Some(bytes),
        FieldValue::ShortString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn match_kind(arguments: &FieldTable) -> MatchKind {
    match arguments.get("x-match").and_then(string_value) {
        Some(b"any") => MatchKind::Any,
        Some(b"all-with-x") => MatchKind::AllWithX,
        Some(b"any-with-x") => MatchKind::AnyWithX,
        // RabbitMQ treats anything else (only possible for legacy bindings) as `all`.
        _ => MatchKind::All,
    }
}

/// Whether a message with `headers` matches a binding with `arguments`.
pub(crate) fn matches(arguments: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let kind = match_kind(arguments);
    let with_x = matches!(kind, MatchKind::AllWithX | MatchKind::AnyWithX);
    let mut all = true;
    let mut any = false;
    for (key, pattern) in arguments {
        // `x-match` itself is never compared, other `x-` keys only by the `-with-x` kinds.
        if key == "x-match" || (!with_x && key.starts_with("x-")) {
            continue;
        }
        let present = headers.and_then(|h| h.get(key));
        match present {
            None => all = false,
            Some(_) if matches!(pattern, FieldValue::Void) => any = true,
            Some(value) if values_equal(pattern, value) => any = true,
            Some(_) => all = false,
        }
    }
    match kind {
        MatchKind::All | MatchKind::AllWithX => all,
        MatchKind::Any | MatchKind::AnyWithX => any,
    }
}

/// A number as Erlang holds it after decoding, for `==` across integer widths and floats.
enum Number {
    Int(i128),
    Float(f64),
}

fn number(value: &FieldValue) -> Option<Number> {
    Some(match value {
        FieldValue::I8(v) => Number::Int(i128::from(*v)),
        FieldValue::U8(v) => Number::Int(i128::from(*v)),
        FieldValue::I16(v) => Number::Int(i128::from(*v)),
        FieldValue::U16(v) => Number::Int(i128::from(*v)),
        FieldValue::I32(v) => Number::Int(i128::from(*v)),
        FieldValue::U32(v) => Number::Int(i128::from(*v)),
        FieldValue::I64(v) => Number::Int(i128::from(*v)),
        FieldValue::Timestamp(v) => Number::Int(i128::from(*v)),
        FieldValue::F32(v) => Number::Float(f64::from(*v)),
        FieldValue::F64(v) => Number::Float(*v),
        _ => return None,
    })
}

/// Erlang's `==` on two decoded field values.
pub(crate) fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return match (x, y) {
            (Number::Int(x), Number::Int(y)) => x == y,
            (Number::Float(x), Number::Float(y)) => x == y,
            (Number::Int(i), Number::Float(f)) | (Number::Float(f), Number::Int(i)) => {
                f.fract() == 0.0 && (f as i128) == i && f.is_finite()
            }
        };
    }
    let bytes = |v: &FieldValue| -> Option<Vec<u8>> {
        match v {
            FieldValue::LongString(b) | FieldValue::ByteArray(b) => Some(b.to_vec()),
            FieldValue::ShortString(s) => Some(s.as_bytes().to_vec()),
            _ => None,
        }
    };
    if let (Some(x), Some(y)) = (bytes(a), bytes(b)) {
        return x == y;
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{s, table};

    #[test]
    fn all_and_any() {
        let all = table(&[
            ("x-match", s("all")),
            ("a", s("1")),
            ("b", FieldValue::I32(2)),
        ]);
        let any = table(&[
            ("x-match", s("any")),
            ("a", s("1")),
            ("b", FieldValue::I32(2)),
        ]);
        let both = table(&[("a", s("1")), ("b", FieldValue::I64(2)), ("c", s("z"))]);
        let one = table(&[("a", s("1")), ("b", FieldValue::I32(3))]);
        assert!(matches(&all, Some(&both)));
        assert!(!matches(&all, Some(&one)));
        assert!(matches(&any, Some(&one)));
        assert!(!matches(&any, Some(&table(&[("c", s("1"))]))));
        assert!(!matches(&all, None));
        assert!(!matches(&any, None));
        // Default is all.
        let default = table(&[("a", s("1"))]);
        assert!(matches(&default, Some(&both)));
        assert!(!matches(&default, None));
        // A pattern of only x- keys: all matches everything, any nothing.
        assert!(matches(&table(&[("x-match", s("all"))]), None));
        assert!(!matches(&table(&[("x-match", s("any"))]), Some(&both)));
    }

    #[test]
    fn x_keys_and_with_x() {
        let headers = table(&[("x-tenant", s("t1")), ("a", s("1"))]);
        let ignored = table(&[
            ("x-match", s("all")),
            ("x-tenant", s("other")),
            ("a", s("1")),
        ]);
        assert!(matches(&ignored, Some(&headers)));
        let with_x = table(&[
            ("x-match", s("all-with-x")),
            ("x-tenant", s("other")),
            ("a", s("1")),
        ]);
        assert!(!matches(&with_x, Some(&headers)));
        let any_with_x = table(&[("x-match", s("any-with-x")), ("x-tenant", s("t1"))]);
        assert!(matches(&any_with_x, Some(&headers)));
        let all_with_x = table(&[("x-match", s("all-with-x")), ("a", s("1"))]);
        assert!(matches(&all_with_x, Some(&headers)));
    }

    #[test]
    fn void_means_presence_and_numbers_compare_by_value() {
        let pattern = table(&[("a", FieldValue::Void), ("n", FieldValue::U8(7))]);
        assert!(matches(
            &pattern,
            Some(&table(&[("a", s("anything")), ("n", FieldValue::F64(7.0))]))
        ));
        assert!(!matches(
            &pattern,
            Some(&table(&[("a", s("anything")), ("n", s("7"))]))
        ));
        assert!(values_equal(&s("x"), &FieldValue::ShortString("x".into())));
        assert!(!values_equal(&FieldValue::Bool(true), &s("true")));
    }

    #[test]
    fn x_match_validation_texts() {
        assert!(validate_binding(&table(&[("x-match", s("any-with-x"))])).is_ok());
        assert!(validate_binding(&table(&[])).is_ok());
        let e = validate_binding(&table(&[("x-match", s("foo"))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x"
        );
        let e = validate_binding(&table(&[("x-match", FieldValue::I32(5))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid x-match field type signedint (value 5); expected longstr"
        );
    }
}
