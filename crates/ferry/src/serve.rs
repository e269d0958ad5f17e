//! `ferry serve`: load the configuration, open the broker, run the Kafka, AMQP and HTTP
//! listeners, and on SIGINT or SIGTERM stop accepting, let in-flight requests finish
//! (AMQP connections are closed with 320 CONNECTION_FORCED), flush and exit 0.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_amqp::AmqpConfig;
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
    // Lets timestamp lookups and AMQP stream consumers read inside compressed batches.
    broker.set_decompressor(Arc::new(ferry_kafka::compression::decompress));
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);

    let http = match start_http(&settings, &broker).await {
        Ok(http) => http,
        Err(e) => {
            flush(&broker).await?;
            return Err(e);
        }
    };
    let mut listeners = Vec::new();
    let started = async {
        if let Some(kafka) = start_kafka(&settings, &broker, &data_dir).await? {
            listeners.push(kafka);
        }
        if let Some(amqp) = start_amqp(&settings, &broker).await? {
            listeners.push(amqp);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = started {
        for listener in &listeners {
            listener.task.abort();
        }
        // Dropping `http` stops that listener.
        drop(http);
        flush(&broker).await?;
        return Err(e);
    }

    let served = if listeners.is_empty() {
        let name = signals.recv().await;
        info!("received {name}, shutting down");
        Ok(())
    } else {
        serve_until_signal(listeners, &mut signals).await
    };
    if let Some(http) = http {
        http.stop().await;
    }
    flush(&broker).await?;
    served?;
    info!("stopped cleanly");
    Ok(())
}

/// A running listener and the way to stop it.
struct Listener {
    name: &'static str,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Runs the listeners until a signal (then stops them all and waits for them; a second
/// signal drops in-flight work) or until one of them fails (then stops the others).
async fn serve_until_signal(listeners: Vec<Listener>, signals: &mut Signals) -> anyhow::Result<()> {
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for listener in listeners {
        stops.push(listener.stop);
        tasks.push((listener.name, listener.task));
    }
    let first_end = {
        let ended = first_to_finish(&mut tasks);
        tokio::select! {
            name = signals.recv() => {
                info!("received {name}: no new connections, finishing in-flight requests");
                None
            }
            (index, result) = ended => Some((index, result)),
        }
    };
    let mut outcome = Ok(());
    if let Some((index, result)) = first_end {
        let (name, _) = tasks.remove(index);
        if let Err(e) = joined(name, result) {
            error!("{name} listener failed: {e:#}");
            outcome = Err(e);
        }
    }
    // The listeners may already be gone; then there is nothing to stop.
    for stop in stops {
        let _ = stop.send(());
    }
    for (name, mut task) in tasks {
        tokio::select! {
            result = &mut task => {
                if let Err(e) = joined(name, result) {
                    error!("{name} listener failed: {e:#}");
                    if outcome.is_ok() {
                        outcome = Err(e);
                    }
                }
            }
            signal = signals.recv() => {
                warn!("received {signal} again: dropping in-flight requests");
                task.abort();
            }
        }
    }
    outcome
}

/// Waits for the first of `tasks` to finish: its index and result.
async fn first_to_finish(
    tasks: &mut [(&'static str, JoinHandle<anyhow::Result<()>>)],
) -> (usize, Result<anyhow::Result<()>, tokio::task::JoinError>) {
    std::future::poll_fn(|cx| {
        for (index, (_, task)) in tasks.iter_mut().enumerate() {
            if let std::task::Poll::Ready(result) =
                std::future::Future::poll(std::pin::Pin::new(task), cx)
            {
                return std::task::Poll::Ready((index, result));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Binds a listener to `listen`; the listener and the address it got. `refused` says
/// what failed when the address cannot be bound.
async fn bind(
    listen: &str,
    refused: impl FnOnce() -> String,
) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen).await.with_context(refused)?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {listen}"))?;
    Ok((listener, bound))
}

/// Binds and starts the Kafka listener if it is enabled, and logs where it listens.
async fn start_kafka(
    settings: &Settings,
    broker: &Arc<Broker>,
    data_dir: &Path,
) -> anyhow::Result<Option<Listener>> {
    if !settings.kafka.enabled {
        info!("Kafka listener disabled, data in {}", data_dir.display());
        return Ok(None);
    }
    let listen = &settings.kafka.listen;
    let (listener, bound) = bind(listen, || format!("cannot listen on {listen}")).await?;
    let (host, port) = settings.advertised(bound);
    info!(
        "Kafka listener on {bound} (advertised as {host}:{port}), data in {}",
        data_dir.display()
    );
    let config = KafkaConfig {
        advertised_host: host,
        advertised_port: i32::from(port),
        ..settings.kafka.server.clone()
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
    Ok(Some(Listener {
        name: "Kafka",
        stop,
        task,
    }))
}

/// Binds and starts the AMQP listener if it is enabled, and logs where it listens.
async fn start_amqp(settings: &Settings, broker: &Arc<Broker>) -> anyhow::Result<Option<Listener>> {
    let amqp = &settings.amqp;
    if !amqp.enabled {
        info!("AMQP listener disabled");
        return Ok(None);
    }
    let (listener, bound) = bind(&amqp.listen, || {
        format!("cannot listen for AMQP on {}", amqp.listen)
    })
    .await?;
    info!("AMQP listener on {bound}");
    let config = AmqpConfig {
        frame_max: amqp.frame_max,
        channel_max: amqp.channel_max,
        heartbeat_s: amqp.heartbeat_s,
        consumer_timeout_ms: amqp.consumer_timeout_ms,
        ..AmqpConfig::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ferry_amqp::serve(
        listener,
        broker.clone(),
        config,
        async move {
            // A dropped sender (we are unwinding) stops the listener too.
            let _ = stopped.await;
        },
    ));
    Ok(Some(Listener {
        name: "AMQP",
        stop,
        task,
    }))
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
    let (listener, bound) = bind(listen, || format!("cannot listen on {listen} (HTTP; change it with --http-listen or turn it off with --no-http)")).await?;
    info!("HTTP listener on {bound} (admin API, /metrics)");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ferry_http::serve(listener, broker.clone(), async move {
        // A dropped sender (we are unwinding) stops the listener too.
        let _ = stopped.await;
    }));
    Ok(Some(HttpListener { stop, task }))
}

/// The listener task's result, a panic or cancellation included.
fn joined(
    name: &str,
    result: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match result {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{name} listener crashed: {e}")),
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
