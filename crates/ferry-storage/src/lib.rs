//! Ferry's storage engine.
//!
//! Every partition (of a user topic or of an internal state topic) is a [`PartitionLog`]:
//! a directory of append-only segment files holding Kafka RecordBatch v2 batches exactly
//! as produced (only base offset and partition leader epoch are rewritten, which the CRC
//! does not cover), each segment with a sparse offset index and a sparse time index.
//!
//! Durability is per log ([`FlushPolicy`]): `Async` logs are flushed by a background
//! flusher on an interval or size; `Sync` logs additionally write each append to one
//! shared [`journal`] that a single group-commit thread fsyncs, so one fsync covers every
//! producer and every partition that appended meanwhile, whatever the partition count.
//! The [`Store`] owns the journal, the checkpoint and recovery.
//!
//! The store is synchronous (plain `std::fs`); the only async surface is
//! [`Durability::wait`], which resolves once an append is on stable storage.
//!
//! # On disk
//!
//! ```text
//! <data_dir>/
//!   checkpoint.json                 journal position, each log's recovery point, clean flag
//!   journal/{position:020}.journal  Sync appends (and log removals), group-committed
//!   <topic>-<partition>/            one directory per log
//!     meta.json                     incarnation, log start offset, leader-epoch history
//!     {base:020}.log                whole batches back to back, named by first offset
//!     {base:020}.index              sparse: u32 relative offset -> u32 file position
//!     {base:020}.timeindex          sparse: i64 max timestamp so far -> u32 relative offset
//! ```
//!
//! # Why this layout
//!
//! A file per partition (Kafka's layout) keeps reads of one partition sequential, lets
//! retention delete whole files and keeps every batch servable as stored. Its weak spot is
//! durability with many partitions: fsyncing each partition's file per acknowledgement
//! costs one fsync per partition. So `Sync` appends are made durable BookKeeper-style
//! instead: the data also goes to one sequential journal, and one fsync of the journal
//! covers every partition. Partition files are fsynced only by checkpoints (every
//! `checkpoint_interval_ms`, one fsync per *dirty* log), which is what lets old journal
//! files go. The cost is writing `Sync` data twice (page cache, then sequential disk).
//!
//! Per log the engine keeps the active segment's sparse indexes in memory (about 20 bytes
//! per `index_interval_bytes` of active segment) and one open file; older segments are
//! opened on demand through a store-wide cache of at most 512 handles and their indexes
//! are binary-searched on disk. Two threads serve the whole store (the flusher and the
//! group committer): nothing scales per partition but memory for the active indexes and
//! one file descriptor.
//!
//! # Recovery
//!
//! A checkpoint is written atomically (tmp, fsync, rename, fsync dir) after flushing every
//! dirty log; it records each log's *recovery point* (the flushed end, plus the count and
//! CRC32C of the active index entries written by then) and a journal position before
//! which every entry is in a flushed log. `Store::open` walks each log from its last
//! index entry the checkpoint vouches for, verifies structure, offset contiguity and CRC
//! of everything past the recovery point, truncates at the first torn or corrupt batch
//! and rebuilds the indexes of what it walked; then it replays the journal from the
//! checkpoint's position (appending entries that continue a log, skipping those already
//! present, logging a gap loudly). After a clean shutdown every recovery point is the end
//! of its log, so a restart reads a short tail per log and nothing else. An index found
//! missing or pointing at the wrong place is rebuilt from its segment; a corrupt record is
//! never served.
//!
//! ```
//! use ferry_storage::batch::{split_batches, BatchBuilder};
//! use ferry_storage::{FlushPolicy, LogConfig, LogId, Store, StoreConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(StoreConfig::new(dir.path()))?;
//! let config = LogConfig { flush: FlushPolicy::Sync, ..LogConfig::default() };
//! let log = store.open_log(&LogId { topic: "orders".into(), partition: 0 }, config)?;
//!
//! let mut batch = BatchBuilder::new(1_700_000_000_000);
//! batch.push(Some("k".into()), Some("v".into()), vec![], 1_700_000_000_000);
//! let appended = log.append(batch.build(), 0, 1_700_000_000_000)?;
//! // A Sync append is acknowledged once the journal's group commit covers it.
//! tokio::runtime::Builder::new_current_thread().build()?.block_on(appended.durable.wait())?;
//!
//! let read = log.read(0, 1 << 20, log.high_watermark())?;
//! assert_eq!(split_batches(&read.records, true)?.len(), 1);
//! store.shutdown()?;
//! # Ok(())
//! # }
//! ```

pub mod batch;
mod chunk;
mod error;
mod fsutil;
pub mod journal;
mod log;
mod segment;
mod store;
#[cfg(test)]
mod tests;

pub use chunk::{Chunk, FileRegion};
pub use error::StorageError;
pub use log::{
    AppendResult, Durability, FlushPolicy, LogConfig, PartitionLog, ReadResult, READ_BYTES_MAX,
};
pub use store::{Decompressor, LogId, Store, StoreConfig};

/// Result type of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
