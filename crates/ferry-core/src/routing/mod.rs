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

use std::sync::Arc;

use crate::message::{FieldTable, Message};
use crate::mq::{ConnectionId, MqResult};
use crate::queue::Queue;

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
    /// Parses `direct`/`fanout`/`topic`/`headers`; anything else is COMMAND_INVALID in
    /// RabbitMQ (`invalid exchange type 'x'`): here NotImplemented/PreconditionFailed as the
    /// implementer finds RabbitMQ does.
    pub fn parse(kind: &str) -> MqResult<ExchangeKind> {
        let _ = kind;
        todo!("routing")
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
    _private: (),
}

impl Confirm {
    /// Waits for the answer: `Ok(true)` ack, `Ok(false)` nack.
    pub async fn wait(self) -> MqResult<bool> {
        todo!("routing")
    }
}

/// Every virtual host of the broker.
#[derive(Debug)]
pub struct VHosts {
    pub(crate) _private: (),
}

impl VHosts {
    /// The vhost `name`; NotAllowed (`vhost 'x' not found`) if it does not exist.
    pub fn get(&self, name: &str) -> MqResult<Arc<VHost>> {
        let _ = name;
        todo!("routing")
    }

    /// Names of all vhosts.
    pub fn names(&self) -> Vec<String> {
        todo!("routing")
    }

    /// Creates a vhost (with its `amq.*` exchanges); idempotent.
    pub fn add(&self, name: &str) -> MqResult<()> {
        let _ = name;
        todo!("routing")
    }

    /// Deletes a vhost and everything in it.
    pub async fn delete(&self, name: &str) -> MqResult<()> {
        let _ = name;
        todo!("routing")
    }

    /// A connection closed: delete its exclusive queues in every vhost.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let _ = connection;
        todo!("routing")
    }
}

/// One virtual host: its exchanges, queues and bindings.
#[derive(Debug)]
pub struct VHost {
    _private: (),
}

impl VHost {
    /// The vhost's name.
    pub fn name(&self) -> &str {
        todo!("routing")
    }

    /// `exchange.declare` (passive or not).
    pub fn declare_exchange(&self, declare: ExchangeDeclare) -> MqResult<()> {
        let _ = declare;
        todo!("routing")
    }

    /// `exchange.delete`.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> MqResult<()> {
        let _ = (name, if_unused);
        todo!("routing")
    }

    /// `exchange.bind`: route from `source` to `destination` exchange.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> MqResult<()> {
        let _ = (destination, source, routing_key, arguments);
        todo!("routing")
    }

    /// `exchange.unbind`.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> MqResult<()> {
        let _ = (destination, source, routing_key, arguments);
        todo!("routing")
    }

    /// `queue.declare`, by `connection` (owner of exclusive queues).
    pub fn declare_queue(
        &self,
        declare: QueueDeclare,
        connection: ConnectionId,
    ) -> MqResult<QueueDeclared> {
        let _ = (declare, connection);
        todo!("routing")
    }

    /// A queue for consuming, getting, purging or acking, checked against exclusive
    /// ownership (RESOURCE_LOCKED) and existence (NOT_FOUND).
    pub fn queue(&self, name: &str, connection: ConnectionId) -> MqResult<Arc<Queue>> {
        let _ = (name, connection);
        todo!("routing")
    }

    /// `queue.bind`.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        connection: ConnectionId,
    ) -> MqResult<()> {
        let _ = (queue, exchange, routing_key, arguments, connection);
        todo!("routing")
    }

    /// `queue.unbind`.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        connection: ConnectionId,
    ) -> MqResult<()> {
        let _ = (queue, exchange, routing_key, arguments, connection);
        todo!("routing")
    }

    /// `queue.purge`: returns the purged count.
    pub fn purge_queue(&self, name: &str, connection: ConnectionId) -> MqResult<u64> {
        let _ = (name, connection);
        todo!("routing")
    }

    /// `queue.delete` with if-unused / if-empty: returns the message count it had.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: ConnectionId,
    ) -> MqResult<u64> {
        let _ = (name, if_unused, if_empty, connection);
        todo!("routing")
    }

    /// `basic.publish`: routes `message` through its exchange (NOT_FOUND if missing,
    /// ACCESS_REFUSED if internal) to queues, following exchange bindings and alternate
    /// exchanges.
    pub fn publish(&self, message: Message) -> MqResult<Routed> {
        let _ = message;
        todo!("routing")
    }
}
