//! `libsockdup`: the C library. This crate only gives [`sockdup_capi`]'s exported functions
//! (`WSAStartup`, `WSADuplicateSocketW`, `WSASocketW`, ...) the file names C programs link
//! with (`libsockdup.so`, `libsockdup.a`); its headers are in `include/sockdup/`.
//!
//! ```text
//! cargo build --release -p sockdup-ffi
//! cc app.c -I crates/sockdup-ffi/include -L target/release -lsockdup
//! ```

pub use sockdup_capi::*;
