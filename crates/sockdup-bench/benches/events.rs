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
//!   What an event object could cost if the kernel, not a thread, signalled it.
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

fn latency(c: &mut Criterion) {
    let (fd, mut remote) = pair();
    let bare = rustix::io::fcntl_dupfd_cloexec(&fd, 0).expect("dup");
    let s = Socket::from_fd(fd).expect("from_fd");
    let e = Event::new().expect("event");
    let mut g = c.benchmark_group("latency");
    s.event_select(&e, FD_READ).expect("event_select");
    let mut buf = [0u8; 16];
    g.bench_function("sockdup", |b| {
        b.iter(|| {
            remote.write_all(b"x").expect("write");
            assert!(e.wait(Some(Duration::from_secs(10))).expect("wait"));
            let n = s.enum_network_events(Some(&e)).expect("enum");
            assert_eq!(n.events, FD_READ);
            assert_eq!(s.recv(&mut buf).expect("recv"), 1);
        });
    });
    s.event_select(&e, 0).expect("cancel");
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll");
    epoll::add(
        &ep,
        &bare,
        epoll::EventData::new_u64(1),
        epoll::EventFlags::IN,
    )
    .expect("epoll add");
    let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 4];
    g.bench_function("epoll", |b| {
        b.iter(|| {
            remote.write_all(b"x").expect("write");
            let (got, _) = epoll::wait(&ep, &mut events, None).expect("epoll_wait");
            assert_eq!(got.len(), 1);
            assert_eq!(rustix::io::read(&bare, &mut buf).expect("read"), 1);
        });
    });
    relay(&mut g, &bare, &mut remote);
    uring(&mut g, &bare, &mut remote);
    g.finish();
}

/// `waiting/*` (see the module's docs).
fn waiting(c: &mut Criterion) {
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;
    let (fd, mut remote) = pair();
    let bare = rustix::io::fcntl_dupfd_cloexec(&fd, 0).expect("dup");
    let s = Socket::from_fd(fd).expect("from_fd");
    let e = Event::new().expect("event");
    let (mut trigger, mut pulled) = UnixStream::pair().expect("socketpair");
    let base = Instant::now();
    let sent_at = AtomicU64::new(0);
    let since = |at: &AtomicU64| {
        base.elapsed()
            .saturating_sub(Duration::from_nanos(at.load(Ordering::SeqCst)))
    };
    let mut g = c.benchmark_group("waiting");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut go = [0u8; 1];
            while pulled.read_exact(&mut go).is_ok() {
                sent_at.store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
                remote.write_all(b"x").expect("write");
            }
        });
        let mut buf = [0u8; 16];
        s.event_select(&e, FD_READ).expect("event_select");
        g.bench_function("sockdup", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    trigger.write_all(b"g").expect("trigger");
                    assert!(e.wait(Some(Duration::from_secs(10))).expect("wait"));
                    total += since(&sent_at);
                    let n = s.enum_network_events(Some(&e)).expect("enum");
                    assert_eq!(n.events, FD_READ);
                    assert_eq!(s.recv(&mut buf).expect("recv"), 1);
                }
                total
            });
        });
        s.event_select(&e, 0).expect("cancel");
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll");
        epoll::add(
            &ep,
            &bare,
            epoll::EventData::new_u64(1),
            epoll::EventFlags::IN,
        )
        .expect("epoll add");
        let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 4];
        g.bench_function("epoll", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    trigger.write_all(b"g").expect("trigger");
                    let (got, _) = epoll::wait(&ep, &mut events, None).expect("epoll_wait");
                    total += since(&sent_at);
                    assert_eq!(got.len(), 1);
                    assert_eq!(rustix::io::read(&bare, &mut buf).expect("read"), 1);
                }
                total
            });
        });
        let relay = Relay::new(&bare);
        std::thread::scope(|inner| {
            inner.spawn(|| relay.run());
            g.bench_function("relay", |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        trigger.write_all(b"g").expect("trigger");
                        relay.wait();
                        total += since(&sent_at);
                        relay.consume(&mut buf);
                    }
                    total
                });
            });
            relay.stop();
        });
        g.finish();
        drop(trigger);
    });
}

/// `latency/uring` (see the module's docs) on `fd`, whose peer is `remote`.
fn uring(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    fd: &OwnedFd,
    remote: &mut TcpStream,
) {
    use io_uring::{IoUring, opcode, types};
    use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
    use std::os::fd::AsRawFd;
    let Ok(mut ring) = IoUring::new(8) else {
        eprintln!("latency/uring skipped: io_uring is not available here");
        return;
    };
    let signal = eventfd(0, EventfdFlags::CLOEXEC).expect("eventfd");
    if let Err(e) = ring.submitter().register_eventfd(signal.as_raw_fd()) {
        eprintln!("latency/uring skipped: io_uring cannot signal an eventfd here ({e})");
        return;
    }
    let poll_in = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), PollFlags::IN.bits().into())
        .build()
        .user_data(1);
    let arm = |ring: &mut IoUring| {
        // SAFETY: a POLL_ADD entry refers to no memory of this process, only to `fd`, which
        // outlives the ring (the ring drops at the end of this function).
        #[allow(unsafe_code)]
        unsafe {
            ring.submission().push(&poll_in).expect("room in the queue");
        }
        ring.submit().expect("submit");
    };
    arm(&mut ring);
    let mut buf = [0u8; 16];
    let mut count = [0u8; 8];
    g.bench_function("uring", |b| {
        b.iter(|| {
            remote.write_all(b"x").expect("write");
            let mut fds = [PollFd::new(&signal, PollFlags::IN)];
            while poll(&mut fds, None).expect("poll") == 0 {}
            assert_eq!(rustix::io::read(&signal, &mut count).expect("reset"), 8);
            assert_eq!(ring.completion().count(), 1);
            assert_eq!(rustix::io::read(fd, &mut buf).expect("read"), 1);
            arm(&mut ring);
        });
    });
}

/// The relay twins' structure: a thread blocked in `epoll_wait` on a socket (one-shot) writes
/// an eventfd; the waiting thread `poll`s the eventfd, then resets it and re-arms the socket.
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

    /// Waits until the relay signals.
    fn wait(&self) {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut fds = [PollFd::new(&self.signal, PollFlags::IN)];
        while poll(&mut fds, None).expect("poll") == 0 {}
    }

    /// Resets the eventfd, receives the byte, re-arms the socket (what `enum_network_events`
    /// and `recv` do).
    fn consume(&self, buf: &mut [u8]) {
        let mut count = [0u8; 8];
        assert_eq!(
            rustix::io::read(&self.signal, &mut count).expect("reset"),
            8
        );
        assert_eq!(rustix::io::read(self.fd, buf).expect("read"), 1);
        epoll::modify(
            &self.ep,
            self.fd,
            epoll::EventData::new_u64(1),
            Self::ONESHOT,
        )
        .expect("re-arm");
    }

    fn stop(&self) {
        rustix::io::write(&self.stop, &1u64.to_ne_bytes()).expect("stop");
    }
}

/// `latency/relay` (see the module's docs) on `fd`, whose peer is `remote`.
fn relay(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    fd: &OwnedFd,
    remote: &mut TcpStream,
) {
    let relay = Relay::new(fd);
    std::thread::scope(|scope| {
        scope.spawn(|| relay.run());
        let mut buf = [0u8; 16];
        g.bench_function("relay", |b| {
            b.iter(|| {
                remote.write_all(b"x").expect("write");
                relay.wait();
                relay.consume(&mut buf);
            });
        });
        relay.stop();
    });
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
