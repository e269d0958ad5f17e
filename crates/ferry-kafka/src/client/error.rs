//! Errors of the Kafka client, with Kafka's own error names.

use std::fmt;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;

/// Result type of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// An error code returned by a Kafka broker, named as Kafka names it
/// (`UNKNOWN_TOPIC_OR_PARTITION`), with the broker's message when it sent one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaError {
    /// The numeric Kafka error code.
    pub code: i16,
    /// Kafka's name for the code, e.g. `TOPIC_ALREADY_EXISTS`.
    pub name: String,
    /// The broker's explanation, if the response carried one.
    pub message: Option<String>,
}

impl KafkaError {
    /// The error for `code`, or `None` when `code` is 0 (no error).
    pub fn from_code(code: i16, message: Option<&str>) -> Option<KafkaError> {
        let error = ResponseError::try_from_code(code)?;
        Some(KafkaError {
            code,
            name: kafka_error_name(error),
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
        })
    }

    /// Whether Kafka marks this error as worth retrying (leader moves, loading coordinators…).
    pub fn is_retriable(&self) -> bool {
        ResponseError::try_from_code(self.code).is_some_and(|e| e.is_retriable())
    }

    /// The error as the codec crate's enum, for matching on specific codes.
    pub fn kind(&self) -> ResponseError {
        ResponseError::try_from_code(self.code).unwrap_or(ResponseError::Unknown(self.code))
    }
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(message) = &self.message {
            write!(f, " ({message})")?;
        }
        Ok(())
    }
}

impl std::error::Error for KafkaError {}

/// Kafka's SCREAMING_SNAKE name for an error (the codec crate names them in CamelCase).
fn kafka_error_name(error: ResponseError) -> String {
    if let ResponseError::Unknown(code) = error {
        return format!("UNKNOWN_ERROR_CODE_{code}");
    }
    let camel = error.to_string();
    let mut name = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Everything that can go wrong talking to a Kafka broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing an open connection failed.
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The broker closed the connection before answering.
    #[error("{addr} closed the connection")]
    Disconnected { addr: String },
    /// No answer within the request timeout.
    #[error("no answer from {addr} within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    /// The broker's answer could not be understood.
    #[error("bad response from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    /// A fetched record batch failed its checks (CRC, lengths, counts).
    #[error("corrupt record batch in partition {partition}: {reason}")]
    CorruptRecords { partition: i32, reason: String },
    /// A request could not be encoded (a value does not fit the chosen protocol version).
    #[error("cannot encode {what}: {reason}")]
    Encode { what: String, reason: String },
    /// The broker supports no version of an API that this client speaks.
    #[error("the broker at {addr} supports no version of {api:?} that this client speaks")]
    UnsupportedApi { addr: String, api: ApiKey },
    /// The broker answered with a Kafka error code.
    #[error("{context}: {error}")]
    Kafka { context: String, error: KafkaError },
    /// The caller asked for something impossible (unknown partition, bad argument).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The Kafka error behind this error, if it is one.
    pub fn kafka(&self) -> Option<&KafkaError> {
        match self {
            ClientError::Kafka { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether the connection this error came from should be dropped and reopened.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(
            self,
            ClientError::Io { .. }
                | ClientError::Disconnected { .. }
                | ClientError::Timeout { .. }
                | ClientError::Protocol { .. }
        )
    }
}

/// Turns a response error code into `Err(ClientError::Kafka)` with `context` ("topic foo").
pub(crate) fn check(
    code: i16,
    message: Option<&str>,
    context: impl FnOnce() -> String,
) -> Result<()> {
    match KafkaError::from_code(code, message) {
        None => Ok(()),
        Some(error) => Err(ClientError::Kafka {
            context: context(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka() {
        let e = KafkaError::from_code(3, None).expect("error");
        assert_eq!(e.name, "UNKNOWN_TOPIC_OR_PARTITION");
        assert!(e.is_retriable());
        let e = KafkaError::from_code(36, Some("exists")).expect("error");
        assert_eq!(e.to_string(), "TOPIC_ALREADY_EXISTS (exists)");
        assert_eq!(
            KafkaError::from_code(-1, None).map(|e| e.name),
            Some("UNKNOWN_SERVER_ERROR".into())
        );
        assert_eq!(
            KafkaError::from_code(30000, None).map(|e| e.name),
            Some("UNKNOWN_ERROR_CODE_30000".into())
        );
        assert!(KafkaError::from_code(0, None).is_none());
    }
}
