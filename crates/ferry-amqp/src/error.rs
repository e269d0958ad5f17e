//! AMQP errors: reply codes, their names, and the one mapping from the core's
//! [`MqError`] to a channel or connection close.
//!
//! Reply texts are `NAME - text`, as RabbitMQ sends them (`NOT_FOUND - no queue 'q' in
//! vhost '/'`); the core gives the text, this module the code and the prefix. Soft errors
//! (4xx) close the channel, hard errors (5xx, 320) the connection, as the spec's constants
//! say and RabbitMQ does.

use ferry_core::mq::MqError;

/// `CONNECTION_FORCED`: the broker closes the connection (shutdown).
pub const CONNECTION_FORCED: u16 = 320;
/// `NO_ROUTE`: a mandatory message had no queue (basic.return).
pub const NO_ROUTE: u16 = 312;
/// `ACCESS_REFUSED`.
pub const ACCESS_REFUSED: u16 = 403;
/// `NOT_FOUND`.
pub const NOT_FOUND: u16 = 404;
/// `RESOURCE_LOCKED`.
pub const RESOURCE_LOCKED: u16 = 405;
/// `PRECONDITION_FAILED`.
pub const PRECONDITION_FAILED: u16 = 406;
/// `FRAME_ERROR`.
pub const FRAME_ERROR: u16 = 501;
/// `SYNTAX_ERROR`.
pub const SYNTAX_ERROR: u16 = 502;
/// `COMMAND_INVALID`.
pub const COMMAND_INVALID: u16 = 503;
/// `CHANNEL_ERROR`.
pub const CHANNEL_ERROR: u16 = 504;
/// `UNEXPECTED_FRAME`.
pub const UNEXPECTED_FRAME: u16 = 505;
/// `RESOURCE_ERROR`.
pub const RESOURCE_ERROR: u16 = 506;
/// `NOT_ALLOWED`.
pub const NOT_ALLOWED: u16 = 530;
/// `NOT_IMPLEMENTED`.
pub const NOT_IMPLEMENTED: u16 = 540;
/// `INTERNAL_ERROR`.
pub const INTERNAL_ERROR: u16 = 541;

/// RabbitMQ's name of a reply code (the prefix of its reply texts).
pub fn reply_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        311 => "CONTENT_TOO_LARGE",
        NO_ROUTE => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        CONNECTION_FORCED => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        ACCESS_REFUSED => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        RESOURCE_ERROR => "RESOURCE_ERROR",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

/// What an error closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `channel.close`: the channel only.
    Channel,
    /// `connection.close`: the whole connection.
    Connection,
}

/// A protocol-level failure: which scope closes, with which code and text, blaming which
/// method.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct AmqpError {
    /// Channel or connection.
    pub scope: Scope,
    /// Reply code.
    pub code: u16,
    /// Full reply text (`NAME - detail`).
    pub text: String,
    /// Class of the method that failed (0 if none).
    pub class_id: u16,
    /// Method that failed (0 if none).
    pub method_id: u16,
}

impl AmqpError {
    /// A channel error with RabbitMQ's `NAME - detail` text.
    pub fn channel(code: u16, detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(Scope::Channel, code, detail)
    }

    /// A connection error with RabbitMQ's `NAME - detail` text.
    pub fn connection(code: u16, detail: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(Scope::Connection, code, detail)
    }

    fn new(scope: Scope, code: u16, detail: impl std::fmt::Display) -> AmqpError {
        AmqpError {
            scope,
            code,
            text: format!("{} - {detail}", reply_name(code)),
            class_id: 0,
            method_id: 0,
        }
    }

    /// The same error blaming `class_id`/`method_id` (unless one is already named).
    pub fn on(mut self, class_id: u16, method_id: u16) -> AmqpError {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }
}

impl From<MqError> for AmqpError {
    /// The one mapping from core errors to reply codes.
    fn from(error: MqError) -> AmqpError {
        match error {
            MqError::NotFound(text) => AmqpError::channel(NOT_FOUND, text),
            MqError::ResourceLocked(text) => AmqpError::channel(RESOURCE_LOCKED, text),
            MqError::PreconditionFailed(text) => AmqpError::channel(PRECONDITION_FAILED, text),
            MqError::AccessRefused(text) => AmqpError::channel(ACCESS_REFUSED, text),
            MqError::NotAllowed(text) => AmqpError::connection(NOT_ALLOWED, text),
            MqError::ResourceError(text) => AmqpError::connection(RESOURCE_ERROR, text),
            MqError::CommandInvalid(text) => AmqpError::connection(COMMAND_INVALID, text),
            MqError::NotImplemented(text) => AmqpError::connection(NOT_IMPLEMENTED, text),
            MqError::Core(error) => AmqpError::connection(INTERNAL_ERROR, error),
        }
    }
}

/// Result of the adapter's method handlers.
pub type AmqpResult<T> = Result<T, AmqpError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_map_to_codes_scopes_and_prefixed_texts() {
        let e = AmqpError::from(MqError::NotFound("no queue 'q' in vhost '/'".into()));
        assert_eq!(
            (e.scope, e.code, e.text.as_str()),
            (Scope::Channel, 404, "NOT_FOUND - no queue 'q' in vhost '/'")
        );
        let e = AmqpError::from(MqError::NotAllowed("vhost v not found".into()));
        assert_eq!(
            (e.scope, e.code, e.text.as_str()),
            (Scope::Connection, 530, "NOT_ALLOWED - vhost v not found")
        );
        let e = AmqpError::from(MqError::PreconditionFailed("x".into())).on(50, 10);
        assert_eq!(
            (e.code, e.class_id, e.method_id, e.text.as_str()),
            (406, 50, 10, "PRECONDITION_FAILED - x")
        );
        assert_eq!(e.clone().on(60, 40).class_id, 50, "first blame sticks");
        let e = AmqpError::from(MqError::ResourceLocked("locked".into()));
        assert_eq!((e.scope, e.code), (Scope::Channel, 405));
        let e = AmqpError::from(MqError::AccessRefused("no".into()));
        assert_eq!((e.scope, e.code), (Scope::Channel, 403));
        let e = AmqpError::from(MqError::NotImplemented("immediate=true".into()));
        assert_eq!(
            (e.scope, e.code, e.text.as_str()),
            (Scope::Connection, 540, "NOT_IMPLEMENTED - immediate=true")
        );
        let e = AmqpError::from(MqError::CommandInvalid("unknown exchange type 'x'".into()));
        assert_eq!(
            (e.scope, e.code, e.text.as_str()),
            (
                Scope::Connection,
                503,
                "COMMAND_INVALID - unknown exchange type 'x'"
            )
        );
        assert_eq!(reply_name(FRAME_ERROR), "FRAME_ERROR");
        assert_eq!(reply_name(UNEXPECTED_FRAME), "UNEXPECTED_FRAME");
    }
}
