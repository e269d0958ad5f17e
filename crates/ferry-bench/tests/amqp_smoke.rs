//! Smoke run of `ferry bench`'s AMQP driver: a tiny workload against the AMQP 0-9-1
//! broker at `FERRY_BENCH_AMQP_ADDR` (host:port; user/password/vhost from
//! `FERRY_BENCH_AMQP_USER` / `_PASSWORD` / `_VHOST`, default guest/guest and "/").
//! Skipped, with a printed reason, when the variable is unset or nothing listens there.
//! Checks completeness and the report's shape, never timings.

use std::sync::Arc;
use std::time::Duration;

use ferry_bench::amqp::AmqpTarget;
use ferry_bench::workload::Protocol;
use ferry_bench::{run, AmqpDriver, Report, Target, Workload};

/// Upper bound on one smoke run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the reachability probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The broker address, or why the test is skipped.
async fn broker() -> Option<(String, AmqpTarget)> {
    let Ok(addr) = std::env::var("FERRY_BENCH_AMQP_ADDR") else {
        eprintln!("skipped: FERRY_BENCH_AMQP_ADDR is not set (host:port of an AMQP 0-9-1 broker)");
        return None;
    };
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            eprintln!("skipped: no AMQP broker reachable at {addr}: {e}");
            return None;
        }
        Err(_) => {
            eprintln!("skipped: connecting to {addr} timed out");
            return None;
        }
    }
    let defaults = AmqpTarget::default();
    let target = AmqpTarget {
        user: std::env::var("FERRY_BENCH_AMQP_USER").unwrap_or(defaults.user),
        password: std::env::var("FERRY_BENCH_AMQP_PASSWORD").unwrap_or(defaults.password),
        vhost: std::env::var("FERRY_BENCH_AMQP_VHOST").unwrap_or(defaults.vhost),
    };
    Some((addr, target))
}

fn tiny_workload() -> Workload {
    let mut w = Workload {
        protocol: Protocol::Amqp,
        topic_prefix: "ferry-bench-smoke".to_owned(),
        partitions: 2,
        message_bytes: 100,
        keyed: true,
        producers: 2,
        consumers: 2,
        rate_msg_per_s: 400,
        duration_s: 1.0,
        warmup_s: 0.2,
        drain_timeout_s: 10.0,
        ..Workload::default()
    };
    w.amqp.ack_every = 5;
    w.amqp.confirm_window = 50;
    w
}

fn assert_complete(report: &Report, confirms: bool) {
    let v = &report.verification;
    assert!(v.ok, "{}", report.render());
    assert!(v.sent > 0, "{}", report.render());
    assert_eq!(v.sent, v.consumed);
    assert_eq!(v.checks.in_order, v.sent);
    assert_eq!(v.missing, 0);
    assert_eq!(report.produce_errors, 0);
    assert!(report.end_to_end_latency.count > 0);
    assert_eq!(report.publish_latency.count > 0, confirms);
    let json = serde_json::to_value(report).expect("report serialises");
    assert_eq!(json["workload"]["protocol"], "amqp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_amqp_workloads_run_against_the_broker() {
    let Some((addr, target)) = broker().await else {
        return;
    };
    let driver = Arc::new(AmqpDriver::new(target));
    let broker = Target::Broker { bootstrap: addr };

    // Persistent, confirmed, default exchange, acks every 5 messages.
    let workload = tiny_workload();
    let report = tokio::time::timeout(RUN_TIMEOUT, run(driver.clone(), &workload, &broker, false))
        .await
        .expect("run within the timeout")
        .expect("run");
    assert_complete(&report, true);

    // Transient, unconfirmed, through a named direct exchange, no-ack consumers.
    let mut workload = tiny_workload();
    workload.keyed = false;
    workload.amqp.exchange = "ferry-bench-smoke".to_owned();
    workload.amqp.persistent = false;
    workload.amqp.confirms = false;
    workload.amqp.no_ack = true;
    let report = tokio::time::timeout(RUN_TIMEOUT, run(driver.clone(), &workload, &broker, false))
        .await
        .expect("run within the timeout")
        .expect("run");
    assert_complete(&report, false);

    // Backlog first, then drain.
    let mut workload = tiny_workload();
    workload.amqp.consume_after_produce = true;
    workload.amqp.messages_per_producer = 100;
    let report = tokio::time::timeout(RUN_TIMEOUT, run(driver, &workload, &broker, false))
        .await
        .expect("run within the timeout")
        .expect("run");
    assert_complete(&report, true);
    assert!(report.verification.sent <= 200, "{}", report.render());
    // Rated over the publishing itself, counting every confirmed message (not only those
    // inside the measured window), and the drain reported as a catch-up.
    assert_eq!(
        report.produce.messages,
        report.verification.sent,
        "{}",
        report.render()
    );
    assert!(report.catch_up.is_some(), "{}", report.render());
}
