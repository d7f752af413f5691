//! Criterion benchmark `events`: network events, each beside its twin measured in the same run.
//!
//! - `latency/sockdup`: one byte written to a connected loopback TCP socket, then
//!   `Event::wait` until the registration (`event_select(FD_READ)`) signals it, then
//!   `enum_network_events` (resets the event) and a `recv` (re-enables `FD_READ`): the path from
//!   data arriving to the event signalled goes through the watcher thread's `epoll_wait`.
//!   `latency/epoll`: the same byte on the same socket (its registration cancelled), a bare
//!   `epoll_wait` on it in this thread, and the `recv`.
//! - `cancel/cross_process`: a second process (this benchmark re-executed as a child, holding a
//!   duplicate of the socket redeemed with `socket_from_info`) registers on the socket when told
//!   over a pipe, which cancels this process's registration, and answers; then this process
//!   registers again, which cancels the child's. Two cross-process cancellations and one pipe
//!   round trip per iteration. `cancel/local`: the same exchange, but the child registers on a
//!   socket of its own: one pipe round trip and two registrations, no cancellation. The
//!   difference, halved, is the cost of one cross-process cancellation.
#![forbid(unsafe_code)]

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
    cancel(&mut c);
    drop(guard);
    c.final_summary();
}
