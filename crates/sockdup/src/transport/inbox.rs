//! The inbox: accepts sources, receives their descriptors into the table, answers with
//! tickets, and closes what expires.
//!
//! One `epoll` set per process: the listening socket and one connection per source process
//! (sources keep their connection for later duplicates). [`Serve::turn`] is one turn of work
//! around it; the inbox thread ([`InboxThread`], with an `eventfd` in the set that stops it)
//! turns it in a loop, or an application that serves its inbox from its own event loop
//! (`Options::inbox_served_by_caller`) turns it whenever the set is readable or a deadline
//! passes. All decisions are made by the core's [`Inbox`]; this file moves bytes and
//! descriptors.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::io::Errno;
use sockdup_core::allow::Allow;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::inbox::Inbox;
use sockdup_core::message::{MAX_MESSAGE, Reply, Request};

use crate::sync::lock;
use crate::sys;

/// How long accepting pauses when it fails (out of descriptors): the connection waits in the
/// backlog meanwhile, and the loop sleeps in `epoll_wait`, not in a spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// How many connections one source process may hold to this inbox at once. A source keeps one
/// connection per target (its pool), so this is room to spare for an honest one; beyond it a
/// connection gets the refusal and is closed, so that one process cannot hold this one's
/// descriptors.
pub(crate) const MAX_CONNECTIONS_PER_SOURCE: usize = 16;

const LISTENER: u64 = 0;
const WAKER: u64 = 1;

/// The running inbox thread.
pub(crate) struct InboxThread {
    waker: OwnedFd,
    handle: JoinHandle<()>,
}

impl InboxThread {
    /// Serves `serve` on a thread of its own until [`stop`](Self::stop).
    pub(crate) fn spawn(serve: Serve) -> Result<Self, Error> {
        let waker =
            sys::waker().map_err(|e| Error::from_errno(e, "creating the inbox's eventfd"))?;
        epoll::add(
            &*serve.ep,
            waker.as_fd(),
            epoll::EventData::new_u64(WAKER),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Error::from_errno(e, "registering the inbox with epoll"))?;
        let handle = std::thread::Builder::new()
            .name("sockdup-inbox".into())
            .spawn(move || serve.run())
            .map_err(|e| Error::from_errno(e, "starting the inbox thread"))?;
        Ok(Self { waker, handle })
    }

    /// Stops the thread and waits for it; the connections close with it.
    pub(crate) fn stop(self) {
        if sys::wake(self.waker.as_fd()).is_ok() {
            let _ = self.handle.join();
        }
    }
}

struct Peer {
    fd: OwnedFd,
    pid: u32,
}

/// The inbox's state and its one turn of work ([`turn`](Self::turn)): served by the inbox
/// thread ([`InboxThread`]) in a loop, or, when the application serves its inbox from its own
/// event loop, a turn at a time from there (never blocking).
pub(crate) struct Serve {
    /// The epoll set: the listener, the sources' connections (and the thread's waker). Shared,
    /// so that a caller's event loop can keep watching it (it is readable when there is work).
    ep: Arc<OwnedFd>,
    listener: OwnedFd,
    table: Arc<Mutex<Inbox<OwnedFd>>>,
    allow: Allow,
    own_uid: u32,
    conns: HashMap<u64, Peer>,
    /// How many of `conns` each source pid holds.
    conns_by_pid: HashMap<u32, usize>,
    next_key: u64,
    /// The table's pid and nonce, fixed for the run, copied here to answer without its lock.
    pid: u32,
    nonce: u32,
    /// While accepting is paused (the listener is out of the epoll set), until when.
    accept_paused_until: Option<Instant>,
    /// Room for one request.
    buf: Vec<u8>,
}

/// What one [`Serve::turn`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// It served whatever was ready (perhaps nothing).
    Served,
    /// The thread's waker: the inbox stops.
    Stop,
}

impl Serve {
    /// The inbox's state around `listener` (this process's listening inbox socket).
    pub(crate) fn new(
        listener: OwnedFd,
        table: Arc<Mutex<Inbox<OwnedFd>>>,
        allow: Allow,
        own_uid: u32,
    ) -> Result<Self, Error> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| Error::from_errno(e, "creating the inbox's epoll"))?;
        epoll::add(
            &ep,
            listener.as_fd(),
            epoll::EventData::new_u64(LISTENER),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Error::from_errno(e, "registering the inbox with epoll"))?;
        let (pid, nonce) = {
            let t = lock(&table);
            (t.pid(), t.nonce())
        };
        Ok(Self {
            ep: Arc::new(ep),
            listener,
            table,
            pid,
            nonce,
            allow,
            own_uid,
            conns: HashMap::new(),
            conns_by_pid: HashMap::new(),
            next_key: 2,
            accept_paused_until: None,
            buf: vec![0u8; MAX_MESSAGE],
        })
    }

    /// The epoll set's descriptor: readable when a turn has work (a source connecting, a
    /// request waiting).
    pub(crate) fn epoll(&self) -> Arc<OwnedFd> {
        self.ep.clone()
    }

    /// When the next turn is due even if nothing becomes readable: the next duplicate to
    /// expire, or the end of a pause in accepting. `None`: only readiness brings work.
    pub(crate) fn due(&self) -> Option<Instant> {
        let next_expiry = lock(&self.table).poll_timeout();
        match (next_expiry, self.accept_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The thread's loop: turns until the waker or a failure of the epoll set.
    fn run(mut self) {
        loop {
            // Round up so we never wake a hair early and spin.
            let timeout = self.due().map(|deadline| {
                deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1)
            });
            match self.turn(timeout) {
                Ok(Turn::Served) => {}
                Ok(Turn::Stop) => return,
                Err(e) => {
                    tracing::error!(error = %e, "sockdup inbox: epoll_wait failed; the inbox stops");
                    return;
                }
            }
        }
    }

    /// One turn: waits up to `timeout` (`None`: until something is ready; zero: not at all)
    /// for the epoll set, accepts, receives and answers what is ready, resumes a paused
    /// accept whose pause is over, and closes the duplicates that expired.
    ///
    /// # Errors
    /// `epoll_wait`'s own failure (not `EINTR`, which is a turn without events).
    pub(crate) fn turn(&mut self, timeout: Option<Duration>) -> Result<Turn, Errno> {
        let timeout = timeout.map(|d| rustix::time::Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        // On the stack: an epoll event is not `Send`, and the state moves between threads.
        let mut room = [MaybeUninit::<epoll::Event>::uninit(); 64];
        let events: &[epoll::Event] = match epoll::wait(&*self.ep, &mut room, timeout.as_ref()) {
            Ok((events, _)) => events,
            Err(Errno::INTR) => &[],
            Err(e) => return Err(e),
        };
        let mut buf = std::mem::take(&mut self.buf);
        let mut stop = false;
        for ev in events {
            match ev.data.u64() {
                WAKER => stop = true,
                LISTENER => self.accept_all(),
                key => self.serve(key, &mut buf),
            }
        }
        self.buf = buf;
        if stop {
            return Ok(Turn::Stop);
        }
        self.resume_accepting();
        let expired = lock(&self.table).handle_timeout(Instant::now());
        if !expired.is_empty() {
            tracing::debug!(
                count = expired.len(),
                "sockdup inbox: closing expired duplicates"
            );
        }
        drop(expired);
        Ok(Turn::Served)
    }

    fn accept_all(&mut self) {
        loop {
            match sys::accept(self.listener.as_fd()) {
                Ok(Some(fd)) => {
                    let Ok(cred) = sys::peer_cred(fd.as_fd()) else {
                        continue;
                    };
                    let admitted = self.admit(cred);
                    let pid = match admitted {
                        Ok(pid) => pid,
                        Err(e) => {
                            debug_assert!(super::refused_at_the_door(e.kind()), "{e}");
                            // Refused at the door: one reply that says why, then the
                            // connection closes (with whatever it carries). Nothing of a
                            // refused peer is kept, so it cannot hold this process's
                            // descriptors.
                            let refusal = Reply::failure(self.pid, self.nonce, &e);
                            let _ = sys::send_with_fds(fd.as_fd(), &refusal.encode(), &[]);
                            continue;
                        }
                    };
                    let key = self.next_key;
                    self.next_key += 1;
                    if epoll::add(
                        &self.ep,
                        &fd,
                        epoll::EventData::new_u64(key),
                        epoll::EventFlags::IN,
                    )
                    .is_ok()
                    {
                        self.conns.insert(key, Peer { fd, pid });
                        *self.conns_by_pid.entry(pid).or_insert(0) += 1;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    // Out of descriptors: leave the connection in the backlog, take the
                    // listener out of the epoll set (it stays readable and would spin the
                    // loop) and try again after a pause.
                    tracing::warn!(error = %e, "sockdup inbox: accept failed");
                    if epoll::delete(&self.ep, &self.listener).is_ok() {
                        self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    }
                    return;
                }
            }
        }
    }

    /// Puts the listener back into the epoll set once its pause is over.
    fn resume_accepting(&mut self) {
        if self
            .accept_paused_until
            .is_some_and(|until| until <= Instant::now())
        {
            let added = epoll::add(
                &self.ep,
                &self.listener,
                epoll::EventData::new_u64(LISTENER),
                epoll::EventFlags::IN,
            );
            if let Err(e) = added {
                tracing::error!(error = %e, "sockdup inbox: cannot resume accepting");
            }
            self.accept_paused_until = None;
        }
    }

    /// Answers one request on connection `key`. The epoll set is level-triggered, so a
    /// further queued request brings the thread straight back; not draining here saves a
    /// `recvmsg` that would fail with `EAGAIN` after every request.
    fn serve(&mut self, key: u64, buf: &mut [u8]) {
        let Some(peer) = self.conns.get(&key) else {
            return;
        };
        let received = match sys::recv_with_fds(peer.fd.as_fd(), buf) {
            Ok(r) => r,
            Err(Errno::AGAIN | Errno::INTR) => return,
            Err(_) => {
                self.close(key);
                return;
            }
        };
        if received.len == 0 && received.fds.is_empty() {
            self.close(key);
            return;
        }
        let reply = self.handle(peer, &buf[..received.len], received);
        if sys::send_with_fds(peer.fd.as_fd(), &reply.encode(), &[]).is_err() {
            self.close(key);
        }
    }

    /// Closes connection `key` (dropping its descriptor takes it out of the epoll set).
    fn close(&mut self, key: u64) {
        if let Some(peer) = self.conns.remove(&key)
            && let Some(n) = self.conns_by_pid.get_mut(&peer.pid)
        {
            *n -= 1;
            if *n == 0 {
                self.conns_by_pid.remove(&peer.pid);
            }
        }
    }

    /// Whether a connection from a process with credentials `cred` may stay: its pid if so,
    /// else the error its refusal carries.
    fn admit(&self, cred: sys::PeerCred) -> Result<u32, Error> {
        let Some(pid) = cred.pid else {
            return Err(Error::new(
                ErrorKind::OtherPidNamespace,
                format!(
                    "process {} refuses descriptors from a process (uid {}) in a pid namespace it cannot see (SO_PEERCRED \
                     reports pid 0): a duplicate is bound to pids both processes see; run source and target in one pid \
                     namespace, or the source in the target's",
                    self.pid, cred.uid
                ),
            ));
        };
        if !self.allow.permits(self.own_uid, cred.uid) {
            return Err(self.refusal(pid, cred.uid));
        }
        let held = self.conns_by_pid.get(&pid).copied().unwrap_or(0);
        if held >= MAX_CONNECTIONS_PER_SOURCE {
            return Err(Error::new(
                ErrorKind::TooManyConnections,
                format!(
                    "process {} already holds {held} connections from process {pid}, the most one process may: \
                     a source needs one per target; close the ones it does not use",
                    self.pid
                ),
            ));
        }
        Ok(pid)
    }

    /// Why a process of `uid` may not push here.
    fn refusal(&self, peer_pid: u32, uid: u32) -> Error {
        Error::new(
            ErrorKind::RefusedByTarget,
            format!(
                "process {} refuses descriptors from process {peer_pid} (uid {uid}): its policy ({:?}) does not allow that user; \
                 start the target with SOCKDUP_ALLOW naming that uid",
                self.pid, self.allow
            ),
        )
    }

    /// Refuses a push holding anything but sockets: a target takes sockets only, and a pipe
    /// or file kept in its table until the time-to-live would hold its descriptors for nothing.
    fn all_sockets(&self, source: u32, fds: &[OwnedFd]) -> Result<(), Error> {
        for (i, fd) in fds.iter().enumerate() {
            let socket = sys::is_socket(fd.as_fd())
                .map_err(|e| Error::from_errno(e, "checking a pushed descriptor (fstat)"))?;
            if !socket {
                return Err(Error::new(
                    ErrorKind::NotASocket,
                    format!(
                        "descriptor {i} of the {} process {source} pushed is not a socket: process {} takes sockets \
                         only, and closed them all",
                        fds.len(),
                        self.pid
                    ),
                ));
            }
        }
        Ok(())
    }

    fn handle(&self, peer: &Peer, bytes: &[u8], received: sys::Received) -> Reply {
        let (pid, nonce) = (self.pid, self.nonce);
        let fail = |e: Error| Reply::failure(pid, nonce, &e);
        let fds = received.fds;
        if received.too_long {
            return fail(Error::new(
                ErrorKind::ProtocolViolation,
                format!(
                    "a message from process {} is longer than the {MAX_MESSAGE} bytes a request may have: it is not a \
                     sockdup source (its descriptors were closed)",
                    peer.pid
                ),
            ));
        }
        if received.truncated {
            return fail(Error::new(
                ErrorKind::TargetOutOfDescriptors,
                format!(
                    "process {pid} could not receive all the descriptors (MSG_CTRUNC: it is out of descriptors); \
                     it must close some or raise its limit (ulimit -n)"
                ),
            ));
        }
        match Request::decode(bytes) {
            Ok(Request::Push { count }) if count as usize == fds.len() => {
                if let Err(e) = self.all_sockets(peer.pid, &fds) {
                    return fail(e);
                }
                let result = lock(&self.table).handle_push(Instant::now(), peer.pid, fds);
                match result {
                    Ok(tickets) => Reply {
                        status: 0,
                        pid,
                        nonce,
                        tickets,
                        text: String::new(),
                    },
                    Err((e, fds)) => {
                        drop(fds);
                        fail(e)
                    }
                }
            }
            Ok(Request::Cancel { tickets }) if fds.is_empty() => {
                let cancelled = lock(&self.table).handle_cancel(peer.pid, &tickets);
                drop(cancelled);
                Reply {
                    status: 0,
                    pid,
                    nonce,
                    tickets: Vec::new(),
                    text: String::new(),
                }
            }
            Ok(_) => fail(Error::new(
                ErrorKind::ProtocolViolation,
                "the request's descriptor count does not match what arrived",
            )),
            Err(e) => fail(e),
        }
    }
}
