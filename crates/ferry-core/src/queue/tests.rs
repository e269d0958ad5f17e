//! Queue engine tests: cursor, delivery rules, TTL, limits, dead-lettering, recovery,
//! stream queues. Every async test is bounded by [`within`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_storage::{Store, StoreConfig};
use parking_lot::Mutex;

use super::*;
use crate::message::{FieldValue, Properties};
use crate::test_support::{s, table};

/// Upper bound of any one async step in these tests.
const STEP: Duration = Duration::from_secs(5);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("timed out")
}

#[derive(Debug, Default)]
struct TestSink {
    dead: Mutex<Vec<(String, Message, DeadLetterReason)>>,
    deletes: Mutex<Vec<(String, String, DeleteReason)>>,
}

impl DeadLetterSink for TestSink {
    fn dead_letter(
        &self,
        queue: &str,
        _settings: &QueueSettings,
        message: Message,
        reason: DeadLetterReason,
    ) {
        self.dead.lock().push((queue.to_string(), message, reason));
    }

    fn delete_queue(&self, vhost: &str, queue: &str, reason: DeleteReason) {
        self.deletes
            .lock()
            .push((vhost.to_string(), queue.to_string(), reason));
    }
}

impl TestSink {
    fn dead_bodies(&self) -> Vec<(String, DeadLetterReason)> {
        self.dead
            .lock()
            .iter()
            .map(|(_, m, r)| (String::from_utf8_lossy(&m.body).into_owned(), *r))
            .collect()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    sink: Arc<TestSink>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("store");
        Fixture {
            _dir: dir,
            store,
            sink: Arc::new(TestSink::default()),
        }
    }

    fn env(&self) -> QueueEnv {
        QueueEnv {
            store: self.store.clone(),
            broker: Weak::new(),
            dead_letters: self.sink.clone(),
        }
    }

    fn queue(&self, durable: bool, args: &[(&str, FieldValue)]) -> Arc<Queue> {
        self.named("q", durable, false, args)
    }

    fn named(
        &self,
        name: &str,
        durable: bool,
        auto_delete: bool,
        args: &[(&str, FieldValue)],
    ) -> Arc<Queue> {
        let settings = QueueSettings::parse("/", name, durable, None, auto_delete, table(args))
            .expect("settings");
        Queue::open(&self.env(), "/", name, settings).expect("open")
    }

    /// Shuts the store down cleanly and opens it again.
    fn restart(self) -> Fixture {
        let Fixture { _dir, store, sink } = self;
        store.shutdown().expect("shutdown");
        drop(store);
        let store = Store::open(StoreConfig::new(_dir.path())).expect("reopen");
        Fixture { _dir, store, sink }
    }
}

fn msg(body: &str) -> Message {
    Message {
        exchange: String::new(),
        routing_key: "q".into(),
        properties: Properties {
            delivery_mode: Some(2),
            ..Properties::default()
        },
        body: Bytes::from(body.to_string()),
    }
}

fn with(body: &str, f: impl FnOnce(&mut Properties)) -> Message {
    let mut m = msg(body);
    f(&mut m.properties);
    m
}

fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.message.body).into_owned()
}

fn put(queue: &Queue, m: &Message) {
    match queue.enqueue(m).expect("enqueue") {
        EnqueueOutcome::Enqueued { .. } => {}
        EnqueueOutcome::Rejected => panic!("rejected"),
    }
}

fn get(queue: &Queue) -> Delivery {
    queue.get(false).expect("get").expect("a message")
}

fn spec(tag: &str) -> ConsumerSpec {
    ConsumerSpec {
        tag: tag.into(),
        connection: ConnectionId(1),
        exclusive: false,
        no_ack: false,
        priority: 0,
        stream_start: StreamStart::Next,
        shared_limit: None,
    }
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    within(async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn get_ack_requeue_and_counts() {
    let fx = Fixture::new();
    let q = fx.queue(false, &[]);
    for b in ["a", "b", "c"] {
        put(&q, &msg(b));
    }
    assert_eq!(q.message_count(), 3);
    let a = get(&q);
    assert_eq!(
        (body(&a), a.redelivered, a.remaining),
        ("a".into(), false, 2)
    );
    let b = get(&q);
    assert_eq!(q.message_count(), 1);
    q.reject(&[a.id], true).expect("requeue");
    assert_eq!(q.message_count(), 2);
    let again = get(&q);
    assert_eq!((body(&again), again.redelivered), ("a".into(), true));
    q.ack(&[again.id, b.id]).expect("ack");
    // Acking twice or unknown ids is harmless.
    q.ack(&[again.id]).expect("ack");
    assert_eq!(body(&get(&q)), "c");
    assert!(q.get(false).expect("get").is_none());
    // Rejected without requeue and no dead-letter exchange: dropped silently.
    q.reject(&[a.id], false).expect("reject");
    assert!(fx.sink.dead.lock().is_empty());
}

#[tokio::test]
async fn consumers_round_robin_and_no_ack() {
    let fx = Fixture::new();
    let q = fx.queue(false, &[]);
    let c1 = q.add_consumer(spec("c1")).expect("c1");
    let c2 = q.add_consumer(spec("c2")).expect("c2");
    assert_eq!(q.consumer_count(), 2);
    // Without credit a consumer is handed nothing.
    put(&q, &msg("m0"));
    assert_eq!(q.message_count(), 1);
    // Both get credit; messages then alternate between them, strictly, whether or not
    // their delivery tasks are there to take them.
    q.grant(&c1, 4);
    q.grant(&c2, 4);
    assert_eq!(q.message_count(), 0, "m0 handed to c1 at its grant");
    for i in 1..=6 {
        put(&q, &msg(&format!("m{i}")));
    }
    let bodies = |c: &Arc<Consumer>, n: usize| {
        let q = q.clone();
        let c = c.clone();
        async move {
            let mut got = Vec::new();
            for _ in 0..n {
                got.push(body(&within(q.next_delivery(&c)).await.expect("d")));
            }
            got
        }
    };
    assert_eq!(bodies(&c1, 4).await, ["m0", "m2", "m4", "m6"]);
    assert_eq!(bodies(&c2, 3).await, ["m1", "m3", "m5"]);
    // c1's credit is used up: the next goes to c2, then two wait.
    for i in 7..=9 {
        put(&q, &msg(&format!("m{i}")));
    }
    assert_eq!(bodies(&c2, 1).await, ["m7"]);
    assert_eq!(q.message_count(), 2);
    // A consumer leaving puts back what it was handed and never took, unmarked.
    q.grant(&c1, 1);
    q.remove_consumer(&c1);
    q.remove_consumer(&c2);
    let again = get(&q);
    assert_eq!(body(&again), "m8");
    assert!(!again.redelivered);
    assert_eq!(body(&get(&q)), "m9");

    // A no-ack consumer is handed a bounded window ahead of taking; deliveries are
    // settled when taken. It needs no grant, also for the messages there before it came.
    let window = u64::from(CONSUMER_WINDOW);
    for i in 0..window {
        put(&q, &msg(&format!("n{i}")));
    }
    let mut spec3 = spec("c3");
    spec3.no_ack = true;
    let c3 = q.add_consumer(spec3).expect("c3");
    assert_eq!(q.message_count(), 0);
    put(&q, &msg("over1"));
    put(&q, &msg("over2"));
    assert_eq!(q.message_count(), 2);
    let d = within(q.next_delivery(&c3)).await.expect("d");
    assert_eq!(body(&d), "n0");
    assert_eq!(q.message_count(), 1, "taking one opens the window by one");
    q.reject(&[d.id], true).expect("no-op");
    assert_eq!(q.message_count(), 1);
}

#[tokio::test]
async fn a_shared_limit_is_taken_at_hand_out() {
    let fx = Fixture::new();
    let idle = fx.named("idle", false, false, &[]);
    let busy = fx.named("busy", false, false, &[]);
    let limit = Arc::new(SharedLimit::default());
    limit.set_limit(2);
    let with_limit = |tag: &str| {
        let mut spec = spec(tag);
        spec.shared_limit = Some(limit.clone());
        spec
    };
    // The idle queue's consumer has credit, and holds none of the shared limit.
    let waiting = idle.add_consumer(with_limit("waiting")).expect("c");
    idle.grant(&waiting, 8);
    let working = busy.add_consumer(with_limit("working")).expect("c");
    busy.grant(&working, 8);
    for i in 0..4 {
        put(&busy, &msg(&i.to_string()));
    }
    assert_eq!(
        busy.message_count(),
        2,
        "two handed out under the limit of 2"
    );
    assert_eq!(limit.outstanding(), 2);
    // A message for the idle queue waits for room too.
    put(&idle, &msg("idle"));
    assert_eq!(idle.message_count(), 1);
    // Settling one gives room back; the consumers' queues then look again (the adapter
    // asks them to, as here with an empty grant) and the first to look takes it.
    assert_eq!(
        body(&within(busy.next_delivery(&working)).await.expect("d")),
        "0"
    );
    limit.give_back(1);
    busy.grant(&working, 0);
    idle.grant(&waiting, 0);
    assert_eq!((busy.message_count(), idle.message_count()), (1, 1));
    assert_eq!(limit.outstanding(), 2);
    // A consumer that leaves gives back what it was handed and never took ("1", "2").
    busy.remove_consumer(&working);
    assert_eq!(limit.outstanding(), 0);
    assert_eq!(busy.message_count(), 3);
    idle.grant(&waiting, 0);
    assert_eq!(
        body(&within(idle.next_delivery(&waiting)).await.expect("d")),
        "idle"
    );
    assert_eq!(limit.outstanding(), 1);
    // No-ack consumers ignore it.
    let mut free = spec("free");
    free.no_ack = true;
    free.shared_limit = Some(limit.clone());
    let _free = busy.add_consumer(free).expect("c");
    assert_eq!(busy.message_count(), 0);
}

#[tokio::test]
async fn consumer_priority_single_active_and_exclusive() {
    let fx = Fixture::new();
    let q = fx.queue(false, &[]);
    let low = q.add_consumer(spec("low")).expect("low");
    let mut high_spec = spec("high");
    high_spec.priority = 10;
    let high = q.add_consumer(high_spec).expect("high");
    q.grant(&low, 2);
    q.grant(&high, 2);
    // The higher priority gets messages while it has credit, then the lower.
    for m in ["first", "second", "third"] {
        put(&q, &msg(m));
    }
    let next = |c: &Arc<Consumer>| {
        let (q, c) = (q.clone(), c.clone());
        async move { body(&within(q.next_delivery(&c)).await.expect("d")) }
    };
    assert_eq!(next(&high).await, "first");
    assert_eq!(next(&high).await, "second");
    assert_eq!(next(&low).await, "third");

    let mut excl = spec("x");
    excl.exclusive = true;
    match q.add_consumer(excl) {
        Err(MqError::AccessRefused(t)) => {
            assert_eq!(t, "queue 'q' in vhost '/' in exclusive use")
        }
        other => panic!("{other:?}"),
    }

    let sac = fx.named(
        "sac",
        false,
        false,
        &[("x-single-active-consumer", FieldValue::Bool(true))],
    );
    let first = sac.add_consumer(spec("first")).expect("first");
    let second = sac.add_consumer(spec("second")).expect("second");
    sac.grant(&first, 1);
    sac.grant(&second, 1);
    put(&sac, &msg("1"));
    put(&sac, &msg("2"));
    let (qs, ks) = (sac.clone(), second.clone());
    let waiting = tokio::spawn(async move { body(&qs.next_delivery(&ks).await.expect("d")) });
    assert_eq!(
        body(&within(sac.next_delivery(&first)).await.expect("d")),
        "1"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !waiting.is_finished(),
        "the inactive consumer got a message"
    );
    sac.remove_consumer(&first);
    assert_eq!(within(waiting).await.expect("join"), "2");
}

#[tokio::test]
async fn priorities_highest_level_first() {
    let fx = Fixture::new();
    let q = fx.queue(true, &[("x-max-priority", FieldValue::U8(5))]);
    put(&q, &msg("none"));
    put(&q, &with("p1", |p| p.priority = Some(1)));
    put(&q, &with("p9", |p| p.priority = Some(9)));
    put(&q, &with("p3", |p| p.priority = Some(3)));
    let order: Vec<String> = (0..4).map(|_| body(&get(&q))).collect();
    assert_eq!(order, ["p9", "p3", "p1", "none"]);
}

#[tokio::test]
async fn ttl_expires_at_the_head_even_without_consumers() {
    let fx = Fixture::new();
    let q = fx.queue(
        false,
        &[
            ("x-message-ttl", FieldValue::I32(50)),
            ("x-dead-letter-exchange", s("dlx")),
        ],
    );
    put(&q, &msg("old"));
    put(&q, &with("short", |p| p.expiration = Some("10".into())));
    wait_until(|| q.message_count() == 0).await;
    assert_eq!(
        fx.sink.dead_bodies(),
        [
            ("old".to_string(), DeadLetterReason::Expired),
            ("short".to_string(), DeadLetterReason::Expired)
        ]
    );
    // Per-message expiration without a queue TTL.
    let p = fx.named("per-message", false, false, &[]);
    put(&p, &with("gone", |p| p.expiration = Some("20".into())));
    put(&p, &msg("stays"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(body(&get(&p)), "stays");
}

#[tokio::test]
async fn zero_ttl_delivers_only_to_a_consumer_with_credit() {
    let fx = Fixture::new();
    let q = fx.queue(false, &[("x-message-ttl", FieldValue::I32(0))]);
    let c = q.add_consumer(spec("c")).expect("c");
    q.grant(&c, 1);
    put(&q, &msg("caught"));
    assert_eq!(
        body(&within(q.next_delivery(&c)).await.expect("d")),
        "caught"
    );
    put(&q, &msg("dropped"));
    // No consumer has credit now: expired at once, a get right after the publish finds
    // nothing.
    assert!(q.get(false).expect("get").is_none());
    wait_until(|| q.message_count() == 0).await;
    assert_nothing_delivered(&q, &c).await;
}

#[tokio::test]
async fn zero_ttl_reaches_a_ready_consumer_before_it_asks() {
    let fx = Fixture::new();
    let q = fx.queue(false, &[("x-message-ttl", FieldValue::I32(0))]);
    // basic.consume with credit: ready at once, its delivery task not yet running.
    let ready = q.add_consumer(spec("ready")).expect("ready");
    q.grant(&ready, 1);
    put(&q, &msg("published right after consume-ok"));
    assert_eq!(
        body(&within(q.next_delivery(&ready)).await.expect("delivery")),
        "published right after consume-ok"
    );
    // Without credit at consume time a consumer is not ready, and the message expires.
    let fx = Fixture::new();
    let q = fx.queue(false, &[("x-message-ttl", FieldValue::I32(0))]);
    let idle = q.add_consumer(spec("idle")).expect("idle");
    put(&q, &msg("expires"));
    wait_until(|| q.message_count() == 0).await;
    assert_nothing_delivered(&q, &idle).await;
}

/// Asserts that `consumer` is handed nothing within 50 ms (its messages expired).
async fn assert_nothing_delivered(q: &Arc<Queue>, consumer: &Arc<Consumer>) {
    let (qq, cc) = (q.clone(), consumer.clone());
    let late = tokio::spawn(async move { qq.next_delivery(&cc).await.map(|d| body(&d)) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!late.is_finished(), "an expired message was delivered");
    late.abort();
}

#[tokio::test]
async fn quorum_delivery_count_and_limit() {
    let fx = Fixture::new();
    let q = fx.queue(
        true,
        &[
            ("x-queue-type", s("quorum")),
            ("x-delivery-limit", FieldValue::I32(1)),
            ("x-dead-letter-exchange", s("dlx")),
        ],
    );
    put(&q, &msg("m"));
    let first = get(&q);
    assert!(first
        .message
        .properties
        .headers
        .as_ref()
        .is_none_or(|h| !h.contains_key("x-delivery-count")));
    q.reject(&[first.id], true).expect("requeue");
    let second = get(&q);
    assert_eq!(
        second
            .message
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-delivery-count")),
        Some(&FieldValue::I64(1))
    );
    q.reject(&[second.id], true).expect("requeue");
    assert_eq!(q.message_count(), 0);
    assert_eq!(
        fx.sink.dead_bodies(),
        [("m".to_string(), DeadLetterReason::DeliveryLimit)]
    );
}

#[tokio::test]
async fn length_limits_and_overflow() {
    let fx = Fixture::new();
    let q = fx.queue(
        false,
        &[
            ("x-max-length", FieldValue::I32(2)),
            ("x-dead-letter-exchange", s("dlx")),
        ],
    );
    for b in ["1", "2", "3"] {
        put(&q, &msg(b));
    }
    assert_eq!(q.message_count(), 2);
    assert_eq!(
        fx.sink.dead_bodies(),
        [("1".to_string(), DeadLetterReason::MaxLen)]
    );
    assert_eq!(body(&get(&q)), "2");

    let r = fx.named(
        "reject",
        false,
        false,
        &[
            ("x-max-length-bytes", FieldValue::I32(3)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("dlx")),
        ],
    );
    put(&r, &msg("abc"));
    assert!(matches!(
        r.enqueue(&msg("d")).expect("enqueue"),
        EnqueueOutcome::Rejected
    ));
    assert_eq!(r.message_count(), 1);
    assert_eq!(fx.sink.dead_bodies().last().expect("dl").0, "d");
    // Consuming makes room again.
    let d = get(&r);
    r.ack(&[d.id]).expect("ack");
    put(&r, &msg("e"));
}

#[tokio::test]
async fn rejected_messages_are_dead_lettered() {
    let fx = Fixture::new();
    let q = fx.queue(false, &[("x-dead-letter-exchange", s(""))]);
    put(&q, &msg("bad"));
    let d = get(&q);
    q.reject(&[d.id], false).expect("reject");
    assert_eq!(
        fx.sink.dead_bodies(),
        [("bad".to_string(), DeadLetterReason::Rejected)]
    );
    assert_eq!(q.message_count(), 0);
}

/// Enqueues `m`, returning whether the queue asked the publisher to wait.
fn put_throttled(queue: &Queue, m: &Message) -> bool {
    match queue.enqueue(m).expect("enqueue") {
        EnqueueOutcome::Enqueued { throttled, .. } => throttled,
        EnqueueOutcome::Rejected => panic!("rejected"),
    }
}

/// Grants `consumer` credit for `n` deliveries and takes them.
async fn take(q: &Queue, consumer: &Consumer, n: usize, into: &mut Vec<DeliveryId>) {
    q.grant(consumer, u32::try_from(n).expect("n"));
    for _ in 0..n {
        into.push(
            within(q.next_delivery(consumer))
                .await
                .expect("delivery")
                .id,
        );
    }
}

#[tokio::test]
async fn publishers_wait_only_for_consumers_that_keep_pace() {
    let fx = Fixture::new();
    let q = fx.queue(false, &[]);
    // No consumer: a backlog is what the queue is for, nobody is held.
    for i in 0..FLOW_READY_LIMIT + 10 {
        assert!(!put_throttled(&q, &msg(&i.to_string())));
    }
    within(q.flow_wait()).await;

    // A consumer that has taken nothing yet (a worker being handed a backlog) holds nobody.
    let consumer = q.add_consumer(spec("c")).expect("consumer");
    assert!(!put_throttled(&q, &msg("backlog")));

    // A consumer taking ~1,000 msg/s would drain a few hundred messages within
    // FLOW_DRAIN_MS: publishers wait for it to bring the queue back under the limit.
    let mut taken = Vec::new();
    take(&q, &consumer, 100, &mut taken).await;
    tokio::time::sleep(Duration::from_millis(105)).await;
    take(&q, &consumer, 1, &mut taken).await;
    let mut throttled = false;
    while q.message_count() <= FLOW_READY_LIMIT + 40 {
        throttled = put_throttled(&q, &msg("over"));
    }
    assert!(
        throttled,
        "a publisher outrunning a fast consumer is not held"
    );
    let waiter = tokio::spawn({
        let q = q.clone();
        async move {
            let started = tokio::time::Instant::now();
            q.flow_wait().await;
            started.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !waiter.is_finished(),
        "released before the consumer caught up"
    );
    while q.message_count() > FLOW_READY_LIMIT {
        take(&q, &consumer, 1, &mut taken).await;
    }
    let held = within(waiter).await.expect("waiter");
    assert!(held < FLOW_MAX_HOLD, "held {held:?}");

    // The consumer stops (at its prefetch limit, or stuck): its pace drops to zero and the
    // held publisher goes well before the hold limit; later publishes are not held.
    while q.message_count() <= FLOW_READY_LIMIT + 20 {
        put(&q, &msg("more"));
    }
    let started = tokio::time::Instant::now();
    within(q.flow_wait()).await;
    let held = started.elapsed();
    assert!(held < FLOW_MAX_HOLD / 2, "held {held:?}");
    assert!(!put_throttled(&q, &msg("stalled consumer")));

    // Losing the last consumer releases at once.
    q.remove_consumer(&consumer);
    within(q.flow_wait()).await;
    assert!(!put_throttled(&q, &msg("no consumer")));
    q.ack(&taken).expect("ack");
}

/// Recheck interval and hold limit far beyond [`STEP`]: a publisher waiting with them is
/// released only by a notification.
const NO_RECHECK: Duration = Duration::from_secs(3_600);

#[test]
fn waiting_publisher_is_released_when_the_consumer_drains_the_queue() {
    let fx = Fixture::new();
    // Opened outside a runtime: no maintenance task, whose rounds would also wake publishers.
    let q = fx.queue(false, &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let Engine::Classic(classic) = &q.engine else {
            panic!("not a classic queue")
        };
        // A consumer taking thousands of messages per second, then a backlog over the limit.
        for i in 0..4 * FLOW_READY_LIMIT {
            put(&q, &msg(&i.to_string()));
        }
        let consumer = q.add_consumer(spec("c")).expect("consumer");
        let mut taken = Vec::new();
        take(&q, &consumer, 3 * FLOW_READY_LIMIT as usize, &mut taken).await;
        tokio::time::sleep(Duration::from_millis(105)).await;
        take(&q, &consumer, 1, &mut taken).await;
        while q.message_count() <= FLOW_READY_LIMIT + 40 {
            put(&q, &msg("over"));
        }

        // A cancelled wait leaves no waiter counted.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(5),
            classic.flow_wait(NO_RECHECK, NO_RECHECK),
        )
        .await;
        assert!(cancelled.is_err(), "publisher not held");
        assert_eq!(classic.flow_waiters(), 0);

        let waiter = async {
            classic.flow_wait(NO_RECHECK, NO_RECHECK).await;
            q.message_count()
        };
        let drain = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(classic.flow_waiters(), 1, "publisher not held");
            let mut drained = Vec::new();
            while q.message_count() > FLOW_READY_LIMIT {
                take(&q, &consumer, 1, &mut drained).await;
            }
            drained
        };
        let (ready_at_release, drained) = within(async { tokio::join!(waiter, drain) }).await;
        assert!(ready_at_release <= FLOW_READY_LIMIT);
        assert_eq!(classic.flow_waiters(), 0);
        taken.extend(drained);
        q.ack(&taken).expect("ack");
    });
}

#[tokio::test]
async fn purge_keeps_unacked() {
    let fx = Fixture::new();
    let q = fx.queue(true, &[]);
    for b in ["1", "2", "3"] {
        put(&q, &msg(b));
    }
    let d = get(&q);
    assert_eq!(q.purge().expect("purge"), 2);
    assert_eq!(q.message_count(), 0);
    q.reject(&[d.id], true).expect("requeue");
    assert_eq!(q.message_count(), 1);
    put(&q, &msg("4"));
    assert_eq!(body(&get(&q)), "1");
    assert_eq!(body(&get(&q)), "4");
}

#[tokio::test]
async fn delete_ends_consumers_and_removes_logs() {
    let fx = Fixture::new();
    let q = fx.queue(true, &[]);
    put(&q, &msg("1"));
    let c = q.add_consumer(spec("c")).expect("c");
    q.grant(&c, 2);
    let d = within(q.next_delivery(&c)).await.expect("d");
    assert_eq!(body(&d), "1");
    let (qq, cc) = (q.clone(), c.clone());
    let waiter = tokio::spawn(async move { qq.next_delivery(&cc).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(20)).await;
    put(&q, &msg("2"));
    // The waiting consumer took "2"; delete reports the ready count (0).
    let _ = within(waiter).await;
    put(&q, &msg("3"));
    assert_eq!(q.delete().expect("delete"), 1);
    assert_eq!(
        within(q.next_delivery(&c)).await.err(),
        Some(ConsumerEnd::QueueDeleted)
    );
    assert!(matches!(q.enqueue(&msg("x")), Err(MqError::NotFound(_))));
    let key = storage_key("/", "q");
    assert!(fx
        .store
        .log_ids()
        .iter()
        .all(|id| storage_key_of_log(&id.topic) != Some(key.as_str())));
}

#[tokio::test]
async fn auto_delete_and_expires_ask_the_vhost() {
    let fx = Fixture::new();
    let q = fx.named("auto", false, true, &[]);
    let c = q.add_consumer(spec("c")).expect("c");
    q.remove_consumer(&c);
    wait_until(|| !fx.sink.deletes.lock().is_empty()).await;
    assert_eq!(
        fx.sink.deletes.lock()[0],
        (
            "/".to_string(),
            "auto".to_string(),
            DeleteReason::AutoDelete
        )
    );
    let _e = fx.named("exp", false, false, &[("x-expires", FieldValue::I32(100))]);
    wait_until(|| fx.sink.deletes.lock().len() == 2).await;
    assert_eq!(fx.sink.deletes.lock()[1].2, DeleteReason::Expired);
}

#[tokio::test]
async fn restart_redelivers_only_unacked_and_drops_transients() {
    let fx = Fixture::new();
    let q = fx.queue(true, &[]);
    for i in 0..6 {
        put(&q, &msg(&format!("p{i}")));
        if i == 2 {
            put(&q, &with("transient", |p| p.delivery_mode = Some(1)));
        }
    }
    // p0 and p2 acked (out of order around p1), p1 delivered and never acked.
    let d0 = get(&q);
    let d1 = get(&q);
    let d2 = get(&q);
    assert_eq!(body(&d1), "p1");
    q.ack(&[d2.id, d0.id]).expect("ack");
    q.shutdown();
    drop(q);
    let fx = fx.restart();
    let q = fx.queue(true, &[]);
    assert_eq!(q.message_count(), 4);
    let again = get(&q);
    assert_eq!((body(&again), again.redelivered), ("p1".into(), true));
    let next = get(&q);
    assert_eq!((body(&next), next.redelivered), ("p3".into(), false));
    q.ack(&[again.id, next.id]).expect("ack");
    q.shutdown();
    drop(q);
    // A second restart keeps the acks of the first run's survivors.
    let fx = fx.restart();
    let q = fx.queue(true, &[]);
    assert_eq!(q.message_count(), 2);
    assert_eq!(body(&get(&q)), "p4");
}

#[tokio::test]
async fn coalesced_acks_reach_the_ack_log_without_a_shutdown() {
    let fx = Fixture::new();
    let q = fx.queue(true, &[]);
    for i in 0..20 {
        put(&q, &msg(&format!("m{i}")));
    }
    // Acks one by one, out of order, faster than the coalescing interval.
    let deliveries: Vec<Delivery> = (0..20).map(|_| get(&q)).collect();
    for d in deliveries.iter().rev().step_by(2) {
        q.ack(&[d.id]).expect("ack");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(q);
    let fx = fx.restart();
    let q = fx.queue(true, &[]);
    assert_eq!(q.message_count(), 10);
    let left: Vec<String> = (0..10).map(|_| body(&get(&q))).collect();
    let want: Vec<String> = (0..20).step_by(2).map(|i| format!("m{i}")).collect();
    assert_eq!(left, want);
}

#[tokio::test]
async fn consumed_segments_are_deleted_and_durability_follows_the_queue() {
    let fx = Fixture::new();
    let q = fx.queue(true, &[]);
    let body = Bytes::from(vec![1u8; 1024]);
    let mut last = None;
    for _ in 0..2500 {
        let mut m = msg("");
        m.body = body.clone();
        match q.enqueue(&m).expect("enqueue") {
            EnqueueOutcome::Enqueued { durable, .. } => {
                assert!(
                    !durable.is_immediate(),
                    "a durable queue waits for the fsync"
                );
                last = Some(durable);
            }
            EnqueueOutcome::Rejected => panic!("rejected"),
        }
    }
    within(last.expect("enqueued").wait())
        .await
        .expect("durable");
    let id = ferry_storage::LogId {
        topic: format!("{QUEUE_LOG_PREFIX}{}", storage_key("/", "q")),
        partition: 0,
    };
    let log = fx.store.log(&id).expect("queue log");
    let size_before = log.size_bytes();
    for _ in 0..2000 {
        let d = get(&q);
        q.ack(&[d.id]).expect("ack");
    }
    wait_until(|| log.log_start_offset() > 0).await;
    assert!(log.log_start_offset() <= 2000);
    assert!(log.size_bytes() < size_before, "no segment was deleted");
    assert_eq!(q.message_count(), 500);

    let t = fx.named("transient", false, false, &[]);
    match t.enqueue(&msg("x")).expect("enqueue") {
        EnqueueOutcome::Enqueued { durable, .. } => assert!(durable.is_immediate()),
        EnqueueOutcome::Rejected => panic!("rejected"),
    }
}

#[tokio::test]
async fn non_durable_queues_start_empty() {
    let fx = Fixture::new();
    let q = fx.queue(false, &[]);
    put(&q, &msg("gone"));
    drop(q);
    let fx = fx.restart();
    let q = fx.queue(false, &[]);
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn stream_queue_is_a_kafka_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = crate::Broker::open(crate::BrokerConfig::new(dir.path())).expect("broker");
    let sink = Arc::new(TestSink::default());
    let env = QueueEnv {
        store: broker.queue_store().clone(),
        broker: Arc::downgrade(&broker),
        dead_letters: sink,
    };
    let settings = QueueSettings::parse(
        "/",
        "events",
        true,
        None,
        false,
        [("x-queue-type".to_string(), s("stream"))]
            .into_iter()
            .collect(),
    )
    .expect("settings");
    let q = Queue::open(&env, "/", "events", settings.clone()).expect("open");
    assert!(broker.topic("events").is_some());
    put(&q, &msg("a"));
    put(&q, &msg("b"));
    // Kafka-produced records reach AMQP consumers.
    let mut builder = ferry_storage::batch::BatchBuilder::new(0);
    builder.push(
        Some(Bytes::from("k")),
        Some(Bytes::from("from-kafka")),
        vec![("h".into(), Some(Bytes::from("v")))],
        0,
    );
    broker
        .produce("events", 0, builder.build(), crate::Acks::Leader)
        .await
        .expect("produce");
    let mut first = spec("first");
    first.stream_start = StreamStart::First;
    let c = q.add_consumer(first).expect("consumer");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = within(q.next_delivery(&c)).await.expect("d");
        q.ack(&[d.id]).expect("ack is credit only");
        seen.push(body(&d));
    }
    assert_eq!(seen, ["a", "b", "from-kafka"]);
    match q.reject(
        &[DeliveryId {
            level: 0,
            offset: 0,
        }],
        true,
    ) {
        Err(MqError::NotImplemented(t)) => assert_eq!(
            t,
            "basic.nack and basic.reject not supported by stream queues queue 'events' in vhost '/'"
        ),
        other => panic!("{other:?}"),
    }
    let last = within(q.next_delivery(&c));
    let mut next = spec("next");
    next.stream_start = StreamStart::Next;
    let n = q.add_consumer(next).expect("consumer");
    put(&q, &msg("c"));
    assert_eq!(body(&last.await.expect("d")), "c");
    assert_eq!(body(&within(q.next_delivery(&n)).await.expect("d")), "c");
    let mut offset = spec("offset");
    offset.stream_start = StreamStart::Offset(1);
    let o = q.add_consumer(offset).expect("consumer");
    let d = within(q.next_delivery(&o)).await.expect("d");
    assert_eq!(body(&d), "b");
    assert_eq!(
        d.message
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get(STREAM_OFFSET_HEADER)),
        Some(&FieldValue::I64(1))
    );
    // A redeclare adopts the same topic.
    let again = Queue::open(&env, "/", "events", settings).expect("reopen");
    assert_eq!(again.message_count(), 4);
    assert!(matches!(q.get(false), Err(MqError::NotImplemented(_))));
    assert!(matches!(
        q.check_stream_consumer(0, false),
        Err(MqError::PreconditionFailed(_))
    ));
    assert!(matches!(
        stream_topic("v", "a b"),
        Err(MqError::PreconditionFailed(_))
    ));
    assert_eq!(stream_topic("v", "s").expect("ok"), "v.s");
    broker.shutdown().await.expect("shutdown");
}

/// Reads this process's resident set size in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Memory stays bounded by unacked messages, not by the backlog: a million waiting 1 KiB
/// messages. Run with `cargo test -p ferry-core --release -- --ignored million --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn million_waiting_messages_fit_in_bounded_memory() {
    const MESSAGES: usize = 1_000_000;
    let fx = Fixture::new();
    let q = fx.queue(true, &[]);
    let before = rss_kib();
    let body = Bytes::from(vec![7u8; 1024]);
    let started = std::time::Instant::now();
    let mut waits = Vec::new();
    for _ in 0..MESSAGES {
        let mut m = msg("");
        m.body = body.clone();
        if let EnqueueOutcome::Enqueued { durable, .. } = q.enqueue(&m).expect("enqueue") {
            waits.push(durable);
            if waits.len() >= 1000 {
                for w in waits.drain(..) {
                    w.wait().await.expect("durable");
                }
            }
        }
    }
    for w in waits.drain(..) {
        w.wait().await.expect("durable");
    }
    let elapsed = started.elapsed();
    assert_eq!(q.message_count(), MESSAGES as u64);
    let after = rss_kib();
    println!(
        "enqueued {MESSAGES} x 1 KiB persistent in {elapsed:?} ({:.0} msg/s); RSS {before} KiB -> {after} KiB",
        MESSAGES as f64 / elapsed.as_secs_f64()
    );
    assert!(after < 200 * 1024, "RSS {after} KiB over 200 MiB");
    // Draining half of it keeps memory bounded too.
    let started = std::time::Instant::now();
    for _ in 0..MESSAGES / 2 {
        let d = get(&q);
        q.ack(&[d.id]).expect("ack");
    }
    let drained = rss_kib();
    println!(
        "drained {} in {:?}; RSS {drained} KiB",
        MESSAGES / 2,
        started.elapsed()
    );
    assert!(drained < 200 * 1024);
    // A restart recovers the half million left (scanning them once) in bounded memory.
    q.shutdown();
    drop(q);
    let fx = fx.restart();
    let started = std::time::Instant::now();
    let q = fx.queue(true, &[]);
    println!(
        "recovered {} in {:?}; RSS {} KiB",
        q.message_count(),
        started.elapsed(),
        rss_kib()
    );
    assert_eq!(q.message_count(), (MESSAGES - MESSAGES / 2) as u64);
}

/// Publish-and-consume throughput of one durable queue, persistent 1 KiB messages: one
/// producer waiting for durability in windows of 100 (as publisher confirms), one consumer
/// acking in batches of 50. Run with
/// `cargo test -p ferry-core --release -- --ignored throughput --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_publish_consume() {
    const MESSAGES: usize = 200_000;
    const WINDOW: usize = 100;
    const ACK_BATCH: usize = 50;
    let fx = Fixture::new();
    let q = fx.queue(true, &[]);
    let consumer = q.add_consumer(spec("c")).expect("consumer");
    let started = std::time::Instant::now();
    let (qc, cc) = (q.clone(), consumer.clone());
    // Credit as the AMQP adapter keeps it for a consumer without a prefetch limit.
    q.grant(&consumer, CONSUMER_WINDOW);
    let consuming = tokio::spawn(async move {
        let mut pending = Vec::with_capacity(ACK_BATCH);
        for _ in 0..MESSAGES {
            let d = qc.next_delivery(&cc).await.expect("delivery");
            qc.grant(&cc, 1);
            pending.push(d.id);
            if pending.len() == ACK_BATCH {
                qc.ack(&pending).expect("ack");
                pending.clear();
            }
        }
        qc.ack(&pending).expect("ack");
    });
    let body = Bytes::from(vec![7u8; 1024]);
    let mut waits = Vec::with_capacity(WINDOW);
    for _ in 0..MESSAGES {
        let mut m = msg("");
        m.body = body.clone();
        if let EnqueueOutcome::Enqueued { durable, .. } = q.enqueue(&m).expect("enqueue") {
            waits.push(durable);
        }
        if waits.len() == WINDOW {
            for w in waits.drain(..) {
                w.wait().await.expect("durable");
            }
        }
    }
    for w in waits.drain(..) {
        w.wait().await.expect("durable");
    }
    let published = started.elapsed();
    tokio::time::timeout(Duration::from_secs(300), consuming)
        .await
        .expect("consumer finished")
        .expect("join");
    let elapsed = started.elapsed();
    println!(
        "{MESSAGES} x 1 KiB persistent: published in {published:?} ({:.0} msg/s), consumed by {elapsed:?} ({:.0} msg/s)",
        MESSAGES as f64 / published.as_secs_f64(),
        MESSAGES as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(q.message_count(), 0);
}

/// One step of the cursor model test.
#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        persistent: bool,
        priority: u8,
    },
    Get,
    Ack(usize),
    Reject {
        pick: usize,
        requeue: bool,
    },
    Purge,
    /// Clean restart (queue shutdown, store shutdown).
    Restart,
    /// Restart without the queue's shutdown: coalesced acks are flushed by the maintenance
    /// task first, read positions are not saved.
    RestartUnclean,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0u8..6).prop_map(|priority| Op::Enqueue { persistent: true, priority }),
        1 => (0u8..6).prop_map(|priority| Op::Enqueue { persistent: false, priority }),
        4 => Just(Op::Get),
        3 => any::<usize>().prop_map(Op::Ack),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, requeue)| Op::Reject { pick, requeue }),
        1 => Just(Op::Purge),
        1 => Just(Op::Restart),
        1 => Just(Op::RestartUnclean),
    ]
}

/// Runs `ops` against a queue and a model of it (`max_priority`: `x-max-priority`).
async fn run_model(ops: Vec<Op>, max_priority: Option<u8>) {
    use std::cmp::Reverse;
    use std::collections::{BTreeMap, BTreeSet};
    let args: Vec<(&str, FieldValue)> = max_priority
        .map(|p| ("x-max-priority", FieldValue::U8(p)))
        .into_iter()
        .collect();
    let level = |p: u8| max_priority.map_or(0, |max| p.min(max));
    let mut fx = Fixture::new();
    let mut q = fx.queue(true, &args);
    let mut next_id = 0u32;
    // (Reverse(level), id) → persistent: delivery order.
    let mut ready: BTreeMap<(Reverse<u8>, u32), bool> = BTreeMap::new();
    let mut unacked: Vec<((Reverse<u8>, u32), bool, DeliveryId)> = Vec::new();
    let mut delivered: BTreeSet<u32> = BTreeSet::new();
    for op in ops {
        match op {
            Op::Enqueue {
                persistent,
                priority,
            } => {
                let m = with(&next_id.to_string(), |p| {
                    p.delivery_mode = Some(if persistent { 2 } else { 1 });
                    p.priority = Some(priority);
                });
                put(&q, &m);
                ready.insert((Reverse(level(priority)), next_id), persistent);
                next_id += 1;
            }
            Op::Get => {
                let got = q.get(false).expect("get");
                match ready.pop_first() {
                    None => assert!(got.is_none()),
                    Some((key, persistent)) => {
                        let d = got.expect("a message");
                        assert_eq!(body(&d), key.1.to_string());
                        assert_eq!(d.redelivered, delivered.contains(&key.1), "id {}", key.1);
                        delivered.insert(key.1);
                        unacked.push((key, persistent, d.id));
                    }
                }
            }
            Op::Ack(pick) if !unacked.is_empty() => {
                let (_, _, did) = unacked.remove(pick % unacked.len());
                q.ack(&[did]).expect("ack");
            }
            Op::Reject { pick, requeue } if !unacked.is_empty() => {
                let (key, persistent, did) = unacked.remove(pick % unacked.len());
                q.reject(&[did], requeue).expect("reject");
                if requeue {
                    ready.insert(key, persistent);
                }
            }
            Op::Purge => {
                assert_eq!(q.purge().expect("purge"), ready.len() as u64);
                ready.clear();
            }
            Op::Restart | Op::RestartUnclean => {
                if matches!(op, Op::Restart) {
                    q.shutdown();
                } else {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                drop(q);
                fx = fx.restart();
                q = fx.queue(true, &args);
                for (key, persistent, _) in unacked.drain(..) {
                    ready.insert(key, persistent);
                }
                ready.retain(|_, persistent| *persistent);
                if matches!(op, Op::RestartUnclean) {
                    // Without a clean snapshot every recovered message is flagged.
                    delivered.extend(ready.keys().map(|k| k.1));
                }
            }
            Op::Ack(_) | Op::Reject { .. } => {}
        }
        assert_eq!(q.message_count(), ready.len() as u64);
    }
}

fn block_on(f: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(32))]

    /// The cursor against a model: ready messages come out in offset order (highest
    /// priority level first), acked ones never come back, unacked ones come back
    /// (redelivered) after a restart, transient ones do not survive one.
    #[test]
    fn cursor_matches_model(ops in proptest::collection::vec(op(), 1..50)) {
        block_on(run_model(ops, None));
    }

    /// The same with three priority levels (priorities above the maximum count as it).
    #[test]
    fn priority_cursor_matches_model(ops in proptest::collection::vec(op(), 1..50)) {
        block_on(run_model(ops, Some(2)));
    }
}
