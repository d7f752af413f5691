//! The acceptor: owns the listeners, runs the worker processes, and hands every accepted
//! connection to one of them.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use sockdup_core::error::{Error, WSAEINVAL};
use sockdup_core::wire::ProtocolInfo;

use super::proto::{Line, from_worker};

/// How the acceptor picks a worker for a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Each ready worker in turn.
    #[default]
    RoundRobin,
    /// The ready worker with the fewest connections not yet done.
    LeastOutstanding,
}

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

/// What happened during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Connections each worker slot redeemed, in slot order (across restarts).
    pub per_worker: Vec<u64>,
    /// Connections handed to another worker because the first died, refused or failed.
    pub redispatched: u64,
    /// Workers started again after they exited or were killed.
    pub restarts: u64,
    /// Workers killed for bad output or for not answering.
    pub replaced: u64,
}

impl Summary {
    /// Connections served in all.
    pub fn total(&self) -> u64 {
        self.per_worker.iter().sum()
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
    /// (all the connections one wake-up brought for one worker go in one
    /// [`duplicate_sockets`](crate::duplicate_sockets) message and one write of `conn` lines).
    ///
    /// # Errors
    /// `WSANOTINITIALISED` without [`crate::startup`]; `WSAEINVAL` without listeners or if the
    /// worker program cannot be started; `WSAEAFNOSUPPORT` for a listener whose connections
    /// sockdup cannot duplicate.
    pub fn run(mut self) -> Result<Summary, Error> {
        if self.listeners.is_empty() {
            return Err(Error::invalid("the acceptor has no listening socket"));
        }
        crate::startup::Runtime::current()?;
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
        let mut run = Run {
            cfg: &self,
            ep,
            listeners,
            entries,
            armed: true,
            more: false,
            accept_pause: None,
            workers: Vec::new(),
            queue: VecDeque::new(),
            next_id: 0,
            rr: 0,
            summary: Summary {
                per_worker: vec![0; self.workers],
                ..Summary::default()
            },
        };
        // A worker that cannot start ends the run, but the listeners are closed first, as on
        // every other way out.
        let started = (0..self.workers).try_for_each(|slot| {
            let w = run.spawn(slot, 0)?;
            run.workers.push(w);
            Ok(())
        });
        let result = started.and_then(|()| run.serve());
        // From now on, new connections are refused rather than left in a backlog nobody
        // accepts from while the workers drain.
        run.listeners.clear();
        if let Err(e) = result {
            run.kill_all();
            return Err(e);
        }
        run.drain();
        Ok(run.summary)
    }
}

/// Closes this process's kept connection to the inbox of `pid`, a worker that is gone: the
/// connection cache would otherwise hold its descriptor for as long as sockdup runs, one more
/// for every worker that ever exited.
fn forget_inbox_connection(pid: u32) {
    if let Ok(rt) = crate::startup::Runtime::current() {
        rt.pool.forget(pid);
    }
}

/// The epoll key of a worker's output: this bit, its generation and its slot (listeners are
/// keyed by their index).
const WORKER_KEY: u64 = 1 << 63;

fn worker_key(slot: usize, generation: u64) -> u64 {
    WORKER_KEY | (generation << 24) | slot as u64
}

/// The longest line a worker may write before it counts as not speaking the protocol.
const MAX_LINE: usize = 4096;

/// The most connections accepted from one listener per wake-up, so that the workers' answers
/// are read between batches.
const ACCEPT_BATCH: usize = 256;

/// The most connections in one batch: its `conn` lines (about 880 bytes each) fit in a pipe's
/// 64 KiB, so the worker's answers are read between two batches, and a worker blocked on
/// writing answers cannot block the acceptor writing to it, and so both.
const MAX_BATCH: usize = 64;

/// How often timeouts and exits are checked.
const TICK: Duration = Duration::from_millis(50);

/// An accepted connection not yet handed to a worker: its id, the acceptor's descriptor, and
/// the listener it came from (for its catalog entry).
struct Pending {
    id: u64,
    fd: OwnedFd,
    listener: usize,
}

struct WorkerSlot {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// The worker's standard output, non-blocking, in the epoll set.
    stdout: Option<ChildStdout>,
    /// Bytes of output read, not yet a whole line.
    partial: Vec<u8>,
    generation: u64,
    pid: Option<u32>,
    started: Instant,
    /// Duplicated to it, not yet confirmed: the acceptor's descriptor, and when.
    unconfirmed: HashMap<u64, (Pending, Instant)>,
    /// Confirmed, not yet done.
    active: usize,
    served: u64,
}

impl WorkerSlot {
    fn outstanding(&self) -> usize {
        self.unconfirmed.len() + self.active
    }
}

struct Run<'a> {
    cfg: &'a Acceptor,
    ep: OwnedFd,
    listeners: Vec<OwnedFd>,
    /// Each listener's catalog entry, for the records of its connections.
    entries: Vec<ProtocolInfo>,
    /// Whether the listeners are in the epoll set for reading.
    armed: bool,
    /// More queued connections could go to a worker now (the last batches were full).
    more: bool,
    /// Accepting failed (e.g. out of descriptors): not before this instant again.
    accept_pause: Option<Instant>,
    workers: Vec<WorkerSlot>,
    /// Accepted connections waiting for a ready worker.
    queue: VecDeque<Pending>,
    next_id: u64,
    rr: usize,
    summary: Summary,
}

impl Run<'_> {
    fn spawn(&mut self, slot: usize, generation: u64) -> Result<WorkerSlot, Error> {
        let mut child = Command::new(&self.cfg.program)
            .args(&self.cfg.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::from_code(
                    WSAEINVAL,
                    format!("starting worker {:?} failed: {e}", self.cfg.program),
                )
            })?;
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
        tracing::debug!(slot, pid = child.id(), "sockdup acceptor: started a worker");
        Ok(WorkerSlot {
            child: Some(child),
            stdin,
            stdout,
            partial: Vec::new(),
            generation,
            pid: None,
            started: Instant::now(),
            unconfirmed: HashMap::new(),
            active: 0,
            served: 0,
        })
    }

    /// Waits up to `timeout` for events and handles them: the workers' answers first, then
    /// new connections; then hands out what is queued.
    fn poll(&mut self, timeout: Duration, events: &mut Vec<epoll::Event>) -> Result<(), Error> {
        self.arm_listeners();
        // Queued connections that a worker could take but did not fit in this turn's
        // batches: go on at once.
        let timeout = if self.more { Duration::ZERO } else { timeout };
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        events.clear();
        match epoll::wait(&self.ep, spare_capacity(events), Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::from_errno(e, "waiting in epoll")),
        }
        let mut ready_listeners = Vec::new();
        for ev in events.iter() {
            let key = ev.data.u64();
            if key & WORKER_KEY == 0 {
                ready_listeners.push(key as usize);
                continue;
            }
            let slot = (key & 0xff_ffff) as usize;
            let generation = (key & !WORKER_KEY) >> 24;
            if self
                .workers
                .get(slot)
                .is_some_and(|w| w.generation == generation)
            {
                self.read_output(slot)?;
            }
        }
        for i in ready_listeners {
            self.accept_from(i);
        }
        self.dispatch_queue();
        Ok(())
    }

    fn serve(&mut self) -> Result<(), Error> {
        let mut events = Vec::with_capacity(64);
        // Timeouts and exits are checked every tick, not after every event: under load that
        // would be a wait4 per worker per connection.
        let mut last_check = Instant::now();
        while !self.cfg.shutdown.requested() {
            self.poll(TICK, &mut events)?;
            if last_check.elapsed() >= TICK {
                self.check_timeouts()?;
                self.dispatch_queue();
                last_check = Instant::now();
            }
        }
        Ok(())
    }

    /// Connections accepted or handed out and not yet done, against the capacity of all the
    /// workers together.
    fn free_capacity(&self) -> usize {
        let used = self.queue.len()
            + self
                .workers
                .iter()
                .map(WorkerSlot::outstanding)
                .sum::<usize>();
        (self.cfg.workers * self.cfg.max_outstanding).saturating_sub(used)
    }

    /// Listens for connections only while there is capacity for them (and accepting is not
    /// paused): otherwise they wait in the kernel's backlog.
    fn arm_listeners(&mut self) {
        if self
            .accept_pause
            .is_some_and(|until| Instant::now() >= until)
        {
            self.accept_pause = None;
        }
        let want = self.accept_pause.is_none() && self.free_capacity() > 0;
        if want == self.armed {
            return;
        }
        let flags = if want {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        for (i, l) in self.listeners.iter().enumerate() {
            if let Err(e) = epoll::modify(&self.ep, l, epoll::EventData::new_u64(i as u64), flags) {
                tracing::warn!(error = %e, "sockdup acceptor: cannot update a listener in epoll");
            }
        }
        self.armed = want;
    }

    fn accept_from(&mut self, i: usize) {
        let mut room = self.free_capacity().min(ACCEPT_BATCH);
        while room > 0 {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            match crate::sys::socket::try_accept(listener.as_fd()) {
                Ok(Some(fd)) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.queue.push_back(Pending {
                        id,
                        fd,
                        listener: i,
                    });
                    room -= 1;
                }
                Ok(None) => return,
                Err(e) => {
                    // Out of descriptors or the like: the connection stays in the backlog;
                    // try again shortly rather than spin.
                    tracing::warn!(error = %e, "sockdup acceptor: accept failed");
                    self.accept_pause = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    /// Reads what worker `slot` wrote and handles every whole line; at the end of its output,
    /// the worker is gone.
    fn read_output(&mut self, slot: usize) -> Result<(), Error> {
        let mut chunk = [0u8; 16 * 1024];
        let mut closed = false;
        loop {
            let Some(out) = self.workers[slot].stdout.as_ref() else {
                return Ok(());
            };
            match rustix::io::read(out, &mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    self.workers[slot].partial.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let generation = self.workers[slot].generation;
        let bytes = std::mem::take(&mut self.workers[slot].partial);
        let mut rest = &bytes[..];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(&rest[..end]);
            rest = &rest[end + 1..];
            let line = from_worker(&text).ok_or_else(|| text.into_owned());
            self.output(slot, line);
            if self.workers[slot].generation != generation {
                return Ok(());
            }
        }
        if rest.len() > MAX_LINE {
            self.replace(
                slot,
                &format!("wrote {MAX_LINE} bytes without a line end, which is not the sockdup worker protocol"),
            );
        } else {
            self.workers[slot].partial = rest.to_vec();
        }
        if closed {
            self.worker_gone(slot, !self.cfg.shutdown.requested())?;
        }
        Ok(())
    }

    fn output(&mut self, slot: usize, line: Result<Line, String>) {
        let w = &mut self.workers[slot];
        let child_pid = w.child.as_ref().map(Child::id);
        match (line, w.pid) {
            (Ok(Line::Pid(pid)), None) if Some(pid) == child_pid => {
                tracing::debug!(slot, pid, "sockdup acceptor: worker ready");
                w.pid = Some(pid);
            }
            (Ok(Line::Pid(pid)), None) => {
                self.replace(
                    slot,
                    &format!("announced pid {pid}, but the worker process is {child_pid:?}"),
                );
            }
            (Ok(Line::Redeemed(id)), Some(_)) => {
                // The worker has its own descriptor now: the acceptor's closes here.
                if w.unconfirmed.remove(&id).is_some() {
                    w.active += 1;
                    w.served += 1;
                    self.summary.per_worker[slot] += 1;
                }
            }
            (Ok(Line::Failed(id, code)), Some(pid)) => {
                if let Some((pending, _)) = w.unconfirmed.remove(&id) {
                    self.summary.redispatched += 1;
                    self.queue.push_front(pending);
                    self.replace(
                        slot,
                        &format!("(pid {pid}) could not redeem connection {id} (error {code}); it goes to another worker"),
                    );
                }
            }
            (Ok(Line::Done(_)), Some(_)) => {
                w.active = w.active.saturating_sub(1);
            }
            (Ok(other), _) => self.replace(slot, &format!("said {other:?} out of turn")),
            (Err(text), _) => self.replace(
                slot,
                &format!("wrote {text:?}, which is not the sockdup worker protocol"),
            ),
        }
    }

    /// Kills a misbehaving worker; its death brings its connections back and a new worker.
    fn replace(&mut self, slot: usize, why: &str) {
        let w = &mut self.workers[slot];
        let pid = w.child.as_ref().map(Child::id);
        let shown = pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        tracing::error!("worker {} (pid {shown}) {why}; replacing it", slot + 1);
        self.summary.replaced += 1;
        if let Some(child) = w.child.as_mut() {
            let _ = child.kill();
        }
        w.stdin = None;
        w.pid = None;
    }

    fn check_timeouts(&mut self) -> Result<(), Error> {
        let limit = self.cfg.answer_timeout;
        for slot in 0..self.workers.len() {
            let w = &mut self.workers[slot];
            let Some(child) = w.child.as_mut() else {
                continue;
            };
            // A worker that exited is gone even if something it started still holds its
            // output open (so its output's end would come late).
            if matches!(child.try_wait(), Ok(Some(_))) {
                // Its last answers first: they may confirm connections (and may end its
                // output, which replaces it).
                let generation = w.generation;
                self.read_output(slot)?;
                if self.workers[slot].generation == generation {
                    self.worker_gone(slot, true)?;
                }
                continue;
            }
            if w.stdin.is_none() {
                continue; // already being replaced
            }
            let silent = w.pid.is_none() && w.started.elapsed() > limit;
            let stuck = w.unconfirmed.values().any(|(_, at)| at.elapsed() > limit);
            if silent || stuck {
                self.replace(slot, &format!("did not answer within {limit:?}"));
            }
        }
        Ok(())
    }

    /// Worker `slot` is gone (its output closed, or it exited): give its unconfirmed
    /// connections to others; if `restart`, kill and reap it and start it again; if not (a
    /// shutdown), reap it once it exits ([`Self::reap_exited`]).
    fn worker_gone(&mut self, slot: usize, restart: bool) -> Result<(), Error> {
        let w = &mut self.workers[slot];
        if restart {
            if let Some(mut child) = w.child.take() {
                let _ = child.kill();
                let _ = child.wait();
                forget_inbox_connection(child.id());
            }
        }
        w.stdin = None;
        w.pid = None;
        if let Some(out) = w.stdout.take() {
            let _ = epoll::delete(&self.ep, &out);
        }
        w.partial.clear();
        w.active = 0;
        let mut lost: Vec<(u64, Pending)> = w
            .unconfirmed
            .drain()
            .map(|(id, (pending, _))| (id, pending))
            .collect();
        lost.sort_unstable_by_key(|(id, _)| *id);
        self.summary.redispatched += lost.len() as u64;
        for (_, pending) in lost.into_iter().rev() {
            self.queue.push_front(pending);
        }
        if restart {
            // Do not spin on a worker that dies at once.
            std::thread::sleep(Duration::from_millis(20));
            let generation = self.workers[slot].generation + 1;
            let served = self.workers[slot].served;
            self.workers[slot] = self.spawn(slot, generation)?;
            self.workers[slot].served = served;
            self.summary.restarts += 1;
        } else {
            // Stale events of the old output are ignored from now on.
            self.workers[slot].generation += 1;
        }
        Ok(())
    }

    /// Picks a ready worker for one more connection, counting `planned` ones it is about
    /// to get.
    fn pick(&mut self, planned: &[usize]) -> Option<usize> {
        let n = self.workers.len();
        let max = self.cfg.max_outstanding;
        let load = |i: usize, w: &WorkerSlot| w.outstanding() + planned[i];
        let ready = |i: usize, w: &WorkerSlot| {
            w.pid.is_some()
                && w.stdin.is_some()
                && w.outstanding() + planned[i] < max
                && planned[i] < MAX_BATCH
        };
        match self.cfg.policy {
            Policy::RoundRobin => {
                let found = (0..n)
                    .map(|k| (self.rr + k) % n)
                    .find(|&i| ready(i, &self.workers[i]))?;
                self.rr = (found + 1) % n;
                Some(found)
            }
            Policy::LeastOutstanding => (0..n)
                .filter(|&i| ready(i, &self.workers[i]))
                .min_by_key(|&i| load(i, &self.workers[i])),
        }
    }

    /// Hands out the queued connections the ready workers can take, each worker's share in one
    /// batch; notes whether more could go at once.
    fn dispatch_queue(&mut self) {
        self.dispatch_batches();
        let max = self.cfg.max_outstanding;
        self.more = !self.queue.is_empty()
            && self
                .workers
                .iter()
                .any(|w| w.pid.is_some() && w.stdin.is_some() && w.outstanding() < max);
    }

    /// One batch, of at most [`MAX_BATCH`] connections, for each worker that can take some.
    fn dispatch_batches(&mut self) {
        loop {
            if self.queue.is_empty() {
                return;
            }
            let n = self.workers.len();
            let mut planned = vec![0usize; n];
            let mut batches: Vec<Vec<Pending>> = (0..n).map(|_| Vec::new()).collect();
            while let Some(pending) = self.queue.pop_front() {
                let Some(slot) = self.pick(&planned) else {
                    self.queue.push_front(pending);
                    break;
                };
                planned[slot] += 1;
                batches[slot].push(pending);
            }
            let mut all_sent = true;
            for (slot, batch) in batches.into_iter().enumerate() {
                if !batch.is_empty() {
                    all_sent &= self.send_batch(slot, batch);
                }
            }
            // A worker that failed is no longer ready: its batch goes to the others.
            if all_sent {
                return;
            }
        }
    }

    /// Duplicates `batch` to worker `slot` in one message and writes its `conn` lines in one
    /// write; on failure the batch goes back to the queue and the worker is replaced.
    fn send_batch(&mut self, slot: usize, batch: Vec<Pending>) -> bool {
        let records: Vec<ProtocolInfo> = batch
            .iter()
            .map(|p| self.entries[p.listener].clone())
            .collect();
        let w = &mut self.workers[slot];
        let Some(pid) = w.pid else {
            self.queue.extend(batch);
            return false;
        };
        let fds: Vec<BorrowedFd<'_>> = batch.iter().map(|p| p.fd.as_fd()).collect();
        let sent = crate::transfer::duplicate_known(&fds, records, pid).and_then(|records| {
            let stdin = w
                .stdin
                .as_mut()
                .ok_or_else(|| Error::invalid("the worker's input is closed"))?;
            let mut text = String::with_capacity(records.len() * 880);
            for (p, record) in batch.iter().zip(&records) {
                let _ = writeln!(text, "conn {} {record}", p.id);
            }
            // One write for the whole batch: a pipe is unbuffered.
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| Error::from_errno(e, "writing to the worker"))
        });
        drop(fds);
        match sent {
            Ok(()) => {
                tracing::debug!(
                    slot,
                    pid,
                    count = batch.len(),
                    "sockdup acceptor: connections handed to a worker"
                );
                let now = Instant::now();
                for p in batch {
                    w.unconfirmed.insert(p.id, (p, now));
                }
                true
            }
            Err(e) => {
                tracing::warn!(slot, pid, count = batch.len(), error = %e, "sockdup acceptor: handing off failed; trying another worker");
                self.summary.redispatched += batch.len() as u64;
                for p in batch.into_iter().rev() {
                    self.queue.push_front(p);
                }
                self.replace(slot, &format!("could not take a connection: {e}"));
                false
            }
        }
    }

    /// Shutdown: closes each worker's input once it has confirmed what it was given, waits for
    /// them to exit within the drain deadline, and kills the rest. Connections already
    /// accepted are still handed off; nothing new is accepted (the listeners are closed).
    fn drain(&mut self) {
        let deadline = Instant::now() + self.cfg.drain_deadline;
        let mut events = Vec::with_capacity(64);
        loop {
            self.dispatch_queue();
            let nothing_left = self.queue.is_empty();
            for w in &mut self.workers {
                if w.unconfirmed.is_empty() && nothing_left {
                    w.stdin = None;
                }
            }
            self.reap_exited();
            if self.workers.iter().all(|w| w.child.is_none()) || Instant::now() >= deadline {
                break;
            }
            let wait = deadline.saturating_duration_since(Instant::now()).min(TICK);
            if let Err(e) = self.poll(wait, &mut events) {
                tracing::error!(error = %e, "sockdup acceptor: draining stopped");
                break;
            }
        }
        self.kill_all();
    }

    /// Reaps the workers whose output closed and that have exited since.
    fn reap_exited(&mut self) {
        for w in &mut self.workers {
            if w.stdout.is_some() {
                continue;
            }
            let exited = w
                .child
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
            if let (true, Some(child)) = (exited, w.child.take()) {
                forget_inbox_connection(child.id());
            }
        }
    }

    fn kill_all(&mut self) {
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take() {
                let _ = child.kill();
                let _ = child.wait();
                forget_inbox_connection(child.id());
            }
        }
    }
}
