//! The transport between processes: this process's inbox (the target side: its thread, or the
//! turns an application's own event loop runs), and the pool of connections to other
//! processes' inboxes (the source side).
//!
//! Below it is only `sys` (the syscalls) and the core (the ticket table, the message codec, the
//! uid policy); above it the runtime owns one of each per run.

mod client;
mod inbox;

pub(crate) use client::Pool;
pub(crate) use inbox::{InboxThread, Serve};

use std::os::fd::BorrowedFd;

use sockdup_core::error::{Error, ErrorKind};

use crate::sys;

/// The pid and uid of the process at the other end of the unix socket `fd` (`SO_PEERCRED`),
/// `who` naming it in errors (e.g. "process 42's inbox").
///
/// # Errors
/// [`ErrorKind::OtherPidNamespace`] when that process lives in a pid namespace this one cannot
/// see (the kernel reports its pid as 0): sockdup binds duplicates and takeovers to pids, and
/// a pid this process cannot see binds nothing.
pub(crate) fn peer_pid_uid(fd: BorrowedFd<'_>, who: &str) -> Result<(u32, u32), Error> {
    let cred = sys::peer_cred(fd)
        .map_err(|e| Error::from_errno(e, &format!("reading the credentials of {who}")))?;
    match cred.pid {
        Some(pid) => Ok((pid, cred.uid)),
        None => Err(Error::new(
            ErrorKind::OtherPidNamespace,
            format!(
                "{who} belongs to a process (uid {}) in a pid namespace this process cannot see (SO_PEERCRED reports pid 0): \
                 sockdup works between processes that see each other's pids; run both in one pid namespace",
                cred.uid
            ),
        )),
    }
}

/// Whether an inbox answers `kind` at its door (to a connection it will not keep, before any
/// request) and then closes the connection; every other answer leaves the connection open.
pub(crate) fn refused_at_the_door(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::RefusedByTarget | ErrorKind::OtherPidNamespace | ErrorKind::TooManyConnections
    )
}
