//! Functional tests of `PartitionLog` and `Store`.

use bytes::Bytes;

use super::{id, make_batch, open_store, read_all, small_config, wait};
use crate::batch::{split_batches, BatchHeader};
use crate::segment::SegmentPaths;
use crate::{FlushPolicy, LogConfig, StorageError, Store, StoreConfig};

const ASYNC: FlushPolicy = FlushPolicy::Async {
    interval_ms: 10,
    bytes: 1 << 20,
};

#[test]
fn append_assigns_contiguous_offsets_and_reads_whole_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    let a = log
        .append(make_batch(3, 10, 1000), 5, 2000)
        .expect("append");
    assert_eq!(
        (a.base_offset, a.last_offset, a.max_timestamp),
        (0, 2, 1002)
    );
    assert!(a.durable.is_immediate());
    // Two batches in one call: one write, contiguous offsets.
    let mut two = make_batch(2, 10, 3000).to_vec();
    two.extend_from_slice(&make_batch(4, 10, 3100));
    let b = log.append(Bytes::from(two), 5, 2001).expect("append");
    assert_eq!((b.base_offset, b.last_offset), (3, 8));
    assert_eq!(log.log_end_offset(), 9);
    assert_eq!(log.high_watermark(), 9);

    // Reading offset 4 returns the batch holding it (3..=4) first.
    let read = log.read(4, 1 << 20, 9).expect("read");
    let batches = split_batches(&read.records, true).expect("valid");
    assert_eq!(batches[0].0.base_offset, 3);
    assert_eq!(batches[0].0.partition_leader_epoch, 5);
    assert_eq!(read.next_offset, 9);
    // max_bytes smaller than a batch still returns one whole batch.
    let read = log.read(0, 1, 9).expect("read");
    assert_eq!(split_batches(&read.records, true).expect("valid").len(), 1);
    assert_eq!(read.next_offset, 3);
    // `read_chunk` within its limit never exceeds max_bytes: a batch too big gives
    // nothing...
    let first_batch = make_batch(3, 10, 1000).len();
    let read = log
        .read_chunk(0, first_batch as u32 - 1, 9, true, 0)
        .expect("read");
    assert!(read.records.is_empty());
    assert_eq!(read.next_offset, 0);
    // ...and only the whole batches that fit are returned.
    let read = log
        .read_chunk(0, first_batch as u32 + 1, 9, true, 0)
        .expect("read");
    assert_eq!(read.records.len(), first_batch);
    assert_eq!(read.next_offset, 3);
    // Never past max_offset.
    let read = log.read(0, 1 << 20, 3).expect("read");
    assert_eq!(read.next_offset, 3);
    let read = log.read(3, 1 << 20, 3).expect("read");
    assert!(read.records.is_empty());
    // At the end: nothing; past it: out of range.
    assert!(log.read(9, 1 << 20, 9).expect("read").records.is_empty());
    assert!(matches!(
        log.read(10, 100, 10),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.leader_epochs(), vec![(5, 0)]);
    store.shutdown().expect("shutdown");
}

/// `read_chunk` returns what `read` returns, as a file region unless it is short, from
/// the active segment and from closed ones, at every offset and size limit.
#[test]
fn chunks_hold_what_reads_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    for i in 0..40 {
        log.append(make_batch(1 + i % 3, 60 + 13 * i, i as i64 * 10), 0, 1000)
            .expect("append");
    }
    let end = log.log_end_offset();
    let mut regions = 0;
    for offset in 0..end {
        for max_bytes in [1, 200, 700, 1500, 5000, 1 << 20] {
            for max_offset in [offset + 1, offset + 4, end] {
                let read = log.read(offset, max_bytes, max_offset).expect("read");
                let chunk = log
                    .read_chunk(offset, max_bytes, max_offset, false, 512)
                    .expect("read");
                assert_eq!(chunk.next_offset, read.next_offset);
                match &chunk.records {
                    crate::Chunk::File(region) => {
                        regions += 1;
                        assert!(region.len() >= 512);
                    }
                    crate::Chunk::Memory(bytes) => assert!(bytes.len() < 512),
                }
                assert_eq!(chunk.records.into_bytes().expect("bytes"), read.records);
                // Within the limit: the same whole batches if the first fits, else none.
                let within = log
                    .read_chunk(offset, max_bytes, max_offset, true, 0)
                    .expect("read");
                let bytes = within.records.into_bytes().expect("bytes");
                if read.records.len() <= max_bytes as usize {
                    assert_eq!(bytes, read.records);
                    assert_eq!(within.next_offset, read.next_offset);
                } else {
                    // `read` went over the limit with its first batch alone.
                    assert!(bytes.is_empty());
                    assert_eq!(within.next_offset, offset);
                }
            }
        }
    }
    assert!(regions > 100, "most reads are regions ({regions})");
    store.shutdown().expect("shutdown");
}

#[test]
fn invalid_appends_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let config = LogConfig {
        batch_bytes_max: 500,
        ..small_config(ASYNC)
    };
    let log = store.open_log(&id("t", 0), config).expect("log");
    log.append(make_batch(1, 10, 0), 0, 0).expect("append");
    // A good batch followed by a corrupt one: neither is written.
    let mut corrupt = make_batch(1, 10, 0).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let mut buf = make_batch(1, 10, 0).to_vec();
    buf.extend_from_slice(&corrupt);
    assert!(matches!(
        log.append(Bytes::from(buf), 0, 0),
        Err(StorageError::CorruptBatch(_))
    ));
    assert!(matches!(
        log.append(make_batch(1, 1000, 0), 0, 0),
        Err(StorageError::BatchTooLarge { .. })
    ));
    let partial = make_batch(1, 10, 0).slice(..30);
    assert!(log.append(partial, 0, 0).is_err());
    assert!(log.append(Bytes::new(), 0, 0).is_err());
    assert!(matches!(
        log.append(make_batch(1, 10, 0), -5, 0),
        Err(StorageError::StaleLeaderEpoch { .. })
    ));
    assert_eq!(log.log_end_offset(), 1);
    assert_eq!(read_all(&log).len(), 1);
}

#[test]
fn rolls_segments_and_reads_across_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 1), small_config(ASYNC))
        .expect("log");
    for i in 0..60 {
        log.append(make_batch(2, 100, i * 10), 0, 1000)
            .expect("append");
    }
    let segments = std::fs::read_dir(log.dir())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .count();
    assert!(segments > 3, "small segments roll ({segments})");
    let batches = read_all(&log);
    assert_eq!(batches.len(), 60);
    for target in [0, 1, 37, 64, 119] {
        let read = log.read(target, 1, 120).expect("read");
        let (header, _) = &split_batches(&read.records, true).expect("valid")[0];
        assert!(header.base_offset <= target && target <= header.last_offset());
    }
    store.shutdown().expect("shutdown");
}

#[test]
fn reopen_after_clean_shutdown_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let store = open_store(dir.path());
        let log = store
            .open_log(&id("t", 0), small_config(ASYNC))
            .expect("log");
        let sync = store
            .open_log(&id("s", 0), small_config(FlushPolicy::Sync))
            .expect("log");
        for i in 0..40 {
            log.append(make_batch(3, 50, 1000 + i), 1, 0)
                .expect("append");
            wait(
                sync.append(make_batch(1, 20, 1000 + i), 1, 0)
                    .expect("append")
                    .durable,
            )
            .expect("durable");
        }
        store.shutdown().expect("shutdown");
        assert!(matches!(
            log.append(make_batch(1, 1, 0), 1, 0),
            Err(StorageError::ShutDown)
        ));
        (read_all(&log), read_all(&sync))
    };
    let store = open_store(dir.path());
    // Fast restart: per log, recovery walks at most the data after the last index entry.
    let walk_max = 2 * (256 + make_batch(3, 50, 0).len() as u64);
    assert!(
        store.recovery_scanned_bytes() <= walk_max,
        "scanned {}",
        store.recovery_scanned_bytes()
    );
    assert_eq!(store.log_ids(), vec![id("s", 0), id("t", 0)]);
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    let sync = store
        .open_log(&id("s", 0), small_config(FlushPolicy::Sync))
        .expect("log");
    assert_eq!(read_all(&log), before.0);
    assert_eq!(read_all(&sync), before.1);
    assert_eq!(log.log_end_offset(), 120);
    assert_eq!(
        log.offset_for_timestamp(1020).expect("lookup"),
        Some((56, 1020))
    );
    // Appends continue where they were.
    assert_eq!(
        log.append(make_batch(1, 1, 5000), 2, 0)
            .expect("append")
            .base_offset,
        120
    );
    assert_eq!(log.leader_epochs(), vec![(1, 0), (2, 120)]);
    store.shutdown().expect("shutdown");
}

#[test]
fn deleted_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    for i in 0..50 {
        log.append(make_batch(2, 100, i), 0, 0).expect("append");
    }
    store.shutdown().expect("shutdown");
    let first = SegmentPaths::new(log.dir(), 0);
    std::fs::remove_file(&first.index).expect("remove closed index");
    std::fs::remove_file(&first.time_index).expect("remove closed time index");
    // Damage the active segment's index too.
    let active_base = std::fs::read_dir(log.dir())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| crate::segment::parse_segment_name(e.file_name().to_str()?, "log"))
        .max()
        .expect("segments");
    let active = SegmentPaths::new(log.dir(), active_base);
    std::fs::write(&active.index, b"garbage").expect("damage");
    let expected = read_all(&log);
    drop(log);
    drop(store);

    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    assert_eq!(read_all(&log), expected);
    for target in [0, 3, 50, 99] {
        let read = log.read(target, 1, 100).expect("read");
        let (header, _) = &split_batches(&read.records, true).expect("valid")[0];
        assert!(header.base_offset <= target && target <= header.last_offset());
    }
    assert!(first.index.exists(), "closed segment index rebuilt on use");
    assert_eq!(log.offset_for_timestamp(0).expect("lookup"), Some((0, 0)));
    assert_eq!(
        log.offset_for_timestamp(10).expect("lookup"),
        Some((19, 10))
    );
    store.shutdown().expect("shutdown");
}

#[test]
fn wrong_index_entries_are_detected_and_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    for i in 0..50 {
        log.append(make_batch(2, 100, i), 0, 0).expect("append");
    }
    let first = SegmentPaths::new(log.dir(), 0);
    // Plausible but wrong: offsets shifted by one, positions pointing mid-batch.
    let bad = crate::segment::encode_index(&[
        crate::segment::IndexEntry {
            rel_offset: 3,
            position: 17,
        },
        crate::segment::IndexEntry {
            rel_offset: 9,
            position: 900,
        },
    ]);
    std::fs::write(&first.index, bad).expect("damage");
    store.files().evict(&first.index);
    for target in [4, 10, 12] {
        let read = log.read(target, 1, 100).expect("read");
        let (header, _) = &split_batches(&read.records, true).expect("valid")[0];
        assert!(header.base_offset <= target && target <= header.last_offset());
    }
}

#[test]
fn retention_by_size_and_time_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    for i in 0..60 {
        log.append(make_batch(2, 100, 1_000 + i * 100), 0, 0)
            .expect("append");
    }
    let size = log.size_bytes();
    assert_eq!(
        log.enforce_retention(10_000).expect("retention"),
        0,
        "no limits configured"
    );
    log.set_config(LogConfig {
        retention_bytes: Some(size / 2),
        ..small_config(ASYNC)
    })
    .expect("config");
    let deleted = log.enforce_retention(10_000).expect("retention");
    assert!(deleted > 0);
    assert!(log.size_bytes() >= size / 2 && log.size_bytes() < size);
    let start = log.log_start_offset();
    assert!(start > 0);
    assert_eq!(
        read_all(&log).first().map(|(h, _)| h.base_offset),
        Some(start)
    );
    assert!(matches!(
        log.read(0, 100, 120),
        Err(StorageError::OffsetOutOfRange { .. })
    ));

    // By time: records up to ts 1_000 + 59 * 100 = 6_900; keep the last 1_000 ms at now 7_000.
    log.set_config(LogConfig {
        retention_ms: Some(1_000),
        ..small_config(ASYNC)
    })
    .expect("config");
    let deleted = log.enforce_retention(7_000).expect("retention");
    assert!(deleted > 0);
    let remaining = read_all(&log);
    assert!(!remaining.is_empty(), "the active segment stays");
    // Every remaining closed segment, and the active one, has records newer than 6_000.
    assert!(remaining.last().map(|(h, _)| h.max_timestamp).unwrap_or(0) > 6_000);
    let start = log.log_start_offset();
    assert!(remaining[0].0.base_offset == start);
    // Survives a restart.
    store.shutdown().expect("shutdown");
    drop(log);
    drop(store);
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(read_all(&log), remaining);
}

#[test]
fn delete_records_before_moves_start_and_persists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    for i in 0..50 {
        log.append(make_batch(2, 100, i), 0, 0).expect("append");
    }
    assert_eq!(log.delete_records_before(31).expect("delete"), 31);
    assert_eq!(log.log_start_offset(), 31);
    assert!(matches!(
        log.read(30, 100, 100),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // The batch holding 31 (30..=31) is still served whole, as Kafka does.
    let read = log.read(31, 1, 100).expect("read");
    assert_eq!(
        split_batches(&read.records, true).expect("valid")[0]
            .0
            .base_offset,
        30
    );
    assert_eq!(log.delete_records_before(10).expect("lower is a no-op"), 31);
    assert!(log.delete_records_before(101).is_err());
    let size_before = log.size_bytes();
    assert!(log
        .offset_for_timestamp(0)
        .expect("lookup")
        .is_some_and(|(o, _)| o >= 31));
    // A crash right after (no clean shutdown): the start offset is durable anyway.
    let _ = store.simulate_crash();
    drop(log);
    drop(store);

    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    assert_eq!(log.log_start_offset(), 31);
    assert_eq!(log.size_bytes(), size_before);
    // Deleting everything rolls the active segment away.
    assert_eq!(log.delete_records_before(100).expect("delete all"), 100);
    assert_eq!(log.log_end_offset(), 100);
    assert!(log.read(100, 100, 100).expect("read").records.is_empty());
    assert_eq!(log.size_bytes(), 0);
    assert_eq!(
        log.append(make_batch(1, 1, 0), 0, 0)
            .expect("append")
            .base_offset,
        100
    );
}

#[test]
fn timestamp_lookups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(ASYNC))
        .expect("log");
    assert_eq!(log.offset_for_timestamp(0).expect("empty"), None);
    assert_eq!(log.max_timestamp().expect("empty"), None);
    // Batch i holds offsets 3i..3i+2 with timestamps 100i, 100i+1, 100i+2 — except one
    // batch far in the past, which must not confuse the index.
    for i in 0..80i64 {
        let ts = if i == 40 { 5 } else { i * 100 };
        log.append(make_batch(3, 60, ts), 0, 0).expect("append");
    }
    assert_eq!(log.offset_for_timestamp(0).expect("lookup"), Some((0, 0)));
    assert_eq!(
        log.offset_for_timestamp(101).expect("lookup"),
        Some((4, 101))
    );
    assert_eq!(
        log.offset_for_timestamp(103).expect("lookup"),
        Some((6, 200))
    );
    assert_eq!(
        log.offset_for_timestamp(3_950).expect("lookup"),
        Some((123, 4_100))
    );
    assert_eq!(
        log.offset_for_timestamp(7_902).expect("lookup"),
        Some((239, 7_902))
    );
    assert_eq!(log.offset_for_timestamp(7_903).expect("lookup"), None);
    assert_eq!(log.max_timestamp().expect("max"), Some((239, 7_902)));

    // Log-append-time batches report the batch's time for every record.
    let mut batch = make_batch(2, 1, 1).to_vec();
    crate::batch::set_log_append_time(&mut batch, 9_000).expect("set");
    log.append(Bytes::from(batch), 0, 9_000).expect("append");
    assert_eq!(
        log.offset_for_timestamp(8_000).expect("lookup"),
        Some((240, 9_000))
    );
    assert_eq!(log.max_timestamp().expect("max"), Some((240, 9_000)));
}

#[test]
fn sync_appends_become_durable_through_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let logs: Vec<_> = (0..8)
        .map(|p| {
            store
                .open_log(&id("sync", p), small_config(FlushPolicy::Sync))
                .expect("log")
        })
        .collect();
    let mut pending = Vec::new();
    for round in 0..20 {
        for log in &logs {
            pending.push(
                log.append(make_batch(2, 30, round), 0, 0)
                    .expect("append")
                    .durable,
            );
        }
    }
    assert!(pending.iter().all(|d| !d.is_immediate()));
    for durable in pending {
        wait(durable).expect("durable");
    }
    // Crash without any log flush: the journal alone brings everything back.
    let synced = store.simulate_crash();
    let expected: Vec<_> = logs.iter().map(|log| read_all(log)).collect();
    for log in &logs {
        let log_file = SegmentPaths::new(log.dir(), 0).log;
        let keep = synced.get(&log_file).copied().unwrap_or(0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log_file)
            .expect("open")
            .set_len(keep)
            .expect("truncate");
    }
    drop(logs);
    drop(store);
    let store = open_store(dir.path());
    for (p, expected) in expected.iter().enumerate() {
        let log = store
            .open_log(&id("sync", p as u32), small_config(FlushPolicy::Sync))
            .expect("log");
        assert_eq!(&read_all(&log), expected);
    }
}

#[test]
fn removed_log_does_not_come_back_through_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(FlushPolicy::Sync))
        .expect("log");
    for _ in 0..5 {
        wait(
            log.append(make_batch(1, 10, 0), 0, 0)
                .expect("append")
                .durable,
        )
        .expect("durable");
    }
    store.remove_log(&id("t", 0)).expect("remove");
    assert!(matches!(
        log.append(make_batch(1, 1, 0), 0, 0),
        Err(StorageError::UnknownLog(_))
    ));
    assert!(store.log_ids().is_empty());
    let again = store
        .open_log(&id("t", 0), small_config(FlushPolicy::Sync))
        .expect("recreate");
    wait(
        again
            .append(make_batch(1, 10, 0), 0, 0)
            .expect("append")
            .durable,
    )
    .expect("durable");
    let _ = store.simulate_crash();
    drop((log, again, store));
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(FlushPolicy::Sync))
        .expect("log");
    assert_eq!(
        log.log_end_offset(),
        1,
        "old incarnation's journal entries are not replayed"
    );
}

#[test]
fn switching_async_to_sync_flushes_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let slow = FlushPolicy::Async {
        interval_ms: 3_600_000,
        bytes: u64::MAX,
    };
    let log = store
        .open_log(&id("t", 0), small_config(slow))
        .expect("log");
    for _ in 0..5 {
        log.append(make_batch(1, 10, 0), 0, 0).expect("append");
    }
    log.set_config(small_config(FlushPolicy::Sync))
        .expect("switch");
    wait(
        log.append(make_batch(1, 10, 0), 0, 0)
            .expect("append")
            .durable,
    )
    .expect("durable");
    let synced = store.simulate_crash();
    let log_file = SegmentPaths::new(log.dir(), 0).log;
    let keep = synced.get(&log_file).copied().unwrap_or(0);
    assert!(keep > 0, "the switch flushed the async appends");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log_file)
        .expect("open")
        .set_len(keep)
        .expect("truncate");
    drop((log, store));
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(FlushPolicy::Sync))
        .expect("log");
    assert_eq!(log.log_end_offset(), 6);
}

#[test]
fn torn_tail_is_truncated_and_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let slow = FlushPolicy::Async {
        interval_ms: 3_600_000,
        bytes: u64::MAX,
    };
    let log = store
        .open_log(&id("t", 0), small_config(slow))
        .expect("log");
    for _ in 0..3 {
        log.append(make_batch(2, 100, 0), 0, 0).expect("append");
    }
    log.flush().expect("flush");
    store.checkpoint().expect("checkpoint");
    for _ in 0..3 {
        log.append(make_batch(2, 100, 0), 0, 0).expect("append");
    }
    let _ = store.simulate_crash();
    let log_file = SegmentPaths::new(log.dir(), 0).log;
    let len = std::fs::metadata(&log_file).expect("stat").len();
    // Flip a byte inside the fifth batch.
    let batch_len = make_batch(2, 100, 0).len() as u64;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&log_file)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xAB], 4 * batch_len + 70).expect("write");
    drop((log, store, file));
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("t", 0), small_config(slow))
        .expect("log");
    assert_eq!(log.log_end_offset(), 8, "cut at the corrupt batch");
    assert_eq!(
        std::fs::metadata(&log_file).expect("stat").len(),
        4 * batch_len
    );
    assert!(len > 4 * batch_len);
    assert_eq!(read_all(&log).len(), 4);
    let header = BatchHeader::parse(&read_all(&log)[3].1).expect("header");
    assert_eq!(header.base_offset, 6);
}

/// Not a timed test: run by hand (`cargo test -p ferry-storage --release -- --ignored
/// --nocapture group_commit_smoke`) to see that Sync appends across many partitions
/// share fsyncs.
#[test]
#[ignore]
fn group_commit_smoke() {
    const PARTITIONS: u32 = 1000;
    const PRODUCERS: usize = 8;
    const APPENDS_PER_PRODUCER: usize = 2000;
    const IN_FLIGHT_MAX: usize = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let create_started = std::time::Instant::now();
    let logs: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            store
                .open_log(
                    &id("bench", p),
                    LogConfig {
                        flush: FlushPolicy::Sync,
                        ..LogConfig::default()
                    },
                )
                .expect("log")
        })
        .collect();
    println!(
        "created {PARTITIONS} Sync logs in {:?}",
        create_started.elapsed()
    );
    let logs = std::sync::Arc::new(logs);
    let batch = make_batch(10, 100, 0);
    let started = std::time::Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let logs = logs.clone();
            let batch = batch.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                let mut pending = std::collections::VecDeque::new();
                for i in 0..APPENDS_PER_PRODUCER {
                    let log = &logs[(t * 7919 + i * 31) % logs.len()];
                    pending.push_back(log.append(batch.clone(), 0, 0).expect("append").durable);
                    if pending.len() >= IN_FLIGHT_MAX {
                        runtime
                            .block_on(pending.pop_front().expect("pending").wait())
                            .expect("durable");
                    }
                }
                for durable in pending {
                    runtime.block_on(durable.wait()).expect("durable");
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().expect("producer");
    }
    let elapsed = started.elapsed();
    let appends = PRODUCERS * APPENDS_PER_PRODUCER;
    println!(
        "{appends} durable appends of {} bytes to {PARTITIONS} partitions in {elapsed:?}: {:.0} appends/s, {:.1} MB/s",
        batch.len(),
        appends as f64 / elapsed.as_secs_f64(),
        (appends * batch.len()) as f64 / elapsed.as_secs_f64() / 1e6
    );
    let shutdown_started = std::time::Instant::now();
    store.shutdown().expect("shutdown");
    println!(
        "shutdown (flushing {PARTITIONS} new logs): {:?}",
        shutdown_started.elapsed()
    );
    let open_started = std::time::Instant::now();
    let store = open_store(dir.path());
    println!(
        "clean restart with {} logs: {:?}",
        store.log_ids().len(),
        open_started.elapsed()
    );
    store.shutdown().expect("shutdown");
}

#[test]
fn concurrent_appends_and_reads_never_see_partial_batches() {
    const WRITERS: usize = 4;
    const APPENDS_PER_WRITER: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let config = LogConfig {
        retention_bytes: Some(30_000),
        ..small_config(ASYNC)
    };
    let log = store.open_log(&id("c", 0), config).expect("log");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let log = log.clone();
            scope.spawn(move || {
                for i in 0..APPENDS_PER_WRITER {
                    log.append(make_batch(1 + (i + w) % 4, 40, i as i64), 0, 0)
                        .expect("append");
                }
            });
        }
        for _ in 0..2 {
            let (log, done) = (log.clone(), done.clone());
            scope.spawn(move || {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                    let end = log.high_watermark();
                    let start = log.log_start_offset();
                    if end > start {
                        let offset = start + (reads as i64 * 7919) % (end - start);
                        match log.read(offset, 4096, end) {
                            Ok(read) => {
                                let batches = split_batches(&read.records, true)
                                    .expect("whole CRC-valid batches");
                                assert!(batches[0].0.base_offset <= offset);
                                assert!(batches.iter().all(|(h, _)| h.last_offset() < end));
                            }
                            // Retention may delete the segment between the bounds and the read.
                            Err(StorageError::OffsetOutOfRange { .. }) => {}
                            Err(e) => panic!("read failed: {e}"),
                        }
                    }
                    reads += 1;
                }
            });
        }
        let (log, done) = (log.clone(), done.clone());
        scope.spawn(move || {
            for _ in 0..20 {
                log.flush().expect("flush");
                log.enforce_retention(0).expect("retention");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
    });
    done.store(true, std::sync::atomic::Ordering::Release);
    let all = read_all(&log);
    let records: i64 = all.iter().map(|(h, _)| h.record_count as i64).sum();
    assert_eq!(records, log.log_end_offset() - all[0].0.base_offset);
    assert!(log.log_start_offset() > 0, "retention ran meanwhile");
}

#[test]
fn compressed_batches_use_the_installed_decompressor_for_timestamps_and_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("z", 0), small_config(ASYNC))
        .expect("log");
    // A batch marked "gzip" whose records section is really plain: the test decompressor
    // is the identity, which is enough to tell exact from batch-level answers.
    let mut batch = make_batch(4, 10, 100).to_vec();
    batch[22] |= 1;
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    log.append(Bytes::from(batch), 0, 0).expect("append");
    // Without a decompressor: the batch's base offset and max timestamp, and no records.
    assert_eq!(
        log.offset_for_timestamp(102).expect("lookup"),
        Some((0, 103))
    );
    let stored = log.read(0, 1 << 20, 4).expect("read").records;
    let (header, batch) = split_batches(&stored, true).expect("batch").remove(0);
    assert!(matches!(
        log.decode_records(&header, &batch),
        Err(StorageError::CorruptBatch(_))
    ));
    store.set_decompressor(std::sync::Arc::new(|codec, bytes: &[u8]| {
        (codec == 1).then(|| bytes.to_vec())
    }));
    assert_eq!(
        log.offset_for_timestamp(102).expect("lookup"),
        Some((2, 102))
    );
    assert_eq!(log.max_timestamp().expect("max"), Some((3, 103)));
    let records = log.decode_records(&header, &batch).expect("records");
    let deltas: Vec<i32> = records.iter().map(|r| r.offset_delta).collect();
    assert_eq!(deltas, [0, 1, 2, 3]);
    assert_eq!(records[2].value.as_deref(), Some(&[2u8; 10][..]));
}

#[test]
fn delete_records_into_a_journal_only_batch_survives_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("d", 0), small_config(FlushPolicy::Sync))
        .expect("log");
    for _ in 0..3 {
        wait(
            log.append(make_batch(2, 10, 0), 0, 0)
                .expect("append")
                .durable,
        )
        .expect("durable");
    }
    // Offset 3 lies inside the second batch (2..=3), which so far is only in the journal.
    assert_eq!(log.delete_records_before(3).expect("delete"), 3);
    let synced = store.simulate_crash();
    let log_file = SegmentPaths::new(log.dir(), 0).log;
    let keep = synced.get(&log_file).copied().unwrap_or(0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log_file)
        .expect("open")
        .set_len(keep)
        .expect("truncate");
    drop((log, store));
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("d", 0), small_config(FlushPolicy::Sync))
        .expect("log");
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (3, 6));
    let batches = read_all(&log);
    assert_eq!(batches[0].0.base_offset, 2);
    assert_eq!(batches.len(), 2);
}

#[test]
fn a_data_directory_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    match crate::Store::open(crate::StoreConfig::new(dir.path())) {
        Err(StorageError::DataDirLocked(path)) => assert_eq!(path, dir.path()),
        other => panic!("second open of a held data directory: {other:?}"),
    }
    store.shutdown().expect("shutdown");
    drop(store);
    let reopened = open_store(dir.path());
    reopened.shutdown().expect("shutdown");
}

#[test]
fn the_flusher_flushes_many_due_logs_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every flush the flusher makes goes through the filesystem-wide syncs; checkpoints
    // (which would flush too) do not come during the test.
    let store = Store::open(StoreConfig {
        group_flush_min_logs: 1,
        checkpoint_interval_ms: 3_600_000,
        ..StoreConfig::new(dir.path())
    })
    .expect("store opens");
    let config = small_config(FlushPolicy::Async {
        interval_ms: 1,
        bytes: u64::MAX,
    });
    let logs: Vec<_> = (0..12)
        .map(|p| store.open_log(&id("many", p), config.clone()).expect("log"))
        .collect();
    // Enough per log to roll segments (4 KiB each), so closed segments are flushed too.
    for round in 0..16 {
        for log in &logs {
            log.append(make_batch(3, 300, round), 0, 0).expect("append");
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while logs.iter().any(|log| log.is_dirty()) {
        assert!(std::time::Instant::now() < deadline, "logs still dirty");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let expected: Vec<_> = logs.iter().map(|log| read_all(log)).collect();
    let synced = store.simulate_crash();
    // A crash keeps what was synced and no more.
    for log in &logs {
        for entry in std::fs::read_dir(log.dir()).expect("log dir").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let len = entry.metadata().expect("stat").len();
                let keep = synced.get(&path).copied().unwrap_or(0);
                assert_eq!(keep, len, "{} synced in full", path.display());
            }
        }
        assert!(synced.contains_key(&log.dir().join("meta.json")));
    }
    drop(logs);
    drop(store);
    let store = open_store(dir.path());
    for (p, expected) in expected.iter().enumerate() {
        let log = store
            .open_log(&id("many", p as u32), config.clone())
            .expect("log");
        // Three files per closed segment: at least two closed segments.
        assert!(log.closed_paths().len() >= 6, "segments rolled");
        assert_eq!(&read_all(&log), expected);
    }
}

#[test]
fn early_writeback_stops_at_a_boundary_behind_the_end() {
    use crate::log::{early_writeback_range as range, WRITEBACK_ALIGN_BYTES as ALIGN};
    // Nothing before the first boundary; then up to the last boundary, never past the end.
    assert_eq!(range((-1, 0), 0, ALIGN - 1), None);
    assert_eq!(range((-1, 0), 0, ALIGN + 5), Some((0, ALIGN)));
    assert_eq!(range((-1, 0), 0, 3 * ALIGN + 5), Some((0, 3 * ALIGN)));
    // Continues where it got to, once the end is a whole boundary further.
    assert_eq!(range((0, ALIGN), 0, 2 * ALIGN - 1), None);
    assert_eq!(range((0, ALIGN), 0, 2 * ALIGN), Some((ALIGN, 2 * ALIGN)));
    // A new active segment starts from its beginning.
    assert_eq!(range((0, 3 * ALIGN), 900, ALIGN), Some((0, ALIGN)));
    // After a truncation below where it got to, from the beginning again.
    assert_eq!(range((0, 3 * ALIGN), 0, ALIGN + 1), Some((0, ALIGN)));
}

#[test]
fn the_flusher_starts_writeback_between_flushes() {
    use crate::log::WRITEBACK_ALIGN_BYTES as ALIGN;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(StoreConfig {
        checkpoint_interval_ms: 3_600_000,
        ..StoreConfig::new(dir.path())
    })
    .expect("store opens");
    // No flush comes during the test: only the flusher's early writeback touches the log.
    let config = LogConfig {
        flush: FlushPolicy::Async {
            interval_ms: 3_600_000,
            bytes: u64::MAX,
        },
        ..LogConfig::default()
    };
    let log = store.open_log(&id("early", 0), config).expect("log");
    let wait_for = |position: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.written_back() != (0, position) {
            assert!(
                std::time::Instant::now() < deadline,
                "writeback got to {:?}, not {position}",
                log.written_back()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    // About 66 KB per batch.
    while log.size_bytes() < 2 * ALIGN + ALIGN / 2 {
        log.append(make_batch(64, 1000, 0), 0, 0).expect("append");
    }
    wait_for(2 * ALIGN);
    assert!(log.is_dirty(), "early writeback is not a flush");
    while log.size_bytes() < 3 * ALIGN + 1 {
        log.append(make_batch(64, 1000, 0), 0, 0).expect("append");
    }
    wait_for(3 * ALIGN);
    let expected = read_all(&log);
    drop(log);
    store.shutdown().expect("shutdown");
    drop(store);
    let store = open_store(dir.path());
    let log = store
        .open_log(&id("early", 0), LogConfig::default())
        .expect("log");
    assert_eq!(read_all(&log), expected);
}
