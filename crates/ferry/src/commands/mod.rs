//! The command-line tools that talk to a running broker: over the Kafka protocol, and
//! (`user`, `vhost`, `permissions`) over its HTTP admin API.

pub mod admin;
pub mod bench;
pub mod consume;
pub mod format;
pub mod group;
pub mod produce;
pub mod time;
pub mod topic;

use std::io::{self, BufWriter, Stdout, Write};
use std::time::Duration;

use ferry_kafka::client::{Client, ClientConfig};

use crate::cli::ConnArgs;

/// An error of a command-line tool, printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the broker failed.
    #[error(transparent)]
    Client(#[from] ferry_kafka::client::ClientError),
    /// An argument was wrong in a way clap cannot see.
    #[error("{0}")]
    Usage(String),
    /// The HTTP admin API call failed.
    #[error(transparent)]
    Admin(#[from] ferry_http::client::ClientError),
    /// A benchmark could not run or failed verification.
    #[error(transparent)]
    Bench(#[from] ferry_bench::BenchError),
    /// The thing asked about does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Standard input could not be read.
    #[error("cannot read standard input: {0}")]
    Stdin(#[source] io::Error),
    /// Standard output failed (other than being closed by the reader).
    #[error("cannot write standard output: {0}")]
    Stdout(#[source] io::Error),
    /// The reader of standard output went away (`ferry consume | head`): not a failure.
    #[error("standard output closed")]
    StdoutClosed,
}

/// Result of a command-line tool.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Connects to the broker named by `conn`.
pub async fn connect(conn: &ConnArgs) -> CliResult<Client> {
    let mut config = ClientConfig::new(conn.bootstrap.clone());
    config.request_timeout = Duration::from_millis(conn.request_timeout_ms.max(1));
    Ok(Client::connect(config).await?)
}

/// Splits `KEY=VALUE` at the first `=`; the key must not be empty.
pub fn parse_key_value(text: &str, what: &str) -> CliResult<(String, String)> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(CliError::Usage(format!("{what} {text:?} is not KEY=VALUE"))),
    }
}

/// Buffered standard output that reports a closed pipe as [`CliError::StdoutClosed`].
pub struct Output {
    out: BufWriter<Stdout>,
}

impl Output {
    /// Standard output.
    pub fn stdout() -> Output {
        Output {
            out: BufWriter::new(io::stdout()),
        }
    }

    /// Writes raw bytes.
    pub fn write(&mut self, bytes: &[u8]) -> CliResult {
        self.out.write_all(bytes).map_err(output_error)
    }

    /// Writes a line of text.
    pub fn line(&mut self, text: &str) -> CliResult {
        self.write(text.as_bytes())?;
        self.write(b"\n")
    }

    /// Pushes buffered output to the terminal or pipe.
    pub fn flush(&mut self) -> CliResult {
        self.out.flush().map_err(output_error)
    }

    /// Writes `rows` under `headers` in aligned columns.
    pub fn table(&mut self, headers: &[&str], rows: &[Vec<String>]) -> CliResult {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let render = |cells: &mut dyn Iterator<Item = &str>| {
            let mut line = String::new();
            for (i, (cell, width)) in cells.zip(&widths).enumerate() {
                if i + 1 == widths.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  "));
                }
            }
            line.trim_end().to_owned()
        };
        self.line(&render(&mut headers.iter().copied()))?;
        for row in rows {
            self.line(&render(&mut row.iter().map(String::as_str)))?;
        }
        Ok(())
    }
}

fn output_error(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::StdoutClosed
    } else {
        CliError::Stdout(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("a=b=c", "config").expect("ok"),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert_eq!(
            parse_key_value("a=", "config").expect("ok"),
            ("a".to_owned(), String::new())
        );
        assert!(parse_key_value("=b", "config").is_err());
        assert!(parse_key_value("ab", "header").is_err());
    }
}
