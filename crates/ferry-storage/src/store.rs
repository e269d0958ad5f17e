//! The store: a data directory of partition logs, the shared journal, checkpoints and
//! recovery.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{LogConfig, PartitionLog, Result};

/// Names a partition log: `<data_dir>/<topic>-<partition>/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId {
    pub topic: String,
    pub partition: u32,
}

/// Store-wide settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Journal segment size before rolling to a new journal file.
    pub journal_segment_bytes_max: u64,
    /// How often logs are flushed and the checkpoint advanced (lets old journal files go).
    pub checkpoint_interval_ms: u64,
}

impl StoreConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            journal_segment_bytes_max: 256 << 20,
            checkpoint_interval_ms: 30_000,
        }
    }
}

/// A data directory of partition logs plus the group-commit journal.
#[derive(Debug)]
pub struct Store {
    // storage helper
    _private: Arc<()>,
}

impl Store {
    /// Opens (creating if needed) the data directory and recovers: torn tails truncated,
    /// CRCs of unflushed data checked, the journal replayed into the logs, missing or
    /// damaged indexes rebuilt. Starts the flusher and group-commit threads.
    pub fn open(config: StoreConfig) -> Result<Arc<Store>> {
        todo!("storage helper")
    }
    /// Ids of all logs present in the data directory.
    pub fn log_ids(&self) -> Vec<LogId> {
        todo!("storage helper")
    }
    /// Opens the log `id`, creating it if absent, with `config`.
    pub fn open_log(&self, id: &LogId, config: LogConfig) -> Result<Arc<PartitionLog>> {
        todo!("storage helper")
    }
    /// Closes and deletes the log `id` and all its files.
    pub fn remove_log(&self, id: &LogId) -> Result<()> {
        todo!("storage helper")
    }
    /// Flushes every log, writes a clean-shutdown checkpoint and stops background threads.
    /// Further appends fail with `ShutDown`.
    pub fn shutdown(&self) -> Result<()> {
        todo!("storage helper")
    }
}
