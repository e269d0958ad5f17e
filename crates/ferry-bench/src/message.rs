//! Each message's stamp.
//!
//! Every value starts with a stamp (producer id, per-partition sequence, send time) so
//! that the consumer can measure end-to-end latency and check that each message arrives
//! once and in order; the rest of the value is padding. Batches are built with
//! `ferry_storage::batch::BatchBuilder::push_padded` and walked with
//! `ferry_storage::batch::visit_fetched_records`, the storage engine's own
//! allocation-free encoder and visitor.

/// Bytes of the stamp at the start of every value: producer id (u32), sequence (u64),
/// send time in ns since the run's start (u64).
pub const PAYLOAD_HEADER_BYTES: usize = 20;

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
    fn stamped_batches_are_valid_and_walk_back() {
        use ferry_storage::batch::{verify_batch, visit_fetched_records, BatchBuilder};
        let mut builder = BatchBuilder::reusable();
        for i in 0..300u64 {
            let stamp = Stamp {
                producer: 3,
                sequence: i,
                sent_ns: i * 10,
            };
            builder.push_padded(None, &stamp.encode(), 100 + i as usize, 1_000);
        }
        let batch = builder.finish();
        verify_batch(&batch).expect("valid batch");
        let mut seen = Vec::new();
        let next = visit_fetched_records(&batch, 10, |offset, record| {
            let value = record.value.unwrap_or_default();
            let stamp = Stamp::decode(value).expect("stamp");
            seen.push((offset, stamp.sequence, value.len()));
            Ok::<(), crate::BenchError>(())
        })
        .expect("walk");
        assert_eq!(next, 300);
        assert_eq!(seen.len(), 290);
        assert_eq!(seen[0], (10, 10, 110));
    }
}
