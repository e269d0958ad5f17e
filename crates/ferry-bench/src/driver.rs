//! The driver interface: what a protocol must provide to be benchmarked.
//!
//! A driver prepares the target (creates topics, finds the address to drive) and runs
//! producer and consumer tasks against it. The orchestration (timing, verification,
//! report) is shared by every protocol; Kafka is the first driver, AMQP and MQTT fit
//! the same shape.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::checker::CheckCounts;
use crate::error::Result;
use crate::stats::RunState;
use crate::workload::Workload;

/// A boxed future, so that drivers can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a driver task needs to know about the run.
#[derive(Debug)]
pub struct RunContext {
    /// The workload.
    pub workload: Workload,
    /// Topic names; partition `p` of topic `t` is global partition `t * partitions + p`.
    pub topics: Vec<String>,
    /// Where the producers and consumers connect.
    pub address: String,
    /// Shared counters and clocks.
    pub state: RunState,
}

impl RunContext {
    /// The global index of `partition` in `topic`.
    pub fn global_partition(&self, topic: usize, partition: i32) -> usize {
        topic * self.workload.partitions as usize + partition as usize
    }

    /// (topic index, partition) of a global partition index.
    pub fn split_partition(&self, global: usize) -> (usize, i32) {
        let per_topic = self.workload.partitions as usize;
        (global / per_topic, (global % per_topic) as i32)
    }
}

/// What a producer task measured.
#[derive(Debug)]
pub struct ProducerOutcome {
    /// Produce round trips of requests sent in the measured window, µs.
    pub publish_latency: Histogram<u64>,
}

/// What a consumer task measured.
#[derive(Debug)]
pub struct ConsumerOutcome {
    /// Send-to-receive latency of messages sent in the measured window, µs.
    pub end_to_end_latency: Histogram<u64>,
    /// Once-and-in-order check of everything it consumed.
    pub checks: CheckCounts,
}

/// A protocol driver.
pub trait Driver: Send + Sync {
    /// Short name of the protocol.
    fn protocol(&self) -> &'static str;

    /// Creates the topics (unless the target is known to need none) and returns the
    /// address producers and consumers connect to.
    fn prepare<'a>(
        &'a self,
        bootstrap: &'a str,
        workload: &'a Workload,
        topics: &'a [String],
        create_topics: bool,
    ) -> BoxFuture<'a, Result<String>>;

    /// Runs producer `id` until the measured window ends.
    fn producer(
        &self,
        id: u32,
        ctx: Arc<RunContext>,
    ) -> BoxFuture<'static, Result<ProducerOutcome>>;

    /// Runs a consumer of the given global partitions until they are drained.
    fn consumer(
        &self,
        id: u32,
        partitions: Vec<usize>,
        ctx: Arc<RunContext>,
    ) -> BoxFuture<'static, Result<ConsumerOutcome>>;
}
