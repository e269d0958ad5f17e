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

pub mod batch;
mod error;
mod fsutil;
pub mod journal;
mod log;
mod segment;
mod store;
#[cfg(test)]
mod tests;

pub use error::StorageError;
pub use log::{
    AppendResult, Durability, FlushPolicy, LogConfig, PartitionLog, ReadResult, READ_BYTES_MAX,
};
pub use store::{Decompressor, LogId, Store, StoreConfig};

/// Result type of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
