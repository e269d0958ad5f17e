//! Sampling the resident set size of a broker process from Linux's `/proc`.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Time between two samples.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// The resident set of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`), or
/// `None` if the process is gone or the file is not in the expected form.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_bytes(&status, "VmRSS:")
}

/// Reads a `Name:   1234 kB` line of a `/proc/<pid>/status` text.
fn status_field_bytes(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(name))?;
    let mut parts = line[name.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// A background task sampling one process's RSS until stopped.
#[derive(Debug)]
pub struct RssSampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<u64>>,
}

impl RssSampler {
    /// Starts sampling `pid` every [`SAMPLE_INTERVAL`].
    pub fn start(pid: u32) -> RssSampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut max: Option<u64> = None;
            let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
            loop {
                if let Some(rss) = resident_bytes(pid) {
                    max = Some(max.map_or(rss, |m| m.max(rss)));
                }
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = &mut stopped => break,
                }
            }
            max
        });
        RssSampler { stop, task }
    }

    /// Stops sampling; the largest RSS seen, if any sample succeeded.
    pub async fn stop(self) -> Option<u64> {
        let _ = self.stop.send(());
        self.task.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed_in_bytes() {
        let status = "Name:\tferry\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_field_bytes(status, "VmRSS:"), Some(1024 * 1024));
        assert_eq!(status_field_bytes(status, "VmSwap:"), None);
        assert_eq!(status_field_bytes("VmRSS: x kB", "VmRSS:"), None);
    }

    #[tokio::test]
    async fn this_process_has_a_resident_set() {
        let sampler = RssSampler::start(std::process::id());
        tokio::time::sleep(SAMPLE_INTERVAL * 2).await;
        assert!(sampler.stop().await.is_some_and(|rss| rss > 0));
    }
}
