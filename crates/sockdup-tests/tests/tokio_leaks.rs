//! Descriptors around `sockdup::tokio`, counted in this process (`/proc/self/fd`) and in a
//! peer: one test in its own binary, so no other test opens descriptors meanwhile.

mod util;

use std::time::Duration;

use sockdup::tokio::FromInfo;
use util::{Peer, fd_count, wait_for};

const ROUNDS: usize = 100;

#[test]
fn async_duplications_and_from_info_keep_no_descriptor() {
    let _g = sockdup::startup().unwrap();
    let mut peer = Peer::spawn(Some(""));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let me = std::process::id();
    rt.block_on(async {
        // Warm up: both processes' pool connections to the other's inbox, the blocking pool's
        // threads.
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = sockdup::tokio::duplicate_socket(&u, peer.pid)
            .await
            .unwrap();
        let idx = peer.ok(&format!("redeem {r}"));
        let r = peer.ok(&format!("dup {idx} {me}")).parse().unwrap();
        peer.ok(&format!("close {idx}"));
        drop(tokio::net::UdpSocket::from_info(&r).unwrap());
        drop(u);
        let (mine, theirs) = (fd_count(), peer.fdcount());
        let before = format!("{mine} here, {theirs} in the peer");
        for _ in 0..ROUNDS {
            // This process to the peer: each copy made for the pool thread is closed.
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let r = sockdup::tokio::duplicate_socket(&s, peer.pid)
                .await
                .unwrap();
            drop(s);
            let idx = peer.ok(&format!("redeem {r}"));
            // And back: a refusal holds nothing, the redeemed socket closes with its value.
            let r: sockdup::ProtocolInfo = peer.ok(&format!("dup {idx} {me}")).parse().unwrap();
            peer.ok(&format!("close {idx}"));
            assert!(tokio::net::TcpStream::from_info(&r).is_err());
            drop(tokio::net::UdpSocket::from_info(&r).unwrap());
        }
        // The pool threads end their closures before the futures complete; allow the
        // runtime a moment to drop what it holds, as a failure bound only.
        wait_for(Duration::from_secs(10), || {
            (fd_count() == mine && peer.fdcount() == theirs).then_some(())
        });
        let after = format!("{} here, {} in the peer", fd_count(), peer.fdcount());
        println!("descriptors before {ROUNDS} rounds: {before}; after: {after}");
    });
    assert_eq!(sockdup::pending().unwrap(), 0);
}
