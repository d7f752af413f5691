//! `WSAEnumProtocolsW` with any buffer length, a NULL or real buffer of exactly that many
//! bytes, and any protocol filter: the count it returns fits the buffer, and WSAENOBUFS comes
//! exactly when the buffer is NULL or short, with the size needed.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sockdup_capi::types::{SOCKET_ERROR, WSAPROTOCOL_INFOW};
use sockdup_capi::winsock::{WSAEnumProtocolsW, WSAGetLastError};

const WSAENOBUFS: i32 = 10055;
const WSAEINVAL: i32 = 10022;
const RECORD: usize = 628;

static STARTED: OnceLock<sockdup::Startup> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    STARTED.get_or_init(|| sockdup::startup().expect("startup"));
    let Some((head, rest)) = data.split_first_chunk::<5>() else { return };
    let given = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) % (64 * 1024);
    let null_buffer = head[4] & 1 == 1;
    let filter_on = head[4] & 2 == 2;
    // Protocol numbers, 0-terminated (the last one is added if the data has none).
    let mut filter: Vec<i32> = rest
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .take(1100)
        .collect();
    if head[4] & 4 == 0 {
        filter.push(0);
    }
    let has_zero = filter.contains(&0);
    if filter_on && !has_zero {
        // A list without its 0 would be read past its end: not a valid call.
        return;
    }
    // Exactly `given` bytes, 4-aligned (u32 storage), as a C caller's malloc would give.
    let mut storage = vec![0u32; (given as usize).div_ceil(4)];
    let buf: *mut WSAPROTOCOL_INFOW = if null_buffer {
        std::ptr::null_mut()
    } else {
        storage.as_mut_ptr().cast()
    };
    let mut len = given;
    let filter_ptr = if filter_on { filter.as_ptr() } else { std::ptr::null() };
    // SAFETY: the filter is 0-terminated when given, `len` is readable and writable, and
    // `buf` is NULL or valid for `given` bytes.
    let n = unsafe { WSAEnumProtocolsW(filter_ptr, buf, &mut len) };
    if n == SOCKET_ERROR {
        match WSAGetLastError() {
            WSAENOBUFS => {
                assert_eq!(len as usize % RECORD, 0);
                assert!(null_buffer || len > given, "WSAENOBUFS for a buffer that fits");
            }
            WSAEINVAL => {
                // A filter whose 0 comes after more than 1024 numbers.
                assert!(filter_on && filter.iter().position(|p| *p == 0).unwrap_or(0) >= 1024);
            }
            other => panic!("unexpected error {other}"),
        }
    } else {
        assert!(!null_buffer);
        assert!(n as usize * RECORD <= given as usize);
        assert_eq!(len, given);
    }
});
