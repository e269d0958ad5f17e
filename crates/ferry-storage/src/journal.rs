//! The group-commit journal that makes `flush=sync` appends durable with one fsync for
//! many producers and partitions.
//!
//! Every append to a `Sync` log writes its batches to the log's segment (page cache only)
//! and one entry to this store-wide journal: `<data_dir>/journal/{position:020}.journal`,
//! files named by the global byte position of their first entry. One group-commit thread
//! loops: take everything written so far, `fdatasync` it, publish the durable position on a
//! `tokio::sync::watch` channel. Appends wait on that channel ([`crate::Durability`]), so
//! every append written while an fsync is in flight is covered by the next one: the fsync
//! rate is bounded by the disk, not by the number of producers or partitions.
//!
//! Entry layout (big-endian): `body_len u32 | crc32c(body) u32 | body`, where body is
//! `kind u8 | incarnation u64 | partition u32 | topic_len u16 | topic | base_offset i64 |
//! batches`. Kind 1 appends: the batches are the bytes written to the log (offsets and
//! leader epoch already assigned), so replay writes them unchanged. Kind 2 records that
//! the log was removed (no batches). Replayed in order, the entries redo what happened to
//! `Sync` logs since the checkpoint, creations and removals included: a log whose
//! directory did not reach the disk is re-created from its entries, which is why creating
//! a log costs no fsync.
//!
//! The checkpoint (see the store) records a journal position P such that every entry
//! before P is also in a flushed log; recovery replays entries from P, and journal files
//! wholly before P are deleted.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::fsutil::{fsync_dir, remove_file_if_exists, IoContext};
use crate::segment::parse_segment_name;
use crate::{Result, StorageError};

/// Name of the journal directory inside the data directory.
pub(crate) const JOURNAL_DIR: &str = "journal";
/// File extension of journal files.
const JOURNAL_EXT: &str = "journal";
/// Length and CRC before each entry body.
const ENTRY_PREFIX_BYTES: usize = 8;
/// Entry kind: batches appended to one log.
const ENTRY_KIND_APPEND: u8 = 1;
/// Entry kind: the log was removed.
const ENTRY_KIND_REMOVE: u8 = 2;
/// Fixed part of an append entry body before the topic name and after it.
const ENTRY_FIXED_BYTES: usize = 1 + 8 + 4 + 2 + 8;
/// Largest entry body accepted when reading (a sanity bound on a damaged length).
const ENTRY_BODY_BYTES_MAX: u64 = 1 << 31;

/// The durable position published by the group-commit thread.
#[derive(Clone, Debug, Default)]
pub(crate) struct DurableMark {
    /// Every journal byte before this position is on stable storage.
    pub position: u64,
    /// Set once an fsync failed: nothing after `position` will ever become durable.
    pub failed: Option<Arc<str>>,
}

/// What a journal entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// Batches appended at `base_offset`.
    Append,
    /// The log (this incarnation) was removed.
    Remove,
}

/// One decoded entry.
#[derive(Debug)]
pub(crate) struct JournalEntry {
    pub kind: EntryKind,
    pub topic: String,
    pub partition: u32,
    pub incarnation: u64,
    pub base_offset: i64,
    pub batches: Bytes,
}

/// Encodes an entry, prefix included.
fn encode_entry(
    kind: EntryKind,
    topic: &str,
    partition: u32,
    incarnation: u64,
    base_offset: i64,
    batches: &[&[u8]],
) -> Vec<u8> {
    let batches_len: usize = batches.iter().map(|piece| piece.len()).sum();
    let body_len = ENTRY_FIXED_BYTES + topic.len() + batches_len;
    let mut out = Vec::with_capacity(ENTRY_PREFIX_BYTES + body_len);
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    out.push(match kind {
        EntryKind::Append => ENTRY_KIND_APPEND,
        EntryKind::Remove => ENTRY_KIND_REMOVE,
    });
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&base_offset.to_be_bytes());
    for piece in batches {
        out.extend_from_slice(piece);
    }
    let crc = crc32c::crc32c(&out[ENTRY_PREFIX_BYTES..]);
    out[4..8].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes an entry body whose CRC has been checked.
fn decode_entry(body: Bytes) -> Option<JournalEntry> {
    let kind = match body.first() {
        Some(&ENTRY_KIND_APPEND) => EntryKind::Append,
        Some(&ENTRY_KIND_REMOVE) => EntryKind::Remove,
        _ => return None,
    };
    if body.len() < ENTRY_FIXED_BYTES {
        return None;
    }
    let u64_at = |p: usize| {
        body.get(p..p + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    let incarnation = u64_at(1)?;
    let partition = u32::from_be_bytes(body.get(9..13)?.try_into().ok()?);
    let topic_len = u16::from_be_bytes(body.get(13..15)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(body.get(15..15 + topic_len)?)
        .ok()?
        .to_string();
    let base_offset = u64_at(15 + topic_len)? as i64;
    let batches = body.slice(15 + topic_len + 8..);
    Some(JournalEntry {
        kind,
        topic,
        partition,
        incarnation,
        base_offset,
        batches,
    })
}

/// A journal file on disk.
#[derive(Debug, Clone)]
struct JournalFile {
    base: u64,
    bytes: u64,
    path: PathBuf,
}

/// Journal files in `dir`, ascending by base position.
fn list_files(dir: &Path) -> Result<Vec<JournalFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(base) = name
            .to_str()
            .and_then(|n| parse_segment_name(n, JOURNAL_EXT))
        else {
            continue;
        };
        let bytes = entry.metadata().at(&entry.path())?.len();
        files.push(JournalFile {
            base: base as u64,
            bytes,
            path: entry.path(),
        });
    }
    files.sort_by_key(|f| f.base);
    Ok(files)
}

fn file_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{JOURNAL_EXT}"))
}

/// Reads the entries of the journal from `from` on, calling `visit(entry, end_position)`
/// for each valid one, and returns the position after the last valid entry. Stops at the
/// first torn or corrupt entry. A missing stretch of journal is logged loudly.
fn read_entries(
    dir: &Path,
    from: u64,
    mut visit: impl FnMut(JournalEntry, u64) -> Result<()>,
) -> Result<u64> {
    let mut valid_end = from;
    for file in list_files(dir)? {
        if file.base + file.bytes <= valid_end {
            continue;
        }
        if file.base > valid_end {
            tracing::error!(
                file = %file.path.display(),
                expected = valid_end,
                "journal gap: entries between {} and {} are missing; recovery stops here",
                valid_end,
                file.base
            );
            break;
        }
        let handle = File::open(&file.path).at(&file.path)?;
        let mut pos = valid_end - file.base;
        let mut torn = false;
        while pos < file.bytes {
            let remaining = file.bytes - pos;
            if remaining < ENTRY_PREFIX_BYTES as u64 {
                torn = true;
                break;
            }
            let mut prefix = [0u8; ENTRY_PREFIX_BYTES];
            handle.read_exact_at(&mut prefix, pos).at(&file.path)?;
            let body_len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as u64;
            let crc = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
            if body_len > ENTRY_BODY_BYTES_MAX || body_len > remaining - ENTRY_PREFIX_BYTES as u64 {
                torn = true;
                break;
            }
            let mut body = vec![0u8; body_len as usize];
            handle
                .read_exact_at(&mut body, pos + ENTRY_PREFIX_BYTES as u64)
                .at(&file.path)?;
            if crc32c::crc32c(&body) != crc {
                torn = true;
                break;
            }
            let Some(entry) = decode_entry(Bytes::from(body)) else {
                torn = true;
                break;
            };
            pos += ENTRY_PREFIX_BYTES as u64 + body_len;
            valid_end = file.base + pos;
            visit(entry, valid_end)?;
        }
        if torn {
            tracing::warn!(file = %file.path.display(), position = valid_end, "journal ends with a torn or corrupt entry");
            break;
        }
    }
    Ok(valid_end)
}

/// After a crash: finds the end of the valid journal from `from`, truncates the torn
/// tail and deletes every file after it, and returns the end position.
pub(crate) fn recover_tail(dir: &Path, from: u64) -> Result<u64> {
    std::fs::create_dir_all(dir).at(dir)?;
    let valid_end = read_entries(dir, from, |_, _| Ok(()))?;
    for file in list_files(dir)? {
        if file.base >= valid_end {
            remove_file_if_exists(&file.path)?;
        } else if file.base + file.bytes > valid_end {
            let handle = OpenOptions::new()
                .write(true)
                .open(&file.path)
                .at(&file.path)?;
            handle.set_len(valid_end - file.base).at(&file.path)?;
            handle.sync_all().at(&file.path)?;
        }
    }
    fsync_dir(dir)?;
    Ok(valid_end)
}

/// Replays the valid entries in `[from, to)`.
pub(crate) fn replay(
    dir: &Path,
    from: u64,
    to: u64,
    mut visit: impl FnMut(JournalEntry) -> Result<()>,
) -> Result<()> {
    read_entries(
        dir,
        from,
        |entry, end| if end <= to { visit(entry) } else { Ok(()) },
    )?;
    Ok(())
}

/// The writer side of the journal plus its group-commit loop.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    segment_bytes_max: u64,
    inner: Mutex<JournalInner>,
    /// Wakes the group-commit thread when something was written or it must stop.
    wake: Condvar,
    /// Wakes blocking waiters when the durable position moved or the journal failed.
    synced_wake: Condvar,
    durable: watch::Sender<DurableMark>,
}

#[derive(Debug)]
struct JournalInner {
    file: Arc<File>,
    file_path: PathBuf,
    file_bytes: u64,
    /// Global position after the last written entry.
    written: u64,
    /// Global position covered by the last successful fsync.
    synced: u64,
    /// Rolled files that still need their final fsync: (file, path, length).
    to_sync: Vec<(Arc<File>, PathBuf, u64)>,
    /// A file was created since the directory was last fsynced.
    dir_dirty: bool,
    failed: Option<Arc<str>>,
    stop: bool,
}

impl Journal {
    /// Opens the journal for writing at `position` (the end of the recovered journal),
    /// starting a new file there.
    pub fn open(dir: &Path, position: u64, segment_bytes_max: u64) -> Result<Journal> {
        std::fs::create_dir_all(dir).at(dir)?;
        let path = file_path(dir, position);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .at(&path)?;
        fsync_dir(dir)?;
        let (durable, _) = watch::channel(DurableMark {
            position,
            failed: None,
        });
        Ok(Journal {
            dir: dir.to_path_buf(),
            segment_bytes_max: segment_bytes_max.max(1),
            inner: Mutex::new(JournalInner {
                file: Arc::new(file),
                file_path: path,
                file_bytes: 0,
                written: position,
                synced: position,
                to_sync: Vec::new(),
                dir_dirty: false,
                failed: None,
                stop: false,
            }),
            wake: Condvar::new(),
            synced_wake: Condvar::new(),
            durable,
        })
    }

    /// Writes one entry (one write call) and returns the position that must become
    /// durable for it to be durable.
    pub fn append(
        &self,
        kind: EntryKind,
        topic: &str,
        partition: u32,
        incarnation: u64,
        base_offset: i64,
        batches: &[&[u8]],
    ) -> Result<u64> {
        let entry = encode_entry(kind, topic, partition, incarnation, base_offset, batches);
        let mut inner = self.inner.lock();
        if let Some(why) = &inner.failed {
            return Err(StorageError::JournalFailed(why.to_string()));
        }
        if inner.stop {
            return Err(StorageError::ShutDown);
        }
        if inner.file_bytes > 0 && inner.file_bytes + entry.len() as u64 > self.segment_bytes_max {
            let path = file_path(&self.dir, inner.written);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .at(&path)?;
            let old_file = std::mem::replace(&mut inner.file, Arc::new(file));
            let old_path = std::mem::replace(&mut inner.file_path, path);
            let old_bytes = inner.file_bytes;
            inner.to_sync.push((old_file, old_path, old_bytes));
            inner.file_bytes = 0;
            inner.dir_dirty = true;
        }
        if let Err(source) = inner.file.write_all_at(&entry, inner.file_bytes) {
            // A partial entry would hide every later one from recovery: cut it off, or
            // refuse all further journal writes if even that fails.
            if let Err(e) = inner.file.set_len(inner.file_bytes) {
                let why: Arc<str> = format!("cannot truncate a failed journal write: {e}").into();
                inner.failed = Some(why.clone());
                self.durable.send_modify(|mark| mark.failed = Some(why));
                self.wake.notify_all();
            }
            return Err(StorageError::Io {
                path: inner.file_path.clone(),
                source,
            });
        }
        inner.file_bytes += entry.len() as u64;
        inner.written += entry.len() as u64;
        let end = inner.written;
        drop(inner);
        self.wake.notify_one();
        Ok(end)
    }

    /// Position after the last written entry.
    pub fn written(&self) -> u64 {
        self.inner.lock().written
    }

    /// Blocks until `position` is durable (for callers outside async code).
    pub fn wait_durable(&self, position: u64) -> Result<()> {
        let mut inner = self.inner.lock();
        loop {
            if inner.synced >= position {
                return Ok(());
            }
            if let Some(why) = &inner.failed {
                return Err(StorageError::JournalFailed(why.to_string()));
            }
            self.synced_wake.wait(&mut inner);
        }
    }

    /// A receiver of the durable position.
    pub fn subscribe(&self) -> watch::Receiver<DurableMark> {
        self.durable.subscribe()
    }

    /// The group-commit loop: fsync whatever has been written, publish, repeat. Returns
    /// once [`Journal::stop`] was called and everything written has been synced (or an
    /// fsync failed). `synced` is told each (file, length) made durable.
    pub fn run_group_commit(&self, mut synced: impl FnMut(&Path, u64)) {
        loop {
            let (target, files, dir_dirty) = {
                let mut inner = self.inner.lock();
                while inner.written == inner.synced && !inner.stop && inner.failed.is_none() {
                    self.wake.wait(&mut inner);
                }
                if inner.failed.is_some() || inner.written == inner.synced {
                    return;
                }
                let mut files = std::mem::take(&mut inner.to_sync);
                files.push((
                    inner.file.clone(),
                    inner.file_path.clone(),
                    inner.file_bytes,
                ));
                (inner.written, files, std::mem::take(&mut inner.dir_dirty))
            };
            let mut result = Ok(());
            for (file, path, _) in &files {
                if let Err(e) = file.sync_data() {
                    result = Err(format!("fsync of {} failed: {e}", path.display()));
                    break;
                }
            }
            if result.is_ok() && dir_dirty {
                if let Err(e) = fsync_dir(&self.dir) {
                    result = Err(e.to_string());
                }
            }
            match result {
                Ok(()) => {
                    for (_, path, bytes) in &files {
                        synced(path, *bytes);
                    }
                    self.inner.lock().synced = target;
                    self.durable.send_modify(|mark| mark.position = target);
                    self.synced_wake.notify_all();
                }
                Err(why) => {
                    // After a failed fsync the page cache cannot be trusted (the kernel may
                    // have dropped the dirty pages): fail every waiter and every later
                    // Sync append until a restart recovers from disk.
                    tracing::error!("journal fsync failed, Sync appends will fail: {why}");
                    let why: Arc<str> = why.into();
                    self.inner.lock().failed = Some(why.clone());
                    self.durable.send_modify(|mark| mark.failed = Some(why));
                    self.synced_wake.notify_all();
                    return;
                }
            }
        }
    }

    /// Asks the group-commit loop to sync what is written and return.
    pub fn stop(&self) {
        self.inner.lock().stop = true;
        self.wake.notify_all();
    }

    /// Deletes journal files wholly before `position` (never the file being written).
    pub fn delete_before(&self, position: u64) -> Result<()> {
        let current = self.inner.lock().file_path.clone();
        for file in list_files(&self.dir)? {
            if file.path != current && file.base + file.bytes <= position {
                remove_file_if_exists(&file.path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jdir = dir.path().join(JOURNAL_DIR);
        let journal = Journal::open(&jdir, 0, 100).expect("open");
        let mut ends = Vec::new();
        for i in 0..5 {
            ends.push(
                journal
                    .append(EntryKind::Append, "t", 3, 9, i * 10, &[&[i as u8; 40]])
                    .expect("append"),
            );
        }
        drop(journal);
        let mut seen = Vec::new();
        replay(&jdir, 0, u64::MAX, |e| {
            seen.push((
                e.topic,
                e.partition,
                e.incarnation,
                e.base_offset,
                e.batches.to_vec(),
            ));
            Ok(())
        })
        .expect("replay");
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[2], ("t".to_string(), 3, 9, 20, vec![2u8; 40]));
        assert!(
            list_files(&jdir).expect("list").len() > 1,
            "small segments roll"
        );

        // Tear the last entry: recovery keeps the first four and deletes nothing else.
        let files = list_files(&jdir).expect("list");
        let last = files
            .iter()
            .rev()
            .find(|f| f.bytes > 0)
            .expect("non-empty file");
        let handle = OpenOptions::new()
            .write(true)
            .open(&last.path)
            .expect("open");
        handle
            .write_all_at(&[0xff; 3], last.bytes - 3)
            .expect("write");
        let end = recover_tail(&jdir, 0).expect("recover");
        assert_eq!(end, ends[3]);
        let mut count = 0;
        replay(&jdir, 0, end, |_| {
            count += 1;
            Ok(())
        })
        .expect("replay");
        assert_eq!(count, 4);
        // Entries from a later start position only.
        let mut count = 0;
        replay(&jdir, ends[1], end, |_| {
            count += 1;
            Ok(())
        })
        .expect("replay");
        assert_eq!(count, 2);
    }

    #[test]
    fn group_commit_publishes_durable_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal =
            Arc::new(Journal::open(&dir.path().join(JOURNAL_DIR), 0, 1 << 20).expect("open"));
        let rx = journal.subscribe();
        let committer = {
            let journal = journal.clone();
            std::thread::spawn(move || journal.run_group_commit(|_, _| {}))
        };
        let end = journal
            .append(EntryKind::Append, "t", 0, 1, 0, &[b"abc"])
            .expect("append");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut rx = rx;
            let mark = rx
                .wait_for(|m| m.position >= end)
                .await
                .expect("published")
                .clone();
            assert!(mark.failed.is_none());
        });
        journal.stop();
        committer.join().expect("joins");
    }
}
