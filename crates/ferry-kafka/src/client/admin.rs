//! Topic administration: create, delete, grow, describe and alter configs.

use std::time::Duration;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::connection::millis;
use super::error::{check, Result};
use super::{topic_name, Client, Target};

/// Newest CreateTopics version used.
const CREATE_TOPICS_MAX_VERSION: i16 = 7;
/// Newest DeleteTopics version used (v6 can address topics by id; names are enough).
const DELETE_TOPICS_MAX_VERSION: i16 = 6;
/// Newest CreatePartitions version used.
const CREATE_PARTITIONS_MAX_VERSION: i16 = 3;
/// Newest DescribeConfigs version used.
const DESCRIBE_CONFIGS_MAX_VERSION: i16 = 4;
/// Newest IncrementalAlterConfigs version used.
const INCREMENTAL_ALTER_CONFIGS_MAX_VERSION: i16 = 1;
/// Config resource type of a topic.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// Replication factor meaning "the broker's default".
const DEFAULT_REPLICATION_FACTOR: i16 = -1;

/// One change in an incremental config alteration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigAlteration {
    /// Set a key.
    Set(String, String),
    /// Remove the topic's override (back to the default).
    Delete(String),
    /// Append to a list-valued key.
    Append(String, String),
    /// Remove from a list-valued key.
    Subtract(String, String),
}

impl ConfigAlteration {
    fn wire(&self) -> AlterableConfig {
        let (name, op, value) = match self {
            ConfigAlteration::Set(k, v) => (k, 0, Some(v)),
            ConfigAlteration::Delete(k) => (k, 1, None),
            ConfigAlteration::Append(k, v) => (k, 2, Some(v)),
            ConfigAlteration::Subtract(k, v) => (k, 3, Some(v)),
        };
        AlterableConfig::default()
            .with_name(StrBytes::from_string(name.clone()))
            .with_config_operation(op)
            .with_value(value.map(|v| StrBytes::from_string(v.clone())))
    }
}

/// One described config key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntryInfo {
    /// Key, e.g. `retention.ms`.
    pub name: String,
    /// Effective value (`None` for sensitive or unset keys).
    pub value: Option<String>,
    /// Where the value comes from, as Kafka names it (`DYNAMIC_TOPIC_CONFIG`, `DEFAULT_CONFIG`…).
    pub source: &'static str,
    /// Whether the key cannot be changed.
    pub read_only: bool,
    /// Whether the value is hidden.
    pub sensitive: bool,
}

/// Kafka's name of a DescribeConfigs `config_source`.
fn config_source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

impl Client {
    fn controller(&self) -> Target {
        if self.controller_id >= 0 {
            Target::Node(self.controller_id)
        } else {
            Target::Any
        }
    }

    fn timeout_ms(&self) -> i32 {
        i32::try_from(millis(self.config.request_timeout)).unwrap_or(i32::MAX)
    }

    /// Creates a topic; `partitions = None` lets the broker choose.
    pub async fn create_topic(
        &mut self,
        name: &str,
        partitions: Option<i32>,
        configs: &[(String, String)],
        validate_only: bool,
    ) -> Result<()> {
        let timeout_ms = self.timeout_ms();
        let (_, response) = self
            .request::<CreateTopicsRequest, _>(
                self.controller(),
                CREATE_TOPICS_MAX_VERSION,
                Duration::ZERO,
                |_| {
                    Ok(CreateTopicsRequest::default()
                        .with_timeout_ms(timeout_ms)
                        .with_validate_only(validate_only)
                        .with_topics(vec![CreatableTopic::default()
                            .with_name(topic_name(name))
                            .with_num_partitions(partitions.unwrap_or(-1))
                            .with_replication_factor(DEFAULT_REPLICATION_FACTOR)
                            .with_configs(
                                configs
                                    .iter()
                                    .map(|(k, v)| {
                                        CreatableTopicConfig::default()
                                            .with_name(StrBytes::from_string(k.clone()))
                                            .with_value(Some(StrBytes::from_string(v.clone())))
                                    })
                                    .collect(),
                            )]))
                },
            )
            .await?;
        for t in &response.topics {
            check(t.error_code, t.error_message.as_deref(), || {
                format!("create topic {name}")
            })?;
        }
        self.topics.remove(name);
        Ok(())
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&mut self, name: &str) -> Result<()> {
        let timeout_ms = self.timeout_ms();
        let (_, response) = self
            .request::<DeleteTopicsRequest, _>(
                self.controller(),
                DELETE_TOPICS_MAX_VERSION,
                Duration::ZERO,
                |version| {
                    let request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
                    Ok(if version >= 6 {
                        request.with_topics(vec![
                            DeleteTopicState::default().with_name(Some(topic_name(name)))
                        ])
                    } else {
                        request.with_topic_names(vec![topic_name(name)])
                    })
                },
            )
            .await?;
        for t in &response.responses {
            check(t.error_code, t.error_message.as_deref(), || {
                format!("delete topic {name}")
            })?;
        }
        self.topics.remove(name);
        Ok(())
    }

    /// Grows a topic to `total` partitions.
    pub async fn create_partitions(
        &mut self,
        name: &str,
        total: i32,
        validate_only: bool,
    ) -> Result<()> {
        let timeout_ms = self.timeout_ms();
        let (_, response) = self
            .request::<CreatePartitionsRequest, _>(
                self.controller(),
                CREATE_PARTITIONS_MAX_VERSION,
                Duration::ZERO,
                |_| {
                    Ok(CreatePartitionsRequest::default()
                        .with_timeout_ms(timeout_ms)
                        .with_validate_only(validate_only)
                        .with_topics(vec![CreatePartitionsTopic::default()
                            .with_name(topic_name(name))
                            .with_count(total)
                            .with_assignments(None)]))
                },
            )
            .await?;
        for r in &response.results {
            check(r.error_code, r.error_message.as_deref(), || {
                format!("add partitions to {name}")
            })?;
        }
        self.topics.remove(name);
        Ok(())
    }

    /// The effective configuration of a topic, sorted by key.
    pub async fn describe_topic_configs(&mut self, name: &str) -> Result<Vec<ConfigEntryInfo>> {
        let (_, response) = self
            .request::<DescribeConfigsRequest, _>(
                self.controller(),
                DESCRIBE_CONFIGS_MAX_VERSION,
                Duration::ZERO,
                |_| {
                    Ok(DescribeConfigsRequest::default().with_resources(vec![
                        DescribeConfigsResource::default()
                            .with_resource_type(RESOURCE_TYPE_TOPIC)
                            .with_resource_name(StrBytes::from_string(name.to_owned()))
                            .with_configuration_keys(None),
                    ]))
                },
            )
            .await?;
        let mut entries = Vec::new();
        for r in response.results {
            check(r.error_code, r.error_message.as_deref(), || {
                format!("describe configs of {name}")
            })?;
            entries.extend(r.configs.into_iter().map(|c| ConfigEntryInfo {
                name: c.name.to_string(),
                value: c.value.map(|v| v.to_string()),
                source: config_source_name(c.config_source),
                read_only: c.read_only,
                sensitive: c.is_sensitive,
            }));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Applies config changes to a topic (IncrementalAlterConfigs).
    pub async fn alter_topic_configs(
        &mut self,
        name: &str,
        changes: &[ConfigAlteration],
        validate_only: bool,
    ) -> Result<()> {
        let (_, response) = self
            .request::<IncrementalAlterConfigsRequest, _>(
                self.controller(),
                INCREMENTAL_ALTER_CONFIGS_MAX_VERSION,
                Duration::ZERO,
                |_| {
                    Ok(IncrementalAlterConfigsRequest::default()
                        .with_validate_only(validate_only)
                        .with_resources(vec![AlterConfigsResource::default()
                            .with_resource_type(RESOURCE_TYPE_TOPIC)
                            .with_resource_name(StrBytes::from_string(name.to_owned()))
                            .with_configs(changes.iter().map(ConfigAlteration::wire).collect())]))
                },
            )
            .await?;
        for r in &response.responses {
            check(r.error_code, r.error_message.as_deref(), || {
                format!("alter configs of {name}")
            })?;
        }
        Ok(())
    }
}
