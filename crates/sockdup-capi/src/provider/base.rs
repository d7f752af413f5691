//! `WSPStartup` of the base provider: a `WSPPROC_TABLE` whose functions call the process's one
//! base provider (`sockdup::spi::base_provider`), for provider libraries layered over it.
//!
//! The propagation rule holds here as in Rust: the table's `WSPSocket`, `WSPDuplicateSocket`
//! and `WSPStartup` take the base provider's own entries (1001-1007), with the provider fields
//! of a duplicate; another base-like entry is `WSAEINVAL` (`propagation-rule`). A chain's entry
//! (`ChainLen` > 1) is what the lowest provider library of a chain passes when its next entry
//! is a built-in layer: the table then serves the chain's built-in layers below its libraries
//! (`sockdup::spi::below_libraries`), remembering which chain each handle it gives out is of.
//! `WSPSocket` with `FROM_PROTOCOL_INFO` in af, type or protocol, or with a record carrying a
//! ticket, redeems it; otherwise it makes a new socket of the entry.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::{Arc, Mutex};

use sockdup::spi::{Handle, Provider};
use sockdup::{Error, ErrorKind, ProtocolInfo};

use super::last::spi_call;
use super::{LPINT, WSABUF, WSPDATA, WSPPROC_TABLE, WSPUPCALLTABLE};
use crate::guard;
use crate::ptr;
use crate::types::*;

/// The base provider.
fn base() -> Result<Arc<dyn Provider>, Error> {
    sockdup::spi::base_provider()
}

/// The handles the table gave out for chains' built-in layers below their provider libraries,
/// and the chain of each (the others are the base provider's).
static BELOW: Mutex<Option<HashMap<u64, u32>>> = Mutex::new(None);

fn below() -> std::sync::MutexGuard<'static, Option<HashMap<u64, u32>>> {
    BELOW.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a record is a chain's entry (the table serves the chain's built-in layers below
/// its provider libraries then), not a base entry.
fn is_chain(info: &ProtocolInfo) -> bool {
    info.protocol_chain.len > 1
}

/// The provider for a record: the base provider, or for a chain's entry its built-in layers
/// below its provider libraries.
fn provider_for(info: &ProtocolInfo) -> Result<Arc<dyn Provider>, Error> {
    if is_chain(info) {
        sockdup::spi::below_libraries(info.catalog_entry_id)
    } else {
        base()
    }
}

/// The provider serving handle `s`, and the handle.
fn provider_of(s: SOCKET) -> Result<(Arc<dyn Provider>, Handle), Error> {
    let h = Handle::from_raw(s as u64);
    let chain = below().as_ref().and_then(|m| m.get(&h.raw()).copied());
    match chain {
        Some(id) => Ok((sockdup::spi::below_libraries(id)?, h)),
        None => Ok((base()?, h)),
    }
}

/// Remembers that handle `h` was made for chain `info` (when it is a chain's entry).
fn remember(h: Handle, info: &ProtocolInfo) {
    if is_chain(info) {
        below()
            .get_or_insert_with(HashMap::new)
            .insert(h.raw(), info.catalog_entry_id);
    }
}

/// The socket address at `name` (`namelen` bytes).
///
/// # Safety
/// `name` is NULL or points at `namelen` readable bytes.
pub(crate) unsafe fn read_sockaddr(
    name: *const libc::sockaddr,
    namelen: i32,
) -> Result<SocketAddr, Error> {
    let len = usize::try_from(namelen).unwrap_or(0);
    if name.is_null() || len < std::mem::size_of::<libc::sa_family_t>() {
        return Err(fault("the address (name, namelen)"));
    }
    // SAFETY: `name` is not NULL and points at `len` readable bytes (this function's contract),
    // which cover the family field; read without alignment.
    let family = unsafe { name.cast::<libc::sa_family_t>().read_unaligned() };
    match i32::from(family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: `len` covers a sockaddr_in (checked); plain data, read without alignment.
            let sin = unsafe { name.cast::<libc::sockaddr_in>().read_unaligned() };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: `len` covers a sockaddr_in6 (checked); plain data, read without alignment.
            let sin6 = unsafe { name.cast::<libc::sockaddr_in6>().read_unaligned() };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        libc::AF_INET | libc::AF_INET6 => Err(fault("the address (namelen too short)")),
        f => Err(Error::new(
            ErrorKind::Unsupported,
            format!("address family {f} is not supported here: pass an IPv4 or IPv6 address"),
        )),
    }
}

/// `addr` as a C socket address and its length.
pub(crate) fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, i32) {
    // SAFETY: sockaddr_storage is plain data for which all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a sockaddr_storage is larger than and aligned for a sockaddr_in.
            unsafe {
                std::ptr::from_mut(&mut storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin);
            }
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: a sockaddr_storage is larger than and aligned for a sockaddr_in6.
            unsafe {
                std::ptr::from_mut(&mut storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6);
            }
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as i32)
}

fn read_record(p: *mut WSAPROTOCOL_INFOW, what: &str) -> Result<ProtocolInfo, Error> {
    // SAFETY: every caller passes its own caller's pointer, which the SPI contract makes NULL
    // or a valid WSAPROTOCOL_INFOW.
    unsafe { ptr::read_info(p, what) }?.to_info()
}

/// A socket handle as a `SOCKET`.
fn socket_of(h: Handle) -> SOCKET {
    h.raw() as SOCKET
}

/// `WSPStartup` of the base provider. `lpProtocolInfo` must be one of its own entries (the
/// propagation rule); the upcall table passed is the process's own (every provider shares one
/// handle table), so it is not kept. Returns 0 or the error code itself.
///
/// In a copy of `libsockdup.so` loaded into a program that holds sockdup itself (a Rust
/// program exporting its symbols), the call goes to the program's `WSPStartup`: one runtime
/// per process.
///
/// # Safety
/// `lpWSPData`, `lpProtocolInfo` and `lpProcTable` are NULL or valid for their structures.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPStartup(
    wVersionRequested: WORD,
    lpWSPData: *mut WSPDATA,
    lpProtocolInfo: *mut WSAPROTOCOL_INFOW,
    UpcallTable: WSPUPCALLTABLE,
    lpProcTable: *mut WSPPROC_TABLE,
) -> i32 {
    if let Some(primary) = super::catalog::primary(c"WSPStartup") {
        // SAFETY: `primary` is the process's first definition of `WSPStartup`, another copy of
        // this very function (sockdup's, exported by the program), so it has this signature.
        let f: super::LPWSPSTARTUP = unsafe { std::mem::transmute(primary) };
        // SAFETY: the arguments are passed on under this function's own contract.
        return unsafe {
            f(
                wVersionRequested,
                lpWSPData,
                lpProtocolInfo,
                UpcallTable,
                lpProcTable,
            )
        };
    }
    let _ = UpcallTable;
    match guard::catch(|| {
        let major = wVersionRequested & 0xff;
        if major < 2 {
            return Err(Error::with_code(
                ErrorKind::InvalidArgument,
                WSAVERNOTSUPPORTED,
                format!("WSPStartup: version {major}.x is not offered: ask for 2.2"),
            ));
        }
        if lpWSPData.is_null() || lpProcTable.is_null() {
            return Err(fault("lpWSPData or lpProcTable"));
        }
        let info = read_record(lpProtocolInfo, "lpProtocolInfo")?;
        if is_chain(&info) {
            // A provider library whose next entry is a built-in layer: the chain's built-in
            // layers below its libraries, started with the chain's entry.
            sockdup::spi::below_libraries(info.catalog_entry_id)?;
        } else {
            base()?.startup(&sockdup::spi::process_upcall()?, &info)?;
        }
        let mut data = WSPDATA {
            wVersion: 0x0202,
            wHighVersion: 0x0202,
            ..WSPDATA::default()
        };
        for (d, s) in data
            .szDescription
            .iter_mut()
            .zip("sockdup Linux base provider".encode_utf16())
        {
            *d = s;
        }
        // SAFETY: both pointers are not NULL (checked) and valid by this function's contract.
        unsafe {
            ptr::write(lpWSPData, data, "lpWSPData")?;
            ptr::write(lpProcTable, table(), "lpProcTable")?;
        }
        Ok(0)
    }) {
        Ok(v) => v,
        Err(code) => code,
    }
}

/// The base provider's `WSPPROC_TABLE`.
pub(crate) fn table() -> WSPPROC_TABLE {
    WSPPROC_TABLE {
        lpWSPAccept: Some(accept),
        lpWSPBind: Some(bind),
        lpWSPCleanup: Some(cleanup),
        lpWSPCloseSocket: Some(close_socket),
        lpWSPConnect: Some(connect),
        lpWSPDuplicateSocket: Some(duplicate_socket),
        lpWSPListen: Some(listen),
        lpWSPRecv: Some(recv),
        lpWSPSend: Some(send),
        lpWSPSocket: Some(socket),
        ..WSPPROC_TABLE::default()
    }
}

/// Whether a record is a duplicate's (it carries the base provider's ticket or target).
fn is_duplicate(info: &ProtocolInfo) -> bool {
    info.provider_reserved != 0 || info.service_flags3 != 0 || info.service_flags4 != 0
}

unsafe extern "C" fn socket(
    af: i32,
    kind: i32,
    protocol: i32,
    lpProtocolInfo: *mut WSAPROTOCOL_INFOW,
    _g: GROUP,
    _dwFlags: DWORD,
    lpErrno: LPINT,
) -> SOCKET {
    // SAFETY: lpErrno is the caller's, NULL or writable (the SPI contract).
    unsafe {
        spi_call(lpErrno, INVALID_SOCKET, || {
            let info = read_record(lpProtocolInfo, "lpProtocolInfo")?;
            let p = provider_for(&info)?;
            let from_info = [af, kind, protocol].contains(&FROM_PROTOCOL_INFO);
            let h = if from_info || is_duplicate(&info) {
                p.socket_from_info(&info)?
            } else {
                p.socket(af, kind, protocol, &info)?
            };
            remember(h, &info);
            Ok(socket_of(h))
        })
    }
}

unsafe extern "C" fn close_socket(s: SOCKET, lpErrno: LPINT) -> i32 {
    // SAFETY: lpErrno is the caller's, NULL or writable (the SPI contract).
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let (p, h) = provider_of(s)?;
            let closed = p.close_socket(h);
            if let Some(m) = below().as_mut() {
                m.remove(&h.raw());
            }
            closed?;
            Ok(0)
        })
    }
}

unsafe extern "C" fn duplicate_socket(
    s: SOCKET,
    dwProcessId: DWORD,
    lpProtocolInfo: *mut WSAPROTOCOL_INFOW,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: lpErrno is the caller's, NULL or writable (the SPI contract).
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let info = read_record(lpProtocolInfo, "lpProtocolInfo")?;
            let (p, h) = provider_of(s)?;
            let record = p.duplicate_socket(h, dwProcessId, &info)?;
            // SAFETY: not NULL (read above) and writable by the SPI contract.
            ptr::write_info(
                lpProtocolInfo,
                &WSAPROTOCOL_INFOW::from_info(&record),
                "lpProtocolInfo",
            )?;
            Ok(0)
        })
    }
}

unsafe extern "C" fn cleanup(lpErrno: LPINT) -> i32 {
    // SAFETY: lpErrno is the caller's, NULL or writable (the SPI contract).
    unsafe { spi_call(lpErrno, SOCKET_ERROR, || base()?.cleanup().map(|()| 0)) }
}

unsafe extern "C" fn connect(
    s: SOCKET,
    name: *const libc::sockaddr,
    namelen: i32,
    _caller: *mut WSABUF,
    _callee: *mut WSABUF,
    _sqos: *mut std::ffi::c_void,
    _gqos: *mut std::ffi::c_void,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: lpErrno and name are the caller's, valid by the SPI contract.
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let addr = read_sockaddr(name, namelen)?;
            let (p, h) = provider_of(s)?;
            p.connect(h, &addr)?;
            Ok(0)
        })
    }
}

unsafe extern "C" fn bind(
    s: SOCKET,
    name: *const libc::sockaddr,
    namelen: i32,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: lpErrno and name are the caller's, valid by the SPI contract.
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let addr = read_sockaddr(name, namelen)?;
            let (p, h) = provider_of(s)?;
            p.bind(h, &addr)?;
            Ok(0)
        })
    }
}

unsafe extern "C" fn listen(s: SOCKET, backlog: i32, lpErrno: LPINT) -> i32 {
    // SAFETY: lpErrno is the caller's, NULL or writable (the SPI contract).
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let (p, h) = provider_of(s)?;
            p.listen(h, backlog)?;
            Ok(0)
        })
    }
}

unsafe extern "C" fn accept(
    s: SOCKET,
    addr: *mut libc::sockaddr,
    addrlen: LPINT,
    _condition: super::Slot,
    _data: usize,
    lpErrno: LPINT,
) -> SOCKET {
    // SAFETY: lpErrno is the caller's, NULL or writable (the SPI contract).
    unsafe {
        spi_call(lpErrno, INVALID_SOCKET, || {
            let (p, listener) = provider_of(s)?;
            let h = p.accept(listener)?;
            let chain = below()
                .as_ref()
                .and_then(|m| m.get(&listener.raw()).copied());
            if let Some(id) = chain {
                below().get_or_insert_with(HashMap::new).insert(h.raw(), id);
            }
            if !addr.is_null() && !addrlen.is_null() {
                // SAFETY: the caller's buffer of *addrlen bytes (SPI contract); getpeername
                // writes at most that many and updates the length.
                let mut len = addrlen.read_unaligned() as libc::socklen_t;
                libc::getpeername(h.raw() as i32, addr, &mut len);
                addrlen.write_unaligned(len as i32);
            }
            Ok(socket_of(h))
        })
    }
}

/// The caller's buffers.
///
/// # Safety
/// `bufs` is NULL or points at `count` `WSABUF`s, each of whose `buf` points at `len` bytes.
unsafe fn buffers<'a>(bufs: *mut WSABUF, count: DWORD) -> Result<Vec<&'a mut [u8]>, Error> {
    if bufs.is_null() && count > 0 {
        return Err(fault("lpBuffers"));
    }
    let mut out = Vec::new();
    for i in 0..count as usize {
        // SAFETY: `bufs` points at `count` WSABUFs (this function's contract).
        let b = unsafe { bufs.add(i).read_unaligned() };
        if b.len == 0 {
            continue;
        }
        if b.buf.is_null() {
            return Err(fault("a WSABUF's buf"));
        }
        // SAFETY: `buf` points at `len` bytes the caller owns for the call (contract).
        out.push(unsafe { std::slice::from_raw_parts_mut(b.buf.cast::<u8>(), b.len as usize) });
    }
    Ok(out)
}

unsafe extern "C" fn send(
    s: SOCKET,
    lpBuffers: *mut WSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesSent: *mut DWORD,
    _dwFlags: DWORD,
    _overlapped: *mut std::ffi::c_void,
    _routine: super::Slot,
    _thread: *mut std::ffi::c_void,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: the pointers are the caller's, valid by the SPI contract.
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let (p, h) = provider_of(s)?;
            let mut sent = 0usize;
            for b in buffers(lpBuffers, dwBufferCount)? {
                let n = p.send(h, b)?;
                sent += n;
                if n < b.len() {
                    break;
                }
            }
            ptr::write(lpNumberOfBytesSent, sent as DWORD, "lpNumberOfBytesSent")?;
            Ok(0)
        })
    }
}

unsafe extern "C" fn recv(
    s: SOCKET,
    lpBuffers: *mut WSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesRecvd: *mut DWORD,
    lpFlags: *mut DWORD,
    _overlapped: *mut std::ffi::c_void,
    _routine: super::Slot,
    _thread: *mut std::ffi::c_void,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: the pointers are the caller's, valid by the SPI contract.
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let mut bufs = buffers(lpBuffers, dwBufferCount)?;
            let n = match bufs.first_mut() {
                Some(b) => {
                    let (p, h) = provider_of(s)?;
                    p.recv(h, b)?
                }
                None => 0,
            };
            ptr::write(lpNumberOfBytesRecvd, n as DWORD, "lpNumberOfBytesRecvd")?;
            if !lpFlags.is_null() {
                ptr::write(lpFlags, 0, "lpFlags")?;
            }
            Ok(0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_the_c_form() {
        for text in ["127.0.0.1:8080", "[::1]:443", "[fe80::1%3]:9"] {
            let addr: SocketAddr = text.parse().unwrap();
            let (storage, len) = sockaddr_of(&addr);
            // SAFETY: `storage` holds `len` initialised bytes of a socket address.
            let back = unsafe { read_sockaddr(std::ptr::from_ref(&storage).cast(), len) };
            assert_eq!(back.unwrap(), addr);
            // SAFETY: as above, with a length one byte short.
            let short = unsafe { read_sockaddr(std::ptr::from_ref(&storage).cast(), len - 1) };
            assert_eq!(short.unwrap_err().code(), 10014);
        }
        // SAFETY: NULL is refused before anything is read.
        let e = unsafe { read_sockaddr(std::ptr::null(), 16) }.unwrap_err();
        assert_eq!(e.code(), 10014);
    }

    #[test]
    fn a_record_with_a_ticket_or_target_is_a_duplicate() {
        let mut info = sockdup::catalog::base_entries().remove(0);
        assert!(!is_duplicate(&info));
        info.provider_reserved = 3;
        assert!(is_duplicate(&info));
    }

    #[test]
    fn the_base_wspstartup_refuses_old_versions_null_pointers_and_other_entries() {
        let mut data = WSPDATA::default();
        let mut table = WSPPROC_TABLE::default();
        let mut info = WSAPROTOCOL_INFOW::from_info(&sockdup::catalog::base_entries()[0]);
        // SAFETY: valid pointers to this test's own values.
        let r = unsafe {
            WSPStartup(
                0x0101,
                &mut data,
                &mut info,
                WSPUPCALLTABLE::default(),
                &mut table,
            )
        };
        assert_eq!(r, WSAVERNOTSUPPORTED);
        // SAFETY: NULL pointers are refused before anything is read.
        let r = unsafe {
            WSPStartup(
                0x0202,
                std::ptr::null_mut(),
                &mut info,
                WSPUPCALLTABLE::default(),
                &mut table,
            )
        };
        assert_eq!(r, 10014);
        assert!(table.lpWSPSocket.is_none(), "nothing filled on failure");
        // A chain's entry (a layer that did not substitute the base entry): the propagation
        // rule, WSAEINVAL.
        let _run = sockdup::startup().expect("startup");
        let mut chain = sockdup::catalog::base_entries().remove(0);
        chain.catalog_entry_id = 1102;
        chain.provider_id.data1 ^= 1;
        let mut info = WSAPROTOCOL_INFOW::from_info(&chain);
        // SAFETY: valid pointers to this test's own values.
        let r = unsafe {
            WSPStartup(
                0x0202,
                &mut data,
                &mut info,
                WSPUPCALLTABLE::default(),
                &mut table,
            )
        };
        assert_eq!(r, 10022);
        assert!(crate::guard::last_message().contains("propagation rule"));
        // Its own entry: the table is filled.
        let mut info = WSAPROTOCOL_INFOW::from_info(&sockdup::catalog::base_entries()[0]);
        // SAFETY: valid pointers to this test's own values.
        let r = unsafe {
            WSPStartup(
                0x0202,
                &mut data,
                &mut info,
                WSPUPCALLTABLE::default(),
                &mut table,
            )
        };
        assert_eq!((r, data.wVersion), (0, 0x0202));
        assert!(table.lpWSPSocket.is_some() && table.lpWSPDuplicateSocket.is_some());
    }
}
