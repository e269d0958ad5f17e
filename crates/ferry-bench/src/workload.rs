//! What a run does: topics, partitions, message size, rates, durations, batching.
//!
//! Given as flags or as a TOML file whose keys are the field names below; flags override
//! the file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::message::PAYLOAD_HEADER_BYTES;

/// Most partitions per topic a workload may ask for.
pub const PARTITIONS_MAX: u32 = 100_000;
/// Most topics a workload may ask for.
pub const TOPICS_MAX: u32 = 10_000;
/// Most producers or consumers a workload may ask for.
pub const CLIENTS_MAX: u32 = 1_024;
/// Largest message a workload may ask for.
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;
/// Largest producer batch a workload may ask for.
pub const BATCH_BYTES_MAX: usize = 64 << 20;

/// Produce acknowledgement level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Acks {
    /// No acknowledgement (the broker sends no response).
    #[value(name = "0")]
    #[serde(rename = "0")]
    Zero,
    /// The leader appended.
    #[value(name = "1")]
    #[serde(rename = "1")]
    One,
    /// All in-sync replicas (on Ferry `flush.mode=sync` topics: fsynced).
    #[value(name = "all", alias = "-1")]
    #[serde(rename = "all")]
    All,
}

impl Acks {
    /// The wire value of the Produce request.
    pub fn wire(self) -> i16 {
        match self {
            Acks::Zero => 0,
            Acks::One => 1,
            Acks::All => -1,
        }
    }
}

/// Topic durability (`flush.mode` topic config); `None` keeps the broker's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Acknowledge after append, flush in the background.
    Async,
    /// Acknowledge acks=all after fsync (group commit).
    Sync,
}

impl FlushMode {
    /// The topic config value.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushMode::Async => "async",
            FlushMode::Sync => "sync",
        }
    }
}

/// Which protocol the run speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Kafka wire protocol.
    #[default]
    Kafka,
    /// AMQP 0-9-1 (see [`crate::amqp`]).
    Amqp,
}

/// One benchmark workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Prefix of the topic names; a run suffix keeps runs apart.
    pub topic_prefix: String,
    /// Number of topics.
    pub topics: u32,
    /// Partitions per topic.
    pub partitions: u32,
    /// Value bytes per message (at least the stamp of [`PAYLOAD_HEADER_BYTES`]).
    pub message_bytes: usize,
    /// Whether messages carry a key (partition by key hash) or not (sticky partitioning).
    pub keyed: bool,
    /// Producer connections.
    pub producers: u32,
    /// Consumer connections (partitions are split among them).
    pub consumers: u32,
    /// Total target rate in msg/s; 0 means as fast as possible.
    pub rate_msg_per_s: u64,
    /// Measured time.
    pub duration_s: f64,
    /// Time before measuring (messages are still checked).
    pub warmup_s: f64,
    /// Produce acknowledgement level.
    pub acks: Acks,
    /// A partition's batch is sent when it reaches this many bytes.
    pub batch_bytes: usize,
    /// … or when its first message is this old.
    pub linger_ms: u64,
    /// Produce requests in flight per producer connection.
    pub max_in_flight: u32,
    /// Topic `flush.mode` at creation.
    pub flush_mode: Option<FlushMode>,
    /// How long consumers may take after the producers stop before missing messages count
    /// as lost.
    pub drain_timeout_s: f64,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// AMQP settings (used with `protocol = "amqp"`).
    pub amqp: crate::amqp::AmqpOptions,
    /// When non-zero, producers stop after this many value bytes in all rather than after
    /// warm-up plus duration (which then only caps the run): a backlog workload.
    pub produce_bytes: u64,
    /// Start consumers only once every producer is done, reading from the earliest
    /// offset (catch-up consumption); with `consumers = 0`, nothing is consumed.
    pub consume_after_produce: bool,
    /// Produce throughput is also reported per step of this many acknowledged value bytes
    /// (e.g. per GB, to show that the rate holds as the log grows).
    pub produce_step_bytes: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            topic_prefix: "ferry-bench".to_owned(),
            topics: 1,
            partitions: 16,
            message_bytes: 1024,
            keyed: false,
            producers: 1,
            consumers: 1,
            rate_msg_per_s: 0,
            duration_s: 20.0,
            warmup_s: 5.0,
            acks: Acks::One,
            batch_bytes: 64 * 1024,
            linger_ms: 5,
            max_in_flight: 5,
            flush_mode: None,
            drain_timeout_s: 30.0,
            protocol: Protocol::Kafka,
            amqp: crate::amqp::AmqpOptions::default(),
            produce_bytes: 0,
            consume_after_produce: false,
            produce_step_bytes: 1_000_000_000,
        }
    }
}

impl Workload {
    /// Reads a TOML workload file.
    pub fn from_toml(path: &str) -> Result<Workload> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::WorkloadFile {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| BenchError::WorkloadFile {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks every field against its bound.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(BenchError::Workload(m));
        if self.topics == 0 || self.topics > TOPICS_MAX {
            return bad(format!("topics must be 1..={TOPICS_MAX}"));
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return bad(format!("partitions must be 1..={PARTITIONS_MAX}"));
        }
        if self.message_bytes < PAYLOAD_HEADER_BYTES || self.message_bytes > MESSAGE_BYTES_MAX {
            return bad(format!(
                "message size must be {PAYLOAD_HEADER_BYTES}..={MESSAGE_BYTES_MAX} bytes (each message carries a {PAYLOAD_HEADER_BYTES}-byte stamp)"
            ));
        }
        if self.producers == 0 || self.producers > CLIENTS_MAX {
            return bad(format!("producers must be 1..={CLIENTS_MAX}"));
        }
        if self.consumers > CLIENTS_MAX || (self.consumers == 0 && !self.produce_only()) {
            return bad(format!(
                "consumers must be 1..={CLIENTS_MAX} (0 only with produce_bytes and consume_after_produce)"
            ));
        }
        if self.produce_step_bytes == 0 {
            return bad("produce step must be positive".to_owned());
        }
        if self.acks == Acks::Zero {
            // Nothing tells an acks=0 producer that a request was refused, so losses could
            // not be told from broker refusals; keep the run honest by refusing it.
            return bad("acks=0 is not supported: the tool verifies every message".to_owned());
        }
        if !(self.duration_s > 0.0 && self.duration_s.is_finite()) {
            return bad("duration must be positive".to_owned());
        }
        if !(self.warmup_s >= 0.0 && self.warmup_s.is_finite()) {
            return bad("warm-up must be zero or positive".to_owned());
        }
        if !(self.drain_timeout_s > 0.0 && self.drain_timeout_s.is_finite()) {
            return bad("drain timeout must be positive".to_owned());
        }
        if self.batch_bytes == 0 || self.batch_bytes > BATCH_BYTES_MAX {
            return bad(format!("batch size must be 1..={BATCH_BYTES_MAX} bytes"));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1_000 {
            return bad("max in-flight must be 1..=1000".to_owned());
        }
        if self.protocol == Protocol::Amqp {
            crate::amqp::validate(self)?;
        }
        Ok(())
    }

    /// Whether the run only produces (a fill): nothing is consumed or checked for order,
    /// only that every produce was acknowledged.
    pub fn produce_only(&self) -> bool {
        self.consumers == 0 && self.produce_bytes > 0 && self.consume_after_produce
    }

    /// Messages each producer sends in a backlog workload (`None`: run by time): its share
    /// of `produce_bytes`, or the AMQP driver's `messages_per_producer`, whichever is
    /// smaller when both are set.
    pub fn messages_per_producer(&self) -> Option<u64> {
        let by_bytes = (self.produce_bytes > 0).then(|| {
            let total = self.produce_bytes.div_ceil(self.message_bytes as u64);
            total.div_ceil(self.producers as u64)
        });
        let by_count = (self.protocol == Protocol::Amqp && self.amqp.messages_per_producer > 0)
            .then_some(self.amqp.messages_per_producer);
        match (by_bytes, by_count) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether consumers read only once every producer is done: the workload's
    /// `consume_after_produce`, or the AMQP driver's own (its consumers connect first and
    /// wait).
    pub fn consumes_after_produce(&self) -> bool {
        self.consume_after_produce
            || (self.protocol == Protocol::Amqp && self.amqp.consume_after_produce)
    }

    /// Total partitions over all topics.
    pub fn total_partitions(&self) -> usize {
        self.topics as usize * self.partitions as usize
    }

    /// Warm-up as a duration.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    /// Measured time as a duration.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }

    /// Drain timeout as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        let w = Workload::default();
        w.validate().expect("defaults");
        assert!(Workload {
            message_bytes: 4,
            ..w.clone()
        }
        .validate()
        .is_err());
        assert!(Workload {
            acks: Acks::Zero,
            ..w.clone()
        }
        .validate()
        .is_err());
        assert!(Workload { partitions: 0, ..w }.validate().is_err());
    }

    #[test]
    fn toml_workload_parses() {
        let w: Workload = toml::from_str(
            "partitions = 4\nmessage_bytes = 100\nacks = \"all\"\nflush_mode = \"sync\"\nkeyed = true\n",
        )
        .expect("parse");
        assert_eq!(w.partitions, 4);
        assert_eq!(w.acks, Acks::All);
        assert_eq!(w.flush_mode, Some(FlushMode::Sync));
        assert!(w.keyed);
        assert!(toml::from_str::<Workload>("partitons = 4").is_err());
    }

    #[test]
    fn the_issue_workload_files_parse_and_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/workloads");
        for n in 1..=7 {
            let path = dir.join(format!("w{n}.toml"));
            let path = path.to_str().expect("utf-8 path");
            let w = Workload::from_toml(path).expect("parses");
            w.validate().expect("valid");
        }
        let w5 = Workload::from_toml(dir.join("w5.toml").to_str().expect("path")).expect("w5");
        assert!(w5.consume_after_produce && w5.produce_bytes > 0);
        let w6 = Workload::from_toml(dir.join("w6.toml").to_str().expect("path")).expect("w6");
        assert!(w6.produce_only());
    }
}
