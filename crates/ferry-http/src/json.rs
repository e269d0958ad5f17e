//! The admin API's listing shapes, shared by its handlers (which write them) and by
//! [`crate::client`]'s users such as the `ferry` admin commands (which read them), so the
//! two sides cannot drift apart.

use serde::{Deserialize, Serialize};

/// The alarm thresholds (`GET /api/limits`).
#[derive(Debug, Serialize, Deserialize)]
pub struct LimitsJson {
    /// Memory alarm threshold.
    pub memory_high_watermark_bytes: u64,
    /// Disk free space alarm threshold.
    pub disk_free_limit_bytes: u64,
}

/// A user as listed (never with its password hash).
#[derive(Debug, Serialize, Deserialize)]
pub struct UserJson {
    /// User name.
    pub name: String,
    /// Its tags (`administrator`, …).
    pub tags: Vec<String>,
}

/// A vhost as listed.
#[derive(Debug, Serialize, Deserialize)]
pub struct VhostJson {
    /// Vhost name.
    pub name: String,
}

/// A permission as listed.
#[derive(Debug, Serialize, Deserialize)]
pub struct PermissionJson {
    /// The user it is granted to.
    pub user: String,
    /// The vhost it applies to.
    pub vhost: String,
    /// Configure pattern (a regular expression).
    pub configure: String,
    /// Write pattern.
    pub write: String,
    /// Read pattern.
    pub read: String,
}

/// A queue as listed.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueJson {
    /// Queue name.
    pub name: String,
    /// Its vhost.
    pub vhost: String,
    /// Survives a restart.
    pub durable: bool,
    /// Owned by one connection.
    pub exclusive: bool,
    /// Deleted with its last consumer.
    pub auto_delete: bool,
    /// Ready messages.
    pub messages: u64,
    /// Consumers.
    pub consumers: u32,
}

/// An exchange as listed (`type` as RabbitMQ names it).
#[derive(Debug, Serialize, Deserialize)]
pub struct ExchangeJson {
    /// Exchange name.
    pub name: String,
    /// Its vhost.
    pub vhost: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted with its last binding.
    pub auto_delete: bool,
    /// Only other exchanges may publish to it.
    pub internal: bool,
}
