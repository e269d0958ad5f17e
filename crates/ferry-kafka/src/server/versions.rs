//! The API keys and versions Ferry serves, and the ApiVersions answer built from them.
//!
//! The ranges are those of Apache Kafka 4.0 for every API Ferry implements, so that clients
//! which infer the broker release from them (kafka-python 3.x checks ListOffsets v10 for 4.0)
//! see a real release. Two deliberate differences:
//! - Fetch stops at v12: v13+ address topics by id only, which Ferry does not serve yet.
//! - Produce is advertised from v0 although v0–v2 are answered with UNSUPPORTED_VERSION
//!   (exactly like Kafka 4.0, KAFKA-18659): librdkafka before 2.11.1 otherwise disables
//!   compression, because it checks "Produce v0 supported" before compressing.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::StrBytes;

/// Lowest Produce version the codec can decode; older ones get UNSUPPORTED_VERSION.
pub const PRODUCE_MIN_DECODABLE_VERSION: i16 = 3;

/// Every served API with its (min, max) version, in API-key order.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 2, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DescribeTopicPartitions, 0, 0),
];

/// The (min, max) versions served for `key`, or `None` if Ferry does not serve it.
pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Whether `version` of `key` is served (advertised).
pub fn is_supported(key: ApiKey, version: i16) -> bool {
    supported_range(key).is_some_and(|(min, max)| (min..=max).contains(&version))
}

/// The ApiVersions response body listing every served API, with `error_code`.
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED_APIS
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
        .with_throttle_time_ms(0)
}

/// Software name sent back nowhere but logged: what the client says it is.
pub fn client_software(name: &StrBytes, version: &StrBytes) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("{name} {version}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_ranges_are_decodable_by_the_codec() {
        for &(key, min, max) in SUPPORTED_APIS {
            let codec = key.valid_versions();
            let min = if key == ApiKey::Produce {
                PRODUCE_MIN_DECODABLE_VERSION
            } else {
                min
            };
            assert!(
                codec.min <= min && max <= codec.max,
                "{key:?} {min}..={max} outside codec range {codec}"
            );
        }
    }

    #[test]
    fn ranges_are_sorted_and_unique() {
        for pair in SUPPORTED_APIS.windows(2) {
            assert!((pair[0].0 as i16) < (pair[1].0 as i16));
        }
    }
}
