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
        (b"take 3 web\n", "version"),
        (b"ready\n", "starts with `take`"),
        (b"take 2 web\xff\n", "not UTF-8"),
        (oversized.as_bytes(), "longer than 65536 bytes"),
        (b"take 2 a:b\n", "listener name"),
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
    let not_a_record = "listeners 1 sockdup1:!!!!\n".to_owned();
    let oversized = "y".repeat(MAX_LINE + 100);
    let mut new = Peer::spawn(Some(""));
    for (answer, problem) in [
        (
            "offered later\n",
            "not a line of the sockdup takeover protocol",
        ),
        // Records for more listeners than were asked for.
        ("listeners 2 sockdup1:AAAA\n", "listeners 2"),
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
                assert_eq!(read_line_from(&mut conn), "take 2 web");
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

// ---------------------------------------------------------------------------------------------
// Hostile peers on a publishing server's control socket. Each attack ends with the same checks:
// the server's descriptors are back where they were, it still publishes and serves, and a real
// takeover succeeds.

/// The most control connections a server lets wait for their `take` line
/// (`sockdup::upgrade`'s `MAX_WAITING`).
const MAX_WAITING: usize = 32;

/// A publishing server under attack, and a peer that takes over from it for real.
struct Besieged {
    pf: PathBuf,
    old: Peer,
    listeners: Vec<(String, String, String)>,
    new: Peer,
    /// The server's descriptors with nothing going on: its own, plus its kept connection to
    /// `new`'s inbox (made by a first takeover, for later duplicates).
    baseline: usize,
}

impl Besieged {
    fn new(test: &str, opts: &str) -> Self {
        let pf = pid_file(test);
        let (mut old, listeners) = server(&pf, &["web"], opts);
        let before = old.fdcount();
        let mut new = Peer::spawn(Some(""));
        let mut b = Self {
            pf,
            old,
            listeners,
            new: Peer::spawn(Some("")),
            baseline: before + 1,
        };
        std::mem::swap(&mut b.new, &mut new);
        b.take_over_and_abort();
        b.settled("after a first takeover");
        b
    }

    /// A real takeover by `new`, given up (the server keeps serving).
    fn take_over_and_abort(&mut self) {
        let got = self.new.ok(&format!("take-over {} web", self.pf.display()));
        self.new.ok("abort");
        self.new.ok(&format!("close {}", idx_of(&got, "web")));
    }

    /// Waits until the server's descriptors are back at the baseline.
    #[track_caller]
    fn settled(&mut self, when: &str) {
        let start = Instant::now();
        loop {
            let now = self.old.fdcount();
            if now == self.baseline {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{when}: the server holds {now} descriptors, not {} as before",
                self.baseline
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The checks after an attack: descriptors back, still publishing and serving, a real
    /// takeover succeeds (given up, and then one completes).
    #[track_caller]
    fn survived(mut self, attack: &str) {
        self.settled(&format!("after {attack}"));
        untouched(&mut self.old, &self.pf, &self.listeners[0]);
        self.take_over_and_abort();
        self.settled(&format!("after {attack} and a takeover"));
        let got = self.new.ok(&format!("take-over {} web", self.pf.display()));
        self.new.ok("complete");
        assert_eq!(
            self.old.ok("wait-handover 5"),
            format!("{} web", self.new.pid),
            "after {attack}"
        );
        served_by(&mut self.new, idx_of(&got, "web"), &self.listeners[0].2);
    }

    fn connect(&self) -> UnixStream {
        let conn = UnixStream::connect_addr(&control_addr(self.old.pid)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        conn
    }
}

/// Reads one line (without its `\n`) from `stream` as bytes arrive; what came before the end
/// or a reset if the line is cut short.
fn answer_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while let Ok(1) = stream.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Checks `answer` is `error CODE KIND MESSAGE` of a kind in `kinds` with its own code, and
/// returns the kind and the message.
#[track_caller]
fn refusal(answer: &str, kinds: &[&str]) -> (String, String) {
    let mut words = answer.splitn(4, ' ');
    assert_eq!(words.next(), Some("error"), "{answer:?}");
    let code: i32 = words.next().unwrap_or("").parse().expect(answer);
    let kind = words.next().unwrap_or("").to_owned();
    assert!(
        kinds.contains(&kind.as_str()),
        "{kind} not in {kinds:?}: {answer:?}"
    );
    let known = sockdup::ErrorKind::from_name(&kind).expect(answer);
    assert_eq!(known.code(), Some(code), "{answer:?}");
    (kind, words.next().unwrap_or("").to_owned())
}

/// The server closed `conn` (an end of input, or a reset if it left bytes unread).
#[track_caller]
fn closed(conn: &mut UnixStream, what: &str) {
    let end = conn.read(&mut [0u8; 1]);
    assert!(
        matches!(end, Ok(0)) || end.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{what}: the server keeps the connection after refusing it"
    );
}

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_to_a_control_socket_are_refused_at_once_and_leave_nothing() {
    let b = Besieged::new("random-bytes", "");
    let mut rng = Rng(0x5eed_0000_0000_0010);
    for round in 0..60 {
        let mut conn = b.connect();
        let len = 1 + (rng.next() % 4096) as usize;
        let mut bytes = rng.bytes(len);
        if round % 3 == 2 {
            // No line at all: the attacker leaves; nothing to answer.
            bytes.retain(|&c| c != b'\n');
            conn.write_all(&bytes).unwrap();
            drop(conn);
            continue;
        }
        bytes.push(b'\n');
        let _ = conn.write_all(&bytes);
        let answer = answer_line(&mut conn);
        // Random text is not a line of the protocol, is not UTF-8, or (rarely) is a line too
        // long; a `take` it happened to spell would name bad listeners.
        refusal(
            &answer,
            &[
                "protocol-violation",
                "bad-listener-name",
                "unknown-listener",
            ],
        );
        closed(&mut conn, &format!("round {round}"));
    }
    b.survived("random bytes on 60 connections");
}

#[test]
fn lying_takeover_lines_are_refused_with_the_reason_and_change_nothing() {
    let b = Besieged::new("lies", "");
    let many = (0..2000)
        .map(|i| format!("n{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let long_name = "n".repeat(300);
    let cases: Vec<(String, &str, &str)> = vec![
        // Names the server does not have, given twice, none, or not names.
        ("take 2 web api".into(), "unknown-listener", "it has web"),
        ("take 2 web web".into(), "bad-listener-name", "twice"),
        ("take 2".into(), "unknown-listener", "at least one"),
        ("take 2 web ".into(), "bad-listener-name", "1 to 255"),
        (
            format!("take 2 {many}"),
            "unknown-listener",
            "no listener named",
        ),
        (
            format!("take 2 {long_name}"),
            "bad-listener-name",
            "1 to 255",
        ),
        // Versions that do not exist.
        ("take 3 web".into(), "protocol-violation", "version"),
        (
            "take 18446744073709551616 web".into(),
            "protocol-violation",
            "version",
        ),
        ("take -1 web".into(), "protocol-violation", "version"),
        // Steps out of order, and the old process's own lines sent to it.
        ("ready".into(), "protocol-violation", "starts with `take`"),
        ("abort".into(), "protocol-violation", "starts with `take`"),
        ("ready now".into(), "protocol-violation", "not a line"),
        (
            "listeners 1 sockdup1:AAAA".into(),
            "protocol-violation",
            "not a line",
        ),
        ("offered".into(), "protocol-violation", "not a line"),
        ("done".into(), "protocol-violation", "not a line"),
        (
            "error 10022 bad-option believe me".into(),
            "protocol-violation",
            "not a line",
        ),
        // A well-formed `take` from a process that cannot receive descriptors (this test
        // process never started sockdup): the offer fails and is withdrawn.
        ("take 2 web".into(), "target-not-started", ""),
    ];
    for (line, kind, problem) in &cases {
        let mut conn = b.connect();
        let _ = conn.write_all(format!("{line}\n").as_bytes());
        let answer = answer_line(&mut conn);
        let shown: String = line.chars().take(40).collect();
        let (_, message) = refusal(&answer, &[kind]);
        assert!(message.contains(problem), "{shown:?}: {answer:?}");
        closed(&mut conn, &shown);
    }
    b.survived("lying takeover lines");
}

#[test]
fn half_a_line_then_silence_holds_up_nobody_and_times_out() {
    // A short step timeout, so that the silent connections are refused within the test.
    let mut b = Besieged::new("half-line", "timeout=2");
    let mut silent: Vec<UnixStream> = (0..MAX_WAITING + 8)
        .map(|_| {
            let mut conn = b.connect();
            conn.write_all(b"take 2 we").unwrap();
            conn
        })
        .collect();
    // A peer that trickles a byte at a time never finishes its line either.
    let trickler = {
        let mut conn = b.connect();
        std::thread::spawn(move || {
            let start = Instant::now();
            for byte in b"take 2 web".iter().cycle() {
                if conn.write_all(&[*byte]).is_err() || start.elapsed() > Duration::from_secs(15) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            answer_line(&mut conn)
        })
    };
    // While they hold on, the server holds a bounded number of descriptors and a real
    // takeover goes through at once (not after the silent ones time out).
    let held = b.old.fdcount();
    assert!(
        held <= b.baseline + MAX_WAITING + 1,
        "the server holds {held} descriptors for {} silent connections (baseline {})",
        silent.len(),
        b.baseline
    );
    b.take_over_and_abort();
    // Every silent connection is answered and closed: the oldest ones to make room, the
    // others when their line's time is up.
    let mut timed_out = 0;
    for (i, conn) in silent.iter_mut().enumerate() {
        let answer = answer_line(conn);
        let (kind, _) = refusal(&answer, &["takeover-in-progress", "peer-timed-out"]);
        timed_out += usize::from(kind == "peer-timed-out");
        closed(conn, &format!("silent connection {i}"));
    }
    assert!(timed_out > 0, "no silent connection was timed out");
    let answer = trickler.join().unwrap();
    refusal(&answer, &["peer-timed-out"]);
    // The attacker still holds its ends; the server holds none of them.
    b.settled("while the attacker still holds its ends");
    drop(silent);
    b.survived("half a line then silence");
}

#[test]
fn an_endless_line_is_refused_at_64_kib_and_the_connection_closed() {
    let b = Besieged::new("endless", "");
    let mut conn = b.connect();
    let writer = {
        let mut conn = conn.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 16 * 1024];
            let mut sent = 0usize;
            // At most 256 MiB: a server that swallowed it all would end the test all the same.
            while sent < 256 << 20 {
                match conn.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) => return Err((sent, e.kind())),
                }
            }
            Ok(sent)
        })
    };
    let answer = answer_line(&mut conn);
    let (_, message) = refusal(&answer, &["protocol-violation"]);
    assert!(message.contains("longer than 65536 bytes"), "{answer:?}");
    let stopped = writer.join().unwrap();
    assert!(
        stopped.is_err(),
        "the server swallowed {stopped:?} bytes of one line without closing"
    );
    closed(&mut conn, "an endless line");
    b.survived("an endless line");
}

#[test]
fn a_thousand_held_connections_hold_a_bounded_few_descriptors_and_keep_no_takeover_out() {
    let mut b = Besieged::new("thousand", "");
    let mut held: Vec<UnixStream> = (0..1000).map(|_| b.connect()).collect();
    let during = b.old.fdcount();
    assert!(
        during <= b.baseline + MAX_WAITING + 1,
        "the server holds {during} descriptors for 1000 connections (baseline {})",
        b.baseline
    );
    // A real takeover gets in while they are held.
    b.take_over_and_abort();
    // All but the most recent few were refused, with a reason, and closed.
    let mut refused = 0;
    for conn in &mut held {
        conn.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match conn.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Ok(1) => {}
            other => panic!("a held connection read {other:?}"),
        }
        conn.set_nonblocking(false).unwrap();
        let answer = format!("{}{}", byte[0] as char, answer_line(conn));
        let (_, message) = refusal(&answer, &["takeover-in-progress"]);
        assert!(message.contains("waited longest"), "{answer:?}");
        closed(conn, "a refused held connection");
        refused += 1;
    }
    assert!(
        refused >= 1000 - MAX_WAITING,
        "only {refused} of 1000 held connections were refused"
    );
    drop(held);
    b.survived("1000 held connections");
}

#[test]
fn another_users_control_connections_are_refused_at_the_door_and_not_kept() {
    if !util::is_root() {
        eprintln!("skipped: starting a peer as another user needs root");
        return;
    }
    const NOBODY: u32 = 65534;
    let mut b = Besieged::new("stranger", "");
    let mut stranger = Peer::spawn_as(NOBODY, None);
    let got = stranger.ok(&format!("ctl-hold {} 50", b.pf.display()));
    let (counts, first) = got.split_once(" first=").unwrap();
    assert_eq!(counts, "answered=50 closed=50", "{got}");
    let (_, message) = refusal(first, &["takeover-not-permitted"]);
    assert!(message.contains("uid 65534"), "{first}");
    // The stranger still holds its 50 ends; the server none.
    b.settled("while another user holds 50 connections");
    drop(stranger);
    b.survived("another user's connections");
}

// ---------------------------------------------------------------------------------------------
// SIGKILL of either process at each step of a takeover: the survivor serves on, and the pid
// file names a live server.

/// The steps of a takeover, in order, at which one of the two processes is killed.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The new process connected and sent `take`; nothing answered yet.
    Asked,
    /// The old process sent the records (`listener`, `offered`); the new one has not redeemed.
    Offered,
    /// The new process redeemed the records (`take_over` returned); it has not sent `ready`.
    Redeemed,
    /// The new process sent `ready`; `complete` has not returned.
    Ready,
    /// `complete` returned and the old process saw the handover; it has not exited.
    Completed,
}

const STEPS: [Step; 5] = [
    Step::Asked,
    Step::Offered,
    Step::Redeemed,
    Step::Ready,
    Step::Completed,
];

/// Runs `case` for each step, naming the step in a failure.
fn for_each_step(case: impl Fn(Step)) {
    for step in STEPS {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(step))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("killed at step {step:?}: {why}");
        }
    }
}

/// The new process speaks the protocol by hand up to `offered` and remembers the records.
fn ask_by_hand(new: &mut Peer, pf: &Path) {
    new.ok(&format!("ctl-connect {}", pf.display()));
    new.ok("ctl-send take 2 web");
    assert!(new.ok("ctl-recv").starts_with("listeners 1 "));
    assert_eq!(new.ok("ctl-recv"), "offered");
}

/// Whether process `pid` listens for takeovers (its control socket is bound).
fn listens_for_takeovers(pid: u32) -> bool {
    let dir = std::env::var_os("SOCKDUP_RUNTIME_DIR").map(PathBuf::from);
    match sockdup::upgrade::control_address(pid, dir.as_deref()) {
        sockdup::InboxAddress::Abstract(name) => std::fs::read_to_string("/proc/net/unix")
            .unwrap()
            .lines()
            .any(|l| l.ends_with(&format!(" @{name}"))),
        sockdup::InboxAddress::Path(path) => path.exists(),
    }
}

/// `server` serves `listener` and the pid file names it, alive; a next takeover from it
/// completes.
#[track_caller]
fn serves_on(server: &mut Peer, idx: &str, pf: &Path, listener: &(String, String, String)) {
    util::wait_for(Duration::from_secs(10), || {
        (std::fs::read_to_string(pf).ok()?.trim() == server.pid.to_string()).then_some(())
    });
    served_by(server, idx, &listener.2);
    let mut next = Peer::spawn(Some(""));
    let got = util::wait_for(Duration::from_secs(10), || {
        next.cmd(&format!("take-over {} web", pf.display())).ok()
    });
    next.ok("complete");
    assert_eq!(server.ok("wait-handover 5"), format!("{} web", next.pid));
    served_by(&mut next, idx_of(&got, "web"), &listener.2);
}

#[test]
fn sigkill_of_the_new_process_at_each_step_leaves_the_old_one_serving() {
    for_each_step(|step| {
        let pf = pid_file(&format!("kill-new-{step:?}"));
        let (mut old, ls) = server(&pf, &["web"], "");
        let mut new = Peer::spawn(Some(""));
        match step {
            Step::Asked => {
                new.ok(&format!("ctl-connect {}", pf.display()));
                new.ok("ctl-send take 2 web");
            }
            Step::Offered => ask_by_hand(&mut new, &pf),
            Step::Redeemed => {
                new.ok(&format!("take-over {} web", pf.display()));
            }
            Step::Ready => {
                ask_by_hand(&mut new, &pf);
                new.ok("ctl-redeem");
                new.ok("ctl-send ready");
            }
            Step::Completed => {
                new.ok(&format!("take-over {} web", pf.display()));
                new.ok("complete");
                assert_eq!(old.ok("wait-handover 5"), format!("{} web", new.pid));
            }
        }
        new.kill();
        // Before the handover the old process never stopped serving; after it, it takes the
        // listeners back from a successor that died.
        util::wait_for(Duration::from_secs(10), || {
            (old.ok("handed-over") == "none").then_some(())
        });
        serves_on(&mut old, &ls[0].1, &pf, &ls[0]);
    });
}

#[test]
fn sigkill_of_the_old_process_at_each_step_leaves_the_new_one_serving() {
    for_each_step(|step| {
        let pf = pid_file(&format!("kill-old-{step:?}"));
        let (mut old, ls) = server(&pf, &["web"], "");
        let mut new = Peer::spawn(Some(""));
        let web = match step {
            Step::Asked => {
                // Stopped, the old process cannot answer before it dies.
                old.signal(rustix::process::Signal::STOP);
                new.ok(&format!("ctl-connect {}", pf.display()));
                new.ok("ctl-send take 2 web");
                old.kill();
                assert_eq!(new.ok("ctl-recv"), "closed");
                // Nothing was handed over, and the listener died with its only holder: the
                // pid file is stale, and the new process starts afresh.
                let e = new.fails(&format!("take-over {} web", pf.display()));
                assert_eq!(e.kind, "stale-pid-file", "{e:?}");
                let fresh = new.ok("tcp-listen");
                let (idx, addr) = fresh.split_once(' ').unwrap();
                new.ok(&format!("publish {} web={idx}", pf.display()));
                let fresh = ("web".to_owned(), idx.to_owned(), addr.to_owned());
                serves_on(&mut new, idx, &pf, &fresh);
                return;
            }
            Step::Offered => {
                ask_by_hand(&mut new, &pf);
                old.kill();
                // The duplicates already wait in the new process: nothing in flight is lost.
                let got = new.ok("ctl-redeem");
                let web = idx_of(&got, "web").to_owned();
                let e = new.fails(&format!("take-over {} web", pf.display()));
                assert_eq!(e.kind, "stale-pid-file", "{e:?}");
                new.ok(&format!("publish {} web={web}", pf.display()));
                web
            }
            Step::Redeemed => {
                let got = new.ok(&format!("take-over {} web", pf.display()));
                old.kill();
                new.ok("complete");
                idx_of(&got, "web").to_owned()
            }
            Step::Ready => {
                let got = new.ok(&format!("take-over {} web", pf.display()));
                // Stopped, the old process cannot confirm; `complete` publishes, sends `ready`
                // and waits; then the old process dies.
                old.signal(rustix::process::Signal::STOP);
                new.send("complete");
                util::wait_for(Duration::from_secs(10), || {
                    listens_for_takeovers(new.pid).then_some(())
                });
                old.kill();
                new.answer().unwrap_or_else(|e| panic!("complete: {e:?}"));
                idx_of(&got, "web").to_owned()
            }
            Step::Completed => {
                let got = new.ok(&format!("take-over {} web", pf.display()));
                new.ok("complete");
                assert_eq!(old.ok("wait-handover 5"), format!("{} web", new.pid));
                old.kill();
                idx_of(&got, "web").to_owned()
            }
        };
        serves_on(&mut new, &web, &pf, &ls[0]);
    });
}
