//! The `WSPUPCALLTABLE` every provider library gets: its socket-handle calls work on the
//! process's one handle table (`sockdup::spi::process_upcall`), the one the Rust providers and
//! the dispatcher use.

use std::os::fd::{FromRawFd, OwnedFd};

use sockdup::spi::Handle;
use sockdup::{Error, ErrorKind};

use super::last::spi_call;
use super::{LPINT, WSPUPCALLTABLE};
use crate::ptr;
use crate::types::*;

/// The upcall table handed to provider libraries.
pub(crate) fn table() -> WSPUPCALLTABLE {
    WSPUPCALLTABLE {
        lpWPUCloseSocketHandle: Some(close_socket_handle),
        lpWPUCreateSocketHandle: Some(create_socket_handle),
        lpWPUGetProviderPath: Some(super::catalog::WSCGetProviderPath),
        lpWPUModifyIFSHandle: Some(modify_ifs_handle),
        lpWPUQuerySocketHandleContext: Some(query_socket_handle_context),
        ..WSPUPCALLTABLE::default()
    }
}

/// `WPUModifyIFSHandle`: registers descriptor `ProposedHandle` to catalog entry
/// `dwCatalogEntryId` and returns it. A descriptor the table holds already (the provider below
/// made it) changes owner; a socket descriptor the provider made itself becomes the table's.
unsafe extern "C" fn modify_ifs_handle(
    dwCatalogEntryId: DWORD,
    ProposedHandle: SOCKET,
    lpErrno: LPINT,
) -> SOCKET {
    // SAFETY: lpErrno is the caller's, NULL or writable (the SPI contract).
    unsafe {
        spi_call(lpErrno, INVALID_SOCKET, || {
            let upcall = sockdup::spi::process_upcall()?;
            let h = Handle::from_raw(ProposedHandle as u64);
            if upcall.owner(h).is_some() {
                upcall.set_owner(h, dwCatalogEntryId)?;
                return Ok(ProposedHandle);
            }
            let fd = i32::try_from(ProposedHandle).map_err(|_| not_a_socket(ProposedHandle))?;
            // SAFETY: fstat writes only into `st`, whatever the descriptor number.
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(not_a_socket(ProposedHandle));
            }
            // SAFETY: `fd` is an open socket descriptor (checked) that the provider hands over
            // to the handle table, as WPUModifyIFSHandle's contract says; nothing else owns it.
            let owned = OwnedFd::from_raw_fd(fd);
            Ok(upcall.modify_ifs_handle(dwCatalogEntryId, owned).raw() as SOCKET)
        })
    }
}

fn not_a_socket(s: SOCKET) -> Error {
    Error::new(
        ErrorKind::NotASocket,
        format!("WPUModifyIFSHandle: {s} is not a socket descriptor of this process"),
    )
}

unsafe extern "C" fn create_socket_handle(
    dwCatalogEntryId: DWORD,
    dwContext: usize,
    lpErrno: LPINT,
) -> SOCKET {
    // SAFETY: lpErrno is the caller's, NULL or writable (the SPI contract).
    unsafe {
        spi_call(lpErrno, INVALID_SOCKET, || {
            let upcall = sockdup::spi::process_upcall()?;
            Ok(upcall
                .create_socket_handle(dwCatalogEntryId, dwContext as u64)
                .raw() as SOCKET)
        })
    }
}

unsafe extern "C" fn query_socket_handle_context(
    s: SOCKET,
    lpContext: *mut usize,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: lpErrno and lpContext are the caller's, NULL or writable (the SPI contract).
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let upcall = sockdup::spi::process_upcall()?;
            let context = upcall.query_socket_handle_context(Handle::from_raw(s as u64))?;
            ptr::write(lpContext, context as usize, "lpContext")?;
            Ok(0)
        })
    }
}

unsafe extern "C" fn close_socket_handle(s: SOCKET, lpErrno: LPINT) -> i32 {
    // SAFETY: lpErrno is the caller's, NULL or writable (the SPI contract).
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            sockdup::spi::process_upcall()?.close_socket_handle(Handle::from_raw(s as u64))?;
            Ok(0)
        })
    }
}
