//! `tcp-baseline`: a trivial in-process Kafka target that stores nothing.
//!
//! It speaks just enough Kafka (ApiVersions, Metadata, Produce, Fetch) for the same
//! driver to run the same workload, keeps each partition's produced batches in a bounded
//! in-memory ring and serves fetches from it. It measures what this machine can do for
//! the workload (client, loopback TCP, framing) without a storage engine, so broker
//! figures can be given as a ratio of it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_core::{CoreError, FetchPartition, FetchedPartition};
use ferry_kafka::server::{
    decode_request, encode_response, fetch_responses, DecodedRequest, FetchContext,
    FetchSessionCache, DEFAULT_FETCH_SESSION_CACHE_PARTITIONS, DEFAULT_FETCH_SESSION_CACHE_SLOTS,
    NO_SESSION,
};
use ferry_storage::batch::BatchHeader;
use ferry_storage::Chunk;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::error::{BenchError, Result};
use crate::kafka::read_frame;

/// Bytes of unfetched batches kept per partition. Batches are dropped as soon as a
/// consumer has fetched past them, so their memory is reused while it is still in the
/// CPU caches (a real broker's page cache is reused the same way); a producer that finds
/// the ring full waits for the consumer, so the baseline flow-controls producers by
/// consumers instead of losing data.
pub const RING_BYTES_PER_PARTITION: usize = 64 << 20;
/// Largest request accepted.
const REQUEST_BYTES_MAX: usize = 100 << 20;
/// Longest fetch wait honoured.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(1);
/// Worker threads of the server's own runtime (a broker on this 2-core machine gets 2).
const SERVER_THREADS: usize = 2;
/// Node id of the one broker it pretends to be.
const NODE_ID: i32 = 0;
/// APIs served, with their version ranges (those the Kafka client and driver use).
const APIS: [(ApiKey, i16, i16); 4] = [
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
];
/// Kafka error codes used.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const CORRUPT_MESSAGE: i16 = 2;

/// One partition's recent batches.
#[derive(Debug, Default)]
struct Ring {
    /// (base offset, batch with its offset set), oldest first.
    batches: VecDeque<(i64, Bytes)>,
    bytes: usize,
    start_offset: i64,
    next_offset: i64,
    /// Highest offset a consumer has asked for: everything before it may be dropped.
    fetched_offset: i64,
}

impl Ring {
    /// Drops the batches a consumer has fetched past.
    fn evict(&mut self) {
        while let Some((_, front)) = self.batches.front() {
            let last = BatchHeader::parse(front).map_or(i64::MAX, |h| h.last_offset());
            if last >= self.fetched_offset {
                break;
            }
            if let Some((_, dropped)) = self.batches.pop_front() {
                self.bytes -= dropped.len();
            }
            self.start_offset = self
                .batches
                .front()
                .map_or(self.next_offset, |(base, _)| *base);
        }
    }

    /// Whether a producer must wait for consumers before appending.
    fn is_full(&self) -> bool {
        self.bytes > RING_BYTES_PER_PARTITION
    }
}

/// A ring shared by the connections that produce to and fetch from it.
type SharedRing = Arc<Mutex<Ring>>;

/// State shared by the connections.
#[derive(Debug)]
struct Shared {
    partitions_per_topic: i32,
    addr: SocketAddr,
    rings: Mutex<HashMap<(String, i32), SharedRing>>,
    /// Woken on every append, for long-polling fetches.
    appended: Notify,
    /// Woken after fetches, for producers waiting for ring space.
    fetched: Notify,
    /// Consumers' fetch sessions.
    sessions: FetchSessionCache,
}

impl Shared {
    fn ring(&self, topic: &str, partition: i32) -> Option<SharedRing> {
        if partition < 0 || partition >= self.partitions_per_topic {
            return None;
        }
        let mut rings = self.rings.lock();
        Some(
            rings
                .entry((topic.to_owned(), partition))
                .or_default()
                .clone(),
        )
    }
}

/// A running tcp-baseline server.
#[derive(Debug)]
pub struct BaselineServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BaselineServer {
    /// Listens on 127.0.0.1 on an ephemeral port; every topic has `partitions_per_topic`.
    ///
    /// The server runs on its own runtime and threads, as an external broker would, so
    /// that it does not compete with the driver's tasks for the driver's workers.
    pub async fn start(partitions_per_topic: u32) -> Result<BaselineServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SERVER_THREADS)
            .thread_name("tcp-baseline")
            .enable_all()
            .build()
            .map_err(|e| BenchError::io("start the tcp-baseline runtime", e))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| BenchError::io("bind tcp-baseline", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| BenchError::io("tcp-baseline listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BenchError::io("tcp-baseline address", e))?;
        let shared = Arc::new(Shared {
            partitions_per_topic: partitions_per_topic as i32,
            addr,
            rings: Mutex::new(HashMap::new()),
            appended: Notify::new(),
            fetched: Notify::new(),
            sessions: FetchSessionCache::new(
                DEFAULT_FETCH_SESSION_CACHE_SLOTS,
                DEFAULT_FETCH_SESSION_CACHE_PARTITIONS,
            ),
        });
        let (tx, mut rx) = oneshot::channel();
        let task = runtime.spawn(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(_) => return,
            };
            let mut connections = Vec::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.push(tokio::spawn(serve_connection(stream, shared.clone())));
                        }
                        // A failed accept (out of descriptors) is not fatal to a benchmark target.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                }
            }
            for connection in connections {
                connection.abort();
            }
        });
        Ok(BaselineServer {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            runtime: Some(runtime),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime inside another one would block; let it wind down alone.
            runtime.shutdown_background();
        }
    }
}

impl Drop for BaselineServer {
    fn drop(&mut self) {
        // Also on early returns that skip `stop`: never drop a runtime in async context.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves one connection until it closes or sends something it cannot answer.
async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    while let Ok(Some(frame)) = read_frame(&mut stream, REQUEST_BYTES_MAX).await {
        let Ok(DecodedRequest::Request { header, body }) = decode_request(frame) else {
            return;
        };
        let api_key = match ApiKey::try_from(header.request_api_key) {
            Ok(key) => key,
            Err(()) => return,
        };
        let version = header.request_api_version;
        let response = match *body {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions()),
            RequestKind::Metadata(request) => ResponseKind::Metadata(metadata(&shared, &request)),
            RequestKind::Produce(request) => {
                let response = produce(&shared, &request).await;
                if request.acks == 0 {
                    continue;
                }
                ResponseKind::Produce(response)
            }
            RequestKind::Fetch(request) => {
                ResponseKind::Fetch(fetch(&shared, &request, version).await)
            }
            _ => return,
        };
        let Ok(bytes) = encode_response(header.correlation_id, api_key, version, &response) else {
            return;
        };
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

fn api_versions() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        APIS.iter()
            .map(|&(key, min, max)| {
                ApiVersion::default()
                    .with_api_key(key as i16)
                    .with_min_version(min)
                    .with_max_version(max)
            })
            .collect(),
    )
}

fn metadata(shared: &Shared, request: &MetadataRequest) -> MetadataResponse {
    let topics = request
        .topics
        .iter()
        .flatten()
        .filter_map(|t| t.name.clone())
        .map(|name| {
            MetadataResponseTopic::default()
                .with_name(Some(name))
                .with_partitions(
                    (0..shared.partitions_per_topic)
                        .map(|p| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_leader_id(BrokerId(NODE_ID))
                                .with_leader_epoch(0)
                                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                                .with_isr_nodes(vec![BrokerId(NODE_ID)])
                        })
                        .collect(),
                )
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_string(shared.addr.ip().to_string()))
            .with_port(shared.addr.port() as i32)])
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}

/// Appends every batch to its partition's ring (waiting while a ring is full); answers
/// with the base offsets.
async fn produce(shared: &Shared, request: &ProduceRequest) -> ProduceResponse {
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for topic in &request.topic_data {
        let mut partition_responses = Vec::with_capacity(topic.partition_data.len());
        for data in &topic.partition_data {
            let mut response = PartitionProduceResponse::default()
                .with_index(data.index)
                .with_log_append_time_ms(-1);
            match shared.ring(topic.name.0.as_str(), data.index) {
                None => response.error_code = UNKNOWN_TOPIC_OR_PARTITION,
                Some(ring) => match append_when_room(shared, &ring, data.records.as_ref()).await {
                    Some((base_offset, start)) => {
                        response.base_offset = base_offset;
                        response.log_start_offset = start;
                    }
                    None => response.error_code = CORRUPT_MESSAGE,
                },
            }
            partition_responses.push(response);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(partition_responses),
        );
    }
    if !request.topic_data.is_empty() {
        shared.appended.notify_waiters();
    }
    ProduceResponse::default().with_responses(responses)
}

/// Waits until the ring has room (consumers fetched enough), then appends.
async fn append_when_room(
    shared: &Shared,
    ring: &Mutex<Ring>,
    records: Option<&Bytes>,
) -> Option<(i64, i64)> {
    loop {
        // Registered before looking, so that a fetch in between is not missed.
        let fetched = shared.fetched.notified();
        if !ring.lock().is_full() {
            return append(ring, records);
        }
        let _ = tokio::time::timeout(FETCH_WAIT_MAX, fetched).await;
    }
}

/// Appends the batches of `records`; returns (first offset, log start) or `None` if they
/// are not whole v2 batches.
fn append(ring: &Mutex<Ring>, records: Option<&Bytes>) -> Option<(i64, i64)> {
    let records = records?;
    // Parse first so that a bad request appends nothing.
    let mut batches = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let header = BatchHeader::parse(&records[pos..]).ok()?;
        let end = pos.checked_add(header.total_bytes())?;
        if end > records.len() {
            return None;
        }
        batches.push((pos, end, header.last_offset_delta as i64 + 1));
        pos = end;
    }
    let mut ring = ring.lock();
    let first = ring.next_offset;
    for (start, end, count) in batches {
        let mut batch = BytesMut::from(&records[start..end]);
        let base_offset = ring.next_offset;
        batch[..8].copy_from_slice(&base_offset.to_be_bytes());
        ring.next_offset += count;
        ring.bytes += batch.len();
        ring.batches.push_back((base_offset, batch.freeze()));
    }
    ring.evict();
    Some((first, ring.start_offset))
}

/// Serves a fetch from the rings, waiting up to `max_wait_ms` for data. Fetch sessions
/// (KIP-227) are kept with Ferry's own session cache, so that a consumer in a session
/// costs the baseline what it costs the broker.
async fn fetch(shared: &Shared, request: &FetchRequest, version: i16) -> FetchResponse {
    let context = match shared.sessions.context(request, version) {
        Ok(context) => context,
        Err(error) => {
            return FetchResponse::default()
                .with_error_code(error.code())
                .with_session_id(NO_SESSION)
        }
    };
    // The baseline holds no partitions to watch, so an incremental pass reads every
    // partition of the session, as Ferry did before sessions watched their partitions.
    let mut pass = None;
    let mut listed: Vec<FetchPartition> = Vec::new();
    let wanted: &[FetchPartition] = match &context {
        FetchContext::Full { .. } => {
            listed = request
                .topics
                .iter()
                .flat_map(|topic| {
                    let name: Arc<str> = Arc::from(topic.topic.as_str());
                    topic
                        .partitions
                        .iter()
                        .filter(|p| p.partition >= 0)
                        .map(move |p| FetchPartition {
                            topic: name.clone(),
                            partition: p.partition as u32,
                            offset: p.fetch_offset,
                            max_bytes: p.partition_max_bytes.max(1) as u32,
                        })
                })
                .collect();
            &listed
        }
        FetchContext::Incremental { session, .. } => {
            &pass.insert(session.lock().plan(|_, _| None)).wanted
        }
    };
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MAX);
    let deadline = Instant::now() + wait;
    let max_bytes = request.max_bytes.max(1) as usize;
    let fetched = loop {
        // Registered before looking, so that an append in between is not missed.
        let appended = shared.appended.notified();
        let (fetched, bytes) = read_rings(shared, wanted, max_bytes);
        shared.fetched.notify_waiters();
        let now = Instant::now();
        if bytes > 0 || now >= deadline {
            break fetched;
        }
        let _ = tokio::time::timeout(deadline - now, appended).await;
    };
    let (id, answers) = match context {
        FetchContext::Full { create } => {
            let answered: Vec<_> = listed.into_iter().zip(fetched).collect();
            let id = if create {
                shared.sessions.create(&answered)
            } else {
                NO_SESSION
            };
            (id, answered)
        }
        FetchContext::Incremental { id, session } => {
            let pass = pass.expect("an incremental fetch planned a pass");
            (id, session.lock().answer(pass, fetched))
        }
    };
    // The rings are in memory: the answer holds no file regions.
    let answer = fetch_responses(answers, false);
    debug_assert!(answer.files.is_empty());
    answer.response.with_session_id(id)
}

/// One pass over the wanted partitions; returns their answers and the bytes in them.
fn read_rings(
    shared: &Shared,
    wanted: &[FetchPartition],
    max_bytes: usize,
) -> (Vec<FetchedPartition>, usize) {
    let mut total = 0usize;
    let mut answers = Vec::with_capacity(wanted.len());
    for asked in wanted {
        let mut answer = FetchedPartition {
            error: None,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            records: Chunk::default(),
        };
        let Some(ring) = shared.ring(&asked.topic, asked.partition as i32) else {
            answer.error = Some(CoreError::UnknownTopicOrPartition);
            answers.push(answer);
            continue;
        };
        let mut ring = ring.lock();
        if asked.offset > ring.fetched_offset && asked.offset <= ring.next_offset {
            ring.fetched_offset = asked.offset;
            ring.evict();
        }
        answer.high_watermark = ring.next_offset;
        answer.last_stable_offset = ring.next_offset;
        answer.log_start_offset = ring.start_offset;
        let offset = asked.offset;
        if offset < ring.start_offset || offset > ring.next_offset {
            answer.error = Some(CoreError::OffsetOutOfRange);
            answers.push(answer);
            continue;
        }
        let partition_max = asked.max_bytes.max(1) as usize;
        let first = ring.batches.partition_point(|(base, batch)| {
            // A batch entirely before the offset: its last offset is below it.
            let last = BatchHeader::parse(batch).map_or(*base, |h| h.last_offset());
            last < offset
        });
        // Only reference counts are taken under the lock; the copy happens after it.
        let mut picked: Vec<Bytes> = Vec::new();
        let mut picked_bytes = 0usize;
        for (_, batch) in ring.batches.iter().skip(first) {
            // At least one batch per response (not per partition), as Kafka does, so
            // that progress is made while max_bytes still bounds the response.
            if (picked_bytes > 0 || total > 0)
                && (picked_bytes + batch.len() > partition_max
                    || total + picked_bytes + batch.len() > max_bytes)
            {
                break;
            }
            picked_bytes += batch.len();
            picked.push(batch.clone());
        }
        drop(ring);
        answer.records = Chunk::Memory(match picked.len() {
            1 => picked.pop().unwrap_or_default(),
            _ => {
                let mut out = BytesMut::with_capacity(picked_bytes);
                for batch in &picked {
                    out.extend_from_slice(batch);
                }
                out.freeze()
            }
        });
        total += answer.records.len();
        answers.push(answer);
    }
    (answers, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Stamp;
    use ferry_storage::batch::BatchBuilder;

    fn batch(records: u64) -> Bytes {
        let mut builder = BatchBuilder::reusable();
        for sequence in 0..records {
            let stamp = Stamp {
                producer: 0,
                sequence,
                sent_ns: 0,
            };
            builder.push_padded(None, &stamp.encode(), 100, 0);
        }
        builder.finish()
    }

    #[test]
    fn ring_assigns_offsets_and_drops_what_was_fetched() {
        let ring = Mutex::new(Ring::default());
        assert_eq!(append(&ring, Some(&batch(3))), Some((0, 0)));
        assert_eq!(append(&ring, Some(&batch(2))), Some((3, 0)));
        let stored = ring.lock().batches[1].1.clone();
        assert_eq!(
            BatchHeader::parse(&stored).map(|h| h.base_offset).ok(),
            Some(3)
        );
        assert_eq!(append(&ring, Some(&Bytes::from_static(b"garbage"))), None);
        assert_eq!(append(&ring, None), None);
        // Nothing is dropped before a consumer has fetched past it: the ring fills up.
        let big = batch(10_000); // ~1.2 MB
        let rounds = RING_BYTES_PER_PARTITION / big.len() + 2;
        for _ in 0..rounds {
            append(&ring, Some(&big));
        }
        assert!(ring.lock().is_full());
        assert_eq!(ring.lock().start_offset, 0);
        // A consumer past the first four batches: they go at once, making room.
        let mut ring = ring.lock();
        ring.fetched_offset = 5 + 2 * 10_000;
        ring.evict();
        assert!(!ring.is_full());
        assert_eq!(ring.start_offset, 5 + 2 * 10_000);
        assert_eq!(
            ring.batches.front().map(|(b, _)| *b),
            Some(ring.start_offset)
        );
        assert_eq!(ring.next_offset, 5 + rounds as i64 * 10_000);
    }
}
