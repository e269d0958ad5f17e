//! One partition's log: segments, sparse indexes, retention, reads.
//!
//! A log is the directory `<data_dir>/<topic>-<partition>/` holding `meta.json` (the log's
//! incarnation, its log start offset and its leader-epoch history) and segments (see
//! [`crate::segment`]). Only the newest segment, the *active* one, is written and kept
//! open; its sparse indexes live in memory and are written to its index files on flush.
//! Older segments are immutable: their files are opened on demand through the store's
//! bounded file cache and their indexes are binary-searched on disk, so a log costs a few
//! hundred bytes plus its active index, whatever its size.
//!
//! Concurrency: appends (and rolls, retention, truncation) are serialized by one mutex per
//! log; the segment list, sizes and offsets sit behind a read-write lock that is held only
//! for in-memory updates. An append writes its bytes first and publishes the new length
//! afterwards, so a reader never sees a partial batch and never waits for disk I/O of an
//! append.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::batch::{
    decode_record_section, decode_records, record_offsets_and_timestamps, records_section,
    rewritten_prefix, validate_batch, verify_batch, BatchHeader, Record, BATCH_BYTES_HARD_MAX,
    BATCH_HEADER_BYTES, REWRITTEN_PREFIX_BYTES,
};
use crate::chunk::{Chunk, FileRegion};
use crate::fsutil::{
    fsync_dir, now_ms, read_exact_at_new, remove_file_if_exists, start_writeback,
    write_all_vectored_at, write_atomic, write_tmp, IoContext,
};
use crate::journal::{DurableMark, EntryKind};
use crate::segment::{
    decode_index, decode_time_index, encode_index, encode_time_index, file_index_lookup,
    file_time_last, file_time_lookup, find_batch, parse_segment_name, scan_segment, FindBatch,
    IndexEntry, ScanOutcome, SegmentIndexes, SegmentPaths, SegmentReader, TimeEntry,
    INDEX_ENTRY_BYTES, SEGMENT_BYTES_HARD_MAX, TIME_ENTRY_BYTES,
};
use crate::store::{LogId, StoreShared};
use crate::{Result, StorageError};

/// Per-log metadata file.
const META_FILE: &str = "meta.json";
/// Version of `meta.json`.
const META_VERSION: u32 = 1;
/// Writeback ahead of flushes stops at a multiple of this behind the log's end: no page
/// cache folio (at most 2 MiB on x86-64, and on arm64 with 4 KiB pages) that an append may
/// still write into is ever under writeback, so appends do not wait for a folio the kernel
/// is writing. (Where folios can be larger, an append may wait; nothing is wrong.)
pub(crate) const WRITEBACK_ALIGN_BYTES: u64 = 2 << 20;
/// How much of the active segment has to be waiting before writeback is started early.
pub(crate) const WRITEBACK_MIN_BYTES: u64 = 2 << 20;
/// How many times a read retries after rebuilding an index that pointed to the wrong place.
const READ_ATTEMPTS_MAX: usize = 3;
/// Largest buffer one read allocates (beyond the first whole batch, which is always
/// returned): a fetch asking for more gets this much.
pub const READ_BYTES_MAX: u32 = 64 << 20;

/// When appended data reaches stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Acknowledge after the append reaches the page cache; flush every `interval_ms` or
    /// every `bytes` appended, whichever comes first.
    Async {
        /// Longest time appended data stays unflushed.
        interval_ms: u64,
        /// Most bytes appended before a flush is due.
        bytes: u64,
    },
    /// Acknowledge only after the append is fsynced (group commit through the journal).
    Sync,
}

/// Per-log settings; topic configs map onto these.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// Roll to a new segment once the active one reaches this size.
    pub segment_bytes_max: u64,
    /// Roll to a new segment once the active one is this old (by first append time).
    pub segment_ms_max: u64,
    /// Add a sparse index entry every this many bytes.
    pub index_interval_bytes: u32,
    /// Delete whole segments whose newest record is older than this; `None` keeps forever.
    pub retention_ms: Option<i64>,
    /// Delete oldest whole segments while the log is larger than this; `None` = no limit.
    pub retention_bytes: Option<u64>,
    /// When appends become durable.
    pub flush: FlushPolicy,
    /// Largest batch accepted by `append`.
    pub batch_bytes_max: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms_max: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushPolicy::Async {
                interval_ms: 1000,
                bytes: 64 << 20,
            },
            batch_bytes_max: 1 << 20,
        }
    }
}

/// What an append did.
#[derive(Debug)]
pub struct AppendResult {
    /// Offset of the first appended record.
    pub base_offset: i64,
    /// Offset of the last appended record.
    pub last_offset: i64,
    /// Largest record timestamp in the appended batches.
    pub max_timestamp: i64,
    /// Resolves when the appended bytes are durable (immediately for `Async` logs).
    pub durable: Durability,
}

/// Resolves once an append is on stable storage.
#[derive(Debug)]
pub struct Durability {
    /// The journal's durable-position channel and the position this append needs; `None`
    /// when there is nothing to wait for.
    pending: Option<(watch::Receiver<DurableMark>, u64)>,
}

impl Durability {
    /// Nothing to wait for.
    pub(crate) fn immediate() -> Durability {
        Durability { pending: None }
    }

    /// Whether [`Durability::wait`] would return at once (an `Async` append).
    pub fn is_immediate(&self) -> bool {
        self.pending.is_none()
    }

    /// Waits until the append is durable, or fails if the journal could not be synced.
    pub async fn wait(self) -> Result<()> {
        let Some((mut rx, target)) = self.pending else {
            return Ok(());
        };
        let mark = rx
            .wait_for(|mark| mark.position >= target || mark.failed.is_some())
            .await
            .map_err(|_| StorageError::ShutDown)?
            .clone();
        match mark.failed {
            Some(why) if mark.position < target => {
                Err(StorageError::JournalFailed(why.to_string()))
            }
            _ => Ok(()),
        }
    }
}

/// Whole batches read from a log: in memory ([`Bytes`]) or, from
/// [`PartitionLog::read_chunk`], possibly as a region of a segment file ([`Chunk`]).
#[derive(Clone, Debug, Default)]
pub struct ReadResult<R = Bytes> {
    /// Whole batches, starting with the batch that contains the requested offset.
    pub records: R,
    /// Offset after the last record in `records` (where the next read continues).
    pub next_offset: i64,
}

impl<R: Default> ReadResult<R> {
    /// No records; the next read continues at `offset`.
    fn nothing(offset: i64) -> ReadResult<R> {
        ReadResult {
            records: R::default(),
            next_offset: offset,
        }
    }
}

/// How a read hands back what it found.
#[derive(Clone, Copy, Debug)]
enum Output {
    /// Read into memory.
    Memory,
    /// As a region of the segment file, unless it is shorter than this many bytes.
    Region { min_bytes: usize },
}

/// Where a log's flushed data ends: everything before it was fsynced, with the active
/// index prefix that was written by then (count and CRC, so recovery can trust it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecoveryPoint {
    pub log_end: i64,
    pub segment_base: i64,
    pub position: u64,
    pub index_entries: u64,
    pub index_crc: u32,
    pub time_entries: u64,
    pub time_crc: u32,
}

impl RecoveryPoint {
    /// The start of a segment: nothing known to be flushed in it.
    fn segment_start(base: i64) -> RecoveryPoint {
        RecoveryPoint {
            log_end: base,
            segment_base: base,
            position: 0,
            index_entries: 0,
            index_crc: 0,
            time_entries: 0,
            time_crc: 0,
        }
    }
}

/// The per-log metadata file.
#[derive(Debug, Serialize, Deserialize)]
struct LogMeta {
    version: u32,
    /// Tells this log apart from an earlier log of the same name (journal entries of a
    /// removed log must not be replayed into its successor).
    incarnation: u64,
    log_start_offset: i64,
    leader_epochs: Vec<(i32, i64)>,
}

/// A segment that is no longer written.
#[derive(Debug)]
pub(crate) struct ClosedSegment {
    base: i64,
    size: u64,
    paths: SegmentPaths,
    /// Largest timestamp and the base offset of its batch, read from the time index on
    /// first use.
    max_timestamp: OnceLock<Option<(i64, i64)>>,
    /// Serializes index rebuilds of this segment.
    rebuild: Mutex<()>,
}

/// The segment being written.
#[derive(Debug)]
struct ActiveSegment {
    base: i64,
    paths: SegmentPaths,
    file: Arc<File>,
    /// Published length: readers read up to here.
    size: u64,
    /// When the first batch was appended (drives time-based rolling).
    created_ms: Option<i64>,
    indexes: SegmentIndexes,
    /// Entries already written to the index files, and the CRC32C of those bytes.
    index_persisted: usize,
    index_crc: u32,
    time_persisted: usize,
    time_crc: u32,
}

/// The mutable state of a log.
#[derive(Debug)]
struct LogState {
    log_start: i64,
    log_end: i64,
    closed: Vec<Arc<ClosedSegment>>,
    active: ActiveSegment,
    /// (epoch, start offset), ascending.
    epochs: Vec<(i32, i64)>,
    epochs_dirty: bool,
    size_bytes: u64,
    recovery: RecoveryPoint,
    /// Closed segments whose files have not been fsynced since they were closed.
    unsynced_closed: Vec<Arc<ClosedSegment>>,
    /// Bumped when a file is created or deleted in the log directory.
    dir_generation: u64,
    dir_synced_generation: u64,
    /// A persisted log start offset that recovery found past the log end (see
    /// [`PartitionLog::finish_recovery`]).
    pending_log_start: Option<i64>,
}

impl LogState {
    /// Offset below which records are committed: the log end on a single node. The one
    /// place that says so, for when replication makes them differ.
    fn high_watermark(&self) -> i64 {
        self.log_end
    }
}

/// A closed segment's log file and an index hint `(offset, position)` into it.
type ClosedHint = (Arc<File>, (i64, u64));

/// Which segment a read goes to.
enum Located {
    Active {
        file: Arc<File>,
        size: u64,
        /// The log end: the offset after the segment's last batch.
        end: i64,
        hint: (i64, u64),
    },
    Closed {
        seg: Arc<ClosedSegment>,
        next_base: i64,
    },
}

/// Outcome of reading one segment.
enum SegmentRead {
    Found(ReadResult<Chunk>),
    NotInSegment,
    IndexMismatch,
}

/// The range of the active segment `(base, size)` to start writing back early, given how
/// far earlier calls got (`(segment base, position)`): from there (or from the start of a
/// segment not seen before, or after a truncation) to the last [`WRITEBACK_ALIGN_BYTES`]
/// boundary at or before the end, if that is at least [`WRITEBACK_MIN_BYTES`] further.
pub(crate) fn early_writeback_range(done: (i64, u64), base: i64, size: u64) -> Option<(u64, u64)> {
    let end = size - size % WRITEBACK_ALIGN_BYTES;
    let from = match done {
        (done_base, position) if done_base == base && position <= end => position,
        _ => 0,
    };
    (end >= from + WRITEBACK_MIN_BYTES).then_some((from, end))
}

/// One partition's append-only log.
pub struct PartitionLog {
    id: LogId,
    dir: PathBuf,
    /// Tells this log apart from earlier logs of the same name.
    incarnation: AtomicU64,
    /// False while recovery does not know the incarnation (its `meta.json` was lost).
    incarnation_known: AtomicBool,
    store: Arc<StoreShared>,
    config: RwLock<LogConfig>,
    /// Serializes appends, rolls, retention and truncation.
    append_lock: Mutex<()>,
    /// Serializes flushes.
    flush_lock: Mutex<()>,
    /// Serializes writes of `meta.json`.
    meta_lock: Mutex<()>,
    state: RwLock<LogState>,
    removed: AtomicBool,
    /// Whether the directory, `meta.json` and first segment are known to be on disk.
    created_durable: AtomicBool,
    /// Bytes appended since the last flush started.
    unflushed_bytes: AtomicU64,
    /// When unflushed data first appeared (`i64::MAX` when there is none).
    dirty_since_ms: AtomicI64,
    /// `(segment base, position)`: how far [`PartitionLog::write_back_early`] has started
    /// writeback of the active segment.
    written_back: Mutex<(i64, u64)>,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A new incarnation number: unique per log name in practice (time and a counter).
fn new_incarnation() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

fn read_meta(dir: &Path) -> Option<LogMeta> {
    let bytes = std::fs::read(dir.join(META_FILE)).ok()?;
    serde_json::from_slice::<LogMeta>(&bytes)
        .ok()
        .filter(|m| m.version == META_VERSION)
}

/// Opens a segment file for reading and appending.
fn open_rw(path: &Path, create_new: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create_new)
        .open(path)
        .at(path)
}

/// Writes both index files of a segment in full; returns their CRCs.
fn write_index_files(paths: &SegmentPaths, indexes: &SegmentIndexes) -> Result<(u32, u32)> {
    let index = encode_index(&indexes.index);
    let time = encode_time_index(&indexes.time);
    std::fs::write(&paths.index, &index).at(&paths.index)?;
    std::fs::write(&paths.time_index, &time).at(&paths.time_index)?;
    Ok((crc32c::crc32c(&index), crc32c::crc32c(&time)))
}

/// The earliest append time of a segment: its first batch's max timestamp, capped at now.
fn first_batch_time(file: &File, size: u64) -> Option<i64> {
    if size < BATCH_HEADER_BYTES as u64 {
        return None;
    }
    let mut header = [0u8; BATCH_HEADER_BYTES];
    file.read_exact_at(&mut header, 0).ok()?;
    let ts = BatchHeader::parse(&header).ok()?.max_timestamp;
    Some(ts.clamp(0, now_ms()))
}

/// Adds `epoch` starting at `offset` to an epoch history if it is newer than the last.
fn note_epoch(epochs: &mut Vec<(i32, i64)>, epoch: i32, offset: i64) -> bool {
    // Epoch -1 means "no epoch" (a producer's placeholder); it starts nothing.
    if epoch >= 0 && epochs.last().is_none_or(|(last, _)| epoch > *last) {
        epochs.push((epoch, offset));
        return true;
    }
    false
}

/// The first record of a batch at or after `timestamp_ms` and `min_offset`:
/// `(offset, timestamp)`. Compressed batches need the store's decompressor for an exact
/// answer; without one the batch's base offset and max timestamp stand in.
fn record_at_or_after(
    store: &StoreShared,
    header: &BatchHeader,
    batch: &[u8],
    timestamp_ms: i64,
    min_offset: i64,
) -> Option<(i64, i64)> {
    let shallow = (header.base_offset.max(min_offset), header.max_timestamp);
    if header.is_log_append_time() {
        return Some(shallow);
    }
    let records = match header.compression() {
        0 => record_offsets_and_timestamps(records_section(batch), header.record_count).ok(),
        codec => store
            .decompress(codec, records_section(batch))
            .and_then(|plain| record_offsets_and_timestamps(&plain, header.record_count).ok()),
    };
    let Some(records) = records else {
        return Some(shallow);
    };
    records
        .into_iter()
        .map(|(offset_delta, ts_delta)| {
            (
                header.base_offset + offset_delta as i64,
                header.base_timestamp + ts_delta,
            )
        })
        .find(|(offset, ts)| *ts >= timestamp_ms && *offset >= min_offset)
}

impl PartitionLog {
    /// Creates a new, empty log directory for `id`.
    ///
    /// Nothing is fsynced: a `Sync` log is re-created from its journal entries if its
    /// directory does not survive a crash, and an `Async` log's creation is made durable by
    /// its first flush. `incarnation` is given when journal replay re-creates a log.
    pub(crate) fn create(
        store: Arc<StoreShared>,
        id: LogId,
        config: LogConfig,
        incarnation: Option<u64>,
    ) -> Result<PartitionLog> {
        let dir = store.log_dir(&id);
        std::fs::create_dir(&dir).at(&dir)?;
        store.note_log_dir_created();
        let incarnation = incarnation.unwrap_or_else(new_incarnation);
        let meta = LogMeta {
            version: META_VERSION,
            incarnation,
            log_start_offset: 0,
            leader_epochs: Vec::new(),
        };
        let meta_path = dir.join(META_FILE);
        std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap_or_default()).at(&meta_path)?;
        let paths = SegmentPaths::new(&dir, 0);
        let file = open_rw(&paths.log, true)?;
        let interval = config.index_interval_bytes as u64;
        let state = LogState {
            log_start: 0,
            log_end: 0,
            closed: Vec::new(),
            active: ActiveSegment::new(
                0,
                paths,
                Arc::new(file),
                0,
                None,
                SegmentIndexes::new(0, interval),
            ),
            epochs: Vec::new(),
            epochs_dirty: false,
            size_bytes: 0,
            recovery: RecoveryPoint::segment_start(0),
            unsynced_closed: Vec::new(),
            dir_generation: 1,
            dir_synced_generation: 0,
            pending_log_start: None,
        };
        Ok(PartitionLog::assemble(
            store,
            id,
            dir,
            (incarnation, true),
            config,
            state,
            false,
        ))
    }

    fn assemble(
        store: Arc<StoreShared>,
        id: LogId,
        dir: PathBuf,
        (incarnation, incarnation_known): (u64, bool),
        config: LogConfig,
        state: LogState,
        created_durable: bool,
    ) -> PartitionLog {
        PartitionLog {
            id,
            dir,
            incarnation: AtomicU64::new(incarnation),
            incarnation_known: AtomicBool::new(incarnation_known),
            store,
            config: RwLock::new(config),
            append_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
            meta_lock: Mutex::new(()),
            state: RwLock::new(state),
            removed: AtomicBool::new(false),
            created_durable: AtomicBool::new(created_durable),
            unflushed_bytes: AtomicU64::new(0),
            dirty_since_ms: AtomicI64::new(i64::MAX),
            written_back: Mutex::new((-1, 0)),
        }
    }

    /// The log's id.
    pub fn id(&self) -> &LogId {
        &self.id
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// Whether the incarnation came from `meta.json` (not guessed after losing it).
    pub(crate) fn incarnation_known(&self) -> bool {
        self.incarnation_known.load(Ordering::Acquire)
    }

    /// Completes recovery once the journal has been replayed: settles the incarnation of
    /// a log whose `meta.json` was lost (the one its journal entries named, if any, else
    /// the provisional one), and applies a persisted log start offset. If that offset is
    /// past the recovered end (a crash lost the tail below it), the log starts over, empty,
    /// at that offset, as Kafka does, rather than hand out deleted offsets again.
    pub(crate) fn finish_recovery(&self, incarnation: Option<u64>) -> Result<()> {
        let _append = self.append_lock.lock();
        if !self.incarnation_known() {
            if let Some(incarnation) = incarnation {
                self.incarnation.store(incarnation, Ordering::Release);
            }
            self.write_meta()?;
            self.incarnation_known.store(true, Ordering::Release);
        }
        let Some(start) = self.state.write().pending_log_start.take() else {
            return Ok(());
        };
        let (log_end, doomed) = {
            let st = self.state.read();
            let doomed: Vec<SegmentPaths> = st
                .closed
                .iter()
                .map(|s| s.paths.clone())
                .chain([st.active.paths.clone()])
                .collect();
            (st.log_end, doomed)
        };
        if start <= log_end {
            let mut st = self.state.write();
            st.log_start = st.log_start.max(start);
            return Ok(());
        }
        tracing::warn!(log = %self.id, log_start = start, log_end, "log start offset is past the recovered end; starting the log at its start offset");
        for paths in &doomed {
            for path in [&paths.log, &paths.index, &paths.time_index] {
                self.store.files().evict(path);
                remove_file_if_exists(path)?;
            }
        }
        let paths = SegmentPaths::new(&self.dir, start);
        let file = open_rw(&paths.log, true)?;
        let interval = self.config.read().index_interval_bytes as u64;
        let mut st = self.state.write();
        st.closed.clear();
        st.unsynced_closed.clear();
        st.active = ActiveSegment::new(
            start,
            paths,
            Arc::new(file),
            0,
            None,
            SegmentIndexes::new(start, interval),
        );
        st.log_start = start;
        st.log_end = start;
        st.size_bytes = 0;
        st.recovery = RecoveryPoint::segment_start(start);
        st.epochs_dirty = true;
        st.dir_generation += 1;
        drop(st);
        self.unflushed_bytes.fetch_max(1, Ordering::AcqRel);
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        if self.store.is_shut_down() {
            return Err(StorageError::ShutDown);
        }
        if self.removed.load(Ordering::Acquire) {
            return Err(StorageError::UnknownLog(self.id.to_string()));
        }
        Ok(())
    }

    /// Appends one or more RecordBatch v2 batches (`records` as received from a producer).
    /// Validates each batch (magic 2, lengths, CRC32C), rewrites base offsets (contiguous
    /// from the log end) and the partition leader epoch, and writes them as one I/O.
    /// `now_ms` is the log append time. Fails without writing anything if any batch is
    /// invalid or larger than `batch_bytes_max`.
    pub fn append(&self, records: Bytes, leader_epoch: i32, now_ms: i64) -> Result<AppendResult> {
        let config = self.config();
        let batch_bytes_max = (config.batch_bytes_max as usize).min(BATCH_BYTES_HARD_MAX);
        if records.is_empty() {
            return Err(StorageError::CorruptBatch(
                "append of zero batches".to_string(),
            ));
        }
        // Validate everything (CRC included) before taking the lock or writing a byte.
        let mut layout = Vec::new();
        let mut pos = 0;
        while pos < records.len() {
            let rest = &records[pos..];
            let header = BatchHeader::parse(rest)?;
            let total = header.total_bytes();
            if total > batch_bytes_max {
                return Err(StorageError::BatchTooLarge {
                    size: total,
                    max: batch_bytes_max,
                });
            }
            let batch = rest.get(..total).ok_or_else(|| {
                StorageError::CorruptBatch(format!(
                    "partial batch: needs {total} bytes, {} present",
                    rest.len()
                ))
            })?;
            layout.push((pos, validate_batch(batch, batch_bytes_max)?));
            pos += total;
        }
        let _append = self.append_lock.lock();
        self.check_open()?;
        if let Some(&(latest, _)) = self.state.read().epochs.last() {
            if leader_epoch < latest {
                return Err(StorageError::StaleLeaderEpoch {
                    epoch: leader_epoch,
                    latest,
                });
            }
        }
        self.write_batches(&records, &mut layout, Some(leader_epoch), now_ms, &config)
    }

    /// Writes validated batches at the log end. With `leader_epoch` the batches get fresh
    /// offsets and that epoch; without (journal replay) they must already start at the log
    /// end. The caller holds the append lock.
    ///
    /// The producer's bytes are never copied: the rewritten header prefixes and the rest
    /// of each batch go to the file (and the journal) as separate pieces of one write.
    fn write_batches(
        &self,
        buf: &[u8],
        layout: &mut [(usize, BatchHeader)],
        leader_epoch: Option<i32>,
        now_ms: i64,
        config: &LogConfig,
    ) -> Result<AppendResult> {
        let total = buf.len() as u64;
        let offsets: i64 = layout
            .iter()
            .map(|(_, h)| h.last_offset_delta as i64 + 1)
            .sum();
        let segment_bytes_max = config.segment_bytes_max.clamp(1, SEGMENT_BYTES_HARD_MAX);
        let segment_ms_max = i64::try_from(config.segment_ms_max).unwrap_or(i64::MAX);
        let needs_roll = {
            let st = self.state.read();
            let active = &st.active;
            active.size > 0
                && (active.size + total > segment_bytes_max
                    || now_ms.saturating_sub(active.created_ms.unwrap_or(now_ms)) >= segment_ms_max
                    || st.log_end + offsets - active.base > u32::MAX as i64)
        };
        if needs_roll {
            self.roll(config)?;
        }
        let (file, position, segment_base, log_end) = {
            let st = self.state.read();
            (
                st.active.file.clone(),
                st.active.size,
                st.active.base,
                st.log_end,
            )
        };
        if position + total > SEGMENT_BYTES_HARD_MAX
            || log_end + offsets - segment_base > u32::MAX as i64
        {
            return Err(StorageError::BatchTooLarge {
                size: total as usize,
                max: SEGMENT_BYTES_HARD_MAX as usize,
            });
        }
        let mut next = log_end;
        let mut max_timestamp = i64::MIN;
        let mut prefixes = Vec::with_capacity(if leader_epoch.is_some() {
            layout.len()
        } else {
            0
        });
        for (pos, header) in layout.iter_mut() {
            match leader_epoch {
                Some(epoch) => {
                    prefixes.push(rewritten_prefix(&buf[*pos..], next, epoch));
                    header.base_offset = next;
                    header.partition_leader_epoch = epoch;
                }
                None if header.base_offset != next => {
                    return Err(StorageError::CorruptBatch(format!(
                        "batch at offset {} does not continue the log at {next}",
                        header.base_offset
                    )));
                }
                None => {}
            }
            next = header.last_offset() + 1;
            max_timestamp = max_timestamp.max(header.max_timestamp);
        }
        // Invariant: offsets are contiguous from the old log end.
        assert_eq!(
            next,
            log_end + offsets,
            "offsets of an append must be contiguous"
        );
        // The bytes to write, in order: per batch its rewritten prefix and the rest.
        let pieces: Vec<&[u8]> = if prefixes.is_empty() {
            vec![buf]
        } else {
            layout
                .iter()
                .zip(&prefixes)
                .flat_map(|((pos, header), prefix)| {
                    [
                        &prefix[..],
                        &buf[pos + REWRITTEN_PREFIX_BYTES..pos + header.total_bytes()],
                    ]
                })
                .collect()
        };

        if let Err(source) = write_all_vectored_at(&file, &pieces, position) {
            let _ = file.set_len(position);
            return Err(StorageError::Io {
                path: self.active_path(),
                source,
            });
        }
        let durable = if config.flush == FlushPolicy::Sync && leader_epoch.is_some() {
            match self.store.journal().append(
                EntryKind::Append,
                &self.id.topic,
                self.id.partition,
                self.incarnation(),
                log_end,
                &pieces,
            ) {
                Ok(target) => Durability {
                    pending: Some((self.store.journal().subscribe(), target)),
                },
                Err(e) => {
                    // Not acknowledged and not in the journal: take it back out of the log.
                    let _ = file.set_len(position);
                    return Err(e);
                }
            }
        } else {
            Durability::immediate()
        };
        {
            let mut st = self.state.write();
            for (pos, header) in layout.iter() {
                st.active.indexes.observe(
                    header,
                    position + *pos as u64,
                    header.total_bytes() as u64,
                );
                if note_epoch(
                    &mut st.epochs,
                    header.partition_leader_epoch,
                    header.base_offset,
                ) {
                    st.epochs_dirty = true;
                }
            }
            st.active.size += total;
            st.active.created_ms.get_or_insert(now_ms);
            st.size_bytes += total;
            st.log_end = next;
        }
        self.unflushed_bytes.fetch_add(total, Ordering::AcqRel);
        // Flush deadlines run on the system clock, like the flusher that checks them.
        let _ = self.dirty_since_ms.compare_exchange(
            i64::MAX,
            crate::fsutil::now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if let FlushPolicy::Async { bytes, .. } = config.flush {
            if self.unflushed_bytes.load(Ordering::Acquire) >= bytes {
                self.store.wake_flusher();
            }
        }
        Ok(AppendResult {
            base_offset: log_end,
            last_offset: next - 1,
            max_timestamp,
            durable,
        })
    }

    fn active_path(&self) -> PathBuf {
        self.state.read().active.paths.log.clone()
    }

    /// Closes the active segment and starts a new one at the log end. The caller holds
    /// the append lock.
    fn roll(&self, config: &LogConfig) -> Result<()> {
        let (old_base, old_paths, old_size, mut indexes, new_base) = {
            let st = self.state.read();
            if st.active.size == 0 {
                return Ok(());
            }
            (
                st.active.base,
                st.active.paths.clone(),
                st.active.size,
                st.active.indexes.clone(),
                st.log_end,
            )
        };
        indexes.push_time_entry();
        write_index_files(&old_paths, &indexes)?;
        let paths = SegmentPaths::new(&self.dir, new_base);
        let file = open_rw(&paths.log, true)?;
        let closed = Arc::new(ClosedSegment::new(
            old_base,
            old_size,
            old_paths,
            Some(indexes.max_timestamp),
        ));
        let mut st = self.state.write();
        st.closed.push(closed.clone());
        st.unsynced_closed.push(closed);
        st.active = ActiveSegment::new(
            new_base,
            paths,
            Arc::new(file),
            0,
            None,
            SegmentIndexes::new(new_base, config.index_interval_bytes as u64),
        );
        st.dir_generation += 1;
        Ok(())
    }

    /// Reads whole batches starting with the one containing `offset`, up to `max_bytes`
    /// (but always at least one whole batch if there is one), not past `max_offset`
    /// (exclusive; the high watermark). `offset == log_end_offset` returns no records.
    pub fn read(&self, offset: i64, max_bytes: u32, max_offset: i64) -> Result<ReadResult> {
        let read = self.read_batches(offset, (max_bytes, max_offset, true), Output::Memory)?;
        let records = read.records.into_bytes().at(&self.dir)?;
        Ok(ReadResult {
            records,
            next_offset: read.next_offset,
        })
    }

    /// Like [`PartitionLog::read`], for sending the batches on: they come back as a region
    /// of the segment file ([`Chunk::File`], nothing read but a few batch headers) unless
    /// they are fewer than `min_region_bytes`. With `within`, never more than `max_bytes`:
    /// when the batch holding `offset` is larger, no records (and nothing read past that
    /// batch's header); for the later partitions of a fetch, whose share of the response
    /// is what is left of its size limit.
    pub fn read_chunk(
        &self,
        offset: i64,
        max_bytes: u32,
        max_offset: i64,
        within: bool,
        min_region_bytes: usize,
    ) -> Result<ReadResult<Chunk>> {
        let output = Output::Region {
            min_bytes: min_region_bytes,
        };
        self.read_batches(offset, (max_bytes, max_offset, !within), output)
    }

    /// `limit` is (max bytes, max offset exclusive, whether one batch may exceed max bytes).
    fn read_batches(
        &self,
        offset: i64,
        limit: (u32, i64, bool),
        output: Output,
    ) -> Result<ReadResult<Chunk>> {
        let (max_bytes, max_offset, at_least_one_batch) = limit;
        let limit = (
            max_bytes.min(READ_BYTES_MAX) as u64,
            max_offset,
            at_least_one_batch,
        );
        let mut target = offset;
        let mut mismatches = 0;
        loop {
            let located = {
                let st = self.state.read();
                if offset < st.log_start || offset > st.log_end {
                    return Err(StorageError::OffsetOutOfRange {
                        offset,
                        start: st.log_start,
                        end: st.log_end,
                    });
                }
                if target >= st.log_end || target >= max_offset {
                    return Ok(ReadResult::nothing(offset));
                }
                st.locate(target)
            };
            let outcome = match &located {
                Located::Active {
                    file,
                    size,
                    end,
                    hint,
                } => {
                    let segment = (file, *size, *end);
                    self.read_segment(segment, *hint, (target, offset), limit, output)?
                }
                Located::Closed { seg, next_base } => {
                    let (file, hint) = match self.closed_files(seg, target)? {
                        Some(found) => found,
                        None => return Err(self.out_of_range(offset)),
                    };
                    let segment = (&file, seg.size, *next_base);
                    self.read_segment(segment, hint, (target, offset), limit, output)?
                }
            };
            match (outcome, &located) {
                (SegmentRead::Found(result), _) => return Ok(result),
                (SegmentRead::NotInSegment, Located::Closed { next_base, .. }) => {
                    target = *next_base
                }
                (SegmentRead::NotInSegment, Located::Active { .. }) => {
                    return Ok(ReadResult::nothing(offset));
                }
                (SegmentRead::IndexMismatch, _) => {
                    mismatches += 1;
                    if mismatches > READ_ATTEMPTS_MAX {
                        return Err(StorageError::CorruptBatch(format!(
                            "{}: index keeps pointing into the middle of batches near offset {target}",
                            self.id
                        )));
                    }
                    tracing::warn!(log = %self.id, offset = target, "index entry does not match the log; rebuilding");
                    match &located {
                        Located::Active { .. } => self.rebuild_active_indexes()?,
                        Located::Closed { seg, .. } => self.rebuild_closed_indexes(seg)?,
                    }
                }
            }
        }
    }

    fn out_of_range(&self, offset: i64) -> StorageError {
        let st = self.state.read();
        StorageError::OffsetOutOfRange {
            offset,
            start: st.log_start,
            end: st.log_end,
        }
    }

    /// Reads from one segment, `(file, published bytes, offset after its last batch)`,
    /// starting the header walk at the index hint. `offsets` is (the offset to find here,
    /// the offset the read was asked for); `limit` as in [`PartitionLog::read_batches`].
    fn read_segment(
        &self,
        segment: (&Arc<File>, u64, i64),
        hint: (i64, u64),
        offsets: (i64, i64),
        limit: (u64, i64, bool),
        output: Output,
    ) -> Result<SegmentRead> {
        let (file, segment_bytes, segment_end) = segment;
        let (target, offset) = offsets;
        let (max_bytes, max_offset, at_least_one_batch) = limit;
        let (start, first) =
            match find_batch(file, segment_bytes, hint.1, hint.0, target).at(&self.dir)? {
                Err(why) => return Err(StorageError::CorruptBatch(format!("{}: {why}", self.id))),
                Ok(FindBatch::IndexMismatch) => return Ok(SegmentRead::IndexMismatch),
                Ok(FindBatch::NotInSegment) => return Ok(SegmentRead::NotInSegment),
                Ok(FindBatch::Found(start, header)) => (start, header),
            };
        let too_big = !at_least_one_batch && first.total_bytes() as u64 > max_bytes;
        if first.last_offset() >= max_offset || too_big {
            return Ok(SegmentRead::Found(ReadResult::nothing(offset)));
        }
        let room = max_bytes.max(first.total_bytes() as u64);
        let (records, next_offset) = match output {
            Output::Memory => self.read_batches_at(file, segment_bytes, start, room, max_offset)?,
            Output::Region { min_bytes } => {
                let (end, next_offset) =
                    if segment_end <= max_offset && segment_bytes - start <= room {
                        // The rest of the segment: whole batches, all below the limit.
                        (segment_bytes, segment_end)
                    } else {
                        self.walk_batches(file, segment_bytes, start, room, max_offset)?
                    };
                let len = (end - start) as usize;
                let records = if len < min_bytes {
                    Chunk::Memory(read_exact_at_new(file, len, start).at(&self.dir)?.into())
                } else {
                    Chunk::File(FileRegion::new(file.clone(), start, len))
                };
                (records, next_offset)
            }
        };
        // Invariant: at least the first batch, which holds the target, is returned.
        assert!(
            !records.is_empty() && next_offset > target,
            "a read must return the batch holding its offset"
        );
        Ok(SegmentRead::Found(ReadResult {
            records,
            next_offset,
        }))
    }

    /// Reads the whole batches from `start` (where one begins) that fit in `max_bytes` and
    /// end below `max_offset`, at least the first, into one buffer (no allocation per batch
    /// or record); with the offset after them.
    fn read_batches_at(
        &self,
        file: &File,
        segment_bytes: u64,
        start: u64,
        max_bytes: u64,
        max_offset: i64,
    ) -> Result<(Chunk, i64)> {
        let len = (segment_bytes - start).min(max_bytes) as usize;
        let mut buf = read_exact_at_new(file, len, start).at(&self.dir)?;
        let mut end = 0;
        let mut next_offset = i64::MIN;
        while end + BATCH_HEADER_BYTES <= len {
            let header = BatchHeader::parse(&buf[end..]).map_err(|e| {
                StorageError::CorruptBatch(format!(
                    "{} at position {}: {e}",
                    self.id,
                    start + end as u64
                ))
            })?;
            let batch_end = end + header.total_bytes();
            if batch_end > len || (end > 0 && header.last_offset() >= max_offset) {
                break;
            }
            end = batch_end;
            next_offset = header.last_offset() + 1;
        }
        buf.truncate(end);
        Ok((Chunk::Memory(buf.into()), next_offset))
    }

    /// Where the whole batches from `start` that fit in `max_bytes` and end below
    /// `max_offset` (at least the first) end, reading only their headers; with the offset
    /// after them.
    fn walk_batches(
        &self,
        file: &File,
        segment_bytes: u64,
        start: u64,
        max_bytes: u64,
        max_offset: i64,
    ) -> Result<(u64, i64)> {
        let mut headers = SegmentReader::headers(file, segment_bytes);
        let mut end = start;
        let mut next_offset = i64::MIN;
        loop {
            let header = match headers.header_at(end).at(&self.dir)? {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(why) => {
                    return Err(StorageError::CorruptBatch(format!(
                        "{} at position {end}: {why}",
                        self.id
                    )))
                }
            };
            let batch_end = end + header.total_bytes() as u64;
            let first = end == start;
            if !first && (batch_end - start > max_bytes || header.last_offset() >= max_offset) {
                break;
            }
            end = batch_end;
            next_offset = header.last_offset() + 1;
        }
        Ok((end, next_offset))
    }

    /// The log file and an index hint for `offset` in a closed segment, or `None` if the
    /// segment has been deleted meanwhile. Rebuilds a missing or damaged index.
    fn closed_files(&self, seg: &ClosedSegment, offset: i64) -> Result<Option<ClosedHint>> {
        let log = match self.store.files().get(&seg.paths.log) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StorageError::Io {
                    path: seg.paths.log.clone(),
                    source,
                })
            }
        };
        for attempt in 0..2 {
            let index = match self.store.files().get(&seg.paths.index) {
                Ok(index) => index,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt == 0 => {
                    tracing::warn!(log = %self.id, segment = seg.base, "offset index missing; rebuilding");
                    self.rebuild_closed_indexes(seg)?;
                    continue;
                }
                Err(source) => {
                    return Err(StorageError::Io {
                        path: seg.paths.index.clone(),
                        source,
                    })
                }
            };
            let bytes = index.metadata().at(&seg.paths.index)?.len();
            let hint = file_index_lookup(&index, bytes, seg.base, offset).at(&seg.paths.index)?;
            if hint.1 < seg.size.max(1) {
                return Ok(Some((log, hint)));
            }
            // A position past the segment: the index is damaged; rebuild once.
            self.rebuild_closed_indexes(seg)?;
        }
        Ok(Some((log, (seg.base, 0))))
    }

    /// Rebuilds both index files of a closed segment from its log.
    fn rebuild_closed_indexes(&self, seg: &ClosedSegment) -> Result<()> {
        let _rebuild = seg.rebuild.lock();
        let file = File::open(&seg.paths.log).at(&seg.paths.log)?;
        let interval = self.config.read().index_interval_bytes as u64;
        let mut indexes = SegmentIndexes::new(seg.base, interval);
        let outcome = scan_segment(&file, seg.size, 0, seg.base, u64::MAX, |h, pos| {
            indexes.observe(h, pos, h.total_bytes() as u64)
        })
        .at(&seg.paths.log)?;
        if let Some(why) = outcome.invalid {
            tracing::error!(log = %self.id, segment = seg.base, "closed segment is damaged: {why}");
        }
        indexes.push_time_entry();
        // Replace the files (new inodes), then drop cached handles to the old ones.
        for (path, bytes) in [
            (&seg.paths.index, encode_index(&indexes.index)),
            (&seg.paths.time_index, encode_time_index(&indexes.time)),
        ] {
            let tmp = crate::fsutil::tmp_path(path);
            std::fs::write(&tmp, bytes).at(&tmp)?;
            std::fs::rename(&tmp, path).at(path)?;
            self.store.files().evict(path);
        }
        let _ = seg.max_timestamp.set(indexes.max_timestamp);
        Ok(())
    }

    /// Rebuilds the active segment's in-memory indexes from its log and rewrites the
    /// index files.
    fn rebuild_active_indexes(&self) -> Result<()> {
        let _append = self.append_lock.lock();
        let (file, size, base, paths) = {
            let st = self.state.read();
            (
                st.active.file.clone(),
                st.active.size,
                st.active.base,
                st.active.paths.clone(),
            )
        };
        let interval = self.config.read().index_interval_bytes as u64;
        let mut indexes = SegmentIndexes::new(base, interval);
        let outcome = scan_segment(&file, size, 0, base, u64::MAX, |h, pos| {
            indexes.observe(h, pos, h.total_bytes() as u64)
        })
        .at(&paths.log)?;
        if let Some(why) = outcome.invalid {
            return Err(StorageError::CorruptBatch(format!(
                "{}: active segment is damaged: {why}",
                self.id
            )));
        }
        let (index_crc, time_crc) = write_index_files(&paths, &indexes)?;
        let mut st = self.state.write();
        if st.active.base == base {
            st.active.index_persisted = indexes.index.len();
            st.active.time_persisted = indexes.time.len();
            st.active.index_crc = index_crc;
            st.active.time_crc = time_crc;
            st.active.indexes = indexes;
        }
        Ok(())
    }

    /// Largest timestamp of a closed segment (from its time index, rebuilt if needed).
    fn closed_max_timestamp(&self, seg: &ClosedSegment) -> Result<Option<(i64, i64)>> {
        if let Some(known) = seg.max_timestamp.get() {
            return Ok(*known);
        }
        let from_file = match self.store.files().get(&seg.paths.time_index) {
            Ok(file) => {
                let bytes = file.metadata().at(&seg.paths.time_index)?.len();
                if bytes % TIME_ENTRY_BYTES as u64 != 0 || (bytes == 0 && seg.size > 0) {
                    None
                } else {
                    Some(file_time_last(&file, bytes, seg.base).at(&seg.paths.time_index)?)
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StorageError::Io {
                    path: seg.paths.time_index.clone(),
                    source,
                })
            }
        };
        match from_file {
            Some(known) => {
                let _ = seg.max_timestamp.set(known);
                Ok(known)
            }
            None => {
                tracing::warn!(log = %self.id, segment = seg.base, "time index missing or damaged; rebuilding");
                self.rebuild_closed_indexes(seg)?;
                Ok(seg.max_timestamp.get().copied().flatten())
            }
        }
    }

    /// (log start, high watermark, log end) under one lock: what a fetch checks for each
    /// partition it is asked for.
    pub fn offsets(&self) -> (i64, i64, i64) {
        let st = self.state.read();
        (st.log_start, st.high_watermark(), st.log_end)
    }

    /// First offset still stored.
    pub fn log_start_offset(&self) -> i64 {
        self.state.read().log_start
    }
    /// Offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.state.read().log_end
    }
    /// Offset below which records are committed.
    pub fn high_watermark(&self) -> i64 {
        self.state.read().high_watermark()
    }

    /// The segments as (base, end offset, closed segment or active) for searches.
    fn segment_views(&self) -> (i64, Vec<SegmentView>) {
        let st = self.state.read();
        let mut views = Vec::with_capacity(st.closed.len() + 1);
        for (i, seg) in st.closed.iter().enumerate() {
            let end = st
                .closed
                .get(i + 1)
                .map_or(st.active.base, |next| next.base);
            views.push(SegmentView::Closed(seg.clone(), end));
        }
        views.push(SegmentView::Active {
            file: st.active.file.clone(),
            size: st.active.size,
            indexes: Box::new(ActiveIndexView {
                base: st.active.base,
                max_timestamp: st.active.indexes.max_timestamp,
            }),
        });
        (st.log_start, views)
    }

    /// The earliest offset whose record timestamp is >= `timestamp_ms`, with that record's
    /// timestamp; `None` if no record is that late.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        let (log_start, views) = self.segment_views();
        for view in views {
            let (file, size, start_hint) = match &view {
                SegmentView::Closed(seg, end) => {
                    if *end <= log_start {
                        continue;
                    }
                    let Some((max, _)) = self.closed_max_timestamp(seg)? else {
                        continue;
                    };
                    if max < timestamp_ms {
                        continue;
                    }
                    let from = match self.store.files().get(&seg.paths.time_index) {
                        Ok(f) => {
                            let bytes = f.metadata().at(&seg.paths.time_index)?.len();
                            file_time_lookup(&f, bytes, seg.base, timestamp_ms)
                                .at(&seg.paths.time_index)?
                        }
                        Err(_) => seg.base,
                    };
                    let Some((file, hint)) = self.closed_files(seg, from.max(log_start))? else {
                        continue;
                    };
                    (file, seg.size, hint)
                }
                SegmentView::Active {
                    file,
                    size,
                    indexes,
                } => {
                    if indexes
                        .max_timestamp
                        .is_none_or(|(max, _)| max < timestamp_ms)
                    {
                        continue;
                    }
                    let hint = {
                        let st = self.state.read();
                        if st.active.base != indexes.base {
                            // Rolled meanwhile: the (now closed) segment's start is safe.
                            (indexes.base, 0)
                        } else {
                            let from = st.active.indexes.time_lookup(timestamp_ms).max(log_start);
                            st.active.indexes.lookup(from)
                        }
                    };
                    (file.clone(), *size, hint)
                }
            };
            if let Some(found) =
                self.scan_for_timestamp(&file, size, start_hint, timestamp_ms, log_start)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Walks a segment from an index hint to the first record at or after `timestamp_ms`.
    fn scan_for_timestamp(
        &self,
        file: &File,
        size: u64,
        hint: (i64, u64),
        timestamp_ms: i64,
        log_start: i64,
    ) -> Result<Option<(i64, i64)>> {
        let mut reader = SegmentReader::new(file, size);
        let (expected, mut pos) = hint;
        // A hint that does not land on its batch is ignored: walk from the segment start.
        if let Ok(Some(h)) = reader.header_at(pos).at(&self.dir)? {
            if h.base_offset != expected {
                pos = 0;
            }
        } else {
            pos = 0;
        }
        loop {
            let header = match reader.header_at(pos).at(&self.dir)? {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(why) => return Err(StorageError::CorruptBatch(format!("{}: {why}", self.id))),
            };
            let total = header.total_bytes();
            if header.max_timestamp >= timestamp_ms && header.last_offset() >= log_start {
                let batch = reader
                    .bytes_at(pos, total)
                    .at(&self.dir)?
                    .unwrap_or_default();
                if let Some(found) =
                    record_at_or_after(&self.store, &header, batch, timestamp_ms, log_start)
                {
                    return Ok(Some(found));
                }
            }
            pos += total as u64;
        }
    }

    /// (offset, timestamp) of the record with the largest timestamp, if any.
    pub fn max_timestamp(&self) -> Result<Option<(i64, i64)>> {
        let (log_start, views) = self.segment_views();
        let mut best: Option<(i64, i64)> = None;
        for view in &views {
            let max = match view {
                SegmentView::Closed(seg, end) if *end > log_start => {
                    self.closed_max_timestamp(seg)?
                }
                SegmentView::Closed(..) => None,
                SegmentView::Active { indexes, .. } => indexes.max_timestamp,
            };
            if let Some((ts, batch_base)) = max {
                if best.is_none_or(|(best_ts, _)| ts > best_ts) {
                    best = Some((ts, batch_base));
                }
            }
        }
        let Some((max_ts, batch_base)) = best else {
            return Ok(None);
        };
        // Find that batch and the first record in it carrying the timestamp.
        let read = self.read(batch_base.max(log_start), 1, i64::MAX);
        let records = match read {
            Ok(r) => r.records,
            Err(StorageError::OffsetOutOfRange { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let header = BatchHeader::parse(&records)?;
        let batch = records.get(..header.total_bytes()).unwrap_or_default();
        let found = record_at_or_after(&self.store, &header, batch, max_ts, log_start)
            .filter(|(_, ts)| *ts == max_ts)
            .unwrap_or((header.last_offset(), max_ts));
        Ok(Some(found))
    }

    /// The records of `batch`, one batch of this log as read (`header` its header),
    /// decompressed with the store's decompressor if it is compressed. An error for a
    /// compressed batch when no decompressor is installed or its bytes do not decompress.
    pub fn decode_records(&self, header: &BatchHeader, batch: &[u8]) -> Result<Vec<Record>> {
        match header.compression() {
            0 => decode_records(batch),
            codec => {
                let plain = self
                    .store
                    .decompress(codec, records_section(batch))
                    .ok_or_else(|| {
                        StorageError::CorruptBatch(format!(
                            "{}: the batch at offset {} (compression codec {codec}) cannot be decompressed",
                            self.id, header.base_offset
                        ))
                    })?;
                decode_record_section(&plain, header.record_count)
            }
        }
    }

    /// Raises the log start offset to `offset` (Kafka DeleteRecords) and deletes segments
    /// wholly below it. Returns the new log start offset.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let config = self.config();
        let _append = self.append_lock.lock();
        self.check_open()?;
        {
            let st = self.state.read();
            if offset > st.log_end || offset < 0 {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    start: st.log_start,
                    end: st.log_end,
                });
            }
            if offset <= st.log_start {
                return Ok(st.log_start);
            }
        }
        self.state.write().log_start = offset;
        self.write_meta()?;
        let needs_roll = {
            let st = self.state.read();
            offset == st.log_end && st.active.size > 0
        };
        if needs_roll {
            self.roll(&config)?;
        }
        let count = {
            let st = self.state.read();
            let ends: Vec<i64> = st
                .closed
                .iter()
                .skip(1)
                .map(|s| s.base)
                .chain([st.active.base])
                .collect();
            ends.iter().take_while(|end| **end <= offset).count()
        };
        self.delete_oldest_segments(count)?;
        Ok(offset)
    }

    /// Deletes whole segments past the retention limits. Never deletes the active segment.
    /// Returns how many segments were deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        let config = self.config();
        let _append = self.append_lock.lock();
        self.check_open()?;
        let (closed, size_bytes) = {
            let st = self.state.read();
            (st.closed.clone(), st.size_bytes)
        };
        let mut by_time = 0;
        if let Some(retention_ms) = config.retention_ms.filter(|ms| *ms >= 0) {
            for seg in &closed {
                // Like Kafka: a segment without record timestamps ages by its file time.
                let newest_ms = match self.closed_max_timestamp(seg)? {
                    Some((ts, _)) if ts >= 0 => ts,
                    _ => std::fs::metadata(&seg.paths.log)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as i64),
                };
                let expired = now_ms.saturating_sub(newest_ms) > retention_ms;
                if !expired {
                    break;
                }
                by_time += 1;
            }
        }
        let mut by_size = 0;
        if let Some(limit) = config.retention_bytes {
            let mut size = size_bytes;
            for seg in &closed {
                if size.saturating_sub(seg.size) < limit {
                    break;
                }
                size -= seg.size;
                by_size += 1;
            }
        }
        let count = by_time.max(by_size);
        self.delete_oldest_segments(count)?;
        Ok(count)
    }

    /// Removes the `count` oldest closed segments from the log and deletes their files.
    /// The caller holds the append lock.
    fn delete_oldest_segments(&self, count: usize) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let removed: Vec<Arc<ClosedSegment>> = {
            let mut st = self.state.write();
            let count = count.min(st.closed.len());
            let removed: Vec<_> = st.closed.drain(..count).collect();
            let first_base = st.closed.first().map_or(st.active.base, |s| s.base);
            st.log_start = st.log_start.max(first_base);
            st.size_bytes -= removed.iter().map(|s| s.size).sum::<u64>();
            st.unsynced_closed
                .retain(|s| !removed.iter().any(|r| r.base == s.base));
            st.dir_generation += 1;
            removed
        };
        for seg in &removed {
            for path in [&seg.paths.log, &seg.paths.index, &seg.paths.time_index] {
                self.store.files().evict(path);
                remove_file_if_exists(path)?;
            }
        }
        // Make the deletions durable now: a deleted old segment reappearing after a crash
        // while a newer one stays deleted would leave a hole in the log.
        fsync_dir(&self.dir)
    }

    /// Replaces the log's settings (takes effect on the next append / retention pass).
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        let _append = self.append_lock.lock();
        let was_sync = self.config.read().flush == FlushPolicy::Sync;
        if config.flush == FlushPolicy::Sync && !was_sync {
            // Journal replay appends entries at the log end: everything appended before the
            // switch must be on disk, or replay would meet a gap.
            self.flush()?;
        }
        *self.config.write() = config;
        Ok(())
    }
    /// Current settings.
    pub fn config(&self) -> LogConfig {
        self.config.read().clone()
    }
    /// Bytes stored in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.state.read().size_bytes
    }
    /// Leader epoch of the last appended batch and the start offset of each epoch seen,
    /// ascending: `(epoch, start_offset)`.
    pub fn leader_epochs(&self) -> Vec<(i32, i64)> {
        self.state.read().epochs.clone()
    }
    /// fsyncs everything appended so far.
    pub fn flush(&self) -> Result<()> {
        self.flush_inner().map(|_| ())
    }

    /// Starts the kernel writing the active segment back to disk up to a boundary behind
    /// its end, without waiting and without making anything durable, once
    /// [`WRITEBACK_MIN_BYTES`] are waiting. The store's flusher calls it between flushes.
    ///
    /// A flush then finds little left to write, and what it writes is mostly the folios
    /// at the end. Without it, each flush hands the disk a whole interval of data at once:
    /// while the queue is full, the kernel holds the folio at the end of each file locked
    /// for writeback, and the next append to that file waits for the disk (tens of
    /// milliseconds in `docs/benchmarks.md`, W2).
    pub(crate) fn write_back_early(&self) -> Result<()> {
        if !self.may_write_back_early() {
            return Ok(());
        }
        let (file, base, size) = {
            let st = self.state.read();
            (st.active.file.clone(), st.active.base, st.active.size)
        };
        let mut written_back = self.written_back.lock();
        let Some((from, end)) = early_writeback_range(*written_back, base, size) else {
            return Ok(());
        };
        // Past this range even if the call failed: the next flush's fsync reports the
        // error where it matters, and a failing range is not retried every tick.
        *written_back = (base, end);
        match start_writeback(&file, from, end - from) {
            Ok(()) => Ok(()),
            Err(e) => Err(e).at(&self.active_path()),
        }
    }

    /// Whether enough was appended since the last flush for [`Self::write_back_early`] to
    /// have something to do (one atomic load: the flusher asks every log every tick).
    pub(crate) fn may_write_back_early(&self) -> bool {
        self.unflushed_bytes.load(Ordering::Acquire) >= WRITEBACK_MIN_BYTES
    }

    /// How far early writeback of the active segment got: `(segment base, position)`.
    #[cfg(test)]
    pub(crate) fn written_back(&self) -> (i64, u64) {
        *self.written_back.lock()
    }

    /// Keeps the log marked dirty after a failed flush so that a later one retries.
    fn flush_failed(&self) {
        self.unflushed_bytes.fetch_max(1, Ordering::AcqRel);
        let _ = self.dirty_since_ms.compare_exchange(
            i64::MAX,
            now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Whether the background flusher should flush this log now.
    pub(crate) fn needs_async_flush(&self, now_ms: i64) -> bool {
        let unflushed = self.unflushed_bytes.load(Ordering::Acquire);
        if unflushed == 0 || self.removed.load(Ordering::Acquire) {
            return false;
        }
        match self.config.read().flush {
            FlushPolicy::Async { interval_ms, bytes } => {
                let since = self.dirty_since_ms.load(Ordering::Acquire);
                unflushed >= bytes
                    || now_ms.saturating_sub(since)
                        >= i64::try_from(interval_ms).unwrap_or(i64::MAX)
            }
            FlushPolicy::Sync => false,
        }
    }

    /// Makes the log directory's entry in the data directory durable, once. (The files in
    /// the log directory are covered by the flush's fsync of the log directory, which a new
    /// log always needs. `meta.json` is not fsynced at creation: losing its content loses
    /// only the incarnation, which recovery then takes from the journal or makes up.)
    fn ensure_created_durable(&self) -> Result<()> {
        if self.created_durable.load(Ordering::Acquire) {
            return Ok(());
        }
        self.store.sync_data_dir()?;
        self.created_durable.store(true, Ordering::Release);
        Ok(())
    }

    /// `meta.json`'s content for the current state.
    fn meta_bytes(&self) -> Vec<u8> {
        let meta = {
            let st = self.state.read();
            LogMeta {
                version: META_VERSION,
                incarnation: self.incarnation(),
                log_start_offset: st.log_start,
                leader_epochs: st.epochs.clone(),
            }
        };
        serde_json::to_vec(&meta).unwrap_or_default()
    }

    /// Writes `meta.json` from the current state.
    fn write_meta(&self) -> Result<()> {
        let _meta = self.meta_lock.lock();
        let bytes = self.meta_bytes();
        let path = self.dir.join(META_FILE);
        write_atomic(&path, &bytes)?;
        self.store.note_synced(&path, bytes.len() as u64);
        Ok(())
    }

    /// Flushes the log: fsyncs segment data (and the files of segments closed since the
    /// last flush), writes new index entries, persists the epoch history if it changed,
    /// and advances the recovery point.
    pub(crate) fn flush_inner(&self) -> Result<RecoveryPoint> {
        let _flush = self.flush_lock.lock();
        let result = self.flush_locked();
        if result.is_err() {
            self.flush_failed();
        }
        result
    }

    fn flush_locked(&self) -> Result<RecoveryPoint> {
        let pending = match self.prepare_flush(0)? {
            PreparedFlush::Unchanged(point) => return Ok(point),
            PreparedFlush::Pending(pending) => pending,
        };
        let s = &pending.s;
        self.ensure_created_durable()?;
        for seg in &s.unsynced_closed {
            for path in [&seg.paths.log, &seg.paths.index, &seg.paths.time_index] {
                let file = File::open(path).at(path)?;
                file.sync_data().at(path)?;
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.store.note_synced(path, len);
            }
        }
        s.file.sync_data().at(&s.paths.log)?;
        if !s.dir_synced {
            fsync_dir(&self.dir)?;
        }
        if s.epochs_dirty {
            self.write_meta()?;
        }
        Ok(self.finish_flush(pending))
    }

    /// Flushes many logs with two filesystem syncs in all instead of several fsyncs per
    /// log: index entries and new `meta.json` contents are written for every log, one
    /// `syncfs` makes them and all segment data durable, the `meta.json` files are renamed
    /// into place and a second `syncfs` makes the renames durable. Returns each log's
    /// recovery point, in order. On an error every log stays dirty for a later flush.
    ///
    /// Each fsync is a journal commit, and writes to the filesystem stall behind commits;
    /// with thousands of partitions, flushing each one separately cannot keep up with a
    /// one-second flush interval and keeps the journal committing without pause.
    ///
    /// A log's new index entries are written only once there are `index_min_entries` of
    /// them (opening two index files per log per flush would otherwise take most of the
    /// flush): until then crash recovery walks that part of the log to rebuild them.
    pub(crate) fn flush_group(
        store: &StoreShared,
        logs: &[Arc<PartitionLog>],
        index_min_entries: usize,
    ) -> Result<Vec<RecoveryPoint>> {
        // Every caller locks in the registry's order, so two group flushes cannot deadlock.
        let flushing: Vec<_> = logs.iter().map(|log| log.flush_lock.lock()).collect();
        let result = Self::flush_group_locked(store, logs, index_min_entries);
        if result.is_err() {
            for log in logs {
                log.flush_failed();
            }
        }
        drop(flushing);
        result
    }

    fn flush_group_locked(
        store: &StoreShared,
        logs: &[Arc<PartitionLog>],
        index_min_entries: usize,
    ) -> Result<Vec<RecoveryPoint>> {
        let mut prepared = Vec::with_capacity(logs.len());
        for log in logs {
            prepared.push(log.prepare_flush(index_min_entries)?);
        }
        // New epoch histories: written beside meta.json now, renamed over it once synced.
        let mut metas = Vec::new();
        for (log, p) in logs.iter().zip(&prepared) {
            if let PreparedFlush::Pending(pending) = p {
                if pending.s.epochs_dirty {
                    let writing = log.meta_lock.lock();
                    let path = log.dir.join(META_FILE);
                    let bytes = log.meta_bytes();
                    let tmp = write_tmp(&path, &bytes, false)?;
                    metas.push((writing, tmp, path, bytes.len()));
                }
            }
        }
        if prepared
            .iter()
            .any(|p| matches!(p, PreparedFlush::Pending(_)))
        {
            store.sync_all()?;
        }
        if !metas.is_empty() {
            for (_, tmp, path, _) in &metas {
                std::fs::rename(tmp, path).at(path)?;
            }
            store.sync_all()?;
        }
        for (_, _, path, len) in &metas {
            store.note_synced(path, *len as u64);
        }
        drop(metas);
        Ok(logs
            .iter()
            .zip(prepared)
            .map(|(log, p)| match p {
                PreparedFlush::Unchanged(point) => point,
                PreparedFlush::Pending(pending) => {
                    log.created_durable.store(true, Ordering::Release);
                    for seg in &pending.s.unsynced_closed {
                        for path in [&seg.paths.log, &seg.paths.index, &seg.paths.time_index] {
                            store.note_synced_whole(path);
                        }
                    }
                    log.finish_flush(pending)
                }
            })
            .collect())
    }

    /// The first part of a flush, under the flush lock: resets the dirty markers, takes a
    /// snapshot and writes the new index entries (not fsynced: the checkpoint's CRC of the
    /// written prefix tells recovery whether they reached the disk intact), unless there
    /// are fewer than `index_min_entries` of each kind: those wait for a later flush.
    /// What is left is making the snapshot durable, then [`Self::finish_flush`].
    fn prepare_flush(&self, index_min_entries: usize) -> Result<PreparedFlush> {
        // Reset the dirty markers before the snapshot: an append counted after this point
        // either is in the snapshot or leaves the markers set for the next flush.
        self.dirty_since_ms.store(i64::MAX, Ordering::Release);
        self.unflushed_bytes.store(0, Ordering::Release);
        let snapshot = {
            let st = self.state.read();
            let a = &st.active;
            FlushSnapshot {
                log_end: st.log_end,
                base: a.base,
                paths: a.paths.clone(),
                file: a.file.clone(),
                size: a.size,
                unsynced_closed: st.unsynced_closed.clone(),
                dir_generation: st.dir_generation,
                dir_synced: st.dir_generation == st.dir_synced_generation,
                index_delta: a.indexes.index[a.index_persisted..].to_vec(),
                time_delta: a.indexes.time[a.time_persisted..].to_vec(),
                index_persisted: a.index_persisted,
                time_persisted: a.time_persisted,
                index_crc: a.index_crc,
                time_crc: a.time_crc,
                epochs_dirty: st.epochs_dirty,
                recovery: st.recovery,
            }
        };
        let mut s = snapshot;
        if s.index_delta.len() < index_min_entries && s.time_delta.len() < index_min_entries {
            s.index_delta.clear();
            s.time_delta.clear();
        }
        let unchanged = s.log_end == s.recovery.log_end
            && s.base == s.recovery.segment_base
            && s.size == s.recovery.position
            && s.unsynced_closed.is_empty()
            && s.dir_synced
            && s.index_delta.is_empty()
            && s.time_delta.is_empty()
            && !s.epochs_dirty;
        if self.removed.load(Ordering::Acquire) || unchanged {
            return Ok(PreparedFlush::Unchanged(s.recovery));
        }
        let index_bytes = encode_index(&s.index_delta);
        let time_bytes = encode_time_index(&s.time_delta);
        let index_crc = crc32c::crc32c_append(s.index_crc, &index_bytes);
        let time_crc = crc32c::crc32c_append(s.time_crc, &time_bytes);
        let index_offset = (s.index_persisted * INDEX_ENTRY_BYTES) as u64;
        let time_offset = (s.time_persisted * TIME_ENTRY_BYTES) as u64;
        for (path, bytes, offset) in [
            (&s.paths.index, &index_bytes, index_offset),
            (&s.paths.time_index, &time_bytes, time_offset),
        ] {
            if !bytes.is_empty() {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .and_then(|f| f.write_all_at(bytes, offset))
                    .at(path)?;
            }
        }
        Ok(PreparedFlush::Pending(Box::new(PendingFlush {
            s,
            index_crc,
            time_crc,
        })))
    }

    /// The last part of a flush, once the snapshot is durable: advances the persisted
    /// index counts and the recovery point.
    fn finish_flush(&self, pending: Box<PendingFlush>) -> RecoveryPoint {
        let PendingFlush {
            s,
            index_crc,
            time_crc,
        } = *pending;
        self.store.note_synced(&s.paths.log, s.size);
        let point = RecoveryPoint {
            log_end: s.log_end,
            segment_base: s.base,
            position: s.size,
            index_entries: (s.index_persisted + s.index_delta.len()) as u64,
            index_crc,
            time_entries: (s.time_persisted + s.time_delta.len()) as u64,
            time_crc,
        };
        let mut st = self.state.write();
        if st.active.base == s.base {
            st.active.index_persisted = point.index_entries as usize;
            st.active.time_persisted = point.time_entries as usize;
            st.active.index_crc = index_crc;
            st.active.time_crc = time_crc;
        }
        st.unsynced_closed
            .retain(|seg| !s.unsynced_closed.iter().any(|done| done.base == seg.base));
        st.dir_synced_generation = st.dir_synced_generation.max(s.dir_generation);
        if s.epochs_dirty {
            st.epochs_dirty = false;
        }
        st.recovery = point;
        point
    }

    /// The recovery point of the last flush.
    pub(crate) fn recovery_point(&self) -> RecoveryPoint {
        self.state.read().recovery
    }

    /// Marks the log removed: later appends fail, flushes do nothing.
    pub(crate) fn mark_removed(&self) {
        let _append = self.append_lock.lock();
        let _flush = self.flush_lock.lock();
        self.removed.store(true, Ordering::Release);
    }

    /// Waits for an append in progress to finish (used at shutdown).
    pub(crate) fn quiesce(&self) {
        drop(self.append_lock.lock());
    }

    /// Paths of all files of closed segments (for evicting cached handles).
    pub(crate) fn closed_paths(&self) -> Vec<PathBuf> {
        let st = self.state.read();
        st.closed
            .iter()
            .flat_map(|s| {
                [
                    s.paths.log.clone(),
                    s.paths.index.clone(),
                    s.paths.time_index.clone(),
                ]
            })
            .collect()
    }

    /// Replays one journal entry: appends the batches the log does not have yet.
    /// Returns how many batches were appended.
    pub(crate) fn replay_entry(&self, base_offset: i64, batches: &Bytes) -> Result<usize> {
        let config = self.config();
        let _append = self.append_lock.lock();
        let log_end = self.state.read().log_end;
        let mut layout = Vec::new();
        let mut pos = 0;
        let mut first_new = None;
        while pos < batches.len() {
            let header = BatchHeader::parse(&batches[pos..])?;
            let total = header.total_bytes();
            let batch = batches.get(pos..pos + total).ok_or_else(|| {
                StorageError::CorruptBatch(format!(
                    "journal entry for {} holds a partial batch",
                    self.id
                ))
            })?;
            verify_batch(batch)?;
            if header.last_offset() >= log_end {
                first_new.get_or_insert(pos);
                layout.push((pos - first_new.unwrap_or(pos), header));
            }
            pos += total;
        }
        let Some(first_new) = first_new else {
            return Ok(0);
        };
        let first_base = layout[0].1.base_offset;
        if first_base != log_end {
            tracing::error!(
                log = %self.id,
                entry_base = base_offset,
                batch_base = first_base,
                log_end,
                "GAP between the log and its journal: acknowledged appends are missing; entry skipped"
            );
            return Ok(0);
        }
        let count = layout.len();
        self.write_batches(&batches[first_new..], &mut layout, None, now_ms(), &config)?;
        Ok(count)
    }

    /// Opens an existing log directory and recovers it from its recovery point (the end
    /// of the data its last checkpointed flush made durable, with the count and CRC of
    /// the active index prefix written by then).
    ///
    /// Segments before the recovery point are trusted as they are. The segment holding it
    /// is walked from its last trusted index entry (at most an index interval before the
    /// point) to recompute the running index state; everything after the point is checked
    /// for structure, offset contiguity and CRC, and the first torn or corrupt batch is
    /// cut off together with everything after it. After a clean shutdown the recovery
    /// point is the end of the log, so nothing but that short walk is read.
    pub(crate) fn recover(
        store: Arc<StoreShared>,
        id: LogId,
        checkpoint: Option<(u64, RecoveryPoint)>,
        config: LogConfig,
    ) -> Result<PartitionLog> {
        let dir = store.log_dir(&id);
        let meta = read_meta(&dir);
        let mut meta_changed = meta.is_none();
        let (incarnation, meta_log_start, mut epochs) = match &meta {
            Some(m) => (m.incarnation, m.log_start_offset, m.leader_epochs.clone()),
            None => {
                tracing::warn!(log = %id, "meta.json missing or damaged; recovering the log from its segments");
                (new_incarnation(), 0, Vec::new())
            }
        };
        let checkpoint = checkpoint
            .filter(|(inc, _)| meta.is_some() && *inc == incarnation)
            .map(|(_, p)| p);

        // Inventory: segment logs, orphaned indexes and leftovers.
        let mut bases = Vec::new();
        let mut index_files = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = parse_segment_name(name, "log") {
                bases.push(base);
            } else if let Some(base) =
                parse_segment_name(name, "index").or_else(|| parse_segment_name(name, "timeindex"))
            {
                index_files.push((base, entry.path()));
            } else if name.ends_with(".tmp") {
                remove_file_if_exists(&entry.path())?;
            }
        }
        bases.sort_unstable();
        for (base, path) in index_files {
            if bases.binary_search(&base).is_err() {
                remove_file_if_exists(&path)?;
            }
        }
        if bases.is_empty() {
            let base = meta_log_start.max(0);
            open_rw(&SegmentPaths::new(&dir, base).log, true)?;
            bases.push(base);
            meta_changed = true;
        }
        let mut sizes = Vec::with_capacity(bases.len());
        for base in &bases {
            let path = SegmentPaths::new(&dir, *base).log;
            sizes.push(std::fs::metadata(&path).at(&path)?.len());
        }
        let interval = config.index_interval_bytes as u64;
        let last = bases.len() - 1;

        // Where flushed data ends, if the checkpoint knows and the files agree.
        let start = checkpoint.and_then(|cp| {
            let k = bases.binary_search(&cp.segment_base).ok()?;
            (cp.position <= sizes[k] && cp.log_end >= cp.segment_base).then_some((k, cp))
        });
        if start.is_none() && checkpoint.is_some() {
            tracing::warn!(log = %id, "checkpoint does not match the segments; scanning the whole log");
        }
        let (k, rp) = start.unwrap_or((0, RecoveryPoint::segment_start(bases[0])));
        let mut closed: Vec<Arc<ClosedSegment>> = Vec::new();
        for i in 0..k {
            closed.push(Arc::new(ClosedSegment::new(
                bases[i],
                sizes[i],
                SegmentPaths::new(&dir, bases[i]),
                None,
            )));
        }
        // The index prefix the checkpoint vouches for (by count and CRC).
        let paths = SegmentPaths::new(&dir, bases[k]);
        let index_prefix = verified_prefix(
            &paths.index,
            rp.index_entries as usize * INDEX_ENTRY_BYTES,
            rp.index_crc,
        )
        .and_then(|b| decode_index(&b, rp.position.max(1)));
        let time_prefix = verified_prefix(
            &paths.time_index,
            rp.time_entries as usize * TIME_ENTRY_BYTES,
            rp.time_crc,
        )
        .and_then(|b| decode_time_index(&b));
        let trusted_prefix = index_prefix.is_some() && time_prefix.is_some();
        if !trusted_prefix && rp.position > 0 {
            tracing::warn!(log = %id, segment = bases[k], "index prefix unverifiable; rebuilding the segment's index");
        }
        let mut indexes = match (index_prefix, time_prefix) {
            (Some(index), Some(time)) => {
                SegmentIndexes::from_entries(bases[k], interval, index, time, 0)
            }
            _ => SegmentIndexes::new(bases[k], interval),
        };
        let prefix_counts = (indexes.index.len(), indexes.time.len());
        // Resume at the last trusted index entry: re-reading that batch keeps the
        // index-interval accounting exactly as the appender had it.
        let (mut start_pos, mut expected) = indexes.index.last().map_or((0, bases[k]), |e| {
            (e.position as u64, bases[k] + e.rel_offset as i64)
        });
        indexes.bytes_since_entry = 0;
        let mut crc_from = rp.position;
        let mut current = k;
        let mut scanned_epochs = Vec::new();
        let mut changed = false;
        let mut unsynced_closed = Vec::new();
        let (active, log_end) = loop {
            let paths = SegmentPaths::new(&dir, bases[current]);
            let file = open_rw(&paths.log, false)?;
            let outcome: ScanOutcome = scan_segment(
                &file,
                sizes[current],
                start_pos,
                expected,
                crc_from,
                |h, pos| {
                    indexes.observe(h, pos, h.total_bytes() as u64);
                    scanned_epochs.push((h.partition_leader_epoch, h.base_offset));
                },
            )
            .at(&paths.log)?;
            store.note_recovery_scan(outcome.valid_end.saturating_sub(start_pos));
            let mut end_here = current == last;
            if let Some(why) = &outcome.invalid {
                tracing::warn!(
                    log = %id,
                    segment = bases[current],
                    position = outcome.valid_end,
                    "truncating torn or corrupt log tail: {why}"
                );
                file.set_len(outcome.valid_end).at(&paths.log)?;
                sizes[current] = outcome.valid_end;
                end_here = true;
                changed = true;
            } else if !end_here && bases[current + 1] != outcome.next_offset {
                tracing::warn!(
                    log = %id,
                    segment = bases[current + 1],
                    expected = outcome.next_offset,
                    "segment does not continue the log; dropping it and later segments"
                );
                end_here = true;
            }
            if end_here {
                for (base, size) in bases.iter().zip(&sizes).skip(current + 1) {
                    tracing::warn!(log = %id, segment = base, bytes = size, "deleting segment after the recovered end");
                    let doomed = SegmentPaths::new(&dir, *base);
                    for path in [&doomed.log, &doomed.index, &doomed.time_index] {
                        remove_file_if_exists(path)?;
                    }
                    changed = true;
                }
                let size = sizes[current];
                let base = bases[current];
                let created = first_batch_time(&file, size);
                let unchanged_prefix = current == k
                    && trusted_prefix
                    && prefix_counts == (indexes.index.len(), indexes.time.len());
                let (index_crc, time_crc) = if unchanged_prefix {
                    // The files already hold exactly these entries: only cut stale tails.
                    for (path, len) in [
                        (&paths.index, prefix_counts.0 * INDEX_ENTRY_BYTES),
                        (&paths.time_index, prefix_counts.1 * TIME_ENTRY_BYTES),
                    ] {
                        let f = OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(path)
                            .at(path)?;
                        if f.metadata().at(path)?.len() != len as u64 {
                            f.set_len(len as u64).at(path)?;
                        }
                    }
                    (rp.index_crc, rp.time_crc)
                } else {
                    write_index_files(&paths, &indexes)?
                };
                let mut active =
                    ActiveSegment::new(base, paths, Arc::new(file), size, created, indexes);
                active.index_persisted = active.indexes.index.len();
                active.time_persisted = active.indexes.time.len();
                active.index_crc = index_crc;
                active.time_crc = time_crc;
                break (active, outcome.next_offset);
            }
            // A complete segment followed by the next one: close it with full indexes.
            indexes.push_time_entry();
            write_index_files(&paths, &indexes)?;
            let seg = Arc::new(ClosedSegment::new(
                bases[current],
                sizes[current],
                paths,
                Some(indexes.max_timestamp),
            ));
            unsynced_closed.push(seg.clone());
            closed.push(seg);
            changed = true;
            current += 1;
            indexes = SegmentIndexes::new(bases[current], interval);
            start_pos = 0;
            expected = bases[current];
            crc_from = 0;
        };
        for (epoch, offset) in scanned_epochs {
            meta_changed |= note_epoch(&mut epochs, epoch, offset);
        }
        changed |= log_end != rp.log_end || active.size != rp.position;
        let mut recovery = if rp.log_end <= log_end && rp.segment_base <= active.base {
            rp
        } else {
            RecoveryPoint::segment_start(closed.first().map_or(active.base, |s| s.base))
        };
        if recovery.segment_base == active.base {
            // Vouch only for the index entries below the durable position.
            let (index_entries, index_crc, time_entries, time_crc) =
                index_prefix_before(&active.indexes, recovery.position);
            recovery = RecoveryPoint {
                index_entries,
                index_crc,
                time_entries,
                time_crc,
                ..recovery
            };
        }
        // The epoch history never runs past the log.
        let before = epochs.len();
        epochs.retain(|(_, start)| *start < log_end);
        meta_changed |= epochs.len() != before;
        let first_base = closed.first().map_or(active.base, |s| s.base);
        let log_start = meta_log_start.max(first_base).min(log_end);
        // A start offset past the recovered end is settled after journal replay, which may
        // bring the log back up to it.
        let pending_log_start = (meta_log_start > log_start).then_some(meta_log_start);
        let size_bytes = closed.iter().map(|s| s.size).sum::<u64>() + active.size;
        let state = LogState {
            log_start,
            log_end,
            closed,
            active,
            epochs,
            epochs_dirty: false,
            size_bytes,
            recovery,
            unsynced_closed,
            dir_generation: 1,
            dir_synced_generation: if changed { 0 } else { 1 },
            pending_log_start,
        };
        let log = PartitionLog::assemble(
            store,
            id,
            dir,
            (incarnation, meta.is_some()),
            config,
            state,
            meta.is_some(),
        );
        // Without meta.json the incarnation is settled after journal replay.
        if meta_changed && meta.is_some() {
            log.write_meta()?;
        }
        if changed {
            // The next checkpoint flushes what recovery changed.
            log.unflushed_bytes.store(1, Ordering::Release);
            log.dirty_since_ms.store(now_ms(), Ordering::Release);
        }
        Ok(log)
    }

    /// Whether recovery or replay left data that the next flush must make durable.
    pub(crate) fn is_dirty(&self) -> bool {
        self.unflushed_bytes.load(Ordering::Acquire) > 0
    }

    /// Whether the active segment has index entries that no flush has written yet (a
    /// group flush leaves a few for later).
    pub(crate) fn index_pending(&self) -> bool {
        let st = self.state.read();
        let a = &st.active;
        a.indexes.index.len() > a.index_persisted || a.indexes.time.len() > a.time_persisted
    }
}

/// The index entries of a segment that describe data before `position`, as counts and
/// CRCs of their encodings: offset entries at positions below it, and the time entries
/// recorded up to the last of those (each time entry is recorded together with an offset
/// entry, so the two prefixes are a consistent snapshot).
fn index_prefix_before(indexes: &SegmentIndexes, position: u64) -> (u64, u32, u64, u32) {
    let index_count = indexes
        .index
        .partition_point(|e| (e.position as u64) < position);
    let time_count = match index_count.checked_sub(1) {
        Some(last) => {
            let last_rel = indexes.index[last].rel_offset;
            indexes.time.partition_point(|t| t.rel_offset <= last_rel)
        }
        None => 0,
    };
    let index_crc = crc32c::crc32c(&encode_index(&indexes.index[..index_count]));
    let time_crc = crc32c::crc32c(&encode_time_index(&indexes.time[..time_count]));
    (index_count as u64, index_crc, time_count as u64, time_crc)
}

/// The first `len` bytes of `path` if their CRC32C is `crc`.
fn verified_prefix(path: &Path, len: usize, crc: u32) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let file = File::open(path).ok()?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0).ok()?;
    (crc32c::crc32c(&bytes) == crc).then_some(bytes)
}

/// What a flush needs from the state, taken under the read lock.
/// A flush after its first part ([`PartitionLog::prepare_flush`]).
enum PreparedFlush {
    /// Nothing new since the last flush: its recovery point stands.
    Unchanged(RecoveryPoint),
    /// Index entries written; the snapshot awaits being made durable.
    Pending(Box<PendingFlush>),
}

/// What a flush has written and must make durable, with the CRCs of the index files'
/// written prefixes.
struct PendingFlush {
    s: FlushSnapshot,
    index_crc: u32,
    time_crc: u32,
}

struct FlushSnapshot {
    log_end: i64,
    base: i64,
    paths: SegmentPaths,
    file: Arc<File>,
    size: u64,
    unsynced_closed: Vec<Arc<ClosedSegment>>,
    dir_generation: u64,
    dir_synced: bool,
    index_delta: Vec<IndexEntry>,
    time_delta: Vec<TimeEntry>,
    index_persisted: usize,
    time_persisted: usize,
    index_crc: u32,
    time_crc: u32,
    epochs_dirty: bool,
    recovery: RecoveryPoint,
}

/// The active segment as seen by a timestamp search.
struct ActiveIndexView {
    base: i64,
    max_timestamp: Option<(i64, i64)>,
}

/// A segment as seen by a search over the whole log.
enum SegmentView {
    /// A closed segment and the offset where the next segment begins.
    Closed(Arc<ClosedSegment>, i64),
    Active {
        file: Arc<File>,
        size: u64,
        indexes: Box<ActiveIndexView>,
    },
}

impl ClosedSegment {
    fn new(
        base: i64,
        size: u64,
        paths: SegmentPaths,
        max_timestamp: Option<Option<(i64, i64)>>,
    ) -> ClosedSegment {
        let known = OnceLock::new();
        if let Some(max) = max_timestamp {
            let _ = known.set(max);
        }
        ClosedSegment {
            base,
            size,
            paths,
            max_timestamp: known,
            rebuild: Mutex::new(()),
        }
    }
}

impl ActiveSegment {
    fn new(
        base: i64,
        paths: SegmentPaths,
        file: Arc<File>,
        size: u64,
        created_ms: Option<i64>,
        indexes: SegmentIndexes,
    ) -> ActiveSegment {
        ActiveSegment {
            base,
            paths,
            file,
            size,
            created_ms,
            indexes,
            index_persisted: 0,
            index_crc: 0,
            time_persisted: 0,
            time_crc: 0,
        }
    }
}

impl LogState {
    /// The segment holding `offset` (which is within the log).
    fn locate(&self, offset: i64) -> Located {
        if offset >= self.active.base || self.closed.is_empty() {
            return Located::Active {
                file: self.active.file.clone(),
                size: self.active.size,
                end: self.log_end,
                hint: self.active.indexes.lookup(offset),
            };
        }
        let idx = self
            .closed
            .partition_point(|s| s.base <= offset)
            .saturating_sub(1);
        let next_base = self
            .closed
            .get(idx + 1)
            .map_or(self.active.base, |s| s.base);
        Located::Closed {
            seg: self.closed[idx].clone(),
            next_base,
        }
    }
}
