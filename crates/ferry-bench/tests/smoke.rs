//! Smoke run of `ferry bench`'s engine: a tiny workload against the tcp-baseline and
//! against a real Ferry broker served in-process. Checks completeness and the report's
//! shape, never timings (benchmarks are not tests).

use std::sync::Arc;
use std::time::Duration;

use ferry_bench::workload::Acks;
use ferry_bench::{run, KafkaDriver, Report, Target, Workload};
use ferry_core::{Broker, BrokerConfig};
use ferry_kafka::server::{serve, KafkaConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Upper bound on one smoke run.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn tiny_workload() -> Workload {
    Workload {
        partitions: 2,
        message_bytes: 100,
        keyed: true,
        rate_msg_per_s: 500,
        duration_s: 1.0,
        warmup_s: 0.2,
        acks: Acks::One,
        batch_bytes: 4096,
        linger_ms: 2,
        drain_timeout_s: 10.0,
        ..Workload::default()
    }
}

fn assert_complete(report: &Report, target: &str) {
    let v = &report.verification;
    assert_eq!(report.target, target);
    assert!(v.ok, "{}", report.render());
    assert!(v.sent > 0, "{}", report.render());
    assert_eq!(v.sent, v.consumed);
    assert_eq!(v.checks.in_order, v.sent);
    assert_eq!(v.missing, 0);
    assert_eq!(report.produce_errors, 0);
    assert!(report.end_to_end_latency.count > 0, "{}", report.render());
    assert!(report.publish_latency.count > 0);
    assert!(report.end_to_end_latency.p50_us <= report.end_to_end_latency.max_us);
    let json = serde_json::to_value(report).expect("report serialises");
    for key in [
        "produce",
        "consume",
        "end_to_end_latency",
        "publish_latency",
        "verification",
    ] {
        assert!(json.get(key).is_some(), "JSON report lacks {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_workload_runs_against_tcp_baseline_and_ferry() {
    let driver = Arc::new(KafkaDriver);
    let workload = tiny_workload();

    let baseline = tokio::time::timeout(
        RUN_TIMEOUT,
        run(driver.clone(), &workload, &Target::TcpBaseline, false),
    )
    .await
    .expect("baseline run within the timeout")
    .expect("baseline run");
    assert_complete(&baseline, "tcp-baseline");

    let dir = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let kafka_config = KafkaConfig {
        advertised_host: "127.0.0.1".to_owned(),
        advertised_port: addr.port() as i32,
        ..KafkaConfig::default()
    };
    let broker = Broker::open(BrokerConfig::new(dir.path())).expect("open broker");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, broker.clone(), kafka_config, async {
        let _ = stopped.await;
    }));
    let target = Target::Broker {
        bootstrap: addr.to_string(),
    };
    let ferry = tokio::time::timeout(RUN_TIMEOUT, run(driver, &workload, &target, false))
        .await
        .expect("ferry run within the timeout")
        .expect("ferry run");
    assert_complete(&ferry, "ferry");
    let _ = stop.send(());
    let _ = tokio::time::timeout(RUN_TIMEOUT, server).await;
    let _ = broker.shutdown().await;
}
