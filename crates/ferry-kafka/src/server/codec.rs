//! Request decoding and response encoding: bytes in, typed messages out, and back. No I/O.
//!
//! The frame length is checked before anything is allocated (in the connection), and no
//! input makes decoding panic: the `kafka_request` fuzz target drives [`decode_request`]
//! with arbitrary bytes. `kafka-protocol` sizes arrays from wire counts before reading
//! them; `ferry_alloc::GuardedAllocator`, installed by every binary that decodes network
//! input, keeps a forged count from costing memory or aborting the process.

use bytes::{BufMut, Bytes, BytesMut};
use ferry_storage::{Chunk, FileRegion};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader,
    RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::versions::{self, PRODUCE_MIN_DECODABLE_VERSION};

/// Bytes of the fixed request-header prefix: api key, api version, correlation id.
const HEADER_PREFIX_BYTES: usize = 8;
/// Bytes of the frame length prefix.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// Fetched record sets at least this long are sent from their own buffer rather than
/// copied into the response; smaller ones are cheaper to copy than to write separately.
const ZERO_COPY_MIN_BYTES: usize = 4096;
/// Highest Fetch version [`encode_fetch_response`] lays out itself.
const FETCH_CHUNKED_MAX_VERSION: i16 = 12;
/// First flexible Fetch version (compact lengths, tagged fields).
const FETCH_FLEXIBLE_VERSION: i16 = 12;

/// A decoded request frame.
#[derive(Debug)]
pub enum DecodedRequest {
    /// A request of a served API at a served version.
    Request {
        /// The request header.
        header: RequestHeader,
        /// The typed body (boxed: it is large and moved a few times).
        body: Box<RequestKind>,
    },
    /// ApiVersions at a version Ferry does not know. Kafka answers such requests with a v0
    /// body carrying UNSUPPORTED_VERSION and its own version list, so that the client can
    /// retry with a version both sides know; the body is not parsed.
    UnsupportedApiVersions {
        /// The request header (its api version is the unknown one).
        header: RequestHeader,
    },
}

impl DecodedRequest {
    /// The request header.
    pub fn header(&self) -> &RequestHeader {
        match self {
            DecodedRequest::Request { header, .. } => header,
            DecodedRequest::UnsupportedApiVersions { header } => header,
        }
    }
}

/// Why a frame could not be decoded. Each of these ends the connection, as in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the fixed header prefix.
    #[error("frame of {0} bytes is shorter than a request header")]
    TooShort(usize),
    /// An API key Kafka does not define.
    #[error("unknown API key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey {
        /// The key as sent.
        api_key: i16,
        /// The correlation id as sent.
        correlation_id: i32,
    },
    /// An API Ferry does not serve, or a version outside the advertised range.
    #[error("unsupported API {api_key:?} v{version} (correlation id {correlation_id})")]
    UnsupportedVersion {
        /// The API.
        api_key: ApiKey,
        /// The version as sent.
        version: i16,
        /// The correlation id as sent.
        correlation_id: i32,
    },
    /// The request header is malformed.
    #[error("malformed request header of {api_key:?} v{version}: {message}")]
    Header {
        /// The API.
        api_key: ApiKey,
        /// The version as sent.
        version: i16,
        /// What the decoder reported.
        message: String,
    },
    /// The body is malformed.
    #[error(
        "malformed {api_key:?} v{version} request (correlation id {correlation_id}): {message}"
    )]
    Body {
        /// The API.
        api_key: ApiKey,
        /// The version as sent.
        version: i16,
        /// The correlation id as sent.
        correlation_id: i32,
        /// What the decoder reported.
        message: String,
    },
}

/// Why a response could not be encoded (a bug: a field set that the version cannot carry).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {api_key:?} v{version} response: {message}")]
pub struct EncodeError {
    /// The API.
    pub api_key: ApiKey,
    /// The response version.
    pub version: i16,
    /// What the encoder reported.
    pub message: String,
}

/// Decodes one request frame (without its 4-byte length prefix): header and typed body.
pub fn decode_request(mut frame: Bytes) -> Result<DecodedRequest, DecodeError> {
    if frame.len() < HEADER_PREFIX_BYTES {
        return Err(DecodeError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|()| DecodeError::UnknownApiKey {
        api_key: raw_key,
        correlation_id,
    })?;

    let unsupported_api_versions =
        api_key == ApiKey::ApiVersions && !versions::is_supported(ApiKey::ApiVersions, version);
    if !unsupported_api_versions && !versions::is_supported(api_key, version) {
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            version,
            correlation_id,
        });
    }

    // An unknown ApiVersions version may be newer than any header layout we know; it is
    // answered with a v0 response, so read its header as the oldest layout (v1: the
    // fixed prefix and the client id), which every version starts with.
    let header_version = if unsupported_api_versions {
        1
    } else {
        api_key.request_header_version(version)
    };
    let header =
        RequestHeader::decode(&mut frame, header_version).map_err(|e| DecodeError::Header {
            api_key,
            version,
            message: format!("{e:#}"),
        })?;
    if unsupported_api_versions {
        return Ok(DecodedRequest::UnsupportedApiVersions { header });
    }

    let body_error = |e: anyhow::Error| DecodeError::Body {
        api_key,
        version,
        correlation_id,
        message: format!("{e:#}"),
    };
    let body = if api_key == ApiKey::Produce && version < PRODUCE_MIN_DECODABLE_VERSION {
        // Produce v0–v2 equal v3 without its leading nullable `transactional_id`; decode
        // them as v3 with a null id so that they can be answered UNSUPPORTED_VERSION.
        let mut v3 = BytesMut::with_capacity(2 + frame.len());
        v3.put_i16(-1);
        v3.extend_from_slice(&frame);
        let mut v3 = v3.freeze();
        RequestKind::Produce(
            ProduceRequest::decode(&mut v3, PRODUCE_MIN_DECODABLE_VERSION).map_err(body_error)?,
        )
    } else {
        RequestKind::decode(api_key, &mut frame, version).map_err(body_error)?
    };
    Ok(DecodedRequest::Request {
        header,
        body: Box::new(body),
    })
}

/// Encodes a response frame, length prefix included.
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> Result<Bytes, EncodeError> {
    let error = |e: anyhow::Error| EncodeError {
        api_key,
        version,
        message: format!("{e:#}"),
    };
    let mut buf = BytesMut::new();
    buf.put_i32(0); // length, patched below
                    // The ApiVersions response header is always v0 (KIP-511), whatever the request version:
                    // a client cannot know our header layout before it has our version list.
    let header_version = api_key.response_header_version(version);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)
        .map_err(error)?;
    match body {
        ResponseKind::Produce(produce) if version < PRODUCE_MIN_DECODABLE_VERSION => {
            encode_legacy_produce_response(produce, version, &mut buf)
        }
        _ => body.encode(&mut buf, version).map_err(error)?,
    }
    patch_length(&mut buf).map_err(|message| EncodeError {
        api_key,
        version,
        message,
    })?;
    Ok(buf.freeze())
}

/// A Fetch response to encode, with the records that stay in segment files: the partition
/// at each `(topic position, partition position)` of `response` listed in `files` (in
/// ascending order) gets that region as its records, whatever its `records` field holds.
#[derive(Debug, Default)]
pub struct FetchAnswer {
    pub response: FetchResponse,
    pub files: Vec<((usize, usize), FileRegion)>,
}

/// Encodes a Fetch response frame as a list of chunks, length prefix included, in which
/// large record sets are not copied: file regions stay file regions (sent from the page
/// cache) and large in-memory records are the very [`Bytes`] that storage returned. Falls
/// back to [`encode_response`] (one buffer, file regions read) for anything this layout
/// does not cover (versions above 12, tagged fields).
///
/// Only the records are taken apart: each partition is encoded by the codec with null
/// records, whose fixed-size encoding is then replaced by the real length and bytes.
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    answer: FetchAnswer,
) -> Result<Vec<Chunk>, EncodeError> {
    let error = |message: String| EncodeError {
        api_key: ApiKey::Fetch,
        version,
        message,
    };
    match encode_fetch_chunks(correlation_id, version, &answer) {
        Ok(Some(chunks)) => Ok(chunks),
        Ok(None) => {
            let FetchAnswer {
                mut response,
                files,
            } = answer;
            for ((t, p), region) in files {
                let partition = response
                    .responses
                    .get_mut(t)
                    .and_then(|topic| topic.partitions.get_mut(p))
                    .ok_or_else(|| {
                        error(format!(
                            "records for a partition not in the response ({t}, {p})"
                        ))
                    })?;
                let bytes = region
                    .read()
                    .map_err(|e| error(format!("reading fetched records: {e}")))?;
                partition.records = Some(bytes);
            }
            let whole = ResponseKind::Fetch(response);
            encode_response(correlation_id, ApiKey::Fetch, version, &whole)
                .map(|frame| vec![Chunk::Memory(frame)])
        }
        Err(e) => Err(error(format!("{e:#}"))),
    }
}

/// The chunked layout, or `None` when it does not apply.
fn encode_fetch_chunks(
    correlation_id: i32,
    version: i16,
    answer: &FetchAnswer,
) -> anyhow::Result<Option<Vec<Chunk>>> {
    let response = &answer.response;
    let flexible = version >= FETCH_FLEXIBLE_VERSION;
    let default_tags = |p: &PartitionData| {
        p.unknown_tagged_fields.is_empty()
            && p.diverging_epoch == Default::default()
            && p.current_leader == Default::default()
            && p.snapshot_id == Default::default()
    };
    let plain = version <= FETCH_CHUNKED_MAX_VERSION
        && response.unknown_tagged_fields.is_empty()
        && response.node_endpoints.is_empty()
        && response
            .responses
            .iter()
            .all(|t| t.unknown_tagged_fields.is_empty() && t.partitions.iter().all(default_tags));
    if !plain {
        return Ok(None);
    }
    // What a partition with null records and no tagged fields ends with.
    let null_tail: &[u8] = if flexible { &[0, 0] } else { &[0xff; 4] };

    let mut out = Chunks::default();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(
            &mut out.current,
            ApiKey::Fetch.response_header_version(version),
        )?;
    out.current.put_i32(response.throttle_time_ms);
    if version >= 7 {
        out.current.put_i16(response.error_code);
        out.current.put_i32(response.session_id);
    }
    put_length(&mut out.current, response.responses.len(), flexible);
    let mut stub = PartitionData::default();
    let mut files = answer.files.iter().peekable();
    for (t, topic) in response.responses.iter().enumerate() {
        put_string(&mut out.current, topic.topic.as_bytes(), flexible);
        put_length(&mut out.current, topic.partitions.len(), flexible);
        for (p, partition) in topic.partitions.iter().enumerate() {
            stub.clone_from(partition);
            stub.records = None;
            let start = out.current.len();
            stub.encode(&mut out.current, version)?;
            if !out.current[start..].ends_with(null_tail) {
                return Ok(None);
            }
            out.current.truncate(out.current.len() - null_tail.len());
            let records = match files.next_if(|(at, _)| *at == (t, p)) {
                Some((_, region)) => Some(Chunk::File(region.clone())),
                None => partition.records.clone().map(Chunk::Memory),
            };
            match records {
                None => out
                    .current
                    .put_slice(&null_tail[..null_tail.len() - usize::from(flexible)]),
                Some(records) => {
                    if flexible {
                        put_unsigned_varint(&mut out.current, records.len() as u64 + 1);
                    } else {
                        out.current.put_i32(i32::try_from(records.len())?);
                    }
                    out.put_records(records)?;
                }
            }
            if flexible {
                out.current.put_u8(0); // partition tagged fields
            }
        }
        if flexible {
            out.current.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        out.current.put_u8(0); // response tagged fields
    }
    if let Some(((t, p), _)) = files.next() {
        anyhow::bail!("records for a partition not in the response, or out of order ({t}, {p})");
    }
    Ok(Some(out.finish()?))
}

/// A response being built as a list of chunks.
#[derive(Default)]
struct Chunks {
    done: Vec<Chunk>,
    current: BytesMut,
    total: usize,
}

impl Chunks {
    /// Appends records: referenced when large or in a file, copied when small.
    fn put_records(&mut self, records: Chunk) -> anyhow::Result<()> {
        if let Chunk::Memory(bytes) = &records {
            if bytes.len() < ZERO_COPY_MIN_BYTES {
                self.current.extend_from_slice(bytes);
                return Ok(());
            }
        }
        self.seal();
        self.total = self
            .total
            .checked_add(records.len())
            .ok_or_else(|| anyhow::anyhow!("response too large"))?;
        self.done.push(records);
        Ok(())
    }

    fn seal(&mut self) {
        if !self.current.is_empty() {
            self.total += self.current.len();
            self.done.push(Chunk::Memory(self.current.split().freeze()));
        }
    }

    /// The chunks with the frame length in front.
    fn finish(mut self) -> anyhow::Result<Vec<Chunk>> {
        self.seal();
        let length = i32::try_from(self.total)?;
        let mut chunks = Vec::with_capacity(self.done.len() + 1);
        chunks.push(Chunk::Memory(Bytes::copy_from_slice(&length.to_be_bytes())));
        chunks.extend(self.done);
        Ok(chunks)
    }
}

fn put_unsigned_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// An array length: i32, or unsigned varint of length + 1 when flexible.
fn put_length(buf: &mut BytesMut, length: usize, flexible: bool) {
    if flexible {
        put_unsigned_varint(buf, length as u64 + 1);
    } else {
        buf.put_i32(length as i32);
    }
}

/// A non-null string: i16 length, or unsigned varint of length + 1 when flexible.
fn put_string(buf: &mut BytesMut, value: &[u8], flexible: bool) {
    if flexible {
        put_unsigned_varint(buf, value.len() as u64 + 1);
    } else {
        buf.put_i16(value.len() as i16);
    }
    buf.put_slice(value);
}

/// Encodes the v0 ApiVersions answer to an ApiVersions request of unknown version.
pub fn encode_unsupported_api_versions(
    correlation_id: i32,
    body: &ApiVersionsResponse,
) -> Result<Bytes, EncodeError> {
    encode_response(
        correlation_id,
        ApiKey::ApiVersions,
        0,
        &ResponseKind::ApiVersions(body.clone()),
    )
}

/// Writes the frame length into the first four bytes.
fn patch_length(buf: &mut BytesMut) -> Result<(), String> {
    let length = i32::try_from(buf.len() - FRAME_LENGTH_BYTES)
        .map_err(|_| format!("response of {} bytes exceeds the frame limit", buf.len()))?;
    buf[..FRAME_LENGTH_BYTES].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// Produce responses v0–v2, which the codec no longer encodes. v2 is laid out as v3; v1
/// lacks `log_append_time_ms`; v0 also lacks the trailing `throttle_time_ms`.
fn encode_legacy_produce_response(response: &ProduceResponse, version: i16, buf: &mut BytesMut) {
    buf.put_i32(response.responses.len() as i32);
    for topic in &response.responses {
        buf.put_i16(topic.name.len() as i16);
        buf.extend_from_slice(topic.name.as_bytes());
        buf.put_i32(topic.partition_responses.len() as i32);
        for partition in &topic.partition_responses {
            buf.put_i32(partition.index);
            buf.put_i16(partition.error_code);
            buf.put_i64(partition.base_offset);
            if version >= 2 {
                buf.put_i64(partition.log_append_time_ms);
            }
        }
    }
    if version >= 1 {
        buf.put_i32(response.throttle_time_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As in the broker: forged array counts must not abort the test process.
    #[global_allocator]
    static ALLOCATOR: ferry_alloc::GuardedAllocator = ferry_alloc::GuardedAllocator;
    use kafka_protocol::messages::{ApiVersionsRequest, BrokerId, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn frame(api_key: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")))
            .encode(&mut buf, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_metadata() {
        let request = frame(ApiKey::Metadata, 12, &MetadataRequest::default());
        match decode_request(request).unwrap() {
            DecodedRequest::Request { header, body } => {
                assert!(matches!(*body, RequestKind::Metadata(_)));
                assert_eq!(header.correlation_id, 7);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_api_versions_version_is_answerable() {
        let mut request = frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).to_vec();
        request[2..4].copy_from_slice(&99i16.to_be_bytes());
        match decode_request(Bytes::from(request)).unwrap() {
            DecodedRequest::UnsupportedApiVersions { header } => {
                assert_eq!(header.correlation_id, 7);
                assert_eq!(header.request_api_version, 99);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_unknown_keys_versions_and_garbage() {
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 1, 0])),
            Err(DecodeError::TooShort(3))
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(&[0x7f, 0, 0, 0, 0, 0, 0, 1, 0, 0])),
            Err(DecodeError::UnknownApiKey {
                correlation_id: 1,
                ..
            })
        ));
        let mut metadata_v14 = frame(ApiKey::Metadata, 13, &MetadataRequest::default()).to_vec();
        metadata_v14[2..4].copy_from_slice(&14i16.to_be_bytes());
        assert!(matches!(
            decode_request(Bytes::from(metadata_v14)),
            Err(DecodeError::UnsupportedVersion { version: 14, .. })
        ));
        // An API the codec knows but Ferry does not serve.
        let mut sasl = frame(ApiKey::Metadata, 1, &MetadataRequest::default()).to_vec();
        sasl[0..2].copy_from_slice(&(ApiKey::SaslHandshake as i16).to_be_bytes());
        assert!(matches!(
            decode_request(Bytes::from(sasl)),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
        // Metadata v0 declaring 2^31-1 topics in a 4-byte body.
        let huge =
            Bytes::from_static(&[0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_request(huge),
            Err(DecodeError::Body { .. })
        ));
    }

    fn fetch_response_sample() -> FetchResponse {
        use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
        use kafka_protocol::messages::TopicName;
        let big = Bytes::from((0..10_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let partition = |index: i32, records: Option<Bytes>| {
            PartitionData::default()
                .with_partition_index(index)
                .with_high_watermark(100 + i64::from(index))
                .with_last_stable_offset(100)
                .with_log_start_offset(3)
                .with_aborted_transactions(if index == 1 { Some(Vec::new()) } else { None })
                .with_records(records)
        };
        let topic = |name: &'static str, partitions| {
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str(name)))
                .with_partitions(partitions)
        };
        FetchResponse::default().with_responses(vec![
            topic(
                "first",
                vec![
                    partition(0, Some(big.clone())),
                    partition(1, Some(Bytes::from_static(b"small records"))),
                    partition(2, Some(Bytes::new())),
                ],
            ),
            topic(
                "second",
                vec![partition(0, None), partition(7, Some(big.slice(1..5000)))],
            ),
        ])
    }

    /// The sample with its last partition's records (and a small one's) moved into a
    /// file: `(answer, the same response with every record set in memory)`.
    fn fetch_answer_sample(dir: &std::path::Path) -> (FetchAnswer, FetchResponse) {
        use std::sync::Arc;
        let mut response = fetch_response_sample();
        let whole = response.clone();
        let path = dir.join("segment");
        let mut content = b"before".to_vec();
        let mut files = Vec::new();
        for (t, p) in [(0, 1), (1, 1)] {
            let records = response.responses[t].partitions[p].records.take().unwrap();
            files.push(((t, p), (content.len() as u64, records.len())));
            content.extend_from_slice(&records);
        }
        std::fs::write(&path, content).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let files = files
            .into_iter()
            .map(|(at, (position, len))| (at, FileRegion::new(file.clone(), position, len)))
            .collect();
        (FetchAnswer { response, files }, whole)
    }

    fn joined(chunks: Vec<Chunk>) -> Vec<u8> {
        chunks
            .into_iter()
            .flat_map(|chunk| chunk.into_bytes().unwrap())
            .collect()
    }

    #[test]
    fn chunked_fetch_response_equals_the_codec_encoding() {
        let dir = tempfile::tempdir().unwrap();
        for version in 4..=FETCH_CHUNKED_MAX_VERSION {
            let (answer, whole) = fetch_answer_sample(dir.path());
            let chunks = encode_fetch_response(5, version, answer).unwrap();
            let files = chunks
                .iter()
                .filter(|chunk| matches!(chunk, Chunk::File(_)))
                .count();
            assert_eq!(files, 2, "v{version}: file regions stay file regions");
            assert!(
                chunks.len() > 4,
                "v{version}: large records are separate buffers"
            );
            let expected =
                encode_response(5, ApiKey::Fetch, version, &ResponseKind::Fetch(whole)).unwrap();
            assert_eq!(joined(chunks), expected.to_vec(), "v{version}");
        }
    }

    #[test]
    fn fetch_response_with_tagged_fields_falls_back_to_one_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut answer, mut whole) = fetch_answer_sample(dir.path());
        answer.response.responses[0].partitions[0]
            .current_leader
            .leader_id = BrokerId(0);
        whole.responses[0].partitions[0].current_leader.leader_id = BrokerId(0);
        let chunks = encode_fetch_response(5, 12, answer).unwrap();
        assert_eq!(chunks.len(), 1);
        let expected = encode_response(5, ApiKey::Fetch, 12, &ResponseKind::Fetch(whole)).unwrap();
        assert_eq!(joined(chunks), expected.to_vec());
    }

    #[test]
    fn file_regions_for_partitions_not_in_the_response_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut answer, _) = fetch_answer_sample(dir.path());
        answer.files[1].0 = (1, 5);
        assert!(encode_fetch_response(5, 12, answer).is_err());
        let (mut answer, _) = fetch_answer_sample(dir.path());
        answer.files.swap(0, 1);
        assert!(encode_fetch_response(5, 12, answer).is_err());
    }

    #[test]
    fn legacy_produce_responses_have_their_old_layouts() {
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        use kafka_protocol::messages::TopicName;
        let response =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("logs")))
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(2)
                    .with_error_code(35)
                    .with_base_offset(-1)])]);
        let body = ResponseKind::Produce(response);
        let v3 = encode_response(1, ApiKey::Produce, 3, &body).unwrap();
        // v2 is laid out as v3; v1 drops log_append_time_ms (8 bytes); v0 also the throttle.
        assert_eq!(encode_response(1, ApiKey::Produce, 2, &body).unwrap(), v3);
        assert_eq!(
            encode_response(1, ApiKey::Produce, 1, &body).unwrap().len(),
            v3.len() - 8
        );
        let v0 = encode_response(1, ApiKey::Produce, 0, &body).unwrap();
        assert_eq!(v0.len(), v3.len() - 12);
        assert_eq!(&v0[..4], &((v0.len() - 4) as i32).to_be_bytes());
    }

    #[test]
    fn api_versions_response_header_is_v0() {
        let body = ResponseKind::ApiVersions(versions::api_versions_response(0));
        let bytes = encode_response(9, ApiKey::ApiVersions, 4, &body).unwrap();
        // length, correlation id, then directly the error code (no header tagged fields).
        assert_eq!(&bytes[4..8], &9i32.to_be_bytes());
        assert_eq!(&bytes[8..10], &0i16.to_be_bytes());
    }
}
