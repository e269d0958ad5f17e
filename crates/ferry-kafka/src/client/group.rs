//! Consumer groups: finding the coordinator, membership (join, sync, heartbeat, leave)
//! with range assignment done by the leader, committed offsets, and group listings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeGroupsRequest,
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use kafka_protocol::ResponseError;

use super::error::{check, ClientError, KafkaError, Result};
use super::{join_host_port, topic_name, Client, Target, RETRY_BACKOFF};

/// Newest FindCoordinator version used.
const FIND_COORDINATOR_MAX_VERSION: i16 = 6;
/// Newest JoinGroup version used.
const JOIN_GROUP_MAX_VERSION: i16 = 9;
/// Newest SyncGroup version used.
const SYNC_GROUP_MAX_VERSION: i16 = 5;
/// Newest Heartbeat version used.
const HEARTBEAT_MAX_VERSION: i16 = 4;
/// Newest LeaveGroup version used.
const LEAVE_GROUP_MAX_VERSION: i16 = 5;
/// Newest OffsetCommit version used (v10 addresses topics by id).
const OFFSET_COMMIT_MAX_VERSION: i16 = 9;
/// Newest OffsetFetch version used (v8 batches groups in another shape).
const OFFSET_FETCH_MAX_VERSION: i16 = 7;
/// Newest ListGroups version used.
const LIST_GROUPS_MAX_VERSION: i16 = 5;
/// Newest DescribeGroups version used.
const DESCRIBE_GROUPS_MAX_VERSION: i16 = 5;
/// FindCoordinator key type of a consumer group.
const KEY_TYPE_GROUP: i8 = 0;
/// Protocol type of Kafka consumer groups.
pub(crate) const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// The one assignment strategy this client offers.
const RANGE_PROTOCOL: &str = "range";
/// Version of the subscription and assignment we write: v0 is read by every client.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;
/// How often a coordinator lookup is retried while the coordinator loads.
const COORDINATOR_RETRIES: u32 = 10;
/// Join/sync rounds before giving up (each ends in a rebalance or an error).
const MAX_JOIN_ATTEMPTS: u32 = 20;

/// A group in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    /// Group id.
    pub group_id: String,
    /// Protocol type (`consumer` for Kafka consumers).
    pub protocol_type: String,
    /// State (Empty, Stable…), empty if the broker does not report it.
    pub state: String,
}

/// A described member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// The client's `client.id`.
    pub client_id: String,
    /// The client's host as the broker saw it.
    pub client_host: String,
    /// Assigned partitions per topic (decoded for `consumer` groups).
    pub assignment: Vec<(String, Vec<i32>)>,
}

/// A described group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescriptionInfo {
    /// Group id.
    pub group_id: String,
    /// State (Empty, PreparingRebalance, CompletingRebalance, Stable, Dead).
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen assignment protocol.
    pub protocol: String,
    /// Members.
    pub members: Vec<MemberInfo>,
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffsetInfo {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to consume; -1 when nothing is committed.
    pub offset: i64,
    /// Metadata stored with the commit.
    pub metadata: Option<String>,
}

/// What a heartbeat says about the membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Keep consuming.
    Stable,
    /// The group is rebalancing (or forgot us): commit, then join again.
    Rejoin,
}

/// Whether `error` means the coordinator moved or is not ready yet.
fn coordinator_moved(error: &KafkaError) -> bool {
    matches!(
        error.kind(),
        ResponseError::NotCoordinator
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::CoordinatorLoadInProgress
    )
}

/// Encodes a consumer-protocol message with its version prefix.
fn encode_versioned<M: Encodable>(message: &M, version: i16) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message
        .encode(&mut buf, version)
        .map_err(|e| ClientError::Encode {
            what: "consumer protocol message".to_owned(),
            reason: e.to_string(),
        })?;
    Ok(buf.freeze())
}

/// Decodes a consumer-protocol message; versions newer than the codec's are read as its
/// newest, as Kafka's consumer protocol is designed to allow.
fn decode_versioned<M: Decodable + Message>(mut data: Bytes) -> Option<M> {
    if data.remaining() < 2 {
        return None;
    }
    let version = data.get_i16();
    if version < 0 {
        return None;
    }
    M::decode(&mut data, version.min(M::VERSIONS.max)).ok()
}

/// Decodes a member's assignment bytes into (topic, partitions).
fn decode_assignment(data: Bytes) -> Vec<(String, Vec<i32>)> {
    decode_versioned::<ConsumerProtocolAssignment>(data)
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .map(|t| (t.topic.to_string(), t.partitions))
                .collect()
        })
        .unwrap_or_default()
}

/// Kafka's range assignor: for each topic, members subscribed to it (sorted by id) get
/// consecutive ranges; the first `partitions % members` get one extra.
pub fn range_assign(
    subscriptions: &[(String, Vec<String>)],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<(String, Vec<i32>)>> {
    let mut out: BTreeMap<String, Vec<(String, Vec<i32>)>> = subscriptions
        .iter()
        .map(|(m, _)| (m.clone(), Vec::new()))
        .collect();
    for (topic, &count) in partition_counts {
        let members: BTreeSet<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() || count <= 0 {
            continue;
        }
        let n = i32::try_from(members.len()).unwrap_or(i32::MAX);
        let (per_member, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in (0..).zip(members) {
            let take = per_member + i32::from(i < extra);
            if take > 0 {
                if let Some(list) = out.get_mut(member) {
                    list.push((topic.clone(), (next..next + take).collect()));
                }
            }
            next += take;
        }
    }
    out
}

impl Client {
    /// The coordinator of `group`, looked up once and cached.
    async fn coordinator(&mut self, group: &str) -> Result<Target> {
        if let Some(&node) = self.coordinators.get(group) {
            return Ok(Target::Node(node));
        }
        let mut attempt = 0;
        loop {
            let (version, response) = self
                .request::<FindCoordinatorRequest, _>(
                    Target::Any,
                    FIND_COORDINATOR_MAX_VERSION,
                    Duration::ZERO,
                    |version| {
                        let request =
                            FindCoordinatorRequest::default().with_key_type(KEY_TYPE_GROUP);
                        let key = StrBytes::from_string(group.to_owned());
                        Ok(if version >= 4 {
                            request.with_coordinator_keys(vec![key])
                        } else {
                            request.with_key(key)
                        })
                    },
                )
                .await?;
            let (code, message, node, host, port) = if version >= 4 {
                let c = response
                    .coordinators
                    .first()
                    .ok_or_else(|| ClientError::Protocol {
                        addr: self.config.bootstrap.clone(),
                        reason: "FindCoordinator response without coordinators".to_owned(),
                    })?;
                (
                    c.error_code,
                    c.error_message.clone(),
                    c.node_id.0,
                    c.host.to_string(),
                    c.port,
                )
            } else {
                let r = &response;
                (
                    r.error_code,
                    r.error_message.clone(),
                    r.node_id.0,
                    r.host.to_string(),
                    r.port,
                )
            };
            match KafkaError::from_code(code, message.as_deref()) {
                None => {
                    let addr = join_host_port(&host, port);
                    if self.brokers.get(&node) != Some(&addr) {
                        self.connections.remove(&Target::Node(node));
                        self.brokers.insert(node, addr);
                    }
                    self.coordinators.insert(group.to_owned(), node);
                    return Ok(Target::Node(node));
                }
                Some(error) if error.is_retriable() && attempt < COORDINATOR_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Some(error) => {
                    return Err(ClientError::Kafka {
                        context: format!("find coordinator of group {group}"),
                        error,
                    })
                }
            }
        }
    }

    /// Drops the cached coordinator of `group` when `error` says it moved.
    fn note_group_error(&mut self, group: &str, error: &KafkaError) {
        if coordinator_moved(error) {
            self.coordinators.remove(group);
        }
    }

    /// Commits `offsets` (topic, partition, next offset to read) for `group`. Use
    /// generation -1 and an empty member id to commit outside a membership (allowed
    /// only while the group is empty).
    pub async fn commit_offsets(
        &mut self,
        group: &str,
        generation_id: i32,
        member_id: &str,
        offsets: &[(String, i32, i64)],
    ) -> Result<()> {
        let coordinator = self.coordinator(group).await?;
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for (topic, partition, offset) in offsets {
            by_topic
                .entry(topic)
                .or_default()
                .push((*partition, *offset));
        }
        let result = self
            .request::<OffsetCommitRequest, _>(
                coordinator,
                OFFSET_COMMIT_MAX_VERSION,
                Duration::ZERO,
                |_| {
                    Ok(OffsetCommitRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
                        .with_generation_id_or_member_epoch(generation_id)
                        .with_member_id(StrBytes::from_string(member_id.to_owned()))
                        .with_topics(
                            by_topic
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetCommitRequestTopic::default()
                                        .with_name(topic_name(topic))
                                        .with_partitions(
                                            partitions
                                                .iter()
                                                .map(|&(p, o)| {
                                                    OffsetCommitRequestPartition::default()
                                                        .with_partition_index(p)
                                                        .with_committed_offset(o)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ))
                },
            )
            .await;
        let (_, response) = result?;
        for t in &response.topics {
            for p in &t.partitions {
                if let Some(error) = KafkaError::from_code(p.error_code, None) {
                    self.note_group_error(group, &error);
                    return Err(ClientError::Kafka {
                        context: format!(
                            "commit offset of {}/{} for group {group}",
                            t.name.as_str(),
                            p.partition_index
                        ),
                        error,
                    });
                }
            }
        }
        Ok(())
    }

    /// Committed offsets of `group`: for `topics` (topic, partitions), or all when `None`.
    pub async fn committed_offsets(
        &mut self,
        group: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Result<Vec<CommittedOffsetInfo>> {
        let coordinator = self.coordinator(group).await?;
        let (_, response) = self
            .request::<OffsetFetchRequest, _>(
                coordinator,
                OFFSET_FETCH_MAX_VERSION,
                Duration::ZERO,
                |version| {
                    let topics =
                        match topics {
                            Some(t) => Some(
                                t.iter()
                                    .map(|(name, partitions)| {
                                        OffsetFetchRequestTopic::default()
                                            .with_name(topic_name(name))
                                            .with_partition_indexes(partitions.clone())
                                    })
                                    .collect(),
                            ),
                            None if version >= 2 => None,
                            None => return Err(ClientError::Invalid(
                                "the broker cannot list all committed offsets (OffsetFetch < v2)"
                                    .to_owned(),
                            )),
                        };
                    Ok(OffsetFetchRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
                        .with_topics(topics))
                },
            )
            .await?;
        if let Some(error) = KafkaError::from_code(response.error_code, None) {
            self.note_group_error(group, &error);
            return Err(ClientError::Kafka {
                context: format!("committed offsets of group {group}"),
                error,
            });
        }
        let mut out = Vec::new();
        for t in response.topics {
            for p in t.partitions {
                check(p.error_code, None, || {
                    format!(
                        "committed offset of {}/{} for group {group}",
                        t.name.as_str(),
                        p.partition_index
                    )
                })?;
                out.push(CommittedOffsetInfo {
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    metadata: p.metadata.map(|m| m.to_string()),
                });
            }
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(out)
    }

    /// Every group known to any broker of the cluster.
    pub async fn list_groups(&mut self) -> Result<Vec<GroupListing>> {
        let targets: Vec<Target> = if self.brokers.is_empty() {
            vec![Target::Any]
        } else {
            self.brokers.keys().map(|&id| Target::Node(id)).collect()
        };
        let mut out = Vec::new();
        for target in targets {
            let (_, response) = self
                .request::<ListGroupsRequest, _>(
                    target,
                    LIST_GROUPS_MAX_VERSION,
                    Duration::ZERO,
                    |_| Ok(ListGroupsRequest::default()),
                )
                .await?;
            check(response.error_code, None, || "list groups".to_owned())?;
            out.extend(response.groups.into_iter().map(|g| GroupListing {
                group_id: g.group_id.to_string(),
                protocol_type: g.protocol_type.to_string(),
                state: g.group_state.to_string(),
            }));
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(out)
    }

    /// Describes a group (members and their assignments).
    pub async fn describe_group(&mut self, group: &str) -> Result<GroupDescriptionInfo> {
        let coordinator = self.coordinator(group).await?;
        let (_, response) = self
            .request::<DescribeGroupsRequest, _>(
                coordinator,
                DESCRIBE_GROUPS_MAX_VERSION,
                Duration::ZERO,
                |_| {
                    Ok(DescribeGroupsRequest::default()
                        .with_groups(vec![GroupId(StrBytes::from_string(group.to_owned()))]))
                },
            )
            .await?;
        let g = response
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol {
                addr: self.config.bootstrap.clone(),
                reason: "DescribeGroups response without groups".to_owned(),
            })?;
        if let Some(error) = KafkaError::from_code(g.error_code, g.error_message.as_deref()) {
            self.note_group_error(group, &error);
            return Err(ClientError::Kafka {
                context: format!("describe group {group}"),
                error,
            });
        }
        let is_consumer = g.protocol_type.as_str() == CONSUMER_PROTOCOL_TYPE;
        Ok(GroupDescriptionInfo {
            group_id: g.group_id.to_string(),
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            members: g
                .members
                .into_iter()
                .map(|m| MemberInfo {
                    member_id: m.member_id.to_string(),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                    assignment: if is_consumer {
                        decode_assignment(m.member_assignment)
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        })
    }
}

/// A consumer's membership in a group: joins, takes part in rebalances (assigning with
/// the range strategy when it leads), heartbeats, commits and leaves.
#[derive(Debug)]
pub struct GroupMember {
    group_id: String,
    topics: Vec<String>,
    member_id: String,
    generation_id: i32,
    session_timeout: Duration,
    rebalance_timeout: Duration,
}

impl GroupMember {
    /// A member of `group_id` subscribed to `topics`, not yet joined.
    pub fn new(
        group_id: &str,
        topics: Vec<String>,
        session_timeout: Duration,
        rebalance_timeout: Duration,
    ) -> GroupMember {
        GroupMember {
            group_id: group_id.to_owned(),
            topics,
            member_id: String::new(),
            generation_id: -1,
            session_timeout,
            rebalance_timeout,
        }
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The member id the coordinator gave us (empty before the first join).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The current generation (-1 before the first join).
    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    /// How often to heartbeat: a third of the session timeout, as Kafka clients do.
    pub fn heartbeat_interval(&self) -> Duration {
        self.session_timeout / 3
    }

    /// Joins (or rejoins) the group and returns this member's assignment.
    pub async fn join(&mut self, client: &mut Client) -> Result<Vec<(String, Vec<i32>)>> {
        let subscription = encode_versioned(
            &ConsumerProtocolSubscription::default().with_topics(
                self.topics
                    .iter()
                    .map(|t| StrBytes::from_string(t.clone()))
                    .collect(),
            ),
            CONSUMER_PROTOCOL_VERSION,
        )?;
        let session_ms = i32::try_from(self.session_timeout.as_millis()).unwrap_or(i32::MAX);
        let rebalance_ms = i32::try_from(self.rebalance_timeout.as_millis()).unwrap_or(i32::MAX);
        let mut last_error = None;
        for _ in 0..MAX_JOIN_ATTEMPTS {
            let coordinator = client.coordinator(&self.group_id).await?;
            let group = GroupId(StrBytes::from_string(self.group_id.clone()));
            let member_id = StrBytes::from_string(self.member_id.clone());
            let (_, joined) = client
                .request::<JoinGroupRequest, _>(
                    coordinator,
                    JOIN_GROUP_MAX_VERSION,
                    self.rebalance_timeout,
                    |_| {
                        Ok(JoinGroupRequest::default()
                            .with_group_id(group.clone())
                            .with_session_timeout_ms(session_ms)
                            .with_rebalance_timeout_ms(rebalance_ms)
                            .with_member_id(member_id)
                            .with_protocol_type(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE))
                            .with_protocols(vec![JoinGroupRequestProtocol::default()
                                .with_name(StrBytes::from_static_str(RANGE_PROTOCOL))
                                .with_metadata(subscription.clone())]))
                    },
                )
                .await?;
            if let Some(error) = KafkaError::from_code(joined.error_code, None) {
                match error.kind() {
                    // JoinGroup v4+: the first join only hands out our member id.
                    ResponseError::MemberIdRequired => {
                        self.member_id = joined.member_id.to_string()
                    }
                    ResponseError::UnknownMemberId => self.member_id.clear(),
                    ResponseError::RebalanceInProgress => {}
                    _ if coordinator_moved(&error) => {
                        client.note_group_error(&self.group_id, &error);
                        tokio::time::sleep(RETRY_BACKOFF).await;
                    }
                    _ => return Err(self.group_error("join", error)),
                }
                last_error = Some(error);
                continue;
            }
            self.member_id = joined.member_id.to_string();
            self.generation_id = joined.generation_id;
            let assignments = if joined.leader == joined.member_id {
                let members: Vec<(String, Bytes)> = joined
                    .members
                    .iter()
                    .map(|m| (m.member_id.to_string(), m.metadata.clone()))
                    .collect();
                self.assign(client, &members).await?
            } else {
                Vec::new()
            };
            let protocol_name = joined.protocol_name.clone();
            let member_id = StrBytes::from_string(self.member_id.clone());
            let generation_id = self.generation_id;
            let (_, synced) = client
                .request::<SyncGroupRequest, _>(
                    coordinator,
                    SYNC_GROUP_MAX_VERSION,
                    self.rebalance_timeout,
                    |version| {
                        let mut request = SyncGroupRequest::default()
                            .with_group_id(group)
                            .with_generation_id(generation_id)
                            .with_member_id(member_id)
                            .with_assignments(assignments);
                        if version >= 5 {
                            request.protocol_type =
                                Some(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE));
                            request.protocol_name = protocol_name;
                        }
                        Ok(request)
                    },
                )
                .await?;
            match KafkaError::from_code(synced.error_code, None) {
                None => return Ok(decode_assignment(synced.assignment)),
                Some(error) => {
                    match error.kind() {
                        ResponseError::RebalanceInProgress | ResponseError::IllegalGeneration => {}
                        ResponseError::UnknownMemberId => self.member_id.clear(),
                        _ if coordinator_moved(&error) => {
                            client.note_group_error(&self.group_id, &error)
                        }
                        _ => return Err(self.group_error("sync", error)),
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(ClientError::Invalid(format!(
            "could not join group {} after {MAX_JOIN_ATTEMPTS} attempts{}",
            self.group_id,
            last_error
                .map(|e| format!(" (last error {e})"))
                .unwrap_or_default()
        )))
    }

    /// The leader's job: range-assign the partitions of every subscribed topic.
    async fn assign(
        &self,
        client: &mut Client,
        members: &[(String, Bytes)],
    ) -> Result<Vec<SyncGroupRequestAssignment>> {
        let subscriptions: Vec<(String, Vec<String>)> = members
            .iter()
            .map(|(id, metadata)| {
                let topics = decode_versioned::<ConsumerProtocolSubscription>(metadata.clone())
                    .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
                    .unwrap_or_default();
                (id.clone(), topics)
            })
            .collect();
        let all_topics: BTreeSet<&String> = subscriptions.iter().flat_map(|(_, t)| t).collect();
        let mut counts = BTreeMap::new();
        for topic in all_topics {
            match client.topic(topic, false).await {
                Ok(meta) => {
                    counts.insert(
                        topic.clone(),
                        i32::try_from(meta.partitions.len()).unwrap_or(i32::MAX),
                    );
                }
                // A subscribed topic that does not exist gets nobody assigned.
                Err(ClientError::Kafka { error, .. })
                    if error.kind() == ResponseError::UnknownTopicOrPartition => {}
                Err(e) => return Err(e),
            }
        }
        range_assign(&subscriptions, &counts)
            .into_iter()
            .map(|(member, topics)| {
                let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
                    topics
                        .into_iter()
                        .map(|(t, partitions)| {
                            AssignedTopic::default()
                                .with_topic(topic_name(&t))
                                .with_partitions(partitions)
                        })
                        .collect(),
                );
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member))
                    .with_assignment(encode_versioned(&assignment, CONSUMER_PROTOCOL_VERSION)?))
            })
            .collect()
    }

    /// Sends a heartbeat; `Rejoin` means a rebalance started or we were evicted.
    pub async fn heartbeat(&mut self, client: &mut Client) -> Result<HeartbeatOutcome> {
        let coordinator = client.coordinator(&self.group_id).await?;
        let (_, response) = client
            .request::<HeartbeatRequest, _>(
                coordinator,
                HEARTBEAT_MAX_VERSION,
                Duration::ZERO,
                |_| {
                    Ok(HeartbeatRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(self.group_id.clone())))
                        .with_generation_id(self.generation_id)
                        .with_member_id(StrBytes::from_string(self.member_id.clone())))
                },
            )
            .await?;
        let Some(error) = KafkaError::from_code(response.error_code, None) else {
            return Ok(HeartbeatOutcome::Stable);
        };
        match error.kind() {
            ResponseError::RebalanceInProgress | ResponseError::IllegalGeneration => {
                Ok(HeartbeatOutcome::Rejoin)
            }
            ResponseError::UnknownMemberId => {
                self.member_id.clear();
                Ok(HeartbeatOutcome::Rejoin)
            }
            _ if coordinator_moved(&error) => {
                client.note_group_error(&self.group_id, &error);
                Ok(HeartbeatOutcome::Rejoin)
            }
            _ => Err(self.group_error("heartbeat", error)),
        }
    }

    /// Commits `offsets` (topic, partition, next offset) in the current generation.
    pub async fn commit(&self, client: &mut Client, offsets: &[(String, i32, i64)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        client
            .commit_offsets(&self.group_id, self.generation_id, &self.member_id, offsets)
            .await
    }

    /// Leaves the group so that its partitions are reassigned at once.
    pub async fn leave(&mut self, client: &mut Client) -> Result<()> {
        if self.member_id.is_empty() {
            return Ok(());
        }
        let coordinator = client.coordinator(&self.group_id).await?;
        let member_id = StrBytes::from_string(std::mem::take(&mut self.member_id));
        let (_, response) = client
            .request::<LeaveGroupRequest, _>(
                coordinator,
                LEAVE_GROUP_MAX_VERSION,
                Duration::ZERO,
                |version| {
                    let request = LeaveGroupRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(self.group_id.clone())));
                    Ok(if version >= 3 {
                        request
                            .with_members(vec![MemberIdentity::default().with_member_id(member_id)])
                    } else {
                        request.with_member_id(member_id)
                    })
                },
            )
            .await?;
        self.generation_id = -1;
        let member_error = response
            .members
            .iter()
            .map(|m| m.error_code)
            .find(|&c| c != 0)
            .unwrap_or(0);
        for code in [response.error_code, member_error] {
            if let Some(error) = KafkaError::from_code(code, None) {
                // Already gone is as good as leaving.
                if error.kind() != ResponseError::UnknownMemberId {
                    return Err(self.group_error("leave", error));
                }
            }
        }
        Ok(())
    }

    fn group_error(&self, action: &str, error: KafkaError) -> ClientError {
        ClientError::Kafka {
            context: format!("{action} group {}", self.group_id),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_splits_like_kafka() {
        let counts = BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 2)]);
        let out = range_assign(
            &subs(&[("m2", &["a", "b"]), ("m1", &["a"]), ("m3", &["a", "b"])]),
            &counts,
        );
        assert_eq!(out["m1"], vec![("a".to_owned(), vec![0, 1])]);
        assert_eq!(
            out["m2"],
            vec![("a".to_owned(), vec![2, 3]), ("b".to_owned(), vec![0])]
        );
        assert_eq!(
            out["m3"],
            vec![("a".to_owned(), vec![4]), ("b".to_owned(), vec![1])]
        );
    }

    #[test]
    fn more_members_than_partitions() {
        let counts = BTreeMap::from([("a".to_owned(), 1)]);
        let out = range_assign(&subs(&[("x", &["a"]), ("y", &["a"])]), &counts);
        assert_eq!(out["x"], vec![("a".to_owned(), vec![0])]);
        assert!(out["y"].is_empty());
    }

    #[test]
    fn consumer_protocol_round_trip() {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            AssignedTopic::default()
                .with_topic(topic_name("t"))
                .with_partitions(vec![0, 2]),
        ]);
        let bytes = encode_versioned(&assignment, CONSUMER_PROTOCOL_VERSION).expect("encode");
        assert_eq!(decode_assignment(bytes), vec![("t".to_owned(), vec![0, 2])]);
        assert!(decode_assignment(Bytes::from_static(b"\x00")).is_empty());
        assert!(decode_assignment(Bytes::from_static(b"\x00\x00\xff\xff\xff\xff\xff")).is_empty());
    }
}
