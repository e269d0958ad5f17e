//! The writing half of a connection: one task per connection drains a bounded queue of
//! outgoing frames and coalesces whatever is queued into one buffer and one write system
//! call, sending a heartbeat when nothing else was written for a heartbeat interval.
//!
//! The queue is bounded ([`OUT_QUEUE_FRAMES`]): when a client does not read, the tasks
//! producing its frames (its consumers, its reader) wait, and nothing else does.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::codec::{push_body_frames, HEARTBEAT_FRAME};

/// Outgoing items queued per connection before producers wait.
pub const OUT_QUEUE_FRAMES: usize = 1024;
/// Bytes gathered before a write is issued even though more items are queued.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// One outgoing item.
#[derive(Debug)]
pub enum Out {
    /// Encoded frames, written as they are.
    Frames(Bytes),
    /// A method and content header (encoded in `head`), then `body` as body frames of the
    /// negotiated `frame_max`.
    Content {
        /// Channel of the body frames.
        channel: u16,
        /// Method and content header frames.
        head: Bytes,
        /// The message body.
        body: Bytes,
    },
    /// Write what is queued before this and stop.
    Finish,
}

/// Settings the writer reads live (they are negotiated after it starts).
#[derive(Debug)]
pub struct WriterSettings {
    /// Negotiated frame_max (body frames are cut to it).
    pub frame_max: AtomicU32,
    /// Heartbeat interval in seconds; 0: none.
    pub heartbeat_s: AtomicU32,
}

/// Runs until [`Out::Finish`], every sender is gone, or a write fails.
pub async fn run<W: AsyncWrite + Unpin>(
    mut sink: W,
    mut queue: mpsc::Receiver<Out>,
    settings: Arc<WriterSettings>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    loop {
        let heartbeat = settings.heartbeat_s.load(Ordering::Relaxed);
        let first = if heartbeat == 0 {
            queue.recv().await
        } else {
            match tokio::time::timeout(Duration::from_secs(u64::from(heartbeat)), queue.recv())
                .await
            {
                Ok(item) => item,
                Err(_) => {
                    sink.write_all(HEARTBEAT_FRAME).await?;
                    continue;
                }
            }
        };
        let Some(mut item) = first else {
            return sink.flush().await;
        };
        let frame_max = settings.frame_max.load(Ordering::Relaxed);
        loop {
            if !append(&mut buf, item, frame_max) {
                sink.write_all(&buf).await?;
                return sink.flush().await;
            }
            if buf.len() >= WRITE_BATCH_BYTES {
                sink.write_all(&buf).await?;
                buf.clear();
            }
            match queue.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            sink.write_all(&buf).await?;
            buf.clear();
        }
        // Keep a large one-off buffer from pinning memory for the connection's life.
        if buf.capacity() > WRITE_BATCH_BYTES * 2 {
            buf = Vec::with_capacity(16 << 10);
        }
    }
}

/// Appends an item's bytes; `false` for [`Out::Finish`].
fn append(buf: &mut Vec<u8>, item: Out, frame_max: u32) -> bool {
    match item {
        Out::Frames(bytes) => buf.extend_from_slice(&bytes),
        Out::Content {
            channel,
            head,
            body,
        } => {
            buf.extend_from_slice(&head);
            push_body_frames(buf, channel, &body, frame_max);
        }
        Out::Finish => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn coalesces_content_and_stops_on_finish() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::channel(16);
        let settings = Arc::new(WriterSettings {
            frame_max: AtomicU32::new(4096),
            heartbeat_s: AtomicU32::new(0),
        });
        let task = tokio::spawn(run(near, rx, settings));
        tx.send(Out::Frames(Bytes::from_static(b"abc")))
            .await
            .expect("send");
        tx.send(Out::Content {
            channel: 1,
            head: Bytes::from_static(b"H"),
            body: Bytes::from(vec![1u8; 5000]),
        })
        .await
        .expect("send");
        tx.send(Out::Finish).await.expect("send");
        task.await.expect("join").expect("write");
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.expect("read");
        // abc, H, then two body frames (4088 + 912 bytes) with 8 bytes of framing each.
        assert_eq!(got.len(), 3 + 1 + 5000 + 16);
        assert_eq!(&got[..4], b"abcH");
    }

    #[tokio::test]
    async fn sends_heartbeats_when_idle() {
        let (near, mut far) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(16);
        let settings = Arc::new(WriterSettings {
            frame_max: AtomicU32::new(4096),
            heartbeat_s: AtomicU32::new(1),
        });
        let _task = tokio::spawn(run(near, rx, settings));
        let mut frame = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(3), far.read_exact(&mut frame))
            .await
            .expect("a heartbeat within 3 s")
            .expect("read");
        assert_eq!(&frame, HEARTBEAT_FRAME);
        drop(tx);
    }
}
