//! `ferry produce TOPIC`: every line of standard input becomes a message.
//!
//! Lines are read on their own task and batched: whatever is already waiting on stdin
//! (up to a size bound) goes out in one batch per partition, so a pipe gets large batches
//! while an interactive terminal sends each line at once.

use std::collections::BTreeMap;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_kafka::client::{
    encode_batch, parse_compression, partition_for_key, Acks, Client, Compression, ProducerRecord,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::{connect, parse_key_value, CliError, CliResult};
use crate::cli::{AcksArg, ProduceArgs};

/// Largest line accepted; a longer one is an error rather than unbounded memory.
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// Lines read ahead of the producer.
const LINE_QUEUE: usize = 4096;
/// Records gathered before they are sent, across partitions.
const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// Largest batch sent (Kafka's default `max.message.bytes` is about 1 MiB).
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Read buffer of standard input.
const STDIN_BUFFER_BYTES: usize = 256 * 1024;

/// Runs `ferry produce`.
pub async fn run(args: ProduceArgs) -> CliResult {
    let compression = parse_compression(&args.compression).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown compression {:?} (none, gzip, snappy, lz4, zstd)",
            args.compression
        ))
    })?;
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|h| parse_key_value(h, "--header").map(|(k, v)| (k, Some(Bytes::from(v)))))
        .collect::<CliResult<_>>()?;
    let separator = match args.key_separator {
        Some(sep) if sep.is_empty() => {
            return Err(CliError::Usage(
                "--key-separator must not be empty".to_owned(),
            ))
        }
        other => other.map(String::into_bytes),
    };
    let acks = match args.acks {
        AcksArg::Zero => Acks::None,
        AcksArg::One => Acks::Leader,
        AcksArg::All => Acks::All,
    };

    let mut client = connect(&args.conn).await?;
    let topic = client.topic(&args.topic, true).await?;
    let partitions = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
    if let Some(p) = args.partition {
        if !(0..partitions).contains(&p) {
            return Err(CliError::Usage(format!(
                "topic {} has no partition {p} (it has {partitions})",
                args.topic
            )));
        }
    }

    let (lines_tx, mut lines) = mpsc::channel(LINE_QUEUE);
    let reader = tokio::spawn(read_lines(lines_tx));
    let mut producer = Producer {
        topic: args.topic.clone(),
        acks,
        compression,
        pending: BTreeMap::new(),
        pending_bytes: 0,
        used_partitions: Vec::new(),
    };
    // Unkeyed lines stick to one partition per round, rotating, as Kafka's sticky
    // partitioner does; the start is spread across runs.
    let mut sticky = i32::try_from(now_ms().rem_euclid(i64::from(partitions.max(1)))).unwrap_or(0);
    let mut line_number: u64 = 0;
    while let Some(first) = lines.recv().await {
        let mut next = Some(first);
        while let Some(line) = next {
            line_number += 1;
            let line = line.map_err(CliError::Stdin)?;
            let record = build_record(line, separator.as_deref(), &headers, line_number)?;
            let partition = match (args.partition, &record.key) {
                (Some(p), _) => p,
                (None, Some(key)) => partition_for_key(key, partitions),
                (None, None) => sticky,
            };
            producer.add(partition, record);
            if producer.pending_bytes >= MAX_PENDING_BYTES {
                break;
            }
            next = lines.try_recv().ok();
        }
        producer.flush(&mut client).await?;
        sticky = (sticky + 1) % partitions.max(1);
    }
    // The reader ends once stdin does; its errors came through the channel.
    let _ = reader.await;
    if acks == Acks::None {
        // acks=0 gets no answer: a round trip per partition proves the broker read
        // everything sent before it on the same connection.
        for &p in &producer.used_partitions {
            client.barrier(&args.topic, p).await?;
        }
    }
    client.close().await;
    Ok(())
}

/// Records waiting to be sent, per partition.
struct Producer {
    topic: String,
    acks: Acks,
    compression: Compression,
    pending: BTreeMap<i32, Vec<ProducerRecord>>,
    pending_bytes: usize,
    used_partitions: Vec<i32>,
}

impl Producer {
    fn add(&mut self, partition: i32, record: ProducerRecord) {
        self.pending_bytes += record.encoded_size_hint();
        self.pending.entry(partition).or_default().push(record);
        if !self.used_partitions.contains(&partition) {
            self.used_partitions.push(partition);
        }
    }

    /// Sends every pending record, at most [`MAX_BATCH_BYTES`] per batch.
    async fn flush(&mut self, client: &mut Client) -> CliResult {
        for (partition, records) in std::mem::take(&mut self.pending) {
            let mut start = 0;
            while start < records.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < records.len()
                    && (end == start || bytes + records[end].encoded_size_hint() <= MAX_BATCH_BYTES)
                {
                    bytes += records[end].encoded_size_hint();
                    end += 1;
                }
                let batch = encode_batch(&records[start..end], self.compression)?;
                client
                    .produce(&self.topic, partition, batch, self.acks)
                    .await?;
                start = end;
            }
        }
        self.pending_bytes = 0;
        Ok(())
    }
}

/// Turns one input line into a record.
fn build_record(
    line: Vec<u8>,
    separator: Option<&[u8]>,
    headers: &[(String, Option<Bytes>)],
    line_number: u64,
) -> CliResult<ProducerRecord> {
    let (key, value) = match separator {
        None => (None, Bytes::from(line)),
        Some(sep) => {
            let at = line
                .windows(sep.len())
                .position(|w| w == sep)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "line {line_number} has no key separator {:?}",
                        String::from_utf8_lossy(sep)
                    ))
                })?;
            let line = Bytes::from(line);
            (Some(line.slice(..at)), line.slice(at + sep.len()..))
        }
    };
    Ok(ProducerRecord {
        key,
        value: Some(value),
        headers: headers.to_vec(),
        timestamp_ms: now_ms(),
    })
}

/// Reads standard input line by line (without the `\n` or `\r\n`) into `lines`.
async fn read_lines(lines: mpsc::Sender<io::Result<Vec<u8>>>) {
    let mut stdin = BufReader::with_capacity(STDIN_BUFFER_BYTES, tokio::io::stdin());
    let mut line = Vec::new();
    loop {
        let buf = match stdin.fill_buf().await {
            Ok(buf) => buf,
            Err(e) => {
                let _ = lines.send(Err(e)).await;
                return;
            }
        };
        if buf.is_empty() {
            if !line.is_empty() {
                let _ = lines.send(Ok(line)).await;
            }
            return;
        }
        let (taken, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                (i + 1, true)
            }
            None => {
                line.extend_from_slice(buf);
                (buf.len(), false)
            }
        };
        stdin.consume(taken);
        if line.len() > MAX_LINE_BYTES {
            let error = io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a line is longer than {MAX_LINE_BYTES} bytes"),
            );
            let _ = lines.send(Err(error)).await;
            return;
        }
        if complete {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if lines.send(Ok(std::mem::take(&mut line))).await.is_err() {
                return; // the producer stopped
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_separator() {
        let r = build_record(b"k::v::w".to_vec(), Some(b"::"), &[], 1).expect("record");
        assert_eq!(r.key, Some(Bytes::from_static(b"k")));
        assert_eq!(r.value, Some(Bytes::from_static(b"v::w")));
        let r = build_record(b"::v".to_vec(), Some(b"::"), &[], 1).expect("record");
        assert_eq!(r.key, Some(Bytes::new()));
        let r = build_record(b"plain".to_vec(), None, &[("h".into(), None)], 1).expect("record");
        assert_eq!(r.key, None);
        assert_eq!(r.headers.len(), 1);
        let err = build_record(b"nokey".to_vec(), Some(b"\t"), &[], 7).expect_err("no separator");
        assert!(err.to_string().contains("line 7"), "{err}");
    }
}
