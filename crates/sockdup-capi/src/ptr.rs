//! Reading and writing the caller's memory: every raw pointer of the C calls goes through here,
//! `NULL` checked first (`WSAEFAULT`).
//!
//! # Safety
//! Every function here takes a pointer that is `NULL` or valid for the access (what the C call's
//! contract promises for the caller's arguments); the exported function that calls it passes its
//! own caller's pointer on, under its own `# Safety` contract.

use sockdup::Error;

use crate::types::{WSAPROTOCOL_INFOW, fault};

/// Reads a `WSAPROTOCOL_INFOW` the caller passed.
///
/// # Errors
/// `WSAEFAULT` for `NULL`.
pub(crate) unsafe fn read_info(
    p: *const WSAPROTOCOL_INFOW,
    what: &str,
) -> Result<WSAPROTOCOL_INFOW, Error> {
    if p.is_null() {
        return Err(fault(what));
    }
    // SAFETY: `p` is not NULL and, by this function's contract, points at a WSAPROTOCOL_INFOW the
    // caller owns; the struct is plain data (every bit pattern valid), read without alignment.
    Ok(unsafe { p.read_unaligned() })
}

/// Writes a `WSAPROTOCOL_INFOW` into the caller's buffer.
///
/// # Errors
/// `WSAEFAULT` for `NULL`.
pub(crate) unsafe fn write_info(
    p: *mut WSAPROTOCOL_INFOW,
    info: &WSAPROTOCOL_INFOW,
    what: &str,
) -> Result<(), Error> {
    if p.is_null() {
        return Err(fault(what));
    }
    // SAFETY: `p` is not NULL and, by this function's contract, points at writable memory for one
    // WSAPROTOCOL_INFOW; written without alignment.
    unsafe { p.write_unaligned(*info) };
    Ok(())
}

/// Writes one value of plain data through a caller's pointer (`*lpErrno`, `*lpdwBufferLength`).
///
/// # Errors
/// `WSAEFAULT` for `NULL`.
pub(crate) unsafe fn write<T: Copy>(p: *mut T, value: T, what: &str) -> Result<(), Error> {
    if p.is_null() {
        return Err(fault(what));
    }
    // SAFETY: `p` is not NULL and, by this function's contract, points at a writable `T`.
    unsafe { p.write_unaligned(value) };
    Ok(())
}

/// Reads one value of plain data through a caller's pointer.
///
/// # Errors
/// `WSAEFAULT` for `NULL`.
pub(crate) unsafe fn read<T: Copy>(p: *const T, what: &str) -> Result<T, Error> {
    if p.is_null() {
        return Err(fault(what));
    }
    // SAFETY: `p` is not NULL and, by this function's contract, points at a readable `T`; the
    // callers use it only for integer types, for which every bit pattern is valid.
    Ok(unsafe { p.read_unaligned() })
}
