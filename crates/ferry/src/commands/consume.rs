//! `ferry consume TOPIC`: print messages, optionally as a member of a consumer group.
//!
//! Without `--group` every partition (or `--partition`) is read from the chosen start.
//! With `--group` the tool joins the group, reads the partitions it is assigned from the
//! committed offsets, heartbeats between fetches, commits every few seconds and on exit,
//! then leaves the group so that its partitions move on at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_kafka::client::{
    Client, ClientError, FetchPosition, GroupMember, HeartbeatOutcome, OffsetQuery, ResponseError,
};
use tokio::signal::unix::{signal, SignalKind};

use super::format::Format;
use super::time::parse_time;
use super::{connect, CliError, CliResult, Output};
use crate::cli::ConsumeArgs;

/// Longest a fetch waits for data; also bounds how late a signal or heartbeat is seen.
const POLL_WAIT: Duration = Duration::from_millis(500);
/// Cap of one fetch response (Kafka's `fetch.max.bytes` default).
const FETCH_MAX_BYTES: i32 = 50 * 1024 * 1024;
/// Cap per partition in one fetch (Kafka's `max.partition.fetch.bytes` default).
const PARTITION_MAX_BYTES: i32 = 1024 * 1024;
/// Session timeout asked for when joining a group.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Time members get to rejoin during a rebalance.
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often positions are committed while consuming in a group.
const AUTO_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// Runs `ferry consume`.
pub async fn run(args: ConsumeArgs) -> CliResult {
    let format = Format::parse(&args.format)?;
    let from_time = args.from_time.as_deref().map(parse_time).transpose()?;
    if args.offset.is_some_and(|o| o < 0) {
        return Err(CliError::Usage("--offset must be 0 or more".to_owned()));
    }
    let mut client = connect(&args.conn).await?;
    let metadata = client.topic(&args.topic, false).await?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) if metadata.partitions.iter().any(|m| m.partition == p) => vec![p],
        Some(p) => {
            return Err(CliError::Usage(format!(
                "topic {} has no partition {p} (it has {})",
                args.topic,
                metadata.partitions.len()
            )))
        }
        None => metadata.partitions.iter().map(|m| m.partition).collect(),
    };
    let mut consumer = Consumer {
        topic: args.topic.clone(),
        format,
        out: Output::stdout(),
        positions: BTreeMap::new(),
        reset_to_earliest: args.from_beginning,
        printed: 0,
        polls: 0,
        max_messages: args.max_messages,
        idle_timeout: args.timeout_ms.map(Duration::from_millis),
        last_activity: Instant::now(),
        stop: stop_on_signal(),
    };
    let result = match &args.group {
        Some(group) => consumer.run_in_group(&mut client, group).await,
        None => {
            let start = match (args.offset, from_time) {
                (Some(offset), _) => Start::Offset(offset),
                (None, Some(ms)) => Start::Time(ms),
                (None, None) if args.from_beginning => Start::Earliest,
                (None, None) => Start::Latest,
            };
            consumer.run_alone(&mut client, &partitions, start).await
        }
    };
    client.close().await;
    result
}

/// Where a consumer without a group starts.
#[derive(Clone, Copy, Debug)]
enum Start {
    Earliest,
    Latest,
    Offset(i64),
    Time(i64),
}

/// Why a poll loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Poll {
    /// Keep going.
    More,
    /// `--max-messages`, `--timeout-ms` or a signal: stop.
    Done,
}

struct Consumer {
    topic: String,
    format: Format,
    out: Output,
    /// partition -> next offset to print.
    positions: BTreeMap<i32, i64>,
    /// Where to go when there is no committed offset or the position is out of range.
    reset_to_earliest: bool,
    printed: u64,
    /// Fetches made, for rotating the partition order.
    polls: u64,
    max_messages: Option<u64>,
    idle_timeout: Option<Duration>,
    last_activity: Instant,
    stop: Arc<AtomicBool>,
}

impl Consumer {
    async fn run_alone(
        &mut self,
        client: &mut Client,
        partitions: &[i32],
        start: Start,
    ) -> CliResult {
        self.positions = match start {
            Start::Offset(offset) => partitions.iter().map(|&p| (p, offset)).collect(),
            Start::Earliest => {
                self.look_up(client, partitions, OffsetQuery::Earliest)
                    .await?
            }
            Start::Latest => {
                self.look_up(client, partitions, OffsetQuery::Latest)
                    .await?
            }
            Start::Time(ms) => {
                let found = self
                    .look_up(client, partitions, OffsetQuery::Timestamp(ms))
                    .await?;
                let ends = self
                    .look_up(client, partitions, OffsetQuery::Latest)
                    .await?;
                // -1: no message at or after the time, so start at the end.
                found
                    .into_iter()
                    .map(|(p, o)| {
                        (
                            p,
                            if o < 0 {
                                ends.get(&p).copied().unwrap_or(0)
                            } else {
                                o
                            },
                        )
                    })
                    .collect()
            }
        };
        self.last_activity = Instant::now();
        while self.poll(client).await? == Poll::More {}
        Ok(())
    }

    async fn run_in_group(&mut self, client: &mut Client, group: &str) -> CliResult {
        let mut member = GroupMember::new(
            group,
            vec![self.topic.clone()],
            SESSION_TIMEOUT,
            REBALANCE_TIMEOUT,
        );
        let result = self.group_loop(client, &mut member).await;
        // Commit what was printed and leave, whatever ended the loop (a closed stdout too).
        let committed = match &result {
            Ok(()) | Err(CliError::StdoutClosed) => self.commit(client, &member).await,
            Err(_) => Ok(()),
        };
        if let Err(e) = member.leave(client).await {
            eprintln!("warning: could not leave group {group}: {e}");
        }
        result.and(committed.map_err(CliError::from))
    }

    async fn group_loop(&mut self, client: &mut Client, member: &mut GroupMember) -> CliResult {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let assignment = member.join(client).await?;
            let partitions: Vec<i32> = assignment
                .into_iter()
                .filter(|(t, _)| *t == self.topic)
                .flat_map(|(_, p)| p)
                .collect();
            self.positions = self
                .committed_or_reset(client, member.group_id(), &partitions)
                .await?;
            self.last_activity = Instant::now();
            let mut last_heartbeat = Instant::now();
            let mut last_commit = Instant::now();
            loop {
                if self.poll(client).await? == Poll::Done {
                    return Ok(());
                }
                if last_commit.elapsed() >= AUTO_COMMIT_INTERVAL {
                    last_commit = Instant::now();
                    match self.commit(client, member).await {
                        Ok(()) => {}
                        Err(e) if needs_rejoin(&e) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                if last_heartbeat.elapsed() >= member.heartbeat_interval() {
                    last_heartbeat = Instant::now();
                    if member.heartbeat(client).await? == HeartbeatOutcome::Rejoin {
                        // Commit before giving the partitions up; a failure only means
                        // that the next owner sees some messages again.
                        if let Err(e) = self.commit(client, member).await {
                            eprintln!("warning: commit before rebalance failed: {e}");
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Committed offsets of `partitions`, or the reset position where none is committed.
    async fn committed_or_reset(
        &mut self,
        client: &mut Client,
        group: &str,
        partitions: &[i32],
    ) -> CliResult<BTreeMap<i32, i64>> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let committed = client
            .committed_offsets(group, Some(&[(self.topic.clone(), partitions.to_vec())]))
            .await?;
        let mut positions = BTreeMap::new();
        let mut missing = Vec::new();
        for &p in partitions {
            match committed.iter().find(|c| c.partition == p && c.offset >= 0) {
                Some(c) => {
                    positions.insert(p, c.offset);
                }
                None => missing.push(p),
            }
        }
        let query = if self.reset_to_earliest {
            OffsetQuery::Earliest
        } else {
            OffsetQuery::Latest
        };
        positions.extend(self.look_up(client, &missing, query).await?);
        Ok(positions)
    }

    async fn look_up(
        &self,
        client: &mut Client,
        partitions: &[i32],
        query: OffsetQuery,
    ) -> CliResult<BTreeMap<i32, i64>> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let queries: Vec<(i32, OffsetQuery)> = partitions.iter().map(|&p| (p, query)).collect();
        Ok(client
            .list_offsets(&self.topic, &queries)
            .await?
            .into_iter()
            .map(|o| (o.partition, o.offset))
            .collect())
    }

    async fn commit(&self, client: &mut Client, member: &GroupMember) -> Result<(), ClientError> {
        let offsets: Vec<(String, i32, i64)> = self
            .positions
            .iter()
            .map(|(&p, &o)| (self.topic.clone(), p, o))
            .collect();
        member.commit(client, &offsets).await
    }

    /// One fetch: prints what came back and moves the positions.
    async fn poll(&mut self, client: &mut Client) -> CliResult<Poll> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(Poll::Done);
        }
        let mut positions: Vec<FetchPosition> = self
            .positions
            .iter()
            .map(|(&partition, &offset)| FetchPosition {
                partition,
                offset,
                max_bytes: PARTITION_MAX_BYTES,
            })
            .collect();
        // Rotate which partition comes first: a broker may cut later partitions at the
        // response size, and a fixed order would starve them behind busy ones.
        if !positions.is_empty() {
            let shift = usize::try_from(self.polls % positions.len() as u64).unwrap_or(0);
            positions.rotate_left(shift);
        }
        self.polls += 1;
        let mut got_any = false;
        if positions.is_empty() {
            // A group member without partitions just waits for the next rebalance.
            tokio::time::sleep(POLL_WAIT).await;
        } else {
            let fetched = client
                .fetch(&self.topic, &positions, POLL_WAIT, 1, FETCH_MAX_BYTES)
                .await?;
            let mut line = Vec::new();
            for part in fetched {
                match &part.error {
                    None => {}
                    Some(e) if e.kind() == ResponseError::OffsetOutOfRange => {
                        self.reset_out_of_range(client, part.partition).await?;
                        continue;
                    }
                    // Leader moves and the like: the client refreshed its metadata.
                    Some(e) if e.is_retriable() => continue,
                    Some(e) => {
                        return Err(ClientError::Kafka {
                            context: format!("fetch from {}/{}", self.topic, part.partition),
                            error: e.clone(),
                        }
                        .into())
                    }
                }
                for record in &part.records.records {
                    line.clear();
                    self.format.render(&self.topic, record, &mut line);
                    self.out.write(&line)?;
                    self.positions.insert(part.partition, record.offset + 1);
                    self.printed += 1;
                    got_any = true;
                    if self.max_messages.is_some_and(|max| self.printed >= max) {
                        self.out.flush()?;
                        return Ok(Poll::Done);
                    }
                }
                // Skip past control records and gaps after the last printed record.
                if let Some(next) = part.records.next_offset {
                    let position = self.positions.entry(part.partition).or_insert(next);
                    *position = (*position).max(next);
                }
            }
            self.out.flush()?;
        }
        if got_any {
            self.last_activity = Instant::now();
        } else if self
            .idle_timeout
            .is_some_and(|t| self.last_activity.elapsed() >= t)
        {
            return Ok(Poll::Done);
        }
        Ok(Poll::More)
    }

    /// Moves an out-of-range position to the log start (if it fell behind) or the end.
    async fn reset_out_of_range(&mut self, client: &mut Client, partition: i32) -> CliResult {
        let position = self.positions.get(&partition).copied().unwrap_or(0);
        let start = self
            .look_up(client, &[partition], OffsetQuery::Earliest)
            .await?;
        let end = self
            .look_up(client, &[partition], OffsetQuery::Latest)
            .await?;
        let (start, end) = (
            start.get(&partition).copied().unwrap_or(0),
            end.get(&partition).copied().unwrap_or(0),
        );
        let new = if position < start || self.reset_to_earliest {
            start
        } else {
            end
        };
        eprintln!(
            "warning: offset {position} of {}/{partition} is outside {start}..{end}; continuing at {new}",
            self.topic
        );
        self.positions.insert(partition, new);
        Ok(())
    }
}

/// Whether a commit failed because the group moved on (rejoin and carry on).
fn needs_rejoin(error: &ClientError) -> bool {
    error.kafka().is_some_and(|e| {
        matches!(
            e.kind(),
            ResponseError::RebalanceInProgress
                | ResponseError::IllegalGeneration
                | ResponseError::UnknownMemberId
        )
    })
}

/// A flag set by SIGINT or SIGTERM; the consumer checks it between fetches so that a
/// request is never abandoned half-way on a connection still needed to commit and leave.
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::spawn(async move {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                flag.store(true, Ordering::Relaxed);
            });
        }
        // Without handlers the default action (exit) applies, which is still correct.
        _ => eprintln!("warning: cannot handle SIGINT/SIGTERM; stopping will not commit"),
    }
    stop
}
