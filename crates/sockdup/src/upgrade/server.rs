//! The running server's side: its published listeners, the control socket, and one session
//! per takeover attempt.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sockdup_core::allow::Allow;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::line::LineMessage;
use sockdup_core::proto::upgrade::{Refusal, ToNew, ToOld, check_names};

use super::proto::Conn;
use super::{Upgrade, control_address};
use crate::startup::Runtime;
use crate::sync::lock;
use crate::sys::{self, InboxAddress};

/// The most takeover connections served at once; more are refused at once.
const MAX_SESSIONS: usize = 8;

/// A completed takeover, as the old process sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    /// The process that took over, which the pid file now names.
    pub pid: u32,
    /// The listeners it took; any others stay with this process until it exits.
    pub names: Vec<String>,
}

/// Where a published server stands. Pure: the sessions drive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Serving,
    Offering(u32),
    HandedOver(Handover),
}

impl State {
    /// A takeover by `pid` starts, if no other is in progress or done.
    pub(crate) fn begin(&mut self, pid: u32) -> Result<(), Error> {
        match self {
            Self::Serving => {
                *self = Self::Offering(pid);
                Ok(())
            }
            Self::Offering(other) => Err(Error::new(
                ErrorKind::TakeoverInProgress,
                format!(
                    "process {other} is taking over this server's listeners right now: one takeover at a time; \
                     try again when it has finished or given up"
                ),
            )),
            Self::HandedOver(h) => Err(Error::new(
                ErrorKind::AlreadyHandedOver,
                format!(
                    "this server already handed its listeners to process {}, which the pid file names now: take \
                     over from that one",
                    h.pid
                ),
            )),
        }
    }

    /// The takeover by `pid` completed.
    pub(crate) fn finish(&mut self, pid: u32, names: Vec<String>) {
        if *self == Self::Offering(pid) {
            *self = Self::HandedOver(Handover { pid, names });
        }
    }

    /// The takeover by `pid` failed or was given up: serving as before.
    pub(crate) fn abandon(&mut self, pid: u32) {
        if *self == Self::Offering(pid) {
            *self = Self::Serving;
        }
    }
}

struct Shared {
    upgrade: Upgrade,
    pid: u32,
    names: Vec<String>,
    /// Where each name is in `names` and `fds`: a takeover of 1000 names looks each up.
    index: HashMap<String, usize>,
    fds: Vec<OwnedFd>,
    state: Mutex<State>,
    changed: Condvar,
    /// An eventfd made readable (and left so) by the handover, for event loops.
    handed_over: OwnedFd,
    sessions: AtomicUsize,
}

/// A server's published listeners, answering takeovers until a successor takes over or this
/// value drops. Made by [`Upgrade::publish`] or [`Takeover::complete`](super::Takeover::complete).
///
/// Dropping it closes this process's descriptors of the listeners and the control socket, and
/// removes the pid file if it still names this process.
pub struct Published {
    shared: Arc<Shared>,
    address: InboxAddress,
    waker: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("pid_file", &self.shared.upgrade.pid_file())
            .field("names", &self.shared.names)
            .field("control", &self.address.to_string())
            .field("state", &*lock(&self.shared.state))
            .finish()
    }
}

impl Published {
    /// Starts answering takeovers of `listeners` on this process's control socket.
    pub(crate) fn start(
        upgrade: Upgrade,
        listeners: Vec<(String, OwnedFd)>,
    ) -> Result<Self, Error> {
        let rt = Runtime::current()?;
        let address = control_address(rt.pid, rt.runtime_dir());
        let listener = sys::listen_control(&address).map_err(|e| {
            if e == rustix::io::Errno::ADDRINUSE {
                Error::new(
                    ErrorKind::ServerRunning,
                    format!(
                        "the control address {address} is in use: this process already publishes listeners, or \
                         another process squats the address"
                    ),
                )
                .with_source(e.into())
            } else {
                Error::from_errno(e, &format!("listening for takeovers at {address}"))
            }
        })?;
        let waker = sys::waker().map_err(|e| Error::from_errno(e, "creating an eventfd"))?;
        let handed_over = sys::waker().map_err(|e| Error::from_errno(e, "creating an eventfd"))?;
        let (names, fds): (Vec<String>, Vec<OwnedFd>) = listeners.into_iter().unzip();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let shared = Arc::new(Shared {
            upgrade,
            pid: rt.pid,
            names,
            index,
            fds,
            state: Mutex::new(State::Serving),
            changed: Condvar::new(),
            handed_over,
            sessions: AtomicUsize::new(0),
        });
        let thread = {
            let shared = shared.clone();
            let waker = sys::dup_cloexec(waker.as_fd())
                .map_err(|e| Error::from_errno(e, "duplicating an eventfd"))?;
            std::thread::Builder::new()
                .name("sockdup-upgrade".into())
                .spawn(move || accept_loop(&shared, &listener, &waker))
                .map_err(|e| Error::from_errno(e, "starting the takeover thread"))?
        };
        tracing::debug!(%address, names = ?shared.names, "published listeners");
        Ok(Self {
            shared,
            address,
            waker,
            thread: Some(thread),
        })
    }

    /// The published listener called `name`, to accept on (clone it with
    /// `try_clone_to_owned` for another thread).
    pub fn listener(&self, name: &str) -> Option<BorrowedFd<'_>> {
        let &i = self.shared.index.get(name)?;
        Some(self.shared.fds[i].as_fd())
    }

    /// Every published listener with its name, in the order published.
    pub fn listeners(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.shared
            .names
            .iter()
            .map(String::as_str)
            .zip(self.shared.fds.iter().map(AsFd::as_fd))
    }

    /// The pid file this server's pid is in.
    pub fn pid_file(&self) -> &std::path::Path {
        self.shared.upgrade.pid_file()
    }

    /// Where this process answers takeovers.
    pub fn control_address(&self) -> &InboxAddress {
        &self.address
    }

    /// The completed takeover, if one happened.
    pub fn handed_over(&self) -> Option<Handover> {
        match &*lock(&self.shared.state) {
            State::HandedOver(h) => Some(h.clone()),
            _ => None,
        }
    }

    /// A descriptor that polls readable once a successor has taken over, and stays readable:
    /// for event loops (`poll`, `epoll`, an async runtime) that wait on other things too and
    /// cannot block in [`wait`](Self::wait). Do not read from it; then call
    /// [`handed_over`](Self::handed_over).
    pub fn handover_fd(&self) -> BorrowedFd<'_> {
        self.shared.handed_over.as_fd()
    }

    /// Blocks until a successor has taken over. Then this process should stop accepting on
    /// the listeners it handed over, finish its connections, and exit.
    pub fn wait(&self) -> Handover {
        let mut state = lock(&self.shared.state);
        loop {
            if let State::HandedOver(h) = &*state {
                return h.clone();
            }
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// As [`wait`](Self::wait), giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Handover> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        loop {
            if let State::HandedOver(h) = &*state {
                return Some(h.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        let _ = sys::wake(self.waker.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let InboxAddress::Path(p) = &self.address {
            let _ = std::fs::remove_file(p);
        }
        if !matches!(*lock(&self.shared.state), State::HandedOver(_)) {
            self.shared.upgrade.remove_pid_file_of(self.shared.pid);
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &OwnedFd, waker: &OwnedFd) {
    loop {
        match sys::poll_readable(&[listener.as_fd(), waker.as_fd()]) {
            Ok(ready) if ready[1] => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "polling the takeover control socket; no more takeovers");
                return;
            }
        }
        let fd = match sys::accept(listener.as_fd()) {
            Ok(Some(fd)) => fd,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a takeover connection");
                continue;
            }
        };
        let stream = UnixStream::from(fd);
        if shared.sessions.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
            shared.sessions.fetch_sub(1, Ordering::SeqCst);
            let refusal = Error::new(
                ErrorKind::TakeoverInProgress,
                "too many takeover connections at once: try again",
            );
            let _ = Conn::new(stream).send(&refusal_of(&refusal), "refusing a takeover");
            continue;
        }
        let in_session = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("sockdup-takeover".into())
            .spawn(move || {
                session(&in_session, stream);
                in_session.sessions.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            // The session never ran: its place is free again.
            shared.sessions.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "starting a takeover session");
        }
    }
}

fn refusal_of(e: &Error) -> ToNew {
    ToNew::Refused(Refusal::of(e))
}

/// Abandons the offer to `pid` unless it completed, whatever way the session ends.
struct Offer<'a> {
    shared: &'a Shared,
    pid: u32,
    names: Vec<String>,
}

impl Drop for Offer<'_> {
    fn drop(&mut self) {
        lock(&self.shared.state).abandon(self.pid);
        self.shared.changed.notify_all();
    }
}

/// One takeover attempt, from the `take` line to `done`, `aborted` or a refusal: a refusal
/// (of a malformed line too) is sent as an `error` line, and ends the session; the listeners
/// stay with this process.
fn session(shared: &Shared, stream: UnixStream) {
    let mut conn = Conn::new(stream);
    let outcome = admit(shared, &conn)
        .and_then(|pid| offer(shared, &mut conn, pid))
        .and_then(|offer| conclude(&mut conn, offer));
    if let Err(e) = outcome {
        tracing::info!(code = e.code(), kind = %e.kind(), error = %e, "takeover refused");
        let _ = conn.send(&refusal_of(&e), "refusing a takeover");
    }
}

/// Configures a takeover connection and checks who is at the other end: the pid of the new
/// process, if its user may take over.
fn admit(shared: &Shared, conn: &Conn) -> Result<u32, Error> {
    let stream = conn.stream();
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(shared.upgrade.timeout)))
        .and_then(|()| stream.set_write_timeout(Some(shared.upgrade.timeout)))
        .map_err(|e| Error::from_errno(e, "configuring a takeover connection"))?;
    let (pid, uid) = crate::transport::peer_pid_uid(stream.as_fd(), "a takeover connection")?;
    let own_uid = sys::getuid();
    if !Allow::SameUser.permits(own_uid, uid) {
        return Err(Error::new(
            ErrorKind::TakeoverNotPermitted,
            format!(
                "process {pid} runs as uid {uid}; only uid {own_uid} (this server's user) or root may take over"
            ),
        ));
    }
    Ok(pid)
}

/// Reads the `take` line and offers the listeners it names to `pid`: duplicates for it, one
/// `listener` line each, then `offered`.
fn offer<'a>(shared: &'a Shared, conn: &mut Conn, pid: u32) -> Result<Offer<'a>, Error> {
    let peer = format!("the new process {pid}");
    let ToOld::Take(names) = conn.recv::<ToOld>(&peer, shared.upgrade.timeout)? else {
        return Err(Error::new(
            ErrorKind::ProtocolViolation,
            "a takeover starts with `take`: nothing to be ready for or abort",
        ));
    };
    check_names(names.iter().map(String::as_str))?;
    let picked = names
        .iter()
        .map(|n| {
            shared.index.get(n).copied().ok_or_else(|| {
                Error::new(
                    ErrorKind::UnknownListener,
                    format!(
                        "this server has no listener named {n:?}; it has {}",
                        shared.names.join(", ")
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    lock(&shared.state).begin(pid)?;
    let offer = Offer { shared, pid, names };
    let fds: Vec<BorrowedFd<'_>> = picked.iter().map(|&i| shared.fds[i].as_fd()).collect();
    let records = crate::duplicate_sockets(&fds, pid)?;
    let mut out = String::new();
    for (name, record) in offer.names.iter().zip(records) {
        ToNew::Listener(name.clone(), record).encode_into(&mut out);
    }
    ToNew::Offered.encode_into(&mut out);
    conn.send_raw(&out, "sending the records")?;
    tracing::debug!(pid, names = ?offer.names, "offered listeners");
    Ok(offer)
}

/// Waits for the new process's `ready` (hand over) or `abort` (keep serving).
fn conclude(conn: &mut Conn, offer: Offer<'_>) -> Result<(), Error> {
    let (shared, pid) = (offer.shared, offer.pid);
    let peer = format!("the new process {pid}");
    match conn.recv::<ToOld>(&peer, shared.upgrade.timeout) {
        Ok(ToOld::Ready) => {
            shared.upgrade.write_pid_file(pid)?;
            lock(&shared.state).finish(pid, offer.names.clone());
            shared.changed.notify_all();
            let _ = sys::wake(shared.handed_over.as_fd());
            let _ = conn.send(&ToNew::Done, "confirming the handover");
            tracing::info!(pid, names = ?offer.names, "handed listeners over");
            Ok(())
        }
        Ok(ToOld::Abort) => {
            // Serving as before by the time the new process hears it, so it (or another)
            // can start the next takeover at once.
            drop(offer);
            let _ = conn.send(&ToNew::Aborted, "confirming the abort");
            tracing::info!(pid, "takeover aborted by the new process; still serving");
            Ok(())
        }
        Ok(ToOld::Take(_)) => Err(Error::new(
            ErrorKind::ProtocolViolation,
            "a second `take` in one takeover",
        )),
        Err(e) if matches!(e.kind(), ErrorKind::PeerClosed | ErrorKind::PeerTimedOut) => {
            tracing::warn!(pid, error = %e, "the new process left or hung before it was ready; still serving");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_takeover_at_a_time() {
        let mut s = State::Serving;
        s.begin(10).unwrap();
        let e = s.begin(11).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TakeoverInProgress);
        assert_eq!(e.code(), 10036);
        assert!(e.message().contains("process 10"), "{e}");
        s.abandon(11);
        assert_eq!(
            s,
            State::Offering(10),
            "only the offer's own pid abandons it"
        );
        s.abandon(10);
        assert_eq!(s, State::Serving);
        s.begin(11).unwrap();
        s.finish(12, vec![]);
        assert_eq!(
            s,
            State::Offering(11),
            "only the offer's own pid finishes it"
        );
        s.finish(11, vec!["web".into()]);
        assert_eq!(
            s,
            State::HandedOver(Handover {
                pid: 11,
                names: vec!["web".into()]
            })
        );
        s.abandon(11);
        let e = s.begin(12).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyHandedOver);
        assert_eq!(e.code(), 10022);
        assert!(e.message().contains("process 11"), "{e}");
    }
}
