//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions.

use std::collections::{BTreeMap, HashMap};

use ferry_core::CoreError;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::configs::config_source;
use super::handlers::Session;
use crate::errors;

/// "Use the broker default" for partition count and replication factor.
const USE_DEFAULT: i32 = -1;
/// The only replication factor a single node can honour.
const SINGLE_NODE_REPLICATION_FACTOR: i16 = 1;

/// An error answer: Kafka code plus message.
type Failure = (i16, Option<StrBytes>);

fn failure(error: ResponseError, message: impl Into<String>) -> Failure {
    (error.code(), Some(StrBytes::from_string(message.into())))
}

fn core_failure(error: &CoreError) -> Failure {
    (errors::error_code(error), errors::error_message(error))
}

/// Names that appear more than once in one request: Kafka rejects each such entry.
fn duplicates<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in names {
        *counts.entry(name).or_default() += 1;
    }
    counts.retain(|_, count| *count > 1);
    counts
}

/// Checks a manual replica assignment: on one node, every replica list is exactly this node.
fn check_assignment<'a>(
    node: i32,
    mut replicas: impl Iterator<Item = &'a [BrokerId]>,
) -> Result<(), Failure> {
    if replicas.all(|r| r.len() == 1 && r[0].0 == node) {
        Ok(())
    } else {
        Err(failure(
            ResponseError::InvalidReplicaAssignment,
            format!("replicas must be exactly [{node}] on this single-node broker"),
        ))
    }
}

/// CreateTopics: partition count -1 takes the broker default; replication factor -1 or 1.
pub(super) fn create_topics(
    session: &Session,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let broker = session.broker();
    let node = session.node_id();
    let repeated = duplicates(request.topics.iter().map(|t| t.name.as_str()));
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        let created = if repeated.contains_key(topic.name.as_str()) {
            Err(failure(
                ResponseError::InvalidRequest,
                format!("topic {} appears more than once", topic.name.as_str()),
            ))
        } else {
            create_one(session, topic, request.validate_only, node)
        };
        let result = match created {
            Ok(info) => {
                let mut result = result.with_error_message(None).with_topic_id(info.id);
                if version >= 5 {
                    let defaults = &broker.config().topic_defaults;
                    let configs = info
                        .config
                        .entries(defaults)
                        .into_iter()
                        .map(|entry| {
                            CreatableTopicConfigs::default()
                                .with_name(StrBytes::from_string(entry.name))
                                .with_value(entry.value.map(StrBytes::from_string))
                                .with_read_only(entry.read_only)
                                .with_config_source(config_source(entry.source))
                                .with_is_sensitive(entry.sensitive)
                        })
                        .collect();
                    result = result
                        .with_num_partitions(info.partitions as i32)
                        .with_replication_factor(SINGLE_NODE_REPLICATION_FACTOR)
                        .with_configs(Some(configs));
                }
                result
            }
            Err((code, message)) => {
                let result = result.with_error_code(code).with_error_message(message);
                if version >= 5 {
                    result.with_configs(None)
                } else {
                    result
                }
            }
        };
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn create_one(
    session: &Session,
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
    node: i32,
) -> Result<ferry_core::TopicInfo, Failure> {
    let replication = topic.replication_factor;
    if replication != USE_DEFAULT as i16 && replication != SINGLE_NODE_REPLICATION_FACTOR {
        return Err(failure(
            ResponseError::InvalidReplicationFactor,
            format!("replication factor {replication} is not possible on a single-node broker (use 1 or -1)"),
        ));
    }
    let partitions = if !topic.assignments.is_empty() {
        if topic.num_partitions != USE_DEFAULT || replication != USE_DEFAULT as i16 {
            return Err(failure(
                ResponseError::InvalidRequest,
                "both a replica assignment and a partition count or replication factor were given",
            ));
        }
        check_assignment(
            node,
            topic.assignments.iter().map(|a| a.broker_ids.as_slice()),
        )?;
        Some(topic.assignments.len() as u32)
    } else if topic.num_partitions == USE_DEFAULT {
        None
    } else {
        match u32::try_from(topic.num_partitions) {
            Ok(count) => Some(count),
            Err(_) => {
                return Err(failure(
                    ResponseError::InvalidPartitions,
                    format!(
                        "number of partitions must be at least 1, got {}",
                        topic.num_partitions
                    ),
                ))
            }
        }
    };
    let mut configs = BTreeMap::new();
    for config in &topic.configs {
        let Some(value) = &config.value else {
            return Err(failure(
                ResponseError::InvalidConfig,
                format!("null value for config {}", config.name.as_str()),
            ));
        };
        configs.insert(config.name.to_string(), value.to_string());
    }
    session
        .broker()
        .create_topic(&topic.name, partitions, configs, validate_only)
        .map_err(|e| core_failure(&e))
}

/// DeleteTopics: by name (v0–v5) or by name or id (v6+). Committed offsets of a deleted
/// topic are dropped from every group.
pub(super) async fn delete_topics(
    session: &Session,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let broker = session.broker();
    // (name if given, id) of every topic to delete.
    let wanted: Vec<(Option<TopicName>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    };
    let mut all_topics = None;
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let name = match name {
            Some(name) => Ok(name.to_string()),
            None => all_topics
                .get_or_insert_with(|| broker.topics())
                .iter()
                .find(|t| t.id == id)
                .map(|t| t.name.clone())
                .ok_or((ResponseError::UnknownTopicId.code(), None)),
        };
        let result = match &name {
            Ok(name) => {
                let id = broker.topic(name).map(|t| t.id);
                broker
                    .delete_topic(name)
                    .await
                    .map(|()| id)
                    .map_err(|e| core_failure(&e))
            }
            Err(failure) => Err(failure.clone()),
        };
        let mut answer = DeletableTopicResult::default()
            .with_name(name.ok().map(|n| TopicName(StrBytes::from_string(n))));
        match result {
            Ok(deleted_id) => {
                if version >= 6 {
                    answer.topic_id = deleted_id.unwrap_or(id);
                }
            }
            Err((code, message)) => {
                answer.error_code = code;
                if version >= 6 {
                    answer.topic_id = id;
                }
                if version >= 5 {
                    answer.error_message = message;
                }
            }
        }
        responses.push(answer);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// CreatePartitions: grows topics to the given total partition count.
pub(super) fn create_partitions(
    session: &Session,
    request: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let node = session.node_id();
    let repeated = duplicates(request.topics.iter().map(|t| t.name.as_str()));
    let results = request
        .topics
        .iter()
        .map(|topic| {
            let outcome = if repeated.contains_key(topic.name.as_str()) {
                Err(failure(
                    ResponseError::InvalidRequest,
                    format!("topic {} appears more than once", topic.name.as_str()),
                ))
            } else {
                grow(session, topic, request.validate_only, node)
            };
            let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            match outcome {
                Ok(()) => result.with_error_message(None),
                Err((code, message)) => result.with_error_code(code).with_error_message(message),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

fn grow(
    session: &Session,
    topic: &kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic,
    validate_only: bool,
    node: i32,
) -> Result<(), Failure> {
    if let Some(assignments) = &topic.assignments {
        check_assignment(node, assignments.iter().map(|a| a.broker_ids.as_slice()))?;
    }
    let total = u32::try_from(topic.count).map_err(|_| {
        failure(
            ResponseError::InvalidPartitions,
            format!("partition count must be positive, got {}", topic.count),
        )
    })?;
    session
        .broker()
        .create_partitions(&topic.name, total, validate_only)
        .map_err(|e| core_failure(&e))
}
