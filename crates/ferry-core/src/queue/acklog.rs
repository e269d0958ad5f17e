//! A durable queue's persisted cursor: the companion log `__ferry_qa.<key>` of compact
//! records — *settle* records (ranges of offsets of one priority level that left the
//! queue: acked, expired, dropped, purged) and *snapshots* (every level's mark-delete
//! position, read position and settled ranges above the mark). Replay applies them in
//! order; a snapshot replaces everything before it, and after writing one the records
//! before it are deleted, so the log stays short. Ack records are written to the page
//! cache at once and flushed in the background (a crash may redeliver the last second's
//! acked messages, as RabbitMQ may); the store flushes them at a clean shutdown.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_storage::batch::{decode_records, split_batches, BatchBuilder};
use ferry_storage::{FlushPolicy, LogConfig, PartitionLog};

use super::ranges::RangeSet;
use crate::message::{put_svarint, put_uvarint, Reader};
use crate::mq::{MqError, MqResult};
use crate::CoreError;

/// Record tag: settled ranges of one level.
const TAG_SETTLE: u8 = 1;
/// Record tag: a snapshot of every level.
const TAG_SNAPSHOT: u8 = 2;
/// Record tag: a snapshot written at a clean shutdown (the read positions in it are exact;
/// after anything else, every recovered message is flagged redelivered).
const TAG_CLEAN_SNAPSHOT: u8 = 3;
/// Bytes read per step while replaying.
const REPLAY_READ_BYTES: u32 = 4 << 20;
/// Ack logs roll small segments so that compaction frees disk soon.
const ACK_SEGMENT_BYTES: u64 = 8 << 20;
/// How often unflushed ack records reach the disk.
const ACK_FLUSH_INTERVAL_MS: u64 = 1000;
/// A snapshot is written (and the records before it dropped) after this many records.
pub(crate) const ACK_RECORDS_PER_SNAPSHOT: u64 = 20_000;
/// Largest ack record (a snapshot of many ranges).
const ACK_BATCH_BYTES_MAX: u32 = 64 << 20;

/// One level's persisted cursor.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LevelCursor {
    /// Every offset below is settled.
    pub mark_delete: i64,
    /// Offsets at or above `mark_delete` that are settled.
    pub settled: RangeSet,
    /// Highest read position seen: offsets below it may have been delivered.
    pub read_pos: i64,
}

impl LevelCursor {
    /// Settles `[start, end)` and advances the mark over settled offsets.
    pub fn settle(&mut self, start: i64, end: i64) {
        let start = start.max(self.mark_delete);
        if start >= end {
            return;
        }
        self.settled.insert_range(start, end);
        while let Some(next) = self.settled.take_from(self.mark_delete) {
            self.mark_delete = next;
        }
    }
}

/// Log config of an ack log.
pub(crate) fn ack_log_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: ACK_SEGMENT_BYTES,
        segment_ms_max: i64::MAX as u64,
        retention_ms: None,
        retention_bytes: None,
        flush: FlushPolicy::Async {
            interval_ms: ACK_FLUSH_INTERVAL_MS,
            bytes: ACK_SEGMENT_BYTES,
        },
        batch_bytes_max: ACK_BATCH_BYTES_MAX,
        ..LogConfig::default()
    }
}

fn corrupt(what: &str) -> MqError {
    MqError::Core(CoreError::CorruptMessage(format!("queue ack log: {what}")))
}

fn put_ranges<'a>(buf: &mut BytesMut, ranges: impl ExactSizeIterator<Item = (i64, i64)> + 'a) {
    put_uvarint(buf, ranges.len() as u64);
    let mut prev = 0;
    for (start, end) in ranges {
        put_svarint(buf, start - prev);
        put_uvarint(buf, (end - start) as u64);
        prev = end;
    }
}

fn read_ranges(reader: &mut Reader<'_>, mut apply: impl FnMut(i64, i64)) -> MqResult<()> {
    let n = reader.uvarint()?;
    let mut prev = 0i64;
    for _ in 0..n {
        let start = prev
            .checked_add(reader.svarint()?)
            .ok_or_else(|| corrupt("offset overflow"))?;
        let len = i64::try_from(reader.uvarint()?).map_err(|_| corrupt("range length"))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| corrupt("offset overflow"))?;
        apply(start, end);
        prev = end;
    }
    Ok(())
}

/// Encodes a settle record.
pub(crate) fn settle_record(level: u8, read_pos: i64, ranges: &[(i64, i64)]) -> Bytes {
    let mut buf = BytesMut::with_capacity(8 + ranges.len() * 4);
    buf.put_u8(TAG_SETTLE);
    buf.put_u8(level);
    put_svarint(&mut buf, read_pos);
    put_ranges(&mut buf, ranges.iter().copied());
    buf.freeze()
}

/// Encodes a snapshot of every level; `clean` at a clean shutdown.
pub(crate) fn snapshot_record(levels: &[&LevelCursor], clean: bool) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(if clean {
        TAG_CLEAN_SNAPSHOT
    } else {
        TAG_SNAPSHOT
    });
    put_uvarint(&mut buf, levels.len() as u64);
    for level in levels {
        put_svarint(&mut buf, level.mark_delete);
        put_svarint(&mut buf, level.read_pos);
        put_ranges(
            &mut buf,
            level.settled.iter().collect::<Vec<_>>().into_iter(),
        );
    }
    buf.freeze()
}

/// Applies one record to `levels`; whether it was a clean-shutdown snapshot.
fn apply(value: &Bytes, levels: &mut [LevelCursor]) -> MqResult<bool> {
    let mut reader = Reader { buf: value, pos: 0 };
    let tag = reader.u8()?;
    match tag {
        TAG_SETTLE => {
            let level = reader.u8()? as usize;
            let read_pos = reader.svarint()?;
            let Some(cursor) = levels.get_mut(level) else {
                return Err(corrupt("settle record for a missing priority level"));
            };
            cursor.read_pos = cursor.read_pos.max(read_pos);
            read_ranges(&mut reader, |s, e| cursor.settle(s, e))?;
        }
        TAG_SNAPSHOT | TAG_CLEAN_SNAPSHOT => {
            let n = reader.uvarint()? as usize;
            if n != levels.len() {
                return Err(corrupt("snapshot with another number of priority levels"));
            }
            for cursor in levels.iter_mut() {
                *cursor = LevelCursor {
                    mark_delete: reader.svarint()?,
                    read_pos: reader.svarint()?,
                    settled: RangeSet::default(),
                };
                let mark = cursor.mark_delete;
                read_ranges(&mut reader, |s, e| cursor.settled.insert_range(s, e))?;
                cursor.settled.remove_below(mark);
                while let Some(next) = cursor.settled.take_from(cursor.mark_delete) {
                    cursor.mark_delete = next;
                }
            }
        }
        tag => return Err(corrupt(&format!("unknown record tag {tag}"))),
    }
    Ok(tag == TAG_CLEAN_SNAPSHOT)
}

/// Replays an ack log into one cursor per level; whether its last record is a
/// clean-shutdown snapshot.
pub(crate) fn replay(log: &PartitionLog, level_count: usize) -> MqResult<(Vec<LevelCursor>, bool)> {
    let mut levels = vec![LevelCursor::default(); level_count];
    let mut clean = false;
    let end = log.high_watermark();
    let mut offset = log.log_start_offset();
    while offset < end {
        let read = log.read(offset, REPLAY_READ_BYTES, end)?;
        if read.records.is_empty() || read.next_offset <= offset {
            break;
        }
        for (header, batch) in split_batches(&read.records, true)? {
            let records = decode_records(&batch)?;
            for record in records {
                if header.base_offset + i64::from(record.offset_delta) < offset {
                    continue;
                }
                if let Some(value) = &record.value {
                    clean = apply(value, &mut levels)?;
                }
            }
        }
        offset = read.next_offset;
    }
    Ok((levels, clean))
}

/// Appends one ack record.
pub(crate) fn append(log: &Arc<PartitionLog>, value: Bytes, now_ms: i64) -> MqResult<i64> {
    let mut builder = BatchBuilder::new(now_ms);
    builder.push(None, Some(value), Vec::new(), now_ms);
    let result = log.append(builder.build(), 0, now_ms)?;
    Ok(result.base_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replay_in_order() {
        let mut levels = vec![LevelCursor::default(); 2];
        apply(&settle_record(0, 5, &[(0, 2), (4, 5)]), &mut levels).expect("applies");
        assert_eq!(levels[0].mark_delete, 2);
        assert!(levels[0].settled.contains(4));
        apply(&settle_record(0, 6, &[(2, 4)]), &mut levels).expect("applies");
        assert_eq!(levels[0].mark_delete, 5);
        assert_eq!(levels[0].settled.len(), 0);
        assert_eq!(levels[0].read_pos, 6);
        let mut other = LevelCursor {
            mark_delete: 10,
            read_pos: 20,
            settled: RangeSet::default(),
        };
        other.settled.insert_range(12, 14);
        let snap = snapshot_record(&[&levels[0], &other], true);
        let mut replayed = vec![LevelCursor::default(); 2];
        assert!(apply(&snap, &mut replayed).expect("applies"));
        assert_eq!(replayed[0], levels[0]);
        assert_eq!(replayed[1], other);
        assert!(apply(&settle_record(5, 0, &[]), &mut replayed).is_err());
        assert!(apply(&Bytes::from_static(&[9]), &mut replayed).is_err());
    }
}
