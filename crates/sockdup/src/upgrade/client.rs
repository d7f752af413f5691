//! The new process's side: asking the running server for its listeners, redeeming them, and
//! telling it to stop (or to carry on).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::io::Errno;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::line::LineMessage;
use sockdup_core::proto::upgrade::{ToNew, ToOld, check_names, truncate};
use sockdup_core::wire::ProtocolInfo;

use super::proto::Conn;
use super::{Published, Upgrade, control_address};
use crate::startup::Runtime;
use crate::sys;

/// How long dropping an unfinished takeover waits for the old process to confirm the abort.
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// How long `complete` waits for an old process that hung up to count as exited.
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// A takeover in progress, as the new process sees it: this process already holds the
/// listeners and may accept on them; the old process serves too until
/// [`complete`](Self::complete). Dropping it aborts the takeover (the old process keeps
/// serving, unchanged; this process's descriptors close).
pub struct Takeover {
    upgrade: Upgrade,
    conn: Conn,
    old_pid: u32,
    /// The old process, to tell "it exited" from "it did not answer".
    old_pidfd: OwnedFd,
    listeners: Vec<(String, OwnedFd)>,
    finished: bool,
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("pid_file", &self.upgrade.pid_file())
            .field("old_pid", &self.old_pid)
            .field(
                "names",
                &self.listeners.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

pub(super) fn take_over(upgrade: &Upgrade, names: &[&str]) -> Result<Takeover, Error> {
    let rt = Runtime::current()?;
    check_names(names.iter().copied())?;
    let (old_pid, pidfd) = find_server(upgrade, rt.pid)?;
    let mut conn = connect(upgrade, rt.runtime_dir(), old_pid, &pidfd)?;
    let take = ToOld::Take(names.iter().map(|&n| n.to_owned()).collect());
    let asked = conn.send(
        &take,
        &format!("asking process {old_pid} for its listeners"),
    );
    // Read the answer even if asking failed: the old process may have refused before reading
    // (this process's user), and its refusal is what to report.
    let answer = receive_offer(&mut conn, old_pid, names, upgrade.timeout);
    let runs = match (asked, answer) {
        (_, Ok(Answer::Refused(e))) | (Err(e), _) => return Err(e),
        (Ok(()), Ok(Answer::Offered(runs))) => runs,
        (Ok(()), Err(e)) => return Err(abort_now(&conn, e)),
    };
    // The records are base records (the old process duplicated with its listeners' base
    // entries): claimed from the table as runs, without making each record.
    let fds = crate::transfer::claim_runs(&rt, &runs).map_err(|e| abort_now(&conn, e))?;
    tracing::debug!(old_pid, ?names, "took listeners over");
    Ok(Takeover {
        upgrade: upgrade.clone(),
        conn,
        old_pid,
        old_pidfd: pidfd,
        listeners: names.iter().map(|&n| n.to_owned()).zip(fds).collect(),
        finished: false,
    })
}

/// The running server the pid file names, and a pidfd of it (taken before connecting, so a
/// pid reused after this check cannot pass for the server).
fn find_server(upgrade: &Upgrade, own_pid: u32) -> Result<(u32, OwnedFd), Error> {
    let pid_file = upgrade.pid_file().display();
    let old_pid = upgrade.read_pid_file()?.ok_or_else(|| {
        Error::new(
            ErrorKind::NoPidFile,
            format!(
                "there is no pid file at {pid_file}: no server publishes there, so there is nothing to take over \
                 (start the server afresh, or pass the running server's pid file)"
            ),
        )
    })?;
    if old_pid == own_pid {
        return Err(Error::new(
            ErrorKind::StalePidFile,
            format!(
                "the pid file {pid_file} names this process ({old_pid}): a process cannot take over from itself"
            ),
        ));
    }
    let pidfd = sys::pidfd_open(old_pid).map_err(|_| {
        Error::new(
            ErrorKind::StalePidFile,
            format!(
                "the pid file {pid_file} names process {old_pid}, which is not running (a stale pid file): \
                 start the server afresh"
            ),
        )
    })?;
    Ok((old_pid, pidfd))
}

/// A connection to the control socket of `old_pid`, checked to be held by that process.
fn connect(
    upgrade: &Upgrade,
    runtime_dir: Option<&std::path::Path>,
    old_pid: u32,
    pidfd: &OwnedFd,
) -> Result<Conn, Error> {
    let pid_file = upgrade.pid_file().display();
    let address = control_address(old_pid, runtime_dir);
    let fd = sys::connect_control(&address, upgrade.timeout).map_err(|e| {
        if e == Errno::CONNREFUSED || e == Errno::NOENT {
            Error::new(
                ErrorKind::NotAServer,
                format!(
                    "process {old_pid}, named by the pid file {pid_file}, is not a sockdup server: nothing answers \
                     takeovers at {address} (is the pid file someone else's?)"
                ),
            )
        } else {
            Error::from_errno(e, &format!("connecting to process {old_pid}'s control socket {address}"))
        }
    })?;
    let (peer, peer_uid) =
        crate::transport::peer_pid_uid(fd.as_fd(), &format!("the control socket {address}"))?;
    let exited =
        sys::has_exited(pidfd.as_fd()).map_err(|e| Error::from_errno(e, "polling a pidfd"))?;
    if peer != old_pid || exited {
        return Err(Error::new(
            ErrorKind::Squatter,
            format!(
                "the control address {address} of process {old_pid} is held by process {peer} (uid {peer_uid}): \
                 refusing to take listeners from a squatter"
            ),
        ));
    }
    Ok(Conn::new(UnixStream::from(fd)))
}

/// The old process's answer to `take`.
enum Answer {
    /// The records, one per name in the order asked, as runs (`(first, count)`: see
    /// [`expand`](sockdup_core::proto::upgrade::expand)).
    Offered(Vec<(ProtocolInfo, u32)>),
    /// Its refusal, as this process's error; the old process ended the session.
    Refused(Error),
}

/// Reads the old process's answer to `take`: one record per name, in order (in runs), then
/// `offered`.
fn receive_offer(
    conn: &mut Conn,
    old_pid: u32,
    names: &[&str],
    timeout: Duration,
) -> Result<Answer, Error> {
    let peer = format!("process {old_pid}");
    let mut runs = Vec::new();
    let mut taken = 0;
    loop {
        match recv(conn, old_pid, timeout)? {
            ToNew::Listeners(count, first) if count as usize <= names.len() - taken => {
                taken += count as usize;
                runs.push((first, count));
            }
            ToNew::Offered if taken == names.len() => return Ok(Answer::Offered(runs)),
            ToNew::Refused(r) => return Ok(Answer::Refused(refused(old_pid, &r))),
            other => return Err(unexpected(&peer, &other)),
        }
    }
}

/// The next line from the old process; a line that breaks the protocol is an error that says
/// so (and where it came from).
fn recv(conn: &mut Conn, old_pid: u32, timeout: Duration) -> Result<ToNew, Error> {
    let peer = format!("process {old_pid}");
    conn.recv::<ToNew>(&peer, timeout)
        .map_err(|e| match e.kind() {
            ErrorKind::ProtocolViolation => e.context(format!(
                "{peer} broke the takeover protocol; takeover aborted"
            )),
            _ => e.context("the takeover failed (the old process keeps serving)"),
        })
}

/// The old process's refusal, as this process's error (its kind and code).
fn refused(old_pid: u32, r: &sockdup_core::proto::upgrade::Refusal) -> Error {
    r.to_error()
        .context(format!("process {old_pid} refused the takeover"))
}

/// Tells the old process at once that this takeover is over (it keeps serving, and need not
/// wait out its timeout); returns `e`.
fn abort_now(conn: &Conn, e: Error) -> Error {
    let _ = conn.send(&ToOld::Abort, "aborting the takeover");
    e
}

fn unexpected(peer: &str, line: &ToNew) -> Error {
    Error::new(
        ErrorKind::ProtocolViolation,
        format!(
            "{peer} answered {:?}, which is not what the takeover protocol expects here; takeover aborted",
            truncate(line.encode().trim_end())
        ),
    )
}

impl Takeover {
    /// The process taking over from.
    pub fn old_pid(&self) -> u32 {
        self.old_pid
    }

    /// This process's descriptor of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, fd)| fd.as_fd())
    }

    /// Every listener taken over, with its name, in the order asked.
    pub fn listeners(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.listeners
            .iter()
            .map(|(n, fd)| (n.as_str(), fd.as_fd()))
    }

    /// This process is ready: it publishes the listeners it took over (answering the next
    /// takeover), the old process points the pid file at this process and stops.
    ///
    /// # Errors
    /// The errors of [`Upgrade::publish`] (then the old process keeps serving);
    /// [`ErrorKind::PeerTimedOut`] or [`ErrorKind::PeerClosed`] if the old process does not
    /// confirm within the timeout or closes the connection without exiting (it may or may not
    /// have handed over: check which pid the pid file names); [`ErrorKind::ProtocolViolation`]
    /// for an answer that breaks the protocol; the old process's refusal (e.g. it could not
    /// write the pid file; it keeps serving).
    pub fn complete(mut self) -> Result<Published, Error> {
        let listeners = std::mem::take(&mut self.listeners);
        let published = match Published::start(self.upgrade.clone(), listeners) {
            Ok(p) => p,
            Err(e) => {
                // Tell the old process at once rather than let it wait out its timeout.
                let _ = self.abort_within(ABORT_WAIT);
                return Err(e);
            }
        };
        self.finished = true;
        let (old_pid, timeout) = (self.old_pid, self.upgrade.timeout);
        let answer = self
            .conn
            .send(&ToOld::Ready, "telling the old process this one is ready")
            .and_then(|()| recv(&mut self.conn, old_pid, timeout));
        match answer {
            Ok(ToNew::Done) => {
                tracing::info!(old_pid, "takeover complete");
                Ok(published)
            }
            Ok(ToNew::Refused(r)) => Err(refused(old_pid, &r)),
            Ok(other) => Err(unexpected(&format!("process {old_pid}"), &other)),
            Err(e) if e.kind() == ErrorKind::ProtocolViolation => Err(e),
            // The old process exited before confirming (stopped by a signal, say): this
            // process holds the listeners and nobody else serves, so the takeover stands. (A
            // process closes its descriptors a moment before it counts as exited.)
            Err(_) if sys::exits_within(self.old_pidfd.as_fd(), EXIT_WAIT).unwrap_or(false) => {
                self.upgrade.write_pid_file(sys::getpid())?;
                tracing::warn!(
                    old_pid,
                    "the old process exited before confirming the handover; this one serves now"
                );
                Ok(published)
            }
            Err(e) => {
                let kind = match e.kind() {
                    ErrorKind::PeerTimedOut => ErrorKind::PeerTimedOut,
                    _ => ErrorKind::PeerClosed,
                };
                Err(Error::new(
                    kind,
                    format!(
                        "process {old_pid} did not confirm the handover within {timeout:?}: see which pid {} names",
                        self.upgrade.pid_file().display()
                    ),
                ))
            }
        }
    }

    /// Gives up: this process's descriptors of the listeners close, and the old process keeps
    /// serving, unchanged. Returns once the old process has confirmed.
    ///
    /// # Errors
    /// [`ErrorKind::PeerClosed`], [`ErrorKind::PeerTimedOut`] or
    /// [`ErrorKind::ProtocolViolation`] (`WSAENETDOWN`) if the old process did not confirm (it
    /// then notices the closed connection and keeps serving all the same).
    pub fn abort(mut self) -> Result<(), Error> {
        self.abort_within(self.upgrade.timeout)
    }

    fn abort_within(&mut self, timeout: Duration) -> Result<(), Error> {
        self.finished = true;
        self.listeners.clear();
        self.conn.send(&ToOld::Abort, "sending the abort")?;
        match recv(&mut self.conn, self.old_pid, timeout)? {
            ToNew::Aborted => Ok(()),
            ToNew::Refused(r) => Err(refused(self.old_pid, &r)),
            other => Err(unexpected(&format!("process {}", self.old_pid), &other)),
        }
    }
}

impl Drop for Takeover {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.abort_within(ABORT_WAIT);
        }
    }
}
