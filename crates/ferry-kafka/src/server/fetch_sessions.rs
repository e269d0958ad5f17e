//! Incremental fetch sessions (KIP-227).
//!
//! A consumer of many partitions can have the broker remember its fetch list. A full fetch
//! at epoch 0 creates a session and the response carries its id. Later fetches name the
//! session and the next epoch, and list only the partitions whose position or limit
//! changed, and those to forget. The broker answers only the partitions that have something
//! new: records, an error, or a moved high watermark, last stable offset or log start.
//! Without this, a consumer of 10,000 partitions sends and receives all 10,000 on every
//! fetch, even when only a few have data.
//!
//! Sessions are broker-wide, not tied to a connection: a client that reconnects keeps its
//! session. The cache is bounded twice: by a number of sessions
//! ([`KafkaConfig::fetch_session_cache_slots`], Kafka's
//! `max.incremental.fetch.session.cache.slots`) and by the partitions they hold together
//! ([`KafkaConfig::fetch_session_cache_partitions`]). When it is full, a new session evicts one
//! idle for [`EVICTION_IDLE`], or else the smallest session if the new one is larger, as in
//! Kafka; failing both, the client gets no session and goes on with full fetches.
//!
//! Partitions that returned records move to the end of the session's order, so the next
//! fetch, which fills its response in session order, serves the others first. The order
//! is a rank kept with each partition: a fetch sorts only the partitions it reads.
//!
//! A session watches its partitions ([`PartitionWatch`]): appends, records removed from
//! the front and deletions mark them changed. A fetch reads only the partitions that may
//! have news: those marked, those with records the client has not been sent (its position
//! is below the high watermark last sent), those the request listed, and those whose last
//! answer was an error. Any other partition's answer would repeat the last one, so it is
//! not looked at, and a fetch over 10,000 quiet partitions costs little.
//!
//! [`KafkaConfig::fetch_session_cache_slots`]: super::KafkaConfig::fetch_session_cache_slots
//! [`KafkaConfig::fetch_session_cache_partitions`]: super::KafkaConfig::fetch_session_cache_partitions

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::{
    ChangeSignal, FetchPartition, FetchedPartition, PartitionHandle, PartitionWatch, SlotSet,
};
use indexmap::{Equivalent, IndexMap};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchTopic, ForgottenTopic};
use kafka_protocol::messages::FetchRequest;
use parking_lot::Mutex;

/// Session id of a fetch outside any session.
pub const NO_SESSION: i32 = 0;
/// Epoch of a full fetch that asks for a new session.
const INITIAL_EPOCH: i32 = 0;
/// Epoch of a full fetch that wants no session.
const FINAL_EPOCH: i32 = -1;
/// First Fetch version with session fields.
const SESSIONS_MIN_VERSION: i16 = 7;
/// A session unused this long may be evicted for a new one (Kafka's
/// `min.incremental.fetch.session.eviction.ms` default).
pub const EVICTION_IDLE: Duration = Duration::from_secs(120);

/// What a fetch request's session fields ask for, once checked against the cache.
pub enum FetchContext {
    /// Answer every requested partition. `create`: try to start a session afterwards.
    Full { create: bool },
    /// Fetch the session's partitions and answer those with news.
    Incremental {
        id: i32,
        session: Arc<Mutex<FetchSession>>,
    },
}

/// One partition of a session, keyed by topic name and partition index.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct PartitionKey {
    topic: Arc<str>,
    partition: i32,
}

/// A request's name for a session partition, for lookups without allocating. Hashes as
/// [`PartitionKey`] does (fields in the same order; `Arc<str>` hashes as its `str`).
#[derive(Hash)]
struct PartitionRef<'a> {
    topic: &'a str,
    partition: i32,
}

impl Equivalent<PartitionKey> for PartitionRef<'_> {
    fn equivalent(&self, key: &PartitionKey) -> bool {
        self.partition == key.partition && self.topic == &*key.topic
    }
}

/// What the session knows of one partition: the client's position and limit, and the
/// offsets last sent to it.
#[derive(Debug)]
struct CachedPartition {
    key: PartitionKey,
    fetch_offset: i64,
    max_bytes: u32,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    /// Its place in the session's order (ascending; a partition that returned records
    /// gets the next rank, after all others).
    rank: u64,
    /// The partition, once resolved and watched (resolved again if its topic is deleted).
    target: Option<PartitionHandle>,
}

impl CachedPartition {
    /// Records the answer about to be sent; true if the client must be told (records, an
    /// error, or an offset that moved).
    fn note_answer(&mut self, fetched: &FetchedPartition) -> bool {
        let moved = self.high_watermark != fetched.high_watermark
            || self.last_stable_offset != fetched.last_stable_offset
            || self.log_start_offset != fetched.log_start_offset;
        self.high_watermark = fetched.high_watermark;
        self.last_stable_offset = fetched.last_stable_offset;
        self.log_start_offset = fetched.log_start_offset;
        moved || fetched.error.is_some() || !fetched.records.is_empty()
    }

    /// Whether `asked` names this partition (by the same shared topic name).
    fn is(&self, asked: &FetchPartition) -> bool {
        self.key.partition == asked.partition as i32 && Arc::ptr_eq(&self.key.topic, &asked.topic)
    }
}

/// One client's fetch session. Each partition has a slot: its index in `partitions` and
/// its number in the session's watch.
#[derive(Debug)]
pub struct FetchSession {
    /// The epoch the next incremental fetch must carry.
    next_epoch: i32,
    /// The partitions by slot (`None`: a free slot); their ranks order them.
    partitions: Vec<Option<CachedPartition>>,
    /// Slots by name.
    slots: IndexMap<PartitionKey, u32>,
    /// Free slots, to reuse.
    free_slots: Vec<u32>,
    last_used: Instant,
    /// Tells which partitions changed, by slot.
    watch: PartitionWatch,
    /// Slots the next fetch must read: changed since their last answer, listed by the
    /// client, not resolved, or with records the client was not sent or an error last.
    due: SlotSet,
    /// The rank the next partition to move to the end of the order gets.
    next_rank: u64,
}

/// The partitions one pass of an incremental fetch reads, in session order.
#[derive(Debug, Default)]
pub struct SessionPass {
    /// What the core reads.
    pub wanted: Vec<FetchPartition>,
    /// Their handles (`None`: unknown).
    pub targets: Vec<Option<PartitionHandle>>,
    /// Their slots when the pass was planned.
    slots: Vec<u32>,
}

impl FetchSession {
    /// A session with no partitions, at epoch 1.
    fn new(now: Instant) -> Self {
        FetchSession {
            next_epoch: next_epoch(INITIAL_EPOCH),
            partitions: Vec::new(),
            slots: IndexMap::new(),
            free_slots: Vec::new(),
            last_used: now,
            watch: PartitionWatch::new(),
            due: SlotSet::default(),
            next_rank: 0,
        }
    }

    /// Partitions held.
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the session holds no partitions.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The partition named `key`, added last in the order if new (nothing sent yet, so
    /// its first answer is news). Either way it is due with the client's position.
    fn put(
        &mut self,
        key: PartitionRef<'_>,
        topic: &Arc<str>,
        fetch_offset: i64,
        max_bytes: u32,
    ) -> &mut CachedPartition {
        let slot = match self.slots.get(&key) {
            Some(&slot) => slot,
            None => {
                let slot = self
                    .free_slots
                    .pop()
                    .unwrap_or(self.partitions.len() as u32);
                let key = PartitionKey {
                    topic: topic.clone(),
                    partition: key.partition,
                };
                self.slots.insert(key.clone(), slot);
                let cached = CachedPartition {
                    key,
                    fetch_offset,
                    max_bytes,
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: -1,
                    rank: self.next_rank,
                    target: None,
                };
                self.next_rank += 1;
                if slot as usize == self.partitions.len() {
                    self.partitions.push(Some(cached));
                } else {
                    self.partitions[slot as usize] = Some(cached);
                }
                slot
            }
        };
        self.due.insert(slot);
        let cached = self.partitions[slot as usize]
            .as_mut()
            .expect("a named slot holds its partition");
        cached.fetch_offset = fetch_offset;
        cached.max_bytes = max_bytes;
        cached
    }

    /// Applies an incremental request: listed partitions are added or updated, forgotten
    /// ones removed (after the additions, as Kafka does). Partitions with a negative index
    /// name nothing and are not kept. Returns the change in the partition count.
    fn update(&mut self, topics: &[FetchTopic], forgotten: &[ForgottenTopic]) -> isize {
        let before = self.len() as isize;
        for topic in topics {
            let name = topic.topic.as_str();
            // Shared by the partitions this request adds.
            let shared: Arc<str> = Arc::from(name);
            for p in topic.partitions.iter().filter(|p| p.partition >= 0) {
                let key = PartitionRef {
                    topic: name,
                    partition: p.partition,
                };
                self.put(
                    key,
                    &shared,
                    p.fetch_offset,
                    p.partition_max_bytes.max(0) as u32,
                );
            }
        }
        for topic in forgotten {
            for &partition in &topic.partitions {
                let key = PartitionRef {
                    topic: topic.topic.as_str(),
                    partition,
                };
                if let Some(slot) = self.slots.swap_remove(&key) {
                    self.partitions[slot as usize] = None;
                    self.watch.unwatch(slot);
                    self.due.remove(slot);
                    self.free_slots.push(slot);
                }
            }
        }
        self.len() as isize - before
    }

    /// The partitions the next pass of a fetch must read (see the module doc), in session
    /// order. Partitions not resolved yet, or whose topic was deleted, are looked up with
    /// `resolve` and watched once found.
    pub fn plan(
        &mut self,
        mut resolve: impl FnMut(&str, u32) -> Option<PartitionHandle>,
    ) -> SessionPass {
        self.due.union(&self.watch.take_changed());
        let mut order: Vec<(u64, u32)> = Vec::new();
        let mut stale = Vec::new();
        for slot in self.due.iter() {
            match self.partitions.get(slot as usize) {
                Some(Some(cached)) => order.push((cached.rank, slot)),
                // Marked before it was forgotten.
                _ => stale.push(slot),
            }
        }
        for slot in stale {
            self.due.remove(slot);
        }
        order.sort_unstable();
        let mut pass = SessionPass::default();
        for (_, slot) in order {
            let Some(cached) = self.partitions[slot as usize].as_mut() else {
                continue;
            };
            if cached
                .target
                .as_ref()
                .is_none_or(PartitionHandle::is_deleted)
            {
                // Watched before it is read, so no change after the read is missed.
                if let Some(found) = resolve(&cached.key.topic, cached.key.partition as u32) {
                    self.watch.watch(slot, &found);
                    cached.target = Some(found);
                }
            }
            pass.wanted.push(FetchPartition {
                topic: cached.key.topic.clone(),
                partition: cached.key.partition as u32,
                offset: cached.fetch_offset,
                max_bytes: cached.max_bytes,
            });
            pass.targets.push(cached.target.clone());
            pass.slots.push(slot);
        }
        pass
    }

    /// The wake-up for changes to the session's partitions.
    pub fn signal(&self) -> ChangeSignal {
        self.watch.signal()
    }

    /// Keeps the answers the client must see, in session order, and records what it is
    /// told. Partitions that returned records move to the end of the order, in the order
    /// they were answered. `pass` is what [`plan`](Self::plan) gave and `fetched` the
    /// core's answers to it; a partition forgotten in between by another request is not
    /// answered.
    pub fn answer(
        &mut self,
        pass: SessionPass,
        fetched: Vec<FetchedPartition>,
    ) -> Vec<(FetchPartition, FetchedPartition)> {
        let mut answers = Vec::new();
        for ((asked, slot), fetched) in pass.wanted.into_iter().zip(pass.slots).zip(fetched) {
            // The planned slot holds the partition, unless another request forgot it in
            // between (and perhaps gave the slot to another).
            let slot = match self.partitions.get(slot as usize) {
                Some(Some(cached)) if cached.is(&asked) => slot,
                _ => {
                    let key = PartitionRef {
                        topic: &asked.topic,
                        partition: asked.partition as i32,
                    };
                    let Some(&slot) = self.slots.get(&key) else {
                        continue;
                    };
                    slot
                }
            };
            let Some(cached) = self.partitions[slot as usize].as_mut() else {
                continue;
            };
            let news = cached.note_answer(&fetched);
            // Read after its changes were taken, so what it says is current: due again
            // only if it cannot rest.
            let unsettled = fetched.error.is_some()
                || cached.target.is_none()
                || cached.fetch_offset < cached.high_watermark;
            if unsettled {
                self.due.insert(slot);
            } else {
                self.due.remove(slot);
            }
            if news {
                if !fetched.records.is_empty() {
                    cached.rank = self.next_rank;
                    self.next_rank += 1;
                }
                answers.push((asked, fetched));
            }
        }
        answers
    }
}

/// The broker's fetch sessions.
#[derive(Debug)]
pub struct FetchSessionCache {
    slots: usize,
    partitions_max: usize,
    state: Mutex<CacheState>,
}

#[derive(Debug)]
struct CacheState {
    sessions: HashMap<i32, Arc<Mutex<FetchSession>>>,
    /// Partitions held by all sessions together (as of their last request).
    partitions: usize,
    /// Where the search for a free session id starts (always positive).
    next_id: i32,
}

impl FetchSessionCache {
    /// A cache of at most `slots` sessions holding `partitions_max` partitions together.
    pub fn new(slots: usize, partitions_max: usize) -> Self {
        // Ids start at a random point, so that a client's session from before a restart is
        // unlikely to name a new one.
        let next_id = ((RandomState::new().hash_one(Instant::now()) as i32) & i32::MAX).max(1);
        FetchSessionCache {
            slots,
            partitions_max,
            state: Mutex::new(CacheState {
                sessions: HashMap::new(),
                partitions: 0,
                next_id,
            }),
        }
    }

    /// Checks a request's session fields and applies an incremental request to its
    /// session. The error is the whole response's: no such session, or the wrong epoch.
    pub fn context(
        &self,
        request: &FetchRequest,
        version: i16,
    ) -> Result<FetchContext, ResponseError> {
        if version < SESSIONS_MIN_VERSION {
            return Ok(FetchContext::Full { create: false });
        }
        let (id, epoch) = (request.session_id, request.session_epoch);
        if epoch == INITIAL_EPOCH || epoch == FINAL_EPOCH {
            // A full fetch closes the session it names (to start a new one, at epoch 0).
            if id != NO_SESSION {
                self.remove(id);
            }
            return Ok(FetchContext::Full {
                create: epoch == INITIAL_EPOCH,
            });
        }
        let mut state = self.state.lock();
        let session = state
            .sessions
            .get(&id)
            .cloned()
            .ok_or(ResponseError::FetchSessionIdNotFound)?;
        let mut locked = session.lock();
        if locked.next_epoch != epoch {
            return Err(ResponseError::InvalidFetchSessionEpoch);
        }
        let grown = locked.update(&request.topics, &request.forgotten_topics_data);
        let total = state.partitions.saturating_add_signed(grown);
        if total > self.partitions_max {
            // Growing past the cache's bound: the session goes, and the client starts over
            // with a full fetch (which gets a session only if there is room).
            let size = locked.len();
            drop(locked);
            state.sessions.remove(&id);
            state.partitions = total - size;
            return Err(ResponseError::FetchSessionIdNotFound);
        }
        state.partitions = total;
        locked.next_epoch = next_epoch(epoch);
        locked.last_used = Instant::now();
        drop(locked);
        Ok(FetchContext::Incremental { id, session })
    }

    /// Starts a session holding the partitions of a full fetch's answers, as answered.
    /// Returns its id, or [`NO_SESSION`] if the cache has no room for it.
    pub fn create(&self, answered: &[(FetchPartition, FetchedPartition)]) -> i32 {
        self.create_at(answered, Instant::now())
    }

    fn create_at(&self, answered: &[(FetchPartition, FetchedPartition)], now: Instant) -> i32 {
        let mut session = FetchSession::new(now);
        for (asked, fetched) in answered {
            let key = PartitionRef {
                topic: &asked.topic,
                partition: asked.partition as i32,
            };
            session
                .put(key, &asked.topic, asked.offset, asked.max_bytes)
                .note_answer(fetched);
        }
        let size = session.len();
        if self.slots == 0 || size > self.partitions_max {
            return NO_SESSION;
        }
        let mut state = self.state.lock();
        while state.sessions.len() >= self.slots || state.partitions + size > self.partitions_max {
            if !state.evict_one(size, now) {
                return NO_SESSION;
            }
        }
        let id = state.free_id();
        state.partitions += size;
        state.sessions.insert(id, Arc::new(Mutex::new(session)));
        id
    }

    /// Drops a session, if it exists.
    fn remove(&self, id: i32) {
        let mut state = self.state.lock();
        if let Some(session) = state.sessions.remove(&id) {
            let size = session.lock().len();
            state.partitions = state.partitions.saturating_sub(size);
        }
    }

    /// Sessions held now (for tests and metrics).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().sessions.len()
    }
}

impl CacheState {
    /// Evicts the session idle longest if it has been idle [`EVICTION_IDLE`], else the
    /// smallest one if a session of `size` partitions is larger. False if neither exists.
    fn evict_one(&mut self, size: usize, now: Instant) -> bool {
        let mut idlest: Option<(i32, Instant)> = None;
        let mut smallest: Option<(i32, usize)> = None;
        for (&id, session) in &self.sessions {
            let session = session.lock();
            if idlest.is_none_or(|(_, used)| session.last_used < used) {
                idlest = Some((id, session.last_used));
            }
            let len = session.len();
            if smallest.is_none_or(|(_, least)| len < least) {
                smallest = Some((id, len));
            }
        }
        let victim = match (idlest, smallest) {
            (Some((id, used)), _) if now.saturating_duration_since(used) >= EVICTION_IDLE => id,
            (_, Some((id, len))) if len < size => id,
            _ => return false,
        };
        if let Some(session) = self.sessions.remove(&victim) {
            let size = session.lock().len();
            self.partitions = self.partitions.saturating_sub(size);
        }
        true
    }

    /// A positive id no session has (there are far fewer sessions than ids).
    fn free_id(&mut self) -> i32 {
        loop {
            let id = self.next_id;
            self.next_id = if id == i32::MAX { 1 } else { id + 1 };
            if !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }
}

/// The epoch after `epoch`; after the largest comes 1 (0 means "new session").
pub fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_core::CoreError;
    use kafka_protocol::messages::fetch_request::FetchPartition as RequestPartition;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    fn topic(name: &str, partitions: &[(i32, i64)]) -> FetchTopic {
        FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(name.to_owned())))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&(partition, offset)| {
                        RequestPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(1024)
                    })
                    .collect(),
            )
    }

    fn forget(name: &str, partitions: &[i32]) -> ForgottenTopic {
        ForgottenTopic::default()
            .with_topic(TopicName(StrBytes::from_string(name.to_owned())))
            .with_partitions(partitions.to_vec())
    }

    fn request(id: i32, epoch: i32, topics: Vec<FetchTopic>) -> FetchRequest {
        FetchRequest::default()
            .with_session_id(id)
            .with_session_epoch(epoch)
            .with_topics(topics)
    }

    fn fetched(high_watermark: i64, records: &'static [u8]) -> FetchedPartition {
        FetchedPartition {
            error: None,
            high_watermark,
            last_stable_offset: high_watermark,
            log_start_offset: 0,
            records: Bytes::from_static(records).into(),
        }
    }

    /// The core's answer for a partition that no longer exists.
    fn gone() -> FetchedPartition {
        FetchedPartition {
            error: Some(CoreError::UnknownTopicOrPartition),
            log_start_offset: -1,
            ..fetched(-1, b"")
        }
    }

    fn asked(topic: &str, partition: u32, offset: i64) -> FetchPartition {
        FetchPartition {
            topic: Arc::from(topic),
            partition,
            offset,
            max_bytes: 1024,
        }
    }

    /// Starts a session over `t` partitions 0..n, all at offset 0 with high watermark 5.
    fn started(cache: &FetchSessionCache, n: u32) -> i32 {
        let answered: Vec<_> = (0..n)
            .map(|p| (asked("t", p, 0), fetched(5, b"")))
            .collect();
        cache.create(&answered)
    }

    fn incremental(
        cache: &FetchSessionCache,
        request: &FetchRequest,
    ) -> Result<Arc<Mutex<FetchSession>>, ResponseError> {
        match cache.context(request, 12)? {
            FetchContext::Incremental { session, .. } => Ok(session),
            FetchContext::Full { .. } => panic!("expected an incremental context"),
        }
    }

    /// A pass over every partition: none resolves, so each is due.
    fn every(session: &mut FetchSession) -> SessionPass {
        session.plan(|_, _| None)
    }

    fn names(pass: &SessionPass) -> Vec<(String, u32, i64)> {
        pass.wanted
            .iter()
            .map(|p| (p.topic.to_string(), p.partition, p.offset))
            .collect()
    }

    fn order(session: &mut FetchSession) -> Vec<u32> {
        every(session).wanted.iter().map(|p| p.partition).collect()
    }

    #[test]
    fn full_fetches_name_their_mode() {
        let cache = FetchSessionCache::new(10, 100);
        let create = |id, epoch, version| match cache.context(&request(id, epoch, vec![]), version)
        {
            Ok(FetchContext::Full { create }) => create,
            _ => panic!("expected a full fetch"),
        };
        assert!(create(NO_SESSION, INITIAL_EPOCH, 12));
        assert!(!create(NO_SESSION, FINAL_EPOCH, 12));
        // Before v7 there are no session fields: never a session.
        assert!(!create(NO_SESSION, INITIAL_EPOCH, 6));
    }

    #[test]
    fn incremental_fetches_check_the_session_and_its_epoch() {
        let cache = FetchSessionCache::new(10, 100);
        let id = started(&cache, 3);
        assert_ne!(id, NO_SESSION);
        assert_eq!(
            incremental(&cache, &request(id.wrapping_add(1), 1, vec![])).err(),
            Some(ResponseError::FetchSessionIdNotFound)
        );
        assert_eq!(
            incremental(&cache, &request(id, 2, vec![])).err(),
            Some(ResponseError::InvalidFetchSessionEpoch)
        );
        assert!(incremental(&cache, &request(id, 1, vec![])).is_ok());
        // The same epoch again is stale.
        assert_eq!(
            incremental(&cache, &request(id, 1, vec![])).err(),
            Some(ResponseError::InvalidFetchSessionEpoch)
        );
        assert!(incremental(&cache, &request(id, 2, vec![])).is_ok());
        // A full fetch naming the session closes it.
        assert!(matches!(
            cache.context(&request(id, FINAL_EPOCH, vec![]), 12),
            Ok(FetchContext::Full { create: false })
        ));
        assert_eq!(
            incremental(&cache, &request(id, 3, vec![])).err(),
            Some(ResponseError::FetchSessionIdNotFound)
        );
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn session_ids_are_positive_and_distinct() {
        let cache = FetchSessionCache::new(10, 100);
        cache.state.lock().next_id = i32::MAX - 1;
        let ids: Vec<i32> = (0..3).map(|_| started(&cache, 1)).collect();
        assert_eq!(ids, vec![i32::MAX - 1, i32::MAX, 1]);
        // A random start is positive.
        for _ in 0..100 {
            assert!(FetchSessionCache::new(1, 1).state.lock().next_id > 0);
        }
    }

    #[test]
    fn epochs_wrap_to_one() {
        assert_eq!(next_epoch(1), 2);
        assert_eq!(next_epoch(i32::MAX), 1);
    }

    #[test]
    fn requests_update_add_and_forget_partitions() {
        let cache = FetchSessionCache::new(10, 100);
        let id = started(&cache, 3);
        let changes = request(
            id,
            1,
            vec![topic("t", &[(1, 7)]), topic("u", &[(0, 2), (-1, 0)])],
        )
        .with_forgotten_topics_data(vec![forget("t", &[0]), forget("v", &[9])]);
        let session = incremental(&cache, &changes).unwrap();
        let pass = every(&mut session.lock());
        assert_eq!(
            names(&pass),
            vec![
                ("t".to_owned(), 1, 7),
                ("t".to_owned(), 2, 0),
                ("u".to_owned(), 0, 2),
            ]
        );
        assert_eq!(cache.state.lock().partitions, 3);
    }

    #[test]
    fn only_news_is_answered_and_served_partitions_go_last() {
        let cache = FetchSessionCache::new(10, 100);
        let id = started(&cache, 4);
        let session = incremental(&cache, &request(id, 1, vec![])).unwrap();
        let mut session = session.lock();
        let pass = every(&mut session);
        // p0: records; p1: nothing new; p2: high watermark moved; p3: an error.
        let answers = session.answer(
            pass,
            vec![
                fetched(6, b"batch"),
                fetched(5, b""),
                fetched(9, b""),
                gone(),
            ],
        );
        let answered: Vec<u32> = answers.iter().map(|(p, _)| p.partition).collect();
        assert_eq!(answered, vec![0, 2, 3]);
        assert_eq!(order(&mut session), vec![1, 2, 3, 0]);
        // The same offsets again are no news, except the error.
        let pass = every(&mut session);
        let answers = session.answer(
            pass,
            vec![fetched(5, b""), fetched(9, b""), gone(), fetched(6, b"")],
        );
        let answered: Vec<u32> = answers.iter().map(|(p, _)| p.partition).collect();
        assert_eq!(answered, vec![3]);
    }

    #[test]
    fn answers_follow_the_partitions_when_the_session_changed_in_between() {
        let cache = FetchSessionCache::new(10, 100);
        let id = started(&cache, 3);
        let session = incremental(&cache, &request(id, 1, vec![])).unwrap();
        let pass = every(&mut session.lock());
        // Another request forgets partition 0 while this one reads.
        let forget_first =
            request(id, 2, vec![]).with_forgotten_topics_data(vec![forget("t", &[0])]);
        incremental(&cache, &forget_first).unwrap();
        let answers = session.lock().answer(
            pass,
            vec![fetched(6, b"a"), fetched(5, b""), fetched(7, b"")],
        );
        let answered: Vec<u32> = answers.iter().map(|(p, _)| p.partition).collect();
        assert_eq!(answered, vec![2], "partition 0 is gone, 1 has no news");
        assert_eq!(order(&mut session.lock()), vec![1, 2]);
    }

    /// Partitions of `t` by index in `pass`.
    fn indexes(pass: &SessionPass) -> Vec<u32> {
        pass.wanted.iter().map(|p| p.partition).collect()
    }

    #[tokio::test]
    async fn a_fetch_reads_only_partitions_that_may_have_news() {
        use ferry_core::{Acks, Broker, BrokerConfig};
        use ferry_storage::batch::BatchBuilder;
        use std::collections::BTreeMap;

        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig::new(dir.path())).unwrap();
        broker
            .create_topic("t", Some(4), BTreeMap::new(), false)
            .unwrap();
        let produce = |partition| {
            let mut batch = BatchBuilder::new(1);
            batch.push(None, Some(Bytes::from_static(b"v")), Vec::new(), 1);
            broker.produce("t", partition, batch.build(), Acks::Leader)
        };
        let resolve = |topic: &str, partition| broker.partition_handle(topic, partition);
        let cache = FetchSessionCache::new(10, 100);
        let answered: Vec<_> = (0..4)
            .map(|p| (asked("t", p, 0), fetched(0, b"")))
            .collect();
        let id = cache.create(&answered);
        let session = incremental(&cache, &request(id, 1, vec![])).unwrap();
        let plan = || session.lock().plan(resolve);
        let answer = |pass, fetched| session.lock().answer(pass, fetched);
        // The first pass resolves and watches every partition, so it reads them all.
        let pass = plan();
        assert_eq!(indexes(&pass), vec![0, 1, 2, 3]);
        answer(pass, (0..4).map(|_| fetched(0, b"")).collect());
        // Nothing changed since: nothing to read.
        assert_eq!(indexes(&plan()), Vec::<u32>::new());

        produce(2).await.unwrap();
        assert_eq!(indexes(&plan()), vec![2], "only the partition appended to");
        // Not answered (the fetch was dropped, say): still due.
        let pass = plan();
        assert_eq!(indexes(&pass), vec![2]);
        answer(pass, vec![fetched(1, b"records")]);
        // The client has not moved on: records it was not sent keep the partition due.
        assert_eq!(indexes(&plan()), vec![2]);
        let moved = request(id, 2, vec![topic("t", &[(2, 1)])]);
        incremental(&cache, &moved).unwrap();
        // Listed by the client: read once more, then quiet.
        let pass = plan();
        assert_eq!(indexes(&pass), vec![2]);
        answer(pass, vec![fetched(1, b"")]);
        assert_eq!(indexes(&plan()), Vec::<u32>::new());
        broker.shutdown().await.unwrap();
    }

    #[test]
    fn a_full_cache_evicts_a_smaller_session_or_refuses() {
        let cache = FetchSessionCache::new(2, 100);
        let small = started(&cache, 1);
        let large = started(&cache, 5);
        assert_eq!(cache.len(), 2);
        // Not larger than the smallest (1): refused.
        assert_eq!(started(&cache, 1), NO_SESSION);
        // Larger: the smallest goes.
        let newer = started(&cache, 3);
        assert_ne!(newer, NO_SESSION);
        assert_eq!(
            incremental(&cache, &request(small, 1, vec![])).err(),
            Some(ResponseError::FetchSessionIdNotFound)
        );
        assert!(incremental(&cache, &request(large, 1, vec![])).is_ok());
        assert_eq!(cache.state.lock().partitions, 8);
    }

    #[test]
    fn idle_sessions_are_evicted_first() {
        let cache = FetchSessionCache::new(2, 100);
        let idle = started(&cache, 5);
        let busy = started(&cache, 5);
        let later = Instant::now() + EVICTION_IDLE;
        let one = [(asked("t", 0, 0), fetched(5, b""))];
        assert_ne!(cache.create_at(&one, later), NO_SESSION);
        assert_eq!(
            incremental(&cache, &request(idle, 1, vec![])).err(),
            Some(ResponseError::FetchSessionIdNotFound)
        );
        assert!(incremental(&cache, &request(busy, 1, vec![])).is_ok());
    }

    #[test]
    fn the_partition_budget_bounds_creation_and_growth() {
        let cache = FetchSessionCache::new(10, 6);
        assert_eq!(started(&cache, 7), NO_SESSION);
        let id = started(&cache, 4);
        // A larger session evicts the smaller one to fit.
        let other = started(&cache, 5);
        assert_ne!(other, NO_SESSION);
        assert_eq!(cache.len(), 1);
        assert_eq!(
            incremental(&cache, &request(id, 1, vec![])).err(),
            Some(ResponseError::FetchSessionIdNotFound)
        );
        // Growing past the budget drops the session.
        let grow = request(other, 1, vec![topic("u", &[(0, 0), (1, 0)])]);
        assert_eq!(
            incremental(&cache, &grow).err(),
            Some(ResponseError::FetchSessionIdNotFound)
        );
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.state.lock().partitions, 0);
    }
}
