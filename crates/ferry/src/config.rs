//! Configuration of `ferry serve`.
//!
//! Four layers, each overriding the one before: built-in defaults, a TOML file
//! (`--config FILE` or `FERRY_CONFIG`; none is needed), `FERRY_*` environment variables,
//! and command-line flags. Every layer is a [`Layer`] (all keys optional); [`Settings`]
//! is the resolved, validated result.
//!
//! A complete file, every key with its default:
//!
//! ```toml
//! # Directory holding every log, index and Ferry's internal state.
//! data_dir = "./ferry-data"
//! # This node's id; 0 on a single node.
//! node_id = 0
//! # tracing filter: a level (error, warn, info, debug, trace) or directives such as
//! # "info,ferry_storage=debug". When no layer sets it, RUST_LOG applies, then "info".
//! log_level = "info"
//! # Create a topic on its first produce or metadata request.
//! auto_create_topics = true
//! # Partitions of auto-created topics and of CreateTopics without a count.
//! default_partitions = 1
//! # How often retention deletes expired segments, in milliseconds.
//! retention_check_interval_ms = 300000
//!
//! [kafka]
//! # Serve the Kafka protocol.
//! enabled = true
//! # Address to listen on.
//! listen = "0.0.0.0:9092"
//! # host:port given to clients in Metadata; default: the listen host, or "localhost"
//! # when the listen host is unspecified (0.0.0.0 or ::), with the listening port.
//! # advertised = "broker.example.com:9092"
//! # Largest request accepted, in bytes.
//! max_request_bytes = 104857600
//! # Request bytes all connections together may hold; readers wait beyond it (at least
//! # max_request_bytes).
//! max_buffered_request_bytes = 536870912
//! # Cap on the records of one fetch response, in bytes (Kafka's fetch.max.bytes).
//! fetch_max_bytes = 57671680
//! # Longest fetch long-poll honoured, in milliseconds, whatever the client asks for.
//! fetch_max_wait_ms = 30000
//! # Incremental fetch sessions kept (Kafka's max.incremental.fetch.session.cache.slots);
//! # 0 turns sessions off.
//! fetch_session_cache_slots = 1000
//! # Partitions all fetch sessions may hold together (about 100 bytes each).
//! fetch_session_cache_partitions = 1000000
//! # Connections beyond this many are closed on accept.
//! max_connections = 10000
//! # How long shutdown waits for requests in progress, in milliseconds.
//! shutdown_grace_ms = 10000
//!
//! [amqp]
//! # Serve AMQP 0-9-1 (RabbitMQ clients).
//! enabled = true
//! # Address to listen on.
//! listen = "0.0.0.0:5672"
//! # Largest frame offered in connection.tune, in bytes (at least 4096).
//! frame_max = 131072
//! # Most channels per connection offered in connection.tune.
//! channel_max = 2047
//! # Heartbeat interval offered, in seconds; 0 disables heartbeats.
//! heartbeat_s = 60
//! # Consumer acknowledgement timeout, in milliseconds (a queue's x-consumer-timeout wins).
//! consumer_timeout_ms = 1800000
//!
//! # Broker-wide defaults of topic configs, with Kafka's key names; a topic's own
//! # configs override them. Ferry's own key: flush.mode = "async" | "sync".
//! [topic_defaults]
//! # "retention.ms" = 604800000
//! # "flush.mode" = "async"
//!
//! [groups]
//! # Bounds on the session timeout a consumer may ask for, in milliseconds.
//! min_session_timeout_ms = 6000
//! max_session_timeout_ms = 1800000
//! # Delay of the first rebalance of an empty group, to let members arrive together.
//! initial_rebalance_delay_ms = 0
//! # Most members in one group.
//! max_group_size = 1000
//! # Committed offsets of an empty group are dropped after this long, in milliseconds.
//! offsets_retention_ms = 604800000
//!
//! [http]
//! # Serve the admin API and /metrics.
//! enabled = true
//! # Address to listen on.
//! listen = "0.0.0.0:8080"
//!
//! [limits]
//! # Memory alarm (publishers blocked) above this much resident memory, in bytes;
//! # default: 40% of the machine's memory (RabbitMQ's vm_memory_high_watermark 0.4).
//! # memory_high_watermark_bytes = 1073741824
//! # Disk alarm below this much free space in the data directory, in bytes.
//! disk_free_limit_bytes = 50000000
//!
//! [amqp]
//! # Users that may log in only from a loopback address.
//! loopback_users = ["guest"]
//!
//! # Users, vhosts and permissions applied at every start (the config wins for the
//! # users it names; users made with `ferry user add` are kept). A fresh data
//! # directory also gets guest/guest (administrator, full permissions on "/").
//! # [[amqp.users]]
//! # name = "app"
//! # password = "secret"
//! # tags = ["management"]
//! # [[amqp.vhosts]]
//! # name = "staging"
//! # [[amqp.permissions]]
//! # user = "app"
//! # vhost = "staging"
//! # configure = "^app-"
//! # write = ".*"
//! # read = ".*"
//! ```
//!
//! Environment variables (a value that does not parse is an error):
//! `FERRY_CONFIG`, `FERRY_DATA_DIR`, `FERRY_NODE_ID`, `FERRY_LOG_LEVEL`,
//! `FERRY_AUTO_CREATE_TOPICS`, `FERRY_DEFAULT_PARTITIONS`,
//! `FERRY_RETENTION_CHECK_INTERVAL_MS`, `FERRY_KAFKA_ENABLED`, `FERRY_KAFKA_LISTEN`,
//! `FERRY_KAFKA_ADVERTISED`, `FERRY_KAFKA_MAX_REQUEST_BYTES`, `FERRY_AMQP_ENABLED`,
//! `FERRY_AMQP_LISTEN`, `FERRY_FLUSH_MODE`
//! (sets `topic_defaults."flush.mode"`), `FERRY_GROUP_MIN_SESSION_TIMEOUT_MS`,
//! `FERRY_GROUP_MAX_SESSION_TIMEOUT_MS`, `FERRY_GROUP_INITIAL_REBALANCE_DELAY_MS`,
//! `FERRY_HTTP_ENABLED`, `FERRY_HTTP_LISTEN`, `FERRY_MEMORY_HIGH_WATERMARK_BYTES`,
//! `FERRY_DISK_FREE_LIMIT_BYTES`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ferry_core::alarm::LimitsConfig;
use ferry_core::auth::{AuthConfig, PermissionSpec, UserSpec};
use ferry_core::{BrokerConfig, GroupSettings, TopicConfig};
use serde::Deserialize;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./ferry-data";
/// Default Kafka listen address.
pub const DEFAULT_KAFKA_LISTEN: &str = "0.0.0.0:9092";
/// Default AMQP listen address.
pub const DEFAULT_AMQP_LISTEN: &str = "0.0.0.0:5672";
/// Smallest `amqp.frame_max` (AMQP's frame-min-size as RabbitMQ applies it).
pub const MIN_AMQP_FRAME_MAX: u32 = 4096;
/// Default largest Kafka request (Kafka's `socket.request.max.bytes`).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = ferry_kafka::server::DEFAULT_MAX_REQUEST_BYTES;
/// Smallest `fetch_max_bytes` accepted (a fetch still returns at least one whole batch).
const MIN_FETCH_MAX_BYTES: u32 = 1024;
/// Smallest `max_request_bytes` accepted: below this not even metadata requests fit.
pub const MIN_MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Default retention check interval (Kafka's `log.retention.check.interval.ms`).
pub const DEFAULT_RETENTION_CHECK_INTERVAL_MS: u64 = 300_000;
/// Log filter when no layer and no `RUST_LOG` set one.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Host advertised when the listener binds an unspecified address.
pub const DEFAULT_ADVERTISED_HOST: &str = "localhost";
/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "FERRY_CONFIG";
/// Prefix of Ferry's environment variables.
const ENV_PREFIX: &str = "FERRY_";
/// Environment variables read by the command-line tools, not by `serve`.
const CLIENT_ENV_VARS: &[&str] = &[
    "FERRY_BOOTSTRAP",
    "FERRY_ADMIN",
    "FERRY_ADMIN_USER",
    "FERRY_ADMIN_PASSWORD",
];
/// Default HTTP listen address (admin API and /metrics).
pub const DEFAULT_HTTP_LISTEN: &str = ferry_http::DEFAULT_HTTP_LISTEN;
/// Topic config key of Ferry's durability mode.
pub const FLUSH_MODE_KEY: &str = "flush.mode";

/// A configuration error, described in one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys or wrong types.
    #[error("config file {path}{location}: {message}")]
    Parse {
        path: PathBuf,
        location: String,
        message: String,
    },
    /// An environment variable does not parse.
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: String,
        value: String,
        reason: String,
    },
    /// A setting is out of range or malformed.
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// A topic default was rejected by the core's topic config validation.
    #[error("topic_defaults: {0}")]
    TopicDefaults(String),
}

/// A topic config value in the file: TOML strings, integers, floats and booleans are all
/// accepted and passed on as text.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TopicValue {
    /// `"delete"`.
    Text(String),
    /// `604800000`.
    Integer(i64),
    /// `0.5`.
    Float(f64),
    /// `true`.
    Bool(bool),
}

impl TopicValue {
    fn into_text(self) -> String {
        match self {
            TopicValue::Text(s) => s,
            TopicValue::Integer(i) => i.to_string(),
            TopicValue::Float(f) => f.to_string(),
            TopicValue::Bool(b) => b.to_string(),
        }
    }
}

/// `[kafka]`: the Kafka listener.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaLayer {
    /// Serve the Kafka protocol (default true).
    pub enabled: Option<bool>,
    /// `host:port` to listen on (default `0.0.0.0:9092`).
    pub listen: Option<String>,
    /// `host:port` given to clients (default: see the module docs).
    pub advertised: Option<String>,
    /// Largest request accepted, in bytes (default 100 MiB).
    pub max_request_bytes: Option<usize>,
    /// Request bytes all connections may hold together (default 512 MiB).
    pub max_buffered_request_bytes: Option<usize>,
    /// Cap on one fetch response's records, in bytes (default 55 MiB).
    pub fetch_max_bytes: Option<u32>,
    /// Cap on a fetch's long-poll wait, in ms (default 30 s).
    pub fetch_max_wait_ms: Option<u64>,
    /// Incremental fetch sessions kept (default 1000; 0: none).
    pub fetch_session_cache_slots: Option<usize>,
    /// Partitions all fetch sessions hold together (default 1,000,000).
    pub fetch_session_cache_partitions: Option<usize>,
    /// Most client connections (default 10,000).
    pub max_connections: Option<usize>,
    /// Shutdown's wait for requests in progress, in ms (default 10 s).
    pub shutdown_grace_ms: Option<u64>,
}

/// `[groups]`: the group coordinator.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsLayer {
    /// Smallest session timeout a member may ask for, in ms.
    pub min_session_timeout_ms: Option<i32>,
    /// Largest session timeout a member may ask for, in ms.
    pub max_session_timeout_ms: Option<i32>,
    /// Delay of the first rebalance of an empty group, in ms.
    pub initial_rebalance_delay_ms: Option<u64>,
    /// Most members in one group.
    pub max_group_size: Option<usize>,
    /// Retention of an empty group's committed offsets, in ms.
    pub offsets_retention_ms: Option<i64>,
}

/// `[http]`: the admin API and `/metrics` listener.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLayer {
    /// Serve HTTP (default true).
    pub enabled: Option<bool>,
    /// `host:port` to listen on (default `0.0.0.0:8080`).
    pub listen: Option<String>,
}

/// `[limits]`: resource alarm thresholds.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsLayer {
    /// Memory alarm above this many resident bytes (default 40% of memory).
    pub memory_high_watermark_bytes: Option<u64>,
    /// Disk alarm below this many free bytes (default 50 MB).
    pub disk_free_limit_bytes: Option<u64>,
}

/// `[[amqp.users]]`: a user applied at every start.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpUser {
    /// User name.
    pub name: String,
    /// Password in clear (stored hashed).
    pub password: String,
    /// Tags (`administrator` may use the admin API).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `[[amqp.vhosts]]`: a vhost created at start if missing.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpVhost {
    /// Vhost name.
    pub name: String,
}

/// `[[amqp.permissions]]`: a user's permission on a vhost, set at every start.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpPermission {
    /// User name.
    pub user: String,
    /// Vhost name.
    pub vhost: String,
    /// Configure pattern (regular expression, as RabbitMQ's).
    pub configure: String,
    /// Write pattern.
    pub write: String,
    /// Read pattern.
    pub read: String,
}

/// `[amqp]`: the AMQP listener's keys, then the definitions (users, vhosts,
/// permissions) and `loopback_users`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpLayer {
    /// Serve AMQP (default true).
    pub enabled: Option<bool>,
    /// `host:port` to listen on (default `0.0.0.0:5672`).
    pub listen: Option<String>,
    /// Largest frame offered, in bytes (default 131072).
    pub frame_max: Option<u32>,
    /// Most channels per connection offered (default 2047).
    pub channel_max: Option<u16>,
    /// Heartbeat offered, in seconds (default 60; 0 disables).
    pub heartbeat_s: Option<u16>,
    /// Consumer acknowledgement timeout, in ms (default 30 minutes).
    pub consumer_timeout_ms: Option<u64>,
    // ---- definitions (users, vhosts, permissions) ----
    /// Users that may log in only from loopback (default `["guest"]`).
    pub loopback_users: Option<Vec<String>>,
    /// `[[amqp.users]]`.
    #[serde(default)]
    pub users: Vec<AmqpUser>,
    /// `[[amqp.vhosts]]`.
    #[serde(default)]
    pub vhosts: Vec<AmqpVhost>,
    /// `[[amqp.permissions]]`.
    #[serde(default)]
    pub permissions: Vec<AmqpPermission>,
}

/// One configuration layer (file, environment or flags): every key optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Node id.
    pub node_id: Option<i32>,
    /// tracing filter directives.
    pub log_level: Option<String>,
    /// Auto-create topics on first use.
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics.
    pub default_partitions: Option<u32>,
    /// Retention check interval, in ms.
    pub retention_check_interval_ms: Option<u64>,
    /// The Kafka listener.
    #[serde(default)]
    pub kafka: KafkaLayer,
    /// Broker defaults of topic configs.
    #[serde(default)]
    pub topic_defaults: BTreeMap<String, TopicValue>,
    /// The group coordinator.
    #[serde(default)]
    pub groups: GroupsLayer,
    /// The HTTP listener.
    #[serde(default)]
    pub http: HttpLayer,
    /// Resource alarm thresholds.
    #[serde(default)]
    pub limits: LimitsLayer,
    /// AMQP settings and definitions.
    #[serde(default)]
    pub amqp: AmqpLayer,
}

impl Layer {
    /// Parses a config file's text; unknown keys are errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Layer, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let location = e
                .span()
                .map(|span| {
                    let (line, column) = line_column(text, span.start);
                    format!(", line {line} column {column}")
                })
                .unwrap_or_default();
            ConfigError::Parse {
                path: path.to_owned(),
                location,
                message: e.message().replace('\n', " "),
            }
        })
    }

    /// Reads and parses the config file at `path`.
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Layer::from_toml(&text, path)
    }

    /// The layer set by `FERRY_*` variables in `vars`. Also returns the names of
    /// `FERRY_*` variables it does not know, so that typos can be reported.
    pub fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Layer, Vec<String>), ConfigError> {
        let mut layer = Layer::default();
        let mut unknown = Vec::new();
        for (var, value) in vars {
            if !var.starts_with(ENV_PREFIX) {
                continue;
            }
            let bad = |reason: &str| ConfigError::Env {
                var: var.clone(),
                value: value.clone(),
                reason: reason.to_owned(),
            };
            match var.as_str() {
                CONFIG_ENV => {} // read before the file is loaded
                "FERRY_DATA_DIR" => layer.data_dir = Some(PathBuf::from(&value)),
                "FERRY_NODE_ID" => layer.node_id = Some(parse_num(&value).map_err(|r| bad(&r))?),
                "FERRY_LOG_LEVEL" => layer.log_level = Some(value.clone()),
                "FERRY_AUTO_CREATE_TOPICS" => {
                    layer.auto_create_topics = Some(parse_bool(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_DEFAULT_PARTITIONS" => {
                    layer.default_partitions = Some(parse_num(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_RETENTION_CHECK_INTERVAL_MS" => {
                    layer.retention_check_interval_ms =
                        Some(parse_num(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_KAFKA_ENABLED" => {
                    layer.kafka.enabled = Some(parse_bool(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_KAFKA_LISTEN" => layer.kafka.listen = Some(value.clone()),
                "FERRY_KAFKA_ADVERTISED" => layer.kafka.advertised = Some(value.clone()),
                "FERRY_KAFKA_MAX_REQUEST_BYTES" => {
                    layer.kafka.max_request_bytes = Some(parse_num(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_AMQP_ENABLED" => {
                    layer.amqp.enabled = Some(parse_bool(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_AMQP_LISTEN" => layer.amqp.listen = Some(value.clone()),
                "FERRY_FLUSH_MODE" => {
                    layer
                        .topic_defaults
                        .insert(FLUSH_MODE_KEY.to_owned(), TopicValue::Text(value.clone()));
                }
                "FERRY_GROUP_MIN_SESSION_TIMEOUT_MS" => {
                    layer.groups.min_session_timeout_ms =
                        Some(parse_num(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_GROUP_MAX_SESSION_TIMEOUT_MS" => {
                    layer.groups.max_session_timeout_ms =
                        Some(parse_num(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_GROUP_INITIAL_REBALANCE_DELAY_MS" => {
                    layer.groups.initial_rebalance_delay_ms =
                        Some(parse_num(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_HTTP_ENABLED" => {
                    layer.http.enabled = Some(parse_bool(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_HTTP_LISTEN" => layer.http.listen = Some(value.clone()),
                "FERRY_MEMORY_HIGH_WATERMARK_BYTES" => {
                    layer.limits.memory_high_watermark_bytes =
                        Some(parse_num(&value).map_err(|r| bad(&r))?)
                }
                "FERRY_DISK_FREE_LIMIT_BYTES" => {
                    layer.limits.disk_free_limit_bytes =
                        Some(parse_num(&value).map_err(|r| bad(&r))?)
                }
                other if CLIENT_ENV_VARS.contains(&other) => {}
                _ => unknown.push(var.clone()),
            }
        }
        Ok((layer, unknown))
    }

    /// `self` with every key that `over` sets replaced by `over`'s value.
    pub fn overlay(mut self, over: Layer) -> Layer {
        fn take<T>(base: &mut Option<T>, over: Option<T>) {
            if over.is_some() {
                *base = over;
            }
        }
        take(&mut self.data_dir, over.data_dir);
        take(&mut self.node_id, over.node_id);
        take(&mut self.log_level, over.log_level);
        take(&mut self.auto_create_topics, over.auto_create_topics);
        take(&mut self.default_partitions, over.default_partitions);
        take(
            &mut self.retention_check_interval_ms,
            over.retention_check_interval_ms,
        );
        take(&mut self.kafka.enabled, over.kafka.enabled);
        take(&mut self.kafka.listen, over.kafka.listen);
        take(&mut self.kafka.advertised, over.kafka.advertised);
        take(
            &mut self.kafka.max_request_bytes,
            over.kafka.max_request_bytes,
        );
        take(
            &mut self.kafka.max_buffered_request_bytes,
            over.kafka.max_buffered_request_bytes,
        );
        take(&mut self.kafka.fetch_max_bytes, over.kafka.fetch_max_bytes);
        take(
            &mut self.kafka.fetch_max_wait_ms,
            over.kafka.fetch_max_wait_ms,
        );
        take(
            &mut self.kafka.fetch_session_cache_slots,
            over.kafka.fetch_session_cache_slots,
        );
        take(
            &mut self.kafka.fetch_session_cache_partitions,
            over.kafka.fetch_session_cache_partitions,
        );
        take(&mut self.kafka.max_connections, over.kafka.max_connections);
        take(
            &mut self.kafka.shutdown_grace_ms,
            over.kafka.shutdown_grace_ms,
        );
        take(&mut self.amqp.enabled, over.amqp.enabled);
        take(&mut self.amqp.listen, over.amqp.listen);
        take(&mut self.amqp.frame_max, over.amqp.frame_max);
        take(&mut self.amqp.channel_max, over.amqp.channel_max);
        take(&mut self.amqp.heartbeat_s, over.amqp.heartbeat_s);
        take(
            &mut self.amqp.consumer_timeout_ms,
            over.amqp.consumer_timeout_ms,
        );
        self.topic_defaults.extend(over.topic_defaults);
        take(
            &mut self.groups.min_session_timeout_ms,
            over.groups.min_session_timeout_ms,
        );
        take(
            &mut self.groups.max_session_timeout_ms,
            over.groups.max_session_timeout_ms,
        );
        take(
            &mut self.groups.initial_rebalance_delay_ms,
            over.groups.initial_rebalance_delay_ms,
        );
        take(&mut self.groups.max_group_size, over.groups.max_group_size);
        take(
            &mut self.groups.offsets_retention_ms,
            over.groups.offsets_retention_ms,
        );
        take(&mut self.http.enabled, over.http.enabled);
        take(&mut self.http.listen, over.http.listen);
        take(
            &mut self.limits.memory_high_watermark_bytes,
            over.limits.memory_high_watermark_bytes,
        );
        take(
            &mut self.limits.disk_free_limit_bytes,
            over.limits.disk_free_limit_bytes,
        );
        // Definitions only come from the file; a later layer adds to them.
        take(&mut self.amqp.loopback_users, over.amqp.loopback_users);
        self.amqp.users.extend(over.amqp.users);
        self.amqp.vhosts.extend(over.amqp.vhosts);
        self.amqp.permissions.extend(over.amqp.permissions);
        self
    }
}

/// The Kafka listener's resolved settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Whether to serve Kafka at all.
    pub enabled: bool,
    /// Address to bind, as given (`host:port`; the host may be a name).
    pub listen: String,
    /// Explicit advertised `(host, port)`, if configured.
    pub advertised: Option<(String, u16)>,
    /// The listener's limits (the advertised host and port in it are the defaults;
    /// `ferry serve` fills them in once the listener is bound).
    pub server: ferry_kafka::server::KafkaConfig,
}

/// The AMQP listener's resolved settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpSettings {
    /// Whether to serve AMQP at all.
    pub enabled: bool,
    /// Address to bind, as given (`host:port`).
    pub listen: String,
    /// Largest frame offered.
    pub frame_max: u32,
    /// Most channels per connection.
    pub channel_max: u16,
    /// Heartbeat offered, in seconds.
    pub heartbeat_s: u16,
    /// Default consumer acknowledgement timeout, in ms.
    pub consumer_timeout_ms: u64,
}

/// The HTTP listener's resolved settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Whether to serve HTTP at all.
    pub enabled: bool,
    /// Address to bind (`host:port`).
    pub listen: String,
}

/// Resolved, validated settings of `ferry serve`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Node id.
    pub node_id: i32,
    /// Log filter set by a layer; `None` falls back to `RUST_LOG`, then `info`.
    pub log_level: Option<String>,
    /// Auto-create topics.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics.
    pub default_partitions: u32,
    /// Retention check interval, in ms.
    pub retention_check_interval_ms: u64,
    /// The Kafka listener.
    pub kafka: KafkaSettings,
    /// The AMQP listener.
    pub amqp: AmqpSettings,
    /// Broker defaults of topic configs, as text.
    pub topic_defaults: BTreeMap<String, String>,
    /// Group coordinator settings.
    pub groups: GroupSettings,
    /// The HTTP listener.
    pub http: HttpSettings,
    /// Alarm thresholds.
    pub limits: LimitsConfig,
    /// Users, permissions and loopback-only users of the config file.
    pub auth: AuthConfig,
    /// Vhosts of the config file.
    pub vhosts: Vec<String>,
}

impl Settings {
    /// Loads every layer: the file (`config_path`, else `FERRY_CONFIG` from `env`), the
    /// environment `env`, then `flags`. Returns the settings and unknown `FERRY_*` names.
    pub fn load(
        config_path: Option<&Path>,
        env: Vec<(String, String)>,
        flags: Layer,
    ) -> Result<(Settings, Vec<String>), ConfigError> {
        let env_config = env
            .iter()
            .find(|(k, _)| k == CONFIG_ENV)
            .map(|(_, v)| PathBuf::from(v));
        let file = match config_path.map(Path::to_owned).or(env_config) {
            Some(path) => Layer::from_file(&path)?,
            None => Layer::default(),
        };
        let (env_layer, unknown) = Layer::from_env(env)?;
        let settings = Settings::resolve(file.overlay(env_layer).overlay(flags))?;
        Ok((settings, unknown))
    }

    /// Fills defaults into `layer` and validates the result.
    pub fn resolve(layer: Layer) -> Result<Settings, ConfigError> {
        let group_defaults = GroupSettings::default();
        let groups = GroupSettings {
            min_session_timeout_ms: layer
                .groups
                .min_session_timeout_ms
                .unwrap_or(group_defaults.min_session_timeout_ms),
            max_session_timeout_ms: layer
                .groups
                .max_session_timeout_ms
                .unwrap_or(group_defaults.max_session_timeout_ms),
            initial_rebalance_delay_ms: layer
                .groups
                .initial_rebalance_delay_ms
                .unwrap_or(group_defaults.initial_rebalance_delay_ms),
            max_group_size: layer
                .groups
                .max_group_size
                .unwrap_or(group_defaults.max_group_size),
            offsets_retention_ms: layer
                .groups
                .offsets_retention_ms
                .unwrap_or(group_defaults.offsets_retention_ms),
        };
        if groups.min_session_timeout_ms <= 0 {
            return Err(invalid("groups.min_session_timeout_ms", "must be positive"));
        }
        if groups.max_session_timeout_ms < groups.min_session_timeout_ms {
            return Err(invalid(
                "groups.max_session_timeout_ms",
                format!(
                    "{} is below groups.min_session_timeout_ms {}",
                    groups.max_session_timeout_ms, groups.min_session_timeout_ms
                ),
            ));
        }
        if groups.max_group_size == 0 {
            return Err(invalid("groups.max_group_size", "must be at least 1"));
        }
        if groups.offsets_retention_ms <= 0 {
            return Err(invalid("groups.offsets_retention_ms", "must be positive"));
        }

        let default_partitions = layer.default_partitions.unwrap_or(1);
        if default_partitions == 0 {
            return Err(invalid("default_partitions", "must be at least 1"));
        }
        let retention_check_interval_ms = layer
            .retention_check_interval_ms
            .unwrap_or(DEFAULT_RETENTION_CHECK_INTERVAL_MS);
        if retention_check_interval_ms == 0 {
            return Err(invalid("retention_check_interval_ms", "must be positive"));
        }

        let listen = layer
            .kafka
            .listen
            .unwrap_or_else(|| DEFAULT_KAFKA_LISTEN.to_owned());
        split_host_port(&listen).map_err(|reason| invalid("kafka.listen", reason))?;
        let advertised = match layer.kafka.advertised {
            Some(a) => {
                let (host, port) =
                    split_host_port(&a).map_err(|reason| invalid("kafka.advertised", reason))?;
                if host.is_empty() || port == 0 {
                    return Err(invalid(
                        "kafka.advertised",
                        format!("{a:?} needs a host and a non-zero port"),
                    ));
                }
                Some((host, port))
            }
            None => None,
        };
        let max_request_bytes = layer
            .kafka
            .max_request_bytes
            .unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
        if !(MIN_MAX_REQUEST_BYTES..=i32::MAX as usize).contains(&max_request_bytes) {
            return Err(invalid(
                "kafka.max_request_bytes",
                format!(
                    "{max_request_bytes} is outside {MIN_MAX_REQUEST_BYTES}..={}",
                    i32::MAX
                ),
            ));
        }

        let kafka_defaults = ferry_kafka::server::KafkaConfig::default();
        let max_buffered_request_bytes = layer
            .kafka
            .max_buffered_request_bytes
            .unwrap_or(kafka_defaults.max_buffered_request_bytes);
        if max_buffered_request_bytes < max_request_bytes {
            return Err(invalid(
                "kafka.max_buffered_request_bytes",
                format!(
                    "{max_buffered_request_bytes} is below kafka.max_request_bytes \
                     ({max_request_bytes}): a request of that size could never be read"
                ),
            ));
        }
        let fetch_max_bytes = layer
            .kafka
            .fetch_max_bytes
            .unwrap_or(kafka_defaults.fetch_max_bytes);
        if !(MIN_FETCH_MAX_BYTES..=i32::MAX as u32).contains(&fetch_max_bytes) {
            return Err(invalid(
                "kafka.fetch_max_bytes",
                format!(
                    "{fetch_max_bytes} is outside {MIN_FETCH_MAX_BYTES}..={}",
                    i32::MAX
                ),
            ));
        }
        let max_connections = layer
            .kafka
            .max_connections
            .unwrap_or(kafka_defaults.max_connections);
        if max_connections == 0 {
            return Err(invalid(
                "kafka.max_connections",
                "0 would refuse every client",
            ));
        }

        let amqp_defaults = ferry_amqp::AmqpConfig::default();
        let amqp_listen = layer
            .amqp
            .listen
            .unwrap_or_else(|| DEFAULT_AMQP_LISTEN.to_owned());
        split_host_port(&amqp_listen).map_err(|reason| invalid("amqp.listen", reason))?;
        let frame_max = layer.amqp.frame_max.unwrap_or(amqp_defaults.frame_max);
        if frame_max < MIN_AMQP_FRAME_MAX {
            return Err(invalid(
                "amqp.frame_max",
                format!("{frame_max} is below {MIN_AMQP_FRAME_MAX}"),
            ));
        }
        let channel_max = layer.amqp.channel_max.unwrap_or(amqp_defaults.channel_max);
        if channel_max == 0 {
            return Err(invalid("amqp.channel_max", "must be at least 1"));
        }
        let consumer_timeout_ms = layer
            .amqp
            .consumer_timeout_ms
            .unwrap_or(amqp_defaults.consumer_timeout_ms);
        if consumer_timeout_ms == 0 {
            return Err(invalid("amqp.consumer_timeout_ms", "must be positive"));
        }
        let amqp = AmqpSettings {
            enabled: layer.amqp.enabled.unwrap_or(true),
            listen: amqp_listen,
            frame_max,
            channel_max,
            heartbeat_s: layer.amqp.heartbeat_s.unwrap_or(amqp_defaults.heartbeat_s),
            consumer_timeout_ms,
        };
        let http_listen = layer
            .http
            .listen
            .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_owned());
        split_host_port(&http_listen).map_err(|reason| invalid("http.listen", reason))?;
        let limits = LimitsConfig {
            memory_high_watermark_bytes: layer.limits.memory_high_watermark_bytes,
            disk_free_limit_bytes: layer.limits.disk_free_limit_bytes,
        };
        if limits.memory_high_watermark_bytes == Some(0) {
            return Err(invalid(
                "limits.memory_high_watermark_bytes",
                "must be positive",
            ));
        }
        let auth = AuthConfig {
            users: layer
                .amqp
                .users
                .into_iter()
                .map(|u| UserSpec {
                    name: u.name,
                    password: u.password,
                    tags: u.tags,
                })
                .collect(),
            permissions: layer
                .amqp
                .permissions
                .into_iter()
                .map(|p| PermissionSpec {
                    user: p.user,
                    vhost: p.vhost,
                    configure: p.configure,
                    write: p.write,
                    read: p.read,
                })
                .collect(),
            loopback_users: layer
                .amqp
                .loopback_users
                .unwrap_or_else(|| AuthConfig::default().loopback_users),
        };
        let vhosts = layer.amqp.vhosts.into_iter().map(|v| v.name).collect();

        if let Some(level) = &layer.log_level {
            tracing_subscriber::EnvFilter::try_new(level)
                .map_err(|e| invalid("log_level", format!("{level:?}: {e}")))?;
        }

        Ok(Settings {
            data_dir: layer
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            node_id: layer.node_id.unwrap_or(0),
            log_level: layer.log_level,
            auto_create_topics: layer.auto_create_topics.unwrap_or(true),
            default_partitions,
            retention_check_interval_ms,
            kafka: KafkaSettings {
                enabled: layer.kafka.enabled.unwrap_or(true),
                listen,
                advertised,
                server: ferry_kafka::server::KafkaConfig {
                    max_request_bytes,
                    max_buffered_request_bytes,
                    fetch_max_bytes,
                    fetch_max_wait_ms: layer
                        .kafka
                        .fetch_max_wait_ms
                        .unwrap_or(kafka_defaults.fetch_max_wait_ms),
                    fetch_session_cache_slots: layer
                        .kafka
                        .fetch_session_cache_slots
                        .unwrap_or(kafka_defaults.fetch_session_cache_slots),
                    fetch_session_cache_partitions: layer
                        .kafka
                        .fetch_session_cache_partitions
                        .unwrap_or(kafka_defaults.fetch_session_cache_partitions),
                    max_connections,
                    shutdown_grace_ms: layer
                        .kafka
                        .shutdown_grace_ms
                        .unwrap_or(kafka_defaults.shutdown_grace_ms),
                    ..kafka_defaults
                },
            },
            amqp,
            topic_defaults: layer
                .topic_defaults
                .into_iter()
                .map(|(k, v)| (k, v.into_text()))
                .collect(),
            groups,
            http: HttpSettings {
                enabled: layer.http.enabled.unwrap_or(true),
                listen: http_listen,
            },
            limits,
            auth,
            vhosts,
        })
    }

    /// The core's broker configuration; topic defaults are validated by the core.
    pub fn broker_config(&self) -> Result<BrokerConfig, ConfigError> {
        let topic_defaults =
            TopicConfig::resolve(&TopicConfig::default(), self.topic_defaults.clone())
                .map_err(|e| ConfigError::TopicDefaults(e.to_string()))?;
        Ok(BrokerConfig {
            data_dir: self.data_dir.clone(),
            node_id: self.node_id,
            auto_create_topics: self.auto_create_topics,
            default_partitions: self.default_partitions,
            topic_defaults,
            groups: self.groups.clone(),
            retention_check_interval_ms: self.retention_check_interval_ms,
            auth: self.auth.clone(),
            vhosts: self.vhosts.clone(),
            limits: self.limits,
        })
    }

    /// The `(host, port)` to advertise once the listener is bound to `bound`: the
    /// configured one, else the listen host (or `localhost` if it is unspecified) with
    /// the bound port (which differs from the configured one when that was 0).
    pub fn advertised(&self, bound: SocketAddr) -> (String, u16) {
        if let Some(advertised) = &self.kafka.advertised {
            return advertised.clone();
        }
        let host = split_host_port(&self.kafka.listen)
            .map(|(host, _)| host)
            .unwrap_or_default();
        let unspecified = host.is_empty()
            || host
                .parse::<IpAddr>()
                .map(|ip| ip.is_unspecified())
                .unwrap_or(false);
        let host = if unspecified {
            DEFAULT_ADVERTISED_HOST.to_owned()
        } else {
            host
        };
        (host, bound.port())
    }
}

/// Splits `host:port` (IPv6 hosts in brackets) and checks the port.
pub fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.contains(':') && !addr.starts_with('[') {
        return Err(format!("{addr:?}: write IPv6 addresses as [addr]:port"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{addr:?} has no valid port"))?;
    Ok((host.to_owned(), port))
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

fn parse_num<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "not a valid number".to_owned())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> Layer {
        Layer::from_toml(text, Path::new("ferry.toml")).expect("valid file")
    }

    #[test]
    fn defaults_need_nothing() {
        let s = Settings::resolve(Layer::default()).expect("defaults");
        assert_eq!(s.data_dir, PathBuf::from("./ferry-data"));
        assert_eq!(s.kafka.listen, "0.0.0.0:9092");
        assert!(s.kafka.enabled);
        assert_eq!(s.amqp.listen, "0.0.0.0:5672");
        assert!(s.amqp.enabled);
        assert_eq!(s.amqp.frame_max, 131_072);
        assert_eq!(s.amqp.channel_max, 2047);
        assert_eq!(s.amqp.heartbeat_s, 60);
        assert_eq!(s.amqp.consumer_timeout_ms, 1_800_000);
        assert!(s.auto_create_topics);
        assert_eq!(s.default_partitions, 1);
        assert_eq!(s.node_id, 0);
        assert_eq!(s.log_level, None);
        assert!(s.topic_defaults.is_empty());
        assert_eq!(
            s.groups.min_session_timeout_ms,
            GroupSettings::default().min_session_timeout_ms
        );
        let bound: SocketAddr = "0.0.0.0:9092".parse().expect("addr");
        assert_eq!(s.advertised(bound), ("localhost".to_owned(), 9092));
    }

    #[test]
    fn file_then_env_then_flags() {
        let f = file(
            r#"
            data_dir = "/from/file"
            default_partitions = 3
            auto_create_topics = false
            [kafka]
            listen = "127.0.0.1:1000"
            max_request_bytes = 1048576
            fetch_max_bytes = 2097152
            fetch_session_cache_slots = 0
            max_connections = 50
            [topic_defaults]
            "retention.ms" = 1000
            "flush.mode" = "sync"
            "cleanup.policy" = "delete"
            [groups]
            min_session_timeout_ms = 1000
            [amqp]
            listen = "127.0.0.1:5000"
            frame_max = 8192
            consumer_timeout_ms = 2000
            "#,
        );
        let (e, unknown) = Layer::from_env(env(&[
            ("FERRY_DATA_DIR", "/from/env"),
            ("FERRY_DEFAULT_PARTITIONS", "5"),
            ("FERRY_FLUSH_MODE", "async"),
            ("FERRY_KAFKA_LISTEN", "127.0.0.1:2000"),
            ("FERRY_AMQP_LISTEN", "127.0.0.1:6000"),
            ("FERRY_AMQP_ENABLED", "no"),
            ("FERRY_BOOTSTRAP", "ignored:1"),
            ("FERRY_DATADIR", "typo"),
            ("HOME", "/root"),
        ]))
        .expect("env");
        assert_eq!(unknown, vec!["FERRY_DATADIR".to_owned()]);
        let flags = Layer {
            data_dir: Some(PathBuf::from("/from/flag")),
            ..Layer::default()
        };
        let s = Settings::resolve(f.overlay(e).overlay(flags)).expect("valid");
        assert_eq!(s.data_dir, PathBuf::from("/from/flag")); // flag beats env and file
        assert_eq!(s.default_partitions, 5); // env beats file
        assert!(!s.auto_create_topics); // file beats default
        assert_eq!(s.kafka.listen, "127.0.0.1:2000");
        assert_eq!(s.kafka.server.max_request_bytes, 1_048_576);
        assert_eq!(s.kafka.server.fetch_max_bytes, 2_097_152);
        assert_eq!(s.kafka.server.fetch_session_cache_slots, 0);
        assert_eq!(s.kafka.server.max_connections, 50);
        let kafka_defaults = ferry_kafka::server::KafkaConfig::default();
        assert_eq!(
            s.kafka.server.fetch_max_wait_ms,
            kafka_defaults.fetch_max_wait_ms
        );
        assert_eq!(
            s.kafka.server.shutdown_grace_ms,
            kafka_defaults.shutdown_grace_ms
        );
        assert_eq!(s.groups.min_session_timeout_ms, 1000);
        assert_eq!(s.amqp.listen, "127.0.0.1:6000"); // env beats file
        assert!(!s.amqp.enabled);
        assert_eq!(s.amqp.frame_max, 8192);
        assert_eq!(s.amqp.consumer_timeout_ms, 2000);
        assert_eq!(
            s.topic_defaults.get("flush.mode").map(String::as_str),
            Some("async")
        );
        assert_eq!(
            s.topic_defaults.get("retention.ms").map(String::as_str),
            Some("1000")
        );
        assert_eq!(
            s.topic_defaults.get("cleanup.policy").map(String::as_str),
            Some("delete")
        );
        let bound: SocketAddr = "127.0.0.1:2000".parse().expect("addr");
        assert_eq!(s.advertised(bound), ("127.0.0.1".to_owned(), 2000));
    }

    #[test]
    fn load_reads_the_file_named_by_flag_or_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            "node_id = 7\n[kafka]\nadvertised = \"broker:19092\"\n",
        )
        .expect("write");
        let env_only = env(&[("FERRY_CONFIG", path.to_str().expect("utf8"))]);
        let (s, _) = Settings::load(None, env_only, Layer::default()).expect("load");
        assert_eq!(s.node_id, 7);
        let bound: SocketAddr = "0.0.0.0:1".parse().expect("addr");
        assert_eq!(s.advertised(bound), ("broker".to_owned(), 19092));
        let flags = Layer {
            node_id: Some(9),
            ..Layer::default()
        };
        let (s, _) = Settings::load(Some(&path), Vec::new(), flags).expect("load");
        assert_eq!(s.node_id, 9);
        let missing = dir.path().join("missing.toml");
        let err =
            Settings::load(Some(&missing), Vec::new(), Layer::default()).expect_err("missing");
        assert!(
            err.to_string().starts_with("cannot read config file"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let err = Layer::from_toml("data_dir = \"x\"\ndata_dri = \"y\"\n", Path::new("f.toml"))
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("f.toml, line 2 column 1"), "{msg}");
        assert!(msg.contains("unknown field `data_dri`"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let err =
            Layer::from_toml("[kafka]\nport = 1\n", Path::new("f.toml")).expect_err("unknown");
        assert!(err.to_string().contains("unknown field `port`"), "{err}");
        let err = Layer::from_toml("default_partitions = \"x\"\n", Path::new("f.toml"))
            .expect_err("type");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad_env =
            Layer::from_env(env(&[("FERRY_DEFAULT_PARTITIONS", "many")])).expect_err("bad");
        assert_eq!(
            bad_env.to_string(),
            "environment variable FERRY_DEFAULT_PARTITIONS=\"many\": not a valid number"
        );
        assert!(Layer::from_env(env(&[("FERRY_AUTO_CREATE_TOPICS", "maybe")])).is_err());
        let (off, _) = Layer::from_env(env(&[("FERRY_AUTO_CREATE_TOPICS", "no")])).expect("bool");
        assert_eq!(off.auto_create_topics, Some(false));
        for (layer, key) in [
            (
                Layer {
                    default_partitions: Some(0),
                    ..Layer::default()
                },
                "default_partitions",
            ),
            (
                Layer {
                    kafka: KafkaLayer {
                        listen: Some("9092".into()),
                        ..KafkaLayer::default()
                    },
                    ..Layer::default()
                },
                "kafka.listen",
            ),
            (
                Layer {
                    kafka: KafkaLayer {
                        advertised: Some("host:0".into()),
                        ..KafkaLayer::default()
                    },
                    ..Layer::default()
                },
                "kafka.advertised",
            ),
            (
                Layer {
                    kafka: KafkaLayer {
                        max_request_bytes: Some(10),
                        ..KafkaLayer::default()
                    },
                    ..Layer::default()
                },
                "kafka.max_request_bytes",
            ),
            (
                Layer {
                    kafka: KafkaLayer {
                        max_request_bytes: Some(2 << 20),
                        max_buffered_request_bytes: Some(1 << 20),
                        ..KafkaLayer::default()
                    },
                    ..Layer::default()
                },
                "kafka.max_buffered_request_bytes",
            ),
            (
                Layer {
                    kafka: KafkaLayer {
                        fetch_max_bytes: Some(10),
                        ..KafkaLayer::default()
                    },
                    ..Layer::default()
                },
                "kafka.fetch_max_bytes",
            ),
            (
                Layer {
                    kafka: KafkaLayer {
                        max_connections: Some(0),
                        ..KafkaLayer::default()
                    },
                    ..Layer::default()
                },
                "kafka.max_connections",
            ),
            (
                Layer {
                    groups: GroupsLayer {
                        min_session_timeout_ms: Some(10_000),
                        max_session_timeout_ms: Some(5_000),
                        ..GroupsLayer::default()
                    },
                    ..Layer::default()
                },
                "groups.max_session_timeout_ms",
            ),
            (
                Layer {
                    amqp: AmqpLayer {
                        frame_max: Some(1024),
                        ..AmqpLayer::default()
                    },
                    ..Layer::default()
                },
                "amqp.frame_max",
            ),
            (
                Layer {
                    amqp: AmqpLayer {
                        listen: Some("5672".into()),
                        ..AmqpLayer::default()
                    },
                    ..Layer::default()
                },
                "amqp.listen",
            ),
            (
                Layer {
                    log_level: Some("info,=[".into()),
                    ..Layer::default()
                },
                "log_level",
            ),
        ] {
            let err = Settings::resolve(layer).expect_err(key);
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            split_host_port("localhost:9092"),
            Ok(("localhost".into(), 9092))
        );
        assert_eq!(split_host_port("[::1]:9092"), Ok(("::1".into(), 9092)));
        assert_eq!(split_host_port(":9092"), Ok(("".into(), 9092)));
        assert!(split_host_port("::1:9092").is_err());
        assert!(split_host_port("host:99999").is_err());
        assert!(split_host_port("host").is_err());
        let s = Settings::resolve(Layer {
            kafka: KafkaLayer {
                listen: Some("[::]:0".into()),
                ..KafkaLayer::default()
            },
            ..Layer::default()
        })
        .expect("valid");
        let bound: SocketAddr = "[::]:45678".parse().expect("addr");
        assert_eq!(s.advertised(bound), ("localhost".to_owned(), 45678));
    }

    #[test]
    fn http_limits_and_definitions() {
        let s = Settings::resolve(Layer::default()).expect("defaults");
        assert_eq!(
            s.http,
            HttpSettings {
                enabled: true,
                listen: "0.0.0.0:8080".into()
            }
        );
        assert_eq!(s.limits, LimitsConfig::default());
        assert_eq!(s.auth, AuthConfig::default());
        assert!(s.vhosts.is_empty());

        let f = file(
            r#"
            [http]
            listen = "127.0.0.1:8081"
            [limits]
            memory_high_watermark_bytes = 1000000
            disk_free_limit_bytes = 1
            [amqp]
            loopback_users = []
            [[amqp.users]]
            name = "app"
            password = "secret"
            tags = ["management"]
            [[amqp.vhosts]]
            name = "staging"
            [[amqp.permissions]]
            user = "app"
            vhost = "staging"
            configure = "^app-"
            write = ".*"
            read = ""
            "#,
        );
        let (e, unknown) = Layer::from_env(env(&[
            ("FERRY_HTTP_ENABLED", "false"),
            ("FERRY_DISK_FREE_LIMIT_BYTES", "2"),
            ("FERRY_ADMIN", "x:1"),
        ]))
        .expect("env");
        assert!(unknown.is_empty());
        let s = Settings::resolve(f.overlay(e)).expect("valid");
        assert!(!s.http.enabled);
        assert_eq!(s.http.listen, "127.0.0.1:8081");
        assert_eq!(s.limits.memory_high_watermark_bytes, Some(1_000_000));
        assert_eq!(s.limits.disk_free_limit_bytes, Some(2));
        assert!(s.auth.loopback_users.is_empty());
        assert_eq!(
            s.auth.users,
            vec![UserSpec {
                name: "app".into(),
                password: "secret".into(),
                tags: vec!["management".into()]
            }]
        );
        assert_eq!(s.vhosts, vec!["staging".to_owned()]);
        assert_eq!(s.auth.permissions[0].configure, "^app-");
        assert_eq!(s.auth.permissions[0].read, "");
        let config = s.broker_config().expect("broker config");
        assert_eq!(config.vhosts, vec!["staging".to_owned()]);
        assert_eq!(config.auth, s.auth);

        let bad = Layer {
            http: HttpLayer {
                listen: Some("nowhere".into()),
                ..HttpLayer::default()
            },
            ..Layer::default()
        };
        let err = Settings::resolve(bad).expect_err("bad listen");
        assert!(err.to_string().starts_with("http.listen"), "{err}");
        let unknown_key = Layer::from_toml(
            "[[amqp.users]]\nname = \"a\"\npasword = \"x\"\n",
            Path::new("f.toml"),
        );
        assert!(unknown_key.is_err());
    }
}
