//! The acceptor's decisions, without I/O: which worker gets each accepted connection, when to
//! stop and resume accepting, when a worker is broken, dead or late, what becomes of the
//! connections it had not confirmed, when it is started again, and when a shutdown is over.
//!
//! [`Dispatch`] is a state machine driven by its caller (the acceptor's epoll loop): the caller
//! reports what happened (`accepted`, `handle_*`) with the time it happened, asks for decisions
//! ([`Dispatch::dispatch`], [`Dispatch::handle_timeout`] when [`Dispatch::poll_timeout`] is due),
//! and carries out the [`Action`]s it takes from [`Dispatch::poll_action`]. It is generic over the
//! connection `C` it holds (the acceptor's descriptor), so it is tested with plain values; a
//! connection is dropped (its descriptor closed) once its worker confirms it.
//!
//! Call order: [`Dispatch::new`]; then any interleaving of the reports, with a `now` that never
//! goes backwards, each followed by taking every action; [`Dispatch::shutdown`] once; then the
//! same until [`Dispatch::finished`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::proto::handoff::FromWorker;

/// The most connections in one batch: its `conn` lines (about 880 bytes each) fit in a pipe's
/// 64 KiB, so the worker's answers are read between two batches, and a worker blocked on
/// writing answers cannot block the acceptor writing to it, and so both.
pub(crate) const MAX_BATCH: usize = 64;

/// How long after a worker died or was killed it is started again (a worker that dies at once
/// is not restarted in a busy loop).
pub(crate) const RESTART_DELAY: Duration = Duration::from_millis(20);

/// How long accepting pauses after an accept failed (e.g. out of descriptors).
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How long after a worker could not be started for lack of resources (the acceptor out of
/// descriptors, processes or memory) it is tried again.
pub(crate) const SPAWN_RETRY: Duration = Duration::from_millis(100);

/// How long a worker whose inbox could not take a batch (full, or out of descriptors on either
/// side) gets nothing before it is tried again, with a batch half as large.
pub(crate) const SEND_RETRY: Duration = Duration::from_millis(100);

/// How the acceptor picks a worker for a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Each ready worker in turn.
    #[default]
    RoundRobin,
    /// The ready worker with the fewest connections not yet done.
    LeastOutstanding,
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

/// The acceptor's settings that its decisions depend on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    /// Worker slots (at least 1).
    pub(crate) workers: usize,
    pub(crate) policy: Policy,
    /// The most connections a worker may have not yet done (at least 1).
    pub(crate) max_outstanding: usize,
    /// How long a worker may take to announce itself or to confirm a connection.
    pub(crate) answer_timeout: Duration,
    /// How long the workers may take to finish at shutdown.
    pub(crate) drain_deadline: Duration,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start a worker process in `slot` (killing and reaping the one it had, if any), watch its
    /// output under `generation`, and report [`Dispatch::handle_spawned`].
    Spawn { slot: usize, generation: u64 },
    /// Duplicate the connections `ids` ([`Dispatch::batch`]) to the worker `pid` of `slot` in one
    /// message and write their `conn` lines in one write; on failure report
    /// [`Dispatch::handle_send_failed`].
    Send {
        slot: usize,
        pid: u32,
        ids: Vec<u64>,
    },
    /// Kill the worker of `slot` and stop reading it; `report` says why, if it misbehaved (the
    /// driver logs it as a replacement).
    Kill { slot: usize, report: Option<String> },
    /// Close the input of the worker of `slot`: it gets nothing more (shutdown).
    CloseInput { slot: usize },
    /// Watch the listeners for connections (`true`) or leave new ones in the backlog.
    Listen(bool),
    /// Close the listeners: a shutdown began, new connections are refused.
    CloseListeners,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Started (`child` once the driver reported its pid), not yet announced.
    Starting { child: Option<u32>, since: Instant },
    /// Announced: takes connections.
    Ready { pid: u32 },
    /// Its input is closed (shutdown): it finishes what it has, and exits.
    Closing,
    /// Gone, killed or finished: started again at `restart_at`, if any.
    Down { restart_at: Option<Instant> },
}

/// The connection-id maps' hasher: ids are this acceptor's own sequence numbers, hashed three
/// times per connection.
type Ids = crate::sync::MulHash;

struct Slot<C> {
    state: State,
    generation: u64,
    /// Started at least once.
    started: bool,
    /// A process was started at least once (a start that failed for lack of resources is not
    /// one).
    ran: bool,
    /// Its process runs (not reported exited).
    running: bool,
    /// Sent to it, not yet confirmed: the connection and when it was sent.
    unconfirmed: HashMap<u64, (C, Instant), Ids>,
    /// `(sent, id)` of the unconfirmed, oldest first (entries of confirmed ones are dropped
    /// from the front as they come up), for the answer timeout.
    sent: VecDeque<(Instant, u64)>,
    /// Confirmed, not yet done.
    active: HashSet<u64, Ids>,
    /// The largest batch it gets now: [`MAX_BATCH`], halved each time a batch could not be
    /// delivered for lack of room, and grown by one for each confirmation.
    batch_limit: usize,
    /// A batch could not be delivered for lack of room: it gets nothing before this instant.
    retry_at: Option<Instant>,
    /// The driver pushed a batch to it and waits for its inbox's answer
    /// ([`Dispatch::handle_push_sent`]): it gets no other batch until then, so that the
    /// connections that come meanwhile go to it together in the next one.
    pushing: bool,
}

impl<C> Slot<C> {
    fn outstanding(&self) -> usize {
        self.unconfirmed.len() + self.active.len()
    }

    fn oldest_unconfirmed(&self) -> Option<Instant> {
        self.sent.front().map(|&(at, _)| at)
    }

    /// Drops the front entries of `sent` that are no longer unconfirmed.
    fn prune_sent(&mut self) {
        while let Some(&(_, id)) = self.sent.front() {
            if self.unconfirmed.contains_key(&id) {
                break;
            }
            self.sent.pop_front();
        }
    }
}

/// Makes `due` the earlier of itself and `at` (`None`: not due).
fn earliest(due: &mut Option<Instant>, at: Option<Instant>) {
    if let Some(at) = at
        && due.is_none_or(|d| at < d)
    {
        *due = Some(at);
    }
}

/// The acceptor's decisions. See the [module docs](self).
pub(crate) struct Dispatch<C> {
    cfg: Config,
    slots: Vec<Slot<C>>,
    /// Accepted connections waiting for a ready worker, with their ids.
    queue: VecDeque<(u64, C)>,
    next_id: u64,
    rr: usize,
    /// Scratch of [`dispatch`](Self::dispatch): the ids planned for each slot.
    planned: Vec<Vec<u64>>,
    /// Empty id lists the driver gave back ([`recycle`](Self::recycle)), for the next
    /// [`Action::Send`]s: no allocation per batch.
    spare: Vec<Vec<u64>>,
    summary: Summary,
    actions: VecDeque<Action>,
    /// What the driver was last told about the listeners.
    listening: bool,
    /// Accepting failed: not again before this instant.
    accept_pause: Option<Instant>,
    /// The drain deadline, once a shutdown began.
    drain: Option<Instant>,
    /// The drain deadline passed.
    drain_over: bool,
}

impl<C> std::fmt::Debug for Dispatch<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("queued", &self.queue.len())
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl<C> Dispatch<C> {
    /// The decisions of an acceptor with `cfg`, which starts every worker now (the listeners
    /// are watched from the start).
    pub(crate) fn new(cfg: Config, now: Instant) -> Self {
        let workers = cfg.workers.max(1);
        let cfg = Config {
            workers,
            max_outstanding: cfg.max_outstanding.max(1),
            ..cfg
        };
        let mut d = Self {
            cfg,
            slots: (0..workers)
                .map(|_| Slot {
                    state: State::Down { restart_at: None },
                    generation: 0,
                    started: false,
                    ran: false,
                    running: false,
                    unconfirmed: HashMap::default(),
                    sent: VecDeque::new(),
                    active: HashSet::default(),
                    batch_limit: MAX_BATCH,
                    retry_at: None,
                    pushing: false,
                })
                .collect(),
            queue: VecDeque::new(),
            next_id: 0,
            rr: 0,
            planned: Vec::new(),
            spare: Vec::new(),
            summary: Summary {
                per_worker: vec![0; workers],
                ..Summary::default()
            },
            actions: VecDeque::new(),
            listening: true,
            accept_pause: None,
            drain: None,
            drain_over: false,
        };
        for slot in 0..workers {
            d.spawn(slot, now);
        }
        d
    }

    /// What happened so far.
    pub(crate) fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The next thing the driver must do.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        let want = self.drain.is_none()
            && self.accept_pause.is_none()
            && self.room() > 0
            && !self.every_worker_pushing();
        if want != self.listening && self.drain.is_none() {
            self.listening = want;
            return Some(Action::Listen(want));
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: an answer timeout, a
    /// restart, the end of an accept pause, or the drain deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        // Called on every turn of the acceptor's loop: one pass, no iterator chains, and the
        // answer timeout added once, to the oldest unanswered start or connection (the
        // earliest of `t + limit` is the earliest `t`, plus `limit`).
        let mut due = self.accept_pause;
        let mut oldest = None;
        for s in &self.slots {
            match s.state {
                State::Starting { since, .. } => earliest(&mut oldest, Some(since)),
                State::Ready { .. } | State::Closing => {
                    earliest(&mut oldest, s.oldest_unconfirmed());
                    earliest(&mut due, s.retry_at);
                }
                State::Down { restart_at } => earliest(&mut due, restart_at),
            }
        }
        earliest(&mut due, oldest.map(|at| at + self.cfg.answer_timeout));
        if !self.drain_over {
            earliest(&mut due, self.drain);
        }
        due
    }

    /// Whether every ready worker has a push waiting for its inbox's answer (and one is
    /// ready): none takes a batch now, so the acceptor stops watching the listeners until an
    /// answer comes, and then takes what came meanwhile from the backlog at once, rather than
    /// waking for each connection to queue it (the batching the blocking push gave).
    fn every_worker_pushing(&self) -> bool {
        let mut ready = false;
        for s in &self.slots {
            if matches!(s.state, State::Ready { .. }) {
                if !s.pushing {
                    return false;
                }
                ready = true;
            }
        }
        ready
    }

    /// How many more connections may be accepted now: the capacity of all the workers, less
    /// what is queued or not yet done; none while accepting pauses or after a shutdown began.
    pub(crate) fn room(&self) -> usize {
        if self.drain.is_some() || self.accept_pause.is_some() {
            return 0;
        }
        let used = self.queue.len() + self.slots.iter().map(Slot::outstanding).sum::<usize>();
        (self.cfg.workers * self.cfg.max_outstanding).saturating_sub(used)
    }

    /// A connection was accepted: it is queued for a worker; returns its id.
    pub(crate) fn accepted(&mut self, conn: C) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back((id, conn));
        id
    }

    /// Accepting failed (out of descriptors or the like): the connection stays in the
    /// backlog, and accepting pauses for [`ACCEPT_RETRY`] rather than spin.
    pub(crate) fn handle_accept_failed(&mut self, now: Instant) {
        self.accept_pause = Some(now + ACCEPT_RETRY);
    }

    /// The driver started the worker of `slot` ([`Action::Spawn`]); its process is `child`.
    pub(crate) fn handle_spawned(&mut self, slot: usize, child: u32, now: Instant) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.running = true;
        s.ran = true;
        if let State::Starting {
            child: c @ None,
            since,
        } = &mut s.state
        {
            *c = Some(child);
            *since = now;
        }
    }

    /// The driver could not start the worker of `slot` ([`Action::Spawn`]) for lack of
    /// resources (the acceptor is out of descriptors, processes or memory): it is tried again
    /// after [`SPAWN_RETRY`] (not after a shutdown began); what is queued waits.
    pub(crate) fn handle_spawn_failed(&mut self, slot: usize, now: Instant) {
        let draining = self.drain.is_some();
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if !matches!(s.state, State::Starting { child: None, .. }) {
            return;
        }
        if s.ran {
            // Counted as a restart when it was asked for; it did not happen.
            self.summary.restarts = self.summary.restarts.saturating_sub(1);
        }
        s.running = false;
        s.state = State::Down {
            restart_at: (!draining).then_some(now + SPAWN_RETRY),
        };
    }

    /// A line the worker of `slot` wrote, or why its output is not the protocol (a malformed
    /// or oversized line: the worker is replaced at once, and its unconfirmed connections go
    /// to the others).
    pub(crate) fn handle_line(
        &mut self,
        slot: usize,
        line: Result<FromWorker, Error>,
        now: Instant,
    ) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let state = s.state;
        let line = match (line, state) {
            // Killed or gone: what it still says is not heard.
            (_, State::Down { .. }) => return,
            (Err(e), _) => {
                let why = format!("wrote a line that is not the sockdup worker protocol ({e})");
                return self.broken(slot, why, now);
            }
            (Ok(line), _) => line,
        };
        match (line, state) {
            (FromWorker::Pid(pid), State::Starting { child, .. }) => {
                if Some(pid) == child {
                    s.state = State::Ready { pid };
                } else {
                    let child = child.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
                    let why = format!("announced pid {pid}, but the worker process is {child}");
                    self.broken(slot, why, now);
                }
            }
            // A worker whose input closed before it announced itself.
            (FromWorker::Pid(_), State::Closing) => {}
            // Every id a worker names must be one it holds: an `ok` or `fail` for a connection
            // it was not sent (another worker's, one never accepted, one it already answered)
            // or a `done` for one it did not confirm means its stream is out of step with the
            // acceptor's, like a line that is not the protocol. Nothing of another worker's is
            // touched (each worker's connections are its own slot's), and it is replaced at
            // once rather than at its answer timeout.
            (FromWorker::Redeemed(id), State::Ready { .. } | State::Closing) => {
                // The worker has its own descriptor now: the acceptor's closes here.
                if s.unconfirmed.remove(&id).is_some() {
                    s.prune_sent();
                    s.active.insert(id);
                    s.batch_limit = (s.batch_limit + 1).min(MAX_BATCH);
                    self.summary.per_worker[slot] += 1;
                } else {
                    self.not_held(slot, "confirmed", id, now);
                }
            }
            (FromWorker::Failed { id, error }, State::Ready { .. } | State::Closing) => {
                if s.unconfirmed.contains_key(&id) {
                    let why = format!(
                        "could not redeem connection {id} ({}); it goes to another worker",
                        error.to_error()
                    );
                    self.broken(slot, why, now);
                } else {
                    self.not_held(slot, "failed", id, now);
                }
            }
            (FromWorker::Done(id), State::Ready { .. } | State::Closing) => {
                if !s.active.remove(&id) {
                    self.not_held(slot, "finished", id, now);
                }
            }
            (FromWorker::Error(report), _) => {
                let why = format!(
                    "found a line from the acceptor not the protocol ({})",
                    report.to_error()
                );
                self.broken(slot, why, now);
            }
            (other, _) => self.broken(slot, format!("said {other:?} out of turn"), now),
        }
    }

    /// The output of the worker of `slot` ended: it can no longer confirm anything. Its
    /// unconfirmed connections go to the others; it is killed and started again (after a
    /// shutdown began: left to exit, and not started again).
    pub(crate) fn handle_output_closed(&mut self, slot: usize, now: Instant) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        match s.state {
            State::Down { .. } => {}
            State::Closing => s.state = State::Down { restart_at: None },
            _ => self.take_down(slot, None, self.drain.is_none(), now),
        }
    }

    /// The process of `slot` exited (the driver reaped it).
    pub(crate) fn handle_exited(&mut self, slot: usize, now: Instant) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.running = false;
        match s.state {
            State::Down { .. } => {}
            State::Closing => s.state = State::Down { restart_at: None },
            _ => self.take_down(slot, None, false, now),
        }
    }

    /// [`Action::Send`] of `ids` to `slot` failed.
    ///
    /// For lack of room (its inbox full, it or this process out of descriptors: [`InboxFull`],
    /// [`TargetOutOfDescriptors`], [`OutOfDescriptors`]) the worker is not at fault and keeps
    /// what it has: the batch goes back to the front of the queue, and the worker gets nothing
    /// for [`SEND_RETRY`], then batches half as large. Only a worker that cannot take even one
    /// connection while it holds none is replaced (restarting it is all that can help).
    ///
    /// Any other failure (its inbox is gone, its input closed): the worker is replaced, and
    /// the batch, with the rest of what it had not confirmed, goes to the others.
    ///
    /// [`InboxFull`]: ErrorKind::InboxFull
    /// [`TargetOutOfDescriptors`]: ErrorKind::TargetOutOfDescriptors
    /// [`OutOfDescriptors`]: ErrorKind::OutOfDescriptors
    pub(crate) fn handle_send_failed(
        &mut self,
        slot: usize,
        ids: &[u64],
        error: &Error,
        now: Instant,
    ) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.pushing = false;
        let no_room = matches!(
            error.kind(),
            ErrorKind::InboxFull | ErrorKind::TargetOutOfDescriptors | ErrorKind::OutOfDescriptors
        );
        let hopeless = error.kind() != ErrorKind::OutOfDescriptors
            && s.batch_limit == 1
            && s.outstanding() <= ids.len();
        if !no_room || hopeless {
            let why = format!("could not take a connection: {error}");
            return self.broken(slot, why, now);
        }
        let mut back: Vec<(u64, C)> = ids
            .iter()
            .filter_map(|id| s.unconfirmed.remove(id).map(|(c, _)| (*id, c)))
            .collect();
        s.prune_sent();
        s.batch_limit = (s.batch_limit / 2).max(1);
        s.retry_at = Some(now + SEND_RETRY);
        back.sort_unstable_by_key(|(id, _)| *id);
        for item in back.into_iter().rev() {
            self.queue.push_front(item);
        }
    }

    /// The driver pushed the batch of an [`Action::Send`] to the inbox of the worker of `slot`
    /// without waiting for the answer: the worker gets no other batch until the driver reports
    /// [`handle_pushed`](Self::handle_pushed) (or [`handle_send_failed`](Self::handle_send_failed));
    /// the connections that come meanwhile wait in the queue and go to it together (or to
    /// another worker). A worker that never answers is replaced at its answer timeout, as for
    /// the `ok` lines.
    pub(crate) fn handle_push_sent(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot)
            && matches!(s.state, State::Ready { .. })
        {
            s.pushing = true;
        }
    }

    /// The inbox of the worker of `slot` answered the push of [`handle_push_sent`](Self::handle_push_sent)
    /// (the driver wrote the batch's `conn` lines): it takes batches again.
    pub(crate) fn handle_pushed(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.pushing = false;
        }
    }

    /// The worker of `slot` named connection `id`, which it does not hold, as `what`: it is
    /// out of step, and replaced.
    fn not_held(&mut self, slot: usize, what: &str, id: u64, now: Instant) {
        let why = format!(
            "said it {what} connection {id}, which it does not hold: its answers are out of step"
        );
        self.broken(slot, why, now);
    }

    /// Applies what is due at `now`: answer timeouts (the late worker is replaced), restarts,
    /// the end of an accept pause, the drain deadline.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.accept_pause.is_some_and(|until| now >= until) {
            self.accept_pause = None;
        }
        let limit = self.cfg.answer_timeout;
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            if s.retry_at.is_some_and(|at| now >= at) {
                s.retry_at = None;
            }
            let s = &self.slots[slot];
            let late = match s.state {
                State::Starting { since, .. } => now >= since + limit,
                State::Ready { .. } | State::Closing => {
                    s.oldest_unconfirmed().is_some_and(|at| now >= at + limit)
                }
                State::Down { restart_at } => {
                    if restart_at.is_some_and(|at| now >= at) {
                        self.spawn(slot, now);
                    }
                    false
                }
            };
            if late {
                self.broken(slot, format!("did not answer within {limit:?}"), now);
            }
        }
        if self.drain.is_some_and(|deadline| now >= deadline) {
            self.drain_over = true;
        }
    }

    /// Hands out the queued connections the ready workers can take: one batch of at most
    /// [`MAX_BATCH`] for each worker ([`Action::Send`]). After a shutdown began, closes the
    /// input of every worker that has nothing left to confirm once the queue is empty.
    pub(crate) fn dispatch(&mut self, now: Instant) {
        if !self.queue.is_empty() {
            self.dispatch_batches(now);
        }
        if self.drain.is_some() && self.queue.is_empty() {
            for (slot, s) in self.slots.iter_mut().enumerate() {
                let open = matches!(s.state, State::Starting { .. } | State::Ready { .. });
                if open && s.unconfirmed.is_empty() {
                    s.state = State::Closing;
                    self.actions.push_back(Action::CloseInput { slot });
                }
            }
        }
    }

    fn dispatch_batches(&mut self, now: Instant) {
        // Per slot, the ids planned for it; kept between calls, and the lists the actions carry
        // away come back through `recycle` (no allocation per batch).
        let mut planned = std::mem::take(&mut self.planned);
        planned.resize_with(self.slots.len(), Vec::new);
        while let Some((id, conn)) = self.queue.pop_front() {
            let Some(slot) = self.pick(&planned) else {
                self.queue.push_front((id, conn));
                break;
            };
            let s = &mut self.slots[slot];
            s.unconfirmed.insert(id, (conn, now));
            s.sent.push_back((now, id));
            planned[slot].push(id);
        }
        for (slot, ids) in planned.iter_mut().enumerate() {
            if ids.is_empty() {
                continue;
            }
            // `pick` chose only ready slots (were one not, its connections would time out
            // unconfirmed and go to another worker).
            let State::Ready { pid } = self.slots[slot].state else {
                continue;
            };
            let next = self.spare.pop().unwrap_or_default();
            self.actions.push_back(Action::Send {
                slot,
                pid,
                ids: std::mem::replace(ids, next),
            });
        }
        self.planned = planned;
    }

    /// A ready worker for one more connection, counting the `planned` ones it is about to
    /// get: one below `max_outstanding` and below a full batch.
    ///
    /// The planned connections are in the slots' `unconfirmed` already (they count in
    /// `outstanding`); `planned` counts them toward the batch limit.
    fn pick(&mut self, planned: &[Vec<u64>]) -> Option<usize> {
        let n = self.slots.len();
        let ready = |i: usize| {
            let s = &self.slots[i];
            matches!(s.state, State::Ready { .. })
                && s.retry_at.is_none()
                && !s.pushing
                && s.outstanding() < self.cfg.max_outstanding
                && planned[i].len() < s.batch_limit
        };
        match self.cfg.policy {
            Policy::RoundRobin => {
                let found = (0..n).map(|k| (self.rr + k) % n).find(|&i| ready(i))?;
                self.rr = (found + 1) % n;
                Some(found)
            }
            Policy::LeastOutstanding => (0..n)
                .filter(|&i| ready(i))
                .min_by_key(|&i| self.slots[i].outstanding()),
        }
    }

    /// Whether more queued connections could go to a worker at once (the last batches were
    /// full): the driver should not wait for events before the next [`dispatch`](Self::dispatch).
    pub(crate) fn more(&self) -> bool {
        !self.queue.is_empty() && (0..self.slots.len()).any(|i| self.takes(i, 0))
    }

    /// Whether worker `i` takes one more connection beyond `planned`: it is ready, not waiting
    /// for a retry nor for its inbox's answer to a push, below `max_outstanding` and below
    /// its batch limit.
    fn takes(&self, i: usize, planned: usize) -> bool {
        let s = &self.slots[i];
        matches!(s.state, State::Ready { .. })
            && s.retry_at.is_none()
            && !s.pushing
            && s.outstanding() + planned < self.cfg.max_outstanding
            && planned < s.batch_limit
    }

    /// Gives back the id list of an [`Action::Send`] that was carried out, for a later one
    /// (kept: at most one list per worker slot, and per action not yet carried out).
    pub(crate) fn recycle(&mut self, mut ids: Vec<u64>) {
        if self.spare.len() < self.slots.len() {
            ids.clear();
            self.spare.push(ids);
        }
    }

    /// The connections of an [`Action::Send`], in its order; `None` if they are no longer
    /// waiting for that worker's answer.
    pub(crate) fn batch<'a>(
        &'a self,
        slot: usize,
        ids: &'a [u64],
    ) -> Option<impl Iterator<Item = &'a C> + 'a> {
        let s = self.slots.get(slot)?;
        if !ids.iter().all(|id| s.unconfirmed.contains_key(id)) {
            return None;
        }
        Some(
            ids.iter()
                .filter_map(|id| s.unconfirmed.get(id).map(|(c, _)| c)),
        )
    }

    /// A shutdown begins: nothing more is accepted (the listeners close), what is queued is
    /// still handed out, the workers' inputs close once they have confirmed what they were
    /// given, nothing is started again, and the drain ends when every worker exited or at the
    /// drain deadline.
    pub(crate) fn shutdown(&mut self, now: Instant) {
        if self.drain.is_some() {
            return;
        }
        self.drain = Some(now + self.cfg.drain_deadline);
        self.listening = false;
        self.actions.push_back(Action::CloseListeners);
        for s in &mut self.slots {
            if let State::Down { restart_at } = &mut s.state {
                *restart_at = None;
            }
        }
        self.dispatch(now);
    }

    /// Whether a shutdown began.
    pub(crate) fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Whether the shutdown is over: every worker exited, or the drain deadline passed (the
    /// driver kills what still runs).
    pub(crate) fn finished(&self) -> bool {
        self.drain.is_some() && (self.drain_over || self.slots.iter().all(|s| !s.running))
    }

    /// Starts the worker of `slot` (again).
    fn spawn(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        if s.started {
            s.generation += 1;
        }
        if s.ran {
            self.summary.restarts += 1;
        }
        s.started = true;
        s.state = State::Starting {
            child: None,
            since: now,
        };
        let generation = s.generation;
        self.actions.push_back(Action::Spawn { slot, generation });
    }

    /// The worker of `slot` misbehaved: it is killed at once, reported, and replaced.
    fn broken(&mut self, slot: usize, why: String, now: Instant) {
        self.summary.replaced += 1;
        self.take_down(slot, Some(why), true, now);
    }

    /// The worker of `slot` is gone: its unconfirmed connections go back to the front of the
    /// queue in their order; it is killed if `kill` (with `report` if it misbehaved) and
    /// started again after [`RESTART_DELAY`] unless a shutdown began.
    fn take_down(&mut self, slot: usize, report: Option<String>, kill: bool, now: Instant) {
        let s = &mut self.slots[slot];
        let mut lost: Vec<(u64, C)> = s
            .unconfirmed
            .drain()
            .map(|(id, (conn, _))| (id, conn))
            .collect();
        s.sent.clear();
        s.active.clear();
        s.batch_limit = MAX_BATCH;
        s.retry_at = None;
        s.pushing = false;
        lost.sort_unstable_by_key(|(id, _)| *id);
        self.summary.redispatched += lost.len() as u64;
        for item in lost.into_iter().rev() {
            self.queue.push_front(item);
        }
        let restart_at = self.drain.is_none().then_some(now + RESTART_DELAY);
        s.state = State::Down { restart_at };
        if kill || report.is_some() {
            self.actions.push_back(Action::Kill { slot, report });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockdup_core::ErrorKind;
    use sockdup_core::proto::handoff::ErrorReport;

    const LIMIT: Duration = Duration::from_secs(5);

    fn cfg(workers: usize, policy: Policy, max_outstanding: usize) -> Config {
        Config {
            workers,
            policy,
            max_outstanding,
            answer_timeout: LIMIT,
            drain_deadline: Duration::from_secs(10),
        }
    }

    /// A dispatch whose workers were all spawned (pids 100, 101, ...) and announced.
    fn ready(cfg: Config, t0: Instant) -> Dispatch<&'static str> {
        let mut d = Dispatch::new(cfg, t0);
        let spawns = actions(&mut d);
        assert_eq!(spawns.len(), cfg.workers);
        for (slot, a) in spawns.into_iter().enumerate() {
            assert_eq!(
                a,
                Action::Spawn {
                    slot,
                    generation: 0
                }
            );
            let pid = 100 + slot as u32;
            d.handle_spawned(slot, pid, t0);
            d.handle_line(slot, Ok(FromWorker::Pid(pid)), t0);
        }
        assert!(actions(&mut d).is_empty());
        d
    }

    fn actions<C>(d: &mut Dispatch<C>) -> Vec<Action> {
        std::iter::from_fn(|| d.poll_action()).collect()
    }

    fn accept(d: &mut Dispatch<&'static str>, n: usize) -> Vec<u64> {
        (0..n).map(|_| d.accepted("conn")).collect()
    }

    /// The `Send`s among `actions`, as `(slot, ids)`.
    fn sends(actions: &[Action]) -> Vec<(usize, Vec<u64>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { slot, ids, .. } => Some((*slot, ids.clone())),
                _ => None,
            })
            .collect()
    }

    fn ok(d: &mut Dispatch<&'static str>, slot: usize, ids: &[u64], now: Instant) {
        for &id in ids {
            d.handle_line(slot, Ok(FromWorker::Redeemed(id)), now);
        }
    }

    fn garbage() -> Error {
        Error::new(ErrorKind::ProtocolViolation, "\"hello\" is not a line")
    }

    #[test]
    fn round_robin_takes_each_ready_worker_in_turn() {
        let t0 = Instant::now();
        let mut d = ready(cfg(3, Policy::RoundRobin, 256), t0);
        accept(&mut d, 7);
        d.dispatch(t0);
        let got = actions(&mut d);
        assert_eq!(
            sends(&got),
            vec![(0, vec![0, 3, 6]), (1, vec![1, 4]), (2, vec![2, 5])]
        );
        assert!(got.contains(&Action::Send {
            slot: 1,
            pid: 101,
            ids: vec![1, 4]
        }));
        // The turn goes on where it stopped.
        accept(&mut d, 1);
        d.dispatch(t0);
        assert_eq!(sends(&actions(&mut d)), vec![(1, vec![7])]);
        assert_eq!(d.batch(1, &[1, 4, 7]).map(Iterator::count), Some(3));
        assert!(d.batch(0, &[1]).is_none());
    }

    #[test]
    fn least_outstanding_fills_the_least_busy_worker_first() {
        let t0 = Instant::now();
        let mut d = ready(cfg(2, Policy::LeastOutstanding, 256), t0);
        accept(&mut d, 3);
        d.dispatch(t0);
        assert_eq!(sends(&actions(&mut d)), vec![(0, vec![0, 2]), (1, vec![1])]);
        ok(&mut d, 0, &[0, 2], t0);
        ok(&mut d, 1, &[1], t0);
        // Worker 1 finishes its one connection: the next three go two to it, one to worker 0.
        d.handle_line(1, Ok(FromWorker::Done(1)), t0);
        accept(&mut d, 3);
        d.dispatch(t0);
        assert_eq!(sends(&actions(&mut d)), vec![(0, vec![5]), (1, vec![3, 4])]);
        assert_eq!(d.summary().per_worker, vec![2, 1]);
    }

    #[test]
    fn a_worker_whose_push_awaits_its_inbox_gets_no_batch_until_it_answers() {
        let t0 = Instant::now();
        let mut d = ready(cfg(2, Policy::RoundRobin, 256), t0);
        accept(&mut d, 1);
        d.dispatch(t0);
        assert_eq!(sends(&actions(&mut d)), vec![(0, vec![0])]);
        d.handle_push_sent(0);
        // Worker 0 waits for its inbox: the next connections all go to worker 1.
        accept(&mut d, 3);
        d.dispatch(t0);
        assert_eq!(sends(&actions(&mut d)), vec![(1, vec![1, 2, 3])]);
        d.handle_push_sent(1);
        // Both wait: connections stay queued, and the driver is not told to go on at once.
        // The acceptor stops watching the listeners until an answer comes.
        accept(&mut d, 2);
        d.dispatch(t0);
        assert_eq!(actions(&mut d), vec![Action::Listen(false)]);
        assert!(!d.more());
        // Worker 0's inbox answered: what queued meanwhile goes to it in one batch, and the
        // listeners are watched again.
        d.handle_pushed(0);
        assert!(d.more());
        d.dispatch(t0);
        let got = actions(&mut d);
        assert_eq!(sends(&got), vec![(0, vec![4, 5])]);
        assert_eq!(got.last(), Some(&Action::Listen(true)));
        // A failed push (no room in the inbox) ends the wait too, after the retry delay.
        let full = Error::new(ErrorKind::InboxFull, "full");
        d.handle_send_failed(1, &[1, 2, 3], &full, t0);
        assert!(
            d.batch(1, &[1, 2, 3]).is_none(),
            "the batch is queued again"
        );
        assert!(d.slots[1].retry_at.is_some() && !d.slots[1].pushing);
    }

    #[test]
    fn batches_hold_at_most_64_and_the_rest_goes_next_turn() {
        let t0 = Instant::now();
        let mut d = ready(cfg(1, Policy::RoundRobin, 256), t0);
        accept(&mut d, 100);
        d.dispatch(t0);
        let first = sends(&actions(&mut d));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1, (0..64).collect::<Vec<u64>>());
        assert!(d.more());
        d.dispatch(t0);
        assert_eq!(
            sends(&actions(&mut d))[0].1,
            (64..100).collect::<Vec<u64>>()
        );
        assert!(!d.more());
    }

    #[test]
    fn backpressure_stops_and_resumes_accepting() {
        let t0 = Instant::now();
        let mut d = ready(cfg(2, Policy::RoundRobin, 2), t0);
        assert_eq!(d.room(), 4);
        accept(&mut d, 3);
        assert_eq!(d.room(), 1);
        assert!(actions(&mut d).is_empty(), "still room: still listening");
        accept(&mut d, 1);
        assert_eq!(d.room(), 0);
        d.dispatch(t0);
        let got = actions(&mut d);
        assert_eq!(sends(&got), vec![(0, vec![0, 2]), (1, vec![1, 3])]);
        assert_eq!(got.last(), Some(&Action::Listen(false)));
        // Confirmed is still outstanding; done is not.
        ok(&mut d, 0, &[0, 2], t0);
        assert!(actions(&mut d).is_empty());
        d.handle_line(0, Ok(FromWorker::Done(0)), t0);
        assert_eq!(d.room(), 1);
        assert_eq!(actions(&mut d), vec![Action::Listen(true)]);
        // A failed accept pauses accepting for a while.
        d.handle_accept_failed(t0);
        assert_eq!(actions(&mut d), vec![Action::Listen(false)]);
        assert_eq!(d.poll_timeout(), Some(t0 + ACCEPT_RETRY));
        d.handle_timeout(t0 + ACCEPT_RETRY);
        assert_eq!(actions(&mut d), vec![Action::Listen(true)]);
    }

    #[test]
    fn a_dead_workers_unconfirmed_connections_go_to_another() {
        let t0 = Instant::now();
        let mut d = ready(cfg(2, Policy::RoundRobin, 256), t0);
        accept(&mut d, 4);
        d.dispatch(t0);
        assert_eq!(
            sends(&actions(&mut d)),
            vec![(0, vec![0, 2]), (1, vec![1, 3])]
        );
        ok(&mut d, 0, &[0], t0);
        // Worker 0 dies with connection 2 unconfirmed.
        d.handle_exited(0, t0);
        assert!(actions(&mut d).is_empty(), "an exited worker needs no kill");
        d.dispatch(t0);
        assert_eq!(sends(&actions(&mut d)), vec![(1, vec![2])]);
        assert_eq!(d.summary().redispatched, 1);
        // It is started again after the restart delay, as a new generation.
        assert_eq!(d.poll_timeout(), Some(t0 + RESTART_DELAY));
        d.handle_timeout(t0 + RESTART_DELAY);
        assert_eq!(
            actions(&mut d),
            vec![Action::Spawn {
                slot: 0,
                generation: 1
            }]
        );
        assert_eq!(d.summary().restarts, 1);
        assert_eq!(d.summary().per_worker, vec![1, 0]);
    }

    #[test]
    fn a_worker_whose_output_ends_is_killed_and_restarted() {
        let t0 = Instant::now();
        let mut d = ready(cfg(1, Policy::RoundRobin, 256), t0);
        accept(&mut d, 2);
        d.dispatch(t0);
        actions(&mut d);
        d.handle_output_closed(0, t0);
        assert_eq!(
            actions(&mut d),
            vec![Action::Kill {
                slot: 0,
                report: None
            }]
        );
        d.handle_exited(0, t0);
        d.handle_timeout(t0 + RESTART_DELAY);
        assert_eq!(
            actions(&mut d),
            vec![Action::Spawn {
                slot: 0,
                generation: 1
            }]
        );
        let t1 = t0 + RESTART_DELAY;
        d.handle_spawned(0, 200, t1);
        // Lines of no worker, or of the old one, before the new one announces: out of turn.
        d.handle_line(0, Ok(FromWorker::Pid(200)), t1);
        d.dispatch(t1);
        assert_eq!(sends(&actions(&mut d)), vec![(0, vec![0, 1])]);
        assert_eq!(d.summary().redispatched, 2);
        assert_eq!(d.summary().replaced, 0);
    }

    #[test]
    fn garbage_from_a_worker_replaces_it_at_once() {
        let t0 = Instant::now();
        let mut d = ready(cfg(2, Policy::RoundRobin, 256), t0);
        accept(&mut d, 4);
        d.dispatch(t0);
        actions(&mut d);
        let t1 = t0 + Duration::from_millis(1);
        d.handle_line(1, Err(garbage()), t1);
        let got = actions(&mut d);
        let [
            Action::Kill {
                slot: 1,
                report: Some(why),
            },
        ] = &got[..]
        else {
            panic!("{got:?}");
        };
        assert!(why.contains("not the sockdup worker protocol"), "{why}");
        // What it says after that is not heard.
        d.handle_line(1, Ok(FromWorker::Redeemed(1)), t1);
        d.handle_line(1, Err(garbage()), t1);
        assert_eq!(d.summary().replaced, 1);
        // Its connections go to the healthy worker now, long before any answer timeout.
        d.dispatch(t1);
        assert_eq!(sends(&actions(&mut d)), vec![(0, vec![1, 3])]);
        assert_eq!(d.summary().redispatched, 2);
        d.handle_timeout(t1 + RESTART_DELAY);
        assert_eq!(
            actions(&mut d),
            vec![Action::Spawn {
                slot: 1,
                generation: 1
            }]
        );
    }

    #[test]
    fn a_batch_that_cannot_be_sent_goes_to_another_worker() {
        let t0 = Instant::now();
        let mut d = ready(cfg(2, Policy::RoundRobin, 256), t0);
        accept(&mut d, 4);
        d.dispatch(t0);
        assert_eq!(
            sends(&actions(&mut d)),
            vec![(0, vec![0, 2]), (1, vec![1, 3])]
        );
        let e = Error::new(ErrorKind::PeerClosed, "the worker's inbox is gone");
        d.handle_send_failed(1, &[1, 3], &e, t0);
        let got = actions(&mut d);
        assert!(
            matches!(&got[..], [Action::Kill { slot: 1, report: Some(w) }] if w.contains("could not take a connection: the worker's inbox is gone")),
            "{got:?}"
        );
        assert!(d.batch(1, &[1, 3]).is_none());
        d.dispatch(t0);
        assert_eq!(sends(&actions(&mut d)), vec![(0, vec![1, 3])]);
        assert_eq!((d.summary().redispatched, d.summary().replaced), (2, 1));
    }

    #[test]
    fn wrong_pid_failures_error_lines_and_lines_out_of_turn_replace_the_worker() {
        let t0 = Instant::now();
        let report = ErrorReport::of(&Error::new(ErrorKind::Expired, "expired"));
        type Case = Box<dyn Fn(&mut Dispatch<&'static str>)>;
        let cases: Vec<(Case, &str)> = vec![
            (
                Box::new(move |d| d.handle_line(0, Ok(FromWorker::Pid(1)), t0)),
                "announced pid 1, but the worker process is 100",
            ),
            (
                Box::new(move |d| d.handle_line(0, Ok(FromWorker::Done(3)), t0)),
                "out of turn",
            ),
            (
                Box::new(move |d| {
                    d.handle_line(0, Ok(FromWorker::Pid(100)), t0);
                    d.accepted("conn");
                    d.dispatch(t0);
                    d.handle_line(
                        0,
                        Ok(FromWorker::Failed {
                            id: 0,
                            error: report.clone(),
                        }),
                        t0,
                    );
                }),
                "could not redeem connection 0 (expired",
            ),
            (
                Box::new(move |d| {
                    let r = ErrorReport::of(&garbage());
                    d.handle_line(0, Ok(FromWorker::Error(r)), t0);
                }),
                "not the protocol",
            ),
        ];
        for (act, want) in cases {
            let mut d = Dispatch::new(cfg(1, Policy::RoundRobin, 256), t0);
            actions(&mut d);
            d.handle_spawned(0, 100, t0);
            act(&mut d);
            let got = actions(&mut d);
            let Some(Action::Kill {
                report: Some(why), ..
            }) = got.last()
            else {
                panic!("{want}: {got:?}");
            };
            assert!(why.contains(want), "{why}");
            assert_eq!(d.summary().replaced, 1);
        }
    }

    #[test]
    fn a_worker_that_does_not_answer_in_time_is_replaced() {
        let t0 = Instant::now();
        // Never announces itself.
        let mut d: Dispatch<&str> = Dispatch::new(cfg(1, Policy::RoundRobin, 256), t0);
        actions(&mut d);
        d.handle_spawned(0, 100, t0);
        assert_eq!(d.poll_timeout(), Some(t0 + LIMIT));
        d.handle_timeout(t0 + LIMIT - Duration::from_millis(1));
        assert!(actions(&mut d).is_empty());
        d.handle_timeout(t0 + LIMIT);
        let got = actions(&mut d);
        assert!(
            matches!(&got[..], [Action::Kill { report: Some(w), .. }] if w.contains("did not answer within 5s")),
            "{got:?}"
        );
        // Announces itself, but does not confirm a connection.
        let mut d = ready(cfg(1, Policy::RoundRobin, 256), t0);
        accept(&mut d, 2);
        let t1 = t0 + Duration::from_secs(1);
        d.dispatch(t1);
        actions(&mut d);
        ok(&mut d, 0, &[0], t1);
        assert_eq!(d.poll_timeout(), Some(t1 + LIMIT));
        d.handle_timeout(t1 + LIMIT);
        assert!(matches!(
            &actions(&mut d)[..],
            [Action::Kill {
                report: Some(_),
                ..
            }]
        ));
        assert_eq!(d.summary().redispatched, 1);
    }

    #[test]
    fn a_drain_closes_inputs_once_everything_is_confirmed_and_ends_when_all_exited() {
        let t0 = Instant::now();
        let mut d = ready(cfg(2, Policy::RoundRobin, 256), t0);
        accept(&mut d, 3);
        d.shutdown(t0);
        let got = actions(&mut d);
        assert_eq!(got[0], Action::CloseListeners);
        assert_eq!(sends(&got), vec![(0, vec![0, 2]), (1, vec![1])]);
        assert_eq!(d.room(), 0);
        // Worker 1 confirms: its input closes; worker 0 not yet.
        ok(&mut d, 1, &[1], t0);
        d.dispatch(t0);
        assert_eq!(actions(&mut d), vec![Action::CloseInput { slot: 1 }]);
        ok(&mut d, 0, &[0, 2], t0);
        d.dispatch(t0);
        assert_eq!(actions(&mut d), vec![Action::CloseInput { slot: 0 }]);
        // Done lines still count; the drain ends when both exited; nothing is restarted.
        d.handle_line(0, Ok(FromWorker::Done(0)), t0);
        d.handle_exited(0, t0);
        assert!(!d.finished());
        d.handle_output_closed(1, t0);
        d.handle_exited(1, t0);
        assert!(d.finished());
        d.handle_timeout(t0 + Duration::from_secs(1));
        assert!(actions(&mut d).is_empty());
        assert_eq!(d.summary().per_worker, vec![2, 1]);
        assert_eq!(d.summary().restarts, 0);
    }

    #[test]
    fn a_drain_ends_at_its_deadline_and_a_dead_worker_is_not_restarted() {
        let t0 = Instant::now();
        let mut d = ready(cfg(2, Policy::RoundRobin, 256), t0);
        accept(&mut d, 2);
        d.dispatch(t0);
        actions(&mut d);
        d.shutdown(t0);
        assert_eq!(actions(&mut d), vec![Action::CloseListeners]);
        // Worker 1 dies: its connection goes to worker 0, and it is not started again.
        d.handle_exited(1, t0);
        d.dispatch(t0);
        assert_eq!(sends(&actions(&mut d)), vec![(0, vec![1])]);
        ok(&mut d, 0, &[0, 1], t0);
        d.dispatch(t0);
        assert_eq!(actions(&mut d), vec![Action::CloseInput { slot: 0 }]);
        // Worker 0 keeps running past the deadline.
        let deadline = t0 + Duration::from_secs(10);
        assert_eq!(d.poll_timeout(), Some(deadline));
        d.handle_timeout(deadline - Duration::from_millis(1));
        assert!(!d.finished());
        d.handle_timeout(deadline);
        assert!(d.finished());
        assert!(actions(&mut d).is_empty());
        assert_eq!(d.summary().restarts, 0);
        assert_eq!(d.summary().redispatched, 1);
    }

    #[test]
    fn a_worker_without_room_keeps_what_it_has_and_gets_smaller_batches_later() {
        for kind in [
            ErrorKind::InboxFull,
            ErrorKind::TargetOutOfDescriptors,
            ErrorKind::OutOfDescriptors,
        ] {
            let t0 = Instant::now();
            let mut d = ready(cfg(1, Policy::RoundRobin, 256), t0);
            accept(&mut d, 1);
            d.dispatch(t0);
            assert_eq!(sends(&actions(&mut d)), vec![(0, vec![0])]);
            ok(&mut d, 0, &[0], t0);
            accept(&mut d, 10);
            d.dispatch(t0);
            let batch: Vec<u64> = (1..11).collect();
            assert_eq!(sends(&actions(&mut d)), vec![(0, batch.clone())]);
            let e = Error::new(kind, "no room");
            d.handle_send_failed(0, &batch, &e, t0);
            // Not replaced: connection 0 is still its own, and nothing is re-dispatched.
            assert!(actions(&mut d).is_empty(), "{kind:?}");
            assert_eq!(d.summary().replaced, 0);
            assert_eq!(d.summary().redispatched, 0);
            assert!(d.batch(0, &[1]).is_none());
            // Nothing goes to it before the retry, and the driver need not hurry.
            d.dispatch(t0);
            assert!(sends(&actions(&mut d)).is_empty());
            assert!(!d.more());
            assert_eq!(d.poll_timeout(), Some(t0 + SEND_RETRY));
            // Then half the batch, in order.
            let t1 = t0 + SEND_RETRY;
            d.handle_timeout(t1);
            d.dispatch(t1);
            assert_eq!(sends(&actions(&mut d)), vec![(0, (1..11).collect())]);
            d.handle_send_failed(0, &(1..11).collect::<Vec<_>>(), &e, t1);
            let t2 = t1 + SEND_RETRY;
            d.handle_timeout(t2);
            d.dispatch(t2);
            assert_eq!(sends(&actions(&mut d)), vec![(0, (1..11).collect())]);
            d.handle_send_failed(0, &(1..11).collect::<Vec<_>>(), &e, t2);
            let t3 = t2 + SEND_RETRY;
            d.handle_timeout(t3);
            d.dispatch(t3);
            // 64 -> 32 -> 16 -> 8.
            assert_eq!(sends(&actions(&mut d)), vec![(0, (1..9).collect())]);
            assert!(d.more());
            // Confirmations grow the limit again.
            ok(&mut d, 0, &(1..9).collect::<Vec<_>>(), t3);
            d.dispatch(t3);
            assert_eq!(sends(&actions(&mut d)), vec![(0, vec![9, 10])]);
            assert_eq!(d.summary().per_worker, vec![9]);
        }
    }

    #[test]
    fn a_worker_that_cannot_take_one_connection_while_holding_none_is_replaced() {
        let t0 = Instant::now();
        let mut d = ready(cfg(2, Policy::RoundRobin, 256), t0);
        let e = Error::new(ErrorKind::TargetOutOfDescriptors, "out of descriptors");
        let mut now = t0;
        // Slot 0 fails batch after batch (1, then 1 after each halving).
        accept(&mut d, 1);
        loop {
            d.handle_timeout(now);
            d.dispatch(now);
            let got = sends(&actions(&mut d));
            let Some((slot, ids)) = got.into_iter().find(|(s, _)| *s == 0) else {
                // Went to slot 1: give slot 0 another.
                accept(&mut d, 1);
                now += SEND_RETRY;
                continue;
            };
            assert_eq!(slot, 0);
            d.handle_send_failed(0, &ids, &e, now);
            let got = actions(&mut d);
            if let [
                Action::Kill {
                    slot: 0,
                    report: Some(why),
                },
            ] = &got[..]
            {
                assert!(why.contains("out of descriptors"), "{why}");
                break;
            }
            assert!(got.is_empty(), "{got:?}");
            assert!(now < t0 + SEND_RETRY * 20, "never replaced");
            now += SEND_RETRY;
        }
        assert_eq!(d.summary().replaced, 1);
    }

    #[test]
    fn a_worker_naming_a_connection_it_does_not_hold_is_replaced_at_once() {
        let t0 = Instant::now();
        type Case = (FromWorker, &'static str);
        let report = ErrorReport::of(&Error::new(ErrorKind::Expired, "expired"));
        let cases: Vec<Case> = vec![
            // Never accepted.
            (
                FromWorker::Redeemed(1_000_000),
                "confirmed connection 1000000",
            ),
            // The other worker's.
            (FromWorker::Redeemed(1), "confirmed connection 1,"),
            (
                FromWorker::Failed {
                    id: 3,
                    error: report,
                },
                "failed connection 3,",
            ),
            // Sent to it, not yet confirmed.
            (FromWorker::Done(2), "finished connection 2,"),
            // Confirmed and finished already.
            (FromWorker::Done(0), "finished connection 0,"),
            // Confirmed twice.
            (FromWorker::Redeemed(0), "confirmed connection 0,"),
        ];
        for (line, want) in cases {
            let mut d = ready(cfg(2, Policy::RoundRobin, 256), t0);
            accept(&mut d, 4);
            d.dispatch(t0);
            assert_eq!(
                sends(&actions(&mut d)),
                vec![(0, vec![0, 2]), (1, vec![1, 3])]
            );
            ok(&mut d, 0, &[0], t0);
            ok(&mut d, 1, &[1], t0);
            if want.contains("finished connection 0") {
                d.handle_line(0, Ok(FromWorker::Done(0)), t0);
            }
            d.handle_line(0, Ok(line), t0);
            let got = actions(&mut d);
            let [
                Action::Kill {
                    slot: 0,
                    report: Some(why),
                },
            ] = &got[..]
            else {
                panic!("{want}: {got:?}");
            };
            assert!(why.contains(want), "{want}: {why}");
            assert!(why.contains("which it does not hold"), "{why}");
            // The other worker's connections are untouched; connection 2 goes to it.
            assert_eq!(d.batch(1, &[3]).map(Iterator::count), Some(1), "{want}");
            d.dispatch(t0);
            assert_eq!(sends(&actions(&mut d)), vec![(1, vec![2])], "{want}");
            ok(&mut d, 1, &[2, 3], t0);
            assert_eq!(d.summary().total(), 4, "{want}");
            assert_eq!(d.summary().replaced, 1);
        }
    }
}
