//! Event objects and the records of network events: `WSAEVENT` ([`Event`]),
//! `WSAWaitForMultipleEvents` ([`wait_for_events`]), `WSANETWORKEVENTS` ([`NetworkEvents`]),
//! and the message `WSAAsyncSelect` posts ([`Notification`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::sockopt::FD_MAX_EVENTS;

use super::Handle;
use crate::sys;

/// `WSA_MAXIMUM_WAIT_EVENTS`: the most events [`wait_for_events`] takes.
pub const WSA_MAXIMUM_WAIT_EVENTS: usize = 64;

/// `WSAEVENT`: a manual-reset event object (`WSACreateEvent`). It is an `eventfd`: readable
/// while set, so `epoll`, `poll` and async runtimes can wait on it ([`AsFd`]). Clones share the
/// one object (like `DuplicateHandle`); dropping the last one is `WSACloseEvent`. A
/// registration keeps its event alive until it is cancelled.
///
/// The descriptor is for waiting on: set and reset the event through [`set`](Self::set) and
/// [`reset`](Self::reset) (or `WSASetEvent`/`WSAResetEvent` from C), not by writing or reading
/// it, since the event also keeps its state in memory, where [`wait`](Self::wait) looks first.
/// For the same reason an event belongs to one process: a child made by `fork()` must not use
/// the parent's.
#[derive(Clone, Debug)]
#[doc(alias = "WSAEVENT", alias = "WSACreateEvent", alias = "WSACloseEvent")]
pub struct Event {
    fd: Arc<OwnedFd>,
    /// Whether the event is set, as [`set`](Self::set) and [`reset`](Self::reset) left it:
    /// what a waiter reads first, without a system call (the common case of a thread that
    /// waits for an event the watcher thread has set already).
    state: Arc<State>,
    /// The watcher this event was last registered with (shared by the clones).
    assist: Arc<Mutex<Option<Weak<dyn Assist>>>>,
}

impl Event {
    /// `WSACreateEvent`: a new event, not set.
    ///
    /// # Errors
    /// `WSAEMFILE` when this process is out of descriptors.
    pub fn new() -> Result<Self, Error> {
        let fd = sys::waker().map_err(|e| Error::from_errno(e, "creating an event (eventfd)"))?;
        Ok(Self {
            fd: Arc::new(fd),
            state: Arc::default(),
            assist: Arc::default(),
        })
    }

    /// `WSASetEvent`: sets the event; it stays set until [`reset`](Self::reset).
    #[doc(alias = "WSASetEvent")]
    pub fn set(&self) {
        let _changing = crate::sync::lock(&self.state.changing);
        // EAGAIN only when the counter is near 2^64: it is set anyway.
        let _ = sys::wake(self.fd.as_fd());
        // After the write: a thread that reads `set` and goes on to reset the event (the
        // common case: it enumerates at once) then finds the lock free in a moment, instead of
        // sleeping on it through this thread's system call.
        self.state.set.store(true, Ordering::Release);
    }

    /// `WSAResetEvent`: clears the event.
    #[doc(alias = "WSAResetEvent")]
    pub fn reset(&self) {
        let _changing = crate::sync::lock(&self.state.changing);
        self.state.set.store(false, Ordering::Release);
        sys::unwake(self.fd.as_fd());
    }

    /// Whether the event was set when last changed; `true` is certain (it was set at this
    /// moment), `false` is only a hint (look at the descriptor).
    fn known_set(&self) -> bool {
        self.state.set.load(Ordering::Acquire)
    }

    /// Whether the event is set now.
    pub fn is_set(&self) -> bool {
        sys::events::poll_now(self.fd.as_fd()) & sys::events::IN != 0
    }

    /// Waits until the event is set, for `timeout` at most (`None`: no limit): `true` if it
    /// is set, `false` if the time ran out. The event stays set (manual reset).
    ///
    /// # Errors
    /// The OS's, from `poll`.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        if self.known_set() {
            return Ok(true);
        }
        let ready = wait_readable(&[self.fd.as_fd()], &[self], timeout)
            .map_err(|e| Error::from_errno(e, "waiting for an event"))?;
        Ok(ready[0])
    }

    /// Records that this event is registered with `watcher` (a waiting thread helps it).
    pub(crate) fn assisted_by(&self, watcher: &Arc<dyn Assist>) {
        *crate::sync::lock(&self.assist) = Some(Arc::downgrade(watcher));
    }

    fn helper(&self) -> Option<Arc<dyn Assist>> {
        crate::sync::lock(&self.assist).as_ref()?.upgrade()
    }
}

/// An event's state in memory, kept with its eventfd under `changing`, so that the two agree
/// whenever nobody is changing them.
#[derive(Debug, Default)]
struct State {
    set: AtomicBool,
    changing: Mutex<()>,
}

impl AsFd for Event {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `WSAWaitForMultipleEvents`: waits until one of `events` is set (or all of them at once, with
/// `wait_all`), for `timeout` at most (`None`: no limit). `Some(i)`: the index of the first set
/// event (0 with `wait_all`); `None`: the time ran out. Events stay set (manual reset).
///
/// # Errors
/// [`ErrorKind::TooManyEvents`] (`WSA_INVALID_PARAMETER`, 87, as on Windows) for no events or
/// more than [`WSA_MAXIMUM_WAIT_EVENTS`].
#[doc(alias = "WSAWaitForMultipleEvents")]
pub fn wait_for_events(
    events: &[&Event],
    wait_all: bool,
    timeout: Option<Duration>,
) -> Result<Option<usize>, Error> {
    if events.is_empty() || events.len() > WSA_MAXIMUM_WAIT_EVENTS {
        return Err(Error::new(
            ErrorKind::TooManyEvents,
            format!(
                "wait_for_events was given {} events: give 1 to {WSA_MAXIMUM_WAIT_EVENTS} (WSA_MAXIMUM_WAIT_EVENTS)",
                events.len()
            ),
        ));
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if wait_all {
            let unset: Vec<BorrowedFd<'_>> = events
                .iter()
                .filter(|e| !e.is_set())
                .map(|e| e.as_fd())
                .collect();
            if unset.is_empty() {
                return Ok(Some(0));
            }
            wait_readable(&unset, events, left)
                .map_err(|e| Error::from_errno(e, "waiting for events"))?;
        } else {
            if let Some(i) = events.iter().position(|e| e.known_set()) {
                return Ok(Some(i));
            }
            let fds: Vec<BorrowedFd<'_>> = events.iter().map(|e| e.as_fd()).collect();
            let ready = wait_readable(&fds, events, left)
                .map_err(|e| Error::from_errno(e, "waiting for events"))?;
            if let Some(i) = ready.iter().position(|r| *r) {
                return Ok(Some(i));
            }
        }
        if left.is_some_and(|l| l.is_zero()) {
            // With wait_all, one last look: all may have become set together.
            if wait_all && events.iter().all(|e| e.is_set()) {
                return Ok(Some(0));
            }
            return Ok(None);
        }
    }
}

/// `WSANETWORKEVENTS`: the network events recorded since the last enumeration, and each one's
/// error (a Winsock code, 0 for none), indexed by `FD_*_BIT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[doc(alias = "WSANETWORKEVENTS")]
pub struct NetworkEvents {
    /// `lNetworkEvents`: the `FD_*` bits recorded.
    pub events: u32,
    /// `iErrorCode`: the error of the event whose bit index is `i` (`FD_READ_BIT` = 0 ...
    /// `FD_CLOSE_BIT` = 5): `WSAECONNREFUSED` (10061) for a failed connect,
    /// `WSAECONNRESET` (10054) for a reset connection, 0 otherwise.
    pub errors: [i32; FD_MAX_EVENTS],
}

/// The message `WSAAsyncSelect` posts, one per network event, through the channel given to
/// [`Socket::async_select`](super::Socket::async_select).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The socket, as the application holds it (its top handle).
    pub handle: Handle,
    /// One `FD_*` bit (`WSAGETSELECTEVENT`).
    pub event: u32,
    /// Its Winsock error, 0 for none (`WSAGETSELECTERROR`).
    pub error: i32,
}

/// Where a registration signals its network events: an event object (`WSPEventSelect`) or a
/// channel (`WSPAsyncSelect`, standing in for the window and its message).
#[derive(Clone, Debug)]
pub enum EventSink {
    /// Set the event for each recorded event.
    Event(Event),
    /// Send a [`Notification`] for each recorded event, naming `handle`.
    Channel {
        /// The handle the notifications name.
        handle: Handle,
        /// Where they go; a closed receiver drops them.
        sender: Sender<Notification>,
    },
}

impl EventSink {
    /// Signals event `bit` with Winsock error `error`.
    pub(crate) fn signal(&self, bit: u32, error: i32) {
        match self {
            Self::Event(e) => e.set(),
            Self::Channel { handle, sender } => {
                let _ = sender.send(Notification {
                    handle: *handle,
                    event: bit,
                    error,
                });
            }
        }
    }
}

/// The Winsock code for a Linux errno carried by a network event.
pub(crate) fn wsa_code(errno: i32) -> i32 {
    use rustix::io::Errno;
    if errno == 0 {
        return 0;
    }
    let e = Errno::from_raw_os_error(errno);
    match e {
        Errno::CONNREFUSED => 10061,
        Errno::CONNRESET | Errno::PIPE => 10054,
        Errno::CONNABORTED => 10053,
        Errno::TIMEDOUT => 10060,
        Errno::NETUNREACH => 10051,
        Errno::HOSTUNREACH => 10065,
        Errno::NETDOWN => 10050,
        Errno::ADDRNOTAVAIL => 10049,
        Errno::NOBUFS | Errno::NOMEM => 10055,
        Errno::ACCESS | Errno::PERM => 10013,
        _ => 10050,
    }
}

/// The watcher of the registrations an event was last registered with, as a thread waiting on
/// the event sees it (spi/watch.rs implements it): a set of descriptors to wait on besides the
/// events, and the watcher thread's work to do when it is ready.
pub(crate) trait Assist: Send + Sync + std::fmt::Debug {
    /// What to wait on besides the events: readable when a registered socket is ready.
    fn ready_fd(&self) -> BorrowedFd<'_>;
    /// Records and signals what the registered sockets hold ready now, as the watcher thread
    /// would; whether it set the event whose descriptor is `mine`.
    fn record_ready(&self, mine: Option<BorrowedFd<'_>>) -> bool;
    /// Whether the watcher thread is recording and signalling what it found ready.
    fn recording(&self) -> bool;
}

/// How long a waiting thread that found its readiness taken by the watcher thread, busy
/// recording it, spins for the watcher to set the event before it sleeps in `poll`.
const SPIN_FOR_WATCHER: Duration = Duration::from_micros(20);

/// Whether `event` became set while the watcher thread recorded what it took: when the
/// watcher thread took the readiness this thread looked for (both are woken by the same
/// arrival, on two CPUs), its signal is a few hundred nanoseconds away, and sleeping in `poll`
/// to be woken by it costs a wake-up. Spins only while the watcher is at work, and
/// [`SPIN_FOR_WATCHER`] at most.
fn set_by_watcher(helper: &dyn Assist, event: Option<&Event>) -> bool {
    let Some(event) = event else {
        return false;
    };
    let start = Instant::now();
    while helper.recording() && start.elapsed() < SPIN_FOR_WATCHER {
        if event.known_set() {
            return true;
        }
        std::hint::spin_loop();
    }
    event.known_set()
}

/// Waits until one of `fds` (the descriptors of `events`, or some of them) is readable, for
/// `timeout` at most, as [`sys::events::wait_readable`]. If one of `events` is registered with a
/// live watcher, it waits on that watcher's sockets as well, and when they hold something ready
/// it records and signals it itself, as the watcher thread would: the kernel wakes the waiting
/// thread directly, instead of waking the watcher thread, which then wakes it. Whichever thread
/// finds a readiness first takes it (the registrations are one-shot): the rules are applied
/// once, under the same locks.
fn wait_readable<E: std::borrow::Borrow<Event>>(
    fds: &[BorrowedFd<'_>],
    events: &[E],
    timeout: Option<Duration>,
) -> Result<Vec<bool>, rustix::io::Errno> {
    let Some(helper) = events.iter().find_map(|e| e.borrow().helper()) else {
        return sys::events::wait_readable(fds, timeout);
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut all = fds.to_vec();
    all.push(helper.ready_fd());
    // Waiting on one event: look at the sockets first, so that readiness already there (the
    // common case of a thread that sent a request and now waits for the answer's event) is
    // recorded without a `poll` that would only report it; and once this thread has set that
    // event itself, there is nothing to ask.
    let mine = (fds.len() == 1).then(|| fds[0]);
    let mine_event = mine.and_then(|m| {
        events
            .iter()
            .map(std::borrow::Borrow::borrow)
            .find(|e: &&Event| e.as_fd().as_raw_fd() == m.as_raw_fd())
    });
    if mine.is_some() && (helper.record_ready(mine) || set_by_watcher(&*helper, mine_event)) {
        return Ok(vec![true]);
    }
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut got = sys::events::wait_readable(&all, left)?;
        let sockets = got.pop().unwrap_or(false);
        if got.iter().any(|r| *r) {
            return Ok(got);
        }
        if sockets {
            if helper.record_ready(mine) || set_by_watcher(&*helper, mine_event) {
                return Ok(vec![true]);
            }
        } else if left.is_some_and(|l| l.is_zero()) {
            return Ok(got);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state in memory and the eventfd agree after every change, also when threads set
    /// and reset one event at once: `wait` trusts the first.
    #[test]
    fn the_state_in_memory_and_the_descriptor_agree() {
        let e = Event::new().unwrap();
        assert!(!e.known_set() && !e.is_set());
        assert!(!e.wait(Some(Duration::ZERO)).unwrap());
        e.set();
        assert!(e.known_set() && e.is_set());
        assert!(e.wait(Some(Duration::ZERO)).unwrap());
        e.reset();
        assert!(!e.known_set() && !e.is_set());
        std::thread::scope(|s| {
            for t in 0..4 {
                let e = e.clone();
                s.spawn(move || {
                    for i in 0..2_000 {
                        if (i + t) % 2 == 0 { e.set() } else { e.reset() }
                    }
                });
            }
        });
        assert_eq!(e.known_set(), e.is_set());
        assert_eq!(e.wait(Some(Duration::ZERO)).unwrap(), e.is_set());
        assert_eq!(
            wait_for_events(&[&e], false, Some(Duration::ZERO))
                .unwrap()
                .is_some(),
            e.is_set()
        );
    }
}
