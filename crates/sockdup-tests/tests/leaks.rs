//! Descriptor hygiene: nothing leaks over many cycles, and everything sockdup creates is
//! close-on-exec. One test in this file, so no other test's descriptors come and go meanwhile.

mod util;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};

use util::{Peer, fd_count};

/// Descriptors above 2 in this process that are not close-on-exec.
fn inheritable() -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let n: i32 = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .parse()
            .unwrap();
        if n <= 2 {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap()
            .trim()
            .to_owned();
        if u32::from_str_radix(&flags, 8).unwrap() & 0o2000000 == 0 {
            out.insert(n);
        }
    }
    out
}

#[test]
fn no_descriptor_leaks_and_every_descriptor_is_cloexec() {
    const CYCLES: usize = 10_000;
    let inheritable_before = inheritable();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut target = Peer::spawn(Some(""));
    let target_inheritable_before = target.ok("cloexec");

    // Warm up: the first cycle opens the inbox, its thread and the kept connection.
    let guard = sockdup::startup().unwrap();
    let r = sockdup::duplicate_socket(&sock, std::process::id()).unwrap();
    drop(sockdup::socket_from_info(&r).unwrap());
    let r = sockdup::duplicate_socket(&sock, target.pid).unwrap();
    let t = target.ok(&format!("redeem {r}"));
    target.ok(&format!("close {t}"));

    let ours = fd_count();
    let theirs = target.fdcount();

    // Within this process: duplicate to ourselves, redeem, and keep the descriptor for a moment
    // to check its flags.
    for i in 0..CYCLES {
        let record = sockdup::duplicate_socket(&sock, std::process::id()).unwrap();
        let fd: OwnedFd = sockdup::socket_from_info(&record).unwrap();
        if i % 1000 == 0 {
            assert!(
                sockdup::is_cloexec(&fd).unwrap(),
                "redeemed descriptor {} is inheritable",
                fd.as_raw_fd()
            );
        }
    }
    assert_eq!(
        fd_count(),
        ours,
        "descriptors leaked in this process after {CYCLES} local cycles"
    );

    // Across processes: duplicate to the target; it redeems and closes.
    for _ in 0..CYCLES {
        let record = sockdup::duplicate_socket(&sock, target.pid).unwrap();
        let t = target.ok(&format!("redeem {record}"));
        target.ok(&format!("close {t}"));
    }
    assert_eq!(
        fd_count(),
        ours,
        "descriptors leaked in the source after {CYCLES} cycles"
    );
    assert_eq!(
        target.fdcount(),
        theirs,
        "descriptors leaked in the target after {CYCLES} cycles"
    );

    // Everything sockdup opened (inbox, epoll, eventfd, connections, received descriptors) is
    // close-on-exec, here and in the target while it holds a redeemed descriptor.
    let r = sockdup::duplicate_socket(&sock, target.pid).unwrap();
    let held = target.ok(&format!("redeem {r}"));
    assert_eq!(
        inheritable(),
        inheritable_before,
        "sockdup created inheritable descriptors here"
    );
    assert_eq!(
        target.ok("cloexec"),
        target_inheritable_before,
        "sockdup created inheritable descriptors in the target"
    );
    target.ok(&format!("close {held}"));

    // Unredeemed duplicates are closed when the inbox stops.
    for _ in 0..100 {
        sockdup::duplicate_socket(&sock, std::process::id()).unwrap();
    }
    assert_eq!(sockdup::pending().unwrap(), 100);
    assert_eq!(fd_count(), ours + 100);
    drop(guard);
    assert!(
        fd_count() < ours,
        "stopping sockdup closes its inbox and the pending duplicates"
    );
}
