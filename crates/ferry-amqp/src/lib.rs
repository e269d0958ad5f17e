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

use std::future::Future;
use std::sync::Arc;

use ferry_core::Broker;
use tokio::net::TcpListener;

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
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_s: 60,
            consumer_timeout_ms: 30 * 60 * 1000,
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
    let _ = (listener, broker, config, shutdown);
    todo!("amqp adapter")
}
