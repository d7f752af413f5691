//! The source side of the transport: connections to other processes' inboxes, kept for later
//! duplicates, and the request/reply exchange.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::io::Errno;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::message::{MAX_MESSAGE, Reply, Request};

use crate::sync::lock;
use crate::sys::{self, InboxAddress};

/// A kept connection to an inbox, with the buffer its replies are read into (allocated once:
/// zeroing a message-sized buffer for every request cost more than the rest of a request's
/// own work).
#[derive(Debug)]
struct Connection {
    fd: OwnedFd,
    buf: Box<[u8]>,
    /// The request's bytes (kept, like `buf`).
    out: Vec<u8>,
}

/// The pool's map hasher: its keys are the pids this process duplicates to, not input an
/// attacker can multiply, and SipHash was a tenth of the acceptor's push (hashed once per
/// batch).
type Pids = crate::sync::MulHash;

/// The kept connections of one run to other processes' inboxes, by target pid.
#[derive(Debug)]
pub(crate) struct Pool {
    conns: Mutex<HashMap<u32, Arc<Mutex<Connection>>, Pids>>,
    runtime_dir: Option<PathBuf>,
    ack_timeout: Duration,
}

enum Failure {
    /// The connection was closed by the other side before it answered (the target restarted
    /// sockdup, or exited): a fresh connection may succeed.
    Closed,
    /// No answer within the acknowledgement timeout.
    Timeout,
    Os(Errno),
    Malformed(Error),
}

impl Pool {
    /// An empty pool; inboxes are found in `runtime_dir` (or the abstract namespace), and a
    /// target has `ack_timeout` to answer.
    pub(crate) fn new(runtime_dir: Option<PathBuf>, ack_timeout: Duration) -> Self {
        Self {
            conns: Mutex::new(HashMap::default()),
            runtime_dir,
            ack_timeout,
        }
    }

    /// Where inboxes are found (`SOCKDUP_RUNTIME_DIR`), or `None` for the abstract namespace.
    pub(crate) fn runtime_dir(&self) -> Option<&Path> {
        self.runtime_dir.as_deref()
    }

    /// Sends `request` (with `fds`) to `target`'s inbox and returns its successful reply.
    ///
    /// A kept connection that turns out closed (the target restarted sockdup) is replaced once.
    pub(crate) fn request(
        &self,
        target: u32,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, Error> {
        let mut reply = Reply::default();
        self.request_into(target, request, fds, &mut reply)?;
        Ok(reply)
    }

    /// [`request`](Self::request), the successful reply written into `reply` (a caller that
    /// keeps one for every request allocates nothing per request: the connection keeps the
    /// request's bytes, `reply` its tickets).
    pub(crate) fn request_into(
        &self,
        target: u32,
        request: &Request,
        fds: &[BorrowedFd<'_>],
        reply: &mut Reply,
    ) -> Result<(), Error> {
        let mut retried = false;
        loop {
            let (conn, fresh) = {
                let cached = lock(&self.conns).get(&target).cloned();
                match cached {
                    Some(c) => (c, false),
                    None => {
                        let c = Arc::new(Mutex::new(Connection {
                            fd: self.connect(target)?,
                            buf: vec![0; MAX_MESSAGE].into_boxed_slice(),
                            out: Vec::with_capacity(16),
                        }));
                        lock(&self.conns).insert(target, c.clone());
                        (c, true)
                    }
                }
            };
            let outcome = {
                let mut c = lock(&conn);
                let Connection { fd, buf, out } = &mut *c;
                out.clear();
                request.encode_into(out);
                exchange(fd.as_fd(), out, fds, buf, reply)
            };
            let forget = || {
                let mut map = lock(&self.conns);
                if map.get(&target).is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                    map.remove(&target);
                }
            };
            let err = match outcome {
                Ok(()) => match reply.check() {
                    Ok(()) => return Ok(()),
                    // The inbox's answer to this request (full, out of descriptors, a bad
                    // ticket): the connection is sound and stays, so the next request needs
                    // no new descriptor in the target, which may be the very thing it lacks.
                    Err(e) if !super::refused_at_the_door(e.kind()) => return Err(e),
                    // A refusal at the inbox's door comes with the connection closed: the
                    // next request starts afresh.
                    Err(e) => e,
                },
                Err(Failure::Closed) if !fresh && !retried => {
                    forget();
                    retried = true;
                    continue;
                }
                Err(failure) => self.failure(target, failure),
            };
            forget();
            return Err(err);
        }
    }

    fn failure(&self, target: u32, failure: Failure) -> Error {
        match failure {
            Failure::Closed => Error::new(
                ErrorKind::PeerClosed,
                format!(
                    "process {target}'s inbox closed the connection before answering: the target stopped sockdup or exited"
                ),
            ),
            Failure::Timeout => Error::new(
                ErrorKind::PeerTimedOut,
                format!(
                    "process {target}'s inbox did not answer within {:?}: the target may be stopped or overloaded; \
                     whether it kept the descriptor is unknown (if it did, it expires with its time-to-live)",
                    self.ack_timeout
                ),
            ),
            Failure::Os(e) => Error::from_errno(e, &format!("talking to process {target}'s inbox")),
            Failure::Malformed(e) => e,
        }
    }

    /// Opens a connection to `target`'s inbox and checks, with the kernel's word, that `target`
    /// itself listens there (not a squatter on its address, not a process that reused its pid).
    pub(crate) fn connect(&self, target: u32) -> Result<OwnedFd, Error> {
        let no_such_process = || {
            Error::new(
                ErrorKind::NoSuchProcess,
                format!(
                    "no process with pid {target} exists: pass the pid of the running target process (it may have exited)"
                ),
            )
        };
        // Without pidfds (kernels before 5.3, and valgrind, which does not know the call) the
        // SO_PEERCRED check below stands alone, after a kill(pid, 0) check that the target exists.
        let pidfd = match sys::pidfd_open(target) {
            Ok(fd) => Some(fd),
            Err(Errno::NOSYS) => match sys::process_exists(target) {
                Ok(true) => None,
                Ok(false) => return Err(no_such_process()),
                Err(e) => {
                    return Err(Error::from_errno(
                        e,
                        &format!("looking for process {target}"),
                    ));
                }
            },
            Err(Errno::SRCH) => return Err(no_such_process()),
            Err(e) => {
                return Err(Error::from_errno(
                    e,
                    &format!("opening a pidfd for process {target}"),
                ));
            }
        };
        let addr = InboxAddress::for_pid(target, self.runtime_dir());
        let fd = sys::connect_inbox(&addr, self.ack_timeout)
            .map_err(|e| self.connect_error(target, &addr, e))?;
        let (peer_pid, peer_uid) =
            super::peer_pid_uid(fd.as_fd(), &format!("the inbox at {addr}"))?;
        if peer_pid != target {
            if sys::procfs::in_other_pid_namespace(peer_pid).unwrap_or(false) {
                return Err(Error::new(
                    ErrorKind::OtherPidNamespace,
                    format!(
                        "the inbox at {addr} belongs to process {peer_pid} (as this process sees it), which lives in \
                         another pid namespace and calls itself {target} there: a duplicate is bound to a pid both \
                         processes see; run source and target in one pid namespace"
                    ),
                ));
            }
            return Err(Error::new(
                ErrorKind::Squatter,
                format!(
                    "the inbox address {addr} of process {target} is held by process {peer_pid} (uid {peer_uid}), not by \
                     {target}: refusing to hand it a socket; find and stop the squatter"
                ),
            ));
        }
        if let Some(pidfd) = &pidfd
            && sys::has_exited(pidfd.as_fd())
                .map_err(|e| Error::from_errno(e, "polling the target's pidfd"))?
        {
            return Err(Error::new(
                ErrorKind::NoSuchProcess,
                format!("process {target} exited while this process connected to it"),
            ));
        }
        Ok(fd)
    }

    fn connect_error(&self, target: u32, addr: &InboxAddress, e: Errno) -> Error {
        if e == Errno::CONNREFUSED || e == Errno::NOENT {
            Error::new(
                ErrorKind::TargetNotStarted,
                format!(
                    "process {target} has not called sockdup::startup() (nothing listens at {addr}): start sockdup in the \
                     target before duplicating to it{}",
                    if self.runtime_dir.is_some() {
                        ", with the same SOCKDUP_RUNTIME_DIR"
                    } else {
                        ""
                    }
                ),
            )
        } else if e == Errno::ACCESS {
            Error::new(
                ErrorKind::InboxNotReachable,
                format!(
                    "this process may not connect to process {target}'s inbox at {addr} (permission denied)"
                ),
            )
        } else {
            Error::from_errno(
                e,
                &format!("connecting to process {target}'s inbox at {addr}"),
            )
        }
    }
}

fn exchange(
    fd: BorrowedFd<'_>,
    request: &[u8],
    fds: &[BorrowedFd<'_>],
    buf: &mut [u8],
    reply: &mut Reply,
) -> Result<(), Failure> {
    match sys::send_with_fds(fd, request, fds) {
        Ok(()) => receive(fd, buf, reply),
        // The inbox closed the connection; it may have said why first (a refusal at its door
        // comes before any request): that answer, if there is one.
        Err(Errno::PIPE | Errno::CONNRESET) => match receive(fd, buf, reply) {
            Err(Failure::Timeout) => Err(Failure::Closed),
            other => other,
        },
        Err(Errno::AGAIN) => Err(Failure::Timeout),
        Err(e) => Err(Failure::Os(e)),
    }
}

/// Receives the inbox's reply into `reply`.
fn receive(fd: BorrowedFd<'_>, buf: &mut [u8], reply: &mut Reply) -> Result<(), Failure> {
    let mut reset = false;
    loop {
        match sys::recv_with_fds(fd, buf) {
            Err(Errno::INTR) => {}
            // A reset (the inbox closed with our request unread) is reported before what the
            // inbox sent before closing: one more read gets its answer, if it gave one.
            Err(Errno::CONNRESET) if !reset => reset = true,
            Ok(r) if r.len == 0 => return Err(Failure::Closed),
            // An inbox never sends descriptors; any that came are closed as `r` drops.
            Ok(r) => return reply.decode_into(&buf[..r.len]).map_err(Failure::Malformed),
            Err(Errno::AGAIN) => return Err(Failure::Timeout),
            Err(Errno::CONNRESET) => return Err(Failure::Closed),
            Err(e) => return Err(Failure::Os(e)),
        }
    }
}
