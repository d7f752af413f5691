//! Network events on shared sockets (`WSAEventSelect`, `WSAEnumNetworkEvents`,
//! `WSAAsyncSelect`): Windows' re-enabling rules on real loopback sockets in this process, and
//! the one-registration-per-socket rule between real processes (peers).

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use sockdup::spi::{
    Event, FD_ACCEPT, FD_CLOSE, FD_CLOSE_BIT, FD_CONNECT, FD_CONNECT_BIT, FD_OOB, FD_READ,
    FD_WRITE, Socket, wait_for_events,
};
use util::{Peer, fd_count, wait_for};

const LONG: Duration = Duration::from_secs(10);
/// How long a test waits to conclude that nothing was signalled.
const QUIET: Duration = Duration::from_millis(300);

/// A connected pair: this end's descriptor and the remote end.
fn raw_pair() -> (OwnedFd, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    (OwnedFd::from(c), s)
}

fn connected() -> (Socket, TcpStream) {
    let (fd, remote) = raw_pair();
    (Socket::from_fd(fd).unwrap(), remote)
}

/// A connected pair whose socket is registered for `events` with a new event.
fn registered(events: u32) -> (Socket, TcpStream, Event) {
    let (s, remote) = connected();
    let e = Event::new().unwrap();
    s.event_select(&e, events).unwrap();
    (s, remote, e)
}

/// A connected pair whose remote end has sent `data` (and `shut` down its side if asked), once
/// this end can read it.
fn connected_after(data: &[u8], shut: bool) -> (Socket, TcpStream) {
    let (fd, mut remote) = raw_pair();
    remote.write_all(data).unwrap();
    if shut {
        remote.shutdown(Shutdown::Write).unwrap();
    }
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    rustix::event::poll(&mut p, None).unwrap();
    (Socket::from_fd(fd).unwrap(), remote)
}

#[track_caller]
fn signalled(e: &Event) {
    assert!(e.wait(Some(LONG)).unwrap(), "the event was not signalled");
}

#[track_caller]
fn quiet(e: &Event) {
    assert!(!e.wait(Some(QUIET)).unwrap(), "the event was signalled");
}

#[track_caller]
fn take(s: &Socket, e: &Event) -> u32 {
    s.enum_network_events(Some(e)).unwrap().events
}

/// Receives until the socket would block; returns the bytes.
fn drain(s: &Socket) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.recv(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn pending_events_are_recorded_before_event_select_returns() {
    let _g = sockdup::startup().unwrap();
    let (s, _remote) = connected_after(b"waiting", false);
    // Data already waiting and a connected socket: FD_READ and FD_WRITE at once.
    let e = Event::new().unwrap();
    s.event_select(&e, FD_READ | FD_WRITE).unwrap();
    assert!(
        e.is_set(),
        "pending events must be recorded when event_select returns"
    );
    let n = s.enum_network_events(Some(&e)).unwrap();
    assert_eq!(n.events, FD_READ | FD_WRITE);
    assert_eq!(n.errors, [0; 10]);
    assert!(
        !e.is_set(),
        "enum_network_events resets the event it is given"
    );
    // The socket is non-blocking now, like on Windows.
    let mut buf = [0u8; 64];
    assert_eq!(s.recv(&mut buf).unwrap(), 7);
    assert_eq!(
        s.recv(&mut buf).unwrap_err().kind(),
        sockdup::ErrorKind::WouldBlock
    );
}

/// The watcher thread is `SCHED_BATCH` (its wake-ups never preempt the thread running on its
/// CPU, which is often the one about to record the same readiness itself), and it still signals
/// an event nobody waits on through `wait` (here: only `is_set` is polled).
#[test]
fn the_watcher_thread_defers_its_wake_ups_and_still_signals() {
    let _g = sockdup::startup().unwrap();
    let (s, mut remote, e) = registered(FD_READ);
    remote.write_all(b"x").unwrap();
    wait_for(LONG, || e.is_set().then_some(()));
    assert_eq!(take(&s, &e), FD_READ);
    // The thread has run (it signalled), so it has named itself and set its policy.
    let policies: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // "TID (COMM) STATE ...": field 41 is the policy; COMM may hold spaces.
            let policy = stat.rsplit_once(')')?.1.split_whitespace().nth(38)?;
            (name.trim() == "sockdup-events").then(|| policy.to_string())
        })
        .collect();
    // SCHED_BATCH is 3.
    assert_eq!(
        policies,
        ["3"],
        "the sockdup-events thread's scheduling policy"
    );
}

#[test]
fn fd_read_is_recorded_once_and_re_enabled_by_a_receive() {
    let _g = sockdup::startup().unwrap();
    let (s, mut remote, e) = registered(FD_READ);
    quiet(&e);
    remote.write_all(b"abc").unwrap();
    signalled(&e);
    assert_eq!(take(&s, &e), FD_READ);
    // More data without a receive: not recorded again.
    remote.write_all(b"def").unwrap();
    quiet(&e);
    assert_eq!(take(&s, &e), 0);
    // A receive that leaves data waiting records FD_READ again at once (level-triggered).
    let mut one = [0u8; 1];
    assert_eq!(s.recv(&mut one).unwrap(), 1);
    signalled(&e);
    assert_eq!(take(&s, &e), FD_READ);
    // A receive that empties the socket: nothing until new data comes.
    assert_eq!(drain(&s), b"bcdef");
    quiet(&e);
    remote.write_all(b"g").unwrap();
    signalled(&e);
    assert_eq!(take(&s, &e), FD_READ);
}

#[test]
fn fd_write_comes_on_connect_and_then_only_after_a_send_would_block() {
    let _g = sockdup::startup().unwrap();
    let (s, mut remote, e) = registered(FD_WRITE);
    assert_eq!(
        take(&s, &e),
        FD_WRITE,
        "FD_WRITE at once on a connected socket"
    );
    // Sends that succeed record nothing.
    s.send(b"x").unwrap();
    quiet(&e);
    // Fill the buffers until a send fails with would-block.
    let chunk = vec![7u8; 65536];
    let mut sent = 1usize;
    loop {
        match s.send(&chunk) {
            Ok(n) => sent += n,
            Err(err) => {
                assert_eq!(err.kind(), sockdup::ErrorKind::WouldBlock, "{err}");
                break;
            }
        }
    }
    quiet(&e);
    // The peer reads everything: space again, FD_WRITE again.
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    while got < sent {
        got += remote.read(&mut buf).unwrap();
    }
    signalled(&e);
    assert_eq!(take(&s, &e), FD_WRITE);
}

#[test]
fn fd_accept_is_re_enabled_by_accept_and_accepted_sockets_inherit() {
    let _g = sockdup::startup().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let l = Socket::from_fd(OwnedFd::from(l)).unwrap();
    let e = Event::new().unwrap();
    l.event_select(&e, FD_ACCEPT | FD_READ | FD_CONNECT)
        .unwrap();
    quiet(&e);
    let mut c1 = TcpStream::connect(addr).unwrap();
    signalled(&e);
    assert_eq!(take(&l, &e), FD_ACCEPT);
    let _c2 = TcpStream::connect(addr).unwrap();
    quiet(&e);
    // An accept that leaves a connection pending records FD_ACCEPT again at once.
    let a1 = wait_for(LONG, || l.accept().ok());
    signalled(&e);
    assert_eq!(take(&l, &e), FD_ACCEPT);
    // The accepted socket inherited the registration (same event): data on it records
    // FD_READ in its own record; FD_CONNECT is not recorded for an accepted socket.
    assert_eq!(take(&a1, &e), 0);
    c1.write_all(b"hi").unwrap();
    signalled(&e);
    assert_eq!(take(&a1, &e), FD_READ);
    let _a2 = l.accept().unwrap();
    quiet(&e);
    assert_eq!(take(&l, &e), 0);
}

#[test]
fn fd_connect_then_fd_write_in_that_order_and_at_once_when_connected_already() {
    let _g = sockdup::startup().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // A connect after the registration (the non-blocking connect of Windows).
    let s = Socket::new(2, 1, 0).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    s.async_select(FD_CONNECT | FD_WRITE | FD_READ, tx).unwrap();
    match s.connect(&addr) {
        Ok(()) => {}
        Err(e) => assert_eq!(e.kind(), sockdup::ErrorKind::WouldBlock, "{e}"),
    }
    let first = rx.recv_timeout(LONG).unwrap();
    let second = rx.recv_timeout(LONG).unwrap();
    assert_eq!((first.event, first.error), (FD_CONNECT, 0));
    assert_eq!((second.event, second.error), (FD_WRITE, 0));
    assert_eq!(first.handle, s.handle());
    // Registered on a connected socket: FD_CONNECT at once, before FD_WRITE.
    let (c, _remote) = connected();
    let (tx, rx) = std::sync::mpsc::channel();
    c.async_select(FD_CONNECT | FD_WRITE, tx).unwrap();
    let got: Vec<u32> = rx.try_iter().map(|n| n.event).collect();
    assert_eq!(got, vec![FD_CONNECT, FD_WRITE]);
    assert!(
        rx.recv_timeout(QUIET).is_err(),
        "FD_CONNECT and FD_WRITE come once"
    );
    drop(l);
}

#[test]
fn a_failed_connect_records_fd_connect_with_wsaeconnrefused() {
    let _g = sockdup::startup().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let s = Socket::new(2, 1, 0).unwrap();
    let e = Event::new().unwrap();
    s.event_select(&e, FD_CONNECT | FD_WRITE | FD_CLOSE)
        .unwrap();
    let _ = s.connect(&addr);
    signalled(&e);
    let n = s.enum_network_events(Some(&e)).unwrap();
    assert_eq!(n.events, FD_CONNECT);
    assert_eq!(n.errors[FD_CONNECT_BIT], 10061);
    // Recorded once: nothing more comes of the failed connect (no FD_WRITE, no FD_CLOSE, no
    // second FD_CONNECT).
    quiet(&e);
    assert_eq!(s.enum_network_events(None).unwrap().events, 0);
}

#[test]
fn a_reset_records_fd_close_with_wsaeconnreset() {
    let _g = sockdup::startup().unwrap();
    let (s, remote, e) = registered(FD_CLOSE);
    quiet(&e);
    rustix::net::sockopt::set_socket_linger(&remote, Some(Duration::ZERO)).unwrap();
    drop(remote);
    signalled(&e);
    let n = s.enum_network_events(Some(&e)).unwrap();
    assert_eq!(n.events, FD_CLOSE);
    assert_eq!(n.errors[FD_CLOSE_BIT], 10054);
    quiet(&e);
}

#[test]
fn fd_close_comes_once_all_received_data_has_been_read() {
    let _g = sockdup::startup().unwrap();
    let (s, _remote) = connected_after(b"last words", true);
    let e = Event::new().unwrap();
    s.event_select(&e, FD_READ | FD_CLOSE).unwrap();
    signalled(&e);
    assert_eq!(take(&s, &e), FD_READ, "data first, no FD_CLOSE yet");
    let mut four = [0u8; 4];
    assert_eq!(s.recv(&mut four).unwrap(), 4);
    signalled(&e);
    assert_eq!(take(&s, &e), FD_READ);
    let mut rest = [0u8; 64];
    assert_eq!(s.recv(&mut rest).unwrap(), 6);
    signalled(&e);
    let n = s.enum_network_events(Some(&e)).unwrap();
    assert_eq!(n.events, FD_CLOSE);
    assert_eq!(n.errors[FD_CLOSE_BIT], 0);
    // Once.
    let _ = s.recv(&mut rest);
    quiet(&e);
}

#[test]
fn fd_oob_is_recorded_for_urgent_data() {
    let _g = sockdup::startup().unwrap();
    let (s, remote, e) = registered(FD_OOB);
    quiet(&e);
    rustix::net::send(&remote, b"!", rustix::net::SendFlags::OOB).unwrap();
    signalled(&e);
    assert_eq!(take(&s, &e), FD_OOB);
    quiet(&e);
}

#[test]
fn fd_oob_is_recorded_once_and_re_enabled_by_a_receive() {
    let _g = sockdup::startup().unwrap();
    let (s, remote, e) = registered(FD_OOB);
    rustix::net::send(&remote, b"!", rustix::net::SendFlags::OOB).unwrap();
    signalled(&e);
    assert_eq!(take(&s, &e), FD_OOB);
    // The urgent data is still there, and more comes: recorded once, nothing until a receive.
    rustix::net::send(&remote, b"?", rustix::net::SendFlags::OOB).unwrap();
    quiet(&e);
    // A receive re-enables it, even one that finds no ordinary data (as on Windows, the call
    // re-enables). On Linux a receive at the urgent mark also ends the urgent data, so the
    // next urgent byte is what records FD_OOB again.
    let mut buf = [0u8; 64];
    assert!(s.recv(&mut buf).is_err(), "no ordinary data was sent");
    rustix::net::send(&remote, b"#", rustix::net::SendFlags::OOB).unwrap();
    signalled(&e);
    assert_eq!(take(&s, &e), FD_OOB);
}

#[test]
fn wait_for_events_any_all_and_timeout() {
    let _g = sockdup::startup().unwrap();
    let a = Event::new().unwrap();
    let b = Event::new().unwrap();
    assert_eq!(
        wait_for_events(&[&a, &b], false, Some(QUIET)).unwrap(),
        None
    );
    b.set();
    assert_eq!(
        wait_for_events(&[&a, &b], false, Some(LONG)).unwrap(),
        Some(1)
    );
    assert_eq!(wait_for_events(&[&a, &b], true, Some(QUIET)).unwrap(), None);
    let setter = {
        let a = a.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            a.set();
        })
    };
    assert_eq!(
        wait_for_events(&[&a, &b], true, Some(LONG)).unwrap(),
        Some(0)
    );
    setter.join().unwrap();
    assert_eq!(wait_for_events(&[&a, &b], false, None).unwrap(), Some(0));
    a.reset();
    assert!(
        !a.is_set() && b.is_set(),
        "reset clears one event, manual reset keeps the other"
    );
}

#[test]
fn bad_arguments_get_clear_errors() {
    let _g = sockdup::startup().unwrap();
    let events: Vec<Event> = (0..65).map(|_| Event::new().unwrap()).collect();
    let refs: Vec<&Event> = events.iter().collect();
    let err = wait_for_events(&refs, false, Some(Duration::ZERO)).unwrap_err();
    assert_eq!(err.code(), 87, "{err}");
    assert_eq!(err.kind(), sockdup::ErrorKind::TooManyEvents);
    assert_eq!(wait_for_events(&[], true, None).unwrap_err().code(), 87);
    assert_eq!(
        wait_for_events(&refs[..64], false, Some(Duration::ZERO)).unwrap(),
        None
    );

    let (s, _remote) = connected();
    for bad in [0x40, 0x8000_0000, u32::MAX] {
        let err = s.event_select(&events[0], bad).unwrap_err();
        assert_eq!(err.code(), 10022, "{err}");
        assert!(err.to_string().contains("no network event"), "{err}");
    }
    // A descriptor that is not a socket.
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let err = Socket::from_fd(r).unwrap_err();
    assert_eq!(err.code(), 10038, "{err}");
}

#[test]
fn closing_the_registering_descriptor_ends_the_registration() {
    let _g = sockdup::startup().unwrap();
    let (fd, mut remote) = raw_pair();
    let keep = Socket::from_fd(rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap()).unwrap();
    let s = Socket::from_fd(fd).unwrap();
    let e = Event::new().unwrap();
    s.event_select(&e, FD_READ).unwrap();
    s.close().unwrap();
    remote.write_all(b"anyone?").unwrap();
    quiet(&e);
    assert_eq!(take(&keep, &e), 0);
}

// ---- between processes ----

fn remote_pair() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Peer `a` connects through the catalog, `b` redeems a duplicate: socket indexes in each.
fn shared(a: &mut Peer, b: &mut Peer) -> (String, String, TcpStream) {
    let (l, addr) = remote_pair();
    let ia = a.ok(&format!("spi-tcp-connect {addr}"));
    let ia = ia.split(' ').next().unwrap().to_owned();
    let (remote, _) = l.accept().unwrap();
    remote.set_read_timeout(Some(LONG)).unwrap();
    let rec = a.ok(&format!("spi-dup {ia} {}", b.pid));
    let ib = b.ok(&format!("spi-redeem {rec}"));
    let ib = ib.split(' ').next().unwrap().to_owned();
    (ia, ib, remote)
}

#[test]
fn a_registration_in_another_process_cancels_this_one_and_back() {
    let mut a = Peer::spawn(Some(""));
    let mut b = Peer::spawn(Some(""));
    let (ia, ib, mut remote) = shared(&mut a, &mut b);
    let ea = a.ok("ev-new");
    let eb = b.ok("ev-new");
    a.ok(&format!("ev-select {ia} {ea} {FD_READ}"));
    b.ok(&format!("ev-select {ib} {eb} {FD_WRITE}"));
    // B's registration cancelled A's: data from the remote end signals nothing in A.
    remote.write_all(b"for A?").unwrap();
    assert_eq!(b.ok(&format!("ev-wait {eb} 10000")), "set");
    assert!(
        b.ok(&format!("ev-enum {ib} {eb}"))
            .starts_with("events=0x2 ")
    );
    assert_eq!(a.ok(&format!("ev-wait {ea} 300")), "timeout");
    assert!(
        a.ok(&format!("ev-enum {ia} {ea}"))
            .starts_with("events=0x0 ")
    );
    // A registers again: B stops being signalled; A sees the waiting data at once.
    a.ok(&format!("ev-select {ia} {ea} {}", FD_READ | FD_WRITE));
    assert_eq!(a.ok(&format!("ev-wait {ea} 10000")), "set");
    assert!(
        a.ok(&format!("ev-enum {ia} {ea}"))
            .starts_with("events=0x3 ")
    );
    b.ok(&format!("spi-recv {ib}"));
    remote.write_all(b"more").unwrap();
    assert_eq!(b.ok(&format!("ev-wait {eb} 300")), "timeout");
    assert!(b.ok(&format!("ev-enum {ib}")).starts_with("events=0x0 "));
    // async_select in B cancels A's again, and its channel gets the events.
    b.ok(&format!("ev-async {ib} {}", FD_READ | FD_WRITE));
    let notes = b.ok(&format!("ev-notes {ib} 10000"));
    assert!(notes.contains(&format!("{FD_READ}:0")), "{notes}");
    a.ok(&format!("spi-recv {ia}"));
    remote.write_all(b"again").unwrap();
    assert_eq!(a.ok(&format!("ev-wait {ea} 300")), "timeout");
}

#[test]
fn a_killed_registrant_needs_no_answer() {
    let mut a = Peer::spawn(Some(""));
    let mut b = Peer::spawn(Some(""));
    let (ia, ib, mut remote) = shared(&mut a, &mut b);
    let ea = a.ok("ev-new");
    a.ok(&format!("ev-select {ia} {ea} {FD_READ}"));
    a.kill();
    let eb = b.ok("ev-new");
    b.ok(&format!("ev-select {ib} {eb} {FD_READ}"));
    remote.write_all(b"to B").unwrap();
    assert_eq!(b.ok(&format!("ev-wait {eb} 10000")), "set");
}

#[test]
fn a_stopped_registrant_makes_the_other_registration_fail_after_its_timeout_not_hang() {
    let mut a = Peer::spawn(Some(""));
    let mut b = Peer::spawn(Some(""));
    let (ia, ib, _remote) = shared(&mut a, &mut b);
    let ea = a.ok("ev-new");
    a.ok(&format!("ev-select {ia} {ea} {FD_READ}"));
    a.signal(rustix::process::Signal::STOP);
    let eb = b.ok("ev-new");
    let started = Instant::now();
    let err = b.fails(&format!("ev-select {ib} {eb} {FD_READ}"));
    a.signal(rustix::process::Signal::CONT);
    assert_eq!(err.kind, "peer-timed-out", "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(19));
    // Once A answers again, B's registration goes through.
    b.ok(&format!("ev-select {ib} {eb} {FD_READ}"));
}

#[test]
fn fd_accept_on_a_shared_listener() {
    let mut a = Peer::spawn(Some(""));
    let mut b = Peer::spawn(Some(""));
    let ia = a.ok("tcp-listen");
    let (ia, addr) = ia.split_once(' ').unwrap();
    let ia = a.ok(&format!("spi-from-fd {ia}"));
    let ia = ia.split(' ').next().unwrap().to_owned();
    let rec = a.ok(&format!("spi-dup {ia} {}", b.pid));
    let ib = b.ok(&format!("spi-redeem {rec}"));
    let ib = ib.split(' ').next().unwrap().to_owned();
    let ea = a.ok("ev-new");
    let eb = b.ok("ev-new");
    a.ok(&format!("ev-select {ia} {ea} {FD_ACCEPT}"));
    b.ok(&format!("ev-select {ib} {eb} {FD_ACCEPT}"));
    let _c = TcpStream::connect(addr).unwrap();
    assert_eq!(b.ok(&format!("ev-wait {eb} 10000")), "set");
    assert!(
        b.ok(&format!("ev-enum {ib} {eb}"))
            .starts_with("events=0x8 ")
    );
    assert_eq!(a.ok(&format!("ev-wait {ea} 300")), "timeout");
}

#[test]
fn ten_thousand_registrations_alternating_between_two_processes_leak_nothing() {
    let mut a = Peer::spawn(Some(""));
    let mut b = Peer::spawn(Some(""));
    let (ia, ib, _remote) = shared(&mut a, &mut b);
    let ea = a.ok("ev-new");
    let eb = b.ok("ev-new");
    // Warm up: each process's watcher thread, epoll set and cancellation socket.
    a.ok(&format!("ev-select {ia} {ea} {FD_READ}"));
    b.ok(&format!("ev-select {ib} {eb} {FD_READ}"));
    a.ok(&format!("ev-select {ia} {ea} 0"));
    let (fa, fb) = (a.fdcount(), b.fdcount());
    let ours = fd_count();
    for i in 0..5000 {
        // Each registration cancels the other process's; every 10th cycle cancels explicitly.
        a.ok(&format!("ev-select {ia} {ea} {FD_READ}"));
        b.ok(&format!("ev-select {ib} {eb} {FD_WRITE}"));
        if i % 10 == 0 {
            b.ok(&format!("ev-select {ib} {eb} 0"));
        }
    }
    b.ok(&format!("ev-select {ib} {eb} 0"));
    a.ok(&format!("ev-select {ia} {ea} 0"));
    assert_eq!(a.fdcount(), fa, "descriptors left in A");
    assert_eq!(b.fdcount(), fb, "descriptors left in B");
    assert_eq!(fd_count(), ours);
}

#[test]
fn through_a_non_ifs_chain_each_layer_sees_the_calls_and_the_rule_holds() {
    let mut c = sockdup::catalog::Catalog::builtin();
    let (_, chains) = c
        .install("trace", "trace", false, Default::default(), &[1001])
        .unwrap();
    let file = util::CatalogFile::new("events", &c);
    let mut a = file.peer();
    let mut b = file.peer();
    let (ia, ib, mut remote) = shared(&mut a, &mut b);
    let ea = a.ok("ev-new");
    let eb = b.ok("ev-new");
    a.ok(&format!("ev-select {ia} {ea} {FD_READ}"));
    b.ok(&format!("ev-select {ib} {eb} {FD_READ}"));
    remote.write_all(b"to B").unwrap();
    assert_eq!(b.ok(&format!("ev-wait {eb} 10000")), "set");
    assert!(
        b.ok(&format!("ev-enum {ib} {eb}"))
            .starts_with("events=0x1 ")
    );
    assert_eq!(a.ok(&format!("ev-wait {ea} 300")), "timeout");
    for p in [&mut a, &mut b] {
        let t = p.traces();
        let report = t
            .iter()
            .find(|r| r["chain"] == chains[0].to_string())
            .unwrap();
        assert!(report["calls"].contains("event_select:1"), "{t:?}");
    }
    let t = b.traces();
    assert!(t[0]["calls"].contains("enum_network_events:1"), "{t:?}");
}
