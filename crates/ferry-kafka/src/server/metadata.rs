//! Metadata and DescribeCluster: the one node, its topics and their partitions.

use ferry_core::TopicInfo;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicPartitionsRequest,
    DescribeTopicPartitionsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::handlers::Session;
use crate::errors;

/// Kafka ACL operation codes (`AclOperation`), for the "authorized operations" bit sets.
mod acl {
    pub const READ: i32 = 3;
    pub const WRITE: i32 = 4;
    pub const CREATE: i32 = 5;
    pub const DELETE: i32 = 6;
    pub const ALTER: i32 = 7;
    pub const DESCRIBE: i32 = 8;
    pub const CLUSTER_ACTION: i32 = 9;
    pub const DESCRIBE_CONFIGS: i32 = 10;
    pub const ALTER_CONFIGS: i32 = 11;
    pub const IDEMPOTENT_WRITE: i32 = 12;
}

/// Ferry has no ACLs: every operation on a topic is allowed.
pub const TOPIC_AUTHORIZED_OPERATIONS: i32 = bits(&[
    acl::READ,
    acl::WRITE,
    acl::CREATE,
    acl::DELETE,
    acl::ALTER,
    acl::DESCRIBE,
    acl::DESCRIBE_CONFIGS,
    acl::ALTER_CONFIGS,
]);
/// Every operation on the cluster is allowed.
pub const CLUSTER_AUTHORIZED_OPERATIONS: i32 = bits(&[
    acl::CREATE,
    acl::ALTER,
    acl::DESCRIBE,
    acl::CLUSTER_ACTION,
    acl::DESCRIBE_CONFIGS,
    acl::ALTER_CONFIGS,
    acl::IDEMPOTENT_WRITE,
]);
/// Every operation on a group is allowed.
pub const GROUP_AUTHORIZED_OPERATIONS: i32 = bits(&[acl::READ, acl::DELETE, acl::DESCRIBE]);
/// Most partitions one DescribeTopicPartitions response lists (Kafka's
/// `max.request.partition.size.limit` default); clients page through the rest.
pub const DESCRIBE_TOPIC_PARTITIONS_LIMIT: i32 = 2000;
/// "Not requested" value of authorized-operation fields.
pub const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

const fn bits(operations: &[i32]) -> i32 {
    let mut set = 0;
    let mut i = 0;
    while i < operations.len() {
        set |= 1 << operations[i];
        i += 1;
    }
    set
}

/// Metadata: brokers (this node) and the requested topics, auto-creating them when both
/// the request and the broker allow it.
pub(super) fn metadata(
    session: &Session,
    mut request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let broker = session.broker();
    let topic_ops = version >= 8 && request.include_topic_authorized_operations;
    // v0 has no null: an empty list means "all topics". v1+ uses null for "all".
    let requested = match request.topics.take() {
        Some(topics) if !(version == 0 && topics.is_empty()) => Some(topics),
        _ => None,
    };
    let topics = match requested {
        None => broker
            .topics()
            .into_iter()
            .filter(|topic| !topic.internal)
            .map(|topic| describe_topic(session, &topic, topic_ops))
            .collect(),
        Some(requested) => {
            let mut all_topics = None;
            requested
                .into_iter()
                .map(|wanted| match wanted.name {
                    Some(name) => {
                        match broker.topic_or_create(&name, request.allow_auto_topic_creation) {
                            Ok(topic) => describe_topic(session, &topic, topic_ops),
                            Err(error) => MetadataResponseTopic::default()
                                .with_name(Some(name))
                                .with_error_code(errors::error_code(&error)),
                        }
                    }
                    // v10+: a topic asked for by id only.
                    None => {
                        let topics = all_topics.get_or_insert_with(|| broker.topics());
                        match topics.iter().find(|t| t.id == wanted.topic_id) {
                            Some(topic) => describe_topic(session, topic, topic_ops),
                            None => MetadataResponseTopic::default()
                                .with_topic_id(wanted.topic_id)
                                .with_error_code(ResponseError::UnknownTopicId.code()),
                        }
                    }
                })
                .collect()
        }
    };

    let mut response = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(session.node_id()))
            .with_host(session.advertised_host())
            .with_port(session.config().advertised_port)])
        .with_cluster_id(Some(StrBytes::from_string(
            session.config().cluster_id.clone(),
        )))
        .with_controller_id(BrokerId(session.node_id()))
        .with_topics(topics);
    if (8..=10).contains(&version) && request.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_AUTHORIZED_OPERATIONS;
    }
    response
}

/// One topic with its partitions; `topic_ops` adds the authorized-operations set.
fn describe_topic(session: &Session, topic: &TopicInfo, topic_ops: bool) -> MetadataResponseTopic {
    let node = BrokerId(session.node_id());
    let partitions = (0..topic.partitions)
        .map(|partition| {
            let described = MetadataResponsePartition::default()
                .with_partition_index(partition as i32)
                .with_leader_id(node)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node]);
            match session.broker().partition_offsets(&topic.name, partition) {
                Ok(offsets) => described.with_leader_epoch(offsets.leader_epoch),
                Err(error) => described.with_error_code(errors::error_code(&error)),
            }
        })
        .collect();
    let mut described = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_is_internal(topic.internal)
        .with_partitions(partitions);
    if topic_ops {
        described.topic_authorized_operations = TOPIC_AUTHORIZED_OPERATIONS;
    }
    described
}

/// DescribeCluster: this node is the whole cluster and its controller.
pub(super) fn describe_cluster(
    session: &Session,
    request: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(session.config().cluster_id.clone()))
        .with_controller_id(BrokerId(session.node_id()))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(session.node_id()))
            .with_host(session.advertised_host())
            .with_port(session.config().advertised_port)]);
    if version >= 1 {
        // A single node is both broker and controller: either endpoint type is this node.
        response.endpoint_type = request.endpoint_type;
    }
    response.cluster_authorized_operations = if request.include_cluster_authorized_operations {
        CLUSTER_AUTHORIZED_OPERATIONS
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    response
}

/// DescribeTopicPartitions (KIP-966): topics in name order with their partitions, at most
/// `response_partition_limit` partitions per response, continued from a cursor.
pub(super) fn describe_topic_partitions(
    session: &Session,
    request: DescribeTopicPartitionsRequest,
    _version: i16,
) -> DescribeTopicPartitionsResponse {
    let broker = session.broker();
    let node = BrokerId(session.node_id());
    // (name, topic if it exists), sorted by name; no list means every topic.
    let mut wanted: Vec<(String, Option<TopicInfo>)> = if request.topics.is_empty() {
        broker
            .topics()
            .into_iter()
            .map(|t| (t.name.clone(), Some(t)))
            .collect()
    } else {
        request
            .topics
            .iter()
            .map(|t| (t.name.to_string(), broker.topic(&t.name)))
            .collect()
    };
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    wanted.dedup_by(|a, b| a.0 == b.0);

    let (start_topic, start_partition) = match &request.cursor {
        Some(cursor) => (
            cursor.topic_name.to_string(),
            cursor.partition_index.max(0) as u32,
        ),
        None => (String::new(), 0),
    };
    let mut budget = request
        .response_partition_limit
        .clamp(1, DESCRIBE_TOPIC_PARTITIONS_LIMIT) as u32;
    let mut topics = Vec::new();
    let mut next_cursor = None;
    for (name, topic) in wanted.into_iter().filter(|(name, _)| *name >= start_topic) {
        let topic_name = TopicName(StrBytes::from_string(name.clone()));
        let Some(topic) = topic else {
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_name(Some(topic_name))
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
            );
            continue;
        };
        let first = if name == start_topic {
            start_partition
        } else {
            0
        };
        if budget == 0 {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(topic_name)
                    .with_partition_index(first as i32),
            );
            break;
        }
        let end = topic.partitions.min(first.saturating_add(budget));
        let partitions: Vec<_> = (first..end)
            .map(|partition| {
                let described = DescribeTopicPartitionsResponsePartition::default()
                    .with_partition_index(partition as i32)
                    .with_leader_id(node)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new()));
                match broker.partition_offsets(&topic.name, partition) {
                    Ok(offsets) => described.with_leader_epoch(offsets.leader_epoch),
                    Err(error) => described.with_error_code(errors::error_code(&error)),
                }
            })
            .collect();
        budget -= end.saturating_sub(first);
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(topic_name.clone()))
                .with_topic_id(topic.id)
                .with_is_internal(topic.internal)
                .with_partitions(partitions)
                .with_topic_authorized_operations(TOPIC_AUTHORIZED_OPERATIONS),
        );
        if end < topic.partitions {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(topic_name)
                    .with_partition_index(end as i32),
            );
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}
