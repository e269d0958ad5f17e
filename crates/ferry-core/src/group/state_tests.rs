//! Tests of the membership state machine: no runtime, no storage, time passed in.

use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::oneshot::Receiver;

use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 20_000;

fn settings() -> GroupSettings {
    GroupSettings {
        min_session_timeout_ms: 1_000,
        max_session_timeout_ms: 60_000,
        initial_rebalance_delay_ms: 0,
        max_group_size: 3,
        offsets_retention_ms: 1_000,
    }
}

fn at(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        wall_ms: 1_700_000_000_000 + ms as i64,
    }
}

fn request(group: &str, member_id: &str, protocols: &[(&str, &str)]) -> JoinRequest {
    JoinRequest {
        group_id: group.to_string(),
        member_id: member_id.to_string(),
        group_instance_id: None,
        protocol_type: "consumer".to_string(),
        protocols: protocols
            .iter()
            .map(|(name, metadata)| (name.to_string(), Bytes::from(metadata.to_string())))
            .collect(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        require_known_member_id: true,
        client_id: "client".to_string(),
        client_host: "/127.0.0.1".to_string(),
    }
}

const RANGE: &[(&str, &str)] = &[("range", "meta")];

fn join(table: &mut GroupTable, request: JoinRequest, now: Now) -> Receiver<Result<JoinResponse>> {
    let (reply, answer) = oneshot::channel();
    table.join(request, now, reply);
    answer
}

fn sync(
    table: &mut GroupTable,
    group: &str,
    generation: i32,
    member: &str,
    assignments: &[(&str, &str)],
    now: Now,
) -> Receiver<Result<SyncResponse>> {
    let (reply, answer) = oneshot::channel();
    let request = SyncRequest {
        group_id: group.to_string(),
        generation_id: generation,
        member_id: member.to_string(),
        group_instance_id: None,
        protocol_type: Some("consumer".to_string()),
        protocol_name: None,
        assignments: assignments
            .iter()
            .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
            .collect(),
    };
    table.sync(request, now, reply);
    answer
}

/// The answer if there is one yet.
fn answered<T>(answer: &mut Receiver<Result<T>>) -> Option<Result<T>> {
    match answer.try_recv() {
        Ok(result) => Some(result),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Closed) => panic!("the waiter was dropped without an answer"),
    }
}

fn ok<T: std::fmt::Debug>(answer: &mut Receiver<Result<T>>) -> T {
    match answered(answer) {
        Some(Ok(value)) => value,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn err<T: std::fmt::Debug>(answer: &mut Receiver<Result<T>>) -> CoreError {
    match answered(answer) {
        Some(Err(error)) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// MEMBER_ID_REQUIRED round: returns the id handed out.
fn member_id(table: &mut GroupTable, group: &str, now: Now) -> String {
    match err(&mut join(table, request(group, "", RANGE), now)) {
        CoreError::MemberIdRequired(id) => id,
        other => panic!("expected MemberIdRequired, got {other:?}"),
    }
}

/// A group "g" with members a (leader) and b, stable at generation 2; returns (a, b, now).
fn stable_pair(table: &mut GroupTable) -> (String, String, u64) {
    let a = member_id(table, "g", at(0));
    let joined = ok(&mut join(table, request("g", &a, RANGE), at(0)));
    assert_eq!(
        (joined.generation_id, joined.leader.as_str()),
        (1, a.as_str())
    );
    ok(&mut sync(table, "g", 1, &a, &[(&a, "A1")], at(0)));

    let b = member_id(table, "g", at(100));
    let mut b_join = join(table, request("g", &b, RANGE), at(100));
    assert!(answered(&mut b_join).is_none(), "b waits for the rebalance");
    assert!(matches!(
        table.heartbeat("g", 1, &a, None, at(200)),
        Err(CoreError::RebalanceInProgress)
    ));
    let a_joined = ok(&mut join(table, request("g", &a, RANGE), at(300)));
    let b_joined = ok(&mut b_join);
    assert_eq!(a_joined.generation_id, 2);
    assert_eq!(b_joined.generation_id, 2);
    assert_eq!(a_joined.leader, a, "the leader that rejoined stays leader");
    assert_eq!(b_joined.leader, a);
    assert_eq!(a_joined.members.len(), 2, "the leader gets every member");
    assert!(b_joined.members.is_empty(), "followers get no member list");
    assert_eq!(a_joined.protocol_name.as_deref(), Some("range"));

    let mut b_sync = sync(table, "g", 2, &b, &[], at(400));
    assert!(
        answered(&mut b_sync).is_none(),
        "followers wait for the leader"
    );
    let a_assignment = ok(&mut sync(
        table,
        "g",
        2,
        &a,
        &[(&a, "A2"), (&b, "B2")],
        at(500),
    ));
    assert_eq!(a_assignment.assignment, Bytes::from("A2"));
    assert_eq!(ok(&mut b_sync).assignment, Bytes::from("B2"));
    assert_eq!(table.state("g"), Some(GroupState::Stable));
    (a, b, 500)
}

#[test]
fn member_id_required_then_join_completes_first_generation() {
    let mut table = GroupTable::new(settings());
    let id = member_id(&mut table, "g", at(0));
    assert!(
        id.starts_with("client-"),
        "member id is <client_id>-<uuid>: {id}"
    );
    assert_eq!(table.state("g"), Some(GroupState::Empty));

    let joined = ok(&mut join(&mut table, request("g", &id, RANGE), at(10)));
    assert_eq!(joined.generation_id, 1);
    assert_eq!(joined.member_id, id);
    assert_eq!(joined.leader, id);
    assert_eq!(joined.protocol_type.as_deref(), Some("consumer"));
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.members[0].metadata, Bytes::from("meta"));
    assert_eq!(table.state("g"), Some(GroupState::CompletingRebalance));

    let events = table.take_events();
    assert_eq!(
        events,
        vec![GroupEvent::Metadata {
            group_id: "g".into(),
            value: GroupValue {
                protocol_type: Some("consumer".into()),
                generation: 1,
                empty_since_ms: None
            }
        }]
    );
}

#[test]
fn join_errors() {
    let mut table = GroupTable::new(settings());
    assert!(matches!(
        err(&mut join(&mut table, request("g", "nobody", RANGE), at(0))),
        CoreError::UnknownMemberId
    ));
    assert!(matches!(
        err(&mut join(&mut table, request("", "", RANGE), at(0))),
        CoreError::InvalidGroupId
    ));
    let mut short = request("g", "", RANGE);
    short.session_timeout_ms = 10;
    assert!(matches!(
        err(&mut join(&mut table, short, at(0))),
        CoreError::InvalidSessionTimeout
    ));
    let mut long = request("g", "", RANGE);
    long.session_timeout_ms = 600_000;
    assert!(matches!(
        err(&mut join(&mut table, long, at(0))),
        CoreError::InvalidSessionTimeout
    ));
    assert!(matches!(
        err(&mut join(&mut table, request("g", "", &[]), at(0))),
        CoreError::InconsistentGroupProtocol
    ));

    let (_a, _b, now) = stable_pair(&mut table);
    assert!(matches!(
        err(&mut join(
            &mut table,
            request("g", "made-up", RANGE),
            at(now)
        )),
        CoreError::UnknownMemberId
    ));
    assert!(matches!(
        err(&mut join(
            &mut table,
            request("g", "", &[("roundrobin", "")]),
            at(now)
        )),
        CoreError::InconsistentGroupProtocol
    ));
    let mut other_type = request("g", "", RANGE);
    other_type.protocol_type = "connect".into();
    assert!(matches!(
        err(&mut join(&mut table, other_type, at(now))),
        CoreError::InconsistentGroupProtocol
    ));
}

#[test]
fn two_members_join_and_sync() {
    let mut table = GroupTable::new(settings());
    let (a, b, now) = stable_pair(&mut table);
    assert!(table.heartbeat("g", 2, &a, None, at(now + 1)).is_ok());
    assert!(table.heartbeat("g", 2, &b, None, at(now + 1)).is_ok());
    assert!(matches!(
        table.heartbeat("g", 1, &b, None, at(now + 1)),
        Err(CoreError::IllegalGeneration)
    ));
    assert!(matches!(
        table.heartbeat("g", 2, "ghost", None, at(now + 1)),
        Err(CoreError::UnknownMemberId)
    ));
    assert!(matches!(
        table.heartbeat("nope", 2, &a, None, at(now + 1)),
        Err(CoreError::UnknownMemberId)
    ));

    let described = table.describe("g");
    assert_eq!(described.state, "Stable");
    assert_eq!(described.protocol, "range");
    assert_eq!(described.members.len(), 2);
    let b_description = described
        .members
        .iter()
        .find(|m| m.member_id == b)
        .expect("b described");
    assert_eq!(b_description.assignment, Bytes::from("B2"));
    assert_eq!(b_description.client_host, "/127.0.0.1");
    assert_eq!(b_description.metadata, Bytes::from("meta"));

    // A follower that syncs again in a stable group gets its assignment back at once.
    assert_eq!(
        ok(&mut sync(&mut table, "g", 2, &b, &[], at(now + 2))).assignment,
        Bytes::from("B2")
    );
    // A follower rejoining with unchanged metadata gets the current generation back.
    let rejoined = ok(&mut join(&mut table, request("g", &b, RANGE), at(now + 3)));
    assert_eq!(rejoined.generation_id, 2);
    assert_eq!(table.state("g"), Some(GroupState::Stable));
}

#[test]
fn sync_errors_and_empty_assignment() {
    let mut table = GroupTable::new(settings());
    let (a, b, now) = stable_pair(&mut table);
    assert!(matches!(
        err(&mut sync(&mut table, "g", 1, &a, &[], at(now))),
        CoreError::IllegalGeneration
    ));
    assert!(matches!(
        err(&mut sync(&mut table, "g", 2, "ghost", &[], at(now))),
        CoreError::UnknownMemberId
    ));
    assert!(matches!(
        err(&mut sync(&mut table, "nope", 2, &a, &[], at(now))),
        CoreError::UnknownMemberId
    ));

    // The leader rejoins: the group prepares a rebalance and SyncGroup is refused.
    let mut a_join = join(&mut table, request("g", &a, RANGE), at(now + 10));
    assert_eq!(table.state("g"), Some(GroupState::PreparingRebalance));
    assert!(matches!(
        err(&mut sync(&mut table, "g", 2, &b, &[], at(now + 11))),
        CoreError::RebalanceInProgress
    ));
    let b_joined = ok(&mut join(&mut table, request("g", &b, RANGE), at(now + 12)));
    assert_eq!(ok(&mut a_join).generation_id, 3);
    assert_eq!(b_joined.generation_id, 3);

    // The leader gives b nothing: legal, b gets an empty assignment.
    let mut b_sync = sync(&mut table, "g", 3, &b, &[], at(now + 13));
    ok(&mut sync(
        &mut table,
        "g",
        3,
        &a,
        &[(&a, "everything")],
        at(now + 14),
    ));
    assert!(ok(&mut b_sync).assignment.is_empty());
}

#[test]
fn members_that_do_not_rejoin_are_removed_at_the_rebalance_timeout() {
    let mut table = GroupTable::new(settings());
    let (a, b, now) = stable_pair(&mut table);
    let c = member_id(&mut table, "g", at(now));
    let mut c_join = join(&mut table, request("g", &c, RANGE), at(now));
    let mut a_join = join(&mut table, request("g", &a, RANGE), at(now + 1_000));
    // b keeps heartbeating (a slow consumer) but never rejoins.
    for t in [5_000, 10_000, 15_000] {
        assert!(matches!(
            table.heartbeat("g", 2, &b, None, at(now + t)),
            Err(CoreError::RebalanceInProgress)
        ));
        assert!(!table.tick(at(now + t), 100));
        assert!(answered(&mut a_join).is_none());
    }
    assert_eq!(table.next_deadline_ms(), Some(now + REBALANCE_MS as u64));
    table.tick(at(now + REBALANCE_MS as u64), 100);
    let a_joined = ok(&mut a_join);
    let c_joined = ok(&mut c_join);
    assert_eq!(a_joined.generation_id, 3);
    assert_eq!(c_joined.generation_id, 3);
    let ids: Vec<&str> = a_joined
        .members
        .iter()
        .map(|m| m.member_id.as_str())
        .collect();
    assert_eq!(ids, vec![a.as_str(), c.as_str()]);
    assert!(matches!(
        table.heartbeat("g", 3, &b, None, at(now + 21_000)),
        Err(CoreError::UnknownMemberId)
    ));
}

#[test]
fn session_expiry_evicts_and_rebalances() {
    let mut table = GroupTable::new(settings());
    let (a, b, now) = stable_pair(&mut table);
    // a heartbeats, b falls silent.
    let mut t = now;
    while t < now + SESSION_MS as u64 - 1_000 {
        t += 3_000;
        assert!(table.heartbeat("g", 2, &a, None, at(t)).is_ok());
        table.tick(at(t), 100);
    }
    assert_eq!(
        table.state("g"),
        Some(GroupState::Stable),
        "b is still within its session"
    );
    let expiry = now + SESSION_MS as u64;
    table.tick(at(expiry), 100);
    assert_eq!(table.state("g"), Some(GroupState::PreparingRebalance));
    assert!(matches!(
        table.heartbeat("g", 2, &b, None, at(expiry + 1)),
        Err(CoreError::UnknownMemberId)
    ));
    assert!(matches!(
        table.heartbeat("g", 2, &a, None, at(expiry + 1)),
        Err(CoreError::RebalanceInProgress)
    ));
    let rejoined = ok(&mut join(
        &mut table,
        request("g", &a, RANGE),
        at(expiry + 2),
    ));
    assert_eq!(rejoined.generation_id, 3);
    assert_eq!(rejoined.members.len(), 1);
}

#[test]
fn leader_leaving_triggers_rebalance_and_a_new_leader() {
    let mut table = GroupTable::new(settings());
    let (a, b, now) = stable_pair(&mut table);
    let results = table
        .leave(
            "g",
            vec![(a.clone(), None), ("ghost".into(), None)],
            at(now),
        )
        .expect("leave");
    assert!(results[0].1.is_ok());
    assert!(matches!(results[1].1, Err(CoreError::UnknownMemberId)));
    assert_eq!(table.state("g"), Some(GroupState::PreparingRebalance));
    let joined = ok(&mut join(&mut table, request("g", &b, RANGE), at(now + 1)));
    assert_eq!(joined.generation_id, 3);
    assert_eq!(joined.leader, b);

    // The last member leaving empties the group (and bumps the generation, as Kafka does).
    table.take_events();
    table
        .leave("g", vec![(b.clone(), None)], at(now + 2))
        .expect("leave");
    assert_eq!(table.state("g"), Some(GroupState::Empty));
    let events = table.take_events();
    assert!(matches!(
        &events[..],
        [GroupEvent::Metadata {
            value: GroupValue {
                generation: 4,
                empty_since_ms: Some(_),
                ..
            },
            ..
        }]
    ));
    let unknown = table
        .leave("other", vec![("x".into(), None)], at(now))
        .expect("leave");
    assert!(matches!(unknown[0].1, Err(CoreError::UnknownMemberId)));
}

#[test]
fn leader_that_does_not_sync_is_removed_after_the_rebalance_timeout() {
    let mut table = GroupTable::new(settings());
    let (a, b, now) = stable_pair(&mut table);
    let mut a_join = join(&mut table, request("g", &a, RANGE), at(now));
    ok(&mut join(&mut table, request("g", &b, RANGE), at(now)));
    assert_eq!(ok(&mut a_join).generation_id, 3);
    let mut b_sync = sync(&mut table, "g", 3, &b, &[], at(now + 1));
    // The leader heartbeats (so its session holds) but never sends SyncGroup.
    let mut t = now;
    while t + 3_000 < now + REBALANCE_MS as u64 {
        t += 3_000;
        assert!(table.heartbeat("g", 3, &a, None, at(t)).is_ok());
        table.tick(at(t), 100);
    }
    table.tick(at(now + REBALANCE_MS as u64 - 1), 100);
    assert!(answered(&mut b_sync).is_none());
    table.tick(at(now + REBALANCE_MS as u64), 100);
    // The leader is gone; b is told to rejoin and becomes leader.
    assert!(matches!(err(&mut b_sync), CoreError::RebalanceInProgress));
    let joined = ok(&mut join(
        &mut table,
        request("g", &b, RANGE),
        at(now + 20_001),
    ));
    assert_eq!(
        (joined.generation_id, joined.leader.as_str()),
        (4, b.as_str())
    );
}

#[test]
fn pending_member_holds_the_rebalance_until_it_expires() {
    let mut table = GroupTable::new(settings());
    let (a, b, now) = stable_pair(&mut table);
    let _pending = member_id(&mut table, "g", at(now));
    let mut a_join = join(&mut table, request("g", &a, RANGE), at(now));
    let mut b_join = join(&mut table, request("g", &b, RANGE), at(now));
    assert!(
        answered(&mut b_join).is_none(),
        "the pending member may still join this rebalance"
    );
    table.tick(at(now + SESSION_MS as u64 - 1), 100);
    assert!(answered(&mut a_join).is_none());
    table.tick(at(now + SESSION_MS as u64), 100);
    assert_eq!(ok(&mut a_join).generation_id, 3);
    assert_eq!(ok(&mut b_join).generation_id, 3);
}

#[test]
fn protocol_chosen_by_votes_among_common_protocols() {
    let mut table = GroupTable::new(settings());
    let both = &[("range", "r"), ("roundrobin", "rr")][..];
    let prefers_rr = &[("roundrobin", "rr"), ("range", "r")][..];
    let a = member_id(&mut table, "g", at(0));
    ok(&mut join(&mut table, request("g", &a, both), at(0)));
    let b = member_id(&mut table, "g", at(0));
    let c = member_id(&mut table, "g", at(0));
    let mut b_join = join(&mut table, request("g", &b, prefers_rr), at(1));
    let mut c_join = join(
        &mut table,
        request("g", &c, &[("roundrobin", "c"), ("sticky", "s")]),
        at(1),
    );
    let a_joined = ok(&mut join(&mut table, request("g", &a, both), at(2)));
    assert_eq!(
        a_joined.protocol_name.as_deref(),
        Some("roundrobin"),
        "2 votes to 1"
    );
    let metadata: Vec<Bytes> = a_joined
        .members
        .iter()
        .map(|m| m.metadata.clone())
        .collect();
    assert_eq!(
        metadata,
        vec![Bytes::from("rr"), Bytes::from("rr"), Bytes::from("c")]
    );
    ok(&mut b_join);
    ok(&mut c_join);
}

#[test]
fn group_size_is_bounded() {
    let mut table = GroupTable::new(settings());
    let (a, b, now) = stable_pair(&mut table);
    let c = member_id(&mut table, "g", at(now));
    let mut c_join = join(&mut table, request("g", &c, RANGE), at(now));
    let mut a_join = join(&mut table, request("g", &a, RANGE), at(now));
    ok(&mut join(&mut table, request("g", &b, RANGE), at(now)));
    ok(&mut a_join);
    ok(&mut c_join);
    assert!(matches!(
        err(&mut join(&mut table, request("g", "", RANGE), at(now + 1))),
        CoreError::GroupMaxSizeReached
    ));
}

#[test]
fn static_member_rejoin_replaces_and_fences_without_rebalance() {
    let mut table = GroupTable::new(settings());
    let mut first = request("g", "", RANGE);
    first.group_instance_id = Some("host-1".into());
    // Static members skip MEMBER_ID_REQUIRED.
    let joined = ok(&mut join(&mut table, first.clone(), at(0)));
    let old = joined.member_id.clone();
    assert!(old.starts_with("host-1-"));
    ok(&mut sync(
        &mut table,
        "g",
        1,
        &old,
        &[(&old, "mine")],
        at(1),
    ));
    table.take_events();

    // The same instance restarts and joins without its member id.
    let rejoined = ok(&mut join(&mut table, first, at(1_000)));
    assert_ne!(rejoined.member_id, old);
    assert_eq!(rejoined.generation_id, 1, "no rebalance");
    assert_eq!(
        rejoined.leader, old,
        "the old leader id keeps the new member from assigning"
    );
    assert_eq!(table.state("g"), Some(GroupState::Stable));
    assert!(table.take_events().is_empty());
    assert!(matches!(
        table.heartbeat("g", 1, &old, Some("host-1"), at(1_001)),
        Err(CoreError::FencedInstanceId)
    ));
    assert!(table
        .heartbeat("g", 1, &rejoined.member_id, Some("host-1"), at(1_001))
        .is_ok());
    let (reply, mut answer) = oneshot::channel();
    table.sync(
        SyncRequest {
            group_id: "g".into(),
            generation_id: 1,
            member_id: rejoined.member_id.clone(),
            group_instance_id: Some("host-1".into()),
            protocol_type: None,
            protocol_name: None,
            assignments: Vec::new(),
        },
        at(1_002),
        reply,
    );
    assert_eq!(ok(&mut answer).assignment, Bytes::from("mine"));

    // Admin removal by instance id.
    let results = table
        .leave("g", vec![(String::new(), Some("host-1".into()))], at(2_000))
        .expect("leave");
    assert!(results[0].1.is_ok());
    assert_eq!(table.state("g"), Some(GroupState::Empty));
}

#[test]
fn initial_rebalance_delay_waits_for_members_to_arrive() {
    let mut settings = settings();
    settings.initial_rebalance_delay_ms = 3_000;
    let mut table = GroupTable::new(settings);
    let a = member_id(&mut table, "g", at(0));
    let mut a_join = join(&mut table, request("g", &a, RANGE), at(0));
    assert!(answered(&mut a_join).is_none());
    let b = member_id(&mut table, "g", at(1_000));
    let mut b_join = join(&mut table, request("g", &b, RANGE), at(1_000));
    table.tick(at(3_000), 100);
    assert!(
        answered(&mut a_join).is_none(),
        "a new member arrived: the delay is extended"
    );
    table.tick(at(5_999), 100);
    assert!(answered(&mut a_join).is_none());
    table.tick(at(6_000), 100);
    assert_eq!(ok(&mut a_join).members.len(), 2);
    assert_eq!(ok(&mut b_join).generation_id, 1);
}

#[test]
fn offset_commit_validation() {
    let mut table = GroupTable::new(settings());
    // Simple commits create an empty group.
    assert!(table.validate_commit("simple", -1, "", None, at(0)).is_ok());
    assert_eq!(table.state("simple"), Some(GroupState::Empty));
    assert!(matches!(
        table.validate_commit("unknown", 3, "m", None, at(0)),
        Err(CoreError::IllegalGeneration)
    ));
    assert!(matches!(
        table.validate_commit("simple", 1, "m", None, at(0)),
        Err(CoreError::UnknownMemberId)
    ));

    let a = member_id(&mut table, "g", at(0));
    ok(&mut join(&mut table, request("g", &a, RANGE), at(0)));
    assert!(matches!(
        table.validate_commit("g", 1, &a, None, at(1)),
        Err(CoreError::RebalanceInProgress)
    ));
    ok(&mut sync(&mut table, "g", 1, &a, &[], at(1)));
    assert!(table.validate_commit("g", 1, &a, None, at(2)).is_ok());
    assert!(matches!(
        table.validate_commit("g", 0, &a, None, at(2)),
        Err(CoreError::IllegalGeneration)
    ));
    assert!(matches!(
        table.validate_commit("g", -1, "", None, at(2)),
        Err(CoreError::UnknownMemberId)
    ));
    assert!(matches!(
        table.validate_commit("g", 1, "ghost", None, at(2)),
        Err(CoreError::UnknownMemberId)
    ));
}

#[test]
fn delete_only_empty_groups_and_describe_dead() {
    let mut table = GroupTable::new(settings());
    assert!(matches!(
        table.check_deletable("g"),
        Err(CoreError::GroupIdNotFound)
    ));
    let (a, b, now) = stable_pair(&mut table);
    assert!(matches!(
        table.check_deletable("g"),
        Err(CoreError::NonEmptyGroup)
    ));
    let listing = table.list();
    assert_eq!(listing.len(), 1);
    assert_eq!(
        (listing[0].state, listing[0].protocol_type.as_str()),
        ("Stable", "consumer")
    );
    table
        .leave("g", vec![(a, None), (b, None)], at(now))
        .expect("leave");
    assert!(table.check_deletable("g").is_ok());
    table.remove_group("g");
    assert_eq!(table.describe("g").state, "Dead");
    assert!(table.list().is_empty());
    assert_eq!(table.next_deadline_ms(), None);
}

#[test]
fn new_member_that_never_completes_a_join_is_dropped() {
    let mut table = GroupTable::new(settings());
    let (a, _b, now) = stable_pair(&mut table);
    // A new member joins with a huge rebalance timeout and a never rejoins, so the
    // rebalance cannot complete: the new member still goes after
    // NEW_MEMBER_JOIN_TIMEOUT_MS (a client that went away must not stay forever).
    let c = member_id(&mut table, "g", at(now));
    let mut request_c = request("g", &c, RANGE);
    request_c.rebalance_timeout_ms = i32::MAX;
    let mut c_join = join(&mut table, request_c, at(now));
    let mut t = now;
    while t < now + NEW_MEMBER_JOIN_TIMEOUT_MS {
        t += 3_000;
        let _ = table.heartbeat("g", 2, &a, None, at(t));
        table.tick(at(t), 100);
    }
    assert!(matches!(err(&mut c_join), CoreError::UnknownMemberId));
}
