//! `ferry bench`: a benchmark tool for Ferry and any broker speaking its protocols.
//!
//! A [`Workload`] (topics, partitions, message size, rate, producers, consumers,
//! batching, acks, flush mode) runs against a [`Target`]: a broker by address, or the
//! built-in `tcp-baseline` server that stores nothing, which gives the ceiling of the
//! machine for the same workload. A [`Driver`] speaks the protocol (Kafka, or AMQP 0-9-1 through lapin).
//! Every message carries a stamp, so the run measures end-to-end latency and checks that
//! each message is consumed once, in per-partition order; a run that fails this check
//! is a failed run. Results are a [`Report`] (human text or JSON).

pub mod amqp;
pub mod baseline;
pub mod checker;
pub mod cli;
pub mod driver;
pub mod error;
pub mod kafka;
pub mod message;
pub mod restart;
pub mod rss;
pub mod run;
pub mod stats;
pub mod workload;

pub use amqp::AmqpDriver;
pub use cli::{run_cli, BenchArgs};
pub use driver::Driver;
pub use error::{BenchError, Result};
pub use kafka::KafkaDriver;
pub use run::{run, run_with, Target};
pub use stats::Report;
pub use workload::Workload;
