//! The machinery behind `WSPEventSelect`/`WSPAsyncSelect`: this process's registrations, the
//! thread that watches their sockets (`epoll`), and the rule that a socket has one registration
//! across processes.
//!
//! # One registration per socket, across processes
//!
//! Every descriptor of a duplicated socket, in every process, refers to one open file
//! description, whose *owner* slot (`F_SETOWN`/`F_GETOWN`) every process reads and writes. A
//! registration writes its process's pid there. A registering process takes the socket's
//! record lock (`F_SETLKW`, per process: it excludes other processes), reads the slot, and if
//! another process's pid is there, connects to that process's cancellation socket (abstract
//! `@sockdup/v1/events/PID`, checked with `SO_PEERCRED`: the listener must be that pid), sends
//! the socket's `SO_COOKIE`, and waits for the acknowledgement, sent once that process has
//! dropped its registration under its lock. A process that has exited has no listener any
//! more: the connection is refused and nothing is waited for. Then it writes its own pid and
//! releases the lock. The watcher thread records and signals only under the same lock, and
//! only for a registration still in the table: once the acknowledgement is sent, nothing more
//! is recorded or signalled for the cancelled registration.
//!
//! # The watcher thread
//!
//! It waits on the registrations' sockets (one-shot) and records and signals what they hold
//! ready. A thread waiting on an event waits on the same set and does that work itself
//! ([`Assist`]), so the kernel wakes it directly. The watcher thread is `SCHED_BATCH`: the same
//! share of the CPU as any thread, but its wake-up does not preempt the thread running on its CPU.
//! Data often arrives while that thread runs and is about to wait on the event (it just sent a
//! request): it then records the readiness itself, instead of being switched out for the watcher
//! and back (two context switches per event). On an idle CPU the watcher runs at once; on a busy
//! one, when the running thread blocks or its slice ends.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::io::Errno;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::sockopt::{
    FD_ACCEPT, FD_ALL_EVENTS, FD_CLOSE, FD_CONNECT, FD_MAX_EVENTS, FD_OOB, FD_READ, FD_WRITE,
};

use super::Handle;
use super::events::{Assist, Event, EventSink, NetworkEvents, wsa_code};
use crate::sync::lock;
use crate::sys;
use crate::sys::events::{ERR, HUP, IN, ONESHOT, OUT, PRI, RDHUP, Shape};

/// How long a registering process waits for another process to acknowledge a cancellation.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many cancellation connections are served at once; more are closed at once.
const MAX_CONNS: usize = 64;

const TOKEN_WAKER: u64 = 0;
const TOKEN_LISTENER: u64 = 1;
const TOKEN_CONTROL: u64 = 2;
const FIRST_REG_TOKEN: u64 = 16;
const CONN_BIT: u64 = 1 << 63;

/// This process's registrations and their watcher thread (one per run, started by the first
/// registration). Dropping it stops the thread and closes every descriptor it holds.
#[derive(Debug)]
pub(crate) struct Watcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Serializes registrations made by this process (the record lock does not exclude
    /// threads of one process).
    registering: Mutex<()>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The control set: the waker, the cancellation socket and its connections (nested in
    /// `sockets`).
    epoll: OwnedFd,
    /// The set the watcher thread waits on: the registrations' sockets (one-shot) and the
    /// control set. A thread waiting on an event waits on it too and records what it finds
    /// itself ([`Assist`]) instead of waiting for the watcher thread to wake it.
    sockets: OwnedFd,
    waker: OwnedFd,
    listener: OwnedFd,
    stop: AtomicBool,
    /// Whether the watcher thread is recording and signalling what it took from `sockets`:
    /// a thread that finds the readiness it looked for taken waits for it without sleeping
    /// ([`Assist::recording`]).
    recording: AtomicBool,
    /// How many registrations exist: the receive path's test for "nothing to do".
    count: AtomicUsize,
    /// Held by the watcher thread while it signals what it recorded, after it let go of
    /// `state` (so that the thread it wakes, which enumerates under `state`, runs without
    /// waiting for it); a cancellation takes it once after removing a registration, so that
    /// no signal of the removed registration is still on its way when the call returns.
    signalling: Mutex<()>,
    pid: u32,
    uid: u32,
}

#[derive(Debug, Default)]
struct State {
    /// Registrations by socket (`SO_COOKIE`): one per socket in this process.
    regs: HashMap<u64, Reg>,
    by_token: HashMap<u64, u64>,
    by_handle: HashMap<Handle, u64>,
    conns: HashMap<u64, OwnedFd>,
    next_token: u64,
}

/// One registration.
#[derive(Debug)]
struct Reg {
    token: u64,
    /// The base handle that registered (closing it ends the registration).
    handle: Handle,
    /// The watcher's own descriptor of the socket, in the epoll set while `registered`.
    fd: OwnedFd,
    wanted: u32,
    sink: EventSink,
    record: u32,
    errors: [i32; FD_MAX_EVENTS],
    /// Events that may be recorded now (the re-enabling rules clear and set these).
    armed: u32,
    shape: Shape,
    closed: bool,
    hup: bool,
    /// The epoll flags armed in the kernel now. The descriptor is in the set one-shot: an
    /// event disarms it there (`interest` becomes 0 without a system call), so firing costs no
    /// `epoll_ctl`, and re-enabling one.
    interest: u32,
    /// Whether `fd` is in the epoll set (armed or not).
    registered: bool,
    /// Events fired and not yet signalled to the sink ([`Reg::flush`], or the watcher thread
    /// after it lets go of the state).
    pending: Vec<(u32, i32)>,
}

fn bit_index(bit: u32) -> usize {
    bit.trailing_zeros() as usize
}

impl Reg {
    fn fire(&mut self, bit: u32, error: i32) {
        self.armed &= !bit;
        if self.wanted & bit == 0 {
            return;
        }
        self.record |= bit;
        self.errors[bit_index(bit)] = error;
        self.pending.push((bit, error));
    }

    /// Signals what was fired, now (the caller holds the state: a registering or re-shaping
    /// call, which returns after its own signals).
    fn flush(&mut self) {
        for (bit, error) in self.pending.drain(..) {
            self.sink.signal(bit, error);
        }
    }

    fn armed(&self, bit: u32) -> bool {
        self.armed & bit != 0
    }

    /// Applies the rules to readiness `rev` (epoll or poll flags).
    fn evaluate(&mut self, rev: u32) {
        if self.closed {
            return;
        }
        match self.shape {
            Shape::Idle => {}
            Shape::Listening => {
                if rev & IN != 0 && self.armed(FD_ACCEPT) {
                    self.fire(FD_ACCEPT, 0);
                }
            }
            Shape::Connecting => {
                if rev & (OUT | ERR | HUP) == 0 {
                    return;
                }
                let err = sys::events::take_error(self.fd.as_fd());
                if err == 0 && rev & OUT != 0 && rev & HUP == 0 {
                    self.shape = Shape::Connected;
                    self.fire(FD_CONNECT, 0);
                    self.evaluate(rev & !(IN | PRI | RDHUP));
                } else {
                    let err = if err == 0 {
                        Errno::CONNREFUSED.raw_os_error()
                    } else {
                        err
                    };
                    self.shape = Shape::Idle;
                    self.fire(FD_CONNECT, wsa_code(err));
                }
            }
            Shape::Connected => {
                if rev & ERR != 0 {
                    let err = sys::events::take_error(self.fd.as_fd());
                    if err != 0 {
                        self.closed = true;
                        self.fire(FD_CLOSE, wsa_code(err));
                        return;
                    }
                }
                if rev & PRI != 0 && self.armed(FD_OOB) {
                    self.fire(FD_OOB, 0);
                }
                if rev & (IN | RDHUP | HUP) != 0 && self.armed(FD_READ) {
                    let eof = rev & (RDHUP | HUP) != 0;
                    if !eof || sys::events::readable_bytes(self.fd.as_fd()) > 0 {
                        self.fire(FD_READ, 0);
                    } else {
                        self.closed = true;
                        self.armed = 0;
                        self.fire(FD_CLOSE, 0);
                        return;
                    }
                }
                if rev & HUP != 0 {
                    self.hup = true;
                }
                if rev & OUT != 0 && self.armed(FD_WRITE) {
                    self.fire(FD_WRITE, 0);
                }
            }
            Shape::Datagram => {
                if rev & ERR != 0 {
                    let _ = sys::events::take_error(self.fd.as_fd());
                }
                if rev & IN != 0 && self.armed(FD_READ) {
                    self.fire(FD_READ, 0);
                }
                if rev & OUT != 0 && self.armed(FD_WRITE) {
                    self.fire(FD_WRITE, 0);
                }
            }
        }
    }

    /// The epoll flags this registration needs now (0: out of the set).
    fn interest(&self) -> u32 {
        if self.closed {
            return 0;
        }
        let mut f = 0;
        match self.shape {
            Shape::Idle => {}
            Shape::Listening => {
                if self.armed(FD_ACCEPT) && self.wanted & FD_ACCEPT != 0 {
                    f |= IN;
                }
            }
            Shape::Connecting => f |= OUT,
            Shape::Connected | Shape::Datagram => {
                if self.armed(FD_READ) && self.wanted & (FD_READ | FD_CLOSE) != 0 {
                    f |= IN | RDHUP;
                }
                if self.armed(FD_OOB) && self.wanted & FD_OOB != 0 {
                    f |= PRI;
                }
                if self.armed(FD_WRITE) && self.wanted & FD_WRITE != 0 {
                    f |= OUT;
                }
                // A hung-up socket polls HUP whatever is asked: parked until a receive.
                if self.hup && !self.armed(FD_READ) {
                    f = 0;
                }
            }
        }
        f
    }

    fn sync(&mut self, ep: BorrowedFd<'_>) {
        let want = self.interest();
        if want == self.interest {
            return;
        }
        let fd = self.fd.as_fd();
        let r = if !self.registered {
            sys::events::epoll_add(ep, fd, self.token, want | ONESHOT)
        } else {
            // Flags 0 leave it in the set, disarmed.
            sys::events::epoll_modify(
                ep,
                fd,
                self.token,
                if want == 0 { 0 } else { want | ONESHOT },
            )
        };
        match r {
            Ok(()) => {
                self.interest = want;
                self.registered = true;
            }
            Err(e) => tracing::warn!(error = %e, "sockdup events: epoll_ctl failed"),
        }
    }
}

/// This process's record lock on a socket, released on drop.
struct SocketLock<'a>(BorrowedFd<'a>);

impl Drop for SocketLock<'_> {
    fn drop(&mut self) {
        let _ = sys::events::unlock(self.0);
    }
}

fn os(doing: &'static str) -> impl FnOnce(Errno) -> Error {
    move |e| Error::from_errno(e, doing)
}

impl Watcher {
    /// Starts the watcher: its epoll set, its cancellation socket, its thread.
    pub(crate) fn start() -> Result<Self, Error> {
        let pid = sys::getpid();
        let epoll = sys::events::epoll_new().map_err(os("creating the events epoll set"))?;
        let sockets = sys::events::epoll_new().map_err(os("creating the sockets' epoll set"))?;
        let waker = sys::waker().map_err(os("creating the events waker"))?;
        let listener = sys::events::listen_events(pid).map_err(|e| {
            Error::from_errno(
                e,
                &format!(
                    "listening for event-registration cancellations at {}",
                    sys::events::events_address(pid)
                ),
            )
        })?;
        sys::events::epoll_add(epoll.as_fd(), waker.as_fd(), TOKEN_WAKER, IN)
            .map_err(os("watching the events waker"))?;
        sys::events::epoll_add(epoll.as_fd(), listener.as_fd(), TOKEN_LISTENER, IN)
            .map_err(os("watching the cancellation socket"))?;
        sys::events::epoll_add(sockets.as_fd(), epoll.as_fd(), TOKEN_CONTROL, IN)
            .map_err(os("watching the control epoll set"))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_token: FIRST_REG_TOKEN,
                ..State::default()
            }),
            epoll,
            sockets,
            waker,
            listener,
            stop: AtomicBool::new(false),
            recording: AtomicBool::new(false),
            count: AtomicUsize::new(0),
            signalling: Mutex::new(()),
            pid,
            uid: sys::getuid(),
        });
        let run = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sockdup-events".into())
            .spawn(move || run.run())
            .map_err(|e| Error::from_errno(e, "starting the events thread"))?;
        Ok(Self {
            shared,
            thread: Some(thread),
            registering: Mutex::new(()),
        })
    }

    /// `WSPEventSelect`/`WSPAsyncSelect` on base handle `h` (descriptor `fd`): cancels the
    /// socket's registration wherever it is, then registers `events` (0: only cancels).
    pub(crate) fn select(
        &self,
        h: Handle,
        fd: BorrowedFd<'_>,
        events: u32,
        sink: &EventSink,
    ) -> Result<(), Error> {
        if events & !FD_ALL_EVENTS != 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "event mask {events:#x} has bits that are no network event ({:#x}): use FD_READ, FD_WRITE, FD_OOB, FD_ACCEPT, FD_CONNECT, FD_CLOSE",
                    events & !FD_ALL_EVENTS
                ),
            ));
        }
        let _one = lock(&self.registering);
        let cookie = sys::events::cookie(fd).map_err(os("reading the socket's cookie"))?;
        sys::socket::set_nonblocking(fd).map_err(os("making the socket non-blocking"))?;
        sys::events::lock(fd).map_err(os("locking the socket's registration"))?;
        let _locked = SocketLock(fd);
        let previous = sys::events::owner(fd).map_err(os("reading the socket's owner"))?;
        if previous != 0 && previous != self.shared.pid {
            cancel_remote(previous, cookie)?;
        }
        // The old registration's descriptor closes only after the record lock is released
        // (closing any descriptor of the socket would release this process's lock).
        let old;
        {
            let mut st = lock(&self.shared.state);
            old = self.shared.remove(&mut st, cookie);
            if events == 0 {
                if previous != 0 {
                    sys::events::set_owner(fd, 0).map_err(os("clearing the socket's owner"))?;
                }
                return Ok(());
            }
            let own = sys::dup_cloexec(fd).map_err(os("copying the socket's descriptor"))?;
            let shape = sys::events::shape(fd).map_err(os("reading the socket's state"))?;
            sys::events::set_owner(fd, self.shared.pid)
                .map_err(os("writing the socket's owner"))?;
            let token = st.next_token;
            st.next_token += 1;
            let mut reg = Reg {
                token,
                handle: h,
                fd: own,
                wanted: events,
                sink: sink.clone(),
                record: 0,
                errors: [0; FD_MAX_EVENTS],
                armed: FD_ALL_EVENTS,
                shape,
                closed: false,
                hup: false,
                interest: 0,
                registered: false,
                pending: Vec::new(),
            };
            if shape == Shape::Connected {
                reg.fire(FD_CONNECT, 0);
            }
            reg.armed |= FD_CONNECT;
            reg.evaluate(sys::events::poll_now(fd));
            reg.flush();
            reg.sync(self.shared.sockets.as_fd());
            st.by_token.insert(token, cookie);
            st.by_handle.insert(h, cookie);
            st.regs.insert(cookie, reg);
            self.shared.count.store(st.regs.len(), Ordering::Release);
        }
        if let EventSink::Event(e) = sink {
            let helper: Arc<dyn Assist> = self.shared.clone();
            e.assisted_by(&helper);
        }
        drop(_locked);
        drop(old);
        // No signal of the registration removed above is still on its way.
        drop(lock(&self.shared.signalling));
        Ok(())
    }

    /// `WSPEnumNetworkEvents`: takes the record of this process's registration of the socket
    /// (nothing if it has none), and resets `event`.
    pub(crate) fn enumerate(
        &self,
        h: Handle,
        fd: BorrowedFd<'_>,
        event: Option<&Event>,
    ) -> NetworkEvents {
        let mut out = NetworkEvents::default();
        let mut st = lock(&self.shared.state);
        if let Some(cookie) = self.shared.find(&st, h, fd) {
            if let Some(reg) = st.regs.get_mut(&cookie) {
                out.events = std::mem::take(&mut reg.record);
                out.errors = std::mem::take(&mut reg.errors);
            }
        }
        if let Some(e) = event {
            e.reset();
        }
        out
    }

    /// The registration a socket accepted from listener `h` inherits: its events and sink.
    pub(crate) fn registration(&self, h: Handle, fd: BorrowedFd<'_>) -> Option<(u32, EventSink)> {
        let st = lock(&self.shared.state);
        let cookie = self.shared.find(&st, h, fd)?;
        st.regs.get(&cookie).map(|r| (r.wanted, r.sink.clone()))
    }

    /// Re-enables `bits` of the socket's registration in this process, if any.
    pub(crate) fn rearm(&self, h: Handle, fd: BorrowedFd<'_>, bits: u32) {
        if self.shared.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut st = lock(&self.shared.state);
        let Some(cookie) = self.shared.find(&st, h, fd) else {
            return;
        };
        if let Some(reg) = st.regs.get_mut(&cookie) {
            if reg.armed & bits != bits {
                reg.armed |= bits;
                reg.sync(self.shared.sockets.as_fd());
            }
        }
    }

    /// A connect through the provider: `Ok` (connected), `EINPROGRESS`, or its failure.
    pub(crate) fn connected(&self, h: Handle, fd: BorrowedFd<'_>, result: Result<(), Errno>) {
        self.reshape(h, fd, |reg| match result {
            Ok(()) => {
                reg.shape = Shape::Connected;
                reg.fire(FD_CONNECT, 0);
                reg.evaluate(sys::events::poll_now(fd) & OUT);
            }
            Err(Errno::INPROGRESS | Errno::ALREADY) => reg.shape = Shape::Connecting,
            Err(e) => reg.fire(FD_CONNECT, wsa_code(e.raw_os_error())),
        });
    }

    /// A listen through the provider.
    pub(crate) fn listening(&self, h: Handle, fd: BorrowedFd<'_>) {
        self.reshape(h, fd, |reg| {
            reg.shape = Shape::Listening;
            reg.armed |= FD_ACCEPT;
            reg.evaluate(sys::events::poll_now(fd));
        });
    }

    fn reshape(&self, h: Handle, fd: BorrowedFd<'_>, f: impl FnOnce(&mut Reg)) {
        if self.shared.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut st = lock(&self.shared.state);
        let Some(cookie) = self.shared.find(&st, h, fd) else {
            return;
        };
        if let Some(reg) = st.regs.get_mut(&cookie) {
            reg.closed = false;
            reg.hup = false;
            f(reg);
            reg.flush();
            reg.sync(self.shared.sockets.as_fd());
        }
    }

    /// Base handle `h` is closing: the registration it made ends.
    pub(crate) fn forget(&self, h: Handle) {
        if self.shared.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let old = {
            let mut st = lock(&self.shared.state);
            match st.by_handle.get(&h).copied() {
                Some(cookie) => self.shared.remove(&mut st, cookie),
                None => None,
            }
        };
        drop(old);
        drop(lock(&self.shared.signalling));
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = sys::wake(self.shared.waker.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut st = lock(&self.shared.state);
        st.regs.clear();
        st.conns.clear();
        st.by_token.clear();
        st.by_handle.clear();
    }
}

impl Shared {
    /// The socket (cookie) of this process's registration that handle `h` (descriptor `fd`)
    /// refers to: the registering handle, or any descriptor of the same socket.
    fn find(&self, st: &State, h: Handle, fd: BorrowedFd<'_>) -> Option<u64> {
        if st.regs.is_empty() {
            return None;
        }
        if let Some(c) = st.by_handle.get(&h) {
            return Some(*c);
        }
        let cookie = sys::events::cookie(fd).ok()?;
        st.regs.contains_key(&cookie).then_some(cookie)
    }

    /// Takes registration `cookie` out of the table and the epoll set; its descriptor is
    /// returned for the caller to drop when it may.
    fn remove(&self, st: &mut MutexGuard<'_, State>, cookie: u64) -> Option<OwnedFd> {
        let mut reg = st.regs.remove(&cookie)?;
        st.by_token.remove(&reg.token);
        if st.by_handle.get(&reg.handle) == Some(&cookie) {
            st.by_handle.remove(&reg.handle);
        }
        if reg.registered {
            let _ = sys::events::epoll_delete(self.sockets.as_fd(), reg.fd.as_fd());
            reg.registered = false;
            reg.interest = 0;
        }
        self.count.store(st.regs.len(), Ordering::Release);
        Some(reg.fd)
    }

    fn run(&self) {
        if let Err(e) = sys::events::defer_wakeups() {
            tracing::debug!(error = %e, "sockdup events: the watcher thread stays SCHED_NORMAL");
        }
        let mut ready = Vec::new();
        let mut fired = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            if let Err(e) = sys::events::epoll_wait(self.sockets.as_fd(), &mut ready) {
                tracing::error!(error = %e, "sockdup events: epoll_wait failed; the thread stops");
                return;
            }
            self.recording.store(true, Ordering::Release);
            self.record(&ready, &mut fired, true, None);
            self.recording.store(false, Ordering::Release);
        }
    }

    /// Records and signals what the registrations' sockets hold ready now: the watcher
    /// thread's work, done by whichever thread finds `sockets` readable first (the one-shot
    /// registrations hand each readiness to one of them).
    /// Whether it set the event whose descriptor is `mine`.
    fn record_ready(
        &self,
        ready: &mut Vec<(u64, u32)>,
        fired: &mut Vec<(u32, i32)>,
        mine: Option<BorrowedFd<'_>>,
    ) -> bool {
        if sys::events::epoll_ready(self.sockets.as_fd(), ready).is_ok() {
            self.record(ready, fired, false, mine)
        } else {
            false
        }
    }

    /// Serves the control set: cancellation connections and requests, and (the watcher
    /// thread only) the waker.
    fn control(&self, thread: bool) {
        let mut ready = Vec::new();
        if sys::events::epoll_ready(self.epoll.as_fd(), &mut ready).is_err() {
            return;
        }
        for &(token, _) in &ready {
            match token {
                TOKEN_WAKER if thread => sys::unwake(self.waker.as_fd()),
                TOKEN_LISTENER => self.accept_all(),
                t if t & CONN_BIT != 0 => self.serve(t),
                _ => {}
            }
        }
    }

    /// Applies the rules to `ready` (from `sockets`) and signals what they record; whether it
    /// set the event whose descriptor is `mine`.
    fn record(
        &self,
        ready: &[(u64, u32)],
        fired: &mut Vec<(u32, i32)>,
        thread: bool,
        mine: Option<BorrowedFd<'_>>,
    ) -> bool {
        let mut set_mine = false;
        for &(token, flags) in ready {
            if token == TOKEN_CONTROL {
                self.control(thread);
                continue;
            }
            let mut st = lock(&self.state);
            let Some(cookie) = st.by_token.get(&token).copied() else {
                continue;
            };
            let Some(reg) = st.regs.get_mut(&cookie) else {
                continue;
            };
            // One-shot: the event disarmed it in the kernel.
            reg.interest = 0;
            reg.evaluate(flags);
            reg.sync(self.sockets.as_fd());
            if reg.pending.is_empty() {
                continue;
            }
            std::mem::swap(&mut reg.pending, fired);
            let sink = reg.sink.clone();
            // Signal without the state held (the thread woken enumerates under it), but
            // under `signalling`, which a cancellation waits for.
            let signalling = lock(&self.signalling);
            drop(st);
            for (bit, error) in fired.drain(..) {
                sink.signal(bit, error);
            }
            drop(signalling);
            if let (Some(mine), EventSink::Event(e)) = (mine, &sink) {
                set_mine |= e.as_fd().as_raw_fd() == mine.as_raw_fd();
            }
        }
        set_mine
    }

    /// Accepts cancellation connections from processes of this user (or root).
    fn accept_all(&self) {
        while let Ok(Some(conn)) = sys::accept(self.listener.as_fd()) {
            let Ok(cred) = sys::peer_cred(conn.as_fd()) else {
                continue;
            };
            if cred.uid != self.uid && cred.uid != 0 {
                continue;
            }
            let mut st = lock(&self.state);
            if st.conns.len() >= MAX_CONNS {
                continue;
            }
            let token = CONN_BIT | st.next_token;
            st.next_token += 1;
            if sys::events::epoll_add(self.epoll.as_fd(), conn.as_fd(), token, IN).is_ok() {
                st.conns.insert(token, conn);
            }
        }
    }

    /// Serves one cancellation: drops this process's registration of the socket whose cookie
    /// the message names, then acknowledges.
    fn serve(&self, token: u64) {
        let (conn, old) = {
            let mut st = lock(&self.state);
            let Some(conn) = st.conns.get(&token) else {
                return;
            };
            let mut buf = [0u8; 9];
            match rustix::net::recv(conn, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
                Err(Errno::AGAIN | Errno::INTR) => return,
                Ok((8, _)) => {
                    let cookie = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                    let old = self.remove(&mut st, cookie);
                    let conn = st.conns.remove(&token);
                    (conn, old)
                }
                _ => (st.conns.remove(&token), None),
            }
        };
        drop(old);
        if let Some(conn) = conn {
            let _ = sys::events::epoll_delete(self.epoll.as_fd(), conn.as_fd());
            let _ = rustix::net::send(&conn, &[1], rustix::net::SendFlags::NOSIGNAL);
        }
    }
}

/// A thread waiting on an event registered here helps this watcher ([`Assist`]).
impl Assist for Shared {
    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.sockets.as_fd()
    }

    fn record_ready(&self, mine: Option<BorrowedFd<'_>>) -> bool {
        let (mut ready, mut fired) = (Vec::new(), Vec::new());
        Shared::record_ready(self, &mut ready, &mut fired, mine)
    }

    fn recording(&self) -> bool {
        self.recording.load(Ordering::Acquire)
    }
}

/// Asks process `pid` to drop its registration of socket `cookie`, and waits for its
/// acknowledgement. A process without a cancellation socket (exited, or sockdup stopped) has
/// no registration: nothing to wait for.
fn cancel_remote(pid: u32, cookie: u64) -> Result<(), Error> {
    let conn = match sys::events::connect_events(pid, CANCEL_TIMEOUT) {
        Ok(c) => c,
        Err(Errno::CONNREFUSED | Errno::NOENT) => return Ok(()),
        Err(e) => {
            return Err(Error::from_errno(
                e,
                &format!("asking process {pid} to cancel its registration of the socket"),
            ));
        }
    };
    let cred = sys::peer_cred(conn.as_fd())
        .map_err(os("reading the credentials of the cancellation socket"))?;
    if cred.pid != Some(pid) {
        return Err(Error::new(
            ErrorKind::Squatter,
            format!(
                "{} is held by process {:?}, not by process {pid}, which holds the socket's event registration",
                sys::events::events_address(pid),
                cred.pid
            ),
        ));
    }
    rustix::net::send(
        &conn,
        &cookie.to_le_bytes(),
        rustix::net::SendFlags::NOSIGNAL,
    )
    .map_err(os("sending a cancellation"))?;
    let mut ack = [0u8; 1];
    match rustix::net::recv(&conn, &mut ack, rustix::net::RecvFlags::empty()) {
        // 0: the process exited while answering; its registrations went with it.
        Ok((0, _)) => Ok(()),
        // Acknowledged; the other process closes its end right after: wait for that too, so
        // that when this returns it holds nothing of this cancellation (a test counting its
        // descriptors sees them settled).
        Ok(_) => {
            let _ = rustix::net::recv(&conn, &mut ack, rustix::net::RecvFlags::empty());
            Ok(())
        }
        Err(Errno::AGAIN) => Err(Error::new(
            ErrorKind::PeerTimedOut,
            format!(
                "process {pid} holds the socket's event registration and did not acknowledge its cancellation within {} s (is it stopped?)",
                CANCEL_TIMEOUT.as_secs()
            ),
        )),
        Err(Errno::CONNRESET) => Ok(()),
        Err(e) => Err(Error::from_errno(
            e,
            "waiting for a cancellation's acknowledgement",
        )),
    }
}
