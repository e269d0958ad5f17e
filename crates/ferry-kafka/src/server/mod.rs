//! The Kafka listener: connections, framing, dispatch.
//!
//! One task per connection reads a length-prefixed frame, decodes it ([`decode_request`]),
//! hands it to the handler for its API and writes the answer, then reads the next frame.
//! Requests of one connection are therefore processed and answered strictly in order, as
//! Kafka does (it mutes a connection while one of its requests is in flight): a long-poll
//! fetch holds that connection's later requests, and at most one request per connection
//! is buffered or in flight. Frame bytes additionally come out of one broker-wide budget
//! ([`KafkaConfig::max_buffered_request_bytes`]) so that many connections sending large
//! requests at once cannot exhaust memory.
//!
//! Frames that cannot be served — bad length, unknown API key, unsupported version,
//! malformed body — close that one connection with a log line, which is what Kafka does;
//! the one exception is ApiVersions at an unknown version, answered with
//! UNSUPPORTED_VERSION and our version list so the client can retry (see [`versions`]).

mod admin;
mod codec;
mod configs;
mod data;
mod fetch_sessions;
mod groups;
mod handlers;
mod metadata;
pub mod versions;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_core::Broker;
use ferry_storage::{Chunk, FileRegion};
use std::io::IoSlice;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, Interest};
use tokio::net::tcp::WriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

pub use codec::{
    decode_request, encode_response, DecodeError, DecodedRequest, EncodeError, FetchAnswer,
};
pub use data::fetch_responses;
pub use fetch_sessions::{
    next_epoch, FetchContext, FetchSession, FetchSessionCache, SessionPass, NO_SESSION,
};

/// Kafka's `socket.request.max.bytes` default: the largest request frame accepted.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 << 20;
/// Default broker-wide budget for request bytes being received or processed.
pub const DEFAULT_MAX_BUFFERED_REQUEST_BYTES: usize = 512 << 20;
/// Kafka's broker `fetch.max.bytes` default: cap on one fetch response's records.
pub const DEFAULT_FETCH_MAX_BYTES: u32 = 55 << 20;
/// Longest fetch long-poll honoured, whatever the client asks for.
pub const DEFAULT_FETCH_MAX_WAIT_MS: u64 = 30_000;
/// Default cap on concurrent client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Kafka's `max.incremental.fetch.session.cache.slots` default: most fetch sessions kept.
pub const DEFAULT_FETCH_SESSION_CACHE_SLOTS: usize = 1000;
/// Most partitions all fetch sessions hold together (about 100 bytes each).
pub const DEFAULT_FETCH_SESSION_CACHE_PARTITIONS: usize = 1_000_000;
/// Default time the listener waits for in-flight requests at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// Read-ahead buffer of each connection: small, since every connection holds one for its
/// whole life (frames larger than it are read straight into their own buffer).
const SOCKET_BUFFER_BYTES: usize = 8 << 10;
/// Step by which a frame's buffer grows while its bytes arrive.
const FRAME_READ_CHUNK_BYTES: usize = 64 << 10;
/// Bytes of a frame allocated before any of it arrives: large enough that a typical
/// produce request (a few MiB of batches) lands in its buffer without being copied by
/// regrowth, small enough that a lying length prefix costs little.
const FRAME_PREALLOCATE_BYTES: usize = 8 << 20;
/// Buffers handed to one vectored write (well under every platform's IOV_MAX).
const MAX_IO_SLICES: usize = 64;

/// Settings of the Kafka listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Host clients are told to connect to (Metadata, FindCoordinator, DescribeCluster).
    pub advertised_host: String,
    /// Port clients are told to connect to.
    pub advertised_port: i32,
    /// Largest request frame; a longer length prefix closes the connection unread.
    pub max_request_bytes: usize,
    /// Request bytes all connections together may hold; readers wait beyond it.
    pub max_buffered_request_bytes: usize,
    /// Cap on the records of one fetch response (the client's `max_bytes` is lowered to it).
    pub fetch_max_bytes: u32,
    /// Cap on a fetch's long-poll wait.
    pub fetch_max_wait_ms: u64,
    /// Most incremental fetch sessions kept at once (0: none).
    pub fetch_session_cache_slots: usize,
    /// Most partitions the fetch sessions hold together.
    pub fetch_session_cache_partitions: usize,
    /// Connections beyond this many are closed on accept.
    pub max_connections: usize,
    /// Cluster id reported in Metadata and DescribeCluster.
    pub cluster_id: String,
    /// How long shutdown waits for in-flight requests before dropping connections.
    pub shutdown_grace_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            advertised_host: "localhost".to_string(),
            advertised_port: 9092,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_buffered_request_bytes: DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
            fetch_max_bytes: DEFAULT_FETCH_MAX_BYTES,
            fetch_max_wait_ms: DEFAULT_FETCH_MAX_WAIT_MS,
            fetch_session_cache_slots: DEFAULT_FETCH_SESSION_CACHE_SLOTS,
            fetch_session_cache_partitions: DEFAULT_FETCH_SESSION_CACHE_PARTITIONS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            cluster_id: "ferry".to_string(),
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
        }
    }
}

/// State shared by every connection of one listener.
struct Shared {
    broker: Arc<Broker>,
    config: KafkaConfig,
    /// Broker-wide budget of buffered request bytes, one permit per byte.
    request_bytes: Arc<Semaphore>,
    /// Flips to `true` when shutdown starts.
    shutdown: watch::Receiver<bool>,
    /// Incremental fetch sessions (KIP-227).
    fetch_sessions: fetch_sessions::FetchSessionCache,
}

/// Serves the Kafka protocol on `listener` until `shutdown` completes; then stops
/// accepting, lets every connection finish its in-flight request (long-poll fetches are
/// answered at once), waits at most [`KafkaConfig::shutdown_grace_ms`] and returns.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: KafkaConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let budget = config
        .max_buffered_request_bytes
        .max(config.max_request_bytes)
        .min(Semaphore::MAX_PERMITS);
    let shared = Arc::new(Shared {
        broker,
        request_bytes: Arc::new(Semaphore::new(budget)),
        shutdown: shutdown_rx,
        fetch_sessions: fetch_sessions::FetchSessionCache::new(
            config.fetch_session_cache_slots,
            config.fetch_session_cache_partitions,
        ),
        config,
    });
    let grace = Duration::from_millis(shared.config.shutdown_grace_ms);
    ferry_core::listener::accept_until_shutdown(
        listener,
        shared.broker.listener_stats("Kafka"),
        shared.config.max_connections,
        grace,
        shutdown,
        shutdown_tx,
        |stream, peer| connection(stream, peer, shared.clone()),
    )
    .await;
    Ok(())
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("client closed the connection")]
    Closed,
    #[error("broker shutting down")]
    Shutdown,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid frame length {length} (limit {limit})")]
    BadLength { length: i32, limit: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("{0}")]
    Refused(String),
}

/// Serves one client connection until it closes, errs or the listener shuts down.
async fn connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    debug!(%peer, "Kafka connection opened");
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let mut session = handlers::Session::new(shared.clone(), peer);
    let end = serve_connection(&mut stream, &shared, &mut session).await;
    match end {
        ConnectionEnd::Closed | ConnectionEnd::Shutdown => {
            debug!(%peer, reason = %end, "Kafka connection closed")
        }
        ConnectionEnd::Io(ref error) if is_disconnect(error) => {
            debug!(%peer, reason = %end, "Kafka connection closed")
        }
        ConnectionEnd::Encode(_) => {
            tracing::error!(%peer, reason = %end, "closing Kafka connection")
        }
        _ => {
            warn!(%peer, client_id = %session.client_id, reason = %end, "closing Kafka connection")
        }
    }
}

fn is_disconnect(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

async fn serve_connection(
    stream: &mut TcpStream,
    shared: &Shared,
    session: &mut handlers::Session,
) -> ConnectionEnd {
    let (reader, mut writer) = stream.split();
    let mut reader = BufReader::with_capacity(SOCKET_BUFFER_BYTES, reader);
    let mut shutdown = shared.shutdown.clone();
    loop {
        // Only an idle connection (between requests) is cut by shutdown; a request that
        // has fully arrived is answered first.
        let frame = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopping| *stopping) => return ConnectionEnd::Shutdown,
            frame = read_frame(&mut reader, shared) => frame,
        };
        let (frame, permit) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return ConnectionEnd::Closed,
            Err(end) => return end,
        };
        let request = match decode_request(frame) {
            Ok(request) => request,
            Err(error) => return ConnectionEnd::Decode(error),
        };
        let response = match handlers::handle(session, request).await {
            Ok(response) => response,
            Err(error) => return ConnectionEnd::Encode(error),
        };
        // The request's bytes are released before the (possibly slow) write of the answer.
        drop(permit);
        match response {
            handlers::Reply::Send(frame) => {
                if let Err(error) = write_frame(&mut writer, &frame).await {
                    return ConnectionEnd::Io(error);
                }
            }
            handlers::Reply::Silent => {}
            handlers::Reply::Close(reason) => return ConnectionEnd::Refused(reason),
        }
    }
}

/// Writes a response frame: buffers with vectored writes (not copied together), file
/// regions with `sendfile` (from the page cache, never through the broker's memory). A
/// frame with file regions is written corked, so that its parts leave in full segments
/// rather than one short segment per part.
async fn write_frame(writer: &mut WriteHalf<'_>, chunks: &[Chunk]) -> std::io::Result<()> {
    if let [Chunk::Memory(only)] = chunks {
        return writer.write_all(only).await;
    }
    if !chunks.iter().any(|chunk| matches!(chunk, Chunk::File(_))) {
        return write_buffers(writer, &memory_run(chunks)).await;
    }
    set_cork(writer.as_ref(), true)?;
    let mut written = Ok(());
    let mut rest = chunks;
    while let (Ok(()), Some(first)) = (&written, rest.first()) {
        written = match first {
            Chunk::File(region) => {
                rest = &rest[1..];
                send_region(writer.as_ref(), region).await
            }
            Chunk::Memory(_) => {
                let run = memory_run(rest);
                rest = &rest[run.len()..];
                write_buffers(writer, &run).await
            }
        };
    }
    // Uncorking sends what is still held back.
    written.and(set_cork(writer.as_ref(), false))
}

/// The buffers of the leading in-memory chunks.
fn memory_run(chunks: &[Chunk]) -> Vec<&[u8]> {
    chunks
        .iter()
        .map_while(|chunk| match chunk {
            Chunk::Memory(bytes) => Some(&bytes[..]),
            Chunk::File(_) => None,
        })
        .collect()
}

fn set_cork(stream: &TcpStream, cork: bool) -> std::io::Result<()> {
    rustix::net::sockopt::set_tcp_cork(stream, cork).map_err(std::io::Error::from)
}

/// Sends a file region with `sendfile`, waiting whenever the socket is full.
async fn send_region(stream: &TcpStream, region: &FileRegion) -> std::io::Result<()> {
    let mut position = region.position();
    let end = position + region.len() as u64;
    while position < end {
        let left = (end - position) as usize;
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, region.file(), Some(&mut position), left)
                    .map_err(std::io::Error::from)
            })
            .await?;
        if sent == 0 {
            // Segments only grow and regions end where a segment was published: a file
            // ending early is damage, and the frame cannot be completed.
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a segment file ends inside the fetched region",
            ));
        }
    }
    Ok(())
}

/// Writes buffers with vectored writes (no copying them together).
async fn write_buffers<W: AsyncWrite + Unpin>(
    writer: &mut W,
    chunks: &[&[u8]],
) -> std::io::Result<()> {
    let (mut index, mut offset) = (0, 0);
    while index < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[index..]
            .iter()
            .take(MAX_IO_SLICES)
            .enumerate()
            .map(|(i, chunk)| IoSlice::new(if i == 0 { &chunk[offset..] } else { chunk }))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let left = chunks[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
        // Skip empty buffers so that the next round starts on data.
        while index < chunks.len() && chunks[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    Ok(())
}

/// Reads one frame: `Ok(None)` on a clean end of stream before a new frame starts.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    shared: &Shared,
) -> Result<Option<(Bytes, tokio::sync::OwnedSemaphorePermit)>, ConnectionEnd> {
    let mut length_bytes = [0u8; codec::FRAME_LENGTH_BYTES];
    let first = reader.read(&mut length_bytes[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut length_bytes[1..]).await?;
    let length = i32::from_be_bytes(length_bytes);
    let limit = shared.config.max_request_bytes;
    let Ok(length) = usize::try_from(length) else {
        return Err(ConnectionEnd::BadLength { length, limit });
    };
    if length > limit {
        return Err(ConnectionEnd::BadLength {
            length: length as i32,
            limit,
        });
    }
    // Budget first, memory second: the permit is held until the request is handled.
    let permits = u32::try_from(length).unwrap_or(u32::MAX);
    let permit = shared
        .request_bytes
        .clone()
        .acquire_many_owned(permits)
        .await
        .map_err(|_| ConnectionEnd::Shutdown)?;
    // Grow the buffer as bytes arrive rather than trusting the prefix with one big
    // allocation: a client that announces 100 MiB and sends 10 bytes costs at most
    // FRAME_PREALLOCATE_BYTES of address space (pages it never fills are never touched).
    let mut frame = BytesMut::with_capacity(length.min(FRAME_PREALLOCATE_BYTES));
    while frame.len() < length {
        let want = (length - frame.len()).min(FRAME_READ_CHUNK_BYTES);
        frame.reserve(want);
        let mut limited = (&mut *reader).take(want as u64);
        let read = limited.read_buf(&mut frame).await?;
        if read == 0 {
            return Err(ConnectionEnd::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(Some((frame.freeze(), permit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected loopback pair (server side, client side).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    #[tokio::test]
    async fn write_frame_sends_buffers_and_file_regions_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        let file = Arc::new(std::fs::File::open(&path).expect("open"));
        let region = |position: usize, len: usize| {
            Chunk::File(FileRegion::new(file.clone(), position as u64, len))
        };
        let chunks = vec![
            Chunk::Memory(Bytes::from_static(b"len!")),
            region(10, 2_500_000),
            Chunk::Memory(Bytes::from_static(b"between")),
            Chunk::Memory(Bytes::new()),
            region(0, 5),
            region(2_999_990, 10),
            Chunk::Memory(Bytes::from_static(b"tail")),
        ];
        let mut expected = b"len!".to_vec();
        expected.extend_from_slice(&content[10..2_500_010]);
        expected.extend_from_slice(b"between");
        expected.extend_from_slice(&content[..5]);
        expected.extend_from_slice(&content[2_999_990..]);
        expected.extend_from_slice(b"tail");

        let (mut server, mut client) = socket_pair().await;
        // The reader starts late: the socket fills and the writer has to wait.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.map(|_| received)
        });
        let (_, mut writer) = server.split();
        tokio::time::timeout(Duration::from_secs(30), write_frame(&mut writer, &chunks))
            .await
            .expect("written in time")
            .expect("write");
        assert!(!rustix::net::sockopt::tcp_cork(&server).expect("TCP_CORK"));
        drop(server);
        let received = reader.await.expect("reader task").expect("read");
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "bytes differ");
    }

    #[tokio::test]
    async fn write_frame_fails_when_a_file_ends_inside_its_region() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        std::fs::write(&path, b"short").expect("write");
        let file = Arc::new(std::fs::File::open(&path).expect("open"));
        let chunks = vec![
            Chunk::Memory(Bytes::from_static(b"len!")),
            Chunk::File(FileRegion::new(file, 2, 100)),
        ];
        let (mut server, _client) = socket_pair().await;
        let (_, mut writer) = server.split();
        let error =
            tokio::time::timeout(Duration::from_secs(30), write_frame(&mut writer, &chunks))
                .await
                .expect("done in time")
                .expect_err("a short file cannot complete the frame");
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn write_buffers_writes_every_buffer_in_order_through_partial_writes() {
        let long: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let chunks: Vec<&[u8]> = vec![b"len!", b"", &long, b"tail"];
        let expected: Vec<u8> = chunks.concat();
        // A 7-byte pipe forces many short writes that end inside buffers.
        let (mut near, mut far) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            far.read_to_end(&mut received).await.map(|_| received)
        });
        write_buffers(&mut near, &chunks).await.expect("write");
        drop(near);
        let received = reader.await.expect("reader task").expect("read");
        assert_eq!(received, expected);
    }
}
