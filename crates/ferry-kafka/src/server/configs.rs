//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.
//!
//! Topic configs are the core's (validated there, one rule set for every protocol). The
//! broker resource describes Ferry's effective broker settings under Kafka's names; they
//! come from Ferry's config file and are read-only over the protocol.

use std::collections::HashSet;

use ferry_core::{ConfigEntry, ConfigOp, ConfigSource, CoreError};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::handlers::Session;
use crate::errors;

/// Kafka `ConfigResource.Type` of topics.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka `ConfigResource.Type` of brokers.
const RESOURCE_BROKER: i8 = 4;

/// Kafka `ConfigSource` codes.
mod source {
    pub const DYNAMIC_TOPIC_CONFIG: i8 = 1;
    pub const STATIC_BROKER_CONFIG: i8 = 4;
    pub const DEFAULT_CONFIG: i8 = 5;
}

/// Kafka `ConfigType` codes (DescribeConfigs v3+).
mod config_type {
    pub const BOOLEAN: i8 = 1;
    pub const STRING: i8 = 2;
    pub const LONG: i8 = 5;
}

/// IncrementalAlterConfigs operation codes.
mod op {
    pub const SET: i8 = 0;
    pub const DELETE: i8 = 1;
    pub const APPEND: i8 = 2;
    pub const SUBTRACT: i8 = 3;
}

/// The Kafka `ConfigSource` code of a core config source.
pub(super) fn config_source(source: ConfigSource) -> i8 {
    match source {
        ConfigSource::Topic => source::DYNAMIC_TOPIC_CONFIG,
        ConfigSource::BrokerDefault => source::STATIC_BROKER_CONFIG,
        ConfigSource::Default => source::DEFAULT_CONFIG,
    }
}

/// Best-effort Kafka config type of a value (the core does not carry types).
fn value_type(value: Option<&str>) -> i8 {
    match value {
        Some("true" | "false") => config_type::BOOLEAN,
        Some(v) if v.parse::<i64>().is_ok() => config_type::LONG,
        _ => config_type::STRING,
    }
}

/// Kafka's broker-level name of a topic config (`retention.ms` → `log.retention.ms`).
fn broker_name_of_topic_config(name: &str) -> String {
    let mapped = match name {
        "max.message.bytes" => "message.max.bytes",
        "min.insync.replicas" | "compression.type" | "unclean.leader.election.enable" => name,
        "delete.retention.ms" => "log.cleaner.delete.retention.ms",
        "file.delete.delay.ms" => "log.segment.delete.delay.ms",
        "flush.messages" => "log.flush.interval.messages",
        "flush.ms" => "log.flush.interval.ms",
        "max.compaction.lag.ms" => "log.cleaner.max.compaction.lag.ms",
        "min.compaction.lag.ms" => "log.cleaner.min.compaction.lag.ms",
        "min.cleanable.dirty.ratio" => "log.cleaner.min.cleanable.ratio",
        "segment.index.bytes" => "log.index.size.max.bytes",
        "segment.jitter.ms" => "log.roll.jitter.ms",
        "segment.ms" => "log.roll.ms",
        other => return format!("log.{other}"),
    };
    mapped.to_string()
}

/// Ferry's broker settings as Kafka broker configs.
fn broker_entries(session: &Session) -> Vec<ConfigEntry> {
    let broker = session.broker().config();
    let kafka = session.config();
    let entry = |name: &str, value: String| ConfigEntry {
        name: name.to_string(),
        value: Some(value),
        source: ConfigSource::BrokerDefault,
        read_only: true,
        sensitive: false,
        documentation: "",
    };
    let mut entries = vec![
        entry("broker.id", broker.node_id.to_string()),
        entry("node.id", broker.node_id.to_string()),
        entry(
            "advertised.listeners",
            format!(
                "PLAINTEXT://{}:{}",
                kafka.advertised_host, kafka.advertised_port
            ),
        ),
        entry("log.dirs", broker.data_dir.display().to_string()),
        entry("num.partitions", broker.default_partitions.to_string()),
        entry(
            "auto.create.topics.enable",
            broker.auto_create_topics.to_string(),
        ),
        entry("default.replication.factor", "1".to_string()),
        entry("offsets.topic.replication.factor", "1".to_string()),
        entry("transaction.state.log.replication.factor", "1".to_string()),
        entry(
            "socket.request.max.bytes",
            kafka.max_request_bytes.to_string(),
        ),
        entry("fetch.max.bytes", kafka.fetch_max_bytes.to_string()),
        entry(
            "log.retention.check.interval.ms",
            broker.retention_check_interval_ms.to_string(),
        ),
        entry(
            "group.min.session.timeout.ms",
            broker.groups.min_session_timeout_ms.to_string(),
        ),
        entry(
            "group.max.session.timeout.ms",
            broker.groups.max_session_timeout_ms.to_string(),
        ),
        entry(
            "group.initial.rebalance.delay.ms",
            broker.groups.initial_rebalance_delay_ms.to_string(),
        ),
        entry("group.max.size", broker.groups.max_group_size.to_string()),
        entry(
            "offsets.retention.minutes",
            (broker.groups.offsets_retention_ms / 60_000).to_string(),
        ),
    ];
    let defaults = &broker.topic_defaults;
    entries.extend(
        defaults
            .entries(defaults)
            .into_iter()
            .map(|topic_entry| ConfigEntry {
                name: broker_name_of_topic_config(&topic_entry.name),
                read_only: true,
                ..topic_entry
            }),
    );
    entries
}

/// DescribeConfigs for topics and for this broker.
pub(super) fn describe_configs(
    session: &Session,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let node = session.node_id().to_string();
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entries = match resource.resource_type {
                RESOURCE_TOPIC => session
                    .broker()
                    .describe_topic_config(&resource.resource_name)
                    .map_err(|e| (errors::error_code(&e), errors::error_message(&e))),
                RESOURCE_BROKER
                    if resource.resource_name.is_empty() || *resource.resource_name == *node =>
                {
                    Ok(broker_entries(session))
                }
                RESOURCE_BROKER => Err((
                    ResponseError::InvalidRequest.code(),
                    Some(StrBytes::from_string(format!(
                        "this broker is node {node}, not {}",
                        resource.resource_name.as_str()
                    ))),
                )),
                other => Err((
                    ResponseError::InvalidRequest.code(),
                    Some(StrBytes::from_string(format!(
                        "unsupported config resource type {other}"
                    ))),
                )),
            };
            match entries {
                Ok(entries) => {
                    let keys: Option<HashSet<&str>> = resource
                        .configuration_keys
                        .as_ref()
                        .map(|keys| keys.iter().map(|k| k.as_str()).collect());
                    let configs = entries
                        .into_iter()
                        .filter(|e| {
                            keys.as_ref()
                                .is_none_or(|keys| keys.contains(e.name.as_str()))
                        })
                        .map(|e| {
                            describe_entry(
                                e,
                                version,
                                request.include_synonyms,
                                request.include_documentation,
                            )
                        })
                        .collect();
                    result.with_error_message(None).with_configs(configs)
                }
                Err((code, message)) => result.with_error_code(code).with_error_message(message),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe_entry(
    entry: ConfigEntry,
    version: i16,
    include_synonyms: bool,
    include_documentation: bool,
) -> DescribeConfigsResourceResult {
    let source = config_source(entry.source);
    let value = entry.value.map(StrBytes::from_string);
    let mut described = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(entry.name.clone()))
        .with_read_only(entry.read_only)
        .with_config_source(source)
        .with_is_sensitive(entry.sensitive)
        .with_documentation(None);
    if version >= 3 {
        described.config_type = value_type(value.as_deref());
        if include_documentation && !entry.documentation.is_empty() {
            described.documentation = Some(StrBytes::from_static_str(entry.documentation));
        }
    }
    if include_synonyms {
        described.synonyms = vec![DescribeConfigsSynonym::default()
            .with_name(StrBytes::from_string(entry.name))
            .with_value(value.clone())
            .with_source(source)];
    }
    // Sensitive values are never sent back.
    described.value = if entry.sensitive { None } else { value };
    described
}

/// Whether a resource may be altered here; brokers are configured by file only.
fn alterable(resource_type: i8) -> AlterOutcome {
    match resource_type {
        RESOURCE_TOPIC => Ok(()),
        RESOURCE_BROKER => Err((
            ResponseError::InvalidRequest.code(),
            Some(StrBytes::from_static_str(
                "broker configs are static in Ferry: set them in its config file",
            )),
        )),
        other => Err((
            ResponseError::InvalidRequest.code(),
            Some(StrBytes::from_string(format!(
                "unsupported config resource type {other}"
            ))),
        )),
    }
}

/// Resources named more than once in one request (Kafka rejects them all).
fn repeated_resources<'a>(
    resources: impl Iterator<Item = (i8, &'a str)>,
) -> HashSet<(i8, &'a str)> {
    let mut seen = HashSet::new();
    let mut repeated = HashSet::new();
    for resource in resources {
        if !seen.insert(resource) {
            repeated.insert(resource);
        }
    }
    repeated
}

fn duplicate_error() -> (i16, Option<StrBytes>) {
    (
        ResponseError::InvalidRequest.code(),
        Some(StrBytes::from_static_str(
            "resource appears more than once in the request",
        )),
    )
}

/// How an alter request applies its changes.
#[derive(Clone, Copy, Debug)]
struct AlterMode {
    /// Changes apply to single keys (IncrementalAlterConfigs), not the whole set.
    incremental: bool,
    /// Check only, change nothing.
    validate_only: bool,
}

/// Alters each resource of a request with the changes `ops` reads from it: a resource
/// named more than once is refused (every time, as Kafka does), so is one that is not
/// a topic.
fn alter_each<R>(
    session: &Session,
    resources: &[R],
    id: impl Fn(&R) -> (i8, &str),
    mode: AlterMode,
    ops: impl Fn(&R) -> Result<Vec<ConfigOp>, (i16, Option<StrBytes>)>,
) -> Vec<AlterOutcome> {
    let repeated = repeated_resources(resources.iter().map(&id));
    resources
        .iter()
        .map(|resource| {
            let (resource_type, name) = id(resource);
            if repeated.contains(&(resource_type, name)) {
                return Err(duplicate_error());
            }
            alterable(resource_type)?;
            alter_outcome(session.broker().alter_topic_config(
                name,
                ops(resource)?,
                mode.incremental,
                mode.validate_only,
            ))
        })
        .collect()
}

/// Success, or a Kafka error code with its message.
type AlterOutcome = Result<(), (i16, Option<StrBytes>)>;

fn alter_outcome(result: Result<(), CoreError>) -> AlterOutcome {
    result.map_err(|e| (errors::error_code(&e), errors::error_message(&e)))
}

/// AlterConfigs: replaces a topic's overrides with the given set.
pub(super) fn alter_configs(
    session: &Session,
    request: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let outcomes = alter_each(
        session,
        &request.resources,
        |r| (r.resource_type, r.resource_name.as_str()),
        AlterMode {
            incremental: false,
            validate_only: request.validate_only,
        },
        |resource| {
            Ok(resource
                .configs
                .iter()
                .map(|c| match &c.value {
                    Some(value) => ConfigOp::Set(c.name.to_string(), value.to_string()),
                    None => ConfigOp::Delete(c.name.to_string()),
                })
                .collect())
        },
    );
    let responses = request
        .resources
        .iter()
        .zip(outcomes)
        .map(|(resource, outcome)| {
            let response = alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match outcome {
                Ok(()) => response.with_error_message(None),
                Err((code, message)) => response.with_error_code(code).with_error_message(message),
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: set, delete, append to or subtract from single keys.
pub(super) fn incremental_alter_configs(
    session: &Session,
    request: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let outcomes = alter_each(
        session,
        &request.resources,
        |r| (r.resource_type, r.resource_name.as_str()),
        AlterMode {
            incremental: true,
            validate_only: request.validate_only,
        },
        |resource| {
            resource
                .configs
                .iter()
                .map(|c| {
                    let name = c.name.to_string();
                    let value = c.value.as_ref().map(|v| v.to_string());
                    match (c.config_operation, value) {
                        (op::DELETE, _) => Ok(ConfigOp::Delete(name)),
                        (op::SET, Some(value)) => Ok(ConfigOp::Set(name, value)),
                        (op::APPEND, Some(value)) => Ok(ConfigOp::Append(name, value)),
                        (op::SUBTRACT, Some(value)) => Ok(ConfigOp::Subtract(name, value)),
                        (op::SET | op::APPEND | op::SUBTRACT, None) => Err((
                            ResponseError::InvalidConfig.code(),
                            Some(StrBytes::from_string(format!(
                                "null value for config {name}"
                            ))),
                        )),
                        (other, _) => Err((
                            ResponseError::InvalidRequest.code(),
                            Some(StrBytes::from_string(format!(
                                "unknown config operation {other}"
                            ))),
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        },
    );
    let responses = request
        .resources
        .iter()
        .zip(outcomes)
        .map(|(resource, outcome)| {
            let response =
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name.clone());
            match outcome {
                Ok(()) => response.with_error_message(None),
                Err((code, message)) => response.with_error_code(code).with_error_message(message),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_configs_get_kafka_broker_names() {
        assert_eq!(
            broker_name_of_topic_config("retention.ms"),
            "log.retention.ms"
        );
        assert_eq!(
            broker_name_of_topic_config("max.message.bytes"),
            "message.max.bytes"
        );
        assert_eq!(broker_name_of_topic_config("segment.ms"), "log.roll.ms");
        assert_eq!(
            broker_name_of_topic_config("min.insync.replicas"),
            "min.insync.replicas"
        );
    }

    #[test]
    fn value_types_are_inferred() {
        assert_eq!(value_type(Some("true")), config_type::BOOLEAN);
        assert_eq!(value_type(Some("604800000")), config_type::LONG);
        assert_eq!(value_type(Some("delete")), config_type::STRING);
        assert_eq!(value_type(None), config_type::STRING);
    }
}
