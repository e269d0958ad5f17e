//! Helpers shared by the crate's unit tests.

use bytes::Bytes;

use crate::message::{FieldTable, FieldValue};

/// A long-string field value.
pub(crate) fn s(v: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(v.as_bytes()))
}

/// A field table of `entries`, in order.
pub(crate) fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}
