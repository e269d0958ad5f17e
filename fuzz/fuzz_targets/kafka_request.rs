//! Kafka request decoding must never panic, whatever the bytes: every frame a client can
//! send goes through `decode_request` (the 4-byte length prefix is checked before it).
//! The target runs with the broker's allocator, under which a forged array count costs
//! address space rather than memory (see `ferry_alloc`).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: ferry_alloc::GuardedAllocator = ferry_alloc::GuardedAllocator;

fuzz_target!(|data: &[u8]| {
    let _ = ferry_kafka::server::decode_request(Bytes::copy_from_slice(data));
});
