use std::path::PathBuf;

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A filesystem operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bytes that should be a record batch are not a valid one (structure or CRC).
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// An appended batch is larger than the log's `batch_bytes_max`.
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge {
        /// Size of the offending batch.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A read or deletion asked for an offset outside the log.
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: i64,
        /// Log start offset.
        start: i64,
        /// Log end offset.
        end: i64,
    },
    /// The named log does not exist (or was removed).
    #[error("log {0} does not exist")]
    UnknownLog(String),
    /// The store was shut down.
    #[error("store is shut down")]
    ShutDown,
    /// A log id cannot name a directory (empty, too long, path separators, ...).
    #[error("invalid log name: {0}")]
    InvalidLogId(String),
    /// An append carried a leader epoch older than one already in the log.
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    StaleLeaderEpoch {
        /// The epoch of the append.
        epoch: i32,
        /// The latest epoch in the log.
        latest: i32,
    },
    /// Another process (or another open `Store`) holds the data directory.
    #[error("data directory {0} is in use by another process")]
    DataDirLocked(PathBuf),
    /// The journal could not be synced; `Sync` appends fail until a restart.
    #[error("journal failed: {0}")]
    JournalFailed(String),
}
