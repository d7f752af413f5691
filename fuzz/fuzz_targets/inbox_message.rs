//! The inbox's binary messages decoded from any bytes: never panic, and what decodes survives
//! `encode` and back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockdup_core::message::{Reply, Request};

/// `Reply::encode` cuts a longer text (the room left in a 4096-byte message).
const MAX_TEXT: usize = 4096 - 5 * 4 - 253 * 4;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::decode(data) {
        assert_eq!(Request::decode(&request.encode()).ok(), Some(request));
    }
    if let Ok(reply) = Reply::decode(data) {
        let again = Reply::decode(&reply.encode()).expect("encode output decodes");
        if reply.text.len() <= MAX_TEXT {
            assert_eq!(again, reply);
        }
    }
});
