//! The `winsock2.h` calls: `WSAStartup` ... `WSAEnumProtocolsW`, the event calls and the text
//! form of a record.

#![allow(non_snake_case)]

use std::sync::Mutex;

use sockdup::{Error, ErrorKind, Startup};

use crate::guard::{self, api};
use crate::ptr;
use crate::types::*;

/// The guards of this library's `WSAStartup` calls (one per call, dropped by `WSACleanup`).
static STARTUPS: Mutex<Vec<Startup>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `WSAStartup`: starts sockdup in this process (the same runtime as `sockdup::startup()`; calls
/// nest). Returns 0, or the error code itself (not `SOCKET_ERROR`), as on Windows.
///
/// # Safety
/// `lpWSAData` is NULL or points at a writable `WSADATA`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAStartup(wVersionRequested: WORD, lpWSAData: *mut WSADATA) -> i32 {
    match guard::catch(|| {
        let (major, minor) = (wVersionRequested & 0xff, wVersionRequested >> 8);
        if lpWSAData.is_null() {
            return Err(fault("lpWSAData"));
        }
        if major < 1 || (major == 1 && minor < 1) {
            return Err(Error::with_code(
                ErrorKind::InvalidArgument,
                WSAVERNOTSUPPORTED,
                format!(
                    "Winsock version {major}.{minor} is not offered: ask for 2.2 (MAKEWORD(2, 2))"
                ),
            ));
        }
        let version = if major > 2 || (major == 2 && minor >= 2) {
            0x0202
        } else {
            wVersionRequested
        };
        let started = sockdup::startup()?;
        let mut data = WSADATA {
            wVersion: version,
            wHighVersion: 0x0202,
            iMaxSockets: 0,
            iMaxUdpDg: 0,
            lpVendorInfo: std::ptr::null_mut(),
            szDescription: [0; WSADESCRIPTION_LEN + 1],
            szSystemStatus: [0; WSASYS_STATUS_LEN + 1],
        };
        for (d, s) in data
            .szDescription
            .iter_mut()
            .zip(b"sockdup Windows Sockets 2")
        {
            *d = *s as std::ffi::c_char;
        }
        for (d, s) in data.szSystemStatus.iter_mut().zip(b"Running") {
            *d = *s as std::ffi::c_char;
        }
        // SAFETY: `lpWSAData` is NULL or writable (this function's contract).
        unsafe { ptr::write(lpWSAData, data, "lpWSAData") }?;
        lock(&STARTUPS).push(started);
        Ok(())
    }) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// `WSACleanup`: ends one `WSAStartup`. 0, or `SOCKET_ERROR` with `WSANOTINITIALISED` when this
/// library has no `WSAStartup` left to end.
#[unsafe(no_mangle)]
pub extern "C" fn WSACleanup() -> i32 {
    api(SOCKET_ERROR, || {
        let mut startups = lock(&STARTUPS);
        let Some(last) = startups.pop() else {
            return Err(Error::new(
                ErrorKind::NotStarted,
                "WSACleanup without a WSAStartup to end: call WSAStartup first",
            ));
        };
        let closing_all = startups.is_empty();
        drop(startups);
        if closing_all {
            crate::sockets::close_all();
        }
        drop(last);
        Ok(0)
    })
}

/// `WSAGetLastError`: this thread's last error.
#[unsafe(no_mangle)]
pub extern "C" fn WSAGetLastError() -> i32 {
    guard::last_error()
}

/// `WSASetLastError`: sets this thread's last error.
#[unsafe(no_mangle)]
pub extern "C" fn WSASetLastError(iError: i32) {
    guard::set_last_error(iError);
}

/// Copies `text` and a NUL into the caller's `buf` of `len` bytes.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes of writing.
unsafe fn copy_out(text: &[u8], buf: *mut std::ffi::c_char, len: usize) -> Result<(), Error> {
    if buf.is_null() || len < text.len() + 1 {
        return Err(fault(&format!(
            "the text buffer ({len} bytes for {} and a NUL)",
            text.len()
        )));
    }
    // SAFETY: `buf` is not NULL and valid for `len >= text.len() + 1` bytes (this function's
    // contract); `text` is a distinct Rust allocation, so the ranges do not overlap.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    out[..text.len()].copy_from_slice(text);
    out[text.len()] = 0;
    Ok(())
}

/// `sockdup_info_to_text`: the record's one-line text form (`sockdup1:...`), NUL-terminated,
/// into `buf`: its length without the NUL, or `SOCKET_ERROR` with `WSAEFAULT` when `info` or
/// `buf` is NULL or `buf` is too short (`SOCKDUP_INFO_TEXT_MAX` bytes always suffice).
///
/// # Safety
/// `info` is NULL or points at a readable `WSAPROTOCOL_INFOW`; `buf` is NULL or valid for `len`
/// bytes of writing.
#[doc(alias = "ProtocolInfo::to_string")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sockdup_info_to_text(
    info: *const WSAPROTOCOL_INFOW,
    buf: *mut std::ffi::c_char,
    len: usize,
) -> i32 {
    api(SOCKET_ERROR, || {
        // SAFETY: `info` is NULL or readable (this function's contract).
        let c = unsafe { ptr::read_info(info, "info") }?;
        let text = c.to_info()?.to_string();
        // SAFETY: `buf` is NULL or valid for `len` bytes (this function's contract).
        unsafe { copy_out(text.as_bytes(), buf, len) }?;
        Ok(i32::try_from(text.len()).unwrap_or(i32::MAX))
    })
}

/// The longest text form of a record, with its NUL (`SOCKDUP_INFO_TEXT_MAX`).
pub const SOCKDUP_INFO_TEXT_MAX: usize = 850;

/// `sockdup_info_from_text`: parses a record's text form (whitespace around it allowed) into
/// `out`: 0, or `SOCKET_ERROR` with `WSAEINVAL` for text that is not a record and `WSAEFAULT` for
/// a NULL pointer.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string; `out` is NULL or points at a writable
/// `WSAPROTOCOL_INFOW`.
#[doc(alias = "ProtocolInfo::from_str")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sockdup_info_from_text(
    text: *const std::ffi::c_char,
    out: *mut WSAPROTOCOL_INFOW,
) -> i32 {
    api(SOCKET_ERROR, || {
        if text.is_null() {
            return Err(fault("text"));
        }
        if out.is_null() {
            return Err(fault("out"));
        }
        // SAFETY: `text` is not NULL and NUL-terminated (this function's contract).
        let text = unsafe { std::ffi::CStr::from_ptr(text) };
        let text = text.to_str().map_err(|_| {
            Error::new(
                ErrorKind::MalformedRecord,
                "the text is not UTF-8, so it is no record: pass the line sockdup_info_to_text wrote",
            )
        })?;
        let info: sockdup::ProtocolInfo = text.parse()?;
        // SAFETY: `out` is NULL or writable (this function's contract).
        unsafe { ptr::write_info(out, &WSAPROTOCOL_INFOW::from_info(&info), "out") }?;
        Ok(0)
    })
}

/// `sockdup_last_error_message`: the message of this thread's last failed call (what went wrong
/// and what to do), NUL-terminated and cut to fit `len` bytes: its full length without the NUL,
/// or `SOCKET_ERROR` with `WSAEFAULT` for a NULL `buf` with `len` > 0.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes of writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sockdup_last_error_message(buf: *mut std::ffi::c_char, len: usize) -> i32 {
    let message = guard::last_message();
    let full = i32::try_from(message.len()).unwrap_or(i32::MAX);
    if len == 0 {
        return full;
    }
    if buf.is_null() {
        guard::set_last_error(WSAEFAULT_CODE);
        return SOCKET_ERROR;
    }
    let mut cut = message.len().min(len - 1);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    // SAFETY: `buf` is not NULL and valid for `len > cut` bytes (this function's contract).
    match unsafe { copy_out(&message.as_bytes()[..cut], buf, len) } {
        Ok(()) => full,
        Err(_) => SOCKET_ERROR,
    }
}

const WSAEFAULT_CODE: i32 = sockdup::error::WSAEFAULT;
