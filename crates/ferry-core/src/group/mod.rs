//! Consumer groups: membership, generations, rebalances, assignments (opaque bytes chosen
//! by the group leader client-side) and committed offsets.
//!
//! The state machine follows Kafka's classic group protocol (Empty → PreparingRebalance →
//! CompletingRebalance → Stable, Dead), which other protocols can reuse for their own
//! "group of consumers sharing work" needs. Committed offsets are records in the internal
//! `__consumer_offsets` log, replayed at startup.

use std::sync::Arc;

use bytes::Bytes;
use ferry_storage::Store;

use crate::Result;

/// Coordinator settings.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// Delay of the first rebalance of an empty group, to let members arrive together.
    pub initial_rebalance_delay_ms: u64,
    pub max_group_size: usize,
    /// Committed offsets of empty groups older than this are expired.
    pub offsets_retention_ms: i64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 0,
            max_group_size: 1000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// A JoinGroup request.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a new member.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: String,
    /// (protocol name, member metadata) in the member's preference order.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// JoinGroup v4+: a new member first gets `MemberIdRequired` with its id.
    pub require_known_member_id: bool,
    pub client_id: String,
    pub client_host: String,
}

/// One member as seen by the leader in a JoinGroup response.
#[derive(Clone, Debug)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// A JoinGroup response.
#[derive(Clone, Debug)]
pub struct JoinResponse {
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// All members with their metadata for the selected protocol; only for the leader.
    pub members: Vec<JoinedMember>,
}

/// A SyncGroup request.
#[derive(Clone, Debug)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// (member id, assignment), from the leader only.
    pub assignments: Vec<(String, Bytes)>,
}

/// A SyncGroup response.
#[derive(Clone, Debug)]
pub struct SyncResponse {
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// One offset to commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// One committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

/// A group in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    /// Kafka state name: Empty, PreparingRebalance, CompletingRebalance, Stable, Dead.
    pub state: &'static str,
}

/// A described member.
#[derive(Clone, Debug)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A described group.
#[derive(Clone, Debug)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// The group coordinator (one per node; a single node coordinates every group).
pub struct GroupCoordinator {
    // C2
    _store: Arc<Store>,
}

impl GroupCoordinator {
    /// Opens the coordinator: replays committed offsets from `__consumer_offsets` and
    /// starts the session-expiry task (needs a tokio runtime).
    pub fn open(store: Arc<Store>, settings: GroupSettings) -> Result<GroupCoordinator> {
        todo!("group helper")
    }
    /// Flushes the offsets log and stops background work.
    pub async fn shutdown(&self) -> Result<()> {
        todo!("group helper")
    }
    /// JoinGroup: completes when the rebalance completes (or with an error).
    pub async fn join(&self, request: JoinRequest) -> Result<JoinResponse> {
        todo!("group helper")
    }
    /// SyncGroup: followers wait for the leader's assignment.
    pub async fn sync(&self, request: SyncRequest) -> Result<SyncResponse> {
        todo!("group helper")
    }
    /// Heartbeat: `RebalanceInProgress` tells the member to rejoin.
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<()> {
        todo!("group helper")
    }
    /// LeaveGroup for one or more members; per-member results.
    pub fn leave(
        &self,
        group_id: &str,
        members: Vec<(String, Option<String>)>,
    ) -> Result<Vec<(String, Result<()>)>> {
        todo!("group helper")
    }
    /// OffsetCommit. `generation_id = -1` with an empty member id is a commit without
    /// membership (simple consumer / admin), allowed when the group is empty. Per-offset
    /// results.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        offsets: Vec<CommitOffset>,
    ) -> Result<Vec<Result<()>>> {
        todo!("group helper")
    }
    /// OffsetFetch: `None` = every committed offset of the group.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, u32)]>,
    ) -> Result<Vec<CommittedOffset>> {
        todo!("group helper")
    }
    /// Groups known to the coordinator (with members or committed offsets).
    pub fn list_groups(&self) -> Vec<GroupListing> {
        todo!("group helper")
    }
    /// DescribeGroups for one group; an unknown group is described as `Dead`.
    pub fn describe_group(&self, group_id: &str) -> GroupDescription {
        todo!("group helper")
    }
    /// DeleteGroups: only empty groups; removes their committed offsets.
    pub async fn delete_group(&self, group_id: &str) -> Result<()> {
        todo!("group helper")
    }
    /// Removes committed offsets of a deleted topic from every group.
    pub async fn remove_topic_offsets(&self, topic: &str) -> Result<()> {
        todo!("group helper")
    }
}
