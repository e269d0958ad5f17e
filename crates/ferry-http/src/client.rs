//! A small client of the admin API: one HTTP/1.1 request per connection, JSON bodies,
//! HTTP basic credentials. The `ferry user|vhost|permissions` commands and the tests use it.

use std::time::Duration;

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use axum::http::{Method, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;

/// Largest response body read, in bytes (a listing of many topics is the biggest).
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// A failed admin API call, described in one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TCP connection.
    #[error("cannot connect to the admin API at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// No complete answer in time.
    #[error("the admin API at {address} did not answer within {timeout_ms} ms")]
    Timeout { address: String, timeout_ms: u64 },
    /// The HTTP exchange itself failed.
    #[error("HTTP failure talking to {address}: {message}")]
    Http { address: String, message: String },
    /// The API answered with an error status; `reason` is its explanation.
    #[error("{reason} (HTTP {status})")]
    Status { status: u16, reason: String },
    /// A 2xx answer whose body is not the JSON expected.
    #[error("unexpected answer from {address}: {message}")]
    Decode { address: String, message: String },
}

/// One answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

/// Where the admin API is and who is asking.
#[derive(Clone, Debug)]
pub struct AdminClient {
    address: String,
    authorization: String,
    timeout: Duration,
}

impl AdminClient {
    /// A client of the admin API at `address` (`host:port`) as `user`.
    pub fn new(address: &str, user: &str, password: &str, timeout: Duration) -> AdminClient {
        AdminClient {
            address: address.to_owned(),
            authorization: format!("Basic {}", BASE64.encode(format!("{user}:{password}"))),
            timeout,
        }
    }

    /// `GET path`, decoding the JSON answer; an error status is an error.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let answer = self.checked(Method::GET, path, None).await?;
        serde_json::from_slice(&answer.body).map_err(|e| ClientError::Decode {
            address: self.address.clone(),
            message: e.to_string(),
        })
    }

    /// `PUT path` with a JSON body; returns the status (201 created, 204 changed).
    pub async fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<u16, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            address: self.address.clone(),
            message: e.to_string(),
        })?;
        Ok(self
            .checked(Method::PUT, path, Some(Bytes::from(body)))
            .await?
            .status)
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.checked(Method::DELETE, path, None).await.map(|_| ())
    }

    /// A request whose non-2xx answer becomes [`ClientError::Status`] with the API's reason.
    async fn checked(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, ClientError> {
        let answer = self.request(method, path, body).await?;
        if (200..300).contains(&answer.status) {
            return Ok(answer);
        }
        let reason = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or_else(|| {
                StatusCode::from_u16(answer.status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_owned()
            });
        Err(ClientError::Status {
            status: answer.status,
            reason,
        })
    }

    /// One request on a fresh connection, bounded by the timeout; any status is returned.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, ClientError> {
        let timeout_ms = self.timeout.as_millis() as u64;
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout {
                address: self.address.clone(),
                timeout_ms,
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, ClientError> {
        let http = |e: &dyn std::fmt::Display| ClientError::Http {
            address: self.address.clone(),
            message: e.to_string(),
        };
        let stream =
            TcpStream::connect(&self.address)
                .await
                .map_err(|source| ClientError::Connect {
                    address: self.address.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        // The connection task ends with the exchange (the sender is dropped after it).
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.address)
            .header(AUTHORIZATION, &self.authorization);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| http(&e))?;
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

/// Percent-encodes one path segment (`/` is a valid vhost name: `%2F`).
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(path_segment("/"), "%2F");
        assert_eq!(path_segment("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(path_segment("Az09-._~"), "Az09-._~");
    }
}
