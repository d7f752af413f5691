//! Criterion benchmark `events`: network events, each beside its twin measured in the same run.
//!
//! - `latency/sockdup`: one byte written to a connected loopback TCP socket, then
//!   `Event::wait` until the registration (`event_select(FD_READ)`) signals it, then
//!   `enum_network_events` (resets the event) and a `recv` (re-enables `FD_READ`): the path from
//!   data arriving to the event signalled goes through the watcher thread's `epoll_wait`.
//!   `latency/epoll`: the same byte on the same socket (its registration cancelled), a bare
//!   `epoll_wait` on it in this thread, and the `recv`.
//!   `latency/relay`: the least any event object signalled by a watching thread costs (the
//!   structure of `WSAEventSelect` on Linux when the data arrives while no thread waits): a
//!   thread blocked in `epoll_wait` on the same socket (one-shot) writes an eventfd; this thread
//!   `poll`s the eventfd, reads it (the reset), `recv`s, and re-arms the one-shot registration
//!   (`FD_READ` re-enabled by the receive). No rules, no locks, no tables: only the wake-ups
//!   and system calls.
//!   `latency/uring`: no watching thread at all: the kernel signals the eventfd itself
//!   (`io_uring` with the eventfd registered, a one-shot `POLL_ADD` on the socket); this thread
//!   `poll`s the eventfd, reads it, reaps the completion, `recv`s, and submits the poll again.
//!   What an event object could cost if the kernel, not a thread, signalled it, and if the
//!   thread that waits were the one that registered (the poll's completion runs as work of the
//!   thread that submitted it).
//!   `latency/uring-owned`: the same, with the ring owned by another thread (`DEFER_TASKRUN`:
//!   the socket's wake-up signals the eventfd without waking the owner), which takes the
//!   completion and submits the poll again when this thread asks after each receive: what an
//!   event object signalled by the kernel costs when the registration belongs to the process.
//! - `waiting/sockdup`: the latency from data arriving to the event signalled while a thread
//!   already waits: this thread tells a peer thread (over a socketpair) to send one byte and
//!   waits on the event (`Event::wait`); the peer notes the time just before its `write`, this
//!   thread the time `wait` returned; the benchmark's time is the sum of those differences only
//!   (`iter_custom`: the trigger, `enum_network_events` and the `recv` are outside it).
//!   `waiting/epoll`: the same with a bare `epoll_wait` on the socket; `waiting/relay`: the
//!   same with the relay structure of `latency/relay`.
//! - `cancel/cross_process`: a second process (this benchmark re-executed as a child, holding a
//!   duplicate of the socket redeemed with `socket_from_info`) registers on the socket when told
//!   over a pipe, which cancels this process's registration, and answers; then this process
//!   registers again, which cancels the child's. Two cross-process cancellations and one pipe
//!   round trip per iteration. `cancel/local`: the same exchange, but the child registers on a
//!   socket of its own: one pipe round trip and two registrations, no cancellation. The
//!   difference, halved, is the cost of one cross-process cancellation.
#![deny(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::Criterion;
use rustix::event::epoll;
use sockdup::spi::{Event, FD_READ, Socket};

const CHILD_ENV: &str = "SOCKDUP_BENCH_EVENTS_CHILD";

fn pair() -> (OwnedFd, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    s.set_nodelay(true).expect("nodelay");
    (OwnedFd::from(c), s)
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// One way to learn that the socket received a byte: wait for it, then take it (and re-arm).
trait Twin {
    /// Returns once the byte is known to have arrived.
    fn wait(&mut self);
    /// Takes the byte (and whatever resets and re-arms the notification).
    fn consume(&mut self, buf: &mut [u8]);
}

/// `*/sockdup`: `event_select(FD_READ)` on the socket; `Event::wait`, then
/// `enum_network_events` (resets the event) and `recv` (re-enables `FD_READ`).
struct Sockdup<'a> {
    s: &'a Socket,
    e: Event,
}

impl Twin for Sockdup<'_> {
    fn wait(&mut self) {
        assert!(self.e.wait(Some(Duration::from_secs(10))).expect("wait"));
    }

    fn consume(&mut self, buf: &mut [u8]) {
        let n = self.s.enum_network_events(Some(&self.e)).expect("enum");
        assert_eq!(n.events, FD_READ);
        assert_eq!(self.s.recv(buf).expect("recv"), 1);
    }
}

/// `*/epoll`: a bare `epoll_wait` on the socket in this thread, and the `read`.
struct Epoll<'a> {
    fd: &'a OwnedFd,
    ep: OwnedFd,
}

impl<'a> Epoll<'a> {
    fn new(fd: &'a OwnedFd) -> Self {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll");
        epoll::add(&ep, fd, epoll::EventData::new_u64(1), epoll::EventFlags::IN)
            .expect("epoll add");
        Self { fd, ep }
    }
}

impl Twin for Epoll<'_> {
    fn wait(&mut self) {
        let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 4];
        let (got, _) = epoll::wait(&self.ep, &mut events, None).expect("epoll_wait");
        assert_eq!(got.len(), 1);
    }

    fn consume(&mut self, buf: &mut [u8]) {
        assert_eq!(rustix::io::read(self.fd, buf).expect("read"), 1);
    }
}

/// `*/relay`: a thread blocked in `epoll_wait` on the socket (one-shot) writes an eventfd; the
/// waiting thread `poll`s the eventfd, then resets it, reads, and re-arms the socket.
struct Relay<'a> {
    fd: &'a OwnedFd,
    ep: OwnedFd,
    signal: OwnedFd,
    stop: OwnedFd,
}

impl<'a> Relay<'a> {
    const ONESHOT: epoll::EventFlags = epoll::EventFlags::IN.union(epoll::EventFlags::ONESHOT);

    fn new(fd: &'a OwnedFd) -> Self {
        use rustix::event::{EventfdFlags, eventfd};
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll");
        epoll::add(&ep, fd, epoll::EventData::new_u64(1), Self::ONESHOT).expect("epoll add");
        let stop = eventfd(0, EventfdFlags::CLOEXEC).expect("eventfd");
        epoll::add(
            &ep,
            &stop,
            epoll::EventData::new_u64(2),
            epoll::EventFlags::IN,
        )
        .expect("epoll add");
        let signal = eventfd(0, EventfdFlags::CLOEXEC).expect("eventfd");
        Self {
            fd,
            ep,
            signal,
            stop,
        }
    }

    /// The relaying thread's loop, until [`Relay::stop`].
    fn run(&self) {
        let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 4];
        loop {
            let (got, _) = epoll::wait(&self.ep, &mut events, None).expect("epoll_wait");
            if got.iter().any(|e| e.data.u64() == 2) {
                return;
            }
            if !got.is_empty() {
                rustix::io::write(&self.signal, &1u64.to_ne_bytes()).expect("signal");
            }
        }
    }

    fn stop(&self) {
        rustix::io::write(&self.stop, &1u64.to_ne_bytes()).expect("stop");
    }
}

impl Twin for &Relay<'_> {
    fn wait(&mut self) {
        poll_readable(&self.signal);
    }

    fn consume(&mut self, buf: &mut [u8]) {
        reset(&self.signal);
        assert_eq!(rustix::io::read(self.fd, buf).expect("read"), 1);
        epoll::modify(
            &self.ep,
            self.fd,
            epoll::EventData::new_u64(1),
            Relay::ONESHOT,
        )
        .expect("re-arm");
    }
}

/// `latency/uring`: no watching thread: the kernel signals the eventfd itself (`io_uring` with
/// the eventfd registered, a one-shot `POLL_ADD` on the socket); this thread `poll`s the
/// eventfd, reads it, reaps the completion, reads, and submits the poll again.
struct Uring<'a> {
    fd: &'a OwnedFd,
    ring: io_uring::IoUring,
    signal: OwnedFd,
}

impl<'a> Uring<'a> {
    /// `None` (with the reason printed) where io_uring is not available.
    fn new(fd: &'a OwnedFd) -> Option<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        use std::os::fd::AsRawFd;
        let ring = match io_uring::IoUring::new(8) {
            Ok(ring) => ring,
            Err(e) => {
                eprintln!("latency/uring skipped: io_uring is not available here ({e})");
                return None;
            }
        };
        let signal = eventfd(0, EventfdFlags::CLOEXEC).expect("eventfd");
        if let Err(e) = ring.submitter().register_eventfd(signal.as_raw_fd()) {
            eprintln!("latency/uring skipped: io_uring cannot signal an eventfd here ({e})");
            return None;
        }
        let mut uring = Self { fd, ring, signal };
        uring.arm();
        Some(uring)
    }

    fn arm(&mut self) {
        use io_uring::{opcode, types};
        use rustix::event::PollFlags;
        use std::os::fd::AsRawFd;
        let poll_in =
            opcode::PollAdd::new(types::Fd(self.fd.as_raw_fd()), PollFlags::IN.bits().into())
                .build()
                .user_data(1);
        // SAFETY: a POLL_ADD entry refers to no memory of this process, only to `fd`, which
        // outlives the ring (both are borrowed by this twin, the ring owned by it).
        #[allow(unsafe_code)]
        unsafe {
            self.ring
                .submission()
                .push(&poll_in)
                .expect("room in the queue");
        }
        self.ring.submit().expect("submit");
    }
}

impl Twin for Uring<'_> {
    fn wait(&mut self) {
        poll_readable(&self.signal);
    }

    fn consume(&mut self, buf: &mut [u8]) {
        reset(&self.signal);
        assert_eq!(self.ring.completion().count(), 1);
        assert_eq!(rustix::io::read(self.fd, buf).expect("read"), 1);
        self.arm();
    }
}

/// `latency/uring-owned`: the kernel signals the eventfd as in `latency/uring`, but the ring
/// belongs to another thread, as a registration belongs to the process and outlives the thread
/// that waits: a `DEFER_TASKRUN` ring, so that the socket's wake-up signals the eventfd without
/// waking its owner (the completion waits, queued, until the owner asks for it); after each
/// receive this thread asks the owner (a channel) to take the completion and submit the poll
/// again. The least an event object signalled by the kernel costs when the waiting thread is not
/// the one that registered.
struct UringOwned<'a> {
    fd: &'a OwnedFd,
    signal: &'a OwnedFd,
    arm: std::sync::mpsc::Sender<bool>,
}

impl UringOwned<'_> {
    /// The owner's loop: builds the ring (its single issuer), arms the poll, and re-arms it
    /// each time it is asked, until told to stop (`false`) or its channel closes.
    /// `ready` gets whether io_uring with `DEFER_TASKRUN` is available here.
    fn own(
        fd: &OwnedFd,
        signal: &OwnedFd,
        asks: std::sync::mpsc::Receiver<bool>,
        ready: std::sync::mpsc::Sender<bool>,
    ) {
        use io_uring::{opcode, types};
        use rustix::event::PollFlags;
        use std::os::fd::AsRawFd;
        let ring: std::io::Result<io_uring::IoUring> = io_uring::IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(8);
        let mut ring = match ring {
            Ok(ring)
                if ring
                    .submitter()
                    .register_eventfd(signal.as_raw_fd())
                    .is_ok() =>
            {
                ring
            }
            Ok(_) | Err(_) => {
                eprintln!("latency/uring-owned skipped: no io_uring with DEFER_TASKRUN here");
                let _ = ready.send(false);
                return;
            }
        };
        let _ = ready.send(true);
        let poll_in = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), PollFlags::IN.bits().into())
            .build()
            .user_data(1);
        let zero = types::Timespec::new();
        for ask in std::iter::once(true).chain(asks) {
            if !ask {
                return;
            }
            // Take the completion (the wake-up queued it; it runs now, in this thread) without
            // a second signal: the waiter has reset the eventfd and the data is taken.
            ring.completion().disable_eventfd();
            let _ = ring
                .submitter()
                .submit_with_args(1, &types::SubmitArgs::new().timespec(&zero));
            ring.completion().for_each(drop);
            ring.completion().enable_eventfd();
            // SAFETY: a POLL_ADD entry refers to no memory of this process, only to `fd`,
            // which outlives the ring (the ring is dropped when this function returns, while
            // `fd` is borrowed from the caller).
            #[allow(unsafe_code)]
            unsafe {
                ring.submission().push(&poll_in).expect("room in the queue");
            }
            ring.submit().expect("submit");
        }
    }
}

impl Twin for &UringOwned<'_> {
    fn wait(&mut self) {
        poll_readable(self.signal);
    }

    fn consume(&mut self, buf: &mut [u8]) {
        reset(self.signal);
        assert_eq!(rustix::io::read(self.fd, buf).expect("read"), 1);
        self.arm.send(true).expect("the ring's owner");
    }
}

/// Reads an eventfd's count (resets it).
fn reset(signal: &OwnedFd) {
    let mut count = [0u8; 8];
    assert_eq!(rustix::io::read(signal, &mut count).expect("reset"), 8);
}

fn poll_readable(fd: &OwnedFd) {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    while poll(&mut fds, None).expect("poll") == 0 {}
}

/// `latency/NAME`: one byte written to the socket's peer, then `twin` waits and takes it.
fn latency_of(g: &mut Group<'_>, name: &str, remote: &mut TcpStream, mut twin: impl Twin) {
    let mut buf = [0u8; 16];
    g.bench_function(name, |b| {
        b.iter(|| {
            remote.write_all(b"x").expect("write");
            twin.wait();
            twin.consume(&mut buf);
        });
    });
}

fn latency(c: &mut Criterion) {
    let (fd, mut remote) = pair();
    let bare = rustix::io::fcntl_dupfd_cloexec(&fd, 0).expect("dup");
    let s = Socket::from_fd(fd).expect("from_fd");
    let e = Event::new().expect("event");
    let mut g = c.benchmark_group("latency");
    s.event_select(&e, FD_READ).expect("event_select");
    latency_of(
        &mut g,
        "sockdup",
        &mut remote,
        Sockdup {
            s: &s,
            e: e.clone(),
        },
    );
    s.event_select(&e, 0).expect("cancel");
    latency_of(&mut g, "epoll", &mut remote, Epoll::new(&bare));
    let relay = Relay::new(&bare);
    std::thread::scope(|scope| {
        scope.spawn(|| relay.run());
        latency_of(&mut g, "relay", &mut remote, &relay);
        relay.stop();
    });
    if let Some(uring) = Uring::new(&bare) {
        latency_of(&mut g, "uring", &mut remote, uring);
    }
    let signal = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd");
    let (arm, asks) = std::sync::mpsc::channel();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| UringOwned::own(&bare, &signal, asks, ready_tx));
        if ready.recv().unwrap_or(false) {
            let owned = UringOwned {
                fd: &bare,
                signal: &signal,
                arm,
            };
            latency_of(&mut g, "uring-owned", &mut remote, &owned);
            let _ = owned.arm.send(false);
        }
    });
    g.finish();
}

/// What the `waiting/*` twins share: the trigger of the peer thread that writes the byte, and
/// when it wrote it (nanoseconds since `base`).
struct Waiting {
    trigger: std::os::unix::net::UnixStream,
    base: std::time::Instant,
    sent_at: std::sync::atomic::AtomicU64,
}

impl Waiting {
    /// `waiting/NAME`: the time from the peer's `write` to `twin` knowing, summed over the
    /// iterations (the trigger and the `consume` are outside it).
    fn of(&self, g: &mut Group<'_>, name: &str, mut twin: impl Twin) {
        use std::sync::atomic::Ordering;
        let mut buf = [0u8; 16];
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    (&self.trigger).write_all(b"g").expect("trigger");
                    twin.wait();
                    let sent = Duration::from_nanos(self.sent_at.load(Ordering::SeqCst));
                    total += self.base.elapsed().saturating_sub(sent);
                    twin.consume(&mut buf);
                }
                total
            });
        });
    }
}

/// `waiting/*` (see the module's docs).
fn waiting(c: &mut Criterion) {
    use std::sync::atomic::Ordering;
    let (fd, mut remote) = pair();
    let bare = rustix::io::fcntl_dupfd_cloexec(&fd, 0).expect("dup");
    let s = Socket::from_fd(fd).expect("from_fd");
    let e = Event::new().expect("event");
    let (trigger, mut pulled) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let w = Waiting {
        trigger,
        base: std::time::Instant::now(),
        sent_at: Default::default(),
    };
    let mut g = c.benchmark_group("waiting");
    std::thread::scope(|scope| {
        let (base, sent_at) = (w.base, &w.sent_at);
        scope.spawn(move || {
            let mut go = [0u8; 1];
            while pulled.read_exact(&mut go).is_ok() {
                sent_at.store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
                remote.write_all(b"x").expect("write");
            }
        });
        s.event_select(&e, FD_READ).expect("event_select");
        w.of(
            &mut g,
            "sockdup",
            Sockdup {
                s: &s,
                e: e.clone(),
            },
        );
        s.event_select(&e, 0).expect("cancel");
        w.of(&mut g, "epoll", Epoll::new(&bare));
        let relay = Relay::new(&bare);
        std::thread::scope(|inner| {
            inner.spawn(|| relay.run());
            w.of(&mut g, "relay", &relay);
            relay.stop();
        });
        // The peer thread ends with its trigger.
        w.trigger
            .shutdown(std::net::Shutdown::Both)
            .expect("shutdown");
    });
    g.finish();
}

/// The child: holds the record's socket and a socket of its own; on `s` registers on the
/// shared one, on `o` on its own, and answers `k`.
fn child() {
    let _guard = sockdup::startup().expect("startup in the child");
    let mut input = std::io::stdin().lock();
    println!("{}", std::process::id());
    let mut line = String::new();
    input.read_line(&mut line).expect("a record");
    let record: sockdup::ProtocolInfo = line.trim().parse().expect("a record");
    let shared =
        Socket::from_fd(sockdup::socket_from_info(&record).expect("redeem")).expect("wrap");
    let (own_fd, _remote) = pair();
    let own = Socket::from_fd(own_fd).expect("wrap");
    let e = Event::new().expect("event");
    let mut out = std::io::stdout().lock();
    let mut byte = [0u8; 1];
    while input.read_exact(&mut byte).is_ok() {
        let target = if byte[0] == b's' { &shared } else { &own };
        target
            .event_select(&e, FD_READ)
            .expect("event_select in the child");
        out.write_all(b"k").expect("answer");
        out.flush().expect("flush");
    }
}

fn cancel(c: &mut Criterion) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut kid: Child = Command::new(exe)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let mut to = kid.stdin.take().expect("stdin");
    let mut from = BufReader::new(kid.stdout.take().expect("stdout"));
    let mut line = String::new();
    from.read_line(&mut line).expect("the child's pid");
    let pid: u32 = line.trim().parse().expect("a pid");
    let (fd, _remote) = pair();
    let record = sockdup::duplicate_socket(&fd, pid).expect("duplicate");
    writeln!(to, "{record}").expect("send the record");
    let s = Socket::from_fd(fd).expect("wrap");
    let e = Event::new().expect("event");
    let mut g = c.benchmark_group("cancel");
    let mut ack = [0u8; 1];
    for (name, what) in [("cross_process", b"s"), ("local", b"o")] {
        g.bench_function(name, |b| {
            b.iter(|| {
                to.write_all(what).expect("tell the child");
                to.flush().expect("flush");
                from.read_exact(&mut ack).expect("the child's answer");
                s.event_select(&e, FD_READ).expect("event_select");
            });
        });
    }
    g.finish();
    drop(to);
    let _ = kid.wait();
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    // Placement as in `handoff` (SOCKDUP_BENCH_PIN, default `same`): this process, so every
    // thread it starts (the watcher) and the child it re-executes, on one CPU, so that the
    // twins differ in their work, not in cross-CPU wakeups.
    sockdup_bench::place("events").unwrap_or_else(|e| panic!("{e}"));
    let guard = sockdup::startup().expect("sockdup::startup in the benchmark");
    latency(&mut c);
    waiting(&mut c);
    cancel(&mut c);
    drop(guard);
    c.final_summary();
}
