//! One run of a workload against a target: start tasks, print progress, verify, report.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::checker::CheckCounts;
use crate::driver::{Driver, RunContext};
use crate::error::{BenchError, Result};
use crate::rss::RssSampler;
use crate::stats::{
    latency_histogram, step_rates, LatencySummary, Report, RunState, Throughput, Verification,
};
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
    run_with(driver, workload, target, progress, None).await
}

/// [`run`], also sampling the resident set of the broker process `broker_pid` (Linux
/// `/proc`) during the run and reporting its maximum.
pub async fn run_with(
    driver: Arc<dyn Driver>,
    workload: &Workload,
    target: &Target,
    progress: bool,
    broker_pid: Option<u32>,
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
    let sampler = broker_pid.map(RssSampler::start);
    let mut result = drive(driver, workload, target, topics, address, progress).await;
    if let (Some(sampler), Ok(report)) = (sampler, result.as_mut()) {
        report.broker_max_rss_bytes = sampler.stop().await;
    }
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
    // Consumers first, so that they wait for the first messages rather than catch up;
    // or only after the producers, to measure catching up on a backlog.
    let partitions = workload.total_partitions();
    let spawn_consumers = |ctx: &Arc<RunContext>| {
        let mut consumers = Vec::new();
        for id in 0..workload.consumers {
            let assigned: Vec<usize> = (0..partitions)
                .filter(|p| p % workload.consumers as usize == id as usize)
                .collect();
            if !assigned.is_empty() {
                consumers.push(tokio::spawn(driver.consumer(id, assigned, ctx.clone())));
            }
        }
        consumers
    };
    let mut consumers = if workload.consume_after_produce {
        Vec::new()
    } else {
        spawn_consumers(&ctx)
    };
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
    let producers_done_at = Instant::now();
    ctx.state.producers_done.store(true, Ordering::Release);
    if workload.consume_after_produce && failure.is_none() {
        consumers = spawn_consumers(&ctx);
    }
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
    let consumers_done_at = Instant::now();
    let acked_messages = state.acked_bytes.load(Ordering::Acquire) / workload.message_bytes as u64;
    let ok = if workload.produce_only() {
        produce_errors == 0 && acked_messages == sent
    } else {
        ok
    };
    let backlog = workload.messages_per_producer().is_some();
    let (produce_s, produce) = produce_throughput(workload, state, producers_done_at);
    let catch_up = (workload.consumes_after_produce() && workload.consumers > 0).then(|| {
        Throughput::of(
            consumed,
            workload.message_bytes,
            consumers_done_at
                .duration_since(producers_done_at)
                .as_secs_f64()
                .max(1e-9),
        )
    });
    let consume = match (&catch_up, backlog) {
        (Some(c), _) => c.clone(),
        (None, true) => Throughput::of(
            consumed,
            workload.message_bytes,
            consumers_done_at
                .duration_since(state.start)
                .as_secs_f64()
                .max(1e-9),
        ),
        (None, false) => Throughput::of(
            state.consumed_measured.load(Ordering::Acquire),
            workload.message_bytes,
            workload.duration_s,
        ),
    };
    let produce_steps = state
        .produce_steps
        .lock()
        .map(|steps| step_rates(state.start, &steps, workload.produce_step_bytes))
        .unwrap_or_default();
    Ok(Report {
        target: target.name().to_owned(),
        address,
        topics: ctx.topics.clone(),
        workload: workload.clone(),
        measured_s: produce_s,
        produce,
        consume,
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
        produce_steps_mb_per_s: produce_steps,
        catch_up,
        broker_max_rss_bytes: None,
    })
}

/// The produce side of a report: the seconds it is measured over, and the throughput. A
/// backlog run (producers stop after a number of messages) is measured from its start to
/// the moment the last producer finished, counting every acknowledged message; a timed
/// run over its measured window, counting the messages acknowledged inside it.
fn produce_throughput(
    workload: &Workload,
    state: &RunState,
    producers_done_at: Instant,
) -> (f64, Throughput) {
    let (messages, seconds) = if workload.messages_per_producer().is_some() {
        (
            state.acked_bytes.load(Ordering::Acquire) / workload.message_bytes as u64,
            producers_done_at.duration_since(state.start).as_secs_f64(),
        )
    } else {
        (
            state.sent_measured.load(Ordering::Acquire),
            workload.duration_s,
        )
    };
    (
        seconds,
        Throughput::of(messages, workload.message_bytes, seconds.max(1e-9)),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn workload_file(name: &str) -> Workload {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../bench/workloads")
            .join(name);
        Workload::from_toml(path.to_str().expect("utf-8 path")).expect("workload parses")
    }

    /// `messages` acknowledged, the producers done `seconds` after the start.
    fn produced(workload: &Workload, messages: u64, seconds: u64) -> (f64, Throughput) {
        let state = RunState::new(workload);
        let bytes = messages * workload.message_bytes as u64;
        state.acknowledged(bytes, workload.produce_step_bytes, state.start);
        state.sent_measured.store(messages, Ordering::Release);
        let done = state.start + Duration::from_secs(seconds);
        produce_throughput(workload, &state, done)
    }

    #[test]
    fn backlog_runs_are_rated_over_their_produce_phase_for_both_drivers() {
        // Capped at 900 s, but the producers stop after 1,000,000 messages each.
        let amqp = workload_file("amqp-backlog-1m.toml");
        assert_eq!(amqp.messages_per_producer(), Some(1_000_000));
        assert!(amqp.consumes_after_produce());
        let (seconds, produce) = produced(&amqp, 1_000_000, 50);
        assert_eq!(seconds, 50.0);
        assert_eq!(produce.messages, 1_000_000);
        assert!((produce.msg_per_s - 20_000.0).abs() < 1e-6, "{produce:?}");

        // Kafka's w5 stops by `produce_bytes`.
        let kafka = workload_file("w5.toml");
        let messages = kafka.produce_bytes / kafka.message_bytes as u64;
        let (seconds, produce) = produced(&kafka, messages, 40);
        assert_eq!(seconds, 40.0);
        assert!((produce.msg_per_s - messages as f64 / 40.0).abs() < 1e-6);
    }

    #[test]
    fn timed_runs_are_rated_over_their_measured_window() {
        let timed = Workload {
            duration_s: 20.0,
            ..Workload::default()
        };
        assert_eq!(timed.messages_per_producer(), None);
        let (seconds, produce) = produced(&timed, 1_000, 25);
        assert_eq!(seconds, 20.0);
        assert!((produce.msg_per_s - 50.0).abs() < 1e-6);
    }
}
