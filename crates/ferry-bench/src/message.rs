//! The bytes on the wire: each message's stamp, lean RecordBatch v2 encoding for
//! producers and allocation-free record walking for consumers.
//!
//! Every value starts with a stamp (producer id, per-partition sequence, send time) so
//! that the consumer can measure end-to-end latency and check that each message arrives
//! once and in order; the rest of the value is padding.

use bytes::{BufMut, BytesMut};
use ferry_storage::batch::{BatchHeader, BATCH_HEADER_BYTES};

use crate::error::{BenchError, Result};

/// Bytes of the stamp at the start of every value: producer id (u32), sequence (u64),
/// send time in ns since the run's start (u64).
pub const PAYLOAD_HEADER_BYTES: usize = 20;

/// Offset of the CRC in a batch header.
const CRC_POS: usize = 17;
/// Offset of the attributes (start of the CRC-covered part).
const ATTRIBUTES_POS: usize = 21;
/// Magic byte of RecordBatch v2.
const MAGIC_V2: i8 = 2;
/// Attribute bits carrying the compression codec.
const COMPRESSION_MASK: i16 = 0x07;

/// A message's stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Which producer sent it.
    pub producer: u32,
    /// Its position among this producer's messages to this partition, from 0.
    pub sequence: u64,
    /// When it was handed to the driver, in ns since the run's start.
    pub sent_ns: u64,
}

impl Stamp {
    /// The stamp's wire form.
    pub fn encode(&self) -> [u8; PAYLOAD_HEADER_BYTES] {
        let mut out = [0u8; PAYLOAD_HEADER_BYTES];
        out[..4].copy_from_slice(&self.producer.to_be_bytes());
        out[4..12].copy_from_slice(&self.sequence.to_be_bytes());
        out[12..20].copy_from_slice(&self.sent_ns.to_be_bytes());
        out
    }

    /// Reads the stamp at the start of a value.
    pub fn decode(value: &[u8]) -> Option<Stamp> {
        let head = value.get(..PAYLOAD_HEADER_BYTES)?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut producer = [0u8; 4];
        producer.copy_from_slice(&head[..4]);
        Some(Stamp {
            producer: u32::from_be_bytes(producer),
            sequence: u64_at(4),
            sent_ns: u64_at(12),
        })
    }
}

/// Builds one uncompressed RecordBatch v2 in a reused buffer, without per-record
/// allocation. The header is reserved up front and filled in by [`BatchEncoder::finish`].
#[derive(Debug)]
pub struct BatchEncoder {
    buf: BytesMut,
    count: i32,
    base_timestamp_ms: i64,
    max_timestamp_ms: i64,
}

impl Default for BatchEncoder {
    fn default() -> Self {
        BatchEncoder::new()
    }
}

impl BatchEncoder {
    /// An empty batch.
    pub fn new() -> BatchEncoder {
        let mut buf = BytesMut::new();
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        BatchEncoder {
            buf,
            count: 0,
            base_timestamp_ms: 0,
            max_timestamp_ms: 0,
        }
    }

    /// Records pushed since the last [`BatchEncoder::finish`].
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record is pending.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch would have now.
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends a record whose value is `stamp` followed by zero padding up to
    /// `value_bytes` (at least [`PAYLOAD_HEADER_BYTES`]).
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        stamp: &Stamp,
        value_bytes: usize,
        timestamp_ms: i64,
    ) {
        debug_assert!(value_bytes >= PAYLOAD_HEADER_BYTES);
        if self.count == 0 {
            self.base_timestamp_ms = timestamp_ms;
            self.max_timestamp_ms = timestamp_ms;
        }
        let timestamp_delta = timestamp_ms - self.base_timestamp_ms;
        let offset_delta = self.count;
        let key_len = key.map_or(-1, |k| k.len() as i64);
        let body_len = 1
            + varint_len(zigzag(timestamp_delta))
            + varint_len(zigzag(offset_delta as i64))
            + varint_len(zigzag(key_len))
            + key.map_or(0, |k| k.len())
            + varint_len(zigzag(value_bytes as i64))
            + value_bytes
            + 1;
        self.buf.reserve(body_len + 5);
        put_varint(&mut self.buf, zigzag(body_len as i64));
        self.buf.put_u8(0); // record attributes: unused
        put_varint(&mut self.buf, zigzag(timestamp_delta));
        put_varint(&mut self.buf, zigzag(offset_delta as i64));
        put_varint(&mut self.buf, zigzag(key_len));
        if let Some(key) = key {
            self.buf.put_slice(key);
        }
        put_varint(&mut self.buf, zigzag(value_bytes as i64));
        self.buf.put_slice(&stamp.encode());
        self.buf.put_bytes(0, value_bytes - PAYLOAD_HEADER_BYTES);
        put_varint(&mut self.buf, 0); // no headers
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        self.count += 1;
    }

    /// Fills in the header and CRC and returns the batch; the encoder is empty again.
    pub fn finish(&mut self) -> bytes::Bytes {
        let total = self.buf.len();
        let header = &mut self.buf[..BATCH_HEADER_BYTES];
        header[0..8].copy_from_slice(&0i64.to_be_bytes()); // base offset: the broker's
        header[8..12].copy_from_slice(&((total - 12) as i32).to_be_bytes());
        header[12..16].copy_from_slice(&(-1i32).to_be_bytes()); // leader epoch
        header[16] = MAGIC_V2 as u8;
        header[21..23].copy_from_slice(&0i16.to_be_bytes()); // uncompressed, create time
        header[23..27].copy_from_slice(&(self.count - 1).max(0).to_be_bytes());
        header[27..35].copy_from_slice(&self.base_timestamp_ms.to_be_bytes());
        header[35..43].copy_from_slice(&self.max_timestamp_ms.to_be_bytes());
        header[43..51].copy_from_slice(&(-1i64).to_be_bytes()); // no producer id
        header[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        header[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        header[57..61].copy_from_slice(&self.count.to_be_bytes());
        let crc = crc32c::crc32c(&self.buf[ATTRIBUTES_POS..]);
        self.buf[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        let batch = self.buf.split().freeze();
        self.buf.put_bytes(0, BATCH_HEADER_BYTES);
        self.count = 0;
        batch
    }
}

/// Calls `each(offset, value)` for every record at or after `from_offset` in the whole
/// batches of a fetched records section; a partial batch at the end is ignored (brokers
/// may cut the last batch at the size limit). Returns the offset after the last whole
/// batch seen (`from_offset` if none).
pub fn for_each_record(
    records: &[u8],
    from_offset: i64,
    mut each: impl FnMut(i64, &[u8]) -> Result<()>,
) -> Result<i64> {
    let mut next_offset = from_offset;
    let mut pos = 0;
    while records.len() - pos >= BATCH_HEADER_BYTES {
        let header = BatchHeader::parse(&records[pos..])
            .map_err(|e| BenchError::Protocol(format!("fetched batch: {e}")))?;
        let end = pos + header.total_bytes();
        if end > records.len() {
            break;
        }
        if header.attributes & COMPRESSION_MASK != 0 {
            return Err(BenchError::Protocol(
                "fetched a compressed batch; the driver only sends uncompressed ones".into(),
            ));
        }
        if !header.is_control() {
            let mut cursor = Cursor {
                buf: &records[pos + BATCH_HEADER_BYTES..end],
                pos: 0,
            };
            for _ in 0..header.record_count {
                let len = cursor.length()?.ok_or_else(|| corrupt("null record"))?;
                let record_end = cursor.pos + len;
                cursor.skip(1)?; // attributes
                cursor.varint()?; // timestamp delta
                let offset = header.base_offset + cursor.varint()?;
                if let Some(key_len) = cursor.length()? {
                    cursor.skip(key_len)?;
                }
                let value = match cursor.length()? {
                    Some(value_len) => cursor.take(value_len)?,
                    None => &[][..],
                };
                if record_end > cursor.buf.len() {
                    return Err(corrupt("record longer than its batch"));
                }
                cursor.pos = record_end;
                if offset >= from_offset {
                    each(offset, value)?;
                }
            }
        }
        next_offset = next_offset.max(header.last_offset() + 1);
        pos = end;
    }
    Ok(next_offset)
}

fn corrupt(what: &str) -> BenchError {
    BenchError::Protocol(format!("fetched record: {what}"))
}

/// A read position in a record section.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<i64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| corrupt("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(corrupt("varint too long"))
    }

    /// A varint length; `None` for -1 (null).
    fn length(&mut self) -> Result<Option<usize>> {
        match self.varint()? {
            -1 => Ok(None),
            n => usize::try_from(n)
                .map(Some)
                .map_err(|_| corrupt("negative length")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| corrupt("length overflow"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| corrupt("truncated"))?;
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let s = Stamp {
            producer: 7,
            sequence: u64::MAX - 1,
            sent_ns: 123_456_789,
        };
        assert_eq!(Stamp::decode(&s.encode()), Some(s));
        assert_eq!(Stamp::decode(&[0u8; 5]), None);
    }

    #[test]
    fn encoded_batches_are_valid_and_walk_back() {
        let mut encoder = BatchEncoder::new();
        for round in 0..2u64 {
            for i in 0..300u64 {
                let stamp = Stamp {
                    producer: 3,
                    sequence: round * 1000 + i,
                    sent_ns: i * 10,
                };
                let key = format!("key-{i}");
                let key = (i % 2 == 0).then_some(key.as_bytes());
                encoder.push(key, &stamp, 100 + i as usize, 1_000 + i as i64);
            }
            let batch = encoder.finish();
            assert!(encoder.is_empty());
            // The storage engine's own decoder and CRC check accept it.
            ferry_storage::batch::verify_batch(&batch).expect("valid batch");
            let records = ferry_storage::batch::decode_records(&batch).expect("decode");
            assert_eq!(records.len(), 300);
            assert_eq!(records[5].value.as_ref().map(|v| v.len()), Some(105));
            assert_eq!(records[4].key.as_deref(), Some(&b"key-4"[..]));
            assert_eq!(records[5].key, None);
            assert_eq!(records[299].timestamp_delta, 299);

            let mut seen = Vec::new();
            let next = for_each_record(&batch, 10, |offset, value| {
                let stamp = Stamp::decode(value).expect("stamp");
                seen.push((offset, stamp.sequence, value.len()));
                Ok(())
            })
            .expect("walk");
            assert_eq!(next, 300);
            assert_eq!(seen.len(), 290);
            assert_eq!(seen[0], (10, round * 1000 + 10, 110));
        }
    }

    #[test]
    fn partial_trailing_batch_is_ignored_and_garbage_is_an_error() {
        let mut encoder = BatchEncoder::new();
        encoder.push(
            None,
            &Stamp {
                producer: 0,
                sequence: 0,
                sent_ns: 0,
            },
            20,
            0,
        );
        let first = encoder.finish();
        encoder.push(
            None,
            &Stamp {
                producer: 0,
                sequence: 1,
                sent_ns: 0,
            },
            20,
            0,
        );
        let second = encoder.finish();
        let mut both = first.to_vec();
        both.extend_from_slice(&second[..second.len() - 3]);
        let mut count = 0;
        let next = for_each_record(&both, 0, |_, _| {
            count += 1;
            Ok(())
        })
        .expect("walk");
        assert_eq!((count, next), (1, 1));
        let mut garbage = first.to_vec();
        garbage[16] = 9; // magic
        assert!(for_each_record(&garbage, 0, |_, _| Ok(())).is_err());
    }
}
