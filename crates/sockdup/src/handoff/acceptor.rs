//! The acceptor: owns the listeners, runs the worker processes, and hands every accepted
//! connection to one of them.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sockdup_core::error::{Error, WSAEINVAL};

use super::proto::{Line, from_worker};
use crate::startup::lock;

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

/// Capacity for connections not yet done, shared with the accept threads.
#[derive(Debug, Default)]
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn acquire(&self, timeout: Duration) -> bool {
        let mut free = lock(&self.free);
        if *free == 0 {
            free = self
                .cv
                .wait_timeout(free, timeout)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if *free > 0 {
            *free -= 1;
            true
        } else {
            false
        }
    }

    fn release(&self, n: usize) {
        if n > 0 {
            *lock(&self.free) += n;
            self.cv.notify_all();
        }
    }
}

enum Event {
    Accepted(OwnedFd),
    Output {
        slot: usize,
        generation: u64,
        line: Result<Line, String>,
    },
    Closed {
        slot: usize,
        generation: u64,
    },
}

struct WorkerSlot {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    generation: u64,
    pid: Option<u32>,
    started: Instant,
    /// Duplicated to it, not yet confirmed: the acceptor's descriptor, and when.
    unconfirmed: HashMap<u64, (OwnedFd, Instant)>,
    /// Confirmed, not yet done.
    active: usize,
    served: u64,
}

impl WorkerSlot {
    fn outstanding(&self) -> usize {
        self.unconfirmed.len() + self.active
    }
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
    /// # Errors
    /// `WSANOTINITIALISED` without [`crate::startup`]; `WSAEINVAL` without listeners or if the
    /// worker program cannot be started.
    pub fn run(mut self) -> Result<Summary, Error> {
        if self.listeners.is_empty() {
            return Err(Error::invalid("the acceptor has no listening socket"));
        }
        crate::startup::Runtime::current()?;
        let (tx, rx) = channel();
        let slots = Arc::new(Slots::default());
        slots.release(self.workers * self.max_outstanding);
        let stop_accepting = Arc::new(AtomicBool::new(false));
        let mut accept_threads = Vec::new();
        // Each accept thread owns its listener, so the listeners close when accepting stops:
        // from then on, new connections are refused rather than left in a backlog nobody
        // accepts from while the workers drain.
        for l in std::mem::take(&mut self.listeners) {
            let (tx, slots, stop) = (tx.clone(), slots.clone(), stop_accepting.clone());
            accept_threads.push(std::thread::spawn(move || {
                accept_loop(l.0, tx, slots, stop)
            }));
        }
        let mut run = Run {
            cfg: &self,
            tx,
            slots,
            workers: Vec::new(),
            queue: VecDeque::new(),
            next_id: 0,
            rr: 0,
            summary: Summary {
                per_worker: vec![0; self.workers],
                ..Summary::default()
            },
        };
        // A worker that cannot start ends the run, but the accept threads are stopped (and
        // the listeners closed) first, as on every other way out.
        let started = (0..self.workers).try_for_each(|slot| {
            let w = run.spawn(slot, 0)?;
            run.workers.push(w);
            Ok(())
        });
        let result = started.and_then(|()| run.serve(&rx));
        stop_accepting.store(true, Ordering::SeqCst);
        run.slots.release(usize::MAX / 2);
        for t in accept_threads {
            let _ = t.join();
        }
        result?;
        run.drain(&rx);
        Ok(run.summary)
    }
}

/// Closes this process's kept connection to the inbox of `pid`, a worker that is gone: the
/// connection cache would otherwise hold its descriptor for as long as sockdup runs, one more
/// for every worker that ever exited.
fn forget_inbox_connection(pid: u32) {
    if let Ok(rt) = crate::startup::Runtime::current() {
        lock(&rt.connections).remove(&pid);
    }
}

fn accept_loop(listener: OwnedFd, tx: Sender<Event>, slots: Arc<Slots>, stop: Arc<AtomicBool>) {
    let tick = Duration::from_millis(100);
    // Non-blocking, so a connection that vanishes between the wait and the accept cannot
    // block this thread past a shutdown.
    if let Err(e) = crate::sys::socket::set_nonblocking(listener.as_fd()) {
        tracing::error!(error = %e, "sockdup acceptor: cannot make the listener non-blocking");
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        if !slots.acquire(tick) {
            continue;
        }
        match crate::sys::socket::accept_timeout(listener.as_fd(), tick) {
            Ok(Some(fd)) => {
                if tx.send(Event::Accepted(fd)).is_err() {
                    return;
                }
            }
            Ok(None) => slots.release(1),
            Err(e) => {
                slots.release(1);
                tracing::warn!(error = %e, "sockdup acceptor: accept failed");
                std::thread::sleep(tick);
            }
        }
    }
}

struct Run<'a> {
    cfg: &'a Acceptor,
    tx: Sender<Event>,
    slots: Arc<Slots>,
    workers: Vec<WorkerSlot>,
    /// Accepted connections waiting for a ready worker.
    queue: VecDeque<(u64, OwnedFd)>,
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
                Error::new(
                    WSAEINVAL,
                    format!("starting worker {:?} failed: {e}", self.cfg.program),
                )
            })?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            if let Some(out) = stdout {
                for text in BufReader::new(out).lines() {
                    let Ok(text) = text else { break };
                    let line = from_worker(&text).ok_or(text);
                    if tx
                        .send(Event::Output {
                            slot,
                            generation,
                            line,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let _ = tx.send(Event::Closed { slot, generation });
        });
        tracing::debug!(slot, pid = child.id(), "sockdup acceptor: started a worker");
        Ok(WorkerSlot {
            child: Some(child),
            stdin,
            generation,
            pid: None,
            started: Instant::now(),
            unconfirmed: HashMap::new(),
            active: 0,
            served: 0,
        })
    }

    fn serve(&mut self, rx: &Receiver<Event>) -> Result<(), Error> {
        // Timeouts and exits are checked every tick, not after every event: under load that
        // would be a wait4 per worker per connection.
        let tick = Duration::from_millis(50);
        let mut last_check = Instant::now();
        while !self.cfg.shutdown.requested() {
            match rx.recv_timeout(tick) {
                Ok(event) => self.handle(event)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_check.elapsed() >= tick {
                self.check_timeouts()?;
                last_check = Instant::now();
            }
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        match event {
            Event::Accepted(fd) => {
                let id = self.next_id;
                self.next_id += 1;
                self.queue.push_back((id, fd));
                self.dispatch_queue();
            }
            Event::Output {
                slot,
                generation,
                line,
            } => {
                if self.workers[slot].generation != generation {
                    return Ok(());
                }
                self.output(slot, line);
                self.dispatch_queue();
            }
            Event::Closed { slot, generation } => {
                if self.workers[slot].generation == generation {
                    self.worker_gone(slot)?;
                    self.dispatch_queue();
                }
            }
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
                if w.unconfirmed.remove(&id).is_some() {
                    w.active += 1;
                    w.served += 1;
                    self.summary.per_worker[slot] += 1;
                }
            }
            (Ok(Line::Failed(id, code)), Some(pid)) => {
                if let Some((fd, _)) = w.unconfirmed.remove(&id) {
                    self.summary.redispatched += 1;
                    self.queue.push_front((id, fd));
                    self.replace(
                        slot,
                        &format!("(pid {pid}) could not redeem connection {id} (error {code}); it goes to another worker"),
                    );
                }
            }
            (Ok(Line::Done(_)), Some(_)) => {
                if w.active > 0 {
                    w.active -= 1;
                    self.slots.release(1);
                }
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
                self.worker_gone(slot)?;
                self.dispatch_queue();
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

    /// A worker's output closed: reap it, give its unconfirmed connections to others, and
    /// start it again (unless shutting down).
    fn worker_gone(&mut self, slot: usize) -> Result<(), Error> {
        let w = &mut self.workers[slot];
        if let Some(mut child) = w.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            forget_inbox_connection(child.id());
        }
        w.stdin = None;
        let lost: Vec<(u64, OwnedFd)> = w
            .unconfirmed
            .drain()
            .map(|(id, (fd, _))| (id, fd))
            .collect();
        let active = std::mem::take(&mut w.active);
        self.slots.release(active);
        self.summary.redispatched += lost.len() as u64;
        for item in lost.into_iter().rev() {
            self.queue.push_front(item);
        }
        if !self.cfg.shutdown.requested() {
            // Do not spin on a worker that dies at once.
            std::thread::sleep(Duration::from_millis(20));
            let generation = self.workers[slot].generation + 1;
            let served = self.workers[slot].served;
            self.workers[slot] = self.spawn(slot, generation)?;
            self.workers[slot].served = served;
            self.summary.restarts += 1;
        }
        Ok(())
    }

    fn pick(&mut self) -> Option<usize> {
        let n = self.workers.len();
        let max = self.cfg.max_outstanding;
        let ready = |w: &WorkerSlot| w.pid.is_some() && w.stdin.is_some() && w.outstanding() < max;
        match self.cfg.policy {
            Policy::RoundRobin => {
                let found = (0..n)
                    .map(|k| (self.rr + k) % n)
                    .find(|&i| ready(&self.workers[i]))?;
                self.rr = (found + 1) % n;
                Some(found)
            }
            Policy::LeastOutstanding => (0..n)
                .filter(|&i| ready(&self.workers[i]))
                .min_by_key(|&i| self.workers[i].outstanding()),
        }
    }

    fn dispatch_queue(&mut self) {
        while let Some((id, fd)) = self.queue.pop_front() {
            let Some(slot) = self.pick() else {
                self.queue.push_front((id, fd));
                return;
            };
            let w = &mut self.workers[slot];
            let Some(pid) = w.pid else {
                self.queue.push_front((id, fd));
                return;
            };
            let sent = crate::duplicate_socket(&fd, pid).and_then(|record| {
                let stdin = w
                    .stdin
                    .as_mut()
                    .ok_or_else(|| Error::invalid("the worker's input is closed"))?;
                // One write per line: a pipe is unbuffered, and writeln! would make several.
                stdin
                    .write_all(format!("conn {id} {record}\n").as_bytes())
                    .map_err(|e| Error::from_errno(e, "writing to the worker"))
            });
            match sent {
                Ok(()) => {
                    tracing::debug!(
                        slot,
                        pid,
                        id,
                        "sockdup acceptor: connection handed to a worker"
                    );
                    w.unconfirmed.insert(id, (fd, Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(slot, pid, id, error = %e, "sockdup acceptor: handing off failed; trying another worker");
                    self.summary.redispatched += 1;
                    self.queue.push_front((id, fd));
                    self.replace(slot, &format!("could not take a connection: {e}"));
                }
            }
        }
    }

    /// Shutdown: closes each worker's input once it has confirmed what it was given, waits for
    /// them to exit within the drain deadline, and kills the rest.
    fn drain(&mut self, rx: &Receiver<Event>) {
        let deadline = Instant::now() + self.cfg.drain_deadline;
        // What is already in the channel first: connections already accepted are still handed
        // off (nothing new is accepted now), and confirmations already sent count.
        while let Ok(event) = rx.try_recv() {
            self.drain_event(event);
        }
        loop {
            self.dispatch_queue();
            let nothing_left = self.queue.is_empty();
            for w in &mut self.workers {
                if w.unconfirmed.is_empty() && nothing_left {
                    w.stdin = None;
                }
            }
            if self.workers.iter().all(|w| w.child.is_none()) || Instant::now() >= deadline {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(event) => self.drain_event(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take() {
                let _ = child.kill();
                let _ = child.wait();
                forget_inbox_connection(child.id());
            }
        }
    }

    /// One event while draining: no restarts, workers that exit are just reaped.
    fn drain_event(&mut self, event: Event) {
        match event {
            Event::Accepted(fd) => {
                let id = self.next_id;
                self.next_id += 1;
                self.queue.push_back((id, fd));
            }
            Event::Output {
                slot,
                generation,
                line,
            } if self.workers[slot].generation == generation => {
                self.output(slot, line);
            }
            Event::Closed { slot, generation } if self.workers[slot].generation == generation => {
                let w = &mut self.workers[slot];
                if let Some(mut child) = w.child.take() {
                    let _ = child.wait();
                    forget_inbox_connection(child.id());
                }
                w.stdin = None;
                let lost: Vec<(u64, OwnedFd)> = w
                    .unconfirmed
                    .drain()
                    .map(|(id, (fd, _))| (id, fd))
                    .collect();
                self.summary.redispatched += lost.len() as u64;
                self.queue.extend(lost);
            }
            Event::Output { .. } | Event::Closed { .. } => {}
        }
    }
}
