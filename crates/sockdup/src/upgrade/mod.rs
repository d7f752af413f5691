//! Zero-downtime restarts: a running server hands its listening sockets to the next version
//! of itself, which starts accepting before the old one stops, so no connection attempt is
//! refused.
//!
//! The running server *publishes* its listeners by name ([`Upgrade::publish`]): sockdup writes
//! its pid to a pid file and answers takeovers on a control socket next to its inbox. A new
//! process, started any way at all (by systemd, a shell, a container runtime; it need not be a
//! child of the old one), calls [`Upgrade::take_over`] with the same pid file and the names it
//! wants: the old process duplicates those listeners for the new pid
//! ([`duplicate_sockets`](crate::duplicate_sockets)), the new one redeems them and may accept
//! on them at once, both processes accepting from the same kernel queues. When the new process
//! is ready it calls [`Takeover::complete`]: the old process points the pid file at it and
//! reports the [`Handover`] ([`Published::wait`]), and should then stop accepting, finish its
//! connections and exit. Connections that wait in a listener's queue are never lost: the queue
//! belongs to the socket, which the new process holds.
//!
//! ```no_run
//! # fn main() -> Result<(), sockdup::Error> {
//! use sockdup::upgrade::Upgrade;
//! let _guard = sockdup::startup()?;
//! let upgrade = Upgrade::new("/run/myserver.pid");
//! let published = if upgrade.running_server()?.is_some() {
//!     let takeover = upgrade.take_over(&["web"])?;
//!     // ... start accepting on takeover.listener("web") here ...
//!     takeover.complete()?
//! } else {
//!     let web = std::net::TcpListener::bind("127.0.0.1:8080").expect("bind");
//!     upgrade.publish([("web", web)])?
//! };
//! let web = published.listener("web").expect("published").try_clone_to_owned().expect("dup");
//! // ... accept on `web` in other threads; when a successor takes over:
//! let handover = published.wait();
//! println!("process {} took over; draining", handover.pid);
//! # drop(web); Ok(()) }
//! ```
//!
//! One takeover at a time: a second one while the first is in progress is refused with
//! [`ErrorKind::TakeoverInProgress`] (`WSAEINPROGRESS`). A takeover that fails, times out, or
//! whose new process dies or calls [`Takeover::abort`], leaves the old process serving,
//! unchanged. Listeners the new process does not ask for stay with the old one until it exits;
//! asking for a name the old process does not have is an error. Only a process of the same
//! user, or root, may take over: another user's connection is refused and closed as soon as it
//! is accepted.
//!
//! The control socket is served without blocking until a connection has sent its `take` line,
//! which must arrive whole within the timeout; each later line too. At most 32 connections wait
//! for their `take` line at once: beyond that, the one that waited longest is refused
//! (`takeover-in-progress`) and closed, so silent, slow or numerous peers hold a bounded number
//! of the server's descriptors and never keep a real takeover out. If the process that took
//! over dies while the old one still holds its [`Published`], the old one takes the listeners
//! back ([`Published::wait`]).
//!
//! The protocol is lines of text over an `AF_UNIX` stream socket at `@sockdup/v1/PID/upgrade`
//! (or `$SOCKDUP_RUNTIME_DIR/sockdup-PID.upgrade.sock`; [`control_address`]); its codec is
//! [`sockdup_core::proto::upgrade`]. Errors of the old process reach the new one with their
//! [`ErrorKind`].

mod client;
mod proto;
mod server;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::proto::upgrade::{check_names, truncate};

pub use client::Takeover;
pub use server::{Handover, Published};
pub use sockdup_core::proto::upgrade::{MAX_NAME_LEN, check_name};

use crate::sys;

/// Where a server publishes itself and how long a takeover step may take: the entry point of
/// this module. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Upgrade {
    pid_file: PathBuf,
    timeout: Duration,
}

impl Upgrade {
    /// Takeovers through the pid file at `pid_file`, each step waiting at most 10 seconds.
    pub fn new(pid_file: impl Into<PathBuf>) -> Self {
        Self {
            pid_file: pid_file.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// How long each step of a takeover may take: the old process's answer, the new
    /// process's `ready` (once offered, the old process waits this long for it). Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The pid file.
    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// The pid the pid file names if that process is running; `None` if there is no pid file
    /// or it names a process that no longer exists (a stale file, e.g. after a crash). Whether
    /// the process really is a sockdup server shows when [`take_over`](Self::take_over) asks.
    ///
    /// # Errors
    /// [`ErrorKind::StalePidFile`] if the file holds something other than a pid; an OS error if
    /// it cannot be read.
    pub fn running_server(&self) -> Result<Option<u32>, Error> {
        let Some(pid) = self.read_pid_file()? else {
            return Ok(None);
        };
        Ok(process_exists(pid).then_some(pid))
    }

    /// Publishes `listeners` (listening sockets, each with a name checked by [`check_name`])
    /// as this process's, writes this process's pid to the pid file, and starts answering
    /// takeovers. The returned [`Published`] owns the listeners: accept on them through
    /// [`Published::listener`].
    ///
    /// # Errors
    /// [`ErrorKind::NotStarted`] without [`startup`](crate::startup);
    /// [`ErrorKind::BadListenerName`] for a bad or repeated name, [`ErrorKind::UnknownListener`]
    /// for no listener; [`ErrorKind::ServerRunning`] if the pid file names another running
    /// process (take over from it instead), or this process's control socket address is in use;
    /// [`ErrorKind::StalePidFile`] for a pid file that holds no pid; an OS error if the pid file
    /// cannot be written.
    #[doc(alias = "WSPDuplicateSocket")]
    pub fn publish<I, N, L>(&self, listeners: I) -> Result<Published, Error>
    where
        I: IntoIterator<Item = (N, L)>,
        N: Into<String>,
        L: Into<OwnedFd>,
    {
        let listeners = listeners
            .into_iter()
            .map(|(n, l)| (n.into(), l.into()))
            .collect::<Vec<_>>();
        check_names(listeners.iter().map(|(n, _)| n.as_str()))?;
        let own = sys::getpid();
        if let Some(pid) = self.running_server()?.filter(|&p| p != own) {
            return Err(Error::new(
                ErrorKind::ServerRunning,
                format!(
                    "the pid file {} names process {pid}, which is running: take over from it (Upgrade::take_over) \
                     instead of publishing beside it, or stop it first",
                    self.pid_file.display()
                ),
            ));
        }
        let published = Published::start(self.clone(), listeners)?;
        self.write_pid_file(own)?;
        Ok(published)
    }

    /// Takes over the listeners named `names` from the running server the pid file names:
    /// when this returns, this process holds its own descriptors of them, listening, and may
    /// accept on them at once. Finish with [`Takeover::complete`] (the old process stops) or
    /// [`Takeover::abort`] (it keeps serving, unchanged).
    ///
    /// # Errors
    /// [`ErrorKind::NotStarted`] without [`startup`](crate::startup);
    /// [`ErrorKind::NoPidFile`]; [`ErrorKind::StalePidFile`] for a pid file naming no running
    /// process or this one, or holding no pid; [`ErrorKind::NotAServer`] if nothing answers
    /// takeovers for that process; [`ErrorKind::Squatter`] if another process holds its control
    /// address; [`ErrorKind::BadListenerName`] for a bad or repeated name;
    /// [`ErrorKind::UnknownListener`] for a name the old process does not have (the message
    /// lists the ones it has) or none; [`ErrorKind::AlreadyHandedOver`] from a server that
    /// already handed over; [`ErrorKind::TakeoverInProgress`] while another takeover of the
    /// same server is in progress; [`ErrorKind::TakeoverNotPermitted`] if the old process
    /// refuses this process's user; [`ErrorKind::PeerClosed`] or [`ErrorKind::PeerTimedOut`] if
    /// it closes the connection or does not answer within the timeout;
    /// [`ErrorKind::ProtocolViolation`] for an answer that breaks the protocol (this process
    /// aborts the takeover at once); the errors of [`sockets_from_info`](crate::sockets_from_info).
    #[doc(alias = "WSPSocket")]
    pub fn take_over(&self, names: &[&str]) -> Result<Takeover, Error> {
        client::take_over(self, names)
    }

    fn read_pid_file(&self) -> Result<Option<u32>, Error> {
        let text = match std::fs::read_to_string(&self.pid_file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::from_errno(
                    e,
                    &format!("reading the pid file {}", self.pid_file.display()),
                ));
            }
        };
        match text.trim().parse::<u32>() {
            Ok(pid) if pid != 0 && pid <= i32::MAX as u32 => Ok(Some(pid)),
            _ => Err(Error::new(
                ErrorKind::StalePidFile,
                format!(
                    "the pid file {} does not hold a pid (it holds {:?}): remove it, or pass the right path",
                    self.pid_file.display(),
                    truncate(text.trim())
                ),
            )),
        }
    }

    pub(crate) fn write_pid_file(&self, pid: u32) -> Result<(), Error> {
        crate::catalog_file::write_atomically(&self.pid_file, format!("{pid}\n").as_bytes())
            .map_err(|e| {
                Error::from_errno(
                    e,
                    &format!("writing the pid file {}", self.pid_file.display()),
                )
            })
    }

    /// Removes the pid file if it still names `pid` (a server that stops without handing over).
    pub(crate) fn remove_pid_file_of(&self, pid: u32) {
        if matches!(self.read_pid_file(), Ok(Some(p)) if p == pid) {
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

/// Where process `pid` answers takeovers: next to its inbox, in `runtime_dir` if given
/// (`SOCKDUP_RUNTIME_DIR`, [`Options::runtime_dir`](crate::Options::runtime_dir)), else in the
/// abstract namespace.
pub fn control_address(pid: u32, runtime_dir: Option<&Path>) -> sys::InboxAddress {
    match runtime_dir {
        Some(dir) => sys::InboxAddress::Path(dir.join(format!("sockdup-{pid}.upgrade.sock"))),
        None => sys::InboxAddress::Abstract(format!("sockdup/v1/{pid}/upgrade")),
    }
}

fn process_exists(pid: u32) -> bool {
    sys::pidfd_open(pid).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files() {
        let dir = std::env::temp_dir().join(format!("sockdup-upgrade-unit-{}", std::process::id()));
        let up = Upgrade::new(dir.join("x.pid"));
        assert_eq!(up.running_server().unwrap(), None, "missing");
        up.write_pid_file(sys::getpid()).unwrap();
        assert_eq!(up.running_server().unwrap(), Some(sys::getpid()));
        up.write_pid_file(i32::MAX as u32).unwrap();
        assert_eq!(up.running_server().unwrap(), None, "stale");
        std::fs::write(up.pid_file(), "nonsense").unwrap();
        let e = up.running_server().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StalePidFile);
        assert!(e.message().contains("does not hold a pid"), "{e}");
        up.remove_pid_file_of(1);
        assert!(up.pid_file().exists(), "only removed when it names the pid");
        up.write_pid_file(7).unwrap();
        up.remove_pid_file_of(7);
        assert!(!up.pid_file().exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
