//! Framing: reading whole frames off the socket within `frame_max`, decoding them with
//! `amq-protocol`, and encoding outgoing methods and content.
//!
//! Frames are cut out of one read buffer without copying: a body frame's payload is a
//! [`Bytes`] slice of what was read, and a message published in one body frame keeps that
//! slice as its body. The size in a frame header is checked against the negotiated
//! `frame_max` before anything is allocated for it, so a forged length costs nothing.
//!
//! `amq-protocol`'s field-table parser recurses once per nested table or array; a frame
//! full of nested empty tables would overflow the stack. [`check_nesting`] walks the tables
//! of the few methods (and of the content header) that carry them, iteratively, and refuses
//! more than [`MAX_TABLE_DEPTH`] levels before the recursive parser sees the bytes.

use amq_protocol::frame::{gen_frame, AMQPFrame};
use amq_protocol::frame::{parsing::parse_content_header, AMQPContentHeader, WriteContext};
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{parse_class, AMQPClass};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Type, channel and size before a frame's payload.
pub const FRAME_HEADER_BYTES: usize = 7;
/// Header plus end octet: what a frame costs beyond its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_BYTES + 1;
/// The AMQP 0-9-1 protocol header, also sent back to clients asking for another version.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Deepest nesting of field tables and arrays accepted in a frame.
pub const MAX_TABLE_DEPTH: usize = 64;
/// Read-ahead of each connection's read buffer: frames up to this size need no extra
/// allocation, larger ones grow the buffer as their bytes arrive.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// A frame as cut from the stream: type, channel and payload (without the end octet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// Frame type octet.
    pub kind: u8,
    /// Channel number.
    pub channel: u16,
    /// Payload bytes.
    pub payload: Bytes,
}

/// Why the byte stream is not a valid frame sequence.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection.
    #[error("connection closed by the client")]
    Closed,
    /// A socket error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The size in the header exceeds the negotiated `frame_max`.
    #[error("frame size {size} exceeds frame_max {frame_max}")]
    TooLarge {
        /// Whole frame size announced (payload plus overhead).
        size: u64,
        /// The negotiated limit.
        frame_max: u32,
    },
    /// The octet after the payload is not 0xCE.
    #[error("bad frame end octet {0:#04x}")]
    BadEnd(u8),
    /// An unknown frame type octet.
    #[error("unknown frame type {0}")]
    BadType(u8),
}

/// Reads frames from a byte stream through one reusable buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
        }
    }

    /// Reads exactly `n` bytes (the protocol header), from the buffer first.
    pub async fn read_exact_bytes(&mut self, n: usize) -> Result<Bytes, FrameError> {
        while self.buf.len() < n {
            self.fill(n).await?;
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// The next frame. `frame_max` is the whole-frame limit (0: no limit beyond `u32`).
    /// Cancel-safe: bytes read so far stay in the buffer.
    pub async fn next(&mut self, frame_max: u32) -> Result<RawFrame, FrameError> {
        loop {
            if let Some(frame) = self.cut(frame_max)? {
                return Ok(frame);
            }
            let want = match self.announced() {
                Some(size) => size,
                None => FRAME_HEADER_BYTES,
            };
            self.fill(want).await?;
        }
    }

    /// The whole size of the frame whose header is buffered.
    fn announced(&self) -> Option<usize> {
        if self.buf.len() < FRAME_HEADER_BYTES {
            return None;
        }
        let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
        Some(size as usize + FRAME_OVERHEAD)
    }

    fn cut(&mut self, frame_max: u32) -> Result<Option<RawFrame>, FrameError> {
        cut_frame(&mut self.buf, frame_max)
    }

    /// Reads more bytes, room for at least `want` in all (in chunks: the size is the
    /// client's claim, checked against `frame_max` but not trusted with one allocation).
    async fn fill(&mut self, want: usize) -> Result<(), FrameError> {
        let missing = want
            .saturating_sub(self.buf.len())
            .clamp(1, READ_CHUNK_BYTES);
        self.buf.reserve(missing.max(READ_CHUNK_BYTES / 4));
        let read = self.inner.read_buf(&mut self.buf).await?;
        if read == 0 {
            return Err(FrameError::Closed);
        }
        Ok(())
    }
}

/// Cuts one complete frame off the front of `buf`, if it holds one; `frame_max` is the
/// whole-frame limit (0: none). The decoder's entry point, also for fuzzing.
pub fn cut_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<RawFrame>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let kind = buf[0];
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::BadType(kind));
    }
    let payload_len = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    let size = u64::from(payload_len) + FRAME_OVERHEAD as u64;
    if frame_max != 0 && size > u64::from(frame_max) {
        return Err(FrameError::TooLarge { size, frame_max });
    }
    let size = size as usize;
    if buf.len() < size {
        return Ok(None);
    }
    let end = buf[size - 1];
    if end != FRAME_END {
        return Err(FrameError::BadEnd(end));
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let mut frame = buf.split_to(size);
    frame.advance(FRAME_HEADER_BYTES);
    frame.truncate(payload_len as usize);
    Ok(Some(RawFrame {
        kind,
        channel,
        payload: frame.freeze(),
    }))
}

/// Why a frame's payload does not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Field tables nested deeper than [`MAX_TABLE_DEPTH`].
    #[error("field tables nested deeper than {MAX_TABLE_DEPTH} levels")]
    TooDeep,
    /// Unknown class or method id.
    #[error("unknown method {class_id}/{method_id}")]
    UnknownMethod {
        /// Class id.
        class_id: u16,
        /// Method id.
        method_id: u16,
    },
    /// The payload does not parse (short, invalid UTF-8, bad type tag…).
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Decodes a method frame's payload.
pub fn decode_method(payload: &[u8]) -> Result<AMQPClass, DecodeError> {
    let (class_id, method_id) = method_ids(payload).ok_or(DecodeError::Malformed("method"))?;
    if let Some(offset) = method_table_offset(class_id, method_id, payload) {
        check_nesting(&payload[offset..])?;
    }
    match parse_class(payload) {
        Ok((&[], class)) => Ok(class),
        Ok(_) => Err(DecodeError::Malformed("method (trailing bytes)")),
        Err(_) if !is_known_method(class_id, method_id) => Err(DecodeError::UnknownMethod {
            class_id,
            method_id,
        }),
        Err(_) => Err(DecodeError::Malformed("method arguments")),
    }
}

/// The class and method ids at the start of a method payload.
pub fn method_ids(payload: &[u8]) -> Option<(u16, u16)> {
    if payload.len() < 4 {
        return None;
    }
    Some((
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    ))
}

/// Decodes a content header frame's payload.
pub fn decode_content_header(payload: &[u8]) -> Result<AMQPContentHeader, DecodeError> {
    if let Some(offset) = header_table_offset(payload) {
        check_nesting(&payload[offset..])?;
    }
    match parse_content_header(payload) {
        Ok((&[], header)) => Ok(header),
        _ => Err(DecodeError::Malformed("content header")),
    }
}

/// Whether class/method ids name an AMQP 0-9-1 method.
fn is_known_method(class_id: u16, method_id: u16) -> bool {
    match class_id {
        10 => matches!(
            method_id,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61
        ),
        20 => matches!(method_id, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10 | 11),
        40 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method_id,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method_id, 10 | 11),
        90 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

/// Where the field table of a method that carries one starts, if it is in the payload.
fn method_table_offset(class_id: u16, method_id: u16, payload: &[u8]) -> Option<usize> {
    // Fields before the table: `S` short string, `U` short, `B` bits/octet(s).
    let layout: &[u8] = match (class_id, method_id) {
        (10, 10) => b"BB",               // connection.start: version major, minor
        (10, 11) => b"",                 // connection.start-ok: client properties first
        (40, 10) => b"USSB",             // exchange.declare
        (40, 30) | (40, 40) => b"USSSB", // exchange.bind / unbind
        (50, 10) => b"USB",              // queue.declare
        (50, 20) => b"USSSB",            // queue.bind
        (50, 50) => b"USSS",             // queue.unbind (no bits)
        (60, 20) => b"USSB",             // basic.consume
        _ => return None,
    };
    let mut at = 4usize;
    for field in layout {
        at = match field {
            b'U' => at + 2,
            b'B' => at + 1,
            _ => at + 1 + usize::from(*payload.get(at)?),
        };
    }
    (at <= payload.len()).then_some(at)
}

/// Where the `headers` table of a content header starts, if it has one.
fn header_table_offset(payload: &[u8]) -> Option<usize> {
    // class (2), weight (2), body size (8), property flags (2).
    let flags = u16::from_be_bytes([*payload.get(12)?, *payload.get(13)?]);
    if flags & (1 << 13) == 0 {
        return None;
    }
    let mut at = 14usize;
    for bit in [15u16, 14] {
        if flags & (1 << bit) != 0 {
            at += 1 + usize::from(*payload.get(at)?);
        }
    }
    (at <= payload.len()).then_some(at)
}

/// Walks the field table at the start of `bytes` (iteratively) and fails if tables or
/// arrays nest deeper than [`MAX_TABLE_DEPTH`]. Malformed input is left to the parser.
pub fn check_nesting(bytes: &[u8]) -> Result<(), DecodeError> {
    // Each open container: (end offset, is_table).
    let mut stack: Vec<(usize, bool)> = Vec::new();
    let Some(len) = read_u32(bytes, 0) else {
        return Ok(());
    };
    let mut at = 4usize;
    stack.push(((4 + len as usize).min(bytes.len()), true));
    while let Some(&(end, is_table)) = stack.last() {
        if at >= end {
            stack.pop();
            at = at.max(end);
            continue;
        }
        if is_table {
            // Key: short string.
            let Some(&key_len) = bytes.get(at) else {
                return Ok(());
            };
            at += 1 + usize::from(key_len);
        }
        let Some(&tag) = bytes.get(at) else {
            return Ok(());
        };
        at += 1;
        let fixed = match tag {
            b't' | b'b' | b'B' => Some(1),
            b's' | b'u' | b'U' => Some(2),
            b'I' | b'i' | b'f' => Some(4),
            b'l' | b'L' | b'd' | b'T' => Some(8),
            b'D' => Some(5),
            b'V' => Some(0),
            _ => None,
        };
        if let Some(n) = fixed {
            at += n;
            continue;
        }
        let Some(len) = read_u32(bytes, at) else {
            return Ok(());
        };
        at += 4;
        match tag {
            b'F' | b'A' => {
                if stack.len() >= MAX_TABLE_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                let inner_end = at.saturating_add(len as usize).min(end);
                stack.push((inner_end, tag == b'F'));
            }
            // `S`, `x` and unknown tags: skip the bytes (unknown ones fail in the parser).
            _ => at = at.saturating_add(len as usize),
        }
    }
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Why an outgoing frame could not be encoded (a bug or an unrepresentable value).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode frame: {0}")]
pub struct EncodeError(String);

/// Appends one frame, encoded, to `out`.
pub fn encode_frame(out: &mut Vec<u8>, frame: &AMQPFrame) -> Result<(), EncodeError> {
    let buf = std::mem::take(out);
    match gen_frame(frame)(WriteContext::from(buf)) {
        Ok(ctx) => {
            *out = ctx.into_inner().0;
            Ok(())
        }
        Err(e) => Err(EncodeError(e.to_string())),
    }
}

/// A method frame, encoded.
pub fn method_frame(channel: u16, method: AMQPClass) -> Result<Bytes, EncodeError> {
    let mut out = Vec::with_capacity(64);
    encode_frame(&mut out, &AMQPFrame::Method(channel, method))?;
    Ok(Bytes::from(out))
}

/// Encodes a method followed by a content header (class basic) into one buffer; the body
/// frames follow separately (see [`push_body_frames`]).
pub fn content_head(
    channel: u16,
    method: AMQPClass,
    properties: AMQPProperties,
    body_size: u64,
) -> Result<Bytes, EncodeError> {
    let mut out = Vec::with_capacity(128);
    encode_frame(&mut out, &AMQPFrame::Method(channel, method))?;
    encode_frame(
        &mut out,
        &AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: 60,
                body_size,
                properties,
            },
        ),
    )?;
    Ok(Bytes::from(out))
}

/// Appends `body` as body frames of at most `frame_max` bytes each to `out`.
pub fn push_body_frames(out: &mut Vec<u8>, channel: u16, body: &[u8], frame_max: u32) {
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for piece in body.chunks(chunk) {
        out.push(FRAME_BODY);
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(piece.len() as u32).to_be_bytes());
        out.extend_from_slice(piece);
        out.push(FRAME_END);
    }
}

/// The heartbeat frame.
pub const HEARTBEAT_FRAME: &[u8] = &[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{basic, queue};

    fn reader(bytes: Vec<u8>) -> FrameReader<std::io::Cursor<Vec<u8>>> {
        FrameReader::new(std::io::Cursor::new(bytes))
    }

    #[tokio::test]
    async fn frames_are_cut_without_trusting_sizes() {
        let method = method_frame(
            3,
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "q".into(),
                nowait: false,
            })),
        )
        .expect("encode");
        let mut bytes = method.to_vec();
        bytes.extend_from_slice(HEARTBEAT_FRAME);
        let mut r = reader(bytes);
        let f = r.next(4096).await.expect("method");
        assert_eq!((f.kind, f.channel), (FRAME_METHOD, 3));
        assert!(matches!(
            decode_method(&f.payload),
            Ok(AMQPClass::Queue(queue::AMQPMethod::Purge(_)))
        ));
        let hb = r.next(4096).await.expect("heartbeat");
        assert_eq!(
            (hb.kind, hb.channel, hb.payload.len()),
            (FRAME_HEARTBEAT, 0, 0)
        );
        assert!(matches!(r.next(4096).await, Err(FrameError::Closed)));

        // A forged 4 GiB size is refused from the header alone.
        let mut r = reader(vec![FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            r.next(131_072).await,
            Err(FrameError::TooLarge {
                frame_max: 131_072,
                ..
            })
        ));
        // Wrong end octet and unknown type.
        let mut r = reader(vec![FRAME_BODY, 0, 1, 0, 0, 0, 1, b'x', 0]);
        assert!(matches!(r.next(0).await, Err(FrameError::BadEnd(0))));
        let mut r = reader(vec![9, 0, 1, 0, 0, 0, 0, FRAME_END]);
        assert!(matches!(r.next(0).await, Err(FrameError::BadType(9))));
    }

    #[test]
    fn deep_tables_are_refused_before_parsing() {
        // basic.consume whose arguments nest 10,000 tables.
        let depth = 10_000usize;
        let mut table = Vec::new();
        for level in 0..depth {
            // key "k", type 'F', then the inner table's length (patched below).
            let _ = level;
            table.extend_from_slice(&[1, b'k', b'F']);
            table.extend_from_slice(&[0, 0, 0, 0]);
        }
        // Patch lengths from the innermost out.
        let entry = 7usize;
        for level in (0..depth).rev() {
            let inner_len = (depth - level - 1) * entry;
            let at = level * entry + 3;
            table[at..at + 4].copy_from_slice(&(inner_len as u32).to_be_bytes());
        }
        let mut payload = vec![0, 60, 0, 20, 0, 0, 1, b'q', 0, 0];
        payload.extend_from_slice(&((table.len()) as u32).to_be_bytes());
        payload.extend_from_slice(&table);
        assert!(matches!(decode_method(&payload), Err(DecodeError::TooDeep)));

        // A few levels are fine.
        let shallow = vec![
            0, 60, 0, 20, 0, 0, 1, b'q', 0, 0, 0, 0, 0, 14, 1, b'a', b'F', 0, 0, 0, 7, 1, b'b',
            b'F', 0, 0, 0, 0,
        ];
        match decode_method(&shallow) {
            Ok(AMQPClass::Basic(basic::AMQPMethod::Consume(c))) => {
                assert_eq!(c.queue.as_str(), "q");
                assert!(c.arguments.contains_key("a"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbage_methods_are_errors_not_panics() {
        for payload in [
            &[][..],
            &[0, 60],
            &[0, 99, 0, 1],
            &[0, 60, 0, 40, 0],
            &[0, 10, 0, 11, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(decode_method(payload).is_err(), "{payload:?}");
        }
        assert!(matches!(
            decode_method(&[0, 99, 0, 1]),
            Err(DecodeError::UnknownMethod {
                class_id: 99,
                method_id: 1
            })
        ));
    }

    #[test]
    fn body_frames_respect_frame_max() {
        let body = vec![7u8; 10_000];
        let mut out = Vec::new();
        push_body_frames(&mut out, 2, &body, 4096);
        let mut total = 0;
        let mut at = 0;
        while at < out.len() {
            let len =
                u32::from_be_bytes([out[at + 3], out[at + 4], out[at + 5], out[at + 6]]) as usize;
            assert!(len + FRAME_OVERHEAD <= 4096);
            assert_eq!(out[at + FRAME_HEADER_BYTES + len], FRAME_END);
            total += len;
            at += len + FRAME_OVERHEAD;
        }
        assert_eq!(total, body.len());
    }
}
