//! Stream queues: the Kafka topic of the same name (one partition), read by each consumer
//! from its own position with no cursor state; acks only grant credit (the adapter's).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use ferry_storage::batch::{split_batches, BatchHeader};

use super::settings::max_age_ms;
use super::{Delivery, DeliveryId, EnqueueOutcome, QueueSettings, StreamStart};
use crate::message::{message_from_record, FieldTable, FieldValue, Message};
use crate::mq::{MqError, MqResult};
use crate::partition::{AppendOutcome, Partition};
use crate::topic::{is_internal_name, validate_topic_name};
use crate::{Broker, CoreError};

/// Header carrying a stream delivery's offset.
pub const STREAM_OFFSET_HEADER: &str = "x-stream-offset";
/// Bytes a stream consumer reads from the log per step (its read-ahead bound).
const STREAM_READ_BYTES: u32 = 256 << 10;

/// A consumer's position and read-ahead in a stream.
#[derive(Debug, Default)]
pub(crate) struct StreamCursor {
    /// Next offset to read from the log.
    next: i64,
    /// Decoded messages read ahead.
    buffer: VecDeque<(i64, Message)>,
}

/// A stream queue's log.
#[derive(Debug)]
pub(crate) struct Stream {
    topic: String,
    partition: Arc<Partition>,
}

/// The Kafka topic of a stream queue: its name in vhost `/`, `<vhost>.<name>` elsewhere.
pub fn stream_topic(vhost: &str, name: &str) -> MqResult<String> {
    let topic = if vhost == crate::routing::DEFAULT_VHOST {
        name.to_string()
    } else {
        format!("{vhost}.{name}")
    };
    let refuse = |why: String| {
        MqError::PreconditionFailed(format!(
            "stream {} cannot be stored as Kafka topic '{topic}': {why}",
            super::queue_resource(vhost, name)
        ))
    };
    validate_topic_name(&topic).map_err(|e| refuse(e.to_string()))?;
    if is_internal_name(&topic) {
        return Err(refuse("names starting with '__' are reserved".into()));
    }
    Ok(topic)
}

impl Stream {
    /// Adopts the topic if it exists, else creates it with one partition and the stream's
    /// retention (`x-max-length-bytes` → `retention.bytes`, `x-max-age` → `retention.ms`,
    /// `x-stream-max-segment-size-bytes` → `segment.bytes`).
    pub fn open(
        broker: &Broker,
        vhost: &str,
        name: &str,
        settings: &QueueSettings,
    ) -> MqResult<Stream> {
        let topic = stream_topic(vhost, name)?;
        if broker.stream_partition(&topic).is_none() {
            let mut configs = BTreeMap::new();
            if let Some(bytes) = settings.max_length_bytes {
                configs.insert("retention.bytes".to_string(), bytes.to_string());
            }
            let args = &settings.arguments;
            if let Some(ms) = args.get("x-max-age").and_then(|v| match v {
                FieldValue::LongString(b) => max_age_ms(&String::from_utf8_lossy(b)),
                FieldValue::ShortString(t) => max_age_ms(t),
                _ => None,
            }) {
                configs.insert("retention.ms".to_string(), ms.to_string());
            }
            if let Some(bytes) = args
                .get("x-stream-max-segment-size-bytes")
                .and_then(FieldValue::as_integer)
            {
                configs.insert("segment.bytes".to_string(), bytes.to_string());
            }
            match broker.create_topic(&topic, Some(1), configs, false) {
                Ok(_) | Err(CoreError::TopicAlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let partition = broker
            .stream_partition(&topic)
            .ok_or(MqError::Core(CoreError::UnknownTopicOrPartition))?;
        Ok(Stream { topic, partition })
    }

    /// The Kafka topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition (consumers wait on it).
    pub fn partition(&self) -> &Arc<Partition> {
        &self.partition
    }

    /// Messages stored.
    pub fn message_count(&self) -> u64 {
        let log = &self.partition.log;
        (log.high_watermark() - log.log_start_offset()).max(0) as u64
    }

    /// Appends an encoded one-record batch (wakes Kafka fetches and stream consumers).
    pub fn enqueue(&self, batch: Bytes, now: i64, missing: &str) -> MqResult<EnqueueOutcome> {
        if self.partition.is_deleted() {
            return Err(MqError::NotFound(missing.to_string()));
        }
        match self.partition.append(batch, None, now)? {
            AppendOutcome::Appended(appended) => Ok(EnqueueOutcome::Enqueued {
                durable: appended.durable,
                // Stream consumers read at their own offsets: nothing to catch up with.
                throttled: false,
            }),
            AppendOutcome::Duplicate { .. } => Err(MqError::Core(CoreError::InvalidRecord(
                "a stream append was taken for a producer retry".into(),
            ))),
        }
    }

    /// Where a consumer starting at `start` begins.
    pub fn start_cursor(&self, start: StreamStart) -> MqResult<StreamCursor> {
        let log = &self.partition.log;
        let (first, end) = (log.log_start_offset(), log.high_watermark());
        let next = match start {
            StreamStart::First => first,
            StreamStart::Next => end,
            StreamStart::Offset(offset) => offset.clamp(first, end),
            StreamStart::Last if end > first => {
                // The first offset of the last batch (RabbitMQ: the last chunk).
                let read = log.read(end - 1, 1, end)?;
                BatchHeader::parse(&read.records)
                    .map_or(end - 1, |h| h.base_offset)
                    .max(first)
            }
            StreamStart::Last => end,
            StreamStart::Timestamp(ts) => log.offset_for_timestamp(ts)?.map_or(end, |(o, _)| o),
        };
        Ok(StreamCursor {
            next,
            buffer: VecDeque::new(),
        })
    }

    /// The next message at the cursor, if one is stored.
    pub fn poll(&self, cursor: &mut StreamCursor) -> MqResult<Option<Delivery>> {
        let log = &self.partition.log;
        let end = log.high_watermark();
        cursor.next = cursor.next.max(log.log_start_offset());
        while cursor.buffer.is_empty() && cursor.next < end {
            let read = log.read(cursor.next, STREAM_READ_BYTES, end)?;
            if read.records.is_empty() || read.next_offset <= cursor.next {
                break;
            }
            for (header, batch) in split_batches(&read.records, false)? {
                if header.is_control() {
                    continue;
                }
                let records = match log.decode_records(&header, &batch) {
                    Ok(records) => records,
                    // A codec the broker does not know, or a batch damaged inside its
                    // compression (its CRC was checked on produce): the consumer goes on.
                    Err(e) if header.compression() != 0 => {
                        tracing::warn!(topic = %self.topic, offset = header.base_offset, "stream consumer skips a batch: {e}");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                for record in records {
                    let offset = header.base_offset + i64::from(record.offset_delta);
                    if offset < cursor.next {
                        continue;
                    }
                    match message_from_record(&record) {
                        Ok(mut message) => {
                            // RabbitMQ tells stream consumers each message's offset.
                            message
                                .properties
                                .headers
                                .get_or_insert_with(FieldTable::new)
                                .insert(STREAM_OFFSET_HEADER.to_string(), FieldValue::I64(offset));
                            cursor.buffer.push_back((offset, message));
                        }
                        Err(e) => {
                            tracing::warn!(topic = %self.topic, offset, "stream record skipped: {e}")
                        }
                    }
                }
            }
            cursor.next = read.next_offset;
        }
        Ok(cursor.buffer.pop_front().map(|(offset, message)| Delivery {
            id: DeliveryId { level: 0, offset },
            message,
            redelivered: false,
            remaining: (end - offset - 1).max(0) as u64,
        }))
    }
}
