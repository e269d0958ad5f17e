//! The command line: `ferry serve` and the tools that talk to a running broker.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::config::{
    AmqpLayer, GroupsLayer, HttpLayer, KafkaLayer, Layer, TopicValue, FLUSH_MODE_KEY,
};

/// Default broker address of the command-line tools.
pub const DEFAULT_BOOTSTRAP: &str = "localhost:9092";
/// Default admin API address of `ferry user|vhost|permissions`.
pub const DEFAULT_ADMIN: &str = "localhost:8080";

/// Ferry: a message broker that Kafka clients use unchanged.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send lines from standard input as messages.
    Produce(ProduceArgs),
    /// Print messages of a topic.
    Consume(ConsumeArgs),
    /// List and describe consumer groups, reset their offsets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Measure a broker (or the built-in tcp-baseline) with a workload.
    Bench(Box<ferry_bench::BenchArgs>),
    /// Add, delete and list users (through the HTTP admin API).
    #[command(subcommand)]
    User(UserCommand),
    /// Add, delete and list vhosts (through the HTTP admin API).
    #[command(subcommand)]
    Vhost(VhostCommand),
    /// Set, clear and list users' permissions on vhosts (through the HTTP admin API).
    #[command(subcommand)]
    Permissions(PermissionsCommand),
    /// List queues (through the HTTP admin API).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// List exchanges (through the HTTP admin API).
    #[command(subcommand)]
    Exchange(ExchangeCommand),
    /// Show or change the memory and disk alarm thresholds (through the HTTP admin API).
    #[command(subcommand)]
    Limits(LimitsCommand),
}

/// Flags of `ferry serve`; each overrides the config file and the environment.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file [env: FERRY_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./ferry-data] [env: FERRY_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka listen address [default: 0.0.0.0:9092] [env: FERRY_KAFKA_LISTEN]
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_listen: Option<String>,
    /// Address given to Kafka clients [default: listen host, or localhost] [env: FERRY_KAFKA_ADVERTISED]
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_advertised: Option<String>,
    /// AMQP 0-9-1 listen address [default: 0.0.0.0:5672] [env: FERRY_AMQP_LISTEN]
    #[arg(long, value_name = "HOST:PORT")]
    pub amqp_listen: Option<String>,
    /// Do not serve AMQP 0-9-1 [env: FERRY_AMQP_ENABLED=false]
    #[arg(long)]
    pub no_amqp: bool,
    /// Do not create topics on first use [env: FERRY_AUTO_CREATE_TOPICS=false]
    #[arg(long)]
    pub no_auto_create_topics: bool,
    /// Partitions of auto-created topics [default: 1] [env: FERRY_DEFAULT_PARTITIONS]
    #[arg(long, value_name = "N")]
    pub default_partitions: Option<u32>,
    /// Broker default of the topic config flush.mode [default: async] [env: FERRY_FLUSH_MODE]
    #[arg(long, value_enum, value_name = "MODE")]
    pub flush_mode: Option<FlushMode>,
    /// Smallest session timeout a consumer may ask for [default: 6000] [env: FERRY_GROUP_MIN_SESSION_TIMEOUT_MS]
    #[arg(long, value_name = "MS")]
    pub group_min_session_timeout_ms: Option<i32>,
    /// Log filter: a level or tracing directives [default: RUST_LOG, else info] [env: FERRY_LOG_LEVEL]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// HTTP (admin API, /metrics) listen address [default: 0.0.0.0:8080] [env: FERRY_HTTP_LISTEN]
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// Do not serve HTTP [env: FERRY_HTTP_ENABLED=false]
    #[arg(long, conflicts_with = "http_listen")]
    pub no_http: bool,
}

/// Durability of appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlushMode {
    /// Acknowledge after append; flush on interval/size.
    Async,
    /// Acknowledge acks=all only after fsync (group commit).
    Sync,
}

impl ServeArgs {
    /// The configuration layer these flags set.
    pub fn layer(&self) -> Layer {
        let mut topic_defaults = std::collections::BTreeMap::new();
        if let Some(mode) = self.flush_mode {
            let value = match mode {
                FlushMode::Async => "async",
                FlushMode::Sync => "sync",
            };
            topic_defaults.insert(
                FLUSH_MODE_KEY.to_owned(),
                TopicValue::Text(value.to_owned()),
            );
        }
        Layer {
            data_dir: self.data_dir.clone(),
            log_level: self.log_level.clone(),
            auto_create_topics: self.no_auto_create_topics.then_some(false),
            default_partitions: self.default_partitions,
            kafka: KafkaLayer {
                listen: self.kafka_listen.clone(),
                advertised: self.kafka_advertised.clone(),
                ..KafkaLayer::default()
            },
            amqp: AmqpLayer {
                enabled: self.no_amqp.then_some(false),
                listen: self.amqp_listen.clone(),
                ..AmqpLayer::default()
            },
            topic_defaults,
            groups: GroupsLayer {
                min_session_timeout_ms: self.group_min_session_timeout_ms,
                ..GroupsLayer::default()
            },
            http: HttpLayer {
                enabled: self.no_http.then_some(false),
                listen: self.http_listen.clone(),
            },
            ..Layer::default()
        }
    }
}

/// How to reach a running broker.
#[derive(Clone, Debug, Args)]
pub struct ConnArgs {
    /// Broker to connect to (comma-separated list allowed)
    #[arg(long, value_name = "HOST:PORT", env = "FERRY_BOOTSTRAP", hide_env_values = true, default_value = DEFAULT_BOOTSTRAP)]
    pub bootstrap: String,
    /// Give up on a request after this long
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

/// How to reach a running broker's HTTP admin API.
#[derive(Clone, Debug, Args)]
pub struct AdminArgs {
    /// The broker's HTTP admin API (its --http-listen)
    #[arg(long = "http", visible_alias = "broker", value_name = "HOST:PORT", env = "FERRY_ADMIN", hide_env_values = true, default_value = DEFAULT_ADMIN)]
    pub http: String,
    /// Administrator to authenticate as
    #[arg(
        long,
        value_name = "USER",
        env = "FERRY_ADMIN_USER",
        default_value = "guest"
    )]
    pub admin_user: String,
    /// Password of --admin-user
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "FERRY_ADMIN_PASSWORD",
        hide_env_values = true,
        default_value = "guest"
    )]
    pub admin_password: String,
    /// Give up on a request after this long
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

/// `ferry user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user, or replace an existing user's password and tags.
    Add {
        /// User name.
        name: String,
        /// The user's password
        #[arg(long, value_name = "PASSWORD")]
        password: String,
        /// Tags, comma-separated or repeated (administrator may use the admin API)
        #[arg(long, value_name = "TAG,…", value_delimiter = ',')]
        tags: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a user and its permissions.
    Delete {
        /// User name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List users with their tags.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `ferry vhost …`
#[derive(Debug, Subcommand)]
pub enum VhostCommand {
    /// Create a vhost (with its amq.* exchanges).
    Add {
        /// Vhost name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a vhost with everything in it.
    Delete {
        /// Vhost name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List vhosts.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `ferry permissions …`
#[derive(Debug, Subcommand)]
pub enum PermissionsCommand {
    /// Set a user's configure, write and read patterns (regular expressions) on a vhost.
    Set {
        /// Vhost
        #[arg(long, value_name = "VHOST", default_value = "/")]
        vhost: String,
        /// User name.
        user: String,
        /// Configure pattern (declare, delete).
        configure: String,
        /// Write pattern (publish, bind to).
        write: String,
        /// Read pattern (consume, get, purge, bind from).
        read: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a user's permission on a vhost.
    Clear {
        /// Vhost
        #[arg(long, value_name = "VHOST", default_value = "/")]
        vhost: String,
        /// User name.
        user: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List permissions.
    List {
        /// Only this vhost's
        #[arg(long, value_name = "VHOST")]
        vhost: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `ferry queue …`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queues with their ready messages and consumers.
    List {
        /// Only this vhost's
        #[arg(long, value_name = "VHOST")]
        vhost: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `ferry exchange …`
#[derive(Debug, Subcommand)]
pub enum ExchangeCommand {
    /// List exchanges with their types.
    List {
        /// Only this vhost's
        #[arg(long, value_name = "VHOST")]
        vhost: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `ferry limits …`
#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Show the alarm thresholds in force.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change alarm thresholds until the broker restarts (`default`: back to the configured value).
    #[command(group(ArgGroup::new("limit").required(true).multiple(true).args(["memory_high_watermark_bytes", "disk_free_limit_bytes"])))]
    Set {
        /// Memory alarm above this many resident bytes, or `default`
        #[arg(long, value_name = "BYTES|default")]
        memory_high_watermark_bytes: Option<String>,
        /// Disk alarm below this many free bytes, or `default`
        #[arg(long, value_name = "BYTES|default")]
        disk_free_limit_bytes: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `ferry topic …`
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions [default: the broker's default_partitions]
        #[arg(long, value_name = "N")]
        partitions: Option<i32>,
        /// Topic config, e.g. retention.ms=3600000 (repeatable)
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List topics.
    List {
        /// Include internal topics (__consumer_offsets…).
        #[arg(long)]
        internal: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show partitions with their offsets, and configs.
    Describe {
        /// Topic name.
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Add partitions or change configs.
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["partitions", "configs", "delete_configs"])))]
    Alter {
        /// Topic name.
        name: String,
        /// New total number of partitions (can only grow).
        #[arg(long, value_name = "N")]
        partitions: Option<i32>,
        /// Set a topic config (repeatable)
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Remove a topic config override, back to the default (repeatable)
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_configs: Vec<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Produce acknowledgement level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// No acknowledgement.
    #[value(name = "0")]
    Zero,
    /// Leader appended.
    #[value(name = "1")]
    One,
    /// All in-sync replicas (and fsync on flush.mode=sync topics).
    #[value(name = "all", alias = "-1")]
    All,
}

/// `ferry produce`
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to (created if the broker auto-creates topics).
    pub topic: String,
    /// Split each line into key and value at the first occurrence of SEP
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Header added to every message (repeatable)
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Write every message to this partition (default: by key hash, else spread)
    #[arg(long, value_name = "N")]
    pub partition: Option<i32>,
    /// Acknowledgement level
    #[arg(long, value_enum, default_value = "all", allow_hyphen_values = true)]
    pub acks: AcksArg,
    /// Compression codec of the batches: none, gzip, snappy, lz4 or zstd
    #[arg(long, value_name = "CODEC", default_value = "none")]
    pub compression: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `ferry consume`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("start").args(["from_beginning", "offset", "from_time"])))]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Start at the oldest message (with --group: when the group has no committed offset)
    #[arg(long)]
    pub from_beginning: bool,
    /// Start at this offset
    #[arg(long, value_name = "N")]
    pub offset: Option<i64>,
    /// Start at the first message at or after this time (ms since the epoch, or RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub from_time: Option<String>,
    /// Read only this partition
    #[arg(long, value_name = "N")]
    pub partition: Option<i32>,
    /// Join this consumer group and commit offsets
    #[arg(long, value_name = "GROUP", conflicts_with_all = ["offset", "from_time", "partition"])]
    pub group: Option<String>,
    /// Stop after this many messages
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Stop when no message arrived for this long
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Output line per message: %T topic, %p partition, %o offset, %t timestamp (ms),
    /// %k key, %v value, %h headers (k=v,…), %% a percent sign, \n and \t escapes; or
    /// `json` for one JSON object per line
    #[arg(long, value_name = "FORMAT", default_value = "%v")]
    pub format: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `ferry group …`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show a group's members, committed offsets and lag per partition.
    Describe {
        /// Group id.
        group: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Move a group's committed offsets (dry run unless --execute).
    #[command(group(ArgGroup::new("target").required(true).args(["to_earliest", "to_latest", "to_offset", "to_time"])))]
    ResetOffsets {
        /// Group id.
        group: String,
        /// Topic whose offsets to reset (all its partitions).
        #[arg(long, value_name = "TOPIC")]
        topic: String,
        /// To the oldest offset still in the log
        #[arg(long)]
        to_earliest: bool,
        /// To the end of the log
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped into the log's range)
        #[arg(long, value_name = "N")]
        to_offset: Option<i64>,
        /// To the first message at or after this time (ms since the epoch, or RFC 3339)
        #[arg(long, value_name = "TIME")]
        to_time: Option<String>,
        /// Apply the plan (the group must have no active members)
        #[arg(long)]
        execute: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_become_a_layer() {
        let cli = Cli::try_parse_from([
            "ferry",
            "serve",
            "--data-dir",
            "/d",
            "--kafka-listen",
            "127.0.0.1:1",
            "--no-auto-create-topics",
            "--flush-mode",
            "sync",
            "--group-min-session-timeout-ms",
            "100",
        ])
        .expect("parse");
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let layer = args.layer();
        assert_eq!(layer.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(layer.kafka.listen.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(layer.auto_create_topics, Some(false));
        assert_eq!(
            layer.topic_defaults.get("flush.mode"),
            Some(&TopicValue::Text("sync".into()))
        );
        assert_eq!(layer.groups.min_session_timeout_ms, Some(100));
        assert_eq!(layer.default_partitions, None);
    }

    #[test]
    fn start_positions_are_exclusive() {
        assert!(Cli::try_parse_from([
            "ferry",
            "consume",
            "t",
            "--from-beginning",
            "--offset",
            "3"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["ferry", "consume", "t", "--group", "g", "--offset", "3"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from(["ferry", "consume", "t", "--group", "g", "--from-beginning"])
                .is_ok()
        );
        assert!(
            Cli::try_parse_from(["ferry", "group", "reset-offsets", "g", "--topic", "t"]).is_err()
        );
        assert!(Cli::try_parse_from(["ferry", "topic", "alter", "t"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "produce", "t", "--acks", "-1"]).is_ok());
    }
}
