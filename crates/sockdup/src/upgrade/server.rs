//! The running server's side: its published listeners, the control socket, and one session
//! per takeover attempt.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sockdup_core::error::{Error, WSAEACCES, WSAEADDRINUSE, WSAEINPROGRESS, WSAENETDOWN};

use super::proto::{ToNew, ToOld};
use super::{Upgrade, control_address};
use crate::startup::Runtime;
use crate::sync::lock;
use crate::sys::{self, InboxAddress};

/// The longest line either side reads.
pub(super) const MAX_LINE: u64 = 64 * 1024;

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
            Self::Offering(other) => Err(Error::from_code(
                WSAEINPROGRESS,
                format!(
                    "process {other} is taking over this server's listeners right now: one takeover at a time; \
                     try again when it has finished or given up"
                ),
            )),
            Self::HandedOver(h) => Err(Error::invalid(format!(
                "this server already handed its listeners to process {}, which the pid file names now: take over \
                 from that one",
                h.pid
            ))),
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
                Error::from_code(
                    WSAEADDRINUSE,
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
            let refusal = Error::from_code(
                WSAEINPROGRESS,
                "too many takeover connections at once: try again",
            );
            let _ = refuse(&stream, &refusal);
            continue;
        }
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("sockdup-takeover".into())
            .spawn(move || {
                session(&shared, stream);
                shared.sessions.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "starting a takeover session");
        }
    }
}

fn refuse(mut stream: &UnixStream, e: &Error) -> std::io::Result<()> {
    stream.write_all(
        ToNew::Refused(e.code(), e.message().to_owned())
            .encode()
            .as_bytes(),
    )
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at end of file, on a timeout or an
/// error.
pub(super) fn read_line(reader: &mut BufReader<&UnixStream>) -> Option<String> {
    let mut line = String::new();
    match reader.by_ref().take(MAX_LINE).read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) if !line.ends_with('\n') => None,
        Ok(_) => {
            line.pop();
            Some(line)
        }
    }
}

/// Abandons the offer to `pid` unless it completed, whatever way the session ends.
struct Offer<'a> {
    shared: &'a Shared,
    pid: u32,
}

impl Drop for Offer<'_> {
    fn drop(&mut self) {
        lock(&self.shared.state).abandon(self.pid);
        self.shared.changed.notify_all();
    }
}

/// One takeover attempt, from the `take` line to `done`, `aborted` or a refusal.
fn session(shared: &Shared, stream: UnixStream) {
    let outcome = (|| -> Result<(), Error> {
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(shared.upgrade.timeout)))
            .and_then(|()| stream.set_write_timeout(Some(shared.upgrade.timeout)))
            .map_err(|e| Error::from_errno(e, "configuring a takeover connection"))?;
        let (pid, uid) = sys::peer_cred(stream.as_fd())
            .map_err(|e| Error::from_errno(e, "reading a takeover connection's credentials"))?;
        let own_uid = sys::getuid();
        if uid != own_uid && uid != 0 {
            return Err(Error::from_code(
                WSAEACCES,
                format!(
                    "process {pid} runs as uid {uid}; only uid {own_uid} (this server's user) or root may take over"
                ),
            ));
        }
        let mut reader = BufReader::new(&stream);
        let line = read_line(&mut reader)
            .ok_or_else(|| Error::from_code(WSAENETDOWN, "no takeover request arrived"))?;
        let ToOld::Take(names) = ToOld::parse(&line)? else {
            return Err(Error::invalid(
                "a takeover starts with `take`: nothing to be ready for or abort",
            ));
        };
        super::check_names(names.iter().map(String::as_str))?;
        let picked = names
            .iter()
            .map(|n| {
                shared.index.get(n).copied().ok_or_else(|| {
                    Error::invalid(format!(
                        "this server has no listener named {n:?}; it has {}",
                        shared.names.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        lock(&shared.state).begin(pid)?;
        let offer = Offer { shared, pid };
        let fds: Vec<BorrowedFd<'_>> = picked.iter().map(|&i| shared.fds[i].as_fd()).collect();
        let records = crate::duplicate_sockets(&fds, pid)?;
        let mut out = String::new();
        for (name, record) in names.iter().zip(&records) {
            out.push_str(&ToNew::Listener(name.clone(), record.to_string()).encode());
        }
        out.push_str(&ToNew::Offered.encode());
        (&stream)
            .write_all(out.as_bytes())
            .map_err(|e| Error::from_errno(e, "sending the records"))?;
        tracing::debug!(pid, ?names, "offered listeners");
        match read_line(&mut reader).map(|l| ToOld::parse(&l)) {
            Some(Ok(ToOld::Ready)) => {
                shared.upgrade.write_pid_file(pid)?;
                lock(&shared.state).finish(pid, names.clone());
                shared.changed.notify_all();
                let _ = (&stream).write_all(ToNew::Done.encode().as_bytes());
                tracing::info!(pid, ?names, "handed listeners over");
                Ok(())
            }
            Some(Ok(ToOld::Abort)) => {
                // Serving as before by the time the new process hears it, so it (or another)
                // can start the next takeover at once.
                drop(offer);
                let _ = (&stream).write_all(ToNew::Aborted.encode().as_bytes());
                tracing::info!(pid, "takeover aborted by the new process; still serving");
                Ok(())
            }
            Some(Ok(ToOld::Take(_))) => Err(Error::invalid("a second `take` in one takeover")),
            Some(Err(e)) => Err(e),
            None => {
                tracing::warn!(
                    pid,
                    "the new process left before it was ready; still serving"
                );
                Ok(())
            }
        }
    })();
    if let Err(e) = outcome {
        tracing::info!(code = e.code(), error = %e, "takeover refused");
        let _ = refuse(&stream, &e);
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
        assert_eq!(e.code(), 10022);
        assert!(e.message().contains("process 11"), "{e}");
    }
}
