//! The runtime: `startup()` (`WSAStartup`), its options, its guard, and the process-wide state
//! of one run (this process's inbox table and thread, or the [`CallerInbox`] the application
//! serves from its own event loop; the connection pool to other inboxes).
//!
//! Floors above keep their own per-run state here without this module knowing their types
//! ([`Runtime::extension`]): the SPI's dispatcher lives and dies with the run that way.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use sockdup_core::allow::Allow;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::inbox::{Inbox, Limits};

use crate::sync::lock;
use crate::sys::{self, InboxAddress};
use crate::transport::{InboxThread, Pool, Serve};

/// How [`startup`] sets up this process's inbox; a builder.
///
/// ```no_run
/// use std::time::Duration;
/// let _guard = sockdup::Options::new().ttl(Duration::from_secs(30)).capacity(256).startup()?;
/// # Ok::<(), sockdup::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    limits: Limits,
    allow: Allow,
    runtime_dir: Option<PathBuf>,
    ack_timeout: Duration,
    caller_served: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

impl Options {
    /// The defaults: unredeemed duplicates live 300 s, at most 4096 wait at once, the same user
    /// or root may push, the inbox is in the abstract namespace, a target has 10 s to
    /// acknowledge.
    pub fn new() -> Self {
        Self {
            limits: Limits::default(),
            allow: Allow::SameUser,
            runtime_dir: None,
            ack_timeout: Duration::from_secs(10),
            caller_served: false,
        }
    }

    /// The defaults, overridden by the environment: `SOCKDUP_TTL` (seconds, 0 = until the
    /// process exits), `SOCKDUP_CAPACITY`, `SOCKDUP_SOURCE_CAPACITY`, `SOCKDUP_ALLOW` (`same-user`, `any`, or uids
    /// separated by commas) and `SOCKDUP_RUNTIME_DIR` (a directory for inbox socket files,
    /// instead of the abstract namespace; source and target must agree).
    ///
    /// # Errors
    /// `WSAEINVAL` naming the variable whose value cannot be used.
    pub fn from_env() -> Result<Self, Error> {
        let mut o = Self::new();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(v) = var("SOCKDUP_TTL") {
            let secs: f64 = v.trim().parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0).ok_or_else(|| {
                Error::new(ErrorKind::BadOption, format!("SOCKDUP_TTL is {v:?}: give a number of seconds (0 keeps duplicates until the process exits)"))
            })?;
            o = o.ttl(Duration::from_secs_f64(secs));
        }
        if let Some(v) = var("SOCKDUP_CAPACITY") {
            let n = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::new(
                    ErrorKind::BadOption,
                    format!(
                        "SOCKDUP_CAPACITY is {v:?}: give a whole number of duplicates, at least 1"
                    ),
                )
            })?;
            o = o.capacity(n);
        }
        if let Some(v) = var("SOCKDUP_SOURCE_CAPACITY") {
            let n = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::new(
                    ErrorKind::BadOption,
                    format!(
                        "SOCKDUP_SOURCE_CAPACITY is {v:?}: give a whole number of duplicates one source may have waiting, at least 1"
                    ),
                )
            })?;
            o = o.source_capacity(n);
        }
        if let Some(v) = var("SOCKDUP_ALLOW") {
            o = o.allow(Allow::parse(&v)?);
        }
        if let Some(v) = var("SOCKDUP_RUNTIME_DIR") {
            o = o.runtime_dir(PathBuf::from(v));
        }
        Ok(o)
    }

    /// Time-to-live of duplicates nobody redeems; `Duration::ZERO` keeps them until the process
    /// exits.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.limits.ttl = (!ttl.is_zero()).then_some(ttl);
        self
    }

    /// The most duplicates that may wait to be redeemed at once (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.limits.capacity = capacity.max(1);
        self
    }

    /// The most duplicates any one source process may have waiting at once (at least 1, at most
    /// the capacity). By default three quarters of the capacity, so that one runaway source
    /// leaves room for the others.
    pub fn source_capacity(mut self, per_source: usize) -> Self {
        self.limits.per_source = Some(per_source.max(1));
        self
    }

    /// Who may push descriptors into this process's inbox.
    pub fn allow(mut self, allow: Allow) -> Self {
        self.allow = allow;
        self
    }

    /// Keep inbox sockets as files in `dir` instead of the abstract namespace, so that processes
    /// in different network namespaces can reach each other through a shared directory.
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    /// How long `duplicate_socket` waits for a target to acknowledge.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// No inbox thread: the application serves this process's inbox from its own event loop,
    /// on its own thread, through the [`CallerInbox`] of the guard
    /// ([`Startup::caller_inbox`]). For a server that already runs an event loop (epoll, poll,
    /// mio) and wants one thread to receive the descriptors other processes push, acknowledge
    /// them and serve the sockets: fewer threads waking up per duplicate.
    ///
    /// The caller **must** then serve the inbox promptly: watch the [`CallerInbox`]'s
    /// descriptor ([`AsFd`]) for readability in its loop, call
    /// [`serve_ready`](CallerInbox::serve_ready) when it is readable, and bound its wait by
    /// [`CallerInbox::timeout`] (when unredeemed duplicates expire). A source's
    /// `duplicate_socket` to this process waits for the answer that `serve_ready` sends: while
    /// the inbox is not served, sources wait, and fail after their ack timeout
    /// ([`ack_timeout`](Self::ack_timeout); `WSAENETDOWN`, [`ErrorKind::PeerTimedOut`]);
    /// duplicates nobody redeems are closed only in a `serve_ready` after their time-to-live.
    /// Nor does the inbox answer while the loop's thread blocks elsewhere, in its own
    /// `duplicate_socket` too: two such processes duplicating to each other at once wait for
    /// each other until their ack timeout.
    ///
    /// Like every option, it counts only for the first start of a run: if sockdup is already
    /// started here with its thread, the guard's [`caller_inbox`](Startup::caller_inbox) is
    /// `None` (and later starts of a caller-served run, [`startup`] too, share its inbox).
    ///
    /// ```no_run
    /// use rustix::event::{PollFd, PollFlags, poll};
    ///
    /// let guard = sockdup::Options::from_env()?.inbox_served_by_caller().startup()?;
    /// let inbox = guard.caller_inbox().expect("the first start of this process's run");
    /// loop {
    ///     // A real loop watches its own descriptors in the same call.
    ///     let timeout = inbox.timeout().map(|d| rustix::time::Timespec::try_from(d).unwrap());
    ///     poll(&mut [PollFd::new(inbox, PollFlags::IN)], timeout.as_ref())?;
    ///     inbox.serve_ready()?; // never blocks
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inbox_served_by_caller(mut self) -> Self {
        self.caller_served = true;
        self
    }

    /// Starts sockdup in this process with these options (`WSAStartup`). If sockdup is already
    /// started, this takes one more reference and the options of the first start stay.
    ///
    /// # Errors
    /// As [`startup`].
    #[doc(alias = "WSAStartup")]
    pub fn startup(&self) -> Result<Startup, Error> {
        let mut slot = lock(&STATE);
        if let Some(state) = slot.as_mut() {
            if state.runtime.pid == sys::getpid() {
                state.guards += 1;
                return Ok(Startup {
                    caller: state.runtime.caller_inbox(),
                });
            }
            // Inherited through fork(): the inbox thread does not exist here. Forget, don't join.
            if let Some(stale) = slot.take() {
                std::mem::forget(stale);
            }
        }
        let runtime = Runtime::start(self)?;
        let caller = runtime.caller_inbox();
        *slot = Some(State {
            runtime: Arc::new(runtime),
            guards: 1,
        });
        Ok(Startup { caller })
    }
}

/// A reference to sockdup's process-wide state; the inbox lives while any guard does.
///
/// Dropping the last one is `WSACleanup`: the inbox stops, duplicates that were not redeemed are
/// closed, and records made for this run can no longer be redeemed (a later `startup()` is a new
/// run with a new nonce).
#[derive(Debug)]
#[must_use = "sockdup stops when the last Startup guard is dropped"]
pub struct Startup {
    /// The inbox to serve, if the run's first start asked to serve it
    /// ([`Options::inbox_served_by_caller`]).
    caller: Option<CallerInbox>,
}

impl Startup {
    /// This process's inbox, to serve from the application's event loop, if the run was
    /// started with [`Options::inbox_served_by_caller`]; `None` if the inbox thread serves it.
    /// Clone it to keep it in the loop's state (it does not keep the run alive: the guard
    /// does).
    pub fn caller_inbox(&self) -> Option<&CallerInbox> {
        self.caller.as_ref()
    }

    /// This process's inbox address.
    pub fn inbox_address(&self) -> InboxAddress {
        lock(&STATE)
            .as_ref()
            .map(|s| s.runtime.address.clone())
            .expect("a Startup guard keeps the state alive")
    }
}

impl Drop for Startup {
    #[doc(alias = "WSACleanup")]
    fn drop(&mut self) {
        let mut slot = lock(&STATE);
        match slot.as_mut() {
            Some(state) if state.guards > 1 => state.guards -= 1,
            _ => {
                // The inbox closes before the slot is free: a startup in another thread then
                // finds this run's address free, never still held by it. (Other threads may
                // still hold the runtime for a moment; its inbox is gone all the same.)
                if let Some(state) = slot.take() {
                    state.runtime.shut_down();
                }
            }
        }
    }
}

/// This process's inbox when the application serves it from its own event loop
/// ([`Options::inbox_served_by_caller`]); from [`Startup::caller_inbox`].
///
/// Its descriptor ([`AsFd`]; an epoll set: watch it for readability, never read it) is
/// readable when there is work: a source connecting, a push or a cancel waiting for its answer.
/// [`serve_ready`](Self::serve_ready) does that work without blocking; call it when the
/// descriptor is readable and when [`timeout`](Self::timeout) has passed (expiry of
/// duplicates nobody redeemed). A spare call costs one `epoll_wait` that returns at once.
/// While nobody calls it, sources pushing to this process wait (up to their ack timeout).
///
/// Clones share the one inbox; calls from several threads take turns.
#[derive(Clone)]
pub struct CallerInbox {
    shared: Arc<CallerServed>,
}

/// What a run's [`CallerInbox`]es share with its runtime.
pub(crate) struct CallerServed {
    pid: u32,
    /// The inbox's epoll set, open as long as a handle is (the inbox itself closes with the
    /// run).
    epoll: Arc<OwnedFd>,
    /// The inbox, until the run ends.
    serve: Mutex<Option<Serve>>,
}

impl std::fmt::Debug for CallerInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerInbox")
            .field("pid", &self.shared.pid)
            .field("epoll", &self.shared.epoll)
            .finish_non_exhaustive()
    }
}

impl AsFd for CallerInbox {
    /// The inbox's epoll set: readable when [`serve_ready`](CallerInbox::serve_ready) has
    /// work. Watch it (level-triggered); do not read it.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.epoll.as_fd()
    }
}

impl CallerInbox {
    /// One turn of the inbox's work, without blocking: accepts sources that connect, receives
    /// the descriptors they push into this process's table and answers each with its tickets
    /// (or the error that refuses it), answers cancels, and closes the duplicates whose
    /// time-to-live is over. Nothing to do is not an error.
    ///
    /// # Errors
    /// [`ErrorKind::Forked`] in a child forked from the process that
    /// started sockdup (the inbox belongs to the parent); [`ErrorKind::NotStarted`] once the
    /// run is over (its last guard dropped: this handle outlived it); an error from
    /// [`Error::from_errno`] if the inbox's epoll set fails.
    pub fn serve_ready(&self) -> Result<(), Error> {
        self.check_pid()?;
        let mut slot = lock(&self.shared.serve);
        let Some(serve) = slot.as_mut() else {
            return Err(Error::new(
                ErrorKind::NotStarted,
                "this CallerInbox belongs to a run of sockdup that is over (its last Startup guard was dropped): \
                 use the caller_inbox() of the current run's guard",
            ));
        };
        serve
            .turn(Some(Duration::ZERO))
            .map_err(|e| Error::from_errno(e, "waiting on the inbox's epoll set"))?;
        Ok(())
    }

    /// How long the caller's loop may wait before [`serve_ready`](Self::serve_ready) is due
    /// even if the descriptor stays quiet: until the next unredeemed duplicate expires (or a
    /// pause in accepting, out of descriptors, ends). `None`: nothing is due, wait for
    /// readiness alone. Rounded up to the millisecond, so that a wait of that long (a
    /// `poll`/`epoll_wait` timeout in milliseconds) does not end a hair early and spin.
    pub fn timeout(&self) -> Option<Duration> {
        let due = lock(&self.shared.serve).as_ref()?.due()?;
        let left = due.saturating_duration_since(Instant::now());
        let millis = left.as_nanos().div_ceil(1_000_000);
        Some(Duration::from_millis(
            u64::try_from(millis).unwrap_or(u64::MAX),
        ))
    }

    fn check_pid(&self) -> Result<(), Error> {
        if sys::getpid() == self.shared.pid {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Forked,
                "this process was forked from the one whose inbox this is, and the inbox does not cross fork(): \
                 call sockdup::startup() in this process",
            ))
        }
    }
}

/// Starts sockdup in this process (`WSAStartup`): opens its inbox, so other processes can
/// duplicate sockets to it, with the options from the environment ([`Options::from_env`]).
///
/// Calls nest: each returns a guard, and the inbox lives while any guard does.
///
/// # Errors
/// `WSAEINVAL` for an unusable environment variable; `WSAEADDRINUSE` if another process holds
/// this process's inbox address; other codes as the OS reports ([`Error::from_errno`]).
#[doc(alias = "WSAStartup")]
pub fn startup() -> Result<Startup, Error> {
    Options::from_env()?.startup()
}

struct State {
    runtime: Arc<Runtime>,
    guards: usize,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// How long a start waits for its inbox address to be free again.
const ADDRESS_RELEASE_WAIT: Duration = Duration::from_millis(500);

/// [`sys::listen_inbox`], waiting up to [`ADDRESS_RELEASE_WAIT`] while the address is in use.
/// The inbox of an earlier run of this process may still be open in a child that another
/// thread is starting: between `fork` and `exec` the child holds a copy of every descriptor,
/// close-on-exec ones included, so the address is released only when it execs. A squatter
/// still holds it when the wait ends.
fn listen_inbox_retrying(address: &InboxAddress) -> rustix::io::Result<std::os::fd::OwnedFd> {
    let deadline = Instant::now() + ADDRESS_RELEASE_WAIT;
    let mut pause = Duration::from_micros(100);
    loop {
        match sys::listen_inbox(address) {
            Err(rustix::io::Errno::ADDRINUSE) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            done => return done,
        }
    }
}

/// Per-run state of a floor above, by type ([`Runtime::extension`]).
type Extensions = HashMap<TypeId, Arc<dyn Any + Send + Sync>>;

/// The running state of one `startup()`..last-guard-drop run.
pub(crate) struct Runtime {
    pub(crate) pid: u32,
    pub(crate) address: InboxAddress,
    pub(crate) table: Arc<Mutex<Inbox<std::os::fd::OwnedFd>>>,
    /// Connections to other processes' inboxes.
    pub(crate) pool: Pool,
    extensions: Mutex<Extensions>,
    /// Who serves the inbox, until the run is shut down.
    inbox: Mutex<Option<Served>>,
}

/// Who serves a run's inbox.
enum Served {
    /// Its own thread.
    Thread(InboxThread),
    /// The application's event loop ([`Options::inbox_served_by_caller`]).
    Caller(Arc<CallerServed>),
}

impl Runtime {
    fn start(options: &Options) -> Result<Self, Error> {
        let pid = sys::getpid();
        if let Some(dir) = &options.runtime_dir
            && !dir.is_dir()
        {
            return Err(Error::new(
                ErrorKind::BadOption,
                format!(
                    "the runtime directory {} (SOCKDUP_RUNTIME_DIR) does not exist or is not a directory: create it, \
                     or unset SOCKDUP_RUNTIME_DIR to use the abstract namespace",
                    dir.display()
                ),
            ));
        }
        let address = InboxAddress::for_pid(pid, options.runtime_dir.as_deref());
        let listener = listen_inbox_retrying(&address).map_err(|e| {
            if e == rustix::io::Errno::ADDRINUSE {
                Error::new(
                    ErrorKind::InboxAddressInUse,
                    format!("another process already listens at this process's inbox address {address}: find it with `ss -xlp | grep sockdup`"),
                )
            } else {
                Error::from_errno(e, &format!("opening this process's inbox at {address}"))
            }
        })?;
        let table = Arc::new(Mutex::new(Inbox::new(
            pid,
            sys::random_u32(),
            sys::random_u32(),
            options.limits,
        )));
        let serve = Serve::new(
            listener,
            table.clone(),
            options.allow.clone(),
            sys::getuid(),
        )?;
        let inbox = if options.caller_served {
            Served::Caller(Arc::new(CallerServed {
                pid,
                epoll: serve.epoll(),
                serve: Mutex::new(Some(serve)),
            }))
        } else {
            Served::Thread(InboxThread::spawn(serve)?)
        };
        tracing::debug!(pid, %address, caller_served = options.caller_served, "sockdup inbox started");
        Ok(Self {
            pid,
            address,
            table,
            pool: Pool::new(options.runtime_dir.clone(), options.ack_timeout),
            extensions: Mutex::new(HashMap::new()),
            inbox: Mutex::new(Some(inbox)),
        })
    }

    /// The handle on the inbox, if the application serves it.
    fn caller_inbox(&self) -> Option<CallerInbox> {
        match lock(&self.inbox).as_ref()? {
            Served::Caller(shared) => Some(CallerInbox {
                shared: shared.clone(),
            }),
            Served::Thread(_) => None,
        }
    }

    /// The state of this process's current run, or `WSANOTINITIALISED`.
    pub(crate) fn current() -> Result<Arc<Self>, Error> {
        match lock(&STATE).as_ref() {
            Some(s) if s.runtime.pid == sys::getpid() => Ok(s.runtime.clone()),
            Some(_) => Err(Error::new(
                ErrorKind::Forked,
                "this process was forked from one that called sockdup::startup(), and the inbox does not cross fork(): call sockdup::startup() in this process",
            )),
            None => Err(Error::new(
                ErrorKind::NotStarted,
                "sockdup is not started in this process: call sockdup::startup() first and keep its guard alive",
            )),
        }
    }

    /// The directory of inbox and control socket files (`SOCKDUP_RUNTIME_DIR`), or `None` for
    /// the abstract namespace.
    pub(crate) fn runtime_dir(&self) -> Option<&std::path::Path> {
        self.pool.runtime_dir()
    }

    /// This run's state of type `T`, made by `init` on first use; it lives as long as the run.
    /// `init` runs without the runtime's locks held.
    pub(crate) fn extension<T: Any + Send + Sync>(
        &self,
        init: impl FnOnce() -> Result<T, Error>,
    ) -> Result<Arc<T>, Error> {
        let id = TypeId::of::<T>();
        if let Some(found) = lock(&self.extensions).get(&id) {
            return Ok(downcast(found.clone()));
        }
        let made: Arc<dyn Any + Send + Sync> = Arc::new(init()?);
        // Another thread may have made one meanwhile: the first stays.
        let kept = lock(&self.extensions).entry(id).or_insert(made).clone();
        Ok(downcast(kept))
    }
}

fn downcast<T: Any + Send + Sync>(value: Arc<dyn Any + Send + Sync>) -> Arc<T> {
    value
        .downcast::<T>()
        .unwrap_or_else(|_| unreachable!("extensions are stored under their own TypeId"))
}

impl Runtime {
    /// Stops the inbox (its thread, its listening socket, its socket file); once is enough.
    fn shut_down(&self) {
        let Some(inbox) = lock(&self.inbox).take() else {
            return;
        };
        match inbox {
            Served::Thread(thread) => thread.stop(),
            // Handles that outlive the run keep only the (now empty) epoll set.
            Served::Caller(shared) => drop(lock(&shared.serve).take()),
        }
        if let InboxAddress::Path(path) = &self.address {
            let _ = std::fs::remove_file(path);
        }
        tracing::debug!(pid = self.pid, "sockdup inbox stopped");
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ttl_means_until_exit() {
        assert_eq!(Options::new().ttl(Duration::ZERO).limits.ttl, None);
        assert_eq!(Options::new().capacity(0).limits.capacity, 1);
    }
}
