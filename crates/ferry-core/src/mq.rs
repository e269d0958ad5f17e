//! Shared nouns of the queue-and-routing model (exchanges, bindings, queues, vhosts,
//! users): its error type and the identity of a client connection.
//!
//! The model is RabbitMQ's, because that is what users of queues expect; it is kept free
//! of any wire format so that AMQP 0-9-1, STOMP and MQTT adapters share it. Error texts
//! are RabbitMQ's own (without the `NOT_FOUND - ` style prefix, which is the adapter's),
//! because clients and users match on them.

/// Identifies one client connection; owner of exclusive queues and consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl ConnectionId {
    /// A process-unique id for a new connection.
    pub fn next() -> ConnectionId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Errors of the queue-and-routing model. Each variant is one AMQP reply code; the text is
/// RabbitMQ's (e.g. `no queue 'q' in vhost '/'`).
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    /// 404: a queue, exchange or vhost that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 405: another connection's exclusive queue.
    #[error("{0}")]
    ResourceLocked(String),
    /// 406: inequivalent redeclare, invalid argument, if-unused / if-empty, ack timeout…
    #[error("{0}")]
    PreconditionFailed(String),
    /// 403: permissions, internal exchanges, exclusive consumers, bad credentials.
    #[error("{0}")]
    AccessRefused(String),
    /// 530 (connection level): vhost missing or not permitted at `connection.open`.
    #[error("{0}")]
    NotAllowed(String),
    /// 506: a resource limit (too many queues, consumers…).
    #[error("{0}")]
    ResourceError(String),
    /// 503 (connection level): a malformed command, e.g. an unknown exchange type
    /// (`unknown exchange type 'x'`); RabbitMQ closes the connection.
    #[error("{0}")]
    CommandInvalid(String),
    /// 540: a feature Ferry does not implement.
    #[error("{0}")]
    NotImplemented(String),
    /// 541: a storage or internal failure.
    #[error(transparent)]
    Core(#[from] crate::CoreError),
}

impl From<ferry_storage::StorageError> for MqError {
    fn from(e: ferry_storage::StorageError) -> Self {
        MqError::Core(crate::CoreError::Storage(e))
    }
}

/// Result type of the queue-and-routing model.
pub type MqResult<T> = std::result::Result<T, MqError>;
