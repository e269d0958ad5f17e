//! One run of a workload against a target: start tasks, print progress, verify, report.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::checker::CheckCounts;
use crate::driver::{Driver, RunContext};
use crate::error::{BenchError, Result};
use crate::stats::{latency_histogram, LatencySummary, Report, RunState, Throughput, Verification};
use crate::workload::Workload;

/// Interval of the live progress line.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Where the run goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A broker at this bootstrap address (Ferry, or any broker of the protocol).
    Broker {
        /// `host:port` list.
        bootstrap: String,
    },
    /// The in-process tcp-baseline server.
    TcpBaseline,
}

impl Target {
    /// Name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Broker { .. } => "ferry",
            Target::TcpBaseline => "tcp-baseline",
        }
    }
}

/// Runs `workload` against `target` with `driver`; `progress` prints a line per second
/// on stderr. A run that loses or duplicates messages still returns its report, with
/// `verification.ok == false`.
pub async fn run(
    driver: Arc<dyn Driver>,
    workload: &Workload,
    target: &Target,
    progress: bool,
) -> Result<Report> {
    workload.validate()?;
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let topics: Vec<String> = (0..workload.topics)
        .map(|t| format!("{}-{run_id:x}-{t}", workload.topic_prefix))
        .collect();

    let baseline = match target {
        Target::TcpBaseline => {
            Some(crate::baseline::BaselineServer::start(workload.partitions).await?)
        }
        Target::Broker { .. } => None,
    };
    let bootstrap = match (target, &baseline) {
        (Target::Broker { bootstrap }, _) => bootstrap.clone(),
        (Target::TcpBaseline, Some(server)) => server.addr().to_string(),
        (Target::TcpBaseline, None) => {
            return Err(BenchError::Task("baseline did not start".into()))
        }
    };
    let address = driver
        .prepare(&bootstrap, workload, &topics, baseline.is_none())
        .await?;
    let result = drive(driver, workload, target, topics, address, progress).await;
    if let Some(server) = baseline {
        server.stop().await;
    }
    result
}

async fn drive(
    driver: Arc<dyn Driver>,
    workload: &Workload,
    target: &Target,
    topics: Vec<String>,
    address: String,
    progress: bool,
) -> Result<Report> {
    let ctx = Arc::new(RunContext {
        workload: workload.clone(),
        topics,
        address: address.clone(),
        state: RunState::new(workload),
    });
    // Consumers first, so that they wait for the first messages rather than catch up.
    let partitions = workload.total_partitions();
    let mut consumers = Vec::new();
    for id in 0..workload.consumers {
        let assigned: Vec<usize> = (0..partitions)
            .filter(|p| p % workload.consumers as usize == id as usize)
            .collect();
        if !assigned.is_empty() {
            consumers.push(tokio::spawn(driver.consumer(id, assigned, ctx.clone())));
        }
    }
    let producers: Vec<_> = (0..workload.producers)
        .map(|id| tokio::spawn(driver.producer(id, ctx.clone())))
        .collect();
    let progress_task = progress.then(|| tokio::spawn(print_progress(ctx.clone(), target.name())));

    let mut publish = latency_histogram();
    let mut failure: Option<BenchError> = None;
    for producer in producers {
        match producer.await {
            Ok(Ok(outcome)) => {
                let _ = publish.add(&outcome.publish_latency);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(BenchError::Task(format!("producer: {e}")));
            }
        }
    }
    ctx.state.producers_done.store(true, Ordering::Release);
    let mut end_to_end = latency_histogram();
    let mut checks = CheckCounts::default();
    for consumer in consumers {
        match consumer.await {
            Ok(Ok(outcome)) => {
                let _ = end_to_end.add(&outcome.end_to_end_latency);
                checks.merge(&outcome.checks);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(BenchError::Task(format!("consumer: {e}")));
            }
        }
    }
    if let Some(task) = progress_task {
        task.abort();
    }
    if let Some(e) = failure {
        return Err(e);
    }

    let state = &ctx.state;
    let sent: u64 = state
        .sent_per_partition
        .iter()
        .map(|c| c.load(Ordering::Acquire))
        .sum();
    let consumed: u64 = state
        .consumed_per_partition
        .iter()
        .map(|c| c.load(Ordering::Acquire))
        .sum();
    let missing: u64 = state
        .sent_per_partition
        .iter()
        .zip(&state.consumed_per_partition)
        .map(|(s, c)| {
            s.load(Ordering::Acquire)
                .saturating_sub(c.load(Ordering::Acquire))
        })
        .sum();
    let produce_errors = state.produce_errors.load(Ordering::Acquire);
    let consume_errors = state.consume_errors.load(Ordering::Acquire);
    let ok = missing == 0
        && consumed == sent
        && checks.clean()
        && checks.in_order == sent
        && produce_errors == 0;
    let measured_s = workload.duration_s;
    Ok(Report {
        target: target.name().to_owned(),
        address,
        workload: workload.clone(),
        measured_s,
        produce: Throughput::of(
            state.sent_measured.load(Ordering::Acquire),
            workload.message_bytes,
            measured_s,
        ),
        consume: Throughput::of(
            state.consumed_measured.load(Ordering::Acquire),
            workload.message_bytes,
            measured_s,
        ),
        end_to_end_latency: LatencySummary::of(&end_to_end),
        publish_latency: LatencySummary::of(&publish),
        produce_errors,
        consume_errors,
        verification: Verification {
            sent,
            consumed,
            missing,
            checks,
            ok,
        },
    })
}

/// Prints one progress line per second until aborted.
async fn print_progress(ctx: Arc<RunContext>, target: &'static str) {
    let state = &ctx.state;
    let bytes = ctx.workload.message_bytes as f64;
    let mut last_sent = 0u64;
    let mut last_consumed = 0u64;
    let mut last_at = Instant::now();
    let mut ticker =
        tokio::time::interval_at((last_at + PROGRESS_INTERVAL).into(), PROGRESS_INTERVAL);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let seconds = now.duration_since(last_at).as_secs_f64().max(1e-9);
        let sent = state.sent_total.load(Ordering::Relaxed);
        let consumed = state.consumed_total.load(Ordering::Relaxed);
        let phase = if now < state.measure_start {
            "warm-up"
        } else if now < state.measure_end {
            "measure"
        } else {
            "drain"
        };
        let produce_rate = (sent - last_sent) as f64 / seconds;
        let consume_rate = (consumed - last_consumed) as f64 / seconds;
        eprintln!(
            "[{target} {:>5.1}s {phase}] produce {:>10.0} msg/s {:>8.1} MB/s | consume {:>10.0} msg/s {:>8.1} MB/s | backlog {} | errors {}/{}",
            now.duration_since(state.start).as_secs_f64(),
            produce_rate,
            produce_rate * bytes / 1e6,
            consume_rate,
            consume_rate * bytes / 1e6,
            sent.saturating_sub(consumed),
            state.produce_errors.load(Ordering::Relaxed),
            state.consume_errors.load(Ordering::Relaxed),
        );
        last_sent = sent;
        last_consumed = consumed;
        last_at = now;
    }
}
