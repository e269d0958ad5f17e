//! AMQP 0-9-1 frame decoding must never panic, overflow the stack or allocate from a
//! forged size, whatever the bytes: every frame a client sends after the protocol header
//! is cut by `cut_frame` (within the negotiated frame_max) and its payload decoded by
//! `decode_method` or `decode_content_header`, as the connection task does.
#![no_main]

use bytes::BytesMut;
use ferry_amqp::codec::{
    cut_frame, decode_content_header, decode_method, FRAME_HEADER, FRAME_METHOD,
};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: ferry_alloc::GuardedAllocator = ferry_alloc::GuardedAllocator;

/// RabbitMQ's default frame_max, Ferry's too.
const FRAME_MAX: u32 = 131_072;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = cut_frame(&mut buf, FRAME_MAX) {
        match frame.kind {
            FRAME_METHOD => {
                let _ = decode_method(&frame.payload);
            }
            FRAME_HEADER => {
                let _ = decode_content_header(&frame.payload);
            }
            _ => {}
        }
    }
});
