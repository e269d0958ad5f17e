//! Vhost tests against a real broker and real queues: declares and their texts, routing
//! into queues, confirms, exclusive queues, auto-delete cascades, dead-lettering and
//! recovery of durable definitions after a restart. Every async step is time-bounded.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::message::{FieldValue, Message, Properties};
use crate::mq::ConnectionId;
use crate::test_support::{s, table};
use crate::{Broker, BrokerConfig};

/// Upper bound of any one async step in these tests.
const STEP: Duration = Duration::from_secs(10);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("timed out")
}

/// Whether the store holds a log of queue `queue` of `vhost`.
fn has_queue_log(broker: &Broker, vhost: &str, queue: &str) -> bool {
    let key = crate::queue::storage_key(vhost, queue);
    broker
        .queue_store()
        .log_ids()
        .iter()
        .any(|id| crate::queue::storage_key_of_log(&id.topic) == Some(key.as_str()))
}

fn exchange(name: &str, kind: &str) -> ExchangeDeclare {
    ExchangeDeclare {
        name: name.into(),
        kind: kind.into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::new(),
    }
}

fn queue(name: &str) -> QueueDeclare {
    QueueDeclare {
        name: name.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: FieldTable::new(),
    }
}

fn message(exchange: &str, key: &str, body: &str) -> Message {
    Message {
        exchange: exchange.into(),
        routing_key: key.into(),
        properties: Properties::default(),
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    broker: Arc<Broker>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(BrokerConfig::new(dir.path())).expect("broker");
        Fixture { dir, broker }
    }

    fn vhost(&self) -> Arc<VHost> {
        self.broker
            .vhosts()
            .get(DEFAULT_VHOST)
            .expect("default vhost")
    }

    async fn restart(self) -> Fixture {
        within(self.broker.shutdown()).await.expect("shutdown");
        drop(self.broker);
        let broker = Broker::open(BrokerConfig::new(self.dir.path())).expect("reopen");
        Fixture {
            dir: self.dir,
            broker,
        }
    }
}

/// Bodies of the ready messages of `name`, acked.
fn drain(vhost: &VHost, name: &str) -> Vec<String> {
    let q = vhost.queue(name, ConnectionId(0)).expect("queue");
    let mut bodies = Vec::new();
    while let Some(delivery) = q.get(true).expect("get") {
        bodies.push(String::from_utf8_lossy(&delivery.message.body).into_owned());
    }
    bodies
}

fn err(r: MqResult<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn default_vhost_has_the_predeclared_exchanges() {
    let f = Fixture::new();
    let names: Vec<String> = f.vhost().exchanges().into_iter().map(|x| x.name).collect();
    assert_eq!(
        names,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.rabbitmq.trace",
            "amq.topic"
        ]
    );
    assert_eq!(f.broker.vhosts().names(), ["/"]);
    assert_eq!(
        err(f.broker.vhosts().get("nosuch")),
        "vhost nosuch not found"
    );
    within(f.broker.shutdown()).await.unwrap();
}

#[tokio::test]
async fn exchange_declare_rules_and_texts() {
    let f = Fixture::new();
    let v = f.vhost();
    assert!(matches!(
        v.declare_exchange(exchange("x", "nosuch")),
        Err(MqError::CommandInvalid(t)) if t == "unknown exchange type 'nosuch'"
    ));
    assert_eq!(
        err(v.declare_exchange(exchange("amq.foo", "direct"))),
        "exchange name 'amq.foo' contains reserved prefix 'amq.*'"
    );
    // Redeclaring a predeclared exchange equivalently is fine.
    v.declare_exchange(ExchangeDeclare {
        durable: true,
        ..exchange("amq.direct", "direct")
    })
    .unwrap();
    assert_eq!(
        err(v.declare_exchange(exchange("", "direct"))),
        "operation not permitted on the default exchange"
    );
    v.declare_exchange(exchange("x", "direct")).unwrap();
    assert_eq!(
        err(v.declare_exchange(exchange("x", "fanout"))),
        "inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'"
    );
    assert_eq!(
        err(v.declare_exchange(ExchangeDeclare { auto_delete: true, ..exchange("x", "direct") })),
        "inequivalent arg 'auto_delete' for exchange 'x' in vhost '/': received 'true' but current is 'false'"
    );
    // Passive ignores the type.
    v.declare_exchange(ExchangeDeclare {
        passive: true,
        ..exchange("x", "fanout")
    })
    .unwrap();
    assert_eq!(
        err(v.declare_exchange(ExchangeDeclare {
            passive: true,
            ..exchange("y", "")
        })),
        "no exchange 'y' in vhost '/'"
    );
    assert_eq!(
        err(v.delete_exchange("amq.direct", false)),
        "deletion of system exchange 'amq.direct' in vhost '/' not allowed"
    );
    v.delete_exchange("missing", false).unwrap();
    v.bind_exchange("x", "amq.direct", "k", FieldTable::new())
        .unwrap();
    // if-unused looks at bindings where it is the source only.
    v.delete_exchange("x", true).unwrap();
    assert!(!v.exchanges().iter().any(|x| x.name == "x"));
    v.declare_exchange(exchange("x", "direct")).unwrap();
    v.declare_queue(queue("q"), ConnectionId(1)).unwrap();
    v.bind_queue("q", "x", "k", FieldTable::new(), ConnectionId(1))
        .unwrap();
    assert_eq!(
        err(v.delete_exchange("x", true)),
        "exchange 'x' in vhost '/' in use"
    );
    assert_eq!(
        err(v.bind_queue("q", "missing", "k", FieldTable::new(), ConnectionId(1))),
        "no exchange 'missing' in vhost '/'"
    );
    assert_eq!(
        err(v.bind_queue("missing", "x", "k", FieldTable::new(), ConnectionId(1))),
        "no queue 'missing' in vhost '/'"
    );
    assert_eq!(
        err(v.declare_exchange(ExchangeDeclare {
            arguments: table(&[("alternate-exchange", FieldValue::I32(5))]),
            ..exchange("ae", "direct")
        })),
        "invalid type 'signedint' for arg 'alternate-exchange' in exchange 'ae' in vhost '/'"
    );
    let internal = ExchangeDeclare {
        internal: true,
        ..exchange("int", "fanout")
    };
    v.declare_exchange(internal).unwrap();
    assert_eq!(
        err(v.publish(message("int", "k", "m"))),
        "cannot publish to internal exchange 'int' in vhost '/'"
    );
    assert_eq!(
        err(v.publish(message("nope", "k", "m"))),
        "no exchange 'nope' in vhost '/'"
    );
    within(f.broker.shutdown()).await.unwrap();
}

#[tokio::test]
async fn queue_declare_rules_and_texts() {
    let f = Fixture::new();
    let v = f.vhost();
    let (a, b) = (ConnectionId(1), ConnectionId(2));
    let named = v
        .declare_queue(
            QueueDeclare {
                exclusive: true,
                ..queue("")
            },
            a,
        )
        .unwrap();
    assert!(named.name.starts_with("amq.gen-"));
    assert_eq!(
        err(v.declare_queue(
            QueueDeclare {
                durable: true,
                arguments: table(&[("x-queue-type", s("quorum"))]),
                ..queue("")
            },
            a
        )),
        "Cannot declare a server-named queue for type rabbit_quorum_queue"
    );
    // Server-named queues cannot be redeclared by name.
    assert_eq!(
        err(v.declare_queue(queue(&named.name), a)),
        format!(
            "queue name '{}' contains reserved prefix 'amq.*'",
            named.name
        )
    );
    assert_eq!(
        err(v.declare_queue(queue("amq.q"), a)),
        "queue name 'amq.q' contains reserved prefix 'amq.*'"
    );
    v.declare_queue(queue("q"), a).unwrap();
    assert_eq!(
        err(v.declare_queue(QueueDeclare { durable: true, ..queue("q") }, a)),
        "inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'"
    );
    assert_eq!(
        err(v.declare_queue(
            QueueDeclare {
                arguments: table(&[("x-message-ttl", FieldValue::I32(2000))]),
                ..queue("q")
            },
            a
        )),
        "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the value '2000' of type 'signedint' but current is none"
    );
    assert_eq!(
        err(v.declare_queue(
            QueueDeclare {
                passive: true,
                ..queue("nope")
            },
            a
        )),
        "no queue 'nope' in vhost '/'"
    );
    assert_eq!(
        err(v.declare_queue(
            QueueDeclare {
                arguments: table(&[("x-dead-letter-exchange", FieldValue::I32(5))]),
                ..queue("bad-dlx")
            },
            a
        )),
        "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'bad-dlx' in vhost '/'"
    );
    // Exclusive ownership.
    v.declare_queue(
        QueueDeclare {
            exclusive: true,
            ..queue("ex")
        },
        a,
    )
    .unwrap();
    let locked = "cannot obtain exclusive access to locked queue 'ex' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";
    assert_eq!(
        err(v.declare_queue(
            QueueDeclare {
                passive: true,
                ..queue("ex")
            },
            b
        )),
        locked
    );
    assert_eq!(err(v.declare_queue(queue("ex"), a)), locked);
    assert_eq!(err(v.queue("ex", b)), locked);
    assert_eq!(err(v.purge_queue("ex", b)), locked);
    assert_eq!(err(v.delete_queue("ex", false, false, b)), locked);
    v.declare_queue(
        QueueDeclare {
            exclusive: true,
            ..queue("ex")
        },
        a,
    )
    .unwrap();
    // Anyone may publish to it.
    assert_eq!(v.publish(message("", "ex", "m")).unwrap().queues, 1);
    f.broker.vhosts().connection_closed(a);
    assert_eq!(
        err(v.declare_queue(
            QueueDeclare {
                passive: true,
                ..queue("ex")
            },
            b
        )),
        "no queue 'ex' in vhost '/'"
    );
    assert!(!v.queues().iter().any(|q| q.name == named.name));
    // if-empty / if-unused, missing queue.
    v.publish(message("", "q", "m")).unwrap();
    assert_eq!(
        err(v.delete_queue("q", false, true, a)),
        "queue 'q' in vhost '/' not empty"
    );
    assert_eq!(v.delete_queue("missing", false, false, a).unwrap(), 0);
    assert_eq!(v.delete_queue("q", false, false, a).unwrap(), 1);
    within(f.broker.shutdown()).await.unwrap();
}

#[tokio::test]
async fn publish_routes_through_every_exchange_kind() {
    let f = Fixture::new();
    let v = f.vhost();
    let c = ConnectionId(1);
    for name in ["qd", "qt", "qh", "qae", "qcc", "qbcc"] {
        v.declare_queue(queue(name), c).unwrap();
    }
    v.bind_queue("qd", "amq.direct", "k", FieldTable::new(), c)
        .unwrap();
    v.bind_queue("qt", "amq.topic", "a.*.c", FieldTable::new(), c)
        .unwrap();
    v.bind_queue(
        "qh",
        "amq.headers",
        "",
        table(&[("x-match", s("any")), ("h", s("1"))]),
        c,
    )
    .unwrap();
    assert_eq!(
        err(v.bind_queue("qh", "amq.headers", "", table(&[("x-match", s("foo"))]), c)),
        "Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x"
    );
    // e2e: amq.fanout -> amq.direct; AE on a new exchange.
    v.bind_exchange("amq.direct", "amq.fanout", "", FieldTable::new())
        .unwrap();
    v.declare_exchange(ExchangeDeclare {
        arguments: table(&[("alternate-exchange", s("amq.fanout"))]),
        ..exchange("with-ae", "direct")
    })
    .unwrap();
    v.bind_queue("qae", "with-ae", "special", FieldTable::new(), c)
        .unwrap();
    v.bind_queue("qcc", "amq.direct", "cc", FieldTable::new(), c)
        .unwrap();
    v.bind_queue("qbcc", "amq.direct", "bcc", FieldTable::new(), c)
        .unwrap();

    assert_eq!(
        v.publish(message("amq.direct", "k", "1")).unwrap().queues,
        1
    );
    assert_eq!(
        v.publish(message("amq.topic", "a.b.c", "2"))
            .unwrap()
            .queues,
        1
    );
    assert_eq!(
        v.publish(message("amq.topic", "a.b", "x")).unwrap().queues,
        0
    );
    let mut with_header = message("amq.headers", "", "3");
    with_header.properties.headers = Some(table(&[("h", s("1"))]));
    assert_eq!(v.publish(with_header).unwrap().queues, 1);
    // Fanout reaches amq.direct, which routes by key "k".
    assert_eq!(
        v.publish(message("amq.fanout", "k", "4")).unwrap().queues,
        1
    );
    // Unroutable on with-ae: goes to amq.fanout -> amq.direct by key "k".
    assert_eq!(v.publish(message("with-ae", "k", "5")).unwrap().queues, 1);
    assert_eq!(
        v.publish(message("with-ae", "special", "6"))
            .unwrap()
            .queues,
        1
    );
    // CC and BCC add keys; BCC is removed from the message.
    let mut cc = message("amq.direct", "k", "7");
    cc.properties.headers = Some(table(&[
        ("CC", FieldValue::Array(vec![s("cc")])),
        ("BCC", FieldValue::Array(vec![s("bcc")])),
    ]));
    let routed = v.publish(cc).unwrap();
    assert_eq!(routed.queues, 3);
    assert!(within(routed.confirm.wait()).await.unwrap());
    let got = v.queue("qbcc", c).unwrap().get(true).unwrap().unwrap();
    let headers = got.message.properties.headers.unwrap();
    assert!(headers.contains_key("CC"));
    assert!(!headers.contains_key("BCC"));

    let mut bad = message("amq.direct", "k", "x");
    bad.properties.headers = Some(table(&[("CC", s("k2"))]));
    assert_eq!(
        err(v.publish(bad)),
        "invalid message: {unacceptable_type_in_header,\"CC\",longstr}"
    );
    assert_eq!(drain(&v, "qd"), ["1", "4", "5", "7"]);
    assert_eq!(drain(&v, "qt"), ["2"]);
    assert_eq!(drain(&v, "qh"), ["3"]);
    assert_eq!(drain(&v, "qae"), ["6"]);
    assert_eq!(drain(&v, "qcc"), ["7"]);
    within(f.broker.shutdown()).await.unwrap();
}

#[tokio::test]
async fn confirms_nack_rejected_publishes() {
    let f = Fixture::new();
    let v = f.vhost();
    let c = ConnectionId(1);
    v.declare_queue(
        QueueDeclare {
            durable: true,
            arguments: table(&[
                ("x-max-length", FieldValue::I32(1)),
                ("x-overflow", s("reject-publish")),
            ]),
            ..queue("limited")
        },
        c,
    )
    .unwrap();
    let mut persistent = message("", "limited", "1");
    persistent.properties.delivery_mode = Some(2);
    let first = v.publish(persistent.clone()).unwrap();
    assert!(within(first.confirm.wait()).await.unwrap());
    let second = v.publish(persistent).unwrap();
    assert_eq!(second.queues, 1);
    assert!(!within(second.confirm.wait()).await.unwrap());
    let unroutable = v.publish(message("", "nowhere", "x")).unwrap();
    assert_eq!(unroutable.queues, 0);
    assert!(within(unroutable.confirm.wait()).await.unwrap());
    within(f.broker.shutdown()).await.unwrap();
}

#[tokio::test]
async fn deleting_queues_cascades_to_auto_delete_exchanges() {
    let f = Fixture::new();
    let v = f.vhost();
    let c = ConnectionId(1);
    v.declare_exchange(ExchangeDeclare {
        auto_delete: true,
        ..exchange("ad", "fanout")
    })
    .unwrap();
    v.declare_queue(queue("q"), c).unwrap();
    v.bind_queue("q", "ad", "", FieldTable::new(), c).unwrap();
    assert_eq!(
        v.bindings().iter().filter(|b| b.destination == "q").count(),
        2
    );
    v.delete_queue("q", false, false, c).unwrap();
    assert!(!v.exchanges().iter().any(|x| x.name == "ad"));
    assert!(v.bindings().is_empty());
    within(f.broker.shutdown()).await.unwrap();
}

#[tokio::test]
async fn dead_letters_reach_the_dlx_with_x_death() {
    let f = Fixture::new();
    let v = f.vhost();
    let c = ConnectionId(1);
    v.declare_exchange(exchange("dlx", "fanout")).unwrap();
    v.declare_queue(queue("dead"), c).unwrap();
    v.bind_queue("dead", "dlx", "", FieldTable::new(), c)
        .unwrap();
    v.declare_queue(
        QueueDeclare {
            arguments: table(&[("x-dead-letter-exchange", s("dlx"))]),
            ..queue("work")
        },
        c,
    )
    .unwrap();
    let mut m = message("", "work", "m1");
    m.properties.expiration = Some("60000".into());
    v.publish(m).unwrap();
    let work = v.queue("work", c).unwrap();
    let delivery = work.get(false).unwrap().unwrap();
    work.reject(&[delivery.id], false).unwrap();
    let dead = v.queue("dead", c).unwrap().get(true).unwrap().unwrap();
    assert_eq!(dead.message.exchange, "dlx");
    assert_eq!(dead.message.routing_key, "work");
    assert_eq!(dead.message.properties.expiration, None);
    let headers = dead.message.properties.headers.unwrap();
    let Some(FieldValue::Array(deaths)) = headers.get("x-death") else {
        panic!("no x-death: {headers:?}");
    };
    let FieldValue::Table(death) = &deaths[0] else {
        panic!()
    };
    assert_eq!(death["reason"], s("rejected"));
    assert_eq!(death["queue"], s("work"));
    assert_eq!(death["exchange"], s(""));
    assert_eq!(death["count"], FieldValue::I64(1));
    assert_eq!(death["original-expiration"], s("60000"));
    assert_eq!(headers["x-first-death-queue"], s("work"));

    // A queue dead-lettering expired messages to itself drops them instead of looping.
    v.declare_queue(
        QueueDeclare {
            arguments: table(&[
                ("x-dead-letter-exchange", s("")),
                ("x-message-ttl", FieldValue::I32(0)),
            ]),
            ..queue("self")
        },
        c,
    )
    .unwrap();
    v.publish(message("", "self", "loop")).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(drain(&v, "self").is_empty());
    within(f.broker.shutdown()).await.unwrap();
}

#[tokio::test]
async fn durable_definitions_survive_a_restart() {
    let f = Fixture::new();
    let c = ConnectionId(1);
    {
        let v = f.vhost();
        v.declare_exchange(ExchangeDeclare {
            durable: true,
            arguments: table(&[("alternate-exchange", s("amq.fanout"))]),
            ..exchange("dx", "topic")
        })
        .unwrap();
        v.declare_exchange(exchange("transient-x", "direct"))
            .unwrap();
        v.declare_queue(
            QueueDeclare {
                durable: true,
                arguments: table(&[("x-max-length", FieldValue::I32(10))]),
                ..queue("dq")
            },
            c,
        )
        .unwrap();
        v.declare_queue(queue("tq"), c).unwrap();
        v.bind_queue("dq", "dx", "a.#", FieldTable::new(), c)
            .unwrap();
        v.bind_queue("tq", "dx", "b.#", FieldTable::new(), c)
            .unwrap();
        v.bind_exchange("dx", "amq.direct", "a.via", FieldTable::new())
            .unwrap();
        let mut m = message("dx", "a.b", "kept");
        m.properties.delivery_mode = Some(2);
        let routed = v.publish(m).unwrap();
        assert!(within(routed.confirm.wait()).await.unwrap());
        v.publish(message("", "tq", "lost")).unwrap();
        f.broker.vhosts().add("other").unwrap();
        let other = f.broker.vhosts().get("other").unwrap();
        other
            .declare_queue(
                QueueDeclare {
                    durable: true,
                    ..queue("oq")
                },
                c,
            )
            .unwrap();
        // NOT_FOUND texts name the vhost.
        assert_eq!(
            err(other.queue("missing", c)),
            "no queue 'missing' in vhost 'other'"
        );
    }
    let f = f.restart().await;
    let v = f.vhost();
    assert_eq!(f.broker.vhosts().names(), ["/", "other"]);
    let exchanges: Vec<String> = v.exchanges().into_iter().map(|x| x.name).collect();
    assert!(exchanges.contains(&"dx".to_string()));
    assert!(!exchanges.contains(&"transient-x".to_string()));
    let queues: Vec<String> = v.queues().into_iter().map(|q| q.name).collect();
    assert_eq!(queues, ["dq"]);
    // Equivalent redeclare still works: the argument kept its type.
    v.declare_queue(
        QueueDeclare {
            durable: true,
            arguments: table(&[("x-max-length", FieldValue::I32(10))]),
            ..queue("dq")
        },
        c,
    )
    .unwrap();
    assert_eq!(drain(&v, "dq"), ["kept"]);
    // Bindings came back, including the exchange-to-exchange one.
    assert_eq!(
        v.publish(message("amq.direct", "a.via", "via"))
            .unwrap()
            .queues,
        1
    );
    assert_eq!(v.publish(message("dx", "a.z", "again")).unwrap().queues, 1);
    assert_eq!(drain(&v, "dq"), ["via", "again"]);
    // Nothing may hold the vhost (and through it the store) across the next restart.
    drop(v);
    // No log of the transient queue is left.
    assert!(!has_queue_log(&f.broker, "/", "tq"));
    assert_eq!(
        f.broker.vhosts().get("other").unwrap().queues()[0].name,
        "oq"
    );
    within(f.broker.vhosts().delete("other")).await.unwrap();
    let f = f.restart().await;
    assert_eq!(f.broker.vhosts().names(), ["/"]);
    assert!(!has_queue_log(&f.broker, "other", "oq"));
    within(f.broker.shutdown()).await.unwrap();
}

#[tokio::test]
async fn definitions_log_is_compacted_at_start() {
    let f = Fixture::new();
    let c = ConnectionId(1);
    {
        let v = f.vhost();
        v.declare_queue(
            QueueDeclare {
                durable: true,
                ..queue("dq")
            },
            c,
        )
        .unwrap();
        v.bind_queue("dq", "amq.topic", "a.#", FieldTable::new(), c)
            .unwrap();
    }
    // Superseded records: tombstones of queues long gone.
    let junk: Vec<_> = (0..super::vhosts::COMPACT_MIN_RECORDS)
        .map(|i| {
            (
                super::definitions::DefinitionKey::Queue {
                    vhost: "/".into(),
                    name: format!("gone-{i}"),
                },
                None,
            )
        })
        .collect();
    f.broker.vhosts().shared.persist(junk).unwrap();
    let definitions_log = ferry_storage::LogId {
        topic: super::definitions::DEFINITIONS_LOG.into(),
        partition: 0,
    };
    let f = f.restart().await;
    let start = f
        .broker
        .queue_store()
        .log(&definitions_log)
        .expect("definitions log")
        .log_start_offset();
    assert!(start > 0, "old records dropped (log start {start})");
    let f = f.restart().await;
    {
        let v = f.vhost();
        assert_eq!(
            v.queues().into_iter().map(|q| q.name).collect::<Vec<_>>(),
            ["dq"]
        );
        assert_eq!(
            v.publish(message("amq.topic", "a.b", "m")).unwrap().queues,
            1
        );
    }
    within(f.broker.shutdown()).await.unwrap();
}
