//! Restart measurement (workload W6): how long a broker holding data takes, after a clean
//! shutdown and after `kill -9`, from being started to serving its first fetch.
//!
//! The tool starts the `ferry` binary itself on a fresh data directory, fills it with a
//! produce-only workload, stops it (SIGTERM, then later SIGKILL) and starts it again,
//! timing from the spawn to the first Fetch answered with records.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::driver::Driver;
use crate::error::{BenchError, Result};
use crate::kafka::fetch_served;
use crate::run::{run_with, Target};
use crate::stats::Report;
use crate::workload::Workload;

/// Longest wait for a started broker to serve its first fetch.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for a broker to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two probes of a starting broker.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// Result of a restart measurement.
#[derive(Clone, Debug, Serialize)]
pub struct RestartReport {
    /// The fill run (produce-only).
    pub fill: Report,
    /// Bytes the data directory held before the restarts.
    pub data_dir_bytes: u64,
    /// Spawn to first fetch served, after a clean shutdown, in ms.
    pub clean_restart_ms: f64,
    /// Spawn to first fetch served, after `kill -9`, in ms.
    pub crash_restart_ms: f64,
}

impl RestartReport {
    /// The human-readable form.
    pub fn render(&self) -> String {
        format!(
            "{}data directory: {:.2} GB\nfirst fetch served after restart: clean shutdown {:.0} ms, kill -9 {:.0} ms\n",
            self.fill.render(),
            self.data_dir_bytes as f64 / 1e9,
            self.clean_restart_ms,
            self.crash_restart_ms
        )
    }
}

/// A broker process started by the tool.
struct Broker {
    child: Child,
    address: String,
}

impl Broker {
    fn spawn(bin: &Path, data_dir: &Path, address: &str) -> Result<Broker> {
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--kafka-listen")
            .arg(address)
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::io(format!("start {}", bin.display()), e))?;
        Ok(Broker {
            child,
            address: address.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the broker answers a fetch of `topic` partition 0 with records.
    async fn wait_first_fetch(&mut self, topic: &str) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Task(format!(
                    "broker exited while starting: {status}"
                )));
            }
            if let Ok(true) = fetch_served(&self.address, topic).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Task(format!(
                    "broker did not serve a fetch within {START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) -> Result<()> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .map_err(|e| BenchError::io("signal the broker", e.into()))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    return Err(BenchError::Task(
                        "broker did not exit after SIGTERM".to_owned(),
                    ));
                }
                Err(e) => return Err(BenchError::io("wait for the broker", e)),
            }
        }
    }

    /// SIGKILL (`kill -9`): no shutdown work at all.
    fn crash(mut self) -> Result<()> {
        self.child
            .kill()
            .map_err(|e| BenchError::io("kill the broker", e))?;
        self.child
            .wait()
            .map_err(|e| BenchError::io("wait for the broker", e))?;
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A broker left behind by an error must not outlive the tool.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free loopback port (bound and released; the broker binds it right after).
fn free_address() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::io("find a free port", e))?;
    let address = listener
        .local_addr()
        .map_err(|e| BenchError::io("find a free port", e))?;
    Ok(address.to_string())
}

/// Total bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Fills a new broker on `data_dir` (which must not exist or be empty) with `workload`
/// (produce-only), then measures the two restarts.
pub async fn measure_restarts(
    driver: Arc<dyn Driver>,
    bin: PathBuf,
    data_dir: PathBuf,
    workload: &Workload,
    progress: bool,
) -> Result<RestartReport> {
    if std::fs::read_dir(&data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(BenchError::Workload(format!(
            "restart data directory {} is not empty",
            data_dir.display()
        )));
    }
    let address = free_address()?;
    let mut broker = Broker::spawn(&bin, &data_dir, &address)?;
    wait_listening(&mut broker).await?;
    let target = Target::Broker {
        bootstrap: address.clone(),
    };
    let fill = run_with(driver, workload, &target, progress, Some(broker.pid())).await?;
    let Some(topic) = fill.topics.first().cloned() else {
        return Err(BenchError::Task("the fill created no topic".to_owned()));
    };
    // kill -9 right after the fill, while the last writes are not yet checkpointed, so
    // that the restart has to recover them (a crash of an idle, flushed broker would
    // measure nothing).
    broker.crash()?;
    let data_dir_bytes = dir_bytes(&data_dir);

    let started = Instant::now();
    let mut broker = Broker::spawn(&bin, &data_dir, &address)?;
    broker.wait_first_fetch(&topic).await?;
    let crash_restart_ms = started.elapsed().as_secs_f64() * 1e3;
    broker.stop().await?;

    let started = Instant::now();
    let mut broker = Broker::spawn(&bin, &data_dir, &address)?;
    broker.wait_first_fetch(&topic).await?;
    let clean_restart_ms = started.elapsed().as_secs_f64() * 1e3;
    broker.stop().await?;
    Ok(RestartReport {
        fill,
        data_dir_bytes,
        clean_restart_ms,
        crash_restart_ms,
    })
}

/// Waits until a freshly started broker accepts connections.
async fn wait_listening(broker: &mut Broker) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(&broker.address)
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = broker.child.try_wait() {
            return Err(BenchError::Task(format!(
                "broker exited while starting: {status}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Task(
                "broker did not start listening".to_owned(),
            ));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_sizes_add_up_recursively() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), [0u8; 10]).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 5]).expect("write");
        assert_eq!(dir_bytes(dir.path()), 15);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
    }
}
