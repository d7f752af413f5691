//! The `hello` app's HTTP parsing on any bytes: where a head ends, the head itself (request
//! line and header fields), and chunk-size lines. Nothing panics.
//!
//! `hello` lives in the `sockdup` binary (crates/sockdup-cli has no library target), so its
//! source file is compiled into this target as a module; its parsing functions are
//! `pub(crate)` for this.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../crates/sockdup-cli/src/worker/hello.rs"]
mod hello;

fuzz_target!(|data: &[u8]| {
    // As the server reads: empty lines before the request line are skipped, then the head
    // is everything up to its blank line.
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len());
    let rest = &data[start..];
    if let Some(end) = hello::head_end(rest) {
        assert!(end <= rest.len());
        let _ = hello::parse_head(&rest[..end]);
    }
    let _ = hello::parse_head(data);
    for line in data.split(|&b| b == b'\n') {
        if let Some(size) = hello::parse_chunk_size(line) {
            assert!(size < 1 << 60);
        }
    }
});
