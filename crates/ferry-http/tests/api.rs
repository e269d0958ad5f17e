//! The admin API and /metrics over real HTTP on 127.0.0.1, against an in-process broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use ferry_core::mq::ConnectionId;
use ferry_core::routing::QueueDeclare;
use ferry_core::{Broker, BrokerConfig};
use ferry_http::client::{path_segment, AdminClient, ClientError};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Bound on every request of these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Server {
    broker: Arc<Broker>,
    address: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(BrokerConfig::new(dir.path())).expect("broker");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ferry_http::serve(listener, broker.clone(), async move {
            let _ = stopped.await;
        }));
        Server {
            broker,
            address,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    fn client(&self, user: &str, password: &str) -> AdminClient {
        AdminClient::new(&self.address, user, password, REQUEST_TIMEOUT)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(REQUEST_TIMEOUT, &mut self.task)
            .await
            .expect("HTTP stops in time")
            .expect("task")
            .expect("serve");
        self.broker.shutdown().await.expect("broker shutdown");
    }
}

fn status(e: ClientError) -> u16 {
    match e {
        ClientError::Status { status, .. } => status,
        other => panic!("expected an HTTP status, got {other}"),
    }
}

#[tokio::test]
async fn users_are_managed_by_administrators_only() {
    let server = Server::start().await;
    let guest = server.client("guest", "guest");

    let users: Value = guest.get("/api/users").await.expect("list");
    assert_eq!(users, json!([{"name": "guest", "tags": ["administrator"]}]));
    let whoami: Value = guest.get("/api/whoami").await.expect("whoami");
    assert_eq!(whoami["name"], "guest");

    assert_eq!(
        guest
            .put(
                "/api/users/ops",
                &json!({"password": "pw", "tags": "administrator"})
            )
            .await
            .expect("create"),
        201
    );
    assert_eq!(
        guest
            .put("/api/users/app", &json!({"password": "pw", "tags": []}))
            .await
            .expect("create"),
        201
    );
    assert_eq!(
        guest
            .put(
                "/api/users/app",
                &json!({"password": "pw2", "tags": ["management"]})
            )
            .await
            .expect("update"),
        204
    );
    let app: Value = guest.get("/api/users/app").await.expect("get");
    assert_eq!(app, json!({"name": "app", "tags": ["management"]}));
    assert_eq!(
        guest
            .put("/api/users/app", &json!({"tags": "management,monitoring"}))
            .await
            .expect("tags only"),
        204
    );
    let app: Value = guest.get("/api/users/app").await.expect("get");
    assert_eq!(app["tags"], json!(["management", "monitoring"]));
    assert!(app.get("password_hash").is_none());

    // Not an administrator, wrong password, no credentials: 401 with a challenge.
    let not_admin = server.client("app", "pw2").get::<Value>("/api/users").await;
    assert_eq!(status(not_admin.expect_err("app")), 401);
    let wrong = server
        .client("guest", "nope")
        .get::<Value>("/api/users")
        .await;
    assert_eq!(status(wrong.expect_err("wrong password")), 401);
    let anonymous = guest
        .request(Method::GET, "/api/overview", None)
        .await
        .expect("answer");
    assert_eq!(anonymous.status, 200, "guest is an administrator");
    let raw = raw_get(&server.address, "/api/users").await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("www-authenticate: basic"),
        "{raw}"
    );

    // Bad input is a 400 with the reason.
    let e = guest
        .put("/api/users/x", &json!({"tags": []}))
        .await
        .expect_err("no password");
    assert!(e.to_string().contains("password must be set"), "{e}");
    let missing = guest
        .delete("/api/users/nobody")
        .await
        .expect_err("unknown");
    assert_eq!(status(missing), 404);
    let unknown_path = guest.get::<Value>("/api/nothing").await.expect_err("404");
    assert_eq!(status(unknown_path), 404);

    // ops administers, then deletes guest, after which guest is refused.
    let ops = server.client("ops", "pw");
    ops.delete("/api/users/guest").await.expect("delete guest");
    assert_eq!(
        status(
            guest
                .get::<Value>("/api/users")
                .await
                .expect_err("guest gone")
        ),
        401
    );
    let names: Vec<String> = ops
        .get::<Vec<Value>>("/api/users")
        .await
        .expect("list")
        .iter()
        .filter_map(|u| u["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, vec!["app", "ops"]);
    let permissions: Value = ops.get("/api/permissions").await.expect("permissions");
    assert_eq!(permissions, json!([]), "guest's permission went with it");
    server.stop().await;
}

#[tokio::test]
async fn overview_topics_and_metrics() {
    let server = Server::start().await;
    let mut configs = BTreeMap::new();
    configs.insert("retention.ms".to_owned(), "60000".to_owned());
    server
        .broker
        .create_topic("orders", Some(2), configs, false)
        .expect("topic");
    let guest = server.client("guest", "guest");

    let overview: Value = guest.get("/api/overview").await.expect("overview");
    assert_eq!(overview["product_name"], "Ferry");
    assert_eq!(overview["object_totals"]["topics"], 1);
    assert_eq!(overview["object_totals"]["partitions"], 2);
    assert_eq!(overview["alarms"], json!({"memory": false, "disk": false}));
    assert!(overview["memory"]["resident_bytes"]
        .as_u64()
        .is_some_and(|b| b > 0));

    // Alarm thresholds change at run time; the alarm follows at once.
    let configured: Value = guest.get("/api/limits").await.expect("limits");
    let raised = guest
        .request(
            Method::PUT,
            "/api/limits",
            Some(r#"{"memory_high_watermark_bytes": 1}"#.into()),
        )
        .await
        .expect("set limits");
    assert_eq!(raised.status, 200);
    let raised: Value = serde_json::from_slice(&raised.body).expect("json");
    assert_eq!(raised["alarms"], json!({"memory": true, "disk": false}));
    assert_eq!(
        *server.broker.alarms().borrow(),
        ferry_core::alarm::Alarms {
            memory: true,
            disk: false
        }
    );
    assert_eq!(
        guest
            .put("/api/limits", &json!({"memory_high_watermark_bytes": null}))
            .await
            .expect("restore"),
        200
    );
    let restored: Value = guest.get("/api/limits").await.expect("limits");
    assert_eq!(restored, configured);
    assert!(!server.broker.alarms().borrow().memory);

    let topics: Value = guest.get("/api/topics").await.expect("topics");
    assert_eq!(topics[0]["name"], "orders");
    assert_eq!(topics[0]["configs"], json!({"retention.ms": "60000"}));
    assert_eq!(topics[0]["partitions"].as_array().map(Vec::len), Some(2));
    assert_eq!(topics[0]["partitions"][1]["log_end_offset"], 0);

    // /metrics needs no credentials. A registered listener's counts are there (the
    // counting itself is ferry-core's listener tests).
    server.broker.listener_stats("Kafka");
    let metrics = server
        .client("nobody", "x")
        .request(Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body.to_vec()).expect("utf-8");
    for expected in [
        "# TYPE ferry_topics gauge\nferry_topics 1\n",
        "ferry_partitions 2\n",
        "ferry_users 1\n",
        "ferry_partition_log_end_offset{topic=\"orders\",partition=\"1\"} 0\n",
        "ferry_alarm{resource=\"memory\"} 0\n",
        "ferry_alarm{resource=\"disk\"} 0\n",
        "ferry_resident_memory_bytes ",
        "ferry_partition_size_bytes{topic=\"orders\",partition=\"0\"} ",
        "ferry_connections{protocol=\"kafka\"} 0\n",
        "# TYPE ferry_connections_accepted_total counter\nferry_connections_accepted_total{protocol=\"kafka\"} 0\n",
        "ferry_connections_refused_total{protocol=\"kafka\"} 0\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn vhosts_and_permissions() {
    let server = Server::start().await;
    let guest = server.client("guest", "guest");
    guest
        .put("/api/users/app", &json!({"password": "pw"}))
        .await
        .expect("user");
    assert_eq!(
        guest
            .put("/api/vhosts/staging", &json!({}))
            .await
            .expect("vhost"),
        201
    );
    assert_eq!(
        guest
            .put("/api/vhosts/staging", &json!({}))
            .await
            .expect("again"),
        204
    );
    let vhosts: Value = guest.get("/api/vhosts").await.expect("vhosts");
    assert_eq!(vhosts, json!([{"name": "/"}, {"name": "staging"}]));
    let root: Value = guest
        .get(&format!("/api/vhosts/{}", path_segment("/")))
        .await
        .expect("root vhost");
    assert_eq!(root, json!({"name": "/"}));

    // Listings of what the routing model holds.
    let staging = server.broker.vhosts().get("staging").expect("vhost");
    staging
        .declare_queue(
            QueueDeclare {
                name: "jobs".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments: Default::default(),
            },
            ConnectionId::next(),
        )
        .expect("declare");
    let queues: Value = guest.get("/api/queues/staging").await.expect("queues");
    assert_eq!(
        queues,
        json!([{"name": "jobs", "vhost": "staging", "durable": true, "exclusive": false,
                "auto_delete": false, "messages": 0, "consumers": 0}])
    );
    let all: Vec<Value> = guest.get("/api/queues").await.expect("all queues");
    assert_eq!(all.len(), 1);
    let exchanges: Vec<Value> = guest
        .get("/api/exchanges/staging")
        .await
        .expect("exchanges");
    assert!(
        exchanges
            .iter()
            .any(|x| x["name"] == "amq.topic" && x["type"] == "topic"),
        "{exchanges:?}"
    );
    let bindings: Value = guest.get("/api/bindings/staging").await.expect("bindings");
    assert_eq!(
        bindings[0],
        json!({"source": "", "vhost": "staging", "destination": "jobs",
               "destination_type": "queue", "routing_key": "jobs"})
    );
    let none = guest
        .get::<Value>("/api/queues/nope")
        .await
        .expect_err("no vhost");
    assert_eq!(status(none), 404);
    let overview: Value = guest.get("/api/overview").await.expect("overview");
    assert_eq!(overview["object_totals"]["vhosts"], 2);
    assert_eq!(overview["object_totals"]["queues"], 1);
    let metrics = guest
        .request(Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    let text = String::from_utf8(metrics.body.to_vec()).expect("utf-8");
    assert!(
        text.contains("ferry_queue_messages{vhost=\"staging\",queue=\"jobs\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("ferry_vhosts 2\n"), "{text}");

    let path = "/api/permissions/staging/app";
    let body = json!({"configure": "^app-", "write": ".*", "read": ""});
    assert_eq!(guest.put(path, &body).await.expect("set"), 201);
    let permission: Value = guest.get(path).await.expect("get");
    assert_eq!(
        permission,
        json!({"user": "app", "vhost": "staging", "configure": "^app-", "write": ".*", "read": ""})
    );
    let bad = guest
        .put(path, &json!({"configure": "(", "write": "", "read": ""}))
        .await
        .expect_err("bad pattern");
    assert_eq!(status(bad), 400);
    let no_vhost = guest
        .put("/api/permissions/nope/app", &body)
        .await
        .expect_err("no vhost");
    assert_eq!(status(no_vhost), 400);

    // Deleting the vhost drops the permissions on it.
    guest.delete("/api/vhosts/staging").await.expect("delete");
    assert_eq!(
        status(guest.get::<Value>(path).await.expect_err("gone")),
        404
    );
    let missing = guest
        .delete("/api/vhosts/staging")
        .await
        .expect_err("twice");
    assert_eq!(status(missing), 404);
    server.stop().await;
}

/// A GET written by hand, to see the raw status line and headers.
async fn raw_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}
