//! Transfer: the base provider's duplication (MSAFD's share of `WSPDuplicateSocket` and
//! `WSPSocket`): a socket to a base record bound to a target, through the transport, and a base
//! record back to this process's descriptor, from the runtime's ticket table.
//!
//! Everything above goes through here: the public API for base records, the SPI's base provider
//! for the bottom of every chain, handoff and upgrade for batches. Nothing here knows about
//! chains.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::io::Errno;
use sockdup_core::catalog;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::message::{MAX_FDS_PER_MESSAGE, Reply, Request};
use sockdup_core::wire::ProtocolInfo;

use crate::startup::Runtime;
use crate::sync::lock;
use crate::sys;

/// The base catalog entry for `fd`'s real family, type and protocol.
pub(crate) fn entry_for(fd: BorrowedFd<'_>) -> Result<ProtocolInfo, Error> {
    let (family, kind, protocol) = sys::socket_triple(fd).map_err(|e| {
        if e == Errno::NOTSOCK {
            Error::new(
                ErrorKind::NotASocket,
                format!("descriptor {fd:?} is not a socket: only sockets can be duplicated"),
            )
            .with_source(e.into())
        } else {
            Error::from_errno(e, "reading the socket's family, type and protocol")
        }
    })?;
    catalog::base_entry_for(family, kind, protocol).ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "sockets of family {family}, type {kind}, protocol {protocol} have no entry in sockdup's base catalog: \
                 only TCP and UDP over IPv4 and IPv6, and Unix stream, datagram and seqpacket sockets can be duplicated"
            ),
        )
    })
}

fn check_pid(pid: u32) -> Result<(), Error> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(Error::new(
            ErrorKind::InvalidPid,
            format!("pid {pid} names no process: pass the target process's id"),
        ));
    }
    Ok(())
}

/// Duplicates `sockets` for `target_pid`: one base record per socket, in order, all or nothing.
pub(crate) fn duplicate<S: AsFd>(
    rt: &Runtime,
    sockets: &[S],
    target_pid: u32,
) -> Result<Vec<ProtocolInfo>, Error> {
    check_pid(target_pid)?;
    let records = sockets
        .iter()
        .map(|s| entry_for(s.as_fd()))
        .collect::<Result<Vec<_>, _>>()?;
    send(rt, sockets, records, target_pid)
}

/// Pushes `sockets` to `target_pid` (this process's own table if it is this process): the
/// target's pid and run nonce, and a ticket per socket, in order; all or nothing. What a record
/// needs besides the socket's catalog entry, for callers that make records themselves (a
/// takeover sends them as runs).
pub(crate) fn push<S: AsFd>(
    rt: &Runtime,
    sockets: &[S],
    target_pid: u32,
) -> Result<(u32, u32, Vec<u32>), Error> {
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(AsFd::as_fd).collect();
    let mut bufs = PushBuffers::default();
    let (pid, nonce) = push_into(rt, &fds, target_pid, &mut bufs)?;
    Ok((pid, nonce, bufs.tickets))
}

/// What a push needs besides the descriptors: the inbox's reply, and the tickets it gave. A
/// caller that pushes often (the acceptor, a batch per wake-up) keeps one, so that a push
/// allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct PushBuffers {
    reply: Reply,
    /// The tickets of the last successful push, one per socket, in order.
    pub(crate) tickets: Vec<u32>,
}

/// [`push`], the tickets into `bufs.tickets` (cleared first): the target's pid and run nonce.
pub(crate) fn push_into(
    rt: &Runtime,
    sockets: &[BorrowedFd<'_>],
    target_pid: u32,
    bufs: &mut PushBuffers,
) -> Result<(u32, u32), Error> {
    check_pid(target_pid)?;
    bufs.tickets.clear();
    if target_pid == rt.pid {
        push_local(rt, sockets, &mut bufs.tickets)
    } else {
        push_remote(rt, sockets, target_pid, bufs)
    }
}

/// Sends `sockets`, whose base entries are `records`, to `target_pid` and completes the
/// records with its pid, nonce and tickets.
fn send<S: AsFd>(
    rt: &Runtime,
    sockets: &[S],
    mut records: Vec<ProtocolInfo>,
    target_pid: u32,
) -> Result<Vec<ProtocolInfo>, Error> {
    let (pid, nonce, tickets) = push(rt, sockets, target_pid)?;
    for (record, ticket) in records.iter_mut().zip(tickets) {
        record.service_flags3 = pid;
        record.service_flags4 = nonce;
        record.provider_reserved = ticket;
    }
    tracing::debug!(target_pid, count = records.len(), "duplicated sockets");
    Ok(records)
}

/// A duplicate to this very process: into the local table, without IPC.
fn push_local(
    rt: &Runtime,
    sockets: &[BorrowedFd<'_>],
    tickets: &mut Vec<u32>,
) -> Result<(u32, u32), Error> {
    let fds = sockets
        .iter()
        .map(|s| sys::dup_cloexec(*s))
        .collect::<Result<Vec<OwnedFd>, _>>()
        .map_err(|e| Error::from_errno(e, "duplicating the descriptor within this process"))?;
    let mut table = lock(&rt.table);
    let (pid, nonce) = (table.pid(), table.nonce());
    tickets.extend(
        table
            .handle_push(Instant::now(), rt.pid, fds)
            .map_err(|(e, _fds)| e)?,
    );
    Ok((pid, nonce))
}

/// Pushes `sockets` to `target_pid`'s inbox, 253 per message; if a later message fails, the
/// duplicates already delivered are withdrawn before the error returns.
fn push_remote(
    rt: &Runtime,
    sockets: &[BorrowedFd<'_>],
    target_pid: u32,
    bufs: &mut PushBuffers,
) -> Result<(u32, u32), Error> {
    let PushBuffers { reply, tickets } = bufs;
    let mut seen = (target_pid, 0);
    for chunk in sockets.chunks(MAX_FDS_PER_MESSAGE) {
        let request = Request::Push {
            count: chunk.len() as u32,
        };
        let outcome = rt
            .pool
            .request_into(target_pid, &request, chunk, reply)
            .and_then(|()| {
                if reply.tickets.len() != chunk.len()
                    || (!tickets.is_empty() && (reply.pid, reply.nonce) != seen)
                {
                    Err(Error::new(
                        ErrorKind::ProtocolViolation,
                        format!(
                            "process {target_pid}'s inbox answered a push with the wrong tickets"
                        ),
                    ))
                } else {
                    Ok(())
                }
            });
        if let Err(e) = outcome {
            // Best effort: if this fails too, the duplicates expire with their TTL.
            for part in tickets.chunks(MAX_FDS_PER_MESSAGE) {
                let cancel = Request::Cancel {
                    tickets: part.to_vec(),
                };
                let _ = rt.pool.request(target_pid, &cancel, &[]);
            }
            tickets.clear();
            return Err(e);
        }
        seen = (reply.pid, reply.nonce);
        tickets.extend_from_slice(&reply.tickets);
    }
    Ok(seen)
}

/// Redeems one base record from this run's table, once.
pub(crate) fn claim(rt: &Runtime, info: &ProtocolInfo) -> Result<OwnedFd, Error> {
    let fd = lock(&rt.table).claim(Instant::now(), info)?;
    tracing::debug!(ticket = info.provider_reserved, "redeemed a duplicate");
    Ok(fd)
}

/// Redeems many base records at once, all or nothing, under one lock.
pub(crate) fn claim_all(rt: &Runtime, infos: &[ProtocolInfo]) -> Result<Vec<OwnedFd>, Error> {
    let fds = lock(&rt.table).claim_all(Instant::now(), infos)?;
    tracing::debug!(count = fds.len(), "redeemed duplicates");
    Ok(fds)
}

/// Redeems runs of base records (`(first, count)`: see
/// [`Inbox::claim_runs`](sockdup_core::inbox::Inbox::claim_runs)) under one lock, all or
/// nothing.
pub(crate) fn claim_runs(
    rt: &Runtime,
    runs: &[(ProtocolInfo, u32)],
) -> Result<Vec<OwnedFd>, Error> {
    let fds = lock(&rt.table).claim_runs(Instant::now(), runs)?;
    tracing::debug!(count = fds.len(), "redeemed runs of duplicates");
    Ok(fds)
}

/// Checks that every base record could be redeemed now (distinct, pending, for this run),
/// changing nothing.
pub(crate) fn check_all(rt: &Runtime, infos: &[ProtocolInfo]) -> Result<(), Error> {
    lock(&rt.table).check_all(Instant::now(), infos)
}

/// Puts redeemed descriptors back, pending again under their records' tickets: the undo of a
/// batch that failed part way.
pub(crate) fn restore(rt: &Runtime, redeemed: Vec<(ProtocolInfo, OwnedFd)>) {
    let mut table = lock(&rt.table);
    let now = Instant::now();
    for (info, fd) in redeemed {
        table.restore(now, info.provider_reserved, fd);
    }
}
