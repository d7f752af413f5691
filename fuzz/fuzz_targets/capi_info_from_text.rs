//! `sockdup_info_from_text` on any string, then `sockdup_info_to_text` into buffers of every
//! size around the text's: no panic inside the library, WSAEINVAL for what is no record,
//! WSAEFAULT exactly when the buffer is short, and the text written parses back to the record.
#![no_main]

use std::ffi::CString;

use libfuzzer_sys::fuzz_target;
use sockdup_capi::types::{SOCKET_ERROR, WSAPROTOCOL_INFOW};
use sockdup_capi::winsock::{WSAGetLastError, sockdup_info_from_text, sockdup_info_to_text};

const WSAEFAULT: i32 = 10014;
const WSAEINVAL: i32 = 10022;

fuzz_target!(|data: &[u8]| {
    let text = CString::new(data.iter().copied().take_while(|b| *b != 0).collect::<Vec<u8>>())
        .expect("no NUL inside");
    let mut info = WSAPROTOCOL_INFOW::default();
    // SAFETY: `text` is NUL-terminated and `info` writable for the call.
    let r = unsafe { sockdup_info_from_text(text.as_ptr(), &mut info) };
    if r == SOCKET_ERROR {
        assert_eq!(WSAGetLastError(), WSAEINVAL);
        return;
    }
    assert_eq!(r, 0);
    let mut buf = vec![0u8; 1024];
    // SAFETY: `info` is readable and `buf` writable for its length.
    let len = unsafe { sockdup_info_to_text(&info, buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len > 0);
    let len = len as usize;
    assert_eq!(buf[len], 0);
    for size in [0, 1, len - 1, len, len + 1] {
        let mut short = vec![0xa5u8; size];
        // SAFETY: `short` is writable for `size` bytes (NULL-like when empty: the library
        // checks the length before writing).
        let r = unsafe { sockdup_info_to_text(&info, short.as_mut_ptr().cast(), size) };
        if size > len {
            assert_eq!(r as usize, len);
            assert_eq!(&short[..=len], &buf[..=len]);
        } else {
            assert_eq!(r, SOCKET_ERROR);
            assert_eq!(WSAGetLastError(), WSAEFAULT);
            assert!(short.iter().all(|b| *b == 0xa5), "nothing written into a short buffer");
        }
    }
    let mut again = WSAPROTOCOL_INFOW::default();
    // SAFETY: `buf` holds a NUL-terminated string; `again` is writable.
    assert_eq!(unsafe { sockdup_info_from_text(buf.as_ptr().cast(), &mut again) }, 0);
    assert_eq!(info.to_info().expect("decodes"), again.to_info().expect("decodes"));
});
