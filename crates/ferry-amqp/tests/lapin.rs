//! lapin (the Rust RabbitMQ client) against an in-process broker on 127.0.0.1:0: declare,
//! publish with confirms, consume and ack, nack with requeue, basic.get, error replies.
//! Every test is bounded in time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_amqp::AmqpConfig;
use ferry_core::{Broker, BrokerConfig};
use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Upper bound of every test.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker with an AMQP listener on an ephemeral port.
struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    broker: Arc<Broker>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(BrokerConfig::new(dir.path())).expect("broker");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ferry_amqp::serve(
            listener,
            broker.clone(),
            AmqpConfig::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            url: format!("amqp://guest:guest@{addr}/%2f"),
            stop: Some(stop),
            task,
            broker,
            _dir: dir,
        }
    }

    async fn connect(&self) -> Connection {
        Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.broker.shutdown().await.expect("broker shutdown");
    }
}

/// Runs a test body within [`TEST_TIMEOUT`].
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test timed out");
}

/// The next delivery of a lapin consumer.
async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    std::future::poll_fn(|cx| Pin::new(&mut *consumer).poll_next(cx))
        .await
        .expect("consumer ended")
        .expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_publish_with_confirms_consume_ack() {
    bounded(async {
        let server = Server::start().await;
        let conn = server.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let q = ch
            .queue_declare(
                "lapin-q".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare");
        assert_eq!(q.message_count(), 0);
        ch.exchange_declare(
            "lapin-x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
        ch.queue_bind(
            "lapin-q".into(),
            "lapin-x".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        let mut confirms = Vec::new();
        for i in 0..50u32 {
            let confirm = ch
                .basic_publish(
                    "lapin-x".into(),
                    "k".into(),
                    BasicPublishOptions::default(),
                    format!("m{i}").as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(matches!(
                confirm.await.expect("confirm"),
                Confirmation::Ack(_)
            ));
        }

        let consumer_ch = conn.create_channel().await.expect("channel");
        consumer_ch
            .basic_qos(10, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = consumer_ch
            .basic_consume(
                "lapin-q".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        for i in 0..50u32 {
            let delivery = next_delivery(&mut consumer).await;
            assert_eq!(delivery.data, format!("m{i}").as_bytes());
            assert!(!delivery.redelivered);
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let q = ch
            .queue_declare(
                "lapin-q".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        assert_eq!(q.message_count(), 0);
        conn.close(200, "bye".into()).await.expect("close");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_requeue_redelivers_and_get_reads() {
    bounded(async {
        let server = Server::start().await;
        let conn = server.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            "requeue-q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
        ch.basic_publish(
            "".into(),
            "requeue-q".into(),
            BasicPublishOptions::default(),
            b"again",
            BasicProperties::default(),
        )
        .await
        .expect("publish");

        let mut consumer = ch
            .basic_consume(
                "requeue-q".into(),
                "c1".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let first = next_delivery(&mut consumer).await;
        assert_eq!(first.data, b"again");
        assert!(!first.redelivered);
        first
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
        let second = next_delivery(&mut consumer).await;
        assert_eq!(second.data, b"again");
        assert!(
            second.redelivered,
            "a requeued message is flagged redelivered"
        );
        second.ack(BasicAckOptions::default()).await.expect("ack");

        // basic.get: empty, then a message with its properties (the consumer, which would
        // compete for it, is cancelled first).
        ch.basic_cancel("c1".into(), Default::default())
            .await
            .expect("cancel");
        let ch2 = conn.create_channel().await.expect("channel");
        assert!(ch2
            .basic_get("requeue-q".into(), BasicGetOptions::default())
            .await
            .expect("get")
            .is_none());
        ch2.basic_publish(
            "".into(),
            "requeue-q".into(),
            BasicPublishOptions::default(),
            b"got",
            BasicProperties::default().with_content_type("text/plain".into()),
        )
        .await
        .expect("publish");
        let got = loop {
            if let Some(got) = ch2
                .basic_get("requeue-q".into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(got.delivery.data, b"got");
        assert_eq!(
            got.delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some("text/plain")
        );
        conn.close(200, "bye".into()).await.expect("close");
        server.stop().await;
    })
    .await;
}

/// Reads one message of `queue` with basic.get, waiting (bounded by the test) until one is
/// there.
async fn get_one(ch: &lapin::Channel, queue: &str) -> Vec<u8> {
    loop {
        if let Some(got) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            return got.delivery.data;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_bind_routes_and_unbind_stops_routing() {
    bounded(async {
        let server = Server::start().await;
        let conn = server.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        for name in ["e2e-src", "e2e-dst"] {
            ch.exchange_declare(
                name.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        }
        ch.queue_declare(
            "e2e-q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
        ch.queue_bind(
            "e2e-q".into(),
            "e2e-dst".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
        ch.exchange_bind(
            "e2e-dst".into(),
            "e2e-src".into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange.bind");
        let publish = |exchange: &'static str, body: &'static [u8]| {
            ch.basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
        };
        publish("e2e-src", b"through").await.expect("publish");
        assert_eq!(get_one(&ch, "e2e-q").await, b"through");

        ch.exchange_unbind(
            "e2e-dst".into(),
            "e2e-src".into(),
            "".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange.unbind");
        // Methods of one channel are handled in order: were "dropped" still routed, it
        // would be queued before the marker.
        publish("e2e-src", b"dropped").await.expect("publish");
        publish("e2e-dst", b"marker").await.expect("publish");
        assert_eq!(get_one(&ch, "e2e-q").await, b"marker");

        let err = ch
            .exchange_bind(
                "e2e-dst".into(),
                "e2e-missing".into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("bind from a missing exchange");
        let text = err.to_string();
        assert!(
            text.contains("NOT_FOUND - no exchange 'e2e-missing' in vhost '/'"),
            "{text}"
        );
        conn.close(200, "bye".into()).await.expect("close");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_close_the_channel_with_rabbitmq_texts() {
    bounded(async {
        let server = Server::start().await;
        let conn = server.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        let err = ch
            .queue_declare(
                "no-such-queue".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect_err("passive declare of a missing queue");
        let text = err.to_string();
        assert!(
            text.contains("NOT_FOUND - no queue 'no-such-queue' in vhost '/'"),
            "{text}"
        );
        // The connection survives a channel error.
        let ch2 = conn
            .create_channel()
            .await
            .expect("channel after a channel error");
        // The ack is asynchronous: the channel.close it causes shows on a later call, as
        // the broker's error or (if lapin saw the close first) as a closing channel.
        ch2.basic_ack(42, BasicAckOptions::default())
            .await
            .expect("ack sent");
        let err = ch2
            .queue_declare(
                "".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("channel closed by the unknown tag");
        let text = err.to_string();
        assert!(
            text.contains("PRECONDITION_FAILED - unknown delivery tag 42")
                || text.contains("invalid channel state"),
            "{text}"
        );
        conn.close(200, "bye".into()).await.expect("close");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    bounded(async {
        let server = Server::start().await;
        let conn = server.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            "doomed".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
        let mut consumer = ch
            .basic_consume(
                "doomed".into(),
                "watcher".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let other = conn.create_channel().await.expect("channel");
        other
            .queue_delete("doomed".into(), Default::default())
            .await
            .expect("delete");
        // lapin advertises consumer_cancel_notify: the server's basic.cancel ends the stream.
        let end = std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)).await;
        assert!(
            end.is_none(),
            "the consumer stream ends on a server-sent cancel"
        );
        // The channel itself stays usable.
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("channel still open");
        conn.close(200, "bye".into()).await.expect("close");
        server.stop().await;
    })
    .await;
}
