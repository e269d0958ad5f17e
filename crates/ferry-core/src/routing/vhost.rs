//! One virtual host: its topology (exchanges, bindings), its queues, declares with
//! RabbitMQ's checks and texts, publishing and dead-lettering.
//!
//! Locking: `state` (a read-write lock) is held only to look things up or to change the
//! maps, never across a queue operation or a disk write, so publishes (readers) are not
//! held up by an admin operation's fsync. Admin operations (declare, bind, delete…) are
//! serialised by `admin`, so a check made under it stays true until its change is applied.
//! Durable definitions are written before a creation is applied (a declare-ok means it
//! survives a crash) and after a removal is applied.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tracing::{debug, warn};

use super::args::{assert_exchange_args, assert_flag, assert_queue_args, field_mismatch, Resource};
use super::binding::{Destination, Exchange, Removed, Topology};
use super::dead_letter::{header_routes, is_cycle, make_dead_letter, BCC_HEADER, CC_HEADER};
use super::definitions::{
    stored_entries, BindingRecord, DefinitionKey, ExchangeRecord, QueueRecord,
};
use super::vhosts::Shared;
use super::{
    headers, BindingInfo, Confirm, DestinationKind, ExchangeDeclare, ExchangeInfo, ExchangeKind,
    QueueDeclare, QueueDeclared, QueueInfo, Routed,
};
use crate::internal::to_json;
use crate::message::{FieldTable, FieldValue, Message};
use crate::mq::{ConnectionId, MqError, MqResult};
use crate::queue::{
    DeadLetterReason, DeadLetterSink, DeleteReason, EnqueueOutcome, Queue, QueueEnv, QueueSettings,
};

/// Prefix reserved for the broker's own exchanges and server-named queues.
const RESERVED_PREFIX: &str = "amq.";
/// Prefix of server-named queues (then 22 base64url characters, as RabbitMQ).
const SERVER_NAMED_PREFIX: &str = "amq.gen-";
/// The text of every operation refused on the default exchange.
const DEFAULT_EXCHANGE_REFUSED: &str = "operation not permitted on the default exchange";

/// The exchanges every vhost has: name, type, internal.
const PREDECLARED: &[(&str, ExchangeKind, bool)] = &[
    ("", ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

/// A queue with what its declaration said (kept here for equivalence checks and listing).
#[derive(Debug)]
pub(crate) struct QueueEntry {
    pub queue: Arc<Queue>,
    pub durable: bool,
    pub exclusive: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Default)]
struct State {
    topology: Topology,
    queues: HashMap<Arc<str>, QueueEntry>,
}

/// One virtual host: its exchanges, queues and bindings.
#[derive(Debug)]
pub struct VHost {
    name: String,
    shared: Arc<Shared>,
    queue_env: QueueEnv,
    admin: Mutex<()>,
    state: RwLock<State>,
}

/// The vhost's dead-letter router, handed to its queues.
#[derive(Debug)]
struct Sink {
    vhost: Weak<VHost>,
}

impl DeadLetterSink for Sink {
    fn dead_letter(
        &self,
        queue: &str,
        settings: &QueueSettings,
        message: Message,
        reason: DeadLetterReason,
    ) {
        if let Some(vhost) = self.vhost.upgrade() {
            vhost.dead_letter(queue, settings, message, reason);
        }
    }

    fn delete_queue(&self, vhost: &str, queue: &str, reason: DeleteReason) {
        match self.vhost.upgrade() {
            Some(host) if host.name == vhost => host.remove_queue_on_request(queue, reason),
            _ => {}
        }
    }
}

fn no_exchange(vhost: &str, name: &str) -> MqError {
    MqError::NotFound(format!("no exchange '{name}' in vhost '{vhost}'"))
}

fn no_queue(vhost: &str, name: &str) -> MqError {
    MqError::NotFound(format!("no queue '{name}' in vhost '{vhost}'"))
}

fn locked(vhost: &str, name: &str) -> MqError {
    MqError::ResourceLocked(format!(
        "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
    ))
}

/// RabbitMQ's non-strict exclusivity check: a queue is usable by everyone unless it is
/// exclusive to another connection.
fn check_access(
    vhost: &str,
    name: &str,
    entry: &QueueEntry,
    connection: ConnectionId,
) -> MqResult<()> {
    match entry.exclusive {
        Some(owner) if owner != connection => Err(locked(vhost, name)),
        _ => Ok(()),
    }
}

/// A server-generated queue name: `amq.gen-` and 16 random bytes in unpadded base64url.
fn server_queue_name() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 16] = rand::random();
    let mut name = String::with_capacity(SERVER_NAMED_PREFIX.len() + 22);
    name.push_str(SERVER_NAMED_PREFIX);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            name.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    name
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl VHost {
    /// A vhost with only the predeclared exchanges.
    pub(crate) fn new(name: &str, shared: Arc<Shared>) -> Arc<VHost> {
        Arc::new_cyclic(|weak: &Weak<VHost>| {
            let mut topology = Topology::default();
            for &(exchange, kind, internal) in PREDECLARED {
                topology.add_exchange(Exchange::new(
                    exchange,
                    kind,
                    true,
                    false,
                    internal,
                    FieldTable::new(),
                    None,
                ));
            }
            let queue_env = QueueEnv {
                store: shared.store.clone(),
                broker: shared.broker.clone(),
                dead_letters: Arc::new(Sink {
                    vhost: weak.clone(),
                }),
            };
            VHost {
                name: name.to_string(),
                shared,
                queue_env,
                admin: Mutex::new(()),
                state: RwLock::new(State {
                    topology,
                    queues: HashMap::new(),
                }),
            }
        })
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn persist(&self, entries: Vec<(DefinitionKey, Option<Bytes>)>) -> MqResult<()> {
        self.shared.persist(entries)
    }

    fn exchange_key(&self, name: &str) -> DefinitionKey {
        DefinitionKey::Exchange {
            vhost: self.name.clone(),
            name: name.to_string(),
        }
    }

    fn queue_key(&self, name: &str) -> DefinitionKey {
        DefinitionKey::Queue {
            vhost: self.name.clone(),
            name: name.to_string(),
        }
    }

    fn binding_key(
        &self,
        source: &str,
        destination: &Destination,
        routing_key: &str,
        arguments_key: &str,
    ) -> DefinitionKey {
        let (kind, name) = match destination {
            Destination::Queue(n) => (DestinationKind::Queue, n),
            Destination::Exchange(n) => (DestinationKind::Exchange, n),
        };
        DefinitionKey::Binding {
            vhost: self.name.clone(),
            source: source.to_string(),
            destination_kind: kind.as_str().to_string(),
            destination: name.to_string(),
            routing_key: routing_key.to_string(),
            arguments: arguments_key.to_string(),
        }
    }

    /// Tombstones for what a removal took that was durable.
    fn persist_removed(&self, removed: &Removed) -> MqResult<()> {
        let mut entries = Vec::new();
        for binding in &removed.bindings {
            if binding.data.durable {
                entries.push((
                    self.binding_key(
                        &binding.source,
                        &binding.key.destination,
                        &binding.key.routing_key,
                        &binding.key.arguments_key,
                    ),
                    None,
                ));
            }
        }
        for exchange in &removed.exchanges {
            if exchange.durable {
                entries.push((self.exchange_key(&exchange.name), None));
            }
        }
        self.persist(entries)
    }

    /// `exchange.declare` (passive or not).
    pub fn declare_exchange(&self, declare: ExchangeDeclare) -> MqResult<()> {
        let name = declare.name.as_str();
        if declare.passive {
            if name.is_empty() {
                return Err(MqError::AccessRefused(DEFAULT_EXCHANGE_REFUSED.into()));
            }
            return match self.state.read().topology.exchange(name) {
                Some(_) => Ok(()),
                None => Err(no_exchange(&self.name, name)),
            };
        }
        let kind = ExchangeKind::parse(&declare.kind)?;
        if name.is_empty() {
            return Err(MqError::AccessRefused(DEFAULT_EXCHANGE_REFUSED.into()));
        }
        let _admin = self.admin.lock();
        if let Some(existing) = self.state.read().topology.exchange(name) {
            let resource = Resource::Exchange {
                vhost: &self.name,
                name,
            };
            if existing.kind != kind {
                return Err(field_mismatch(
                    resource,
                    "type",
                    kind.as_str(),
                    existing.kind.as_str(),
                ));
            }
            assert_flag(resource, "durable", declare.durable, existing.durable)?;
            assert_flag(
                resource,
                "auto_delete",
                declare.auto_delete,
                existing.auto_delete,
            )?;
            assert_flag(resource, "internal", declare.internal, existing.internal)?;
            return assert_exchange_args(&self.name, name, &existing.arguments, &declare.arguments);
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(MqError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let alternate = match declare.arguments.get("alternate-exchange") {
            None => None,
            Some(FieldValue::LongString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Some(other) => {
                return Err(MqError::PreconditionFailed(format!(
                    "invalid type '{}' for arg 'alternate-exchange' in {}",
                    crate::queue::type_name(other),
                    Resource::Exchange {
                        vhost: &self.name,
                        name
                    }
                )))
            }
        };
        if declare.durable {
            let record = ExchangeRecord {
                kind: kind.as_str().to_string(),
                auto_delete: declare.auto_delete,
                internal: declare.internal,
                arguments: stored_entries(&declare.arguments),
            };
            self.persist(vec![(self.exchange_key(name), Some(to_json(&record)))])?;
        }
        self.state.write().topology.add_exchange(Exchange::new(
            name,
            kind,
            declare.durable,
            declare.auto_delete,
            declare.internal,
            declare.arguments,
            alternate.as_deref(),
        ));
        Ok(())
    }

    /// Adds an exchange replayed from the definitions.
    pub(crate) fn restore_exchange(&self, name: &str, record: &ExchangeRecord) -> MqResult<()> {
        let kind = ExchangeKind::parse(&record.kind)?;
        let arguments = super::definitions::field_table(&record.arguments);
        let alternate = match arguments.get("alternate-exchange") {
            Some(FieldValue::LongString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        let mut state = self.state.write();
        if state.topology.exchange(name).is_none() {
            state.topology.add_exchange(Exchange::new(
                name,
                kind,
                true,
                record.auto_delete,
                record.internal,
                arguments,
                alternate.as_deref(),
            ));
        }
        Ok(())
    }

    /// `exchange.delete`.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> MqResult<()> {
        if name.is_empty() {
            return Err(MqError::AccessRefused(DEFAULT_EXCHANGE_REFUSED.into()));
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(MqError::AccessRefused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let _admin = self.admin.lock();
        let removed = {
            let mut state = self.state.write();
            match state.topology.exchange(name) {
                None => return Ok(()),
                Some(x) if if_unused && x.has_bindings() => {
                    return Err(MqError::PreconditionFailed(format!(
                        "exchange '{name}' in vhost '{}' in use",
                        self.name
                    )))
                }
                Some(_) => state.topology.remove_exchange(name),
            }
        };
        self.persist_removed(&removed)
    }

    /// Adds a binding after the caller checked both ends; persists it if both are durable.
    fn add_binding(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        durable: bool,
    ) -> MqResult<()> {
        let arguments_key = super::definitions::canonical_arguments(&arguments);
        if self
            .state
            .read()
            .topology
            .has_binding(source, &destination, routing_key, &arguments_key)
        {
            return Ok(());
        }
        if durable {
            let record = BindingRecord {
                arguments: stored_entries(&arguments),
            };
            let key = self.binding_key(source, &destination, routing_key, &arguments_key);
            self.persist(vec![(key, Some(to_json(&record)))])?;
        }
        self.state.write().topology.add_binding(
            source,
            destination,
            routing_key,
            arguments,
            durable,
        );
        Ok(())
    }

    /// `exchange.bind`: route from `source` to `destination` exchange.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> MqResult<()> {
        if source.is_empty() || destination.is_empty() {
            return Err(MqError::AccessRefused(DEFAULT_EXCHANGE_REFUSED.into()));
        }
        let _admin = self.admin.lock();
        let (durable, destination_name) = {
            let state = self.state.read();
            let src = state
                .topology
                .exchange(source)
                .ok_or_else(|| no_exchange(&self.name, source))?;
            let dst = state
                .topology
                .exchange(destination)
                .ok_or_else(|| no_exchange(&self.name, destination))?;
            if src.kind == ExchangeKind::Headers {
                headers::validate_binding(&arguments)?;
            }
            (src.durable && dst.durable, dst.name.clone())
        };
        self.add_binding(
            source,
            Destination::Exchange(destination_name),
            routing_key,
            arguments,
            durable,
        )
    }

    /// `exchange.unbind`.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> MqResult<()> {
        if source.is_empty() || destination.is_empty() {
            return Err(MqError::AccessRefused(DEFAULT_EXCHANGE_REFUSED.into()));
        }
        let _admin = self.admin.lock();
        let removed = self.state.write().topology.remove_binding(
            source,
            Destination::Exchange(destination.into()),
            routing_key,
            arguments,
        );
        self.persist_removed(&removed)
    }

    /// `queue.declare`, by `connection` (owner of exclusive queues).
    pub fn declare_queue(
        &self,
        declare: QueueDeclare,
        connection: ConnectionId,
    ) -> MqResult<QueueDeclared> {
        if declare.passive {
            let state = self.state.read();
            let entry = state
                .queues
                .get(declare.name.as_str())
                .ok_or_else(|| no_queue(&self.name, &declare.name))?;
            check_access(&self.name, &declare.name, entry, connection)?;
            // A declare, even passive, renews an `x-expires` lease.
            entry.queue.touch();
            return Ok(QueueDeclared {
                name: declare.name.clone(),
                message_count: entry.queue.message_count(),
                consumer_count: entry.queue.consumer_count(),
            });
        }
        let name = if declare.name.is_empty() {
            let kind = super::args::queue_type_name(&declare.arguments);
            if kind == "quorum" || kind == "stream" {
                return Err(MqError::PreconditionFailed(format!(
                    "Cannot declare a server-named queue for type rabbit_{kind}_queue"
                )));
            }
            server_queue_name()
        } else if declare.name.starts_with(RESERVED_PREFIX) {
            return Err(MqError::AccessRefused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                declare.name
            )));
        } else {
            declare.name.clone()
        };
        // An exclusive queue never outlives its connection, so it is never durable.
        let durable = declare.durable && !declare.exclusive;
        let owner = declare.exclusive.then_some(connection);
        let _admin = self.admin.lock();
        if let Some(entry) = self.state.read().queues.get(name.as_str()) {
            if entry.exclusive != owner {
                return Err(locked(&self.name, &name));
            }
            let resource = Resource::Queue {
                vhost: &self.name,
                name: &name,
            };
            assert_flag(resource, "durable", durable, entry.durable)?;
            assert_flag(
                resource,
                "auto_delete",
                declare.auto_delete,
                entry.auto_delete,
            )?;
            assert_queue_args(&self.name, &name, &entry.arguments, &declare.arguments)?;
            entry.queue.touch();
            return Ok(QueueDeclared {
                name,
                message_count: entry.queue.message_count(),
                consumer_count: entry.queue.consumer_count(),
            });
        }
        // RabbitMQ checks the dead-letter exchange's type before the other arguments.
        match declare.arguments.get("x-dead-letter-exchange") {
            None | Some(FieldValue::LongString(_)) => {}
            Some(other) => {
                return Err(MqError::PreconditionFailed(format!(
                    "invalid type '{}' for arg 'x-dead-letter-exchange' in {}",
                    crate::queue::type_name(other),
                    Resource::Queue {
                        vhost: &self.name,
                        name: &name
                    }
                )))
            }
        }
        let settings = QueueSettings::parse(
            &self.name,
            &name,
            durable,
            owner,
            declare.auto_delete,
            declare.arguments.clone(),
        )?;
        let queue = Queue::open(&self.queue_env, &self.name, &name, settings)?;
        if durable {
            let record = QueueRecord {
                auto_delete: declare.auto_delete,
                arguments: stored_entries(&declare.arguments),
            };
            if let Err(e) = self.persist(vec![(self.queue_key(&name), Some(to_json(&record)))]) {
                if let Err(delete) = queue.delete() {
                    warn!(queue = %name, error = %delete, "removing a queue whose definition could not be written");
                }
                return Err(e);
            }
        }
        let declared = QueueDeclared {
            name: name.clone(),
            message_count: queue.message_count(),
            consumer_count: queue.consumer_count(),
        };
        self.state.write().queues.insert(
            name.into(),
            QueueEntry {
                queue,
                durable,
                exclusive: owner,
                auto_delete: declare.auto_delete,
                arguments: declare.arguments,
            },
        );
        Ok(declared)
    }

    /// Opens a durable queue replayed from the definitions.
    pub(crate) fn restore_queue(&self, name: &str, record: &QueueRecord) -> MqResult<()> {
        let arguments = super::definitions::field_table(&record.arguments);
        let settings = QueueSettings::parse(
            &self.name,
            name,
            true,
            None,
            record.auto_delete,
            arguments.clone(),
        )?;
        let queue = Queue::open(&self.queue_env, &self.name, name, settings)?;
        self.state.write().queues.insert(
            name.into(),
            QueueEntry {
                queue,
                durable: true,
                exclusive: None,
                auto_delete: record.auto_delete,
                arguments,
            },
        );
        Ok(())
    }

    /// Adds a binding replayed from the definitions, if both its ends came back.
    pub(crate) fn restore_binding(
        &self,
        source: &str,
        destination_kind: &str,
        destination: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> bool {
        let mut state = self.state.write();
        let destination = match destination_kind {
            "queue" => match state.queues.get_key_value(destination) {
                Some((name, _)) => Destination::Queue(name.clone()),
                None => return false,
            },
            _ => match state.topology.exchange(destination) {
                Some(x) => Destination::Exchange(x.name.clone()),
                None => return false,
            },
        };
        if state.topology.exchange(source).is_none() {
            return false;
        }
        state
            .topology
            .add_binding(source, destination, routing_key, arguments, true);
        true
    }

    /// A queue for consuming, getting, purging or acking, checked against exclusive
    /// ownership (RESOURCE_LOCKED) and existence (NOT_FOUND).
    pub fn queue(&self, name: &str, connection: ConnectionId) -> MqResult<Arc<Queue>> {
        let state = self.state.read();
        let entry = state
            .queues
            .get(name)
            .ok_or_else(|| no_queue(&self.name, name))?;
        check_access(&self.name, name, entry, connection)?;
        Ok(entry.queue.clone())
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
        if exchange.is_empty() {
            return Err(MqError::AccessRefused(DEFAULT_EXCHANGE_REFUSED.into()));
        }
        let _admin = self.admin.lock();
        let (durable, queue_name) = {
            let state = self.state.read();
            let src = state
                .topology
                .exchange(exchange)
                .ok_or_else(|| no_exchange(&self.name, exchange))?;
            let (queue_name, entry) = state
                .queues
                .get_key_value(queue)
                .ok_or_else(|| no_queue(&self.name, queue))?;
            check_access(&self.name, queue, entry, connection)?;
            if src.kind == ExchangeKind::Headers {
                headers::validate_binding(&arguments)?;
            }
            (src.durable && entry.durable, queue_name.clone())
        };
        self.add_binding(
            exchange,
            Destination::Queue(queue_name),
            routing_key,
            arguments,
            durable,
        )
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
        if exchange.is_empty() {
            return Err(MqError::AccessRefused(DEFAULT_EXCHANGE_REFUSED.into()));
        }
        let _admin = self.admin.lock();
        let destination = Destination::Queue(queue.into());
        let removed = {
            let mut state = self.state.write();
            let arguments_key = super::definitions::canonical_arguments(arguments);
            let bound =
                state
                    .topology
                    .has_binding(exchange, &destination, routing_key, &arguments_key);
            if let Some(entry) = state.queues.get(queue) {
                // Only an existing binding is guarded: removing nothing is always fine.
                if bound {
                    check_access(&self.name, queue, entry, connection)?;
                }
            }
            state
                .topology
                .remove_binding(exchange, destination, routing_key, arguments)
        };
        self.persist_removed(&removed)
    }

    /// `queue.purge`: returns the purged count.
    pub fn purge_queue(&self, name: &str, connection: ConnectionId) -> MqResult<u64> {
        self.queue(name, connection)?.purge()
    }

    /// `queue.delete` with if-unused / if-empty: returns the message count it had.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: ConnectionId,
    ) -> MqResult<u64> {
        let _admin = self.admin.lock();
        {
            let state = self.state.read();
            let Some(entry) = state.queues.get(name) else {
                return Ok(0);
            };
            check_access(&self.name, name, entry, connection)?;
            if if_unused && entry.queue.consumer_count() > 0 {
                return Err(MqError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{}' in use",
                    self.name
                )));
            }
            if if_empty && entry.queue.message_count() > 0 {
                return Err(MqError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{}' not empty",
                    self.name
                )));
            }
        }
        self.remove_queue(name)
    }

    /// Removes a queue with its bindings (cascading to auto-delete exchanges), deletes its
    /// storage and its definitions. The caller holds `admin`.
    fn remove_queue(&self, name: &str) -> MqResult<u64> {
        let (entry, removed) = {
            let mut state = self.state.write();
            let Some(entry) = state.queues.remove(name) else {
                return Ok(0);
            };
            let removed = state
                .topology
                .remove_destination(&Destination::Queue(name.into()));
            (entry, removed)
        };
        let count = entry.queue.delete();
        if entry.durable {
            self.persist(vec![(self.queue_key(name), None)])?;
        }
        self.persist_removed(&removed)?;
        count
    }

    /// Deletes a queue that asked to go (auto-delete after its last consumer, `x-expires`),
    /// if it still qualifies: a queue of the same name declared since, or one that got a
    /// consumer again, stays.
    fn remove_queue_on_request(&self, name: &str, reason: DeleteReason) {
        let _admin = self.admin.lock();
        let qualifies = self.state.read().queues.get(name).is_some_and(|entry| {
            !entry.queue.is_deleted()
                && match reason {
                    DeleteReason::AutoDelete => {
                        entry.auto_delete && entry.queue.consumer_count() == 0
                    }
                    DeleteReason::Expired => entry.queue.consumer_count() == 0,
                }
        });
        if qualifies {
            debug!(vhost = %self.name, queue = name, ?reason, "queue deleted on its own request");
            if let Err(e) = self.remove_queue(name) {
                warn!(vhost = %self.name, queue = name, error = %e, "deleting a queue failed");
            }
        }
    }

    /// Every queue (for shutdown).
    pub(crate) fn all_queues(&self) -> Vec<Arc<Queue>> {
        self.state
            .read()
            .queues
            .values()
            .map(|entry| entry.queue.clone())
            .collect()
    }

    /// Deletes the exclusive queues of a closed connection.
    pub(crate) fn connection_closed(&self, connection: ConnectionId) {
        let _admin = self.admin.lock();
        let owned: Vec<Arc<str>> = self
            .state
            .read()
            .queues
            .iter()
            .filter(|(_, entry)| entry.exclusive == Some(connection))
            .map(|(name, _)| name.clone())
            .collect();
        for name in owned {
            if let Err(e) = self.remove_queue(&name) {
                warn!(vhost = %self.name, queue = %name, error = %e, "deleting an exclusive queue failed");
            }
        }
    }

    /// Deletes every queue (the vhost is being deleted); returns the definitions to
    /// tombstone.
    pub(crate) fn delete_all(&self) -> Vec<DefinitionKey> {
        let _admin = self.admin.lock();
        let mut keys = Vec::new();
        let queues: Vec<(Arc<str>, QueueEntry)> = {
            let mut state = self.state.write();
            for exchange in state.topology.exchanges() {
                if exchange.durable && !is_predeclared(&exchange.name) {
                    keys.push(self.exchange_key(&exchange.name));
                }
            }
            for (source, key, data) in state.topology.bindings() {
                if data.durable {
                    keys.push(self.binding_key(
                        source,
                        &key.destination,
                        &key.routing_key,
                        &key.arguments_key,
                    ));
                }
            }
            state.topology = Topology::default();
            state.queues.drain().collect()
        };
        // Outside the state lock: a queue's deletion may call back into this vhost.
        for (name, entry) in queues {
            if let Err(e) = entry.queue.delete() {
                warn!(vhost = %self.name, queue = %name, error = %e, "deleting a queue of a deleted vhost failed");
            }
            if entry.durable {
                keys.push(self.queue_key(&name));
            }
        }
        keys
    }

    /// `basic.publish`: routes `message` through its exchange (NOT_FOUND if missing,
    /// ACCESS_REFUSED if internal) to queues, following exchange bindings and alternate
    /// exchanges. `CC` and `BCC` headers add routing keys; `BCC` is removed from the
    /// message.
    pub fn publish(&self, mut message: Message) -> MqResult<Routed> {
        let headers = message.properties.headers.as_ref();
        let cc = header_routes(headers, CC_HEADER)?;
        let bcc = header_routes(headers, BCC_HEADER)?;
        let has_bcc = headers.is_some_and(|h| h.contains_key(BCC_HEADER));
        let queues: Vec<Arc<Queue>> = {
            let state = self.state.read();
            let exchange = state
                .topology
                .exchange(&message.exchange)
                .ok_or_else(|| no_exchange(&self.name, &message.exchange))?;
            if exchange.internal {
                return Err(MqError::AccessRefused(format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    message.exchange, self.name
                )));
            }
            if message.exchange.is_empty() && cc.is_empty() && bcc.is_empty() {
                // The common case, without building sets.
                state
                    .queues
                    .get(message.routing_key.as_str())
                    .map(|entry| entry.queue.clone())
                    .into_iter()
                    .collect()
            } else {
                let mut keys: Vec<&str> = Vec::with_capacity(1 + cc.len() + bcc.len());
                keys.push(&message.routing_key);
                keys.extend(cc.iter().copied());
                keys.extend(bcc.iter().copied());
                state
                    .topology
                    .route(&message.exchange, &keys, headers)
                    .iter()
                    .filter_map(|name| state.queues.get(name).map(|entry| entry.queue.clone()))
                    .collect()
            }
        };
        if has_bcc {
            if let Some(headers) = message.properties.headers.as_mut() {
                headers.shift_remove(BCC_HEADER);
            }
        }
        let mut waits = Vec::with_capacity(queues.len());
        let mut throttled = Vec::new();
        let mut rejected = false;
        let mut taken = 0;
        for queue in &queues {
            match queue.enqueue(&message) {
                Ok(EnqueueOutcome::Enqueued {
                    durable,
                    throttled: slow,
                }) => {
                    waits.push(durable);
                    if slow {
                        throttled.push(queue.clone());
                    }
                }
                Ok(EnqueueOutcome::Rejected) => rejected = true,
                // Deleted after routing: as if it had not been there.
                Err(_) if queue.is_deleted() => continue,
                Err(e) => return Err(e),
            }
            taken += 1;
        }
        let confirm = if rejected {
            Confirm::nack()
        } else {
            Confirm::pending(waits, throttled)
        };
        Ok(Routed {
            queues: taken,
            confirm,
        })
    }

    /// Routes a dead letter from `queue` to the queue's dead-letter exchange (dropped if
    /// there is none, or for a target queue it would cycle back to).
    fn dead_letter(
        &self,
        queue: &str,
        settings: &QueueSettings,
        message: Message,
        reason: DeadLetterReason,
    ) {
        let Some(dead) = make_dead_letter(queue, settings, message, reason, now_secs()) else {
            return;
        };
        let targets: Vec<Arc<Queue>> = {
            let state = self.state.read();
            if state.topology.exchange(&dead.message.exchange).is_none() {
                debug!(vhost = %self.name, queue, exchange = %dead.message.exchange, "dead-letter exchange missing: message dropped");
                return;
            }
            let keys: Vec<&str> = dead.routing_keys.iter().map(String::as_str).collect();
            let headers = dead.message.properties.headers.as_ref();
            state
                .topology
                .route(&dead.message.exchange, &keys, headers)
                .iter()
                .filter(|target| !is_cycle(headers, reason, target))
                .filter_map(|name| state.queues.get(name).map(|entry| entry.queue.clone()))
                .collect()
        };
        for target in targets {
            if let Err(e) = target.enqueue(&dead.message) {
                warn!(vhost = %self.name, queue = target.name(), error = %e, "dead letter not stored");
            }
        }
    }

    /// The vhost's exchanges.
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        let state = self.state.read();
        let mut list: Vec<ExchangeInfo> = state
            .topology
            .exchanges()
            .map(|x| ExchangeInfo {
                name: x.name.to_string(),
                kind: x.kind,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The vhost's queues with their message and consumer counts.
    pub fn queues(&self) -> Vec<QueueInfo> {
        let state = self.state.read();
        let mut list: Vec<QueueInfo> = state
            .queues
            .iter()
            .map(|(name, entry)| QueueInfo {
                name: name.to_string(),
                durable: entry.durable,
                exclusive: entry.exclusive.is_some(),
                auto_delete: entry.auto_delete,
                arguments: entry.arguments.clone(),
                messages: entry.queue.message_count(),
                consumers: entry.queue.consumer_count(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The vhost's bindings, the default exchange's implicit ones (one per queue) first.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let state = self.state.read();
        let mut implicit: Vec<BindingInfo> = state
            .queues
            .keys()
            .map(|name| BindingInfo {
                source: String::new(),
                destination: name.to_string(),
                destination_kind: DestinationKind::Queue,
                routing_key: name.to_string(),
                arguments: FieldTable::new(),
            })
            .collect();
        implicit.sort_by(|a, b| a.destination.cmp(&b.destination));
        let mut explicit: Vec<BindingInfo> = state
            .topology
            .bindings()
            .map(|(source, key, data)| BindingInfo {
                source: source.to_string(),
                destination: key.destination.name().to_string(),
                destination_kind: match key.destination {
                    Destination::Queue(_) => DestinationKind::Queue,
                    Destination::Exchange(_) => DestinationKind::Exchange,
                },
                routing_key: key.routing_key.clone(),
                arguments: data.arguments.clone(),
            })
            .collect();
        explicit.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
        implicit.extend(explicit);
        implicit
    }
}

/// Whether `name` is one of the exchanges every vhost has.
fn is_predeclared(name: &str) -> bool {
    PREDECLARED.iter().any(|(n, _, _)| *n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_look_like_rabbitmq() {
        let name = server_queue_name();
        assert!(name.starts_with("amq.gen-"), "{name}");
        let suffix = &name["amq.gen-".len()..];
        assert_eq!(suffix.len(), 22, "{name}");
        assert!(suffix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(server_queue_name(), name);
    }
}
