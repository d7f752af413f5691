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
use sockdup_core::message::{MAX_FDS_PER_MESSAGE, MAX_MESSAGE, Reply, Request};
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
    check_pid(target_pid)?;
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(AsFd::as_fd).collect();
    let mut bufs = PushBuffers::default();
    let (pid, nonce) = if target_pid == rt.pid {
        push_local(rt, &fds, &mut bufs.tickets)?
    } else {
        push_remote(rt, &fds, target_pid, &mut bufs)?
    };
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
    /// The request's bytes, for [`push_send`] (the pool's connections keep their own).
    out: Vec<u8>,
    /// Where [`push_answer`] receives the inbox's answer: [`MAX_MESSAGE`] bytes, allocated at
    /// the first answer (a one-off [`push`] never needs it).
    answer: Vec<u8>,
}

/// A connection of the caller's own to `target_pid`'s inbox (checked as the pool's are: the
/// target itself listens there), for [`push_send`] and [`push_answer`]: a push split in two,
/// for a caller that waits for the inbox's answer in its own epoll set instead of blocked in
/// `recvmsg` (the handoff acceptor). The inbox answers the requests of one connection in
/// their order.
pub(crate) fn connect_inbox(rt: &Runtime, target_pid: u32) -> Result<OwnedFd, Error> {
    check_pid(target_pid)?;
    rt.pool.connect(target_pid)
}

/// Sends `sockets` (at most [`MAX_FDS_PER_MESSAGE`]) to the inbox of `target_pid` on `conn`
/// ([`connect_inbox`]) without waiting, for its answer ([`push_answer`]) or for room: a
/// connection's queue holds a few requests (`net.unix.max_dgram_qlen`), and a send that would
/// wait for the inbox to read them fails with [`ErrorKind::InboxFull`]. An inbox that closed
/// the connection may have said why first (a refusal at its door): that answer is the error.
/// The request's bytes are written into `bufs`, so that a caller that keeps it allocates
/// nothing per push.
pub(crate) fn push_send(
    conn: BorrowedFd<'_>,
    sockets: &[BorrowedFd<'_>],
    bufs: &mut PushBuffers,
    target_pid: u32,
) -> Result<(), Error> {
    debug_assert!(sockets.len() <= MAX_FDS_PER_MESSAGE);
    let request = Request::Push {
        count: sockets.len() as u32,
    };
    bufs.out.clear();
    request.encode_into(&mut bufs.out);
    match sys::try_send_with_fds(conn, &bufs.out, sockets) {
        Ok(()) => Ok(()),
        // Its queue is full of requests it has not read yet: the caller must not wait.
        Err(Errno::AGAIN) => Err(Error::new(
            ErrorKind::InboxFull,
            format!(
                "process {target_pid}'s inbox has not yet read the requests sent before (its queue is full): \
                 try again once it answered them"
            ),
        )),
        Err(e @ (Errno::PIPE | Errno::CONNRESET)) => match push_answer(conn, bufs, target_pid) {
            Some(Err(failed)) => Err(failed.error),
            _ => Err(inbox_failed(e, target_pid)),
        },
        Err(e) => Err(inbox_failed(e, target_pid)),
    }
}

/// Why [`push_answer`] failed: the error the push is reported with, and whether the
/// connection is finished (closed by the inbox, out of step): the pushes still waiting for
/// an answer on it will get none.
#[derive(Debug)]
pub(crate) struct PushFailed {
    pub(crate) error: Error,
    pub(crate) closed: bool,
}

/// Reads, without blocking, the inbox's answer to the oldest [`push_send`] on `conn`: `None`
/// if it has not come; else the target's pid and run nonce, with a ticket per socket, in
/// order, in `bufs.tickets` (the caller checks their number), or why the push failed (the
/// inbox's own refusal, e.g. [`ErrorKind::InboxFull`], leaves the connection open but for a
/// refusal at its door). Reads into `bufs`: nothing allocated once it served one answer.
pub(crate) fn push_answer(
    conn: BorrowedFd<'_>,
    bufs: &mut PushBuffers,
    target_pid: u32,
) -> Option<Result<(u32, u32), PushFailed>> {
    let closed = |error| PushFailed {
        error,
        closed: true,
    };
    let PushBuffers {
        reply,
        tickets,
        answer,
        ..
    } = bufs;
    if answer.len() < MAX_MESSAGE {
        answer.resize(MAX_MESSAGE, 0);
    }
    tickets.clear();
    let mut reset = false;
    let received = loop {
        match sys::try_recv_with_fds(conn, answer) {
            Ok(Some(r)) => break r,
            Ok(None) => return None,
            Err(Errno::INTR) => {}
            // A reset (the inbox closed with a request unread) is reported before what the
            // inbox sent before closing: one more read gets its answer, if it gave one.
            Err(Errno::CONNRESET) if !reset => reset = true,
            Err(e) => return Some(Err(closed(inbox_failed(e, target_pid)))),
        }
    };
    if received.len == 0 {
        return Some(Err(closed(inbox_failed(Errno::CONNRESET, target_pid))));
    }
    // An inbox never sends descriptors; any that came close as `received` drops.
    if let Err(e) = reply.decode_into(&answer[..received.len]) {
        return Some(Err(closed(e)));
    }
    Some(match reply.check() {
        Ok(()) => {
            tickets.extend_from_slice(&reply.tickets);
            Ok((reply.pid, reply.nonce))
        }
        Err(e) => {
            let door = crate::transport::refused_at_the_door(e.kind());
            Err(PushFailed {
                error: e,
                closed: door,
            })
        }
    })
}

/// A failed exchange with `target_pid`'s inbox on a caller's own connection, said as the
/// pool says it.
fn inbox_failed(e: Errno, target_pid: u32) -> Error {
    match e {
        Errno::PIPE | Errno::CONNRESET => Error::new(
            ErrorKind::PeerClosed,
            format!(
                "process {target_pid}'s inbox closed the connection before answering: the target stopped sockdup or exited"
            ),
        ),
        Errno::AGAIN => Error::new(
            ErrorKind::PeerTimedOut,
            format!(
                "process {target_pid}'s inbox did not take the request in time: the target may be stopped or overloaded"
            ),
        ),
        e => Error::from_errno(e, &format!("talking to process {target_pid}'s inbox")),
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
    let PushBuffers { reply, tickets, .. } = bufs;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    /// The caller's end and the inbox's end of one connection.
    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("a SOCK_SEQPACKET pair")
    }

    /// Reads one request on the inbox's end: it and how many descriptors came.
    fn take_request(inbox: BorrowedFd<'_>) -> (Request, usize) {
        let mut buf = [0u8; MAX_MESSAGE];
        let got = sys::recv_with_fds(inbox, &mut buf).expect("a request");
        (
            Request::decode(&buf[..got.len]).expect("a sockdup request"),
            got.fds.len(),
        )
    }

    fn answer(inbox: BorrowedFd<'_>, reply: &Reply) {
        sys::send_with_fds(inbox, &reply.encode(), &[]).expect("an answer");
    }

    fn granted(tickets: &[u32]) -> Reply {
        Reply {
            status: 0,
            pid: 42,
            nonce: 7,
            tickets: tickets.to_vec(),
            text: String::new(),
        }
    }

    #[test]
    fn a_split_push_never_waits_and_reads_its_answers_into_the_kept_buffers() {
        let (ours, inbox) = pair();
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let mut bufs = PushBuffers::default();
        // No answer yet: none, at once.
        assert!(push_answer(ours.as_fd(), &mut bufs, 42).is_none());
        push_send(ours.as_fd(), &[file.as_fd(), file.as_fd()], &mut bufs, 42).expect("sent");
        assert_eq!(take_request(inbox.as_fd()), (Request::Push { count: 2 }, 2));
        assert!(push_answer(ours.as_fd(), &mut bufs, 42).is_none());
        answer(inbox.as_fd(), &granted(&[5, 6]));
        let got = push_answer(ours.as_fd(), &mut bufs, 42).expect("an answer");
        assert_eq!(got.expect("granted"), (42, 7));
        assert_eq!(bufs.tickets, [5, 6]);
        let kept = (
            bufs.out.as_ptr(),
            bufs.answer.as_ptr(),
            bufs.tickets.as_ptr(),
        );
        // The next push and answer reuse every buffer.
        push_send(ours.as_fd(), &[file.as_fd()], &mut bufs, 42).expect("sent");
        assert_eq!(take_request(inbox.as_fd()), (Request::Push { count: 1 }, 1));
        answer(inbox.as_fd(), &granted(&[8]));
        let got = push_answer(ours.as_fd(), &mut bufs, 42).expect("an answer");
        assert_eq!(got.expect("granted"), (42, 7));
        assert_eq!(bufs.tickets, [8]);
        assert_eq!(
            (
                bufs.out.as_ptr(),
                bufs.answer.as_ptr(),
                bufs.tickets.as_ptr()
            ),
            kept
        );
        // The inbox's own refusal is the push's error; the connection stays.
        push_send(ours.as_fd(), &[file.as_fd()], &mut bufs, 42).expect("sent");
        take_request(inbox.as_fd());
        let full = Error::new(ErrorKind::InboxFull, "no room");
        answer(inbox.as_fd(), &Reply::failure(42, 7, &full));
        let failed = push_answer(ours.as_fd(), &mut bufs, 42)
            .expect("an answer")
            .expect_err("refused");
        assert_eq!(failed.error.kind(), ErrorKind::InboxFull);
        assert!(!failed.closed);
        assert!(bufs.tickets.is_empty());
        // A queue the inbox does not read fills up: the push fails at once, it does not wait.
        let mut sent = 0;
        let refused = loop {
            match push_send(ours.as_fd(), &[], &mut bufs, 42) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 1_000_000, "a queue that never fills");
        };
        assert_eq!(refused.kind(), ErrorKind::InboxFull, "{refused}");
        // The inbox closed the connection: the waiting pushes get no answer, and the
        // connection is finished.
        drop(inbox);
        let failed = push_answer(ours.as_fd(), &mut bufs, 42)
            .expect("the end")
            .expect_err("closed");
        assert_eq!(
            failed.error.kind(),
            ErrorKind::PeerClosed,
            "{}",
            failed.error
        );
        assert!(failed.closed);
        let e = push_send(ours.as_fd(), &[], &mut bufs, 42).expect_err("closed");
        assert_eq!(e.kind(), ErrorKind::PeerClosed, "{e}");
    }
}
