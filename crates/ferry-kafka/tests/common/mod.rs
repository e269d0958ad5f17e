//! Test harness: a real broker in a temporary directory served by `serve()` on an
//! ephemeral port, and a minimal client speaking the protocol with kafka-protocol's
//! request encoders.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_core::{Broker, BrokerConfig};
use ferry_kafka::server::{serve, KafkaConfig};
use indexmap::IndexMap;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// As in the broker: forged array counts in the garbage these tests send must not abort.
#[global_allocator]
static ALLOCATOR: ferry_alloc::GuardedAllocator = ferry_alloc::GuardedAllocator;

/// Upper bound on any single wait in these tests.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// A broker served on 127.0.0.1.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker with default settings.
    pub async fn start() -> TestBroker {
        TestBroker::start_with(|_, _| {}).await
    }

    /// Starts a broker after letting `configure` adjust its settings.
    pub async fn start_with(
        configure: impl FnOnce(&mut BrokerConfig, &mut KafkaConfig),
    ) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut broker_config = BrokerConfig::new(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut kafka_config = KafkaConfig {
            advertised_host: "127.0.0.1".to_string(),
            advertised_port: addr.port() as i32,
            ..KafkaConfig::default()
        };
        configure(&mut broker_config, &mut kafka_config);
        let broker = Broker::open(broker_config).expect("open broker");
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(serve(listener, broker.clone(), kafka_config, async {
            let _ = rx.await;
        }));
        TestBroker {
            addr,
            broker,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
        }
    }

    /// A new client connection.
    pub async fn client(&self) -> TestClient {
        TestClient::connect(self.addr).await
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(STEP_TIMEOUT, server)
                .await
                .expect("serve returns after shutdown")
                .expect("serve task")
                .expect("serve result");
        }
        let _ = self.broker.shutdown().await;
    }

    /// Starts shutdown without waiting.
    pub fn begin_stop(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.take().expect("server running")
    }
}

/// A bare Kafka connection.
pub struct TestClient {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl TestClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> TestClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        TestClient {
            stream,
            correlation_id: 0,
        }
    }

    /// Sends a request; returns its correlation id.
    pub async fn send(&mut self, api_key: ApiKey, version: i16, body: &impl Encodable) -> i32 {
        self.correlation_id += 1;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("ferry-test")))
            .encode(&mut buf, api_key.request_header_version(version))
            .expect("encode header");
        body.encode(&mut buf, version).expect("encode body");
        let length = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&length.to_be_bytes());
        self.send_raw(&buf).await;
        self.correlation_id
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads one response frame; `None` when the broker closed the connection.
    pub async fn receive_frame(&mut self) -> Option<Bytes> {
        tokio::time::timeout(STEP_TIMEOUT, async {
            let mut length = [0u8; 4];
            if self.stream.read_exact(&mut length).await.is_err() {
                return None;
            }
            let mut frame = vec![0u8; i32::from_be_bytes(length) as usize];
            self.stream.read_exact(&mut frame).await.ok()?;
            Some(Bytes::from(frame))
        })
        .await
        .expect("response within the step timeout")
    }

    /// Reads one response and decodes it as `api_key` v`version`; returns (correlation id, body).
    pub async fn receive<R: Decodable>(&mut self, api_key: ApiKey, version: i16) -> (i32, R) {
        let mut frame = self
            .receive_frame()
            .await
            .expect("a response, not a closed connection");
        let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
            .expect("response header");
        let body = R::decode(&mut frame, version).expect("response body");
        assert!(
            frame.is_empty(),
            "{api_key:?} v{version}: {} trailing bytes",
            frame.len()
        );
        (header.correlation_id, body)
    }

    /// Sends a request and reads its response.
    pub async fn request<R: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: &impl Encodable,
    ) -> R {
        let sent = self.send(api_key, version, body).await;
        let (received, response) = self.receive(api_key, version).await;
        assert_eq!(sent, received, "correlation id");
        response
    }

    /// Whether the broker closed the connection (reads EOF or a reset).
    pub async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(STEP_TIMEOUT, self.stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => false,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Idempotence fields of a batch: (producer id, epoch, base sequence).
pub type ProducerFields = (i64, i16, i32);

/// One RecordBatch v2 with the given (key, value) records.
pub fn batch(
    records: &[(&str, &[u8])],
    producer: Option<ProducerFields>,
    compression: Compression,
) -> Bytes {
    let (producer_id, producer_epoch, base_sequence) = producer.unwrap_or((-1, -1, -1));
    let timestamp = now_ms();
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch while offset - sequence is constant;
            // a non-idempotent batch thus has base sequence -1 like Kafka's.
            sequence: base_sequence.wrapping_add(i as i32),
            timestamp,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Some(Bytes::copy_from_slice(value)),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

/// Decodes every record of fetched batches: (offset, key, value).
pub fn decode_records(mut records: Bytes) -> Vec<(i64, String, Bytes)> {
    let mut out = Vec::new();
    while !records.is_empty() {
        let set = RecordBatchDecoder::decode(&mut records).expect("decode fetched batch");
        for record in set.records {
            let key = record
                .key
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .unwrap_or_default();
            out.push((record.offset, key, record.value.unwrap_or_default()));
        }
    }
    out
}

/// Number of record batches in `records`.
pub fn count_batches(records: &Bytes) -> usize {
    let mut count = 0;
    let mut position = 0;
    while position + 12 <= records.len() {
        let length = i32::from_be_bytes([
            records[position + 8],
            records[position + 9],
            records[position + 10],
            records[position + 11],
        ]) as usize;
        position += 12 + length;
        count += 1;
    }
    count
}
