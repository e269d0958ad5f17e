//! Protocol-level tests of the Kafka listener: `serve()` on 127.0.0.1 with a real broker in
//! a temporary directory, spoken to with kafka-protocol's request encoders.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{batch, count_batches, decode_records, TestBroker, TestClient, STEP_TIMEOUT};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, FetchRequest, FetchResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

const API_VERSIONS_V: i16 = 3;
const METADATA_V: i16 = 12;
const PRODUCE_V: i16 = 9;
const FETCH_V: i16 = 12;
const CREATE_TOPICS_V: i16 = 7;
const LIST_OFFSETS_V: i16 = 7;
const INIT_PRODUCER_ID_V: i16 = 4;

/// Runs a test body under an overall deadline.
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test finished within 60 s");
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

async fn create_topic(
    client: &mut TestClient,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> i16 {
    let topic = CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(partitions)
        .with_replication_factor(-1)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.to_string()))
                        .with_value(Some(StrBytes::from_string(v.to_string())))
                })
                .collect(),
        );
    let response: CreateTopicsResponse = client
        .request(
            ApiKey::CreateTopics,
            CREATE_TOPICS_V,
            &CreateTopicsRequest::default()
                .with_topics(vec![topic])
                .with_timeout_ms(5000),
        )
        .await;
    response.topics[0].error_code
}

fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

/// Produces one batch with acks=1; returns (error code, base offset).
async fn produce(
    client: &mut TestClient,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> (i16, i64) {
    let response: ProduceResponse = client
        .request(
            ApiKey::Produce,
            PRODUCE_V,
            &produce_request(topic, partition, records, 1),
        )
        .await;
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Fetches one partition from `offset` without waiting.
async fn fetch(
    client: &mut TestClient,
    topic: &str,
    partition: i32,
    offset: i64,
) -> (i16, i64, Bytes) {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = client.request(ApiKey::Fetch, FETCH_V, &request).await;
    assert_eq!(response.error_code, 0);
    let p = &response.responses[0].partitions[0];
    (
        p.error_code,
        p.high_watermark,
        p.records.clone().unwrap_or_default(),
    )
}

async fn metadata(client: &mut TestClient, topics: &[&str], auto_create: bool) -> MetadataResponse {
    let request = MetadataRequest::default()
        .with_topics(Some(
            topics
                .iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                .collect(),
        ))
        .with_allow_auto_topic_creation(auto_create);
    client.request(ApiKey::Metadata, METADATA_V, &request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_advertises_kafka_4_0_ranges() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        let response: ApiVersionsResponse = client
            .request(
                ApiKey::ApiVersions,
                API_VERSIONS_V,
                &ApiVersionsRequest::default(),
            )
            .await;
        assert_eq!(response.error_code, 0);
        let ranges: BTreeMap<i16, (i16, i16)> = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        assert_eq!(ranges[&(ApiKey::Produce as i16)], (0, 12));
        assert_eq!(ranges[&(ApiKey::Fetch as i16)], (4, 12));
        // kafka-python infers 4.0 from ListOffsets v10 (and nothing newer).
        assert_eq!(ranges[&(ApiKey::ListOffsets as i16)], (1, 10));
        assert_eq!(ranges[&(ApiKey::ApiVersions as i16)], (0, 4));
        for key in [
            ApiKey::JoinGroup,
            ApiKey::InitProducerId,
            ApiKey::CreateTopics,
            ApiKey::DescribeConfigs,
        ] {
            assert!(ranges.contains_key(&(key as i16)), "{key:?} advertised");
        }
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_unknown_version_gets_unsupported_version_and_list() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        // A v3-encoded request claiming version 99.
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        frame.put_i16(ApiKey::ApiVersions as i16);
        frame.put_i16(99);
        frame.put_i32(42);
        frame.put_i16(4);
        frame.extend_from_slice(b"test");
        frame.put_u8(0); // header tagged fields
        frame.extend_from_slice(&[5, b'f', b'e', b'r', b'r', 2, b'1', 0]); // body
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        client.send_raw(&frame).await;
        // Answered as v0: v0 header, v0 body.
        let (correlation_id, response) = client
            .receive::<ApiVersionsResponse>(ApiKey::ApiVersions, 0)
            .await;
        assert_eq!(correlation_id, 42);
        assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
        assert!(response
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version == 4));
        // The connection stays usable: the client retries with a version we know.
        let retry: ApiVersionsResponse = client
            .request(
                ApiKey::ApiVersions,
                API_VERSIONS_V,
                &ApiVersionsRequest::default(),
            )
            .await;
        assert_eq!(retry.error_code, 0);
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_round_trip() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        assert_eq!(create_topic(&mut client, "orders", 2, &[]).await, 0);

        let first = batch(
            &[("k1", b"v1"), ("k2", b"v2"), ("k3", b"v3")],
            None,
            Compression::None,
        );
        assert_eq!(
            produce(&mut client, "orders", 1, first.clone()).await,
            (0, 0)
        );
        let second = batch(&[("k4", b"v4")], None, Compression::Gzip);
        assert_eq!(produce(&mut client, "orders", 1, second).await, (0, 3));

        let (error, high_watermark, records) = fetch(&mut client, "orders", 1, 0).await;
        assert_eq!((error, high_watermark), (0, 4));
        assert_eq!(count_batches(&records), 2, "batches are served as stored");
        let fetched = decode_records(records);
        let keys: Vec<(i64, &str)> = fetched.iter().map(|(o, k, _)| (*o, k.as_str())).collect();
        assert_eq!(keys, vec![(0, "k1"), (1, "k2"), (2, "k3"), (3, "k4")]);
        assert_eq!(fetched[3].2.as_ref(), b"v4");

        // An offset inside a batch returns the whole batch.
        let (_, _, records) = fetch(&mut client, "orders", 1, 1).await;
        assert_eq!(decode_records(records)[0].0, 0);
        // The other partition is empty; past the end is out of range.
        let (error, high_watermark, records) = fetch(&mut client, "orders", 0, 0).await;
        assert_eq!((error, high_watermark, records.len()), (0, 0, 0));
        let (error, _, _) = fetch(&mut client, "orders", 1, 100).await;
        assert_eq!(error, 1, "OFFSET_OUT_OF_RANGE");

        let offsets: ListOffsetsResponse = client
            .request(
                ApiKey::ListOffsets,
                LIST_OFFSETS_V,
                &ListOffsetsRequest::default()
                    .with_replica_id((-1).into())
                    .with_topics(vec![ListOffsetsTopic::default()
                        .with_name(topic_name("orders"))
                        .with_partitions(vec![
                            ListOffsetsPartition::default()
                                .with_partition_index(1)
                                .with_timestamp(-2),
                            ListOffsetsPartition::default()
                                .with_partition_index(1)
                                .with_timestamp(-1),
                        ])]),
            )
            .await;
        let found: Vec<(i16, i64)> = offsets.topics[0]
            .partitions
            .iter()
            .map(|p| (p.error_code, p.offset))
            .collect();
        assert_eq!(found, vec![(0, 0), (0, 4)]);
        broker.stop().await;
    })
    .await;
}

/// A fetch of `partitions` (index, offset) of `topic` in session `id` at `epoch`, not
/// waiting, forgetting `forget`; returns the response.
async fn session_fetch(
    client: &mut TestClient,
    session: (i32, i32),
    topic: &str,
    partitions: &[(i32, i64)],
    forget: &[i32],
) -> FetchResponse {
    let request = session_request(session, topic, partitions, forget);
    client.request(ApiKey::Fetch, FETCH_V, &request).await
}

/// The request [`session_fetch`] sends.
fn session_request(
    (id, epoch): (i32, i32),
    topic: &str,
    partitions: &[(i32, i64)],
    forget: &[i32],
) -> FetchRequest {
    let listed = (!partitions.is_empty()).then(|| {
        FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&(partition, offset)| {
                        FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            )
    });
    let forgotten = (!forget.is_empty()).then(|| {
        ForgottenTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(forget.to_vec())
    });
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_session_id(id)
        .with_session_epoch(epoch)
        .with_topics(listed.into_iter().collect())
        .with_forgotten_topics_data(forgotten.into_iter().collect())
}

/// (partition, high watermark, record count) of each partition a fetch answered.
fn answered(response: &FetchResponse) -> Vec<(i32, i64, usize)> {
    response
        .responses
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(|p| {
            let records = p.records.clone().unwrap_or_default();
            (
                p.partition_index,
                p.high_watermark,
                decode_records(records).len(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_fetch_sessions_answer_only_news() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        assert_eq!(create_topic(&mut client, "feed", 3, &[]).await, 0);
        let one = || batch(&[("k", b"v")], None, Compression::None);
        assert_eq!(produce(&mut client, "feed", 0, one()).await, (0, 0));

        // A full fetch at epoch 0 creates a session and answers every partition.
        let all = [(0, 0), (1, 0), (2, 0)];
        let full = session_fetch(&mut client, (0, 0), "feed", &all, &[]).await;
        assert_eq!(full.error_code, 0);
        let id = full.session_id;
        assert!(id > 0, "a session was created");
        assert_eq!(answered(&full), vec![(0, 1, 1), (1, 0, 0), (2, 0, 0)]);

        // Nothing changed and the client moved partition 0 on: an empty answer.
        let quiet = session_fetch(&mut client, (id, 1), "feed", &[(0, 1)], &[]).await;
        assert_eq!((quiet.error_code, quiet.session_id), (0, id));
        assert_eq!(answered(&quiet), vec![]);

        // New records on partition 2 are the only news; the request lists nothing.
        assert_eq!(produce(&mut client, "feed", 2, one()).await, (0, 0));
        let news = session_fetch(&mut client, (id, 2), "feed", &[], &[]).await;
        assert_eq!(answered(&news), vec![(2, 1, 1)]);
        // The client has not moved partition 2 on: the broker serves it again, from the
        // offset the session holds.
        let again = session_fetch(&mut client, (id, 3), "feed", &[], &[]).await;
        assert_eq!(answered(&again), vec![(2, 1, 1)]);

        // Forgotten partitions are no longer fetched, even with news.
        let forgot = session_fetch(&mut client, (id, 4), "feed", &[(2, 1)], &[0]).await;
        assert_eq!(answered(&forgot), vec![]);
        assert_eq!(produce(&mut client, "feed", 0, one()).await, (0, 1));
        let none = session_fetch(&mut client, (id, 5), "feed", &[], &[]).await;
        assert_eq!(answered(&none), vec![]);

        // A stale epoch and an unknown session are whole-response errors.
        let stale = session_fetch(&mut client, (id, 5), "feed", &[], &[]).await;
        assert_eq!(
            (stale.error_code, stale.session_id),
            (71, 0),
            "INVALID_FETCH_SESSION_EPOCH"
        );
        let unknown = session_fetch(&mut client, (id.wrapping_add(1), 1), "feed", &[], &[]).await;
        assert_eq!(unknown.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");

        // A full fetch at epoch -1 closes the session and keeps none.
        let closing = session_fetch(&mut client, (id, -1), "feed", &all, &[]).await;
        assert_eq!((closing.error_code, closing.session_id), (0, 0));
        assert_eq!(answered(&closing).len(), 3);
        let closed = session_fetch(&mut client, (id, 6), "feed", &[], &[]).await;
        assert_eq!(closed.error_code, 70, "the session is gone");
        broker.stop().await;
    })
    .await;
}

/// (partition, error code, log start offset) of each partition a fetch answered.
fn answered_starts(response: &FetchResponse) -> Vec<(i32, i16, i64)> {
    response
        .responses
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(|p| (p.partition_index, p.error_code, p.log_start_offset))
        .collect()
}

/// A session reads only the partitions that may have news, so every change must reach it
/// without the client asking: records removed from the front, an append while it long
/// polls, and the topic deleted and created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_sessions_see_changes_the_client_did_not_ask_about() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        let mut producer = broker.client().await;
        assert_eq!(create_topic(&mut client, "watched", 2, &[]).await, 0);
        let one = || batch(&[("k", b"v")], None, Compression::None);
        assert_eq!(produce(&mut producer, "watched", 0, one()).await, (0, 0));
        assert_eq!(produce(&mut producer, "watched", 0, one()).await, (0, 1));
        let all = [(0, 0), (1, 0)];
        let full = session_fetch(&mut client, (0, 0), "watched", &all, &[]).await;
        let id = full.session_id;
        assert!(id > 0, "a session was created");
        assert_eq!(answered(&full), vec![(0, 2, 2), (1, 0, 0)]);
        let caught_up = session_fetch(&mut client, (id, 1), "watched", &[(0, 2)], &[]).await;
        assert_eq!(answered(&caught_up), vec![]);

        // DeleteRecords moves partition 0's log start: news, with no new records.
        assert_eq!(broker.broker.delete_records("watched", 0, 1).unwrap(), 1);
        let moved = session_fetch(&mut client, (id, 2), "watched", &[], &[]).await;
        assert_eq!(answered_starts(&moved), vec![(0, 0, 1)]);
        assert_eq!(answered(&moved), vec![(0, 2, 0)]);

        // A long poll over the quiet session is woken by an append to partition 1.
        let long_poll = session_request((id, 3), "watched", &[], &[])
            .with_max_wait_ms(15_000)
            .with_min_bytes(1);
        let sent = client.send(ApiKey::Fetch, FETCH_V, &long_poll).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        assert_eq!(produce(&mut producer, "watched", 1, one()).await, (0, 0));
        let (received, woken) = client
            .receive::<FetchResponse>(ApiKey::Fetch, FETCH_V)
            .await;
        assert_eq!(received, sent);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the append woke the long poll"
        );
        assert_eq!(answered(&woken), vec![(1, 1, 1)]);
        let read = session_fetch(&mut client, (id, 4), "watched", &[(1, 1)], &[]).await;
        assert_eq!(answered(&read), vec![]);

        // Deleted: both partitions answer UNKNOWN_TOPIC_OR_PARTITION.
        broker.broker.delete_topic("watched").await.unwrap();
        let gone = session_fetch(&mut client, (id, 5), "watched", &[], &[]).await;
        assert_eq!(answered_starts(&gone), vec![(0, 3, -1), (1, 3, -1)]);
        // Created again under the same name: the session finds the new partitions.
        assert_eq!(create_topic(&mut client, "watched", 2, &[]).await, 0);
        assert_eq!(produce(&mut producer, "watched", 1, one()).await, (0, 0));
        let back = session_fetch(&mut client, (id, 6), "watched", &all, &[]).await;
        assert_eq!(answered_starts(&back), vec![(0, 0, 0), (1, 0, 0)]);
        assert_eq!(answered(&back), vec![(0, 0, 0), (1, 1, 1)]);
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_gets_no_response() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        assert_eq!(
            create_topic(&mut client, "fire-and-forget", 1, &[]).await,
            0
        );
        let records = batch(&[("k", b"v")], None, Compression::None);
        client
            .send(
                ApiKey::Produce,
                PRODUCE_V,
                &produce_request("fire-and-forget", 0, records, 0),
            )
            .await;
        let next = client
            .send(
                ApiKey::ApiVersions,
                API_VERSIONS_V,
                &ApiVersionsRequest::default(),
            )
            .await;
        let (correlation_id, _) = client
            .receive::<ApiVersionsResponse>(ApiKey::ApiVersions, API_VERSIONS_V)
            .await;
        assert_eq!(
            correlation_id, next,
            "the first frame read answers the request after the acks=0 produce"
        );
        let (_, high_watermark, _) = fetch(&mut client, "fire-and-forget", 0, 0).await;
        assert_eq!(high_watermark, 1, "the acks=0 batch was written");
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    bounded(async {
        let broker = TestBroker::start_with(|_, kafka| kafka.max_request_bytes = 1 << 20).await;
        let mut healthy = broker.client().await;
        assert_eq!(create_topic(&mut healthy, "steady", 1, &[]).await, 0);

        let mut huge = broker.client().await;
        huge.send_raw(&0x7fff_ffffi32.to_be_bytes()).await;
        assert!(
            huge.is_closed().await,
            "a length above max_request_bytes closes the connection"
        );

        let mut negative = broker.client().await;
        negative.send_raw(&(-5i32).to_be_bytes()).await;
        assert!(
            negative.is_closed().await,
            "a negative length closes the connection"
        );

        let mut unknown_key = broker.client().await;
        unknown_key
            .send_raw(&[0, 0, 0, 10, 0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff])
            .await;
        assert!(
            unknown_key.is_closed().await,
            "an unknown API key closes the connection"
        );

        let mut unsupported = broker.client().await;
        // Metadata v99.
        unsupported
            .send_raw(&[0, 0, 0, 10, 0, 3, 0, 99, 0, 0, 0, 1, 0xff, 0xff])
            .await;
        assert!(
            unsupported.is_closed().await,
            "an unsupported version closes the connection"
        );

        let mut garbage = broker.client().await;
        // Produce v9 header followed by a body that is not a produce request.
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        frame.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0]);
        frame.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        garbage.send_raw(&frame).await;
        assert!(
            garbage.is_closed().await,
            "a malformed body closes the connection"
        );

        // The connection opened first keeps producing and consuming.
        for i in 0..3 {
            let records = batch(
                &[("k", format!("v{i}").as_bytes())],
                None,
                Compression::None,
            );
            assert_eq!(produce(&mut healthy, "steady", 0, records).await, (0, i));
        }
        let (error, high_watermark, records) = fetch(&mut healthy, "steady", 0, 0).await;
        assert_eq!(
            (error, high_watermark, decode_records(records).len()),
            (0, 3, 3)
        );
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_message_gets_message_too_large() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        assert_eq!(
            create_topic(&mut client, "small", 1, &[("max.message.bytes", "1024")]).await,
            0
        );
        let big = vec![b'x'; 4096];
        let (error, _) = produce(
            &mut client,
            "small",
            0,
            batch(&[("k", &big)], None, Compression::None),
        )
        .await;
        assert_eq!(error, 10, "MESSAGE_TOO_LARGE");
        let (error, base) = produce(
            &mut client,
            "small",
            0,
            batch(&[("k", b"fits")], None, Compression::None),
        )
        .await;
        assert_eq!((error, base), (0, 0));
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_names_and_replication_factors_are_rejected() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        let response = metadata(&mut client, &["no spaces allowed"], true).await;
        assert_eq!(response.topics[0].error_code, 17, "INVALID_TOPIC_EXCEPTION");
        assert_eq!(create_topic(&mut client, "bad/name", 1, &[]).await, 17);

        let replicated = CreatableTopic::default()
            .with_name(topic_name("replicated"))
            .with_num_partitions(1)
            .with_replication_factor(3);
        let response: CreateTopicsResponse = client
            .request(
                ApiKey::CreateTopics,
                CREATE_TOPICS_V,
                &CreateTopicsRequest::default().with_topics(vec![replicated]),
            )
            .await;
        assert_eq!(
            response.topics[0].error_code, 38,
            "INVALID_REPLICATION_FACTOR"
        );

        // -1 partitions takes the broker default; the topic is then in Metadata.
        assert_eq!(create_topic(&mut client, "defaulted", -1, &[]).await, 0);
        let response = metadata(&mut client, &["defaulted"], false).await;
        assert_eq!(response.topics[0].error_code, 0);
        assert_eq!(response.topics[0].partitions.len(), 1);
        assert_ne!(response.topics[0].topic_id, uuid::Uuid::nil());
        assert_eq!(response.brokers[0].port, broker.addr.port() as i32);
        broker.stop().await;
    })
    .await;
}

async fn init_producer_id(client: &mut TestClient) -> (i64, i16) {
    let response: InitProducerIdResponse = client
        .request(
            ApiKey::InitProducerId,
            INIT_PRODUCER_ID_V,
            &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000),
        )
        .await;
    assert_eq!(response.error_code, 0);
    (response.producer_id.0, response.producer_epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_is_written_once() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        assert_eq!(create_topic(&mut client, "idem", 1, &[]).await, 0);
        let (producer_id, epoch) = init_producer_id(&mut client).await;
        let first = batch(
            &[("a", b"1"), ("b", b"2")],
            Some((producer_id, epoch, 0)),
            Compression::None,
        );
        assert_eq!(produce(&mut client, "idem", 0, first.clone()).await, (0, 0));
        // The very same bytes again, as a producer retrying after a lost response.
        assert_eq!(produce(&mut client, "idem", 0, first).await, (0, 0));
        let next = batch(
            &[("c", b"3")],
            Some((producer_id, epoch, 2)),
            Compression::None,
        );
        assert_eq!(produce(&mut client, "idem", 0, next).await, (0, 2));

        let (_, high_watermark, records) = fetch(&mut client, "idem", 0, 0).await;
        assert_eq!(high_watermark, 3);
        assert_eq!(
            count_batches(&records),
            2,
            "the retried batch is in the log once"
        );
        let keys: Vec<String> = decode_records(records)
            .into_iter()
            .map(|(_, k, _)| k)
            .collect();
        assert_eq!(keys, vec!["a", "b", "c"]);
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_gap_gets_out_of_order_sequence_number() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        assert_eq!(create_topic(&mut client, "gappy", 1, &[]).await, 0);
        let (producer_id, epoch) = init_producer_id(&mut client).await;
        let first = batch(
            &[("a", b"1")],
            Some((producer_id, epoch, 0)),
            Compression::None,
        );
        assert_eq!(produce(&mut client, "gappy", 0, first).await, (0, 0));
        let gap = batch(
            &[("b", b"2")],
            Some((producer_id, epoch, 5)),
            Compression::None,
        );
        let (error, _) = produce(&mut client, "gappy", 0, gap).await;
        assert_eq!(error, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
        let (_, high_watermark, _) = fetch(&mut client, "gappy", 0, 0).await;
        assert_eq!(high_watermark, 1, "the out-of-order batch was not written");
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_a_long_poll_fetch_and_returns() {
    bounded(async {
        let mut broker = TestBroker::start().await;
        let mut client = broker.client().await;
        assert_eq!(create_topic(&mut client, "quiet", 1, &[]).await, 0);
        let request = FetchRequest::default()
            .with_max_wait_ms(25_000)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("quiet"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]);
        let sent = client.send(ApiKey::Fetch, FETCH_V, &request).await;
        // Let the fetch start waiting, then shut down.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let server = broker.begin_stop();
        let (received, response) = client
            .receive::<FetchResponse>(ApiKey::Fetch, FETCH_V)
            .await;
        assert_eq!(received, sent);
        assert_eq!(response.responses[0].partitions[0].error_code, 0);
        tokio::time::timeout(STEP_TIMEOUT, server)
            .await
            .expect("serve returns")
            .expect("serve task")
            .expect("serve result");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "shutdown did not wait for the long poll"
        );
        assert!(client.is_closed().await);
        let _ = broker.broker.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_topic_partitions_pages_with_a_cursor() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        assert_eq!(create_topic(&mut client, "paged-a", 3, &[]).await, 0);
        assert_eq!(create_topic(&mut client, "paged-b", 2, &[]).await, 0);
        let topics = ["paged-b", "paged-a", "missing"]
            .iter()
            .map(|t| TopicRequest::default().with_name(topic_name(t)))
            .collect::<Vec<_>>();
        let mut seen = Vec::new();
        let mut cursor: Option<Cursor> = None;
        for _page in 0..10 {
            let request = DescribeTopicPartitionsRequest::default()
                .with_topics(topics.clone())
                .with_response_partition_limit(2)
                .with_cursor(cursor.take());
            let response: DescribeTopicPartitionsResponse = client
                .request(ApiKey::DescribeTopicPartitions, 0, &request)
                .await;
            for topic in &response.topics {
                let name = topic
                    .name
                    .as_ref()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                if name == "missing" {
                    assert_eq!(topic.error_code, 3);
                    continue;
                }
                assert_eq!(topic.error_code, 0);
                seen.extend(
                    topic
                        .partitions
                        .iter()
                        .map(|p| (name.clone(), p.partition_index)),
                );
            }
            match response.next_cursor {
                Some(next) => {
                    cursor = Some(
                        Cursor::default()
                            .with_topic_name(next.topic_name)
                            .with_partition_index(next.partition_index),
                    )
                }
                None => break,
            }
        }
        let expected: Vec<(String, i32)> = [
            ("paged-a", 0),
            ("paged-a", 1),
            ("paged-a", 2),
            ("paged-b", 0),
            ("paged-b", 1),
        ]
        .iter()
        .map(|(t, p)| (t.to_string(), *p))
        .collect();
        assert_eq!(
            seen, expected,
            "every partition once, in name order, two per page"
        );
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_auto_creates_topics_only_when_allowed() {
    bounded(async {
        let broker = TestBroker::start().await;
        let mut client = broker.client().await;
        let records = || batch(&[("k", b"v")], None, Compression::None);
        assert_eq!(
            produce(&mut client, "born-on-produce", 0, records()).await,
            (0, 0)
        );
        let (error, _) = produce(&mut client, "bad name", 0, records()).await;
        assert_eq!(error, 17, "INVALID_TOPIC_EXCEPTION");
        let (error, _) = produce(&mut client, "born-on-produce", 5, records()).await;
        assert_eq!(error, 3, "a partition the topic does not have");
        broker.stop().await;

        let broker = TestBroker::start_with(|config, _| config.auto_create_topics = false).await;
        let mut client = broker.client().await;
        let (error, _) = produce(&mut client, "not-created", 0, records()).await;
        assert_eq!(error, 3, "UNKNOWN_TOPIC_OR_PARTITION");
        let response = metadata(&mut client, &["not-created"], true).await;
        assert_eq!(response.topics[0].error_code, 3);
        broker.stop().await;
    })
    .await;
}
