//! Duplicate and redeem between real processes, over real TCP, UDP and Unix sockets.
//!
//! The `peer` helper plays the source, the target and bystanders; the test process plays the
//! remote end of the connections (so it can watch for EOF with a bounded wait).

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use util::{Peer, TempDir, wait_for};

/// A listener in the test process, a connection from `source` to it, and the accepted end.
fn connected(source: &mut Peer) -> (String, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let idx = source.ok(&format!("tcp-connect {}", listener.local_addr().unwrap()));
    let (remote, _) = listener.accept().unwrap();
    remote
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (idx, remote)
}

fn read_some(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Whether the remote end sees EOF now (false if nothing arrives within `wait`).
fn sees_eof(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    let eof = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected data: {:?}", &buf[..n]),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("read failed: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    eof
}

#[test]
fn connected_tcp_carries_data_both_ways_after_the_handoff() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let (c, mut remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    // The source closes before the target redeems: the target already holds the socket.
    source.ok(&format!("close {c}"));
    let t = target.ok(&format!("redeem {record}"));
    target.ok(&format!("write {t} from-target"));
    assert_eq!(read_some(&mut remote), "from-target");
    remote.write_all(b"to-target").unwrap();
    assert_eq!(target.ok(&format!("read {t}")), "to-target");
}

#[test]
fn a_tcp_listener_is_handed_off_and_the_target_accepts() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let out = source.ok("tcp-listen");
    let (l, addr) = out.split_once(' ').unwrap();
    let record = source.ok(&format!("dup {l} {}", target.pid));
    source.ok(&format!("close {l}"));
    let tl = target.ok(&format!("redeem {record}"));
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = target.ok(&format!("accept {tl}"));
    target.ok(&format!("write {conn} accepted-by-target"));
    assert_eq!(read_some(&mut client), "accepted-by-target");
}

#[test]
fn a_udp_socket_is_handed_off() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let remote = UdpSocket::bind("127.0.0.1:0").unwrap();
    remote
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let out = source.ok(&format!("udp-connect {}", remote.local_addr().unwrap()));
    let (u, local) = out.split_once(' ').unwrap();
    let record = source.ok(&format!("dup {u} {}", target.pid));
    let t = target.ok(&format!("redeem {record}"));
    target.ok(&format!("write {t} datagram-from-target"));
    let mut buf = [0u8; 64];
    let (n, from) = remote.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"datagram-from-target");
    assert_eq!(from.to_string(), local);
    remote.send_to(b"datagram-to-target", local).unwrap();
    assert_eq!(target.ok(&format!("read {t}")), "datagram-to-target");
}

#[test]
fn a_unix_stream_is_handed_off() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let out = source.ok("unix-pair");
    let (mine, theirs) = out.split_once(' ').unwrap();
    let record = source.ok(&format!("dup {theirs} {}", target.pid));
    source.ok(&format!("close {theirs}"));
    let t = target.ok(&format!("redeem {record}"));
    target.ok(&format!("write {t} over-unix"));
    assert_eq!(source.ok(&format!("read {mine}")), "over-unix");
    source.ok(&format!("write {mine} back-over-unix"));
    assert_eq!(target.ok(&format!("read {t}")), "back-over-unix");
}

#[test]
fn the_source_may_exit_before_the_target_redeems() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let (c, mut remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    source.exit();
    assert!(
        !sees_eof(&mut remote, Duration::from_millis(200)),
        "the socket must outlive its source"
    );
    let t = target.ok(&format!("redeem {record}"));
    remote.write_all(b"still-here").unwrap();
    assert_eq!(target.ok(&format!("read {t}")), "still-here");
}

#[test]
fn a_record_redeems_once() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let (c, _remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    target.ok(&format!("redeem {record}"));
    let e = target.fails(&format!("redeem {record}"));
    assert_eq!(e.code, 10022);
    assert_eq!(e.kind, "already-redeemed", "{}", e.message);
}

#[test]
fn only_the_target_can_redeem_and_a_failed_attempt_changes_nothing() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let mut third = Peer::spawn(Some(""));
    let (c, mut remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    // The third process also has a duplicate pending, with whatever ticket its inbox gave it:
    // the foreign record must never yield it.
    let (c3, _r3) = connected(&mut source);
    let _pending_in_third = source.ok(&format!("dup {c3} {}", third.pid));
    for (who, p) in [("third", &mut third), ("source", &mut source)] {
        let e = p.fails(&format!("redeem {record}"));
        assert_eq!(e.code, 10022, "{who}");
        assert_eq!(e.kind, "wrong-process", "{who}: {}", e.message);
        // The message names the process the record is for.
        assert!(
            e.message.contains(&target.pid.to_string()),
            "{who}: {}",
            e.message
        );
    }
    let t = target.ok(&format!("redeem {record}"));
    remote.write_all(b"target-got-it").unwrap();
    assert_eq!(target.ok(&format!("read {t}")), "target-got-it");
}

#[test]
fn bad_targets_are_einval_with_a_reason() {
    let mut source = Peer::spawn(Some(""));
    let (c, _remote) = connected(&mut source);

    let e = source.fails(&format!("dup {c} 0"));
    assert_eq!(e.code, 10022);
    assert_eq!(e.kind, "invalid-pid", "{}", e.message);

    // A pid that exists no more: a child we reaped.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let e = source.fails(&format!("dup {c} {gone_pid}"));
    assert_eq!(e.code, 10022);
    assert_eq!(e.kind, "no-such-process", "{}", e.message);

    let mut never_started = Peer::spawn(None);
    let e = source.fails(&format!("dup {c} {}", never_started.pid));
    assert_eq!(e.code, 10022);
    assert_eq!(e.kind, "target-not-started", "{}", e.message);
    never_started.ok("pid");
}

#[test]
fn a_pipe_is_not_a_socket() {
    let mut source = Peer::spawn(Some(""));
    let target = Peer::spawn(Some(""));
    let out = source.ok("pipe");
    let (r, _w) = out.split_once(' ').unwrap();
    let e = source.fails(&format!("dup {r} {}", target.pid));
    assert_eq!(e.code, 10038, "{}", e.message);
    assert_eq!(e.kind, "not-a-socket", "{}", e.message);
}

#[test]
fn malformed_records_are_einval_and_nothing_panics() {
    let mut target = Peer::spawn(Some(""));
    let mut source = Peer::spawn(Some(""));
    let (c, _remote) = connected(&mut source);
    let good = source.ok(&format!("dup {c} {}", target.pid));
    let truncated = &good[..good.len() / 2];
    let oversized = format!("{good}{}", "A".repeat(900));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut bad: Vec<String> = vec![
        truncated.to_owned(),
        oversized,
        "sockdup1:".into(),
        "garbage".into(),
        "sockdup1:!!".into(),
    ];
    for _ in 0..50 {
        let len = (random() % 900) as usize;
        let body: String = (0..len)
            .map(|_| {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                    [(random() % 64) as usize] as char
            })
            .collect();
        bad.push(format!("sockdup1:{body}"));
    }
    for record in &bad {
        let e = target.fails(&format!("redeem {record}"));
        assert_eq!(e.code, 10022, "{record}: {}", e.message);
    }
    // Random raw bytes, decoded in this process: never a panic, only Ok or WSAEINVAL.
    for _ in 0..2000 {
        let bytes: Vec<u8> = (0..628).map(|_| random() as u8).collect();
        if let Err(e) = sockdup::ProtocolInfo::from_bytes(&bytes) {
            assert_eq!(e.code(), 10022);
        }
    }
    // The good record still works after all that.
    target.ok(&format!("redeem {good}"));
}

#[test]
fn options_and_nonblocking_mode_are_shared() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let (c, _remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    let t = target.ok(&format!("redeem {record}"));
    assert_eq!(target.ok(&format!("keepalive {t}")), "false");
    source.ok(&format!("set-keepalive {c}"));
    assert_eq!(target.ok(&format!("keepalive {t}")), "true");
    assert_eq!(source.ok(&format!("nonblock {c}")), "false");
    target.ok(&format!("set-nonblock {t}"));
    assert_eq!(source.ok(&format!("nonblock {c}")), "true");
}

#[test]
fn the_remote_end_sees_eof_only_after_the_last_descriptor_closes() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let (c, mut remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    let t = target.ok(&format!("redeem {record}"));
    source.ok(&format!("close {c}"));
    assert!(!sees_eof(&mut remote, Duration::from_millis(200)));
    target.ok(&format!("close {t}"));
    assert!(sees_eof(&mut remote, Duration::from_secs(10)));
}

#[test]
fn an_unredeemed_duplicate_closes_at_its_ttl() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some("ttl=0.5"));
    let (c, mut remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    source.ok(&format!("close {c}"));
    let start = Instant::now();
    assert!(
        sees_eof(&mut remote, Duration::from_secs(10)),
        "the expired duplicate must be closed"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        start.elapsed()
    );
    let e = target.fails(&format!("redeem {record}"));
    assert_eq!(e.code, 10022);
    assert_eq!(e.kind, "expired", "{}", e.message);
}

#[test]
fn an_unredeemed_duplicate_closes_when_the_target_exits() {
    let mut source = Peer::spawn(Some(""));
    let target = Peer::spawn(Some(""));
    let (c, mut remote) = connected(&mut source);
    source.ok(&format!("dup {c} {}", target.pid));
    source.ok(&format!("close {c}"));
    target.exit();
    assert!(sees_eof(&mut remote, Duration::from_secs(10)));
}

#[test]
fn a_restarted_target_refuses_records_of_its_earlier_run() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let (c, mut remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    source.ok(&format!("close {c}"));
    target.ok("cleanup");
    assert!(
        sees_eof(&mut remote, Duration::from_secs(10)),
        "cleanup closes unredeemed duplicates"
    );
    target.ok("startup");
    let e = target.fails(&format!("redeem {record}"));
    assert_eq!(e.code, 10022);
    assert_eq!(e.kind, "earlier-run", "{}", e.message);
    // The source's kept connection to the old inbox is stale; the next duplicate still works.
    let (c2, mut remote2) = connected(&mut source);
    let record2 = source.ok(&format!("dup {c2} {}", target.pid));
    let t = target.ok(&format!("redeem {record2}"));
    remote2.write_all(b"new-run").unwrap();
    assert_eq!(target.ok(&format!("read {t}")), "new-run");
}

#[test]
fn a_squatter_on_the_targets_inbox_address_is_refused() {
    let mut source = Peer::spawn(Some(""));
    let mut victim = Peer::spawn(None);
    let mut squatter = Peer::spawn(None);
    squatter.ok(&format!("squat {}", victim.pid));
    let (c, _remote) = connected(&mut source);
    let e = source.fails(&format!("dup {c} {}", victim.pid));
    assert_eq!(e.code, 10022);
    assert_eq!(e.kind, "squatter", "{}", e.message);
    // The message names the squatter.
    assert!(
        e.message
            .contains(&format!("held by process {}", squatter.pid)),
        "{}",
        e.message
    );
    // The victim itself cannot start on its squatted address, and says so.
    let e = victim.fails("startup");
    assert_eq!(
        (e.code, e.kind.as_str()),
        (10048, "inbox-address-in-use"),
        "{e:?}"
    );
}

#[test]
fn a_full_inbox_is_enobufs() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some("capacity=2"));
    let (c, _remote) = connected(&mut source);
    source.ok(&format!("dup {c} {}", target.pid));
    let r2 = source.ok(&format!("dup {c} {}", target.pid));
    let e = source.fails(&format!("dup {c} {}", target.pid));
    assert_eq!(e.code, 10055);
    assert_eq!(e.kind, "inbox-full", "{}", e.message);
    // The message names the capacity.
    assert!(e.message.contains("capacity 2"), "{}", e.message);
    target.ok(&format!("redeem {r2}"));
    source.ok(&format!("dup {c} {}", target.pid));
}

#[test]
fn the_targets_policy_refuses_other_users_unless_allowed() {
    if !util::is_root() {
        eprintln!("skipped: starting a peer as another user needs root");
        return;
    }
    const NOBODY: u32 = 65534;
    let mut stranger = Peer::spawn_as(NOBODY, Some(""));
    let strict = Peer::spawn(Some(""));
    let open = Peer::spawn(Some("allow=any"));
    let (c, _remote) = connected(&mut stranger);
    let e = stranger.fails(&format!("dup {c} {}", strict.pid));
    assert_eq!(e.code, 10022);
    assert_eq!(e.kind, "refused-by-target", "{}", e.message);
    // The message names the refused process and its user.
    assert!(
        e.message.contains(&stranger.pid.to_string()),
        "{}",
        e.message
    );
    assert!(e.message.contains("uid 65534"), "{}", e.message);
    stranger.ok(&format!("dup {c} {}", open.pid));
    // Root may push into anyone's inbox by default.
    let mut root_source = Peer::spawn(Some(""));
    let (c2, _remote2) = connected(&mut root_source);
    root_source.ok(&format!("dup {c2} {}", stranger.pid));
}

/// A process of a refused user cannot hold the target's descriptors: each of its connections
/// gets the refusal at the inbox's door and is closed, and the target serves on.
#[test]
fn another_users_connections_are_refused_at_the_door_and_not_kept() {
    if !util::is_root() {
        eprintln!("skipped: starting a peer as another user needs root");
        return;
    }
    let mut target = Peer::spawn(Some(""));
    let mut stranger = Peer::spawn_as(65534, Some(""));
    let before = target.fdcount();
    assert_eq!(
        stranger.ok(&format!("hold-inbox {} 300", target.pid)),
        "300"
    );
    let settled = util::wait_until(Duration::from_secs(10), || {
        let now = target.fdcount();
        (now <= before + 2).then_some(now)
    });
    assert!(settled <= before + 2, "{before} -> {settled}");
    // Its pushes are refused with the policy's reason, as before.
    let (c, _remote) = connected(&mut stranger);
    let e = stranger.fails(&format!("dup {c} {}", target.pid));
    assert_eq!(e.kind, "refused-by-target", "{e:?}");
    assert!(e.message.contains("uid 65534"), "{}", e.message);
    // The same user still gets through.
    let mut source = Peer::spawn(Some(""));
    let (c, mut remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    let fd = target.ok(&format!("redeem {record}"));
    target.ok(&format!("write {fd} still-serving"));
    assert_eq!(read_some(&mut remote), "still-serving");
}

#[test]
fn batches_larger_than_one_message_arrive_whole() {
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let out = source.ok("udp-bind");
    let (u, _) = out.split_once(' ').unwrap();
    let many = vec![u; 300].join(",");
    let records = source.ok(&format!("dup-many {many} {}", target.pid));
    let records: Vec<&str> = records.split(' ').collect();
    assert_eq!(records.len(), 300);
    let before = target.fdcount();
    for r in &records[..150] {
        let t = target.ok(&format!("redeem {r}"));
        target.ok(&format!("close {t}"));
    }
    // The rest at once; a batch with one spent record in it redeems nothing.
    let e = target.fails(&format!("redeem-many {} {}", records[150], records[0]));
    assert_eq!(e.kind, "already-redeemed", "{}", e.message);
    // The message names the spent record's place in the batch.
    assert!(e.message.contains("record 1 of the batch"), "{}", e.message);
    let fds = target.ok(&format!("redeem-many {}", records[150..].join(" ")));
    for t in fds.split(' ') {
        target.ok(&format!("close {t}"));
    }
    assert_eq!(
        target.fdcount(),
        before - 300,
        "the 300 pending duplicates were redeemed and closed"
    );
}

#[test]
fn calls_without_startup_are_not_initialised() {
    let mut loner = Peer::spawn(None);
    let target = Peer::spawn(Some(""));
    let out = loner.ok("udp-bind");
    let (u, _) = out.split_once(' ').unwrap();
    let e = loner.fails(&format!("dup {u} {}", target.pid));
    assert_eq!(e.code, 10093, "{}", e.message);
    assert_eq!(e.kind, "not-started", "{}", e.message);
    let e = loner.fails("redeem sockdup1:AAAA");
    assert_eq!(e.code, 10093, "{}", e.message);
}

#[test]
fn many_sources_at_once() {
    let mut target = Peer::spawn(Some(""));
    let mut sources: Vec<Peer> = (0..4).map(|_| Peer::spawn(Some(""))).collect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut records = Vec::new();
    for s in &mut sources {
        for _ in 0..5 {
            let c = s.ok(&format!("tcp-connect {addr}"));
            records.push(s.ok(&format!("dup {c} {}", target.pid)));
            s.ok(&format!("close {c}"));
        }
    }
    let remotes: Vec<TcpStream> = (0..records.len())
        .map(|_| listener.accept().unwrap().0)
        .collect();
    for r in &records {
        target.ok(&format!("redeem {r}"));
    }
    wait_for(Duration::from_secs(1), || Some(()));
    assert_eq!(remotes.len(), 20);
}

#[test]
fn a_stopped_target_times_out_as_enetdown() {
    let mut source = Peer::spawn(Some("ack=0.3"));
    let mut target = Peer::spawn(Some("ttl=1"));
    let target_before = target.fdcount();
    let (c, _remote) = connected(&mut source);
    source.ok(&format!("dup {c} {}", target.pid));
    let source_before = source.fdcount();
    let pid = rustix::process::Pid::from_raw(target.pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // SIGSTOP takes effect asynchronously: wait until every thread of the target has stopped.
    wait_for(Duration::from_secs(5), || {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", target.pid)).ok()?;
        tasks
            .map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            .all(|stat| {
                stat.is_some_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('T')))
            })
            .then_some(())
    });
    let start = Instant::now();
    let e = source.fails(&format!("dup {c} {}", target.pid));
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    assert_eq!(e.code, 10050, "{}", e.message);
    assert_eq!(e.kind, "peer-timed-out", "{}", e.message);
    assert!(start.elapsed() < Duration::from_secs(5));
    // The source leaks nothing: the connection that timed out is closed.
    assert_eq!(source.fdcount(), source_before - 1, "{}", e.message);
    // Once it runs again, duplicates work again (on a fresh connection).
    source.ok(&format!("dup {c} {}", target.pid));
    // The target took what was queued for it when it stopped; it expires unredeemed (ttl 1 s),
    // as the message says, and nothing stays (once the source, and its connection, are gone).
    drop(source);
    let mut now = 0;
    wait_for(Duration::from_secs(10), || {
        now = target.fdcount();
        (now == target_before).then_some(())
    });
    assert_eq!(now, target_before);
}

#[test]
fn inboxes_can_live_in_a_runtime_directory() {
    let tmp = TempDir::new("runtime-dir");
    let dir = tmp.path();
    let env = [("SOCKDUP_RUNTIME_DIR", dir.to_str().unwrap())];
    let mut source = Peer::spawn_with_env(Some(""), &env);
    let mut target = Peer::spawn_with_env(Some(""), &env);
    let socket_file = dir.join(format!("sockdup-{}.sock", target.pid));
    assert!(socket_file.exists(), "{} missing", socket_file.display());
    let (c, mut remote) = connected(&mut source);
    let record = source.ok(&format!("dup {c} {}", target.pid));
    let t = target.ok(&format!("redeem {record}"));
    remote.write_all(b"via-runtime-dir").unwrap();
    assert_eq!(target.ok(&format!("read {t}")), "via-runtime-dir");
    // A source looking in the abstract namespace does not find it.
    let mut elsewhere = Peer::spawn(Some(""));
    let (c2, _r2) = connected(&mut elsewhere);
    let e = elsewhere.fails(&format!("dup {c2} {}", target.pid));
    assert_eq!(e.kind, "target-not-started", "{}", e.message);
    target.ok("cleanup");
    assert!(!socket_file.exists(), "cleanup removes the socket file");
    // A directory that does not exist is a clear startup error.
    let mut lost = Peer::spawn_with_env(None, &[("SOCKDUP_RUNTIME_DIR", "/nonexistent/sockdup")]);
    let e = lost.fails("startup");
    assert_eq!(e.code, 10022, "{}", e.message);
    assert_eq!(e.kind, "bad-option", "{}", e.message);
    // The message names the directory.
    assert!(e.message.contains("/nonexistent/sockdup"), "{}", e.message);
}

#[test]
fn bad_settings_in_the_environment_are_einval_naming_the_variable() {
    for (var, value) in [
        ("SOCKDUP_TTL", "soon"),
        ("SOCKDUP_CAPACITY", "0"),
        ("SOCKDUP_ALLOW", "everyone"),
    ] {
        let mut p = Peer::spawn_with_env(None, &[(var, value)]);
        let e = p.fails("startup");
        assert_eq!(e.code, 10022);
        assert_eq!(e.kind, "bad-option", "{var}: {}", e.message);
        // The message names the variable.
        assert!(e.message.contains(var), "{}", e.message);
    }
}

#[test]
fn a_malformed_command_is_answered_at_once() {
    let mut peer = Peer::spawn(Some(""));
    let e = peer.fails("frobnicate 1 2");
    assert_eq!(e.kind, "protocol-violation", "{}", e.message);
    let e = peer.fails("dup one 2");
    assert_eq!(e.kind, "invalid-argument", "{}", e.message);
    let e = peer.fails("close");
    assert_eq!(e.kind, "invalid-argument", "{}", e.message);
    // Still in step: the next command works.
    assert_eq!(peer.ok("pid"), peer.pid.to_string());
    // A line longer than the bound is refused before its end arrives; the peer then stops.
    let start = Instant::now();
    let e = peer
        .raw(&vec![b'x'; sockdup_tests::MAX_LINE + 1])
        .unwrap_err();
    assert_eq!(e.kind, "protocol-violation", "{}", e.message);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(peer.exits_within(Duration::from_secs(5)).code(), Some(1));
}
