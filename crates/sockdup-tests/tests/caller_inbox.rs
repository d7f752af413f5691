//! A target that serves its inbox from its own event loop (`Options::inbox_served_by_caller`,
//! `CallerInbox`): the peer started with `inbox=caller` waits for its next command in a poll
//! loop that serves the inbox meanwhile, on one thread; `inbox=unserved` starts so and never
//! serves it.

mod util;

use std::net::UdpSocket;
use std::time::Duration;

use util::{Peer, fds_of, threads_of, wait_until};

#[test]
fn a_target_serving_its_inbox_from_a_poll_loop_receives_duplicates_on_one_thread() {
    let mut target = Peer::spawn(Some("inbox=caller"));
    let mut source = Peer::spawn(Some(""));
    assert_eq!(
        threads_of(target.pid),
        1,
        "the caller-served target runs an inbox thread"
    );
    let (listener, addr) = {
        let a = source.ok("tcp-listen");
        let (i, addr) = a.split_once(' ').expect("IDX ADDR");
        (i.to_owned(), addr.to_owned())
    };
    // Warm up: the source's kept connection to the target's inbox.
    let r = source.ok(&format!("dup {listener} {}", target.pid));
    let t = target.ok(&format!("redeem {r}"));
    target.ok(&format!("close {t}"));
    let (target_before, source_before) = (target.fdcount(), source.fdcount());
    for round in 0..40 {
        // One at a time, and a batch: each push waits for the answer the target's poll loop
        // sends while it waits for this test's next command.
        let r = source.ok(&format!("dup {listener} {}", target.pid));
        let t = target.ok(&format!("redeem {r}"));
        if round == 0 {
            // The redeemed socket is the source's listener: a client reaches it.
            let accepted = {
                let _client = std::net::TcpStream::connect(&addr).expect("connect");
                target.ok(&format!("accept {t}"))
            };
            target.ok(&format!("close {accepted}"));
        }
        target.ok(&format!("close {t}"));
        let records = source.ok(&format!(
            "dup-many {listener},{listener},{listener} {}",
            target.pid
        ));
        let ts = target.ok(&format!("redeem-many {records}"));
        for t in ts.split_whitespace() {
            target.ok(&format!("close {t}"));
        }
    }
    assert_eq!(target.fdcount(), target_before, "the target's descriptors");
    assert_eq!(source.fdcount(), source_before, "the source's descriptors");
    assert_eq!(threads_of(target.pid), 1, "the target's threads");
    // A record redeems once.
    let r = source.ok(&format!("dup {listener} {}", target.pid));
    let t = target.ok(&format!("redeem {r}"));
    assert_eq!(
        target.fails(&format!("redeem {r}")).kind,
        "already-redeemed"
    );
    target.ok(&format!("close {t}"));
    // The end of the run closes the inbox: a later push finds nobody.
    target.ok("cleanup");
    let e = source.fails(&format!("dup {listener} {}", target.pid));
    assert_eq!(e.kind, "target-not-started", "{e:?}");
}

#[test]
fn unredeemed_duplicates_expire_while_the_caller_waits_for_readiness() {
    let mut target = Peer::spawn(Some("inbox=caller ttl=0.5"));
    let mut source = Peer::spawn(Some(""));
    let udp = source.ok("udp-bind");
    let idx = udp.split_whitespace().next().expect("IDX").to_owned();
    // Warm up the source's connection, then count the target's descriptors from outside.
    let r = source.ok(&format!("dup {idx} {}", target.pid));
    let t = target.ok(&format!("redeem {r}"));
    target.ok(&format!("close {t}"));
    let idle = wait_until(Duration::from_secs(5), || {
        let a = fds_of(target.pid);
        std::thread::sleep(Duration::from_millis(50));
        (fds_of(target.pid) == a).then_some(a)
    });
    let records: Vec<String> = (0..3)
        .map(|_| source.ok(&format!("dup {idx} {}", target.pid)))
        .collect();
    assert_eq!(
        fds_of(target.pid),
        idle + 3,
        "the three duplicates wait in the target's table"
    );
    // No command comes: only the loop's timeout (the next expiry) wakes the target, which
    // closes them.
    wait_until(Duration::from_secs(10), || {
        (fds_of(target.pid) == idle).then_some(())
    });
    for r in &records {
        assert_eq!(target.fails(&format!("redeem {r}")).kind, "expired");
    }
    assert_eq!(fds_of(target.pid), idle);
}

#[test]
fn a_target_that_never_serves_its_inbox_makes_the_source_time_out_without_a_leak() {
    let mut target = Peer::spawn(Some("inbox=unserved"));
    let mut source = Peer::spawn(Some("ack=0.3"));
    assert_eq!(threads_of(target.pid), 1, "the target runs an inbox thread");
    // A bound UDP socket: while any copy of it lives (the source's, or one in flight to the
    // target), its port cannot be bound again.
    let udp = source.ok("udp-bind");
    let (idx, addr) = udp.split_once(' ').expect("IDX ADDR");
    let (idx, addr) = (idx.to_owned(), addr.to_owned());
    let (source_before, target_before) = (source.fdcount(), target.fdcount());
    let e = source.fails(&format!("dup {idx} {}", target.pid));
    assert_eq!(e.kind, "peer-timed-out", "{e:?}");
    assert_eq!(source.fdcount(), source_before, "the source's descriptors");
    assert_eq!(target.fdcount(), target_before, "the target's descriptors");
    // The copy in flight is the unserved inbox's until its run ends: then nothing holds the
    // socket once the source closes its own.
    source.ok(&format!("close {idx}"));
    target.ok("cleanup");
    wait_until(Duration::from_secs(5), || UdpSocket::bind(&addr).ok());
}
