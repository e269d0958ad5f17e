//! Users, passwords and per-vhost permissions (RabbitMQ's model).
//!
//! A user has a salted password hash and tags; a permission gives a user three regular
//! expressions on one vhost — configure (declare/delete), write (publish, bind as the
//! destination's writer) and read (consume, get, purge, bind as the source's reader) —
//! matched against queue and exchange names exactly as RabbitMQ does. Users come from the
//! config file and the admin API/CLI and are stored in the internal log `__ferry_auth`.
//! The default `guest`/`guest` user exists on first start and may log in only from a
//! loopback address (`loopback_users`, as RabbitMQ).
//!
//! Password hashes are RabbitMQ's `rabbit_password_hashing_sha256`: base64 of a 4-byte
//! random salt followed by SHA-256(salt ++ password), so definitions can move between the
//! two brokers. Permission patterns are searched for anywhere in the name (RabbitMQ does
//! not anchor them: `^` and `$` are the user's to write), and an empty pattern means `^$`,
//! which no named resource matches.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use ferry_storage::{FlushPolicy, Store};
use parking_lot::{Mutex, RwLock};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::internal::{from_json, now_ms, to_json, InternalLog, InternalRecord};
use crate::mq::{MqError, MqResult};
use crate::{CoreError, Result};

/// The default user created at first start.
pub const DEFAULT_USER: &str = "guest";
/// The default user's password (RabbitMQ's).
pub const DEFAULT_PASSWORD: &str = "guest";
/// The vhost the default user gets full permissions on.
pub const DEFAULT_VHOST: &str = "/";
/// Tag of users allowed to use the admin API.
pub const ADMINISTRATOR_TAG: &str = "administrator";
/// Name of the internal log holding users and permissions.
pub(crate) const AUTH_LOG: &str = "__ferry_auth";
/// RabbitMQ's name of the hashing scheme used for every stored password.
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";
/// Bytes of random salt in front of each hash (RabbitMQ's 4).
const SALT_BYTES: usize = 4;
/// Bytes of a SHA-256 digest.
const SHA256_BYTES: usize = 32;
/// Longest user name accepted (an AMQP short string).
pub const USER_NAME_LEN_MAX: usize = 255;
/// Longest vhost name accepted (an AMQP short string).
pub const VHOST_NAME_LEN_MAX: usize = 255;
/// Longest permission pattern accepted.
pub const PATTERN_LEN_MAX: usize = 4096;
/// Bound on a compiled permission pattern, so a hostile pattern cannot use much memory.
const PATTERN_COMPILED_BYTES_MAX: usize = 1 << 20;
/// Most tags one user may have.
pub const TAGS_MAX: usize = 64;

/// The text RabbitMQ sends (after `ACCESS_REFUSED - `) for any refused login, whatever
/// the reason: the reason itself only goes to the broker log.
pub fn login_refused_text(mechanism: &str) -> String {
    format!(
        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
    )
}

/// What an operation needs on a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Declare, delete.
    Configure,
    /// Publish to an exchange, bind a queue (write on the queue).
    Write,
    /// Consume or get from a queue, bind from an exchange (read on the exchange).
    Read,
}

/// Kind of resource a permission is checked on (named as in RabbitMQ's error texts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// `queue`
    Queue,
    /// `exchange`
    Exchange,
}

impl ResourceKind {
    /// The word RabbitMQ uses in its texts.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Queue => "queue",
            ResourceKind::Exchange => "exchange",
        }
    }
}

/// A user as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    /// Name.
    pub name: String,
    /// Password in clear (hashed on store).
    pub password: String,
    /// Tags (`administrator`, `management`, …).
    pub tags: Vec<String>,
}

/// A permission as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionSpec {
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// Configure regex.
    pub configure: String,
    /// Write regex.
    pub write: String,
    /// Read regex.
    pub read: String,
}

/// An authenticated user of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthedUser {
    /// Name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
}

impl AuthedUser {
    /// Whether the user may use the admin API.
    pub fn is_administrator(&self) -> bool {
        self.tags.iter().any(|t| t == ADMINISTRATOR_TAG)
    }
}

/// Users and permissions applied at every start (from the config file), and who may log
/// in only from loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// Users created or updated at start: the config wins for the users it names.
    pub users: Vec<UserSpec>,
    /// Permissions set at start (their users must exist).
    pub permissions: Vec<PermissionSpec>,
    /// Users that may log in only from a loopback address (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users: Vec::new(),
            permissions: Vec::new(),
            loopback_users: vec![DEFAULT_USER.to_owned()],
        }
    }
}

/// Key of an `__ferry_auth` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum AuthKey {
    /// A user; a tombstone deletes it.
    User { name: String },
    /// A user's permission on a vhost; a tombstone clears it.
    Permission { user: String, vhost: String },
    /// Written once, with the default user: later starts never recreate it.
    Initialized,
}

/// Value of an [`AuthKey::User`] record (RabbitMQ's field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct UserRecord {
    password_hash: String,
    hashing_algorithm: String,
    tags: Vec<String>,
}

/// Value of an [`AuthKey::Permission`] record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PermissionRecord {
    configure: String,
    write: String,
    read: String,
}

/// A permission with its compiled patterns.
#[derive(Debug)]
struct Permission {
    record: PermissionRecord,
    configure: Regex,
    write: Regex,
    read: Regex,
}

impl Permission {
    fn compile(record: PermissionRecord) -> MqResult<Permission> {
        Ok(Permission {
            configure: compile_pattern(&record.configure, "configure")?,
            write: compile_pattern(&record.write, "write")?,
            read: compile_pattern(&record.read, "read")?,
            record,
        })
    }

    fn pattern(&self, access: Access) -> &Regex {
        match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        }
    }
}

/// Users and permissions as replayed and changed since.
#[derive(Debug, Default)]
struct AuthState {
    users: BTreeMap<String, UserRecord>,
    /// user → vhost → permission (looked up by `&str` on every check, no allocation).
    permissions: BTreeMap<String, BTreeMap<String, Arc<Permission>>>,
    initialized: bool,
}

impl AuthState {
    /// Folds replayed records, in log order. A stored pattern this version cannot
    /// compile is dropped with a warning rather than refusing to start.
    fn replay(records: &[InternalRecord]) -> Result<AuthState> {
        let mut state = AuthState::default();
        for record in records {
            match from_json::<AuthKey>(&record.key)? {
                AuthKey::User { name } => match &record.value {
                    Some(value) => {
                        state.users.insert(name, from_json(value)?);
                    }
                    None => {
                        state.users.remove(&name);
                        state.permissions.remove(&name);
                    }
                },
                AuthKey::Permission { user, vhost } => match &record.value {
                    Some(value) => match Permission::compile(from_json(value)?) {
                        Ok(permission) => {
                            state
                                .permissions
                                .entry(user)
                                .or_default()
                                .insert(vhost, Arc::new(permission));
                        }
                        Err(e) => {
                            warn!(user, vhost, error = %e, "ignoring stored permission");
                        }
                    },
                    None => state.remove_permission(&user, &vhost),
                },
                AuthKey::Initialized => state.initialized = true,
            }
        }
        Ok(state)
    }

    fn permission(&self, user: &str, vhost: &str) -> Option<&Arc<Permission>> {
        self.permissions.get(user)?.get(vhost)
    }

    fn remove_permission(&mut self, user: &str, vhost: &str) {
        if let Some(vhosts) = self.permissions.get_mut(user) {
            vhosts.remove(vhost);
            if vhosts.is_empty() {
                self.permissions.remove(user);
            }
        }
    }
}

/// Users and permissions of the broker.
#[derive(Debug)]
pub struct Auth {
    /// `__ferry_auth`: every change is durable before it is visible.
    log: InternalLog,
    state: RwLock<AuthState>,
    /// Serialises changes with their log writes.
    admin: Mutex<()>,
    loopback_users: Vec<String>,
}

impl Auth {
    /// Opens `__ferry_auth`, creates the default user on first start, then applies the
    /// configured users and permissions.
    pub(crate) fn open(store: &Store, config: &AuthConfig) -> Result<Auth> {
        let (log, records) = InternalLog::open(store, AUTH_LOG, FlushPolicy::Sync)?;
        let state = AuthState::replay(&records)?;
        drop(records);
        let auth = Auth {
            log,
            state: RwLock::new(state),
            admin: Mutex::new(()),
            loopback_users: config.loopback_users.clone(),
        };
        let invalid = |what: &str, e: MqError| CoreError::InvalidConfig(format!("{what}: {e}"));
        if !auth.state.read().initialized {
            auth.create_default_user()
                .map_err(|e| invalid("default user", e))?;
        }
        for user in &config.users {
            auth.apply_configured_user(user)
                .map_err(|e| invalid(&format!("user {:?}", user.name), e))?;
        }
        for permission in &config.permissions {
            let unchanged = auth
                .state
                .read()
                .permission(&permission.user, &permission.vhost)
                .is_some_and(|p| p.record == permission_record(permission));
            if !unchanged {
                auth.set_permission(permission.clone()).map_err(|e| {
                    invalid(
                        &format!(
                            "permission of {:?} on vhost {:?}",
                            permission.user, permission.vhost
                        ),
                        e,
                    )
                })?;
            }
        }
        Ok(auth)
    }

    /// Checks a PLAIN login. ACCESS_REFUSED with RabbitMQ's text on a bad user or
    /// password, or for a loopback-only user from elsewhere.
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> MqResult<AuthedUser> {
        self.authenticate_with("PLAIN", user, password, peer)
    }

    /// Checks a login made with `mechanism` (`PLAIN`, `AMQPLAIN`: RabbitMQ names it in
    /// the refusal text). The reason of a refusal is logged, never told to the client.
    pub fn authenticate_with(
        &self,
        mechanism: &str,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> MqResult<AuthedUser> {
        let refused = |reason: &str| {
            warn!(%peer, mechanism, "login refused: user '{user}' - {reason}");
            MqError::AccessRefused(login_refused_text(mechanism))
        };
        if password.is_empty() {
            return Err(refused("blank passwords are not accepted"));
        }
        let tags = {
            let state = self.state.read();
            match state.users.get(user) {
                Some(record) if password_matches(record, password) => record.tags.clone(),
                _ => return Err(refused("invalid credentials")),
            }
        };
        if self.loopback_users.iter().any(|u| u == user) && !is_loopback(peer) {
            return Err(refused("can only connect via localhost"));
        }
        Ok(AuthedUser {
            name: user.to_owned(),
            tags,
        })
    }

    /// `connection.open`: NOT_ALLOWED (`access to vhost 'v' refused for user 'u'`) unless
    /// the user has a permission on the vhost.
    pub fn check_vhost(&self, user: &AuthedUser, vhost: &str) -> MqResult<()> {
        if self.state.read().permission(&user.name, vhost).is_some() {
            return Ok(());
        }
        Err(MqError::NotAllowed(format!(
            "access to vhost '{vhost}' refused for user '{}'",
            user.name
        )))
    }

    /// ACCESS_REFUSED (`access to queue 'q' in vhost '/' refused for user 'u'`) unless the
    /// user's permission on `vhost` allows `access` on the named resource.
    pub fn check(
        &self,
        user: &AuthedUser,
        vhost: &str,
        access: Access,
        kind: ResourceKind,
        name: &str,
    ) -> MqResult<()> {
        let allowed = self
            .state
            .read()
            .permission(&user.name, vhost)
            .is_some_and(|p| p.pattern(access).is_match(name));
        if allowed {
            return Ok(());
        }
        Err(MqError::AccessRefused(format!(
            "access to {} '{name}' in vhost '{vhost}' refused for user '{}'",
            kind.as_str(),
            user.name
        )))
    }

    /// Adds or updates a user (the password is hashed with a fresh salt).
    pub fn put_user(&self, user: UserSpec) -> MqResult<()> {
        validate_user_name(&user.name)?;
        if user.password.is_empty() {
            return Err(MqError::PreconditionFailed(format!(
                "user '{}': the password must not be empty",
                user.name
            )));
        }
        let tags = normalize_tags(user.tags)?;
        let record = UserRecord {
            password_hash: hash_password(&user.password, rand::random()),
            hashing_algorithm: HASHING_ALGORITHM.to_owned(),
            tags,
        };
        let _admin = self.admin.lock();
        self.write(vec![(
            to_json(&AuthKey::User {
                name: user.name.clone(),
            }),
            Some(to_json(&record)),
        )])?;
        let created = self
            .state
            .write()
            .users
            .insert(user.name.clone(), record)
            .is_none();
        info!(
            user = %user.name,
            "{}",
            if created { "user created" } else { "user updated" }
        );
        Ok(())
    }

    /// Deletes a user and its permissions; NOT_FOUND if there is no such user.
    pub fn delete_user(&self, name: &str) -> MqResult<()> {
        let _admin = self.admin.lock();
        if !self.state.read().users.contains_key(name) {
            return Err(no_user(name));
        }
        // The user's tombstone drops its permissions at replay too.
        self.write(vec![(
            to_json(&AuthKey::User {
                name: name.to_owned(),
            }),
            None,
        )])?;
        let mut state = self.state.write();
        state.users.remove(name);
        state.permissions.remove(name);
        info!(user = name, "user deleted");
        Ok(())
    }

    /// Sets a user's permission on a vhost; NOT_FOUND if the user does not exist,
    /// PRECONDITION_FAILED for a pattern that does not compile. That the vhost exists is
    /// the caller's check (vhosts live in the routing model).
    pub fn set_permission(&self, permission: PermissionSpec) -> MqResult<()> {
        validate_vhost_name(&permission.vhost)?;
        let record = permission_record(&permission);
        let compiled = Permission::compile(record.clone())?;
        let _admin = self.admin.lock();
        if !self.state.read().users.contains_key(&permission.user) {
            return Err(no_user(&permission.user));
        }
        self.write(vec![(
            to_json(&AuthKey::Permission {
                user: permission.user.clone(),
                vhost: permission.vhost.clone(),
            }),
            Some(to_json(&record)),
        )])?;
        self.state
            .write()
            .permissions
            .entry(permission.user.clone())
            .or_default()
            .insert(permission.vhost.clone(), Arc::new(compiled));
        info!(user = %permission.user, vhost = %permission.vhost, "permission set");
        Ok(())
    }

    /// Removes a user's permission on a vhost; NOT_FOUND if it had none.
    pub fn clear_permission(&self, user: &str, vhost: &str) -> MqResult<()> {
        let _admin = self.admin.lock();
        if self.state.read().permission(user, vhost).is_none() {
            return Err(MqError::NotFound(format!(
                "no permission of user '{user}' in vhost '{vhost}'"
            )));
        }
        self.write(vec![(
            to_json(&AuthKey::Permission {
                user: user.to_owned(),
                vhost: vhost.to_owned(),
            }),
            None,
        )])?;
        self.state.write().remove_permission(user, vhost);
        info!(user, vhost, "permission cleared");
        Ok(())
    }

    /// Removes every user's permission on `vhost` (the vhost was deleted), returning how
    /// many there were.
    pub fn clear_vhost(&self, vhost: &str) -> MqResult<usize> {
        let _admin = self.admin.lock();
        let users: Vec<String> = self
            .state
            .read()
            .permissions
            .iter()
            .filter(|(_, vhosts)| vhosts.contains_key(vhost))
            .map(|(user, _)| user.clone())
            .collect();
        if users.is_empty() {
            return Ok(0);
        }
        let tombstones = users
            .iter()
            .map(|user| {
                let key = AuthKey::Permission {
                    user: user.clone(),
                    vhost: vhost.to_owned(),
                };
                (to_json(&key), None)
            })
            .collect();
        self.write(tombstones)?;
        let mut state = self.state.write();
        for user in &users {
            state.remove_permission(user, vhost);
        }
        info!(
            vhost,
            permissions = users.len(),
            "permissions of a vhost cleared"
        );
        Ok(users.len())
    }

    /// One user (without its password hash).
    pub fn user(&self, name: &str) -> Option<AuthedUser> {
        self.state.read().users.get(name).map(|record| AuthedUser {
            name: name.to_owned(),
            tags: record.tags.clone(),
        })
    }

    /// Every user (without password hashes), by name.
    pub fn users(&self) -> Vec<AuthedUser> {
        self.state
            .read()
            .users
            .iter()
            .map(|(name, record)| AuthedUser {
                name: name.clone(),
                tags: record.tags.clone(),
            })
            .collect()
    }

    /// Every permission, by user then vhost.
    pub fn permissions(&self) -> Vec<PermissionSpec> {
        let state = self.state.read();
        let mut all = Vec::new();
        for (user, vhosts) in &state.permissions {
            for (vhost, permission) in vhosts {
                all.push(PermissionSpec {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    configure: permission.record.configure.clone(),
                    write: permission.record.write.clone(),
                    read: permission.record.read.clone(),
                });
            }
        }
        all
    }

    /// The first start's user: `guest`/`guest`, administrator, full permissions on `/`.
    fn create_default_user(&self) -> MqResult<()> {
        self.put_user(UserSpec {
            name: DEFAULT_USER.to_owned(),
            password: DEFAULT_PASSWORD.to_owned(),
            tags: vec![ADMINISTRATOR_TAG.to_owned()],
        })?;
        let all = ".*".to_owned();
        self.set_permission(PermissionSpec {
            user: DEFAULT_USER.to_owned(),
            vhost: DEFAULT_VHOST.to_owned(),
            configure: all.clone(),
            write: all.clone(),
            read: all,
        })?;
        let _admin = self.admin.lock();
        self.write(vec![(to_json(&AuthKey::Initialized), Some(to_json(&true)))])?;
        self.state.write().initialized = true;
        Ok(())
    }

    /// Stores a configured user unless the stored one already has its password and tags
    /// (so restarts do not grow the log).
    fn apply_configured_user(&self, user: &UserSpec) -> MqResult<()> {
        let unchanged = self
            .state
            .read()
            .users
            .get(&user.name)
            .is_some_and(|stored| {
                password_matches(stored, &user.password)
                    && normalize_tags(user.tags.clone()).is_ok_and(|tags| tags == stored.tags)
            });
        if unchanged {
            return Ok(());
        }
        self.put_user(user.clone())
    }

    /// Durably appends records to `__ferry_auth`.
    fn write(&self, entries: Vec<(Bytes, Option<Bytes>)>) -> MqResult<()> {
        Ok(self.log.append_durable(entries, now_ms())?)
    }
}

/// `base64(salt ++ SHA-256(salt ++ password))`, RabbitMQ's stored form.
fn hash_password(password: &str, salt: [u8; SALT_BYTES]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut stored = Vec::with_capacity(SALT_BYTES + SHA256_BYTES);
    stored.extend_from_slice(&salt);
    stored.extend_from_slice(&hasher.finalize());
    BASE64.encode(stored)
}

/// Whether `password` hashes to the stored hash (compared in constant time).
fn password_matches(record: &UserRecord, password: &str) -> bool {
    if record.hashing_algorithm != HASHING_ALGORITHM {
        return false;
    }
    let Ok(stored) = BASE64.decode(&record.password_hash) else {
        return false;
    };
    if stored.len() != SALT_BYTES + SHA256_BYTES {
        return false;
    }
    let mut salt = [0u8; SALT_BYTES];
    salt.copy_from_slice(&stored[..SALT_BYTES]);
    let Ok(computed) = BASE64.decode(hash_password(password, salt)) else {
        return false;
    };
    // No early exit: the time taken says nothing about how much of the hash matched.
    stored
        .iter()
        .zip(&computed)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// A loopback address, IPv4-mapped IPv6 included (a dual-stack listener sees those).
pub fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// Compiles a permission pattern as RabbitMQ matches it: unanchored, `""` as `^$`.
fn compile_pattern(pattern: &str, which: &str) -> MqResult<Regex> {
    if pattern.len() > PATTERN_LEN_MAX {
        return Err(MqError::PreconditionFailed(format!(
            "{which} pattern is {} bytes long; the limit is {PATTERN_LEN_MAX}",
            pattern.len()
        )));
    }
    let source = if pattern.is_empty() { "^$" } else { pattern };
    RegexBuilder::new(source)
        .size_limit(PATTERN_COMPILED_BYTES_MAX)
        .build()
        .map_err(|e| {
            let reason = e.to_string().replace('\n', " ");
            MqError::PreconditionFailed(format!("{which} pattern {pattern:?} is invalid: {reason}"))
        })
}

fn permission_record(permission: &PermissionSpec) -> PermissionRecord {
    PermissionRecord {
        configure: permission.configure.clone(),
        write: permission.write.clone(),
        read: permission.read.clone(),
    }
}

fn no_user(name: &str) -> MqError {
    MqError::NotFound(format!("no user '{name}'"))
}

fn validate_user_name(name: &str) -> MqResult<()> {
    if name.is_empty() || name.len() > USER_NAME_LEN_MAX {
        return Err(MqError::PreconditionFailed(format!(
            "user name {name:?} must be 1 to {USER_NAME_LEN_MAX} bytes long"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(MqError::PreconditionFailed(format!(
            "user name {name:?} contains control characters"
        )));
    }
    Ok(())
}

/// A vhost name: 1 to 255 bytes, no control characters (checked here and by the admin API).
pub fn validate_vhost_name(name: &str) -> MqResult<()> {
    if name.is_empty() || name.len() > VHOST_NAME_LEN_MAX {
        return Err(MqError::PreconditionFailed(format!(
            "vhost name {name:?} must be 1 to {VHOST_NAME_LEN_MAX} bytes long"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(MqError::PreconditionFailed(format!(
            "vhost name {name:?} contains control characters"
        )));
    }
    Ok(())
}

/// Trims tags, drops empty ones and duplicates (keeping the first), and bounds the count.
fn normalize_tags(tags: Vec<String>) -> MqResult<Vec<String>> {
    let mut kept: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.trim();
        if !tag.is_empty() && !kept.iter().any(|k| k == tag) {
            kept.push(tag.to_owned());
        }
    }
    if kept.len() > TAGS_MAX {
        return Err(MqError::PreconditionFailed(format!(
            "{} tags given; the limit is {TAGS_MAX}",
            kept.len()
        )));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_storage::StoreConfig;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn open(dir: &std::path::Path, config: &AuthConfig) -> (Arc<Store>, Result<Auth>) {
        let store = Store::open(StoreConfig::new(dir)).expect("store");
        let auth = Auth::open(&store, config);
        (store, auth)
    }

    fn user(name: &str, password: &str, tags: &[&str]) -> UserSpec {
        UserSpec {
            name: name.into(),
            password: password.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn perm(user: &str, vhost: &str, c: &str, w: &str, r: &str) -> PermissionSpec {
        PermissionSpec {
            user: user.into(),
            vhost: vhost.into(),
            configure: c.into(),
            write: w.into(),
            read: r.into(),
        }
    }

    fn authed(name: &str) -> AuthedUser {
        AuthedUser {
            name: name.into(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn hashes_are_rabbitmqs_salted_sha256() {
        // The salt is the first 4 bytes of the decoded hash, the rest SHA-256(salt ++ pw).
        let hash = hash_password("secret", [1, 2, 3, 4]);
        let raw = BASE64.decode(&hash).expect("base64");
        assert_eq!(raw.len(), 36);
        assert_eq!(&raw[..4], &[1, 2, 3, 4]);
        let mut hasher = Sha256::new();
        hasher.update([1u8, 2, 3, 4]);
        hasher.update(b"secret");
        assert_eq!(&raw[4..], hasher.finalize().as_slice());
        let record = UserRecord {
            password_hash: hash,
            hashing_algorithm: HASHING_ALGORITHM.into(),
            tags: Vec::new(),
        };
        assert!(password_matches(&record, "secret"));
        assert!(!password_matches(&record, "Secret"));
        assert!(!password_matches(
            &UserRecord {
                password_hash: "not base64!".into(),
                ..record.clone()
            },
            "secret"
        ));
        assert!(!password_matches(
            &UserRecord {
                hashing_algorithm: "rabbit_password_hashing_md5".into(),
                ..record
            },
            "secret"
        ));
    }

    #[test]
    fn first_start_creates_guest_for_loopback_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, auth) = open(dir.path(), &AuthConfig::default());
        let auth = auth.expect("open");
        let guest = auth.authenticate("guest", "guest", LOCAL).expect("guest");
        assert!(guest.is_administrator());
        let v6_mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert!(auth.authenticate("guest", "guest", v6_mapped).is_ok());
        assert!(auth
            .authenticate("guest", "guest", "::1".parse().expect("ip"))
            .is_ok());
        let refused = auth
            .authenticate("guest", "guest", REMOTE)
            .expect_err("remote guest");
        assert_eq!(
            refused.to_string(),
            "Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
        );
        assert!(matches!(refused, MqError::AccessRefused(_)));
        let wrong = auth
            .authenticate_with("AMQPLAIN", "guest", "nope", LOCAL)
            .expect_err("bad password");
        assert_eq!(wrong.to_string(), login_refused_text("AMQPLAIN"));
        assert!(auth.authenticate("nobody", "guest", LOCAL).is_err());
        assert!(auth.authenticate("guest", "", LOCAL).is_err());
        auth.check_vhost(&guest, "/").expect("guest on /");
        assert_eq!(
            auth.permissions(),
            vec![perm("guest", "/", ".*", ".*", ".*")]
        );
        store.shutdown().expect("shutdown");
    }

    #[test]
    fn loopback_users_can_be_emptied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuthConfig {
            loopback_users: Vec::new(),
            ..AuthConfig::default()
        };
        let (store, auth) = open(dir.path(), &config);
        assert!(auth
            .expect("open")
            .authenticate("guest", "guest", REMOTE)
            .is_ok());
        store.shutdown().expect("shutdown");
    }

    #[test]
    fn permissions_match_as_rabbitmq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, auth) = open(dir.path(), &AuthConfig::default());
        let auth = auth.expect("open");
        auth.put_user(user("u", "pw", &[])).expect("user");
        auth.set_permission(perm("u", "v", "^tmp-", "", "orders"))
            .expect("permission");
        let u = authed("u");
        auth.check_vhost(&u, "v").expect("vhost with a permission");
        let denied = auth.check_vhost(&u, "/").expect_err("no permission on /");
        assert!(matches!(denied, MqError::NotAllowed(_)));
        assert_eq!(
            denied.to_string(),
            "access to vhost '/' refused for user 'u'"
        );
        let q = ResourceKind::Queue;
        auth.check(&u, "v", Access::Configure, q, "tmp-1")
            .expect("anchored prefix");
        assert!(auth
            .check(&u, "v", Access::Configure, q, "x-tmp-1")
            .is_err());
        // Unanchored: "orders" is found inside the name.
        auth.check(&u, "v", Access::Read, q, "all-orders-eu")
            .expect("search, not full match");
        // An empty pattern is ^$: nothing named matches.
        let refused = auth
            .check(&u, "v", Access::Write, ResourceKind::Exchange, "amq.topic")
            .expect_err("empty write pattern");
        assert!(matches!(refused, MqError::AccessRefused(_)));
        assert_eq!(
            refused.to_string(),
            "access to exchange 'amq.topic' in vhost 'v' refused for user 'u'"
        );
        assert!(auth.check(&u, "/", Access::Read, q, "orders").is_err());
        assert!(matches!(
            auth.set_permission(perm("u", "v", "(", ".*", ".*")),
            Err(MqError::PreconditionFailed(_))
        ));
        assert!(matches!(
            auth.set_permission(perm("ghost", "v", ".*", ".*", ".*")),
            Err(MqError::NotFound(_))
        ));
        store.shutdown().expect("shutdown");
    }

    #[test]
    fn changes_survive_a_restart_and_config_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (store, auth) = open(dir.path(), &AuthConfig::default());
            let auth = auth.expect("open");
            auth.put_user(user("alice", "a1", &["management", " ", "management"]))
                .expect("alice");
            auth.set_permission(perm("alice", "/", "", ".*", ".*"))
                .expect("perm");
            auth.put_user(user("bob", "b1", &[])).expect("bob");
            auth.set_permission(perm("bob", "/", ".*", ".*", ".*"))
                .expect("perm");
            auth.delete_user("guest").expect("delete guest");
            auth.clear_permission("bob", "/").expect("clear");
            assert!(matches!(
                auth.clear_permission("bob", "/"),
                Err(MqError::NotFound(_))
            ));
            assert!(matches!(
                auth.delete_user("guest"),
                Err(MqError::NotFound(_))
            ));
            store.shutdown().expect("shutdown");
        }
        let config = AuthConfig {
            users: vec![user("bob", "b2", &["administrator"])],
            permissions: vec![perm("bob", "/", "^b", "^b", "^b")],
            ..AuthConfig::default()
        };
        {
            let (store, auth) = open(dir.path(), &config);
            let auth = auth.expect("reopen");
            // guest stays deleted: the default user is made on the first start only.
            assert!(auth.user("guest").is_none());
            let alice = auth.authenticate("alice", "a1", REMOTE).expect("alice");
            assert_eq!(alice.tags, vec!["management".to_owned()]);
            assert!(auth.authenticate("bob", "b1", LOCAL).is_err());
            assert!(auth
                .authenticate("bob", "b2", REMOTE)
                .expect("bob")
                .is_administrator());
            assert_eq!(
                auth.permissions(),
                vec![
                    perm("alice", "/", "", ".*", ".*"),
                    perm("bob", "/", "^b", "^b", "^b"),
                ]
            );
            store.shutdown().expect("shutdown");
        }
        // Unchanged config users are not rewritten at every start.
        let end = {
            let (store, auth) = open(dir.path(), &config);
            let end = auth.expect("reopen").log.log_end_offset();
            store.shutdown().expect("shutdown");
            end
        };
        let (store, auth) = open(dir.path(), &config);
        assert_eq!(auth.expect("reopen").log.log_end_offset(), end);
        store.shutdown().expect("shutdown");
        drop(store);

        // Clearing a vhost drops every permission on it, durably.
        let (store, auth) = open(dir.path(), &AuthConfig::default());
        let auth = auth.expect("reopen");
        assert_eq!(auth.clear_vhost("/").expect("clear vhost"), 2);
        assert_eq!(auth.clear_vhost("/").expect("again"), 0);
        assert!(auth.permissions().is_empty());
        drop(auth);
        store.shutdown().expect("shutdown");
        drop(store);
        let (store, auth) = open(dir.path(), &AuthConfig::default());
        assert!(auth.expect("reopen").permissions().is_empty());
        store.shutdown().expect("shutdown");
    }

    #[test]
    fn bad_config_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuthConfig {
            permissions: vec![perm("nobody", "/", ".*", ".*", ".*")],
            ..AuthConfig::default()
        };
        let (store, auth) = open(dir.path(), &config);
        let e = auth.expect_err("unknown user");
        assert!(e.to_string().contains("no user 'nobody'"), "{e}");
        store.shutdown().expect("shutdown");
    }

    #[test]
    fn names_and_tags_are_validated() {
        assert!(validate_user_name("").is_err());
        assert!(validate_user_name(&"x".repeat(USER_NAME_LEN_MAX + 1)).is_err());
        assert!(validate_user_name("a\nb").is_err());
        assert!(validate_vhost_name("/").is_ok());
        assert!(normalize_tags((0..=TAGS_MAX).map(|i| i.to_string()).collect()).is_err());
        assert!(compile_pattern(&"a".repeat(PATTERN_LEN_MAX + 1), "read").is_err());
    }
}
