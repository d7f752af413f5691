//! Hostile peers at a process's inbox: a process of the same user that talks to it by hand
//! (bare sockets, not the library) and sends what a source never would, floods it, or holds
//! connections; and peers in another pid namespace. After each attack the target still serves a
//! correct duplicate, and its descriptor count is back where it was.
//!
//! (A process of another user is refused at the door: `another_users_connections_are_refused_at_the_door_and_not_kept`
//! in handoff.rs.)

mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use util::{Peer, TempDir, is_root};

/// A fresh source duplicates a connected TCP socket to `target`, which redeems it and talks
/// over it; everything is closed again afterwards.
#[track_caller]
fn serves_correctly(target: &mut Peer, env: &[(&str, &str)]) {
    let mut source = Peer::spawn_with_env(Some(""), env);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = source.ok(&format!("tcp-connect {}", listener.local_addr().unwrap()));
    let (mut remote, _) = listener.accept().unwrap();
    remote
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let record = source.ok(&format!("dup {c} {}", target.pid));
    source.ok(&format!("close {c}"));
    let t = target.ok(&format!("redeem {record}"));
    target.ok(&format!("write {t} still-serving"));
    let mut buf = [0u8; 64];
    let n = remote.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still-serving");
    remote.write_all(b"ack").unwrap();
    assert_eq!(target.ok(&format!("read {t}")), "ack");
    target.ok(&format!("close {t}"));
}

/// Waits until `target` holds `want` descriptors again (it closes what it refused as the
/// attacker's connections close).
#[track_caller]
fn settles_at(target: &mut Peer, want: usize, after: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = target.fdcount();
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {after}: the target holds {now} descriptors, {want} before"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn malformed_and_unwelcome_messages_are_answered_and_nothing_is_kept() {
    let mut target = Peer::spawn(Some(""));
    let mut attacker = Peer::spawn(None);
    let before = target.fdcount();
    let pid = target.pid;
    // What each attack must be answered with: the inbox says why, keeps nothing, serves on.
    let attacks = [
        ("short", "protocol-violation"),
        ("lying:5:2", "protocol-violation"),
        ("lying:0:3", "protocol-violation"),
        ("lying:253:0", "protocol-violation"),
        ("lying:1:253", "protocol-violation"),
        ("bad-header:253", "protocol-violation"),
        ("bad-header:1", "protocol-violation"),
        ("pipes:1", "not-a-socket"),
        ("pipes:253", "not-a-socket"),
        ("mixed:10", "not-a-socket"),
        ("mixed:253", "not-a-socket"),
        ("long:4097", "protocol-violation"),
        ("long:65536", "protocol-violation"),
        ("random:7:0", "closed"),
        ("random:7:3", "protocol-violation"),
        ("random:7:4096", "protocol-violation"),
    ];
    for (attack, want) in attacks {
        let got = attacker.ok(&format!("attack {pid} {attack}"));
        assert_eq!(got, want, "attack {attack}");
        settles_at(&mut target, before, attack);
    }
    // Random messages of every length up to a little more than the largest request.
    for seed in 1..=300u32 {
        let len = (seed * 37) % 4200 + 1;
        let attack = format!("random:{seed}:{len}");
        let got = attacker.ok(&format!("attack {pid} {attack}"));
        assert!(
            got == "protocol-violation",
            "attack {attack} was answered {got:?}"
        );
    }
    settles_at(&mut target, before, "300 random messages");
    serves_correctly(&mut target, &[]);
    settles_at(&mut target, before, "a correct duplicate after the attacks");
}

#[test]
fn one_process_cannot_fill_the_inbox_nor_hold_its_descriptors() {
    // Capacity 40: one source may have 30 waiting (three quarters), the rest is for others.
    let mut target = Peer::spawn(Some("capacity=40 ttl=3"));
    let mut attacker = Peer::spawn(Some(""));
    let pid = target.pid;
    let before = target.fdcount();
    assert_eq!(attacker.ok(&format!("attack {pid} push:30")), "ok 30");
    assert_eq!(attacker.ok(&format!("attack {pid} push:1")), "inbox-full");
    // Through the library, the same refusal with its reason.
    let out = attacker.ok("udp-bind");
    let (u, _) = out.split_once(' ').unwrap();
    let e = attacker.fails(&format!("dup {u} {pid}"));
    assert_eq!((e.code, e.kind.as_str()), (10055, "inbox-full"), "{e:?}");
    assert!(
        e.message
            .contains(&format!("from process {}", attacker.pid)),
        "{}",
        e.message
    );
    assert!(e.message.contains("at most 30"), "{}", e.message);
    // Another source still gets in.
    serves_correctly(&mut target, &[]);

    // A thousand connections held open by one process: the inbox keeps 16, refuses the rest
    // at the door and closes them.
    let held: usize = attacker
        .ok(&format!("hold-inbox {pid} 1000"))
        .parse()
        .unwrap();
    assert_eq!(held, 1000);
    let mut now = 0;
    let kept = util::wait_until(Duration::from_secs(10), || {
        now = target.fdcount();
        // The 30 pending duplicates and at most 16 held connections.
        (now <= before + 30 + 16).then_some(now)
    });
    assert!(kept <= before + 30 + 16, "{before} -> {now}");
    // A further connection of the same process is refused at the door with the reason. (Its
    // library calls go on through the connection its pool keeps: that one is among the 16.)
    assert_eq!(
        attacker.ok(&format!("attack {pid} push:1")),
        "too-many-connections"
    );
    let e = attacker.fails(&format!("dup {u} {pid}"));
    assert_eq!((e.code, e.kind.as_str()), (10055, "inbox-full"), "{e:?}");
    // Everyone else is served meanwhile.
    serves_correctly(&mut target, &[]);
    drop(attacker);
    // The attacker's connections closed with it, and its duplicates expire (ttl 3 s).
    settles_at(
        &mut target,
        before,
        "the attacker exited and its duplicates expired",
    );
    serves_correctly(&mut target, &[]);
    settles_at(&mut target, before, "a correct duplicate after the attacks");
}

/// A peer in a new pid namespace (`unshare --pid --fork`), with `env`; `None` if this test
/// cannot make one (not root, or no `unshare`).
fn peer_in_new_pid_namespace(env: &[(&str, &str)]) -> Option<Peer> {
    if !is_root() {
        eprintln!("skipped: a new pid namespace needs root");
        return None;
    }
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare --pid --fork` is not available here");
        return None;
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        env!("CARGO_BIN_EXE_peer"),
    ]);
    Some(Peer::spawn_through(cmd, Some(""), env))
}

#[test]
fn across_pid_namespaces_duplicates_are_refused_with_the_reason() {
    let tmp = TempDir::new("pid-namespaces");
    let dir = tmp.path().to_str().unwrap().to_owned();
    let env = [("SOCKDUP_RUNTIME_DIR", dir.as_str())];
    let Some(mut contained) = peer_in_new_pid_namespace(&env) else {
        return;
    };
    // Inside its namespace, the contained target is process 1; its inbox is named so in the
    // shared runtime directory.
    assert_eq!(contained.ok("pid"), "1");
    let before = contained.fdcount();
    let mut host = Peer::spawn_with_env(Some(""), &env);

    // A process of the ancestor namespace pushing by hand: the target sees its pid as 0 and
    // refuses it at the door, saying why (no bare reset).
    assert_eq!(
        host.ok("attack 1 push:1"),
        "other-pid-namespace",
        "a push from an ancestor pid namespace"
    );
    // Through the library: pid 1 here is another process (init), and the inbox named 1
    // belongs to a process of another namespace: refused with the reason, not as a squatter.
    let out = host.ok("udp-bind");
    let (u, _) = out.split_once(' ').unwrap();
    let e = host.fails(&format!("dup {u} 1"));
    assert_eq!(
        (e.code, e.kind.as_str()),
        (10022, "other-pid-namespace"),
        "{e:?}"
    );
    assert!(e.message.contains("another pid namespace"), "{}", e.message);

    // The other way: the contained process cannot see the host's pids at all.
    let host_pid = host.pid;
    let c = contained.ok("udp-bind");
    let (cu, _) = c.split_once(' ').unwrap();
    let e = contained.fails(&format!("dup {cu} {host_pid}"));
    assert!(
        matches!(e.kind.as_str(), "no-such-process" | "other-pid-namespace"),
        "{e:?}"
    );
    contained.ok(&format!("close {cu}"));

    // Nothing of the refused peers is kept, and each side still serves its own namespace.
    settles_at(&mut contained, before, "the refused pushes");
    serves_correctly(&mut host, &env);
}
