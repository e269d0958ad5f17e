//! Building record batches to produce and reading the batches a fetch returns.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};

use super::error::{ClientError, Result};

/// Bytes before a batch's `batch_length` field ends (base offset + length).
const BATCH_LOG_OVERHEAD: usize = 12;
/// Offset of `attributes` in a RecordBatch v2 header.
const ATTRIBUTES_OFFSET: usize = 21;
/// Offset of `last_offset_delta` in a RecordBatch v2 header.
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
/// Offset of `records_count` in a RecordBatch v2 header.
const RECORDS_COUNT_OFFSET: usize = 57;
/// Size of a RecordBatch v2 header.
const BATCH_HEADER_BYTES: usize = 61;
/// Smallest encoded record (length, attributes, deltas, key/value lengths, header count).
const MIN_RECORD_BYTES: usize = 7;
/// Most records a compressed batch may claim; guards the decoder's up-front allocation.
const MAX_RECORDS_PER_COMPRESSED_BATCH: usize = 1 << 20;
/// Attribute bits of the compression codec.
const COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit of control batches (transaction markers), never shown to users.
const CONTROL_FLAG: i16 = 1 << 5;

/// A record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Key; `None` is a null key.
    pub key: Option<Bytes>,
    /// Value; `None` is a null value (a tombstone).
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Creation time in milliseconds since the epoch.
    pub timestamp_ms: i64,
}

impl ProducerRecord {
    /// Approximate encoded size, for batching decisions.
    pub fn encoded_size_hint(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 10)
            .sum();
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + headers
            + 21
    }
}

/// A record read from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Timestamp in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Whether the timestamp is the log-append time rather than the creation time.
    pub log_append_time: bool,
    /// Key; `None` is a null key.
    pub key: Option<Bytes>,
    /// Value; `None` is a null value.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Encodes `records` as one RecordBatch v2 (not idempotent, no transaction).
pub fn encode_batch(records: &[ProducerRecord], compression: Compression) -> Result<Bytes> {
    if records.is_empty() {
        return Ok(Bytes::new());
    }
    let count = i32::try_from(records.len())
        .map_err(|_| ClientError::Invalid("too many records in one batch".to_owned()))?;
    let records: Vec<Record> = records
        .iter()
        .zip(0..count)
        .map(|(r, i)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            // The encoder groups records into one batch while `offset - sequence` stays
            // constant and derives the base sequence from the first record: `i - 1` gives
            // one batch whose base sequence is -1 (no sequence), as a plain producer sends.
            sequence: i - 1,
            timestamp: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options).map_err(|e| {
        ClientError::Encode {
            what: "record batch".to_owned(),
            reason: e.to_string(),
        }
    })?;
    Ok(buf.freeze())
}

/// The records of one fetched partition, and where the next fetch should start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodedRecords {
    /// Data records at or after the fetch offset, in offset order.
    pub records: Vec<ConsumedRecord>,
    /// Offset after the last complete batch, if any batch was complete.
    pub next_offset: Option<i64>,
}

/// Decodes the batches of a fetch response for `partition`. Records before `fetch_offset`
/// (the broker returns whole batches) and control batches are skipped; a trailing partial
/// batch (cut by the fetch size) is ignored.
pub fn decode_batches(
    partition: i32,
    mut data: Bytes,
    fetch_offset: i64,
) -> Result<DecodedRecords> {
    let mut out = DecodedRecords::default();
    while data.len() >= BATCH_LOG_OVERHEAD {
        let base_offset = i64::from_be_bytes(array_at(&data, 0));
        let batch_length = i32::from_be_bytes(array_at(&data, 8));
        let Some(total) = usize::try_from(batch_length)
            .ok()
            .map(|l| l + BATCH_LOG_OVERHEAD)
        else {
            return Err(bad_batch(
                partition,
                format!("negative batch length {batch_length}"),
            ));
        };
        if total > data.len() {
            break; // partial batch at the end of the response
        }
        if total < BATCH_HEADER_BYTES {
            return Err(bad_batch(
                partition,
                format!("batch of {total} bytes is shorter than its header"),
            ));
        }
        let mut batch = data.split_to(total);
        let attributes = i16::from_be_bytes(array_at(&batch, ATTRIBUTES_OFFSET));
        let last_offset_delta = i32::from_be_bytes(array_at(&batch, LAST_OFFSET_DELTA_OFFSET));
        let records_count = i32::from_be_bytes(array_at(&batch, RECORDS_COUNT_OFFSET));
        check_record_count(partition, records_count, total, attributes)?;
        out.next_offset = Some(base_offset + i64::from(last_offset_delta) + 1);
        if attributes & CONTROL_FLAG != 0 {
            continue;
        }
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| bad_batch(partition, e.to_string()))?;
        out.records.extend(
            set.records
                .into_iter()
                .filter(|r| r.offset >= fetch_offset && !r.control)
                .map(|r| ConsumedRecord {
                    partition,
                    offset: r.offset,
                    timestamp_ms: r.timestamp,
                    log_append_time: r.timestamp_type == TimestampType::LogAppend,
                    key: r.key,
                    value: r.value,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                }),
        );
    }
    Ok(out)
}

/// Rejects record counts that cannot fit the batch, before the decoder allocates for them.
fn check_record_count(
    partition: i32,
    records_count: i32,
    batch_bytes: usize,
    attributes: i16,
) -> Result<()> {
    let count = usize::try_from(records_count)
        .map_err(|_| bad_batch(partition, format!("negative record count {records_count}")))?;
    let limit = if attributes & COMPRESSION_MASK == 0 {
        (batch_bytes - BATCH_HEADER_BYTES) / MIN_RECORD_BYTES
    } else {
        MAX_RECORDS_PER_COMPRESSED_BATCH
    };
    if count > limit {
        return Err(bad_batch(
            partition,
            format!("{count} records cannot fit a batch of {batch_bytes} bytes"),
        ));
    }
    Ok(())
}

/// Reads a fixed-size big-endian field; callers have checked the length.
fn array_at<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&data[at..at + N]);
    out
}

fn bad_batch(partition: i32, reason: String) -> ClientError {
    ClientError::CorruptRecords { partition, reason }
}

/// Parses a compression codec name as Kafka spells it (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
pub fn parse_compression(name: &str) -> Option<Compression> {
    match name.to_ascii_lowercase().as_str() {
        "none" => Some(Compression::None),
        "gzip" => Some(Compression::Gzip),
        "snappy" => Some(Compression::Snappy),
        "lz4" => Some(Compression::Lz4),
        "zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&'static str>, value: &'static str) -> ProducerRecord {
        ProducerRecord {
            key: key.map(|k| Bytes::from_static(k.as_bytes())),
            value: Some(Bytes::from_static(value.as_bytes())),
            headers: vec![("h".to_owned(), Some(Bytes::from_static(b"1")))],
            timestamp_ms: 1_700_000_000_000,
        }
    }

    /// Rewrites a batch's base offset as a broker does on append.
    fn at_offset(batch: &Bytes, base: i64) -> Bytes {
        let mut b = BytesMut::from(&batch[..]);
        b[..8].copy_from_slice(&base.to_be_bytes());
        b.freeze()
    }

    #[test]
    fn round_trip_every_codec() {
        let records = vec![
            record(Some("k"), "a"),
            record(None, "b"),
            record(Some("k2"), "c"),
        ];
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let compression = parse_compression(codec).expect("codec");
            let batch = encode_batch(&records, compression).expect("encode");
            let batch = at_offset(&batch, 10);
            let decoded = decode_batches(2, batch, 11).expect("decode");
            assert_eq!(decoded.next_offset, Some(13), "{codec}");
            let values: Vec<_> = decoded.records.iter().map(|r| r.value.clone()).collect();
            assert_eq!(
                values,
                vec![
                    Some(Bytes::from_static(b"b")),
                    Some(Bytes::from_static(b"c"))
                ]
            );
            assert_eq!(decoded.records[0].offset, 11);
            assert_eq!(decoded.records[0].key, None);
            assert_eq!(decoded.records[1].key, Some(Bytes::from_static(b"k2")));
            assert_eq!(decoded.records[1].partition, 2);
            assert_eq!(decoded.records[1].headers, records[2].headers);
            assert_eq!(decoded.records[1].timestamp_ms, 1_700_000_000_000);
        }
    }

    #[test]
    fn encodes_one_batch_without_sequence() {
        let batch = encode_batch(&[record(None, "a"), record(None, "b")], Compression::None)
            .expect("encode");
        let info = RecordBatchDecoder::decode_batch_info(&mut batch.clone()).expect("info");
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].record_count, 2);
        assert_eq!(info[0].base_sequence, -1);
        assert_eq!(info[0].producer_id, -1);
    }

    #[test]
    fn partial_trailing_batch_is_ignored() {
        let first = at_offset(
            &encode_batch(&[record(None, "a")], Compression::None).expect("encode"),
            0,
        );
        let second = at_offset(
            &encode_batch(&[record(None, "b")], Compression::None).expect("encode"),
            1,
        );
        let mut data = BytesMut::from(&first[..]);
        data.extend_from_slice(&second[..second.len() - 5]);
        let decoded = decode_batches(0, data.freeze(), 0).expect("decode");
        assert_eq!(decoded.records.len(), 1);
        assert_eq!(decoded.next_offset, Some(1));
    }

    #[test]
    fn corrupt_batches_are_errors_not_panics() {
        let batch = encode_batch(&[record(None, "a")], Compression::None).expect("encode");
        let mut bad = BytesMut::from(&batch[..]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff; // breaks the CRC
        assert!(decode_batches(0, bad.freeze(), 0).is_err());
        let mut huge_count = BytesMut::from(&batch[..]);
        huge_count[RECORDS_COUNT_OFFSET..RECORDS_COUNT_OFFSET + 4]
            .copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_batches(0, huge_count.freeze(), 0).is_err());
        let mut negative = BytesMut::from(&batch[..]);
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(decode_batches(0, negative.freeze(), 0).is_err());
        let mut short = BytesMut::from(&batch[..]);
        short[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert!(decode_batches(0, short.freeze(), 0).is_err());
    }
}
