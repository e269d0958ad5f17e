//! Crash property test: random appends to Sync and Async logs, crashes at random points
//! with the unsynced tail of every file cut at a random length and partly overwritten
//! with garbage (a torn write), then recovery invariants.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{id, make_batch, read_all, wait};
use crate::batch::BatchHeader;
use crate::{Durability, FlushPolicy, LogConfig, PartitionLog, Store, StoreConfig};

/// Logs in each case and their policies.
const POLICIES: [FlushPolicy; 3] = [
    FlushPolicy::Sync,
    FlushPolicy::Async {
        interval_ms: 5,
        bytes: 4096,
    },
    FlushPolicy::Sync,
];
/// Bytes before the CRC-covered part of a batch (offset, length, epoch, magic, crc).
const CRC_COVERED_FROM: usize = 21;

/// What the test appended to one log (and has not seen lost yet).
#[derive(Default)]
struct Model {
    /// Batches in log order: (base offset, bytes as built, before offsets were assigned).
    batches: Vec<(i64, Bytes)>,
    /// Offset the next append gets.
    next: i64,
    /// Every record below this offset is known durable.
    durable_end: i64,
    /// Log start offset (DeleteRecords is durable once it returns).
    start: i64,
}

fn config(policy: FlushPolicy, rng: &mut StdRng) -> LogConfig {
    LogConfig {
        segment_bytes_max: rng.random_range(600..6000),
        index_interval_bytes: rng.random_range(1..700),
        retention_ms: None,
        retention_bytes: None,
        flush: policy,
        ..LogConfig::default()
    }
}

/// Opens the store and the test's logs; also returns the files as recovery left them
/// (on disk, so durable for the next crash), taken before the logs are opened, so that a
/// log created now is not counted as durable.
fn open(
    dir: &Path,
    rng: &mut StdRng,
) -> (Arc<Store>, Vec<Arc<PartitionLog>>, HashMap<PathBuf, u64>) {
    let store = Store::open(StoreConfig {
        data_dir: dir.to_path_buf(),
        journal_segment_bytes_max: rng.random_range(500..5000),
        checkpoint_interval_ms: if rng.random_bool(0.5) { 3 } else { 3_600_000 },
        // Flushes one log at a time, or every flush through the filesystem-wide syncs.
        group_flush_min_logs: if rng.random_bool(0.5) { 1 } else { usize::MAX },
    })
    .expect("store opens");
    let baseline = file_lengths(dir);
    let logs = POLICIES
        .iter()
        .enumerate()
        .map(|(p, policy)| {
            store
                .open_log(&id("crash", p as u32), config(*policy, rng))
                .expect("log opens")
        })
        .collect();
    (store, logs, baseline)
}

/// Every regular file under `dir` with its length.
fn file_lengths(dir: &Path) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.insert(path, meta.len());
            }
        }
    }
    out
}

/// Loses what a crash may lose: for each file, a random part of the tail beyond what is
/// known durable is cut off, and part of what is left beyond it becomes garbage.
fn mangle(
    dir: &Path,
    baseline: &HashMap<PathBuf, u64>,
    synced: &HashMap<PathBuf, u64>,
    rng: &mut StdRng,
) {
    // A log directory whose creation was never made durable may vanish entirely.
    for p in 0..POLICIES.len() {
        let log_dir = dir.join(format!("crash-{p}"));
        // Made durable by the log's first flush (which syncs its first segment), or on
        // disk before this round.
        let meta = log_dir.join("meta.json");
        let created_durably =
            baseline.contains_key(&meta) || synced.keys().any(|p| p.starts_with(&log_dir));
        if log_dir.exists() && !created_durably && rng.random_bool(0.3) {
            std::fs::remove_dir_all(&log_dir).expect("remove log dir");
        }
    }
    for (path, len) in file_lengths(dir) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // Replaced atomically (tmp + fsync + rename + dir fsync): old or new, never torn.
        if name == "checkpoint.json" {
            continue;
        }
        let durable = baseline
            .get(&path)
            .copied()
            .unwrap_or(0)
            .max(synced.get(&path).copied().unwrap_or(0))
            .min(len);
        if durable == len || rng.random_bool(0.3) {
            continue;
        }
        let cut = rng.random_range(durable..=len);
        let new_len = rng.random_range(cut..=len);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        if new_len > cut {
            let garbage_len = rng.random_range(0..=(new_len - cut)) as usize;
            let garbage: Vec<u8> = if rng.random_bool(0.5) {
                vec![0; garbage_len]
            } else {
                (0..garbage_len).map(|_| rng.random()).collect()
            };
            file.write_all_at(&garbage, cut).expect("garbage");
        }
        file.set_len(new_len).expect("truncate");
    }
}

/// Checks a recovered log against what was appended, then makes the model match it.
fn check_log(log: &PartitionLog, model: &mut Model, round: usize) {
    let ctx = format!("{} (round {round})", log.id());
    let (start, end) = (log.log_start_offset(), log.log_end_offset());
    assert_eq!(start, model.start, "{ctx}: log start offset");
    assert!(
        end >= model.durable_end.max(model.start),
        "{ctx}: end {end} below durable {}",
        model.durable_end
    );
    assert!(
        end <= model.next.max(model.start),
        "{ctx}: end {end} past what was appended ({})",
        model.next
    );
    let recovered = read_all(log);
    let epochs = log.leader_epochs();
    if let Some((first, _)) = recovered.first() {
        assert!(
            first.base_offset <= start && start <= first.last_offset(),
            "{ctx}: first batch holds the start"
        );
    }
    for (header, bytes) in &recovered {
        let i = model
            .batches
            .binary_search_by_key(&header.base_offset, |(base, _)| *base)
            .unwrap_or_else(|_| {
                panic!("{ctx}: batch at {} was never appended", header.base_offset)
            });
        assert_eq!(
            &bytes[CRC_COVERED_FROM..],
            &model.batches[i].1[CRC_COVERED_FROM..],
            "{ctx}: batch {i} bytes"
        );
        let epoch = epochs
            .iter()
            .rev()
            .find(|(_, s)| *s <= header.base_offset)
            .map(|(e, _)| *e);
        assert_eq!(
            Some(header.partition_leader_epoch),
            epoch,
            "{ctx}: batch {i} epoch"
        );
    }
    assert_eq!(
        recovered.last().map_or(start, |(h, _)| h.last_offset() + 1),
        end,
        "{ctx}: log end"
    );
    model.batches.retain(|(base, _)| *base < end);
    model.next = end;
    model.durable_end = end;
}

fn run_case(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut models: Vec<Model> = POLICIES.iter().map(|_| Model::default()).collect();
    let rounds = rng.random_range(1..=3);
    for round in 0..rounds {
        let (store, logs, baseline) = open(dir.path(), &mut rng);
        for (log, model) in logs.iter().zip(models.iter_mut()) {
            check_log(log, model, round);
        }
        let mut pending: Vec<(usize, i64, Durability)> = Vec::new();
        let epoch = round as i32;
        for _ in 0..rng.random_range(5..40) {
            match rng.random_range(0..100) {
                0..=66 => {
                    let p = rng.random_range(0..logs.len());
                    let batch = make_batch(
                        rng.random_range(1..5),
                        rng.random_range(0..300),
                        rng.random_range(0..1000),
                    );
                    let result = logs[p].append(batch.clone(), epoch, 0).expect("append");
                    assert_eq!(result.base_offset, models[p].next);
                    models[p].batches.push((result.base_offset, batch));
                    models[p].next = result.last_offset + 1;
                    pending.push((p, models[p].next, result.durable));
                }
                67..=81 => {
                    for (p, end, durable) in pending.drain(..) {
                        if wait(durable).is_ok() && POLICIES[p] == FlushPolicy::Sync {
                            models[p].durable_end = models[p].durable_end.max(end);
                        }
                    }
                }
                82..=91 => {
                    let p = rng.random_range(0..logs.len());
                    logs[p].flush().expect("flush");
                    models[p].durable_end = models[p].next;
                }
                92..=95 => {
                    let p = rng.random_range(0..logs.len());
                    let offset = rng.random_range(models[p].start..=models[p].next);
                    let start = logs[p]
                        .delete_records_before(offset)
                        .expect("delete records");
                    assert_eq!(start, offset.max(models[p].start));
                    models[p].start = start;
                }
                _ => {
                    store.checkpoint().expect("checkpoint");
                    for model in models.iter_mut() {
                        model.durable_end = model.next;
                    }
                }
            }
        }
        let synced = store.simulate_crash();
        drop(pending);
        drop(logs);
        drop(store);
        mangle(dir.path(), &baseline, &synced, &mut rng);
    }
    // Recover once more, check, then shut down cleanly and check the clean restart.
    let (store, logs, _) = open(dir.path(), &mut rng);
    let mut after_crash = Vec::new();
    for (log, model) in logs.iter().zip(models.iter_mut()) {
        check_log(log, model, rounds);
        after_crash.push(read_all(log));
    }
    store.shutdown().expect("clean shutdown");
    drop(logs);
    drop(store);
    let (store, logs, _) = open(dir.path(), &mut rng);
    for (log, before) in logs.iter().zip(after_crash) {
        let again = read_all(log);
        assert_eq!(again.len(), before.len());
        for ((h1, b1), (h2, b2)) in again.iter().zip(before.iter()) {
            assert_eq!((h1, b1), (h2, b2));
            assert_eq!(BatchHeader::parse(b1).expect("header"), *h1);
        }
    }
    store.shutdown().expect("clean shutdown");
}

/// Cases per run: 24 by default (a few seconds in debug builds).
fn crash_cases() -> u32 {
    std::env::var("FERRY_CRASH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    // FERRY_CRASH_CASES raises the case count for soak runs.
    #![proptest_config(ProptestConfig { cases: crash_cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn recovery_after_random_crashes_keeps_every_durable_append(seed in any::<u64>()) {
        run_case(seed);
    }
}
