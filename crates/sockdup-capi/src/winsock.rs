//! The `winsock2.h` calls: `WSAStartup` ... `WSAEnumProtocolsW`, the event calls and the text
//! form of a record.

#![allow(non_snake_case)]

use std::sync::Mutex;

use sockdup::spi::Event;
use sockdup::{Error, ErrorKind, Startup};

use crate::guard::{self, api};
use crate::ptr;
use crate::types::*;

/// The guards of this library's `WSAStartup` calls (one per call, dropped by `WSACleanup`),
/// with the pid that made them.
static STARTUPS: Mutex<Vec<(u32, Startup)>> = Mutex::new(Vec::new());

/// This process's `WSAStartup` guards; those inherited through `fork()` are forgotten (the
/// library forgets the parent's run the same way), so a child's `WSACleanup` count is its own.
fn startups() -> std::sync::MutexGuard<'static, Vec<(u32, Startup)>> {
    let mut startups = lock(&STARTUPS);
    let pid = std::process::id();
    if startups.iter().any(|(owner, _)| *owner != pid) {
        for inherited in std::mem::take(&mut *startups) {
            std::mem::forget(inherited);
        }
    }
    startups
}

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
        // Chains holding provider libraries (layers in C) load in this process.
        crate::provider::register();
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
        startups().push((std::process::id(), started));
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
        let mut startups = startups();
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

/// `WSANOTINITIALISED` unless sockdup is started in this process (by `WSAStartup` or by the
/// Rust API's `sockdup::startup()`: one runtime).
fn require_started() -> Result<(), Error> {
    sockdup::pending().map(|_| ())
}

/// `WSADuplicateSocketW`: duplicates `s` for process `dwProcessId`, writing the record into
/// `lpProtocolInfo`. 0, or `SOCKET_ERROR`: `WSANOTINITIALISED`, `WSAEFAULT` (NULL
/// `lpProtocolInfo`), `WSAENOTSOCK`, `WSAEINVAL` (the target pid: no such process, not started,
/// ...), as [`sockdup::duplicate_socket`].
///
/// # Safety
/// `lpProtocolInfo` is NULL or points at a writable `WSAPROTOCOL_INFOW`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSADuplicateSocketW(
    s: SOCKET,
    dwProcessId: DWORD,
    lpProtocolInfo: *mut WSAPROTOCOL_INFOW,
) -> i32 {
    api(SOCKET_ERROR, || {
        require_started()?;
        if lpProtocolInfo.is_null() {
            return Err(fault("lpProtocolInfo"));
        }
        let socket = crate::sockets::lookup(s)?;
        let info = socket.duplicate(dwProcessId)?;
        // SAFETY: `lpProtocolInfo` is NULL or writable (this function's contract).
        unsafe {
            ptr::write_info(
                lpProtocolInfo,
                &WSAPROTOCOL_INFOW::from_info(&info),
                "lpProtocolInfo",
            )
        }?;
        Ok(0)
    })
}

/// Whether a record carries a duplicate (a target pid, a run nonce or a ticket) rather than
/// being a catalog entry as `WSAEnumProtocolsW` gives them.
fn is_duplicate(info: &sockdup::ProtocolInfo) -> bool {
    info.service_flags3 != 0 || info.service_flags4 != 0 || info.provider_reserved != 0
}

/// `WSASocketW`. With a duplicate's record in `lpProtocolInfo`: this process's descriptor of
/// the duplicated socket (redeemed once; `af`, `type` and `protocol` are `FROM_PROTOCOL_INFO` or
/// ignored, as Windows' providers ignore them). With a catalog entry: a new socket of that
/// entry. Without: a new socket of the first visible catalog entry that matches (protocol 0:
/// the entry flagged `PFL_MATCHES_PROTOCOL_ZERO`). The socket is close-on-exec whatever
/// `dwFlags` says; `g` must be 0. `INVALID_SOCKET` on failure: `WSANOTINITIALISED`, `WSAEINVAL`
/// (a record already redeemed, for another process, expired, of an unknown entry; a group),
/// `WSAEAFNOSUPPORT` (no entry matches), the providers' errors.
///
/// # Safety
/// `lpProtocolInfo` is NULL or points at a readable `WSAPROTOCOL_INFOW`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSASocketW(
    af: i32,
    r#type: i32,
    protocol: i32,
    lpProtocolInfo: *const WSAPROTOCOL_INFOW,
    g: GROUP,
    dwFlags: DWORD,
) -> SOCKET {
    let _ = dwFlags;
    api(INVALID_SOCKET, || {
        require_started()?;
        if g != 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("socket groups are not supported: pass 0 for g, not {g}"),
            ));
        }
        let socket = if lpProtocolInfo.is_null() {
            sockdup::spi::Socket::new(af, r#type, protocol)?
        } else {
            // SAFETY: `lpProtocolInfo` is NULL or readable (this function's contract).
            let c = unsafe { ptr::read_info(lpProtocolInfo, "lpProtocolInfo") }?;
            let info = c.to_info()?;
            if is_duplicate(&info) {
                sockdup::spi::Socket::from_info(&info)?
            } else {
                for (name, given, entry) in [
                    ("af", af, info.address_family),
                    ("type", r#type, info.socket_type),
                    ("protocol", protocol, info.protocol),
                ] {
                    if given != FROM_PROTOCOL_INFO && given != 0 && given != entry {
                        return Err(Error::new(
                            ErrorKind::InvalidArgument,
                            format!(
                                "{name} {given} differs from the catalog entry's ({entry}): pass FROM_PROTOCOL_INFO or 0"
                            ),
                        ));
                    }
                }
                sockdup::spi::Socket::for_entry(&info)?
            }
        };
        Ok(crate::sockets::insert(socket))
    })
}

/// `closesocket`: closes `s` (this library's socket, or any socket descriptor of the process).
/// 0, or `SOCKET_ERROR`: `WSANOTINITIALISED`, `WSAENOTSOCK`.
#[unsafe(no_mangle)]
pub extern "C" fn closesocket(s: SOCKET) -> i32 {
    api(SOCKET_ERROR, || {
        require_started()?;
        crate::sockets::close(s)?;
        Ok(0)
    })
}

/// The most protocol numbers `WSAEnumProtocolsW` reads from `lpiProtocols` before giving up on
/// finding its terminating 0.
const MAX_PROTOCOL_FILTER: usize = 1024;

/// `WSAEnumProtocolsW`: the visible entries of this process's catalog (those whose `iProtocol`
/// is in the 0-terminated `lpiProtocols`, or all for NULL) into `lpProtocolBuffer`: their count,
/// or `SOCKET_ERROR`: `WSAENOBUFS` with `*lpdwBufferLength` set to the bytes needed when the
/// buffer is NULL or shorter; `WSAEFAULT` for a NULL `lpdwBufferLength`; `WSAEINVAL` for an
/// `lpiProtocols` without its 0 within 1024 numbers.
///
/// # Safety
/// `lpiProtocols` is NULL or a 0-terminated array of ints; `lpdwBufferLength` is NULL or points
/// at a readable and writable DWORD; `lpProtocolBuffer` is NULL or valid for
/// `*lpdwBufferLength` bytes of writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAEnumProtocolsW(
    lpiProtocols: *const i32,
    lpProtocolBuffer: *mut WSAPROTOCOL_INFOW,
    lpdwBufferLength: *mut DWORD,
) -> i32 {
    api(SOCKET_ERROR, || {
        require_started()?;
        // SAFETY: `lpdwBufferLength` is NULL or readable (this function's contract).
        let have = unsafe { ptr::read(lpdwBufferLength, "lpdwBufferLength") }?;
        let filter = if lpiProtocols.is_null() {
            None
        } else {
            let mut list = Vec::new();
            loop {
                if list.len() == MAX_PROTOCOL_FILTER {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "lpiProtocols has no terminating 0 within {MAX_PROTOCOL_FILTER} numbers"
                        ),
                    ));
                }
                // SAFETY: `lpiProtocols` is a 0-terminated array (this function's contract) and
                // no element before index `list.len()` was 0, so this one is within it.
                let p = unsafe { ptr::read(lpiProtocols.add(list.len()), "lpiProtocols") }?;
                if p == 0 {
                    break;
                }
                list.push(p);
            }
            Some(list)
        };
        let entries: Vec<_> = sockdup::load_catalog()?
            .visible_entries()
            .into_iter()
            .filter(|e| filter.as_ref().is_none_or(|f| f.contains(&e.protocol)))
            .collect();
        let needed = entries.len() * sockdup::ProtocolInfo::LEN;
        let needed_dw = DWORD::try_from(needed).unwrap_or(DWORD::MAX);
        if lpProtocolBuffer.is_null() || (have as usize) < needed {
            // SAFETY: `lpdwBufferLength` is NULL or writable (this function's contract).
            unsafe { ptr::write(lpdwBufferLength, needed_dw, "lpdwBufferLength") }?;
            return Err(Error::with_code(
                ErrorKind::BufferTooSmall,
                sockdup::error::WSAENOBUFS,
                format!(
                    "the buffer holds {have} bytes; {} entries need {needed}: call again with a buffer of *lpdwBufferLength bytes",
                    entries.len()
                ),
            ));
        }
        for (i, e) in entries.iter().enumerate() {
            // SAFETY: the buffer is valid for `have >= needed` bytes (this function's contract),
            // so entry `i < entries.len()` is within it.
            unsafe {
                ptr::write_info(
                    lpProtocolBuffer.add(i),
                    &WSAPROTOCOL_INFOW::from_info(e),
                    "lpProtocolBuffer",
                )
            }?;
        }
        Ok(i32::try_from(entries.len()).unwrap_or(i32::MAX))
    })
}

/// The event objects `WSACreateEvent` made, by handle value (a `WSAEVENT` is an opaque number,
/// never a pointer this library follows, so a wrong one is `WSA_INVALID_HANDLE`, not a crash).
static EVENTS: Mutex<Option<(usize, std::collections::HashMap<usize, Event>)>> = Mutex::new(None);

fn unknown_event(h: WSAEVENT) -> Error {
    Error::with_code(
        ErrorKind::InvalidArgument,
        WSA_INVALID_HANDLE,
        format!(
            "{h:p} is not an event of this process (closed already?): pass what WSACreateEvent returned"
        ),
    )
}

fn event(h: WSAEVENT) -> Result<Event, Error> {
    lock(&EVENTS)
        .as_ref()
        .and_then(|(_, m)| m.get(&(h as usize)))
        .cloned()
        .ok_or_else(|| unknown_event(h))
}

/// `WSACreateEvent`: a new manual-reset event, not set (an eventfd). `WSA_INVALID_EVENT` on
/// failure (`WSAEMFILE`).
#[unsafe(no_mangle)]
pub extern "C" fn WSACreateEvent() -> WSAEVENT {
    api(WSA_INVALID_EVENT, || {
        let e = Event::new()?;
        let mut events = lock(&EVENTS);
        let (next, map) = events.get_or_insert_with(|| (1, std::collections::HashMap::new()));
        let h = *next;
        *next += 1;
        map.insert(h, e);
        Ok(std::ptr::without_provenance_mut(h))
    })
}

fn bool_api(body: impl FnOnce() -> Result<(), Error>) -> BOOL {
    api(0, || body().map(|()| 1))
}

/// `WSACloseEvent`: closes the event (a registration that uses it keeps it alive until
/// cancelled). `TRUE`, or `FALSE` with `WSA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn WSACloseEvent(hEvent: WSAEVENT) -> BOOL {
    bool_api(|| {
        lock(&EVENTS)
            .as_mut()
            .and_then(|(_, m)| m.remove(&(hEvent as usize)))
            .map(drop)
            .ok_or_else(|| unknown_event(hEvent))
    })
}

/// `WSASetEvent`. `TRUE`, or `FALSE` with `WSA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn WSASetEvent(hEvent: WSAEVENT) -> BOOL {
    bool_api(|| event(hEvent).map(|e| e.set()))
}

/// `WSAResetEvent`. `TRUE`, or `FALSE` with `WSA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn WSAResetEvent(hEvent: WSAEVENT) -> BOOL {
    bool_api(|| event(hEvent).map(|e| e.reset()))
}

/// `WSAEventSelect`: records the network events `lNetworkEvents` (`FD_*`; 0 cancels) of `s`
/// and sets `hEventObject` for each; makes the socket non-blocking; replaces the socket's
/// earlier registration wherever it was made (see `sockdup::spi`). `FD_QOS`, `FD_GROUP_QOS`,
/// `FD_ROUTING_INTERFACE_CHANGE` and `FD_ADDRESS_LIST_CHANGE` are accepted and never signalled.
/// 0, or `SOCKET_ERROR`:
/// `WSANOTINITIALISED`, `WSAENOTSOCK`, `WSA_INVALID_HANDLE`, `WSAEINVAL` (bits that are no
/// network event).
#[unsafe(no_mangle)]
pub extern "C" fn WSAEventSelect(
    s: SOCKET,
    hEventObject: WSAEVENT,
    lNetworkEvents: std::ffi::c_long,
) -> i32 {
    api(SOCKET_ERROR, || {
        require_started()?;
        let socket = crate::sockets::lookup(s)?;
        let bits = u32::try_from(lNetworkEvents)
            .ok()
            .filter(|b| b & !WINDOWS_FD_ALL_EVENTS == 0)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "lNetworkEvents {lNetworkEvents:#x} has bits that are no network event (FD_*)"
                    ),
                )
            })?
            // FD_QOS, FD_GROUP_QOS, FD_ROUTING_INTERFACE_CHANGE, FD_ADDRESS_LIST_CHANGE: accepted
            // (Windows' FD_ALL_EVENTS has them), never signalled.
            & sockdup::spi::FD_ALL_EVENTS;
        let e = if hEventObject.is_null() && bits == 0 {
            Event::new()?
        } else {
            event(hEventObject)?
        };
        socket.event_select(&e, bits)?;
        Ok(0)
    })
}

/// Windows' `FD_ALL_EVENTS`: the six events sockdup signals and four it never does.
const WINDOWS_FD_ALL_EVENTS: u32 = (1 << sockdup::spi::FD_MAX_EVENTS) - 1;

/// `WSAEnumNetworkEvents`: the network events of `s` recorded since the registration or the
/// last call, with their errors, into `lpNetworkEvents`, clearing them; resets `hEventObject`
/// unless it is NULL. 0, or `SOCKET_ERROR`: `WSANOTINITIALISED`, `WSAEFAULT` (NULL
/// `lpNetworkEvents`), `WSAENOTSOCK`, `WSA_INVALID_HANDLE`.
///
/// # Safety
/// `lpNetworkEvents` is NULL or points at a writable `WSANETWORKEVENTS`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAEnumNetworkEvents(
    s: SOCKET,
    hEventObject: WSAEVENT,
    lpNetworkEvents: *mut WSANETWORKEVENTS,
) -> i32 {
    api(SOCKET_ERROR, || {
        require_started()?;
        if lpNetworkEvents.is_null() {
            return Err(fault("lpNetworkEvents"));
        }
        let socket = crate::sockets::lookup(s)?;
        let e = if hEventObject.is_null() {
            None
        } else {
            Some(event(hEventObject)?)
        };
        let got = socket.enum_network_events(e.as_ref())?;
        let out = WSANETWORKEVENTS {
            lNetworkEvents: got.events as i32,
            iErrorCode: got.errors,
        };
        // SAFETY: `lpNetworkEvents` is NULL or writable (this function's contract).
        unsafe { ptr::write(lpNetworkEvents, out, "lpNetworkEvents") }?;
        Ok(0)
    })
}

/// `WSAWaitForMultipleEvents`: waits until one of the `cEvents` events is set (all of them with
/// `fWaitAll`), for `dwTimeout` ms at most (`WSA_INFINITE`: no limit). `WSA_WAIT_EVENT_0 + i`
/// for the first set event (`WSA_WAIT_EVENT_0` with `fWaitAll`), `WSA_WAIT_TIMEOUT`, or
/// `WSA_WAIT_FAILED`: `WSA_INVALID_PARAMETER` (no events or more than 64), `WSAEFAULT` (NULL
/// `lphEvents`), `WSA_INVALID_HANDLE`. Events stay set (manual reset). `fAlertable` is ignored:
/// there are no APCs.
///
/// # Safety
/// `lphEvents` is NULL or points at `cEvents` readable `WSAEVENT`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAWaitForMultipleEvents(
    cEvents: DWORD,
    lphEvents: *const WSAEVENT,
    fWaitAll: BOOL,
    dwTimeout: DWORD,
    fAlertable: BOOL,
) -> DWORD {
    let _ = fAlertable;
    api(WSA_WAIT_FAILED, || {
        let n = cEvents as usize;
        if n == 0 || n > sockdup::spi::WSA_MAXIMUM_WAIT_EVENTS {
            // The library's own check, and its error (WSA_INVALID_PARAMETER).
            sockdup::spi::wait_for_events(&[], false, None)?;
        }
        if lphEvents.is_null() {
            return Err(fault("lphEvents"));
        }
        let mut events = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: `lphEvents` points at `cEvents` handles (this function's contract), and
            // `i < cEvents`.
            let h = unsafe { ptr::read(lphEvents.add(i), "lphEvents") }?;
            events.push(event(h)?);
        }
        let refs: Vec<&Event> = events.iter().collect();
        let timeout = (dwTimeout != WSA_INFINITE)
            .then(|| std::time::Duration::from_millis(u64::from(dwTimeout)));
        Ok(
            match sockdup::spi::wait_for_events(&refs, fWaitAll != 0, timeout)? {
                Some(i) => WSA_WAIT_EVENT_0 + i as DWORD,
                None => WSA_WAIT_TIMEOUT,
            },
        )
    })
}
