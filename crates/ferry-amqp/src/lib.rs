//! AMQP 0-9-1 adapter: RabbitMQ clients (pika, aio-pika, lapin, amqplib, amqp-tools) talk
//! to Ferry unchanged.
//!
//! The adapter only speaks the protocol: frames are decoded by `amq-protocol` (no I/O in
//! the codec), a connection task runs the handshake (PLAIN / AMQPLAIN, tune, heartbeats,
//! `connection.blocked`), and each channel maps methods onto the core's
//! [`ferry_core::routing::VHost`], [`ferry_core::queue::Queue`] and
//! [`ferry_core::auth::Auth`]. Channel-level state that only exists in the protocol —
//! delivery tags, prefetch credit, publisher-confirm sequence numbers, `tx` buffers — lives
//! here; every queue and routing rule lives in the core.

mod book;
mod channel;
pub mod codec;
mod connection;
mod convert;
pub mod error;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// RabbitMQ's default `frame_max`.
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// RabbitMQ's default `channel_max`.
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
/// RabbitMQ's default heartbeat, in seconds.
pub const DEFAULT_HEARTBEAT_S: u16 = 60;
/// RabbitMQ's default consumer acknowledgement timeout (30 minutes), in milliseconds.
pub const DEFAULT_CONSUMER_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// Default cap on concurrent client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Longest wait at shutdown for connections to finish their close handshake.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the AMQP listener.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// Largest frame the server accepts and offers in `connection.tune` (RabbitMQ: 131072).
    pub frame_max: u32,
    /// Most channels per connection offered in `connection.tune` (RabbitMQ: 2047).
    pub channel_max: u16,
    /// Heartbeat interval offered, in seconds (RabbitMQ: 60); 0 disables.
    pub heartbeat_s: u16,
    /// Default consumer acknowledgement timeout (RabbitMQ: 30 min), milliseconds.
    pub consumer_timeout_ms: u64,
    /// Connections beyond this many are closed on accept.
    pub max_connections: usize,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            frame_max: DEFAULT_FRAME_MAX,
            channel_max: DEFAULT_CHANNEL_MAX,
            heartbeat_s: DEFAULT_HEARTBEAT_S,
            consumer_timeout_ms: DEFAULT_CONSUMER_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves AMQP 0-9-1 on `listener` until `shutdown` resolves, then closes every connection
/// with `connection.close` 320 CONNECTION_FORCED.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: AmqpConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop, stopping) = watch::channel(false);
    let shared = Arc::new(Shared {
        broker,
        config,
        shutdown: stopping,
        replies: Arc::default(),
    });
    ferry_core::listener::accept_until_shutdown(
        listener,
        shared.broker.listener_stats("AMQP"),
        shared.config.max_connections,
        SHUTDOWN_GRACE,
        shutdown,
        stop,
        |stream, peer| connection::serve(stream, peer, shared.clone()),
    )
    .await;
    Ok(())
}

/// What every connection of one listener shares.
#[derive(Debug)]
struct Shared {
    broker: Arc<Broker>,
    config: AmqpConfig,
    /// Flips to `true` when shutdown starts: connections close with CONNECTION_FORCED.
    shutdown: watch::Receiver<bool>,
    /// Direct reply-to consumers of every connection.
    replies: Arc<channel::Replies>,
}
