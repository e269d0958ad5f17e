//! The data path: Produce, Fetch, ListOffsets, OffsetForLeaderEpoch, DeleteRecords and
//! InitProducerId.
//!
//! Record batches travel as [`Bytes`] both ways: a produced batch is handed to the core as
//! received, and fetched batches go from storage into the response without being decoded
//! or split per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::{
    Acks, Broker, ChangeSignal, CoreError, FetchPartition, FetchPlan, FetchedPartition, OffsetSpec,
    PartitionHandle,
};
use ferry_storage::{Chunk, FileRegion};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, FetchRequest, FetchResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProduceRequest, ProduceResponse,
    ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use tokio::task::JoinSet;

use super::codec::FetchAnswer;
use super::fetch_sessions::{FetchContext, FetchSession, SessionPass, NO_SESSION};
use super::handlers::Session;
use super::versions::PRODUCE_MIN_DECODABLE_VERSION;
use crate::errors;

/// ListOffsets timestamp: the offset of the next message (log end / high watermark).
const LATEST_TIMESTAMP: i64 = -1;
/// ListOffsets timestamp: the first offset still in the log.
const EARLIEST_TIMESTAMP: i64 = -2;
/// ListOffsets timestamp (v7+): the record with the largest timestamp.
const MAX_TIMESTAMP: i64 = -3;
/// ListOffsets timestamp (v8+): the first offset on local storage — all of it here.
const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;
/// ListOffsets timestamp (v9+): the last offset moved to tiered storage — none here.
const LATEST_TIERED_TIMESTAMP: i64 = -5;
/// ListOffsets answer "no such offset".
const UNKNOWN_OFFSET: i64 = -1;
/// ListOffsets answer "no timestamp".
const NO_TIMESTAMP: i64 = -1;
/// Fetch isolation level READ_UNCOMMITTED.
const READ_UNCOMMITTED: i8 = 0;

/// What to do after a Produce request.
pub(super) enum ProduceOutcome {
    /// Send this response.
    Respond(ProduceResponse),
    /// acks=0 and all went well: no response at all.
    Silent,
    /// acks=0 and some partition failed: Kafka closes the connection so that the producer
    /// notices and refreshes its metadata (it gets no response to look at).
    Close(String),
}

/// Where a partition's answer goes in the produce response.
struct ProduceSlot {
    topic: usize,
    partition: usize,
}

/// One partition's batches of a produce request: (topic, partition, batches in order).
type PartitionWork = (String, i32, Vec<(ProduceSlot, Option<Bytes>)>);

/// Produce: each partition's batches go to the core as received; partitions are written
/// concurrently.
pub(super) async fn produce(
    session: &Session,
    request: ProduceRequest,
    version: i16,
) -> ProduceOutcome {
    let broker = session.broker();
    let acks = match request.acks {
        0 => Ok(Acks::None),
        1 => Ok(Acks::Leader),
        -1 => Ok(Acks::All),
        _ => Err(ResponseError::InvalidRequiredAcks),
    };
    let mut response = ProduceResponse::default().with_responses(
        request
            .topic_data
            .iter()
            .map(|topic| {
                TopicProduceResponse::default()
                    .with_name(topic.name.clone())
                    .with_partition_responses(
                        topic
                            .partition_data
                            .iter()
                            .map(|p| PartitionProduceResponse::default().with_index(p.index))
                            .collect(),
                    )
            })
            .collect(),
    );
    let message_support = version >= 8;
    let fail = |slot: &mut PartitionProduceResponse, code: i16, message: Option<String>| {
        slot.error_code = code;
        slot.base_offset = -1;
        slot.log_append_time_ms = -1;
        slot.log_start_offset = -1;
        if message_support {
            slot.error_message = message.map(Into::into);
        }
    };

    let acks = match acks {
        Ok(acks) if version >= PRODUCE_MIN_DECODABLE_VERSION => acks,
        other => {
            // Produce v0–v2 (advertised only for old librdkafka's sake) or bad acks: every
            // partition gets the error, nothing is written.
            let code = match other {
                Err(error) => error.code(),
                Ok(_) => ResponseError::UnsupportedVersion.code(),
            };
            for topic in &mut response.responses {
                for slot in &mut topic.partition_responses {
                    fail(slot, code, None);
                }
            }
            return finish_produce(request.acks, response);
        }
    };

    // Group the work per partition, keeping the request's order for a partition that
    // appears more than once; distinct partitions are written concurrently.
    let mut groups: Vec<PartitionWork> = Vec::new();
    let mut group_of: HashMap<(&str, i32), usize> = HashMap::new();
    for (t, topic) in request.topic_data.iter().enumerate() {
        for (p, partition) in topic.partition_data.iter().enumerate() {
            let slot = &mut response.responses[t].partition_responses[p];
            if partition.index < 0 {
                fail(slot, ResponseError::UnknownTopicOrPartition.code(), None);
                continue;
            }
            let key = (topic.name.as_str(), partition.index);
            let group = *group_of.entry(key).or_insert_with(|| {
                groups.push((topic.name.to_string(), partition.index, Vec::new()));
                groups.len() - 1
            });
            groups[group].2.push((
                ProduceSlot {
                    topic: t,
                    partition: p,
                },
                partition.records.clone(),
            ));
        }
    }
    drop(group_of);

    let results = if groups.len() == 1 {
        let Some((topic, partition, batches)) = groups.pop() else {
            unreachable!("one group")
        };
        vec![produce_partition(broker.clone(), topic, partition, batches, acks).await]
    } else {
        let mut tasks = JoinSet::new();
        for (topic, partition, batches) in groups {
            tasks.spawn(produce_partition(
                broker.clone(),
                topic,
                partition,
                batches,
                acks,
            ));
        }
        let mut results = Vec::with_capacity(tasks.len());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(result) => results.push(result),
                // A panicking core call is a bug; the task's slots keep their default
                // (success-looking) values unless marked here, so fail the whole request.
                Err(error) => {
                    tracing::error!(%error, "produce task failed");
                    for topic in &mut response.responses {
                        for slot in &mut topic.partition_responses {
                            fail(slot, ResponseError::UnknownServerError.code(), None);
                        }
                    }
                    return finish_produce(request.acks, response);
                }
            }
        }
        results
    };
    for group in results {
        for (slot, result) in group {
            let out = &mut response.responses[slot.topic].partition_responses[slot.partition];
            match result {
                Ok(produced) => {
                    out.base_offset = produced.base_offset;
                    out.log_append_time_ms = produced.log_append_time_ms;
                    out.log_start_offset = produced.log_start_offset;
                }
                Err(error) => fail(out, errors::error_code(&error), Some(error.to_string())),
            }
        }
    }
    finish_produce(request.acks, response)
}

type SlotResult = (ProduceSlot, Result<ferry_core::ProduceResult, CoreError>);

/// Writes one partition's batches in order.
async fn produce_partition(
    broker: Arc<Broker>,
    topic: String,
    partition: i32,
    batches: Vec<(ProduceSlot, Option<Bytes>)>,
    acks: Acks,
) -> Vec<SlotResult> {
    let mut results = Vec::with_capacity(batches.len());
    for (slot, records) in batches {
        let result = match records {
            Some(records) => {
                match broker
                    .produce(&topic, partition as u32, records.clone(), acks)
                    .await
                {
                    // The topic may not exist yet: produce auto-creates it like Metadata does
                    // (the core decides whether that is allowed), then the batch is retried.
                    // Looking the topic up only on this path keeps the usual path free of it.
                    Err(CoreError::UnknownTopicOrPartition) if broker.topic(&topic).is_none() => {
                        match broker.topic_or_create(&topic, true) {
                            Ok(_) => {
                                broker
                                    .produce(&topic, partition as u32, records, acks)
                                    .await
                            }
                            Err(error) => Err(error),
                        }
                    }
                    result => result,
                }
            }
            None => Err(CoreError::InvalidRecord(
                "produce request without records".to_string(),
            )),
        };
        results.push((slot, result));
    }
    results
}

fn finish_produce(acks: i16, response: ProduceResponse) -> ProduceOutcome {
    if acks != 0 {
        return ProduceOutcome::Respond(response);
    }
    let failed = response.responses.iter().find_map(|topic| {
        topic
            .partition_responses
            .iter()
            .find(|p| p.error_code != 0)
            .map(|p| {
                format!(
                    "{}[{}] error {}",
                    topic.name.as_str(),
                    p.index,
                    p.error_code
                )
            })
    });
    match failed {
        None => ProduceOutcome::Silent,
        Some(failure) => ProduceOutcome::Close(format!("acks=0 produce failed: {failure}")),
    }
}

/// Fetch: one call to the core for the whole request. A full fetch answers every
/// partition asked for, and at epoch 0 starts a fetch session; an incremental one fetches
/// its session's partitions and answers only those with news (see [`fetch_sessions`]).
///
/// [`fetch_sessions`]: super::fetch_sessions
pub(super) async fn fetch(session: &Session, request: FetchRequest, version: i16) -> FetchAnswer {
    let read_committed = request.isolation_level != READ_UNCOMMITTED && version >= 4;
    let context = match session.fetch_sessions().context(&request, version) {
        Ok(context) => context,
        Err(error) => {
            return FetchAnswer {
                response: FetchResponse::default()
                    .with_error_code(error.code())
                    .with_session_id(NO_SESSION),
                files: Vec::new(),
            }
        }
    };
    match context {
        FetchContext::Full { create } => full_fetch(session, request, create, read_committed).await,
        FetchContext::Incremental { id, session: fetch } => {
            let mut plan = SessionPlan {
                broker: session.broker(),
                session: &fetch,
                pass: SessionPass::default(),
            };
            // As in Kafka, a fetch of no partitions does not wait.
            let empty = fetch.lock().is_empty();
            let fetched = if empty {
                Vec::new()
            } else {
                read_partitions(session, &request, &mut plan).await
            };
            let answers = fetch.lock().answer(plan.pass, fetched);
            let mut answer = fetch_responses(answers, read_committed);
            answer.response.session_id = id;
            answer
        }
    }
}

/// A full fetch: every partition of the request is answered, in request order; with
/// `create`, the answered partitions become a new session if the cache has room.
async fn full_fetch(
    session: &Session,
    request: FetchRequest,
    create: bool,
    read_committed: bool,
) -> FetchAnswer {
    let mut wanted = Vec::new();
    let mut slots = Vec::new();
    let mut responses: Vec<FetchableTopicResponse> = Vec::with_capacity(request.topics.len());
    for (t, topic) in request.topics.iter().enumerate() {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        let name: Arc<str> = Arc::from(topic.topic.as_str());
        for (p, partition) in topic.partitions.iter().enumerate() {
            if partition.partition < 0 {
                partitions.push(fetch_error(
                    PartitionData::default().with_partition_index(partition.partition),
                    &CoreError::UnknownTopicOrPartition,
                ));
                continue;
            }
            wanted.push(FetchPartition {
                topic: name.clone(),
                partition: partition.partition as u32,
                offset: partition.fetch_offset,
                max_bytes: partition.partition_max_bytes.max(0) as u32,
            });
            slots.push((t, p));
            partitions.push(PartitionData::default());
        }
        responses.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    let fetched = if wanted.is_empty() {
        Vec::new()
    } else {
        let mut plan = session.broker().list_plan(&wanted);
        read_partitions(session, &request, &mut plan).await
    };
    let mut answered: Vec<(FetchPartition, FetchedPartition)> =
        wanted.into_iter().zip(fetched).collect();
    let session_id = if create {
        session.fetch_sessions().create(&answered)
    } else {
        NO_SESSION
    };
    let mut files = Vec::new();
    // In ascending (topic, partition) positions, as `FetchAnswer` wants them.
    for ((t, p), (asked, fetched)) in slots.into_iter().zip(answered.drain(..)) {
        let (data, file) = partition_data(asked.partition as i32, fetched, read_committed);
        responses[t].partitions[p] = data;
        files.extend(file.map(|region| ((t, p), region)));
    }
    FetchAnswer {
        response: FetchResponse::default()
            .with_session_id(session_id)
            .with_responses(responses),
        files,
    }
}

/// A fetch session's plan: each pass reads the session's partitions that may have news.
struct SessionPlan<'a> {
    broker: &'a Broker,
    session: &'a Mutex<FetchSession>,
    /// The last pass planned.
    pass: SessionPass,
}

impl FetchPlan for SessionPlan<'_> {
    fn next_pass(&mut self) -> (&[FetchPartition], &[Option<PartitionHandle>]) {
        let broker = self.broker;
        self.pass = self
            .session
            .lock()
            .plan(|topic, partition| broker.partition_handle(topic, partition));
        (&self.pass.wanted, &self.pass.targets)
    }

    fn signal(&mut self) -> ChangeSignal {
        self.session.lock().signal()
    }
}

/// The core's answers to `plan`'s last pass, waiting as the request allows (but never
/// past the start of shutdown).
async fn read_partitions(
    session: &Session,
    request: &FetchRequest,
    plan: &mut impl FetchPlan,
) -> Vec<FetchedPartition> {
    let broker = session.broker();
    let config = session.config();
    let max_wait =
        Duration::from_millis((request.max_wait_ms.max(0) as u64).min(config.fetch_max_wait_ms));
    let min_bytes = request.min_bytes.max(0) as u32;
    let max_bytes = (request.max_bytes.max(0) as u32).min(config.fetch_max_bytes);
    // A long poll must not hold up shutdown: answer at once with what is there.
    let mut shutdown = session.shutdown();
    let waited = {
        let fetch = broker.fetch_planned(plan, max_wait, min_bytes, max_bytes);
        tokio::select! {
            fetched = fetch => Some(fetched),
            () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => None,
        }
    };
    match waited {
        Some(fetched) => fetched,
        None => {
            broker
                .fetch_planned(plan, Duration::ZERO, 0, max_bytes)
                .await
        }
    }
}

/// A fetch response (session id 0) answering `answers`, in their order: consecutive
/// partitions of a topic share its entry, and a topic may come back later (as in Kafka's
/// incremental responses, which follow the session's order).
pub fn fetch_responses(
    answers: Vec<(FetchPartition, FetchedPartition)>,
    read_committed: bool,
) -> FetchAnswer {
    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    let mut files = Vec::new();
    for (asked, fetched) in answers {
        let (data, file) = partition_data(asked.partition as i32, fetched, read_committed);
        match responses.last_mut() {
            Some(last) if last.topic.as_str() == &*asked.topic => last.partitions.push(data),
            _ => responses.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(asked.topic.to_string())))
                    .with_partitions(vec![data]),
            ),
        }
        if let (Some(region), Some(topic)) = (file, responses.last()) {
            files.push(((responses.len() - 1, topic.partitions.len() - 1), region));
        }
    }
    FetchAnswer {
        response: FetchResponse::default().with_responses(responses),
        files,
    }
}

/// One partition's entry of a fetch response, and its records if they are a file region
/// (the entry's own records are then empty).
fn partition_data(
    index: i32,
    fetched: FetchedPartition,
    read_committed: bool,
) -> (PartitionData, Option<FileRegion>) {
    let data = PartitionData::default().with_partition_index(index);
    let Some(error) = fetched.error else {
        let (records, file) = match fetched.records {
            Chunk::Memory(bytes) => (bytes, None),
            Chunk::File(region) => (Bytes::new(), Some(region)),
        };
        let data = data
            .with_high_watermark(fetched.high_watermark)
            .with_last_stable_offset(fetched.last_stable_offset)
            .with_log_start_offset(fetched.log_start_offset)
            // No transactions yet, hence nothing aborted; read-committed readers get an
            // empty list, others null, as Kafka sends.
            .with_aborted_transactions(read_committed.then(Vec::new))
            .with_records(Some(records));
        return (data, file);
    };
    (fetch_error(data, &error), None)
}

/// A request's partition index as the core's partition number; a negative one names no
/// partition.
fn partition_number(index: i32) -> Result<u32, CoreError> {
    u32::try_from(index).map_err(|_| CoreError::UnknownTopicOrPartition)
}

fn fetch_error(data: PartitionData, error: &CoreError) -> PartitionData {
    data.with_error_code(errors::error_code(error))
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_aborted_transactions(None)
        .with_records(Some(Bytes::new()))
}

/// ListOffsets: earliest, latest, max-timestamp and by-timestamp lookups.
pub(super) fn list_offsets(
    session: &Session,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let broker = session.broker();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    let spec = match p.timestamp {
                        LATEST_TIMESTAMP => Some(OffsetSpec::Latest),
                        EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => Some(OffsetSpec::Earliest),
                        MAX_TIMESTAMP => Some(OffsetSpec::MaxTimestamp),
                        LATEST_TIERED_TIMESTAMP => None,
                        timestamp => Some(OffsetSpec::Timestamp(timestamp)),
                    };
                    let looked_up = partition_number(p.partition_index).and_then(|partition| {
                        let found = match spec {
                            // No record at or after the timestamp: the core answers the
                            // log end without a timestamp; Kafka says "no offset" (-1).
                            Some(spec @ OffsetSpec::Timestamp(_)) => {
                                match broker.list_offsets(&topic.name, partition, spec)? {
                                    (_, NO_TIMESTAMP) => (UNKNOWN_OFFSET, NO_TIMESTAMP),
                                    found => found,
                                }
                            }
                            Some(spec) => broker.list_offsets(&topic.name, partition, spec)?,
                            // Nothing is tiered: no such offset, as Kafka answers.
                            None => (UNKNOWN_OFFSET, NO_TIMESTAMP),
                        };
                        let epoch = broker
                            .partition_offsets(&topic.name, partition)?
                            .leader_epoch;
                        Ok((found, epoch))
                    });
                    match looked_up {
                        Ok(((offset, timestamp), epoch)) => {
                            let answer = answer.with_offset(offset).with_timestamp(timestamp);
                            if version >= 4 {
                                answer.with_leader_epoch(epoch)
                            } else {
                                answer
                            }
                        }
                        Err(error) => answer.with_error_code(errors::error_code(&error)),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// OffsetForLeaderEpoch: where each leader epoch ended, for clients checking their
/// position after a leader change (or, here, a restart).
pub(super) fn offset_for_leader_epoch(
    session: &Session,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let broker = session.broker();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let partition = match partition_number(p.partition) {
                        Ok(partition) => partition,
                        Err(error) => return answer.with_error_code(errors::error_code(&error)),
                    };
                    let current = match broker.partition_offsets(&topic.topic, partition) {
                        Ok(offsets) => offsets.leader_epoch,
                        Err(error) => return answer.with_error_code(errors::error_code(&error)),
                    };
                    // The client's view of the leader epoch must be ours (-1: no check).
                    if p.current_leader_epoch >= 0 && p.current_leader_epoch != current {
                        let code = if p.current_leader_epoch > current {
                            ResponseError::UnknownLeaderEpoch
                        } else {
                            ResponseError::FencedLeaderEpoch
                        };
                        return answer.with_error_code(code.code());
                    }
                    match broker.end_offset_for_epoch(&topic.topic, partition, p.leader_epoch) {
                        Ok((epoch, end_offset)) => {
                            answer.with_leader_epoch(epoch).with_end_offset(end_offset)
                        }
                        Err(error) => answer.with_error_code(errors::error_code(&error)),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// DeleteRecords: moves each partition's log start up to the given offset.
pub(super) fn delete_records(
    session: &Session,
    request: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let broker = session.broker();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index);
                    let deleted = partition_number(p.partition_index).and_then(|partition| {
                        broker.delete_records(&topic.name, partition, p.offset)
                    });
                    match deleted {
                        Ok(low_watermark) => answer.with_low_watermark(low_watermark),
                        Err(error) => answer
                            .with_low_watermark(-1)
                            .with_error_code(errors::error_code(&error)),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

/// InitProducerId: a new idempotent producer id, or the next epoch of a known one.
pub(super) fn init_producer_id(
    session: &Session,
    request: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let current =
        (request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
    let transactional_id = request.transactional_id.as_ref().map(|id| id.as_str());
    match session.broker().init_producer_id(transactional_id, current) {
        Ok((producer_id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch),
        Err(error) => InitProducerIdResponse::default()
            .with_error_code(errors::error_code(&error))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
