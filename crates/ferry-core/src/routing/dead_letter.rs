//! Dead-lettering as RabbitMQ 3.10 does it: the `x-death` header, the routing keys a dead
//! letter is published with, and the rule that drops automatic dead-letter cycles.
//!
//! `x-death` is an array of tables, newest first, one per (queue, reason): `count` (long),
//! `reason`, `queue`, `time` (timestamp, seconds), `exchange`, `routing-keys` (the
//! original routing key and CC keys) and `original-expiration` when the message had a
//! per-message TTL (the `expiration` property itself is removed). A repeated death for the
//! same (queue, reason) only increments that entry's count and moves it to the front.
//! The first death also sets `x-first-death-reason`, `-queue` and `-exchange`.

use bytes::Bytes;

use crate::message::{FieldTable, FieldValue, Message};
use crate::mq::MqError;
use crate::queue::{DeadLetterReason, QueueSettings};

/// `CC` header: extra routing keys, kept on the message.
pub(crate) const CC_HEADER: &str = "CC";
/// `BCC` header: extra routing keys, removed from the message before it is queued.
pub(crate) const BCC_HEADER: &str = "BCC";

fn long_string(s: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
}

fn as_str(value: &FieldValue) -> Option<&str> {
    match value {
        FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
        FieldValue::ShortString(s) => Some(s),
        _ => None,
    }
}

/// The routing keys in a `CC` or `BCC` header: long strings in an array (other items are
/// skipped). Any other header type is RabbitMQ's PRECONDITION_FAILED
/// `invalid message: {unacceptable_type_in_header,"CC",longstr}`.
pub(crate) fn header_routes<'a>(
    headers: Option<&'a FieldTable>,
    name: &str,
) -> Result<Vec<&'a str>, MqError> {
    match headers.and_then(|h| h.get(name)) {
        None => Ok(Vec::new()),
        Some(FieldValue::Array(items)) => Ok(items
            .iter()
            .filter_map(|item| match item {
                FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
                _ => None,
            })
            .collect()),
        Some(other) => Err(MqError::PreconditionFailed(format!(
            "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
            crate::queue::type_name(other)
        ))),
    }
}

/// A dead letter ready to publish: the rewritten message and its routing keys.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    /// The message as it goes to the dead-letter exchange (its `exchange` is the DLX).
    pub message: Message,
    /// Routing keys to route with: the dead-letter routing key, or the original keys.
    pub routing_keys: Vec<String>,
}

/// Rewrites `message`, which left `queue` for `reason`, into the dead letter sent to the
/// queue's dead-letter exchange; `None` if the queue has none. `now_secs` stamps `time`.
pub(crate) fn make_dead_letter(
    queue: &str,
    settings: &QueueSettings,
    mut message: Message,
    reason: DeadLetterReason,
    now_secs: u64,
) -> Option<DeadLetter> {
    let dlx = settings.dead_letter_exchange.clone()?;
    let headers = message.properties.headers.take().unwrap_or_default();
    // A stored message passed the publish-time check; one written by another protocol
    // with an odd `CC` header just has no CC keys.
    let cc: Vec<String> = header_routes(Some(&headers), CC_HEADER)
        .unwrap_or_default()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut death_keys = vec![message.routing_key.clone()];
    death_keys.extend(cc.iter().cloned());

    let mut info: Vec<(String, FieldValue)> = vec![
        ("reason".into(), long_string(reason.as_str())),
        ("queue".into(), long_string(queue)),
        ("time".into(), FieldValue::Timestamp(now_secs)),
        ("exchange".into(), long_string(&message.exchange)),
        (
            "routing-keys".into(),
            FieldValue::Array(death_keys.iter().map(|k| long_string(k)).collect()),
        ),
    ];
    if let Some(expiration) = message.properties.expiration.take() {
        info.push(("original-expiration".into(), long_string(&expiration)));
    }
    let mut headers = update_x_death(headers, queue, reason, &message.exchange, info);

    let routing_keys = match &settings.dead_letter_routing_key {
        Some(key) => {
            // A dead-letter routing key replaces the keys, CC included.
            headers.shift_remove(CC_HEADER);
            vec![key.clone()]
        }
        None => death_keys,
    };
    sort_table(&mut headers);
    message.properties.headers = Some(headers);
    message.exchange = dlx;
    message.routing_key = routing_keys[0].clone();
    Some(DeadLetter {
        message,
        routing_keys,
    })
}

/// RabbitMQ keeps header tables sorted by key once it has touched them.
fn sort_table(table: &mut FieldTable) {
    table.sort_by(|a, _, b, _| a.as_bytes().cmp(b.as_bytes()));
}

fn update_x_death(
    mut headers: FieldTable,
    queue: &str,
    reason: DeadLetterReason,
    exchange: &str,
    info: Vec<(String, FieldValue)>,
) -> FieldTable {
    let existing = match headers.get("x-death") {
        Some(FieldValue::Array(items)) => Some(items.clone()),
        _ => None,
    };
    let Some(deaths) = existing else {
        // The first death: also record where it all started.
        let mut entry = FieldTable::new();
        entry.insert("count".into(), FieldValue::I64(1));
        entry.extend(info);
        headers.insert(
            "x-death".into(),
            FieldValue::Array(vec![FieldValue::Table(entry)]),
        );
        headers.insert("x-first-death-reason".into(), long_string(reason.as_str()));
        headers.insert("x-first-death-queue".into(), long_string(queue));
        headers.insert("x-first-death-exchange".into(), long_string(exchange));
        return headers;
    };
    let is_match = |item: &FieldValue| match item {
        FieldValue::Table(t) => {
            t.get("queue").and_then(as_str) == Some(queue)
                && t.get("reason").and_then(as_str) == Some(reason.as_str())
        }
        _ => false,
    };
    let mut matched = None;
    let mut others = Vec::with_capacity(deaths.len());
    for item in deaths {
        if matched.is_none() && is_match(&item) {
            matched = Some(item);
        } else {
            others.push(item);
        }
    }
    let mut entry = match matched {
        Some(FieldValue::Table(mut entry)) => {
            // Only the count changes: time, exchange and keys stay those of the first
            // death of this kind.
            let count = match entry.get("count") {
                Some(FieldValue::I64(n)) => n.saturating_add(1),
                _ => 1,
            };
            entry.insert("count".into(), FieldValue::I64(count));
            entry
        }
        _ => {
            let mut entry = FieldTable::new();
            entry.insert("count".into(), FieldValue::I64(1));
            entry.extend(info);
            entry
        }
    };
    sort_table(&mut entry);
    let mut deaths = Vec::with_capacity(others.len() + 1);
    deaths.push(FieldValue::Table(entry));
    deaths.extend(others);
    headers.insert("x-death".into(), FieldValue::Array(deaths));
    headers
}

/// Whether delivering a dead letter to `target` closes a cycle made only of automatic
/// deaths (expiry, length limits): RabbitMQ drops such a message for that queue instead of
/// looping forever. A rejection anywhere in the cycle means a client is involved, and the
/// message goes on.
pub(crate) fn is_cycle(
    headers: Option<&FieldTable>,
    reason: DeadLetterReason,
    target: &str,
) -> bool {
    if reason == DeadLetterReason::Rejected {
        return false;
    }
    let Some(FieldValue::Array(deaths)) = headers.and_then(|h| h.get("x-death")) else {
        return false;
    };
    let queue_of = |item: &FieldValue| match item {
        FieldValue::Table(t) => t.get("queue").and_then(as_str).map(str::to_string),
        _ => None,
    };
    let Some(position) = deaths
        .iter()
        .position(|item| queue_of(item).as_deref() == Some(target))
    else {
        return false;
    };
    deaths[..=position].iter().all(|item| match item {
        FieldValue::Table(t) => t.get("reason").and_then(as_str) != Some("rejected"),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Properties;
    use crate::queue::{Overflow, QueueType};

    fn settings(dlx: Option<&str>, dlrk: Option<&str>) -> QueueSettings {
        QueueSettings {
            queue_type: QueueType::Classic,
            durable: false,
            exclusive: None,
            auto_delete: false,
            message_ttl_ms: None,
            expires_ms: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: dlx.map(str::to_string),
            dead_letter_routing_key: dlrk.map(str::to_string),
            max_priority: None,
            single_active_consumer: false,
            consumer_timeout_ms: None,
            arguments: FieldTable::new(),
        }
    }

    fn message(exchange: &str, key: &str, headers: Option<FieldTable>) -> Message {
        Message {
            exchange: exchange.into(),
            routing_key: key.into(),
            properties: Properties {
                headers,
                expiration: Some("10".into()),
                priority: Some(3),
                ..Properties::default()
            },
            body: Bytes::from_static(b"m"),
        }
    }

    fn strings(value: &FieldValue) -> Vec<String> {
        match value {
            FieldValue::Array(items) => items
                .iter()
                .map(|i| as_str(i).unwrap_or_default().to_string())
                .collect(),
            _ => panic!("not an array: {value:?}"),
        }
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m.properties.headers.as_ref().unwrap().get("x-death") {
            Some(FieldValue::Array(items)) => items
                .iter()
                .map(|i| match i {
                    FieldValue::Table(t) => t.clone(),
                    _ => panic!(),
                })
                .collect(),
            other => panic!("no x-death: {other:?}"),
        }
    }

    #[test]
    fn first_death_shape() {
        let cc = FieldTable::from([("CC".to_string(), FieldValue::Array(vec![long_string("k2")]))]);
        let dead = make_dead_letter(
            "qa",
            &settings(Some("dlx"), None),
            message("amq.direct", "k1", Some(cc)),
            DeadLetterReason::Expired,
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(dead.routing_keys, ["k1", "k2"]);
        assert_eq!(dead.message.exchange, "dlx");
        assert_eq!(dead.message.routing_key, "k1");
        assert_eq!(dead.message.properties.expiration, None);
        assert_eq!(dead.message.properties.priority, Some(3));
        let headers = dead.message.properties.headers.as_ref().unwrap();
        let keys: Vec<&str> = headers.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "CC",
                "x-death",
                "x-first-death-exchange",
                "x-first-death-queue",
                "x-first-death-reason"
            ]
        );
        let death = &deaths(&dead.message)[0];
        let fields: Vec<&str> = death.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "count",
                "reason",
                "queue",
                "time",
                "exchange",
                "routing-keys",
                "original-expiration"
            ]
        );
        assert_eq!(death["count"], FieldValue::I64(1));
        assert_eq!(death["reason"], long_string("expired"));
        assert_eq!(death["queue"], long_string("qa"));
        assert_eq!(death["time"], FieldValue::Timestamp(1_700_000_000));
        assert_eq!(death["exchange"], long_string("amq.direct"));
        assert_eq!(strings(&death["routing-keys"]), ["k1", "k2"]);
        assert_eq!(death["original-expiration"], long_string("10"));
        assert_eq!(headers["x-first-death-reason"], long_string("expired"));
    }

    #[test]
    fn repeated_death_increments_and_moves_first() {
        let s = settings(Some("dlx"), Some("retry"));
        let first = make_dead_letter(
            "qa",
            &s,
            message("", "qa", None),
            DeadLetterReason::Rejected,
            1,
        )
        .unwrap();
        assert_eq!(first.routing_keys, ["retry"]);
        let mut m = first.message;
        m.exchange = "".into();
        m.routing_key = "qb".into();
        let second = make_dead_letter("qb", &s, m, DeadLetterReason::Expired, 2).unwrap();
        let mut m = second.message;
        m.routing_key = "qa".into();
        let third = make_dead_letter("qa", &s, m, DeadLetterReason::Rejected, 3).unwrap();
        let d = deaths(&third.message);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0]["queue"], long_string("qa"));
        assert_eq!(d[0]["count"], FieldValue::I64(2));
        // The first death's time and keys stay; the entry's fields are now sorted.
        assert_eq!(d[0]["time"], FieldValue::Timestamp(1));
        let fields: Vec<&str> = d[0].keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "count",
                "exchange",
                "original-expiration",
                "queue",
                "reason",
                "routing-keys",
                "time"
            ]
        );
        assert_eq!(d[1]["queue"], long_string("qb"));
        let headers = third.message.properties.headers.as_ref().unwrap();
        assert_eq!(headers["x-first-death-queue"], long_string("qa"));
        assert_eq!(headers["x-first-death-reason"], long_string("rejected"));
    }

    #[test]
    fn no_dlx_no_dead_letter_and_dlrk_drops_cc() {
        assert!(make_dead_letter(
            "q",
            &settings(None, None),
            message("", "q", None),
            DeadLetterReason::MaxLen,
            0
        )
        .is_none());
        let cc = FieldTable::from([("CC".to_string(), FieldValue::Array(vec![long_string("k2")]))]);
        let dead = make_dead_letter(
            "q",
            &settings(Some("dlx"), Some("new")),
            message("x", "k1", Some(cc)),
            DeadLetterReason::MaxLen,
            0,
        )
        .unwrap();
        let headers = dead.message.properties.headers.as_ref().unwrap();
        assert!(!headers.contains_key("CC"));
        assert_eq!(
            strings(&deaths(&dead.message)[0]["routing-keys"]),
            ["k1", "k2"]
        );
        assert_eq!(dead.message.routing_key, "new");
    }

    #[test]
    fn automatic_cycles_are_detected() {
        let s = settings(Some("dlx"), None);
        // Expired from qa, routed back to qa: a cycle.
        let dead = make_dead_letter(
            "qa",
            &s,
            message("", "qa", None),
            DeadLetterReason::Expired,
            0,
        )
        .unwrap();
        let h = dead.message.properties.headers.as_ref();
        assert!(is_cycle(h, DeadLetterReason::Expired, "qa"));
        assert!(!is_cycle(h, DeadLetterReason::Expired, "qb"));
        assert!(!is_cycle(h, DeadLetterReason::Rejected, "qa"));
        // Rejected from work, then expired from the retry queue back to work: not a
        // cycle (a client rejected it), so retry patterns work.
        let rejected = make_dead_letter(
            "work",
            &s,
            message("", "work", None),
            DeadLetterReason::Rejected,
            0,
        )
        .unwrap();
        let expired =
            make_dead_letter("retry", &s, rejected.message, DeadLetterReason::Expired, 0).unwrap();
        let h = expired.message.properties.headers.as_ref();
        assert!(!is_cycle(h, DeadLetterReason::Expired, "work"));
        assert!(is_cycle(h, DeadLetterReason::Expired, "retry"));
    }
}
