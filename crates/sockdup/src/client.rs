//! The source side of the transport: connections to other processes' inboxes, kept for later
//! duplicates, and the request/reply exchange.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rustix::io::Errno;
use sockdup_core::error::{Error, WSAENETDOWN};
use sockdup_core::message::{MAX_MESSAGE, Reply, Request};

use crate::startup::Runtime;
use crate::sync::lock;
use crate::sys::{self, InboxAddress};

/// A connection to one target's inbox, verified to belong to that target.
pub(crate) struct Connection {
    fd: OwnedFd,
}

enum Failure {
    /// The connection was closed by the other side before it answered (the target restarted
    /// sockdup, or exited): a fresh connection may succeed.
    Closed,
    /// No answer within the acknowledgement timeout.
    Timeout,
    Os(io::Error),
    Malformed(Error),
}

fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

/// Opens a connection to `target`'s inbox and checks, with the kernel's word, that `target`
/// itself listens there (not a squatter on its address, not a process that reused its pid).
fn connect(rt: &Runtime, target: u32) -> Result<OwnedFd, Error> {
    let pidfd = sys::pidfd_open(target).map_err(|e| {
        if is_errno(&e, Errno::SRCH) {
            Error::invalid(format!(
                "no process with pid {target} exists: pass the pid of the running target process (it may have exited)"
            ))
        } else {
            Error::from_errno(e, &format!("opening a pidfd for process {target}"))
        }
    })?;
    let addr = InboxAddress::for_pid(target, rt.runtime_dir());
    let fd = sys::connect_inbox(&addr, rt.ack_timeout()).map_err(|e| {
        if is_errno(&e, Errno::CONNREFUSED) || is_errno(&e, Errno::NOENT) {
            Error::invalid(format!(
                "process {target} has not called sockdup::startup() (nothing listens at {addr}): start sockdup in the \
                 target before duplicating to it{}",
                if rt.runtime_dir().is_some() { ", with the same SOCKDUP_RUNTIME_DIR" } else { "" }
            ))
        } else if is_errno(&e, Errno::ACCESS) {
            Error::invalid(format!("this process may not connect to process {target}'s inbox at {addr} (permission denied)"))
        } else {
            Error::from_errno(e, &format!("connecting to process {target}'s inbox at {addr}"))
        }
    })?;
    let (peer_pid, peer_uid) = sys::peer_cred(fd.as_fd())
        .map_err(|e| Error::from_errno(e, "reading the inbox's peer credentials"))?;
    if peer_pid != target {
        return Err(Error::invalid(format!(
            "the inbox address {addr} of process {target} is held by process {peer_pid} (uid {peer_uid}), not by \
             {target}: refusing to hand it a socket; find and stop the squatter"
        )));
    }
    if sys::has_exited(pidfd.as_fd())
        .map_err(|e| Error::from_errno(e, "polling the target's pidfd"))?
    {
        return Err(Error::invalid(format!(
            "process {target} exited while this process connected to it"
        )));
    }
    Ok(fd)
}

fn exchange(fd: BorrowedFd<'_>, request: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Reply, Failure> {
    if let Err(e) = sys::send_with_fds(fd, request, fds) {
        return Err(
            if is_errno(&e, Errno::PIPE) || is_errno(&e, Errno::CONNRESET) {
                Failure::Closed
            } else if e.kind() == io::ErrorKind::WouldBlock {
                Failure::Timeout
            } else {
                Failure::Os(e)
            },
        );
    }
    let mut buf = [0u8; MAX_MESSAGE];
    let received = loop {
        match sys::recv_with_fds(fd, &mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match received {
        Ok(r) if r.len == 0 => Err(Failure::Closed),
        // An inbox never sends descriptors; any that came are closed as `r` drops.
        Ok(r) => Reply::decode(&buf[..r.len]).map_err(Failure::Malformed),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Failure::Timeout),
        Err(e) if is_errno(&e, Errno::CONNRESET) => Err(Failure::Closed),
        Err(e) => Err(Failure::Os(e)),
    }
}

/// Sends `request` (with `fds`) to `target`'s inbox and returns its successful reply.
///
/// A kept connection that turns out closed (the target restarted sockdup) is replaced once.
pub(crate) fn request(
    rt: &Runtime,
    target: u32,
    request: &Request,
    fds: &[BorrowedFd<'_>],
) -> Result<Reply, Error> {
    let bytes = request.encode();
    let mut retried = false;
    loop {
        let (conn, fresh) = {
            let cached = lock(&rt.connections).get(&target).cloned();
            match cached {
                Some(c) => (c, false),
                None => {
                    let c = Arc::new(Mutex::new(Connection {
                        fd: connect(rt, target)?,
                    }));
                    lock(&rt.connections).insert(target, c.clone());
                    (c, true)
                }
            }
        };
        let outcome = exchange(lock(&conn).fd.as_fd(), &bytes, fds);
        let forget = || {
            let mut map = lock(&rt.connections);
            if map.get(&target).is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                map.remove(&target);
            }
        };
        let err = match outcome {
            Ok(reply) => return reply.into_result(),
            Err(Failure::Closed) if !fresh && !retried => {
                forget();
                retried = true;
                continue;
            }
            Err(Failure::Closed) => Error::from_code(
                WSAENETDOWN,
                format!(
                    "process {target}'s inbox closed the connection before answering: the target stopped sockdup or exited"
                ),
            ),
            Err(Failure::Timeout) => Error::from_code(
                WSAENETDOWN,
                format!(
                    "process {target}'s inbox did not answer within {:?}: the target may be stopped or overloaded; \
                     whether it kept the descriptor is unknown (if it did, it expires with its time-to-live)",
                    rt.ack_timeout()
                ),
            ),
            Err(Failure::Os(e)) => {
                Error::from_errno(e, &format!("talking to process {target}'s inbox"))
            }
            Err(Failure::Malformed(e)) => e,
        };
        forget();
        return Err(err);
    }
}
