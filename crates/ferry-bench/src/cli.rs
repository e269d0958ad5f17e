//! The `ferry bench` command line: flags (over an optional TOML workload file), runs,
//! human or JSON output.

use std::sync::Arc;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::amqp::{AmqpArgs, AmqpDriver};
use crate::driver::Driver;
use crate::error::{BenchError, Result};
use crate::kafka::KafkaDriver;
use crate::restart::measure_restarts;
use crate::run::{run_with, Target};
use crate::stats::Report;
use crate::workload::{Acks, FlushMode, Protocol, Workload};

/// Default target address.
pub const DEFAULT_BOOTSTRAP: &str = "localhost:9092";

/// Which target to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// The Kafka-protocol broker at --bootstrap (Ferry or any other).
    Ferry,
    /// The built-in in-process server that stores nothing.
    TcpBaseline,
}

/// Flags of `ferry bench`; each overrides the workload file.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// Broker to drive (with --target ferry)
    #[arg(long, value_name = "HOST:PORT", env = "FERRY_BOOTSTRAP", hide_env_values = true, default_value = DEFAULT_BOOTSTRAP)]
    pub bootstrap: String,
    /// What to drive
    #[arg(long, value_enum, default_value = "ferry")]
    pub target: TargetArg,
    /// Run the same workload against tcp-baseline first and report the ratio
    #[arg(long)]
    pub with_baseline: bool,
    /// TOML workload file (keys: the workload fields, e.g. partitions = 16)
    #[arg(long, value_name = "FILE")]
    pub workload: Option<String>,
    /// Number of topics [default: 1]
    #[arg(long, value_name = "N")]
    pub topics: Option<u32>,
    /// Partitions per topic [default: 16]
    #[arg(long, value_name = "N")]
    pub partitions: Option<u32>,
    /// Message value size in bytes (at least 20) [default: 1024]
    #[arg(long, value_name = "BYTES")]
    pub message_bytes: Option<usize>,
    /// Give every message a key (partition by key hash) [default: unkeyed, sticky]
    #[arg(long)]
    pub keyed: bool,
    /// Producer connections [default: 1]
    #[arg(long, value_name = "N")]
    pub producers: Option<u32>,
    /// Consumer connections [default: 1]
    #[arg(long, value_name = "N")]
    pub consumers: Option<u32>,
    /// Total produce rate in msg/s, or `max` [default: max]
    #[arg(long, value_name = "MSG_PER_S|max")]
    pub rate: Option<String>,
    /// Measured seconds [default: 20]
    #[arg(long, value_name = "S")]
    pub duration_s: Option<f64>,
    /// Warm-up seconds before measuring [default: 5]
    #[arg(long, value_name = "S")]
    pub warmup_s: Option<f64>,
    /// Acknowledgement level [default: 1]
    #[arg(long, value_enum, allow_hyphen_values = true)]
    pub acks: Option<Acks>,
    /// Producer batch size per partition in bytes [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub batch_bytes: Option<usize>,
    /// Producer linger in ms [default: 5]
    #[arg(long, value_name = "MS")]
    pub linger_ms: Option<u64>,
    /// Produce requests in flight per producer [default: 5]
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Topic flush.mode at creation [default: the broker's]
    #[arg(long, value_enum, value_name = "MODE")]
    pub flush_mode: Option<FlushMode>,
    /// Seconds consumers may take after the producers stop [default: 30]
    #[arg(long, value_name = "S")]
    pub drain_timeout_s: Option<f64>,
    /// Stop producing after this many value bytes in all (a backlog run; duration caps it)
    #[arg(long, value_name = "BYTES")]
    pub produce_bytes: Option<u64>,
    /// Start consumers only after the producers are done (catch-up from the earliest offset)
    #[arg(long)]
    pub consume_after_produce: bool,
    /// Report produce MB/s per step of this many acknowledged bytes [default: 1e9]
    #[arg(long, value_name = "BYTES")]
    pub produce_step_bytes: Option<u64>,
    /// Sample this broker process's RSS during the run and report the maximum
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Restart measurement (W6): start the broker binary on --restart-data-dir, fill it with
    /// the workload (produce-only), then time spawn-to-first-fetch after a clean shutdown
    /// and after kill -9
    #[arg(long, requires = "restart_data_dir")]
    pub restart_test: bool,
    /// Data directory of the broker the restart measurement starts (must be new or empty)
    #[arg(long, value_name = "DIR")]
    pub restart_data_dir: Option<std::path::PathBuf>,
    /// The `ferry` binary the restart measurement starts [default: this executable]
    #[arg(long, value_name = "PATH")]
    pub broker_bin: Option<std::path::PathBuf>,
    /// Print the reports as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// No live progress line on stderr
    #[arg(long)]
    pub no_progress: bool,
    /// Protocol to speak [default: kafka, or the workload file's `protocol`]
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// Name of the broker target in reports, e.g. rabbitmq [default: ferry]
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// AMQP target and settings.
    #[command(flatten)]
    pub amqp: AmqpArgs,
}

impl BenchArgs {
    /// The workload: defaults < file < flags.
    pub fn workload(&self) -> Result<Workload> {
        let mut w = match &self.workload {
            Some(path) => Workload::from_toml(path)?,
            None => Workload::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { w.$field = v; } )* };
        }
        set!(
            topics,
            partitions,
            message_bytes,
            producers,
            consumers,
            duration_s,
            warmup_s,
            batch_bytes,
            linger_ms,
            max_in_flight,
            drain_timeout_s,
            produce_bytes,
            produce_step_bytes
        );
        if self.consume_after_produce {
            w.consume_after_produce = true;
        }
        if let Some(acks) = self.acks {
            w.acks = acks;
        }
        if self.keyed {
            w.keyed = true;
        }
        if self.flush_mode.is_some() {
            w.flush_mode = self.flush_mode;
        }
        if let Some(rate) = &self.rate {
            w.rate_msg_per_s = parse_rate(rate)?;
        }
        if let Some(protocol) = self.protocol {
            w.protocol = protocol;
        }
        self.amqp.apply(&mut w.amqp);
        w.validate()?;
        Ok(w)
    }
}

/// `max` (0) or a positive msg/s.
fn parse_rate(text: &str) -> Result<u64> {
    if text.eq_ignore_ascii_case("max") {
        return Ok(0);
    }
    match text.parse::<u64>() {
        Ok(rate) if rate > 0 => Ok(rate),
        _ => Err(BenchError::Workload(format!(
            "rate {text:?} is neither a positive number nor `max`"
        ))),
    }
}

/// The JSON document of `--json`.
#[derive(Debug, Serialize)]
struct JsonOutput<'a> {
    runs: &'a [Report],
    /// Target MB/s over tcp-baseline MB/s (consume side), when both ran.
    consume_ratio_to_baseline: Option<f64>,
    /// Target MB/s over tcp-baseline MB/s (produce side), when both ran.
    produce_ratio_to_baseline: Option<f64>,
}

/// Runs `ferry bench`; an error if a run could not run or failed verification.
pub async fn run_cli(args: BenchArgs) -> Result<()> {
    let workload = args.workload()?;
    if args.restart_test {
        return run_restart_test(&args, &workload).await;
    }
    let mut targets = Vec::new();
    if args.with_baseline && args.target != TargetArg::TcpBaseline {
        targets.push(Target::TcpBaseline);
    }
    targets.push(match args.target {
        TargetArg::Ferry => Target::Broker {
            bootstrap: args.bootstrap.clone(),
        },
        TargetArg::TcpBaseline => Target::TcpBaseline,
    });
    let driver: Arc<dyn Driver> = match workload.protocol {
        Protocol::Kafka => Arc::new(KafkaDriver),
        Protocol::Amqp => {
            if targets.contains(&Target::TcpBaseline) {
                return Err(BenchError::Workload(
                    "tcp-baseline speaks the Kafka protocol only; drop --with-baseline / --target tcp-baseline for AMQP".into(),
                ));
            }
            targets = vec![Target::Broker {
                bootstrap: args.amqp.address(),
            }];
            Arc::new(AmqpDriver::new(args.amqp.target()))
        }
    };
    let mut reports = Vec::new();
    for target in &targets {
        let pid = matches!(target, Target::Broker { .. })
            .then_some(args.broker_pid)
            .flatten();
        let mut report =
            run_with(driver.clone(), &workload, target, !args.no_progress, pid).await?;
        if let (Some(label), Target::Broker { .. }) = (&args.label, target) {
            report.target = label.clone();
        }
        if !args.json {
            println!("{}", report.render());
            if workload.protocol == Protocol::Amqp {
                println!("{}", workload.amqp.describe(&workload));
            }
        }
        reports.push(report);
    }
    let ratio = |f: fn(&Report) -> f64| {
        (reports.len() == 2 && f(&reports[0]) > 0.0).then(|| f(&reports[1]) / f(&reports[0]))
    };
    let produce_ratio = ratio(|r| r.produce.mb_per_s);
    let consume_ratio = ratio(|r| r.consume.mb_per_s);
    if args.json {
        let output = JsonOutput {
            runs: &reports,
            consume_ratio_to_baseline: consume_ratio,
            produce_ratio_to_baseline: produce_ratio,
        };
        let text = serde_json::to_string_pretty(&output)
            .map_err(|e| BenchError::Task(format!("encode JSON report: {e}")))?;
        println!("{text}");
    } else if let (Some(p), Some(c)) = (produce_ratio, consume_ratio) {
        println!(
            "ratio to tcp-baseline: produce {:.1}%, consume {:.1}%",
            p * 100.0,
            c * 100.0
        );
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.verification.ok)
        .map(|r| {
            let v = &r.verification;
            format!(
                "{}: sent {}, consumed {}, missing {}, duplicates {}, gaps {}, produce errors {}",
                r.target,
                v.sent,
                v.consumed,
                v.missing,
                v.checks.duplicates,
                v.checks.gaps,
                r.produce_errors
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Verification(failed.join("; ")))
    }
}

/// `--restart-test`: the W6 measurement.
async fn run_restart_test(args: &BenchArgs, workload: &Workload) -> Result<()> {
    let Some(data_dir) = args.restart_data_dir.clone() else {
        return Err(BenchError::Workload(
            "--restart-test needs --restart-data-dir".to_owned(),
        ));
    };
    let bin = match &args.broker_bin {
        Some(bin) => bin.clone(),
        None => {
            std::env::current_exe().map_err(|e| BenchError::io("find the ferry executable", e))?
        }
    };
    let report = measure_restarts(
        Arc::new(KafkaDriver),
        bin,
        data_dir,
        workload,
        !args.no_progress,
    )
    .await?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| BenchError::Task(format!("encode JSON report: {e}")))?;
        println!("{text}");
    } else {
        println!("{}", report.render());
    }
    if report.fill.verification.ok {
        Ok(())
    } else {
        Err(BenchError::Verification(format!(
            "fill: sent {}, produce errors {}",
            report.fill.verification.sent, report.fill.produce_errors
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn flags_override_the_defaults() {
        let w = Wrapper::try_parse_from([
            "bench",
            "--partitions",
            "4",
            "--rate",
            "1000",
            "--acks",
            "all",
            "--keyed",
            "--flush-mode",
            "sync",
        ])
        .expect("parse")
        .args
        .workload()
        .expect("workload");
        assert_eq!(w.partitions, 4);
        assert_eq!(w.rate_msg_per_s, 1000);
        assert_eq!(w.acks, Acks::All);
        assert!(w.keyed);
        assert_eq!(w.flush_mode, Some(FlushMode::Sync));
        assert_eq!(parse_rate("max").ok(), Some(0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
