//! The running server's side: its published listeners, the control socket, and one session
//! per takeover attempt.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sockdup_core::allow::Allow;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::line::LineMessage;
use sockdup_core::proto::upgrade::{Refusal, ToNew, ToOld};
use sockdup_core::wire::ProtocolInfo;

use super::proto::{Conn, Polled};
use super::{Upgrade, control_address};
use crate::startup::Runtime;
use crate::sync::lock;
use crate::sys::{self, InboxAddress};

/// The most takeover sessions (connections that sent `take`) served at once; more are refused
/// at once.
const MAX_SESSIONS: usize = 8;

/// The most control connections waiting for their `take` line at once: beyond it, the one that
/// has waited longest is refused (`takeover-in-progress`) and closed, so that silent or slow
/// peers hold at most this many of the server's descriptors, and a takeover that sends its
/// line at once always gets in.
pub(crate) const MAX_WAITING: usize = 32;

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

    /// The process `pid` took over and then died before this one stopped: serving again.
    pub(crate) fn take_back(&mut self, pid: u32) {
        if matches!(self, Self::HandedOver(h) if h.pid == pid) {
            *self = Self::Serving;
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
    /// Each listener's base catalog entry, read once when it is published: a takeover of 1000
    /// listeners then asks the kernel nothing about them (three `getsockopt` each).
    entries: Vec<ProtocolInfo>,
    state: Mutex<State>,
    changed: Condvar,
    /// An eventfd made readable (and left so) by the handover, for event loops.
    handed_over: OwnedFd,
    /// An eventfd woken (and left so) when the [`Published`] drops: the control thread and
    /// the threads watching a successor stop.
    stop: OwnedFd,
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
        let stop = sys::waker().map_err(|e| Error::from_errno(e, "creating an eventfd"))?;
        let handed_over = sys::waker().map_err(|e| Error::from_errno(e, "creating an eventfd"))?;
        let (names, fds): (Vec<String>, Vec<OwnedFd>) = listeners.into_iter().unzip();
        let entries = fds
            .iter()
            .zip(&names)
            .map(|(fd, name)| {
                crate::transfer::entry_for(fd.as_fd())
                    .map_err(|e| e.context(format!("publishing listener {name:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
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
            entries,
            state: Mutex::new(State::Serving),
            changed: Condvar::new(),
            handed_over,
            stop,
            sessions: AtomicUsize::new(0),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sockdup-upgrade".into())
                .spawn(move || accept_loop(&shared, &listener))
                .map_err(|e| Error::from_errno(e, "starting the takeover thread"))?
        };
        tracing::debug!(%address, names = ?shared.names, "published listeners");
        Ok(Self {
            shared,
            address,
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

    /// A descriptor that polls readable once a successor has taken over, and stays readable
    /// (unless the successor dies and this process takes the listeners back, see
    /// [`wait`](Self::wait)):
    /// for event loops (`poll`, `epoll`, an async runtime) that wait on other things too and
    /// cannot block in [`wait`](Self::wait). Do not read from it; then call
    /// [`handed_over`](Self::handed_over).
    pub fn handover_fd(&self) -> BorrowedFd<'_> {
        self.shared.handed_over.as_fd()
    }

    /// Blocks until a successor has taken over. Then this process should stop accepting on
    /// the listeners it handed over, finish its connections, and exit.
    ///
    /// If the successor dies while this value still lives, and the pid file still names it
    /// (it neither handed over in turn nor stopped in order), this process takes the listeners
    /// back: the pid file names it again, it answers takeovers again, and
    /// [`handed_over`](Self::handed_over) is `None` again. Connections that arrived meanwhile
    /// wait in the listeners' queues; a process that keeps accepting until it drops this value
    /// loses none.
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
        let _ = sys::wake(self.shared.stop.as_fd());
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

/// A control connection that has not yet sent its `take` line, served by the control thread
/// without blocking.
struct Waiting {
    conn: Conn,
    /// When it must have sent its whole `take` line.
    deadline: Instant,
}

/// The control thread: accepts takeover connections, refuses other users' at the door, reads
/// each connection's first line without blocking (so a silent or slow peer holds up nobody),
/// and starts a session thread for each `take`. Returns when `shared.stop` is woken.
fn accept_loop(shared: &Arc<Shared>, listener: &OwnedFd) {
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let workers = Workers::new();
    loop {
        // Deadlines are set in order of arrival: the oldest is the next to expire.
        let wait = waiting
            .front()
            .map(|w| w.deadline.saturating_duration_since(Instant::now()));
        let mut fds = vec![listener.as_fd(), shared.stop.as_fd()];
        fds.extend(waiting.iter().map(|w| w.conn.stream().as_fd()));
        let ready = match sys::poll_readable_within(&fds, wait) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(error = %e, "polling the takeover control socket; no more takeovers");
                return;
            }
        };
        if ready[1] {
            return;
        }
        // Newest first, so that removing one leaves the indices still to visit valid.
        for i in (0..waiting.len()).rev() {
            if ready[2 + i] {
                read_first_line(shared, &workers, &mut waiting, i);
            }
        }
        let now = Instant::now();
        while waiting.front().is_some_and(|w| w.deadline <= now) {
            if let Some(w) = waiting.pop_front() {
                let e = Error::new(
                    ErrorKind::PeerTimedOut,
                    format!(
                        "no whole `take` line arrived within {:?} of connecting: a takeover sends it at once",
                        shared.upgrade.timeout
                    ),
                );
                refuse(&w.conn, &e);
            }
        }
        if ready[0] {
            accept_waiting(shared, listener, &mut waiting);
        }
    }
}

/// Accepts every connection waiting at the control socket (at most [`MAX_WAITING`] in one
/// round, so the connections already waiting are served too): another user's is refused and
/// closed at once; the others wait for their `take` line. Beyond [`MAX_WAITING`] waiting
/// connections, the one that has waited longest is refused and closed.
fn accept_waiting(shared: &Shared, listener: &OwnedFd, waiting: &mut VecDeque<Waiting>) {
    for _ in 0..MAX_WAITING {
        let fd = match sys::accept(listener.as_fd()) {
            Ok(Some(fd)) => fd,
            Ok(None) => return,
            Err(e) => {
                // Out of descriptors, say: the connection waits in the backlog; try again
                // when the next one ends rather than spin.
                tracing::warn!(error = %e, "accepting a takeover connection");
                return;
            }
        };
        let conn = Conn::new(UnixStream::from(fd));
        if let Err(e) = admit(&conn) {
            tracing::info!(code = e.code(), kind = %e.kind(), error = %e, "takeover refused at the door");
            refuse(&conn, &e);
            continue;
        }
        if waiting.len() >= MAX_WAITING
            && let Some(oldest) = waiting.pop_front()
        {
            let e = Error::new(
                ErrorKind::TakeoverInProgress,
                format!(
                    "{MAX_WAITING} connections to this server's control socket were waiting for their `take` line \
                     at once; this one waited longest and is closed: a takeover sends `take` at once (try again)"
                ),
            );
            refuse(&oldest.conn, &e);
        }
        waiting.push_back(Waiting {
            conn,
            deadline: Instant::now() + shared.upgrade.timeout,
        });
    }
}

/// Reads what waiting connection `i` sent: its `take` line starts a session; anything else is
/// refused at once and closes it; a connection closed by its peer is dropped.
fn read_first_line(
    shared: &Arc<Shared>,
    workers: &Workers,
    waiting: &mut VecDeque<Waiting>,
    i: usize,
) {
    let outcome = waiting[i].conn.poll_message::<ToOld>();
    if matches!(outcome, Ok(Polled::Pending)) {
        return;
    }
    let Some(Waiting { conn, .. }) = waiting.remove(i) else {
        return;
    };
    match outcome {
        Ok(Polled::Message(ToOld::Take(names))) => start_session(shared, workers, conn, names),
        Ok(Polled::Message(_)) => refuse(
            &conn,
            &Error::new(
                ErrorKind::ProtocolViolation,
                "a takeover starts with `take`: nothing to be ready for or abort",
            ),
        ),
        Ok(Polled::Pending | Polled::Closed) => {}
        Err(e) => {
            tracing::info!(code = e.code(), kind = %e.kind(), error = %e, "takeover refused");
            refuse(&conn, &e);
        }
    }
}

/// A session for the session threads: the server, the connection, the names asked for.
type Job = (Arc<Shared>, Conn, Vec<String>);

/// The session threads, kept for the next takeover: starting a thread (its stack mapped, and
/// unmapped when it ends) costs more than a small takeover itself, so a thread that finished a
/// session waits for the next one. They end when the control thread does (the channel closes
/// as this value drops); one watching a successor ends when its watch does.
struct Workers {
    jobs: mpsc::Sender<Job>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Threads waiting for a session (or about to).
    idle: Arc<AtomicUsize>,
}

impl Workers {
    fn new() -> Self {
        let (jobs, queue) = mpsc::channel();
        Self {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            idle: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `job` on a waiting thread, or on a new one if none waits.
    fn run(&self, job: Job) -> std::io::Result<()> {
        let claimed = self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if claimed {
            // A waiting thread takes it: every claim is matched by one thread receiving.
            return self
                .jobs
                .send(job)
                .map_err(|_| std::io::Error::other("the session threads are gone"));
        }
        let (queue, idle) = (self.queue.clone(), self.idle.clone());
        std::thread::Builder::new()
            .name("sockdup-takeover".into())
            .spawn(move || {
                let mut next = Some(job);
                while let Some((shared, conn, names)) = next.take() {
                    session(&shared, conn, names);
                    drop(shared);
                    idle.fetch_add(1, Ordering::SeqCst);
                    next = lock(&queue).recv().ok();
                }
            })
            .map(drop)
    }
}

/// Starts a session for a connection that asked for `names`, unless [`MAX_SESSIONS`] run
/// already.
fn start_session(shared: &Arc<Shared>, workers: &Workers, conn: Conn, names: Vec<String>) {
    if shared.sessions.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
        shared.sessions.fetch_sub(1, Ordering::SeqCst);
        let e = Error::new(
            ErrorKind::TakeoverInProgress,
            "too many takeover connections at once: try again",
        );
        refuse(&conn, &e);
        return;
    }
    if let Err(e) = workers.run((shared.clone(), conn, names)) {
        // The session never ran: its place is free again.
        shared.sessions.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!(error = %e, "starting a takeover session");
    }
}

/// Sends `e` as an `error` line; the caller then closes the connection.
fn refuse(conn: &Conn, e: &Error) {
    let _ = conn.send(&refusal_of(e), "refusing a takeover");
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

/// One takeover attempt, from the `take` line (read by the control thread) to `done`,
/// `aborted` or a refusal: a refusal (of a malformed line too) is sent as an `error` line, and
/// ends the session; the listeners stay with this process. After a handover the thread
/// watches the successor ([`watch_successor`]).
fn session(shared: &Arc<Shared>, mut conn: Conn, names: Vec<String>) {
    let outcome = configure(shared, &conn).and_then(|(pid, pidfd)| {
        let offer = offer(shared, &mut conn, pid, names)?;
        Ok((conclude(&mut conn, offer)?, pid, pidfd))
    });
    // The connection closes here: a session slot is free again.
    let refusal = outcome.as_ref().err().map(|e| {
        tracing::info!(code = e.code(), kind = %e.kind(), error = %e, "takeover refused");
        refusal_of(e)
    });
    if let Some(refusal) = refusal {
        let _ = conn.send(&refusal, "refusing a takeover");
    }
    drop(conn);
    shared.sessions.fetch_sub(1, Ordering::SeqCst);
    if let Ok((true, pid, pidfd)) = outcome {
        watch_successor(shared, pid, &pidfd);
    }
}

/// Checks who is at the other end of a connection just accepted: its pid, if its user may
/// take over.
fn admit(conn: &Conn) -> Result<u32, Error> {
    let (pid, uid) =
        crate::transport::peer_pid_uid(conn.stream().as_fd(), "a takeover connection")?;
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

/// Makes a session's connection blocking with the step timeout, and finds the new process:
/// its pid and a pidfd of it (to notice if it dies after taking over).
fn configure(shared: &Shared, conn: &Conn) -> Result<(u32, OwnedFd), Error> {
    let stream = conn.stream();
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(shared.upgrade.timeout)))
        .map_err(|e| Error::from_errno(e, "configuring a takeover connection"))?;
    let pid = admit(conn)?;
    let pidfd = sys::pidfd_open(pid).map_err(|_| {
        Error::new(
            ErrorKind::PeerClosed,
            format!("process {pid} exited right after asking to take over"),
        )
    })?;
    Ok((pid, pidfd))
}

/// Offers the listeners `names` (checked and distinct: [`ToOld::parse`] refuses any other
/// `take`) to `pid`: duplicates for it, one `listeners` line per run, then `offered`.
fn offer<'a>(
    shared: &'a Shared,
    conn: &mut Conn,
    pid: u32,
    names: Vec<String>,
) -> Result<Offer<'a>, Error> {
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
    let (target, nonce, tickets) = crate::transfer::push(&*Runtime::current()?, &fds, pid)?;
    // One line per run of listeners of one catalog entry with consecutive tickets: a record
    // made once per run, not per listener.
    let mut out = String::with_capacity(256 * (1 + picked.len() / 64));
    let mut start = 0;
    for end in 1..=picked.len() {
        let same_run = end < picked.len()
            && shared.entries[picked[end]].catalog_entry_id
                == shared.entries[picked[start]].catalog_entry_id
            && tickets[end] == tickets[end - 1].wrapping_add(1);
        if !same_run {
            let mut record = shared.entries[picked[start]].clone();
            record.service_flags3 = target;
            record.service_flags4 = nonce;
            record.provider_reserved = tickets[start];
            ToNew::Listeners((end - start) as u32, record).encode_into(&mut out);
            start = end;
        }
    }
    ToNew::Offered.encode_into(&mut out);
    conn.send_raw(&out, "sending the records")?;
    tracing::debug!(pid, names = ?offer.names, "offered listeners");
    Ok(offer)
}

/// Waits for the new process's `ready` (hand over) or `abort` (keep serving); whether it
/// handed over.
fn conclude(conn: &mut Conn, offer: Offer<'_>) -> Result<bool, Error> {
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
            Ok(true)
        }
        Ok(ToOld::Abort) => {
            // Serving as before by the time the new process hears it, so it (or another)
            // can start the next takeover at once.
            drop(offer);
            let _ = conn.send(&ToNew::Aborted, "confirming the abort");
            tracing::info!(pid, "takeover aborted by the new process; still serving");
            Ok(false)
        }
        Ok(ToOld::Take(_)) => Err(Error::new(
            ErrorKind::ProtocolViolation,
            "a second `take` in one takeover",
        )),
        Err(e) if matches!(e.kind(), ErrorKind::PeerClosed | ErrorKind::PeerTimedOut) => {
            tracing::warn!(pid, error = %e, "the new process left or hung before it was ready; still serving");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// After a handover to `pid`: if that process dies while this one still holds the listeners
/// (this [`Published`] lives) and the pid file still names it (it handed over to nobody, and
/// did not stop in order), this process takes the listeners back: the pid file names it
/// again and it answers takeovers. Nothing was lost meanwhile: connections waited in the
/// listeners' queues, which this process holds.
fn watch_successor(shared: &Shared, pid: u32, pidfd: &OwnedFd) {
    let died = match sys::poll_readable(&[pidfd.as_fd(), shared.stop.as_fd()]) {
        Ok(ready) => ready[0] && !ready[1],
        Err(e) => {
            tracing::warn!(pid, error = %e, "watching the process that took over");
            return;
        }
    };
    if !died {
        return;
    }
    let mut state = lock(&shared.state);
    if !matches!(&*state, State::HandedOver(h) if h.pid == pid) {
        return;
    }
    if !matches!(shared.upgrade.read_pid_file(), Ok(Some(p)) if p == pid) {
        tracing::info!(
            pid,
            "the process that took over exited and no longer holds the pid file; not taking back"
        );
        return;
    }
    if let Err(e) = shared.upgrade.write_pid_file(shared.pid) {
        tracing::error!(pid, error = %e, "the process that took over died; could not take the pid file back");
        return;
    }
    state.take_back(pid);
    sys::unwake(shared.handed_over.as_fd());
    drop(state);
    shared.changed.notify_all();
    tracing::warn!(
        pid,
        "the process that took over died before this one stopped: this one serves again"
    );
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
        s.take_back(12);
        assert!(
            matches!(&s, State::HandedOver(h) if h.pid == 11),
            "only the successor's own death takes the listeners back"
        );
        let mut back = s.clone();
        back.take_back(11);
        assert_eq!(back, State::Serving);
        back.begin(13).unwrap();
        let e = s.begin(12).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyHandedOver);
        assert_eq!(e.code(), 10022);
        assert!(e.message().contains("process 11"), "{e}");
    }
}
