//! `ferry topic create|list|describe|delete|alter`.

use ferry_kafka::client::{Client, ConfigAlteration, OffsetQuery};

use super::{connect, parse_key_value, CliResult, Output};
use crate::cli::TopicCommand;

/// Runs one `ferry topic` subcommand.
pub async fn run(command: TopicCommand) -> CliResult {
    let mut out = Output::stdout();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            configs,
            conn,
        } => {
            let configs = configs
                .iter()
                .map(|c| parse_key_value(c, "--config"))
                .collect::<CliResult<Vec<_>>>()?;
            let mut client = connect(&conn).await?;
            client
                .create_topic(&name, partitions, &configs, false)
                .await?;
            out.line(&format!("Created topic {name}."))?;
            client.close().await;
        }
        TopicCommand::List { internal, conn } => {
            let mut client = connect(&conn).await?;
            let metadata = client.metadata(None, false).await?;
            let mut names: Vec<&str> = metadata
                .topics
                .iter()
                .filter(|t| internal || !t.internal)
                .map(|t| t.name.as_str())
                .collect();
            names.sort_unstable();
            for name in names {
                out.line(name)?;
            }
        }
        TopicCommand::Describe { name, conn } => {
            let mut client = connect(&conn).await?;
            describe(&mut client, &name, &mut out).await?;
        }
        TopicCommand::Delete { name, conn } => {
            let mut client = connect(&conn).await?;
            client.delete_topic(&name).await?;
            out.line(&format!("Deleted topic {name}."))?;
        }
        TopicCommand::Alter {
            name,
            partitions,
            configs,
            delete_configs,
            conn,
        } => {
            let mut changes = configs
                .iter()
                .map(|c| parse_key_value(c, "--config").map(|(k, v)| ConfigAlteration::Set(k, v)))
                .collect::<CliResult<Vec<_>>>()?;
            changes.extend(delete_configs.into_iter().map(ConfigAlteration::Delete));
            let mut client = connect(&conn).await?;
            if let Some(total) = partitions {
                client.create_partitions(&name, total, false).await?;
                out.line(&format!("Topic {name} now has {total} partitions."))?;
            }
            if !changes.is_empty() {
                client.alter_topic_configs(&name, &changes, false).await?;
                for change in &changes {
                    let line = match change {
                        ConfigAlteration::Set(k, v) => format!("Set {k}={v} on {name}."),
                        ConfigAlteration::Delete(k) => format!("Removed {k} from {name}."),
                        ConfigAlteration::Append(k, v) => format!("Appended {v} to {k} on {name}."),
                        ConfigAlteration::Subtract(k, v) => {
                            format!("Removed {v} from {k} on {name}.")
                        }
                    };
                    out.line(&line)?;
                }
            }
        }
    }
    out.flush()
}

/// Prints partitions with leaders and offsets, then the effective configs.
async fn describe(client: &mut Client, name: &str, out: &mut Output) -> CliResult {
    let topic = client.topic(name, false).await?;
    let partitions: Vec<i32> = topic.partitions.iter().map(|p| p.partition).collect();
    let query = |q: OffsetQuery| partitions.iter().map(|&p| (p, q)).collect::<Vec<_>>();
    // Separate requests: a partition may appear only once per ListOffsets request.
    let earliest = query(OffsetQuery::Earliest);
    let latest = query(OffsetQuery::Latest);
    let starts = client.list_offsets(name, &earliest).await?;
    let ends = client.list_offsets(name, &latest).await?;
    let configs = client.describe_topic_configs(name).await?;

    out.line(&format!(
        "Topic: {name}  Partitions: {}{}",
        topic.partitions.len(),
        if topic.internal { "  (internal)" } else { "" }
    ))?;
    let offset_of = |list: &[ferry_kafka::client::ListedOffset], p: i32| {
        list.iter()
            .find(|o| o.partition == p)
            .map_or_else(|| "-".to_owned(), |o| o.offset.to_string())
    };
    let rows: Vec<Vec<String>> = topic
        .partitions
        .iter()
        .map(|p| {
            let start = starts.iter().find(|o| o.partition == p.partition);
            let end = ends.iter().find(|o| o.partition == p.partition);
            let messages = match (start, end) {
                (Some(s), Some(e)) => (e.offset - s.offset).max(0).to_string(),
                _ => "-".to_owned(),
            };
            vec![
                p.partition.to_string(),
                p.leader.to_string(),
                join_ids(&p.replicas),
                join_ids(&p.isr),
                offset_of(&starts, p.partition),
                offset_of(&ends, p.partition),
                messages,
            ]
        })
        .collect();
    out.table(
        &[
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "LOG-START",
            "HIGH-WATERMARK",
            "MESSAGES",
        ],
        &rows,
    )?;
    out.line("")?;
    out.line("Configs:")?;
    let rows: Vec<Vec<String>> = configs
        .iter()
        .map(|c| {
            let value = match (&c.value, c.sensitive) {
                (_, true) => "(sensitive)".to_owned(),
                (Some(v), false) => v.clone(),
                (None, false) => "(unset)".to_owned(),
            };
            vec![c.name.clone(), value, c.source.to_owned()]
        })
        .collect();
    out.table(&["KEY", "VALUE", "SOURCE"], &rows)
}

fn join_ids(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}
