//! Queue settings: declare flags and `x-…` arguments, validated with RabbitMQ 3.10's rules
//! and error texts (`rabbit_amqqueue:declare_args/0`, checked in that order, then the
//! queue type's own checks).

use crate::message::{FieldTable, FieldValue};
use crate::mq::{ConnectionId, MqError, MqResult};

/// Highest `x-max-priority` RabbitMQ accepts.
pub const MAX_PRIORITY: i64 = 255;
/// Largest `x-message-ttl` / `x-expires` (RabbitMQ's `MAX_EXPIRY_TIMER`, 2^32 - 1 ms).
pub const MAX_EXPIRY_MS: i64 = 4_294_967_295;

/// Queue type, from `x-queue-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// The default: a log with an ack-tracking cursor.
    Classic,
    /// Accepted for compatibility; same engine as classic (single node), durable only.
    Quorum,
    /// A replayable log; consumers choose where to start.
    Stream,
}

impl QueueType {
    /// The `x-queue-type` name.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }
}

/// What happens when a publish would exceed `x-max-length` / `x-max-length-bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (dead-letter, reason `maxlen`) the oldest ready messages. The default.
    DropHead,
    /// Refuse the new message (publisher confirm nack).
    RejectPublish,
    /// Refuse the new message and dead-letter it (reason `maxlen`).
    RejectPublishDlx,
}

/// A queue's settings, parsed and validated from its declare arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSettings {
    /// Queue type.
    pub queue_type: QueueType,
    /// Survives a restart.
    pub durable: bool,
    /// Owned by one connection; deleted when it closes.
    pub exclusive: Option<ConnectionId>,
    /// Deleted once its last consumer is cancelled (after having had one).
    pub auto_delete: bool,
    /// `x-message-ttl`, milliseconds.
    pub message_ttl_ms: Option<u64>,
    /// `x-expires`: deleted after this long unused, milliseconds.
    pub expires_ms: Option<u64>,
    /// `x-max-length`: ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: ready message body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority` (1–255).
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-consumer-timeout`, milliseconds (else the broker default).
    pub consumer_timeout_ms: Option<u64>,
    /// The declare arguments as given, for equivalence checks and listing.
    pub arguments: FieldTable,
}

/// RabbitMQ's name of a field value's type, as it appears in its error texts.
pub fn type_name(value: &FieldValue) -> &'static str {
    match value {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal { .. } => "decimal",
        FieldValue::ShortString(_) => "shortstr",
        FieldValue::LongString(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::ByteArray(_) => "binary",
        FieldValue::Void => "void",
    }
}

/// The text of a string-typed value.
fn str_of(value: &FieldValue) -> Option<String> {
    match value {
        FieldValue::LongString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        FieldValue::ShortString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Why an argument is invalid, rendered as RabbitMQ prints the Erlang term (`~p`).
type ArgError = String;

fn unacceptable(value: &FieldValue) -> ArgError {
    format!("{{unacceptable_type,{}}}", type_name(value))
}

fn int_arg(value: &FieldValue) -> Result<i64, ArgError> {
    // RabbitMQ 3.10 formats this one as a string (`~p` of "expected integer, got T").
    value
        .as_integer()
        .ok_or_else(|| format!("\"expected integer, got {}\"", type_name(value)))
}

fn non_neg_int(value: &FieldValue) -> Result<u64, ArgError> {
    let v = int_arg(value)?;
    u64::try_from(v).map_err(|_| format!("{{value_negative,{v}}}"))
}

/// RabbitMQ's `rabbit_misc:check_expiry/1`.
fn expiry(v: i64) -> Result<u64, ArgError> {
    if v < 0 {
        return Err(format!("{{value_negative,{v}}}"));
    }
    if v > MAX_EXPIRY_MS {
        return Err(format!("{{value_too_large,{v}}}"));
    }
    Ok(v as u64)
}

fn string_arg(value: &FieldValue) -> Result<String, ArgError> {
    str_of(value).ok_or_else(|| unacceptable(value))
}

fn bool_arg(value: &FieldValue) -> Result<bool, ArgError> {
    match value {
        FieldValue::Bool(b) => Ok(*b),
        other => Err(unacceptable(other)),
    }
}

/// A stream's `x-max-age` (`<n><unit>`, unit one of `Y M D h m s`) in milliseconds.
pub fn max_age_ms(text: &str) -> Option<i64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(unit_at);
    let n: i64 = digits.parse().ok()?;
    n.checked_mul(time_unit_ms(unit)?).filter(|ms| *ms > 0)
}

/// Milliseconds in one of RabbitMQ's stream time units (`x-max-age`, `x-stream-offset`):
/// `Y` (365 days), `M` (30 days), `D`, `h`, `m`, `s`.
pub fn time_unit_ms(unit: &str) -> Option<i64> {
    Some(match unit {
        "Y" => 365 * 24 * 3_600_000,
        "M" => 30 * 24 * 3_600_000,
        "D" => 24 * 3_600_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return None,
    })
}

/// `queue 'q' in vhost '/'`, RabbitMQ's `rabbit_misc:rs/1` of a queue.
pub fn queue_resource(vhost: &str, queue: &str) -> String {
    format!("queue '{queue}' in vhost '{vhost}'")
}

impl QueueSettings {
    /// Parses and validates declare flags and arguments (`x-message-ttl`, `x-expires`,
    /// `x-max-length`, …) with RabbitMQ's error texts for invalid values (PRECONDITION_FAILED
    /// `invalid arg 'x-max-length' for queue 'q' in vhost '/': …`).
    pub fn parse(
        vhost: &str,
        queue: &str,
        durable: bool,
        exclusive: Option<ConnectionId>,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> MqResult<QueueSettings> {
        let rs = queue_resource(vhost, queue);
        let mut settings = QueueSettings {
            queue_type: QueueType::Classic,
            durable,
            exclusive,
            auto_delete,
            message_ttl_ms: None,
            expires_ms: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            max_priority: None,
            single_active_consumer: false,
            consumer_timeout_ms: None,
            arguments: FieldTable::new(),
        };
        let invalid = |key: &str, why: ArgError| {
            MqError::PreconditionFailed(format!("invalid arg '{key}' for {rs}: {why}"))
        };
        // RabbitMQ checks its validators in this fixed order, whatever the argument order.
        for key in [
            "x-expires",
            "x-message-ttl",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-in-memory-length",
            "x-max-in-memory-bytes",
            "x-max-priority",
            "x-overflow",
            "x-queue-mode",
            "x-single-active-consumer",
            "x-queue-type",
            "x-max-age",
            "x-stream-max-segment-size-bytes",
        ] {
            let Some(value) = arguments.get(key) else {
                continue;
            };
            let checked: Result<(), ArgError> = (|| {
                match key {
                    "x-expires" => {
                        let v = int_arg(value)?;
                        if v == 0 {
                            return Err("{value_zero,0}".to_string());
                        }
                        settings.expires_ms = Some(expiry(v)?);
                    }
                    "x-message-ttl" => settings.message_ttl_ms = Some(expiry(int_arg(value)?)?),
                    "x-dead-letter-exchange" => {
                        settings.dead_letter_exchange = Some(string_arg(value)?)
                    }
                    "x-dead-letter-routing-key" => {
                        let rk = string_arg(value)?;
                        if !arguments.contains_key("x-dead-letter-exchange") {
                            return Err("routing_key_but_no_dlx_defined".to_string());
                        }
                        settings.dead_letter_routing_key = Some(rk);
                    }
                    "x-max-length" => settings.max_length = Some(non_neg_int(value)?),
                    "x-max-length-bytes" => settings.max_length_bytes = Some(non_neg_int(value)?),
                    "x-max-in-memory-length" | "x-max-in-memory-bytes" => {
                        non_neg_int(value)?;
                    }
                    "x-max-priority" => {
                        let v = non_neg_int(value)?;
                        if v > MAX_PRIORITY as u64 {
                            return Err(format!("{{max_value_exceeded,{v}}}"));
                        }
                        settings.max_priority = (v > 0).then_some(v as u8);
                    }
                    "x-overflow" => {
                        settings.overflow = match string_arg(value)?.as_str() {
                            "drop-head" => Overflow::DropHead,
                            "reject-publish" => Overflow::RejectPublish,
                            "reject-publish-dlx" => Overflow::RejectPublishDlx,
                            _ => return Err("invalid_overflow".to_string()),
                        }
                    }
                    "x-queue-mode" => match string_arg(value)?.as_str() {
                        "default" | "lazy" => {}
                        _ => return Err("invalid_queue_mode".to_string()),
                    },
                    "x-single-active-consumer" => {
                        settings.single_active_consumer = bool_arg(value)?
                    }
                    "x-queue-type" => {
                        settings.queue_type = match string_arg(value)?.as_str() {
                            "classic" => QueueType::Classic,
                            "quorum" => QueueType::Quorum,
                            "stream" => QueueType::Stream,
                            other => return Err(format!("\"unsupported queue type '{other}'\"")),
                        }
                    }
                    "x-max-age" => {
                        let text = string_arg(value)?;
                        max_age_ms(&text).ok_or_else(|| "invalid_max_age".to_string())?;
                    }
                    "x-stream-max-segment-size-bytes" => {
                        non_neg_int(value)?;
                    }
                    _ => {}
                }
                Ok(())
            })();
            checked.map_err(|why| invalid(key, why))?;
        }
        // Not validated by RabbitMQ 3.10 at declare; a usable value is honoured.
        settings.consumer_timeout_ms = arguments
            .get("x-consumer-timeout")
            .and_then(FieldValue::as_integer)
            .and_then(|v| u64::try_from(v).ok());
        if settings.queue_type != QueueType::Classic {
            check_replicated_type(&settings, &arguments, &rs)?;
        }
        settings.arguments = arguments;
        Ok(settings)
    }

    /// Whether messages leave the queue to a dead-letter exchange.
    pub fn dead_letters(&self) -> bool {
        self.dead_letter_exchange.is_some()
    }
}

/// Quorum and stream queues' own declare checks (`rabbit_quorum_queue:declare`,
/// `rabbit_stream_queue:declare`): unsupported arguments, then auto-delete, exclusive and
/// non-durable are refused.
fn check_replicated_type(
    settings: &QueueSettings,
    arguments: &FieldTable,
    rs: &str,
) -> MqResult<()> {
    let (unsupported, module): (&[&str], &str) = match settings.queue_type {
        QueueType::Quorum => (&["x-max-priority", "x-queue-mode"], "rabbit_quorum_queue"),
        QueueType::Stream => (
            &[
                "x-expires",
                "x-message-ttl",
                "x-max-priority",
                "x-queue-mode",
                "x-overflow",
                "x-max-in-memory-length",
                "x-max-in-memory-bytes",
                "x-quorum-initial-group-size",
                "x-cancel-on-ha-failover",
            ],
            "rabbit_stream_queue",
        ),
        QueueType::Classic => (&[], "rabbit_classic_queue"),
    };
    if let Some(key) = unsupported.iter().find(|k| arguments.contains_key(**k)) {
        return Err(MqError::PreconditionFailed(format!(
            "invalid arg '{key}' for {rs} of queue type {module}"
        )));
    }
    let property = if settings.auto_delete {
        Some("auto-delete")
    } else if settings.exclusive.is_some() {
        Some("exclusive-owner")
    } else if !settings.durable {
        Some("non-durable")
    } else {
        None
    };
    match property {
        Some(p) => Err(MqError::PreconditionFailed(format!(
            "invalid property '{p}' for {rs}"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{s, table};

    fn parse(args: &[(&str, FieldValue)]) -> MqResult<QueueSettings> {
        parse_with(true, None, false, args)
    }

    fn parse_with(
        durable: bool,
        exclusive: Option<ConnectionId>,
        auto_delete: bool,
        args: &[(&str, FieldValue)],
    ) -> MqResult<QueueSettings> {
        QueueSettings::parse("/", "q", durable, exclusive, auto_delete, table(args))
    }

    fn text(e: MqResult<QueueSettings>) -> String {
        match e {
            Err(MqError::PreconditionFailed(t)) => t,
            other => panic!("expected PRECONDITION_FAILED, got {other:?}"),
        }
    }

    #[test]
    fn valid_arguments_parse() {
        let q = parse(&[
            ("x-message-ttl", FieldValue::I32(1000)),
            ("x-expires", FieldValue::U16(5000)),
            ("x-max-length", FieldValue::I64(10)),
            ("x-max-length-bytes", FieldValue::I8(100)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("dlx")),
            ("x-dead-letter-routing-key", s("dead")),
            ("x-max-priority", FieldValue::U8(10)),
            ("x-single-active-consumer", FieldValue::Bool(true)),
            ("x-consumer-timeout", FieldValue::I64(60_000)),
        ])
        .expect("valid");
        assert_eq!(q.message_ttl_ms, Some(1000));
        assert_eq!(q.expires_ms, Some(5000));
        assert_eq!(q.max_length, Some(10));
        assert_eq!(q.max_length_bytes, Some(100));
        assert_eq!(q.overflow, Overflow::RejectPublishDlx);
        assert_eq!(q.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(q.dead_letter_routing_key.as_deref(), Some("dead"));
        assert_eq!(q.max_priority, Some(10));
        assert!(q.single_active_consumer);
        assert_eq!(q.consumer_timeout_ms, Some(60_000));
        assert_eq!(q.arguments.len(), 10);
        assert_eq!(q.queue_type, QueueType::Classic);
    }

    #[test]
    fn invalid_arguments_get_rabbitmq_texts() {
        let cases: Vec<(Vec<(&str, FieldValue)>, &str)> = vec![
            (
                vec![("x-max-length", FieldValue::I32(-1))],
                "invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}",
            ),
            (
                vec![("x-max-length", s("10"))],
                "invalid arg 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got longstr\"",
            ),
            (
                vec![("x-expires", FieldValue::I32(0))],
                "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}",
            ),
            (
                vec![("x-message-ttl", FieldValue::I64(4_294_967_296))],
                "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_too_large,4294967296}",
            ),
            (
                vec![("x-message-ttl", FieldValue::F64(1.5))],
                "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got double\"",
            ),
            (
                vec![("x-max-priority", FieldValue::I32(256))],
                "invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}",
            ),
            (
                vec![("x-overflow", s("drop-tail"))],
                "invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow",
            ),
            (
                vec![("x-dead-letter-routing-key", s("k"))],
                "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined",
            ),
            (
                vec![("x-single-active-consumer", FieldValue::I32(1))],
                "invalid arg 'x-single-active-consumer' for queue 'q' in vhost '/': {unacceptable_type,signedint}",
            ),
            (
                // Checked in RabbitMQ's order, not the argument order.
                vec![
                    ("x-max-length", FieldValue::I32(-1)),
                    ("x-expires", FieldValue::I32(-5)),
                ],
                "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_negative,-5}",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(text(parse(&args)), want);
        }
    }

    #[test]
    fn quorum_and_stream_rules() {
        let quorum = s("quorum");
        let stream = s("stream");
        assert_eq!(
            parse(&[("x-queue-type", quorum.clone())])
                .expect("ok")
                .queue_type,
            QueueType::Quorum
        );
        assert_eq!(
            text(parse_with(
                false,
                None,
                false,
                &[("x-queue-type", quorum.clone())]
            )),
            "invalid property 'non-durable' for queue 'q' in vhost '/'"
        );
        assert_eq!(
            text(parse_with(
                true,
                None,
                true,
                &[("x-queue-type", stream.clone())]
            )),
            "invalid property 'auto-delete' for queue 'q' in vhost '/'"
        );
        assert_eq!(
            text(parse_with(
                true,
                Some(ConnectionId(1)),
                false,
                &[("x-queue-type", stream.clone())]
            )),
            "invalid property 'exclusive-owner' for queue 'q' in vhost '/'"
        );
        assert_eq!(
            text(parse(&[
                ("x-queue-type", stream.clone()),
                ("x-message-ttl", FieldValue::I32(5))
            ])),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/' of queue type rabbit_stream_queue"
        );
        assert_eq!(
            text(parse(&[
                ("x-queue-type", s("quorum")),
                ("x-max-priority", FieldValue::I32(5))
            ])),
            "invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"
        );
        assert_eq!(max_age_ms("7D"), Some(7 * 24 * 3_600_000));
        assert_eq!(max_age_ms("10s"), Some(10_000));
        assert_eq!(max_age_ms("1x"), None);
        assert_eq!(
            text(parse(&[
                ("x-queue-type", stream.clone()),
                ("x-max-age", s("soon"))
            ])),
            "invalid arg 'x-max-age' for queue 'q' in vhost '/': invalid_max_age"
        );
        assert_eq!(
            text(parse(&[("x-queue-type", s("lazy"))])),
            "invalid arg 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue type 'lazy'\""
        );
    }
}
