//! Tests of logs and the store through the public API (plus the crash seam).

mod crash;
mod log;

use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{split_batches, BatchBuilder, BatchHeader};
use crate::{Durability, FlushPolicy, LogConfig, LogId, PartitionLog, Store, StoreConfig};

/// A batch of `count` records with values of `value_len` bytes and timestamps
/// `ts, ts + 1, ...`.
pub(crate) fn make_batch(count: usize, value_len: usize, ts: i64) -> Bytes {
    let mut builder = BatchBuilder::new(ts);
    for i in 0..count {
        let value = Bytes::from(vec![(i % 251) as u8; value_len]);
        builder.push(
            Some(Bytes::from(format!("k{i}"))),
            Some(value),
            vec![],
            ts + i as i64,
        );
    }
    builder.build()
}

/// Blocks on a durability future.
pub(crate) fn wait(durable: Durability) -> crate::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(durable.wait())
}

/// A small-segment config for tests.
pub(crate) fn small_config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 256,
        retention_ms: None,
        retention_bytes: None,
        flush,
        ..LogConfig::default()
    }
}

pub(crate) fn id(topic: &str, partition: u32) -> LogId {
    LogId {
        topic: topic.to_string(),
        partition,
    }
}

pub(crate) fn open_store(dir: &std::path::Path) -> Arc<Store> {
    Store::open(StoreConfig::new(dir)).expect("store opens")
}

/// Every batch of the log from its start, checked for CRC and contiguity.
pub(crate) fn read_all(log: &PartitionLog) -> Vec<(BatchHeader, Bytes)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let read = log.read(offset, 1 << 16, end).expect("read");
        assert!(
            !read.records.is_empty(),
            "read at {offset} below the end {end} returned nothing"
        );
        for (header, batch) in split_batches(&read.records, true).expect("whole CRC-valid batches")
        {
            if let Some((last, _)) = out.last() {
                let last: &BatchHeader = last;
                assert_eq!(
                    header.base_offset,
                    last.last_offset() + 1,
                    "offsets are contiguous"
                );
            }
            out.push((header, batch));
        }
        assert!(read.next_offset > offset);
        offset = read.next_offset;
    }
    out
}
