//! Kafka's record-batch compression codecs, for the parts of Ferry that read inside stored
//! batches (timestamp lookups, AMQP stream consumers). Stored batches are never
//! recompressed: this only ever decompresses.

use bytes::Bytes;
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};

/// The records section of a batch compressed with `codec` (the batch attribute's low three
/// bits: 1 gzip, 2 snappy, 3 lz4, 4 zstd), decompressed; `None` for an unknown codec or
/// bytes that do not decompress. Installed as the store's decompressor by `ferry serve`
/// ([`ferry_core::Broker::set_decompressor`]).
pub fn decompress(codec: u8, compressed: &[u8]) -> Option<Vec<u8>> {
    let mut input = Bytes::copy_from_slice(compressed);
    let plain = |out: &mut Bytes| Ok(out.to_vec());
    let result = match codec {
        1 => Gzip::decompress(&mut input, plain),
        2 => Snappy::decompress(&mut input, plain),
        3 => Lz4::decompress(&mut input, plain),
        4 => Zstd::decompress(&mut input, plain),
        _ => return None,
    };
    result.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{decode_batches, encode_batch, parse_compression, ProducerRecord};
    use ferry_storage::batch::{decode_record_section, BatchHeader, BATCH_HEADER_BYTES};

    #[test]
    fn every_codec_round_trips_what_the_client_compresses() {
        let records: Vec<ProducerRecord> = (0..20)
            .map(|i| ProducerRecord {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'x'; 100 + i])),
                headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
                timestamp_ms: 1_700_000_000_000 + i as i64,
            })
            .collect();
        for name in ["gzip", "snappy", "lz4", "zstd"] {
            let compression = parse_compression(name).expect("codec");
            let batch = encode_batch(&records, compression).expect("encode");
            let header = BatchHeader::parse(&batch).expect("header");
            assert_ne!(header.compression(), 0, "{name}");
            let plain = decompress(header.compression(), &batch[BATCH_HEADER_BYTES..])
                .unwrap_or_else(|| panic!("{name} decompresses"));
            let decoded = decode_record_section(&plain, header.record_count).expect("records");
            let expected = decode_batches(0, batch.clone(), 0).expect("client decodes");
            assert_eq!(decoded.len(), 20, "{name}");
            assert_eq!(expected.records.len(), 20, "{name}");
            for (got, want) in decoded.iter().zip(&expected.records) {
                assert_eq!(got.value, want.value, "{name}");
                assert_eq!(got.key, want.key, "{name}");
            }
            assert!(decompress(header.compression(), b"not compressed data").is_none());
        }
        assert!(decompress(7, b"anything").is_none());
    }
}
