//! The coordinator on the real storage engine: committed offsets and groups survive a
//! clean restart, a crash (no shutdown), and snapshots that drop old records.

use std::time::Duration;

use ferry_storage::{Store, StoreConfig};

use super::*;

fn settings() -> GroupSettings {
    GroupSettings {
        min_session_timeout_ms: 1_000,
        ..GroupSettings::default()
    }
}

fn commit(topic: &str, partition: u32, offset: i64) -> CommitOffset {
    CommitOffset {
        topic: topic.to_string(),
        partition,
        offset,
        leader_epoch: 3,
        metadata: Some(format!("at {offset}")),
    }
}

fn join_request(member_id: &str) -> JoinRequest {
    JoinRequest {
        group_id: "g".to_string(),
        member_id: member_id.to_string(),
        group_instance_id: None,
        protocol_type: "consumer".to_string(),
        protocols: vec![("range".to_string(), Bytes::from_static(b"meta"))],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        require_known_member_id: false,
        client_id: "c".to_string(),
        client_host: "/127.0.0.1".to_string(),
    }
}

fn fetched(coordinator: &GroupCoordinator, group: &str) -> Vec<(String, u32, i64, Option<String>)> {
    coordinator
        .fetch_offsets(group, None)
        .expect("fetch")
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset, o.metadata))
        .collect()
}

#[tokio::test]
async fn offsets_and_groups_survive_restart_on_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(StoreConfig::new(dir.path())).expect("store");
        let coordinator = GroupCoordinator::open(store.clone(), settings()).expect("open");
        let joined = coordinator.join(join_request("")).await.expect("join");
        let member = joined.member_id.clone();
        coordinator
            .sync(SyncRequest {
                group_id: "g".into(),
                generation_id: joined.generation_id,
                member_id: member.clone(),
                group_instance_id: None,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(member.clone(), Bytes::from_static(b"all"))],
            })
            .await
            .expect("sync");
        let results = coordinator
            .commit_offsets(
                "g",
                joined.generation_id,
                &member,
                None,
                vec![commit("t", 0, 5), commit("t", 1, 6)],
            )
            .await
            .expect("commit");
        assert!(results.iter().all(Result::is_ok));
        coordinator
            .commit_offsets(
                "g",
                joined.generation_id,
                &member,
                None,
                vec![commit("t", 0, 50)],
            )
            .await
            .expect("commit");
        coordinator
            .commit_offsets("simple", -1, "", None, vec![commit("u", 0, 1)])
            .await
            .expect("commit");
        coordinator
            .commit_offsets("doomed", -1, "", None, vec![commit("u", 0, 1)])
            .await
            .expect("commit");
        coordinator.delete_group("doomed").await.expect("delete");
        coordinator
            .remove_topic_offsets("u")
            .await
            .expect("remove topic");
        coordinator.shutdown().await.expect("shutdown");
        store.shutdown().expect("store shutdown");
    }
    let store = Store::open(StoreConfig::new(dir.path())).expect("store");
    let coordinator = GroupCoordinator::open(store.clone(), settings()).expect("reopen");
    assert_eq!(
        fetched(&coordinator, "g"),
        vec![
            ("t".to_string(), 0, 50, Some("at 50".to_string())),
            ("t".to_string(), 1, 6, Some("at 6".to_string()))
        ]
    );
    assert_eq!(
        coordinator.fetch_offsets("g", None).expect("fetch")[0].leader_epoch,
        3
    );
    assert!(fetched(&coordinator, "simple").is_empty());
    let mut groups: Vec<_> = coordinator
        .list_groups()
        .into_iter()
        .map(|g| (g.group_id, g.protocol_type, g.state))
        .collect();
    groups.sort();
    // "simple" lost its only offsets with topic u: a group known only by its offsets is
    // gone with them.
    assert_eq!(
        groups,
        vec![("g".to_string(), "consumer".to_string(), "Empty")]
    );
    // The generation carries on from the one persisted.
    assert_eq!(
        coordinator
            .join(join_request(""))
            .await
            .expect("join")
            .generation_id,
        2
    );
    coordinator.shutdown().await.expect("shutdown");
    store.shutdown().expect("store shutdown");
}

#[tokio::test]
async fn committed_offsets_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(StoreConfig::new(dir.path())).expect("store");
        let coordinator = GroupCoordinator::open(store.clone(), settings()).expect("open");
        for offset in 0..20 {
            coordinator
                .commit_offsets("g", -1, "", None, vec![commit("t", 0, offset)])
                .await
                .expect("commit");
        }
        // No shutdown of either: what a killed process leaves behind.
        drop(coordinator);
        drop(store);
    }
    let store = Store::open(StoreConfig::new(dir.path())).expect("store");
    let coordinator = GroupCoordinator::open(store.clone(), settings()).expect("reopen");
    assert_eq!(
        coordinator.fetch_offsets("g", None).expect("fetch")[0].offset,
        19
    );
    coordinator.shutdown().await.expect("shutdown");
    store.shutdown().expect("store shutdown");
}

#[tokio::test]
async fn snapshots_drop_old_records_on_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot_min_bytes = 50_000;
    {
        let store = Store::open(StoreConfig::new(dir.path())).expect("store");
        let (log, records) =
            InternalLog::open(&store, OFFSETS_LOG_NAME, OFFSETS_FLUSH).expect("log");
        let records = records.into_iter().map(|r| (r.key, r.value));
        let coordinator = GroupCoordinator::with_sink_and_snapshot_size(
            Box::new(log),
            records,
            settings(),
            snapshot_min_bytes,
        )
        .expect("open");
        for offset in 0..2_000 {
            coordinator
                .commit_offsets(
                    "g",
                    -1,
                    "",
                    None,
                    vec![commit("t", 0, offset), commit("t", 1, offset)],
                )
                .await
                .expect("commit");
            if offset % 200 == 0 {
                // Let the background task take its snapshots.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        coordinator.shutdown().await.expect("shutdown");
        store.shutdown().expect("store shutdown");
    }
    let store = Store::open(StoreConfig::new(dir.path())).expect("store");
    let (_log, records) = InternalLog::open(&store, OFFSETS_LOG_NAME, OFFSETS_FLUSH).expect("log");
    assert!(
        records.len() < 1_000,
        "{} records replayed: snapshots did not drop old records",
        records.len()
    );
    drop(_log);
    let coordinator = GroupCoordinator::open(store.clone(), settings()).expect("reopen");
    let offsets: Vec<_> = fetched(&coordinator, "g")
        .into_iter()
        .map(|o| (o.1, o.2))
        .collect();
    assert_eq!(offsets, vec![(0, 1_999), (1, 1_999)]);
    coordinator.shutdown().await.expect("shutdown");
    store.shutdown().expect("store shutdown");
}
