//! The AMQP 0-9-1 driver (lapin): a workload topic is a set of durable queues, one per
//! partition, and every message carries the same stamp as the Kafka driver's.
//!
//! Queue `p` of topic `t` is named `{topic}.{p}`. Producers publish to the default
//! exchange (routing key = queue name) or to a named direct/topic exchange to which each
//! queue is bound with its own name as binding key; a keyed workload picks the queue by
//! the key's murmur2 hash, an unkeyed one round-robins. Each producer is a connection
//! with one channel, optionally in confirm mode with a bounded window of unconfirmed
//! messages; publish latency is publish → confirm. Each consumer is a connection with
//! one channel per assigned queue (basic.qos prefetch, basic.consume with manual acks
//! every N or no-ack), so the once-and-in-order check per (queue, producer) holds.
//!
//! lapin's `basic_publish` and `basic_ack` only hand frames to the connection's I/O
//! thread; their futures resolve once the frames are written. Awaiting each one in turn
//! would cost a thread hand-off per message, so the driver polls each future once (which
//! queues the frames, in call order) and awaits it later: publishes in a confirm task,
//! acks when the consumer next has nothing to read.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use clap::{Args, ValueEnum};
use ferry_kafka::client::partition_for_key;
use futures_core::Stream;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPUri, AMQPUserInfo};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::checker::{CheckCounts, SequenceChecker};
use crate::driver::{BoxFuture, ConsumerOutcome, Driver, ProducerOutcome, RunContext};
use crate::error::{BenchError, Result};
use crate::message::{Stamp, PAYLOAD_HEADER_BYTES};
use crate::stats::{latency_histogram, record_latency};
use crate::workload::Workload;

/// Default AMQP target address.
pub const DEFAULT_AMQP_ADDR: &str = "localhost:5672";
/// Default user (RabbitMQ's and Ferry's loopback-only default).
pub const DEFAULT_USER: &str = "guest";
/// Default password.
pub const DEFAULT_PASSWORD: &str = "guest";
/// Default virtual host.
pub const DEFAULT_VHOST: &str = "/";
/// Default basic.qos prefetch count of a consumer.
pub const DEFAULT_PREFETCH: u16 = 100;
/// Largest window of unconfirmed messages per producer.
pub const CONFIRM_WINDOW_MAX: u32 = 1_000_000;
/// Longest AMQP short string (queue and exchange names).
const SHORT_STRING_MAX: usize = 255;
/// Bytes of queue name added to the topic name (`.` and the partition number).
const QUEUE_SUFFIX_MAX: usize = 7;
/// How long a TCP connect plus AMQP handshake may take.
const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Bytes of the buffer that payloads are cut from (one allocation per this many bytes
/// rather than one per message).
const PAYLOAD_ARENA_BYTES: usize = 1 << 20;
/// Messages generated between two looks at the clock.
const GENERATE_CHUNK: u64 = 256;
/// Number of distinct keys of a keyed workload (as the Kafka driver).
const KEY_SPACE: u64 = 100_000;
/// Longest sleep of an idle producer, so that it notices the end of the run.
const PRODUCER_IDLE_SLEEP_MAX: Duration = Duration::from_millis(10);
/// How often an idle consumer flushes its pending acks and checks whether it is done.
const CONSUMER_TICK: Duration = Duration::from_millis(20);
/// AMQP reply code of a normal close.
const REPLY_SUCCESS: u16 = 200;

/// Queue type (`x-queue-type`) of the declared queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// RabbitMQ's default queue (no `x-queue-type` argument is sent).
    #[default]
    Classic,
    /// Replicated Raft queue.
    Quorum,
    /// Append-only log (consumers start from its first message).
    Stream,
}

/// Type of a named exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Exact routing-key match.
    #[default]
    Direct,
    /// Pattern match (the bindings are exact names, so routing is the same as direct).
    Topic,
}

/// AMQP settings of a workload (the `[amqp]` table of a workload file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpOptions {
    /// Exchange to publish to; empty is the default exchange.
    pub exchange: String,
    /// Type of a named exchange (declared durable).
    pub exchange_type: ExchangeType,
    /// `x-queue-type` of the queues (all declared durable).
    pub queue_type: QueueType,
    /// delivery_mode 2 (persistent) or 1 (transient).
    pub persistent: bool,
    /// Publisher confirms (confirm.select).
    pub confirms: bool,
    /// Most unconfirmed messages per producer; 0 takes the Kafka producer's byte budget:
    /// (batch_bytes / message_bytes) × max_in_flight messages.
    pub confirm_window: u32,
    /// basic.qos prefetch count per consumer channel; 0 is unlimited.
    pub prefetch: u16,
    /// Acknowledge every N deliveries (with `multiple` when N > 1).
    pub ack_every: u32,
    /// Consume with no-ack (automatic acknowledgement).
    pub no_ack: bool,
    /// Consumers subscribe only once every producer has finished: the queues fill up
    /// first (a backlog run), then drain.
    pub consume_after_produce: bool,
    /// Each producer stops after this many messages; 0 is no limit.
    pub messages_per_producer: u64,
    /// Each producer prints its confirmed-publish rate over every this many messages on
    /// stderr; 0 prints nothing.
    pub rate_segment: u64,
    /// Delete each queue once its consumer is done.
    pub delete_queues: bool,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            exchange: String::new(),
            exchange_type: ExchangeType::Direct,
            queue_type: QueueType::Classic,
            persistent: true,
            confirms: true,
            confirm_window: 0,
            prefetch: DEFAULT_PREFETCH,
            ack_every: 1,
            no_ack: false,
            consume_after_produce: false,
            messages_per_producer: 0,
            rate_segment: 0,
            delete_queues: true,
        }
    }
}

impl AmqpOptions {
    /// One line describing the settings, for the human report.
    pub fn describe(&self, workload: &Workload) -> String {
        let exchange = if self.exchange.is_empty() {
            "default exchange".to_owned()
        } else {
            let kind = match self.exchange_type {
                ExchangeType::Direct => "direct",
                ExchangeType::Topic => "topic",
            };
            format!("{kind} exchange {:?}", self.exchange)
        };
        let confirms = if self.confirms {
            format!("confirms (window {})", confirm_window(workload))
        } else {
            "no confirms".to_owned()
        };
        let acks = if self.no_ack {
            "no-ack".to_owned()
        } else {
            format!("ack every {}", self.ack_every)
        };
        let queue_type = match self.queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        };
        format!(
            "amqp: {queue_type} queues via the {exchange}, {} messages, {confirms}, prefetch {}, {acks}{}",
            if self.persistent {
                "persistent"
            } else {
                "transient"
            },
            self.prefetch,
            if self.consume_after_produce {
                ", consumers start after the producers"
            } else {
                ""
            }
        )
    }
}

/// Checks the AMQP settings of `workload`.
pub fn validate(workload: &Workload) -> Result<()> {
    let o = &workload.amqp;
    let bad = |m: String| Err(BenchError::Workload(m));
    if workload.topic_prefix.len() + 40 + QUEUE_SUFFIX_MAX > SHORT_STRING_MAX {
        return bad("topic prefix too long for AMQP queue names".to_owned());
    }
    if o.exchange.len() > SHORT_STRING_MAX {
        return bad(format!(
            "exchange name longer than {SHORT_STRING_MAX} bytes"
        ));
    }
    if o.ack_every == 0 {
        return bad("amqp ack_every must be at least 1".to_owned());
    }
    if !o.no_ack && o.prefetch != 0 && o.ack_every > u32::from(o.prefetch) {
        // The broker stops delivering at `prefetch` unacked messages, before the
        // consumer would ack: only the idle flush would move the queue along.
        return bad(format!(
            "amqp ack_every ({}) must not exceed the prefetch ({})",
            o.ack_every, o.prefetch
        ));
    }
    if o.confirm_window > CONFIRM_WINDOW_MAX {
        return bad(format!(
            "amqp confirm_window must be 0..={CONFIRM_WINDOW_MAX}"
        ));
    }
    if o.queue_type == QueueType::Stream && (o.no_ack || o.prefetch == 0) {
        return bad("stream queues need manual acks and a prefetch".to_owned());
    }
    Ok(())
}

/// Unconfirmed messages a producer may have.
pub fn confirm_window(workload: &Workload) -> usize {
    let o = &workload.amqp;
    let window = if o.confirm_window > 0 {
        o.confirm_window as usize
    } else {
        (workload.batch_bytes / workload.message_bytes).max(1) * workload.max_in_flight as usize
    };
    window.clamp(1, CONFIRM_WINDOW_MAX as usize)
}

/// Name of queue `partition` of `topic`.
pub fn queue_name(topic: &str, partition: i32) -> String {
    format!("{topic}.{partition}")
}

/// Where and as whom the AMQP driver connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpTarget {
    /// User name (PLAIN).
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
}

impl Default for AmqpTarget {
    fn default() -> Self {
        AmqpTarget {
            user: DEFAULT_USER.to_owned(),
            password: DEFAULT_PASSWORD.to_owned(),
            vhost: DEFAULT_VHOST.to_owned(),
        }
    }
}

/// AMQP flags of `ferry bench`; the workload ones override the file's `[amqp]` table.
#[derive(Clone, Debug, Default, Args)]
pub struct AmqpArgs {
    /// Address of the target broker for --protocol amqp [default: localhost:5672]
    #[arg(long, value_name = "HOST:PORT")]
    pub target_addr: Option<String>,
    /// AMQP user [default: guest]
    #[arg(long, value_name = "USER", default_value = DEFAULT_USER)]
    pub amqp_user: String,
    /// AMQP password [default: guest]
    #[arg(long, value_name = "PASSWORD", env = "FERRY_BENCH_AMQP_PASSWORD", hide_env_values = true, default_value = DEFAULT_PASSWORD, hide_default_value = true)]
    pub amqp_password: String,
    /// AMQP virtual host [default: /]
    #[arg(long, value_name = "VHOST", default_value = DEFAULT_VHOST)]
    pub amqp_vhost: String,
    /// Publish to this exchange (declared durable, queues bound by name) [default: the default exchange]
    #[arg(long, value_name = "NAME")]
    pub amqp_exchange: Option<String>,
    /// Type of --amqp-exchange [default: direct]
    #[arg(long, value_enum, value_name = "TYPE")]
    pub amqp_exchange_type: Option<ExchangeType>,
    /// x-queue-type of the queues [default: classic]
    #[arg(long, value_enum, value_name = "TYPE")]
    pub amqp_queue_type: Option<QueueType>,
    /// Publish transient messages (delivery_mode 1) [default: persistent]
    #[arg(long)]
    pub amqp_transient: bool,
    /// Publish without publisher confirms [default: confirms on]
    #[arg(long)]
    pub amqp_no_confirms: bool,
    /// Most unconfirmed messages per producer [default: batch_bytes / message_bytes × max_in_flight]
    #[arg(long, value_name = "N")]
    pub amqp_confirm_window: Option<u32>,
    /// basic.qos prefetch per consumer channel, 0 = unlimited [default: 100]
    #[arg(long, value_name = "N")]
    pub amqp_prefetch: Option<u16>,
    /// Acknowledge every N deliveries (ack multiple) [default: 1]
    #[arg(long, value_name = "N")]
    pub amqp_ack_every: Option<u32>,
    /// Consume with no-ack [default: manual acks]
    #[arg(long)]
    pub amqp_no_ack: bool,
    /// Subscribe consumers only after the producers finish (backlog, then drain)
    #[arg(long)]
    pub amqp_consume_after_produce: bool,
    /// Stop each producer after N messages [default: no limit]
    #[arg(long, value_name = "N")]
    pub amqp_messages_per_producer: Option<u64>,
    /// Print each producer's publish rate over every N confirmed messages
    #[arg(long, value_name = "N")]
    pub amqp_rate_segment: Option<u64>,
    /// Keep the queues after the run [default: each consumer deletes its queues]
    #[arg(long)]
    pub amqp_keep_queues: bool,
}

impl AmqpArgs {
    /// Applies the workload flags over `options`.
    pub fn apply(&self, options: &mut AmqpOptions) {
        if let Some(exchange) = &self.amqp_exchange {
            options.exchange = exchange.clone();
        }
        if let Some(kind) = self.amqp_exchange_type {
            options.exchange_type = kind;
        }
        if let Some(kind) = self.amqp_queue_type {
            options.queue_type = kind;
        }
        if self.amqp_transient {
            options.persistent = false;
        }
        if self.amqp_no_confirms {
            options.confirms = false;
        }
        if let Some(n) = self.amqp_confirm_window {
            options.confirm_window = n;
        }
        if let Some(n) = self.amqp_prefetch {
            options.prefetch = n;
        }
        if let Some(n) = self.amqp_ack_every {
            options.ack_every = n;
        }
        if self.amqp_no_ack {
            options.no_ack = true;
        }
        if self.amqp_consume_after_produce {
            options.consume_after_produce = true;
        }
        if let Some(n) = self.amqp_messages_per_producer {
            options.messages_per_producer = n;
        }
        if let Some(n) = self.amqp_rate_segment {
            options.rate_segment = n;
        }
        if self.amqp_keep_queues {
            options.delete_queues = false;
        }
    }

    /// The target address.
    pub fn address(&self) -> String {
        self.target_addr
            .clone()
            .unwrap_or_else(|| DEFAULT_AMQP_ADDR.to_owned())
    }

    /// The credentials and vhost.
    pub fn target(&self) -> AmqpTarget {
        AmqpTarget {
            user: self.amqp_user.clone(),
            password: self.amqp_password.clone(),
            vhost: self.amqp_vhost.clone(),
        }
    }
}

/// The AMQP 0-9-1 protocol driver.
#[derive(Debug, Default)]
pub struct AmqpDriver {
    target: Arc<AmqpTarget>,
}

impl AmqpDriver {
    /// A driver connecting as `target` says.
    pub fn new(target: AmqpTarget) -> AmqpDriver {
        AmqpDriver {
            target: Arc::new(target),
        }
    }
}

impl Driver for AmqpDriver {
    fn protocol(&self) -> &'static str {
        "amqp"
    }

    fn prepare<'a>(
        &'a self,
        bootstrap: &'a str,
        workload: &'a Workload,
        topics: &'a [String],
        create_topics: bool,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(prepare(
            bootstrap,
            &self.target,
            workload,
            topics,
            create_topics,
        ))
    }

    fn producer(
        &self,
        id: u32,
        ctx: Arc<RunContext>,
    ) -> BoxFuture<'static, Result<ProducerOutcome>> {
        Box::pin(run_producer(id, ctx, self.target.clone()))
    }

    fn consumer(
        &self,
        id: u32,
        partitions: Vec<usize>,
        ctx: Arc<RunContext>,
    ) -> BoxFuture<'static, Result<ConsumerOutcome>> {
        Box::pin(run_consumer(id, partitions, ctx, self.target.clone()))
    }
}

/// Maps a lapin error to the tool's, with what was being done.
fn amqp_error(context: impl Into<String>) -> impl FnOnce(lapin::Error) -> BenchError {
    let context = context.into();
    move |e| BenchError::Protocol(format!("AMQP {context}: {e}"))
}

/// An AMQP short string, or the error naming what was too long.
fn short(text: &str) -> Result<ShortString> {
    ShortString::try_new(text.to_owned())
        .map_err(|e| BenchError::Workload(format!("{text:?} is not an AMQP short string: {e}")))
}

/// Opens a connection to `address` (`host:port`).
async fn connect(address: &str, target: &AmqpTarget, name: &str) -> Result<Connection> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| BenchError::Workload(format!("{address:?} is not host:port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let uri = AMQPUri {
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: target.user.clone(),
                password: target.password.clone(),
            },
            host: host.to_owned(),
            port,
        },
        vhost: target.vhost.clone(),
        query: AMQPQueryString {
            connection_timeout: Some(CONNECT_TIMEOUT_MS),
            ..AMQPQueryString::default()
        },
        ..AMQPUri::default()
    };
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
    Connection::connect_uri(uri, properties)
        .await
        .map_err(amqp_error(format!("connect to {address} as {name}")))
}

/// Closes a connection, ignoring a failure (the run's outcome is known by then).
async fn close(connection: Connection) {
    let _ = connection
        .close(REPLY_SUCCESS, ShortString::from("bench done"))
        .await;
}

/// Declares the exchange, the queues and their bindings; returns the address.
async fn prepare(
    address: &str,
    target: &AmqpTarget,
    workload: &Workload,
    topics: &[String],
    declare: bool,
) -> Result<String> {
    validate(workload)?;
    if !declare {
        return Ok(address.to_owned());
    }
    let o = &workload.amqp;
    let connection = connect(address, target, "ferry-bench setup").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp_error("open setup channel"))?;
    let exchange = short(&o.exchange)?;
    if !o.exchange.is_empty() {
        let kind = match o.exchange_type {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Topic => ExchangeKind::Topic,
        };
        channel
            .exchange_declare(
                exchange.clone(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp_error(format!("declare exchange {:?}", o.exchange)))?;
    }
    let mut arguments = FieldTable::default();
    match o.queue_type {
        QueueType::Classic => {}
        QueueType::Quorum => {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        QueueType::Stream => {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("stream".into()),
            );
        }
    }
    for topic in topics {
        for partition in 0..workload.partitions as i32 {
            let name = queue_name(topic, partition);
            let queue = short(&name)?;
            channel
                .queue_declare(
                    queue.clone(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    arguments.clone(),
                )
                .await
                .map_err(amqp_error(format!("declare queue {name:?}")))?;
            if !o.exchange.is_empty() {
                channel
                    .queue_bind(
                        queue.clone(),
                        exchange.clone(),
                        queue,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(amqp_error(format!("bind queue {name:?}")))?;
            }
        }
    }
    close(connection).await;
    Ok(address.to_owned())
}

/// Polls `future` once with a waker that does nothing: lapin's publish and ack queue
/// their frames on the first poll; whoever awaits the future later polls it with a
/// real waker.
fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// A publish whose frames are queued: its outcome, or the future that gives it.
type PublishFuture = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

/// One published message awaiting its confirm (or its write, without confirms).
struct InFlight {
    publish: Result<lapin::Result<Confirmation>, PublishFuture>,
    sent_at: Instant,
    /// Released with the confirm: bounds the unconfirmed messages.
    _permit: OwnedSemaphorePermit,
}

async fn run_producer(
    id: u32,
    ctx: Arc<RunContext>,
    target: Arc<AmqpTarget>,
) -> Result<ProducerOutcome> {
    let w = &ctx.workload;
    let o = &w.amqp;
    let connection = connect(&ctx.address, &target, &format!("ferry-bench producer {id}")).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp_error("open producer channel"))?;
    if o.confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_error("confirm.select"))?;
    }
    let permits = Arc::new(Semaphore::new(confirm_window(w)));
    let (in_flight_tx, in_flight_rx) = mpsc::unbounded_channel::<InFlight>();
    let confirm_task = tokio::spawn(await_confirms(id, in_flight_rx, ctx.clone()));

    let partitions = w.total_partitions();
    let mut routing_keys = Vec::with_capacity(partitions);
    for global in 0..partitions {
        let (topic, partition) = ctx.split_partition(global);
        routing_keys.push(short(&queue_name(&ctx.topics[topic], partition))?);
    }
    let exchange = short(&o.exchange)?;
    let properties =
        BasicProperties::default().with_delivery_mode(if o.persistent { 2 } else { 1 });
    let mut sequences = vec![0u64; partitions];
    let mut arena = BytesMut::new();
    let rate_per_producer = w.rate_msg_per_s as f64 / w.producers as f64;
    let limit = w.messages_per_producer().unwrap_or(u64::MAX);
    let started = Instant::now();
    let mut generated: u64 = 0;
    let mut round_robin = id as usize % partitions;
    let mut key_counter: u64 = id as u64 * 7_919;
    let mut key_buf = String::new();

    'run: loop {
        let now = Instant::now();
        if now >= ctx.state.measure_end || generated >= limit {
            break;
        }
        let due = if w.rate_msg_per_s == 0 {
            GENERATE_CHUNK
        } else {
            let allowed = (now.duration_since(started).as_secs_f64() * rate_per_producer) as u64;
            allowed.saturating_sub(generated).min(GENERATE_CHUNK)
        };
        if due == 0 {
            let next_due =
                started + Duration::from_secs_f64((generated + 1) as f64 / rate_per_producer);
            tokio::time::sleep_until(next_due.min(now + PRODUCER_IDLE_SLEEP_MAX).into()).await;
            continue;
        }
        for _ in 0..due.min(limit - generated) {
            let partition = if w.keyed {
                use std::fmt::Write;
                key_counter = key_counter.wrapping_add(1);
                key_buf.clear();
                // Writing to a String cannot fail.
                let _ = write!(key_buf, "key-{}", key_counter % KEY_SPACE);
                let topic = (key_counter % w.topics as u64) as usize;
                topic * w.partitions as usize
                    + partition_for_key(key_buf.as_bytes(), w.partitions as i32) as usize
            } else {
                round_robin = (round_robin + 1) % partitions;
                round_robin
            };
            let stamp = Stamp {
                producer: id,
                sequence: sequences[partition],
                sent_ns: ctx.state.now_ns(),
            };
            sequences[partition] += 1;
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| BenchError::Task("confirm window semaphore closed".into()))?;
            if arena.capacity() < w.message_bytes {
                arena.reserve(PAYLOAD_ARENA_BYTES.max(w.message_bytes));
            }
            arena.put_slice(&stamp.encode());
            arena.put_bytes(0, w.message_bytes - PAYLOAD_HEADER_BYTES);
            let payload = arena.split().freeze();
            let publish_channel = channel.clone();
            let exchange = exchange.clone();
            let routing_key = routing_keys[partition].clone();
            let properties = properties.clone();
            let mut publish: PublishFuture = Box::pin(async move {
                publish_channel
                    .basic_publish(
                        exchange,
                        routing_key,
                        BasicPublishOptions::default(),
                        &payload,
                        properties,
                    )
                    .await?
                    .await
            });
            let sent_at = Instant::now();
            let publish = match poll_once(publish.as_mut()) {
                Poll::Ready(outcome) => Ok(outcome),
                Poll::Pending => Err(publish),
            };
            ctx.state.sent_per_partition[partition].fetch_add(1, Ordering::AcqRel);
            ctx.state.sent_total.fetch_add(1, Ordering::Relaxed);
            generated += 1;
            if in_flight_tx
                .send(InFlight {
                    publish,
                    sent_at,
                    _permit: permit,
                })
                .is_err()
            {
                // The confirm task ended early: it holds the reason.
                break 'run;
            }
        }
    }
    drop(in_flight_tx);
    let outcome = confirm_task
        .await
        .map_err(|e| BenchError::Task(format!("producer {id} confirms: {e}")))?;
    close(connection).await;
    Ok(ProducerOutcome {
        publish_latency: outcome?,
    })
}

/// Awaits the publishes in order, counts them, records publish → confirm latency.
async fn await_confirms(
    id: u32,
    mut in_flight: mpsc::UnboundedReceiver<InFlight>,
    ctx: Arc<RunContext>,
) -> Result<Histogram<u64>> {
    let o = &ctx.workload.amqp;
    let mut histogram = latency_histogram();
    let mut done: u64 = 0;
    let mut segment_start = Instant::now();
    while let Some(message) = in_flight.recv().await {
        let outcome = match message.publish {
            Ok(outcome) => outcome,
            Err(future) => future.await,
        };
        let at = Instant::now();
        let confirmed = match outcome.map_err(amqp_error(format!("producer {id} publish")))? {
            Confirmation::Ack(None) | Confirmation::NotRequested => true,
            // A returned (unroutable) message or a nack: the broker did not take it.
            Confirmation::Ack(Some(_)) | Confirmation::Nack(_) => {
                ctx.state.produce_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        if o.confirms && ctx.state.is_measured(message.sent_at) {
            record_latency(&mut histogram, at - message.sent_at);
        }
        if confirmed {
            let w = &ctx.workload;
            ctx.state
                .acknowledged(w.message_bytes as u64, w.produce_step_bytes, at);
            if ctx.state.is_measured(at) {
                ctx.state.sent_measured.fetch_add(1, Ordering::Relaxed);
            }
        }
        done += 1;
        if o.rate_segment > 0 && done.is_multiple_of(o.rate_segment) {
            let seconds = at.duration_since(segment_start).as_secs_f64().max(1e-9);
            eprintln!(
                "[amqp producer {id}] messages {}..{} {} at {:.0} msg/s ({seconds:.2} s)",
                done - o.rate_segment,
                done,
                if o.confirms { "confirmed" } else { "written" },
                o.rate_segment as f64 / seconds
            );
            segment_start = at;
        }
    }
    Ok(histogram)
}

async fn run_consumer(
    id: u32,
    partitions: Vec<usize>,
    ctx: Arc<RunContext>,
    target: Arc<AmqpTarget>,
) -> Result<ConsumerOutcome> {
    let o = &ctx.workload.amqp;
    let connection = connect(&ctx.address, &target, &format!("ferry-bench consumer {id}")).await?;
    if o.consume_after_produce {
        while !ctx.state.producers_done.load(Ordering::Acquire) {
            tokio::time::sleep(CONSUMER_TICK).await;
        }
    }
    let mut queues = Vec::with_capacity(partitions.len());
    for &global in &partitions {
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp_error("open consumer channel"))?;
        if !o.no_ack && o.prefetch > 0 {
            channel
                .basic_qos(o.prefetch, BasicQosOptions::default())
                .await
                .map_err(amqp_error("basic.qos"))?;
        }
        let (topic, partition) = ctx.split_partition(global);
        let name = queue_name(&ctx.topics[topic], partition);
        let mut arguments = FieldTable::default();
        if o.queue_type == QueueType::Stream {
            arguments.insert(
                "x-stream-offset".into(),
                AMQPValue::LongString("first".into()),
            );
        }
        let consumer = channel
            .basic_consume(
                short(&name)?,
                short(&format!("ferry-bench-{id}-{global}"))?,
                BasicConsumeOptions {
                    no_ack: o.no_ack,
                    ..BasicConsumeOptions::default()
                },
                arguments,
            )
            .await
            .map_err(amqp_error(format!("basic.consume from {name:?}")))?;
        queues.push(tokio::spawn(consume_queue(
            global,
            name,
            channel,
            consumer,
            ctx.clone(),
        )));
    }
    let mut end_to_end_latency = latency_histogram();
    let mut checks = CheckCounts::default();
    let mut failure = None;
    for queue in queues {
        match queue.await {
            Ok(Ok(outcome)) => {
                let _ = end_to_end_latency.add(&outcome.end_to_end_latency);
                checks.merge(&outcome.checks);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(BenchError::Task(format!("consumer {id}: {e}")));
            }
        }
    }
    close(connection).await;
    match failure {
        Some(e) => Err(e),
        None => Ok(ConsumerOutcome {
            end_to_end_latency,
            checks,
        }),
    }
}

/// The check and latency bookkeeping of one queue's deliveries.
struct QueueTally {
    global: usize,
    checker: SequenceChecker,
    histogram: Histogram<u64>,
    measure_start_ns: u64,
    measure_end_ns: u64,
}

impl QueueTally {
    fn observe(&mut self, ctx: &RunContext, data: &[u8]) {
        let now_ns = ctx.state.now_ns();
        match Stamp::decode(data) {
            Some(stamp) => {
                self.checker
                    .observe(self.global as u32, stamp.producer, stamp.sequence);
                if stamp.sent_ns >= self.measure_start_ns && stamp.sent_ns < self.measure_end_ns {
                    record_latency(
                        &mut self.histogram,
                        Duration::from_nanos(now_ns.saturating_sub(stamp.sent_ns)),
                    );
                }
            }
            None => self.checker.unreadable(),
        }
        let state = &ctx.state;
        state.consumed_per_partition[self.global].fetch_add(1, Ordering::AcqRel);
        state.consumed_total.fetch_add(1, Ordering::Relaxed);
        // The same clock reading as the latency: one clock read per delivery.
        if now_ns >= self.measure_start_ns && now_ns < self.measure_end_ns {
            state.consumed_measured.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Consumes one queue on its own channel until it is drained (or the drain timeout).
async fn consume_queue(
    global: usize,
    name: String,
    channel: Channel,
    mut consumer: lapin::Consumer,
    ctx: Arc<RunContext>,
) -> Result<ConsumerOutcome> {
    let o = &ctx.workload.amqp;
    let mut tally = QueueTally {
        global,
        checker: SequenceChecker::new(),
        histogram: latency_histogram(),
        measure_start_ns: (ctx.state.measure_start - ctx.state.start).as_nanos() as u64,
        measure_end_ns: (ctx.state.measure_end - ctx.state.start).as_nanos() as u64,
    };
    let mut pending_acks = VecDeque::new();
    let mut unacked: u32 = 0;
    let mut last_tag: u64 = 0;
    let mut drain_deadline: Option<Instant> = None;
    let mut tick = pin!(tokio::time::sleep(CONSUMER_TICK));
    let drained = |ctx: &RunContext| {
        ctx.state.producers_done.load(Ordering::Acquire) && ctx.state.partition_drained(global)
    };
    loop {
        let mut flush = false;
        tokio::select! {
            biased;
            delivery = std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)) => {
                let delivery = match delivery {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(amqp_error(format!("consume from {name:?}"))(e)),
                    None => {
                        return Err(BenchError::Protocol(format!(
                            "the target cancelled the consumer of {name:?}"
                        )))
                    }
                };
                tally.observe(&ctx, &delivery.data);
                if !o.no_ack {
                    unacked += 1;
                    last_tag = delivery.delivery_tag;
                    flush = unacked >= o.ack_every;
                }
                if drained(&ctx) {
                    break;
                }
            }
            () = &mut tick => {
                tick.as_mut().reset((Instant::now() + CONSUMER_TICK).into());
                flush = unacked > 0;
                if ctx.state.producers_done.load(Ordering::Acquire) {
                    if drained(&ctx) {
                        break;
                    }
                    let deadline = *drain_deadline
                        .get_or_insert_with(|| Instant::now() + ctx.workload.drain_timeout());
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        if flush {
            let mut ack = Box::pin(channel.basic_ack(
                last_tag,
                BasicAckOptions {
                    multiple: unacked > 1,
                },
            ));
            unacked = 0;
            if let Poll::Ready(outcome) = poll_once(ack.as_mut()) {
                outcome.map_err(amqp_error("basic.ack"))?;
            } else {
                pending_acks.push_back(ack);
            }
            // Reap the acks already written, so that the queue stays short.
            while let Some(front) = pending_acks.front_mut() {
                match poll_once(front.as_mut()) {
                    Poll::Ready(outcome) => {
                        outcome.map_err(amqp_error("basic.ack"))?;
                        pending_acks.pop_front();
                    }
                    Poll::Pending => break,
                }
            }
        }
    }
    if unacked > 0 {
        channel
            .basic_ack(
                last_tag,
                BasicAckOptions {
                    multiple: unacked > 1,
                },
            )
            .await
            .map_err(amqp_error("basic.ack"))?;
    }
    for ack in pending_acks {
        ack.await.map_err(amqp_error("basic.ack"))?;
    }
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    if o.delete_queues {
        channel
            .queue_delete(short(&name)?, QueueDeleteOptions::default())
            .await
            .map_err(amqp_error(format!("delete queue {name:?}")))?;
    }
    let _ = channel
        .close(REPLY_SUCCESS, ShortString::from("bench done"))
        .await;
    Ok(ConsumerOutcome {
        end_to_end_latency: tally.histogram,
        checks: tally.checker.counts(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_validate_and_derive_the_confirm_window() {
        let mut w = Workload {
            protocol: crate::workload::Protocol::Amqp,
            ..Workload::default()
        };
        w.validate().expect("defaults are valid");
        // 64 KiB batches of 1 KiB messages, 5 in flight: 320 unconfirmed messages.
        assert_eq!(confirm_window(&w), 320);
        w.amqp.confirm_window = 7;
        assert_eq!(confirm_window(&w), 7);
        w.amqp.ack_every = 101;
        assert!(w.validate().is_err(), "ack_every above the prefetch stalls");
        w.amqp.ack_every = 0;
        assert!(w.validate().is_err());
        w.amqp.ack_every = 10;
        w.amqp.queue_type = QueueType::Stream;
        w.amqp.no_ack = true;
        assert!(w.validate().is_err(), "streams need acks");
    }

    #[test]
    fn workload_file_reads_the_amqp_table() {
        let w: Workload = toml::from_str(
            "protocol = \"amqp\"\npartitions = 1\n[amqp]\nqueue_type = \"quorum\"\nprefetch = 50\nack_every = 10\npersistent = false\n",
        )
        .expect("parse");
        assert_eq!(w.protocol, crate::workload::Protocol::Amqp);
        assert_eq!(w.amqp.queue_type, QueueType::Quorum);
        assert_eq!(w.amqp.prefetch, 50);
        assert_eq!(w.amqp.ack_every, 10);
        assert!(!w.amqp.persistent);
        assert!(w.amqp.confirms);
        assert!(toml::from_str::<Workload>("[amqp]\nprefech = 5\n").is_err());
        assert_eq!(queue_name("t", 3), "t.3");
    }
}
