//! Dispatch of decoded requests to their handlers, and what every handler shares.

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_core::Broker;
use ferry_storage::Chunk;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use tracing::debug;

use super::codec::{
    encode_fetch_response, encode_response, encode_unsupported_api_versions, DecodedRequest,
    EncodeError, FetchAnswer,
};
use super::fetch_sessions::FetchSessionCache;
use super::{admin, configs, data, groups, metadata, versions, KafkaConfig, Shared};

/// One client connection's view of the broker.
pub(crate) struct Session {
    shared: Arc<Shared>,
    /// The client id of the latest request (for logs and group member descriptions).
    pub client_id: String,
    /// The peer address as Kafka reports it (`/ip`).
    pub client_host: String,
}

impl Session {
    /// A session for a connection from `peer`.
    pub fn new(shared: Arc<Shared>, peer: SocketAddr) -> Session {
        Session {
            shared,
            client_id: String::new(),
            client_host: format!("/{}", peer.ip()),
        }
    }

    /// The broker core.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.shared.broker
    }

    /// The listener settings.
    pub fn config(&self) -> &KafkaConfig {
        &self.shared.config
    }

    /// This node's id.
    pub fn node_id(&self) -> i32 {
        self.shared.broker.node_id()
    }

    /// The advertised host as a protocol string.
    pub fn advertised_host(&self) -> StrBytes {
        StrBytes::from_string(self.shared.config.advertised_host.clone())
    }

    /// The broker's fetch sessions.
    pub fn fetch_sessions(&self) -> &FetchSessionCache {
        &self.shared.fetch_sessions
    }

    /// A receiver that turns `true` when the listener shuts down.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.clone()
    }
}

/// What the connection does after a request.
pub(crate) enum Reply {
    /// Write this response frame (one or more chunks, written in order).
    Send(Vec<Chunk>),
    /// Nothing to send (produce with acks=0).
    Silent,
    /// Close the connection, for this reason (acks=0 produce that failed).
    Close(String),
}

/// Handles one decoded request.
pub(crate) async fn handle(
    session: &mut Session,
    request: DecodedRequest,
) -> Result<Reply, EncodeError> {
    let (header, body) = match request {
        DecodedRequest::UnsupportedApiVersions { header } => {
            debug!(
                version = header.request_api_version,
                "ApiVersions at an unknown version: answering v0 with UNSUPPORTED_VERSION"
            );
            let body = versions::api_versions_response(
                kafka_protocol::error::ResponseError::UnsupportedVersion.code(),
            );
            return encode_unsupported_api_versions(header.correlation_id, &body)
                .map(|frame| Reply::Send(vec![Chunk::Memory(frame)]));
        }
        DecodedRequest::Request { header, body } => (header, *body),
    };
    if let Some(client_id) = &header.client_id {
        if session.client_id.as_str() != client_id.as_str() {
            session.client_id = client_id.to_string();
        }
    }
    let version = header.request_api_version;
    let response = match dispatch(session, &header, body).await? {
        Handled::Respond(response) => response,
        // Fetched records go out in their storage buffers or straight from their segment
        // files, not copied (see codec).
        Handled::Fetch(answer) => {
            return encode_fetch_response(header.correlation_id, version, answer).map(Reply::Send)
        }
        Handled::Silent => return Ok(Reply::Silent),
        Handled::Close(reason) => return Ok(Reply::Close(reason)),
    };
    // decode_request only accepts known keys, so this conversion cannot fail.
    let api_key = ApiKey::try_from(header.request_api_key).map_err(|()| EncodeError {
        api_key: ApiKey::ApiVersions,
        version,
        message: format!("unknown API key {}", header.request_api_key),
    })?;
    encode_response(header.correlation_id, api_key, version, &response)
        .map(|frame| Reply::Send(vec![Chunk::Memory(frame)]))
}

/// A handler's outcome, before encoding.
enum Handled {
    Respond(Box<ResponseKind>),
    Fetch(FetchAnswer),
    Silent,
    Close(String),
}

async fn dispatch(
    session: &mut Session,
    header: &RequestHeader,
    body: RequestKind,
) -> Result<Handled, EncodeError> {
    let v = header.request_api_version;
    let response = match body {
        RequestKind::ApiVersions(request) => {
            debug!(
                client = %versions::client_software(
                    &request.client_software_name,
                    &request.client_software_version
                ),
                "ApiVersions"
            );
            ResponseKind::ApiVersions(versions::api_versions_response(0))
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::metadata(session, r, v)),
        RequestKind::DescribeTopicPartitions(r) => ResponseKind::DescribeTopicPartitions(
            metadata::describe_topic_partitions(session, r, v),
        ),
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(metadata::describe_cluster(session, r, v))
        }
        RequestKind::Produce(r) => {
            return Ok(match data::produce(session, r, v).await {
                data::ProduceOutcome::Respond(response) => {
                    Handled::Respond(Box::new(ResponseKind::Produce(response)))
                }
                data::ProduceOutcome::Silent => Handled::Silent,
                data::ProduceOutcome::Close(reason) => Handled::Close(reason),
            })
        }
        RequestKind::Fetch(r) => return Ok(Handled::Fetch(data::fetch(session, r, v).await)),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(data::list_offsets(session, r, v)),
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(data::offset_for_leader_epoch(session, r, v))
        }
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(data::delete_records(session, r, v))
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(data::init_producer_id(session, r, v))
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(session, r, v))
        }
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(groups::join(session, r, v).await),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync(session, r, v).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(session, r, v)),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(groups::leave(session, r, v)),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(session, r, v).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(session, r, v))
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(groups::list_groups(session, r, v)),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(session, r, v))
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(groups::delete_groups(session, r, v).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(session, r, v))
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(session, r, v).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(session, r, v))
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(configs::describe_configs(session, r, v))
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(configs::alter_configs(session, r, v))
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(configs::incremental_alter_configs(session, r, v))
        }
        _ => {
            // decode_request admits only the APIs listed in `versions`, each handled above;
            // reaching this is a bug, reported like an encoding failure (connection closed).
            return Err(EncodeError {
                api_key: ApiKey::try_from(header.request_api_key).unwrap_or(ApiKey::ApiVersions),
                version: v,
                message: format!("no handler for API key {}", header.request_api_key),
            });
        }
    };
    Ok(Handled::Respond(Box::new(response)))
}
