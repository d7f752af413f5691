//! The runtime: `startup()` (`WSAStartup`), its options, its guard, and the process-wide state
//! of one run (this process's inbox table and thread, the connection pool to other inboxes).
//!
//! Floors above keep their own per-run state here without this module knowing their types
//! ([`Runtime::extension`]): the SPI's dispatcher lives and dies with the run that way.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use sockdup_core::allow::Allow;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::inbox::{Inbox, Limits};

use crate::sync::lock;
use crate::sys::{self, InboxAddress};
use crate::transport::{InboxThread, Pool};

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
                return Ok(Startup { _private: () });
            }
            // Inherited through fork(): the inbox thread does not exist here. Forget, don't join.
            if let Some(stale) = slot.take() {
                std::mem::forget(stale);
            }
        }
        let runtime = Runtime::start(self)?;
        *slot = Some(State {
            runtime: Arc::new(runtime),
            guards: 1,
        });
        Ok(Startup { _private: () })
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
    _private: (),
}

impl Startup {
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
    /// The inbox thread, until the run is shut down.
    thread: Mutex<Option<InboxThread>>,
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
        let listener = sys::listen_inbox(&address).map_err(|e| {
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
        let thread = InboxThread::spawn(
            listener,
            table.clone(),
            options.allow.clone(),
            sys::getuid(),
        )?;
        tracing::debug!(pid, %address, "sockdup inbox started");
        Ok(Self {
            pid,
            address,
            table,
            pool: Pool::new(options.runtime_dir.clone(), options.ack_timeout),
            extensions: Mutex::new(HashMap::new()),
            thread: Mutex::new(Some(thread)),
        })
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
        let Some(thread) = lock(&self.thread).take() else {
            return;
        };
        thread.stop();
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
