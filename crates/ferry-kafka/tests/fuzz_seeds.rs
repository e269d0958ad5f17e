//! Well-formed requests of every served API and version: checked to decode, and written
//! out as the seed corpus of the `kafka_request` fuzz target on demand:
//!
//! ```text
//! FERRY_FUZZ_SEEDS_DIR=fuzz/corpus/kafka_request \
//!     cargo test -p ferry-kafka --test fuzz_seeds -- --ignored write_fuzz_seeds
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

use ferry_kafka::server::versions::{PRODUCE_MIN_DECODABLE_VERSION, SUPPORTED_APIS};
use ferry_kafka::server::{decode_request, DecodedRequest};

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("seed-topic"))
}

/// A plausible request body of `key` (defaults, plus a topic or partition where the
/// request is meaningless without one).
fn sample(key: ApiKey) -> RequestKind {
    match key {
        ApiKey::Produce => {
            RequestKind::Produce(ProduceRequest::default().with_acks(1).with_topic_data(
                vec![TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from_static(&[0; 61])))])],
            ))
        }
        ApiKey::Fetch => RequestKind::Fetch(FetchRequest::default().with_topics(
            vec![FetchTopic::default()
                .with_topic(topic())
                .with_partitions(vec![FetchPartition::default().with_partition_max_bytes(1024)])],
        )),
        ApiKey::ListOffsets => RequestKind::ListOffsets(Default::default()),
        ApiKey::Metadata => {
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic())),
            ])))
        }
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(Default::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(Default::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(Default::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(Default::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(Default::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(Default::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(Default::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(Default::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(Default::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(Default::default()),
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(Default::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(Default::default()),
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(Default::default()),
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(Default::default()),
        ApiKey::AlterConfigs => RequestKind::AlterConfigs(Default::default()),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(Default::default()),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(Default::default()),
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(Default::default()),
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(Default::default()),
        ApiKey::DescribeTopicPartitions => RequestKind::DescribeTopicPartitions(Default::default()),
        other => panic!("no sample for {other:?}: add one for every served API"),
    }
}

/// (api, version, frame without length prefix) for every served API and version the
/// codec can encode.
fn seeds() -> Vec<(ApiKey, i16, Bytes)> {
    let mut seeds = Vec::new();
    for &(key, min, max) in SUPPORTED_APIS {
        let min = if key == ApiKey::Produce {
            PRODUCE_MIN_DECODABLE_VERSION
        } else {
            min
        };
        for version in min..=max {
            let mut frame = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(key as i16)
                .with_request_api_version(version)
                .with_correlation_id(i32::from(version))
                .with_client_id(Some(StrBytes::from_static_str("seed")))
                .encode(&mut frame, key.request_header_version(version))
                .expect("header");
            sample(key)
                .encode(&mut frame, version)
                .unwrap_or_else(|e| panic!("{key:?} v{version}: {e:#}"));
            seeds.push((key, version, frame.freeze()));
        }
    }
    seeds
}

#[test]
fn every_served_api_and_version_decodes() {
    let seeds = seeds();
    assert!(seeds.len() > 100, "{} seeds", seeds.len());
    for (key, version, frame) in seeds {
        match decode_request(frame) {
            Ok(DecodedRequest::Request { header, .. }) => {
                assert_eq!(
                    (header.request_api_key, header.request_api_version),
                    (key as i16, version)
                )
            }
            other => panic!("{key:?} v{version}: {other:?}"),
        }
    }
}

#[test]
fn produce_v0_to_v2_decode_for_an_unsupported_version_answer() {
    // Produce v2: acks, timeout, one topic with one partition and an empty record set.
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 9, 0xff, 0xff]);
    frame.put_i16(1);
    frame.put_i32(1000);
    frame.put_i32(1);
    frame.put_i16(4);
    frame.extend_from_slice(b"logs");
    frame.put_i32(1);
    frame.put_i32(0);
    frame.put_i32(0);
    match decode_request(frame.freeze()) {
        Ok(DecodedRequest::Request { header, body }) => {
            assert_eq!(header.request_api_version, 2);
            let RequestKind::Produce(produce) = *body else {
                panic!("not a produce request")
            };
            assert_eq!(produce.acks, 1);
            assert_eq!(produce.topic_data[0].name.as_str(), "logs");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
#[ignore = "writes the fuzz seed corpus; run by hand with FERRY_FUZZ_SEEDS_DIR set"]
fn write_fuzz_seeds() {
    let dir = std::env::var("FERRY_FUZZ_SEEDS_DIR").expect("FERRY_FUZZ_SEEDS_DIR");
    std::fs::create_dir_all(&dir).expect("create seed dir");
    for (key, version, frame) in seeds() {
        let path = std::path::Path::new(&dir).join(format!("{key:?}-v{version}"));
        std::fs::write(path, &frame).expect("write seed");
    }
}
