//! The inbox: this process's table of duplicates waiting to be redeemed.
//!
//! A duplicate arrives with [`Inbox::handle_push`] (the driver received descriptors from a
//! source), which assigns each a ticket; [`Inbox::claim`] redeems a record exactly once, only in
//! the process and run it was made for; [`Inbox::handle_timeout`] expires what was never
//! redeemed. The inbox is generic over the descriptor type `F`, so it is tested with plain
//! integers; the driver uses `OwnedFd`, and dropping an expired entry closes its descriptor.
//!
//! Call order: [`Inbox::new`] once per run; then any interleaving of `handle_push`,
//! `handle_cancel`, `claim` and `handle_timeout`, with a `now` that never goes backwards;
//! [`Inbox::poll_timeout`] says when `handle_timeout` is next due.
//!
//! A duplicate's record carries three values the inbox checks: `service_flags3` is the target's
//! pid, `service_flags4` the run's nonce (new at every `startup()`, so records from before a
//! restart, or for an earlier process with the same pid, are recognised), and `provider_reserved`
//! the ticket.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::catalog;
use crate::error::{Error, ErrorKind};
use crate::wire::ProtocolInfo;

/// How long unredeemed duplicates live, and how many may wait at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time-to-live of an unredeemed duplicate; `None` keeps it until the process exits.
    pub ttl: Option<Duration>,
    /// The most duplicates waiting at once.
    pub capacity: usize,
    /// The most duplicates one source process may have waiting at once; `None` is three
    /// quarters of the capacity, rounded up (see [`Limits::source_share`]).
    pub per_source: Option<usize>,
}

impl Default for Limits {
    /// 300 seconds, 4096 duplicates, 3072 of them from any one source.
    fn default() -> Self {
        Self {
            ttl: Some(Duration::from_secs(300)),
            capacity: 4096,
            per_source: None,
        }
    }
}

impl Limits {
    /// The most duplicates one source process may have waiting at once: `per_source` if set
    /// (at most the capacity), else three quarters of the capacity, rounded up, so that one
    /// runaway source leaves room for the others.
    pub fn source_share(&self) -> usize {
        match self.per_source {
            Some(n) => n.clamp(1, self.capacity.max(1)),
            None => self.capacity.saturating_mul(3).div_ceil(4).max(1),
        }
    }
}

/// Why a ticket is no longer pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spent {
    /// Redeemed by `socket_from_info`.
    Redeemed,
    /// Closed when its time-to-live ended.
    Expired,
    /// Withdrawn by its source (a batch that failed part way).
    Cancelled,
}

struct Slot<F> {
    fd: F,
    deadline: Option<Instant>,
    source_pid: u32,
}

/// The hasher of the ticket and pid maps: a multiplication, not SipHash. Their keys are this
/// table's own tickets (handed out in sequence) and the kernel's pids, never chosen by a peer,
/// so there is no flooding to resist, and redeeming is one lookup.
#[derive(Clone, Copy, Debug, Default)]
struct TicketHasher(u64);

impl Hasher for TicketHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<TicketHasher>>;
type Set<K> = std::collections::HashSet<K, BuildHasherDefault<TicketHasher>>;

/// How many tickets' fates are remembered, to tell "already redeemed" from "never issued": the
/// spent ones among the last this many issued (a power of two).
const SPENT_MEMORY: usize = 65_536;

/// The table of pending duplicates of one run of one process. See the [module docs](self).
pub struct Inbox<F> {
    pid: u32,
    nonce: u32,
    limits: Limits,
    next_ticket: u32,
    pending: Map<u32, Slot<F>>,
    /// How many of `pending` each source pid pushed (entries at zero are removed).
    by_source: Map<u32, usize>,
    /// `(deadline, ticket)` of every pending duplicate that has a deadline, in the order they
    /// were pushed, which is the order of their deadlines (one time-to-live, and `now` never
    /// goes back). Entries of tickets since redeemed, cancelled or restored stay until they
    /// reach the front or the queue is compacted ([`Inbox::forget_stale_deadlines`]): an
    /// append and a pop instead of a tree's insert and removal per ticket.
    deadlines: VecDeque<(Instant, u32)>,
    /// Why tickets were spent, a ring indexed by a ticket's place in the issue order modulo
    /// [`SPENT_MEMORY`] (`(ticket, why)`; ticket 0, never issued, marks an empty slot). It grows
    /// with use to at most `SPENT_MEMORY` entries and never beyond: no hashing, no rehashing.
    spent: Vec<(u32, Spent)>,
    first_ticket: u32,
}

impl<F> std::fmt::Debug for Inbox<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("pid", &self.pid)
            .field("nonce", &self.nonce)
            .field("limits", &self.limits)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<F> Inbox<F> {
    /// A new, empty inbox for process `pid`. `nonce` identifies this run (the driver draws it at
    /// random); `first_ticket` is where ticket numbering starts (also random, so tickets of
    /// different runs rarely coincide).
    pub fn new(pid: u32, nonce: u32, first_ticket: u32, limits: Limits) -> Self {
        Self {
            pid,
            nonce,
            limits,
            next_ticket: first_ticket,
            pending: Map::default(),
            by_source: Map::default(),
            deadlines: VecDeque::new(),
            spent: Vec::new(),
            first_ticket,
        }
    }

    /// This process's id, as the inbox writes it into records.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// This run's nonce.
    pub fn nonce(&self) -> u32 {
        self.nonce
    }

    /// The limits the inbox enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many duplicates are waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no duplicate is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn fresh_ticket(&mut self) -> u32 {
        loop {
            let t = self.next_ticket;
            self.next_ticket = self.next_ticket.wrapping_add(1);
            if t != 0 && !self.pending.contains_key(&t) && self.spent_as(t).is_none() {
                return t;
            }
        }
    }

    /// Where ticket `t`'s fate is kept in the ring.
    fn spent_slot(&self, t: u32) -> usize {
        t.wrapping_sub(self.first_ticket) as usize & (SPENT_MEMORY - 1)
    }

    /// Why ticket `t` was spent, if it was, among the last `SPENT_MEMORY` issued.
    fn spent_as(&self, t: u32) -> Option<Spent> {
        match self.spent.get(self.spent_slot(t)) {
            Some(&(ticket, why)) if ticket == t => Some(why),
            _ => None,
        }
    }

    fn remember(&mut self, ticket: u32, why: Spent) {
        let i = self.spent_slot(ticket);
        if i >= self.spent.len() {
            self.spent.resize(i + 1, (0, Spent::Redeemed));
        }
        self.spent[i] = (ticket, why);
    }

    /// Takes a pending ticket out of the table, with its deadline, and remembers why.
    fn take(&mut self, ticket: u32, why: Spent) -> Option<F> {
        let slot = self.pending.remove(&ticket)?;
        self.uncount(slot.source_pid);
        self.remember(ticket, why);
        self.forget_stale_deadlines();
        Some(slot.fd)
    }

    /// Whether the deadline entry `(d, t)` is still the deadline of a pending ticket.
    fn is_live(&self, &(d, t): &(Instant, u32)) -> bool {
        self.pending.get(&t).is_some_and(|s| s.deadline == Some(d))
    }

    /// Drops the deadline entries of tickets no longer pending from the front of the queue,
    /// and compacts the whole queue once it holds more than twice as many entries as tickets
    /// pending (so a duplicate left pending ahead of many redeemed ones costs no more than
    /// twice its table's memory; amortized, a constant per ticket).
    fn forget_stale_deadlines(&mut self) {
        while let Some(front) = self.deadlines.front() {
            if self.is_live(front) {
                break;
            }
            self.deadlines.pop_front();
        }
        if self.deadlines.len() > 2 * self.pending.len() + 64 {
            let mut queue = std::mem::take(&mut self.deadlines);
            queue.retain(|e| self.is_live(e));
            self.deadlines = queue;
        }
    }

    fn uncount(&mut self, source_pid: u32) {
        if let Some(n) = self.by_source.get_mut(&source_pid) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source_pid);
            }
        }
    }

    /// How many duplicates pushed by process `source_pid` are waiting.
    pub fn pending_from(&self, source_pid: u32) -> usize {
        self.by_source.get(&source_pid).copied().unwrap_or(0)
    }

    /// Descriptors arrived from process `source_pid`: store them all and return their tickets, in
    /// order, or store none.
    ///
    /// # Errors
    /// [`ErrorKind::InboxFull`] (`WSAENOBUFS`) if they do not all fit within the capacity, or
    /// within the share of it one source may hold ([`Limits::source_share`]); the descriptors
    /// are handed back so the caller decides when they close.
    pub fn handle_push(
        &mut self,
        now: Instant,
        source_pid: u32,
        fds: Vec<F>,
    ) -> Result<Vec<u32>, (Error, Vec<F>)> {
        let free = self.limits.capacity.saturating_sub(self.pending.len());
        if fds.len() > free {
            let err = Error::new(
                ErrorKind::InboxFull,
                format!(
                    "process {}'s inbox holds {} unredeemed duplicates (capacity {}) and cannot take {} more: \
                     have it redeem them, wait for them to expire, or start it with a larger capacity (SOCKDUP_CAPACITY)",
                    self.pid,
                    self.pending.len(),
                    self.limits.capacity,
                    fds.len()
                ),
            );
            return Err((err, fds));
        }
        let share = self.limits.source_share();
        let held = self.pending_from(source_pid);
        if fds.len() > share.saturating_sub(held) {
            let err = Error::new(
                ErrorKind::InboxFull,
                format!(
                    "process {} holds {held} unredeemed duplicates from process {source_pid}, and one source may have at most \
                     {share} waiting (of its capacity {}): it cannot take {} more; have it redeem them, wait for them to expire, \
                     or start it with a larger share (SOCKDUP_SOURCE_CAPACITY)",
                    self.pid,
                    self.limits.capacity,
                    fds.len()
                ),
            );
            return Err((err, fds));
        }
        *self.by_source.entry(source_pid).or_insert(0) += fds.len();
        let deadline = self.limits.ttl.map(|ttl| now + ttl);
        let mut tickets = Vec::with_capacity(fds.len());
        for fd in fds {
            let ticket = self.fresh_ticket();
            self.pending.insert(
                ticket,
                Slot {
                    fd,
                    deadline,
                    source_pid,
                },
            );
            if let Some(d) = deadline {
                self.deadlines.push_back((d, ticket));
            }
            tickets.push(ticket);
        }
        Ok(tickets)
    }

    /// Process `source_pid` withdraws tickets it was given (a batch failed part way). Returns
    /// the descriptors to close; tickets that are not pending, or were pushed by another
    /// process, are left alone.
    pub fn handle_cancel(&mut self, source_pid: u32, tickets: &[u32]) -> Vec<F> {
        let mut out = Vec::new();
        for &t in tickets {
            if self
                .pending
                .get(&t)
                .is_some_and(|s| s.source_pid == source_pid)
                && let Some(fd) = self.take(t, Spent::Cancelled)
            {
                out.push(fd);
            }
        }
        out
    }

    /// Expires every duplicate whose time-to-live has ended by `now` and returns their
    /// descriptors (dropping an `OwnedFd` closes it).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<F> {
        let mut out = Vec::new();
        while let Some(&(deadline, ticket)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.is_live(&(deadline, ticket)) {
                out.extend(self.take(ticket, Spent::Expired));
            }
        }
        out
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // The front is live: every change that leaves it stale drops it.
        self.deadlines.front().map(|&(d, _)| d)
    }

    /// Redeems `info` (`WSPSocket` with a duplicate's protocol info): hands out its descriptor
    /// once.
    ///
    /// # Errors
    /// `WSAEINVAL` with a message that says which: the record names no sockdup catalog entry,
    /// was made for another process, or for an earlier run of this one; or its ticket was
    /// already redeemed, expired, was cancelled, or was never issued. A failed claim changes
    /// nothing (but closing what has expired), so the real target can still redeem a record
    /// someone else tried.
    pub fn claim(&mut self, now: Instant, info: &ProtocolInfo) -> Result<F, Error> {
        let ticket = self
            .verify(now, info)
            .inspect_err(|_| drop(self.handle_timeout(now)))?;
        self.take(ticket, Spent::Redeemed)
            .ok_or_else(|| self.not_pending(ticket))
    }

    /// Redeems many records at once, all or nothing: if any cannot be redeemed, none is, and
    /// the error names the first such record by its index.
    ///
    /// # Errors
    /// As [`claim`](Self::claim), and [`ErrorKind::AlreadyRedeemed`] if the batch holds the
    /// same record twice.
    pub fn claim_all(&mut self, now: Instant, infos: &[ProtocolInfo]) -> Result<Vec<F>, Error> {
        let tickets = self.verify_all(now, infos)?;
        Ok(tickets
            .into_iter()
            .filter_map(|t| self.take(t, Spent::Redeemed))
            .collect())
    }

    /// [`claim_all`](Self::claim_all) of runs of records, each `(first, count)` standing for
    /// `count` records equal to `first` but for their tickets, `first`'s and the `count - 1`
    /// after it (what a takeover sends: [`crate::proto::upgrade::expand`]), without making
    /// the records: all or nothing, the descriptors in order.
    ///
    /// # Errors
    /// As [`claim_all`](Self::claim_all); the message names the first record that cannot be
    /// redeemed by its place among all the runs' records.
    pub fn claim_runs(
        &mut self,
        now: Instant,
        runs: &[(ProtocolInfo, u32)],
    ) -> Result<Vec<F>, Error> {
        let tickets = self.verify_runs(now, runs.iter().map(|(first, n)| (first, *n)))?;
        Ok(tickets
            .into_iter()
            .filter_map(|t| self.take(t, Spent::Redeemed))
            .collect())
    }

    /// Checks, changing nothing (but closing what has expired), that [`claim_all`](Self::claim_all)
    /// would redeem every record of `infos` now.
    ///
    /// # Errors
    /// As [`claim_all`](Self::claim_all).
    pub fn check_all(&mut self, now: Instant, infos: &[ProtocolInfo]) -> Result<(), Error> {
        self.verify_all(now, infos).map(drop)
    }

    /// The tickets of `infos`, if every one can be redeemed now and none appears twice.
    fn verify_all(&mut self, now: Instant, infos: &[ProtocolInfo]) -> Result<Vec<u32>, Error> {
        self.verify_runs(now, infos.iter().map(|info| (info, 1)))
    }

    /// The tickets of runs of records (`(first, count)`: `first` and the `count - 1` records
    /// after it, equal but for their consecutive tickets), if every one can be redeemed now and
    /// none appears twice. A run's first record is checked whole, the rest by their tickets;
    /// the error names the first record that cannot be redeemed by its place in the batch.
    fn verify_runs<'a>(
        &mut self,
        now: Instant,
        runs: impl Iterator<Item = (&'a ProtocolInfo, u32)> + Clone,
    ) -> Result<Vec<u32>, Error> {
        let total: usize = runs.clone().map(|(_, n)| n as usize).sum();
        let mut tickets = Vec::with_capacity(total);
        let mut seen = Set::with_capacity_and_hasher(total, Default::default());
        for (first, count) in runs {
            for i in 0..count {
                let checked = if i == 0 {
                    self.verify(now, first)
                } else {
                    self.verify_ticket(now, first.provider_reserved.wrapping_add(i))
                }
                .and_then(|t| {
                    if seen.insert(t) {
                        Ok(t)
                    } else {
                        Err(Error::new(
                            ErrorKind::AlreadyRedeemed,
                            format!(
                                "ticket {t:#010x} appears twice in the batch: a duplicate's record can be used only once"
                            ),
                        ))
                    }
                });
                match checked {
                    Ok(t) => tickets.push(t),
                    Err(e) => {
                        let at = tickets.len();
                        drop(self.handle_timeout(now));
                        return Err(e.context(format_args!("record {at} of the batch")));
                    }
                }
            }
        }
        Ok(tickets)
    }

    /// Puts a descriptor redeemed from `ticket` back, pending again (the undo of a batch that
    /// failed after some of its records were redeemed). Its time-to-live starts anew at `now`,
    /// and no source may cancel it any more.
    pub fn restore(&mut self, now: Instant, ticket: u32, fd: F) {
        if self.spent_as(ticket) == Some(Spent::Redeemed) {
            let i = self.spent_slot(ticket);
            self.spent[i] = (0, Spent::Redeemed);
        }
        let deadline = self.limits.ttl.map(|ttl| now + ttl);
        if let Some(d) = deadline {
            self.deadlines.push_back((d, ticket));
        }
        *self.by_source.entry(0).or_insert(0) += 1;
        self.pending.insert(
            ticket,
            Slot {
                fd,
                deadline,
                source_pid: 0,
            },
        );
    }

    /// Checks that `info` is a record this inbox can redeem now, and returns its ticket.
    fn verify(&self, now: Instant, info: &ProtocolInfo) -> Result<u32, Error> {
        if !catalog::is_base_id(info.catalog_entry_id)
            || info.provider_id != catalog::BASE_PROVIDER_ID
        {
            return Err(Error::new(
                ErrorKind::NotSockdupRecord,
                format!(
                    "the record names catalog entry {} of provider {}, which is not in this process's catalog: it was not \
                 made by sockdup's duplicate_socket (records from Windows or Wine can be inspected but not redeemed here)",
                    info.catalog_entry_id, info.provider_id
                ),
            ));
        }
        let (target, nonce, ticket) = (
            info.service_flags3,
            info.service_flags4,
            info.provider_reserved,
        );
        if target != self.pid {
            return Err(Error::new(
                ErrorKind::WrongProcess,
                format!(
                    "this record was made for process {target}, but this is process {}: redeem it in the process it was \
                 duplicated to, or duplicate the socket again for this one",
                    self.pid
                ),
            ));
        }
        if nonce != self.nonce {
            return Err(Error::new(
                ErrorKind::EarlierRun,
                format!(
                    "this record was made for an earlier run of process {} (its inbox has been restarted since, or the pid \
                 was reused): the descriptor it stood for was closed with that run; duplicate the socket again",
                    self.pid
                ),
            ));
        }
        self.verify_ticket(now, ticket)
    }

    /// Checks that `ticket` is pending and not past its time-to-live, and returns it.
    fn verify_ticket(&self, now: Instant, ticket: u32) -> Result<u32, Error> {
        match self.pending.get(&ticket) {
            Some(slot) if slot.deadline.is_some_and(|d| d <= now) => {
                Err(self.spent_error(ticket, Spent::Expired))
            }
            Some(_) => Ok(ticket),
            None => Err(self.not_pending(ticket)),
        }
    }

    /// Why `ticket`, which is not pending, cannot be redeemed.
    fn not_pending(&self, ticket: u32) -> Error {
        match self.spent_as(ticket) {
            Some(why) => self.spent_error(ticket, why),
            None => Error::new(
                ErrorKind::NotSockdupRecord,
                format!(
                    "ticket {ticket:#010x} was never issued by this process's inbox (or was spent long ago): the record is not a \
                 duplicate made for this process"
                ),
            ),
        }
    }

    fn spent_error(&self, ticket: u32, why: Spent) -> Error {
        let kind = match why {
            Spent::Redeemed => ErrorKind::AlreadyRedeemed,
            Spent::Expired => ErrorKind::Expired,
            Spent::Cancelled => ErrorKind::Cancelled,
        };
        Error::new(
            kind,
            match why {
                Spent::Redeemed => format!(
                    "ticket {ticket:#010x} was already redeemed: a duplicate's record can be used only once; duplicate the socket again for another descriptor"
                ),
                Spent::Expired => format!(
                    "ticket {ticket:#010x} expired before it was redeemed (time-to-live {}) and its descriptor was closed: redeem sooner, \
                 or start the target with a longer time-to-live (SOCKDUP_TTL)",
                    self.limits
                        .ttl
                        .map_or_else(|| "none".to_owned(), |t| format!("{} s", t.as_secs_f64()))
                ),
                Spent::Cancelled => format!(
                    "ticket {ticket:#010x} was cancelled by its source (its batch failed) and its descriptor was closed"
                ),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::base_entries;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A descriptor stand-in that counts how many were closed.
    #[derive(Debug)]
    struct Token(u32, Rc<RefCell<Vec<u32>>>);
    impl Drop for Token {
        fn drop(&mut self) {
            self.1.borrow_mut().push(self.0);
        }
    }

    const PID: u32 = 4242;
    const NONCE: u32 = 0xabcd;

    fn setup(limits: Limits) -> (Inbox<Token>, Rc<RefCell<Vec<u32>>>, Instant) {
        (
            Inbox::new(PID, NONCE, 7, limits),
            Rc::default(),
            Instant::now(),
        )
    }

    fn record(pid: u32, nonce: u32, ticket: u32) -> ProtocolInfo {
        ProtocolInfo {
            service_flags3: pid,
            service_flags4: nonce,
            provider_reserved: ticket,
            ..base_entries()[0].clone()
        }
    }

    fn tokens(closed: &Rc<RefCell<Vec<u32>>>, ids: std::ops::Range<u32>) -> Vec<Token> {
        ids.map(|i| Token(i, closed.clone())).collect()
    }

    #[test]
    fn claim_once_then_einval() {
        let (mut inbox, closed, t0) = setup(Limits::default());
        let tickets = inbox
            .handle_push(t0, 1, tokens(&closed, 0..3))
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(tickets, [7, 8, 9]);
        let fd = inbox.claim(t0, &record(PID, NONCE, 8)).unwrap();
        assert_eq!(fd.0, 1);
        let err = inbox.claim(t0, &record(PID, NONCE, 8)).unwrap_err();
        assert_eq!(err.code(), 10022);
        assert_eq!(err.kind(), ErrorKind::AlreadyRedeemed, "{err}");
        assert!(closed.borrow().is_empty());
        assert_eq!(inbox.len(), 2);
    }

    #[test]
    fn foreign_and_stale_records_name_the_reason_and_change_nothing() {
        let (mut inbox, closed, t0) = setup(Limits::default());
        let t = inbox
            .handle_push(t0, 1, tokens(&closed, 0..1))
            .map_err(|e| e.0)
            .unwrap()[0];
        let e = inbox.claim(t0, &record(PID + 1, NONCE, t)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongProcess, "{e}");
        assert!(e.message().contains("made for process 4243"), "{e}");
        let e = inbox.claim(t0, &record(PID, NONCE + 1, t)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::EarlierRun, "{e}");
        let e = inbox.claim(t0, &record(PID, NONCE, t + 100)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSockdupRecord, "{e}");
        assert!(e.message().contains("never issued"), "{e}");
        let e = inbox
            .claim(
                t0,
                &ProtocolInfo {
                    catalog_entry_id: 9,
                    ..record(PID, NONCE, t)
                },
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSockdupRecord, "{e}");
        assert!(e.message().contains("catalog entry 9"), "{e}");
        // Wine writes catalog id 1001 too, but with Microsoft's provider GUID.
        let msafd: crate::Guid = "e70f1aa0-ab8b-11cf-8ca3-00805f48a192".parse().unwrap();
        let wine = ProtocolInfo {
            provider_id: msafd,
            ..record(PID, NONCE, t)
        };
        let e = inbox.claim(t0, &wine).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSockdupRecord, "{e}");
        assert_eq!(inbox.claim(t0, &record(PID, NONCE, t)).unwrap().0, 0);
    }

    #[test]
    fn expiry_closes_and_reports() {
        let limits = Limits {
            ttl: Some(Duration::from_secs(5)),
            capacity: 10,
            per_source: None,
        };
        let (mut inbox, closed, t0) = setup(limits);
        let a = inbox
            .handle_push(t0, 1, tokens(&closed, 0..1))
            .map_err(|e| e.0)
            .unwrap()[0];
        let b = inbox
            .handle_push(t0 + Duration::from_secs(2), 1, tokens(&closed, 1..2))
            .map_err(|e| e.0)
            .unwrap()[0];
        assert_eq!(inbox.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        assert!(inbox.handle_timeout(t0 + Duration::from_secs(4)).is_empty());
        drop(inbox.handle_timeout(t0 + Duration::from_secs(5)));
        assert_eq!(*closed.borrow(), [0]);
        assert_eq!(inbox.poll_timeout(), Some(t0 + Duration::from_secs(7)));
        let e = inbox
            .claim(t0 + Duration::from_secs(5), &record(PID, NONCE, a))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Expired, "{e}");
        // Past its deadline but before handle_timeout ran: still refused, and closed.
        let e = inbox
            .claim(t0 + Duration::from_secs(8), &record(PID, NONCE, b))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Expired, "{e}");
        assert_eq!(*closed.borrow(), [0, 1]);
        assert_eq!(inbox.poll_timeout(), None);
    }

    #[test]
    fn no_ttl_keeps_forever() {
        let (mut inbox, closed, t0) = setup(Limits {
            ttl: None,
            capacity: 2,
            per_source: None,
        });
        let t = inbox
            .handle_push(t0, 1, tokens(&closed, 0..1))
            .map_err(|e| e.0)
            .unwrap()[0];
        assert_eq!(inbox.poll_timeout(), None);
        assert!(
            inbox
                .handle_timeout(t0 + Duration::from_secs(1 << 30))
                .is_empty()
        );
        assert!(
            inbox
                .claim(t0 + Duration::from_secs(1 << 30), &record(PID, NONCE, t))
                .is_ok()
        );
    }

    #[test]
    fn capacity_is_all_or_nothing() {
        let (mut inbox, closed, t0) = setup(Limits {
            ttl: None,
            capacity: 3,
            per_source: None,
        });
        inbox
            .handle_push(t0, 1, tokens(&closed, 0..2))
            .map_err(|e| e.0)
            .unwrap();
        let (err, back) = inbox.handle_push(t0, 1, tokens(&closed, 2..4)).unwrap_err();
        assert_eq!((err.code(), err.kind()), (10055, ErrorKind::InboxFull));
        assert_eq!(back.len(), 2);
        assert_eq!(inbox.len(), 2);
        drop(back);
        assert_eq!(*closed.borrow(), [2, 3]);
    }

    #[test]
    fn one_source_may_fill_only_its_share_and_others_still_get_in() {
        let limits = Limits {
            ttl: None,
            capacity: 8,
            per_source: None,
        };
        assert_eq!(limits.source_share(), 6);
        let (mut inbox, closed, t0) = setup(limits);
        let flood = inbox
            .handle_push(t0, 1, tokens(&closed, 0..6))
            .map_err(|e| e.0)
            .unwrap();
        let (err, back) = inbox.handle_push(t0, 1, tokens(&closed, 6..7)).unwrap_err();
        assert_eq!((err.code(), err.kind()), (10055, ErrorKind::InboxFull));
        assert!(err.message().contains("from process 1"), "{err}");
        assert!(err.message().contains("at most 6"), "{err}");
        drop(back);
        assert_eq!(inbox.pending_from(1), 6);
        // Another source finds the room the first could not take.
        inbox
            .handle_push(t0, 2, tokens(&closed, 7..9))
            .map_err(|e| e.0)
            .unwrap();
        // Redeeming, expiring or cancelling gives a source its share back.
        inbox.claim(t0, &record(PID, NONCE, flood[0])).unwrap();
        drop(inbox.handle_cancel(1, &flood[1..2]));
        assert_eq!(inbox.pending_from(1), 4);
        inbox
            .handle_push(t0, 1, tokens(&closed, 9..11))
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(inbox.pending_from(1), 6);
        assert_eq!(inbox.pending_from(3), 0);
    }

    #[test]
    fn the_share_of_a_source_is_at_least_one_and_at_most_the_capacity() {
        let share = |capacity, per_source| {
            Limits {
                ttl: None,
                capacity,
                per_source,
            }
            .source_share()
        };
        assert_eq!(share(4096, None), 3072);
        assert_eq!(share(1, None), 1);
        assert_eq!(share(2, None), 2);
        assert_eq!(share(3, None), 3);
        assert_eq!(share(10, Some(0)), 1);
        assert_eq!(share(10, Some(99)), 10);
        assert_eq!(share(10, Some(4)), 4);
    }

    #[test]
    fn a_spent_ticket_is_remembered_until_its_slot_is_reused_and_memory_stays_capped() {
        let (mut inbox, closed, t0) = setup(Limits {
            ttl: None,
            capacity: 300,
            per_source: None,
        });
        let first = inbox
            .handle_push(t0, 1, tokens(&closed, 0..1))
            .map_err(|e| e.0)
            .unwrap()[0];
        inbox.claim(t0, &record(PID, NONCE, first)).unwrap();
        let e = inbox.claim(t0, &record(PID, NONCE, first)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyRedeemed, "{e}");
        // Spend as many tickets again, 200 at a time: the last one takes the first one's slot.
        let mut issued = 1;
        while issued < SPENT_MEMORY + 1 {
            let n = (SPENT_MEMORY + 1 - issued).min(200) as u32;
            let ts = inbox
                .handle_push(t0, 1, tokens(&closed, 0..n))
                .map_err(|e| e.0)
                .unwrap();
            let records: Vec<_> = ts.iter().map(|&t| record(PID, NONCE, t)).collect();
            drop(inbox.claim_all(t0, &records).unwrap());
            issued += n as usize;
        }
        assert_eq!(
            inbox.spent.len(),
            SPENT_MEMORY,
            "the ring never grows beyond its size"
        );
        let e = inbox.claim(t0, &record(PID, NONCE, first)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSockdupRecord, "{e}");
        assert!(e.message().contains("spent long ago"), "{e}");
        let last = first.wrapping_add(SPENT_MEMORY as u32);
        let e = inbox.claim(t0, &record(PID, NONCE, last)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyRedeemed, "{e}");
    }

    #[test]
    fn the_deadline_queue_agrees_with_the_table_through_any_order_of_calls() {
        // A small deterministic random walk over push, claim (in and out of order), cancel,
        // restore and time passing: the next deadline is always the earliest of the pending
        // tickets', expiry closes exactly those due, and the queue stays within its bound.
        let ttl = Duration::from_secs(10);
        let (mut inbox, closed, t0) = setup(Limits {
            ttl: Some(ttl),
            capacity: 10_000,
            per_source: None,
        });
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = t0;
        let mut live: Vec<u32> = Vec::new();
        let mut id = 0;
        for _ in 0..20_000 {
            match next() % 10 {
                0..=3 => {
                    let n = (next() % 5 + 1) as u32;
                    let ts = inbox
                        .handle_push(now, 1 + (next() % 3) as u32, tokens(&closed, id..id + n))
                        .map_err(|e| e.0)
                        .unwrap();
                    id += n;
                    live.extend(ts);
                }
                4..=6 if !live.is_empty() => {
                    let i = (next() % live.len() as u64) as usize;
                    let t = live.swap_remove(i);
                    let fd = inbox.claim(now, &record(PID, NONCE, t)).unwrap();
                    if next() % 4 == 0 {
                        inbox.restore(now, t, fd);
                        live.push(t);
                    }
                }
                7 if !live.is_empty() => {
                    // Only its source may cancel it (a restored one, nobody).
                    let t = live[(next() % live.len() as u64) as usize];
                    for src in 1..=3 {
                        drop(inbox.handle_cancel(src, &[t]));
                    }
                    live.retain(|&t| inbox.pending.contains_key(&t));
                }
                _ => {
                    now += Duration::from_millis(next() % 3000);
                    drop(inbox.handle_timeout(now));
                    live.retain(|&t| inbox.pending.contains_key(&t));
                }
            }
            let earliest = inbox.pending.values().filter_map(|s| s.deadline).min();
            assert_eq!(inbox.poll_timeout(), earliest);
            assert!(inbox.deadlines.len() <= 2 * inbox.pending.len() + 64 + 5);
            assert_eq!(inbox.len(), live.len());
        }
    }

    #[test]
    fn runs_of_records_redeem_all_or_nothing_in_order() {
        let (mut inbox, closed, t0) = setup(Limits::default());
        let ts = inbox
            .handle_push(t0, 1, tokens(&closed, 0..5))
            .map_err(|e| e.0)
            .unwrap();
        let runs = [
            (record(PID, NONCE, ts[0]), 3),
            (record(PID, NONCE, ts[3]), 2),
        ];
        // One ticket of the second run already spent: nothing is taken, and the message
        // names its place among all the records.
        let lone = inbox.claim(t0, &record(PID, NONCE, ts[4])).unwrap();
        assert_eq!(lone.0, 4);
        let e = inbox.claim_runs(t0, &runs).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyRedeemed, "{e}");
        assert!(e.message().contains("record 4 of the batch"), "{e}");
        assert_eq!(inbox.len(), 4);
        inbox.restore(t0, ts[4], lone);
        let fds = inbox.claim_runs(t0, &runs).unwrap();
        assert_eq!(fds.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert!(inbox.is_empty());
        // A run's first record is checked whole: another process's is refused.
        let ts = inbox
            .handle_push(t0, 1, tokens(&closed, 5..7))
            .map_err(|e| e.0)
            .unwrap();
        let e = inbox
            .claim_runs(t0, &[(record(PID + 1, NONCE, ts[0]), 2)])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongProcess, "{e}");
        // The same ticket twice across runs.
        let e = inbox
            .claim_runs(
                t0,
                &[
                    (record(PID, NONCE, ts[0]), 2),
                    (record(PID, NONCE, ts[1]), 1),
                ],
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyRedeemed, "{e}");
        assert_eq!(inbox.len(), 2);
    }

    #[test]
    fn cancel_only_own_pending_tickets() {
        let (mut inbox, closed, t0) = setup(Limits::default());
        let ts = inbox
            .handle_push(t0, 1, tokens(&closed, 0..3))
            .map_err(|e| e.0)
            .unwrap();
        assert!(inbox.handle_cancel(2, &ts).is_empty());
        drop(inbox.handle_cancel(1, &ts[..2]));
        assert_eq!(*closed.borrow(), [0, 1]);
        let e = inbox.claim(t0, &record(PID, NONCE, ts[0])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
        assert!(inbox.claim(t0, &record(PID, NONCE, ts[2])).is_ok());
    }

    #[test]
    fn tickets_skip_zero_and_pending_on_wrap() {
        let mut inbox: Inbox<u32> = Inbox::new(PID, NONCE, u32::MAX, Limits::default());
        let t0 = Instant::now();
        let ts = inbox
            .handle_push(t0, 1, vec![1, 2])
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(ts, [u32::MAX, 1]);
        inbox.next_ticket = u32::MAX;
        let ts2 = inbox.handle_push(t0, 1, vec![3]).map_err(|e| e.0).unwrap();
        assert_eq!(ts2, [2]);
    }

    #[test]
    fn claim_all_is_all_or_nothing() {
        let (mut inbox, closed, t0) = setup(Limits::default());
        let ts = inbox
            .handle_push(t0, 1, tokens(&closed, 0..3))
            .map_err(|e| e.0)
            .unwrap();
        let good: Vec<ProtocolInfo> = ts.iter().map(|&t| record(PID, NONCE, t)).collect();
        let mut bad = good.clone();
        bad[2].service_flags3 = PID + 1;
        let e = inbox.claim_all(t0, &bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongProcess);
        assert!(e.message().starts_with("record 2 of the batch: "), "{e}");
        let twice = vec![good[0].clone(), good[0].clone()];
        let e = inbox.claim_all(t0, &twice).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyRedeemed);
        assert!(e.message().contains("twice"), "{e}");
        assert!(inbox.check_all(t0, &good).is_ok());
        assert_eq!(
            inbox.check_all(t0, &bad).unwrap_err().kind(),
            ErrorKind::WrongProcess
        );
        assert_eq!(inbox.len(), 3);
        let fds = inbox.claim_all(t0, &good).unwrap();
        assert_eq!(fds.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(inbox.is_empty());
        let e = inbox.claim_all(t0, &good[..1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyRedeemed);
    }

    #[test]
    fn restored_descriptors_can_be_redeemed_again() {
        let (mut inbox, closed, t0) = setup(Limits::default());
        let ts = inbox
            .handle_push(t0, 1, tokens(&closed, 0..2))
            .map_err(|e| e.0)
            .unwrap();
        let good: Vec<ProtocolInfo> = ts.iter().map(|&t| record(PID, NONCE, t)).collect();
        let mut fds = inbox.claim_all(t0, &good).unwrap();
        let second = fds.pop().unwrap();
        inbox.restore(t0, ts[1], second);
        assert_eq!(inbox.len(), 1);
        let again = inbox.claim(t0, &good[1]).unwrap();
        assert_eq!(again.0, 1);
        assert_eq!(
            inbox.claim(t0, &good[0]).unwrap_err().kind(),
            ErrorKind::AlreadyRedeemed
        );
        assert!(closed.borrow().is_empty(), "nothing closed on the way");
    }

    #[test]
    fn dropping_the_inbox_closes_everything() {
        let (mut inbox, closed, t0) = setup(Limits::default());
        inbox
            .handle_push(t0, 1, tokens(&closed, 0..4))
            .map_err(|e| e.0)
            .unwrap();
        drop(inbox);
        assert_eq!(closed.borrow().len(), 4);
    }
}
