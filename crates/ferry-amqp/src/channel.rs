//! One AMQP channel: its methods mapped onto the core, content assembly of publishes,
//! publisher confirms, transactions, consumers and their deliveries.
//!
//! The connection's reader task owns the [`Channel`] and runs its methods in order. Each
//! consumer is a task of its own that asks the queue for the next delivery only when the
//! channel's prefetch credit allows, records it in the channel's [`DeliveryBook`] (which
//! it shares with the reader under a mutex, never held across an await) and queues the
//! frames on the connection's writer. Confirms are awaited by one task per confirm-mode
//! channel, in sequence order, and sent coalesced with `multiple`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{basic, channel, confirm, exchange, queue, tx, AMQPClass};
use bytes::{Bytes, BytesMut};
use ferry_core::auth::{Access, AuthedUser, ResourceKind};
use ferry_core::message::Message;
use ferry_core::mq::ConnectionId;
use ferry_core::queue::{
    Consumer, ConsumerEnd, ConsumerSpec, Delivery, Queue, QueueType, SharedLimit, CONSUMER_WINDOW,
};
use ferry_core::routing::{Confirm, ExchangeDeclare, ExchangeKind, QueueDeclare, VHost};
use ferry_core::Broker;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::book::{coalesce_confirms, DeliveryBook, Unacked};
use crate::codec::{content_head, method_frame};
use crate::convert::{
    properties_from_wire, properties_to_wire, short, stream_start, table_from_wire,
};
use crate::error::*;
use crate::writer::Out;
use crate::AmqpConfig;

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Prefix of the routing keys that reach one direct reply-to consumer.
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";
/// The default exchange's name in permission checks.
const DEFAULT_EXCHANGE_RESOURCE: &str = "amq.default";
/// Body frames at least this large become message bodies without a copy.
const ZERO_COPY_BODY_BYTES: usize = 16 << 10;
/// Largest message body accepted (RabbitMQ 3.10's default `max_message_size`).
pub const MAX_MESSAGE_BYTES: u64 = 128 << 20;
/// Publisher confirms awaiting their answer per channel before the publisher is paused.
const CONFIRM_QUEUE: usize = 16 * 1024;
/// Most confirms gathered into one round of coalescing.
const CONFIRM_BATCH: usize = 1024;
/// Longest wait for a consumer task to stop when it is cancelled.
const CONSUMER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Permission checks remembered per channel (RabbitMQ caches a dozen too).
const PERMISSION_CACHE: usize = 12;

/// What a connection's channels share: the broker, the vhost, the user and the writer.
#[derive(Debug)]
pub struct Ctx {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The connection's vhost.
    pub vhost: Arc<VHost>,
    /// Its name.
    pub vhost_name: String,
    /// The authenticated user.
    pub user: AuthedUser,
    /// The connection's identity (owner of exclusive queues).
    pub conn: ConnectionId,
    /// The writer's queue.
    pub out: mpsc::Sender<Out>,
    /// Listener settings.
    pub config: AmqpConfig,
    /// The client understands server-sent `basic.cancel`.
    pub consumer_cancel_notify: bool,
    /// Direct reply-to consumers of the listener.
    pub replies: Arc<Replies>,
}

/// Direct reply-to consumers (RabbitMQ's `amq.rabbitmq.reply-to`) of every connection,
/// by token: a reply published to `amq.rabbitmq.reply-to.<token>` on the default exchange
/// goes straight to the consumer's channel, through no queue.
#[derive(Debug, Default)]
pub struct Replies {
    consumers: Mutex<HashMap<String, ReplyConsumer>>,
}

#[derive(Debug, Clone)]
struct ReplyConsumer {
    out: mpsc::Sender<Out>,
    channel: u16,
    tag: Arc<str>,
    shared: Arc<Shared>,
}

impl Ctx {
    /// Queues encoded frames; `false` if the writer is gone.
    pub async fn send(&self, frames: Bytes) -> bool {
        self.out.send(Out::Frames(frames)).await.is_ok()
    }

    /// Queues one method.
    pub async fn send_method(&self, channel: u16, method: AMQPClass) -> AmqpResult<()> {
        let frame =
            method_frame(channel, method).map_err(|e| AmqpError::connection(INTERNAL_ERROR, e))?;
        self.send(frame).await;
        Ok(())
    }

    async fn send_content(
        &self,
        channel: u16,
        method: AMQPClass,
        message: &Message,
    ) -> AmqpResult<()> {
        let head = content_head(
            channel,
            method,
            properties_to_wire(&message.properties),
            message.body.len() as u64,
        )
        .map_err(|e| AmqpError::connection(INTERNAL_ERROR, e))?;
        let _ = self
            .out
            .send(Out::Content {
                channel,
                head,
                body: message.body.clone(),
            })
            .await;
        Ok(())
    }
}

/// Book and consumers of a channel, shared with its consumer tasks.
#[derive(Debug, Default)]
struct State {
    book: DeliveryBook<Arc<Queue>>,
    consumers: HashMap<Arc<str>, ConsumerEntry>,
}

#[derive(Debug)]
struct ConsumerEntry {
    queue: Arc<Queue>,
    consumer: Arc<Consumer>,
    stop: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken when credit is freed (acks, qos changes).
    credit: Notify,
}

impl Shared {
    /// The channel's tag for a delivery of `queue`: tracked until settled (`consumer` is
    /// its consumer; none for `basic.get`) unless `no_ack`.
    fn delivery_tag(
        &self,
        queue: &Arc<Queue>,
        delivery: &Delivery,
        consumer: Option<Arc<str>>,
        no_ack: bool,
        timeout_ms: u64,
    ) -> u64 {
        let mut state = self.state.lock();
        if no_ack {
            state.book.next_tag()
        } else {
            state.book.record(
                queue.clone(),
                delivery.id,
                consumer,
                timeout_ms,
                Instant::now(),
            )
        }
    }
}

/// A publish whose content is arriving.
#[derive(Debug)]
struct Content {
    publish: basic::Publish,
    header: Option<AMQPContentHeader>,
    size: u64,
    first: Option<Bytes>,
    rest: BytesMut,
}

/// A publisher confirm: from the core, or known at once (direct reply-to).
#[derive(Debug)]
enum Pending {
    Core(Confirm),
    Ready(bool),
}

impl Pending {
    async fn wait(self) -> AmqpResult<bool> {
        match self {
            Pending::Core(confirm) => Ok(confirm.wait().await?),
            Pending::Ready(ack) => Ok(ack),
        }
    }
}

/// A publish held until `tx.commit`.
#[derive(Debug)]
struct TxPublish {
    message: Message,
    mandatory: bool,
}

/// A settle held until `tx.commit`.
#[derive(Debug)]
enum TxSettle {
    Ack(Vec<(u64, Unacked<Arc<Queue>>)>),
    Reject(Vec<(u64, Unacked<Arc<Queue>>)>, bool),
}

#[derive(Debug, Default)]
struct Tx {
    publishes: Vec<TxPublish>,
    settles: Vec<TxSettle>,
}

#[derive(Debug)]
struct Confirms {
    last_seq: u64,
    queue: mpsc::Sender<(u64, Pending)>,
    task: JoinHandle<()>,
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    id: u16,
    shared: Arc<Shared>,
    content: Option<Content>,
    confirms: Option<Confirms>,
    tx: Option<Tx>,
    /// `channel.close` sent; waiting for `close-ok`.
    pub closing: bool,
    /// The last queue declared (AMQP's "" shortcut).
    last_queue: Option<String>,
    /// Prefetch of consumers created from now on (`basic.qos` global=false).
    consumer_prefetch: u16,
    /// Recently allowed (access, kind, name) checks.
    allowed: Vec<(Access, ResourceKind, String)>,
    /// This channel's direct reply-to consumer: its token and tag.
    reply: Option<(String, Arc<str>)>,
}

impl Channel {
    /// A new open channel.
    pub fn new(id: u16) -> Channel {
        Channel {
            id,
            shared: Arc::new(Shared::default()),
            content: None,
            confirms: None,
            tx: None,
            closing: false,
            last_queue: None,
            consumer_prefetch: 0,
            allowed: Vec::new(),
            reply: None,
        }
    }

    /// The timeout (ms) of an overdue delivery acknowledgement, if any.
    pub fn overdue(&self, now: Instant) -> Option<u64> {
        self.shared.state.lock().book.overdue(now)
    }

    /// `queue.bind`/`queue.unbind`'s permissions, as RabbitMQ checks them: write on the
    /// queue, read on the exchange.
    fn check_queue_binding(&mut self, ctx: &Ctx, queue: &str, exchange: &str) -> AmqpResult<()> {
        self.check(ctx, Access::Write, ResourceKind::Queue, queue)?;
        self.check(ctx, Access::Read, ResourceKind::Exchange, exchange)
    }

    /// Checks a permission, remembering recent successes.
    fn check(
        &mut self,
        ctx: &Ctx,
        access: Access,
        kind: ResourceKind,
        name: &str,
    ) -> AmqpResult<()> {
        // Permissions name the default exchange `amq.default`, as RabbitMQ does.
        let name = if kind == ResourceKind::Exchange && name.is_empty() {
            DEFAULT_EXCHANGE_RESOURCE
        } else {
            name
        };
        if self
            .allowed
            .iter()
            .any(|(a, k, n)| *a == access && *k == kind && n == name)
        {
            return Ok(());
        }
        ctx.broker
            .auth()
            .check(&ctx.user, &ctx.vhost_name, access, kind, name)?;
        if self.allowed.len() >= PERMISSION_CACHE {
            self.allowed.remove(0);
        }
        self.allowed.push((access, kind, name.to_owned()));
        Ok(())
    }

    /// AMQP's empty-name shortcut: the channel's last declared queue.
    fn queue_name(&self, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::channel(NOT_FOUND, "no previously declared queue"))
    }

    /// Handles one method on this channel.
    pub async fn method(&mut self, ctx: &Arc<Ctx>, method: AMQPClass) -> AmqpResult<()> {
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        if let Some(content) = &self.content {
            let expected = if content.header.is_none() {
                "expected content header for class 60, got non content header frame instead"
            } else {
                "expected content body, got non content body frame instead"
            };
            // The publish whose content was interrupted is the one blamed.
            return Err(AmqpError::connection(UNEXPECTED_FRAME, expected).on(60, 40));
        }
        self.dispatch(ctx, method)
            .await
            .map_err(|e| e.on(class_id, method_id))
    }

    async fn dispatch(&mut self, ctx: &Arc<Ctx>, method: AMQPClass) -> AmqpResult<()> {
        let id = self.id;
        match method {
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                if p.immediate {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "immediate=true"));
                }
                self.content = Some(Content {
                    publish: p,
                    header: None,
                    size: 0,
                    first: None,
                    rest: BytesMut::new(),
                });
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                self.settle(a.delivery_tag, a.multiple, None)
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                self.settle(n.delivery_tag, n.multiple, Some(n.requeue))
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(r)) => {
                self.settle(r.delivery_tag, false, Some(r.requeue))
            }
            AMQPClass::Basic(basic::AMQPMethod::Qos(q)) => {
                if q.global {
                    self.shared
                        .state
                        .lock()
                        .book
                        .set_global_limit(q.prefetch_count);
                } else {
                    self.consumer_prefetch = q.prefetch_count;
                }
                self.shared.credit.notify_waiters();
                ctx.send_method(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                )
                .await
            }
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => self.consume(ctx, c).await,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                self.cancel(ctx, c.consumer_tag.as_str()).await;
                if !c.nowait {
                    ctx.send_method(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    )
                    .await?;
                }
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => self.get(ctx, g).await,
            AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: false }))
            | AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                requeue: false,
            })) => Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false")),
            AMQPClass::Basic(basic::AMQPMethod::Recover(_))
            | AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(_)) => {
                let entries = self.shared.state.lock().book.take_all();
                self.shared.credit.notify_waiters();
                reject_all(entries, true)?;
                if let AMQPClass::Basic(basic::AMQPMethod::Recover(_)) = method {
                    ctx.send_method(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                    )
                    .await?;
                }
                Ok(())
            }
            AMQPClass::Exchange(m) => self.exchange(ctx, m).await,
            AMQPClass::Queue(m) => self.queue(ctx, m).await,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if self.tx.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirms.is_none() {
                    let (queue, rx) = mpsc::channel(CONFIRM_QUEUE);
                    let task = tokio::spawn(confirm_task(ctx.clone(), id, rx));
                    self.confirms = Some(Confirms {
                        last_seq: 0,
                        queue,
                        task,
                    });
                }
                if !s.nowait {
                    ctx.send_method(
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    )
                    .await?;
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx(ctx, m).await,
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                if !f.active {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "active=false"));
                }
                ctx.send_method(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: true,
                    })),
                )
                .await
            }
            AMQPClass::Access(_) => {
                ctx.send_method(
                    id,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                )
                .await
            }
            other => Err(AmqpError::connection(
                COMMAND_INVALID,
                format!(
                    "unexpected method {}.{} on channel {id}",
                    other.get_amqp_class_id(),
                    other.get_amqp_method_id()
                ),
            )),
        }
    }

    /// The publish whose content frames are arriving; a content frame without one is a
    /// connection error, as in RabbitMQ.
    fn content_in_progress(&mut self) -> AmqpResult<&mut Content> {
        self.content.as_mut().ok_or_else(|| {
            AmqpError::connection(
                UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
            )
        })
    }

    /// A content header frame.
    pub async fn content_header(
        &mut self,
        ctx: &Arc<Ctx>,
        header: AMQPContentHeader,
    ) -> AmqpResult<()> {
        let content = self.content_in_progress()?;
        if content.header.is_some() {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "expected content body, got non content body frame instead",
            ));
        }
        if header.class_id != 60 {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                format!(
                    "expected content header for class 60, got one for class {} instead",
                    header.class_id
                ),
            )
            .on(60, 40));
        }
        if header.body_size > MAX_MESSAGE_BYTES {
            self.content = None;
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                format!(
                    "message size {} is larger than configured max size {MAX_MESSAGE_BYTES}",
                    header.body_size
                ),
            )
            .on(60, 40));
        }
        content.size = header.body_size;
        content.header = Some(header);
        if content.size == 0 {
            return self.complete(ctx).await;
        }
        Ok(())
    }

    /// A content body frame.
    pub async fn content_body(&mut self, ctx: &Arc<Ctx>, body: Bytes) -> AmqpResult<()> {
        let content = self.content_in_progress()?;
        if content.header.is_none() {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40));
        }
        let have = content.first.as_ref().map_or(0, |b| b.len()) + content.rest.len();
        let total = have as u64 + body.len() as u64;
        if total > content.size {
            return Err(AmqpError::connection(
                FRAME_ERROR,
                format!(
                    "content body of {total} bytes exceeds the declared size {}",
                    content.size
                ),
            ));
        }
        match content.first.take() {
            // A small body is copied out of the connection's read buffer so that a queued
            // message does not keep the whole buffer chunk it arrived in alive.
            None if content.rest.is_empty() && body.len() < ZERO_COPY_BODY_BYTES => {
                content.first = Some(Bytes::copy_from_slice(&body))
            }
            None if content.rest.is_empty() => content.first = Some(body),
            None => content.rest.extend_from_slice(&body),
            Some(first) => {
                // Several body frames: gather them, growing with what arrives rather
                // than trusting the declared size with one allocation.
                content.rest.reserve(first.len() + body.len());
                content.rest.extend_from_slice(&first);
                content.rest.extend_from_slice(&body);
            }
        }
        if total == content.size {
            return self.complete(ctx).await;
        }
        Ok(())
    }

    /// A publish's content is complete: route it.
    async fn complete(&mut self, ctx: &Arc<Ctx>) -> AmqpResult<()> {
        let Some(content) = self.content.take() else {
            return Ok(());
        };
        let body = match content.first {
            Some(first) => first,
            None => content.rest.freeze(),
        };
        let properties = content
            .header
            .as_ref()
            .map(|h| properties_from_wire(&h.properties))
            .unwrap_or_default();
        let publish = content.publish;
        self.publish(ctx, publish, properties, body)
            .await
            .map_err(|e| e.on(60, 40))
    }

    async fn publish(
        &mut self,
        ctx: &Arc<Ctx>,
        publish: basic::Publish,
        properties: ferry_core::message::Properties,
        body: Bytes,
    ) -> AmqpResult<()> {
        let exchange = publish.exchange.as_str();
        self.check(ctx, Access::Write, ResourceKind::Exchange, exchange)?;
        if let Some(expiration) = &properties.expiration {
            // RabbitMQ checks the per-message TTL when the message arrives.
            if expiration.parse::<u64>().is_err() {
                let reason = if expiration.parse::<i64>().is_ok() {
                    "negative"
                } else {
                    "no_integer"
                };
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!("invalid expiration '{expiration}': {reason}"),
                ));
            }
        }
        let mut properties = properties;
        if properties.reply_to.as_deref() == Some(REPLY_TO) {
            let Some((token, _)) = &self.reply else {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    "fast reply consumer does not exist",
                ));
            };
            properties.reply_to = Some(format!("{REPLY_TO_PREFIX}{token}"));
        }
        if let Some(user_id) = &properties.user_id {
            if *user_id != ctx.user.name {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!(
                        "user_id property set to '{user_id}' but authenticated user was '{}'",
                        ctx.user.name
                    ),
                ));
            }
        }
        let message = Message {
            exchange: exchange.to_owned(),
            routing_key: publish.routing_key.as_str().to_owned(),
            properties,
            body,
        };
        if let Some(tx) = self.tx.as_mut() {
            tx.publishes.push(TxPublish {
                message,
                mandatory: publish.mandatory,
            });
            return Ok(());
        }
        let confirm = self.route(ctx, message, publish.mandatory).await?;
        if let Some(confirms) = self.confirms.as_mut() {
            confirms.last_seq += 1;
            // Waits when too many confirms are outstanding: the publisher slows down.
            let _ = confirms.queue.send((confirms.last_seq, confirm)).await;
        }
        Ok(())
    }

    /// Routes one message; sends `basic.return` when mandatory and unroutable.
    async fn route(&self, ctx: &Ctx, message: Message, mandatory: bool) -> AmqpResult<Pending> {
        let returned = mandatory.then(|| message.clone());
        let (routed, confirm) = match direct_reply(ctx, &message) {
            Some(consumer) => (deliver_reply(consumer, message).await, Pending::Ready(true)),
            None if is_reply_key(&message) => (false, Pending::Ready(true)),
            None => {
                let routed = ctx.vhost.publish(message)?;
                (routed.queues > 0, Pending::Core(routed.confirm))
            }
        };
        if !routed {
            if let Some(message) = returned {
                let method = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: NO_ROUTE,
                    reply_text: short("NO_ROUTE"),
                    exchange: short(&message.exchange),
                    routing_key: short(&message.routing_key),
                }));
                ctx.send_content(self.id, method, &message).await?;
            }
        }
        Ok(confirm)
    }

    async fn get(&mut self, ctx: &Arc<Ctx>, g: basic::Get) -> AmqpResult<()> {
        let name = self.queue_name(g.queue.as_str())?;
        self.check(ctx, Access::Read, ResourceKind::Queue, &name)?;
        let queue = ctx.vhost.queue(&name, ctx.conn)?;
        let Some(delivery) = queue.get(g.no_ack)? else {
            return ctx
                .send_method(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                )
                .await;
        };
        let tag = self.shared.delivery_tag(
            &queue,
            &delivery,
            None,
            g.no_ack,
            consumer_timeout(ctx, &queue),
        );
        let method = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: tag,
            redelivered: delivery.redelivered,
            exchange: short(&delivery.message.exchange),
            routing_key: short(&delivery.message.routing_key),
            message_count: message_count(delivery.remaining),
        }));
        ctx.send_content(self.id, method, &delivery.message).await
    }

    async fn consume(&mut self, ctx: &Arc<Ctx>, c: basic::Consume) -> AmqpResult<()> {
        if c.queue.as_str() == REPLY_TO {
            return self.consume_replies(ctx, c).await;
        }
        let name = self.queue_name(c.queue.as_str())?;
        self.check(ctx, Access::Read, ResourceKind::Queue, &name)?;
        let queue = ctx.vhost.queue(&name, ctx.conn)?;
        let tag = consumer_tag(c.consumer_tag.as_str());
        if self.shared.state.lock().consumers.contains_key(&tag) {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let arguments = table_from_wire(&c.arguments);
        let priority = match arguments.get("x-priority") {
            None => 0,
            Some(v) => v
                .as_integer()
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| {
                    AmqpError::channel(
                        PRECONDITION_FAILED,
                        format!("invalid arg 'x-priority' for consumer: {v:?}"),
                    )
                })?,
        };
        if queue.settings().queue_type == QueueType::Stream && self.consumer_prefetch == 0 {
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                format!(
                    "consumer prefetch count is not set for 'queue '{name}' in vhost '{}''",
                    ctx.vhost_name
                ),
            ));
        }
        let stream_start = stream_start(arguments.get("x-stream-offset"), now_ms())
            .map_err(|text| AmqpError::channel(PRECONDITION_FAILED, text))?;
        let limit = self.shared.state.lock().book.global_limit().clone();
        let consumer = queue.add_consumer(ConsumerSpec {
            tag: tag.to_string(),
            connection: ctx.conn,
            exclusive: c.exclusive,
            no_ack: c.no_ack,
            priority,
            stream_start,
            shared_limit: Some(limit.clone()),
        })?;
        let stop = Arc::new(Notify::new());
        let held = {
            let mut state = self.shared.state.lock();
            state.book.add_consumer(tag.clone(), self.consumer_prefetch);
            state.consumers.insert(
                tag.clone(),
                ConsumerEntry {
                    queue: queue.clone(),
                    consumer: consumer.clone(),
                    stop: stop.clone(),
                    task: None,
                },
            );
            if c.no_ack {
                0
            } else {
                state.book.top_up(&tag, 0, CONSUMER_WINDOW)
            }
        };
        // A consumer with credit is handed messages from before its consume-ok: a client
        // may publish as soon as it sees consume-ok, before the consumer task runs.
        if held > 0 {
            queue.grant(&consumer, held);
        }
        // consume-ok goes out before the first delivery: both go through the one queue.
        self.consume_ok(ctx, &tag, c.nowait).await?;
        let timeout = consumer_timeout(ctx, &queue);
        let task = tokio::spawn(consumer_task(ConsumerTask {
            ctx: ctx.clone(),
            shared: self.shared.clone(),
            channel: self.id,
            queue,
            consumer,
            tag: tag.clone(),
            no_ack: c.no_ack,
            held,
            limit,
            stop,
            timeout_ms: timeout,
        }));
        if let Some(entry) = self.shared.state.lock().consumers.get_mut(&tag) {
            entry.task = Some(task);
        }
        Ok(())
    }

    /// `basic.consume` of the direct reply-to pseudo-queue (no-ack only, one per channel).
    async fn consume_replies(&mut self, ctx: &Arc<Ctx>, c: basic::Consume) -> AmqpResult<()> {
        if !c.no_ack {
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply.is_some() {
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                "reply consumer already set",
            ));
        }
        let tag = consumer_tag(c.consumer_tag.as_str());
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.consume_ok(ctx, &tag, c.nowait).await?;
        ctx.replies.consumers.lock().insert(
            token.clone(),
            ReplyConsumer {
                out: ctx.out.clone(),
                channel: self.id,
                tag: tag.clone(),
                shared: self.shared.clone(),
            },
        );
        self.reply = Some((token, tag));
        Ok(())
    }

    /// Sends `basic.consume-ok` unless the client asked for `nowait`.
    async fn consume_ok(&self, ctx: &Ctx, tag: &str, nowait: bool) -> AmqpResult<()> {
        if nowait {
            return Ok(());
        }
        ctx.send_method(
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(tag),
            })),
        )
        .await
    }

    /// Forgets this channel's direct reply-to consumer.
    fn drop_replies(&mut self, ctx: &Ctx) {
        if let Some((token, _)) = self.reply.take() {
            ctx.replies.consumers.lock().remove(&token);
        }
    }

    /// Cancels a consumer (if it exists): its task stops, the queue forgets it; its unacked
    /// deliveries stay on the channel.
    async fn cancel(&mut self, ctx: &Ctx, tag: &str) {
        if self.reply.as_ref().is_some_and(|(_, t)| &**t == tag) {
            self.drop_replies(ctx);
            return;
        }
        let entry = {
            let mut state = self.shared.state.lock();
            state.book.remove_consumer(tag);
            state.consumers.remove(tag)
        };
        if let Some(entry) = entry {
            stop_consumer(entry).await;
        }
    }

    async fn exchange(&mut self, ctx: &Arc<Ctx>, method: exchange::AMQPMethod) -> AmqpResult<()> {
        let id = self.id;
        match method {
            exchange::AMQPMethod::Declare(d) => {
                let name = d.exchange.as_str();
                if !d.passive {
                    // An unknown type is a connection error (503), before permissions.
                    ExchangeKind::parse(d.kind.as_str())?;
                    self.check(ctx, Access::Configure, ResourceKind::Exchange, name)?;
                }
                ctx.vhost.declare_exchange(ExchangeDeclare {
                    name: name.to_owned(),
                    kind: d.kind.as_str().to_owned(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: table_from_wire(&d.arguments),
                })?;
                if d.nowait {
                    return Ok(());
                }
                ctx.send_method(
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                )
                .await
            }
            exchange::AMQPMethod::Delete(d) => {
                let name = d.exchange.as_str();
                self.check(ctx, Access::Configure, ResourceKind::Exchange, name)?;
                ctx.vhost.delete_exchange(name, d.if_unused)?;
                if d.nowait {
                    return Ok(());
                }
                ctx.send_method(
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                )
                .await
            }
            exchange::AMQPMethod::Bind(b) => {
                self.exchange_binding(ctx, BindingChange::Add, b).await
            }
            exchange::AMQPMethod::Unbind(u) => {
                // `exchange.unbind` carries exactly `exchange.bind`'s fields.
                let b = exchange::Bind {
                    destination: u.destination,
                    source: u.source,
                    routing_key: u.routing_key,
                    nowait: u.nowait,
                    arguments: u.arguments,
                };
                self.exchange_binding(ctx, BindingChange::Remove, b).await
            }
            other => Err(unexpected_method("exchange", AMQPClass::Exchange(other))),
        }
    }

    /// `exchange.bind` or `exchange.unbind` (given in `Bind`'s shape): the same permission
    /// checks and reply for both, only the change to the routing table differs.
    async fn exchange_binding(
        &mut self,
        ctx: &Arc<Ctx>,
        change: BindingChange,
        b: exchange::Bind,
    ) -> AmqpResult<()> {
        let (destination, source) = (b.destination.as_str(), b.source.as_str());
        self.check(ctx, Access::Write, ResourceKind::Exchange, destination)?;
        self.check(ctx, Access::Read, ResourceKind::Exchange, source)?;
        let routing_key = b.routing_key.as_str();
        let arguments = table_from_wire(&b.arguments);
        let ok = match change {
            BindingChange::Add => {
                ctx.vhost
                    .bind_exchange(destination, source, routing_key, arguments)?;
                exchange::AMQPMethod::BindOk(exchange::BindOk {})
            }
            BindingChange::Remove => {
                ctx.vhost
                    .unbind_exchange(destination, source, routing_key, &arguments)?;
                exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})
            }
        };
        if b.nowait {
            return Ok(());
        }
        ctx.send_method(self.id, AMQPClass::Exchange(ok)).await
    }

    async fn queue(&mut self, ctx: &Arc<Ctx>, method: queue::AMQPMethod) -> AmqpResult<()> {
        let id = self.id;
        match method {
            queue::AMQPMethod::Declare(d) => {
                let name = d.queue.as_str();
                // A server-named queue's name is not known before the declare.
                if !d.passive && !name.is_empty() {
                    self.check(ctx, Access::Configure, ResourceKind::Queue, name)?;
                }
                let declared = ctx.vhost.declare_queue(
                    QueueDeclare {
                        name: name.to_owned(),
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: table_from_wire(&d.arguments),
                    },
                    ctx.conn,
                )?;
                if !d.passive && name.is_empty() {
                    // A server-named queue needs configure on the name it got, as in
                    // RabbitMQ (which names it first); refused, it must not stay.
                    if let Err(refused) =
                        self.check(ctx, Access::Configure, ResourceKind::Queue, &declared.name)
                    {
                        let _ = ctx
                            .vhost
                            .delete_queue(&declared.name, false, false, ctx.conn);
                        return Err(refused);
                    }
                }
                self.last_queue = Some(declared.name.clone());
                if d.nowait {
                    return Ok(());
                }
                ctx.send_method(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: short(&declared.name),
                        message_count: message_count(declared.message_count),
                        consumer_count: declared.consumer_count,
                    })),
                )
                .await
            }
            queue::AMQPMethod::Bind(b) => {
                let name = self.queue_name(b.queue.as_str())?;
                let key = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                    name.clone()
                } else {
                    b.routing_key.as_str().to_owned()
                };
                self.check_queue_binding(ctx, &name, b.exchange.as_str())?;
                ctx.vhost.bind_queue(
                    &name,
                    b.exchange.as_str(),
                    &key,
                    table_from_wire(&b.arguments),
                    ctx.conn,
                )?;
                if b.nowait {
                    return Ok(());
                }
                ctx.send_method(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                )
                .await
            }
            queue::AMQPMethod::Unbind(u) => {
                let name = self.queue_name(u.queue.as_str())?;
                self.check_queue_binding(ctx, &name, u.exchange.as_str())?;
                ctx.vhost.unbind_queue(
                    &name,
                    u.exchange.as_str(),
                    u.routing_key.as_str(),
                    &table_from_wire(&u.arguments),
                    ctx.conn,
                )?;
                ctx.send_method(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                )
                .await
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.queue_name(p.queue.as_str())?;
                self.check(ctx, Access::Read, ResourceKind::Queue, &name)?;
                let count = ctx.vhost.purge_queue(&name, ctx.conn)?;
                if p.nowait {
                    return Ok(());
                }
                ctx.send_method(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: message_count(count),
                    })),
                )
                .await
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(d.queue.as_str())?;
                self.check(ctx, Access::Configure, ResourceKind::Queue, &name)?;
                let count = ctx
                    .vhost
                    .delete_queue(&name, d.if_unused, d.if_empty, ctx.conn)?;
                if d.nowait {
                    return Ok(());
                }
                ctx.send_method(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count: message_count(count),
                    })),
                )
                .await
            }
            other => Err(unexpected_method("queue", AMQPClass::Queue(other))),
        }
    }

    async fn tx(&mut self, ctx: &Arc<Ctx>, method: tx::AMQPMethod) -> AmqpResult<()> {
        let id = self.id;
        let not_transactional =
            || AmqpError::channel(PRECONDITION_FAILED, "channel is not transactional");
        match method {
            tx::AMQPMethod::Select(_) => {
                if self.confirms.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if self.tx.is_none() {
                    self.tx = Some(Tx::default());
                }
                ctx.send_method(id, AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})))
                    .await
            }
            tx::AMQPMethod::Commit(_) => {
                let work = std::mem::take(self.tx.as_mut().ok_or_else(not_transactional)?);
                let mut confirms = Vec::with_capacity(work.publishes.len());
                for publish in work.publishes {
                    confirms.push(self.route(ctx, publish.message, publish.mandatory).await?);
                }
                for settle in work.settles {
                    match settle {
                        TxSettle::Ack(entries) => {
                            ack_all(entries.into_iter().map(|(_, e)| e).collect())?
                        }
                        TxSettle::Reject(entries, requeue) => {
                            reject_all(entries.into_iter().map(|(_, e)| e).collect(), requeue)?
                        }
                    }
                }
                // Commit-ok once the published messages are stored as their queues need.
                for confirm in confirms {
                    confirm.wait().await?;
                }
                ctx.send_method(id, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})))
                    .await
            }
            tx::AMQPMethod::Rollback(_) => {
                let work = std::mem::take(self.tx.as_mut().ok_or_else(not_transactional)?);
                {
                    let mut state = self.shared.state.lock();
                    for settle in work.settles {
                        let (TxSettle::Ack(entries) | TxSettle::Reject(entries, _)) = settle;
                        for (tag, entry) in entries {
                            state.book.restore(tag, entry);
                        }
                    }
                }
                ctx.send_method(
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                )
                .await
            }
            other => Err(unexpected_method("tx", AMQPClass::Tx(other))),
        }
    }

    /// Closes the channel's work: consumers stop and leave their queues, unacked
    /// deliveries go back to their queues (flagged redelivered), confirms stop.
    pub async fn shutdown(&mut self, ctx: &Ctx) {
        self.drop_replies(ctx);
        self.content = None;
        self.tx = None;
        if let Some(confirms) = self.confirms.take() {
            confirms.task.abort();
        }
        let entries: Vec<ConsumerEntry> = {
            let mut state = self.shared.state.lock();
            let tags: Vec<Arc<str>> = state.consumers.keys().cloned().collect();
            tags.iter()
                .filter_map(|t| {
                    state.book.remove_consumer(t);
                    state.consumers.remove(t)
                })
                .collect()
        };
        for entry in entries {
            stop_consumer(entry).await;
        }
        let unacked = self.shared.state.lock().book.take_all();
        if let Err(error) = reject_all(unacked, true) {
            debug!(channel = self.id, %error, "requeueing unacked deliveries failed");
        }
    }
}

impl Channel {
    /// `basic.ack` (`requeue` None) or `basic.nack`/`basic.reject`: settles now, or holds
    /// the deliveries until `tx.commit` in a transaction.
    fn settle(&mut self, tag: u64, multiple: bool, requeue: Option<bool>) -> AmqpResult<()> {
        let unknown =
            || AmqpError::channel(PRECONDITION_FAILED, format!("unknown delivery tag {tag}"));
        if self.tx.is_some() {
            let entries = {
                let mut state = self.shared.state.lock();
                state.book.take_with_tags(tag, multiple)
            }
            .ok_or_else(unknown)?;
            self.shared.credit.notify_waiters();
            if let Some(tx) = self.tx.as_mut() {
                tx.settles.push(match requeue {
                    None => TxSettle::Ack(entries),
                    Some(requeue) => TxSettle::Reject(entries, requeue),
                });
            }
            return Ok(());
        }
        let entries = self
            .shared
            .state
            .lock()
            .book
            .take(tag, multiple)
            .ok_or_else(unknown)?;
        self.shared.credit.notify_waiters();
        match requeue {
            None => ack_all(entries),
            Some(requeue) => reject_all(entries, requeue),
        }
    }
}

/// Whether an `exchange.bind`/`exchange.unbind` adds or removes its binding.
#[derive(Clone, Copy, Debug)]
enum BindingChange {
    Add,
    Remove,
}

/// The tag a `basic.consume` asked for, or a new one as RabbitMQ names them.
fn consumer_tag(requested: &str) -> Arc<str> {
    if requested.is_empty() {
        Arc::from(format!("amq.ctag-{}", uuid::Uuid::new_v4().simple()))
    } else {
        Arc::from(requested)
    }
}

/// The connection error for a server-only method a client sent.
fn unexpected_method(class: &str, method: AMQPClass) -> AmqpError {
    AmqpError::connection(
        COMMAND_INVALID,
        format!(
            "unexpected method {class}.{} from a client",
            method.get_amqp_method_id()
        ),
    )
}

/// A message count in a reply's 32-bit field, saturating.
fn message_count(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// `basic.deliver` of `message` to a consumer.
fn deliver_method(
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    message: &Message,
) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
        consumer_tag: short(consumer_tag),
        delivery_tag,
        redelivered,
        exchange: short(&message.exchange),
        routing_key: short(&message.routing_key),
    }))
}

/// Whether a message is addressed to a direct reply-to consumer.
fn is_reply_key(message: &Message) -> bool {
    message.exchange.is_empty() && message.routing_key.starts_with(REPLY_TO_PREFIX)
}

/// The direct reply-to consumer a message is addressed to, if it exists.
fn direct_reply(ctx: &Ctx, message: &Message) -> Option<ReplyConsumer> {
    if !is_reply_key(message) {
        return None;
    }
    let token = &message.routing_key[REPLY_TO_PREFIX.len()..];
    ctx.replies.consumers.lock().get(token).cloned()
}

/// Delivers a reply straight to its consumer's channel; `false` if it is gone.
async fn deliver_reply(consumer: ReplyConsumer, message: Message) -> bool {
    let tag = consumer.shared.state.lock().book.next_tag();
    let method = deliver_method(&consumer.tag, tag, false, &message);
    let Ok(head) = content_head(
        consumer.channel,
        method,
        properties_to_wire(&message.properties),
        message.body.len() as u64,
    ) else {
        return false;
    };
    consumer
        .out
        .send(Out::Content {
            channel: consumer.channel,
            head,
            body: message.body,
        })
        .await
        .is_ok()
}

/// Groups deliveries by queue, in order.
fn by_queue(
    entries: Vec<Unacked<Arc<Queue>>>,
) -> Vec<(Arc<Queue>, Vec<ferry_core::queue::DeliveryId>)> {
    let mut groups: Vec<(Arc<Queue>, Vec<ferry_core::queue::DeliveryId>)> = Vec::new();
    for entry in entries {
        match groups
            .iter_mut()
            .find(|(q, _)| Arc::ptr_eq(q, &entry.queue))
        {
            Some((_, ids)) => ids.push(entry.id),
            None => groups.push((entry.queue, vec![entry.id])),
        }
    }
    groups
}

fn ack_all(entries: Vec<Unacked<Arc<Queue>>>) -> AmqpResult<()> {
    for (queue, ids) in by_queue(entries) {
        queue.ack(&ids)?;
    }
    Ok(())
}

fn reject_all(entries: Vec<Unacked<Arc<Queue>>>, requeue: bool) -> AmqpResult<()> {
    for (queue, ids) in by_queue(entries) {
        queue.reject(&ids, requeue)?;
    }
    Ok(())
}

fn consumer_timeout(ctx: &Ctx, queue: &Queue) -> u64 {
    queue
        .settings()
        .consumer_timeout_ms
        .unwrap_or(ctx.config.consumer_timeout_ms)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn stop_consumer(entry: ConsumerEntry) {
    entry.stop.notify_one();
    if let Some(task) = entry.task {
        if tokio::time::timeout(CONSUMER_STOP_TIMEOUT, task)
            .await
            .is_err()
        {
            debug!("a consumer task did not stop in time");
        }
    }
    entry.queue.remove_consumer(&entry.consumer);
}

struct ConsumerTask {
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    channel: u16,
    queue: Arc<Queue>,
    consumer: Arc<Consumer>,
    tag: Arc<str>,
    no_ack: bool,
    /// Credit reserved (and granted to the queue) at `basic.consume`.
    held: u32,
    /// The channel-wide limit, which the queue takes from as it hands messages out.
    limit: Arc<SharedLimit>,
    stop: Arc<Notify>,
    timeout_ms: u64,
}

impl ConsumerTask {
    /// Gives back the credit reserved and never used as a delivery.
    fn release(&self, held: u32) {
        let mut state = self.shared.state.lock();
        for _ in 0..held {
            state.book.release(&self.tag);
        }
    }
}

/// Delivers one consumer's messages until stopped. An acknowledging consumer keeps its
/// queue granted as much credit as its prefetch limit allows (up to [`CONSUMER_WINDOW`]),
/// topped up as acks free it, so the queue hands it messages while this task is busy
/// writing the previous ones. Under a channel-wide limit, room freed anywhere on the
/// channel makes it ask its queue to look again.
async fn consumer_task(t: ConsumerTask) {
    // Reserved in the book and granted to the queue, not yet taken as a delivery.
    let mut held = t.held;
    let mut woken = false;
    loop {
        // Credit and room are watched only by an acknowledging consumer (enabling takes a
        // lock, once per delivery). Room wakes only while a channel-wide limit is set, or
        // when one is set.
        let freed = t.shared.credit.notified();
        tokio::pin!(freed);
        let room = t.limit.freed();
        tokio::pin!(room);
        if !t.no_ack {
            freed.as_mut().enable();
            room.as_mut().enable();
            let added = t
                .shared
                .state
                .lock()
                .book
                .top_up(&t.tag, held, CONSUMER_WINDOW);
            held += added;
            if added > 0 || std::mem::take(&mut woken) {
                t.queue.grant(&t.consumer, added);
            }
        }
        let next = tokio::select! {
            biased;
            () = t.stop.notified() => {
                t.release(held);
                return;
            }
            // Credit or room freed: top up, look again (taking a delivery is cancel-safe).
            () = freed, if !t.no_ack && held < CONSUMER_WINDOW => continue,
            () = room, if !t.no_ack => {
                woken = true;
                continue;
            }
            next = t.queue.next_delivery(&t.consumer), if t.no_ack || held > 0 => next,
        };
        if !t.no_ack && next.is_ok() {
            held -= 1;
        }
        let delivery = match next {
            Ok(delivery) => delivery,
            Err(ConsumerEnd::QueueDeleted) => {
                t.release(held);
                let had = {
                    let mut state = t.shared.state.lock();
                    state.book.remove_consumer(&t.tag);
                    state.consumers.remove(&t.tag).is_some()
                };
                if had && t.ctx.consumer_cancel_notify {
                    let _ = t
                        .ctx
                        .send_method(
                            t.channel,
                            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                                consumer_tag: short(&t.tag),
                                nowait: true,
                            })),
                        )
                        .await;
                }
                return;
            }
            Err(ConsumerEnd::Shutdown) => return,
        };
        let tag = t.shared.delivery_tag(
            &t.queue,
            &delivery,
            Some(t.tag.clone()),
            t.no_ack,
            t.timeout_ms,
        );
        let method = deliver_method(&t.tag, tag, delivery.redelivered, &delivery.message);
        if t.ctx
            .send_content(t.channel, method, &delivery.message)
            .await
            .is_err()
            || t.ctx.out.is_closed()
        {
            return;
        }
    }
}

/// Awaits confirms in sequence order and sends them, coalesced.
async fn confirm_task(ctx: Arc<Ctx>, channel: u16, mut queue: mpsc::Receiver<(u64, Pending)>) {
    let mut batch = Vec::with_capacity(CONFIRM_BATCH);
    let mut outcomes = Vec::with_capacity(CONFIRM_BATCH);
    while queue.recv_many(&mut batch, CONFIRM_BATCH).await > 0 {
        for (seq, confirm) in batch.drain(..) {
            let ack = confirm.wait().await.unwrap_or_else(|error| {
                debug!(%error, "publish failed; nacking it");
                false
            });
            outcomes.push((seq, ack));
        }
        for (tag, multiple, ack) in coalesce_confirms(&outcomes) {
            let method = if ack {
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple,
                }))
            } else {
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: tag,
                    multiple,
                    requeue: false,
                }))
            };
            if ctx.send_method(channel, method).await.is_err() || ctx.out.is_closed() {
                return;
            }
        }
        outcomes.clear();
    }
}
