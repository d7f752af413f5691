//! The new process's side: asking the running server for its listeners, redeeming them, and
//! telling it to stop (or to carry on).

use std::io::{BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::io::Errno;
use sockdup_core::error::{Error, WSAENETDOWN};
use sockdup_core::wire::ProtocolInfo;

use super::proto::{ToNew, ToOld, refusal, truncate};
use super::server::read_line;
use super::{Published, Upgrade, check_names, control_address};
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
    stream: UnixStream,
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
    let pid_file = upgrade.pid_file().display();
    let old_pid = upgrade.read_pid_file()?.ok_or_else(|| {
        Error::invalid(format!(
            "there is no pid file at {pid_file}: no server publishes there, so there is nothing to take over \
             (start the server afresh, or pass the running server's pid file)"
        ))
    })?;
    if old_pid == rt.pid {
        return Err(Error::invalid(format!(
            "the pid file {pid_file} names this process ({old_pid}): a process cannot take over from itself"
        )));
    }
    // Taken before connecting, so a pid reused after this check cannot pass for the server.
    let pidfd = sys::pidfd_open(old_pid).map_err(|_| {
        Error::invalid(format!(
            "the pid file {pid_file} names process {old_pid}, which is not running (a stale pid file): \
             start the server afresh"
        ))
    })?;
    let address = control_address(old_pid, rt.runtime_dir());
    let fd = sys::connect_control(&address, upgrade.timeout).map_err(|e| {
        if e == Errno::CONNREFUSED || e == Errno::NOENT {
            Error::invalid(format!(
                "process {old_pid}, named by the pid file {pid_file}, is not a sockdup server: nothing answers \
                 takeovers at {address} (is the pid file someone else's?)"
            ))
        } else {
            Error::from_errno(e, &format!("connecting to process {old_pid}'s control socket {address}"))
        }
    })?;
    let (peer, peer_uid) = sys::peer_cred(fd.as_fd())
        .map_err(|e| Error::from_errno(e, "reading the control socket's credentials"))?;
    if peer != old_pid
        || sys::has_exited(pidfd.as_fd()).map_err(|e| Error::from_errno(e, "polling a pidfd"))?
    {
        return Err(Error::invalid(format!(
            "the control address {address} of process {old_pid} is held by process {peer} (uid {peer_uid}): \
             refusing to take listeners from a squatter"
        )));
    }
    let stream = UnixStream::from(fd);
    let take = ToOld::Take(names.iter().map(|&n| n.to_owned()).collect());
    (&stream).write_all(take.encode().as_bytes()).map_err(|e| {
        Error::from_errno(e, &format!("asking process {old_pid} for its listeners"))
    })?;
    let mut reader = BufReader::new(&stream);
    let mut records = Vec::with_capacity(names.len());
    loop {
        let line = read_line(&mut reader).ok_or_else(|| silent(old_pid, upgrade.timeout))?;
        match ToNew::parse(&line) {
            Some(ToNew::Listener(name, text)) => {
                if records.len() >= names.len() || name != names[records.len()] {
                    return Err(garbled(old_pid, &line));
                }
                records.push(text.parse::<ProtocolInfo>()?);
            }
            Some(ToNew::Offered) if records.len() == names.len() => break,
            Some(ToNew::Refused(code, message)) => return Err(refusal(old_pid, code, &message)),
            _ => return Err(garbled(old_pid, &line)),
        }
    }
    drop(reader);
    let fds = crate::sockets_from_info(&records)?;
    tracing::debug!(old_pid, ?names, "took listeners over");
    Ok(Takeover {
        upgrade: upgrade.clone(),
        stream,
        old_pid,
        old_pidfd: pidfd,
        listeners: names.iter().map(|&n| n.to_owned()).zip(fds).collect(),
        finished: false,
    })
}

fn silent(old_pid: u32, timeout: Duration) -> Error {
    Error::from_code(
        WSAENETDOWN,
        format!(
            "process {old_pid} closed the takeover connection or did not answer within {timeout:?}; it keeps serving"
        ),
    )
}

fn garbled(old_pid: u32, line: &str) -> Error {
    Error::from_code(
        WSAENETDOWN,
        format!(
            "process {old_pid} answered {:?}, which is not what the takeover protocol expects here",
            truncate(line)
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
    /// `WSAENETDOWN` if the old process does not confirm within the timeout (it may or may
    /// not have handed over: check which pid the pid file names); the old process's refusal
    /// (e.g. it could not write the pid file; it keeps serving).
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
        let sent = (&self.stream).write_all(ToOld::Ready.encode().as_bytes());
        let line = sent
            .ok()
            .and_then(|()| read_line(&mut BufReader::new(&self.stream)));
        match line.as_deref().map(ToNew::parse) {
            Some(Some(ToNew::Done)) => {
                tracing::info!(old_pid = self.old_pid, "takeover complete");
                Ok(published)
            }
            Some(Some(ToNew::Refused(code, message))) => Err(refusal(self.old_pid, code, &message)),
            Some(_) => Err(garbled(self.old_pid, line.as_deref().unwrap_or(""))),
            // The old process exited before confirming (stopped by a signal, say): this
            // process holds the listeners and nobody else serves, so the takeover stands. (A
            // process closes its descriptors a moment before it counts as exited.)
            None if sys::exits_within(self.old_pidfd.as_fd(), EXIT_WAIT).unwrap_or(false) => {
                self.upgrade.write_pid_file(sys::getpid())?;
                tracing::warn!(
                    old_pid = self.old_pid,
                    "the old process exited before confirming the handover; this one serves now"
                );
                Ok(published)
            }
            None => Err(Error::from_code(
                WSAENETDOWN,
                format!(
                    "process {} did not confirm the handover within {:?}: see which pid {} names",
                    self.old_pid,
                    self.upgrade.timeout,
                    self.upgrade.pid_file().display()
                ),
            )),
        }
    }

    /// Gives up: this process's descriptors of the listeners close, and the old process keeps
    /// serving, unchanged. Returns once the old process has confirmed.
    ///
    /// # Errors
    /// `WSAENETDOWN` if the old process did not confirm (it then notices the closed
    /// connection and keeps serving all the same).
    pub fn abort(mut self) -> Result<(), Error> {
        self.abort_within(self.upgrade.timeout)
    }

    fn abort_within(&mut self, timeout: Duration) -> Result<(), Error> {
        self.finished = true;
        self.listeners.clear();
        let _ = self.stream.set_read_timeout(Some(timeout));
        (&self.stream)
            .write_all(ToOld::Abort.encode().as_bytes())
            .map_err(|e| Error::from_errno(e, "sending the abort"))?;
        let mut reader = BufReader::new(&self.stream);
        match read_line(&mut reader).map(|l| ToNew::parse(&l)) {
            Some(Some(ToNew::Aborted)) => Ok(()),
            _ => Err(silent(self.old_pid, timeout)),
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
