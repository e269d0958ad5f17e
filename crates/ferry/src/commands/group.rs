//! `ferry group list|describe|reset-offsets`.

use std::collections::{BTreeMap, BTreeSet};

use ferry_kafka::client::{Client, ClientError, ListedOffset, MemberInfo, OffsetQuery};

use super::time::parse_time;
use super::{connect, CliError, CliResult, Output};
use crate::cli::GroupCommand;

/// State name of a group the coordinator does not know.
const DEAD_STATE: &str = "Dead";

/// Runs one `ferry group` subcommand.
pub async fn run(command: GroupCommand) -> CliResult {
    let mut out = Output::stdout();
    match command {
        GroupCommand::List { conn } => {
            let mut client = connect(&conn).await?;
            let groups = client.list_groups().await?;
            let rows: Vec<Vec<String>> = groups
                .into_iter()
                .map(|g| vec![g.group_id, g.state, g.protocol_type])
                .collect();
            out.table(&["GROUP", "STATE", "PROTOCOL-TYPE"], &rows)?;
        }
        GroupCommand::Describe { group, conn } => {
            let mut client = connect(&conn).await?;
            describe(&mut client, &group, &mut out).await?;
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            to_time,
            execute,
            conn,
        } => {
            let target = match (to_offset, to_time) {
                (Some(offset), _) => Target::Offset(offset),
                (None, Some(time)) => Target::Time(parse_time(&time)?),
                (None, None) if to_earliest => Target::Earliest,
                (None, None) if to_latest => Target::Latest,
                (None, None) => {
                    return Err(CliError::Usage(
                        "give one of --to-earliest, --to-latest, --to-offset, --to-time".to_owned(),
                    ))
                }
            };
            let mut client = connect(&conn).await?;
            reset_offsets(&mut client, &group, &topic, target, execute, &mut out).await?;
        }
    }
    out.flush()
}

/// Members, committed offsets, log ends and lag of every partition the group touches.
async fn describe(client: &mut Client, group: &str, out: &mut Output) -> CliResult {
    let description = client.describe_group(group).await?;
    let committed = client.committed_offsets(group, None).await?;
    if description.state == DEAD_STATE && committed.is_empty() {
        return Err(CliError::NotFound(format!("group {group} does not exist")));
    }
    let mut owners: BTreeMap<(String, i32), &MemberInfo> = BTreeMap::new();
    for member in &description.members {
        for (topic, partitions) in &member.assignment {
            for &p in partitions {
                owners.insert((topic.clone(), p), member);
            }
        }
    }
    let mut partitions: BTreeSet<(String, i32)> = owners.keys().cloned().collect();
    partitions.extend(committed.iter().map(|c| (c.topic.clone(), c.partition)));

    let mut log_ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut by_topic: BTreeMap<&str, Vec<(i32, OffsetQuery)>> = BTreeMap::new();
    for (topic, p) in &partitions {
        by_topic
            .entry(topic)
            .or_default()
            .push((*p, OffsetQuery::Latest));
    }
    for (topic, queries) in by_topic {
        // A deleted topic keeps its committed offsets for a while: show them without ends.
        match client.list_offsets(topic, &queries).await {
            Ok(ends) => log_ends.extend(
                ends.into_iter()
                    .map(|o| ((topic.to_owned(), o.partition), o.offset)),
            ),
            Err(e @ (ClientError::Kafka { .. } | ClientError::Invalid(_))) => {
                eprintln!("warning: no log end offsets for {topic}: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }

    out.line(&format!(
        "Group {group}: state {}, {} member(s){}",
        description.state,
        description.members.len(),
        if description.protocol.is_empty() {
            String::new()
        } else {
            format!(", assignment {}", description.protocol)
        }
    ))?;
    let dash = || "-".to_owned();
    let mut rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|key| {
            let current = committed
                .iter()
                .find(|c| (&c.topic, c.partition) == (&key.0, key.1))
                .map(|c| c.offset)
                .filter(|&o| o >= 0);
            let end = log_ends.get(key).copied();
            let lag = match (current, end) {
                (Some(c), Some(e)) => (e - c).max(0).to_string(),
                _ => dash(),
            };
            let owner = owners.get(key);
            vec![
                key.0.clone(),
                key.1.to_string(),
                current.map_or_else(dash, |c| c.to_string()),
                end.map_or_else(dash, |e| e.to_string()),
                lag,
                owner.map_or_else(dash, |m| m.member_id.clone()),
                owner.map_or_else(dash, |m| m.client_host.clone()),
                owner.map_or_else(dash, |m| m.client_id.clone()),
            ]
        })
        .collect();
    // Members without partitions still show up.
    for member in description
        .members
        .iter()
        .filter(|m| m.assignment.iter().all(|(_, p)| p.is_empty()))
    {
        rows.push(vec![
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            member.member_id.clone(),
            member.client_host.clone(),
            member.client_id.clone(),
        ]);
    }
    out.table(
        &[
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID",
        ],
        &rows,
    )
}

/// Where `reset-offsets` moves a group.
#[derive(Clone, Copy, Debug)]
enum Target {
    Earliest,
    Latest,
    Offset(i64),
    Time(i64),
}

/// Prints the plan, and applies it with `execute` (only while the group has no members).
async fn reset_offsets(
    client: &mut Client,
    group: &str,
    topic: &str,
    target: Target,
    execute: bool,
    out: &mut Output,
) -> CliResult {
    let metadata = client.topic(topic, false).await?;
    let partitions: Vec<i32> = metadata.partitions.iter().map(|p| p.partition).collect();
    let ask = |q: OffsetQuery| partitions.iter().map(|&p| (p, q)).collect::<Vec<_>>();
    let offsets_of = |list: Vec<ListedOffset>| -> BTreeMap<i32, i64> {
        list.into_iter().map(|o| (o.partition, o.offset)).collect()
    };
    let starts = offsets_of(
        client
            .list_offsets(topic, &ask(OffsetQuery::Earliest))
            .await?,
    );
    let ends = offsets_of(
        client
            .list_offsets(topic, &ask(OffsetQuery::Latest))
            .await?,
    );
    let found = match target {
        Target::Time(ms) => offsets_of(
            client
                .list_offsets(topic, &ask(OffsetQuery::Timestamp(ms)))
                .await?,
        ),
        _ => BTreeMap::new(),
    };
    let committed = client
        .committed_offsets(group, Some(&[(topic.to_owned(), partitions.clone())]))
        .await?;

    let mut plan = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let start = starts.get(&p).copied().unwrap_or(0);
        let end = ends.get(&p).copied().unwrap_or(0);
        let new = match target {
            Target::Earliest => start,
            Target::Latest => end,
            // Kafka clamps offsets outside the log into it, and so do we.
            Target::Offset(offset) => offset.clamp(start, end.max(start)),
            // -1: nothing at or after that time.
            Target::Time(_) => found.get(&p).copied().filter(|&o| o >= 0).unwrap_or(end),
        };
        let current = committed
            .iter()
            .find(|c| c.partition == p)
            .map(|c| c.offset)
            .filter(|&o| o >= 0);
        plan.push((p, current, new));
    }
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|&(p, current, new)| {
            vec![
                topic.to_owned(),
                p.to_string(),
                current.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                new.to_string(),
            ]
        })
        .collect();
    out.table(
        &["TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"],
        &rows,
    )?;

    out.line("")?;
    if !execute {
        out.line("Dry run: nothing changed. Add --execute to apply.")?;
        return Ok(());
    }
    let description = client.describe_group(group).await?;
    if !description.members.is_empty() {
        return Err(CliError::Usage(format!(
            "group {group} has {} active member(s) (state {}); stop them before resetting offsets",
            description.members.len(),
            description.state
        )));
    }
    let offsets: Vec<(String, i32, i64)> = plan
        .iter()
        .map(|&(p, _, new)| (topic.to_owned(), p, new))
        .collect();
    // Generation -1 and no member id: a commit from outside the group, allowed while empty.
    client.commit_offsets(group, -1, "", &offsets).await?;
    out.line(&format!("Reset offsets of group {group} on topic {topic}."))
}
