//! `ferry user|vhost|permissions`: users, vhosts and permissions of a running broker,
//! through its HTTP admin API (`--http`, as an administrator user).

use std::time::Duration;

use ferry_http::client::{path_segment, AdminClient, ClientError};
use serde::Deserialize;
use serde_json::json;

use super::{CliResult, Output};
use crate::cli::{AdminArgs, PermissionsCommand, UserCommand, VhostCommand};

/// A user as the admin API lists it.
#[derive(Debug, Deserialize)]
struct UserJson {
    name: String,
    tags: Vec<String>,
}

/// A vhost as the admin API lists it.
#[derive(Debug, Deserialize)]
struct VhostJson {
    name: String,
}

/// A permission as the admin API lists it.
#[derive(Debug, Deserialize)]
struct PermissionJson {
    user: String,
    vhost: String,
    configure: String,
    write: String,
    read: String,
}

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

fn permission_path(vhost: &str, user: &str) -> String {
    format!(
        "/api/permissions/{}/{}",
        path_segment(vhost),
        path_segment(user)
    )
}
