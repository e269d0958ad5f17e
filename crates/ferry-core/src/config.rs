//! Topic configuration: Kafka-named keys (`retention.ms`, `segment.bytes`, …) plus Ferry's
//! own (`flush.mode`), parsed and validated in one place for every protocol.
//!
//! Every key is described once in [`KEYS`]: its name, documentation, parser and printer.
//! Parsing, describing and validation all walk that table, so adding a key is one entry.

use std::collections::BTreeMap;

use ferry_storage::{FlushPolicy, LogConfig};

use crate::CoreError;

/// Built-in `retention.ms`: 7 days, as Kafka.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Built-in `segment.bytes`: 1 GiB, as Kafka.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;
/// Built-in `segment.ms`: 7 days, as Kafka.
pub const DEFAULT_SEGMENT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Built-in `max.message.bytes`: 1 MiB plus record-batch overhead, as Kafka.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1_048_588;
/// Built-in `flush.ms` for `flush.mode=async`.
pub const DEFAULT_FLUSH_MS: u64 = 1000;
/// Built-in `flush.bytes` for `flush.mode=async`.
pub const DEFAULT_FLUSH_BYTES: u64 = 64 << 20;
/// Smallest accepted `segment.bytes` (Kafka's lower bound: one legacy record header).
pub const SEGMENT_BYTES_MIN: u64 = 14;
/// Largest accepted `segment.bytes` (Kafka's config is a 32-bit int).
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
/// Largest accepted `max.message.bytes` (a 32-bit int in Kafka).
pub const MAX_MESSAGE_BYTES_MAX: u32 = i32::MAX as u32;

/// `cleanup.policy`: what happens to old segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Delete whole segments past `retention.ms` / `retention.bytes`.
    Delete,
}

/// `message.timestamp.type`: which timestamp stored records carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer's timestamp, kept as sent.
    CreateTime,
    /// The broker's append time, written into each batch.
    LogAppendTime,
}

/// `compression.type`: how batches are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionType {
    /// Stored exactly as the producer compressed them.
    Producer,
}

/// `flush.mode`: when an append is acknowledged relative to fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMode {
    /// Acknowledge after the append; flush every `flush.ms` or `flush.bytes`.
    Async,
    /// Acknowledge only after fsync (group commit across partitions).
    Sync,
}

/// A topic's effective configuration. Keys not set on the topic fall back to the broker
/// defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicConfig {
    /// Explicitly set keys (as given, validated).
    pub overrides: BTreeMap<String, String>,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `retention.ms`; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`; -1 means no size limit.
    pub retention_bytes: i64,
    /// `segment.bytes`.
    pub segment_bytes: u64,
    /// `segment.ms`.
    pub segment_ms: u64,
    /// `max.message.bytes`: largest record batch accepted.
    pub max_message_bytes: u32,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `compression.type`.
    pub compression_type: CompressionType,
    /// `min.insync.replicas` (always satisfied on one node).
    pub min_insync_replicas: u32,
    /// `flush.mode` (Ferry).
    pub flush_mode: FlushMode,
    /// `flush.ms` (Ferry): flush interval of `flush.mode=async`.
    pub flush_ms: u64,
    /// `flush.bytes` (Ferry): bytes appended before a flush under `flush.mode=async`.
    pub flush_bytes: u64,
}

impl Default for TopicConfig {
    /// The built-in defaults, with no overrides.
    fn default() -> Self {
        TopicConfig {
            overrides: BTreeMap::new(),
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: DEFAULT_RETENTION_MS,
            retention_bytes: -1,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_ms: DEFAULT_SEGMENT_MS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            message_timestamp_type: TimestampType::CreateTime,
            compression_type: CompressionType::Producer,
            min_insync_replicas: 1,
            flush_mode: FlushMode::Async,
            flush_ms: DEFAULT_FLUSH_MS,
            flush_bytes: DEFAULT_FLUSH_BYTES,
        }
    }
}

/// Parses a value into the typed field; the error says what is wrong with the value.
type ParseFn = fn(&mut TopicConfig, &str) -> Result<(), String>;
/// Prints the typed field the way Kafka describes it.
type ShowFn = fn(&TopicConfig) -> String;

/// One supported config key.
struct KeyDef {
    name: &'static str,
    documentation: &'static str,
    /// Whether the value is a comma-separated list (incremental APPEND/SUBTRACT allowed).
    list: bool,
    parse: ParseFn,
    show: ShowFn,
}

/// Every supported key, in describe order.
const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "cleanup.policy",
        documentation: "Retention policy for old segments: `delete` (compaction is not supported yet).",
        list: true,
        parse: |c, v| {
            let items: Vec<&str> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            if items.is_empty() {
                return Err("must list at least one policy (`delete`)".into());
            }
            for item in items {
                match item {
                    "delete" => {}
                    "compact" => return Err("`compact` is not supported yet".into()),
                    other => return Err(format!("unknown policy `{other}` (expected `delete`)")),
                }
            }
            c.cleanup_policy = CleanupPolicy::Delete;
            Ok(())
        },
        show: |c| match c.cleanup_policy {
            CleanupPolicy::Delete => "delete".into(),
        },
    },
    KeyDef {
        name: "retention.ms",
        documentation: "Delete segments whose newest record is older than this; -1 keeps forever.",
        list: false,
        parse: |c, v| {
            c.retention_ms = parse_int(v, -1, i64::MAX)?;
            Ok(())
        },
        show: |c| c.retention_ms.to_string(),
    },
    KeyDef {
        name: "retention.bytes",
        documentation: "Delete oldest segments while a partition is larger than this; -1 means no limit.",
        list: false,
        parse: |c, v| {
            c.retention_bytes = parse_int(v, -1, i64::MAX)?;
            Ok(())
        },
        show: |c| c.retention_bytes.to_string(),
    },
    KeyDef {
        name: "segment.bytes",
        documentation: "Roll to a new segment file once the active one reaches this size.",
        list: false,
        parse: |c, v| {
            c.segment_bytes = parse_int(v, SEGMENT_BYTES_MIN as i64, SEGMENT_BYTES_MAX as i64)? as u64;
            Ok(())
        },
        show: |c| c.segment_bytes.to_string(),
    },
    KeyDef {
        name: "segment.ms",
        documentation: "Roll to a new segment file once the active one is this old.",
        list: false,
        parse: |c, v| {
            c.segment_ms = parse_int(v, 1, i64::MAX)? as u64;
            Ok(())
        },
        show: |c| c.segment_ms.to_string(),
    },
    KeyDef {
        name: "max.message.bytes",
        documentation: "Largest record batch (after compression) a producer may send.",
        list: false,
        parse: |c, v| {
            c.max_message_bytes = parse_int(v, 0, MAX_MESSAGE_BYTES_MAX as i64)? as u32;
            Ok(())
        },
        show: |c| c.max_message_bytes.to_string(),
    },
    KeyDef {
        name: "message.timestamp.type",
        documentation: "`CreateTime` keeps the producer's timestamps; `LogAppendTime` stamps the broker's time.",
        list: false,
        parse: |c, v| {
            c.message_timestamp_type = match v {
                "CreateTime" => TimestampType::CreateTime,
                "LogAppendTime" => TimestampType::LogAppendTime,
                _ => return Err("expected `CreateTime` or `LogAppendTime`".into()),
            };
            Ok(())
        },
        show: |c| match c.message_timestamp_type {
            TimestampType::CreateTime => "CreateTime".into(),
            TimestampType::LogAppendTime => "LogAppendTime".into(),
        },
    },
    KeyDef {
        name: "compression.type",
        documentation: "`producer`: batches are stored and served exactly as the producer compressed them.",
        list: false,
        parse: |c, v| match v {
            "producer" => {
                c.compression_type = CompressionType::Producer;
                Ok(())
            }
            "uncompressed" | "none" | "gzip" | "snappy" | "lz4" | "zstd" => Err(format!(
                "`{v}` is not supported yet: Ferry stores batches as produced (`producer`)"
            )),
            _ => Err("expected `producer`".into()),
        },
        show: |c| match c.compression_type {
            CompressionType::Producer => "producer".into(),
        },
    },
    KeyDef {
        name: "min.insync.replicas",
        documentation: "Replicas that must have a write for acks=all (always met on a single node).",
        list: false,
        parse: |c, v| {
            c.min_insync_replicas = parse_int(v, 1, i32::MAX as i64)? as u32;
            Ok(())
        },
        show: |c| c.min_insync_replicas.to_string(),
    },
    KeyDef {
        name: "flush.mode",
        documentation: "Ferry: `async` acknowledges after append and flushes on flush.ms/flush.bytes; `sync` acknowledges after fsync.",
        list: false,
        parse: |c, v| {
            c.flush_mode = match v {
                "async" => FlushMode::Async,
                "sync" => FlushMode::Sync,
                _ => return Err("expected `async` or `sync`".into()),
            };
            Ok(())
        },
        show: |c| match c.flush_mode {
            FlushMode::Async => "async".into(),
            FlushMode::Sync => "sync".into(),
        },
    },
    KeyDef {
        name: "flush.ms",
        documentation: "Ferry: with flush.mode=async, flush at least this often.",
        list: false,
        parse: |c, v| {
            c.flush_ms = parse_int(v, 1, i64::MAX)? as u64;
            Ok(())
        },
        show: |c| c.flush_ms.to_string(),
    },
    KeyDef {
        name: "flush.bytes",
        documentation: "Ferry: with flush.mode=async, flush after this many bytes are appended.",
        list: false,
        parse: |c, v| {
            c.flush_bytes = parse_int(v, 1, i64::MAX)? as u64;
            Ok(())
        },
        show: |c| c.flush_bytes.to_string(),
    },
];

/// Parses a decimal integer within `min..=max`.
fn parse_int(value: &str, min: i64, max: i64) -> Result<i64, String> {
    let parsed: i64 = value
        .parse()
        .map_err(|_| "must be an integer".to_string())?;
    if parsed < min || parsed > max {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(parsed)
}

/// The definition of `key`, or `InvalidConfig`.
fn key_def(key: &str) -> crate::Result<&'static KeyDef> {
    KEYS.iter()
        .find(|k| k.name == key)
        .ok_or_else(|| CoreError::InvalidConfig(format!("unknown config key `{key}`")))
}

impl TopicConfig {
    /// Applies `overrides` on top of `defaults`; rejects unknown keys and bad values with
    /// `CoreError::InvalidConfig`.
    pub fn resolve(
        defaults: &TopicConfig,
        overrides: BTreeMap<String, String>,
    ) -> crate::Result<TopicConfig> {
        let mut config = defaults.clone();
        let mut cleaned = BTreeMap::new();
        for (key, value) in overrides {
            let def = key_def(&key)?;
            let value = value.trim().to_string();
            (def.parse)(&mut config, &value)
                .map_err(|why| CoreError::InvalidConfig(format!("{key}={value}: {why}")))?;
            cleaned.insert(key, value);
        }
        config.overrides = cleaned;
        Ok(config)
    }

    /// Every config key with its effective value and where it came from (for describe).
    pub fn entries(&self, defaults: &TopicConfig) -> Vec<ConfigEntry> {
        KEYS.iter()
            .map(|def| {
                let source = if self.overrides.contains_key(def.name) {
                    ConfigSource::Topic
                } else if defaults.overrides.contains_key(def.name) {
                    ConfigSource::BrokerDefault
                } else {
                    ConfigSource::Default
                };
                ConfigEntry {
                    name: def.name.to_string(),
                    value: Some((def.show)(self)),
                    source,
                    read_only: false,
                    sensitive: false,
                    documentation: def.documentation,
                }
            })
            .collect()
    }

    /// The storage settings this config implies.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes_max: self.segment_bytes,
            segment_ms_max: self.segment_ms,
            retention_ms: (self.retention_ms >= 0).then_some(self.retention_ms),
            retention_bytes: (self.retention_bytes >= 0).then_some(self.retention_bytes as u64),
            flush: match self.flush_mode {
                FlushMode::Async => FlushPolicy::Async {
                    interval_ms: self.flush_ms,
                    bytes: self.flush_bytes,
                },
                FlushMode::Sync => FlushPolicy::Sync,
            },
            batch_bytes_max: self.max_message_bytes,
            ..LogConfig::default()
        }
    }

    /// Largest record batch accepted (`max.message.bytes`).
    pub fn max_message_bytes(&self) -> u32 {
        self.max_message_bytes
    }

    /// Whether batches get log-append time (`message.timestamp.type=LogAppendTime`).
    pub fn log_append_time(&self) -> bool {
        self.message_timestamp_type == TimestampType::LogAppendTime
    }

    /// Whether acknowledgements wait for fsync (`flush.mode=sync`).
    pub fn flush_sync(&self) -> bool {
        self.flush_mode == FlushMode::Sync
    }

    /// The overrides after applying `ops` to `current`: `incremental = false` replaces
    /// every override with the `Set` ops (Kafka AlterConfigs; other ops are rejected),
    /// `true` applies each op in order (IncrementalAlterConfigs). Keys are checked to
    /// exist; values are validated later by [`TopicConfig::resolve`].
    pub fn apply_ops(
        current: &BTreeMap<String, String>,
        ops: Vec<ConfigOp>,
        incremental: bool,
    ) -> crate::Result<BTreeMap<String, String>> {
        let mut next = if incremental {
            current.clone()
        } else {
            BTreeMap::new()
        };
        for op in ops {
            match op {
                ConfigOp::Set(key, value) => {
                    key_def(&key)?;
                    next.insert(key, value);
                }
                ConfigOp::Delete(key) if incremental => {
                    key_def(&key)?;
                    next.remove(&key);
                }
                ConfigOp::Append(key, value) | ConfigOp::Subtract(key, value) if !incremental => {
                    return Err(CoreError::InvalidConfig(format!(
                        "{key}: only SET is allowed outside incremental alter (value `{value}`)"
                    )));
                }
                ConfigOp::Delete(key) => {
                    return Err(CoreError::InvalidConfig(format!(
                        "{key}: only SET is allowed outside incremental alter"
                    )));
                }
                ConfigOp::Append(key, value) => {
                    let def = list_key_def(&key)?;
                    let mut items = list_items(next.get(&key).map(String::as_str), def);
                    for item in split_list(&value) {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    }
                    next.insert(key, items.join(","));
                }
                ConfigOp::Subtract(key, value) => {
                    let def = list_key_def(&key)?;
                    let remove = split_list(&value);
                    let items: Vec<String> = list_items(next.get(&key).map(String::as_str), def)
                        .into_iter()
                        .filter(|item| !remove.contains(item))
                        .collect();
                    next.insert(key, items.join(","));
                }
            }
        }
        Ok(next)
    }
}

/// The definition of a list-valued `key`, or `InvalidConfig` for scalar keys.
fn list_key_def(key: &str) -> crate::Result<&'static KeyDef> {
    let def = key_def(key)?;
    if !def.list {
        return Err(CoreError::InvalidConfig(format!(
            "{key} is not a list: APPEND and SUBTRACT do not apply"
        )));
    }
    Ok(def)
}

/// Items of a list value; `None` (not overridden) starts from the built-in default.
fn list_items(value: Option<&str>, def: &KeyDef) -> Vec<String> {
    match value {
        Some(value) => split_list(value),
        None => split_list(&(def.show)(&TopicConfig::default())),
    }
}

/// Splits a comma-separated list, trimming and dropping empty items.
fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Where a config value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic.
    Topic,
    /// Broker default from Ferry's config file / flags.
    BrokerDefault,
    /// Built-in default.
    Default,
}

/// One described config key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Key name (Kafka spelling).
    pub name: String,
    /// Effective value.
    pub value: Option<String>,
    /// Where the value comes from.
    pub source: ConfigSource,
    /// Whether the key can be altered.
    pub read_only: bool,
    /// Whether the value must be hidden.
    pub sensitive: bool,
    /// One-line description.
    pub documentation: &'static str,
}

/// One change to a topic's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigOp {
    /// Sets a key.
    Set(String, String),
    /// Removes an override (back to the default).
    Delete(String),
    /// Append to a list-valued key (incremental alter).
    Append(String, String),
    /// Remove from a list-valued key (incremental alter).
    Subtract(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_kafka_like() {
        let c = TopicConfig::default();
        assert_eq!(c.retention_ms, 604_800_000);
        assert_eq!(c.segment_bytes, 1_073_741_824);
        assert_eq!(c.max_message_bytes(), 1_048_588);
        assert!(!c.log_append_time());
        let log = c.log_config();
        assert_eq!(log.retention_ms, Some(604_800_000));
        assert_eq!(log.retention_bytes, None);
        assert_eq!(log.batch_bytes_max, 1_048_588);
        assert_eq!(
            log.flush,
            FlushPolicy::Async {
                interval_ms: DEFAULT_FLUSH_MS,
                bytes: DEFAULT_FLUSH_BYTES
            }
        );
    }

    #[test]
    fn resolve_parses_every_key() {
        let c = TopicConfig::resolve(
            &TopicConfig::default(),
            overrides(&[
                ("cleanup.policy", "delete"),
                ("retention.ms", "-1"),
                ("retention.bytes", "1000"),
                ("segment.bytes", "4096"),
                ("segment.ms", "60000"),
                ("max.message.bytes", "2000"),
                ("message.timestamp.type", "LogAppendTime"),
                ("compression.type", "producer"),
                ("min.insync.replicas", "2"),
                ("flush.mode", "sync"),
                ("flush.ms", "5"),
                ("flush.bytes", "100"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.retention_ms, -1);
        assert_eq!(c.retention_bytes, 1000);
        assert_eq!(c.segment_bytes, 4096);
        assert_eq!(c.segment_ms, 60000);
        assert_eq!(c.max_message_bytes, 2000);
        assert!(c.log_append_time());
        assert_eq!(c.min_insync_replicas, 2);
        assert!(c.flush_sync());
        assert_eq!(c.flush_ms, 5);
        assert_eq!(c.flush_bytes, 100);
        let log = c.log_config();
        assert_eq!(log.retention_ms, None);
        assert_eq!(log.retention_bytes, Some(1000));
        assert_eq!(log.flush, FlushPolicy::Sync);
        assert_eq!(log.segment_bytes_max, 4096);
        assert_eq!(c.overrides.len(), 12);
    }

    #[test]
    fn resolve_rejects_bad_input() {
        let bad = [
            ("no.such.key", "1"),
            ("cleanup.policy", "compact"),
            ("cleanup.policy", "delete,compact"),
            ("cleanup.policy", ""),
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("segment.bytes", "1"),
            ("segment.bytes", "99999999999"),
            ("segment.ms", "0"),
            ("max.message.bytes", "-1"),
            ("message.timestamp.type", "logappendtime"),
            ("compression.type", "gzip"),
            ("min.insync.replicas", "0"),
            ("flush.mode", "sometimes"),
            ("flush.ms", "0"),
        ];
        for (key, value) in bad {
            let err = TopicConfig::resolve(&TopicConfig::default(), overrides(&[(key, value)]))
                .expect_err(&format!("{key}={value} must be rejected"));
            assert!(
                matches!(err, CoreError::InvalidConfig(_)),
                "{key}={value}: {err}"
            );
        }
        let err = TopicConfig::resolve(
            &TopicConfig::default(),
            overrides(&[("cleanup.policy", "compact")]),
        )
        .expect_err("compact");
        assert!(err.to_string().contains("not supported yet"), "{err}");
    }

    #[test]
    fn entries_report_sources() {
        let defaults = TopicConfig::resolve(
            &TopicConfig::default(),
            overrides(&[("retention.ms", "1000")]),
        )
        .expect("valid");
        let topic = TopicConfig::resolve(&defaults, overrides(&[("segment.bytes", "2048")]))
            .expect("valid");
        assert_eq!(topic.retention_ms, 1000, "broker default applies");
        let entries = topic.entries(&defaults);
        assert_eq!(entries.len(), KEYS.len());
        let get = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .expect("present")
                .clone()
        };
        assert_eq!(get("segment.bytes").source, ConfigSource::Topic);
        assert_eq!(get("segment.bytes").value.as_deref(), Some("2048"));
        assert_eq!(get("retention.ms").source, ConfigSource::BrokerDefault);
        assert_eq!(get("retention.ms").value.as_deref(), Some("1000"));
        assert_eq!(get("flush.mode").source, ConfigSource::Default);
        assert_eq!(get("flush.mode").value.as_deref(), Some("async"));
    }

    #[test]
    fn ops_replace_or_apply() {
        let current = overrides(&[("retention.ms", "1000"), ("segment.bytes", "2048")]);
        let replaced = TopicConfig::apply_ops(
            &current,
            vec![ConfigOp::Set("flush.mode".into(), "sync".into())],
            false,
        )
        .expect("ok");
        assert_eq!(replaced, overrides(&[("flush.mode", "sync")]));
        let applied = TopicConfig::apply_ops(
            &current,
            vec![
                ConfigOp::Set("flush.mode".into(), "sync".into()),
                ConfigOp::Delete("retention.ms".into()),
            ],
            true,
        )
        .expect("ok");
        assert_eq!(
            applied,
            overrides(&[("flush.mode", "sync"), ("segment.bytes", "2048")])
        );
        let appended = TopicConfig::apply_ops(
            &current,
            vec![ConfigOp::Append("cleanup.policy".into(), "delete".into())],
            true,
        )
        .expect("ok");
        assert_eq!(
            appended.get("cleanup.policy").map(String::as_str),
            Some("delete")
        );
        let err = TopicConfig::apply_ops(
            &current,
            vec![ConfigOp::Append("retention.ms".into(), "1".into())],
            true,
        )
        .expect_err("scalar");
        assert!(matches!(err, CoreError::InvalidConfig(_)));
        let err = TopicConfig::apply_ops(
            &current,
            vec![ConfigOp::Set("bogus".into(), "1".into())],
            true,
        )
        .expect_err("unknown");
        assert!(matches!(err, CoreError::InvalidConfig(_)));
        let subtracted = TopicConfig::apply_ops(
            &current,
            vec![ConfigOp::Subtract("cleanup.policy".into(), "delete".into())],
            true,
        )
        .expect("ops ok");
        assert!(
            TopicConfig::resolve(&TopicConfig::default(), subtracted).is_err(),
            "empty policy list"
        );
    }
}
