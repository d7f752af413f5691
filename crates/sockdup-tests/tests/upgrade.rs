//! Zero-downtime restarts between real processes: a `peer` publishes listeners, other peers
//! take them over by pid file; what a refused or failed takeover leaves behind.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::Peer;

/// The bound of a takeover line (`sockdup_core::line::MAX_LINE`).
const MAX_LINE: usize = 64 * 1024;

/// A fresh directory for one test's pid file.
fn pid_file(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockdup-upgrade-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("server.pid")
}

fn pid_in(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A peer serving `names` (each a TCP listener on loopback), published at `pid_file`.
/// Returns the peer and `(name, idx, address)` of each listener.
fn server(pid_file: &Path, names: &[&str], opts: &str) -> (Peer, Vec<(String, String, String)>) {
    let mut p = Peer::spawn(Some(""));
    let mut listeners = Vec::new();
    for name in names {
        let out = p.ok("tcp-listen");
        let (idx, addr) = out.split_once(' ').unwrap();
        listeners.push((name.to_string(), idx.to_owned(), addr.to_owned()));
    }
    let spec: Vec<String> = listeners
        .iter()
        .map(|(n, i, _)| format!("{n}={i}"))
        .collect();
    p.ok(&format!(
        "publish {} {opts} {}",
        pid_file.display(),
        spec.join(" ")
    ));
    (p, listeners)
}

/// Connects to `addr`, lets `peer` accept on listener `idx`, and checks bytes flow.
fn served_by(peer: &mut Peer, idx: &str, addr: &str) {
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = peer.ok(&format!("accept {idx}"));
    peer.ok(&format!("write {conn} hi-from-{}", peer.pid));
    let mut buf = [0u8; 64];
    let n = client.read(&mut buf).unwrap();
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        format!("hi-from-{}", peer.pid)
    );
    client.write_all(b"x").unwrap();
    peer.ok(&format!("close {conn}"));
}

/// `NAME=IDX ...` as a lookup.
fn idx_of<'a>(answer: &'a str, name: &str) -> &'a str {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{name} not in {answer:?}"))
}

/// The old process still serves: pid file, no handover, and it accepts on `listener`.
fn untouched(old: &mut Peer, pid_file: &Path, listener: &(String, String, String)) {
    assert_eq!(
        pid_in(pid_file),
        old.pid,
        "the pid file still names the old process"
    );
    assert_eq!(old.ok("handed-over"), "none");
    served_by(old, &listener.1, &listener.2);
}

#[test]
fn a_new_process_takes_over_by_name_and_the_old_one_keeps_the_rest() {
    let pf = pid_file("basic");
    let (mut old, ls) = server(&pf, &["web", "admin"], "");
    let mut new = Peer::spawn(Some(""));
    let got = new.ok(&format!("take-over {} web", pf.display()));
    let web = idx_of(&got, "web").to_owned();
    // Both accept from the same queue now: the new one already serves.
    served_by(&mut new, &web, &ls[0].2);
    served_by(&mut old, &ls[0].1, &ls[0].2);
    assert_eq!(old.ok("handed-over"), "none", "not before complete");
    new.ok("complete");
    assert_eq!(old.ok("wait-handover 5"), format!("{} web", new.pid));
    assert_eq!(pid_in(&pf), new.pid, "the pid file names the new process");
    // The listener it did not ask for stays with the old process.
    served_by(&mut old, &ls[1].1, &ls[1].2);
    // The old one drops out; the new one serves alone and can hand over in turn.
    old.ok("unpublish");
    old.ok(&format!("close {}", ls[0].1));
    assert_eq!(
        pid_in(&pf),
        new.pid,
        "an old process leaving after a handover keeps the new pid"
    );
    served_by(&mut new, &web, &ls[0].2);
    let mut third = Peer::spawn(Some(""));
    let got = third.ok(&format!("take-over {} web", pf.display()));
    third.ok("complete");
    assert_eq!(new.ok("wait-handover 5"), format!("{} web", third.pid));
    served_by(&mut third, idx_of(&got, "web"), &ls[0].2);
    // The handed-over server refuses further takeovers, naming its successor.
    let mut late = Peer::spawn(Some(""));
    std::fs::write(&pf, format!("{}\n", new.pid)).unwrap();
    let e = late.fails(&format!("take-over {} web", pf.display()));
    assert_eq!(e.kind, "already-handed-over", "{e:?}");
    assert_eq!(e.code, 10022);
    assert!(
        e.message.contains(&format!("process {}", third.pid)),
        "{}",
        e.message
    );
}

#[test]
fn unknown_names_bad_names_and_bad_pid_files_are_refused_and_change_nothing() {
    let pf = pid_file("refusals");
    let (mut old, ls) = server(&pf, &["web"], "");
    let mut new = Peer::spawn(Some(""));
    let e = new.fails(&format!("take-over {} web api", pf.display()));
    assert_eq!(e.kind, "unknown-listener", "{e:?}");
    assert_eq!(e.code, 10022);
    // The old process's refusal lists what it has.
    assert!(e.message.contains("it has web"), "{}", e.message);
    let e = new.fails(&format!("take-over {} web web", pf.display()));
    assert_eq!(e.kind, "bad-listener-name", "{e:?}");
    let e = new.fails(&format!("take-over {} a:b", pf.display()));
    assert_eq!(e.kind, "bad-listener-name", "{e:?}");
    untouched(&mut old, &pf, &ls[0]);

    // No pid file, a stale one, garbage, one naming a process that is not a sockdup server.
    let dir = pf.parent().unwrap();
    let missing = dir.join("missing.pid");
    let e = new.fails(&format!("take-over {} web", missing.display()));
    assert_eq!(e.kind, "no-pid-file", "{e:?}");
    assert_eq!(e.code, 10022);
    let stale = dir.join("stale.pid");
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(&stale, format!("{gone_pid}\n")).unwrap();
    let e = new.fails(&format!("take-over {} web", stale.display()));
    assert_eq!(e.kind, "stale-pid-file", "{e:?}");
    assert_eq!(e.code, 10022);
    assert!(e.message.contains("not running"), "{}", e.message);
    let garbage = dir.join("garbage.pid");
    std::fs::write(&garbage, "hello\n").unwrap();
    let e = new.fails(&format!("take-over {} web", garbage.display()));
    assert_eq!(e.kind, "stale-pid-file", "{e:?}");
    assert!(e.message.contains("does not hold a pid"), "{}", e.message);
    let stranger = dir.join("stranger.pid");
    std::fs::write(&stranger, format!("{}\n", std::process::id())).unwrap();
    let e = new.fails(&format!("take-over {} web", stranger.display()));
    assert_eq!(e.kind, "not-a-server", "{e:?}");
    assert_eq!(e.code, 10022);
    // Taking over from oneself.
    let e = old.fails(&format!("take-over {} web", pf.display()));
    assert_eq!(e.kind, "stale-pid-file", "{e:?}");
    assert!(e.message.contains("from itself"), "{}", e.message);
    untouched(&mut old, &pf, &ls[0]);
    // A second server publishing beside a running one.
    let mut rival = Peer::spawn(Some(""));
    let l = rival.ok("tcp-listen");
    let e = rival.fails(&format!(
        "publish {} web={}",
        pf.display(),
        l.split(' ').next().unwrap()
    ));
    assert_eq!(e.kind, "server-running", "{e:?}");
    assert_eq!(e.code, 10048);
    untouched(&mut old, &pf, &ls[0]);
}

#[test]
fn one_takeover_at_a_time_and_an_abort_leaves_the_old_one_serving() {
    let pf = pid_file("concurrent");
    let (mut old, ls) = server(&pf, &["web"], "");
    let mut first = Peer::spawn(Some(""));
    let mut second = Peer::spawn(Some(""));
    first.ok(&format!("take-over {} web", pf.display()));
    let e = second.fails(&format!("take-over {} web", pf.display()));
    assert_eq!(e.kind, "takeover-in-progress", "{e:?}");
    assert_eq!(e.code, 10036, "{}", e.message);
    assert!(
        e.message.contains(&format!("process {}", first.pid)),
        "{}",
        e.message
    );
    first.ok("abort");
    untouched(&mut old, &pf, &ls[0]);
    // Dropping an unfinished takeover aborts it too.
    second.ok(&format!("take-over {} web", pf.display()));
    second.ok("drop-takeover");
    untouched(&mut old, &pf, &ls[0]);
    // And then a takeover completes.
    let got = first.ok(&format!("take-over {} web", pf.display()));
    first.ok("complete");
    assert_eq!(old.ok("wait-handover 5"), format!("{} web", first.pid));
    served_by(&mut first, idx_of(&got, "web"), &ls[0].2);
}

#[test]
fn a_new_process_that_dies_before_redeeming_or_never_gets_ready_leaves_the_old_one_serving() {
    let pf = pid_file("crash");
    let (mut old, ls) = server(&pf, &["web"], "timeout=1");
    let mut crasher = Peer::spawn(Some(""));
    // The old process duplicated the listener for it; it dies holding only the record.
    let status = crasher.crashes(&format!("take-and-crash {} web", pf.display()));
    assert!(!status.success(), "{status}");
    let mut next = Peer::spawn(Some(""));
    let got = util::wait_for(Duration::from_secs(5), || {
        next.cmd(&format!("take-over {} web", pf.display())).ok()
    });
    next.ok("abort");
    drop(got);
    untouched(&mut old, &pf, &ls[0]);
    // A new process that takes over and then hangs: the old one gives up after its timeout.
    let mut hung = Peer::spawn(Some(""));
    hung.ok(&format!("take-over {} web", pf.display()));
    let mut after = Peer::spawn(Some(""));
    let got = util::wait_for(Duration::from_secs(5), || {
        after.cmd(&format!("take-over {} web", pf.display())).ok()
    });
    after.ok("complete");
    assert_eq!(old.ok("wait-handover 5"), format!("{} web", after.pid));
    served_by(&mut after, idx_of(&got, "web"), &ls[0].2);
    // The hung process's own completion is now refused.
    let e = hung.fails("complete");
    assert_eq!((e.kind.as_str(), e.code), ("peer-closed", 10050), "{e:?}");
}

#[test]
fn takeovers_leak_no_descriptor_in_either_process() {
    let pf = pid_file("leaks");
    let (mut old, ls) = server(&pf, &["a", "b", "c"], "");
    let mut new = Peer::spawn(Some(""));
    let cycle = |new: &mut Peer| {
        let got = new.ok(&format!("take-over {} a b c", pf.display()));
        new.ok("abort");
        // The peer's own copies, made to accept on, are the test's to close.
        for name in ["a", "b", "c"] {
            new.ok(&format!("close {}", idx_of(&got, name)));
        }
    };
    let (old_before, new_before) = (old.fdcount(), new.fdcount());
    // Inherited from whoever ran the tests, if anything: the baseline.
    let inherited = old.ok("cloexec");
    for _ in 0..50 {
        cycle(&mut new);
    }
    // What stays open by design: the old process's kept connection to the new one's inbox,
    // and its accepted end there (one per pair of processes, for later duplicates).
    assert_eq!(
        new.fdcount(),
        new_before + 1,
        "the new process: aborted takeovers close their descriptors"
    );
    // The old process's session threads end on their own after the abort.
    util::wait_for(Duration::from_secs(5), || {
        (old.fdcount() == old_before + 1).then_some(())
    });
    assert_eq!(
        old.ok("cloexec"),
        inherited,
        "every new descriptor is close-on-exec"
    );
    untouched(&mut old, &pf, &ls[0]);
}

#[test]
fn an_old_process_that_exits_mid_takeover_leaves_the_new_one_serving() {
    let pf = pid_file("old-exits");
    let (old, ls) = server(&pf, &["web"], "");
    let mut new = Peer::spawn(Some(""));
    let got = new.ok(&format!("take-over {} web", pf.display()));
    // Stopped by a signal, say, between offering and hearing `ready`.
    old.exit();
    new.ok("complete");
    assert_eq!(
        pid_in(&pf),
        new.pid,
        "the new process names itself in the pid file"
    );
    served_by(&mut new, idx_of(&got, "web"), &ls[0].2);
    // And it answers the next takeover.
    let mut next = Peer::spawn(Some(""));
    next.ok(&format!("take-over {} web", pf.display()));
    next.ok("complete");
    assert_eq!(new.ok("wait-handover 5"), format!("{} web", next.pid));
}

/// Where process `pid` answers takeovers, as the library computes it, for speaking the protocol
/// by hand.
fn control_addr(pid: u32) -> std::os::unix::net::SocketAddr {
    use std::os::linux::net::SocketAddrExt;
    let dir = std::env::var_os("SOCKDUP_RUNTIME_DIR").map(PathBuf::from);
    match sockdup::upgrade::control_address(pid, dir.as_deref()) {
        sockdup::InboxAddress::Abstract(name) => {
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        }
        sockdup::InboxAddress::Path(path) => {
            std::os::unix::net::SocketAddr::from_pathname(path).unwrap()
        }
    }
}

/// Reads one line (without its `\n`) from `stream`, as bytes arrive.
fn read_line_from(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn a_garbage_line_to_a_publishing_server_is_answered_at_once_and_it_serves_on() {
    let pf = pid_file("garbage-to-old");
    // The default step timeout (10 s): an answer well within it is not the timeout's.
    let (mut old, ls) = server(&pf, &["web"], "");
    let oversized = "x".repeat(MAX_LINE + 100);
    let cases: [(&[u8], &str); 6] = [
        (b"hello\n", "not a line of the sockdup takeover protocol"),
        (b"take 2 web\n", "version"),
        (b"ready\n", "starts with `take`"),
        (b"take 1 web\xff\n", "not UTF-8"),
        (oversized.as_bytes(), "longer than 65536 bytes"),
        (b"take 1 a:b\n", "listener name"),
    ];
    for (garbage, problem) in cases {
        let mut conn = UnixStream::connect_addr(&control_addr(old.pid)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let start = Instant::now();
        // The server may stop reading (and close) before the last bytes of an oversized line:
        // its answer is what counts.
        let _ = conn.write_all(garbage);
        let answer = read_line_from(&mut conn);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "answered after {:?}, not at once",
            start.elapsed()
        );
        let kind = if problem == "listener name" {
            "bad-listener-name"
        } else {
            "protocol-violation"
        };
        let mut words = answer.splitn(4, ' ');
        assert_eq!(words.next(), Some("error"), "{answer:?}");
        let code = words.next().unwrap();
        assert_eq!(words.next(), Some(kind), "{answer:?}");
        let expected = sockdup::ErrorKind::from_name(kind).unwrap().code();
        assert_eq!(Some(code.parse().unwrap()), expected, "{answer:?}");
        assert!(words.next().unwrap().contains(problem), "{answer:?}");
        // And the session ends (a reset if the server left bytes of the line unread).
        let end = conn.read(&mut [0u8; 1]);
        assert!(
            matches!(end, Ok(0))
                || end.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the session closes after a refusal"
        );
    }
    untouched(&mut old, &pf, &ls[0]);
    // A proper takeover still completes.
    let mut new = Peer::spawn(Some(""));
    let got = new.ok(&format!("take-over {} web", pf.display()));
    new.ok("complete");
    assert_eq!(old.ok("wait-handover 5"), format!("{} web", new.pid));
    served_by(&mut new, idx_of(&got, "web"), &ls[0].2);
}

#[test]
fn a_new_process_aborts_at_once_when_the_old_one_breaks_the_protocol() {
    // This test process plays the old server by hand: its own pid in the pid file, its own
    // control address, and a broken answer to `take`.
    let pf = pid_file("garbage-to-new");
    std::fs::write(&pf, format!("{}\n", std::process::id())).unwrap();
    let listener = UnixListener::bind_addr(&control_addr(std::process::id())).unwrap();
    let not_a_record = "listener web sockdup1:!!!!\n".to_owned();
    let oversized = "y".repeat(MAX_LINE + 100);
    let mut new = Peer::spawn(Some(""));
    for (answer, problem) in [
        (
            "offered later\n",
            "not a line of the sockdup takeover protocol",
        ),
        ("listener api sockdup1:AAAA\n", "listener api"),
        (not_a_record.as_str(), "does not parse"),
        (oversized.as_str(), "longer than 65536 bytes"),
    ] {
        let answer = answer.to_owned();
        let old = std::thread::spawn({
            let listener = listener.try_clone().unwrap();
            move || {
                let (mut conn, _) = listener.accept().unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                assert_eq!(read_line_from(&mut conn), "take 1 web");
                // The new process may stop reading an oversized line before its end.
                let _ = conn.write_all(answer.as_bytes());
                read_line_from(&mut conn)
            }
        });
        let start = Instant::now();
        let e = new.fails(&format!("take-over {} web", pf.display()));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "gave up after {:?}, not at once",
            start.elapsed()
        );
        assert_eq!(e.kind, "protocol-violation", "{e:?}");
        assert!(e.message.contains(problem), "{problem}: {e:?}");
        assert_eq!(
            old.join().unwrap(),
            "abort",
            "the new process tells the old one"
        );
    }
}

#[test]
fn only_the_same_user_or_root_may_take_over() {
    if !util::is_root() {
        eprintln!("skipped: starting a peer as another user needs root");
        return;
    }
    const NOBODY: u32 = 65534;
    let pf = pid_file("other-user");
    // The directory and pid file must be readable by the other user.
    let (mut old, ls) = server(&pf, &["web"], "");
    let mut stranger = Peer::spawn_as(NOBODY, Some(""));
    let e = stranger.fails(&format!("take-over {} web", pf.display()));
    assert_eq!(e.kind, "takeover-not-permitted", "{e:?}");
    assert_eq!(e.code, 10013);
    assert!(e.message.contains("uid 65534"), "{}", e.message);
    untouched(&mut old, &pf, &ls[0]);
}
