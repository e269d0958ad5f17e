//! One TCP connection to a broker: framing, request headers, correlation ids and
//! API version negotiation. One request is in flight at a time, which is all a
//! command-line tool needs and keeps the state machine trivial.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::{ClientError, Result};

/// Largest response accepted; a fetch is capped far below this by its own `max_bytes`.
pub(crate) const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// ApiVersions version tried first; brokers that do not know it answer in v0.
const API_VERSIONS_PREFERRED_VERSION: i16 = 3;
/// Error code a broker returns for an ApiVersions version it does not know.
const UNSUPPORTED_VERSION: i16 = 35;

/// A connection with the API version ranges its broker advertised.
pub(crate) struct Connection {
    addr: String,
    stream: TcpStream,
    client_id: StrBytes,
    next_correlation_id: i32,
    /// api key -> (min, max) as advertised by the broker.
    broker_versions: HashMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connects to `addr` and learns which API versions the broker speaks.
    pub(crate) async fn connect(
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Connection> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr: addr.to_owned(),
                    source,
                })
            }
            Err(_) => {
                return Err(ClientError::Timeout {
                    addr: addr.to_owned(),
                    timeout_ms: millis(timeout),
                })
            }
        };
        // Requests are small and latency matters more than packet count.
        stream.set_nodelay(true).map_err(|source| ClientError::Io {
            addr: addr.to_owned(),
            source,
        })?;
        let mut conn = Connection {
            addr: addr.to_owned(),
            stream,
            client_id: StrBytes::from_string(client_id.to_owned()),
            next_correlation_id: 0,
            broker_versions: HashMap::new(),
        };
        conn.negotiate_versions(timeout).await?;
        Ok(conn)
    }

    /// Runs ApiVersions: first at v3; a broker that does not know v3 answers with a v0
    /// body carrying UNSUPPORTED_VERSION, and we then ask again at v0.
    async fn negotiate_versions(&mut self, timeout: Duration) -> Result<()> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("ferry-cli"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let body = self
            .roundtrip_raw(&request, API_VERSIONS_PREFERRED_VERSION, timeout)
            .await?;
        let response =
            match ApiVersionsResponse::decode(&mut body.clone(), API_VERSIONS_PREFERRED_VERSION) {
                Ok(response) if response.error_code == 0 => response,
                _ => {
                    // Either an error body (v0) or a broker that answered in v0: ask in v0.
                    let body = self
                        .roundtrip_raw(&ApiVersionsRequest::default(), 0, timeout)
                        .await?;
                    let response = ApiVersionsResponse::decode(&mut body.clone(), 0)
                        .map_err(|e| self.protocol_error(format!("ApiVersions: {e}")))?;
                    if response.error_code == UNSUPPORTED_VERSION {
                        return Err(ClientError::UnsupportedApi {
                            addr: self.addr.clone(),
                            api: ApiKey::ApiVersions,
                        });
                    }
                    super::error::check(response.error_code, None, || "ApiVersions".to_owned())?;
                    response
                }
            };
        self.broker_versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    /// The highest version of `Req` both sides speak, capped at `cap` (the newest version
    /// whose request and response shapes this client fills in).
    pub(crate) fn version<Req: Request>(&self, cap: i16) -> Result<i16> {
        let unsupported = || ClientError::UnsupportedApi {
            addr: self.addr.clone(),
            api: ApiKey::try_from(Req::KEY).unwrap_or(ApiKey::ApiVersions),
        };
        let &(broker_min, broker_max) = self
            .broker_versions
            .get(&Req::KEY)
            .ok_or_else(unsupported)?;
        let max = broker_max.min(Req::VERSIONS.max).min(cap);
        let min = broker_min.max(Req::VERSIONS.min);
        if min > max {
            return Err(unsupported());
        }
        Ok(max)
    }

    /// Sends `request` at `version` and waits up to `timeout` for its response.
    pub(crate) async fn send<Req>(
        &mut self,
        request: &Req,
        version: i16,
        timeout: Duration,
    ) -> Result<Req::Response>
    where
        Req: Request,
    {
        let body = self.roundtrip_raw(request, version, timeout).await?;
        let mut body = body;
        let response = Req::Response::decode(&mut body, version).map_err(|e| {
            self.protocol_error(format!("{:?} v{version} response: {e}", api_name::<Req>()))
        })?;
        Ok(response)
    }

    /// Sends a request that the broker does not answer (Produce with acks=0).
    pub(crate) async fn send_oneway<Req: Request>(
        &mut self,
        request: &Req,
        version: i16,
        timeout: Duration,
    ) -> Result<()> {
        let frame = self.encode_frame(request, version)?;
        self.write_frame(&frame, timeout).await
    }

    async fn roundtrip_raw<Req: Request>(
        &mut self,
        request: &Req,
        version: i16,
        timeout: Duration,
    ) -> Result<Bytes> {
        let correlation_id = self.next_correlation_id;
        let frame = self.encode_frame(request, version)?;
        self.write_frame(&frame, timeout).await?;
        let mut body = self.read_frame(timeout).await?;
        let header_version = <Req::Response as HeaderVersion>::header_version(version);
        let header = ResponseHeader::decode(&mut body, header_version)
            .map_err(|e| self.protocol_error(format!("response header: {e}")))?;
        if header.correlation_id != correlation_id {
            return Err(self.protocol_error(format!(
                "correlation id {} does not match request {correlation_id}",
                header.correlation_id
            )));
        }
        Ok(body)
    }

    fn encode_frame<Req: Request>(&mut self, request: &Req, version: i16) -> Result<Bytes> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(Req::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let encode_error = |e: anyhow::Error| ClientError::Encode {
            what: format!("{:?} v{version}", api_name::<Req>()),
            reason: e.to_string(),
        };
        let mut frame = BytesMut::new();
        frame.put_i32(0); // length, filled in below
        header
            .encode(&mut frame, Req::header_version(version))
            .map_err(encode_error)?;
        request.encode(&mut frame, version).map_err(encode_error)?;
        let length = i32::try_from(frame.len() - 4).map_err(|_| ClientError::Encode {
            what: format!("{:?}", api_name::<Req>()),
            reason: "request larger than 2 GiB".to_owned(),
        })?;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        Ok(frame.freeze())
    }

    async fn write_frame(&mut self, frame: &[u8], timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.stream.write_all(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ClientError::Io {
                addr: self.addr.clone(),
                source,
            }),
            Err(_) => Err(self.timeout_error(timeout)),
        }
    }

    async fn read_frame(&mut self, timeout: Duration) -> Result<Bytes> {
        let read = async {
            let mut length = [0u8; 4];
            self.stream.read_exact(&mut length).await?;
            let length = i32::from_be_bytes(length);
            let length = usize::try_from(length)
                .ok()
                .filter(|&l| l <= MAX_RESPONSE_BYTES);
            let Some(length) = length else {
                return Ok(None);
            };
            let mut body = vec![0u8; length];
            self.stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(Some(Bytes::from(body)))
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(Some(body))) => Ok(body),
            Ok(Ok(None)) => Err(self.protocol_error(format!(
                "response length outside 0..={MAX_RESPONSE_BYTES} bytes"
            ))),
            Ok(Err(source)) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(ClientError::Disconnected {
                    addr: self.addr.clone(),
                })
            }
            Ok(Err(source)) => Err(ClientError::Io {
                addr: self.addr.clone(),
                source,
            }),
            Err(_) => Err(self.timeout_error(timeout)),
        }
    }

    /// Closes the write side so that the broker sees an orderly end of the connection.
    pub(crate) async fn close(mut self) {
        // Best effort: the connection is being dropped either way.
        let _ = self.stream.shutdown().await;
    }

    fn protocol_error(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.clone(),
            reason,
        }
    }

    fn timeout_error(&self, timeout: Duration) -> ClientError {
        ClientError::Timeout {
            addr: self.addr.clone(),
            timeout_ms: millis(timeout),
        }
    }
}

/// The API key of `Req`, for messages.
fn api_name<Req: Message + Request>() -> ApiKey {
    ApiKey::try_from(Req::KEY).unwrap_or(ApiKey::ApiVersions)
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::MetadataRequest;
    use kafka_protocol::protocol::decode_request_header_from_buffer;
    use tokio::net::TcpListener;

    /// Bound on every wait of these tests.
    const TEST_TIMEOUT: Duration = Duration::from_secs(10);

    async fn read_request(stream: &mut TcpStream) -> (RequestHeader, Bytes) {
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).await.expect("length");
        let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(length)).expect("length")];
        stream.read_exact(&mut body).await.expect("body");
        let mut body = Bytes::from(body);
        let header = decode_request_header_from_buffer(&mut body).expect("header");
        (header, body)
    }

    async fn answer(
        stream: &mut TcpStream,
        correlation_id: i32,
        response: &ApiVersionsResponse,
        version: i16,
    ) {
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut frame, 0)
            .expect("header");
        response.encode(&mut frame, version).expect("body");
        let length = i32::try_from(frame.len() - 4).expect("length");
        frame[..4].copy_from_slice(&length.to_be_bytes());
        stream.write_all(&frame).await.expect("write");
    }

    fn api(key: ApiKey, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default()
            .with_api_key(key as i16)
            .with_min_version(min)
            .with_max_version(max)
    }

    /// An old broker answers ApiVersions v3 with a v0 UNSUPPORTED_VERSION body; the
    /// client retries at v0 and then picks versions both sides speak.
    #[tokio::test]
    async fn falls_back_to_api_versions_v0() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let broker = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let (header, _) = read_request(&mut stream).await;
            assert_eq!(header.request_api_version, 3);
            let refusal = ApiVersionsResponse::default()
                .with_error_code(UNSUPPORTED_VERSION)
                .with_api_keys(vec![api(ApiKey::ApiVersions, 0, 2)]);
            answer(&mut stream, header.correlation_id, &refusal, 0).await;
            let (header, _) = read_request(&mut stream).await;
            assert_eq!(header.request_api_version, 0);
            let versions = ApiVersionsResponse::default().with_api_keys(vec![
                api(ApiKey::ApiVersions, 0, 2),
                api(ApiKey::Metadata, 0, 9),
            ]);
            answer(&mut stream, header.correlation_id, &versions, 0).await;
        });
        let conn = tokio::time::timeout(
            TEST_TIMEOUT,
            Connection::connect(&addr, "test", TEST_TIMEOUT),
        )
        .await
        .expect("in time")
        .expect("connected");
        assert_eq!(conn.version::<MetadataRequest>(12).expect("metadata"), 9);
        assert_eq!(conn.version::<MetadataRequest>(5).expect("capped"), 5);
        assert!(matches!(
            conn.version::<kafka_protocol::messages::ProduceRequest>(12),
            Err(ClientError::UnsupportedApi { .. })
        ));
        broker.await.expect("fake broker");
    }

    /// A broker that hangs up, or announces an absurd response size, is an error.
    #[tokio::test]
    async fn bad_brokers_are_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let broker = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let _ = read_request(&mut stream).await;
            drop(stream);
            let (mut stream, _) = listener.accept().await.expect("accept");
            let _ = read_request(&mut stream).await;
            stream
                .write_all(&i32::MAX.to_be_bytes())
                .await
                .expect("write");
        });
        let hung_up = Connection::connect(&addr, "test", TEST_TIMEOUT).await;
        assert!(
            matches!(hung_up, Err(ClientError::Disconnected { .. })),
            "{:?}",
            hung_up.err()
        );
        let huge = Connection::connect(&addr, "test", TEST_TIMEOUT).await;
        assert!(
            matches!(huge, Err(ClientError::Protocol { .. })),
            "{:?}",
            huge.err()
        );
        broker.await.expect("fake broker");
    }
}
