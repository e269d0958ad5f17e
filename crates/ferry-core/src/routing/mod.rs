//! Virtual hosts, exchanges and bindings: how a published message finds its queues.
//!
//! A [`VHosts`] registry (one per broker) holds each [`VHost`]'s exchanges, queues and
//! bindings in memory; durable definitions are records in the internal log
//! `__ferry_definitions`, replayed at start. Routing: default (queue by name), direct,
//! fanout, topic (`*` one word, `#` zero or more) and headers (`x-match` all/any, and
//! RabbitMQ 3.10's `all-with-x`/`any-with-x`), exchange-to-exchange bindings (followed
//! without loops), alternate exchanges for unroutable messages, internal exchanges.
//! Declares are idempotent only when equivalent; otherwise PRECONDITION_FAILED with
//! RabbitMQ's text. The router is also each queue's [`DeadLetterSink`].

mod args;
mod binding;
mod dead_letter;
mod definitions;
mod headers;
#[cfg(test)]
mod tests;
mod topic;
mod vhost;
mod vhosts;

use std::sync::Arc;

use crate::message::FieldTable;
use crate::mq::{MqError, MqResult};
use crate::queue::Queue;

pub use vhost::VHost;
pub use vhosts::VHosts;

/// The default vhost, created at first start.
pub const DEFAULT_VHOST: &str = "/";

/// Exchange type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Dotted words with `*` and `#`.
    Topic,
    /// Header match (`x-match`).
    Headers,
}

impl ExchangeKind {
    /// Parses `direct`/`fanout`/`topic`/`headers`; anything else is COMMAND_INVALID, a
    /// connection error, with RabbitMQ's text (`unknown exchange type 'x'`, and
    /// `invalid exchange type ''` for the empty name).
    pub fn parse(kind: &str) -> MqResult<ExchangeKind> {
        match kind {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            "" => Err(MqError::CommandInvalid(
                "invalid exchange type ''".to_string(),
            )),
            other => Err(MqError::CommandInvalid(format!(
                "unknown exchange type '{other}'"
            ))),
        }
    }

    /// The AMQP type name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// `exchange.declare`.
#[derive(Clone, Debug)]
pub struct ExchangeDeclare {
    /// Name.
    pub name: String,
    /// Type name as sent (validated by the vhost).
    pub kind: String,
    /// Only check existence.
    pub passive: bool,
    /// Survives restart.
    pub durable: bool,
    /// Deleted when its last binding (as source) goes.
    pub auto_delete: bool,
    /// Clients may not publish to it directly.
    pub internal: bool,
    /// Arguments (`alternate-exchange`, …).
    pub arguments: FieldTable,
}

/// `queue.declare`.
#[derive(Clone, Debug)]
pub struct QueueDeclare {
    /// Name; empty asks for a server-named queue (`amq.gen-…`).
    pub name: String,
    /// Only check existence (and ownership).
    pub passive: bool,
    /// Survives restart.
    pub durable: bool,
    /// Owned by the declaring connection.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-…` arguments.
    pub arguments: FieldTable,
}

/// `queue.declare-ok`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDeclared {
    /// The queue's name (generated when asked).
    pub name: String,
    /// Ready messages.
    pub message_count: u64,
    /// Consumers.
    pub consumer_count: u32,
}

/// What happened to a published message.
#[derive(Debug)]
pub struct Routed {
    /// How many queues took it (0: unroutable, `basic.return` if mandatory).
    pub queues: usize,
    /// Resolves to the publisher-confirm answer: `true` (ack) once every queue stored it
    /// durably as needed, `false` (nack) if a queue refused it (reject-publish).
    pub confirm: Confirm,
}

/// The publisher-confirm answer of one publish, possibly not yet known.
#[derive(Debug)]
pub struct Confirm {
    state: ConfirmState,
}

#[derive(Debug)]
enum ConfirmState {
    /// A queue refused the message: nack.
    Nack,
    /// Ack once every queue's append is durable (nothing to wait for when empty) and the
    /// throttled queues' consumers caught up (publisher back-pressure).
    Pending {
        durable: Vec<ferry_storage::Durability>,
        throttled: Vec<Arc<Queue>>,
    },
}

impl Confirm {
    /// An ack with nothing to wait for (an unroutable message is acked at once).
    pub fn ack() -> Confirm {
        Confirm::pending(Vec::new(), Vec::new())
    }

    /// An ack once every `durable` resolves and every `throttled` queue's
    /// [`Queue::flow_wait`] returns.
    pub fn pending(durable: Vec<ferry_storage::Durability>, throttled: Vec<Arc<Queue>>) -> Confirm {
        Confirm {
            state: ConfirmState::Pending { durable, throttled },
        }
    }

    /// A nack.
    pub fn nack() -> Confirm {
        Confirm {
            state: ConfirmState::Nack,
        }
    }

    /// Whether [`Confirm::wait`] would answer at once (no durable write to wait for).
    pub fn is_immediate(&self) -> bool {
        match &self.state {
            ConfirmState::Nack => true,
            ConfirmState::Pending { durable, throttled } => {
                throttled.is_empty() && durable.iter().all(|d| d.is_immediate())
            }
        }
    }

    /// Waits for the answer: `Ok(true)` ack, `Ok(false)` nack.
    pub async fn wait(self) -> MqResult<bool> {
        match self.state {
            ConfirmState::Nack => Ok(false),
            ConfirmState::Pending { durable, throttled } => {
                for durable in durable {
                    durable.wait().await?;
                }
                for queue in throttled {
                    queue.flow_wait().await;
                }
                Ok(true)
            }
        }
    }
}

/// Whether a binding leads to a queue or an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationKind {
    /// `queue`
    Queue,
    /// `exchange`
    Exchange,
}

impl DestinationKind {
    /// `queue` or `exchange`, as RabbitMQ names them.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Queue => "queue",
            DestinationKind::Exchange => "exchange",
        }
    }
}

/// An exchange, as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeInfo {
    /// Name (`""` for the default exchange).
    pub name: String,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives restart.
    pub durable: bool,
    /// Deleted when its last binding as source goes.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// A queue, as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueInfo {
    /// Name.
    pub name: String,
    /// Survives restart.
    pub durable: bool,
    /// Owned by one connection.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    /// Ready messages.
    pub messages: u64,
    /// Consumers.
    pub consumers: u32,
}

/// A binding, as listed (the default exchange's implicit bindings included).
#[derive(Clone, Debug, PartialEq)]
pub struct BindingInfo {
    /// Source exchange.
    pub source: String,
    /// Destination name.
    pub destination: String,
    /// Destination kind.
    pub destination_kind: DestinationKind,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}
