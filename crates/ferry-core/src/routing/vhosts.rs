//! The registry of virtual hosts, and the replay of durable definitions at start.
//!
//! Start-up runs in two steps because queues need the broker (stream queues are Kafka
//! topics): [`VHosts::load`] replays `__ferry_definitions` before the broker exists, and
//! [`VHosts::recover`] rebuilds vhosts, durable exchanges, queues (reopened with their
//! messages) and bindings once it does, then deletes the logs of queues that did not
//! survive (non-durable queues of the previous run).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use ferry_storage::{FlushPolicy, Store};
use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};

use super::definitions::{
    field_table, DefinitionKey, DefinitionsState, VhostRecord, DEFINITIONS_LOG,
};
use super::vhost::VHost;
use super::DEFAULT_VHOST;
use crate::internal::{now_ms, to_json, InternalLog};
use crate::mq::{ConnectionId, MqError, MqResult};
use crate::Result;

/// The definitions log is rewritten at start once it holds more than this many records…
pub(super) const COMPACT_MIN_RECORDS: usize = 10_000;
/// …and more than this many per live definition.
const COMPACT_RATIO: usize = 4;
/// Records per append while rewriting (bounded batches).
const COMPACT_CHUNK_RECORDS: usize = 1_000;

/// What every vhost shares: the store, the broker and the definitions log.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub broker: Weak<crate::Broker>,
    definitions: InternalLog,
}

impl Shared {
    /// Writes definition records (values or tombstones) and waits until they are on disk.
    pub fn persist(&self, entries: Vec<(DefinitionKey, Option<Bytes>)>) -> MqResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries
            .into_iter()
            .map(|(key, value)| (to_json(&key), value))
            .collect();
        self.definitions.append_durable(entries, now_ms())?;
        Ok(())
    }
}

/// The definitions replayed by [`VHosts::load`], waiting for [`VHosts::recover`].
#[derive(Debug)]
pub(crate) struct Loaded {
    definitions: InternalLog,
    state: DefinitionsState,
    first_start: bool,
    /// Records replayed (live and superseded), to decide on compaction.
    replayed: usize,
}

/// Every virtual host of the broker.
#[derive(Debug)]
pub struct VHosts {
    pub(super) shared: Arc<Shared>,
    hosts: RwLock<BTreeMap<String, Arc<VHost>>>,
    /// Serialises adding and deleting vhosts.
    admin: Mutex<()>,
    /// Definitions replayed but not yet applied.
    pending: Mutex<Option<Pending>>,
}

/// Replayed definitions waiting for [`VHosts::recover`].
#[derive(Debug)]
struct Pending {
    state: DefinitionsState,
    first_start: bool,
    replayed: usize,
}

impl VHosts {
    /// Opens and replays the definitions log.
    pub(crate) fn load(store: &Store) -> Result<Loaded> {
        let (definitions, records) = InternalLog::open(store, DEFINITIONS_LOG, FlushPolicy::Sync)?;
        let first_start = records.is_empty();
        let state = DefinitionsState::replay(&records)?;
        Ok(Loaded {
            definitions,
            state,
            first_start,
            replayed: records.len(),
        })
    }

    /// The registry over loaded definitions; nothing is applied until [`VHosts::recover`].
    pub(crate) fn new(loaded: Loaded, store: Arc<Store>, broker: Weak<crate::Broker>) -> VHosts {
        VHosts {
            shared: Arc::new(Shared {
                store,
                broker,
                definitions: loaded.definitions,
            }),
            hosts: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
            pending: Mutex::new(Some(Pending {
                state: loaded.state,
                first_start: loaded.first_start,
                replayed: loaded.replayed,
            })),
        }
    }

    /// Rebuilds the durable definitions (the broker must exist) and deletes the logs of
    /// queues that were not durable. Creates the default vhost on first start.
    pub(crate) fn recover(&self) -> Result<()> {
        let Some(Pending {
            mut state,
            first_start,
            replayed,
        }) = self.pending.lock().take()
        else {
            return Ok(());
        };
        if first_start {
            self.add(DEFAULT_VHOST).map_err(core_error)?;
        }
        {
            let mut hosts = self.hosts.write();
            for name in state.vhosts.keys() {
                hosts
                    .entry(name.clone())
                    .or_insert_with(|| VHost::new(name, self.shared.clone()));
            }
        }
        for ((vhost, name), record) in &state.exchanges {
            let Some(host) = self.hosts.read().get(vhost).cloned() else {
                continue;
            };
            if let Err(e) = host.restore_exchange(name, record) {
                warn!(vhost, exchange = name, error = %e, "durable exchange not restored");
            }
        }
        let mut queues = 0usize;
        for ((vhost, name), record) in &state.queues {
            let Some(host) = self.hosts.read().get(vhost).cloned() else {
                continue;
            };
            match host.restore_queue(name, record) {
                Ok(()) => queues += 1,
                Err(e) => warn!(vhost, queue = name, error = %e, "durable queue not restored"),
            }
        }
        let mut dangling = Vec::new();
        for (key, record) in &state.bindings {
            let DefinitionKey::Binding {
                vhost,
                source,
                destination_kind,
                destination,
                routing_key,
                ..
            } = key
            else {
                continue;
            };
            let restored = match self.hosts.read().get(vhost).cloned() {
                Some(host) => host.restore_binding(
                    source,
                    destination_kind,
                    destination,
                    routing_key,
                    field_table(&record.arguments),
                ),
                None => false,
            };
            if !restored {
                // An end did not come back: the binding is gone for good.
                dangling.push(key.clone());
            }
        }
        for key in &dangling {
            state.bindings.remove(key);
        }
        if let Err(e) = self.compact(&state, replayed, dangling) {
            warn!(error = %e, "definitions log not compacted");
        }
        let durable: HashSet<(String, String)> = state.queues.keys().cloned().collect();
        remove_stray_queue_logs(&self.shared.store, &durable);
        info!(
            vhosts = self.hosts.read().len(),
            queues, "queue definitions recovered"
        );
        Ok(())
    }

    /// Rewrites the live definitions and drops the older records once superseded records
    /// dominate the log (durable queues declared and deleted all day would otherwise grow
    /// it without bound); else only tombstones the bindings that lost an end.
    fn compact(
        &self,
        state: &DefinitionsState,
        replayed: usize,
        dangling: Vec<DefinitionKey>,
    ) -> MqResult<()> {
        let live =
            state.vhosts.len() + state.exchanges.len() + state.queues.len() + state.bindings.len();
        if replayed <= COMPACT_MIN_RECORDS || replayed <= live * COMPACT_RATIO {
            return self
                .shared
                .persist(dangling.into_iter().map(|key| (key, None)).collect());
        }
        let start = self.shared.definitions.log_end_offset();
        let mut records: Vec<(DefinitionKey, Option<Bytes>)> = Vec::with_capacity(live);
        for (name, record) in &state.vhosts {
            records.push((
                DefinitionKey::Vhost { name: name.clone() },
                Some(to_json(record)),
            ));
        }
        for ((vhost, name), record) in &state.exchanges {
            let key = DefinitionKey::Exchange {
                vhost: vhost.clone(),
                name: name.clone(),
            };
            records.push((key, Some(to_json(record))));
        }
        for ((vhost, name), record) in &state.queues {
            let key = DefinitionKey::Queue {
                vhost: vhost.clone(),
                name: name.clone(),
            };
            records.push((key, Some(to_json(record))));
        }
        for (key, record) in &state.bindings {
            records.push((key.clone(), Some(to_json(record))));
        }
        for chunk in records.chunks(COMPACT_CHUNK_RECORDS) {
            self.shared.persist(chunk.to_vec())?;
        }
        let dropped = self.shared.definitions.delete_before(start)?;
        info!(
            replayed,
            live,
            log_start = dropped,
            "definitions log compacted"
        );
        Ok(())
    }

    /// Ends every queue's consumers and persists their cursors (broker shutdown, before the
    /// store stops).
    pub(crate) fn shutdown(&self) {
        let hosts: Vec<Arc<VHost>> = self.hosts.read().values().cloned().collect();
        for host in hosts {
            for queue in host.all_queues() {
                queue.shutdown();
            }
        }
    }

    /// The vhost `name`; NotAllowed (`vhost x not found`, RabbitMQ's text) if it does
    /// not exist.
    pub fn get(&self, name: &str) -> MqResult<Arc<VHost>> {
        self.hosts
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| MqError::NotAllowed(format!("vhost {name} not found")))
    }

    /// Names of all vhosts.
    pub fn names(&self) -> Vec<String> {
        self.hosts.read().keys().cloned().collect()
    }

    /// Creates a vhost (with its `amq.*` exchanges); idempotent.
    pub fn add(&self, name: &str) -> MqResult<()> {
        let _admin = self.admin.lock();
        if self.hosts.read().contains_key(name) {
            return Ok(());
        }
        self.shared.persist(vec![(
            DefinitionKey::Vhost {
                name: name.to_string(),
            },
            Some(to_json(&VhostRecord {})),
        )])?;
        self.hosts
            .write()
            .insert(name.to_string(), VHost::new(name, self.shared.clone()));
        Ok(())
    }

    /// Deletes a vhost and everything in it (NOT_FOUND `vhost x not found` if absent).
    pub async fn delete(&self, name: &str) -> MqResult<()> {
        let host = {
            let _admin = self.admin.lock();
            self.hosts.write().remove(name)
        }
        .ok_or_else(|| MqError::NotFound(format!("vhost {name} not found")))?;
        let mut tombstones: Vec<(DefinitionKey, Option<Bytes>)> = host
            .delete_all()
            .into_iter()
            .map(|key| (key, None))
            .collect();
        tombstones.push((
            DefinitionKey::Vhost {
                name: name.to_string(),
            },
            None,
        ));
        self.shared.persist(tombstones)
    }

    /// A connection closed: delete its exclusive queues in every vhost.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let hosts: Vec<Arc<VHost>> = self.hosts.read().values().cloned().collect();
        for host in hosts {
            host.connection_closed(connection);
        }
    }
}

fn core_error(e: MqError) -> crate::CoreError {
    match e {
        MqError::Core(core) => core,
        other => crate::CoreError::CorruptMessage(format!("definitions: {other}")),
    }
}

/// Deletes queue logs that belong to no durable queue: a non-durable queue's logs from the
/// previous run, or a deleted queue's whose removal a crash interrupted.
fn remove_stray_queue_logs(store: &Store, durable: &HashSet<(String, String)>) {
    let keep: HashSet<String> = durable
        .iter()
        .map(|(vhost, name)| crate::queue::storage_key(vhost, name))
        .collect();
    for id in store.log_ids() {
        let Some(key) = crate::queue::storage_key_of_log(&id.topic) else {
            continue;
        };
        if keep.contains(key) {
            continue;
        }
        info!(log = %id, "removing the log of a queue that did not survive the restart");
        if let Err(e) = store.remove_log(&id) {
            warn!(log = %id, error = %e, "could not remove a stray queue log");
        }
    }
}
