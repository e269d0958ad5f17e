//! Records of the `__ferry_definitions` internal log: durable vhosts, exchanges, queues
//! and bindings, each keyed so that the last record per key wins and a tombstone deletes.
//!
//! Field tables are stored with their AMQP types (a declare's `x-message-ttl` of type
//! `signedint` must still be `signedint` after a restart, or the next equivalent
//! redeclare would fail); floats are stored as their bits so that every value round-trips.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::internal::{from_json, InternalRecord};
use crate::message::{FieldTable, FieldValue};
use crate::Result;

/// Name of the internal log holding durable definitions.
pub(crate) const DEFINITIONS_LOG: &str = "__ferry_definitions";

/// A field value with its type, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v")]
pub(crate) enum StoredValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    /// Bits of an `f32`.
    F32(u32),
    /// Bits of an `f64`.
    F64(u64),
    Decimal(u8, u32),
    ShortString(String),
    /// A long string that is valid UTF-8.
    LongString(String),
    /// A long string that is not.
    LongBytes(Vec<u8>),
    Array(Vec<StoredValue>),
    Timestamp(u64),
    Table(Vec<(String, StoredValue)>),
    ByteArray(Vec<u8>),
    Void,
}

impl From<&FieldValue> for StoredValue {
    fn from(value: &FieldValue) -> Self {
        match value {
            FieldValue::Bool(v) => StoredValue::Bool(*v),
            FieldValue::I8(v) => StoredValue::I8(*v),
            FieldValue::U8(v) => StoredValue::U8(*v),
            FieldValue::I16(v) => StoredValue::I16(*v),
            FieldValue::U16(v) => StoredValue::U16(*v),
            FieldValue::I32(v) => StoredValue::I32(*v),
            FieldValue::U32(v) => StoredValue::U32(*v),
            FieldValue::I64(v) => StoredValue::I64(*v),
            FieldValue::F32(v) => StoredValue::F32(v.to_bits()),
            FieldValue::F64(v) => StoredValue::F64(v.to_bits()),
            FieldValue::Decimal { scale, value } => StoredValue::Decimal(*scale, *value),
            FieldValue::ShortString(s) => StoredValue::ShortString(s.clone()),
            FieldValue::LongString(b) => match std::str::from_utf8(b) {
                Ok(s) => StoredValue::LongString(s.to_string()),
                Err(_) => StoredValue::LongBytes(b.to_vec()),
            },
            FieldValue::Array(items) => StoredValue::Array(items.iter().map(Into::into).collect()),
            FieldValue::Timestamp(v) => StoredValue::Timestamp(*v),
            FieldValue::Table(table) => StoredValue::Table(stored_entries(table)),
            FieldValue::ByteArray(b) => StoredValue::ByteArray(b.to_vec()),
            FieldValue::Void => StoredValue::Void,
        }
    }
}

impl From<&StoredValue> for FieldValue {
    fn from(value: &StoredValue) -> Self {
        match value {
            StoredValue::Bool(v) => FieldValue::Bool(*v),
            StoredValue::I8(v) => FieldValue::I8(*v),
            StoredValue::U8(v) => FieldValue::U8(*v),
            StoredValue::I16(v) => FieldValue::I16(*v),
            StoredValue::U16(v) => FieldValue::U16(*v),
            StoredValue::I32(v) => FieldValue::I32(*v),
            StoredValue::U32(v) => FieldValue::U32(*v),
            StoredValue::I64(v) => FieldValue::I64(*v),
            StoredValue::F32(bits) => FieldValue::F32(f32::from_bits(*bits)),
            StoredValue::F64(bits) => FieldValue::F64(f64::from_bits(*bits)),
            StoredValue::Decimal(scale, value) => FieldValue::Decimal {
                scale: *scale,
                value: *value,
            },
            StoredValue::ShortString(s) => FieldValue::ShortString(s.clone()),
            StoredValue::LongString(s) => FieldValue::LongString(Bytes::from(s.clone())),
            StoredValue::LongBytes(b) => FieldValue::LongString(Bytes::from(b.clone())),
            StoredValue::Array(items) => FieldValue::Array(items.iter().map(Into::into).collect()),
            StoredValue::Timestamp(v) => FieldValue::Timestamp(*v),
            StoredValue::Table(entries) => FieldValue::Table(field_table(entries)),
            StoredValue::ByteArray(b) => FieldValue::ByteArray(Bytes::from(b.clone())),
            StoredValue::Void => FieldValue::Void,
        }
    }
}

/// A field table as stored entries (in the table's order).
pub(crate) fn stored_entries(table: &FieldTable) -> Vec<(String, StoredValue)> {
    table.iter().map(|(k, v)| (k.clone(), v.into())).collect()
}

/// A field table from stored entries.
pub(crate) fn field_table(entries: &[(String, StoredValue)]) -> FieldTable {
    entries.iter().map(|(k, v)| (k.clone(), v.into())).collect()
}

/// Binding arguments in a canonical form: equal tables (in any order) give equal strings.
pub(crate) fn canonical_arguments(table: &FieldTable) -> String {
    if table.is_empty() {
        return String::new();
    }
    let mut entries = stored_entries(table);
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    serde_json::to_string(&entries).expect("stored values serialize to JSON")
}

/// Key of a definitions record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum DefinitionKey {
    /// A vhost.
    Vhost { name: String },
    /// A durable exchange.
    Exchange { vhost: String, name: String },
    /// A durable queue.
    Queue { vhost: String, name: String },
    /// A binding between durable ends.
    Binding {
        vhost: String,
        source: String,
        /// `queue` or `exchange`.
        destination_kind: String,
        destination: String,
        routing_key: String,
        /// [`canonical_arguments`] of the binding's arguments.
        arguments: String,
    },
}

/// Value of a [`DefinitionKey::Vhost`] record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct VhostRecord {}

/// Value of a [`DefinitionKey::Exchange`] record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ExchangeRecord {
    /// Type name.
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Vec<(String, StoredValue)>,
}

/// Value of a [`DefinitionKey::Queue`] record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct QueueRecord {
    pub auto_delete: bool,
    pub arguments: Vec<(String, StoredValue)>,
}

/// Value of a [`DefinitionKey::Binding`] record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct BindingRecord {
    pub arguments: Vec<(String, StoredValue)>,
}

/// The definitions log folded into current state, ordered by key.
#[derive(Debug, Default)]
pub(crate) struct DefinitionsState {
    pub vhosts: BTreeMap<String, VhostRecord>,
    pub exchanges: BTreeMap<(String, String), ExchangeRecord>,
    pub queues: BTreeMap<(String, String), QueueRecord>,
    /// Bindings with their key (vhost, source, destination kind, destination, routing key).
    pub bindings: BTreeMap<DefinitionKey, BindingRecord>,
}

impl DefinitionsState {
    /// Folds replayed records, in log order.
    pub fn replay(records: &[InternalRecord]) -> Result<DefinitionsState> {
        let mut state = DefinitionsState::default();
        for record in records {
            let key: DefinitionKey = from_json(&record.key)?;
            let value = record.value.as_deref();
            match key {
                DefinitionKey::Vhost { name } => match value {
                    Some(v) => {
                        state.vhosts.insert(name, from_json(v)?);
                    }
                    None => {
                        state.vhosts.remove(&name);
                    }
                },
                DefinitionKey::Exchange { vhost, name } => match value {
                    Some(v) => {
                        state.exchanges.insert((vhost, name), from_json(v)?);
                    }
                    None => {
                        state.exchanges.remove(&(vhost, name));
                    }
                },
                DefinitionKey::Queue { vhost, name } => match value {
                    Some(v) => {
                        state.queues.insert((vhost, name), from_json(v)?);
                    }
                    None => {
                        state.queues.remove(&(vhost, name));
                    }
                },
                key @ DefinitionKey::Binding { .. } => match value {
                    Some(v) => {
                        state.bindings.insert(key, from_json(v)?);
                    }
                    None => {
                        state.bindings.remove(&key);
                    }
                },
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal::to_json;

    #[test]
    fn field_tables_round_trip_with_types() {
        let mut table = FieldTable::new();
        table.insert("ttl".into(), FieldValue::I32(1000));
        table.insert("big".into(), FieldValue::I64(1 << 40));
        table.insert("nan".into(), FieldValue::F64(f64::NAN));
        table.insert("f".into(), FieldValue::F32(1.5));
        table.insert(
            "bytes".into(),
            FieldValue::LongString(Bytes::from_static(&[0xff, 0])),
        );
        table.insert(
            "nested".into(),
            FieldValue::Array(vec![
                FieldValue::Table(FieldTable::from([("a".to_string(), FieldValue::Void)])),
                FieldValue::Decimal { scale: 2, value: 5 },
                FieldValue::Timestamp(7),
            ]),
        );
        let stored = stored_entries(&table);
        let json = serde_json::to_vec(&stored).unwrap();
        let back: Vec<(String, StoredValue)> = serde_json::from_slice(&json).unwrap();
        let restored = field_table(&back);
        assert_eq!(restored.len(), table.len());
        for (k, v) in &table {
            match (v, &restored[k]) {
                (FieldValue::F64(a), FieldValue::F64(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn canonical_arguments_ignore_order() {
        let a: FieldTable = [
            ("x".to_string(), FieldValue::I32(1)),
            ("y".to_string(), FieldValue::Bool(true)),
        ]
        .into_iter()
        .collect();
        let b: FieldTable = [
            ("y".to_string(), FieldValue::Bool(true)),
            ("x".to_string(), FieldValue::I32(1)),
        ]
        .into_iter()
        .collect();
        assert_eq!(canonical_arguments(&a), canonical_arguments(&b));
        assert_ne!(
            canonical_arguments(&a),
            canonical_arguments(&FieldTable::new())
        );
    }

    #[test]
    fn replay_folds_and_tombstones() {
        let vh = DefinitionKey::Vhost { name: "v".into() };
        let q = DefinitionKey::Queue {
            vhost: "v".into(),
            name: "q".into(),
        };
        let record = |key: &DefinitionKey, value: Option<Bytes>| InternalRecord {
            key: to_json(key),
            value,
            timestamp_ms: 0,
        };
        let queue = QueueRecord {
            auto_delete: false,
            arguments: Vec::new(),
        };
        let records = vec![
            record(&vh, Some(to_json(&VhostRecord {}))),
            record(&q, Some(to_json(&queue))),
            record(&q, None),
        ];
        let state = DefinitionsState::replay(&records).unwrap();
        assert!(state.vhosts.contains_key("v"));
        assert!(state.queues.is_empty());
    }
}
