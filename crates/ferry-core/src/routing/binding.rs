//! The routing topology of one vhost: exchanges, the bindings from each exchange to
//! queues and other exchanges, and route resolution (message → set of queue names) as a
//! pure function of it, testable without any queue.
//!
//! Each exchange keeps its bindings in a map keyed by (destination, routing key,
//! arguments), which makes a binding unique as in RabbitMQ, plus an index for its type:
//! a hash map for direct, a set for fanout, a trie for topic; headers bindings are
//! scanned. Each destination also knows the bindings that lead to it, so deleting a queue
//! or exchange removes its bindings without scanning every exchange, and an auto-delete
//! exchange goes when its last binding as source goes (cascading).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::message::FieldTable;

use super::definitions::canonical_arguments;
use super::topic::TopicTrie;
use super::{headers, ExchangeKind};

/// Where a binding leads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Destination {
    /// A queue, by name.
    Queue(Arc<str>),
    /// An exchange, by name (exchange-to-exchange binding).
    Exchange(Arc<str>),
}

impl Destination {
    /// The destination's name.
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(name) | Destination::Exchange(name) => name,
        }
    }
}

/// Identity of a binding within its source exchange.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BindingKey {
    pub destination: Destination,
    pub routing_key: String,
    /// The arguments in canonical form (sorted JSON), so equal tables give equal keys.
    pub arguments_key: String,
}

/// A binding's data beyond its key.
#[derive(Clone, Debug)]
pub(crate) struct BindingData {
    pub arguments: FieldTable,
    /// Both ends are durable: the binding is persisted.
    pub durable: bool,
}

/// One binding, as removed or listed.
#[derive(Clone, Debug)]
pub(crate) struct BindingEntry {
    pub source: Arc<str>,
    pub key: BindingKey,
    pub data: BindingData,
}

/// An exchange and its bindings as source.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub name: Arc<str>,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// `alternate-exchange`: where messages go that this exchange routes nowhere.
    pub alternate: Option<Arc<str>>,
    bindings: HashMap<BindingKey, BindingData>,
    index: Index,
}

#[derive(Debug)]
enum Index {
    Direct(HashMap<String, HashMap<Destination, u32>>),
    Fanout(HashMap<Destination, u32>),
    Topic(TopicTrie<Destination>),
    /// Headers bindings are matched by scanning `bindings`.
    Headers,
}

impl Exchange {
    /// A new exchange without bindings.
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
        alternate: Option<&str>,
    ) -> Exchange {
        let index = match kind {
            ExchangeKind::Direct => Index::Direct(HashMap::new()),
            ExchangeKind::Fanout => Index::Fanout(HashMap::new()),
            ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Index::Headers,
        };
        Exchange {
            name: name.into(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate: alternate.map(Arc::from),
            bindings: HashMap::new(),
            index,
        }
    }

    /// Whether it has bindings as source (`exchange.delete if-unused`).
    pub fn has_bindings(&self) -> bool {
        !self.bindings.is_empty()
    }

    fn index_add(&mut self, key: &BindingKey) {
        match &mut self.index {
            Index::Direct(map) => {
                *map.entry(key.routing_key.clone())
                    .or_default()
                    .entry(key.destination.clone())
                    .or_insert(0) += 1;
            }
            Index::Fanout(set) => *set.entry(key.destination.clone()).or_insert(0) += 1,
            Index::Topic(trie) => trie.insert(&key.routing_key, key.destination.clone()),
            Index::Headers => {}
        }
    }

    fn index_remove(&mut self, key: &BindingKey) {
        fn decrement(map: &mut HashMap<Destination, u32>, destination: &Destination) {
            if let Some(count) = map.get_mut(destination) {
                *count -= 1;
                if *count == 0 {
                    map.remove(destination);
                }
            }
        }
        match &mut self.index {
            Index::Direct(map) => {
                if let Some(destinations) = map.get_mut(&key.routing_key) {
                    decrement(destinations, &key.destination);
                    if destinations.is_empty() {
                        map.remove(&key.routing_key);
                    }
                }
            }
            Index::Fanout(set) => decrement(set, &key.destination),
            Index::Topic(trie) => trie.remove(&key.routing_key, &key.destination),
            Index::Headers => {}
        }
    }

    /// The destinations this exchange's own bindings give for a message.
    fn route_into(
        &self,
        keys: &[&str],
        headers: Option<&FieldTable>,
        out: &mut HashSet<Destination>,
    ) {
        match &self.index {
            Index::Direct(map) => {
                for key in keys {
                    if let Some(destinations) = map.get(*key) {
                        out.extend(destinations.keys().cloned());
                    }
                }
            }
            Index::Fanout(set) => out.extend(set.keys().cloned()),
            Index::Topic(trie) => {
                for key in keys {
                    trie.matches(key, out);
                }
            }
            Index::Headers => {
                for (key, data) in &self.bindings {
                    if !out.contains(&key.destination) && headers::matches(&data.arguments, headers)
                    {
                        out.insert(key.destination.clone());
                    }
                }
            }
        }
    }
}

/// What a removal took with it (for definition tombstones and consumers' cleanup).
#[derive(Debug, Default)]
pub(crate) struct Removed {
    pub bindings: Vec<BindingEntry>,
    pub exchanges: Vec<Exchange>,
}

/// Exchanges and bindings of one vhost.
#[derive(Debug, Default)]
pub(crate) struct Topology {
    exchanges: HashMap<Arc<str>, Exchange>,
    /// For each destination, the (source, key) of every binding leading to it.
    incoming: HashMap<Destination, HashSet<(Arc<str>, BindingKey)>>,
}

impl Topology {
    /// The exchange `name`.
    pub fn exchange(&self, name: &str) -> Option<&Exchange> {
        self.exchanges.get(name)
    }

    /// Every exchange.
    pub fn exchanges(&self) -> impl Iterator<Item = &Exchange> {
        self.exchanges.values()
    }

    /// Adds an exchange (replacing nothing: the caller checked it is new).
    pub fn add_exchange(&mut self, exchange: Exchange) {
        debug_assert!(!self.exchanges.contains_key(&exchange.name));
        self.exchanges.insert(exchange.name.clone(), exchange);
    }

    /// Adds a binding; `false` if the same binding exists already. Both ends must exist.
    pub fn add_binding(
        &mut self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        durable: bool,
    ) -> bool {
        let Some(exchange) = self.exchanges.get_mut(source) else {
            return false;
        };
        let key = BindingKey {
            destination,
            routing_key: routing_key.to_string(),
            arguments_key: canonical_arguments(&arguments),
        };
        if exchange.bindings.contains_key(&key) {
            return false;
        }
        exchange.index_add(&key);
        exchange
            .bindings
            .insert(key.clone(), BindingData { arguments, durable });
        self.incoming
            .entry(key.destination.clone())
            .or_default()
            .insert((exchange.name.clone(), key));
        true
    }

    /// Whether the binding exists (`arguments_key` from [`canonical_arguments`]).
    pub fn has_binding(
        &self,
        source: &str,
        destination: &Destination,
        routing_key: &str,
        arguments_key: &str,
    ) -> bool {
        self.exchanges.get(source).is_some_and(|x| {
            x.bindings.contains_key(&BindingKey {
                destination: destination.clone(),
                routing_key: routing_key.to_string(),
                arguments_key: arguments_key.to_string(),
            })
        })
    }

    /// Removes one binding if present, cascading to an auto-delete source left unused.
    pub fn remove_binding(
        &mut self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Removed {
        let key = BindingKey {
            destination,
            routing_key: routing_key.to_string(),
            arguments_key: canonical_arguments(arguments),
        };
        let mut removed = Removed::default();
        self.remove_binding_key(source, &key, &mut removed);
        removed
    }

    fn remove_binding_key(&mut self, source: &str, key: &BindingKey, removed: &mut Removed) {
        let Some(exchange) = self.exchanges.get_mut(source) else {
            return;
        };
        let Some(data) = exchange.bindings.remove(key) else {
            return;
        };
        exchange.index_remove(key);
        let source_name = exchange.name.clone();
        let now_unused = exchange.auto_delete && exchange.bindings.is_empty();
        if let Some(set) = self.incoming.get_mut(&key.destination) {
            set.remove(&(source_name.clone(), key.clone()));
            if set.is_empty() {
                self.incoming.remove(&key.destination);
            }
        }
        removed.bindings.push(BindingEntry {
            source: source_name.clone(),
            key: key.clone(),
            data,
        });
        if now_unused {
            self.remove_exchange_into(&source_name, removed);
        }
    }

    /// Removes every binding leading to `destination` (a deleted queue), cascading.
    pub fn remove_destination(&mut self, destination: &Destination) -> Removed {
        let mut removed = Removed::default();
        self.remove_incoming(destination, &mut removed);
        removed
    }

    fn remove_incoming(&mut self, destination: &Destination, removed: &mut Removed) {
        let Some(set) = self.incoming.remove(destination) else {
            return;
        };
        for (source, key) in set {
            self.remove_binding_key(&source, &key, removed);
        }
    }

    /// Removes an exchange with its bindings both ways, cascading.
    pub fn remove_exchange(&mut self, name: &str) -> Removed {
        let mut removed = Removed::default();
        self.remove_exchange_into(name, &mut removed);
        removed
    }

    fn remove_exchange_into(&mut self, name: &str, removed: &mut Removed) {
        let Some(mut exchange) = self.exchanges.remove(name) else {
            return;
        };
        for (key, data) in exchange.bindings.drain() {
            if let Some(set) = self.incoming.get_mut(&key.destination) {
                set.remove(&(exchange.name.clone(), key.clone()));
                if set.is_empty() {
                    self.incoming.remove(&key.destination);
                }
            }
            removed.bindings.push(BindingEntry {
                source: exchange.name.clone(),
                key,
                data,
            });
        }
        exchange.index = match exchange.kind {
            ExchangeKind::Direct => Index::Direct(HashMap::new()),
            ExchangeKind::Fanout => Index::Fanout(HashMap::new()),
            ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Index::Headers,
        };
        let as_destination = Destination::Exchange(exchange.name.clone());
        removed.exchanges.push(exchange);
        self.remove_incoming(&as_destination, removed);
    }

    /// Every binding, for listing.
    pub fn bindings(&self) -> impl Iterator<Item = (&Arc<str>, &BindingKey, &BindingData)> {
        self.exchanges.values().flat_map(|exchange| {
            exchange
                .bindings
                .iter()
                .map(move |(key, data)| (&exchange.name, key, data))
        })
    }

    /// Resolves a message published to `exchange` with routing keys `keys` (the routing
    /// key, then CC/BCC keys) and `headers` to the names of the queues it goes to, as
    /// RabbitMQ does: every exchange reached through exchange bindings routes once; an
    /// exchange whose own bindings match nothing hands the message to its alternate
    /// exchange; the default exchange names queues directly. Queue names may name queues
    /// that no longer exist only for the default exchange: the caller looks them up.
    pub fn route(
        &self,
        exchange: &str,
        keys: &[&str],
        headers: Option<&FieldTable>,
    ) -> Vec<Arc<str>> {
        let Some(first) = self.exchanges.get(exchange) else {
            return Vec::new();
        };
        let mut destinations = HashSet::new();
        if !first.name.is_empty() {
            // The common case: one exchange straight to queues, no sets of exchanges.
            first.route_into(keys, headers, &mut destinations);
            let only_queues = destinations
                .iter()
                .all(|d| matches!(d, Destination::Queue(_)));
            if only_queues && (!destinations.is_empty() || first.alternate.is_none()) {
                let mut queues: Vec<Arc<str>> = destinations
                    .into_iter()
                    .filter_map(|d| match d {
                        Destination::Queue(q) => Some(q),
                        Destination::Exchange(_) => None,
                    })
                    .collect();
                queues.sort_unstable();
                return queues;
            }
            destinations.clear();
        }
        let mut queues: HashSet<Arc<str>> = HashSet::new();
        let mut seen: HashSet<Arc<str>> = HashSet::from([first.name.clone()]);
        let mut work: Vec<Arc<str>> = vec![first.name.clone()];
        while let Some(name) = work.pop() {
            let Some(x) = self.exchanges.get(&name) else {
                continue;
            };
            if x.name.is_empty() {
                // The default exchange: every routing key names a queue.
                queues.extend(keys.iter().map(|k| Arc::<str>::from(*k)));
                continue;
            }
            destinations.clear();
            x.route_into(keys, headers, &mut destinations);
            if destinations.is_empty() {
                if let Some(alternate) = &x.alternate {
                    if self.exchanges.contains_key(alternate) && seen.insert(alternate.clone()) {
                        work.push(alternate.clone());
                    }
                }
            }
            for destination in destinations.drain() {
                match destination {
                    Destination::Queue(queue) => {
                        queues.insert(queue);
                    }
                    Destination::Exchange(next) => {
                        if seen.insert(next.clone()) {
                            work.push(next);
                        }
                    }
                }
            }
        }
        let mut queues: Vec<Arc<str>> = queues.into_iter().collect();
        queues.sort_unstable();
        queues
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::FieldValue;
    use bytes::Bytes;

    fn q(name: &str) -> Destination {
        Destination::Queue(name.into())
    }

    fn x(name: &str) -> Destination {
        Destination::Exchange(name.into())
    }

    fn topology() -> Topology {
        let mut t = Topology::default();
        for (name, kind) in [
            ("", ExchangeKind::Direct),
            ("d", ExchangeKind::Direct),
            ("f", ExchangeKind::Fanout),
            ("t", ExchangeKind::Topic),
            ("h", ExchangeKind::Headers),
        ] {
            t.add_exchange(Exchange::new(
                name,
                kind,
                true,
                false,
                false,
                FieldTable::new(),
                None,
            ));
        }
        t
    }

    /// A non-durable, non-internal exchange without arguments.
    fn exchange(
        name: &str,
        kind: ExchangeKind,
        auto_delete: bool,
        alternate: Option<&str>,
    ) -> Exchange {
        Exchange::new(
            name,
            kind,
            false,
            auto_delete,
            false,
            FieldTable::new(),
            alternate,
        )
    }

    fn names(v: Vec<Arc<str>>) -> Vec<String> {
        v.into_iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn direct_fanout_topic_headers() {
        let mut t = topology();
        assert!(t.add_binding("d", q("q1"), "k", FieldTable::new(), false));
        assert!(!t.add_binding("d", q("q1"), "k", FieldTable::new(), false));
        t.add_binding("d", q("q2"), "k", FieldTable::new(), false);
        t.add_binding("d", q("q3"), "other", FieldTable::new(), false);
        t.add_binding("f", q("q1"), "ignored", FieldTable::new(), false);
        t.add_binding("t", q("q4"), "a.*", FieldTable::new(), false);
        let mut args = FieldTable::new();
        args.insert(
            "kind".into(),
            FieldValue::LongString(Bytes::from_static(b"x")),
        );
        t.add_binding("h", q("q5"), "", args.clone(), false);

        assert_eq!(names(t.route("d", &["k"], None)), ["q1", "q2"]);
        assert_eq!(
            names(t.route("d", &["k", "other"], None)),
            ["q1", "q2", "q3"]
        );
        assert_eq!(names(t.route("f", &["zzz"], None)), ["q1"]);
        assert_eq!(names(t.route("t", &["a.b"], None)), ["q4"]);
        assert!(t.route("t", &["a.b.c"], None).is_empty());
        assert_eq!(names(t.route("h", &["x"], Some(&args))), ["q5"]);
        assert!(t.route("h", &["x"], None).is_empty());
        assert_eq!(names(t.route("", &["anything"], None)), ["anything"]);
        assert!(t.route("missing", &["k"], None).is_empty());
    }

    #[test]
    fn exchange_bindings_terminate_and_dedupe() {
        let mut t = topology();
        // d -> f -> d (a loop), both reaching q1.
        t.add_binding("d", x("f"), "k", FieldTable::new(), false);
        t.add_binding("f", x("d"), "", FieldTable::new(), false);
        t.add_binding("f", q("q1"), "", FieldTable::new(), false);
        t.add_binding("d", q("q1"), "k", FieldTable::new(), false);
        t.add_binding("f", x("f"), "", FieldTable::new(), false);
        assert_eq!(names(t.route("d", &["k"], None)), ["q1"]);
        assert_eq!(names(t.route("f", &["nope"], None)), ["q1"]);
    }

    #[test]
    fn alternate_exchanges_chain() {
        let mut t = topology();
        t.add_exchange(exchange("main", ExchangeKind::Direct, false, Some("ae1")));
        t.add_exchange(exchange("ae1", ExchangeKind::Direct, false, Some("ae2")));
        t.add_exchange(exchange("ae2", ExchangeKind::Fanout, false, Some("main")));
        t.add_binding("main", q("routed"), "k", FieldTable::new(), false);
        t.add_binding("ae1", q("first-ae"), "special", FieldTable::new(), false);
        assert_eq!(names(t.route("main", &["k"], None)), ["routed"]);
        assert_eq!(names(t.route("main", &["special"], None)), ["first-ae"]);
        // Nothing anywhere: the AE cycle main -> ae1 -> ae2 -> main ends.
        assert!(t.route("main", &["zzz"], None).is_empty());
        t.add_binding("ae2", q("last"), "", FieldTable::new(), false);
        assert_eq!(names(t.route("main", &["zzz"], None)), ["last"]);
        // An exchange that routes to another exchange (even one routing nowhere) does not
        // use its AE.
        t.add_binding("main", x("d"), "zzz", FieldTable::new(), false);
        assert!(t.route("main", &["zzz"], None).is_empty());
    }

    #[test]
    fn removals_cascade_to_auto_delete_sources() {
        let mut t = topology();
        t.add_exchange(exchange("ad", ExchangeKind::Fanout, true, None));
        t.add_exchange(exchange("ad2", ExchangeKind::Fanout, true, None));
        t.add_binding("ad", q("q1"), "", FieldTable::new(), false);
        t.add_binding("ad", q("q2"), "", FieldTable::new(), false);
        t.add_binding("ad2", x("ad"), "", FieldTable::new(), false);
        t.add_binding("d", x("ad2"), "k", FieldTable::new(), false);

        let removed = t.remove_destination(&q("q1"));
        assert_eq!(removed.bindings.len(), 1);
        assert!(removed.exchanges.is_empty());
        assert!(t.exchange("ad").is_some());
        // The last queue goes: ad goes, then ad2 (its only binding led to ad) — and
        // d's binding to ad2 with it.
        let removed = t.remove_destination(&q("q2"));
        let gone: Vec<&str> = removed.exchanges.iter().map(|x| &*x.name).collect();
        assert_eq!(gone, ["ad", "ad2"]);
        assert_eq!(removed.bindings.len(), 3);
        assert!(t.exchange("ad2").is_none());
        assert!(!t.exchange("d").unwrap().has_bindings());
        assert!(t.incoming.is_empty());
        // Being a destination does not keep or remove an auto-delete exchange.
        t.add_exchange(exchange("ad3", ExchangeKind::Fanout, true, None));
        t.add_binding("f", x("ad3"), "", FieldTable::new(), false);
        t.remove_binding("f", x("ad3"), "", &FieldTable::new());
        assert!(t.exchange("ad3").is_some());
    }

    #[test]
    fn exchange_removal_takes_both_directions() {
        let mut t = topology();
        t.add_binding("d", x("f"), "k", FieldTable::new(), true);
        t.add_binding("f", q("q1"), "", FieldTable::new(), true);
        let removed = t.remove_exchange("f");
        assert_eq!(removed.bindings.len(), 2);
        assert!(!t.exchange("d").unwrap().has_bindings());
        assert!(t.incoming.is_empty());
    }
}

#[cfg(test)]
mod model_tests {
    //! The indexed topology against a linear scan over a plain list of bindings, under
    //! random sequences of binds, unbinds and queue deletions.

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const EXCHANGES: [(&str, ExchangeKind); 4] = [
        ("d", ExchangeKind::Direct),
        ("f", ExchangeKind::Fanout),
        ("t", ExchangeKind::Topic),
        ("t2", ExchangeKind::Topic),
    ];
    const QUEUES: [&str; 3] = ["q1", "q2", "q3"];
    const KEYS: [&str; 5] = ["a", "b", "a.b", "*", "#"];

    #[derive(Clone, Debug)]
    enum Op {
        Bind(usize, bool, usize, usize),
        Unbind(usize, bool, usize, usize),
        DeleteQueue(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..4usize, any::<bool>(), 0..4usize, 0..5usize)
                .prop_map(|(s, q, d, k)| Op::Bind(s, q, d, k)),
            1 => (0..4usize, any::<bool>(), 0..4usize, 0..5usize)
                .prop_map(|(s, q, d, k)| Op::Unbind(s, q, d, k)),
            1 => (0..3usize).prop_map(Op::DeleteQueue),
        ]
    }

    fn destination(to_queue: bool, index: usize) -> Destination {
        if to_queue {
            Destination::Queue(QUEUES[index % QUEUES.len()].into())
        } else {
            Destination::Exchange(EXCHANGES[index].0.into())
        }
    }

    fn matches(kind: ExchangeKind, pattern: &str, key: &str) -> bool {
        match kind {
            ExchangeKind::Direct => pattern == key,
            ExchangeKind::Fanout => true,
            ExchangeKind::Topic => {
                let mut out = HashSet::new();
                let mut trie = TopicTrie::default();
                trie.insert(pattern, 0u8);
                trie.matches(key, &mut out);
                !out.is_empty()
            }
            ExchangeKind::Headers => false,
        }
    }

    fn naive(
        bindings: &[(usize, Destination, String)],
        start: usize,
        key: &str,
    ) -> BTreeSet<String> {
        let mut seen = BTreeSet::from([start]);
        let mut work = vec![start];
        let mut out = BTreeSet::new();
        while let Some(x) = work.pop() {
            let mut dests: Vec<&Destination> = bindings
                .iter()
                .filter(|(s, _, k)| *s == x && matches(EXCHANGES[x].1, k, key))
                .map(|(_, d, _)| d)
                .collect();
            dests.dedup();
            // "t" has "t2" as its alternate exchange.
            if dests.is_empty() && x == 2 && seen.insert(3) {
                work.push(3);
            }
            for d in dests {
                match d {
                    Destination::Queue(q) => {
                        out.insert(q.to_string());
                    }
                    Destination::Exchange(name) => {
                        let i = EXCHANGES.iter().position(|(n, _)| *n == &**name).unwrap();
                        if seen.insert(i) {
                            work.push(i);
                        }
                    }
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn indexed_routing_agrees_with_a_scan(ops in prop::collection::vec(op(), 0..40)) {
            let mut t = Topology::default();
            for (i, (name, kind)) in EXCHANGES.iter().enumerate() {
                let alternate = (i == 2).then_some("t2");
                t.add_exchange(Exchange::new(name, *kind, false, false, false, FieldTable::new(), alternate));
            }
            let mut model: Vec<(usize, Destination, String)> = Vec::new();
            for op in ops {
                match op {
                    Op::Bind(s, q, d, k) => {
                        let dest = destination(q, d);
                        let added = t.add_binding(EXCHANGES[s].0, dest.clone(), KEYS[k], FieldTable::new(), false);
                        let exists = model.iter().any(|b| *b == (s, dest.clone(), KEYS[k].to_string()));
                        prop_assert_eq!(added, !exists);
                        if added {
                            model.push((s, dest, KEYS[k].to_string()));
                        }
                    }
                    Op::Unbind(s, q, d, k) => {
                        let dest = destination(q, d);
                        t.remove_binding(EXCHANGES[s].0, dest.clone(), KEYS[k], &FieldTable::new());
                        model.retain(|b| *b != (s, dest.clone(), KEYS[k].to_string()));
                    }
                    Op::DeleteQueue(q) => {
                        let dest = destination(true, q);
                        let removed = t.remove_destination(&dest);
                        let before = model.len();
                        model.retain(|b| b.1 != dest);
                        prop_assert_eq!(removed.bindings.len(), before - model.len());
                    }
                }
                for (start, (name, _)) in EXCHANGES.iter().enumerate() {
                    for key in ["a", "b", "a.b", "c.d.e", ""] {
                        let got: BTreeSet<String> = t
                            .route(name, &[key], None)
                            .into_iter()
                            .map(|q| q.to_string())
                            .collect();
                        prop_assert_eq!(got, naive(&model, start, key), "from {} key {:?}", name, key);
                    }
                }
            }
        }
    }
}
