//! Consumer groups (classic protocol): FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups.
//!
//! Join and Sync wait for the rebalance inside the core; they are awaited on this
//! connection's task only, so they hold back nothing but this connection's next request.

use std::collections::BTreeMap;

use ferry_core::group::{CommitOffset, CommittedOffset, JoinRequest, SyncRequest};
use ferry_core::CoreError;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::handlers::Session;
use super::metadata::GROUP_AUTHORIZED_OPERATIONS;
use crate::errors::{self, group_error};

/// FindCoordinator key type of consumer groups.
const KEY_TYPE_GROUP: i8 = 0;
/// FindCoordinator key type of transactional ids.
const KEY_TYPE_TRANSACTION: i8 = 1;
/// The group type of every group Ferry has (ListGroups v5+).
const CLASSIC_GROUP_TYPE: &str = "classic";
/// Group state of unknown (or removed) groups.
const DEAD_STATE: &str = "Dead";

fn str_bytes(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn opt_str(value: &Option<StrBytes>) -> Option<String> {
    value.as_ref().map(|v| v.to_string())
}

fn group_code(result: &Result<(), CoreError>) -> i16 {
    result.as_ref().err().map_or(0, |e| group_error(e).code())
}

/// FindCoordinator: this node coordinates every group (and transactional id).
pub(super) fn find_coordinator(
    session: &Session,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let node = BrokerId(session.node_id());
    let host = session.advertised_host();
    let port = session.config().advertised_port;
    let key_error =
        if request.key_type == KEY_TYPE_GROUP || request.key_type == KEY_TYPE_TRANSACTION {
            None
        } else {
            Some(ResponseError::InvalidRequest)
        };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let coordinator = Coordinator::default().with_key(key);
                match key_error {
                    Some(error) => coordinator
                        .with_error_code(error.code())
                        .with_node_id(BrokerId(-1)),
                    None => coordinator
                        .with_node_id(node)
                        .with_host(host.clone())
                        .with_port(port),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match key_error {
        Some(error) => FindCoordinatorResponse::default()
            .with_error_code(error.code())
            .with_node_id(BrokerId(-1)),
        None => FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(host)
            .with_port(port),
    }
}

/// JoinGroup: completes when the group's rebalance does.
pub(super) async fn join(
    session: &Session,
    request: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let join = JoinRequest {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: opt_str(&request.group_instance_id),
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if request.rebalance_timeout_ms < 0 {
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        },
        require_known_member_id: version >= 4,
        client_id: session.client_id.clone(),
        client_host: session.client_host.clone(),
    };
    // Before v7 protocol name is not nullable.
    let no_protocol_name = if version >= 7 {
        None
    } else {
        Some(StrBytes::new())
    };
    match session.broker().groups().join(join).await {
        Ok(joined) => {
            let members = joined
                .members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_group_instance_id(m.group_instance_id.map(StrBytes::from_string))
                        .with_metadata(m.metadata)
                })
                .collect();
            JoinGroupResponse::default()
                .with_generation_id(joined.generation_id)
                .with_protocol_type(joined.protocol_type.map(StrBytes::from_string))
                .with_protocol_name(
                    joined
                        .protocol_name
                        .map(StrBytes::from_string)
                        .or(no_protocol_name),
                )
                .with_leader(str_bytes(&joined.leader))
                .with_member_id(str_bytes(&joined.member_id))
                .with_members(members)
        }
        Err(error) => {
            let member_id = match &error {
                CoreError::MemberIdRequired(id) => str_bytes(id),
                _ => request.member_id.clone(),
            };
            JoinGroupResponse::default()
                .with_error_code(group_error(&error).code())
                .with_generation_id(-1)
                .with_protocol_name(no_protocol_name)
                .with_member_id(member_id)
        }
    }
}

/// SyncGroup: the leader hands in assignments; every member gets its own.
pub(super) async fn sync(
    session: &Session,
    request: SyncGroupRequest,
    _version: i16,
) -> SyncGroupResponse {
    let sync = SyncRequest {
        group_id: request.group_id.to_string(),
        generation_id: request.generation_id,
        member_id: request.member_id.to_string(),
        group_instance_id: opt_str(&request.group_instance_id),
        protocol_type: opt_str(&request.protocol_type),
        protocol_name: opt_str(&request.protocol_name),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    match session.broker().groups().sync(sync).await {
        Ok(synced) => SyncGroupResponse::default()
            .with_protocol_type(synced.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(synced.protocol_name.map(StrBytes::from_string))
            .with_assignment(synced.assignment),
        Err(error) => SyncGroupResponse::default().with_error_code(group_error(&error).code()),
    }
}

/// Heartbeat: REBALANCE_IN_PROGRESS tells the member to rejoin.
pub(super) fn heartbeat(
    session: &Session,
    request: HeartbeatRequest,
    _version: i16,
) -> HeartbeatResponse {
    let result = session.broker().groups().heartbeat(
        &request.group_id,
        request.generation_id,
        &request.member_id,
        request.group_instance_id.as_deref(),
    );
    HeartbeatResponse::default().with_error_code(group_code(&result))
}

/// LeaveGroup: one member (v0–v2) or a batch of members (v3+).
pub(super) fn leave(
    session: &Session,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| (m.member_id.to_string(), opt_str(&m.group_instance_id)))
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    match session.broker().groups().leave(&request.group_id, members) {
        Err(error) => LeaveGroupResponse::default().with_error_code(group_error(&error).code()),
        Ok(results) if version >= 3 => {
            let members = results
                .iter()
                .zip(&request.members)
                .map(|((member_id, result), asked)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(member_id))
                        .with_group_instance_id(asked.group_instance_id.clone())
                        .with_error_code(group_code(result))
                })
                .collect();
            LeaveGroupResponse::default().with_members(members)
        }
        // v0–v2: the single member's result is the response's.
        Ok(results) => LeaveGroupResponse::default()
            .with_error_code(results.first().map_or(0, |(_, result)| group_code(result))),
    }
}

/// OffsetCommit: per-partition results, in request order.
pub(super) async fn offset_commit(
    session: &Session,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let mut offsets = Vec::new();
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::with_capacity(request.topics.len());
    // (topic index, partition index) of each offset handed to the core.
    let mut slots = Vec::new();
    for (t, topic) in request.topics.iter().enumerate() {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for (p, partition) in topic.partitions.iter().enumerate() {
            let answer = OffsetCommitResponsePartition::default()
                .with_partition_index(partition.partition_index);
            match u32::try_from(partition.partition_index) {
                Ok(index) => {
                    offsets.push(CommitOffset {
                        topic: topic.name.to_string(),
                        partition: index,
                        offset: partition.committed_offset,
                        leader_epoch: if version >= 6 {
                            partition.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: opt_str(&partition.committed_metadata),
                    });
                    slots.push((t, p));
                    partitions.push(answer);
                }
                Err(_) => partitions
                    .push(answer.with_error_code(ResponseError::UnknownTopicOrPartition.code())),
            }
        }
        topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    let committed = session
        .broker()
        .groups()
        .commit_offsets(
            &request.group_id,
            request.generation_id_or_member_epoch,
            &request.member_id,
            request.group_instance_id.as_deref(),
            offsets,
        )
        .await;
    match committed {
        Ok(results) => {
            for ((t, p), result) in slots.into_iter().zip(results) {
                topics[t].partitions[p].error_code = group_code(&result);
            }
        }
        Err(error) => {
            let code = group_error(&error).code();
            for (t, p) in slots {
                topics[t].partitions[p].error_code = code;
            }
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

/// What one group's OffsetFetch asks for: `None` = every committed offset.
type WantedOffsets = Option<Vec<(TopicName, Vec<i32>)>>;
/// Committed offsets of one group: per topic, (partition, committed offset if any).
type GroupOffsets = Vec<(TopicName, Vec<(i32, Option<CommittedOffset>)>)>;

/// Committed offsets of one group, per topic, in request order (or topic order for "all").
fn fetch_group_offsets(
    session: &Session,
    group_id: &str,
    wanted: WantedOffsets,
) -> Result<GroupOffsets, CoreError> {
    let groups = session.broker().groups();
    match wanted {
        None => {
            let mut by_topic: BTreeMap<String, Vec<(i32, Option<CommittedOffset>)>> =
                BTreeMap::new();
            for offset in groups.fetch_offsets(group_id, None)? {
                by_topic
                    .entry(offset.topic.clone())
                    .or_default()
                    .push((offset.partition as i32, Some(offset)));
            }
            Ok(by_topic
                .into_iter()
                .map(|(topic, partitions)| (TopicName(StrBytes::from_string(topic)), partitions))
                .collect())
        }
        Some(wanted) => {
            let keys: Vec<(String, u32)> = wanted
                .iter()
                .flat_map(|(topic, partitions)| {
                    partitions
                        .iter()
                        .filter_map(|&p| u32::try_from(p).ok().map(|p| (topic.to_string(), p)))
                })
                .collect();
            let mut found: BTreeMap<(String, u32), CommittedOffset> = groups
                .fetch_offsets(group_id, Some(&keys))?
                .into_iter()
                .map(|offset| ((offset.topic.clone(), offset.partition), offset))
                .collect();
            Ok(wanted
                .into_iter()
                .map(|(topic, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|p| {
                            let committed = u32::try_from(p)
                                .ok()
                                .and_then(|index| found.remove(&(topic.to_string(), index)));
                            (p, committed)
                        })
                        .collect();
                    (topic, partitions)
                })
                .collect())
        }
    }
}

/// (offset, leader epoch, metadata) of a partition; -1 and empty when nothing is committed.
fn committed_fields(committed: &Option<CommittedOffset>) -> (i64, i32, Option<StrBytes>) {
    match committed {
        Some(c) => (
            c.offset,
            c.leader_epoch,
            Some(
                c.metadata
                    .clone()
                    .map(StrBytes::from_string)
                    .unwrap_or_default(),
            ),
        ),
        None => (-1, -1, Some(StrBytes::new())),
    }
}

/// OffsetFetch: one group (v0–v7) or several (v8+).
pub(super) fn offset_fetch(
    session: &Session,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|group| {
                let wanted = group.topics.map(|topics| {
                    topics
                        .into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect()
                });
                let answer =
                    OffsetFetchResponseGroup::default().with_group_id(group.group_id.clone());
                match fetch_group_offsets(session, &group.group_id, wanted) {
                    Ok(topics) => answer.with_topics(
                        topics
                            .into_iter()
                            .map(|(name, partitions)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(name)
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|(index, committed)| {
                                                let (offset, epoch, metadata) =
                                                    committed_fields(&committed);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(index)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(metadata)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                    Err(error) => answer.with_error_code(group_error(&error).code()),
                }
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }

    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    // v0/v1 cannot say "all topics": a null list there is an empty one.
    let wanted = if version < 2 {
        Some(wanted.unwrap_or_default())
    } else {
        wanted
    };
    let partition = |index: i32, committed: &Option<CommittedOffset>, code: i16| {
        let (offset, epoch, metadata) = committed_fields(committed);
        let answer = OffsetFetchResponsePartition::default()
            .with_partition_index(index)
            .with_committed_offset(offset)
            .with_metadata(metadata)
            .with_error_code(code);
        if version >= 5 {
            answer.with_committed_leader_epoch(epoch)
        } else {
            answer
        }
    };
    let topic = |name, partitions| {
        OffsetFetchResponseTopic::default()
            .with_name(name)
            .with_partitions(partitions)
    };
    match fetch_group_offsets(session, &request.group_id, wanted.clone()) {
        Ok(topics) => OffsetFetchResponse::default().with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    let partitions = partitions
                        .iter()
                        .map(|(index, committed)| partition(*index, committed, 0));
                    topic(name, partitions.collect())
                })
                .collect(),
        ),
        Err(error) => {
            let code = group_error(&error).code();
            if version >= 2 {
                OffsetFetchResponse::default().with_error_code(code)
            } else {
                // v0/v1 have no top-level error: every asked partition carries it.
                let topics = wanted
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, partitions)| {
                        let partitions = partitions
                            .iter()
                            .map(|&index| partition(index, &None, code));
                        topic(name, partitions.collect())
                    })
                    .collect();
                OffsetFetchResponse::default().with_topics(topics)
            }
        }
    }
}

/// ListGroups, with the v4 state filter and the v5 type filter.
pub(super) fn list_groups(
    session: &Session,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let groups = session
        .broker()
        .groups()
        .list_groups()
        .into_iter()
        .filter(|g| {
            request.states_filter.is_empty()
                || request
                    .states_filter
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(g.state))
        })
        .filter(|_| {
            request.types_filter.is_empty()
                || request
                    .types_filter
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(CLASSIC_GROUP_TYPE))
        })
        .map(|g| {
            let listed = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(g.group_id)))
                .with_protocol_type(StrBytes::from_string(g.protocol_type));
            let listed = if version >= 4 {
                listed.with_group_state(str_bytes(g.state))
            } else {
                listed
            };
            if version >= 5 {
                listed.with_group_type(str_bytes(CLASSIC_GROUP_TYPE))
            } else {
                listed
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// DescribeGroups: state, protocol and members of each group.
pub(super) fn describe_groups(
    session: &Session,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| {
            let group = session.broker().groups().describe_group(&group_id);
            let mut described = DescribedGroup::default()
                .with_group_id(group_id)
                .with_group_state(str_bytes(group.state))
                .with_protocol_type(StrBytes::from_string(group.protocol_type))
                .with_protocol_data(StrBytes::from_string(group.protocol))
                .with_members(
                    group
                        .members
                        .into_iter()
                        .map(|m| {
                            let member = DescribedGroupMember::default()
                                .with_member_id(StrBytes::from_string(m.member_id))
                                .with_client_id(StrBytes::from_string(m.client_id))
                                .with_client_host(StrBytes::from_string(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment);
                            if version >= 4 {
                                member.with_group_instance_id(
                                    m.group_instance_id.map(StrBytes::from_string),
                                )
                            } else {
                                member
                            }
                        })
                        .collect(),
                );
            // Since v6 (KIP-1043) an unknown group is an error rather than a Dead group.
            if version >= 6 && group.state == DEAD_STATE && described.members.is_empty() {
                described.error_code = ResponseError::GroupIdNotFound.code();
                described.error_message = errors::error_message(&CoreError::GroupIdNotFound);
            }
            if version >= 3 && request.include_authorized_operations {
                described.authorized_operations = GROUP_AUTHORIZED_OPERATIONS;
            }
            described
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

/// DeleteGroups: empty groups only; their committed offsets go too.
pub(super) async fn delete_groups(
    session: &Session,
    request: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let result = session.broker().groups().delete_group(&group_id).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(group_code(&result)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
