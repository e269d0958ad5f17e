//! Test harness: a `ferry serve` child process on an ephemeral port, and a runner for the
//! command-line tools against it. Every wait is bounded; the broker is killed on drop.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// Longest a broker may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one command-line invocation may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a broker may take to stop after SIGTERM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Marker of the startup log line that names the bound address.
const LISTENING: &str = "Kafka listener on ";
/// Marker of the startup log line that names the HTTP (admin API) address.
const HTTP_LISTENING: &str = "HTTP listener on ";

/// The result of one command.
#[derive(Debug)]
pub struct Run {
    /// Exit status (`None` when it had to be killed after [`COMMAND_TIMEOUT`]).
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Whether it exited with code 0.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Panics with the output unless it exited with code 0; returns stdout.
    pub fn expect_ok(&self, what: &str) -> &str {
        assert!(self.ok(), "{what} failed: {self:?}");
        &self.stdout
    }

    /// Asserts a failure reported as exactly one `error:` line; returns that line.
    pub fn expect_one_line_error(&self, what: &str) -> &str {
        let code = self.status.and_then(|s| s.code());
        assert!(
            matches!(code, Some(c) if c != 0),
            "{what}: expected a non-zero exit: {self:?}"
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: expected one stderr line: {self:?}");
        assert!(lines[0].starts_with("error: "), "{what}: {self:?}");
        lines[0]
    }
}

/// Runs `ferry args…` with `stdin` as input, bounded by [`COMMAND_TIMEOUT`].
pub fn ferry(args: &[&str], stdin: &str) -> Run {
    ferry_env(args, stdin, &[])
}

/// Like [`ferry`] with extra environment variables.
pub fn ferry_env(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(FERRY);
    command
        .args(args)
        .env_remove("FERRY_BOOTSTRAP")
        .env_remove("FERRY_ADMIN")
        .env_remove("FERRY_ADMIN_USER")
        .env_remove("FERRY_ADMIN_PASSWORD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn ferry");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_owned();
    let writer = thread::spawn(move || {
        // The command may exit without reading everything; that is its business.
        let _ = input.write_all(stdin.as_bytes());
    });
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let status = wait_bounded(&mut child, COMMAND_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = writer.join();
    Run {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Reads a pipe to the end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` at most `timeout`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// A running `ferry serve`.
pub struct Broker {
    child: Option<Child>,
    /// `127.0.0.1:port` it listens on.
    pub bootstrap: String,
    /// `127.0.0.1:port` of its HTTP admin API (empty with `--no-http`).
    pub admin: String,
    data_dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    /// Starts a broker on a fresh data directory inside `dir`.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, &[])
    }

    /// Starts a broker on `dir` with extra `serve` flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Broker {
        let data_dir = dir.join("data");
        let mut args = vec![
            "serve",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            // Port 0: the kernel picks a free port, which the startup line reports.
            "--kafka-listen",
            "127.0.0.1:0",
        ];
        // Never the default 0.0.0.0:8080: brokers of parallel tests would collide on it.
        let http = !extra
            .iter()
            .any(|a| *a == "--no-http" || *a == "--http-listen");
        if http {
            args.extend(["--http-listen", "127.0.0.1:0"]);
        }
        // Nor the default 0.0.0.0:5672 of the AMQP listener.
        if !extra
            .iter()
            .any(|a| *a == "--no-amqp" || *a == "--amqp-listen")
        {
            args.extend(["--amqp-listen", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        let mut child = Command::new(FERRY)
            .args(&args)
            .env_remove("RUST_LOG")
            .env_remove("FERRY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let (http_tx, http_rx) = mpsc::channel();
        let sink = log.clone();
        thread::spawn(move || {
            let first_word = |rest: &str| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(LISTENING).nth(1) {
                    let _ = address_tx.send(first_word(rest));
                }
                if let Some(rest) = line.split(HTTP_LISTENING).nth(1) {
                    let _ = http_tx.send(first_word(rest));
                }
                if let Ok(mut log) = sink.lock() {
                    log.push(line);
                }
            }
        });
        let mut broker = Broker {
            child: Some(child),
            bootstrap: String::new(),
            admin: String::new(),
            data_dir,
            log,
        };
        match address_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(address) => broker.bootstrap = address,
            Err(_) => panic!("broker did not start listening: {:?}", broker.log()),
        }
        if http {
            // Logged before the Kafka line.
            match http_rx.recv_timeout(STARTUP_TIMEOUT) {
                Ok(address) => broker.admin = address,
                Err(_) => panic!("broker did not start HTTP: {:?}", broker.log()),
            }
        }
        broker
    }

    /// What the broker logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `ferry args… --bootstrap <this broker>`.
    pub fn run(&self, args: &[&str], stdin: &str) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--bootstrap", &self.bootstrap]);
        ferry(&all, stdin)
    }

    /// Runs `ferry args… --http <this broker's admin API>`.
    pub fn admin(&self, args: &[&str]) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--http", &self.admin]);
        ferry(&all, "")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        let status = wait_bounded(&mut child, SHUTDOWN_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Let the log reader catch the last lines.
        thread::sleep(Duration::from_millis(100));
        status
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_bounded(&mut child, SHUTDOWN_TIMEOUT);
        }
    }
}
