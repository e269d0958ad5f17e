//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of what the core knows:
//! topics, partitions and their offsets and sizes, vhosts, queue depths and consumers,
//! users, memory, disk and alarms, and each protocol listener's connections.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use ferry_core::alarm::Usage;
use ferry_core::Broker;

use crate::AppState;

/// Content type of the Prometheus text format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` (no authentication, like RabbitMQ's Prometheus endpoint).
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        render(&state.broker),
    )
}

/// The whole exposition text.
pub(crate) fn render(broker: &Broker) -> String {
    let mut out = Exposition::default();
    let topics = broker.topics();
    let partitions: u64 = topics.iter().map(|t| u64::from(t.partitions)).sum();
    out.gauge(
        "ferry_topics",
        "Topics (internal logs excluded).",
        topics.len() as f64,
    );
    out.gauge(
        "ferry_partitions",
        "Partitions of all topics.",
        partitions as f64,
    );
    out.gauge(
        "ferry_users",
        "Users of the queue model (AMQP).",
        broker.auth().users().len() as f64,
    );

    let mut start = Family::new(
        "ferry_partition_log_start_offset",
        "First offset still stored in a partition.",
    );
    let mut end = Family::new(
        "ferry_partition_log_end_offset",
        "Offset the next record appended to a partition gets (counts every record ever appended).",
    );
    let mut size = Family::new(
        "ferry_partition_size_bytes",
        "Bytes stored by a partition's log segments.",
    );
    for topic in &topics {
        for index in 0..topic.partitions {
            let labels = [
                ("topic", topic.name.as_str()),
                ("partition", &index.to_string()),
            ]
            .map(|(k, v)| (k, v.to_owned()));
            // A partition deleted meanwhile is left out.
            if let Ok(offsets) = broker.partition_offsets(&topic.name, index) {
                start.sample(&labels, offsets.log_start_offset as f64);
                end.sample(&labels, offsets.log_end_offset as f64);
            }
            if let Ok(bytes) = broker.partition_size_bytes(&topic.name, index) {
                size.sample(&labels, bytes as f64);
            }
        }
    }
    for family in [start, end, size] {
        out.family(family);
    }

    let mut names = broker.vhosts().names();
    names.sort();
    out.gauge("ferry_vhosts", "Virtual hosts.", names.len() as f64);
    let mut messages = Family::new(
        "ferry_queue_messages",
        "Messages ready for delivery in a queue.",
    );
    let mut consumers = Family::new("ferry_queue_consumers", "Consumers of a queue.");
    for vhost in names.iter().filter_map(|n| broker.vhosts().get(n).ok()) {
        for queue in vhost.queues() {
            let labels = [("vhost", vhost.name().to_owned()), ("queue", queue.name)];
            messages.sample(&labels, queue.messages as f64);
            consumers.sample(&labels, f64::from(queue.consumers));
        }
    }
    out.family(messages);
    out.family(consumers);

    let usage = Usage::sample(&broker.config().data_dir);
    let limits = broker.alarm_limits();
    if let Some(resident) = usage.resident_bytes {
        out.gauge(
            "ferry_resident_memory_bytes",
            "Resident memory of the broker process.",
            resident as f64,
        );
    }
    out.gauge(
        "ferry_memory_high_watermark_bytes",
        "Resident memory above which the memory alarm blocks publishers.",
        limits.memory_high_watermark_bytes as f64,
    );
    if let Some(free) = usage.disk_free_bytes {
        out.gauge(
            "ferry_disk_free_bytes",
            "Free space of the data directory's file system.",
            free as f64,
        );
    }
    out.gauge(
        "ferry_disk_free_limit_bytes",
        "Free space below which the disk alarm blocks publishers.",
        limits.disk_free_limit_bytes as f64,
    );
    let alarms = *broker.alarms().borrow();
    let mut alarm = Family::new(
        "ferry_alarm",
        "1 while a resource alarm is on (publishers are blocked).",
    );
    for (resource, on) in [("memory", alarms.memory), ("disk", alarms.disk)] {
        alarm.sample(
            &[("resource", resource.to_owned())],
            f64::from(u8::from(on)),
        );
    }
    out.family(alarm);

    let mut open = Family::new(
        "ferry_connections",
        "Client connections a protocol listener serves now.",
    );
    let mut accepted = Family::counter(
        "ferry_connections_accepted_total",
        "Client connections a protocol listener accepted since the broker started.",
    );
    let mut refused = Family::counter(
        "ferry_connections_refused_total",
        "Client connections closed on accept because the listener's connection limit was reached.",
    );
    for listener in broker.listeners() {
        let labels = [("protocol", listener.protocol().to_ascii_lowercase())];
        open.sample(&labels, listener.open() as f64);
        accepted.sample(&labels, listener.accepted() as f64);
        refused.sample(&labels, listener.refused() as f64);
    }
    for family in [open, accepted, refused] {
        out.family(family);
    }
    out.text
}

/// One metric family: its samples under one HELP and TYPE.
struct Family {
    name: &'static str,
    help: &'static str,
    /// `gauge` or `counter`.
    kind: &'static str,
    samples: String,
}

impl Family {
    /// A family of gauges.
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: "gauge",
            samples: String::new(),
        }
    }

    /// A family of counters (values that only grow while the broker runs).
    fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            kind: "counter",
            ..Family::new(name, help)
        }
    }

    fn sample(&mut self, labels: &[(&str, String)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        // Writing to a String cannot fail.
        let _ = writeln!(
            self.samples,
            "{}{{{}}} {value}",
            self.name,
            labels.join(",")
        );
    }
}

/// The exposition being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn gauge(&mut self, name: &'static str, help: &'static str, value: f64) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }

    fn family(&mut self, family: Family) {
        let Family {
            name,
            help,
            kind,
            samples,
        } = family;
        let _ = write!(
            self.text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{samples}"
        );
    }
}

/// Escapes a label value (`\`, `"` and newlines, as the text format requires).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_text_format() {
        let mut out = Exposition::default();
        out.gauge("ferry_topics", "Topics.", 2.0);
        let mut family = Family::new("ferry_x", "X.");
        family.sample(&[("topic", "a\"b\\c\nd".to_owned())], 1.5);
        out.family(family);
        assert_eq!(
            out.text,
            "# HELP ferry_topics Topics.\n# TYPE ferry_topics gauge\nferry_topics 2\n\
             # HELP ferry_x X.\n# TYPE ferry_x gauge\nferry_x{topic=\"a\\\"b\\\\c\\nd\"} 1.5\n"
        );
    }
}
