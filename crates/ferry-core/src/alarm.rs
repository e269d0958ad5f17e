//! Resource alarms, as RabbitMQ's: a memory alarm when the broker's resident memory is
//! above the high watermark, a disk alarm when the data directory's file system has less
//! free space than the limit.
//!
//! The broker samples both every [`ALARM_POLL_INTERVAL_MS`] and publishes the result on a
//! `tokio::sync::watch` channel ([`crate::Broker::alarms`]). Publishing protocols stop
//! reading publishes while any alarm is on (AMQP sends `connection.blocked` with
//! [`Alarms::blocked_reason`]); consumers go on, so queues drain and the alarm clears.
//! A value that cannot be read (no `/proc`, an unsupported file system) raises no alarm.

use std::path::Path;

/// How often memory and disk are sampled (RabbitMQ checks memory about once a second).
pub const ALARM_POLL_INTERVAL_MS: u64 = 1000;
/// Default memory high watermark as a fraction of the machine's memory (RabbitMQ's
/// `vm_memory_high_watermark.relative = 0.4`).
pub const DEFAULT_MEMORY_HIGH_WATERMARK_FRACTION: f64 = 0.4;
/// Default free disk space below which the disk alarm goes on (RabbitMQ's 50 MB).
pub const DEFAULT_DISK_FREE_LIMIT_BYTES: u64 = 50_000_000;
/// Memory high watermark when the machine's memory cannot be read.
const FALLBACK_MEMORY_HIGH_WATERMARK_BYTES: u64 = 1 << 30;
/// A cgroup memory limit at or above this is "no limit" (cgroup v1 reports ~2^63).
const CGROUP_UNLIMITED_BYTES: u64 = 1 << 60;

/// Which resource alarms are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alarms {
    /// Resident memory is above the high watermark.
    pub memory: bool,
    /// Free disk space is below the limit.
    pub disk: bool,
}

impl Alarms {
    /// Whether any alarm is on (publishers must be blocked).
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// RabbitMQ's `connection.blocked` reason: `low on memory`, `low on disk`, or both
    /// joined by ` & `; `None` when no alarm is on.
    pub fn blocked_reason(self) -> Option<String> {
        let reasons: Vec<&str> = [(self.memory, "low on memory"), (self.disk, "low on disk")]
            .into_iter()
            .filter_map(|(on, reason)| on.then_some(reason))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join(" & "))
    }
}

/// Alarm thresholds as configured (`[limits]`); `None` takes RabbitMQ's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Memory alarm above this many resident bytes (default: 40% of the machine's memory).
    pub memory_high_watermark_bytes: Option<u64>,
    /// Disk alarm below this many free bytes in the data directory (default 50 MB).
    pub disk_free_limit_bytes: Option<u64>,
}

impl LimitsConfig {
    /// The thresholds in bytes, defaults filled in from this machine.
    pub fn resolve(&self) -> AlarmLimits {
        AlarmLimits {
            memory_high_watermark_bytes: self
                .memory_high_watermark_bytes
                .unwrap_or_else(default_memory_high_watermark_bytes),
            disk_free_limit_bytes: self
                .disk_free_limit_bytes
                .unwrap_or(DEFAULT_DISK_FREE_LIMIT_BYTES),
        }
    }
}

/// Alarm thresholds in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlarmLimits {
    /// Memory alarm when resident memory is above this.
    pub memory_high_watermark_bytes: u64,
    /// Disk alarm when free space is below this.
    pub disk_free_limit_bytes: u64,
}

impl AlarmLimits {
    /// The alarms `usage` raises; unknown values raise none.
    pub fn evaluate(&self, usage: Usage) -> Alarms {
        Alarms {
            memory: usage
                .resident_bytes
                .is_some_and(|bytes| bytes > self.memory_high_watermark_bytes),
            disk: usage
                .disk_free_bytes
                .is_some_and(|bytes| bytes < self.disk_free_limit_bytes),
        }
    }
}

/// One sample of the watched resources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The broker's resident memory, if readable.
    pub resident_bytes: Option<u64>,
    /// Free space (for unprivileged users) of the data directory's file system.
    pub disk_free_bytes: Option<u64>,
}

impl Usage {
    /// Samples this process and the file system holding `data_dir`.
    pub fn sample(data_dir: &Path) -> Usage {
        Usage {
            resident_bytes: resident_memory_bytes(),
            disk_free_bytes: disk_free_bytes(data_dir),
        }
    }
}

/// This process's resident memory, from `/proc/self/statm` (pages) and the page size.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    resident_pages.checked_mul(rustix::param::page_size() as u64)
}

/// Bytes an unprivileged process can still write on the file system holding `path`.
pub fn disk_free_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    stat.f_bavail.checked_mul(stat.f_frsize)
}

/// Memory available to this process: the machine's (`MemTotal`), or the cgroup v2 limit
/// when that is lower (a container sees the host's `MemTotal`).
pub fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = parse_meminfo_total(&meminfo)?;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|limit| *limit < CGROUP_UNLIMITED_BYTES);
    Some(cgroup.map_or(total, |limit| limit.min(total)))
}

/// 40% of [`total_memory_bytes`], or 1 GiB when that cannot be read.
fn default_memory_high_watermark_bytes() -> u64 {
    total_memory_bytes().map_or(FALLBACK_MEMORY_HIGH_WATERMARK_BYTES, |total| {
        (total as f64 * DEFAULT_MEMORY_HIGH_WATERMARK_FRACTION) as u64
    })
}

/// `MemTotal:  16318420 kB` → bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_rabbitmqs() {
        assert_eq!(Alarms::default().blocked_reason(), None);
        assert!(!Alarms::default().any());
        let memory = Alarms {
            memory: true,
            disk: false,
        };
        assert_eq!(memory.blocked_reason().as_deref(), Some("low on memory"));
        let disk = Alarms {
            memory: false,
            disk: true,
        };
        assert_eq!(disk.blocked_reason().as_deref(), Some("low on disk"));
        let both = Alarms {
            memory: true,
            disk: true,
        };
        assert!(both.any());
        assert_eq!(
            both.blocked_reason().as_deref(),
            Some("low on memory & low on disk")
        );
    }

    #[test]
    fn thresholds_decide() {
        let limits = AlarmLimits {
            memory_high_watermark_bytes: 100,
            disk_free_limit_bytes: 50,
        };
        let usage = |resident, free| Usage {
            resident_bytes: resident,
            disk_free_bytes: free,
        };
        assert_eq!(
            limits.evaluate(usage(Some(100), Some(50))),
            Alarms::default()
        );
        assert!(limits.evaluate(usage(Some(101), Some(50))).memory);
        assert!(limits.evaluate(usage(Some(1), Some(49))).disk);
        assert_eq!(limits.evaluate(usage(None, None)), Alarms::default());
    }

    #[test]
    fn this_process_is_measured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let usage = Usage::sample(dir.path());
        let resident = usage.resident_bytes.expect("/proc/self/statm");
        assert!(resident > 0);
        assert!(usage.disk_free_bytes.is_some());
        let total = total_memory_bytes().expect("/proc/meminfo");
        assert!(total > resident);
        // Forced thresholds: any process is above 1 byte, no disk has u64::MAX free.
        let forced = LimitsConfig {
            memory_high_watermark_bytes: Some(1),
            disk_free_limit_bytes: Some(u64::MAX),
        }
        .resolve();
        assert_eq!(
            forced.evaluate(usage),
            Alarms {
                memory: true,
                disk: true
            }
        );
        let defaults = LimitsConfig::default().resolve();
        assert_eq!(
            defaults.disk_free_limit_bytes,
            DEFAULT_DISK_FREE_LIMIT_BYTES
        );
        assert!(defaults.memory_high_watermark_bytes < total);
        assert!(disk_free_bytes(&dir.path().join("missing")).is_none());
    }

    #[tokio::test]
    async fn the_broker_publishes_alarms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = crate::BrokerConfig::new(dir.path());
        config.limits = LimitsConfig {
            memory_high_watermark_bytes: Some(1),
            disk_free_limit_bytes: Some(0),
        };
        let broker = crate::Broker::open(config).expect("open");
        let alarms = broker.alarms();
        // Sampled at open already: no wait for the first poll.
        assert_eq!(
            *alarms.borrow(),
            Alarms {
                memory: true,
                disk: false
            }
        );
        assert_eq!(broker.alarm_limits().memory_high_watermark_bytes, 1);
        broker.shutdown().await.expect("shutdown");

        let mut config = crate::BrokerConfig::new(dir.path().join("other"));
        config.limits.disk_free_limit_bytes = Some(u64::MAX);
        let broker = crate::Broker::open(config).expect("open");
        let alarms = *broker.alarms().borrow();
        assert!(alarms.disk && !alarms.memory, "{alarms:?}");
        broker.shutdown().await.expect("shutdown");
    }

    #[test]
    fn meminfo_is_parsed() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       16318420 kB\nMemFree: 1 kB\n"),
            Some(16318420 * 1024)
        );
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: x kB\n"), None);
    }
}
