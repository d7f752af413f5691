//! Windows Sockets 2 socket duplication for Linux.
//!
//! A source process turns a socket into a 628-byte record bound to one target process
//! ([`duplicate_socket`], `WSPDuplicateSocket`); the record travels through any IPC (a pipe, a
//! file, an environment variable, an HTTP body; [`ProtocolInfo`] has a one-line text form); the
//! target turns it into its own descriptor of the same socket ([`socket_from_info`], `WSPSocket`
//! with a protocol info), once, and nobody else can.
//!
//! ```no_run
//! # fn main() -> Result<(), sockdup::Error> {
//! // In the source, with the target's pid learned over some IPC:
//! let _guard = sockdup::startup()?;
//! # let target_pid = 1234;
//! let stream = std::net::TcpStream::connect("127.0.0.1:8080").expect("connect");
//! let record = sockdup::duplicate_socket(&stream, target_pid)?;
//! println!("{record}"); // one line: send it to the target any way you like
//! drop(stream); // the target already holds its descriptor
//!
//! // In the target:
//! let _guard = sockdup::startup()?;
//! # let line = String::new();
//! let record: sockdup::ProtocolInfo = line.parse()?;
//! let fd = sockdup::socket_from_info(&record)?;
//! let stream = std::net::TcpStream::from(fd);
//! # drop(stream); Ok(()) }
//! ```
//!
//! # How it works
//!
//! [`startup`] opens this process's *inbox*: an `AF_UNIX` `SOCK_SEQPACKET` socket at an address
//! derived from the pid ([`InboxAddress`]), served by one background thread. [`duplicate_socket`]
//! connects to the target's inbox (and keeps the connection), checks with `SO_PEERCRED` and a
//! pidfd that the target itself listens there, sends the descriptor with `SCM_RIGHTS`, and waits
//! for the ticket the inbox assigns. The record is the base catalog entry for the socket's real
//! family, type and protocol, with the target's pid in `dwServiceFlags3`, the inbox run's nonce in
//! `dwServiceFlags4` and the ticket in `dwProviderReserved`. [`socket_from_info`] takes the
//! ticket's descriptor out of this process's table, once. A duplicate nobody redeems is closed
//! when its time-to-live ends, or when the target stops sockdup or exits.
//!
//! All descriptors of a duplicated socket share one socket: options, non-blocking mode, data;
//! it stays open until the last one closes, in whatever process. Every descriptor sockdup creates
//! is close-on-exec.
//!
//! # Errors
//!
//! Every function returns [`Error`]: [`Error::kind`] names the reason ([`ErrorKind`]: one variant
//! per reason, each documented with its Winsock code), [`Error::code`] is the Winsock number, and
//! the message ([`Display`](std::fmt::Display)) says what went wrong and what to do. The README's
//! error table is generated from [`ErrorKind`] ([`error::markdown_table`]).

mod catalog_file;
mod client;
pub mod handoff;
mod inbox;
pub mod spi;
mod startup;
mod sync;
mod sys;
pub mod upgrade;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

pub use catalog_file::{
    catalog_path, load_catalog, load_catalog_from, save_catalog_to, update_catalog_at,
};
pub use sockdup_core::error::{self, Error, ErrorKind};
use sockdup_core::error::{WSAEAFNOSUPPORT, WSAENETDOWN, WSAENOTSOCK};
use sockdup_core::message::{MAX_FDS_PER_MESSAGE, Request};
pub use sockdup_core::wire::{self, Guid, ProtocolChain, ProtocolInfo};
pub use sockdup_core::{catalog, flags};
pub use startup::{Allow, Options, Startup, startup};
pub use sys::{InboxAddress, is_cloexec};

use startup::Runtime;
use sync::lock;

/// The base catalog entry for `fd`'s real family, type and protocol.
pub(crate) fn entry_for(fd: BorrowedFd<'_>) -> Result<ProtocolInfo, Error> {
    let (family, kind, protocol) = sys::socket_triple(fd).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::NOTSOCK.raw_os_error()) {
            Error::from_code(
                WSAENOTSOCK,
                format!("descriptor {fd:?} is not a socket: only sockets can be duplicated"),
            )
            .with_source(e)
        } else {
            Error::from_errno(e, "reading the socket's family, type and protocol")
        }
    })?;
    catalog::base_entry_for(family, kind, protocol).ok_or_else(|| {
        Error::from_code(
            WSAEAFNOSUPPORT,
            format!(
                "sockets of family {family}, type {kind}, protocol {protocol} have no entry in sockdup's base catalog: \
                 only TCP and UDP over IPv4 and IPv6, and Unix stream, datagram and seqpacket sockets can be duplicated"
            ),
        )
    })
}

fn check_pid(pid: u32) -> Result<(), Error> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(Error::invalid(format!(
            "pid {pid} names no process: pass the target process's id"
        )));
    }
    Ok(())
}

/// Duplicates `socket` for process `target_pid` (`WSPDuplicateSocket`): when this returns, the
/// target holds a descriptor of the same socket, which it claims with [`socket_from_info`] and
/// the returned record. This process may close its own descriptor, or exit, at once.
///
/// The target must run sockdup ([`startup`]) and allow this process's user; a target equal to
/// this process works without IPC.
///
/// # Errors
/// `WSANOTINITIALISED` without [`startup`]; `WSAENOTSOCK` if `socket` is not a socket;
/// `WSAEINVAL` for pid 0, a pid that names no process, one that has not called [`startup`], a
/// squatter on its inbox address, or a refusal by its policy; `WSAENOBUFS` if the target's inbox
/// is full; `WSAEMFILE` if a side is out of descriptors; `WSAENETDOWN` if the target does not
/// answer. See the [crate docs](crate#errors).
#[doc(
    alias = "WSPDuplicateSocket",
    alias = "WSADuplicateSocketW",
    alias = "WSADuplicateSocket"
)]
pub fn duplicate_socket<S: AsFd>(socket: &S, target_pid: u32) -> Result<ProtocolInfo, Error> {
    let mut records = duplicate_sockets(std::slice::from_ref(socket), target_pid)?;
    records
        .pop()
        .ok_or_else(|| Error::from_code(WSAENETDOWN, "the target's inbox answered with no ticket"))
}

/// Duplicates many sockets for one target in as few messages as possible (253 descriptors per
/// message, Linux's `SCM_MAX_FD`); returns one record per socket, in order.
///
/// All or nothing: if a later message fails, the duplicates already delivered are withdrawn
/// from the target before the error returns.
///
/// # Errors
/// As [`duplicate_socket`]; every socket is checked before any is sent.
#[doc(alias = "WSPDuplicateSocket")]
pub fn duplicate_sockets<S: AsFd>(
    sockets: &[S],
    target_pid: u32,
) -> Result<Vec<ProtocolInfo>, Error> {
    let rt = Runtime::current()?;
    check_pid(target_pid)?;
    let records = sockets
        .iter()
        .map(|s| entry_for(s.as_fd()))
        .collect::<Result<Vec<_>, _>>()?;
    duplicate_as(&rt, sockets, records, target_pid)
}

/// [`duplicate_sockets`] for sockets whose base catalog entries the caller already knows
/// (`records[i]` is [`entry_for`] of `sockets[i]`), e.g. connections accepted from one
/// listener, which share its family, type and protocol: saves three `getsockopt` per socket.
/// Debug builds check the entries.
pub(crate) fn duplicate_known(
    sockets: &[BorrowedFd<'_>],
    records: Vec<ProtocolInfo>,
    target_pid: u32,
) -> Result<Vec<ProtocolInfo>, Error> {
    let rt = Runtime::current()?;
    check_pid(target_pid)?;
    debug_assert_eq!(sockets.len(), records.len());
    debug_assert!(
        sockets
            .iter()
            .zip(&records)
            .all(|(s, r)| entry_for(*s).is_ok_and(|e| e == *r)),
        "a known entry does not match its socket"
    );
    duplicate_as(&rt, sockets, records, target_pid)
}

/// Sends `sockets`, whose base entries are `records`, to `target_pid` and completes the
/// records with its pid, nonce and tickets.
fn duplicate_as<S: AsFd>(
    rt: &Runtime,
    sockets: &[S],
    mut records: Vec<ProtocolInfo>,
    target_pid: u32,
) -> Result<Vec<ProtocolInfo>, Error> {
    let mut tickets = Vec::with_capacity(sockets.len());
    let (pid, nonce);
    if target_pid == rt.pid {
        let fds = sockets
            .iter()
            .map(|s| sys::dup_cloexec(s.as_fd()))
            .collect::<Result<Vec<OwnedFd>, _>>()
            .map_err(|e| Error::from_errno(e, "duplicating the descriptor within this process"))?;
        let mut table = lock(&rt.table);
        (pid, nonce) = (table.pid(), table.nonce());
        tickets = table
            .handle_push(Instant::now(), rt.pid, fds)
            .map_err(|(e, _fds)| e)?;
    } else {
        let mut seen = (target_pid, 0);
        for chunk in sockets.chunks(MAX_FDS_PER_MESSAGE) {
            let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(AsFd::as_fd).collect();
            let request = Request::Push {
                count: fds.len() as u32,
            };
            let outcome = client::request(rt, target_pid, &request, &fds).and_then(|reply| {
                if reply.tickets.len() != fds.len()
                    || (!tickets.is_empty() && (reply.pid, reply.nonce) != seen)
                {
                    Err(Error::from_code(
                        WSAENETDOWN,
                        format!(
                            "process {target_pid}'s inbox answered a push with the wrong tickets"
                        ),
                    ))
                } else {
                    Ok(reply)
                }
            });
            match outcome {
                Ok(reply) => {
                    seen = (reply.pid, reply.nonce);
                    tickets.extend(reply.tickets);
                }
                Err(e) => {
                    if !tickets.is_empty() {
                        // Best effort: if this fails too, the duplicates expire with their TTL.
                        for part in tickets.chunks(MAX_FDS_PER_MESSAGE) {
                            let _ = client::request(
                                rt,
                                target_pid,
                                &Request::Cancel {
                                    tickets: part.to_vec(),
                                },
                                &[],
                            );
                        }
                    }
                    return Err(e);
                }
            }
        }
        (pid, nonce) = seen;
    }
    for (record, ticket) in records.iter_mut().zip(tickets) {
        record.service_flags3 = pid;
        record.service_flags4 = nonce;
        record.provider_reserved = ticket;
    }
    tracing::debug!(target_pid, count = records.len(), "duplicated sockets");
    Ok(records)
}

/// Redeems a record made by [`duplicate_socket`] for this process (`WSPSocket` with a
/// protocol info): returns this process's new descriptor of the same socket, close-on-exec.
/// Each record works once. A record of a protocol chain ([`spi::Socket::duplicate`]) is
/// redeemed through the same chain of this process's catalog, so each layer sees it.
///
/// # Errors
/// `WSANOTINITIALISED` without [`startup`]; `WSAEINVAL`, with a message that says which, if the
/// record names an entry this process's catalog lacks, a chain with a non-IFS layer (use
/// [`spi::Socket::from_info`]), was not made by sockdup, was made for another process or for an earlier run of this
/// one, was already redeemed, or expired. A failed attempt changes nothing: the real target can
/// still redeem the record.
#[doc(alias = "WSPSocket", alias = "WSASocketW", alias = "WSASocket")]
pub fn socket_from_info(info: &ProtocolInfo) -> Result<OwnedFd, Error> {
    let rt = Runtime::current()?;
    redeem_in(&rt, info)
}

/// [`socket_from_info`] with the runtime already looked up (once for many records).
pub(crate) fn redeem_in(rt: &Runtime, info: &ProtocolInfo) -> Result<OwnedFd, Error> {
    if !catalog::is_base_id(info.catalog_entry_id) {
        // A chain's record: through its layers, as the source's duplicate went.
        return spi::redeem_fd(info);
    }
    let fd = lock(&rt.table).claim(Instant::now(), info)?;
    tracing::debug!(ticket = info.provider_reserved, "redeemed a duplicate");
    Ok(fd)
}

/// Redeems many records at once (`WSPSocket` for each), all or nothing, under one lock: the
/// descriptors come back in the order of `infos`.
///
/// # Errors
/// As [`socket_from_info`]; the message names the first record that cannot be redeemed, by
/// its index, and then none is redeemed.
#[doc(alias = "WSPSocket")]
pub fn sockets_from_info(infos: &[ProtocolInfo]) -> Result<Vec<OwnedFd>, Error> {
    let rt = Runtime::current()?;
    let fds = lock(&rt.table).claim_all(Instant::now(), infos)?;
    tracing::debug!(count = fds.len(), "redeemed duplicates");
    Ok(fds)
}

/// Where process `pid`'s inbox listens, given the runtime directory this process uses
/// (`SOCKDUP_RUNTIME_DIR`), for diagnostics.
pub fn inbox_address(pid: u32) -> InboxAddress {
    let dir = std::env::var_os("SOCKDUP_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from);
    InboxAddress::for_pid(pid, dir.as_deref())
}

/// How many duplicates wait in this process's inbox, not yet redeemed.
///
/// # Errors
/// `WSANOTINITIALISED` without [`startup`].
pub fn pending() -> Result<usize, Error> {
    Ok(lock(&Runtime::current()?.table).len())
}
