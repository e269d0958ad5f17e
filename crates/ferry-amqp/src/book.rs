//! Channel bookkeeping that exists only in the protocol: delivery tags, the unacknowledged
//! deliveries they name, prefetch credit (per consumer and channel-wide, as RabbitMQ 3.x's
//! `basic.qos` global=false / global=true), and the coalescing of publisher confirms.
//!
//! Per-consumer credit is reserved here and granted to the queue ahead of deliveries; the
//! channel-wide limit is a [`SharedLimit`] the queues take from as they hand messages out
//! (so a consumer of an idle queue holds none of it), given back here on settlement.
//!
//! Generic over the queue handle so it is unit-tested without a broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::queue::{DeliveryId, SharedLimit};

/// One delivered, not yet settled message.
#[derive(Clone, Debug)]
pub struct Unacked<Q> {
    /// The queue to ack or reject on.
    pub queue: Q,
    /// What to ack or reject.
    pub id: DeliveryId,
    /// The consumer whose credit it holds (`None` for `basic.get`).
    pub consumer: Option<Arc<str>>,
    /// When the consumer acknowledgement timeout fires.
    pub deadline: Instant,
    /// That timeout, for the error text.
    pub timeout_ms: u64,
}

#[derive(Debug)]
struct Credit {
    /// Most unacked deliveries (0: unlimited).
    limit: u16,
    /// Unacked plus reserved deliveries.
    outstanding: u32,
}

/// Delivery tags, unacked deliveries and prefetch credit of one channel.
#[derive(Debug)]
pub struct DeliveryBook<Q> {
    last_tag: u64,
    unacked: BTreeMap<u64, Unacked<Q>>,
    /// Channel-wide limit (`basic.qos` global=true), shared with the channel's consumers.
    global: Arc<SharedLimit>,
    /// Per-consumer limits and counts, by consumer tag.
    consumers: HashMap<Arc<str>, Credit>,
}

impl<Q> Default for DeliveryBook<Q> {
    fn default() -> Self {
        DeliveryBook {
            last_tag: 0,
            unacked: BTreeMap::new(),
            global: Arc::default(),
            consumers: HashMap::new(),
        }
    }
}

impl<Q: Clone> DeliveryBook<Q> {
    /// Sets the channel-wide prefetch limit.
    pub fn set_global_limit(&mut self, limit: u16) {
        self.global.set_limit(u32::from(limit));
    }

    /// The channel-wide limit, for the consumers' queues to take from.
    pub fn global_limit(&self) -> &Arc<SharedLimit> {
        &self.global
    }

    /// Registers a consumer with its prefetch limit (0: unlimited).
    pub fn add_consumer(&mut self, tag: Arc<str>, limit: u16) {
        self.consumers.insert(
            tag,
            Credit {
                limit,
                outstanding: 0,
            },
        );
    }

    /// Forgets a consumer's credit (its unacked deliveries stay, still ackable).
    pub fn remove_consumer(&mut self, tag: &str) {
        self.consumers.remove(tag);
    }

    /// Takes one unit of credit for `consumer` if its own limit allows it.
    pub fn try_reserve(&mut self, consumer: &str) -> bool {
        let Some(credit) = self.consumers.get_mut(consumer) else {
            return false;
        };
        if credit.limit != 0 && credit.outstanding >= u32::from(credit.limit) {
            return false;
        }
        credit.outstanding += 1;
        true
    }

    /// Reserves for `consumer` until it holds `window` reservations, or its limit stops it;
    /// how many were added to the `held` it had.
    pub fn top_up(&mut self, consumer: &str, held: u32, window: u32) -> u32 {
        let mut added = 0;
        while held + added < window && self.try_reserve(consumer) {
            added += 1;
        }
        added
    }

    /// Gives back a reservation that was not used.
    pub fn release(&mut self, consumer: &str) {
        if let Some(credit) = self.consumers.get_mut(consumer) {
            credit.outstanding = credit.outstanding.saturating_sub(1);
        }
    }

    /// The next delivery tag, without recording anything (no-ack deliveries).
    pub fn next_tag(&mut self) -> u64 {
        self.last_tag += 1;
        self.last_tag
    }

    /// Records an unacked delivery (a consumer's reservation becomes it); its tag.
    pub fn record(
        &mut self,
        queue: Q,
        id: DeliveryId,
        consumer: Option<Arc<str>>,
        timeout_ms: u64,
        now: Instant,
    ) -> u64 {
        let tag = self.next_tag();
        self.unacked.insert(
            tag,
            Unacked {
                queue,
                id,
                consumer,
                deadline: now + Duration::from_millis(timeout_ms),
                timeout_ms,
            },
        );
        tag
    }

    /// Settles `tag` (and with `multiple` every tag below it; tag 0 with `multiple` is
    /// everything), releasing credit. `None` if `tag` is not unacked: RabbitMQ's
    /// `unknown delivery tag`.
    pub fn take(&mut self, tag: u64, multiple: bool) -> Option<Vec<Unacked<Q>>> {
        self.take_with_tags(tag, multiple)
            .map(|taken| taken.into_iter().map(|(_, u)| u).collect())
    }

    /// [`DeliveryBook::take`], keeping each delivery's tag (a rolled-back transaction
    /// puts them back with [`DeliveryBook::restore`]).
    pub fn take_with_tags(&mut self, tag: u64, multiple: bool) -> Option<Vec<(u64, Unacked<Q>)>> {
        let taken: Vec<u64> = if multiple && tag == 0 {
            self.unacked.keys().copied().collect()
        } else {
            if !self.unacked.contains_key(&tag) {
                return None;
            }
            if multiple {
                self.unacked.range(..=tag).map(|(t, _)| *t).collect()
            } else {
                vec![tag]
            }
        };
        let mut out = Vec::with_capacity(taken.len());
        for t in taken {
            if let Some(u) = self.unacked.remove(&t) {
                self.release_for(&u);
                out.push((t, u));
            }
        }
        Some(out)
    }

    /// Settles everything (channel close, recover).
    pub fn take_all(&mut self) -> Vec<Unacked<Q>> {
        self.take(0, true).unwrap_or_default()
    }

    /// Puts back deliveries taken for a transaction that was rolled back.
    pub fn restore(&mut self, tag: u64, entry: Unacked<Q>) {
        if let Some(consumer) = &entry.consumer {
            if let Some(credit) = self.consumers.get_mut(consumer) {
                credit.outstanding += 1;
            }
            self.global.take();
        }
        self.unacked.insert(tag, entry);
    }

    /// A settled consumer delivery frees its consumer's credit and its share of the
    /// channel-wide limit (taken when its queue handed it out).
    fn release_for(&mut self, entry: &Unacked<Q>) {
        if let Some(consumer) = &entry.consumer {
            self.release(consumer);
            self.global.give_back(1);
        }
    }

    /// The timeout (ms) of the oldest delivery whose acknowledgement is overdue.
    pub fn overdue(&self, now: Instant) -> Option<u64> {
        self.unacked
            .values()
            .find(|u| u.deadline <= now)
            .map(|u| u.timeout_ms)
    }

    /// Unacked deliveries.
    #[cfg(test)]
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }
}

/// Sequence numbers and outcomes of publisher confirms as frames: runs of equal outcomes
/// become one `multiple` frame. Input in sequence order, each `(seq, ack)`; output
/// `(delivery_tag, multiple, ack)`.
pub fn coalesce_confirms(outcomes: &[(u64, bool)]) -> Vec<(u64, bool, bool)> {
    let mut frames = Vec::new();
    let mut i = 0;
    while i < outcomes.len() {
        let (_, ack) = outcomes[i];
        let mut j = i;
        while j + 1 < outcomes.len() && outcomes[j + 1].1 == ack {
            j += 1;
        }
        frames.push((outcomes[j].0, j > i, ack));
        i = j + 1;
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(offset: i64) -> DeliveryId {
        DeliveryId { level: 0, offset }
    }

    #[test]
    fn tags_acks_and_unknown_tags() {
        let now = Instant::now();
        let mut book: DeliveryBook<u8> = DeliveryBook::default();
        let c: Arc<str> = Arc::from("c1");
        book.add_consumer(c.clone(), 0);
        let tags: Vec<u64> = (0..5)
            .map(|i| {
                assert!(book.try_reserve("c1"));
                book.record(1, id(i), Some(c.clone()), 1000, now)
            })
            .collect();
        assert_eq!(tags, vec![1, 2, 3, 4, 5]);
        // Single ack.
        let taken = book.take(2, false).expect("known");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].id, id(1));
        // Unknown (already acked) tag.
        assert!(book.take(2, false).is_none());
        assert!(
            book.take(2, true).is_none(),
            "multiple still needs the tag itself"
        );
        // Multiple up to 4: tags 1, 3, 4.
        let taken = book.take(4, true).expect("known");
        assert_eq!(
            taken.iter().map(|u| u.id.offset).collect::<Vec<_>>(),
            vec![0, 2, 3]
        );
        // multiple with tag 0: everything left.
        assert_eq!(book.take(0, true).expect("all").len(), 1);
        assert_eq!(book.unacked_len(), 0);
        // A no-ack delivery takes a tag without being recorded.
        assert_eq!(book.next_tag(), 6);
        assert!(book.take(6, false).is_none());
    }

    #[test]
    fn top_up_reserves_to_the_window_within_the_limits() {
        let mut book: DeliveryBook<u8> = DeliveryBook::default();
        book.add_consumer(Arc::from("limited"), 5);
        book.add_consumer(Arc::from("unlimited"), 0);
        assert_eq!(book.top_up("limited", 0, 32), 5, "per-consumer limit 5");
        assert_eq!(book.top_up("limited", 5, 32), 0);
        assert_eq!(book.top_up("unlimited", 0, 8), 8, "the window");
        assert_eq!(book.top_up("unlimited", 6, 8), 2);
        assert_eq!(book.top_up("missing", 0, 8), 0);
        // The channel-wide limit is not reserved ahead: it is taken at hand-out.
        book.set_global_limit(1);
        book.add_consumer(Arc::from("shared"), 0);
        assert_eq!(book.top_up("shared", 0, 32), 32);
    }

    #[test]
    fn prefetch_per_consumer_and_global() {
        let now = Instant::now();
        let mut book: DeliveryBook<u8> = DeliveryBook::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        book.add_consumer(a.clone(), 2);
        book.add_consumer(b.clone(), 0);
        assert!(book.try_reserve("a"));
        assert!(book.try_reserve("a"));
        assert!(!book.try_reserve("a"), "per-consumer limit 2");
        assert!(book.try_reserve("b"));
        book.release("b");
        // The channel-wide limit of 3, taken by the queues as they hand messages out.
        book.set_global_limit(3);
        let global = book.global_limit().clone();
        let mut tags = Vec::new();
        for (n, consumer) in [&a, &a, &b].into_iter().enumerate() {
            assert!(global.try_take());
            tags.push(book.record(0, id(n as i64), Some(consumer.clone()), 10, now));
        }
        assert!(
            !global.has_room() && !global.try_take(),
            "channel-wide limit 3"
        );
        // Acking one of a's frees a's credit and a share of the channel's.
        book.take(tags[0], false).expect("known");
        assert!(book.try_reserve("a"));
        assert!(global.try_take());
        tags.push(book.record(0, id(3), Some(a.clone()), 10, now));
        // A rolled-back transaction's delivery takes its share back, even over the limit.
        let (tag, entry) = book
            .take_with_tags(tags[2], false)
            .expect("known")
            .remove(0);
        assert!(global.has_room());
        book.restore(tag, entry);
        assert!(!global.has_room());
        // basic.get deliveries count against no limit.
        book.take(0, true).expect("all");
        let get = book.record(0, id(9), None, 10, now);
        book.take(get, false).expect("known");
        assert!(global.try_take() && global.try_take() && global.try_take());
        assert!(!global.try_take());
        // Unknown consumers have no credit.
        assert!(!book.try_reserve("zzz"));
    }

    #[test]
    fn overdue_and_restore() {
        let now = Instant::now();
        let mut book: DeliveryBook<u8> = DeliveryBook::default();
        let t = book.record(0, id(1), None, 50, now);
        assert_eq!(book.overdue(now), None);
        assert_eq!(book.overdue(now + Duration::from_millis(60)), Some(50));
        let taken = book.take(t, false).expect("known");
        assert_eq!(book.overdue(now + Duration::from_millis(60)), None);
        for entry in taken {
            book.restore(t, entry);
        }
        assert_eq!(book.unacked_len(), 1);
        assert!(book.take(t, false).is_some());
    }

    #[test]
    fn confirms_coalesce_in_order() {
        assert_eq!(coalesce_confirms(&[]), vec![]);
        assert_eq!(coalesce_confirms(&[(1, true)]), vec![(1, false, true)]);
        assert_eq!(
            coalesce_confirms(&[(1, true), (2, true), (3, true)]),
            vec![(3, true, true)]
        );
        assert_eq!(
            coalesce_confirms(&[(4, true), (5, false), (6, false), (7, true)]),
            vec![(4, false, true), (6, true, false), (7, false, true)]
        );
    }
}
