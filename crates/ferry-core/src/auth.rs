//! Users, passwords and per-vhost permissions (RabbitMQ's model).
//!
//! A user has a salted password hash and tags; a permission gives a user three regular
//! expressions on one vhost — configure (declare/delete), write (publish, bind as the
//! destination's writer) and read (consume, get, purge, bind as the source's reader) —
//! matched against queue and exchange names exactly as RabbitMQ does. Users come from the
//! config file and the admin API/CLI and are stored in the internal log `__ferry_auth`.
//! The default `guest`/`guest` user exists on first start and may log in only from a
//! loopback address (`loopback_users`, as RabbitMQ).

use std::net::IpAddr;

use crate::mq::MqResult;

/// The default user created at first start.
pub const DEFAULT_USER: &str = "guest";

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

/// Users and permissions of the broker.
#[derive(Debug)]
pub struct Auth {
    pub(crate) _private: (),
}

impl Auth {
    /// Checks a login (PLAIN or AMQPLAIN both end here). ACCESS_REFUSED with RabbitMQ's
    /// text on a bad user or password, or for a loopback-only user from elsewhere.
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> MqResult<AuthedUser> {
        let _ = (user, password, peer);
        todo!("auth")
    }

    /// `connection.open`: NOT_ALLOWED (`access to vhost 'v' refused for user 'u'`) unless
    /// the user has a permission on the vhost.
    pub fn check_vhost(&self, user: &AuthedUser, vhost: &str) -> MqResult<()> {
        let _ = (user, vhost);
        todo!("auth")
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
        let _ = (user, vhost, access, kind, name);
        todo!("auth")
    }

    /// Adds or updates a user.
    pub fn put_user(&self, user: UserSpec) -> MqResult<()> {
        let _ = user;
        todo!("auth")
    }

    /// Deletes a user and its permissions.
    pub fn delete_user(&self, name: &str) -> MqResult<()> {
        let _ = name;
        todo!("auth")
    }

    /// Sets a user's permission on a vhost.
    pub fn set_permission(&self, permission: PermissionSpec) -> MqResult<()> {
        let _ = permission;
        todo!("auth")
    }

    /// Removes a user's permission on a vhost.
    pub fn clear_permission(&self, user: &str, vhost: &str) -> MqResult<()> {
        let _ = (user, vhost);
        todo!("auth")
    }

    /// Every user (without password hashes).
    pub fn users(&self) -> Vec<AuthedUser> {
        todo!("auth")
    }

    /// Every permission.
    pub fn permissions(&self) -> Vec<PermissionSpec> {
        todo!("auth")
    }
}
