//! `sockdup::tokio` between real processes: this test process is the tokio program (a runtime
//! per test), the `peer` is the blocking one. Records go from the peer to tokio (each `FromInfo`
//! type, data both ways, a listener that accepts), from tokio to the peer, and a refused
//! `from_info` leaves its record redeemable.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use sockdup::ErrorKind;
use sockdup::tokio::FromInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::{Peer, TempDir, wait_for};

const LONG: Duration = Duration::from_secs(20);

/// A multi-thread runtime with I/O and timers, as applications use.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A runtime with one thread: whatever blocks it stops every task.
fn one_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn me() -> u32 {
    std::process::id()
}

/// A bound on an async step, so a hang fails the test instead of stalling it.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LONG, f)
        .await
        .expect("an async step did not finish within the bound")
}

/// The peer reads `idx` until it has data (the socket may be non-blocking: shared `O_NONBLOCK`).
/// One duplication each way between this process and the peer, so the connections both keep
/// (each one's pool connection to the other's inbox) are open before descriptors are counted.
fn warm_up(peer: &mut Peer) {
    let idx = peer.ok("udp-bind");
    let idx = idx.split_once(' ').unwrap().0;
    let record: sockdup::ProtocolInfo = peer.ok(&format!("dup {idx} {}", me())).parse().unwrap();
    peer.ok(&format!("close {idx}"));
    drop(sockdup::socket_from_info(&record).unwrap());
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let record = sockdup::duplicate_socket(&u, peer.pid).unwrap();
    let idx = peer.ok(&format!("redeem {record}"));
    peer.ok(&format!("close {idx}"));
}

fn peer_reads(peer: &mut Peer, idx: &str) -> String {
    wait_for(LONG, || peer.cmd(&format!("read {idx}")).ok())
}

#[test]
fn a_tcp_stream_from_a_blocking_peer_carries_data_both_ways_and_shares_o_nonblock() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let idx = peer.ok(&format!("tcp-connect {}", l.local_addr().unwrap()));
    let (mut remote, _) = l.accept().unwrap();
    remote.set_read_timeout(Some(LONG)).unwrap();
    assert_eq!(peer.ok(&format!("nonblock {idx}")), "false");
    let record: sockdup::ProtocolInfo = peer.ok(&format!("dup {idx} {}", me())).parse().unwrap();
    runtime().block_on(async {
        let mut s = tokio::net::TcpStream::from_info(&record).unwrap();
        // The peer's descriptor is of the same socket: it is non-blocking now too.
        assert_eq!(peer.ok(&format!("nonblock {idx}")), "true");
        peer.ok(&format!("close {idx}"));
        within(s.write_all(b"ping")).await.unwrap();
        let mut buf = [0u8; 4];
        remote.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        remote.write_all(b"pong").unwrap();
        within(s.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(s);
        // Our descriptor was the last: the remote end sees the close.
        assert_eq!(remote.read(&mut buf).unwrap(), 0);
    });
}

#[test]
fn a_tcp_listener_from_a_blocking_peer_accepts_in_tokio() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    warm_up(&mut peer);
    let before = peer.fdcount();
    let answer = peer.ok("tcp-listen");
    let (idx, addr) = answer.split_once(' ').unwrap();
    let record: sockdup::ProtocolInfo = peer.ok(&format!("dup {idx} {}", me())).parse().unwrap();
    peer.ok(&format!("close {idx}"));
    assert_eq!(peer.fdcount(), before, "the peer keeps no descriptor");
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    runtime().block_on(async {
        let l = tokio::net::TcpListener::from_info(&record).unwrap();
        assert_eq!(l.local_addr().unwrap(), addr);
        for round in 0..3u8 {
            let client = tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                c.write_all(&[round]).await.unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b).await.unwrap();
                b[0]
            });
            let (mut s, _) = within(l.accept()).await.unwrap();
            let mut b = [0u8; 1];
            within(s.read_exact(&mut b)).await.unwrap();
            assert_eq!(b[0], round);
            s.write_all(&[round + 100]).await.unwrap();
            assert_eq!(within(client).await.unwrap(), round + 100);
        }
    });
}

#[test]
fn a_udp_socket_from_a_blocking_peer_receives_and_sends() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    let answer = peer.ok("udp-bind");
    let (idx, addr) = answer.split_once(' ').unwrap();
    let record: sockdup::ProtocolInfo = peer.ok(&format!("dup {idx} {}", me())).parse().unwrap();
    peer.ok(&format!("close {idx}"));
    let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    other.set_read_timeout(Some(LONG)).unwrap();
    runtime().block_on(async {
        let u = tokio::net::UdpSocket::from_info(&record).unwrap();
        other.send_to(b"to tokio", addr).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = within(u.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"to tokio");
        assert_eq!(from, other.local_addr().unwrap());
        within(u.send_to(b"from tokio", from)).await.unwrap();
        let (n, _) = other.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"from tokio");
    });
}

#[test]
fn a_unix_stream_from_a_blocking_peer_carries_data_both_ways() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    let answer = peer.ok("unix-pair");
    let (x, y) = answer.split_once(' ').unwrap();
    let record: sockdup::ProtocolInfo = peer.ok(&format!("dup {x} {}", me())).parse().unwrap();
    peer.ok(&format!("close {x}"));
    runtime().block_on(async {
        let mut s = tokio::net::UnixStream::from_info(&record).unwrap();
        within(s.write_all(b"hello peer")).await.unwrap();
        assert_eq!(peer.ok(&format!("read {y}")), "hello peer");
        peer.ok(&format!("write {y} hello tokio"));
        let mut buf = [0u8; 11];
        within(s.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"hello tokio");
        drop(s);
        assert_eq!(peer.ok(&format!("read {y}")), "<eof>");
    });
}

/// Sends `socket` to the peer with the async API, has the peer redeem it and duplicate it back
/// (a blocking program receiving from tokio, then sending to it), closes the peer's copy;
/// returns the record for this process.
async fn round_trip<S: std::os::fd::AsFd>(peer: &mut Peer, socket: &S) -> sockdup::ProtocolInfo {
    let there = within(sockdup::tokio::duplicate_socket(socket, peer.pid))
        .await
        .unwrap();
    let idx = peer.ok(&format!("redeem {there}"));
    let back = peer.ok(&format!("dup {idx} {}", me())).parse().unwrap();
    peer.ok(&format!("close {idx}"));
    back
}

#[test]
fn a_unix_listener_round_trip_through_a_blocking_peer_accepts_in_tokio() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    let dir = TempDir::new("tokio-unix-listener");
    let path = dir.path().join("l.sock");
    runtime().block_on(async {
        let original = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let record = round_trip(&mut peer, &original).await;
        drop(original);
        let l = tokio::net::UnixListener::from_info(&record).unwrap();
        let client = tokio::spawn({
            let path = path.clone();
            async move {
                let mut c = tokio::net::UnixStream::connect(path).await.unwrap();
                c.write_all(b"knock").await.unwrap();
                let mut b = [0u8; 5];
                c.read_exact(&mut b).await.unwrap();
                b
            }
        });
        let (mut s, _) = within(l.accept()).await.unwrap();
        let mut b = [0u8; 5];
        within(s.read_exact(&mut b)).await.unwrap();
        assert_eq!(&b, b"knock");
        s.write_all(b"enter").await.unwrap();
        assert_eq!(&within(client).await.unwrap(), b"enter");
    });
}

#[test]
fn a_unix_datagram_round_trip_through_a_blocking_peer_receives_and_sends() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    runtime().block_on(async {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        b.set_read_timeout(Some(LONG)).unwrap();
        let record = round_trip(&mut peer, &a).await;
        drop(a);
        let d = tokio::net::UnixDatagram::from_info(&record).unwrap();
        b.send(b"one datagram").unwrap();
        let mut buf = [0u8; 64];
        let n = within(d.recv(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"one datagram");
        within(d.send(b"another")).await.unwrap();
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"another");
    });
}

#[test]
fn a_blocking_peer_redeems_a_batch_duplicated_from_tokio() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    warm_up(&mut peer);
    let before = peer.fdcount();
    runtime().block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        // Two tokio sockets (a listener and a connection) in one call, as borrowed descriptors.
        let records = within(sockdup::tokio::duplicate_sockets(
            &[
                std::os::fd::AsFd::as_fd(&l),
                std::os::fd::AsFd::as_fd(&server),
            ],
            peer.pid,
        ))
        .await
        .unwrap();
        assert_eq!(records.len(), 2);
        let idx = peer.ok(&format!("redeem-many {} {}", records[0], records[1]));
        let (pl, ps) = idx.split_once(' ').unwrap();
        drop(server);
        drop(l);
        // The connection lives on in the peer.
        peer.ok(&format!("write {ps} from the peer"));
        let mut buf = [0u8; 13];
        within(client.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"from the peer");
        within(client.write_all(b"to the peer")).await.unwrap();
        assert_eq!(peer_reads(&mut peer, ps), "to the peer");
        // So does the listener: a new connection waits in its queue for the peer.
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = wait_for(LONG, || peer.cmd(&format!("accept {pl}")).ok());
        for i in [pl, ps, accepted.as_str()] {
            peer.ok(&format!("close {i}"));
        }
    });
    assert_eq!(peer.fdcount(), before, "the peer keeps no descriptor");
}

#[test]
fn a_refused_from_info_leaves_the_record_redeemable() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    let answer = peer.ok("udp-bind");
    let (idx, addr) = answer.split_once(' ').unwrap();
    let record: sockdup::ProtocolInfo = peer.ok(&format!("dup {idx} {}", me())).parse().unwrap();
    peer.ok(&format!("close {idx}"));
    let pending = sockdup::pending().unwrap();
    assert!(pending >= 1);
    // Outside a runtime: refused before anything is redeemed.
    let e = tokio::net::UdpSocket::from_info(&record).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    runtime().block_on(async {
        let refusals = [
            tokio::net::TcpStream::from_info(&record).map(drop),
            tokio::net::TcpListener::from_info(&record).map(drop),
            tokio::net::UnixStream::from_info(&record).map(drop),
            tokio::net::UnixListener::from_info(&record).map(drop),
            tokio::net::UnixDatagram::from_info(&record).map(drop),
        ];
        for (r, name) in refusals.into_iter().zip([
            "TcpStream",
            "TcpListener",
            "UnixStream",
            "UnixListener",
            "UnixDatagram",
        ]) {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
            assert_eq!(e.code(), sockdup::error::WSAEINVAL);
            let m = e.to_string();
            assert!(m.contains(name) && m.contains("SOCK_DGRAM"), "{m}");
        }
        // The record is still good, once, for the type that fits.
        let u = tokio::net::UdpSocket::from_info(&record).unwrap();
        assert_eq!(u.local_addr().unwrap().to_string(), addr);
        let e = tokio::net::UdpSocket::from_info(&record).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyRedeemed, "{e}");
    });
}

#[test]
fn a_duplication_waiting_for_a_stopped_target_does_not_block_the_runtime() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    let rt = one_thread();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // The target stops: its inbox cannot answer until it continues.
        peer.signal(rustix::process::Signal::STOP);
        let pid = peer.pid;
        let dup = tokio::spawn({
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            async move { sockdup::tokio::duplicate_socket(&l, pid).await }
        });
        // Meanwhile this runtime's only thread serves a connection round trip.
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"still").await.unwrap();
            let mut b = [0u8; 5];
            c.read_exact(&mut b).await.unwrap();
            b
        });
        let (mut s, _) = within(l.accept()).await.unwrap();
        let mut b = [0u8; 5];
        within(s.read_exact(&mut b)).await.unwrap();
        s.write_all(b"alive").await.unwrap();
        assert_eq!(&within(client).await.unwrap(), b"alive");
        assert!(
            !dup.is_finished(),
            "the duplication finished while its target was stopped"
        );
        peer.signal(rustix::process::Signal::CONT);
        let record = within(dup).await.unwrap().unwrap();
        peer.ok(&format!("redeem {record}"));
    });
}

/// One connection to `addr`, accepted on `web`, two bytes echoed.
async fn echo(web: &tokio::net::TcpListener, addr: std::net::SocketAddr) {
    let client = tokio::spawn(async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).await.unwrap();
        b
    });
    let (mut s, _) = within(web.accept()).await.unwrap();
    let mut b = [0u8; 2];
    within(s.read_exact(&mut b)).await.unwrap();
    s.write_all(&b).await.unwrap();
    assert_eq!(&within(client).await.unwrap(), b"hi");
}

#[test]
fn a_tokio_server_takes_over_from_a_blocking_one_and_hands_over_in_turn() {
    let _g = sockdup::startup().unwrap();
    let dir = TempDir::new("tokio-takeover");
    let pid_file = dir.path().join("server.pid");
    let mut old = Peer::spawn(Some(""));
    let answer = old.ok("tcp-listen");
    let (idx, addr) = answer.split_once(' ').unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    old.ok(&format!("publish {} web={idx}", pid_file.display()));
    let pid_file_names =
        |pid: u32| std::fs::read_to_string(&pid_file).unwrap().trim() == pid.to_string();
    runtime().block_on(async {
        let upgrade = sockdup::upgrade::Upgrade::new(&pid_file);
        let takeover = within(sockdup::tokio::take_over(&upgrade, &["web"]))
            .await
            .unwrap();
        assert_eq!(takeover.old_pid(), old.pid);
        let fd = takeover.listener("web").unwrap();
        let e = sockdup::tokio::unix_listener(fd).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        let web = sockdup::tokio::tcp_listener(fd).unwrap();
        // This process accepts before it completes the takeover.
        echo(&web, addr).await;
        let published =
            std::sync::Arc::new(within(sockdup::tokio::complete(takeover)).await.unwrap());
        assert!(old.ok("wait-handover 10").starts_with(&me().to_string()));
        assert!(pid_file_names(me()));
        echo(&web, addr).await;
        // A successor takes over from this process while it awaits the handover.
        let waiter = tokio::spawn({
            let published = published.clone();
            async move { sockdup::tokio::handed_over(&published).await }
        });
        let mut new = Peer::spawn(Some(""));
        new.ok(&format!("take-over {} web", pid_file.display()));
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "a takeover in progress is not a handover"
        );
        new.ok("complete");
        let handover = within(waiter).await.unwrap().unwrap();
        assert_eq!(handover.pid, new.pid);
        assert_eq!(handover.names, ["web"]);
        assert!(pid_file_names(new.pid));
        // Until it drops its listener, this process still accepts from the shared queue.
        echo(&web, addr).await;
    });
}
