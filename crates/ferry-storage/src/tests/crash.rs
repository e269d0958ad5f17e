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

/// What the test appended to one log.
#[derive(Default)]
struct Model {
    /// Every batch appended, in order, as built (offsets and epochs not yet assigned).
    batches: Vec<Bytes>,
    /// How many leading batches are known durable.
    durable: usize,
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

/// Checks a recovered log against what was appended and returns how many batches it has.
fn check_log(log: &PartitionLog, model: &Model, round: usize) -> usize {
    assert_eq!(log.log_start_offset(), 0);
    let recovered = read_all(log);
    assert!(
        recovered.len() >= model.durable,
        "{}: {} batches recovered but {} were durable (round {round})",
        log.id(),
        recovered.len(),
        model.durable
    );
    assert!(
        recovered.len() <= model.batches.len(),
        "{}: more batches than appended",
        log.id()
    );
    let epochs = log.leader_epochs();
    let mut offset = 0;
    for (i, (header, bytes)) in recovered.iter().enumerate() {
        let appended = &model.batches[i];
        assert_eq!(header.base_offset, offset, "{}: batch {i} offset", log.id());
        assert_eq!(
            &bytes[CRC_COVERED_FROM..],
            &appended[CRC_COVERED_FROM..],
            "{}: batch {i} bytes",
            log.id()
        );
        let epoch = epochs
            .iter()
            .rev()
            .find(|(_, start)| *start <= offset)
            .map(|(e, _)| *e);
        assert_eq!(
            Some(header.partition_leader_epoch),
            epoch,
            "{}: batch {i} epoch",
            log.id()
        );
        offset = header.last_offset() + 1;
    }
    assert_eq!(log.log_end_offset(), offset, "{}: log end", log.id());
    recovered.len()
}

fn run_case(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut models: Vec<Model> = POLICIES.iter().map(|_| Model::default()).collect();
    let rounds = rng.random_range(1..=3);
    for round in 0..rounds {
        let (store, logs, baseline) = open(dir.path(), &mut rng);
        for (log, model) in logs.iter().zip(models.iter_mut()) {
            let count = check_log(log, model, round);
            model.batches.truncate(count);
            model.durable = count;
        }
        let mut pending: Vec<(usize, usize, Durability)> = Vec::new();
        let epoch = round as i32;
        for _ in 0..rng.random_range(5..40) {
            match rng.random_range(0..100) {
                0..=69 => {
                    let p = rng.random_range(0..logs.len());
                    let batch = make_batch(
                        rng.random_range(1..5),
                        rng.random_range(0..300),
                        rng.random_range(0..1000),
                    );
                    let result = logs[p].append(batch.clone(), epoch, 0).expect("append");
                    models[p].batches.push(batch);
                    pending.push((p, models[p].batches.len(), result.durable));
                }
                70..=84 => {
                    for (p, count, durable) in pending.drain(..) {
                        if wait(durable).is_ok() && POLICIES[p] == FlushPolicy::Sync {
                            models[p].durable = models[p].durable.max(count);
                        }
                    }
                }
                85..=94 => {
                    let p = rng.random_range(0..logs.len());
                    logs[p].flush().expect("flush");
                    models[p].durable = models[p].batches.len();
                }
                _ => {
                    store.checkpoint().expect("checkpoint");
                    for model in models.iter_mut() {
                        model.durable = model.batches.len();
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
    for (log, model) in logs.iter().zip(models.iter()) {
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn recovery_after_random_crashes_keeps_every_durable_append(seed in any::<u64>()) {
        run_case(seed);
    }
}
