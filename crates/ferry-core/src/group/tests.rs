//! Tests of the coordinator: async API, background task with tokio's paused clock,
//! offsets and their replay (through an in-memory sink; the storage-backed test is in
//! `storage_tests`).

use std::time::Duration;

use super::sink::MemorySink;
use super::*;

const SESSION_MS: i32 = 10_000;

fn settings() -> GroupSettings {
    GroupSettings {
        min_session_timeout_ms: 1_000,
        max_session_timeout_ms: 60_000,
        initial_rebalance_delay_ms: 0,
        max_group_size: 10,
        offsets_retention_ms: 7 * 24 * 3600 * 1000,
    }
}

fn open(sink: &MemorySink, settings: GroupSettings) -> Arc<GroupCoordinator> {
    let records = sink.records();
    Arc::new(
        GroupCoordinator::with_sink(Box::new(sink.clone()), records, settings)
            .expect("open coordinator"),
    )
}

fn join_request(group: &str, member_id: &str) -> JoinRequest {
    JoinRequest {
        group_id: group.to_string(),
        member_id: member_id.to_string(),
        group_instance_id: None,
        protocol_type: "consumer".to_string(),
        protocols: vec![("range".to_string(), Bytes::from_static(b"subscription"))],
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: 30_000,
        require_known_member_id: true,
        client_id: "rdkafka".to_string(),
        client_host: "/127.0.0.1".to_string(),
    }
}

fn sync_request(
    group: &str,
    generation_id: i32,
    member_id: &str,
    assignments: &[(&str, &str)],
) -> SyncRequest {
    SyncRequest {
        group_id: group.to_string(),
        generation_id,
        member_id: member_id.to_string(),
        group_instance_id: None,
        protocol_type: Some("consumer".to_string()),
        protocol_name: Some("range".to_string()),
        assignments: assignments
            .iter()
            .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
            .collect(),
    }
}

fn commit(topic: &str, partition: u32, offset: i64, metadata: Option<&str>) -> CommitOffset {
    CommitOffset {
        topic: topic.to_string(),
        partition,
        offset,
        leader_epoch: 0,
        metadata: metadata.map(str::to_string),
    }
}

/// The first JoinGroup of a new member: MEMBER_ID_REQUIRED with its id.
async fn new_member_id(coordinator: &GroupCoordinator, group: &str) -> String {
    match coordinator.join(join_request(group, "")).await {
        Err(CoreError::MemberIdRequired(id)) => id,
        other => panic!("expected MemberIdRequired, got {other:?}"),
    }
}

fn spawn_join(
    coordinator: &Arc<GroupCoordinator>,
    request: JoinRequest,
) -> tokio::task::JoinHandle<Result<JoinResponse>> {
    let coordinator = coordinator.clone();
    tokio::spawn(async move { coordinator.join(request).await })
}

fn spawn_sync(
    coordinator: &Arc<GroupCoordinator>,
    request: SyncRequest,
) -> tokio::task::JoinHandle<Result<SyncResponse>> {
    let coordinator = coordinator.clone();
    tokio::spawn(async move { coordinator.sync(request).await })
}

/// Group "g" with a (leader) and b, stable at generation 2.
async fn stable_pair(coordinator: &Arc<GroupCoordinator>) -> (String, String) {
    let a = new_member_id(coordinator, "g").await;
    let joined = coordinator
        .join(join_request("g", &a))
        .await
        .expect("a joins");
    assert_eq!(joined.generation_id, 1);
    coordinator
        .sync(sync_request("g", 1, &a, &[(&a, "p0")]))
        .await
        .expect("a syncs");

    let b = new_member_id(coordinator, "g").await;
    let b_join = spawn_join(coordinator, join_request("g", &b));
    // a hears of the rebalance through its heartbeat, as a real consumer does.
    let mut heartbeat = Ok(());
    for _ in 0..100 {
        heartbeat = coordinator.heartbeat("g", 1, &a, None);
        if heartbeat.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        matches!(heartbeat, Err(CoreError::RebalanceInProgress)),
        "{heartbeat:?}"
    );
    let a_joined = coordinator
        .join(join_request("g", &a))
        .await
        .expect("a rejoins");
    let b_joined = b_join.await.expect("task").expect("b joins");
    assert_eq!((a_joined.generation_id, b_joined.generation_id), (2, 2));
    assert_eq!(a_joined.leader, a);
    assert_eq!(a_joined.members.len(), 2);

    let b_sync = spawn_sync(coordinator, sync_request("g", 2, &b, &[]));
    let a_assignment = coordinator
        .sync(sync_request("g", 2, &a, &[(&a, "p0"), (&b, "p1")]))
        .await
        .expect("a syncs");
    assert_eq!(a_assignment.assignment, Bytes::from("p0"));
    let b_assignment = b_sync.await.expect("task").expect("b syncs");
    assert_eq!(b_assignment.assignment, Bytes::from("p1"));
    assert_eq!(b_assignment.protocol_name.as_deref(), Some("range"));
    (a, b)
}

#[tokio::test(start_paused = true)]
async fn silent_member_is_evicted_after_its_session_timeout() {
    let sink = MemorySink::default();
    let coordinator = open(&sink, settings());
    let (a, b) = stable_pair(&coordinator).await;
    assert_eq!(coordinator.describe_group("g").members.len(), 2);

    // a heartbeats every 3 s; b has gone silent.
    let silent_since = tokio::time::Instant::now();
    let mut rebalancing = false;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        match coordinator.heartbeat("g", 2, &a, None) {
            Ok(()) => {}
            Err(CoreError::RebalanceInProgress) => {
                rebalancing = true;
                break;
            }
            Err(other) => panic!("unexpected heartbeat error {other:?}"),
        }
    }
    assert!(rebalancing, "b's expiry must trigger a rebalance");
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_millis(SESSION_MS as u64)
            && waited <= Duration::from_millis(SESSION_MS as u64 + 3_000),
        "evicted after {waited:?}"
    );
    assert!(matches!(
        coordinator.heartbeat("g", 2, &b, None),
        Err(CoreError::UnknownMemberId)
    ));
    let rejoined = coordinator
        .join(join_request("g", &a))
        .await
        .expect("a rejoins");
    assert_eq!(rejoined.generation_id, 3);
    assert_eq!(rejoined.members.len(), 1);
    coordinator
        .sync(sync_request("g", 3, &a, &[(&a, "p0,p1")]))
        .await
        .expect("sync");
    let described = coordinator.describe_group("g");
    assert_eq!(described.state, "Stable");
    assert_eq!(described.members.len(), 1);
    assert_eq!(described.members[0].assignment, Bytes::from("p0,p1"));
    coordinator.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn members_arriving_together_share_the_first_generation() {
    let mut settings = settings();
    settings.initial_rebalance_delay_ms = 3_000;
    let sink = MemorySink::default();
    let coordinator = open(&sink, settings);
    let a = new_member_id(&coordinator, "g").await;
    let b = new_member_id(&coordinator, "g").await;
    let started = tokio::time::Instant::now();
    let a_join = spawn_join(&coordinator, join_request("g", &a));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_join = spawn_join(&coordinator, join_request("g", &b));
    let a_joined = a_join.await.expect("task").expect("a joins");
    let b_joined = b_join.await.expect("task").expect("b joins");
    assert!(started.elapsed() >= Duration::from_millis(3_000));
    assert_eq!((a_joined.generation_id, b_joined.generation_id), (1, 1));
    assert_eq!(a_joined.leader, a);
    assert_eq!(a_joined.members.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_waiting_requests() {
    let mut settings = settings();
    settings.initial_rebalance_delay_ms = 60_000;
    let sink = MemorySink::default();
    let coordinator = open(&sink, settings);
    let a = new_member_id(&coordinator, "g").await;
    let waiting = spawn_join(&coordinator, join_request("g", &a));
    tokio::time::sleep(Duration::from_millis(100)).await;
    coordinator.shutdown().await.expect("shutdown");
    assert!(matches!(
        waiting.await.expect("task"),
        Err(CoreError::CoordinatorNotAvailable)
    ));
    assert!(matches!(
        coordinator.join(join_request("g", "")).await,
        Err(CoreError::CoordinatorNotAvailable)
    ));
}

#[tokio::test]
async fn committed_offsets_survive_reopen_and_deletes_are_tombstoned() {
    let sink = MemorySink::default();
    let coordinator = open(&sink, settings());

    let results = coordinator
        .commit_offsets(
            "simple",
            -1,
            "",
            None,
            vec![
                commit("t", 0, 42, Some("m")),
                commit("t", 1, 7, None),
                commit("u", 0, 1, None),
            ],
        )
        .await
        .expect("commit");
    assert!(results.iter().all(Result::is_ok));
    let too_long = "x".repeat(OFFSET_METADATA_BYTES_MAX + 1);
    let results = coordinator
        .commit_offsets(
            "simple",
            -1,
            "",
            None,
            vec![commit("t", 2, 5, Some(&too_long)), commit("t", 3, 9, None)],
        )
        .await
        .expect("commit");
    assert!(matches!(results[0], Err(CoreError::MessageTooLarge(_))));
    assert!(results[1].is_ok());
    assert!(matches!(
        coordinator
            .commit_offsets("nobody", 4, "m", None, vec![commit("t", 0, 1, None)])
            .await,
        Err(CoreError::IllegalGeneration)
    ));

    let listed = coordinator
        .fetch_offsets(
            "simple",
            Some(&[("t".to_string(), 0), ("t".to_string(), 2)]),
        )
        .expect("fetch");
    assert_eq!(
        (listed[0].offset, listed[0].metadata.as_deref()),
        (42, Some("m"))
    );
    assert_eq!(listed[1].offset, -1);
    let all = coordinator.fetch_offsets("simple", None).expect("fetch");
    let keys: Vec<_> = all
        .iter()
        .map(|o| (o.topic.as_str(), o.partition, o.offset))
        .collect();
    assert_eq!(
        keys,
        vec![("t", 0, 42), ("t", 1, 7), ("t", 3, 9), ("u", 0, 1)]
    );
    assert!(coordinator
        .fetch_offsets("nobody", None)
        .expect("fetch")
        .is_empty());

    coordinator
        .commit_offsets("gone", -1, "", None, vec![commit("t", 0, 1, None)])
        .await
        .expect("commit");
    let mut ids: Vec<_> = coordinator
        .list_groups()
        .into_iter()
        .map(|g| (g.group_id, g.state))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            ("gone".to_string(), "Empty"),
            ("simple".to_string(), "Empty")
        ]
    );
    coordinator.delete_group("gone").await.expect("delete");
    assert!(matches!(
        coordinator.delete_group("gone").await,
        Err(CoreError::GroupIdNotFound)
    ));
    assert!(coordinator
        .fetch_offsets("gone", None)
        .expect("fetch")
        .is_empty());

    coordinator
        .remove_topic_offsets("u")
        .await
        .expect("remove topic");
    assert_eq!(
        coordinator
            .fetch_offsets("simple", None)
            .expect("fetch")
            .len(),
        3
    );
    coordinator.shutdown().await.expect("shutdown");

    let reopened = open(&sink, settings());
    let all = reopened.fetch_offsets("simple", None).expect("fetch");
    let keys: Vec<_> = all
        .iter()
        .map(|o| (o.topic.as_str(), o.partition, o.offset))
        .collect();
    assert_eq!(keys, vec![("t", 0, 42), ("t", 1, 7), ("t", 3, 9)]);
    assert_eq!(all[0].metadata.as_deref(), Some("m"));
    let groups: Vec<_> = reopened
        .list_groups()
        .into_iter()
        .map(|g| g.group_id)
        .collect();
    assert_eq!(groups, vec!["simple".to_string()]);
    reopened.delete_group("simple").await.expect("delete");
    reopened.shutdown().await.expect("shutdown");
    assert!(open(&sink, settings()).list_groups().is_empty());
}

#[tokio::test(start_paused = true)]
async fn member_commits_and_group_survives_reopen() {
    let sink = MemorySink::default();
    let coordinator = open(&sink, settings());
    let (a, b) = stable_pair(&coordinator).await;
    let results = coordinator
        .commit_offsets("g", 2, &a, None, vec![commit("t", 0, 10, None)])
        .await
        .expect("commit");
    assert!(results[0].is_ok());
    assert!(matches!(
        coordinator
            .commit_offsets("g", 1, &b, None, vec![commit("t", 1, 10, None)])
            .await,
        Err(CoreError::IllegalGeneration)
    ));
    assert!(matches!(
        coordinator
            .commit_offsets("g", -1, "", None, vec![commit("t", 1, 10, None)])
            .await,
        Err(CoreError::UnknownMemberId)
    ));
    assert!(matches!(
        coordinator.delete_group("g").await,
        Err(CoreError::NonEmptyGroup)
    ));
    coordinator.shutdown().await.expect("shutdown");

    let reopened = open(&sink, settings());
    let listing = reopened.list_groups();
    assert_eq!(listing.len(), 1);
    assert_eq!(
        (listing[0].state, listing[0].protocol_type.as_str()),
        ("Empty", "consumer")
    );
    assert_eq!(
        reopened.fetch_offsets("g", None).expect("fetch")[0].offset,
        10
    );
    // Members are not persisted: they rejoin, and the generation continues.
    assert!(matches!(
        reopened.heartbeat("g", 2, &a, None),
        Err(CoreError::UnknownMemberId)
    ));
    let a = new_member_id(&reopened, "g").await;
    let joined = reopened.join(join_request("g", &a)).await.expect("join");
    assert_eq!(joined.generation_id, 3);
}

#[tokio::test(start_paused = true)]
async fn expired_offsets_and_empty_groups_are_cleaned_up() {
    let mut settings = settings();
    settings.offsets_retention_ms = 0;
    let sink = MemorySink::default();
    let coordinator = open(&sink, settings.clone());
    coordinator
        .commit_offsets("simple", -1, "", None, vec![commit("t", 0, 1, None)])
        .await
        .expect("commit");
    let (_a, _b) = stable_pair(&coordinator).await;
    coordinator
        .commit_offsets("g", 2, &_a, None, vec![commit("t", 0, 5, None)])
        .await
        .expect("commit");
    // Keep g's members alive across the cleanup pass.
    let mut waited = 0;
    while waited <= CLEANUP_INTERVAL_MS {
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        waited += 3_000;
        coordinator
            .heartbeat("g", 2, &_a, None)
            .expect("heartbeat a");
        coordinator
            .heartbeat("g", 2, &_b, None)
            .expect("heartbeat b");
    }
    let groups: Vec<_> = coordinator
        .list_groups()
        .into_iter()
        .map(|g| g.group_id)
        .collect();
    assert_eq!(
        groups,
        vec!["g".to_string()],
        "the simple group's offsets expired"
    );
    assert_eq!(
        coordinator.fetch_offsets("g", None).expect("fetch").len(),
        1,
        "a group with members keeps its offsets"
    );
    coordinator.shutdown().await.expect("shutdown");
    let reopened = open(&sink, settings);
    assert!(reopened
        .fetch_offsets("simple", None)
        .expect("fetch")
        .is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_offsets_log_is_compacted_by_snapshots() {
    let sink = MemorySink::default();
    let records = sink.records();
    let snapshot_min_bytes = 20_000;
    let coordinator = Arc::new(
        GroupCoordinator::with_sink_and_snapshot_size(
            Box::new(sink.clone()),
            records,
            settings(),
            snapshot_min_bytes,
        )
        .expect("open"),
    );
    let (a, _b) = stable_pair(&coordinator).await;
    coordinator
        .commit_offsets("other", -1, "", None, vec![commit("t", 9, 99, None)])
        .await
        .expect("commit");
    // Many commits of the same two partitions: the log grows, the live state does not.
    for i in 0..1_000 {
        coordinator
            .commit_offsets(
                "g",
                2,
                &a,
                None,
                vec![commit("t", 0, i, None), commit("t", 1, 2 * i, None)],
            )
            .await
            .expect("commit");
        if i % 100 == 0 {
            coordinator.heartbeat("g", 2, &a, None).expect("heartbeat");
            tokio::task::yield_now().await;
        }
    }
    // Let the background task run.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let kept = sink.records();
    assert!(
        kept.len() < 100,
        "the log was not compacted: {} records",
        kept.len()
    );
    let log_bytes: u64 = kept.iter().map(super::sink::record_bytes).sum();
    assert!(
        log_bytes <= 4 * snapshot_min_bytes,
        "{log_bytes} bytes left"
    );

    coordinator.shutdown().await.expect("shutdown");
    let reopened = open(&sink, settings());
    let offsets: Vec<_> = reopened
        .fetch_offsets("g", None)
        .expect("fetch")
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    assert_eq!(offsets, vec![(0, 999), (1, 1998)]);
    assert_eq!(
        reopened.fetch_offsets("other", None).expect("fetch")[0].offset,
        99
    );
    let listing = reopened.list_groups();
    let g = listing
        .iter()
        .find(|l| l.group_id == "g")
        .expect("g survives the snapshot");
    assert_eq!(g.protocol_type, "consumer");
    // The generation survived too.
    let member = new_member_id(&reopened, "g").await;
    assert_eq!(
        reopened
            .join(join_request("g", &member))
            .await
            .expect("join")
            .generation_id,
        3
    );
}
