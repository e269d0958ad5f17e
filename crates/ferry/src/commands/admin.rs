//! `ferry user|vhost|permissions|queue|exchange`: users, vhosts, permissions, queues and
//! exchanges of a running broker, through its HTTP admin API (`--http`, as an
//! administrator user).

use std::time::Duration;

use ferry_http::client::{path_segment, AdminClient, ClientError};
use ferry_http::json::{ExchangeJson, LimitsJson, PermissionJson, QueueJson, UserJson, VhostJson};
use serde_json::json;

use super::CliError;
use super::{CliResult, Output};
use crate::cli::{
    AdminArgs, ExchangeCommand, LimitsCommand, PermissionsCommand, QueueCommand, UserCommand,
    VhostCommand,
};

/// An admin API session of one command.
struct Admin {
    client: AdminClient,
    user: String,
}

impl Admin {
    fn new(args: &AdminArgs) -> Admin {
        Admin {
            client: AdminClient::new(
                &args.http,
                &args.admin_user,
                &args.admin_password,
                Duration::from_millis(args.request_timeout_ms.max(1)),
            ),
            user: args.admin_user.clone(),
        }
    }

    /// Says who was refused when the API answers 401.
    fn explain(&self, e: ClientError) -> ClientError {
        match e {
            ClientError::Status { status: 401, reason } => ClientError::Status {
                status: 401,
                reason: format!(
                    "the admin API refused user '{}' ({reason}); it needs an administrator user (--admin-user, --admin-password)",
                    self.user
                ),
            },
            other => other,
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        Ok(self.client.get(path).await.map_err(|e| self.explain(e))?)
    }

    async fn put(&self, path: &str, body: &serde_json::Value) -> CliResult<bool> {
        let status = self
            .client
            .put(path, body)
            .await
            .map_err(|e| self.explain(e))?;
        Ok(status == 201)
    }

    async fn delete(&self, path: &str) -> CliResult {
        Ok(self
            .client
            .delete(path)
            .await
            .map_err(|e| self.explain(e))?)
    }
}

/// Runs one `ferry user` subcommand.
pub async fn user(command: UserCommand) -> CliResult {
    let mut out = Output::stdout();
    match command {
        UserCommand::Add {
            name,
            password,
            tags,
            admin,
        } => {
            let admin = Admin::new(&admin);
            let path = format!("/api/users/{}", path_segment(&name));
            let created = admin
                .put(&path, &json!({"password": password, "tags": tags}))
                .await?;
            let verb = if created { "Created" } else { "Updated" };
            out.line(&format!("{verb} user {name}."))?;
        }
        UserCommand::Delete { name, admin } => {
            let admin = Admin::new(&admin);
            admin
                .delete(&format!("/api/users/{}", path_segment(&name)))
                .await?;
            out.line(&format!("Deleted user {name}."))?;
        }
        UserCommand::List { admin } => {
            let users: Vec<UserJson> = Admin::new(&admin).get("/api/users").await?;
            let rows: Vec<Vec<String>> = users
                .into_iter()
                .map(|u| vec![u.name, u.tags.join(",")])
                .collect();
            out.table(&["USER", "TAGS"], &rows)?;
        }
    }
    out.flush()
}

/// Runs one `ferry vhost` subcommand.
pub async fn vhost(command: VhostCommand) -> CliResult {
    let mut out = Output::stdout();
    match command {
        VhostCommand::Add { name, admin } => {
            let admin = Admin::new(&admin);
            let path = format!("/api/vhosts/{}", path_segment(&name));
            let created = admin.put(&path, &json!({})).await?;
            let verb = if created { "Created" } else { "Kept existing" };
            out.line(&format!("{verb} vhost {name}."))?;
        }
        VhostCommand::Delete { name, admin } => {
            let admin = Admin::new(&admin);
            admin
                .delete(&format!("/api/vhosts/{}", path_segment(&name)))
                .await?;
            out.line(&format!("Deleted vhost {name}."))?;
        }
        VhostCommand::List { admin } => {
            let vhosts: Vec<VhostJson> = Admin::new(&admin).get("/api/vhosts").await?;
            for vhost in vhosts {
                out.line(&vhost.name)?;
            }
        }
    }
    out.flush()
}

/// Runs one `ferry permissions` subcommand.
pub async fn permissions(command: PermissionsCommand) -> CliResult {
    let mut out = Output::stdout();
    match command {
        PermissionsCommand::Set {
            vhost,
            user,
            configure,
            write,
            read,
            admin,
        } => {
            let admin = Admin::new(&admin);
            let path = permission_path(&vhost, &user);
            admin
                .put(
                    &path,
                    &json!({"configure": configure, "write": write, "read": read}),
                )
                .await?;
            out.line(&format!("Set permissions of user {user} on vhost {vhost}."))?;
        }
        PermissionsCommand::Clear { vhost, user, admin } => {
            let admin = Admin::new(&admin);
            admin.delete(&permission_path(&vhost, &user)).await?;
            out.line(&format!(
                "Cleared permissions of user {user} on vhost {vhost}."
            ))?;
        }
        PermissionsCommand::List { vhost, admin } => {
            let all: Vec<PermissionJson> = Admin::new(&admin).get("/api/permissions").await?;
            // An empty pattern is shown as "" so that columns stay aligned.
            let shown = |p: String| if p.is_empty() { "\"\"".to_owned() } else { p };
            let rows: Vec<Vec<String>> = all
                .into_iter()
                .filter(|p| vhost.as_ref().is_none_or(|v| *v == p.vhost))
                .map(|p| {
                    vec![
                        p.user,
                        p.vhost,
                        shown(p.configure),
                        shown(p.write),
                        shown(p.read),
                    ]
                })
                .collect();
            out.table(&["USER", "VHOST", "CONFIGURE", "WRITE", "READ"], &rows)?;
        }
    }
    out.flush()
}

/// Runs one `ferry queue` subcommand.
pub async fn queue(command: QueueCommand) -> CliResult {
    let mut out = Output::stdout();
    let QueueCommand::List { vhost, admin } = command;
    let path = listing_path("queues", vhost.as_deref());
    let queues: Vec<QueueJson> = Admin::new(&admin).get(&path).await?;
    let rows: Vec<Vec<String>> = queues
        .into_iter()
        .map(|q| {
            let flags = [
                (q.durable, "durable"),
                (q.exclusive, "exclusive"),
                (q.auto_delete, "auto-delete"),
            ];
            vec![
                q.vhost,
                q.name,
                q.messages.to_string(),
                q.consumers.to_string(),
                flag_list(&flags),
            ]
        })
        .collect();
    out.table(&["VHOST", "QUEUE", "MESSAGES", "CONSUMERS", "FLAGS"], &rows)?;
    out.flush()
}

/// Runs one `ferry exchange` subcommand.
pub async fn exchange(command: ExchangeCommand) -> CliResult {
    let mut out = Output::stdout();
    let ExchangeCommand::List { vhost, admin } = command;
    let path = listing_path("exchanges", vhost.as_deref());
    let exchanges: Vec<ExchangeJson> = Admin::new(&admin).get(&path).await?;
    let rows: Vec<Vec<String>> = exchanges
        .into_iter()
        .map(|x| {
            let flags = [
                (x.durable, "durable"),
                (x.auto_delete, "auto-delete"),
                (x.internal, "internal"),
            ];
            // The default exchange has no name; RabbitMQ's tools show it so.
            let name = if x.name.is_empty() {
                "(AMQP default)".to_owned()
            } else {
                x.name
            };
            vec![x.vhost, name, x.kind, flag_list(&flags)]
        })
        .collect();
    out.table(&["VHOST", "EXCHANGE", "TYPE", "FLAGS"], &rows)?;
    out.flush()
}

/// Runs one `ferry limits` subcommand.
pub async fn limits(command: LimitsCommand) -> CliResult {
    let mut out = Output::stdout();
    let admin = match command {
        LimitsCommand::Show { admin } => admin,
        LimitsCommand::Set {
            memory_high_watermark_bytes,
            disk_free_limit_bytes,
            admin,
        } => {
            let mut body = serde_json::Map::new();
            for (key, value) in [
                ("memory_high_watermark_bytes", memory_high_watermark_bytes),
                ("disk_free_limit_bytes", disk_free_limit_bytes),
            ] {
                if let Some(value) = value {
                    body.insert(key.to_owned(), limit_value(key, &value)?);
                }
            }
            Admin::new(&admin)
                .put("/api/limits", &serde_json::Value::Object(body))
                .await?;
            admin
        }
    };
    let limits: LimitsJson = Admin::new(&admin).get("/api/limits").await?;
    let overview: serde_json::Value = Admin::new(&admin).get("/api/overview").await?;
    let alarm = |name: &str| overview["alarms"][name].as_bool().unwrap_or(false);
    let on_off = |on: bool| if on { "ALARM" } else { "ok" }.to_owned();
    out.table(
        &["RESOURCE", "LIMIT_BYTES", "STATE"],
        &[
            vec![
                "memory".to_owned(),
                limits.memory_high_watermark_bytes.to_string(),
                on_off(alarm("memory")),
            ],
            vec![
                "disk".to_owned(),
                limits.disk_free_limit_bytes.to_string(),
                on_off(alarm("disk")),
            ],
        ],
    )?;
    out.flush()
}

/// A byte count, or `default` (JSON null: back to the configured value).
fn limit_value(flag: &str, text: &str) -> CliResult<serde_json::Value> {
    if text.eq_ignore_ascii_case("default") {
        return Ok(serde_json::Value::Null);
    }
    text.trim()
        .parse::<u64>()
        .map(serde_json::Value::from)
        .map_err(|_| {
            CliError::Usage(format!(
                "--{} {text:?} is not a byte count or `default`",
                flag.replace('_', "-")
            ))
        })
}

/// `/api/{what}` or `/api/{what}/{vhost}`.
fn listing_path(what: &str, vhost: Option<&str>) -> String {
    match vhost {
        Some(vhost) => format!("/api/{what}/{}", path_segment(vhost)),
        None => format!("/api/{what}"),
    }
}

/// The names of the flags that are set, comma-separated (`-` for none).
fn flag_list(flags: &[(bool, &str)]) -> String {
    let set: Vec<&str> = flags
        .iter()
        .filter_map(|(on, name)| on.then_some(*name))
        .collect();
    if set.is_empty() {
        "-".to_owned()
    } else {
        set.join(",")
    }
}

fn permission_path(vhost: &str, user: &str) -> String {
    format!(
        "/api/permissions/{}/{}",
        path_segment(vhost),
        path_segment(user)
    )
}
