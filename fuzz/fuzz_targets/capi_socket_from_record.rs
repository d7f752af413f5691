//! `WSASocketW` with any bytes as its `WSAPROTOCOL_INFOW` (and any af/type/protocol after
//! them): never panics inside the library (a panic would come back as WSASYSCALLFAILURE), fails
//! with a Winsock code or makes a socket, which closes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sockdup_capi::types::{FROM_PROTOCOL_INFO, INVALID_SOCKET, WSAPROTOCOL_INFOW, WSASYSCALLFAILURE};
use sockdup_capi::winsock::{WSAGetLastError, WSASocketW, closesocket};

static STARTED: OnceLock<sockdup::Startup> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    STARTED.get_or_init(|| sockdup::startup().expect("startup"));
    let mut bytes = [0u8; 628];
    let n = data.len().min(628);
    bytes[..n].copy_from_slice(&data[..n]);
    let info = WSAPROTOCOL_INFOW::from_bytes(&bytes);
    let int = |i: usize| {
        data.get(628 + 4 * i..632 + 4 * i)
            .map_or(FROM_PROTOCOL_INFO, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // SAFETY: `info` is a valid WSAPROTOCOL_INFOW for the whole call.
    let s = unsafe { WSASocketW(int(0), int(1), int(2), &info, 0, 0) };
    if s == INVALID_SOCKET {
        let code = WSAGetLastError();
        assert_ne!(code, WSASYSCALLFAILURE, "a panic inside WSASocketW");
        assert!(code > 0, "a failure without an error code");
    } else {
        assert_eq!(closesocket(s), 0);
    }
});
