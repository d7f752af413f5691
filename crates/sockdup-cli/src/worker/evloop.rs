//! The worker's event loop: one thread serves every connection from an epoll set (level
//! triggered, non-blocking sockets), each connection a state machine: [`hello::Session`] for
//! the HTTP app, a byte buffer for `echo`.
//!
//! Connections come from a [`Source`] whose descriptor the loop watches in its epoll set with a
//! token of its own: the handoff channel itself (`sockdup worker` in handoff mode reads and
//! redeems the acceptor's `conn` lines on this thread, with
//! `sockdup::handoff::NonblockingIncoming`, and serves its inbox here too, the source's side
//! descriptor [`Source::side_fd`]: `sockdup::CallerInbox`), or a feeder thread (the accept loop of
//! `--listen-fds`, the load-test twins' descriptor receivers) through a channel ([`channel`]),
//! the feeder waking the loop with an eventfd. When the source says the end ([`Feed::End`], or
//! the handoff channel's end), the loop stops watching it and drains: `hello` connections idle at a request boundary
//! close once they have been idle for a [`TICK`] (a connection handed over or accepted just
//! before the end gets that long to send its request, as a worker thread blocked in a read got
//! until its read timed out), the requests in progress are answered with `Connection: close`,
//! echo connections run until their client closes; the loop returns when none is left.
//!
//! Why epoll through rustix rather than tokio: the apps are tiny state machines already, the
//! CLI needs no runtime for anything else, and the loop is the same shape as the C epoll twins
//! the benchmark compares with.
//!
//! This file is shared, word for word, with the load-test twins (`sockdup-loadtest` includes it
//! and [`hello`] with `#[path]`), so that the benchmark compares how connections reach the
//! workers and not how they are served: it uses only std, rustix, tracing and its sibling
//! `hello` module, and serves any [`Client`].

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use super::hello::{self, IDLE_TIMEOUT, LINGER, Next};
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, eventfd};

/// How often the loop looks at idle and lingering connections' clocks.
const TICK: Duration = Duration::from_millis(200);

/// The epoll token of the source's descriptor (connections use their slot's index).
const SOURCE: u64 = u64::MAX;

/// The epoll token of the source's side descriptor ([`Source::side_fd`]).
const SIDE: u64 = u64::MAX - 1;

/// The most bytes a lingering close reads from the client before giving up.
const LINGER_BYTES: usize = 1 << 20;

/// What the loop serves on each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Every byte back, until the client closes.
    Echo,
    /// HTTP/1.1 hello ([`hello::Session`]).
    Hello,
}

/// A connection the loop can serve: a stream socket, and whatever must happen when it closes
/// (dropped by the loop when it is done).
pub(crate) trait Client: Send + 'static {
    /// The stream.
    type Io: Read + Write;
    /// The stream, to read and write.
    fn io(&mut self) -> &mut Self::Io;
    /// The stream's descriptor, to watch.
    fn fd(&mut self) -> BorrowedFd<'_>;
    /// Puts the stream in non-blocking mode.
    fn make_nonblocking(&mut self) -> io::Result<()>;
    /// Shuts down the stream's write side.
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Closes the connections the loop finished with during one turn (after one
    /// `epoll_wait`), emptying `closed`: at once, by default; a handed-over connection tells
    /// the acceptor it is done, and many of them can say so in one write.
    fn close_all(closed: &mut Vec<Self>)
    where
        Self: Sized,
    {
        closed.clear();
    }
}

impl Client for std::net::TcpStream {
    type Io = Self;
    fn io(&mut self) -> &mut Self {
        self
    }
    fn fd(&mut self) -> BorrowedFd<'_> {
        AsFd::as_fd(&*self)
    }
    fn make_nonblocking(&mut self) -> io::Result<()> {
        self.set_nonblocking(true)
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// What the feeder sends the loop.
pub(crate) enum Feed<C> {
    /// A connection.
    Conn(C),
    /// No more connections: drain and return.
    End,
}

/// The feeder's end: sends connections and wakes the loop.
pub(crate) struct Feeder<C> {
    tx: Sender<Feed<C>>,
    wake: std::sync::Arc<OwnedFd>,
}

impl<C> Feeder<C> {
    /// Sends `feed` to the loop; false if the loop is gone.
    pub(crate) fn send(&self, feed: Feed<C>) -> bool {
        if self.tx.send(feed).is_err() {
            return false;
        }
        // A full counter (never, in practice) still leaves the eventfd readable.
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        true
    }
}

/// The loop's end of a [`channel`]: a [`Source`] (the eventfd, and the connections sent).
pub(crate) struct Loop<C> {
    rx: Receiver<Feed<C>>,
    wake: std::sync::Arc<OwnedFd>,
}

/// Where the loop's connections come from.
pub(crate) trait Source<C> {
    /// The descriptor the loop watches (level triggered): readable when connections wait.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Takes the connections that wait, without blocking, handing each to `add`; true once
    /// no more will come (the loop then stops watching [`fd`](Self::fd) and drains).
    fn take(&mut self, add: &mut dyn FnMut(C)) -> bool;
    /// A second descriptor the loop watches for the source until it returns (level
    /// triggered), for work that brings no connection by itself: the handoff worker's inbox,
    /// which receives the acceptor's descriptors before their `conn` lines come.
    /// [`serve_side`](Self::serve_side) runs when it is readable or when
    /// [`side_timeout`](Self::side_timeout) has passed. None by default.
    fn side_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Does the side descriptor's work, without blocking.
    fn serve_side(&mut self) {}
    /// How long the loop may wait before [`serve_side`](Self::serve_side) is due even if the
    /// side descriptor stays quiet (`None`: only when it is readable).
    fn side_timeout(&self) -> Option<Duration> {
        None
    }
}

impl<C> Source<C> for Loop<C> {
    fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    fn take(&mut self, add: &mut dyn FnMut(C)) -> bool {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&*self.wake, &mut count);
        loop {
            match self.rx.try_recv() {
                Ok(Feed::Conn(sock)) => add(sock),
                Ok(Feed::End) | Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) => return false,
            }
        }
    }
}

/// A feeder and the loop it feeds.
pub(crate) fn channel<C>() -> io::Result<(Feeder<C>, Loop<C>)> {
    let wake = std::sync::Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        Feeder {
            tx,
            wake: wake.clone(),
        },
        Loop { rx, wake },
    ))
}

/// A connection's protocol state.
enum Proto {
    Echo,
    Hello(hello::Session),
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading and answering.
    Open,
    /// Writing out what is left, then closing (gracefully if `linger`).
    Closing { linger: bool },
    /// Write side shut down; reading the client's last bytes until it closes or `until`.
    Lingering { until: Instant, read: usize },
}

struct Slot<C> {
    sock: C,
    proto: Proto,
    /// Bytes to send, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    phase: Phase,
    /// When a byte last came in or went out: [`IDLE_TIMEOUT`] after it, a `hello` connection
    /// closes.
    last_data: Instant,
    /// The events it is registered for.
    interest: EventFlags,
}

/// What became of a connection after an event.
#[derive(PartialEq, Eq)]
enum Fate {
    Keep,
    Close,
}

struct EventLoop<C> {
    app: Protocol,
    epoll: OwnedFd,
    slots: Vec<Option<Slot<C>>>,
    free: Vec<usize>,
    open: usize,
    draining: bool,
    buf: Box<[u8]>,
    /// Connections done with during this turn, closed together at its end.
    closed: Vec<C>,
}

impl<C: Client> Loop<C> {
    /// Serves every connection fed until [`Feed::End`] and until the last one closes.
    ///
    /// # Errors
    /// The epoll set's own errors (a connection's errors close that connection only).
    pub(crate) fn run(mut self, app: Protocol) -> io::Result<()> {
        serve(&mut self, app)
    }
}

/// Serves every connection `source` gives until it says the end and until the last one
/// closes.
///
/// # Errors
/// The epoll set's own errors (a connection's errors close that connection only).
pub(crate) fn serve<C: Client>(source: &mut impl Source<C>, app: Protocol) -> io::Result<()> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    // A regular file or /dev/null (a worker's input redirected by hand) cannot be watched
    // (EPERM): reading it never blocks, so it is read at every turn instead.
    let unwatched = match epoll::add(
        &epoll,
        source.fd(),
        EventData::new_u64(SOURCE),
        EventFlags::IN,
    ) {
        Ok(()) => false,
        Err(rustix::io::Errno::PERM) => true,
        Err(e) => return Err(e.into()),
    };
    if let Some(side) = source.side_fd() {
        epoll::add(&epoll, side, EventData::new_u64(SIDE), EventFlags::IN)?;
    }
    let mut ev = EventLoop {
        app,
        epoll,
        slots: Vec::new(),
        free: Vec::new(),
        open: 0,
        draining: false,
        buf: vec![0u8; 16 * 1024].into_boxed_slice(),
        closed: Vec::new(),
    };
    let mut events = Vec::with_capacity(256);
    let at_once = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut last_scan = Instant::now();
    let mut fed_end = false;
    loop {
        if fed_end && ev.open == 0 {
            return Ok(());
        }
        events.clear();
        let read_anyway = unwatched && !fed_end;
        let side_timeout = source.side_timeout();
        let wait = side_timeout.map_or(TICK, |t| t.min(TICK));
        let side_due = side_timeout.map(|t| Instant::now() + t);
        let wait = rustix::time::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        match epoll::wait(
            &ev.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(if read_anyway { &at_once } else { &wait }),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        // The side first: the handoff worker's inbox stores what the acceptor pushed before
        // the `conn` lines that name it are read.
        if events.iter().any(|e| e.data.u64() == SIDE)
            || side_due.is_some_and(|due| Instant::now() >= due)
        {
            source.serve_side();
        }
        if read_anyway {
            fed_end = ev.take_from(source);
        }
        for event in &events {
            let token = event.data.u64();
            if token == SIDE {
                continue;
            }
            if token == SOURCE {
                if !fed_end {
                    fed_end = ev.take_from(source);
                }
            } else {
                ev.on_event(token as usize, event.flags);
            }
        }
        if last_scan.elapsed() >= TICK {
            last_scan = Instant::now();
            ev.scan();
        }
        if !ev.closed.is_empty() {
            C::close_all(&mut ev.closed);
        }
    }
}

impl<C: Client> EventLoop<C> {
    /// Adds what `source` has; at its end, stops watching it and drains. True at the end.
    fn take_from(&mut self, source: &mut impl Source<C>) -> bool {
        if !source.take(&mut |sock| self.add(sock)) {
            return false;
        }
        // At its end a pipe stays readable: watching it would spin.
        let _ = epoll::delete(&self.epoll, source.fd());
        self.drain();
        true
    }

    fn add(&mut self, mut sock: C) {
        if let Err(e) = sock.make_nonblocking() {
            tracing::debug!(error = %e, "sockdup worker: a connection could not be made non-blocking");
            return;
        }
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Err(e) = epoll::add(
            &self.epoll,
            sock.fd(),
            EventData::new_u64(index as u64),
            EventFlags::IN,
        ) {
            tracing::error!(error = %e, "sockdup worker: could not watch a connection");
            self.free.push(index);
            return;
        }
        let proto = match self.app {
            Protocol::Echo => Proto::Echo,
            Protocol::Hello => Proto::Hello(hello::Session::new()),
        };
        self.slots[index] = Some(Slot {
            sock,
            proto,
            out: Vec::new(),
            sent: 0,
            phase: Phase::Open,
            last_data: Instant::now(),
            interest: EventFlags::IN,
        });
        self.open += 1;
        // The request is often there already: no need to wait for epoll to say so.
        self.on_event(index, EventFlags::IN);
    }

    fn on_event(&mut self, index: usize, flags: EventFlags) {
        let draining = self.draining;
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return;
        };
        let fate = slot.step(&mut self.buf, flags, draining);
        self.settle(index, fate);
    }

    /// Closes the connection, or updates its interest.
    fn settle(&mut self, index: usize, fate: Fate) {
        let Some(slot) = self.slots[index].as_mut() else {
            return;
        };
        if fate == Fate::Close {
            let _ = epoll::delete(&self.epoll, slot.sock.fd());
            // Closed at the end of this turn, with the others done with in it (a handed-over
            // connection tells the acceptor it is done as it closes).
            if let Some(slot) = self.slots[index].take() {
                self.closed.push(slot.sock);
            }
            self.free.push(index);
            self.open -= 1;
            return;
        }
        let want = if slot.sent < slot.out.len() {
            EventFlags::OUT
        } else {
            EventFlags::IN
        };
        if want != slot.interest {
            slot.interest = want;
            if epoll::modify(
                &self.epoll,
                slot.sock.fd(),
                EventData::new_u64(index as u64),
                want,
            )
            .is_err()
            {
                self.settle(index, Fate::Close);
            }
        }
    }

    /// The end of the feed: `hello` connections idle for a [`TICK`] close now, the other idle
    /// ones once they have been, the others at their next request boundary.
    fn drain(&mut self) {
        tracing::debug!(
            open = self.open,
            "sockdup worker: no more connections; finishing"
        );
        self.draining = true;
        self.scan();
    }

    /// Closes the connections idle too long, lingering too long, or idle for a [`TICK`] while
    /// draining.
    fn scan(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots[index].as_ref() else {
                continue;
            };
            let close = match slot.phase {
                Phase::Lingering { until, .. } => now >= until,
                Phase::Open => {
                    let idle_for = now.duration_since(slot.last_data);
                    idle_for > IDLE_TIMEOUT && self.app == Protocol::Hello
                        || (self.draining
                            && idle_for >= TICK
                            && slot.sent == slot.out.len()
                            && matches!(&slot.proto, Proto::Hello(s) if s.idle()))
                }
                Phase::Closing { .. } => false,
            };
            if close {
                self.settle(index, Fate::Close);
            }
        }
    }
}

impl<C: Client> Slot<C> {
    /// Does what the event allows: reads, answers, writes, closes.
    fn step(&mut self, buf: &mut [u8], flags: EventFlags, draining: bool) -> Fate {
        if flags.intersects(EventFlags::ERR) && !flags.intersects(EventFlags::IN) {
            return Fate::Close;
        }
        if let Phase::Lingering { until, read } = self.phase {
            return self.linger(buf, until, read);
        }
        if self.phase == Phase::Open && self.sent == self.out.len() {
            match self.sock.io().read(buf) {
                Ok(0) => self.phase = Phase::Closing { linger: false },
                Ok(n) => {
                    self.last_data = Instant::now();
                    match &mut self.proto {
                        Proto::Echo => self.out.extend_from_slice(&buf[..n]),
                        Proto::Hello(session) => {
                            session.feed(&buf[..n]);
                            if let Next::Close { linger } = session.advance(&mut self.out, draining)
                            {
                                self.phase = Phase::Closing { linger };
                            }
                        }
                    }
                }
                Err(e) if would_wait(&e) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "sockdup worker: the connection ended with an error");
                    return Fate::Close;
                }
            }
        }
        if self.flush().is_err() {
            return Fate::Close;
        }
        if self.sent < self.out.len() {
            return Fate::Keep;
        }
        match self.phase {
            Phase::Closing { linger: false } => Fate::Close,
            Phase::Closing { linger: true } => {
                if self.sock.shutdown_write().is_err() {
                    return Fate::Close;
                }
                let until = Instant::now() + LINGER;
                self.phase = Phase::Lingering { until, read: 0 };
                self.linger(buf, until, 0)
            }
            // Every complete request read so far is answered (advance runs until it needs
            // more bytes): wait for the next ones.
            _ => Fate::Keep,
        }
    }

    /// Writes what it can of `out`.
    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.out.len() {
            let (out, sent) = (&self.out, self.sent);
            match self.sock.io().write(&out[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    // A client reading a long answer slowly is not idle.
                    self.last_data = Instant::now();
                }
                Err(e) if would_wait(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        Ok(())
    }

    /// Reads and drops the client's last bytes.
    fn linger(&mut self, buf: &mut [u8], until: Instant, mut read: usize) -> Fate {
        loop {
            match self.sock.io().read(buf) {
                Ok(0) => return Fate::Close,
                Ok(n) => {
                    read += n;
                    if read >= LINGER_BYTES || Instant::now() >= until {
                        return Fate::Close;
                    }
                }
                Err(e) if would_wait(&e) => {
                    self.phase = Phase::Lingering { until, read };
                    return Fate::Keep;
                }
                Err(_) => return Fate::Close,
            }
        }
    }
}

fn would_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
