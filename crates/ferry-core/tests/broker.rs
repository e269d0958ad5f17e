//! Broker core behaviour through its public API, on a real store in a temporary directory.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::group::CommitOffset;
use ferry_core::{
    Acks, Broker, BrokerConfig, ConfigOp, ConfigSource, CoreError, FetchPartition, OffsetSpec,
    PartitionWatch,
};
use ferry_storage::batch::{decode_records, split_batches, BatchBuilder};
use ferry_storage::Chunk;

/// Upper bound of every test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a test body with a time limit.
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test timed out");
}

fn broker_config(dir: &Path) -> BrokerConfig {
    let mut config = BrokerConfig::new(dir);
    config.retention_check_interval_ms = 50;
    config
}

fn open(dir: &Path) -> Arc<Broker> {
    Broker::open(broker_config(dir)).expect("open broker")
}

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One uncompressed batch of `values`, all with timestamp `timestamp_ms`.
fn batch(values: &[&str], timestamp_ms: i64) -> Bytes {
    let mut builder = BatchBuilder::new(timestamp_ms);
    for value in values {
        builder.push(
            None,
            Some(Bytes::from(value.to_string())),
            Vec::new(),
            timestamp_ms,
        );
    }
    builder.build()
}

/// One idempotent batch.
fn idempotent_batch(producer_id: i64, epoch: i16, sequence: i32, values: &[&str]) -> Bytes {
    let mut builder = BatchBuilder::new(1_000).with_producer(producer_id, epoch, sequence);
    for value in values {
        builder.push(
            None,
            Some(Bytes::from(value.to_string())),
            Vec::new(),
            1_000,
        );
    }
    builder.build()
}

/// (offset, value) of every record in `records`.
fn decode(records: &Chunk) -> Vec<(i64, String)> {
    let records = records.clone().into_bytes().expect("fetched records read");
    let mut out = Vec::new();
    for (header, batch) in split_batches(&records, true).expect("whole batches") {
        for record in decode_records(&batch).expect("records") {
            let value = record
                .value
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            out.push((header.base_offset + record.offset_delta as i64, value));
        }
    }
    out
}

fn fetch_request(topic: &str, partition: u32, offset: i64) -> FetchPartition {
    FetchPartition {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: 1 << 20,
    }
}

/// Reads everything from `offset` without waiting.
async fn read_all(broker: &Broker, topic: &str, partition: u32, offset: i64) -> Vec<(i64, String)> {
    let fetched = broker
        .fetch(
            &[fetch_request(topic, partition, offset)],
            Duration::ZERO,
            0,
            1 << 20,
        )
        .await;
    assert!(fetched[0].error.is_none(), "{:?}", fetched[0].error);
    decode(&fetched[0].records)
}

#[tokio::test]
async fn produce_and_fetch_round_trip() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        broker
            .create_topic("orders", Some(2), BTreeMap::new(), false)
            .expect("create");
        let first = broker
            .produce("orders", 1, batch(&["a", "b", "c"], 10), Acks::All)
            .await
            .expect("produce");
        assert_eq!(first.base_offset, 0);
        assert_eq!(first.log_append_time_ms, -1);
        let second = broker
            .produce("orders", 1, batch(&["d"], 11), Acks::Leader)
            .await
            .expect("produce");
        assert_eq!(second.base_offset, 3);
        let third = broker
            .produce("orders", 1, batch(&["e"], 12), Acks::None)
            .await
            .expect("produce");
        assert_eq!(third.base_offset, 4);
        let records = read_all(&broker, "orders", 1, 0).await;
        let expected: Vec<(i64, String)> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64, v.to_string()))
            .collect();
        assert_eq!(records, expected);
        assert!(read_all(&broker, "orders", 0, 0).await.is_empty());
        let offsets = broker.partition_offsets("orders", 1).expect("offsets");
        assert_eq!(
            (
                offsets.log_start_offset,
                offsets.high_watermark,
                offsets.log_end_offset
            ),
            (0, 5, 5)
        );
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn unknown_partitions_and_bad_offsets_are_reported() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        broker
            .create_topic("t", Some(1), BTreeMap::new(), false)
            .expect("create");
        let err = broker
            .produce("nope", 0, batch(&["x"], 1), Acks::All)
            .await
            .expect_err("unknown topic");
        assert!(matches!(err, CoreError::UnknownTopicOrPartition), "{err}");
        let err = broker
            .produce("t", 1, batch(&["x"], 1), Acks::All)
            .await
            .expect_err("unknown partition");
        assert!(matches!(err, CoreError::UnknownTopicOrPartition), "{err}");
        let err = broker
            .produce("t", 0, Bytes::from_static(b"garbage"), Acks::All)
            .await
            .expect_err("garbage");
        assert!(matches!(err, CoreError::CorruptMessage(_)), "{err}");
        broker
            .produce("t", 0, batch(&["x"], 1), Acks::All)
            .await
            .expect("produce");

        let started = Instant::now();
        let fetched = broker
            .fetch(
                &[
                    fetch_request("nope", 0, 0),
                    fetch_request("t", 0, 7),
                    fetch_request("t", 0, 0),
                ],
                Duration::from_secs(10),
                1 << 20,
                1 << 20,
            )
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "errors answer at once"
        );
        assert!(matches!(
            fetched[0].error,
            Some(CoreError::UnknownTopicOrPartition)
        ));
        assert!(matches!(
            fetched[1].error,
            Some(CoreError::OffsetOutOfRange)
        ));
        assert_eq!(fetched[1].high_watermark, 1);
        assert!(fetched[2].error.is_none());
        assert_eq!(decode(&fetched[2].records).len(), 1);
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn idempotent_retry_is_acknowledged_once() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        broker
            .create_topic("idem", Some(1), BTreeMap::new(), false)
            .expect("create");
        broker
            .produce("idem", 0, batch(&["plain"], 1), Acks::All)
            .await
            .expect("plain");
        let (pid, epoch) = broker.init_producer_id(None, None).expect("producer id");
        let first = idempotent_batch(pid, epoch, 0, &["a", "b"]);
        let written = broker
            .produce("idem", 0, first.clone(), Acks::All)
            .await
            .expect("first");
        assert_eq!(written.base_offset, 1);
        let retried = broker
            .produce("idem", 0, first, Acks::All)
            .await
            .expect("retry");
        assert_eq!(retried.base_offset, 1, "a retry gets the original offset");
        let next = broker
            .produce(
                "idem",
                0,
                idempotent_batch(pid, epoch, 2, &["c"]),
                Acks::All,
            )
            .await
            .expect("next");
        assert_eq!(next.base_offset, 3);
        let values: Vec<String> = read_all(&broker, "idem", 0, 0)
            .await
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values, ["plain", "a", "b", "c"], "written once");

        let gap = broker
            .produce(
                "idem",
                0,
                idempotent_batch(pid, epoch, 10, &["x"]),
                Acks::All,
            )
            .await;
        assert!(
            matches!(gap, Err(CoreError::OutOfOrderSequence(_))),
            "{gap:?}"
        );
        let (same, bumped) = broker
            .init_producer_id(None, Some((pid, epoch)))
            .expect("bump");
        assert_eq!((same, bumped), (pid, epoch + 1));
        let restart = broker
            .produce(
                "idem",
                0,
                idempotent_batch(pid, bumped, 0, &["y"]),
                Acks::All,
            )
            .await;
        assert_eq!(restart.expect("new epoch from 0").base_offset, 4);
        let fenced = broker
            .produce(
                "idem",
                0,
                idempotent_batch(pid, epoch, 3, &["z"]),
                Acks::All,
            )
            .await;
        assert!(
            matches!(fenced, Err(CoreError::InvalidProducerEpoch)),
            "{fenced:?}"
        );
        assert_eq!(
            broker
                .list_offsets("idem", 0, OffsetSpec::Latest)
                .expect("latest"),
            (5, -1)
        );
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn producer_state_and_ids_survive_reopen() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let first_batch = {
            let broker = open(dir.path());
            broker
                .create_topic("p", Some(1), BTreeMap::new(), false)
                .expect("create");
            let (pid, _) = broker.init_producer_id(None, None).expect("id");
            assert_eq!(pid, 0);
            let b = idempotent_batch(pid, 0, 0, &["a"]);
            broker
                .produce("p", 0, b.clone(), Acks::All)
                .await
                .expect("produce");
            broker
                .produce("p", 0, idempotent_batch(pid, 0, 1, &["b"]), Acks::All)
                .await
                .expect("produce");
            broker.shutdown().await.expect("shutdown");
            b
        };
        let broker = open(dir.path());
        let retried = broker
            .produce("p", 0, first_batch, Acks::All)
            .await
            .expect("retry after restart");
        assert_eq!(retried.base_offset, 0);
        let gap = broker
            .produce("p", 0, idempotent_batch(0, 0, 5, &["x"]), Acks::All)
            .await;
        assert!(
            matches!(gap, Err(CoreError::OutOfOrderSequence(_))),
            "{gap:?}"
        );
        let next = broker
            .produce("p", 0, idempotent_batch(0, 0, 2, &["c"]), Acks::All)
            .await
            .expect("next");
        assert_eq!(next.base_offset, 2);
        let (pid, epoch) = broker.init_producer_id(None, None).expect("id");
        assert!(pid > 0, "ids are never reused after a restart (got {pid})");
        assert_eq!(epoch, 0);
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn topic_metadata_survives_reopen() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kept, gone) = {
            let broker = open(dir.path());
            let kept = broker
                .create_topic("kept", Some(2), configs(&[("retention.ms", "1000")]), false)
                .expect("create kept");
            let gone = broker
                .create_topic("gone", Some(1), BTreeMap::new(), false)
                .expect("create gone");
            broker.create_partitions("kept", 3, false).expect("grow");
            broker
                .alter_topic_config(
                    "kept",
                    vec![ConfigOp::Set("flush.mode".into(), "sync".into())],
                    true,
                    false,
                )
                .expect("alter");
            broker
                .produce("kept", 2, batch(&["in new partition"], 5), Acks::All)
                .await
                .expect("produce");
            broker
                .produce("gone", 0, batch(&["old data"], 5), Acks::All)
                .await
                .expect("produce");
            let commit = |topic: &str| CommitOffset {
                topic: topic.to_string(),
                partition: 0,
                offset: 1,
                leader_epoch: -1,
                metadata: None,
            };
            broker
                .groups()
                .commit_offsets(
                    "readers",
                    -1,
                    "",
                    None,
                    vec![commit("gone"), commit("kept")],
                )
                .await
                .expect("commit");
            broker.delete_topic("gone").await.expect("delete");
            let left: Vec<String> = broker
                .groups()
                .fetch_offsets("readers", None)
                .expect("fetch offsets")
                .into_iter()
                .map(|o| o.topic)
                .collect();
            assert_eq!(
                left,
                ["kept"],
                "a deleted topic's committed offsets are gone once the deletion returns"
            );
            broker.shutdown().await.expect("shutdown");
            (kept, gone)
        };
        let broker = open(dir.path());
        let names: Vec<String> = broker.topics().into_iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            ["kept"],
            "internal logs are not topics; deleted topics stay deleted"
        );
        let info = broker.topic("kept").expect("kept");
        assert_eq!(info.id, kept.id, "topic ids are stable");
        assert!(!info.id.is_nil());
        assert_eq!(info.partitions, 3);
        assert_eq!(info.config.retention_ms, 1000);
        assert!(info.config.flush_sync());
        assert_eq!(read_all(&broker, "kept", 2, 0).await.len(), 1);
        let again = broker
            .create_topic("gone", Some(1), BTreeMap::new(), false)
            .expect("recreate");
        assert_ne!(again.id, gone.id);
        assert!(
            read_all(&broker, "gone", 0, 0).await.is_empty(),
            "a recreated topic starts empty"
        );
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn admin_requests_are_validated() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        let invalid_config = broker.create_topic(
            "a",
            Some(1),
            configs(&[("cleanup.policy", "compact")]),
            false,
        );
        assert!(
            matches!(invalid_config, Err(CoreError::InvalidConfig(_))),
            "{invalid_config:?}"
        );
        let unknown_key = broker.create_topic("a", Some(1), configs(&[("no.such", "1")]), false);
        assert!(
            matches!(unknown_key, Err(CoreError::InvalidConfig(_))),
            "{unknown_key:?}"
        );
        for bad in ["", "..", "a b", "__ferry_metadata", "__mine"] {
            let err = broker.create_topic(bad, Some(1), BTreeMap::new(), false);
            assert!(
                matches!(err, Err(CoreError::InvalidTopic(_))),
                "{bad:?}: {err:?}"
            );
        }
        let zero = broker.create_topic("a", Some(0), BTreeMap::new(), false);
        assert!(
            matches!(zero, Err(CoreError::InvalidPartitions(_))),
            "{zero:?}"
        );
        let many = broker.create_topic(
            "a",
            Some(ferry_core::PARTITIONS_PER_TOPIC_MAX + 1),
            BTreeMap::new(),
            false,
        );
        assert!(
            matches!(many, Err(CoreError::InvalidPartitions(_))),
            "{many:?}"
        );

        broker
            .create_topic("a", None, BTreeMap::new(), true)
            .expect("validate only");
        assert!(broker.topic("a").is_none(), "validate_only creates nothing");
        let a = broker
            .create_topic("a.b", None, BTreeMap::new(), false)
            .expect("create");
        assert_eq!(a.partitions, broker.config().default_partitions);
        let exists = broker.create_topic("a.b", None, BTreeMap::new(), false);
        assert!(
            matches!(exists, Err(CoreError::TopicAlreadyExists(_))),
            "{exists:?}"
        );
        let collides = broker.create_topic("a_b", None, BTreeMap::new(), false);
        assert!(
            matches!(collides, Err(CoreError::InvalidTopic(_))),
            "{collides:?}"
        );

        broker
            .create_partitions("a.b", 4, true)
            .expect("validate only");
        assert_eq!(broker.topic("a.b").expect("topic").partitions, 1);
        let shrink = broker.create_partitions("a.b", 1, false);
        assert!(
            matches!(shrink, Err(CoreError::InvalidPartitions(_))),
            "{shrink:?}"
        );
        let unknown = broker.create_partitions("zz", 4, false);
        assert!(
            matches!(unknown, Err(CoreError::UnknownTopicOrPartition)),
            "{unknown:?}"
        );

        broker
            .alter_topic_config(
                "a.b",
                vec![ConfigOp::Set("retention.ms".into(), "5000".into())],
                false,
                false,
            )
            .expect("alter");
        broker
            .alter_topic_config(
                "a.b",
                vec![ConfigOp::Set("segment.bytes".into(), "4096".into())],
                true,
                false,
            )
            .expect("incremental");
        let entries = broker.describe_topic_config("a.b").expect("describe");
        let get = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .expect("key")
                .clone()
        };
        assert_eq!(get("retention.ms").value.as_deref(), Some("5000"));
        assert_eq!(get("retention.ms").source, ConfigSource::Topic);
        assert_eq!(get("segment.bytes").source, ConfigSource::Topic);
        assert_eq!(get("flush.mode").source, ConfigSource::Default);
        broker
            .alter_topic_config(
                "a.b",
                vec![ConfigOp::Set("flush.mode".into(), "sync".into())],
                false,
                false,
            )
            .expect("replace all");
        let info = broker.topic("a.b").expect("topic");
        assert_eq!(
            info.config.overrides.len(),
            1,
            "AlterConfigs replaces every override"
        );
        assert_eq!(info.config.retention_ms, 604_800_000);
        let bad = broker.alter_topic_config(
            "a.b",
            vec![ConfigOp::Set("retention.ms".into(), "x".into())],
            true,
            false,
        );
        assert!(matches!(bad, Err(CoreError::InvalidConfig(_))), "{bad:?}");

        let denied = broker.topic_or_create("auto", false);
        assert!(
            matches!(denied, Err(CoreError::UnknownTopicOrPartition)),
            "{denied:?}"
        );
        assert_eq!(
            broker
                .topic_or_create("auto", true)
                .expect("auto-create")
                .name,
            "auto"
        );
        broker.delete_topic("auto").await.expect("delete");
        assert!(matches!(
            broker.delete_topic("auto").await,
            Err(CoreError::UnknownTopicOrPartition)
        ));
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn auto_creation_can_be_turned_off() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = broker_config(dir.path());
        config.auto_create_topics = false;
        let broker = Broker::open(config).expect("open");
        let denied = broker.topic_or_create("auto", true);
        assert!(
            matches!(denied, Err(CoreError::UnknownTopicOrPartition)),
            "{denied:?}"
        );
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn topic_limits_are_enforced_on_produce() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        broker
            .create_topic(
                "small",
                Some(1),
                configs(&[("max.message.bytes", "200")]),
                false,
            )
            .expect("create");
        let big = batch(&[&"x".repeat(500)], 1);
        let err = broker
            .produce("small", 0, big, Acks::All)
            .await
            .expect_err("too large");
        assert!(matches!(err, CoreError::MessageTooLarge(_)), "{err}");
        broker
            .produce("small", 0, batch(&["ok"], 1), Acks::All)
            .await
            .expect("fits");

        broker
            .create_topic(
                "stamped",
                Some(1),
                configs(&[("message.timestamp.type", "LogAppendTime")]),
                false,
            )
            .expect("create");
        let result = broker
            .produce("stamped", 0, batch(&["t"], 1), Acks::All)
            .await
            .expect("produce");
        assert!(result.log_append_time_ms > 1);
        let fetched = broker
            .fetch(
                &[fetch_request("stamped", 0, 0)],
                Duration::ZERO,
                0,
                1 << 20,
            )
            .await;
        let records = fetched[0].records.clone().into_bytes().expect("read");
        let (header, _) = split_batches(&records, true).expect("batches").remove(0);
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, result.log_append_time_ms);

        broker
            .create_topic(
                "durable",
                Some(1),
                configs(&[("flush.mode", "sync")]),
                false,
            )
            .expect("create");
        for acks in [Acks::All, Acks::Leader, Acks::None] {
            broker
                .produce("durable", 0, batch(&["d"], 1), acks)
                .await
                .expect("sync produce");
        }
        assert_eq!(read_all(&broker, "durable", 0, 0).await.len(), 3);
        broker.shutdown().await.expect("shutdown");
        let err = broker
            .produce("durable", 0, batch(&["late"], 1), Acks::All)
            .await
            .expect_err("shut down");
        assert!(matches!(err, CoreError::ShuttingDown), "{err}");
    })
    .await;
}

#[tokio::test]
async fn long_poll_wakes_on_produce_and_times_out() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        broker
            .create_topic("poll", Some(2), BTreeMap::new(), false)
            .expect("create");

        let started = Instant::now();
        let empty = broker
            .fetch(
                &[fetch_request("poll", 0, 0)],
                Duration::from_millis(200),
                1,
                1 << 20,
            )
            .await;
        let waited = started.elapsed();
        assert!(empty[0].error.is_none());
        assert!(empty[0].records.is_empty());
        assert!(
            waited >= Duration::from_millis(200),
            "waited only {waited:?}"
        );

        let waiter = {
            let broker = broker.clone();
            tokio::spawn(async move {
                let requests = [fetch_request("poll", 0, 0), fetch_request("poll", 1, 0)];
                let started = Instant::now();
                let fetched = broker
                    .fetch(&requests, Duration::from_secs(30), 1, 1 << 20)
                    .await;
                (started.elapsed(), fetched)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        broker
            .produce("poll", 1, batch(&["wake"], 1), Acks::All)
            .await
            .expect("produce");
        let (elapsed, fetched) = waiter.await.expect("fetch task");
        assert!(
            elapsed < Duration::from_secs(10),
            "woken by the append, not the timeout ({elapsed:?})"
        );
        assert!(fetched[0].records.is_empty());
        assert_eq!(decode(&fetched[1].records), [(0, "wake".to_string())]);
        assert_eq!(fetched[1].high_watermark, 1);
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn watches_mark_the_slots_of_changed_partitions() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        broker
            .create_topic("watched", Some(3), BTreeMap::new(), false)
            .expect("create");
        let handle = |partition| {
            broker
                .partition_handle("watched", partition)
                .expect("exists")
        };
        assert!(broker.partition_handle("watched", 3).is_none());
        let mut watch = PartitionWatch::new();
        // Slots are the watcher's numbers, not partition indexes.
        watch.watch(7, &handle(0));
        watch.watch(70, &handle(2));
        let signal = watch.signal();
        assert!(watch.take_changed().is_empty());

        broker
            .produce("watched", 2, batch(&["a"], 1), Acks::All)
            .await
            .expect("produce");
        broker
            .produce("watched", 1, batch(&["b"], 1), Acks::All)
            .await
            .expect("produce");
        // The append left a wake-up for a waiter that comes later.
        tokio::time::timeout(Duration::from_secs(5), signal.changed())
            .await
            .expect("woken");
        let changed = watch.take_changed();
        assert!(changed.contains(70) && !changed.contains(7));
        assert!(watch.take_changed().is_empty(), "taking clears");

        broker
            .delete_records("watched", 2, 1)
            .expect("delete records");
        assert!(watch.take_changed().contains(70), "log start moved");

        watch.unwatch(70);
        broker
            .produce("watched", 2, batch(&["c"], 1), Acks::All)
            .await
            .expect("produce");
        assert!(watch.take_changed().is_empty(), "no longer watched");

        let first = handle(0);
        broker.delete_topic("watched").await.expect("delete");
        assert!(first.is_deleted());
        assert!(watch.take_changed().contains(7), "deletion is a change");
        drop(watch);
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn fetch_respects_byte_limits_but_returns_a_whole_batch() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        broker
            .create_topic("bytes", Some(2), BTreeMap::new(), false)
            .expect("create");
        let value = "v".repeat(300);
        for partition in 0..2 {
            for _ in 0..3 {
                broker
                    .produce("bytes", partition, batch(&[&value], 1), Acks::All)
                    .await
                    .expect("produce");
            }
        }
        let requests = [fetch_request("bytes", 0, 0), fetch_request("bytes", 1, 0)];
        let fetched = broker.fetch(&requests, Duration::ZERO, 0, 10).await;
        assert_eq!(
            decode(&fetched[0].records).len(),
            1,
            "one whole batch beyond max_bytes"
        );
        assert!(
            fetched[1].records.is_empty(),
            "nothing more once the response is full"
        );

        let per_partition = [
            FetchPartition {
                max_bytes: 10,
                ..fetch_request("bytes", 0, 1)
            },
            fetch_request("bytes", 1, 0),
        ];
        let fetched = broker
            .fetch(&per_partition, Duration::ZERO, 0, 1 << 20)
            .await;
        assert_eq!(
            decode(&fetched[0].records),
            [(1, value.clone())],
            "a whole batch despite the partition limit"
        );
        assert_eq!(decode(&fetched[1].records).len(), 3);

        // Later partitions get whole batches within what is left, and none once the next
        // batch does not fit.
        let one_batch = fetched[0].records.len();
        let left_for_one_and_a_half = (3 * one_batch + one_batch * 3 / 2) as u32;
        let fetched = broker
            .fetch(&requests, Duration::ZERO, 0, left_for_one_and_a_half)
            .await;
        assert_eq!(decode(&fetched[0].records).len(), 3);
        assert_eq!(decode(&fetched[1].records), [(0, value.clone())]);
        assert_eq!(fetched[1].high_watermark, 3);
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn offsets_by_time_and_delete_records() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        broker
            .create_topic("time", Some(1), BTreeMap::new(), false)
            .expect("create");
        for (i, ts) in [1_000, 2_000, 3_000].into_iter().enumerate() {
            let result = broker
                .produce("time", 0, batch(&[&format!("m{i}")], ts), Acks::All)
                .await
                .expect("produce");
            assert_eq!(result.base_offset, i as i64);
        }
        assert_eq!(
            broker
                .list_offsets("time", 0, OffsetSpec::Earliest)
                .expect("earliest"),
            (0, -1)
        );
        assert_eq!(
            broker
                .list_offsets("time", 0, OffsetSpec::Latest)
                .expect("latest"),
            (3, -1)
        );
        assert_eq!(
            broker
                .list_offsets("time", 0, OffsetSpec::Timestamp(1_500))
                .expect("ts"),
            (1, 2_000)
        );
        assert_eq!(
            broker
                .list_offsets("time", 0, OffsetSpec::Timestamp(0))
                .expect("ts"),
            (0, 1_000)
        );
        assert_eq!(
            broker
                .list_offsets("time", 0, OffsetSpec::Timestamp(9_000))
                .expect("ts"),
            (3, -1)
        );
        assert_eq!(
            broker
                .list_offsets("time", 0, OffsetSpec::MaxTimestamp)
                .expect("max"),
            (2, 3_000)
        );
        assert!(matches!(
            broker.list_offsets("time", 9, OffsetSpec::Latest),
            Err(CoreError::UnknownTopicOrPartition)
        ));

        assert_eq!(broker.delete_records("time", 0, 2).expect("delete"), 2);
        assert_eq!(
            broker
                .list_offsets("time", 0, OffsetSpec::Earliest)
                .expect("earliest"),
            (2, -1)
        );
        let fetched = broker
            .fetch(&[fetch_request("time", 0, 1)], Duration::ZERO, 0, 1 << 20)
            .await;
        assert!(matches!(
            fetched[0].error,
            Some(CoreError::OffsetOutOfRange)
        ));
        assert_eq!(fetched[0].log_start_offset, 2);
        assert!(matches!(
            broker.delete_records("time", 0, 4),
            Err(CoreError::OffsetOutOfRange)
        ));
        assert_eq!(
            broker
                .delete_records("time", 0, -1)
                .expect("to high watermark"),
            3
        );
        assert_eq!(
            broker.end_offset_for_epoch("time", 0, 0).expect("epoch"),
            (0, 3)
        );
        assert_eq!(
            broker.end_offset_for_epoch("time", 0, 7).expect("epoch"),
            (-1, -1)
        );
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn retention_deletes_old_segments_in_the_background() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        let settings = configs(&[("segment.bytes", "256"), ("retention.bytes", "512")]);
        broker
            .create_topic("ret", Some(1), settings, false)
            .expect("create");
        let value = "r".repeat(150);
        for _ in 0..20 {
            broker
                .produce("ret", 0, batch(&[&value], 1), Acks::All)
                .await
                .expect("produce");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (start, _) = broker
                .list_offsets("ret", 0, OffsetSpec::Earliest)
                .expect("earliest");
            if start > 0 {
                assert!(start < 20, "the active segment stays");
                break;
            }
            assert!(Instant::now() < deadline, "retention never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn producer_state_is_rebuilt_after_a_crash() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pid, first) = {
            let broker = open(dir.path());
            broker
                .create_topic("crash", Some(1), configs(&[("flush.mode", "sync")]), false)
                .expect("create");
            let (pid, _) = broker.init_producer_id(None, None).expect("id");
            let first = idempotent_batch(pid, 0, 0, &["a", "b"]);
            broker
                .produce("crash", 0, first.clone(), Acks::All)
                .await
                .expect("produce");
            broker
                .produce("crash", 0, idempotent_batch(pid, 0, 2, &["c"]), Acks::All)
                .await
                .expect("produce");
            // No shutdown: no final snapshot; the next open must scan the log.
            drop(broker);
            (pid, first)
        };
        let broker = open(dir.path());
        let retried = broker
            .produce("crash", 0, first, Acks::All)
            .await
            .expect("retry after crash");
        assert_eq!(retried.base_offset, 0);
        let gap = broker
            .produce("crash", 0, idempotent_batch(pid, 0, 4, &["x"]), Acks::All)
            .await;
        assert!(
            matches!(gap, Err(CoreError::OutOfOrderSequence(_))),
            "{gap:?}"
        );
        let next = broker
            .produce("crash", 0, idempotent_batch(pid, 0, 3, &["d"]), Acks::All)
            .await
            .expect("next");
        assert_eq!(next.base_offset, 3);
        let (new_pid, _) = broker.init_producer_id(None, None).expect("id");
        assert!(new_pid > pid, "a crash does not make ids reusable");
        broker.shutdown().await.expect("shutdown");
    })
    .await;
}
