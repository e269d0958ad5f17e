//! `ferry serve`: load the configuration, open the broker, run the Kafka and HTTP
//! listeners, and on SIGINT or SIGTERM stop accepting, let in-flight requests finish,
//! flush and exit 0.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_core::Broker;
use ferry_kafka::server::KafkaConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::cli::ServeArgs;
use crate::config::{Settings, DEFAULT_LOG_LEVEL};

/// Longest wait for the broker's final flush before giving up with an error.
const BROKER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for in-flight HTTP requests at shutdown.
const HTTP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the broker until a signal asks it to stop.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let (settings, unknown_env) = Settings::load(args.config.as_deref(), env, args.layer())?;
    init_logging(settings.log_level.as_deref())?;
    for var in unknown_env {
        warn!("ignoring unknown environment variable {var}");
    }
    // Registered before the (possibly long) recovery so that an early SIGTERM still
    // takes the clean path instead of killing the process.
    let mut signals = Signals::new()?;
    raise_open_files_limit();

    let broker_config = settings.broker_config()?;
    let data_dir = settings.data_dir.clone();
    let broker = Broker::open(broker_config)
        .with_context(|| format!("cannot open data directory {}", data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);

    let http = match start_http(&settings, &broker).await {
        Ok(http) => http,
        Err(e) => {
            flush(&broker).await?;
            return Err(e);
        }
    };
    let listener = match start_kafka(&settings, &broker, &data_dir).await {
        Ok(listener) => listener,
        Err(e) => {
            // Dropping `http` stops that listener.
            drop(http);
            flush(&broker).await?;
            return Err(e);
        }
    };

    let served = match listener {
        Some(KafkaListener { stop, mut task }) => {
            tokio::select! {
                name = signals.recv() => {
                    info!("received {name}: no new connections, finishing in-flight requests");
                    // The listener may already be gone; then there is nothing to stop.
                    let _ = stop.send(());
                    tokio::select! {
                        result = &mut task => joined(result),
                        name = signals.recv() => {
                            warn!("received {name} again: dropping in-flight requests");
                            task.abort();
                            Ok(())
                        }
                    }
                }
                result = &mut task => {
                    let result = joined(result);
                    if let Err(e) = &result {
                        error!("Kafka listener failed: {e:#}");
                    }
                    result
                }
            }
        }
        None => {
            let name = signals.recv().await;
            info!("received {name}, shutting down");
            Ok(())
        }
    };
    if let Some(http) = http {
        http.stop().await;
    }
    flush(&broker).await?;
    served?;
    info!("stopped cleanly");
    Ok(())
}

/// A running Kafka listener and the way to stop it.
struct KafkaListener {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Binds and starts the Kafka listener if it is enabled, and logs where it listens.
async fn start_kafka(
    settings: &Settings,
    broker: &Arc<Broker>,
    data_dir: &Path,
) -> anyhow::Result<Option<KafkaListener>> {
    if !settings.kafka.enabled {
        info!("Kafka listener disabled, data in {}", data_dir.display());
        return Ok(None);
    }
    let listen = &settings.kafka.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {listen}"))?;
    let (host, port) = settings.advertised(bound);
    info!(
        "Kafka listener on {bound} (advertised as {host}:{port}), data in {}",
        data_dir.display()
    );
    let config = KafkaConfig {
        advertised_host: host,
        advertised_port: i32::from(port),
        max_request_bytes: settings.kafka.max_request_bytes,
        ..KafkaConfig::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ferry_kafka::server::serve(
        listener,
        broker.clone(),
        config,
        async move {
            // A dropped sender (we are unwinding) stops the listener too.
            let _ = stopped.await;
        },
    ));
    Ok(Some(KafkaListener { stop, task }))
}

/// A running HTTP listener (admin API, /metrics) and the way to stop it.
struct HttpListener {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpListener {
    /// Stops accepting, waits (bounded) for in-flight requests, logs a failure.
    async fn stop(self) {
        let HttpListener { stop, mut task } = self;
        // The listener may already be gone; then there is nothing to stop.
        let _ = stop.send(());
        match tokio::time::timeout(HTTP_SHUTDOWN_TIMEOUT, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => error!("HTTP listener failed: {e}"),
            Ok(Err(e)) if e.is_cancelled() => {}
            Ok(Err(e)) => error!("HTTP listener crashed: {e}"),
            Err(_) => {
                warn!(
                    "HTTP requests still running after {} s: dropped",
                    HTTP_SHUTDOWN_TIMEOUT.as_secs()
                );
                task.abort();
            }
        }
    }
}

/// Binds and starts the HTTP listener (admin API, /metrics) if it is enabled.
async fn start_http(
    settings: &Settings,
    broker: &Arc<Broker>,
) -> anyhow::Result<Option<HttpListener>> {
    if !settings.http.enabled {
        info!("HTTP listener disabled");
        return Ok(None);
    }
    let listen = &settings.http.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (HTTP; change it with --http-listen or turn it off with --no-http)"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {listen}"))?;
    info!("HTTP listener on {bound} (admin API, /metrics)");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ferry_http::serve(listener, broker.clone(), async move {
        // A dropped sender (we are unwinding) stops the listener too.
        let _ = stopped.await;
    }));
    Ok(Some(HttpListener { stop, task }))
}

/// The listener task's result, a panic or cancellation included.
fn joined(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match result {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(anyhow::anyhow!("Kafka listener crashed: {e}")),
    }
}

/// Flushes everything and writes a clean checkpoint, bounded in time.
async fn flush(broker: &Broker) -> anyhow::Result<()> {
    info!("flushing data");
    match tokio::time::timeout(BROKER_SHUTDOWN_TIMEOUT, broker.shutdown()).await {
        Ok(result) => result.context("flushing data at shutdown"),
        Err(_) => anyhow::bail!(
            "flushing data did not finish within {} s",
            BROKER_SHUTDOWN_TIMEOUT.as_secs()
        ),
    }
}

/// SIGINT and SIGTERM, whichever comes first.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Waits for the next signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Logs to stderr with the configured filter, else `RUST_LOG`, else `info`.
fn init_logging(level: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).with_context(|| format!("log level {level:?}"))?,
        None => match std::env::var("RUST_LOG") {
            Ok(directives) if !directives.is_empty() => EnvFilter::try_new(&directives)
                .with_context(|| format!("RUST_LOG={directives:?}"))?,
            _ => EnvFilter::new(DEFAULT_LOG_LEVEL),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// Raises the soft open-files limit to the hard limit: every partition keeps segment and
/// index files open, and every client a socket.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited: nothing to raise to, or nothing to raise.
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return;
    };
    if soft >= hard {
        return;
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => info!("raised the open files limit from {soft} to {hard}"),
        Err(e) => warn!("cannot raise the open files limit from {soft} to {hard}: {e}"),
    }
}
