//! One client connection: protocol header, handshake (start / start-ok with PLAIN or
//! AMQPLAIN, tune / tune-ok, open), then the frame loop dispatching to channels, with
//! heartbeats, the consumer acknowledgement timeout, and closes in both directions.
//!
//! One task reads (this module); one task writes ([`crate::writer`]); each consumer and
//! each confirm-mode channel has a task of its own ([`crate::channel`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable as WireTable, LongString};
use bytes::Bytes;
use ferry_core::alarm::Alarms;
use ferry_core::auth::AuthedUser;
use ferry_core::mq::{ConnectionId, MqError};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::channel::{Channel, Ctx};
use crate::codec::{
    decode_content_header, decode_method, method_frame, method_ids, DecodeError, FrameError,
    FrameReader, RawFrame, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    PROTOCOL_HEADER,
};
use crate::convert::short;
use crate::error::*;
use crate::writer::{self, Out, WriterSettings, OUT_QUEUE_FRAMES};
use crate::Shared;

/// Time a client has for the whole handshake (RabbitMQ: 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the broker waits for `connection.close-ok` after sending `connection.close`.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// Time the writer gets to send what is queued when the connection ends.
const WRITER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often heartbeats and acknowledgement timeouts are checked.
const TICK: Duration = Duration::from_millis(500);
/// Smallest frame_max a client may ask for (the spec's frame-min-size as RabbitMQ uses it).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// Bytes of a bad frame quoted in an error text.
const ERROR_TEXT_BYTES: usize = 64;
/// Mechanisms offered in `connection.start`.
const MECHANISMS: &str = "PLAIN AMQPLAIN";
/// Text of `connection.close` at shutdown (RabbitMQ's).
const SHUTDOWN_TEXT: &str = "broker forced connection closure with reason 'shutdown'";

/// How a connection ends.
#[derive(Debug)]
enum End {
    /// The socket closed or failed, or the client closed cleanly: nothing more to send.
    Gone,
    /// Close the connection with this error (connection.close, wait for close-ok).
    Close(AmqpError),
    /// Drop the socket without a word (RabbitMQ does this on some handshake failures).
    Drop(String),
}

impl From<FrameError> for End {
    fn from(error: FrameError) -> End {
        match error {
            FrameError::Closed | FrameError::Io(_) => End::Gone,
            FrameError::TooLarge { size, frame_max } => End::Close(AmqpError::connection(
                FRAME_ERROR,
                format!("frame size {size} exceeds frame_max {frame_max}"),
            )),
            FrameError::BadEnd(octet) => End::Close(AmqpError::connection(
                FRAME_ERROR,
                format!("invalid frame end marker {octet:#04x}"),
            )),
            FrameError::BadType(kind) => End::Close(AmqpError::connection(
                FRAME_ERROR,
                format!("unknown frame type {kind}"),
            )),
        }
    }
}

fn decode_error(error: DecodeError, payload: &[u8]) -> AmqpError {
    let (class_id, method_id) = method_ids(payload).unwrap_or((0, 0));
    match error {
        DecodeError::UnknownMethod { .. } => AmqpError::connection(
            COMMAND_INVALID,
            format!("unknown method {class_id}.{method_id}"),
        ),
        DecodeError::TooDeep => AmqpError::connection(SYNTAX_ERROR, error).on(class_id, method_id),
        // RabbitMQ's text renders the undecodable arguments as an Erlang binary.
        DecodeError::Malformed(_) => AmqpError::connection(
            FRAME_ERROR,
            format!(
                "cannot decode {}",
                erlang_binary(payload.get(4..).unwrap_or_default())
            ),
        )
        .on(class_id, method_id),
    }
}

/// Bytes as Erlang prints a binary (`<<0,1,2>>`), as RabbitMQ's error texts show them.
fn erlang_binary(bytes: &[u8]) -> String {
    // Only the start fits in a reply text (a short string) anyway.
    let items: Vec<String> = bytes
        .iter()
        .take(ERROR_TEXT_BYTES)
        .map(u8::to_string)
        .collect();
    format!("<<{}>>", items.join(","))
}

/// Serves one accepted socket until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    let header = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_exact_bytes(8)).await {
        Ok(Ok(header)) => header,
        _ => return,
    };
    if header.as_ref() != PROTOCOL_HEADER {
        // Tell the client which protocol we speak, then close (as RabbitMQ does).
        let _ = write.write_all(PROTOCOL_HEADER).await;
        let _ = write.shutdown().await;
        debug!(%peer, "AMQP connection with an unsupported protocol header");
        return;
    }
    let settings = Arc::new(WriterSettings {
        frame_max: AtomicU32::new(shared.config.frame_max),
        heartbeat_s: AtomicU32::new(0),
    });
    let (out, queue) = mpsc::channel(OUT_QUEUE_FRAMES);
    let mut writer_task = tokio::spawn(writer::run(write, queue, settings.clone()));
    let id = ConnectionId::next();

    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&mut reader, &out, &shared, peer, &settings),
    )
    .await;
    let end = match handshake {
        Ok(Ok(open)) => {
            let ctx = Arc::new(Ctx {
                broker: shared.broker.clone(),
                vhost: open.vhost,
                vhost_name: open.vhost_name,
                user: open.user,
                conn: id,
                out: out.clone(),
                config: shared.config.clone(),
                consumer_cancel_notify: open.consumer_cancel_notify,
                replies: shared.replies.clone(),
            });
            let mut conn = Connection {
                ctx,
                shared: shared.clone(),
                channels: HashMap::new(),
                frame_max: open.frame_max,
                channel_max: open.channel_max,
                heartbeat: open.heartbeat,
                last_read: Instant::now(),
                published: false,
                blocked: false,
                blocked_capability: open.blocked_capability,
            };
            let end = conn.run(&mut reader, &mut writer_task).await;
            let end = conn.finish(end, &mut reader).await;
            for channel in conn.channels.values_mut() {
                channel.shutdown(&conn.ctx).await;
            }
            shared.broker.vhosts().connection_closed(id);
            end
        }
        Ok(Err(end)) => finish_handshake(end, &out, &mut reader).await,
        Err(_) => End::Drop("handshake timed out".to_owned()),
    };
    match &end {
        End::Drop(reason) => debug!(%peer, %reason, "AMQP connection dropped"),
        End::Close(error) => debug!(%peer, %error, "AMQP connection closed"),
        End::Gone => debug!(%peer, "AMQP connection closed"),
    }
    let _ = out.try_send(Out::Finish);
    drop(out);
    if tokio::time::timeout(WRITER_DRAIN_TIMEOUT, &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
}

/// A connection error during the handshake: send connection.close and wait briefly.
async fn finish_handshake<R: AsyncRead + Unpin>(
    end: End,
    out: &mpsc::Sender<Out>,
    reader: &mut FrameReader<R>,
) -> End {
    if let End::Close(error) = &end {
        send_close(out, error).await;
        await_close_ok(reader, 0).await;
    }
    end
}

async fn send_close(out: &mpsc::Sender<Out>, error: &AmqpError) {
    let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: error.code,
        reply_text: short(&error.text),
        class_id: error.class_id,
        method_id: error.method_id,
    }));
    if let Ok(frame) = method_frame(0, close) {
        let _ = out.send(Out::Frames(frame)).await;
    }
}

/// Reads (and drops) frames until `connection.close-ok` or `connection.close`, bounded.
async fn await_close_ok<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>, frame_max: u32) {
    let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, async {
        loop {
            let Ok(frame) = reader.next(frame_max).await else {
                return;
            };
            if frame.kind == FRAME_METHOD && frame.channel == 0 {
                if let Some((10, 51 | 50)) = method_ids(&frame.payload) {
                    return;
                }
            }
        }
    })
    .await;
}

/// What the handshake settled.
struct Opened {
    user: AuthedUser,
    vhost: Arc<ferry_core::routing::VHost>,
    vhost_name: String,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    consumer_cancel_notify: bool,
    blocked_capability: bool,
}

/// The next method on channel 0 during the handshake (heartbeats skipped).
async fn handshake_method<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    frame_max: u32,
) -> Result<connection::AMQPMethod, End> {
    loop {
        let frame = reader.next(frame_max).await?;
        match frame.kind {
            FRAME_HEARTBEAT => continue,
            FRAME_METHOD if frame.channel == 0 => {
                match decode_method(&frame.payload)
                    .map_err(|e| End::Close(decode_error(e, &frame.payload)))?
                {
                    AMQPClass::Connection(method) => return Ok(method),
                    other => {
                        return Err(End::Close(
                            AmqpError::connection(COMMAND_INVALID, "expected a connection method")
                                .on(other.get_amqp_class_id(), other.get_amqp_method_id()),
                        ))
                    }
                }
            }
            _ => {
                return Err(End::Close(AmqpError::connection(
                    UNEXPECTED_FRAME,
                    "expected a connection method frame on channel 0",
                )))
            }
        }
    }
}

async fn handshake<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    out: &mpsc::Sender<Out>,
    shared: &Shared,
    peer: SocketAddr,
    settings: &WriterSettings,
) -> Result<Opened, End> {
    let config = &shared.config;
    send(
        out,
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(start())),
    )
    .await;
    let start_ok = match handshake_method(reader, config.frame_max).await? {
        connection::AMQPMethod::StartOk(s) => s,
        _ => {
            return Err(End::Close(AmqpError::connection(
                COMMAND_INVALID,
                "expected 'connection.start_ok'",
            )))
        }
    };
    let mechanism = start_ok.mechanism.as_str().to_owned();
    let credentials = match mechanism.as_str() {
        "PLAIN" => plain(start_ok.response.as_bytes()),
        "AMQPLAIN" => amqplain(start_ok.response.as_bytes()),
        // RabbitMQ logs the unknown mechanism and drops the socket without a close.
        other => {
            return Err(End::Drop(format!(
                "unknown authentication mechanism '{other}'"
            )))
        }
    };
    let refused = || {
        End::Close(AmqpError::connection(
            ACCESS_REFUSED,
            format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            ),
        ))
    };
    let Some((user, password)) = credentials else {
        return Err(refused());
    };
    let user = match shared
        .broker
        .auth()
        .authenticate(&user, &password, peer.ip())
    {
        Ok(user) => user,
        Err(MqError::AccessRefused(reason)) => {
            warn!(%peer, %reason, "AMQP login refused");
            return Err(refused());
        }
        Err(other) => return Err(End::Close(AmqpError::from(other))),
    };
    let caps = start_ok.client_properties.inner().get("capabilities");
    let capability = |name: &str| {
        matches!(
            caps,
            Some(AMQPValue::FieldTable(t))
                if matches!(t.inner().get(name), Some(AMQPValue::Boolean(true)))
        )
    };
    let consumer_cancel_notify = capability("consumer_cancel_notify");
    let blocked_capability = capability("connection.blocked");

    send(
        out,
        0,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat_s,
        })),
    )
    .await;
    let tune_ok = match handshake_method(reader, config.frame_max).await? {
        connection::AMQPMethod::TuneOk(t) => t,
        _ => {
            return Err(End::Close(AmqpError::connection(
                COMMAND_INVALID,
                "expected 'connection.tune_ok'",
            )))
        }
    };
    let frame_max = if tune_ok.frame_max == 0 {
        config.frame_max
    } else {
        tune_ok.frame_max
    };
    if frame_max < FRAME_MIN_SIZE {
        return Err(End::Close(AmqpError::connection(
            NOT_ALLOWED,
            format!("frame_max={frame_max} < {FRAME_MIN_SIZE} min size"),
        )));
    }
    if frame_max > config.frame_max {
        return Err(End::Close(AmqpError::connection(
            NOT_ALLOWED,
            format!("frame_max={frame_max} > {} max size", config.frame_max),
        )));
    }
    let channel_max = match tune_ok.channel_max {
        0 => config.channel_max,
        n if n > config.channel_max => {
            return Err(End::Close(AmqpError::connection(
                NOT_ALLOWED,
                format!("channel_max={n} > {} max size", config.channel_max),
            )))
        }
        n => n,
    };
    let heartbeat = tune_ok.heartbeat;
    settings.frame_max.store(frame_max, Ordering::Relaxed);
    settings
        .heartbeat_s
        .store(u32::from(heartbeat), Ordering::Relaxed);

    let open = match handshake_method(reader, frame_max).await? {
        connection::AMQPMethod::Open(o) => o,
        _ => {
            return Err(End::Close(AmqpError::connection(
                COMMAND_INVALID,
                "expected 'connection.open'",
            )))
        }
    };
    let vhost_name = open.virtual_host.as_str().to_owned();
    let vhost = shared
        .broker
        .vhosts()
        .get(&vhost_name)
        .map_err(|e| End::Close(vhost_error(e).on(10, 40)))?;
    shared
        .broker
        .auth()
        .check_vhost(&user, &vhost_name)
        .map_err(|e| End::Close(vhost_error(e).on(10, 40)))?;
    send(
        out,
        0,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    )
    .await;
    Ok(Opened {
        user,
        vhost,
        vhost_name,
        frame_max,
        channel_max,
        heartbeat,
        consumer_cancel_notify,
        blocked_capability,
    })
}

/// Errors of `connection.open` are connection errors whatever their class.
fn vhost_error(error: MqError) -> AmqpError {
    let mut error = AmqpError::from(error);
    error.scope = Scope::Connection;
    error
}

/// `connection.start`: version, server properties with capabilities, mechanisms, locales.
fn start() -> connection::Start {
    let mut caps = WireTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(short(cap), AMQPValue::Boolean(true));
    }
    let mut props = WireTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    props.insert(short("product"), text("Ferry"));
    props.insert(short("version"), text(env!("CARGO_PKG_VERSION")));
    props.insert(short("platform"), text("Rust"));
    props.insert(short("information"), text("https://github.com/ferry"));
    props.insert(short("cluster_name"), text("ferry"));
    props.insert(short("capabilities"), AMQPValue::FieldTable(caps));
    connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: props,
        mechanisms: LongString::from(MECHANISMS.as_bytes().to_vec()),
        locales: LongString::from(b"en_US".to_vec()),
    }
}

/// PLAIN: `authzid \0 authcid \0 password`.
fn plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((user.to_owned(), password.to_owned()))
}

/// AMQPLAIN: a field table without its length prefix, with `LOGIN` and `PASSWORD`.
fn amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut table = Vec::with_capacity(response.len() + 4);
    table.extend_from_slice(&u32::try_from(response.len()).ok()?.to_be_bytes());
    table.extend_from_slice(response);
    crate::codec::check_nesting(&table).ok()?;
    let (_, parsed) = amq_protocol::types::parsing::parse_field_table(table.as_slice()).ok()?;
    let text = |key: &str| match parsed.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

async fn send(out: &mpsc::Sender<Out>, channel: u16, method: AMQPClass) {
    if let Ok(frame) = method_frame(channel, method) {
        let _ = out.send(Out::Frames(frame)).await;
    }
}

/// Resolves once the listener shuts down.
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// An open connection's state (owned by its reader task).
struct Connection {
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    channels: HashMap<u16, Channel>,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    last_read: Instant,
    /// The client has published (only publishers are blocked by alarms).
    published: bool,
    /// Reading is paused by a resource alarm.
    blocked: bool,
    /// The client understands `connection.blocked`.
    blocked_capability: bool,
}

impl Connection {
    /// The frame loop, until the connection must end.
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        writer: &mut tokio::task::JoinHandle<std::io::Result<()>>,
    ) -> End {
        let mut shutdown = self.shared.shutdown.clone();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut alarms = self.ctx.broker.alarms();
        let mut alarms_live = true;
        loop {
            // A resource alarm pauses reading from connections that publish (RabbitMQ's
            // flow control): their publishes wait in the socket buffers, not in memory.
            let alarm = *alarms.borrow_and_update();
            let paused = alarm.any() && self.published;
            if paused != self.blocked {
                self.blocked = paused;
                self.notify_blocked(alarm).await;
            }
            let frame = tokio::select! {
                biased;
                () = stopped(&mut shutdown) => {
                    return End::Close(AmqpError::connection(CONNECTION_FORCED, SHUTDOWN_TEXT));
                }
                _ = &mut *writer => return End::Drop("the writer stopped".to_owned()),
                changed = alarms.changed(), if alarms_live => {
                    alarms_live = changed.is_ok();
                    continue;
                }
                _ = tick.tick() => {
                    if let Some(end) = self.on_tick().await {
                        return end;
                    }
                    continue;
                }
                frame = reader.next(self.frame_max), if !paused => frame,
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => return error.into(),
            };
            self.last_read = Instant::now();
            if let Err(end) = self.frame(frame).await {
                return end;
            }
        }
    }

    /// `connection.blocked` / `unblocked` to clients that asked for them.
    async fn notify_blocked(&mut self, alarm: Alarms) {
        if !self.blocked_capability {
            return;
        }
        let method = match (self.blocked, alarm.blocked_reason()) {
            (true, Some(reason)) => connection::AMQPMethod::Blocked(connection::Blocked {
                reason: short(&reason),
            }),
            _ => connection::AMQPMethod::Unblocked(connection::Unblocked {}),
        };
        send(&self.ctx.out, 0, AMQPClass::Connection(method)).await;
    }

    /// Missed heartbeats and overdue acknowledgements.
    async fn on_tick(&mut self) -> Option<End> {
        let now = Instant::now();
        if self.blocked {
            // Not reading while blocked: the client's heartbeats wait in the socket.
            self.last_read = now;
        }
        if self.heartbeat > 0
            && now.duration_since(self.last_read)
                > Duration::from_secs(2 * u64::from(self.heartbeat))
        {
            return Some(End::Drop(format!(
                "missed heartbeats from client, timeout: {}s",
                self.heartbeat
            )));
        }
        let overdue: Vec<(u16, u64)> = self
            .channels
            .iter()
            .filter(|(_, c)| !c.closing)
            .filter_map(|(id, c)| c.overdue(now).map(|t| (*id, t)))
            .collect();
        for (id, timeout_ms) in overdue {
            let error = AmqpError::channel(
                PRECONDITION_FAILED,
                format!(
                    "delivery acknowledgement on channel {id} timed out. Timeout value used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
                ),
            );
            self.close_channel(id, error).await;
        }
        None
    }

    /// One frame.
    async fn frame(&mut self, frame: RawFrame) -> Result<(), End> {
        let RawFrame {
            kind,
            channel,
            payload,
        } = frame;
        match kind {
            FRAME_HEARTBEAT => {
                if channel != 0 {
                    return Err(End::Close(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        format!(
                            "type {FRAME_HEARTBEAT}, all octets = {}",
                            erlang_binary(&payload)
                        ),
                    )));
                }
                Ok(())
            }
            FRAME_METHOD => {
                let method =
                    decode_method(&payload).map_err(|e| End::Close(decode_error(e, &payload)))?;
                if let AMQPClass::Basic(basic::AMQPMethod::Publish(_)) = method {
                    self.published = true;
                }
                // `amq-protocol` drops basic.qos's prefetch_size; RabbitMQ refuses non-zero.
                if let (Some((60, 10)), Some(size)) = (method_ids(&payload), payload.get(4..8)) {
                    let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
                    if size != 0 {
                        return Err(End::Close(
                            AmqpError::connection(
                                NOT_IMPLEMENTED,
                                format!("prefetch_size!=0 ({size})"),
                            )
                            .on(60, 10),
                        ));
                    }
                }
                if channel == 0 {
                    return self.connection_method(method).await;
                }
                self.channel_method(channel, method).await
            }
            FRAME_HEADER | FRAME_BODY => self.content(kind, channel, payload).await,
            other => Err(End::Close(AmqpError::connection(
                FRAME_ERROR,
                format!("unknown frame type {other}"),
            ))),
        }
    }

    async fn connection_method(&mut self, method: AMQPClass) -> Result<(), End> {
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                send(
                    &self.ctx.out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                )
                .await;
                Err(End::Gone)
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Err(End::Gone),
            // Nothing to do: Ferry has no secrets that expire.
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                send(
                    &self.ctx.out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                )
                .await;
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::Blocked(_))
            | AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => Ok(()),
            other => Err(End::Close(
                AmqpError::connection(
                    CHANNEL_ERROR,
                    "unexpected method in connection state running",
                )
                .on(other.get_amqp_class_id(), other.get_amqp_method_id()),
            )),
        }
    }

    async fn channel_method(&mut self, id: u16, method: AMQPClass) -> Result<(), End> {
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        let Some(channel) = self.channels.get_mut(&id) else {
            if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = method {
                return self.open_channel(id).await;
            }
            return Err(End::Close(
                AmqpError::connection(CHANNEL_ERROR, "expected 'channel.open'")
                    .on(class_id, method_id),
            ));
        };
        if channel.closing {
            // After our channel.close, only its close-ok (or a crossing close) counts.
            match method {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                    self.channels.remove(&id);
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    send(
                        &self.ctx.out,
                        id,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    )
                    .await;
                }
                _ => {}
            }
            return Ok(());
        }
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => Err(End::Close(
                AmqpError::connection(CHANNEL_ERROR, "second 'channel.open' seen")
                    .on(class_id, method_id),
            )),
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                if let Some(mut channel) = self.channels.remove(&id) {
                    channel.shutdown(&self.ctx).await;
                }
                send(
                    &self.ctx.out,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                )
                .await;
                Ok(())
            }
            // A close-ok for a close we never sent: nothing to do.
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Ok(()),
            method => {
                let result = channel.method(&self.ctx, method).await;
                self.outcome(id, result).await
            }
        }
    }

    async fn content(&mut self, kind: u8, id: u16, payload: Bytes) -> Result<(), End> {
        let Some(channel) = self.channels.get_mut(&id) else {
            return Err(End::Close(AmqpError::connection(
                CHANNEL_ERROR,
                "expected 'channel.open'",
            )));
        };
        if channel.closing {
            return Ok(());
        }
        let result = if kind == FRAME_HEADER {
            match decode_content_header(&payload) {
                Ok(header) => channel.content_header(&self.ctx, header).await,
                Err(e) => Err(AmqpError::connection(SYNTAX_ERROR, e)),
            }
        } else {
            channel.content_body(&self.ctx, payload).await
        };
        self.outcome(id, result).await
    }

    /// A method's result: channel errors close the channel, connection errors end it.
    async fn outcome(&mut self, id: u16, result: AmqpResult<()>) -> Result<(), End> {
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.scope == Scope::Channel => {
                self.close_channel(id, error).await;
                Ok(())
            }
            Err(error) => Err(End::Close(error)),
        }
    }

    async fn open_channel(&mut self, id: u16) -> Result<(), End> {
        let open = self.channels.len();
        if open >= usize::from(self.channel_max) || id > self.channel_max {
            return Err(End::Close(
                AmqpError::connection(
                    NOT_ALLOWED,
                    format!(
                        "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                        self.channel_max
                    ),
                )
                .on(20, 10),
            ));
        }
        self.channels.insert(id, Channel::new(id));
        send(
            &self.ctx.out,
            id,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        )
        .await;
        Ok(())
    }

    /// Sends `channel.close` and releases the channel's work; the number stays taken
    /// until the client's `close-ok`.
    async fn close_channel(&mut self, id: u16, error: AmqpError) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        debug!(channel = id, %error, "closing AMQP channel");
        channel.closing = true;
        channel.shutdown(&self.ctx).await;
        send(
            &self.ctx.out,
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: error.code,
                reply_text: short(&error.text),
                class_id: error.class_id,
                method_id: error.method_id,
            })),
        )
        .await;
    }

    /// Ends the connection as `end` says: a server-side close waits for close-ok.
    async fn finish<R: AsyncRead + Unpin>(&mut self, end: End, reader: &mut FrameReader<R>) -> End {
        if let End::Close(error) = &end {
            // Consumers stop first so that no delivery follows connection.close.
            for channel in self.channels.values_mut() {
                channel.shutdown(&self.ctx).await;
            }
            send_close(&self.ctx.out, error).await;
            await_close_ok(reader, self.frame_max).await;
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_responses() {
        assert_eq!(
            plain(b"\0guest\0secret"),
            Some(("guest".to_owned(), "secret".to_owned()))
        );
        assert_eq!(plain(b"guest"), None);
        assert_eq!(plain(b"\0a\0b\0c"), None);
        // AMQPLAIN: LOGIN and PASSWORD as long strings, without the table's length.
        let mut response = Vec::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "pw")] {
            response.push(k.len() as u8);
            response.extend_from_slice(k.as_bytes());
            response.push(b'S');
            response.extend_from_slice(&(v.len() as u32).to_be_bytes());
            response.extend_from_slice(v.as_bytes());
        }
        assert_eq!(
            amqplain(&response),
            Some(("guest".to_owned(), "pw".to_owned()))
        );
        assert_eq!(amqplain(b"\x05LOGIN"), None);
    }

    #[test]
    fn start_advertises_capabilities() {
        let start = start();
        let caps = match start.server_properties.inner().get("capabilities") {
            Some(AMQPValue::FieldTable(t)) => t.clone(),
            other => panic!("no capabilities: {other:?}"),
        };
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "per_consumer_qos",
        ] {
            assert_eq!(
                caps.inner().get(cap),
                Some(&AMQPValue::Boolean(true)),
                "{cap}"
            );
        }
        assert_eq!(start.mechanisms.as_bytes(), b"PLAIN AMQPLAIN");
        assert!(start.server_properties.contains_key("product"));
    }
}
