//! The store: a data directory of partition logs, the shared journal, checkpoints and
//! recovery.
//!
//! Layout of a data directory:
//!
//! ```text
//! <data_dir>/
//!   checkpoint.json              journal position + each log's recovery point; clean flag
//!   journal/{position:020}.journal   group-commit journal of Sync appends
//!   <topic>-<partition>/         one directory per log (see `PartitionLog`)
//!     meta.json                  incarnation, log start offset, leader-epoch history
//!     {base:020}.log / .index / .timeindex
//! ```
//!
//! Two background threads serve every log, whatever their number: the *flusher* fsyncs
//! `Async` logs when their interval or size is due (with many due at once, all dirty logs
//! together through `syncfs`) and writes a checkpoint every `checkpoint_interval_ms`; the
//! *group committer* fsyncs the journal. A checkpoint flushes every dirty log, then
//! atomically replaces `checkpoint.json` with each log's recovery point (the flushed end)
//! and the journal position read before the flushes, then deletes journal files wholly
//! before that position.
//!
//! `Store::open` recovers: each log is walked from its recovery point (torn tail
//! truncated, CRCs verified, indexes rebuilt for the walked part; after a clean shutdown
//! that is only a short tail), then the journal is replayed from the checkpoint's position
//! into the logs, re-creating logs whose directory was lost and honouring removals. The
//! clean-shutdown flag written by [`Store::shutdown`] is reset at open, so a later crash is
//! never mistaken for a clean stop.
//!
//! A data directory must be used by one process at a time (there is no lock file yet).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::fsutil::{
    fsync_dir, now_ms, remove_file_if_exists, sync_filesystem, write_atomic, IoContext,
};
use crate::journal::{self, EntryKind, Journal, JOURNAL_DIR};
use crate::log::RecoveryPoint;
use crate::{LogConfig, PartitionLog, Result, StorageError};

/// Name of the checkpoint file in the data directory.
const CHECKPOINT_FILE: &str = "checkpoint.json";
/// Default checkpoint interval. After a crash, everything written since the last
/// checkpoint is re-verified, so this bounds recovery time (W6 measured 16 s for 5 GB
/// written within a 30 s interval); logs are flushed every second anyway, so a checkpoint
/// is mostly one small atomic file write.
pub(crate) const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 5_000;
/// Version of the checkpoint format.
const CHECKPOINT_VERSION: u32 = 1;
/// Suffix of a log directory being deleted.
const DELETED_SUFFIX: &str = ".deleted";
/// Journal segments written since the last checkpoint that trigger the next one early.
const JOURNAL_SEGMENTS_PER_CHECKPOINT: u64 = 4;
/// How often the flusher looks for due flushes when nothing wakes it earlier.
const FLUSHER_TICK_MS: u64 = 50;
/// Default for [`StoreConfig::group_flush_min_logs`].
const DEFAULT_GROUP_FLUSH_MIN_LOGS: usize = 8;
/// New index entries a log needs before a group flush writes them (256 KiB of log at the
/// default 4 KiB index interval): at most this much of each log is walked again to
/// rebuild its index after a crash. A clean shutdown writes them all.
const GROUP_FLUSH_INDEX_MIN_ENTRIES: usize = 64;
/// Most closed-segment files kept open at once across all logs.
const OPEN_FILES_MAX: usize = 512;
/// Longest topic name accepted as a directory name (Kafka's limit).
const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Names a partition log: `<data_dir>/<topic>-<partition>/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

impl LogId {
    /// Parses a log directory name `<topic>-<partition>`.
    fn from_dir_name(name: &str) -> Option<LogId> {
        let (topic, partition) = name.rsplit_once('-')?;
        if topic.is_empty()
            || partition.is_empty()
            || !partition.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(LogId {
            topic: topic.to_string(),
            partition: partition.parse().ok()?,
        })
    }

    /// Rejects names that cannot safely be a directory name.
    fn validate(&self) -> Result<()> {
        let t = &self.topic;
        let bad = t.is_empty()
            || t.len() > TOPIC_NAME_BYTES_MAX
            || t == "."
            || t == ".."
            || t.ends_with(DELETED_SUFFIX)
            || t.chars()
                .any(|c| c == '/' || c == '\\' || c == '\0' || c.is_control());
        if bad {
            return Err(StorageError::InvalidLogId(format!("{t:?}")));
        }
        Ok(())
    }
}

/// Store-wide settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory holding every log, the journal and the checkpoint.
    pub data_dir: PathBuf,
    /// Journal segment size before rolling to a new journal file.
    pub journal_segment_bytes_max: u64,
    /// How often logs are flushed and the checkpoint advanced (lets old journal files go).
    pub checkpoint_interval_ms: u64,
    /// Logs to flush at once from which two filesystem syncs replace the fsyncs of each
    /// log ([`PartitionLog::flush_group`]). Below it, fsyncing each log touches nothing
    /// else on the filesystem; from it on, a journal commit per fsync costs more than a
    /// `syncfs` that also writes back whatever else is dirty on that filesystem.
    pub group_flush_min_logs: usize,
}

impl StoreConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            journal_segment_bytes_max: 256 << 20,
            checkpoint_interval_ms: DEFAULT_CHECKPOINT_INTERVAL_MS,
            group_flush_min_logs: DEFAULT_GROUP_FLUSH_MIN_LOGS,
        }
    }
}

/// Decompresses a batch's records section: `(codec, compressed bytes)` to the plain
/// records, or `None` if it cannot. Installed by the layer that owns the codecs; used only
/// for exact timestamp lookups inside compressed batches.
pub type Decompressor = Arc<dyn Fn(u8, &[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// A bounded cache of read-only handles to closed-segment files, least recently used out.
#[derive(Debug)]
pub(crate) struct FileCache {
    inner: Mutex<FileCacheInner>,
}

#[derive(Debug, Default)]
struct FileCacheInner {
    files: HashMap<PathBuf, (Arc<File>, u64)>,
    clock: u64,
}

impl FileCache {
    fn new() -> FileCache {
        FileCache {
            inner: Mutex::new(FileCacheInner::default()),
        }
    }

    /// An open handle to `path`, opening it (and evicting the least recently used handle
    /// if the cache is full) if needed.
    pub fn get(&self, path: &Path) -> std::io::Result<Arc<File>> {
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let now = inner.clock;
        if let Some((file, used)) = inner.files.get_mut(path) {
            *used = now;
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(path)?);
        if inner.files.len() >= OPEN_FILES_MAX {
            let oldest = inner
                .files
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(p, _)| p.clone());
            if let Some(oldest) = oldest {
                inner.files.remove(&oldest);
            }
        }
        inner.files.insert(path.to_path_buf(), (file.clone(), now));
        Ok(file)
    }

    /// Forgets the handle to `path` (the file was deleted or replaced).
    pub fn evict(&self, path: &Path) {
        self.inner.lock().files.remove(path);
    }

    /// Forgets every handle under `dir`.
    fn evict_dir(&self, dir: &Path) {
        self.inner
            .lock()
            .files
            .retain(|path, _| !path.starts_with(dir));
    }
}

/// State shared by the store, its logs and its threads.
pub(crate) struct StoreShared {
    config: StoreConfig,
    journal: Journal,
    files: FileCache,
    shut_down: AtomicBool,
    flusher: Mutex<FlusherSignal>,
    flusher_wake: Condvar,
    decompressor: RwLock<Option<Decompressor>>,
    /// Serializes checkpoints.
    checkpoint_lock: Mutex<()>,
    /// Bumped for every log directory created; the generation last made durable.
    data_dir_generation: std::sync::atomic::AtomicU64,
    data_dir_synced: Mutex<u64>,
    /// Test seam: for every file, the length known to be on stable storage.
    #[cfg(test)]
    synced: Mutex<HashMap<PathBuf, u64>>,
    /// Test seam: bytes of segment data walked by recovery.
    #[cfg(test)]
    recovery_scanned_bytes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for StoreShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreShared")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct FlusherSignal {
    wake: bool,
    stop: bool,
}

impl StoreShared {
    pub(crate) fn log_dir(&self, id: &LogId) -> PathBuf {
        self.config.data_dir.join(id.to_string())
    }
    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }
    pub(crate) fn files(&self) -> &FileCache {
        &self.files
    }
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }
    /// Asks the flusher to look at the logs now (a log crossed its flush size).
    pub(crate) fn wake_flusher(&self) {
        self.flusher.lock().wake = true;
        self.flusher_wake.notify_one();
    }
    /// Decompresses with the installed decompressor, if any.
    pub(crate) fn decompress(&self, codec: u8, bytes: &[u8]) -> Option<Vec<u8>> {
        let decompressor = self.decompressor.read().clone()?;
        decompressor(codec, bytes)
    }
    /// Notes that a log directory was created in the data directory.
    pub(crate) fn note_log_dir_created(&self) {
        self.data_dir_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// fsyncs the data directory if log directories were created since the last time, so
    /// that one fsync covers every log created meanwhile.
    pub(crate) fn sync_data_dir(&self) -> Result<()> {
        let mut synced = self.data_dir_synced.lock();
        let generation = self.data_dir_generation.load(Ordering::Acquire);
        if *synced < generation {
            fsync_dir(&self.config.data_dir)?;
            *synced = generation;
        }
        Ok(())
    }

    /// Makes everything written under the data directory durable with one filesystem
    /// sync ([`sync_filesystem`]), the data directory's entries included.
    pub(crate) fn sync_all(&self) -> Result<()> {
        let mut synced = self.data_dir_synced.lock();
        let generation = self.data_dir_generation.load(Ordering::Acquire);
        sync_filesystem(&self.config.data_dir)?;
        *synced = (*synced).max(generation);
        Ok(())
    }

    /// Counts bytes of segment data walked by recovery (test seam).
    pub(crate) fn note_recovery_scan(&self, bytes: u64) {
        #[cfg(test)]
        self.recovery_scanned_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        #[cfg(not(test))]
        let _ = bytes;
    }

    /// Records that all of `path` is on stable storage (test seam: no `stat` otherwise).
    pub(crate) fn note_synced_whole(&self, path: &Path) {
        #[cfg(test)]
        self.note_synced(path, std::fs::metadata(path).map(|m| m.len()).unwrap_or(0));
        #[cfg(not(test))]
        let _ = path;
    }

    /// Records that the first `len` bytes of `path` are on stable storage (test seam).
    pub(crate) fn note_synced(&self, path: &Path, len: u64) {
        #[cfg(test)]
        {
            let mut synced = self.synced.lock();
            let known = synced.entry(path.to_path_buf()).or_insert(0);
            *known = (*known).max(len);
        }
        #[cfg(not(test))]
        let _ = (path, len);
    }
}

/// The logs of a store.
#[derive(Debug, Default)]
struct Registry {
    logs: RwLock<BTreeMap<LogId, Arc<PartitionLog>>>,
}

impl Registry {
    fn all(&self) -> Vec<Arc<PartitionLog>> {
        self.logs.read().values().cloned().collect()
    }
}

/// The checkpoint file.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    /// Written by `shutdown` after flushing everything; reset at the next open.
    clean_shutdown: bool,
    /// Every journal entry before this position is in a flushed log.
    journal_position: u64,
    logs: Vec<LogCheckpoint>,
}

/// One log's entry in the checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct LogCheckpoint {
    name: String,
    incarnation: u64,
    #[serde(flatten)]
    point: RecoveryPoint,
}

fn read_checkpoint(path: &Path) -> Option<Checkpoint> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice::<Checkpoint>(&bytes) {
        Ok(cp) if cp.version == CHECKPOINT_VERSION => Some(cp),
        _ => {
            tracing::error!(path = %path.display(), "checkpoint unreadable; recovering every log from its start");
            None
        }
    }
}

/// A data directory of partition logs plus the group-commit journal.
pub struct Store {
    /// Held (flock) for the store's lifetime so that two processes never share a data
    /// directory; released when the store is dropped or the process dies.
    _dir_lock: std::fs::File,
    shared: Arc<StoreShared>,
    registry: Arc<Registry>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.shared.config.data_dir)
            .finish_non_exhaustive()
    }
}

/// Name of the lock file in the data directory.
const LOCK_FILE: &str = ".lock";

/// Takes the data directory's exclusive lock, failing at once if it is held.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StorageError::DataDirLocked(data_dir.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(source)) => Err(StorageError::Io { path, source }),
    }
}

impl Store {
    /// Opens (creating if needed) the data directory and recovers: torn tails truncated,
    /// CRCs of unflushed data checked, the journal replayed into the logs, missing or
    /// damaged indexes rebuilt. Starts the flusher and group-commit threads.
    pub fn open(config: StoreConfig) -> Result<Arc<Store>> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).at(&data_dir)?;
        let dir_lock = lock_data_dir(&data_dir)?;
        let journal_dir = data_dir.join(JOURNAL_DIR);
        std::fs::create_dir_all(&journal_dir).at(&journal_dir)?;
        let checkpoint_path = data_dir.join(CHECKPOINT_FILE);
        let checkpoint = read_checkpoint(&checkpoint_path);
        let clean = checkpoint.as_ref().is_some_and(|cp| cp.clean_shutdown);
        let journal_start = checkpoint.as_ref().map_or(0, |cp| cp.journal_position);
        if let Some(cp) = &checkpoint {
            if cp.clean_shutdown {
                // From now on a crash must not be mistaken for a clean shutdown.
                let reset = Checkpoint {
                    version: CHECKPOINT_VERSION,
                    clean_shutdown: false,
                    journal_position: cp.journal_position,
                    logs: cp
                        .logs
                        .iter()
                        .map(|l| LogCheckpoint {
                            name: l.name.clone(),
                            incarnation: l.incarnation,
                            point: l.point,
                        })
                        .collect(),
                };
                write_atomic(
                    &checkpoint_path,
                    &serde_json::to_vec(&reset).unwrap_or_default(),
                )?;
            }
        }
        let started = std::time::Instant::now();
        // Find the valid end of the journal first (truncating a torn tail), so the writer
        // can start there; entries are replayed once the logs are recovered.
        let journal_end = journal::recover_tail(&journal_dir, journal_start)?;
        let journal = Journal::open(&journal_dir, journal_end, config.journal_segment_bytes_max)?;
        let shared = Arc::new(StoreShared {
            config,
            journal,
            files: FileCache::new(),
            shut_down: AtomicBool::new(false),
            flusher: Mutex::new(FlusherSignal::default()),
            flusher_wake: Condvar::new(),
            decompressor: RwLock::new(None),
            checkpoint_lock: Mutex::new(()),
            data_dir_generation: std::sync::atomic::AtomicU64::new(0),
            data_dir_synced: Mutex::new(0),
            #[cfg(test)]
            synced: Mutex::new(HashMap::new()),
            #[cfg(test)]
            recovery_scanned_bytes: std::sync::atomic::AtomicU64::new(0),
        });
        let registry = Arc::new(Registry::default());
        let points: HashMap<&str, (u64, RecoveryPoint)> = checkpoint
            .as_ref()
            .map(|cp| {
                cp.logs
                    .iter()
                    .map(|l| (l.name.as_str(), (l.incarnation, l.point)))
                    .collect()
            })
            .unwrap_or_default();

        for entry in std::fs::read_dir(&data_dir).at(&data_dir)? {
            let entry = entry.at(&data_dir)?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !entry.file_type().at(&path)?.is_dir() {
                if name.ends_with(".tmp") {
                    remove_file_if_exists(&path)?;
                }
                continue;
            }
            if name.ends_with(DELETED_SUFFIX) {
                std::fs::remove_dir_all(&path).at(&path)?;
                continue;
            }
            let Some(id) = LogId::from_dir_name(&name) else {
                continue;
            };
            let log = PartitionLog::recover(
                shared.clone(),
                id.clone(),
                points.get(name.as_str()).copied(),
                LogConfig::default(),
            )?;
            registry.logs.write().insert(id, Arc::new(log));
        }

        // Redo what happened to Sync logs since the checkpoint, in order: appends the logs
        // may have lost, logs whose creation did not reach the disk, removals.
        let mut replayed = 0usize;
        let mut by_name: HashMap<String, Arc<PartitionLog>> = registry
            .all()
            .into_iter()
            .map(|log| (log.id().to_string(), log))
            .collect();
        let mut adopted: HashMap<String, u64> = HashMap::new();
        journal::replay(&journal_dir, journal_start, journal_end, |entry| {
            let id = LogId {
                topic: entry.topic.clone(),
                partition: entry.partition,
            };
            let name = id.to_string();
            let log = match by_name.get(&name) {
                Some(log) => log.clone(),
                None if entry.kind == EntryKind::Append && id.validate().is_ok() => {
                    tracing::warn!(log = %id, "re-creating a log from its journal entries");
                    let log = Arc::new(PartitionLog::create(
                        shared.clone(),
                        id.clone(),
                        LogConfig::default(),
                        Some(entry.incarnation),
                    )?);
                    registry.logs.write().insert(id.clone(), log.clone());
                    by_name.insert(name.clone(), log.clone());
                    log
                }
                None => return Ok(()),
            };
            // A log that lost its meta.json takes the incarnation its entries name.
            if !log.incarnation_known() {
                let first = *adopted.entry(name.clone()).or_insert(entry.incarnation);
                if first != entry.incarnation {
                    return Ok(());
                }
            } else if log.incarnation() != entry.incarnation {
                // Entries of an earlier log of the same name: void.
                return Ok(());
            }
            match entry.kind {
                EntryKind::Append => {
                    replayed += log.replay_entry(entry.base_offset, &entry.batches)?
                }
                EntryKind::Remove => {
                    registry.logs.write().remove(&id);
                    by_name.remove(&name);
                    adopted.remove(&name);
                    delete_log_dir(&shared, &log)?;
                }
            }
            Ok(())
        })?;
        for log in registry.all() {
            log.finish_recovery(adopted.get(&log.id().to_string()).copied())?;
        }

        let store = Arc::new(Store {
            _dir_lock: dir_lock,
            shared,
            registry,
            threads: Mutex::new(Vec::new()),
        });
        let recovered_dirty = store.registry.all().iter().any(|log| log.is_dirty());
        if recovered_dirty || journal_end > journal_start || checkpoint.is_none() {
            checkpoint_now(&store.shared, &store.registry, false)?;
        }
        tracing::info!(
            data_dir = %data_dir.display(),
            logs = store.registry.logs.read().len(),
            clean,
            replayed_batches = replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "storage opened"
        );
        store.start_threads()?;
        Ok(store)
    }

    fn start_threads(&self) -> Result<()> {
        let mut threads = self.threads.lock();
        let shared = self.shared.clone();
        let committer = std::thread::Builder::new()
            .name("ferry-group-commit".to_string())
            .spawn(move || {
                let notes = shared.clone();
                shared
                    .journal
                    .run_group_commit(|path, len| notes.note_synced(path, len));
            })
            .at(&self.shared.config.data_dir)?;
        threads.push(committer);
        let shared = self.shared.clone();
        let registry = self.registry.clone();
        let flusher = std::thread::Builder::new()
            .name("ferry-flusher".to_string())
            .spawn(move || flusher_loop(&shared, &registry))
            .at(&self.shared.config.data_dir)?;
        threads.push(flusher);
        Ok(())
    }

    /// Ids of all logs present in the data directory.
    pub fn log_ids(&self) -> Vec<LogId> {
        self.registry.logs.read().keys().cloned().collect()
    }

    /// Opens the log `id`, creating it if absent, with `config`.
    pub fn open_log(&self, id: &LogId, config: LogConfig) -> Result<Arc<PartitionLog>> {
        if self.shared.is_shut_down() {
            return Err(StorageError::ShutDown);
        }
        id.validate()?;
        if let Some(log) = self.registry.logs.read().get(id).cloned() {
            log.set_config(config)?;
            return Ok(log);
        }
        let mut logs = self.registry.logs.write();
        if let Some(log) = logs.get(id).cloned() {
            drop(logs);
            log.set_config(config)?;
            return Ok(log);
        }
        let log = Arc::new(PartitionLog::create(
            self.shared.clone(),
            id.clone(),
            config,
            None,
        )?);
        logs.insert(id.clone(), log.clone());
        Ok(log)
    }

    /// The log `id` if it exists.
    pub fn log(&self, id: &LogId) -> Option<Arc<PartitionLog>> {
        self.registry.logs.read().get(id).cloned()
    }

    /// Closes and deletes the log `id` and all its files.
    pub fn remove_log(&self, id: &LogId) -> Result<()> {
        let log = self
            .registry
            .logs
            .write()
            .remove(id)
            .ok_or_else(|| StorageError::UnknownLog(id.to_string()))?;
        log.mark_removed();
        // Journal the removal before deleting anything, so that replaying older entries
        // of this log after a crash cannot bring it back.
        let position = self.shared.journal.append(
            EntryKind::Remove,
            &id.topic,
            id.partition,
            log.incarnation(),
            0,
            &[],
        )?;
        self.shared.journal.wait_durable(position)?;
        delete_log_dir(&self.shared, &log)
    }

    /// Installs the decompressor used inside compressed batches (exact timestamp lookups,
    /// [`PartitionLog::decode_records`](crate::PartitionLog::decode_records)).
    pub fn set_decompressor(&self, decompressor: Decompressor) {
        *self.shared.decompressor.write() = Some(decompressor);
    }

    /// Flushes every dirty log and writes a checkpoint now (also done periodically).
    pub fn checkpoint(&self) -> Result<()> {
        if self.shared.is_shut_down() {
            return Err(StorageError::ShutDown);
        }
        checkpoint_now(&self.shared, &self.registry, false).map(|_| ())
    }

    /// Flushes every log, writes a clean-shutdown checkpoint and stops background threads.
    /// Further appends fail with `ShutDown`.
    pub fn shutdown(&self) -> Result<()> {
        if self.shared.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Appends check the flag under their log's lock: after this, none is in flight.
        for log in self.registry.all() {
            log.quiesce();
        }
        self.stop_flusher();
        let result = checkpoint_now(&self.shared, &self.registry, true);
        self.stop_threads();
        if let Err(e) = &result {
            tracing::error!("clean shutdown failed, the next start recovers as after a crash: {e}");
        } else {
            tracing::info!(data_dir = %self.shared.config.data_dir.display(), "storage shut down cleanly");
        }
        result.map(|_| ())
    }

    fn stop_flusher(&self) {
        self.shared.flusher.lock().stop = true;
        self.shared.flusher_wake.notify_all();
    }

    fn stop_threads(&self) {
        self.stop_flusher();
        self.shared.journal.stop();
        for handle in self.threads.lock().drain(..) {
            if handle.join().is_err() {
                tracing::error!("a storage thread panicked");
            }
        }
    }

    /// Test seam: bytes of segment data walked by recovery in `open`.
    #[cfg(test)]
    pub(crate) fn recovery_scanned_bytes(&self) -> u64 {
        self.shared.recovery_scanned_bytes.load(Ordering::Relaxed)
    }

    /// Test seam: the store's cache of open segment files.
    #[cfg(test)]
    pub(crate) fn files(&self) -> &FileCache {
        &self.shared.files
    }

    /// Test seam: stops the background threads without flushing or checkpointing, as if
    /// the process died, and returns for every file the length known to be synced.
    #[cfg(test)]
    pub(crate) fn simulate_crash(&self) -> HashMap<PathBuf, u64> {
        self.shared.shut_down.store(true, Ordering::Release);
        for log in self.registry.all() {
            log.quiesce();
        }
        self.stop_threads();
        self.shared.synced.lock().clone()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Without `shutdown` the next open recovers as after a crash, which is safe.
        self.shared.shut_down.store(true, Ordering::Release);
        self.stop_threads();
    }
}

/// Deletes a removed log's directory: renamed first (durably), so that a crash
/// mid-delete leaves a directory the next open finishes deleting rather than half a log.
fn delete_log_dir(shared: &StoreShared, log: &PartitionLog) -> Result<()> {
    for path in log.closed_paths() {
        shared.files.evict(&path);
    }
    let dir = log.dir().to_path_buf();
    shared.files.evict_dir(&dir);
    let doomed = shared.config.data_dir.join(format!(
        "{}.{}{DELETED_SUFFIX}",
        log.id(),
        log.incarnation()
    ));
    std::fs::rename(&dir, &doomed).at(&dir)?;
    fsync_dir(&shared.config.data_dir)?;
    std::fs::remove_dir_all(&doomed).at(&doomed)
}

/// The flusher thread: flushes `Async` logs whose interval or size is due, and writes a
/// checkpoint every `checkpoint_interval_ms`.
fn flusher_loop(shared: &StoreShared, registry: &Registry) {
    let interval = shared.config.checkpoint_interval_ms.max(1) as i64;
    let mut next_checkpoint = now_ms() + interval;
    // A busy journal also triggers a checkpoint, bounding its size and the replay time.
    let journal_bytes_max = shared
        .config
        .journal_segment_bytes_max
        .saturating_mul(JOURNAL_SEGMENTS_PER_CHECKPOINT);
    let mut checkpointed_position = shared.journal.written();
    loop {
        {
            let mut signal = shared.flusher.lock();
            if !signal.wake && !signal.stop {
                shared
                    .flusher_wake
                    .wait_for(&mut signal, Duration::from_millis(FLUSHER_TICK_MS));
            }
            if signal.stop {
                return;
            }
            signal.wake = false;
        }
        let now = now_ms();
        let due: Vec<Arc<PartitionLog>> = registry
            .logs
            .read()
            .values()
            .filter(|log| log.needs_async_flush(now))
            .cloned()
            .collect();
        if due.len() >= shared.config.group_flush_min_logs {
            // The filesystem syncs cover every log: flush all the dirty ones with them, so
            // that they are not due again one by one in the next ticks.
            let dirty: Vec<Arc<PartitionLog>> = registry
                .all()
                .into_iter()
                .filter(|log| log.is_dirty())
                .collect();
            if let Err(e) = PartitionLog::flush_group(shared, &dirty, GROUP_FLUSH_INDEX_MIN_ENTRIES)
            {
                tracing::warn!("flush of {} logs failed: {e}", dirty.len());
            }
        } else {
            for log in due {
                if let Err(e) = log.flush() {
                    tracing::warn!(log = %log.id(), "flush failed: {e}");
                }
            }
        }
        // Between flushes, keep the disk writing what has accumulated (see
        // `PartitionLog::write_back_early`).
        let writing: Vec<Arc<PartitionLog>> = registry
            .logs
            .read()
            .values()
            .filter(|log| log.may_write_back_early())
            .cloned()
            .collect();
        for log in writing {
            if let Err(e) = log.write_back_early() {
                tracing::warn!(log = %log.id(), "starting writeback failed: {e}");
            }
        }
        let journal_full = shared
            .journal
            .written()
            .saturating_sub(checkpointed_position)
            >= journal_bytes_max;
        if now >= next_checkpoint || journal_full {
            match checkpoint_now(shared, registry, false) {
                Ok(position) => checkpointed_position = position,
                Err(e) => tracing::error!("checkpoint failed: {e}"),
            }
            next_checkpoint = now_ms() + interval;
        }
    }
}

/// Flushes every log and atomically writes the checkpoint, then deletes journal files
/// that it makes unnecessary.
/// Returns the journal position it recorded.
fn checkpoint_now(shared: &StoreShared, registry: &Registry, clean: bool) -> Result<u64> {
    let _checkpoint = shared.checkpoint_lock.lock();
    // Read the journal position first: each entry before it was written to its log
    // before it was journaled, so the flushes below cover it.
    let journal_position = shared.journal.written();
    let all = registry.all();
    // An append that journaled before `journal_position` may still be publishing: let it
    // finish so that the flush below sees (and covers) it.
    for log in &all {
        log.quiesce();
    }
    // A clean shutdown also writes the index entries that group flushes left for later,
    // so that the restart walks no log.
    let dirty: Vec<bool> = all
        .iter()
        .map(|log| log.is_dirty() || (clean && log.index_pending()))
        .collect();
    let to_flush: Vec<Arc<PartitionLog>> = all
        .iter()
        .zip(&dirty)
        .filter(|(_, dirty)| **dirty)
        .map(|(log, _)| log.clone())
        .collect();
    let mut flushed = if to_flush.len() >= shared.config.group_flush_min_logs {
        let index_min_entries = if clean {
            0
        } else {
            GROUP_FLUSH_INDEX_MIN_ENTRIES
        };
        PartitionLog::flush_group(shared, &to_flush, index_min_entries)?
    } else {
        to_flush
            .iter()
            .map(|log| log.flush_inner())
            .collect::<Result<Vec<_>>>()?
    }
    .into_iter();
    let mut logs = Vec::new();
    for (log, dirty) in all.iter().zip(dirty) {
        let point = dirty
            .then(|| flushed.next())
            .flatten()
            .unwrap_or_else(|| log.recovery_point());
        logs.push(LogCheckpoint {
            name: log.id().to_string(),
            incarnation: log.incarnation(),
            point,
        });
    }
    let checkpoint = Checkpoint {
        version: CHECKPOINT_VERSION,
        clean_shutdown: clean,
        journal_position,
        logs,
    };
    let bytes = serde_json::to_vec(&checkpoint).unwrap_or_default();
    let path = shared.config.data_dir.join(CHECKPOINT_FILE);
    write_atomic(&path, &bytes)?;
    shared.note_synced(&path, bytes.len() as u64);
    shared.journal.delete_before(journal_position)?;
    Ok(journal_position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ids_parse_and_validate() {
        assert_eq!(
            LogId::from_dir_name("a-b-3"),
            Some(LogId {
                topic: "a-b".to_string(),
                partition: 3
            })
        );
        assert_eq!(LogId::from_dir_name("journal"), None);
        assert_eq!(LogId::from_dir_name("x-"), None);
        assert!(LogId {
            topic: "../x".to_string(),
            partition: 0
        }
        .validate()
        .is_err());
        assert!(LogId {
            topic: "".to_string(),
            partition: 0
        }
        .validate()
        .is_err());
        assert!(LogId {
            topic: "__consumer_offsets".to_string(),
            partition: 0
        }
        .validate()
        .is_ok());
    }
}
