//! Counters shared by the driver tasks, latency histograms, and the final report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::checker::CheckCounts;
use crate::workload::Workload;

/// Highest latency the histograms record exactly (larger values are clamped): 10 min.
const LATENCY_MAX_US: u64 = 600_000_000;
/// Significant decimal digits of the histograms.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in µs.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that the crate accepts, so this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

/// Records `latency` into `histogram`, clamped into its range.
pub fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
    histogram.saturating_record(us);
}

/// State shared by every task of one run.
#[derive(Debug)]
pub struct RunState {
    /// Time zero of the stamps.
    pub start: Instant,
    /// End of the warm-up: measuring starts.
    pub measure_start: Instant,
    /// End of the measured time: producers stop.
    pub measure_end: Instant,
    /// Messages handed to the network per partition (global partition index).
    pub sent_per_partition: Vec<AtomicU64>,
    /// Messages consumed per partition.
    pub consumed_per_partition: Vec<AtomicU64>,
    /// All messages sent (live progress).
    pub sent_total: AtomicU64,
    /// All messages consumed (live progress).
    pub consumed_total: AtomicU64,
    /// Messages sent inside the measured window.
    pub sent_measured: AtomicU64,
    /// Messages consumed inside the measured window.
    pub consumed_measured: AtomicU64,
    /// Produce requests or partitions refused by the target.
    pub produce_errors: AtomicU64,
    /// Fetch errors.
    pub consume_errors: AtomicU64,
    /// Set when every producer has finished.
    pub producers_done: AtomicBool,
    /// Value bytes acknowledged so far.
    pub acked_bytes: AtomicU64,
    /// When the acknowledged bytes crossed each multiple of the workload's produce step.
    pub produce_steps: Mutex<Vec<Instant>>,
}

impl RunState {
    /// State for `workload`, starting now.
    pub fn new(workload: &Workload) -> RunState {
        let start = Instant::now();
        let measure_start = start + workload.warmup();
        let partitions = workload.total_partitions();
        RunState {
            start,
            measure_start,
            measure_end: measure_start + workload.duration(),
            sent_per_partition: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            consumed_per_partition: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            sent_total: AtomicU64::new(0),
            consumed_total: AtomicU64::new(0),
            sent_measured: AtomicU64::new(0),
            consumed_measured: AtomicU64::new(0),
            produce_errors: AtomicU64::new(0),
            consume_errors: AtomicU64::new(0),
            producers_done: AtomicBool::new(false),
            acked_bytes: AtomicU64::new(0),
            produce_steps: Mutex::new(Vec::new()),
        }
    }

    /// Counts `bytes` more acknowledged value bytes, noting the time of every produce
    /// step they complete.
    pub fn acknowledged(&self, bytes: u64, step_bytes: u64, at: Instant) {
        let before = self.acked_bytes.fetch_add(bytes, Ordering::AcqRel);
        let crossed = (before + bytes) / step_bytes - before / step_bytes;
        if crossed > 0 {
            if let Ok(mut steps) = self.produce_steps.lock() {
                steps.extend(std::iter::repeat_n(at, crossed as usize));
            }
        }
    }

    /// ns since the run's start.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Whether `at` is inside the measured window.
    pub fn is_measured(&self, at: Instant) -> bool {
        at >= self.measure_start && at < self.measure_end
    }

    /// Whether every message sent to `partition` has been consumed.
    pub fn partition_drained(&self, partition: usize) -> bool {
        self.consumed_per_partition[partition].load(Ordering::Acquire)
            >= self.sent_per_partition[partition].load(Ordering::Acquire)
    }
}

/// Percentiles of one latency histogram, in µs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl LatencySummary {
    /// Summarises `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// Throughput over the measured window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// Messages in the window.
    pub messages: u64,
    /// Messages per second.
    pub msg_per_s: f64,
    /// Value megabytes (10^6) per second.
    pub mb_per_s: f64,
}

impl Throughput {
    /// `messages` of `message_bytes` each over `seconds`.
    pub fn of(messages: u64, message_bytes: usize, seconds: f64) -> Throughput {
        let msg_per_s = messages as f64 / seconds;
        Throughput {
            messages,
            msg_per_s,
            mb_per_s: msg_per_s * message_bytes as f64 / 1e6,
        }
    }
}

/// Whether every message was consumed once, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Verification {
    /// Messages sent during the whole run (warm-up included).
    pub sent: u64,
    /// Messages consumed.
    pub consumed: u64,
    /// Sent messages never consumed.
    pub missing: u64,
    /// What the sequence checker found.
    pub checks: CheckCounts,
    /// Whether the run is valid.
    pub ok: bool,
}

/// Result of one run against one target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// `ferry` (any Kafka broker by address) or `tcp-baseline`.
    pub target: String,
    /// The address driven.
    pub address: String,
    /// The topics the run created and used.
    pub topics: Vec<String>,
    /// The workload.
    pub workload: Workload,
    /// Length of the measured window in seconds.
    pub measured_s: f64,
    /// Produce throughput.
    pub produce: Throughput,
    /// Consume throughput.
    pub consume: Throughput,
    /// Send stamp to consumer, for messages sent in the window.
    pub end_to_end_latency: LatencySummary,
    /// Produce request round trip, for requests sent in the window.
    pub publish_latency: LatencySummary,
    /// Produce errors (refused partitions or failed requests).
    pub produce_errors: u64,
    /// Fetch errors.
    pub consume_errors: u64,
    /// Once-and-in-order check.
    pub verification: Verification,
    /// Produce MB/s over each produce step (e.g. each GB) in order.
    pub produce_steps_mb_per_s: Vec<f64>,
    /// With consumers started after the producers: their catch-up consume throughput,
    /// from their start until everything was read.
    pub catch_up: Option<Throughput>,
    /// Largest resident set of the broker process seen during the run (sampled), bytes.
    pub broker_max_rss_bytes: Option<u64>,
}

impl Report {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let w = &self.workload;
        let lat = |l: &LatencySummary| {
            format!(
                "p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ({} samples)",
                l.p50_us as f64 / 1e3,
                l.p99_us as f64 / 1e3,
                l.p999_us as f64 / 1e3,
                l.max_us as f64 / 1e3,
                l.count
            )
        };
        let v = &self.verification;
        format!(
            "target {} at {}\n\
             workload: {} topic(s) x {} partitions, {} B messages, keyed={}, {} producer(s), {} consumer(s), rate {}, acks={}, batch {} B, linger {} ms, flush {}, warm-up {} s, measured {:.1} s\n\
             produce:  {:>12.0} msg/s  {:>9.1} MB/s\n\
             consume:  {:>12.0} msg/s  {:>9.1} MB/s\n\
             end-to-end latency: {}\n\
             publish latency:    {}\n\
             errors: produce {}, consume {}\n\
             verification: {} — sent {}, consumed {}, missing {}, duplicates {}, gaps {}, unreadable {}\n",
            self.target,
            self.address,
            w.topics,
            w.partitions,
            w.message_bytes,
            w.keyed,
            w.producers,
            w.consumers,
            if w.rate_msg_per_s == 0 { "max".to_owned() } else { format!("{} msg/s", w.rate_msg_per_s) },
            match w.acks { crate::workload::Acks::Zero => "0", crate::workload::Acks::One => "1", crate::workload::Acks::All => "all" },
            w.batch_bytes,
            w.linger_ms,
            w.flush_mode.map_or("default", |m| m.as_str()),
            w.warmup_s,
            self.measured_s,
            self.produce.msg_per_s,
            self.produce.mb_per_s,
            self.consume.msg_per_s,
            self.consume.mb_per_s,
            lat(&self.end_to_end_latency),
            lat(&self.publish_latency),
            self.produce_errors,
            self.consume_errors,
            if v.ok { "OK" } else { "FAILED" },
            v.sent,
            v.consumed,
            v.missing,
            v.checks.duplicates,
            v.checks.gaps,
            v.checks.unreadable,
        ) + &self.render_extras()
    }

    fn render_extras(&self) -> String {
        let mut out = String::new();
        if let (Some(first), Some(last)) = (
            self.produce_steps_mb_per_s.first(),
            self.produce_steps_mb_per_s.last(),
        ) {
            out += &format!(
                "produce per {} B step: {} MB/s (last/first {:.1}%)\n",
                self.workload.produce_step_bytes,
                self.produce_steps_mb_per_s
                    .iter()
                    .map(|r| format!("{r:.1}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                last / first * 100.0
            );
        }
        if let Some(c) = &self.catch_up {
            out += &format!(
                "catch-up consume: {:.0} msg/s  {:.1} MB/s ({} messages)\n",
                c.msg_per_s, c.mb_per_s, c.messages
            );
        }
        if let Some(rss) = self.broker_max_rss_bytes {
            out += &format!("broker max RSS: {:.1} MB\n", rss as f64 / 1e6);
        }
        out
    }
}

/// MB/s of each produce step, from the run's start and the step completion times.
pub fn step_rates(start: Instant, steps: &[Instant], step_bytes: u64) -> Vec<f64> {
    let mut previous = start;
    steps
        .iter()
        .map(|&at| {
            let seconds = at.duration_since(previous).as_secs_f64().max(1e-9);
            previous = at;
            step_bytes as f64 / seconds / 1e6
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_come_from_the_histogram() {
        let mut h = latency_histogram();
        for us in 1..=1000u64 {
            record_latency(&mut h, Duration::from_micros(us));
        }
        record_latency(&mut h, Duration::from_secs(100_000)); // clamped, not lost
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1001);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert!((985..=1000).contains(&s.p99_us), "{s:?}");
        assert!(s.max_us >= LATENCY_MAX_US - LATENCY_MAX_US / 1000);
        assert_eq!(
            LatencySummary::of(&latency_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn produce_steps_are_noted_when_crossed() {
        let state = RunState::new(&Workload::default());
        let t0 = state.start;
        state.acknowledged(600, 1_000, t0 + Duration::from_secs(1));
        state.acknowledged(600, 1_000, t0 + Duration::from_secs(2));
        state.acknowledged(2_000, 1_000, t0 + Duration::from_secs(4));
        let steps = state.produce_steps.lock().expect("lock").clone();
        assert_eq!(steps.len(), 3);
        let rates = step_rates(t0, &steps, 1_000);
        assert_eq!(rates.len(), 3);
        assert!((rates[0] - 0.0005).abs() < 1e-9);
        assert!((rates[1] - 0.0005).abs() < 1e-9);
    }

    #[test]
    fn throughput_is_per_second() {
        let t = Throughput::of(2_000, 1_000, 2.0);
        assert_eq!(t.msg_per_s, 1_000.0);
        assert_eq!(t.mb_per_s, 1.0);
    }
}
