//! The Kafka driver: pipelined Produce requests carrying batches built in place, and
//! Fetch loops that walk the returned records without copying them.
//!
//! Admin work (topic creation, metadata) goes through `ferry_kafka::client`; the hot
//! paths use their own connections: one per producer with a bounded number of requests
//! in flight, one per consumer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use ferry_kafka::client::{partition_for_key, Client, ClientConfig};
use ferry_storage::batch::{visit_fetched_records, BatchBuilder};
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProduceResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::checker::SequenceChecker;
use crate::driver::{BoxFuture, ConsumerOutcome, Driver, ProducerOutcome, RunContext};
use crate::error::{BenchError, Result};
use crate::message::Stamp;
use crate::stats::{latency_histogram, record_latency};
use crate::workload::Workload;

/// Produce version used: the newest before topic ids, non-flexible (cheap headers).
const PRODUCE_VERSION: i16 = 8;
/// Fetch version used: the newest non-flexible one.
const FETCH_VERSION: i16 = 11;
/// Client id on the hot connections.
const CLIENT_ID: &str = "ferry-bench";
/// Largest response frame accepted.
const RESPONSE_BYTES_MAX: usize = 256 << 20;
/// Most bytes of batches put into one Produce request.
const REQUEST_BYTES_MAX: usize = 8 << 20;
/// Messages generated between two looks at the clock and the linger queue.
const GENERATE_CHUNK: u64 = 256;
/// Number of distinct keys of a keyed workload.
const KEY_SPACE: u64 = 100_000;
/// Broker-side timeout of a produce.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// Fetch long-poll wait.
const FETCH_MAX_WAIT_MS: i32 = 100;
/// Fetch response size cap. Below glibc's largest mmap threshold (32 MiB), so that
/// response buffers are reused from the heap instead of being fresh mappings whose every
/// page faults in (measured at 10,000 partitions: 32 MiB responses moved 210 MB/s, 16 MiB
/// ones 265 MB/s on the tcp-baseline).
const FETCH_MAX_BYTES: i32 = 16 << 20;
/// Fetch size cap per partition.
const FETCH_PARTITION_MAX_BYTES: i32 = 4 << 20;
/// Pause after a retriable fetch error.
const FETCH_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Most retriable fetch errors tolerated in a row before the consumer gives up.
const FETCH_ERRORS_IN_A_ROW_MAX: u32 = 200;
/// Kafka's OFFSET_OUT_OF_RANGE: the data is gone (a baseline ring overrun).
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Kafka's FETCH_SESSION_ID_NOT_FOUND: the target no longer has the fetch session.
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// Kafka's INVALID_FETCH_SESSION_EPOCH: the fetch session's epoch is out of step.
const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
/// How often topic metadata is asked for while the new topics get leaders.
const METADATA_ATTEMPTS: u32 = 50;
/// Pause between metadata attempts.
const METADATA_BACKOFF: Duration = Duration::from_millis(100);
/// Least request timeout of the admin client (topic creation, metadata).
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest sleep of an idle producer, so that it notices the end of the run.
const PRODUCER_IDLE_SLEEP_MAX: Duration = Duration::from_millis(10);

/// The Kafka protocol driver.
#[derive(Debug, Default)]
pub struct KafkaDriver;

impl Driver for KafkaDriver {
    fn protocol(&self) -> &'static str {
        "kafka"
    }

    fn prepare<'a>(
        &'a self,
        bootstrap: &'a str,
        workload: &'a Workload,
        topics: &'a [String],
        create_topics: bool,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(prepare(bootstrap, workload, topics, create_topics))
    }

    fn producer(
        &self,
        id: u32,
        ctx: Arc<RunContext>,
    ) -> BoxFuture<'static, Result<ProducerOutcome>> {
        Box::pin(run_producer(id, ctx))
    }

    fn consumer(
        &self,
        id: u32,
        partitions: Vec<usize>,
        ctx: Arc<RunContext>,
    ) -> BoxFuture<'static, Result<ConsumerOutcome>> {
        Box::pin(run_consumer(id, partitions, ctx))
    }
}

/// Creates the topics and waits until every partition has a leader; all leaders must be
/// one broker (this first version drives a single node), whose address is returned.
async fn prepare(
    bootstrap: &str,
    workload: &Workload,
    topics: &[String],
    create_topics: bool,
) -> Result<String> {
    let mut config = ClientConfig::new(bootstrap);
    // Creating thousands of partitions (W4: 10,000) takes a broker tens of seconds on a
    // loaded machine; the client's default request timeout is shorter.
    config.request_timeout = config.request_timeout.max(ADMIN_REQUEST_TIMEOUT);
    let mut client = Client::connect(config).await?;
    if create_topics {
        let configs: Vec<(String, String)> = workload
            .flush_mode
            .map(|m| vec![("flush.mode".to_owned(), m.as_str().to_owned())])
            .unwrap_or_default();
        for topic in topics {
            client
                .create_topic(topic, Some(workload.partitions as i32), &configs, false)
                .await?;
        }
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for _ in 0..METADATA_ATTEMPTS {
        let metadata = client.metadata(Some(&names), false).await?;
        let mut leaders = Vec::new();
        let mut ready = metadata.topics.len() == topics.len();
        for topic in &metadata.topics {
            ready &=
                topic.error.is_none() && topic.partitions.len() == workload.partitions as usize;
            leaders.extend(topic.partitions.iter().map(|p| p.leader));
        }
        if ready && leaders.iter().all(|&l| l >= 0) {
            leaders.sort_unstable();
            leaders.dedup();
            if leaders.len() != 1 {
                return Err(BenchError::Protocol(format!(
                    "partitions are led by {} brokers; this version of the tool drives one broker",
                    leaders.len()
                )));
            }
            let broker = metadata
                .brokers
                .iter()
                .find(|b| b.node_id == leaders[0])
                .ok_or_else(|| BenchError::Protocol("leader missing from metadata".into()))?;
            client.close().await;
            return Ok(format!("{}:{}", broker.host, broker.port));
        }
        tokio::time::sleep(METADATA_BACKOFF).await;
    }
    Err(BenchError::Protocol(format!(
        "topics {names:?} did not get {} partitions with leaders",
        workload.partitions
    )))
}

/// Connects a hot-path connection.
async fn connect(address: &str) -> Result<TcpStream> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| BenchError::io(format!("connect to {address}"), e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| BenchError::io("set TCP_NODELAY", e))?;
    Ok(stream)
}

/// Encodes a request frame with its length prefix.
fn encode_request(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &impl Encodable,
) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
        .encode(&mut buf, api_key.request_header_version(version))
        .map_err(|e| BenchError::Protocol(format!("encode {api_key:?} header: {e}")))?;
    body.encode(&mut buf, version)
        .map_err(|e| BenchError::Protocol(format!("encode {api_key:?}: {e}")))?;
    let length = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&length.to_be_bytes());
    Ok(buf.freeze())
}

/// Reads one length-prefixed frame; `None` at a clean end of stream.
pub(crate) async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    max_bytes: usize,
) -> Result<Option<Bytes>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(BenchError::io("read frame length", e)),
    }
    let length = i32::from_be_bytes(length);
    let length = usize::try_from(length)
        .ok()
        .filter(|&l| l <= max_bytes)
        .ok_or_else(|| BenchError::Protocol(format!("frame length {length} out of range")))?;
    // Filled by `read_buf` straight into the spare capacity: no zeroing first.
    let mut frame = BytesMut::with_capacity(length);
    while frame.len() < length {
        let mut limited = (&mut *reader).take((length - frame.len()) as u64);
        let read = limited
            .read_buf(&mut frame)
            .await
            .map_err(|e| BenchError::io("read frame", e))?;
        if read == 0 {
            return Err(BenchError::io(
                "read frame",
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
    Ok(Some(frame.freeze()))
}

/// Decodes a response frame: checks the correlation id, returns the body.
fn decode_response<R: Decodable>(
    mut frame: Bytes,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
) -> Result<R> {
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
        .map_err(|e| BenchError::Protocol(format!("{api_key:?} response header: {e}")))?;
    if header.correlation_id != correlation_id {
        return Err(BenchError::Protocol(format!(
            "{api_key:?} response has correlation id {} where {correlation_id} was expected",
            header.correlation_id
        )));
    }
    R::decode(&mut frame, version)
        .map_err(|e| BenchError::Protocol(format!("{api_key:?} response: {e}")))
}

/// Wall-clock ms for record timestamps.
fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A produce request on the wire, awaiting its response.
struct InFlight {
    correlation_id: i32,
    sent_at: Instant,
    /// (global partition, messages) carried.
    messages: Vec<(usize, u64)>,
    /// Released when the response arrives: bounds the requests in flight.
    _permit: OwnedSemaphorePermit,
}

/// One partition's open batch.
struct Accumulator {
    encoder: BatchBuilder,
    /// When its first pending message was pushed.
    opened_at: Option<Instant>,
    /// Next sequence of this producer on this partition.
    next_sequence: u64,
    /// Whether it is queued to be sent.
    ready: bool,
}

async fn run_producer(id: u32, ctx: Arc<RunContext>) -> Result<ProducerOutcome> {
    let w = &ctx.workload;
    let (reader, mut writer) = connect(&ctx.address).await?.into_split();
    let permits = Arc::new(Semaphore::new(w.max_in_flight as usize));
    let (in_flight_tx, in_flight_rx) = mpsc::unbounded_channel::<InFlight>();
    let response_task = tokio::spawn(read_produce_responses(reader, in_flight_rx, ctx.clone()));

    let partitions = w.total_partitions();
    let mut accumulators: Vec<Accumulator> = (0..partitions)
        .map(|_| Accumulator {
            encoder: BatchBuilder::reusable(),
            opened_at: None,
            next_sequence: 0,
            ready: false,
        })
        .collect();
    // Partitions in the order their batches opened, for linger expiry.
    let mut lingering: VecDeque<(Instant, usize)> = VecDeque::new();
    let mut ready: Vec<usize> = Vec::new();
    let linger = Duration::from_millis(w.linger_ms);
    let rate_per_producer = w.rate_msg_per_s as f64 / w.producers as f64;
    let started = Instant::now();
    let mut generated: u64 = 0;
    let mut sticky = id as usize % partitions;
    let mut key_counter: u64 = id as u64 * 7_919;
    let mut correlation_id: i32 = 0;
    let mut key_buf = String::new();

    let limit = w.messages_per_producer().unwrap_or(u64::MAX);
    loop {
        let now = Instant::now();
        if now >= ctx.state.measure_end || generated >= limit {
            break;
        }
        let due = if w.rate_msg_per_s == 0 {
            GENERATE_CHUNK
        } else {
            let allowed = (now.duration_since(started).as_secs_f64() * rate_per_producer) as u64;
            allowed.saturating_sub(generated).min(GENERATE_CHUNK)
        }
        .min(limit - generated);
        let timestamp_ms = wall_clock_ms();
        for _ in 0..due {
            let partition = if w.keyed {
                use std::fmt::Write;
                key_counter = key_counter.wrapping_add(1);
                key_buf.clear();
                // Writing to a String cannot fail.
                let _ = write!(key_buf, "key-{}", key_counter % KEY_SPACE);
                let topic = (key_counter % w.topics as u64) as usize;
                topic * w.partitions as usize
                    + partition_for_key(key_buf.as_bytes(), w.partitions as i32) as usize
            } else {
                sticky
            };
            let acc = &mut accumulators[partition];
            let stamp = Stamp {
                producer: id,
                sequence: acc.next_sequence,
                sent_ns: ctx.state.now_ns(),
            };
            acc.next_sequence += 1;
            let key = w.keyed.then_some(key_buf.as_bytes());
            acc.encoder
                .push_padded(key, &stamp.encode(), w.message_bytes, timestamp_ms);
            if acc.opened_at.is_none() {
                acc.opened_at = Some(now);
                lingering.push_back((now, partition));
            }
            if !acc.ready && acc.encoder.encoded_bytes() >= w.batch_bytes {
                acc.ready = true;
                ready.push(partition);
                if !w.keyed {
                    sticky = (sticky + 1) % partitions;
                }
            }
            generated += 1;
        }
        // Batches that waited long enough go out even if not full.
        while let Some(&(opened, partition)) = lingering.front() {
            if now.duration_since(opened) < linger {
                break;
            }
            lingering.pop_front();
            let acc = &mut accumulators[partition];
            if acc.opened_at == Some(opened) && !acc.ready {
                acc.ready = true;
                ready.push(partition);
                if !w.keyed && partition == sticky {
                    sticky = (sticky + 1) % partitions;
                }
            }
        }
        if !ready.is_empty() {
            send_ready(
                &ctx,
                &mut writer,
                &permits,
                &in_flight_tx,
                &mut accumulators,
                &mut ready,
                &mut correlation_id,
            )
            .await?;
        } else if due == 0 || w.rate_msg_per_s != 0 {
            // Idle until the next message is due or the oldest batch's linger ends.
            let mut wake = now + PRODUCER_IDLE_SLEEP_MAX;
            if w.rate_msg_per_s != 0 {
                let next_due =
                    started + Duration::from_secs_f64((generated + 1) as f64 / rate_per_producer);
                wake = wake.min(next_due);
            }
            if let Some(&(opened, _)) = lingering.front() {
                wake = wake.min(opened + linger);
            }
            if wake > now {
                tokio::time::sleep_until(wake.into()).await;
            }
        }
    }
    // Send what is left, then wait for every response.
    for (partition, acc) in accumulators.iter_mut().enumerate() {
        if !acc.encoder.is_empty() && !acc.ready {
            acc.ready = true;
            ready.push(partition);
        }
    }
    if !ready.is_empty() {
        send_ready(
            &ctx,
            &mut writer,
            &permits,
            &in_flight_tx,
            &mut accumulators,
            &mut ready,
            &mut correlation_id,
        )
        .await?;
    }
    drop(in_flight_tx);
    let publish_latency = response_task
        .await
        .map_err(|e| BenchError::Task(format!("producer {id} responses: {e}")))??;
    let _ = writer.shutdown().await;
    Ok(ProducerOutcome { publish_latency })
}

/// Sends every ready batch, in requests of at most [`REQUEST_BYTES_MAX`].
#[allow(clippy::too_many_arguments)]
async fn send_ready(
    ctx: &RunContext,
    writer: &mut (impl AsyncWrite + Unpin),
    permits: &Arc<Semaphore>,
    in_flight: &mpsc::UnboundedSender<InFlight>,
    accumulators: &mut [Accumulator],
    ready: &mut Vec<usize>,
    correlation_id: &mut i32,
) -> Result<()> {
    let w = &ctx.workload;
    while !ready.is_empty() {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BenchError::Task("in-flight semaphore closed".into()))?;
        let mut by_topic: Vec<Vec<(i32, Bytes)>> = vec![Vec::new(); w.topics as usize];
        let mut messages = Vec::new();
        let mut bytes = 0;
        while let Some(partition) = ready.pop() {
            let acc = &mut accumulators[partition];
            let count = acc.encoder.len() as u64;
            let batch = acc.encoder.finish();
            acc.ready = false;
            acc.opened_at = None;
            bytes += batch.len();
            let (topic, index) = ctx.split_partition(partition);
            by_topic[topic].push((index, batch));
            messages.push((partition, count));
            if bytes >= REQUEST_BYTES_MAX {
                break;
            }
        }
        *correlation_id = correlation_id.wrapping_add(1);
        let frame = encode_produce_frame(
            *correlation_id,
            w.acks.wire(),
            by_topic
                .into_iter()
                .enumerate()
                .filter(|(_, p)| !p.is_empty())
                .map(|(t, p)| (ctx.topics[t].as_str(), p)),
        );
        for &(partition, count) in &messages {
            ctx.state.sent_per_partition[partition].fetch_add(count, Ordering::AcqRel);
            ctx.state.sent_total.fetch_add(count, Ordering::Relaxed);
        }
        let sent_at = Instant::now();
        in_flight
            .send(InFlight {
                correlation_id: *correlation_id,
                sent_at,
                messages,
                _permit: permit,
            })
            .map_err(|_| BenchError::Task("produce response reader ended early".into()))?;
        write_all_chunks(writer, &frame)
            .await
            .map_err(|e| BenchError::io("send produce request", e))?;
    }
    Ok(())
}

/// Encodes a Produce request frame (length prefix included) as pieces: the small
/// encoded fields between the batches, and the batches themselves, never copied. The
/// layout is Produce v[`PRODUCE_VERSION`] with request header v1 (non-flexible).
fn encode_produce_frame<'a>(
    correlation_id: i32,
    acks: i16,
    topics: impl Iterator<Item = (&'a str, Vec<(i32, Bytes)>)>,
) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut fields = BytesMut::with_capacity(256);
    fields.put_i32(0); // frame length, filled in below
    fields.put_i16(ApiKey::Produce as i16);
    fields.put_i16(PRODUCE_VERSION);
    fields.put_i32(correlation_id);
    fields.put_i16(CLIENT_ID.len() as i16);
    fields.put_slice(CLIENT_ID.as_bytes());
    fields.put_i16(-1); // transactional id: null
    fields.put_i16(acks);
    fields.put_i32(PRODUCE_TIMEOUT_MS);
    let topics: Vec<_> = topics.collect();
    fields.put_i32(topics.len() as i32);
    for (name, partitions) in topics {
        fields.put_i16(name.len() as i16);
        fields.put_slice(name.as_bytes());
        fields.put_i32(partitions.len() as i32);
        for (index, batch) in partitions {
            fields.put_i32(index);
            fields.put_i32(batch.len() as i32);
            chunks.push(fields.split().freeze());
            chunks.push(batch);
        }
    }
    if !fields.is_empty() {
        chunks.push(fields.freeze());
    }
    let length: usize = chunks.iter().map(Bytes::len).sum::<usize>() - 4;
    if let Some(first) = chunks.first_mut() {
        let mut head = BytesMut::from(&first[..]);
        head[..4].copy_from_slice(&(length as i32).to_be_bytes());
        *first = head.freeze();
    }
    chunks
}

/// Most buffers handed to one vectored write.
const IO_SLICES_MAX: usize = 64;

/// Writes `chunks` back to back with vectored writes.
async fn write_all_chunks(
    writer: &mut (impl AsyncWrite + Unpin),
    chunks: &[Bytes],
) -> std::io::Result<()> {
    let (mut index, mut offset) = (0usize, 0usize);
    while index < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[index..]
            .iter()
            .take(IO_SLICES_MAX)
            .enumerate()
            .map(|(i, c)| std::io::IoSlice::new(if i == 0 { &c[offset..] } else { c }))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && index < chunks.len() {
            let left = chunks[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
        while index < chunks.len() && chunks[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    Ok(())
}

/// Reads produce responses in order, records their round trips and counts errors.
async fn read_produce_responses(
    mut reader: impl AsyncRead + Unpin,
    mut in_flight: mpsc::UnboundedReceiver<InFlight>,
    ctx: Arc<RunContext>,
) -> Result<Histogram<u64>> {
    let mut histogram = latency_histogram();
    while let Some(request) = in_flight.recv().await {
        let frame = read_frame(&mut reader, RESPONSE_BYTES_MAX)
            .await?
            .ok_or_else(|| BenchError::Protocol("target closed a producer connection".into()))?;
        let received_at = Instant::now();
        let response: ProduceResponse = decode_response(
            frame,
            ApiKey::Produce,
            PRODUCE_VERSION,
            request.correlation_id,
        )?;
        let mut failed = 0u64;
        for topic in &response.responses {
            for partition in &topic.partition_responses {
                if partition.error_code != 0 {
                    failed += 1;
                }
            }
        }
        ctx.state
            .produce_errors
            .fetch_add(failed, Ordering::Relaxed);
        if ctx.state.is_measured(request.sent_at) {
            record_latency(&mut histogram, received_at - request.sent_at);
        }
        if failed == 0 {
            let acked: u64 = request.messages.iter().map(|&(_, n)| n).sum();
            let w = &ctx.workload;
            ctx.state.acknowledged(
                acked * w.message_bytes as u64,
                w.produce_step_bytes,
                received_at,
            );
            if ctx.state.is_measured(received_at) {
                ctx.state.sent_measured.fetch_add(acked, Ordering::Relaxed);
            }
        }
    }
    Ok(histogram)
}

/// One probe of a (re)starting broker: whether a Fetch of `topic` partition 0 from offset
/// 0 is answered with records.
pub(crate) async fn fetch_served(address: &str, topic: &str) -> Result<bool> {
    let mut stream = connect(address).await?;
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(FETCH_PARTITION_MAX_BYTES)
                .with_log_start_offset(-1)
                .with_current_leader_epoch(-1)])]);
    let frame = encode_request(ApiKey::Fetch, FETCH_VERSION, 1, &request)?;
    stream
        .write_all(&frame)
        .await
        .map_err(|e| BenchError::io("send fetch request", e))?;
    let Some(frame) = read_frame(&mut stream, RESPONSE_BYTES_MAX).await? else {
        return Ok(false);
    };
    let response: FetchResponse = decode_response(frame, ApiKey::Fetch, FETCH_VERSION, 1)?;
    Ok(response.responses.iter().any(|t| {
        t.partitions
            .iter()
            .any(|p| p.error_code == 0 && p.records.as_ref().is_some_and(|r| !r.is_empty()))
    }))
}

/// A consumer's KIP-227 fetch session with the target, if the target keeps one.
///
/// Every full fetch asks for a session (epoch 0). Once the target gives one, each fetch
/// lists only the partitions whose offset moved since the target last heard of them; the
/// target keeps the rest and answers only partitions with news. A target without sessions
/// answers session id 0, and the consumer goes on with full fetches.
struct FetchSession {
    /// Session id (0: none, the next fetch is full).
    id: i32,
    /// Epoch of the next fetch (0 on a full fetch: "create a session").
    epoch: i32,
    /// The offset the target holds for each partition of the session.
    held: Vec<i64>,
}

impl FetchSession {
    fn new(partitions: usize) -> Self {
        FetchSession {
            id: 0,
            epoch: 0,
            held: vec![-1; partitions],
        }
    }

    /// The partitions (local indices) the next request lists: all of them, starting at
    /// `first`, on a full fetch; else those whose offset moved.
    ///
    /// A full fetch's target fills its response in request order until max_bytes:
    /// starting each one after the last partition served keeps every partition drained in
    /// turn instead of starving the tail of a long list. In a session the target keeps
    /// that order itself.
    fn listed(&self, offsets: &[i64], first: usize) -> Vec<usize> {
        if self.id == 0 {
            (first..offsets.len()).chain(0..first).collect()
        } else {
            (0..offsets.len())
                .filter(|&i| offsets[i] != self.held[i])
                .collect()
        }
    }

    /// Takes in a response to a request that listed `listed` at `offsets`; false if the
    /// response carries nothing to read (the session is unknown or out of step).
    fn answered(&mut self, response: &FetchResponse, listed: &[usize], offsets: &[i64]) -> bool {
        if response.error_code == FETCH_SESSION_ID_NOT_FOUND
            || response.error_code == INVALID_FETCH_SESSION_EPOCH
        {
            self.id = 0;
            self.epoch = 0;
            return false;
        }
        if response.session_id == 0 || (self.id != 0 && response.session_id != self.id) {
            // No session (any more): the next fetch is full and asks for one again.
            self.id = 0;
            self.epoch = 0;
            return true;
        }
        self.id = response.session_id;
        self.epoch = ferry_kafka::server::next_epoch(self.epoch);
        for &i in listed {
            self.held[i] = offsets[i];
        }
        true
    }
}

async fn run_consumer(
    id: u32,
    partitions: Vec<usize>,
    ctx: Arc<RunContext>,
) -> Result<ConsumerOutcome> {
    let mut stream = connect(&ctx.address).await?;
    let mut checker = SequenceChecker::new();
    let mut histogram = latency_histogram();
    let mut offsets: Vec<i64> = vec![0; partitions.len()];
    let local_index: HashMap<usize, usize> = partitions
        .iter()
        .enumerate()
        .map(|(i, &g)| (g, i))
        .collect();
    let topic_index: HashMap<&str, usize> = ctx
        .topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let measure_start_ns = (ctx.state.measure_start - ctx.state.start).as_nanos() as u64;
    let measure_end_ns = (ctx.state.measure_end - ctx.state.start).as_nanos() as u64;
    let mut correlation_id: i32 = 0;
    let mut errors_in_a_row = 0u32;
    let mut drain_deadline: Option<Instant> = None;
    // Where the next full fetch's partition list starts.
    let mut first = 0usize;
    let mut session = FetchSession::new(partitions.len());

    loop {
        if ctx.state.producers_done.load(Ordering::Acquire) {
            if partitions.iter().all(|&g| ctx.state.partition_drained(g)) {
                break;
            }
            let deadline = *drain_deadline
                .get_or_insert_with(|| Instant::now() + ctx.workload.drain_timeout());
            if Instant::now() >= deadline {
                break;
            }
        }
        let listed = session.listed(&offsets, first);
        let mut by_topic: Vec<Vec<FetchPartition>> = vec![Vec::new(); ctx.topics.len()];
        for &i in &listed {
            let (topic, index) = ctx.split_partition(partitions[i]);
            by_topic[topic].push(
                FetchPartition::default()
                    .with_partition(index)
                    .with_fetch_offset(offsets[i])
                    .with_partition_max_bytes(FETCH_PARTITION_MAX_BYTES)
                    .with_log_start_offset(-1)
                    .with_current_leader_epoch(-1),
            );
        }
        let topics = by_topic
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, partitions)| {
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(ctx.topics[t].clone())))
                    .with_partitions(partitions)
            })
            .collect();
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(FETCH_MAX_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(session.id)
            .with_session_epoch(session.epoch)
            .with_topics(topics);
        correlation_id = correlation_id.wrapping_add(1);
        let frame = encode_request(ApiKey::Fetch, FETCH_VERSION, correlation_id, &request)?;
        stream
            .write_all(&frame)
            .await
            .map_err(|e| BenchError::io("send fetch request", e))?;
        let frame = read_frame(&mut stream, RESPONSE_BYTES_MAX)
            .await?
            .ok_or_else(|| {
                BenchError::Protocol(format!("target closed consumer {id}'s connection"))
            })?;
        let response: FetchResponse =
            decode_response(frame, ApiKey::Fetch, FETCH_VERSION, correlation_id)?;
        if !session.answered(&response, &listed, &offsets) {
            // The session is gone or out of step: start a new one at once.
            continue;
        }
        let received_at = Instant::now();
        let now_ns = ctx.state.now_ns();
        let in_window = ctx.state.is_measured(received_at);
        let mut had_error = response.error_code != 0;
        for topic in &response.responses {
            let Some(&t) = topic_index.get(topic.topic.0.as_str()) else {
                return Err(BenchError::Protocol(format!(
                    "fetch answered for unknown topic {:?}",
                    topic.topic.0.as_str()
                )));
            };
            for data in &topic.partitions {
                let g = ctx.global_partition(t, data.partition_index);
                let Some(&i) = local_index.get(&g) else {
                    return Err(BenchError::Protocol(format!(
                        "fetch answered for unasked partition {}",
                        data.partition_index
                    )));
                };
                if data.error_code == OFFSET_OUT_OF_RANGE {
                    ctx.state.consume_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(BenchError::Protocol(format!(
                        "offset {} of partition {g} is no longer on the target (OFFSET_OUT_OF_RANGE; log start {}, high watermark {})",
                        offsets[i], data.log_start_offset, data.high_watermark
                    )));
                }
                if data.error_code != 0 {
                    had_error = true;
                    continue;
                }
                let Some(records) = &data.records else {
                    continue;
                };
                let mut consumed = 0u64;
                offsets[i] = visit_fetched_records(records, offsets[i], |_, record| {
                    consumed += 1;
                    match record.value.and_then(Stamp::decode) {
                        Some(stamp) => {
                            checker.observe(g as u32, stamp.producer, stamp.sequence);
                            if stamp.sent_ns >= measure_start_ns && stamp.sent_ns < measure_end_ns {
                                record_latency(
                                    &mut histogram,
                                    Duration::from_nanos(now_ns.saturating_sub(stamp.sent_ns)),
                                );
                            }
                        }
                        None => checker.unreadable(),
                    }
                    Ok::<(), BenchError>(())
                })?;
                if consumed > 0 {
                    first = (i + 1) % partitions.len();
                    ctx.state.consumed_per_partition[g].fetch_add(consumed, Ordering::AcqRel);
                    ctx.state
                        .consumed_total
                        .fetch_add(consumed, Ordering::Relaxed);
                    if in_window {
                        ctx.state
                            .consumed_measured
                            .fetch_add(consumed, Ordering::Relaxed);
                    }
                }
            }
        }
        if had_error {
            ctx.state.consume_errors.fetch_add(1, Ordering::Relaxed);
            errors_in_a_row += 1;
            if errors_in_a_row > FETCH_ERRORS_IN_A_ROW_MAX {
                return Err(BenchError::Protocol(format!(
                    "consumer {id}: {errors_in_a_row} fetch errors in a row"
                )));
            }
            tokio::time::sleep(FETCH_ERROR_BACKOFF).await;
        } else {
            errors_in_a_row = 0;
        }
    }
    Ok(ConsumerOutcome {
        end_to_end_latency: histogram,
        checks: checker.counts(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ProduceRequest, RequestHeader};

    #[tokio::test]
    async fn hand_encoded_produce_frames_decode_as_produce_requests() {
        let batch = |n: u8| {
            let mut builder = BatchBuilder::reusable();
            builder.push_record(None, Some(&[n; 30]), &[], 0);
            builder.finish()
        };
        let chunks = encode_produce_frame(
            7,
            -1,
            vec![
                ("alpha", vec![(0, batch(1)), (3, batch(2))]),
                ("b", vec![(1, batch(3))]),
            ]
            .into_iter(),
        );
        let (mut near, mut far) = tokio::io::duplex(5);
        let reader = tokio::spawn(async move { read_frame(&mut far, 1 << 20).await });
        write_all_chunks(&mut near, &chunks).await.expect("write");
        drop(near);
        let mut frame = reader.await.expect("task").expect("read").expect("frame");
        let header = RequestHeader::decode(&mut frame, 1).expect("header");
        assert_eq!(header.correlation_id, 7);
        assert_eq!(header.request_api_version, PRODUCE_VERSION);
        let request = ProduceRequest::decode(&mut frame, PRODUCE_VERSION).expect("body");
        assert_eq!(request.acks, -1);
        assert_eq!(request.topic_data.len(), 2);
        assert_eq!(request.topic_data[0].name.0.as_str(), "alpha");
        assert_eq!(request.topic_data[0].partition_data[1].index, 3);
        assert_eq!(
            request.topic_data[1].partition_data[0].records,
            Some(batch(3))
        );
        assert!(frame.is_empty());
    }
}
