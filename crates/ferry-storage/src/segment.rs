//! Segment files and their sparse indexes.
//!
//! A segment is `{base_offset:020}.log` (whole RecordBatch v2 batches, back to back) with
//! `{base_offset:020}.index` (8-byte entries: u32 offset relative to the base, u32 byte
//! position of the batch starting at that offset) and `{base_offset:020}.timeindex`
//! (12-byte entries: i64 largest timestamp so far in the segment, u32 relative base offset
//! of the batch holding it). Both are big-endian and sparse: one entry per
//! `index_interval_bytes` of log. An index entry is a hint that is verified when used (the
//! batch at the position must start at that offset); the log is the truth, and an index
//! can always be rebuilt from it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch::{verify_batch, BatchHeader, BATCH_HEADER_BYTES};
use crate::fsutil::read_exact_at_new;

/// Bytes of one offset-index entry.
pub(crate) const INDEX_ENTRY_BYTES: usize = 8;
/// Bytes of one time-index entry.
pub(crate) const TIME_ENTRY_BYTES: usize = 12;
/// How much of a segment is read at once while scanning it whole (recovery, rebuilds).
const HEADER_SCAN_CHUNK_BYTES: usize = 64 << 10;
/// How much is read at once while looking for one batch from an index hint: the hint is
/// at most an index interval (4 KiB by default) plus one batch before it, so a fetch
/// reads a few headers, not a scan chunk.
const FIND_CHUNK_BYTES: usize = 4 << 10;
/// Largest segment any log writes: positions in the index are u32, and batches may
/// overshoot `segment_bytes_max` by one append.
pub(crate) const SEGMENT_BYTES_HARD_MAX: u64 = i32::MAX as u64;

/// The three files of a segment.
#[derive(Clone, Debug)]
pub(crate) struct SegmentPaths {
    pub log: PathBuf,
    pub index: PathBuf,
    pub time_index: PathBuf,
}

impl SegmentPaths {
    /// Paths of the segment with `base` in `dir`.
    pub fn new(dir: &Path, base: i64) -> SegmentPaths {
        SegmentPaths {
            log: dir.join(format!("{base:020}.log")),
            index: dir.join(format!("{base:020}.index")),
            time_index: dir.join(format!("{base:020}.timeindex")),
        }
    }
}

/// Parses `{base:020}.<ext>` into the base offset, if the name has that shape.
pub(crate) fn parse_segment_name(name: &str, ext: &str) -> Option<i64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// One offset-index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub rel_offset: u32,
    pub position: u32,
}

/// One time-index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub rel_offset: u32,
}

/// Encodes offset-index entries.
pub(crate) fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_BYTES);
    for e in entries {
        out.extend_from_slice(&e.rel_offset.to_be_bytes());
        out.extend_from_slice(&e.position.to_be_bytes());
    }
    out
}

/// Encodes time-index entries.
pub(crate) fn encode_time_index(entries: &[TimeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TIME_ENTRY_BYTES);
    for e in entries {
        out.extend_from_slice(&e.timestamp.to_be_bytes());
        out.extend_from_slice(&e.rel_offset.to_be_bytes());
    }
    out
}

fn decode_index_entry(b: &[u8]) -> IndexEntry {
    IndexEntry {
        rel_offset: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        position: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    }
}

fn decode_time_entry(b: &[u8]) -> TimeEntry {
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&b[..8]);
    TimeEntry {
        timestamp: i64::from_be_bytes(ts),
        rel_offset: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
    }
}

/// Decodes an offset index, or `None` if it is damaged: a partial entry, offsets or
/// positions not strictly increasing, or a position at or past `segment_bytes`.
pub(crate) fn decode_index(bytes: &[u8], segment_bytes: u64) -> Option<Vec<IndexEntry>> {
    if !bytes.len().is_multiple_of(INDEX_ENTRY_BYTES) {
        return None;
    }
    let entries: Vec<IndexEntry> = bytes
        .chunks_exact(INDEX_ENTRY_BYTES)
        .map(decode_index_entry)
        .collect();
    let monotonic = entries
        .windows(2)
        .all(|w| w[0].rel_offset < w[1].rel_offset && w[0].position < w[1].position);
    let in_bounds = entries.iter().all(|e| (e.position as u64) < segment_bytes);
    (monotonic && in_bounds).then_some(entries)
}

/// Decodes a time index, or `None` if it is damaged (partial entry, timestamps not
/// strictly increasing or offsets decreasing).
pub(crate) fn decode_time_index(bytes: &[u8]) -> Option<Vec<TimeEntry>> {
    if !bytes.len().is_multiple_of(TIME_ENTRY_BYTES) {
        return None;
    }
    let entries: Vec<TimeEntry> = bytes
        .chunks_exact(TIME_ENTRY_BYTES)
        .map(decode_time_entry)
        .collect();
    let monotonic = entries
        .windows(2)
        .all(|w| w[0].timestamp < w[1].timestamp && w[0].rel_offset <= w[1].rel_offset);
    monotonic.then_some(entries)
}

/// The sparse indexes of one segment as batches are appended or scanned, plus the
/// segment's largest timestamp.
#[derive(Clone, Debug)]
pub(crate) struct SegmentIndexes {
    pub base: i64,
    pub interval_bytes: u64,
    /// Bytes appended since the last index entry (decides when the next one is due).
    pub bytes_since_entry: u64,
    pub index: Vec<IndexEntry>,
    pub time: Vec<TimeEntry>,
    /// Largest batch max-timestamp in the segment and the base offset of that batch.
    pub max_timestamp: Option<(i64, i64)>,
}

impl SegmentIndexes {
    /// Empty indexes for a segment starting at `base`.
    pub fn new(base: i64, interval_bytes: u64) -> SegmentIndexes {
        SegmentIndexes {
            base,
            interval_bytes,
            bytes_since_entry: 0,
            index: Vec::new(),
            time: Vec::new(),
            max_timestamp: None,
        }
    }

    /// Indexes loaded from files; `segment_bytes` is the segment's size.
    pub fn from_entries(
        base: i64,
        interval_bytes: u64,
        index: Vec<IndexEntry>,
        time: Vec<TimeEntry>,
        segment_bytes: u64,
    ) -> SegmentIndexes {
        // What the appender would have counted since the last entry: everything after it.
        let bytes_since_entry =
            segment_bytes.saturating_sub(index.last().map_or(0, |e| e.position as u64));
        let max_timestamp = time
            .last()
            .map(|t| (t.timestamp, base + t.rel_offset as i64));
        SegmentIndexes {
            base,
            interval_bytes,
            bytes_since_entry,
            index,
            time,
            max_timestamp,
        }
    }

    /// Accounts for one batch of `total` bytes at `position` (its header has its final
    /// base offset). Adds index entries when `interval_bytes` have passed, like Kafka.
    pub fn observe(&mut self, header: &BatchHeader, position: u64, total: u64) {
        if self
            .max_timestamp
            .is_none_or(|(ts, _)| header.max_timestamp > ts)
        {
            self.max_timestamp = Some((header.max_timestamp, header.base_offset));
        }
        if self.bytes_since_entry >= self.interval_bytes {
            let rel_offset = (header.base_offset - self.base) as u32;
            if self.index.last().is_none_or(|last| {
                last.rel_offset < rel_offset && (last.position as u64) < position
            }) {
                self.index.push(IndexEntry {
                    rel_offset,
                    position: position as u32,
                });
            }
            self.push_time_entry();
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += total;
    }

    /// Records the current largest timestamp in the time index if it grew; done at every
    /// index entry and when the segment is closed, so a closed segment's last time entry
    /// is its largest timestamp.
    pub fn push_time_entry(&mut self) {
        if let Some((ts, offset)) = self.max_timestamp {
            if self.time.last().is_none_or(|last| ts > last.timestamp) {
                self.time.push(TimeEntry {
                    timestamp: ts,
                    rel_offset: (offset - self.base) as u32,
                });
            }
        }
    }

    /// The index entry to start a search for `offset` from: (offset, position) of the last
    /// indexed batch starting at or before it, or the segment start.
    pub fn lookup(&self, offset: i64) -> (i64, u64) {
        let rel = offset - self.base;
        let idx = self.index.partition_point(|e| (e.rel_offset as i64) <= rel);
        match idx.checked_sub(1) {
            Some(i) => (
                self.base + self.index[i].rel_offset as i64,
                self.index[i].position as u64,
            ),
            None => (self.base, 0),
        }
    }

    /// The offset to start a search for the first batch with max timestamp >= `ts` from:
    /// every batch up to the last time entry below `ts` is earlier than `ts`.
    pub fn time_lookup(&self, ts: i64) -> i64 {
        let idx = self.time.partition_point(|e| e.timestamp < ts);
        match idx.checked_sub(1) {
            Some(i) => self.base + self.time[i].rel_offset as i64,
            None => self.base,
        }
    }
}

/// Binary search in an offset-index file: the last entry starting at or before `offset`.
/// Returns `(offset, position)` of that entry, or the segment start.
pub(crate) fn file_index_lookup(
    file: &File,
    file_bytes: u64,
    base: i64,
    offset: i64,
) -> std::io::Result<(i64, u64)> {
    let count = file_bytes / INDEX_ENTRY_BYTES as u64;
    let read = |i: u64| -> std::io::Result<IndexEntry> {
        let mut b = [0u8; INDEX_ENTRY_BYTES];
        file.read_exact_at(&mut b, i * INDEX_ENTRY_BYTES as u64)?;
        Ok(decode_index_entry(&b))
    };
    // Find the number of entries whose offset is <= target (entries are ascending).
    let (mut lo, mut hi) = (0u64, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if base + read(mid)?.rel_offset as i64 <= offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    match lo.checked_sub(1) {
        Some(i) => {
            let e = read(i)?;
            Ok((base + e.rel_offset as i64, e.position as u64))
        }
        None => Ok((base, 0)),
    }
}

/// Binary search in a time-index file; see [`SegmentIndexes::time_lookup`].
pub(crate) fn file_time_lookup(
    file: &File,
    file_bytes: u64,
    base: i64,
    ts: i64,
) -> std::io::Result<i64> {
    let count = file_bytes / TIME_ENTRY_BYTES as u64;
    let read = |i: u64| -> std::io::Result<TimeEntry> {
        let mut b = [0u8; TIME_ENTRY_BYTES];
        file.read_exact_at(&mut b, i * TIME_ENTRY_BYTES as u64)?;
        Ok(decode_time_entry(&b))
    };
    let (mut lo, mut hi) = (0u64, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if read(mid)?.timestamp < ts {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    match lo.checked_sub(1) {
        Some(i) => Ok(base + read(i)?.rel_offset as i64),
        None => Ok(base),
    }
}

/// The last entry of a time-index file as (timestamp, absolute offset): a closed
/// segment's largest timestamp.
pub(crate) fn file_time_last(
    file: &File,
    file_bytes: u64,
    base: i64,
) -> std::io::Result<Option<(i64, i64)>> {
    let count = file_bytes / TIME_ENTRY_BYTES as u64;
    let Some(last) = count.checked_sub(1) else {
        return Ok(None);
    };
    let mut b = [0u8; TIME_ENTRY_BYTES];
    file.read_exact_at(&mut b, last * TIME_ENTRY_BYTES as u64)?;
    let e = decode_time_entry(&b);
    Ok(Some((e.timestamp, base + e.rel_offset as i64)))
}

/// Reads a segment through a window buffer so that walking batch headers costs one read
/// per chunk rather than one per batch.
pub(crate) struct SegmentReader<'a> {
    file: &'a File,
    /// Bytes of the segment that may be read (its published or on-disk length).
    limit: u64,
    window_start: u64,
    window: Vec<u8>,
    /// Least bytes read per refill of the window.
    chunk: usize,
}

impl<'a> SegmentReader<'a> {
    /// A reader of the first `limit` bytes of `file`, for scans of whole segments.
    pub fn new(file: &'a File, limit: u64) -> SegmentReader<'a> {
        SegmentReader::with_chunk(file, limit, HEADER_SCAN_CHUNK_BYTES)
    }

    /// A reader for walking batch headers only: it reads one header at a time, never the
    /// records between them.
    pub fn headers(file: &'a File, limit: u64) -> SegmentReader<'a> {
        SegmentReader::with_chunk(file, limit, BATCH_HEADER_BYTES)
    }

    /// A reader that refills its window `chunk` bytes at a time.
    fn with_chunk(file: &'a File, limit: u64, chunk: usize) -> SegmentReader<'a> {
        SegmentReader {
            file,
            limit,
            window_start: 0,
            window: Vec::new(),
            chunk,
        }
    }

    /// The bytes `[pos, pos + len)`, or `None` if they run past the limit.
    pub fn bytes_at(&mut self, pos: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        let Some(end) = pos.checked_add(len as u64).filter(|end| *end <= self.limit) else {
            return Ok(None);
        };
        let covered =
            pos >= self.window_start && end <= self.window_start + self.window.len() as u64;
        if !covered {
            let want = (len.max(self.chunk) as u64).min(self.limit - pos) as usize;
            self.window = read_exact_at_new(self.file, want, pos)?;
            self.window_start = pos;
        }
        let from = (pos - self.window_start) as usize;
        Ok(Some(&self.window[from..from + len]))
    }

    /// The header of the batch at `pos`: `Ok(None)` at the limit, an error string if the
    /// bytes there are not a plausible batch fitting before the limit.
    pub fn header_at(&mut self, pos: u64) -> std::io::Result<Result<Option<BatchHeader>, String>> {
        if pos >= self.limit {
            return Ok(Ok(None));
        }
        let Some(bytes) = self.bytes_at(pos, BATCH_HEADER_BYTES)? else {
            return Ok(Err(format!(
                "{} bytes at {pos} are too few for a batch header",
                self.limit - pos
            )));
        };
        let header = match BatchHeader::parse(bytes) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if pos + header.total_bytes() as u64 > self.limit {
            return Ok(Err(format!(
                "batch at {pos} of {} bytes runs past the end",
                header.total_bytes()
            )));
        }
        Ok(Ok(Some(header)))
    }
}

/// How a scan of a segment ended.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Position after the last valid batch.
    pub valid_end: u64,
    /// Offset after the last valid batch (the expected next base offset).
    pub next_offset: i64,
    /// Why the scan stopped before the end of the file, if it did.
    pub invalid: Option<String>,
}

/// Scans the batches of a segment from `start` (where a batch with base offset
/// `expected_offset` must begin) to `file_bytes`, checking structure and contiguity, and
/// the CRC of every batch at or after `crc_from`. Calls `visit(header, position)` for
/// each valid batch and stops at the first invalid one.
pub(crate) fn scan_segment(
    file: &File,
    file_bytes: u64,
    start: u64,
    expected_offset: i64,
    crc_from: u64,
    mut visit: impl FnMut(&BatchHeader, u64),
) -> std::io::Result<ScanOutcome> {
    let mut reader = SegmentReader::new(file, file_bytes);
    let mut pos = start;
    let mut next_offset = expected_offset;
    loop {
        let header = match reader.header_at(pos)? {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Ok(ScanOutcome {
                    valid_end: pos,
                    next_offset,
                    invalid: None,
                })
            }
            Err(why) => {
                return Ok(ScanOutcome {
                    valid_end: pos,
                    next_offset,
                    invalid: Some(why),
                })
            }
        };
        if header.base_offset != next_offset {
            let why = format!(
                "batch at {pos} has base offset {}, expected {next_offset}",
                header.base_offset
            );
            return Ok(ScanOutcome {
                valid_end: pos,
                next_offset,
                invalid: Some(why),
            });
        }
        let total = header.total_bytes();
        if pos >= crc_from {
            let bytes = reader.bytes_at(pos, total)?.unwrap_or_default();
            if let Err(e) = verify_batch(bytes) {
                return Ok(ScanOutcome {
                    valid_end: pos,
                    next_offset,
                    invalid: Some(format!("at {pos}: {e}")),
                });
            }
        }
        visit(&header, pos);
        pos += total as u64;
        next_offset = header.last_offset() + 1;
    }
}

/// Where the batch containing a wanted offset is.
#[derive(Debug)]
pub(crate) enum FindBatch {
    /// The batch at this position holds the offset (or is the first batch after it).
    Found(u64, BatchHeader),
    /// Every batch of the segment is below the offset.
    NotInSegment,
    /// The batch at the index position does not start at the indexed offset: the index is
    /// damaged and must be rebuilt.
    IndexMismatch,
}

/// Walks headers from an index hint `(expected_offset, start)` to the first batch whose
/// last offset is >= `offset`. Structural damage in published data is an error.
pub(crate) fn find_batch(
    file: &File,
    segment_bytes: u64,
    start: u64,
    expected_offset: i64,
    offset: i64,
) -> std::io::Result<Result<FindBatch, String>> {
    let mut reader = SegmentReader::with_chunk(file, segment_bytes, FIND_CHUNK_BYTES);
    let mut pos = start;
    let mut first = true;
    loop {
        let header = match reader.header_at(pos)? {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Ok(Ok(if first && start > 0 {
                    FindBatch::IndexMismatch
                } else {
                    FindBatch::NotInSegment
                }))
            }
            Err(_) if first && start > 0 => return Ok(Ok(FindBatch::IndexMismatch)),
            Err(why) => return Ok(Err(why)),
        };
        if first && header.base_offset != expected_offset {
            return Ok(Ok(FindBatch::IndexMismatch));
        }
        first = false;
        if header.last_offset() >= offset {
            return Ok(Ok(FindBatch::Found(pos, header)));
        }
        pos += header.total_bytes() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let paths = SegmentPaths::new(Path::new("/d"), 42);
        let name = paths
            .log
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert_eq!(name, "00000000000000000042.log");
        assert_eq!(parse_segment_name(name, "log"), Some(42));
        assert_eq!(parse_segment_name("42.log", "log"), None);
        assert_eq!(
            parse_segment_name("00000000000000000042.index", "log"),
            None
        );
    }

    #[test]
    fn index_codec_detects_damage() {
        let entries = vec![
            IndexEntry {
                rel_offset: 3,
                position: 100,
            },
            IndexEntry {
                rel_offset: 9,
                position: 5000,
            },
        ];
        let bytes = encode_index(&entries);
        assert_eq!(decode_index(&bytes, 6000), Some(entries.clone()));
        assert_eq!(
            decode_index(&bytes, 5000),
            None,
            "position past the segment"
        );
        assert_eq!(decode_index(&bytes[..5], 6000), None, "partial entry");
        let mut zeros = bytes.clone();
        zeros[8..].fill(0);
        assert_eq!(decode_index(&zeros, 6000), None, "non-monotonic");
        let times = vec![
            TimeEntry {
                timestamp: 5,
                rel_offset: 0,
            },
            TimeEntry {
                timestamp: 9,
                rel_offset: 4,
            },
        ];
        assert_eq!(decode_time_index(&encode_time_index(&times)), Some(times));
    }

    #[test]
    fn lookups_in_memory_and_in_file_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index: Vec<IndexEntry> = (1..50)
            .map(|i| IndexEntry {
                rel_offset: i * 10,
                position: i * 1000,
            })
            .collect();
        let time: Vec<TimeEntry> = (1..50)
            .map(|i| TimeEntry {
                timestamp: i as i64 * 100,
                rel_offset: i * 10,
            })
            .collect();
        let idx = SegmentIndexes::from_entries(1000, 4096, index.clone(), time.clone(), 60_000);
        let index_path = dir.path().join("i");
        let time_path = dir.path().join("t");
        std::fs::write(&index_path, encode_index(&index)).expect("write");
        std::fs::write(&time_path, encode_time_index(&time)).expect("write");
        let index_file = File::open(&index_path).expect("open");
        let time_file = File::open(&time_path).expect("open");
        let index_len = (index.len() * INDEX_ENTRY_BYTES) as u64;
        let time_len = (time.len() * TIME_ENTRY_BYTES) as u64;
        for offset in [1000, 1005, 1010, 1011, 1490, 1500, 9999] {
            assert_eq!(
                idx.lookup(offset),
                file_index_lookup(&index_file, index_len, 1000, offset).expect("read")
            );
        }
        for ts in [0, 100, 101, 4900, 5000, 99999] {
            assert_eq!(
                idx.time_lookup(ts),
                file_time_lookup(&time_file, time_len, 1000, ts).expect("read")
            );
        }
        assert_eq!(
            file_time_last(&time_file, time_len, 1000).expect("read"),
            Some((4900, 1490))
        );
        assert_eq!(idx.max_timestamp, Some((4900, 1490)));
    }
}
