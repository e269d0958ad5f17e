//! The accept loop every protocol listener shares: a connection cap, a pause after failed
//! accepts, and a bounded drain at shutdown.
//!
//! Protocol adapters own their framing and per-connection state; what to do with a TCP
//! listener — how many connections to hold, how to stop — is one rule for all of them, so
//! it lives here once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// Pause after a failed `accept` (e.g. out of file descriptors), so as not to spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Connection counts of one protocol's listener (for `/metrics`); see
/// [`crate::Broker::listener_stats`].
#[derive(Debug)]
pub struct ListenerStats {
    protocol: String,
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl ListenerStats {
    pub(crate) fn new(protocol: &str) -> ListenerStats {
        ListenerStats {
            protocol: protocol.to_owned(),
            open: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The protocol's name as log lines give it ("AMQP", "Kafka").
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Connections being served now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted and served since the start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed on accept because the listener was full, since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn set_open(&self, open: usize) {
        self.open.store(open as u64, Ordering::Relaxed);
    }
}

/// Accepts connections on `listener` and runs `connection(stream, peer)` for each as its own
/// task until `shutdown` resolves; then stops accepting, sends `true` on `stop` so the
/// connections can close politely, waits at most `grace` for them and drops the rest.
///
/// A connection that would exceed `max_connections` is closed on accept. `stats` names
/// the listener in log lines and counts its connections.
pub async fn accept_until_shutdown<F, C>(
    listener: TcpListener,
    stats: Arc<ListenerStats>,
    max_connections: usize,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
    stop: watch::Sender<bool>,
    mut connection: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> C,
    C: Future<Output = ()> + Send + 'static,
{
    let protocol = stats.protocol();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "{protocol} listener accepting connections");
    }
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                stats.set_open(connections.len());
                if let Err(error) = finished {
                    if error.is_panic() {
                        tracing::error!(%error, "{protocol} connection task panicked");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= max_connections {
                        warn!(%peer, limit = max_connections,
                            "closing new {protocol} connection: connection limit reached");
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    }
                    connections.spawn(connection(stream, peer));
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    stats.set_open(connections.len());
                }
                Err(error) => {
                    warn!(%error, "accepting a {protocol} connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    info!(
        connections = connections.len(),
        "{protocol} listener stopped accepting; asking connections to finish"
    );
    // No receiver left only means no connection is listening for the signal.
    let _ = stop.send(true);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            "{protocol} connections still open after the shutdown grace period; dropping them"
        );
        connections.shutdown().await;
    }
    stats.set_open(0);
    info!("{protocol} listener stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::sync::oneshot;

    /// Bound on every wait in these tests, so a broken loop fails instead of hanging.
    const TEST_TIMEOUT: Duration = Duration::from_secs(10);

    async fn local_listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        (listener, addr)
    }

    #[tokio::test]
    async fn connection_over_the_limit_is_closed_and_shutdown_signals_the_rest() {
        let (listener, addr) = local_listener().await;
        let (stop, stopping) = watch::channel(false);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (signalled_tx, mut signalled_rx) = tokio::sync::mpsc::channel::<SocketAddr>(4);
        let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
        let stats = Arc::new(ListenerStats::new("Test"));
        let server = tokio::spawn(accept_until_shutdown(
            listener,
            stats.clone(),
            1,
            TEST_TIMEOUT,
            async move {
                let _ = shutdown_rx.await;
            },
            stop,
            move |stream, peer| {
                let _ = accepted_tx.send(peer);
                let mut stopping = stopping.clone();
                let signalled = signalled_tx.clone();
                async move {
                    // Hold the socket until shutdown is signalled, then report and close.
                    let _stream = stream;
                    let _ = stopping.wait_for(|stop| *stop).await;
                    let _ = signalled.send(peer).await;
                }
            },
        ));

        let mut first = TcpStream::connect(addr).await.expect("connect first");
        // The first must hold its place before the second arrives.
        tokio::time::timeout(TEST_TIMEOUT, accepted_rx.recv())
            .await
            .expect("first accepted in time")
            .expect("listener running");
        let mut second = TcpStream::connect(addr).await.expect("connect second");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(TEST_TIMEOUT, second.read(&mut byte))
            .await
            .expect("second connection closed in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "over-limit connection must be closed"
        );
        assert_eq!((stats.open(), stats.accepted(), stats.refused()), (1, 1, 1));

        shutdown_tx.send(()).expect("server running");
        let peer = tokio::time::timeout(TEST_TIMEOUT, signalled_rx.recv())
            .await
            .expect("stop signalled in time")
            .expect("one connection signalled");
        assert_eq!(peer, first.local_addr().expect("first addr"));
        tokio::time::timeout(TEST_TIMEOUT, server)
            .await
            .expect("listener returned in time")
            .expect("listener task");
        let read = tokio::time::timeout(TEST_TIMEOUT, first.read(&mut byte))
            .await
            .expect("first connection closed in time");
        assert!(matches!(read, Ok(0) | Err(_)));
        assert_eq!((stats.open(), stats.accepted()), (0, 1));
    }

    #[tokio::test]
    async fn connections_ignoring_the_signal_are_dropped_after_the_grace_period() {
        let (listener, addr) = local_listener().await;
        let (stop, _stopping) = watch::channel(false);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
        let mut dropped_tx = Some(dropped_tx);
        let (accepted_tx, accepted_rx) = oneshot::channel::<()>();
        let mut accepted_tx = Some(accepted_tx);
        let grace = Duration::from_millis(100);
        let server = tokio::spawn(accept_until_shutdown(
            listener,
            Arc::new(ListenerStats::new("Test")),
            10,
            grace,
            async move {
                let _ = shutdown_rx.await;
            },
            stop,
            move |stream, _peer| {
                // Dropping the task drops this sender, which is how the test sees it.
                let guard = dropped_tx.take();
                if let Some(accepted) = accepted_tx.take() {
                    let _ = accepted.send(());
                }
                async move {
                    let _held = (stream, guard);
                    std::future::pending::<()>().await;
                }
            },
        ));

        let _client = TcpStream::connect(addr).await.expect("connect");
        tokio::time::timeout(TEST_TIMEOUT, accepted_rx)
            .await
            .expect("accepted in time")
            .expect("listener running");
        let started = std::time::Instant::now();
        shutdown_tx.send(()).expect("server running");
        tokio::time::timeout(TEST_TIMEOUT, server)
            .await
            .expect("listener returned in time")
            .expect("listener task");
        assert!(
            started.elapsed() >= grace,
            "returned before the grace period"
        );
        assert!(
            dropped_rx.await.is_err(),
            "the stuck connection task must be dropped"
        );
    }
}
