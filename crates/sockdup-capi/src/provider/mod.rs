//! The `ws2spi.h` side: providers in C.
//!
//! - [`base`]: `WSPStartup` of the base provider, whose `WSPPROC_TABLE` calls the process's one
//!   base provider (`sockdup::spi::base_provider`);
//! - [`upcall`]: the `WSPUPCALLTABLE` handed to every provider library, over the process's one
//!   handle table (`sockdup::spi::process_upcall`);
//! - [`catalog`]: `WSCEnumProtocols` and `WSCGetProviderPath`, for layers to find the provider
//!   below them;
//! - [`library`]: the loader of provider libraries (`dlopen`, the ELF check that the file
//!   itself defines `WSPStartup`), registered with `sockdup::spi::library` by [`register`],
//!   and their `WSPPROC_TABLE` as a `sockdup::spi::Provider`.
//!
//! **One runtime per process.** A provider library reaches the process's one runtime, catalog
//! and handle table, whatever loaded it:
//! - in a C program linked with `libsockdup.so`, the library's `WSC*`/`WPU*` references bind to
//!   that `libsockdup.so`, and `WSCGetProviderPath` names it for the built-in entries;
//! - in a Rust program holding this crate (the `sockdup` command, the test peer), the program
//!   exports the `WSP*`/`WSC*`/`WPU*`/`WSA*` symbols (`-Wl,--export-dynamic-symbol`, from its
//!   build script: see [`EXPORTS`]), so the library's references bind to the program. An
//!   executable cannot be `dlopen`ed, so `WSCGetProviderPath` names a `libsockdup.so` for the
//!   built-in entries (`SOCKDUP_LIBRARY`, else beside the executable); that copy's
//!   `WSPStartup`, `WSCEnumProtocols` and `WSCGetProviderPath` see that the process's first
//!   definition of their symbol is another one (the program's) and forward to it, so the copy
//!   never starts a second runtime.

#![allow(non_camel_case_types, non_snake_case)]

pub mod base;
pub mod catalog;
mod last;
pub mod library;
pub mod upcall;

use std::ffi::c_char;

use crate::types::{DWORD, GROUP, GUID, SOCKET, WCHAR, WORD, WSAPROTOCOL_INFOW};

pub use library::{check_library, register};

/// The symbols a Rust program that loads provider libraries exports (glob patterns of
/// `ld --export-dynamic-symbol`), so that a library's references to them bind to the program's
/// one copy of sockdup: `-Wl,--export-dynamic-symbol=PATTERN` for each, from its build script.
pub const EXPORTS: &[&str] = &["WSP*", "WSC*", "WPU*", "WSA*", "closesocket", "sockdup_*"];

/// `LPINT`.
pub type LPINT = *mut i32;

/// `WSPDESCRIPTION_LEN`.
pub const WSPDESCRIPTION_LEN: usize = 255;

/// `WSPDATA`: 516 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSPDATA {
    /// `wVersion`: the version the provider will use.
    pub wVersion: WORD,
    /// `wHighVersion`: the highest it offers.
    pub wHighVersion: WORD,
    /// `szDescription`, UTF-16.
    pub szDescription: [WCHAR; WSPDESCRIPTION_LEN + 1],
}

impl Default for WSPDATA {
    fn default() -> Self {
        Self {
            wVersion: 0,
            wHighVersion: 0,
            szDescription: [0; WSPDESCRIPTION_LEN + 1],
        }
    }
}

/// `WSABUF`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSABUF {
    /// `len` (a Windows `ULONG`: 32 bits).
    pub len: u32,
    /// `buf`.
    pub buf: *mut c_char,
}

/// A slot sockdup neither fills nor calls (its C type is in `ws2spi.h`).
pub type Slot = Option<unsafe extern "C" fn()>;

/// `LPWSPACCEPT`.
pub type LPWSPACCEPT =
    Option<unsafe extern "C" fn(SOCKET, *mut libc::sockaddr, LPINT, Slot, usize, LPINT) -> SOCKET>;
/// `LPWSPBIND`.
pub type LPWSPBIND = Option<unsafe extern "C" fn(SOCKET, *const libc::sockaddr, i32, LPINT) -> i32>;
/// `LPWSPCLEANUP`.
pub type LPWSPCLEANUP = Option<unsafe extern "C" fn(LPINT) -> i32>;
/// `LPWSPCLOSESOCKET`.
pub type LPWSPCLOSESOCKET = Option<unsafe extern "C" fn(SOCKET, LPINT) -> i32>;
/// `LPWSPCONNECT`.
pub type LPWSPCONNECT = Option<
    unsafe extern "C" fn(
        SOCKET,
        *const libc::sockaddr,
        i32,
        *mut WSABUF,
        *mut WSABUF,
        *mut std::ffi::c_void,
        *mut std::ffi::c_void,
        LPINT,
    ) -> i32,
>;
/// `LPWSPDUPLICATESOCKET`: the specification's
/// `int (*)(SOCKET s, DWORD dwProcessId, LPWSAPROTOCOL_INFOW lpProtocolInfo, LPINT lpErrno)`.
pub type LPWSPDUPLICATESOCKET =
    Option<unsafe extern "C" fn(SOCKET, DWORD, *mut WSAPROTOCOL_INFOW, LPINT) -> i32>;
/// `LPWSPLISTEN`.
pub type LPWSPLISTEN = Option<unsafe extern "C" fn(SOCKET, i32, LPINT) -> i32>;
/// `LPWSPSEND` (overlapped arguments: always NULL here).
pub type LPWSPSEND = Option<
    unsafe extern "C" fn(
        SOCKET,
        *mut WSABUF,
        DWORD,
        *mut DWORD,
        DWORD,
        *mut std::ffi::c_void,
        Slot,
        *mut std::ffi::c_void,
        LPINT,
    ) -> i32,
>;
/// `LPWSPRECV` (overlapped arguments: always NULL here).
pub type LPWSPRECV = Option<
    unsafe extern "C" fn(
        SOCKET,
        *mut WSABUF,
        DWORD,
        *mut DWORD,
        *mut DWORD,
        *mut std::ffi::c_void,
        Slot,
        *mut std::ffi::c_void,
        LPINT,
    ) -> i32,
>;
/// `LPWSPSOCKET`.
pub type LPWSPSOCKET = Option<
    unsafe extern "C" fn(i32, i32, i32, *mut WSAPROTOCOL_INFOW, GROUP, DWORD, LPINT) -> SOCKET,
>;

/// `WSPPROC_TABLE`: the 30 slots in Windows' order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WSPPROC_TABLE {
    /// `lpWSPAccept`.
    pub lpWSPAccept: LPWSPACCEPT,
    /// `lpWSPAddressToString`.
    pub lpWSPAddressToString: Slot,
    /// `lpWSPAsyncSelect`.
    pub lpWSPAsyncSelect: Slot,
    /// `lpWSPBind`.
    pub lpWSPBind: LPWSPBIND,
    /// `lpWSPCancelBlockingCall`.
    pub lpWSPCancelBlockingCall: Slot,
    /// `lpWSPCleanup`.
    pub lpWSPCleanup: LPWSPCLEANUP,
    /// `lpWSPCloseSocket`.
    pub lpWSPCloseSocket: LPWSPCLOSESOCKET,
    /// `lpWSPConnect`.
    pub lpWSPConnect: LPWSPCONNECT,
    /// `lpWSPDuplicateSocket` (the 9th slot).
    pub lpWSPDuplicateSocket: LPWSPDUPLICATESOCKET,
    /// `lpWSPEnumNetworkEvents`.
    pub lpWSPEnumNetworkEvents: Slot,
    /// `lpWSPEventSelect`.
    pub lpWSPEventSelect: Slot,
    /// `lpWSPGetOverlappedResult`.
    pub lpWSPGetOverlappedResult: Slot,
    /// `lpWSPGetPeerName`.
    pub lpWSPGetPeerName: Slot,
    /// `lpWSPGetSockName`.
    pub lpWSPGetSockName: Slot,
    /// `lpWSPGetSockOpt`.
    pub lpWSPGetSockOpt: Slot,
    /// `lpWSPGetQOSByName`.
    pub lpWSPGetQOSByName: Slot,
    /// `lpWSPIoctl`.
    pub lpWSPIoctl: Slot,
    /// `lpWSPJoinLeaf`.
    pub lpWSPJoinLeaf: Slot,
    /// `lpWSPListen`.
    pub lpWSPListen: LPWSPLISTEN,
    /// `lpWSPRecv`.
    pub lpWSPRecv: LPWSPRECV,
    /// `lpWSPRecvDisconnect`.
    pub lpWSPRecvDisconnect: Slot,
    /// `lpWSPRecvFrom`.
    pub lpWSPRecvFrom: Slot,
    /// `lpWSPSelect`.
    pub lpWSPSelect: Slot,
    /// `lpWSPSend`.
    pub lpWSPSend: LPWSPSEND,
    /// `lpWSPSendDisconnect`.
    pub lpWSPSendDisconnect: Slot,
    /// `lpWSPSendTo`.
    pub lpWSPSendTo: Slot,
    /// `lpWSPSetSockOpt`.
    pub lpWSPSetSockOpt: Slot,
    /// `lpWSPShutdown`.
    pub lpWSPShutdown: Slot,
    /// `lpWSPSocket` (the 29th slot).
    pub lpWSPSocket: LPWSPSOCKET,
    /// `lpWSPStringToAddress`.
    pub lpWSPStringToAddress: Slot,
}

/// `LPWPUCLOSESOCKETHANDLE`.
pub type LPWPUCLOSESOCKETHANDLE = Option<unsafe extern "C" fn(SOCKET, LPINT) -> i32>;
/// `LPWPUCREATESOCKETHANDLE`.
pub type LPWPUCREATESOCKETHANDLE = Option<unsafe extern "C" fn(DWORD, usize, LPINT) -> SOCKET>;
/// `LPWPUGETPROVIDERPATH`.
pub type LPWPUGETPROVIDERPATH =
    Option<unsafe extern "C" fn(*mut GUID, *mut WCHAR, LPINT, LPINT) -> i32>;
/// `LPWPUMODIFYIFSHANDLE`.
pub type LPWPUMODIFYIFSHANDLE = Option<unsafe extern "C" fn(DWORD, SOCKET, LPINT) -> SOCKET>;
/// `LPWPUQUERYSOCKETHANDLECONTEXT`.
pub type LPWPUQUERYSOCKETHANDLECONTEXT =
    Option<unsafe extern "C" fn(SOCKET, *mut usize, LPINT) -> i32>;

/// `WSPUPCALLTABLE`: the 15 slots in Windows' order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WSPUPCALLTABLE {
    /// `lpWPUCloseEvent`.
    pub lpWPUCloseEvent: Slot,
    /// `lpWPUCloseSocketHandle`.
    pub lpWPUCloseSocketHandle: LPWPUCLOSESOCKETHANDLE,
    /// `lpWPUCreateEvent`.
    pub lpWPUCreateEvent: Slot,
    /// `lpWPUCreateSocketHandle`.
    pub lpWPUCreateSocketHandle: LPWPUCREATESOCKETHANDLE,
    /// `lpWPUFDIsSet`.
    pub lpWPUFDIsSet: Slot,
    /// `lpWPUGetProviderPath`.
    pub lpWPUGetProviderPath: LPWPUGETPROVIDERPATH,
    /// `lpWPUModifyIFSHandle`.
    pub lpWPUModifyIFSHandle: LPWPUMODIFYIFSHANDLE,
    /// `lpWPUPostMessage`.
    pub lpWPUPostMessage: Slot,
    /// `lpWPUQueryBlockingCallback`.
    pub lpWPUQueryBlockingCallback: Slot,
    /// `lpWPUQuerySocketHandleContext`.
    pub lpWPUQuerySocketHandleContext: LPWPUQUERYSOCKETHANDLECONTEXT,
    /// `lpWPUQueueApc`.
    pub lpWPUQueueApc: Slot,
    /// `lpWPUResetEvent`.
    pub lpWPUResetEvent: Slot,
    /// `lpWPUSetEvent`.
    pub lpWPUSetEvent: Slot,
    /// `lpWPUOpenCurrentThread`.
    pub lpWPUOpenCurrentThread: Slot,
    /// `lpWPUCloseThread`.
    pub lpWPUCloseThread: Slot,
}

/// `LPWSPSTARTUP`: the upcall table by value, as on Windows.
pub type LPWSPSTARTUP = unsafe extern "C" fn(
    WORD,
    *mut WSPDATA,
    *mut WSAPROTOCOL_INFOW,
    WSPUPCALLTABLE,
    *mut WSPPROC_TABLE,
) -> i32;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn the_tables_have_windows_layout() {
        let p = size_of::<usize>();
        assert_eq!(size_of::<WSPPROC_TABLE>(), 30 * p);
        assert_eq!(offset_of!(WSPPROC_TABLE, lpWSPDuplicateSocket), 8 * p);
        assert_eq!(offset_of!(WSPPROC_TABLE, lpWSPSocket), 28 * p);
        assert_eq!(size_of::<WSPUPCALLTABLE>(), 15 * p);
        assert_eq!(offset_of!(WSPUPCALLTABLE, lpWPUModifyIFSHandle), 6 * p);
        assert_eq!(size_of::<WSPDATA>(), 516);
    }
}
