//! The acceptor: owns the listeners, runs the worker processes, and hands every accepted
//! connection to one of them.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::line::{LineBuffer, READ_CHUNK};
use sockdup_core::proto::handoff::{FromWorker, ToWorker};
use sockdup_core::wire::{ProtocolInfo, TextEncoder};

use super::dispatch::{Action, Config, Dispatch, MAX_BATCH, Policy, Summary};

/// Stops a running [`Acceptor`] from another thread (or a signal handler's flag): it stops
/// accepting, lets the workers finish within the drain deadline, and `run` returns.
#[derive(Clone, Debug, Default)]
pub struct ShutdownHandle(Arc<AtomicBool>);

impl ShutdownHandle {
    /// Asks the acceptor to shut down gracefully.
    pub fn shutdown(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// The flag itself, e.g. for `signal_hook::flag::register`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A listening socket the acceptor accepts on.
#[derive(Debug)]
pub struct Listener(OwnedFd);

impl From<std::net::TcpListener> for Listener {
    fn from(l: std::net::TcpListener) -> Self {
        Self(l.into())
    }
}

impl From<std::os::unix::net::UnixListener> for Listener {
    fn from(l: std::os::unix::net::UnixListener) -> Self {
        Self(l.into())
    }
}

/// Hands connections from its listeners to worker processes, as the seed's handoff mode does:
/// each worker announces its pid, the acceptor duplicates every accepted connection to one of
/// them and keeps its own descriptor until the worker confirms it redeemed the record.
///
/// Nothing is lost: a worker that dies (or refuses, or stops answering) before confirming has
/// its connections given to another worker; dead workers are restarted; workers whose output
/// is not the protocol are replaced. When every worker has `max_outstanding` connections not
/// yet done, the acceptor stops accepting (the kernel's backlog holds new ones).
#[derive(Debug)]
pub struct Acceptor {
    program: OsString,
    args: Vec<OsString>,
    listeners: Vec<Listener>,
    workers: usize,
    policy: Policy,
    max_outstanding: usize,
    answer_timeout: Duration,
    drain_deadline: Duration,
    shutdown: ShutdownHandle,
}

impl Acceptor {
    /// An acceptor that will run `program args...` as its workers.
    pub fn new<I, S>(program: impl Into<OsString>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            listeners: Vec::new(),
            workers: 2,
            policy: Policy::RoundRobin,
            max_outstanding: 256,
            answer_timeout: Duration::from_secs(5),
            drain_deadline: Duration::from_secs(10),
            shutdown: ShutdownHandle::default(),
        }
    }

    /// Adds a listening socket.
    pub fn listener(mut self, listener: impl Into<Listener>) -> Self {
        self.listeners.push(listener.into());
        self
    }

    /// How many worker processes (at least 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// How to pick a worker.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The most connections a worker may have not yet done before it counts as busy.
    pub fn max_outstanding(mut self, n: usize) -> Self {
        self.max_outstanding = n.max(1);
        self
    }

    /// How long a worker may take to announce itself or confirm a connection before it is
    /// replaced.
    pub fn answer_timeout(mut self, t: Duration) -> Self {
        self.answer_timeout = t;
        self
    }

    /// How long workers may take to finish their connections at shutdown.
    pub fn drain_deadline(mut self, t: Duration) -> Self {
        self.drain_deadline = t;
        self
    }

    /// A handle that shuts this acceptor down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Runs until shut down; returns what happened.
    ///
    /// One thread does everything, around one `epoll` set: it accepts on the listeners,
    /// reads the workers' answers, and hands what it accepted to the workers in batches
    /// (all the connections one wake-up brought for one worker, at most 64, go in one
    /// [`duplicate_sockets`](crate::duplicate_sockets) message to the worker's inbox and one
    /// write of `conn` lines). It never sleeps waiting for an inbox: its own connection to
    /// each worker's inbox is in the epoll set, and a batch's `conn` lines are written when
    /// the inbox's answer (the tickets) comes; meanwhile it accepts and hands out more.
    /// The decisions (which worker, backpressure, re-dispatch, restarts, timeouts, the drain)
    /// are the I/O-free `Dispatch`'s; this loop carries them out.
    ///
    /// # Errors
    /// [`ErrorKind::NotStarted`] without [`crate::startup`]; [`ErrorKind::InvalidArgument`]
    /// without listeners or if the worker program cannot be started;
    /// [`ErrorKind::Unsupported`] for a listener whose connections sockdup cannot duplicate.
    pub fn run(mut self) -> Result<Summary, Error> {
        if self.listeners.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "the acceptor has no listening socket",
            ));
        }
        // Held for the run: the record of every batch needs it, and looking it up (a `getpid`
        // to rule out a fork) once per batch would be a syscall per handoff.
        let rt = crate::startup::Runtime::current()?;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| Error::from_errno(e, "creating the acceptor's epoll"))?;
        let mut listeners = Vec::new();
        let mut entries = Vec::new();
        for (i, l) in std::mem::take(&mut self.listeners).into_iter().enumerate() {
            // Connections accepted from a listener have its family, type and protocol: the
            // catalog entry is learned once here, not three getsockopt per connection.
            entries.push(crate::transfer::entry_for(l.0.as_fd())?);
            crate::sys::socket::set_nonblocking(l.0.as_fd())
                .map_err(|e| Error::from_errno(e, "making a listener non-blocking"))?;
            epoll::add(
                &ep,
                &l.0,
                epoll::EventData::new_u64(i as u64),
                epoll::EventFlags::IN,
            )
            .map_err(|e| Error::from_errno(e, "registering a listener with epoll"))?;
            listeners.push(l.0);
        }
        let cfg = Config {
            workers: self.workers,
            policy: self.policy,
            max_outstanding: self.max_outstanding,
            answer_timeout: self.answer_timeout,
            drain_deadline: self.drain_deadline,
        };
        let mut run = Run {
            cfg: &self,
            rt,
            ep,
            listeners,
            singles: vec![0; entries.len()],
            records: entries,
            encoders: (0..self.workers).map(|_| TextEncoder::new()).collect(),
            text: Vec::with_capacity(MAX_BATCH_TEXT),
            listener_of: Vec::with_capacity(64),
            fds: Vec::with_capacity(MAX_BATCH),
            push: crate::transfer::PushBuffers::default(),
            procs: (0..self.workers).map(|_| Proc::default()).collect(),
            d: Dispatch::new(cfg, Instant::now()),
        };
        let result = run.serve();
        // New connections are refused rather than left in a backlog nobody accepts from.
        run.listeners.clear();
        run.kill_all();
        result.map(|()| run.d.summary().clone())
    }
}

/// An empty list of borrowed descriptors with the allocation of `fds`, for another lifetime:
/// the acceptor keeps one list for the descriptors of every batch (they borrow from the
/// dispatch only while the batch is sent) instead of allocating one per batch. Collecting a
/// `Vec`'s own iterator into a `Vec` of a type of the same size and alignment reuses its
/// allocation; the list is emptied first, so nothing is converted.
fn relabel<'b>(mut fds: Vec<BorrowedFd<'_>>) -> Vec<BorrowedFd<'b>> {
    fds.clear();
    fds.into_iter().map_while(|_| None).collect()
}

/// Whether starting a process failed for lack of resources that may free up: descriptors
/// (`EMFILE`, `ENFILE`), processes (`EAGAIN`), memory (`ENOMEM`).
fn is_lack_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error().is_some_and(|n| {
        [Errno::MFILE, Errno::NFILE, Errno::AGAIN, Errno::NOMEM]
            .iter()
            .any(|x| x.raw_os_error() == n)
    })
}

/// The epoll key of a worker's output: this bit, its generation and its slot (listeners are
/// keyed by their index).
const WORKER_KEY: u64 = 1 << 63;

/// With [`WORKER_KEY`]: the key of the acceptor's connection to that worker's inbox (its
/// answers to the pushes), not of its output.
const INBOX_KEY: u64 = 1 << 62;

fn worker_key(slot: usize, generation: u64) -> u64 {
    WORKER_KEY | (generation << 24) | slot as u64
}

/// The longest line a worker may write (`fail` and `error` lines carry at most 1 KiB of
/// message) before it counts as not speaking the protocol.
const MAX_WORKER_LINE: usize = 4096;

/// The most bytes read from one worker's output per wake-up: a pipe's default capacity.
const READ_BUDGET: usize = 64 * 1024;

/// The most bytes read from the output of a worker that exited (its last answers: at most a
/// pipe's capacity, unless something it started still writes there).
const EXIT_READ_BUDGET: usize = 1024 * 1024;

/// The most connections accepted from one listener per wake-up, so that the workers' answers
/// are read between batches.
const ACCEPT_BATCH: usize = 256;

/// How many rounds in a row take one connection from a listener (and stop) before one
/// drains it again to see whether connections still come one at a time: `accept4` calls per
/// connection are then 1 + 1/`SINGLES`.
const SINGLES: usize = 4;

/// Room for the `conn` lines of a full batch (64 lines of about 880 bytes).
const MAX_BATCH_TEXT: usize = 64 * 900;

/// How often the workers' exits are checked (and the longest wait in epoll).
const TICK: Duration = Duration::from_millis(50);

/// An accepted connection, held until its worker confirms it: the acceptor's descriptor, and
/// the listener it came from (for its catalog entry).
struct Pending {
    fd: OwnedFd,
    listener: usize,
}

/// A worker slot's process and its pipes.
struct Proc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// The worker's standard output, non-blocking, in the epoll set.
    stdout: Option<ChildStdout>,
    /// What it wrote, not yet a whole line.
    lines: LineBuffer,
    generation: u64,
    /// This acceptor's connection to the worker's inbox (in the epoll set), made at its first
    /// batch: the pushes go out on it and their answers are read when it turns readable, so
    /// the acceptor does not sleep in `recvmsg` for each batch (behind the scheduling of the
    /// worker's inbox thread, with every other worker's connections waiting too).
    inbox: Option<OwnedFd>,
    /// The ids of the batches pushed on `inbox` whose answers have not come, oldest first
    /// (an inbox answers one connection's requests in order).
    inflight: VecDeque<Vec<u64>>,
}

impl Default for Proc {
    fn default() -> Self {
        Self {
            child: None,
            stdin: None,
            stdout: None,
            lines: LineBuffer::new(MAX_WORKER_LINE),
            generation: 0,
            inbox: None,
            inflight: VecDeque::new(),
        }
    }
}

/// The driver: epoll, listeners, pipes and child processes around a [`Dispatch`].
struct Run<'a> {
    cfg: &'a Acceptor,
    rt: Arc<crate::startup::Runtime>,
    ep: OwnedFd,
    listeners: Vec<OwnedFd>,
    /// Each listener's catalog entry, the record of its connections but for the target's pid
    /// and run and the ticket (filled in per connection).
    records: Vec<ProtocolInfo>,
    /// Writes the records' text of each worker slot, re-encoding only what changed from the
    /// slot's last record (the ticket, as long as the worker is the same process).
    encoders: Vec<TextEncoder>,
    /// The `conn` lines of a batch (reused).
    text: Vec<u8>,
    /// The listener of each connection of a batch (reused).
    listener_of: Vec<usize>,
    /// The descriptors of a batch: an empty list kept for its allocation (see [`relabel`]).
    fds: Vec<BorrowedFd<'static>>,
    /// The request's bytes, the inbox's answer and the tickets of a batch (reused).
    push: crate::transfer::PushBuffers,
    /// Per listener, 0 while its rounds drain it, or 1 + the rounds that took one
    /// connection since the last round that drained it and found one (see `accept_from`).
    singles: Vec<usize>,
    procs: Vec<Proc>,
    d: Dispatch<Pending>,
}

impl Run<'_> {
    fn serve(&mut self) -> Result<(), Error> {
        let mut events = Vec::with_capacity(64);
        // Exits are checked every tick, not after every event: under load that would be a
        // wait4 per worker per connection.
        let mut last_check = Instant::now();
        loop {
            self.apply_actions()?;
            if self.d.finished() {
                return Ok(());
            }
            if !self.d.draining() && self.cfg.shutdown.requested() {
                self.d.shutdown(Instant::now());
                continue;
            }
            // What is due is looked up once per turn (it was a tenth of the acceptor's
            // instructions per connection when looked up before and after the wait): what the
            // wait's events change is either later than the wait (a new deadline is an event's
            // time plus a delay), and seen on the next turn, or no longer due (an answer came),
            // and `handle_timeout` then finds nothing to do.
            //
            // Queued connections that a worker could take but did not fit in this turn's
            // batches: go on at once.
            let more = self.d.more();
            let due = self.d.poll_timeout();
            let timeout = if more {
                Duration::ZERO
            } else {
                due.map_or(TICK, |t| t.saturating_duration_since(Instant::now()))
                    .min(TICK)
            };
            let now = self.wait(timeout, &mut events)?;
            if now.duration_since(last_check) >= TICK {
                self.check_exits(now);
                last_check = now;
            }
            if due.is_some_and(|t| now >= t) {
                self.d.handle_timeout(now);
            }
            self.d.dispatch(now);
        }
    }

    /// Waits up to `timeout` for events and reports them: the workers' answers first, then
    /// new connections; returns the time the wait ended.
    fn wait(
        &mut self,
        timeout: Duration,
        events: &mut Vec<epoll::Event>,
    ) -> Result<Instant, Error> {
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        events.clear();
        match epoll::wait(&self.ep, spare_capacity(events), Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::from_errno(e, "waiting in epoll")),
        }
        let now = Instant::now();
        for ev in events.iter() {
            let key = ev.data.u64();
            if key & WORKER_KEY == 0 {
                continue;
            }
            let slot = (key & 0xff_ffff) as usize;
            let generation = (key & !(WORKER_KEY | INBOX_KEY)) >> 24;
            if self
                .procs
                .get(slot)
                .is_none_or(|p| p.generation != generation)
            {
                continue;
            }
            if key & INBOX_KEY == 0 {
                self.read_output(slot, now, READ_BUDGET);
            } else {
                self.read_answers(slot);
            }
        }
        for ev in events.iter() {
            let key = ev.data.u64();
            if key & WORKER_KEY == 0 {
                self.accept_from(key as usize, now);
            }
        }
        Ok(now)
    }

    /// Accepts what `room` allows from listener `i`.
    ///
    /// Connections that come one at a time would cost two `accept4` each, the second failing
    /// with `EAGAIN`. So after a round that found exactly one, the next rounds take one and
    /// stop, without looking for a second; every [`SINGLES`]th round looks again (drains), and
    /// a round that finds more than one goes back to draining. If more were waiting meanwhile,
    /// nothing is lost or late: epoll is level-triggered, and the listener is reported ready
    /// again at the next wait, at once.
    fn accept_from(&mut self, i: usize, now: Instant) {
        let Some(singles) = self.singles.get(i).copied() else {
            return;
        };
        let probe = singles == 0 || singles >= SINGLES;
        let mut room = self.d.room().min(if probe { ACCEPT_BATCH } else { 1 });
        let mut got = 0;
        while room > 0 {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            match crate::sys::socket::try_accept(listener.as_fd()) {
                Ok(Some(fd)) => {
                    self.d.accepted(Pending { fd, listener: i });
                    room -= 1;
                    got += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    // Out of descriptors or the like: the connection stays in the backlog.
                    tracing::warn!(error = %e, "sockdup acceptor: accept failed");
                    self.d.handle_accept_failed(now);
                    return;
                }
            }
        }
        self.singles[i] = match (probe, got) {
            // Drained, and found one: take one at a time from now on.
            (true, 1) => 1,
            (true, _) => 0,
            (false, _) => singles + 1,
        };
    }

    /// Reads what worker `slot` wrote (until its pipe is empty, or `budget` bytes) and reports
    /// every whole line as it comes; a line that is not the protocol is reported at once, and
    /// the rest is not read; at the end of its output, reports that.
    ///
    /// Lines are taken after every read, not after the pipe is empty: a worker that writes
    /// without end (a line that never ends, or lines faster than they are read) is caught by the
    /// line bound after a few KiB, and cannot make this loop (or its buffer) grow without
    /// bound. The budget keeps one chatty worker from holding the loop: what it did not read,
    /// epoll (level-triggered) reports again at once.
    fn read_output(&mut self, slot: usize, now: Instant, budget: usize) {
        let mut read = 0;
        let mut closed = false;
        loop {
            let p = &mut self.procs[slot];
            let Some(out) = p.stdout.as_mut() else {
                return;
            };
            let n = match p.lines.read_from(out) {
                Ok(0) => {
                    closed = true;
                    0
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    closed = true;
                    0
                }
            };
            read += n;
            loop {
                match self.procs[slot].lines.next_message::<FromWorker>() {
                    Ok(Some(line)) => self.d.handle_line(slot, Ok(line), now),
                    Ok(None) => break,
                    Err(e) => {
                        // The stream is out of step: the worker is replaced (Action::Kill,
                        // which kills it before its pipes close), and nothing more of it is
                        // read.
                        self.d.handle_line(slot, Err(e), now);
                        return;
                    }
                }
            }
            // Less than asked for: the pipe is empty (one read for many answers).
            if closed || n < READ_CHUNK || read >= budget {
                break;
            }
        }
        if closed {
            self.close_output(slot);
            self.d.handle_output_closed(slot, now);
        }
    }

    /// Stops watching and reading the output of worker `slot`.
    fn close_output(&mut self, slot: usize) {
        let p = &mut self.procs[slot];
        if let Some(out) = p.stdout.take() {
            let _ = epoll::delete(&self.ep, &out);
        }
        p.lines = LineBuffer::new(MAX_WORKER_LINE);
    }

    /// Reaps the workers that exited, after reading their last answers (they may confirm
    /// connections). A worker that exited is gone even if something it started still holds
    /// its output open.
    fn check_exits(&mut self, now: Instant) {
        for slot in 0..self.procs.len() {
            let exited = self.procs[slot]
                .child
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
            if !exited {
                continue;
            }
            self.read_output(slot, now, EXIT_READ_BUDGET);
            self.close_output(slot);
            self.close_inbox(slot);
            let p = &mut self.procs[slot];
            p.stdin = None;
            p.child = None;
            self.d.handle_exited(slot, now);
        }
    }

    /// Carries out every decision taken so far.
    fn apply_actions(&mut self) -> Result<(), Error> {
        while let Some(action) = self.d.poll_action() {
            match action {
                Action::Spawn { slot, generation } => self.spawn(slot, generation)?,
                Action::Send { slot, pid, ids } => self.send(slot, pid, ids),
                Action::Kill { slot, report } => self.kill(slot, report.as_deref()),
                Action::CloseInput { slot } => self.procs[slot].stdin = None,
                Action::Listen(on) => self.listen(on),
                Action::CloseListeners => self.listeners.clear(),
            }
        }
        Ok(())
    }

    /// Starts the worker of `slot` as `generation`, after killing and reaping the one before.
    ///
    /// A start that fails for lack of resources (this process out of descriptors: the pipes;
    /// out of processes or memory) is tried again a little later, and the acceptor serves on
    /// with the workers it has; any other failure (the program cannot be run) ends the run.
    fn spawn(&mut self, slot: usize, generation: u64) -> Result<(), Error> {
        self.reap(slot);
        let spawned = Command::new(&self.cfg.program)
            .args(&self.cfg.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if is_lack_of_resources(&e) => {
                tracing::warn!(slot, error = %e, "sockdup acceptor: cannot start a worker now; trying again shortly");
                self.d.handle_spawn_failed(slot, Instant::now());
                return Ok(());
            }
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("starting worker {:?} failed: {e}", self.cfg.program),
                )
                .with_source(e));
            }
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let registered = stdout.as_ref().map_or(Ok(()), |out| {
            crate::sys::socket::set_nonblocking(out.as_fd())
                .map_err(|e| Error::from_errno(e, "making a worker's output non-blocking"))?;
            epoll::add(
                &self.ep,
                out,
                epoll::EventData::new_u64(worker_key(slot, generation)),
                epoll::EventFlags::IN,
            )
            .map_err(|e| Error::from_errno(e, "registering a worker's output with epoll"))
        });
        if let Err(e) = registered {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let pid = child.id();
        tracing::debug!(slot, pid, "sockdup acceptor: started a worker");
        let p = &mut self.procs[slot];
        p.child = Some(child);
        p.stdin = stdin;
        p.stdout = stdout;
        p.generation = generation;
        self.d.handle_spawned(slot, pid, Instant::now());
        Ok(())
    }

    /// Pushes the connections `ids` to the inbox of worker `slot` in one message on the
    /// acceptor's own connection to it (made at the first batch), without waiting: their
    /// `conn` lines go out in one write when the inbox answers with the tickets
    /// ([`read_answers`](Self::read_answers)); `ids` is kept until then. A failure is
    /// reported (for lack of room the batch waits and goes again in smaller batches;
    /// otherwise the worker is replaced, and the batch goes to another). The request's bytes
    /// and the descriptor list are the kept ones: a push allocates nothing.
    fn send(&mut self, slot: usize, pid: u32, ids: Vec<u64>) {
        if self.d.batch(slot, &ids).is_none() {
            self.d.recycle(ids);
            return;
        }
        let sent = self.connect_inbox(slot, pid).and_then(|()| {
            let Some(batch) = self.d.batch(slot, &ids) else {
                return Ok(());
            };
            let mut fds = relabel(std::mem::take(&mut self.fds));
            fds.extend(batch.map(|p| p.fd.as_fd()));
            debug_assert!(
                self.d.batch(slot, &ids).is_some_and(|mut b| b.all(|p| {
                    crate::transfer::entry_for(p.fd.as_fd()).is_ok_and(|e| {
                        let mut known = self.records[p.listener].clone();
                        (known.service_flags3, known.service_flags4) = (0, 0);
                        known.provider_reserved = 0;
                        e == known
                    })
                })),
                "a listener's entry does not match a connection it accepted"
            );
            let pushed = match self.procs[slot].inbox.as_ref() {
                Some(inbox) => crate::transfer::push_send(inbox.as_fd(), &fds, &mut self.push, pid),
                None => Err(Error::new(
                    ErrorKind::PeerClosed,
                    "no connection to the worker's inbox",
                )),
            };
            self.fds = relabel(fds);
            pushed
        });
        match sent {
            Ok(()) => {
                self.procs[slot].inflight.push_back(ids);
                self.d.handle_push_sent(slot);
            }
            Err(e) => {
                self.send_failed(slot, pid, &ids, &e);
                self.d.recycle(ids);
            }
        }
    }

    /// Makes the acceptor's connection to the inbox of worker `slot` (process `pid`), if it
    /// has none, and watches it.
    fn connect_inbox(&mut self, slot: usize, pid: u32) -> Result<(), Error> {
        let p = &mut self.procs[slot];
        if p.inbox.is_some() {
            return Ok(());
        }
        let inbox = crate::transfer::connect_inbox(&self.rt, pid)?;
        epoll::add(
            &self.ep,
            &inbox,
            epoll::EventData::new_u64(worker_key(slot, p.generation) | INBOX_KEY),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Error::from_errno(e, "registering a worker's inbox with epoll"))?;
        p.inbox = Some(inbox);
        Ok(())
    }

    /// Reads the answers that came from the inbox of worker `slot` and, for each, writes its
    /// batch's `conn` lines in one write (or reports the failed push). A connection the inbox
    /// closed (or one out of step) is closed here: the batches still waiting on it are
    /// reported failed, and the worker's next batch makes a new one.
    fn read_answers(&mut self, slot: usize) {
        // One push waits at a time (the dispatch gives a worker no batch while its inbox has
        // not answered): after its answer, no read that would find nothing, unless the
        // connection turned readable with nothing asked (its end).
        let mut first = true;
        while first || !self.procs[slot].inflight.is_empty() {
            first = false;
            let p = &mut self.procs[slot];
            let (Some(inbox), Some(pid)) = (p.inbox.as_ref(), p.child.as_ref().map(Child::id))
            else {
                return;
            };
            let Some(answer) = crate::transfer::push_answer(inbox.as_fd(), &mut self.push, pid)
            else {
                return;
            };
            let Some(ids) = p.inflight.pop_front() else {
                // Nothing asked: the inbox closed the connection (or spoke out of turn). The
                // worker's next batch makes a new one.
                self.close_inbox(slot);
                return;
            };
            let lost = match answer {
                Ok((target, nonce)) => {
                    self.answered(slot, pid, &ids, target, nonce);
                    false
                }
                Err(failed) => {
                    self.send_failed(slot, pid, &ids, &failed.error);
                    failed.closed
                }
            };
            self.d.recycle(ids);
            if lost {
                self.inbox_lost(slot, pid);
                return;
            }
            if self.procs[slot].inflight.is_empty() {
                self.d.handle_pushed(slot);
            }
        }
    }

    /// The inbox of worker `slot` (process `pid`) took the batch `ids` and answered with its
    /// pid `target`, its run `nonce` and the tickets (in the kept push buffers): writes the
    /// batch's `conn` lines in one write.
    fn answered(&mut self, slot: usize, pid: u32, ids: &[u64], target: u32, nonce: u32) {
        let Some(batch) = self.d.batch(slot, ids) else {
            // No longer this worker's (it was replaced, or timed out): its inbox's tickets
            // expire there, unredeemed, and the batch went to another worker.
            return;
        };
        let mut listeners = std::mem::take(&mut self.listener_of);
        listeners.clear();
        listeners.extend(batch.map(|p| p.listener));
        let stdin = &mut self.procs[slot].stdin;
        let (records, encoder, text) =
            (&mut self.records, &mut self.encoders[slot], &mut self.text);
        let tickets = &self.push.tickets;
        let written = if tickets.len() != ids.len() {
            Err(Error::new(
                ErrorKind::ProtocolViolation,
                format!("process {pid}'s inbox answered a push with the wrong tickets"),
            ))
        } else if let Some(stdin) = stdin.as_mut() {
            // The records are each listener's entry with the target's pid and run and a
            // ticket: filled in place, written as text by an encoder that re-encodes only
            // what changed from the record before (the tickets), not built and formatted one
            // by one.
            text.clear();
            for ((&id, &listener), ticket) in ids.iter().zip(&listeners).zip(tickets) {
                let record = &mut records[listener];
                record.service_flags3 = target;
                record.service_flags4 = nonce;
                record.provider_reserved = *ticket;
                ToWorker::encode_conn_bytes_into(id, record, encoder, text);
            }
            // One write for the whole batch: a pipe is unbuffered.
            stdin
                .write_all(text)
                .map_err(|e| Error::from_errno(e, "writing to the worker"))
        } else {
            Err(Error::new(
                ErrorKind::PeerClosed,
                "the worker's input is closed",
            ))
        };
        self.listener_of = listeners;
        match written {
            Ok(()) => tracing::debug!(
                slot,
                pid,
                count = ids.len(),
                "sockdup acceptor: connections handed to a worker"
            ),
            Err(e) => self.send_failed(slot, pid, ids, &e),
        }
    }

    /// Handing the batch `ids` to worker `slot` failed with `e`: reported, if the batch is
    /// still the worker's (after a failure that replaced it, the batches still waiting for
    /// its inbox's answers went to other workers with the rest).
    fn send_failed(&mut self, slot: usize, pid: u32, ids: &[u64], e: &Error) {
        if self.d.batch(slot, ids).is_none() {
            return;
        }
        let count = ids.len();
        tracing::warn!(slot, pid, count, kind = %e.kind(), error = %e, "sockdup acceptor: handing off failed");
        self.d.handle_send_failed(slot, ids, e, Instant::now());
    }

    /// The inbox of worker `slot` closed the acceptor's connection (or is out of step): the
    /// batches still waiting for its answers get none, and each is reported failed (the
    /// worker is replaced, and they go to another one), unless it is no longer the worker's.
    fn inbox_lost(&mut self, slot: usize, pid: u32) {
        let mut waiting = std::mem::take(&mut self.procs[slot].inflight);
        self.close_inbox(slot);
        while let Some(ids) = waiting.pop_front() {
            let e = Error::new(
                ErrorKind::PeerClosed,
                format!(
                    "process {pid}'s inbox closed the connection before it answered for these connections"
                ),
            );
            self.send_failed(slot, pid, &ids, &e);
            self.d.recycle(ids);
        }
        // The (empty) queue goes back, with its allocation.
        self.procs[slot].inflight = waiting;
    }

    /// Closes the acceptor's connection to the inbox of worker `slot`, forgetting the
    /// batches waiting for its answers: for a worker that is gone or being replaced, whose
    /// unconfirmed connections the dispatch gives to others.
    fn close_inbox(&mut self, slot: usize) {
        let p = &mut self.procs[slot];
        if let Some(inbox) = p.inbox.take() {
            let _ = epoll::delete(&self.ep, &inbox);
        }
        while let Some(ids) = p.inflight.pop_front() {
            self.d.recycle(ids);
        }
    }

    /// Kills the worker of `slot` (reaped at the next check or restart) and stops talking to
    /// it; `report` says why it is replaced.
    fn kill(&mut self, slot: usize, report: Option<&str>) {
        let p = &mut self.procs[slot];
        if let Some(why) = report {
            let shown = p
                .child
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), |c| c.id().to_string());
            tracing::error!("worker {} (pid {shown}) {why}; replacing it", slot + 1);
        }
        if let Some(child) = p.child.as_mut() {
            let _ = child.kill();
        }
        p.stdin = None;
        self.close_output(slot);
        self.close_inbox(slot);
    }

    /// Kills and reaps the worker process of `slot`, if it has one.
    ///
    /// The kill comes before its pipes close, as in [`kill`](Self::kill): a worker that finds
    /// its output closed (`EPIPE`) while it still runs may take it that the acceptor is gone,
    /// and serve what it redeemed.
    fn reap(&mut self, slot: usize) {
        if let Some(child) = self.procs[slot].child.as_mut() {
            let _ = child.kill();
        }
        self.close_output(slot);
        self.close_inbox(slot);
        let p = &mut self.procs[slot];
        p.stdin = None;
        if let Some(mut child) = p.child.take() {
            let _ = child.wait();
        }
    }

    /// Watches the listeners for connections, or not (backpressure, a failed accept).
    fn listen(&mut self, on: bool) {
        let flags = if on {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        for (i, l) in self.listeners.iter().enumerate() {
            if let Err(e) = epoll::modify(&self.ep, l, epoll::EventData::new_u64(i as u64), flags) {
                tracing::warn!(error = %e, "sockdup acceptor: cannot update a listener in epoll");
            }
        }
    }

    fn kill_all(&mut self) {
        for slot in 0..self.procs.len() {
            self.reap(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relabel_keeps_the_allocation_and_empties_the_list() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(MAX_BATCH);
        fds.push(file.as_fd());
        let at = fds.as_ptr() as usize;
        let kept: Vec<BorrowedFd<'static>> = relabel(fds);
        assert!(kept.is_empty());
        assert_eq!(kept.capacity(), MAX_BATCH);
        assert_eq!(kept.as_ptr() as usize, at);
    }
}
