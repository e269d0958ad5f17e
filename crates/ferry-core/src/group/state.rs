//! The classic group membership state machine, without I/O and without a clock.
//!
//! It follows Kafka's classic group coordinator: Empty → PreparingRebalance →
//! CompletingRebalance → Stable (a removed group is Dead). Time comes in as [`Now`];
//! answers to JoinGroup and SyncGroup requests that must wait for a rebalance are
//! `oneshot` senders kept on the member and fired when the rebalance gets there. Every
//! deadline (sessions, rebalance and sync timeouts, pending members) is handled by
//! [`GroupTable::tick`], which the coordinator's background task calls; changes that must
//! be persisted come out as [`GroupEvent`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

use bytes::Bytes;
use indexmap::IndexMap;
use tokio::sync::oneshot;

use super::offsets::ExpiryBase;
use super::records::GroupValue;
use super::{
    GroupDescription, GroupListing, GroupSettings, JoinRequest, JoinResponse, JoinedMember,
    MemberDescription, SyncRequest, SyncResponse,
};
use crate::{CoreError, Result};

/// Where a waiting JoinGroup gets its answer.
pub(crate) type JoinReply = oneshot::Sender<Result<JoinResponse>>;
/// Where a waiting SyncGroup gets its answer.
pub(crate) type SyncReply = oneshot::Sender<Result<SyncResponse>>;

/// A new member that joined but never completed a rebalance is dropped after this long
/// (Kafka's `NewMemberJoinTimeoutMs`): a client that disconnected during a long rebalance
/// must not stay in the group forever.
pub(crate) const NEW_MEMBER_JOIN_TIMEOUT_MS: u64 = 5 * 60 * 1000;
/// Members told `MemberIdRequired` that have not joined yet, per group.
pub(crate) const PENDING_MEMBERS_PER_GROUP_MAX: usize = 1000;
/// Groups the coordinator keeps (with members or committed offsets).
pub(crate) const GROUPS_MAX: usize = 100_000;
/// Protocols one member may offer in a JoinGroup.
pub(crate) const PROTOCOLS_PER_MEMBER_MAX: usize = 64;

/// Time as the state machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Now {
    /// Monotonic milliseconds (sessions and rebalance deadlines).
    pub mono_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch (persisted timestamps).
    pub wall_ms: i64,
}

/// The state of a group; a group that does not exist is `Dead`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The Kafka name of the state.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A change the coordinator must persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GroupEvent {
    /// The group moved to a new generation.
    Metadata { group_id: String, value: GroupValue },
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    protocol_type: String,
    /// (name, metadata) in the member's preference order.
    protocols: Vec<(String, Bytes)>,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    assignment: Bytes,
    join_waiter: Option<JoinReply>,
    sync_waiter: Option<SyncReply>,
    /// Joined but not yet through a completed rebalance.
    is_new: bool,
    /// When the member is removed unless it heartbeats (for a new member: unless the
    /// rebalance completes).
    heartbeat_deadline_ms: u64,
}

impl Member {
    fn awaiting_join(&self) -> bool {
        self.join_waiter.is_some()
    }

    fn awaiting_sync(&self) -> bool {
        self.sync_waiter.is_some()
    }

    /// When the member expires, if it can: members waiting for a rebalance are kept alive
    /// by the rebalance (its own timeouts remove them), except new members.
    fn expiry_deadline_ms(&self) -> Option<u64> {
        if self.is_new || !(self.awaiting_join() || self.awaiting_sync()) {
            Some(self.heartbeat_deadline_ms)
        } else {
            None
        }
    }

    fn reset_heartbeat(&mut self, now: Now) {
        self.heartbeat_deadline_ms = now.mono_ms.saturating_add(self.session_timeout_ms);
    }

    fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    /// Answers a waiting JoinGroup; false if none was waiting.
    fn reply_join(&mut self, result: Result<JoinResponse>) -> bool {
        match self.join_waiter.take() {
            Some(waiter) => {
                // The requester may have gone away; nothing to do then.
                let _ = waiter.send(result);
                true
            }
            None => false,
        }
    }

    /// Answers a waiting SyncGroup; false if none was waiting.
    fn reply_sync(&mut self, result: Result<SyncResponse>) -> bool {
        match self.sync_waiter.take() {
            Some(waiter) => {
                let _ = waiter.send(result);
                true
            }
            None => false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct JoinTimer {
    deadline_ms: u64,
    /// Set for the first rebalance of an empty group, which waits for the initial delay
    /// (extended while new members keep arriving, up to the rebalance timeout).
    initial: Option<InitialDelay>,
}

#[derive(Clone, Copy, Debug)]
struct InitialDelay {
    delay_ms: u64,
    remaining_ms: u64,
}

struct Group {
    id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    /// In join order; the first remaining member becomes leader if the leader goes.
    members: IndexMap<String, Member>,
    /// group.instance.id → member id.
    static_members: HashMap<String, String>,
    /// Member ids handed out with `MemberIdRequired`, with their expiry deadline.
    pending_members: HashMap<String, u64>,
    /// Members that have not sent SyncGroup since the last completed join.
    pending_sync: HashSet<String>,
    /// Set while PreparingRebalance.
    join_timer: Option<JoinTimer>,
    /// Members that have not synced by this deadline are removed.
    sync_deadline_ms: Option<u64>,
    /// A member was added during the initial delay (extends the delay).
    new_member_added: bool,
    /// Wall-clock time the group became empty (offset expiry).
    empty_since_ms: Option<i64>,
    /// The generation or protocol changed and must be persisted.
    metadata_dirty: bool,
    /// The deadline under which the group sits in the timer set.
    scheduled_ms: Option<u64>,
}

impl Group {
    fn new(id: String, now: Now) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: IndexMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            pending_sync: HashSet::new(),
            join_timer: None,
            sync_deadline_ms: None,
            new_member_added: false,
            empty_since_ms: Some(now.wall_ms),
            metadata_dirty: false,
            scheduled_ms: None,
        }
    }

    fn metadata_value(&self) -> GroupValue {
        GroupValue {
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            empty_since_ms: if self.state == GroupState::Empty {
                self.empty_since_ms
            } else {
                None
            },
        }
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    fn is_static_member_fenced(&self, instance_id: Option<&str>, member_id: &str) -> bool {
        instance_id
            .and_then(|instance| self.static_members.get(instance))
            .is_some_and(|current| current != member_id)
    }

    fn num_awaiting_join(&self) -> usize {
        self.members.values().filter(|m| m.awaiting_join()).count()
    }

    fn has_all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(Member::awaiting_join)
    }

    fn rebalance_timeout_ms(&self) -> u64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0)
    }

    /// Kafka's check: an empty group takes any non-empty protocol list; otherwise the
    /// protocol type must match and one protocol must be supported by every member.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.state == GroupState::Empty {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| self.members.values().all(|m| m.supports(name)))
    }

    /// Whether a join by `member_id` fits under the group size limit (Kafka's rules: while
    /// preparing, awaiting members count, so that the last to rejoin are the ones refused).
    fn accepts_joining_member(&self, member_id: &str, max_size: usize) -> bool {
        match self.state {
            GroupState::Empty => true,
            GroupState::PreparingRebalance => {
                self.members
                    .get(member_id)
                    .is_some_and(Member::awaiting_join)
                    || self.num_awaiting_join() < max_size
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.members.contains_key(member_id) || self.members.len() < max_size
            }
        }
    }

    /// The protocol supported by every member that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| self.members.values().all(|m| m.supports(name)))
            .collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(&name.as_str()))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        // Ties go to the earliest candidate in the first member's preference order.
        let mut best: Option<(&str, usize)> = None;
        for candidate in candidates {
            let count = votes.get(candidate).copied().unwrap_or(0);
            if best.is_none_or(|(_, best_count)| count > best_count) {
                best = Some((candidate, count));
            }
        }
        best.map(|(name, _)| name.to_string())
    }

    fn current_member_metadata(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        self.members
            .values()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                metadata: m.metadata(protocol),
            })
            .collect()
    }

    /// The current generation as told to `member_id` (the leader also gets the members).
    fn join_response(&self, member_id: &str) -> JoinResponse {
        JoinResponse {
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if self.is_leader(member_id) {
                self.current_member_metadata()
            } else {
                Vec::new()
            },
        }
    }

    fn add_member(&mut self, member: Member) {
        if let Some(instance) = &member.instance_id {
            self.static_members
                .insert(instance.clone(), member.id.clone());
        }
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        self.pending_members.remove(&member.id);
        self.members.insert(member.id.clone(), member);
    }

    /// Removes a member without triggering anything (callers decide).
    fn remove(&mut self, member_id: &str) -> Option<Member> {
        let member = self.members.shift_remove(member_id)?;
        if let Some(instance) = &member.instance_id {
            if self
                .static_members
                .get(instance)
                .is_some_and(|id| id == member_id)
            {
                self.static_members.remove(instance);
            }
        }
        self.pending_sync.remove(member_id);
        if self.is_leader(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
        Some(member)
    }

    /// Removes a member (leave, session expiry) and moves the group on.
    fn remove_member_and_update(&mut self, member_id: &str, now: Now, settings: &GroupSettings) {
        if let Some(mut member) = self.remove(member_id) {
            // A new member may still be waiting in JoinGroup; it retries as a new member.
            member.reply_join(Err(CoreError::UnknownMemberId));
            member.reply_sync(Err(CoreError::UnknownMemberId));
        }
        match self.state {
            GroupState::Empty => {}
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(now, settings)
            }
            GroupState::PreparingRebalance => self.advance_join(now),
        }
    }

    fn maybe_prepare_rebalance(&mut self, now: Now, settings: &GroupSettings) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(now, settings);
        }
    }

    fn prepare_rebalance(&mut self, now: Now, settings: &GroupSettings) {
        if self.state == GroupState::CompletingRebalance {
            // Members waiting in SyncGroup must rejoin; their sessions were on hold while
            // they waited and restart now.
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                if member.reply_sync(Err(CoreError::RebalanceInProgress)) {
                    member.reset_heartbeat(now);
                }
            }
        }
        self.sync_deadline_ms = None;
        let rebalance_timeout_ms = self.rebalance_timeout_ms();
        self.join_timer = Some(if self.state == GroupState::Empty {
            let delay_ms = settings.initial_rebalance_delay_ms;
            JoinTimer {
                deadline_ms: now.mono_ms.saturating_add(delay_ms),
                initial: Some(InitialDelay {
                    delay_ms,
                    remaining_ms: rebalance_timeout_ms.saturating_sub(delay_ms),
                }),
            }
        } else {
            JoinTimer {
                deadline_ms: now.mono_ms.saturating_add(rebalance_timeout_ms),
                initial: None,
            }
        });
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            from = self.state.name(),
            members = self.members.len(),
            "preparing rebalance"
        );
        self.state = GroupState::PreparingRebalance;
        self.advance_join(now);
    }

    /// Completes the join phase if everyone has joined or the deadline passed.
    fn advance_join(&mut self, now: Now) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let Some(timer) = self.join_timer else {
            // PreparingRebalance always has a timer; complete rather than hang.
            self.complete_join(now);
            return;
        };
        match timer.initial {
            None => {
                if self.has_all_members_joined() || now.mono_ms >= timer.deadline_ms {
                    self.complete_join(now);
                }
            }
            Some(initial) => {
                if now.mono_ms < timer.deadline_ms {
                    return;
                }
                if self.new_member_added && initial.remaining_ms > 0 {
                    self.new_member_added = false;
                    let delay_ms = initial.delay_ms.min(initial.remaining_ms);
                    self.join_timer = Some(JoinTimer {
                        deadline_ms: now.mono_ms.saturating_add(delay_ms),
                        initial: Some(InitialDelay {
                            delay_ms: initial.delay_ms,
                            remaining_ms: initial.remaining_ms - delay_ms,
                        }),
                    });
                } else {
                    self.complete_join(now);
                }
            }
        }
    }

    fn complete_join(&mut self, now: Now) {
        let not_rejoined: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        if !not_rejoined.is_empty() {
            tracing::info!(group = %self.id, members = ?not_rejoined, "removing members that did not rejoin");
        }
        for member_id in &not_rejoined {
            if let Some(mut member) = self.remove(member_id) {
                member.reply_sync(Err(CoreError::UnknownMemberId));
            }
        }
        if !self.maybe_elect_new_joined_leader() && !self.members.is_empty() {
            // Only static members that have not rejoined are left: wait another round
            // for them to rejoin or for their sessions to expire.
            self.join_timer = Some(JoinTimer {
                deadline_ms: now.mono_ms.saturating_add(self.rebalance_timeout_ms()),
                initial: None,
            });
            return;
        }
        self.init_next_generation(now);
        if self.state == GroupState::Empty {
            tracing::info!(group = %self.id, generation = self.generation, "group is now empty");
            return;
        }
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            protocol = self.protocol_name.as_deref().unwrap_or_default(),
            members = self.members.len(),
            "rebalance completed; waiting for SyncGroup"
        );
        let leader_metadata = self.current_member_metadata();
        let leader = self.leader.clone().unwrap_or_default();
        for member in self.members.values_mut() {
            let response = JoinResponse {
                generation_id: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol_name: self.protocol_name.clone(),
                leader: leader.clone(),
                member_id: member.id.clone(),
                members: if member.id == leader {
                    leader_metadata.clone()
                } else {
                    Vec::new()
                },
            };
            member.reply_join(Ok(response));
            member.reset_heartbeat(now);
            member.is_new = false;
            self.pending_sync.insert(member.id.clone());
        }
        self.sync_deadline_ms = Some(now.mono_ms.saturating_add(self.rebalance_timeout_ms()));
    }

    /// Keeps the leader if it rejoined, else picks a member that did; false if none did.
    fn maybe_elect_new_joined_leader(&mut self) -> bool {
        let Some(leader) = &self.leader else {
            return false;
        };
        if self.members.get(leader).is_some_and(Member::awaiting_join) {
            return true;
        }
        match self.members.values().find(|m| m.awaiting_join()) {
            Some(member) => {
                tracing::info!(group = %self.id, old = %leader, new = %member.id, "leader did not rejoin; electing another");
                self.leader = Some(member.id.clone());
                true
            }
            None => false,
        }
    }

    fn init_next_generation(&mut self, now: Now) {
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.protocol_name = None;
            self.state = GroupState::Empty;
            self.empty_since_ms = Some(now.wall_ms);
        } else {
            self.protocol_name = self.select_protocol();
            self.state = GroupState::CompletingRebalance;
            self.empty_since_ms = None;
        }
        self.join_timer = None;
        self.new_member_added = false;
        self.pending_sync.clear();
        self.sync_deadline_ms = None;
        self.metadata_dirty = true;
    }

    fn add_member_and_rebalance(
        &mut self,
        member_id: String,
        request: JoinRequest,
        now: Now,
        reply: &mut Option<JoinReply>,
        settings: &GroupSettings,
    ) {
        let (session_timeout_ms, rebalance_timeout_ms) = member_timeouts(&request);
        let member = Member {
            id: member_id,
            instance_id: request.group_instance_id,
            client_id: request.client_id,
            client_host: request.client_host,
            protocol_type: request.protocol_type,
            protocols: request.protocols,
            session_timeout_ms,
            rebalance_timeout_ms,
            assignment: Bytes::new(),
            join_waiter: reply.take(),
            sync_waiter: None,
            is_new: true,
            heartbeat_deadline_ms: now.mono_ms.saturating_add(NEW_MEMBER_JOIN_TIMEOUT_MS),
        };
        if self.state == GroupState::PreparingRebalance && self.generation == 0 {
            self.new_member_added = true;
        }
        tracing::debug!(group = %self.id, member = %member.id, "member joins");
        self.add_member(member);
        self.maybe_prepare_rebalance(now, settings);
    }

    fn update_member_and_rebalance(
        &mut self,
        member_id: &str,
        request: JoinRequest,
        now: Now,
        reply: &mut Option<JoinReply>,
        settings: &GroupSettings,
    ) {
        if let Some(member) = self.members.get_mut(member_id) {
            (member.session_timeout_ms, member.rebalance_timeout_ms) = member_timeouts(&request);
            member.protocols = request.protocols;
            // A second JoinGroup replaces the first; the first must not hang.
            member.reply_join(Err(CoreError::RebalanceInProgress));
            member.join_waiter = reply.take();
        }
        self.maybe_prepare_rebalance(now, settings);
    }

    /// A static member rejoins without its member id: the new id replaces (and fences) the
    /// old one; a stable group whose protocol does not change skips the rebalance.
    fn update_static_member_and_rebalance(
        &mut self,
        old_id: &str,
        new_id: String,
        request: JoinRequest,
        now: Now,
        reply: &mut Option<JoinReply>,
        settings: &GroupSettings,
    ) -> Result<Option<JoinResponse>> {
        let current_leader = self.leader.clone();
        let Some(mut member) = self.members.shift_remove(old_id) else {
            return Err(CoreError::UnknownMemberId);
        };
        member.reply_join(Err(CoreError::FencedInstanceId));
        member.reply_sync(Err(CoreError::FencedInstanceId));
        tracing::info!(group = %self.id, old = %old_id, new = %new_id, "static member replaced");
        member.id = new_id.clone();
        if self.is_leader(old_id) {
            self.leader = Some(new_id.clone());
        }
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        if let Some(instance) = &member.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        (member.session_timeout_ms, member.rebalance_timeout_ms) = member_timeouts(&request);
        member.protocols = request.protocols;
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.reset_heartbeat(now);
        member.join_waiter = reply.take();
        self.members.insert(new_id.clone(), member);

        match self.state {
            GroupState::Stable => {
                if self.select_protocol() == self.protocol_name {
                    // The old leader id is returned so that the new member does not take
                    // itself for the leader and compute an assignment a stable group would
                    // never hand out.
                    let response = JoinResponse {
                        generation_id: self.generation,
                        protocol_type: self.protocol_type.clone(),
                        protocol_name: self.protocol_name.clone(),
                        leader: current_leader.unwrap_or_default(),
                        member_id: new_id.clone(),
                        members: Vec::new(),
                    };
                    if let Some(member) = self.members.get_mut(&new_id) {
                        member.reply_join(Ok(response));
                    }
                } else {
                    self.maybe_prepare_rebalance(now, settings);
                }
            }
            // The replaced member may have missed its JoinGroup answer: rebalance again.
            GroupState::CompletingRebalance => self.maybe_prepare_rebalance(now, settings),
            // The answer comes when the rebalance completes.
            GroupState::PreparingRebalance => {}
            // An empty group has no static member to replace.
            GroupState::Empty => self.maybe_prepare_rebalance(now, settings),
        }
        Ok(None)
    }

    fn new_member_join(
        &mut self,
        request: JoinRequest,
        now: Now,
        reply: &mut Option<JoinReply>,
        settings: &GroupSettings,
    ) -> Result<Option<JoinResponse>> {
        if !self.supports_protocols(&request.protocol_type, &request.protocols) {
            return Err(CoreError::InconsistentGroupProtocol);
        }
        let prefix = request
            .group_instance_id
            .as_deref()
            .unwrap_or(&request.client_id);
        let member_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
        if let Some(instance) = &request.group_instance_id {
            if let Some(old_id) = self.static_members.get(instance).cloned() {
                return self.update_static_member_and_rebalance(
                    &old_id, member_id, request, now, reply, settings,
                );
            }
            self.add_member_and_rebalance(member_id, request, now, reply, settings);
            return Ok(None);
        }
        if request.require_known_member_id {
            if self.pending_members.len() >= PENDING_MEMBERS_PER_GROUP_MAX {
                return Err(CoreError::GroupMaxSizeReached);
            }
            // The member must come back with this id; until then it holds up a rebalance
            // (so that it is part of it) for at most its session timeout.
            self.pending_members.insert(
                member_id.clone(),
                now.mono_ms.saturating_add(member_timeouts(&request).0),
            );
            return Err(CoreError::MemberIdRequired(member_id));
        }
        self.add_member_and_rebalance(member_id, request, now, reply, settings);
        Ok(None)
    }

    fn current_member_join(
        &mut self,
        request: JoinRequest,
        now: Now,
        reply: &mut Option<JoinReply>,
        settings: &GroupSettings,
    ) -> Result<Option<JoinResponse>> {
        let member_id = request.member_id.clone();
        if !self.supports_protocols(&request.protocol_type, &request.protocols) {
            return Err(CoreError::InconsistentGroupProtocol);
        }
        if self.pending_members.contains_key(&member_id) {
            if request.group_instance_id.is_some() {
                // Pending ids are only handed to dynamic members.
                return Err(CoreError::UnknownMemberId);
            }
            self.add_member_and_rebalance(member_id, request, now, reply, settings);
            return Ok(None);
        }
        if self.is_static_member_fenced(request.group_instance_id.as_deref(), &member_id) {
            return Err(CoreError::FencedInstanceId);
        }
        let instance_unknown = request
            .group_instance_id
            .as_ref()
            .is_some_and(|instance| !self.static_members.contains_key(instance));
        let Some(member) = self.members.get(&member_id) else {
            return Err(CoreError::UnknownMemberId);
        };
        if instance_unknown {
            return Err(CoreError::UnknownMemberId);
        }
        let unchanged = member.matches(&request.protocols);
        match self.state {
            GroupState::PreparingRebalance => {
                self.update_member_and_rebalance(&member_id, request, now, reply, settings);
                Ok(None)
            }
            GroupState::CompletingRebalance => {
                if unchanged {
                    // It probably missed the JoinGroup answer: repeat it.
                    Ok(Some(self.join_response(&member_id)))
                } else {
                    self.update_member_and_rebalance(&member_id, request, now, reply, settings);
                    Ok(None)
                }
            }
            GroupState::Stable => {
                // A leader's JoinGroup always rebalances (it has seen a change the
                // members' metadata does not show, such as new partitions).
                if self.is_leader(&member_id) || !unchanged {
                    self.update_member_and_rebalance(&member_id, request, now, reply, settings);
                    Ok(None)
                } else {
                    Ok(Some(self.join_response(&member_id)))
                }
            }
            GroupState::Empty => Err(CoreError::UnknownMemberId),
        }
    }

    fn propagate_assignment(&mut self, now: Now) {
        for member in self.members.values_mut() {
            let response = SyncResponse {
                protocol_type: self.protocol_type.clone(),
                protocol_name: self.protocol_name.clone(),
                assignment: member.assignment.clone(),
            };
            if member.reply_sync(Ok(response)) {
                // Sessions are not checked while a member waits; restart them now.
                member.reset_heartbeat(now);
            }
        }
    }

    fn remove_pending_sync(&mut self, member_id: &str) {
        self.pending_sync.remove(member_id);
        if self.pending_sync.is_empty() {
            self.sync_deadline_ms = None;
        }
    }

    /// Handles every deadline that has passed.
    fn on_timer(&mut self, now: Now, settings: &GroupSettings) {
        let expired_pending: Vec<String> = self
            .pending_members
            .iter()
            .filter(|(_, deadline)| **deadline <= now.mono_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for member_id in expired_pending {
            tracing::debug!(group = %self.id, member = %member_id, "pending member expired");
            self.pending_members.remove(&member_id);
        }

        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.expiry_deadline_ms()
                    .is_some_and(|deadline| deadline <= now.mono_ms)
            })
            .map(|m| m.id.clone())
            .collect();
        for member_id in expired {
            tracing::info!(group = %self.id, member = %member_id, "member session expired");
            self.remove_member_and_update(&member_id, now, settings);
        }

        if let Some(deadline) = self.sync_deadline_ms {
            if deadline <= now.mono_ms
                && matches!(
                    self.state,
                    GroupState::CompletingRebalance | GroupState::Stable
                )
            {
                self.sync_deadline_ms = None;
                if !self.pending_sync.is_empty() {
                    let late: Vec<String> = self.pending_sync.drain().collect();
                    tracing::info!(group = %self.id, members = ?late, "removing members that did not send SyncGroup in time");
                    for member_id in &late {
                        if let Some(mut member) = self.remove(member_id) {
                            member.reply_join(Err(CoreError::UnknownMemberId));
                            member.reply_sync(Err(CoreError::UnknownMemberId));
                        }
                    }
                    self.prepare_rebalance(now, settings);
                }
            }
        }

        self.advance_join(now);
    }

    /// The earliest deadline of the group, if any.
    fn next_deadline_ms(&self) -> Option<u64> {
        let members = self.members.values().filter_map(Member::expiry_deadline_ms);
        let pending = self.pending_members.values().copied();
        let join = self
            .join_timer
            .filter(|_| self.state == GroupState::PreparingRebalance)
            .map(|timer| timer.deadline_ms);
        let sync = self.sync_deadline_ms.filter(|_| {
            matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) && !self.pending_sync.is_empty()
        });
        members.chain(pending).chain(join).chain(sync).min()
    }

    /// Answers everything waiting with `CoordinatorNotAvailable` (shutdown).
    fn close(&mut self) {
        for member in self.members.values_mut() {
            member.reply_join(Err(CoreError::CoordinatorNotAvailable));
            member.reply_sync(Err(CoreError::CoordinatorNotAvailable));
        }
    }
}

/// (session, rebalance) timeouts of a validated JoinGroup, in ms.
fn member_timeouts(request: &JoinRequest) -> (u64, u64) {
    let session_timeout_ms = u64::try_from(request.session_timeout_ms).unwrap_or(0);
    // JoinGroup v0 has no rebalance timeout; Kafka then uses the session timeout.
    let rebalance_timeout_ms = match u64::try_from(request.rebalance_timeout_ms) {
        Ok(ms) if ms > 0 => ms,
        _ => session_timeout_ms,
    };
    (session_timeout_ms, rebalance_timeout_ms)
}

/// Every group of the coordinator.
pub(crate) struct GroupTable {
    settings: GroupSettings,
    /// Ordered so that periodic passes can walk the groups a slice at a time.
    groups: BTreeMap<String, Group>,
    /// (deadline, group id) of every group with a deadline.
    timers: BTreeSet<(u64, String)>,
    events: Vec<GroupEvent>,
}

impl GroupTable {
    /// An empty table.
    pub fn new(settings: GroupSettings) -> GroupTable {
        GroupTable {
            settings,
            groups: BTreeMap::new(),
            timers: BTreeSet::new(),
            events: Vec::new(),
        }
    }

    /// Brings back a group known from the offsets log: empty, with its last generation.
    pub fn restore(&mut self, group_id: &str, value: Option<&GroupValue>, now: Now) {
        let group = self
            .groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id.to_string(), now));
        if let Some(value) = value {
            group.protocol_type = value.protocol_type.clone();
            group.generation = value.generation;
            // A group that had members when the broker stopped became empty now.
            group.empty_since_ms = Some(value.empty_since_ms.unwrap_or(now.wall_ms));
        }
    }

    /// The persisted metadata of every group that uses membership (for snapshots).
    pub fn metadata_snapshot(&self) -> Vec<(String, GroupValue)> {
        self.groups
            .values()
            .filter(|g| g.protocol_type.is_some() || g.generation > 0)
            .map(|g| (g.id.clone(), g.metadata_value()))
            .collect()
    }

    /// Changes to persist since the last call.
    pub fn take_events(&mut self) -> Vec<GroupEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether the group exists.
    pub fn contains(&self, group_id: &str) -> bool {
        self.groups.contains_key(group_id)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// The state of a group (`None` = Dead).
    #[cfg(test)]
    pub fn state(&self, group_id: &str) -> Option<GroupState> {
        self.groups.get(group_id).map(|g| g.state)
    }

    /// JoinGroup. The answer goes to `reply`, now or when the rebalance completes.
    pub fn join(&mut self, request: JoinRequest, now: Now, reply: JoinReply) {
        let group_id = request.group_id.clone();
        self.answer_or_hold(&group_id, now, reply, |state, slot| {
            state.join_inner(request, now, slot)
        });
    }

    /// Runs an operation whose answer may have to wait (JoinGroup for the rebalance,
    /// SyncGroup for the leader's assignment): `op` takes the reply out of its slot to
    /// answer later; if it leaves it, its outcome is the answer now.
    fn answer_or_hold<T>(
        &mut self,
        group_id: &str,
        now: Now,
        reply: oneshot::Sender<Result<T>>,
        op: impl FnOnce(&mut Self, &mut Option<oneshot::Sender<Result<T>>>) -> Result<Option<T>>,
    ) {
        let mut slot = Some(reply);
        let outcome = op(self, &mut slot);
        if let Some(reply) = slot.take() {
            let answer =
                outcome.and_then(|response| response.ok_or(CoreError::CoordinatorNotAvailable));
            let _ = reply.send(answer);
        }
        self.after_op(group_id, now);
    }

    /// Creates the empty group `group_id` in `groups`, unless it holds [`GROUPS_MAX`]
    /// groups already. (Takes the map, not `self`: callers hold the settings borrowed.)
    fn create_group(groups: &mut BTreeMap<String, Group>, group_id: &str, now: Now) -> Result<()> {
        if groups.len() >= GROUPS_MAX {
            tracing::warn!(
                groups = GROUPS_MAX,
                "group limit reached; refusing a new group"
            );
            return Err(CoreError::CoordinatorNotAvailable);
        }
        groups.insert(group_id.to_string(), Group::new(group_id.to_string(), now));
        Ok(())
    }

    fn join_inner(
        &mut self,
        request: JoinRequest,
        now: Now,
        reply: &mut Option<JoinReply>,
    ) -> Result<Option<JoinResponse>> {
        let settings = &self.settings;
        if request.group_id.is_empty() {
            return Err(CoreError::InvalidGroupId);
        }
        if request.session_timeout_ms < settings.min_session_timeout_ms
            || request.session_timeout_ms > settings.max_session_timeout_ms
            || request.session_timeout_ms <= 0
        {
            return Err(CoreError::InvalidSessionTimeout);
        }
        if request.protocols.len() > PROTOCOLS_PER_MEMBER_MAX {
            return Err(CoreError::InconsistentGroupProtocol);
        }
        let is_new = request.member_id.is_empty();
        if !self.groups.contains_key(&request.group_id) {
            if !is_new {
                return Err(CoreError::UnknownMemberId);
            }
            Self::create_group(&mut self.groups, &request.group_id, now)?;
        }
        let Some(group) = self.groups.get_mut(&request.group_id) else {
            return Err(CoreError::CoordinatorNotAvailable);
        };
        if !group.accepts_joining_member(&request.member_id, settings.max_group_size) {
            if let Some(mut member) = group.remove(&request.member_id) {
                member.reply_join(Err(CoreError::GroupMaxSizeReached));
                member.reply_sync(Err(CoreError::GroupMaxSizeReached));
            }
            return Err(CoreError::GroupMaxSizeReached);
        }
        if is_new {
            group.new_member_join(request, now, reply, settings)
        } else {
            group.current_member_join(request, now, reply, settings)
        }
    }

    /// SyncGroup. The answer goes to `reply`, now or when the leader's assignment arrives.
    pub fn sync(&mut self, request: SyncRequest, now: Now, reply: SyncReply) {
        let group_id = request.group_id.clone();
        self.answer_or_hold(&group_id, now, reply, |state, slot| {
            state.sync_inner(request, now, slot)
        });
    }

    fn sync_inner(
        &mut self,
        request: SyncRequest,
        now: Now,
        reply: &mut Option<SyncReply>,
    ) -> Result<Option<SyncResponse>> {
        if request.group_id.is_empty() {
            return Err(CoreError::InvalidGroupId);
        }
        let Some(group) = self.groups.get_mut(&request.group_id) else {
            return Err(CoreError::UnknownMemberId);
        };
        if group.is_static_member_fenced(request.group_instance_id.as_deref(), &request.member_id) {
            return Err(CoreError::FencedInstanceId);
        }
        if !group.members.contains_key(&request.member_id) {
            return Err(CoreError::UnknownMemberId);
        }
        if request.generation_id != group.generation {
            return Err(CoreError::IllegalGeneration);
        }
        if request
            .protocol_type
            .as_ref()
            .is_some_and(|pt| group.protocol_type.as_ref() != Some(pt))
            || request
                .protocol_name
                .as_ref()
                .is_some_and(|name| group.protocol_name.as_ref() != Some(name))
        {
            return Err(CoreError::InconsistentGroupProtocol);
        }
        match group.state {
            GroupState::Empty => Err(CoreError::UnknownMemberId),
            GroupState::PreparingRebalance => Err(CoreError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                if let Some(member) = group.members.get_mut(&request.member_id) {
                    member.reply_sync(Err(CoreError::RebalanceInProgress));
                    member.sync_waiter = reply.take();
                }
                group.remove_pending_sync(&request.member_id);
                if group.is_leader(&request.member_id) {
                    let mut assignments: HashMap<String, Bytes> =
                        request.assignments.into_iter().collect();
                    for member in group.members.values_mut() {
                        // A member left out by the leader gets an empty assignment.
                        member.assignment = assignments.remove(&member.id).unwrap_or_default();
                    }
                    group.state = GroupState::Stable;
                    group.propagate_assignment(now);
                    tracing::info!(group = %group.id, generation = group.generation, "group is stable");
                }
                Ok(None)
            }
            GroupState::Stable => {
                group.remove_pending_sync(&request.member_id);
                let Some(member) = group.members.get_mut(&request.member_id) else {
                    return Err(CoreError::UnknownMemberId);
                };
                member.reset_heartbeat(now);
                Ok(Some(SyncResponse {
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol_name.clone(),
                    assignment: member.assignment.clone(),
                }))
            }
        }
    }

    /// Heartbeat. `RebalanceInProgress` tells the member to rejoin.
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        now: Now,
    ) -> Result<()> {
        if group_id.is_empty() {
            return Err(CoreError::InvalidGroupId);
        }
        let Some(group) = self.groups.get_mut(group_id) else {
            return Err(CoreError::UnknownMemberId);
        };
        if group.is_static_member_fenced(group_instance_id, member_id) {
            return Err(CoreError::FencedInstanceId);
        }
        let state = group.state;
        let generation = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return Err(CoreError::UnknownMemberId);
        };
        if generation_id != generation {
            return Err(CoreError::IllegalGeneration);
        }
        match state {
            GroupState::Empty => Err(CoreError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.reset_heartbeat(now);
                Ok(())
            }
            GroupState::PreparingRebalance => {
                member.reset_heartbeat(now);
                Err(CoreError::RebalanceInProgress)
            }
        }
        // Heartbeats only push deadlines later: the timer set needs no update.
    }

    /// LeaveGroup for (member id, group instance id) pairs; an empty member id with an
    /// instance id removes that static member (admin tools).
    pub fn leave(
        &mut self,
        group_id: &str,
        members: Vec<(String, Option<String>)>,
        now: Now,
    ) -> Result<Vec<(String, Result<()>)>> {
        if group_id.is_empty() {
            return Err(CoreError::InvalidGroupId);
        }
        let settings = &self.settings;
        let Some(group) = self.groups.get_mut(group_id) else {
            return Ok(members
                .into_iter()
                .map(|(member_id, _)| (member_id, Err(CoreError::UnknownMemberId)))
                .collect());
        };
        let mut results = Vec::with_capacity(members.len());
        for (member_id, instance_id) in members {
            let result = if member_id.is_empty() {
                match instance_id
                    .as_ref()
                    .and_then(|i| group.static_members.get(i))
                    .cloned()
                {
                    Some(current) => {
                        tracing::info!(group = %group.id, member = %current, "static member removed by LeaveGroup");
                        group.remove_member_and_update(&current, now, settings);
                        Ok(())
                    }
                    None => Err(CoreError::UnknownMemberId),
                }
            } else if group.pending_members.remove(&member_id).is_some() {
                group.advance_join(now);
                Ok(())
            } else if group.is_static_member_fenced(instance_id.as_deref(), &member_id) {
                Err(CoreError::FencedInstanceId)
            } else if group.members.contains_key(&member_id) {
                tracing::info!(group = %group.id, member = %member_id, "member leaves");
                group.remove_member_and_update(&member_id, now, settings);
                Ok(())
            } else {
                Err(CoreError::UnknownMemberId)
            };
            results.push((member_id, result));
        }
        self.after_op(group_id, now);
        Ok(results)
    }

    /// Checks that an OffsetCommit may proceed. Generation -1 with no member id commits
    /// without membership (creating the group if needed), allowed only when the group
    /// has no members.
    pub fn validate_commit(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        now: Now,
    ) -> Result<()> {
        if !self.groups.contains_key(group_id) {
            if generation_id >= 0 {
                // A member of a generation the coordinator never saw.
                return Err(CoreError::IllegalGeneration);
            }
            Self::create_group(&mut self.groups, group_id, now)?;
        }
        let Some(group) = self.groups.get_mut(group_id) else {
            return Err(CoreError::CoordinatorNotAvailable);
        };
        if generation_id >= 0 || !member_id.is_empty() || group_instance_id.is_some() {
            if group.is_static_member_fenced(group_instance_id, member_id) {
                return Err(CoreError::FencedInstanceId);
            }
            if !group.members.contains_key(member_id) {
                return Err(CoreError::UnknownMemberId);
            }
            if generation_id != group.generation {
                return Err(CoreError::IllegalGeneration);
            }
        } else if group.state != GroupState::Empty {
            // Only members commit for a group that has members.
            return Err(CoreError::UnknownMemberId);
        }
        match group.state {
            GroupState::Empty => Ok(()),
            // Commits go on during a rebalance; the heartbeat tells the member to rejoin.
            GroupState::Stable | GroupState::PreparingRebalance => {
                if let Some(member) = group.members.get_mut(member_id) {
                    member.reset_heartbeat(now);
                }
                Ok(())
            }
            GroupState::CompletingRebalance => Err(CoreError::RebalanceInProgress),
        }
    }

    /// Every group with its state.
    pub fn list(&self) -> Vec<GroupListing> {
        self.groups
            .values()
            .map(|g| GroupListing {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state.name(),
            })
            .collect()
    }

    /// DescribeGroups: member metadata and assignments are shown for stable groups only
    /// (as Kafka does); an unknown group is `Dead`.
    pub fn describe(&self, group_id: &str) -> GroupDescription {
        let Some(group) = self.groups.get(group_id) else {
            return GroupDescription {
                group_id: group_id.to_string(),
                state: "Dead",
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            };
        };
        let stable = group.state == GroupState::Stable;
        let protocol = if stable {
            group.protocol_name.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let members = group
            .members
            .values()
            .map(|m| MemberDescription {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable {
                    m.metadata(&protocol)
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect();
        GroupDescription {
            group_id: group_id.to_string(),
            state: group.state.name(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol,
            members,
        }
    }

    /// DeleteGroups precondition: the group exists and is empty.
    pub fn check_deletable(&self, group_id: &str) -> Result<()> {
        match self.groups.get(group_id) {
            None => Err(CoreError::GroupIdNotFound),
            Some(group) if group.state != GroupState::Empty => Err(CoreError::NonEmptyGroup),
            Some(_) => Ok(()),
        }
    }

    /// Forgets a group.
    pub fn remove_group(&mut self, group_id: &str) {
        if let Some(mut group) = self.groups.remove(group_id) {
            group.close();
            if let Some(deadline) = group.scheduled_ms {
                self.timers.remove(&(deadline, group_id.to_string()));
            }
        }
    }

    /// How the group's committed offsets expire.
    pub fn expiry_base(&self, group_id: &str, now: Now) -> ExpiryBase {
        match self.groups.get(group_id) {
            None => ExpiryBase::CommitTime,
            Some(group) if group.state != GroupState::Empty => ExpiryBase::Never,
            Some(group) if group.protocol_type.is_none() => ExpiryBase::CommitTime,
            Some(group) => ExpiryBase::EmptySince(group.empty_since_ms.unwrap_or(now.wall_ms)),
        }
    }

    /// Whether the group is empty with nobody about to join (it may be forgotten once
    /// it has no committed offsets either).
    pub fn is_idle(&self, group_id: &str) -> bool {
        self.groups
            .get(group_id)
            .is_some_and(|g| g.state == GroupState::Empty && g.pending_members.is_empty())
    }

    /// Up to `limit` group ids after `after` (all from the start when `None`), in order.
    pub fn group_ids_after(&self, after: Option<&str>, limit: usize) -> Vec<String> {
        let range = match after {
            Some(after) => self
                .groups
                .range::<str, _>((Bound::Excluded(after), Bound::Unbounded)),
            None => self.groups.range::<str, _>(..),
        };
        range.take(limit).map(|(id, _)| id.clone()).collect()
    }

    /// Handles the deadlines that have passed, for at most `groups_max` groups. Returns
    /// whether more are due.
    pub fn tick(&mut self, now: Now, groups_max: usize) -> bool {
        for _ in 0..groups_max {
            let Some((deadline, group_id)) = self.timers.first().cloned() else {
                return false;
            };
            if deadline > now.mono_ms {
                return false;
            }
            self.timers.remove(&(deadline, group_id.clone()));
            let settings = &self.settings;
            if let Some(group) = self.groups.get_mut(&group_id) {
                group.scheduled_ms = None;
                group.on_timer(now, settings);
            }
            self.after_op(&group_id, now);
        }
        self.next_deadline_ms()
            .is_some_and(|deadline| deadline <= now.mono_ms)
    }

    /// The earliest deadline of any group.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.first().map(|(deadline, _)| *deadline)
    }

    /// Answers everything waiting with `CoordinatorNotAvailable` (shutdown).
    pub fn close(&mut self) {
        for group in self.groups.values_mut() {
            group.close();
        }
    }

    /// After any change to a group: finish a rebalance that can finish, collect what to
    /// persist and re-file the group's deadline.
    fn after_op(&mut self, group_id: &str, now: Now) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        group.advance_join(now);
        if group.metadata_dirty {
            group.metadata_dirty = false;
            self.events.push(GroupEvent::Metadata {
                group_id: group_id.to_string(),
                value: group.metadata_value(),
            });
        }
        let next = group.next_deadline_ms();
        if next != group.scheduled_ms {
            if let Some(old) = group.scheduled_ms {
                self.timers.remove(&(old, group_id.to_string()));
            }
            if let Some(new) = next {
                self.timers.insert((new, group_id.to_string()));
            }
            group.scheduled_ms = next;
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
