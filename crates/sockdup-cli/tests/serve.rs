//! Tests of `sockdup serve` and `sockdup worker` with real processes: this test binary starts
//! `sockdup serve` (the acceptor) with `sockdup worker --app echo|hello` as its workers, and
//! talks to it over loopback with std clients.
//!
//! Free ports: every server listens on `127.0.0.1:0` and writes the address it got with
//! `--port-file`, which the harness reads once the `listening on` line is on stderr. Worker
//! pids are the serve process's children (`/proc/PID/task/*/children`). Signals are sent with
//! `kill(2)`. Every wait is bounded; each test takes a few seconds.
//!
//! Covered: 1000 echo connections each served exactly once; connections queued before the
//! worker is ready handed over in batches; a worker killed with SIGKILL in
//! the middle of a steady stream of connections (no client loses its echo, the worker is
//! restarted); both workers killed at once (service resumes); SIGTERM drains (new
//! connections refused, open ones finish, exit 0); workers that write garbage or a pid that
//! is not theirs are replaced (garbage at once, not after the answer timeout, and the
//! connections they held go to another worker); a worker answers a malformed or oversized
//! line from the acceptor at once and exits 1; no descriptor leaked by the acceptor; a worker
//! SIGSTOPped (its inbox cannot answer) with batches in flight, then SIGKILLed: the other worker
//! served meanwhile, the batches go to it, each once, descriptors back; the `hello` HTTP app
//! (keep-alive, `Connection: close`, HTTP/1.0, bodies, malformed requests); one worker serving
//! 300 open keep-alive connections and a client that does not read on its three threads (the
//! event loop, issue 12); `ok` and `done` once per connection from the event loop, for
//! connections that end together too, and `ok` before `done` for one that ends in the turn it
//! came; a Unix listener;
//! usage errors. Under attack and faults (issue 10): a hostile worker (`--test-hostile MODE`)
//! confirming, failing or finishing connections it does not hold, writing an endless line,
//! random bytes, or a line that never ends, is replaced (at once, or at its answer timeout) with
//! no client lost or served twice and the acceptor's descriptors back where they were; the
//! workers of a SIGKILLed acceptor serve what they were handed and exit by themselves; an
//! acceptor or a worker out of descriptors (prlimit(1)) neither spins nor loses anything. An
//! async worker (`tokio-serve-worker`, the example `tokio_serve_worker`): 1 000 echo
//! connections each served once with a worker SIGKILLed midway (descriptors of the acceptor and
//! of the surviving worker back where they were); its protocol spoken to a piped worker (`ok`
//! and `fail` for one batch in one write, `done` when a connection ends, exit 0 when the input
//! closes; a malformed line answered at once with `error`, exit 1); the test's binary is the
//! example. A worker driving `Worker::incoming_nonblocking` from a hand-written poll loop
//! (`poll-serve-worker`, the example `poll_serve_worker`): 400 echo connections each served
//! once by workers running two threads, descriptors of the acceptor and of the workers back
//! where they were; piped, `ok`/`fail` for one batch, `done`, a connection served on after the
//! end of the input and exit 0; a malformed line answered at once, exit 1. A `sockdup worker`
//! whose input is /dev/null or a file (which epoll cannot watch) still ends with it, exit 0.

mod util;

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use util::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_sockdup");
/// The async worker: the example `tokio_serve_worker`.
const TOKIO_WORKER: &str = env!("CARGO_BIN_EXE_tokio-serve-worker");

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(10);

/// `RUST_LOG` for a serve process whose debug lines say which worker (pid) it handed
/// connections to ([`Server::warm_up`]).
const HANDOFF_LOG: &str = "warn,sockdup::handoff::acceptor=debug";

/// The lines a process wrote on stderr so far, as they come.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    cv: Condvar,
}

impl Lines {
    /// Waits (at most `limit`) for a line containing `want`, and returns it.
    #[track_caller]
    fn wait_for(&self, want: &str, limit: Duration) -> String {
        self.wait_for_all(&[want], limit)
    }

    /// Waits (at most `limit`) for a line containing all of `want`, and returns it.
    #[track_caller]
    fn wait_for_all(&self, want: &[&str], limit: Duration) -> String {
        let until = Instant::now() + limit;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| want.iter().all(|w| l.contains(w))) {
                return l.clone();
            }
            let now = Instant::now();
            assert!(
                now < until,
                "no stderr line with {want:?} within {limit:?}; stderr so far:\n{}",
                lines.join("\n")
            );
            lines = self.cv.wait_timeout(lines, until - now).unwrap().0;
        }
    }

    fn count(&self, want: &[&str]) -> usize {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| want.iter().all(|w| l.contains(w)))
            .count()
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// The summary line `sockdup serve` prints at exit, parsed.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    total: u64,
    per_worker: Vec<u64>,
    redispatched: u64,
    restarts: u64,
    replaced: u64,
}

impl Summary {
    /// Parses "sockdup serve: summary: connections T (worker 1: A, worker 2: B),
    /// re-dispatched R, restarts S, replaced P".
    fn parse(line: &str) -> Option<Self> {
        let rest = line.split_once("sockdup serve: summary: connections ")?.1;
        let (total, rest) = rest.split_once(" (")?;
        let (per, rest) = rest.split_once("), ")?;
        let per_worker = per
            .split(", ")
            .map(|w| w.split_once(": ")?.1.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        let mut counts = rest.split(", ").map(|c| c.rsplit_once(' ')?.1.parse().ok());
        let (redispatched, restarts, replaced) =
            (counts.next()??, counts.next()??, counts.next()??);
        Some(Self {
            total: total.parse().ok()?,
            per_worker,
            redispatched,
            restarts,
            replaced,
        })
    }
}

/// A running `sockdup serve`.
struct Server {
    child: Child,
    pid: u32,
    stderr: Arc<Lines>,
    /// The bound addresses, as written to the port file.
    addrs: Vec<String>,
    _dir: TempDir,
}

impl Server {
    /// Starts `sockdup serve --listen 127.0.0.1:0 ARGS -- WORKER...` and waits until it listens.
    #[track_caller]
    fn start(args: &[&str], worker: &[&str]) -> Self {
        Self::start_listening(&["127.0.0.1:0"], args, worker)
    }

    /// Starts `sockdup serve` listening on `listen`, with `args` and the worker command.
    #[track_caller]
    fn start_listening(listen: &[&str], args: &[&str], worker: &[&str]) -> Self {
        Self::start_logging(listen, args, worker, "warn")
    }

    /// [`Self::start_listening`] with `RUST_LOG` set to `log`.
    #[track_caller]
    fn start_logging(listen: &[&str], args: &[&str], worker: &[&str], log: &str) -> Self {
        let dir = TempDir::new("srv");
        let port_file = dir.path().join("ports");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve");
        for l in listen {
            cmd.args(["--listen", l]);
        }
        cmd.arg("--port-file")
            .arg(&port_file)
            .args(args)
            .arg("--")
            .args(worker)
            .current_dir(dir.path())
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sockdup serve");
        let pid = child.id();
        let stderr = Arc::new(Lines::default());
        let pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.cv.notify_all();
            }
        });
        let mut server = Self {
            child,
            pid,
            stderr,
            addrs: Vec::new(),
            _dir: dir,
        };
        let line = server.stderr.wait_for("sockdup serve: listening on", WAIT);
        let text = std::fs::read_to_string(&port_file).expect("read the port file");
        server.addrs = text.lines().map(str::to_owned).collect();
        assert_eq!(server.addrs.len(), listen.len(), "port file: {text:?}");
        for a in &server.addrs {
            assert!(line.contains(a.as_str()), "{line:?} lacks {a}");
        }
        server
    }

    /// The first address, as a socket address (a TCP listener).
    fn tcp(&self) -> SocketAddr {
        self.addrs[0].parse().expect("a TCP address")
    }

    /// The pids of the worker processes (the serve process's children) right now.
    fn workers(&self) -> BTreeSet<u32> {
        children(self.pid)
    }

    /// Waits until `n` workers run, none of them in `not`, and returns them.
    #[track_caller]
    fn wait_workers(&self, n: usize, not: &BTreeSet<u32>) -> BTreeSet<u32> {
        util::wait_until(WAIT, || {
            let now = self.workers();
            (now.len() == n && now.is_disjoint(not)).then_some(now)
        })
    }

    /// The serve process's working directory (a temporary directory of its own).
    fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// `sockdup serve` on an ephemeral port with two `echo` workers, logging the handoffs
    /// ([`HANDOFF_LOG`]), as the descriptor-count tests need.
    fn two_echo_workers_logged() -> Self {
        Self::start_logging(
            &["127.0.0.1:0"],
            &["--workers", "2"],
            &worker("echo"),
            HANDOFF_LOG,
        )
    }

    /// The serve process's descriptor count once it holds still (the same over 100 ms), or
    /// once it is `want`, or after 5 s.
    fn settled_fd_count(&self, want: Option<usize>) -> usize {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let a = self.fd_count();
            thread::sleep(Duration::from_millis(100));
            let b = self.fd_count();
            let done = match want {
                Some(w) => b == w,
                None => a == b,
            };
            if done || Instant::now() > until {
                return b;
            }
        }
    }

    /// Echo rounds (2 clients, 10 connections each) until each of the `n` workers running now
    /// has been handed a connection; returns how many connections were made. The acceptor
    /// connects to a worker's inbox at its first handoff and keeps that connection while the
    /// worker lives, so its descriptor count is only comparable between moments when every
    /// worker has been handed something: a worker that announced itself after a short burst
    /// got nothing of it, and its inbox connection comes later. Needs [`HANDOFF_LOG`].
    #[track_caller]
    fn warm_up(&self, n: usize, tag: &str) -> u64 {
        let until = Instant::now() + WAIT;
        let mut made = 0;
        for round in 0.. {
            let failures = echo_load(self.tcp(), 2, 10, &format!("{tag}{round}"));
            assert!(failures.is_empty(), "{tag}: warming up: {failures:?}");
            made += 20;
            let workers = self.wait_workers(n, &BTreeSet::new());
            let handed = |pid: &u32| {
                let pid = format!("pid={pid} ");
                self.stderr.count(&["connections handed to a worker", &pid]) > 0
            };
            if workers.iter().all(handed) {
                break;
            }
            assert!(
                Instant::now() < until,
                "{tag}: workers {workers:?} not all handed a connection within {WAIT:?}:\n{}",
                self.stderr.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        made
    }

    /// Descriptors open in the serve process.
    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("read the serve process's fds")
            .count()
    }

    fn signal(&self, sig: Signal) {
        signal(self.pid, sig);
    }

    /// Whether the serve process still runs.
    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (at most `limit`) for the serve process to exit.
    #[track_caller]
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = &mut self.child;
        util::wait_until(limit, || child.try_wait().expect("try_wait"))
    }

    /// SIGTERM, a clean exit within `limit`, and the summary.
    #[track_caller]
    fn stop(&mut self, limit: Duration) -> Summary {
        self.signal(Signal::TERM);
        let status = self.wait_exit(limit);
        assert!(
            status.success(),
            "serve exited with {status:?}; stderr:\n{}",
            self.stderr.text()
        );
        self.summary()
    }

    /// The summary printed at exit.
    #[track_caller]
    fn summary(&self) -> Summary {
        let line = self.stderr.wait_for("sockdup serve: summary:", WAIT);
        let text = self.stderr.text();
        assert!(!text.contains("panicked"), "a panic on stderr:\n{text}");
        Summary::parse(&line).unwrap_or_else(|| panic!("cannot parse the summary {line:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running() {
            for w in self.workers() {
                signal(w, Signal::KILL);
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
    let _ = kill_process(pid, sig);
}

/// The children of process `pid`, from every one of its threads.
fn children(pid: u32) -> BTreeSet<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeSet::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `worker --app APP` of this build, as a worker command.
fn worker(app: &str) -> [&str; 4] {
    [BIN, "worker", "--app", app]
}

/// Connects to `addr` with bounded reads and writes.
fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    s.set_write_timeout(Some(WAIT))?;
    Ok(s)
}

/// A loopback listener for tests that hand connections to a worker themselves, playing the
/// acceptor.
struct Loopback(std::net::TcpListener);

impl Loopback {
    fn new() -> Self {
        Self(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
    }

    /// A connected client ([`connect`]: with timeouts) and the accepted end.
    fn pair(&self) -> (TcpStream, TcpStream) {
        let client = connect(self.0.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = self.0.accept().expect("accept");
        (client, accepted)
    }
}

/// One echo connection: sends `token`, closes its write side, and expects exactly `token`
/// back before the end of the stream.
fn echo_once(addr: SocketAddr, token: &str) -> Result<(), String> {
    let run = || -> io::Result<String> {
        let mut s = connect(addr)?;
        s.write_all(token.as_bytes())?;
        s.shutdown(Shutdown::Write)?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok(got)
    };
    match run() {
        Ok(got) if got == token => Ok(()),
        Ok(got) => Err(format!("{token}: got {got:?}")),
        Err(e) => Err(format!("{token}: {e}")),
    }
}

/// `threads` clients each making `per_thread` echo connections; returns the failures.
fn echo_load(addr: SocketAddr, threads: usize, per_thread: usize, tag: &str) -> Vec<String> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let tag = tag.to_owned();
            thread::spawn(move || {
                (0..per_thread)
                    .filter_map(|i| echo_once(addr, &format!("{tag}-{t}-{i}")).err())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect()
}

/// Client threads making echo connections, with a pause between them, until stopped.
struct SteadyLoad {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<Vec<String>>>,
}

impl SteadyLoad {
    fn start(addr: SocketAddr, threads: usize, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|t| {
                let (stop, done) = (stop.clone(), done.clone());
                thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        if let Err(e) = echo_once(addr, &format!("steady-{t}-{i}")) {
                            failures.push(e);
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                        thread::sleep(pause);
                    }
                    failures
                })
            })
            .collect();
        Self {
            stop,
            done,
            threads,
        }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `n` more connections are done than now.
    #[track_caller]
    fn wait_more(&self, n: usize) {
        let target = self.done() + n;
        util::wait_until(WAIT, || (self.done() >= target).then_some(()));
    }

    /// Stops the clients; returns how many connections they made and the failures.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self
            .threads
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect();
        (self.done.load(Ordering::SeqCst), failures)
    }
}

#[test]
fn a_thousand_echo_connections_are_each_served_once() {
    let mut server = Server::start(&["--workers", "2"], &worker("echo"));
    let failures = echo_load(server.tcp(), 8, 125, "k");
    assert!(failures.is_empty(), "failed: {failures:?}");
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 1000, "{summary:?}");
    assert_eq!(summary.per_worker.len(), 2);
    assert!(summary.per_worker.iter().all(|&n| n > 0), "{summary:?}");
    assert_eq!(
        (summary.redispatched, summary.restarts, summary.replaced),
        (0, 0, 0)
    );
}

#[test]
fn connections_one_at_a_time_then_a_burst_then_one_at_a_time_are_each_served_once() {
    // After connections that come one at a time the acceptor takes one per wake-up without
    // looking for a second; a burst must still be taken whole, and quiet again after it.
    let mut server = Server::start(&["--workers", "2"], &worker("echo"));
    let addr = server.tcp();
    let mut failures = Vec::new();
    for round in 0..2 {
        failures.extend((0..20).filter_map(|i| echo_once(addr, &format!("one-{round}-{i}")).err()));
        failures.extend(echo_load(addr, 16, 20, &format!("burst-{round}")));
    }
    failures.extend((0..20).filter_map(|i| echo_once(addr, &format!("last-{i}")).err()));
    assert!(failures.is_empty(), "failed: {failures:?}");
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 2 * (20 + 16 * 20) + 20, "{summary:?}");
    assert_eq!(
        (summary.redispatched, summary.restarts, summary.replaced),
        (0, 0, 0)
    );
}

#[test]
fn connections_queued_for_a_worker_are_handed_over_in_batches() {
    // The worker announces itself only after a while, so the connections made meanwhile are
    // accepted and queued; once it is ready they go in batches of at most 64 (one message to
    // its inbox and one write of conn lines each), and each is served exactly once.
    let late_worker = format!("sleep 0.5; exec {BIN} worker --app echo");
    let mut server = Server::start_logging(
        &["127.0.0.1:0"],
        &["--workers", "1"],
        &["sh", "-c", &late_worker],
        "sockdup=debug",
    );
    let addr = server.tcp();
    let mut open: Vec<TcpStream> = (0..100).map(|_| connect(addr).expect("connect")).collect();
    for (i, s) in open.iter_mut().enumerate() {
        let msg = format!("queued {i};");
        assert_eq!(exchange(s, &msg), msg);
    }
    drop(open);
    let summary = server.stop(WAIT);
    // Read after the exit: every log line is in.
    let text = server.stderr.text();
    let batches: Vec<usize> = text
        .lines()
        .filter(|l| l.contains("connections handed to a worker"))
        .filter_map(|l| {
            l.split("count=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(batches.iter().sum::<usize>(), 100, "{text}");
    assert!(batches.iter().any(|&n| n > 1), "no batch: {batches:?}");
    // A batch's conn lines fit in a pipe (64 of them), so more than that go in several.
    assert!(batches.iter().all(|&n| n <= 64), "{batches:?}");
    assert_eq!(summary.total, 100, "{summary:?}");
    assert_eq!(
        (summary.redispatched, summary.restarts, summary.replaced),
        (0, 0, 0)
    );
}

#[test]
fn least_outstanding_policy_serves_too() {
    let mut server = Server::start(
        &[
            "--workers",
            "3",
            "--policy",
            "least",
            "--max-outstanding",
            "2",
        ],
        &worker("echo"),
    );
    let failures = echo_load(server.tcp(), 6, 30, "l");
    assert!(failures.is_empty(), "failed: {failures:?}");
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 180, "{summary:?}");
    assert_eq!(summary.per_worker.len(), 3);
}

/// Waits until worker `pid` holds no connection: its descriptor count is back to `idle`.
///
/// A connection a worker has already redeemed is its own: if the worker is killed before it
/// answers, that client loses its connection, whatever the acceptor does (nobody else holds
/// the socket). What the acceptor guarantees is that no connection it still holds (queued,
/// or sent to the worker and not yet confirmed) is lost. So the kill comes when the worker
/// holds nothing, between two of its connections, while the clients keep connecting.
fn wait_idle(pid: u32, idle: usize) {
    util::wait_until(WAIT, || (fd_count(pid)? <= idle).then_some(()));
}

fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Worker `pid`'s descriptors when it holds no connection: the fewest seen over a while.
fn idle_fd_count(pid: u32) -> usize {
    (0..50)
        .filter_map(|_| {
            thread::sleep(Duration::from_millis(2));
            fd_count(pid)
        })
        .min()
        .expect("the worker's fds")
}

#[test]
fn a_worker_killed_mid_run_loses_no_connection() {
    let mut server = Server::start(&["--workers", "2"], &worker("echo"));
    let load = SteadyLoad::start(server.tcp(), 4, Duration::from_millis(3));
    load.wait_more(100);
    let before = server.workers();
    assert_eq!(before.len(), 2, "workers: {before:?}");
    let victim = *before.iter().next().expect("a worker");
    // Its descriptors when it holds no connection: the fewest seen over a while.
    let idle = idle_fd_count(victim);
    wait_idle(victim, idle);
    signal(victim, Signal::KILL);
    let after = server.wait_workers(2, &BTreeSet::from([victim]));
    assert!(!after.contains(&victim));
    load.wait_more(200);
    let (made, failures) = load.finish();
    assert!(failures.is_empty(), "failed: {failures:?}");
    let summary = server.stop(WAIT);
    assert!(summary.restarts >= 1, "{summary:?}");
    assert_eq!(summary.total, made as u64, "{summary:?}");
}

#[test]
fn both_workers_killed_at_once_are_restarted() {
    let mut server = Server::start(&["--workers", "2"], &worker("echo"));
    assert!(echo_load(server.tcp(), 2, 20, "a").is_empty());
    let before = server.wait_workers(2, &BTreeSet::new());
    for &w in &before {
        signal(w, Signal::KILL);
    }
    // Connections made right away wait for the new workers.
    let failures = echo_load(server.tcp(), 4, 25, "b");
    assert!(failures.is_empty(), "failed: {failures:?}");
    let after = server.wait_workers(2, &before);
    assert!(after.is_disjoint(&before));
    let summary = server.stop(WAIT);
    assert!(summary.restarts >= 2, "{summary:?}");
    assert_eq!(summary.total, 140, "{summary:?}");
}

/// Sends `text` and reads exactly as many bytes back.
fn exchange(s: &mut TcpStream, text: &str) -> String {
    s.write_all(text.as_bytes()).expect("send");
    let mut got = vec![0u8; text.len()];
    s.read_exact(&mut got).expect("read the echo");
    String::from_utf8(got).expect("utf-8")
}

#[test]
fn sigterm_refuses_new_connections_and_lets_open_ones_finish() {
    let mut server = Server::start(
        &["--workers", "2", "--drain-deadline", "8"],
        &worker("echo"),
    );
    let addr = server.tcp();
    let mut open: Vec<TcpStream> = (0..3).map(|_| connect(addr).expect("connect")).collect();
    for (i, s) in open.iter_mut().enumerate() {
        let msg = format!("first {i};");
        assert_eq!(exchange(s, &msg), msg);
    }
    let t0 = Instant::now();
    server.signal(Signal::TERM);
    // New connections are refused once the acceptor stops accepting.
    util::wait_until(Duration::from_secs(3), || match TcpStream::connect_timeout(
        &addr,
        Duration::from_secs(1),
    ) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Some(()),
        _ => None,
    });
    assert!(
        server.running(),
        "serve exited before its connections finished"
    );
    // The open ones are still served, and finish.
    for (i, s) in open.iter_mut().enumerate() {
        let msg = format!("second {i}, after SIGTERM;");
        assert_eq!(exchange(s, &msg), msg);
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("read to the end");
        assert!(rest.is_empty(), "{rest:?}");
    }
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}\n{}", server.stderr.text());
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
    let summary = server.summary();
    assert!(summary.total >= 3, "{summary:?}");
}

#[test]
fn workers_with_bad_output_are_replaced() {
    for (script, complaint) in [
        ("echo hello; sleep 5", "not the sockdup worker protocol"),
        ("echo pid 1; sleep 5", "announced pid 1"),
        ("sleep 5", "did not answer within"),
    ] {
        let mut server = Server::start(
            &[
                "--workers",
                "1",
                "--answer-timeout",
                "0.5",
                "--drain-deadline",
                "1",
            ],
            &["sh", "-c", script],
        );
        // The acceptor's own report (beside its log event).
        let report = ["worker 1 (pid", complaint, "replacing it"];
        server.stderr.wait_for_all(&report, WAIT);
        // Replaced again: serve goes on.
        let deadline = Instant::now() + WAIT;
        while server.stderr.count(&report) < 2 {
            assert!(Instant::now() < deadline, "{}", server.stderr.text());
            thread::sleep(Duration::from_millis(20));
        }
        assert!(server.running(), "serve stopped:\n{}", server.stderr.text());
        let summary = server.stop(WAIT);
        assert!(summary.replaced >= 2, "{script}: {summary:?}");
        assert_eq!(summary.total, 0);
    }
}

#[test]
fn a_worker_writing_garbage_is_replaced_at_once_and_no_connection_is_lost() {
    // The first worker started takes the first batch of connections without redeeming them
    // and answers with a line that is not the protocol; every later one is a healthy echo
    // worker. The acceptor must replace it as soon as it reads that line, not after the
    // 30-second answer timeout, and hand its unconfirmed connections to the new worker.
    let script = format!(
        "if mkdir garbage-once 2>/dev/null; then exec {BIN} worker --app echo --test-write-garbage; \
         else exec {BIN} worker --app echo; fi"
    );
    let mut server = Server::start(
        &["--workers", "1", "--answer-timeout", "30"],
        &["sh", "-c", &script],
    );
    let addr = server.tcp();
    let t0 = Instant::now();
    let load = thread::spawn(move || echo_load(addr, 4, 5, "g"));
    let report = [
        "worker 1 (pid",
        "not the sockdup worker protocol",
        "replacing it",
    ];
    server.stderr.wait_for_all(&report, Duration::from_secs(5));
    let failures = load.join().expect("client threads");
    let took = t0.elapsed();
    assert!(failures.is_empty(), "failed: {failures:?}");
    assert!(
        took < Duration::from_secs(5),
        "the connections took {took:?}: the garbage was not heard at once\n{}",
        server.stderr.text()
    );
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 20, "{summary:?}");
    assert_eq!(summary.per_worker, vec![20], "{summary:?}");
    assert_eq!(summary.replaced, 1, "{summary:?}");
    assert!(summary.redispatched >= 1, "{summary:?}");
    assert!(summary.restarts >= 1, "{summary:?}");
}

/// The echo worker's command, for [`piped_worker`].
const ECHO_WORKER: [&str; 4] = [BIN, "worker", "--app", "echo"];

/// Starts the worker `command` with piped standard input and output, as an acceptor would, and
/// reads its `pid` line.
fn piped_worker(
    command: &[&str],
) -> (
    Child,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = Command::new(command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the worker");
    let stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut pid = String::new();
    stdout.read_line(&mut pid).expect("read the pid line");
    assert_eq!(pid.trim(), format!("pid {}", child.id()));
    (child, stdin, stdout)
}

/// Closes the worker's input, as the acceptor's end closing: the worker exits 0 within
/// [`WAIT`], having written nothing more.
fn ends_quietly(
    mut child: Child,
    stdin: std::process::ChildStdin,
    mut stdout: BufReader<std::process::ChildStdout>,
) {
    drop(stdin);
    let status = util::wait_until(WAIT, || child.try_wait().expect("try_wait"));
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read the rest");
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn a_worker_answers_a_malformed_or_oversized_line_at_once_and_exits_1() {
    let oversized = vec![b'x'; 70 * 1024];
    for (bad, what) in [
        (&b"hello worker\n"[..], "hello worker"),
        (b"conn 1 not-a-record\n", "the record is not valid"),
        (&oversized[..], "longer than"),
    ] {
        let (mut child, mut stdin, mut stdout) = piped_worker(&ECHO_WORKER);
        let t0 = Instant::now();
        // The input stays open: the worker must not wait for its end.
        stdin.write_all(bad).expect("write the bad line");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the answer");
        assert!(
            line.starts_with("error 10050 protocol-violation "),
            "{what}: {line:?}"
        );
        assert!(line.contains(what), "{line:?}");
        let status = util::wait_until(Duration::from_secs(5), || {
            child.try_wait().expect("try_wait")
        });
        assert_eq!(status.code(), Some(1), "{what}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).expect("read the rest");
        assert!(rest.is_empty(), "{rest:?}");
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read stderr");
        assert!(!err.contains("panicked"), "{err}");
        drop(stdin);
    }
}

#[test]
fn the_event_loop_worker_says_ok_and_done_once_for_each_connection() {
    // Connections that end together are told done together (the event loop closes what one
    // turn finished at its end, in one write): each `done` still comes once, after its `ok`.
    let _guard = sockdup::startup().expect("startup");
    let (child, mut stdin, mut stdout) = piped_worker(&ECHO_WORKER);
    let loopback = Loopback::new();
    let (mut clients, accepted): (Vec<_>, Vec<_>) = (0..3).map(|_| loopback.pair()).unzip();
    let records = sockdup::duplicate_sockets(&accepted, child.id()).expect("duplicate");
    drop(accepted);
    let lines: String = (1..=3)
        .zip(&records)
        .map(|(id, record)| format!("conn {id} {record}\n"))
        .collect();
    stdin
        .write_all(lines.as_bytes())
        .expect("write the conn lines");
    for id in 1..=3 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read an ok line");
        assert_eq!(line, format!("ok {id}\n"));
    }
    // All three clients finish at once.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("echo {i}").as_bytes()).expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = String::new();
        c.read_to_string(&mut got).expect("read the echo");
        assert_eq!(got, format!("echo {i}"));
    }
    let mut done = BTreeSet::new();
    for _ in 0..3 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read a done line");
        let id: u64 = line
            .strip_prefix("done ")
            .and_then(|rest| rest.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("not a done line: {line:?}"));
        assert!(done.insert(id), "done {id} twice");
    }
    assert_eq!(done, BTreeSet::from([1, 2, 3]));
    // The acceptor's end closes: the worker exits 0, having said nothing more.
    ends_quietly(child, stdin, stdout);
}

#[test]
fn a_connection_done_in_the_turn_it_came_is_confirmed_before_it_is_done() {
    // A connection whose client had already sent everything and closed is redeemed, served
    // and finished at once, in the loop turn that received it: its `ok` still comes first,
    // then its `done`, each once.
    let _guard = sockdup::startup().expect("startup");
    let (child, mut stdin, mut stdout) = piped_worker(&ECHO_WORKER);
    let (mut client, accepted) = Loopback::new().pair();
    client.write_all(b"all at once").expect("write");
    client.shutdown(Shutdown::Write).expect("shutdown");
    let record = sockdup::duplicate_socket(&accepted, child.id()).expect("duplicate");
    drop(accepted);
    stdin
        .write_all(format!("conn 7 {record}\n").as_bytes())
        .expect("write the conn line");
    let mut got = String::new();
    client.read_to_string(&mut got).expect("read the echo");
    assert_eq!(got, "all at once");
    for want in ["ok 7\n", "done 7\n"] {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read an answer");
        assert_eq!(line, want);
    }
    ends_quietly(child, stdin, stdout);
}

#[test]
fn the_acceptor_leaks_no_descriptor() {
    let server = Server::two_echo_workers_logged();
    let addr = server.tcp();
    // Warm up: both workers started, and the acceptor's connections to their inboxes made.
    server.warm_up(2, "w");
    let before = server.settled_fd_count(None);
    let failures = echo_load(addr, 4, 100, "f");
    assert!(failures.is_empty(), "failed: {failures:?}");
    assert_eq!(
        server.settled_fd_count(Some(before)),
        before,
        "after 400 connections"
    );

    // A worker killed and restarted leaves nothing behind either.
    let workers = server.wait_workers(2, &BTreeSet::new());
    let victim = *workers.iter().next().expect("a worker");
    signal(victim, Signal::KILL);
    server.wait_workers(2, &BTreeSet::from([victim]));
    // Its replacement's inbox connection made too.
    server.warm_up(2, "r");
    assert_eq!(
        server.settled_fd_count(Some(before)),
        before,
        "after a restart"
    );
}

#[test]
fn a_worker_killed_with_batches_awaiting_its_inbox_loses_nothing() {
    // The acceptor does not wait for a worker's inbox to answer a push: the batch is in
    // flight, its `conn` lines written when the answer comes, and the worker gets no other
    // batch meanwhile. A worker stopped (SIGSTOP: its inbox thread cannot answer) holds the
    // batch pushed to it in flight, while the other worker serves the rest; killed then, its
    // batch goes to the other worker, each connection served exactly once, and the
    // acceptor's descriptors are back where they were.
    let server = Server::two_echo_workers_logged();
    let addr = server.tcp();
    let warm = server.warm_up(2, "w");
    let before = server.settled_fd_count(None);
    let workers = server.wait_workers(2, &BTreeSet::new());
    let victim = *workers.iter().next().expect("a worker");
    signal(victim, Signal::STOP);
    const CLIENTS: usize = 60;
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let served = served.clone();
            thread::spawn(move || {
                let r = echo_once(addr, &format!("inflight-{i}"));
                served.fetch_add(1, Ordering::SeqCst);
                r
            })
        })
        .collect();
    // The other worker serves while the stopped one holds its batches.
    util::wait_until(WAIT, || (served.load(Ordering::SeqCst) > 0).then_some(()));
    thread::sleep(Duration::from_millis(200));
    let early = served.load(Ordering::SeqCst);
    assert!(
        early < CLIENTS,
        "every client was served while worker {victim} was stopped: none was handed to it"
    );
    signal(victim, Signal::KILL);
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|h| h.join().expect("client thread").err())
        .collect();
    assert!(failures.is_empty(), "failed: {failures:?}");
    // Its replacement, with the acceptor's connection to its inbox made.
    server.wait_workers(2, &BTreeSet::from([victim]));
    let rewarm = server.warm_up(2, "r");
    assert_eq!(
        server.settled_fd_count(Some(before)),
        before,
        "after a worker died with batches in flight"
    );
    let mut server = server;
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, warm + CLIENTS as u64 + rewarm, "{summary:?}");
    assert!(summary.redispatched >= 1, "{summary:?}");
}

/// An HTTP response: status code, headers (lower-case names), body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (framed by Content-Length; no body for HEAD).
fn read_response(r: &mut impl BufRead, head_only: bool) -> Response {
    let mut status_line = String::new();
    r.read_line(&mut status_line).expect("read the status line");
    let mut parts = status_line.split(' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line:?}");
    let status = parts.next().and_then(|s| s.parse().ok()).expect("status");
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("read a header");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').expect("a header line");
        headers.push((n.to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if !head_only {
        let len: usize = resp
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        resp.body = vec![0; len];
        r.read_exact(&mut resp.body).expect("read the body");
    }
    resp
}

/// Whether the server closed the connection: the next read sees the end of the stream.
fn closed(r: &mut impl Read) -> bool {
    let mut b = [0u8; 1];
    matches!(r.read(&mut b), Ok(0))
}

#[test]
fn hello_keeps_alive_and_closes_on_request() {
    let mut server = Server::start(&["--workers", "2"], &worker("hello"));
    let s = connect(server.tcp()).expect("connect");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    for i in 0..3 {
        write!(w, "GET /{i} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
        let resp = read_response(&mut r, false);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"hello from sockdup\n");
        assert_eq!(resp.header("content-length"), Some("19"));
        assert_eq!(resp.header("connection"), None);
    }
    // A body (Content-Length) is read and dropped, and the connection goes on.
    w.write_all(b"POST /form HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhello=world")
        .expect("send");
    assert_eq!(read_response(&mut r, false).status, 200);
    // Two pipelined requests, a chunked body and a HEAD.
    w.write_all(
        b"POST /c HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          HEAD / HTTP/1.1\r\nHost: test\r\n\r\n",
    )
    .expect("send");
    assert_eq!(read_response(&mut r, false).status, 200);
    let head = read_response(&mut r, true);
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("19"))
    );
    // Connection: close: the response, then the end of the stream.
    w.write_all(b"GET /last HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send");
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed(&mut r), "the server kept the connection open");

    // HTTP/1.0 closes unless asked to keep alive.
    let s = connect(server.tcp()).expect("connect");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    w.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .expect("send");
    let resp = read_response(&mut r, false);
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    w.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
    assert_eq!(read_response(&mut r, false).status, 200);
    assert!(closed(&mut r), "HTTP/1.0 without keep-alive stayed open");

    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 2, "{summary:?}");
}

#[test]
fn hello_answers_malformed_requests_with_400_and_closes() {
    let mut server = Server::start(&["--workers", "1"], &worker("hello"));
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n", // no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        &[b'A'; 20_000],
    ] {
        let s = connect(server.tcp()).expect("connect");
        let mut w = s.try_clone().expect("clone");
        let mut r = BufReader::new(s);
        w.write_all(bad).expect("send");
        let resp = read_response(&mut r, false);
        assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(resp.header("connection"), Some("close"));
        assert!(closed(&mut r));
    }
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 6, "{summary:?}");
}

#[test]
fn one_hello_worker_serves_hundreds_of_open_connections_and_a_stalled_reader_on_one_thread() {
    // An event loop, not a thread per connection: 300 keep-alive connections open at once,
    // each answered, interleaved, by one worker that runs one thread (the event loop reads the
    // acceptor's lines and serves the library's inbox too); a client that sends thousands of pipelined requests and
    // does not read holds nobody else up; once the clients close, the worker's descriptors
    // are back where they were; SIGTERM drains the connections still open.
    let mut server = Server::start(
        &["--workers", "1", "--max-outstanding", "400"],
        &worker("hello"),
    );
    let pid = *server
        .wait_workers(1, &BTreeSet::new())
        .iter()
        .next()
        .expect("a worker");
    // Its descriptors when it holds no connection (after one served and closed, so that
    // whatever it opens on its first connection is counted): the fewest seen over a while.
    let (mut w, mut r) = {
        let s = connect(server.tcp()).expect("connect");
        (s.try_clone().expect("clone"), BufReader::new(s))
    };
    w.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut r, false).status, 200);
    assert!(closed(&mut r));
    drop((w, r));
    let idle = idle_fd_count(pid);
    // The stalled reader: ~1.5 MiB of responses, far past what a reader that never reads lets
    // the socket buffers hold.
    const PIPELINED: usize = 10_000;
    let stalled = connect(server.tcp()).expect("connect");
    let mut stalled_w = stalled.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        let one = b"GET /p HTTP/1.1\r\nHost: test\r\n\r\n";
        let all: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * PIPELINED)
            .collect();
        stalled_w
            .write_all(&all)
            .expect("send the pipelined requests");
    });
    let mut open = Vec::new();
    for i in 0..300 {
        let s = connect(server.tcp()).expect("connect");
        let mut w = s.try_clone().expect("clone");
        let mut r = BufReader::new(s);
        w.write_all(format!("GET /{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .expect("send");
        let resp = read_response(&mut r, false);
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, &b"hello from sockdup\n"[..])
        );
        open.push((w, r));
    }
    let threads = sockdup_tests::util::threads_of(pid);
    assert_eq!(
        threads, 1,
        "worker {pid} runs {threads} threads for 301 connections"
    );
    // Every connection is still open and served, in the reverse order.
    for (i, (w, r)) in open.iter_mut().enumerate().rev() {
        // One write: a request cut in pieces waits for delayed ACKs (Nagle) on the client.
        w.write_all(format!("GET /again/{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .expect("send");
        assert_eq!(read_response(r, false).status, 200);
    }
    // The stalled reader now reads everything it asked for.
    let mut r = BufReader::new(stalled);
    for _ in 0..PIPELINED {
        assert_eq!(read_response(&mut r, false).status, 200);
    }
    writer.join().expect("the writer");
    // Closed by the clients, every connection is let go of: the worker's descriptors go back
    // to where they were.
    drop(open);
    drop(r);
    wait_idle(pid, idle);
    // A fresh set for the drain below.
    let mut open = Vec::new();
    for i in 0..20 {
        let s = connect(server.tcp()).expect("connect");
        let mut w = s.try_clone().expect("clone");
        let mut r = BufReader::new(s);
        w.write_all(format!("GET /late/{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .expect("send");
        assert_eq!(read_response(&mut r, false).status, 200);
        open.push((w, r));
    }
    // SIGTERM: the acceptor closes the worker's input; the idle connections close, the
    // worker and the acceptor exit.
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 322, "{summary:?}");
    for (_, r) in &mut open {
        assert!(closed(r), "an idle connection stayed open after the drain");
    }
}

#[test]
fn unix_and_tcp_listeners_side_by_side() {
    let dir = TempDir::new("unix");
    let path = dir.path().join("echo.sock");
    let unix = format!("unix:{}", path.display());
    let mut server = Server::start_listening(
        &["127.0.0.1:0", &unix],
        &["--workers", "2"],
        &worker("echo"),
    );
    assert_eq!(server.addrs[1], unix);
    assert!(echo_once(server.tcp(), "over tcp").is_ok());
    for i in 0..20 {
        let mut s = UnixStream::connect(&path).expect("connect over unix");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let token = format!("over unix {i}");
        s.write_all(token.as_bytes()).expect("send");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read");
        assert_eq!(got, token);
    }
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 21, "{summary:?}");
    assert!(!path.exists(), "the socket file was left behind");
}

#[test]
fn usage_errors_exit_2_without_panicking() {
    for args in [
        &["serve", "--listen", "127.0.0.1:0", "--", BIN][..],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "0",
            "--",
            BIN,
        ],
        &["serve", "--listen", "nonsense", "--workers", "1", "--", BIN],
        &["serve", "--listen", "127.0.0.1:0", "--workers", "1"],
        &["serve", "--listen", "unix:", "--workers", "1", "--", BIN],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--answer-timeout",
            "-1",
            "--",
            BIN,
        ],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--policy",
            "random",
            "--",
            BIN,
        ],
        &["worker", "--app", "nope"],
        &["worker"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run sockdup");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            util::stderr(&out)
        );
        assert!(!util::stderr(&out).contains("panicked"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A worker program that cannot start is an error, status 1.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--",
            "/nonexistent/worker",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run sockdup");
    assert_eq!(out.status.code(), Some(1), "{}", util::stderr(&out));
    assert!(util::stderr(&out).contains("/nonexistent/worker"));
}

/// The worker command of the attack tests: `sockdup worker --app echo`, except the first one
/// started after the file `hostile` appears in the serve process's directory, which runs
/// `--test-hostile MODE`.
fn hostile_once_script(mode: &str) -> String {
    format!(
        "if [ -e hostile ] && mkdir hostile-once 2>/dev/null; then \
         exec {BIN} worker --app echo --test-hostile {mode}; \
         else exec {BIN} worker --app echo; fi"
    )
}

/// One attack of a worker on its acceptor: `sockdup serve` with two echo workers warms up; one
/// of them is killed while idle (losing nothing) and its replacement is the hostile worker
/// `mode`; clients connect while it attacks. Then: the hostile worker is replaced with
/// `complaint` in the report (at once, unless `at_once` is false: then at the 1-second answer
/// timeout), every client got exactly its own echo back (none lost, none served twice: the
/// summary counts each connection once), and the acceptor's descriptor count is back where it
/// was before the attack.
#[track_caller]
fn attack(mode: &str, complaint: &str, at_once: bool) {
    let script = hostile_once_script(mode);
    let mut server = Server::start_logging(
        &["127.0.0.1:0"],
        &["--workers", "2", "--answer-timeout", "1"],
        &["sh", "-c", &script],
        HANDOFF_LOG,
    );
    let addr = server.tcp();
    let mut served = server.warm_up(2, &format!("{mode}-warm"));
    let fds_before = server.settled_fd_count(None);
    let workers = server.wait_workers(2, &BTreeSet::new());
    let victim = *workers.iter().next().expect("a worker");
    std::fs::write(server.dir().join("hostile"), b"").expect("create the trigger");
    // Idle (no client is connected): killing it loses nothing.
    signal(victim, Signal::KILL);
    let ready = server
        .stderr
        .wait_for_all(&["hostile worker", "ready"], WAIT);
    let hostile: u32 = ready
        .split("hostile worker ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{mode}: no pid in {ready:?}"));
    // The hostile worker is ready once the acceptor read its pid line: give it a moment to.
    thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let failures = echo_load(addr, 4, 5, mode);
    let took = t0.elapsed();
    let report = ["(pid", complaint, "replacing it"];
    let line = server.stderr.wait_for_all(&report, WAIT);
    assert!(
        line.contains(&format!("(pid {hostile})")),
        "{mode}: another worker was replaced: {line}"
    );
    assert!(failures.is_empty(), "{mode}: clients failed: {failures:?}");
    if at_once {
        // The answer timeout is 1 s: the connections the hostile worker held went on long
        // before (a failure bound for "at once", not a speed test).
        assert!(
            took < Duration::from_millis(900),
            "{mode}: the clients took {took:?}: the attack was not heard at once\n{}",
            server.stderr.text()
        );
    }
    // The hostile worker is gone (killed and reaped), a healthy one took its slot.
    let after = server.wait_workers(2, &BTreeSet::from([victim, hostile]));
    assert!(!after.contains(&hostile), "{mode}");
    assert!(
        util::wait_until(WAIT, || {
            (!std::path::Path::new(&format!("/proc/{hostile}")).exists()).then_some(true)
        }),
        "{mode}"
    );
    // Both workers serve again, the new one handed connections too (so that the acceptor's
    // connection to its inbox is made, as the old one's was before); then the acceptor holds
    // what it held before the attack.
    served += 20 + server.warm_up(2, &format!("{mode}-again"));
    let fds_after = server.settled_fd_count(Some(fds_before));
    assert_eq!(fds_after, fds_before, "{mode}: the acceptor's descriptors");
    assert!(
        server.running(),
        "{mode}: serve stopped:\n{}",
        server.stderr.text()
    );
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, served, "{mode}: {summary:?}");
    assert_eq!(summary.replaced, 1, "{mode}: {summary:?}");
    assert!(summary.restarts >= 2, "{mode}: {summary:?}");
}

#[test]
fn a_worker_confirming_an_id_never_given_out_is_replaced_at_once() {
    attack(
        "ok-unknown",
        "said it confirmed connection 4000000000000",
        true,
    );
}

#[test]
fn a_worker_confirming_connections_it_was_not_given_is_replaced_at_once() {
    attack("ok-not-given", "said it confirmed connection", true);
}

#[test]
fn a_worker_failing_connections_it_was_not_given_is_replaced_at_once() {
    attack("fail-not-given", "said it failed connection", true);
}

#[test]
fn a_worker_finishing_connections_it_never_confirmed_is_replaced_at_once() {
    attack("done-not-confirmed", "said it finished connection", true);
}

#[test]
fn a_worker_writing_an_endless_line_is_replaced_at_once() {
    attack("endless-line", "longer than 4096 bytes", true);
}

#[test]
fn a_worker_writing_random_bytes_is_replaced_at_once() {
    attack("random-bytes", "not the sockdup worker protocol", true);
}

#[test]
fn a_worker_leaving_a_line_unfinished_is_replaced_at_its_answer_timeout() {
    attack("partial-line", "did not answer within 1s", false);
}

/// Whether process `pid` is gone: no longer in /proc, or a zombie (exited, waiting for whoever
/// adopted it to reap it).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (at most `limit`) until every process of `pids` exited; names the ones that did not.
#[track_caller]
fn wait_all_exited(pids: &BTreeSet<u32>, limit: Duration, what: &str) {
    let until = Instant::now() + limit;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| !exited(p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what}: workers {alive:?} still run after {limit:?} (orphaned)"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn workers_of_a_killed_acceptor_finish_their_connections_and_exit() {
    let mut server = Server::start(&["--workers", "3"], &worker("echo"));
    let addr = server.tcp();
    assert!(echo_load(addr, 1, 6, "warm").is_empty());
    let workers = server.wait_workers(3, &BTreeSet::new());
    // Two connections, each confirmed and served once, held open: two workers have one each
    // (round robin), the third has none.
    let mut open: Vec<TcpStream> = (0..2).map(|_| connect(addr).expect("connect")).collect();
    for (i, s) in open.iter_mut().enumerate() {
        let msg = format!("before {i};");
        assert_eq!(exchange(s, &msg), msg);
    }
    server.signal(Signal::KILL);
    let status = server.wait_exit(WAIT);
    assert!(!status.success(), "{status:?}");
    // The idle worker sees its input end and exits by itself.
    let t0 = Instant::now();
    let busy = util::wait_until(WAIT, || {
        let alive: BTreeSet<u32> = workers.iter().copied().filter(|&p| !exited(p)).collect();
        (alive.len() == 2).then_some(alive)
    });
    assert!(
        t0.elapsed() < WAIT,
        "the idle worker did not exit: {workers:?}"
    );
    // The two others still serve what they have, to its end, and then exit.
    for (i, s) in open.iter_mut().enumerate() {
        let msg = format!("after the acceptor died {i};");
        assert_eq!(exchange(s, &msg), msg);
    }
    for p in &busy {
        assert!(!exited(*p), "worker {p} left its client");
    }
    for s in &mut open {
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("read to the end");
        assert!(rest.is_empty(), "{rest:?}");
    }
    wait_all_exited(&workers, WAIT, "after their clients closed");
    let text = server.stderr.text();
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn connections_handed_over_just_before_the_acceptor_dies_are_still_served() {
    // The worker reads its input only 1.5 s after it announced itself: the acceptor has
    // duplicated the connections to its inbox and written their conn lines, which wait in the
    // pipe, when it is killed. The worker then redeems them, cannot confirm them (nobody
    // reads), and must serve them all the same: nobody else holds them any more.
    let mut server = Server::start_logging(
        &["127.0.0.1:0"],
        &["--workers", "1", "--answer-timeout", "30"],
        &[BIN, "worker", "--app", "echo", "--test-read-delay", "1.5"],
        "sockdup=debug",
    );
    let addr = server.tcp();
    let line = server.stderr.wait_for("reads its input in", WAIT);
    let pid: u32 = line
        .split("sockdup worker: ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let mut open: Vec<TcpStream> = (0..3).map(|_| connect(addr).expect("connect")).collect();
    for (i, s) in open.iter_mut().enumerate() {
        write!(s, "handed {i};").expect("send");
    }
    // All three handed over (duplicated and their conn lines written).
    util::wait_until(WAIT, || {
        let text = server.stderr.text();
        let handed: usize = text
            .lines()
            .filter(|l| l.contains("connections handed to a worker"))
            .filter_map(|l| {
                l.split("count=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        (handed == 3).then_some(())
    });
    server.signal(Signal::KILL);
    server.wait_exit(WAIT);
    assert!(!exited(pid), "the worker died with its acceptor");
    for (i, s) in open.iter_mut().enumerate() {
        let msg = format!("handed {i};");
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).expect("read the echo");
        assert_eq!(String::from_utf8_lossy(&got), msg);
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("read to the end");
        assert!(rest.is_empty(), "{rest:?}");
    }
    wait_all_exited(&BTreeSet::from([pid]), WAIT, "after its clients closed");
}

/// Whether prlimit(1) (util-linux) is there; the exhaustion tests use it to change a running
/// process's `RLIMIT_NOFILE` (lowering or restoring the soft limit of a process of the same
/// user needs no privilege).
fn have_prlimit() -> bool {
    Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sets the soft `RLIMIT_NOFILE` of process `pid` to `soft` (its hard limit unchanged).
#[track_caller]
fn set_nofile(pid: u32, soft: u64) {
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={soft}:"))
        .output()
        .expect("run prlimit");
    assert!(out.status.success(), "prlimit: {}", util::stderr(&out));
}

/// The soft `RLIMIT_NOFILE` of process `pid`, from /proc/PID/limits.
fn nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line.split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// CPU time (user + system) process `pid` used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let rest = stat.rsplit_once(')').expect("stat").1;
    // After the command: state is field 3, utime 14, stime 15.
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|n| n.parse().expect("a tick count"))
        .collect();
    let ticks = rustix::param::clock_ticks_per_second();
    Duration::from_secs_f64((f[0] + f[1]) as f64 / ticks as f64)
}

#[test]
fn an_acceptor_out_of_descriptors_does_not_spin_and_serves_when_they_free_up() {
    if !have_prlimit() {
        eprintln!("skipped: prlimit(1) (util-linux) is not installed");
        return;
    }
    let mut server = Server::start(&["--workers", "1"], &worker("echo"));
    let addr = server.tcp();
    assert!(echo_load(addr, 1, 5, "warm").is_empty());
    let fds = server.settled_fd_count(None);
    let workers = server.wait_workers(1, &BTreeSet::new());
    let worker_pid = *workers.iter().next().expect("a worker");
    let soft = nofile(server.pid);
    // Three descriptors fewer than it holds; then its worker dies (idle: nothing is lost),
    // freeing its two pipes and the connection to its inbox, which leaves no room for the
    // pipes of another: starting it fails with EMFILE, and is tried again.
    set_nofile(server.pid, fds as u64 - 3);
    signal(worker_pid, Signal::KILL);
    server
        .stderr
        .wait_for("cannot start a worker now; trying again shortly", WAIT);
    // Clients come: every accept fails with EMFILE, and they wait in the backlog.
    let clients: Vec<_> = (0..10)
        .map(|i| thread::spawn(move || echo_once(addr, &format!("starved-{i}"))))
        .collect();
    server
        .stderr
        .wait_for_all(&["accept failed", "Too many open files"], WAIT);
    assert!(server.running(), "serve stopped:\n{}", server.stderr.text());
    // Out of descriptors, with connections waiting: it must not spin. (A bound for a busy
    // loop, which would use about 100% of the wall time, not a speed test.)
    let (cpu0, t0) = (cpu_time(server.pid), Instant::now());
    thread::sleep(Duration::from_secs(2));
    let (cpu, wall) = (cpu_time(server.pid) - cpu0, t0.elapsed());
    eprintln!("the acceptor out of descriptors used {cpu:?} of CPU in {wall:?}");
    assert!(
        cpu.as_secs_f64() < 0.3 * wall.as_secs_f64(),
        "the acceptor used {cpu:?} of CPU in {wall:?} while out of descriptors"
    );
    assert!(server.running(), "serve stopped:\n{}", server.stderr.text());
    assert!(
        server.workers().is_empty(),
        "a worker started without descriptors?"
    );
    // Descriptors free up: a worker starts, and every client waiting is served once.
    set_nofile(server.pid, soft);
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().expect("client").err())
        .collect();
    assert!(failures.is_empty(), "failed: {failures:?}");
    assert!(echo_load(addr, 1, 5, "after").is_empty());
    assert_eq!(
        server.settled_fd_count(Some(fds)),
        fds,
        "the acceptor's descriptors"
    );
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 20, "{summary:?}");
    assert_eq!(summary.replaced, 0, "{summary:?}\n{}", server.stderr.text());
    assert_eq!(summary.restarts, 1, "{summary:?}");
}

#[test]
fn a_worker_out_of_descriptors_is_not_replaced_and_serves_when_they_free_up() {
    if !have_prlimit() {
        eprintln!("skipped: prlimit(1) (util-linux) is not installed");
        return;
    }
    let mut server = Server::start(&["--workers", "1"], &worker("echo"));
    let addr = server.tcp();
    assert!(echo_load(addr, 1, 5, "warm").is_empty());
    let acceptor_fds = server.settled_fd_count(None);
    let workers = server.wait_workers(1, &BTreeSet::new());
    let pid = *workers.iter().next().expect("a worker");
    let idle = util::wait_until(WAIT, || {
        let a = fd_count(pid)?;
        thread::sleep(Duration::from_millis(100));
        (fd_count(pid)? == a).then_some(a)
    });
    // Room for about three connections (each is one descriptor once redeemed, and one while
    // it waits in the inbox).
    set_nofile(pid, idle as u64 + 4);
    // Twelve clients at once, each holding its connection for a while after its echo: the
    // worker cannot receive them all, and says so (WSAEMFILE) to the acceptor, which keeps
    // them and hands them over as the worker's descriptors free up.
    let clients: Vec<_> = (0..12)
        .map(|i| {
            thread::spawn(move || -> Result<(), String> {
                let token = format!("tight-{i};");
                let mut s = connect(addr).map_err(|e| format!("{token} {e}"))?;
                s.write_all(token.as_bytes())
                    .map_err(|e| format!("{token} {e}"))?;
                let mut got = vec![0u8; token.len()];
                s.read_exact(&mut got).map_err(|e| format!("{token} {e}"))?;
                if got != token.as_bytes() {
                    return Err(format!("{token}: got {:?}", String::from_utf8_lossy(&got)));
                }
                thread::sleep(Duration::from_millis(500));
                s.shutdown(Shutdown::Write)
                    .map_err(|e| format!("{token} {e}"))?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest)
                    .map_err(|e| format!("{token} {e}"))?;
                rest.is_empty()
                    .then_some(())
                    .ok_or(format!("{token}: extra {rest:?}"))
            })
        })
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().expect("client").err())
        .collect();
    assert!(
        failures.is_empty(),
        "failed: {failures:?}\n{}",
        server.stderr.text()
    );
    let text = server.stderr.text();
    assert!(
        text.contains("handing off failed") && text.contains("target-out-of-descriptors"),
        "the worker never ran out of descriptors (the test proves nothing):\n{text}"
    );
    // The same worker serves on; it and the acceptor hold what they held before.
    assert_eq!(server.workers(), workers);
    util::wait_until(WAIT, || (fd_count(pid)? == idle).then_some(()));
    assert_eq!(
        server.settled_fd_count(Some(acceptor_fds)),
        acceptor_fds,
        "the acceptor's descriptors"
    );
    let summary = server.stop(WAIT);
    assert_eq!(summary.total, 17, "{summary:?}");
    assert_eq!((summary.replaced, summary.restarts), (0, 0), "{summary:?}");
}

// ---- an async (tokio) worker: `tokio-serve-worker`, built from the example
// `tokio_serve_worker` (`sockdup::handoff::Worker::incoming_async`) ----

#[test]
fn an_async_worker_serves_a_thousand_connections_each_once_through_a_sigkill() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 248;
    let mut server = Server::start_logging(
        &["127.0.0.1:0"],
        &["--workers", "2"],
        &[TOKIO_WORKER],
        HANDOFF_LOG,
    );
    let addr = server.tcp();
    let first = server.wait_workers(2, &BTreeSet::new());
    // Warm up: both workers announced, the acceptor's connections to their inboxes made.
    let mut warm = server.warm_up(2, "warm") as usize;
    let fds_before = server.settled_fd_count(None);
    // The worker that survives: its descriptors when idle, to compare after the load.
    let survivor = *first.iter().last().expect("a worker");
    let survivor_idle = fd_count(survivor).expect("the worker's fds");
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let done = done.clone();
            thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..PER_THREAD {
                    if let Err(e) = echo_once(addr, &format!("tokio-{t}-{i};")) {
                        failures.push(e);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(2));
                }
                failures
            })
        })
        .collect();
    util::wait_until(WAIT, || (done.load(Ordering::SeqCst) >= 300).then_some(()));
    // Midway: kill a worker when it holds no connection. A connection a worker has redeemed
    // is its own (nobody else holds the socket), so a kill while it serves one loses that
    // client whatever the acceptor does; what the acceptor guarantees is that nothing it
    // still holds (queued, or sent and not confirmed) is lost or served twice. Its idle
    // descriptor count: the fewest seen over a while.
    let victim = *first.iter().next().expect("a worker");
    let idle = idle_fd_count(victim);
    wait_idle(victim, idle);
    let killed_at = done.load(Ordering::SeqCst);
    signal(victim, Signal::KILL);
    let after = server.wait_workers(2, &BTreeSet::from([victim]));
    assert!(!after.contains(&victim));
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    assert!(failures.is_empty(), "failed: {failures:?}");
    assert!(
        killed_at < THREADS * PER_THREAD,
        "the kill came after the load ({killed_at})"
    );
    // Back to the descriptors it had with two idle workers (the new one handed a connection,
    // as the old one had been).
    warm += server.warm_up(2, "again") as usize;
    let fds_after = server.settled_fd_count(Some(fds_before));
    assert_eq!(fds_after, fds_before, "the acceptor's descriptors");
    // The async worker that served throughout holds nothing more than before the load: every
    // connection's descriptor closed with its task.
    let survivor_after = util::wait_until(WAIT, || {
        let n = fd_count(survivor)?;
        (n == survivor_idle).then_some(n)
    });
    eprintln!(
        "acceptor fds {fds_before} -> {fds_after}; surviving worker fds {survivor_idle} -> {survivor_after}"
    );
    let summary = server.stop(WAIT);
    assert_eq!(
        summary.total as usize,
        THREADS * PER_THREAD + warm,
        "{}",
        server.stderr.text()
    );
    assert!(summary.total >= 1000, "{}", summary.total);
    assert_eq!(summary.per_worker.iter().sum::<u64>(), summary.total);
    assert!(summary.restarts >= 1, "{}", server.stderr.text());
}

#[test]
fn the_test_worker_is_the_documented_example() {
    // The binary the tests run is built from the example's own file.
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("the manifest");
    let bin = manifest
        .split("[[bin]]")
        .find(|b| b.contains("name = \"tokio-serve-worker\""))
        .expect("the test binary's [[bin]] section");
    assert!(
        bin.contains("path = \"../sockdup/examples/tokio_serve_worker.rs\""),
        "the test binary is not the documented example: {bin}"
    );
}

/// Reads one line of the worker's output (bounded by the worker's own progress: every test
/// here expects the line to come).
fn read_line(stdout: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read a line");
    line
}

#[test]
fn the_async_worker_speaks_the_protocol_ok_fail_done_and_ends_with_its_input() {
    let _guard = sockdup::startup().expect("startup");
    let (child, mut stdin, mut stdout) = piped_worker(&[TOKIO_WORKER]);
    let (mut client, accepted) = Loopback::new().pair();
    let record = sockdup::duplicate_socket(&accepted, child.id()).expect("duplicate");
    drop(accepted);
    // The same record twice in one write: the first is redeemed, the second's ticket is spent.
    // Both answers come in one write, in order; the stream goes on after the failure.
    let mut lines = String::new();
    for id in [1, 2] {
        lines.push_str(&format!("conn {id} {record}\n"));
    }
    stdin.write_all(lines.as_bytes()).expect("write conn lines");
    assert_eq!(read_line(&mut stdout), "ok 1\n");
    let fail = read_line(&mut stdout);
    assert!(fail.starts_with("fail 2 "), "{fail:?}");
    // The connection is served by the tokio task: echo, then `done` once it ends.
    client.write_all(b"async hello").expect("write");
    client.shutdown(Shutdown::Write).expect("shutdown");
    let mut got = String::new();
    client.read_to_string(&mut got).expect("read the echo");
    assert_eq!(got, "async hello");
    assert_eq!(read_line(&mut stdout), "done 1\n");
    // The acceptor's end closes: the worker finishes and exits 0.
    ends_quietly(child, stdin, stdout);
}

#[test]
fn the_async_worker_answers_a_malformed_line_at_once_and_exits_1() {
    answers_a_malformed_line_at_once_and_exits_1(&[TOKIO_WORKER]);
}

/// The worker `command` (its input left open) answers a malformed line at once with an
/// `error` line and exits 1, without a panic.
fn answers_a_malformed_line_at_once_and_exits_1(command: &[&str]) {
    for (bad, what) in [
        ("hello worker\n", "hello worker"),
        ("conn 1 not-a-record\n", "the record is not valid"),
    ] {
        let (mut child, mut stdin, mut stdout) = piped_worker(command);
        // The input stays open: the worker must not wait for its end.
        stdin.write_all(bad.as_bytes()).expect("write the bad line");
        let line = read_line(&mut stdout);
        assert!(
            line.starts_with("error 10050 protocol-violation "),
            "{what}: {line:?}"
        );
        assert!(line.contains(what), "{line:?}");
        let status = util::wait_until(WAIT, || child.try_wait().expect("try_wait"));
        assert_eq!(status.code(), Some(1), "{what}");
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read stderr");
        assert!(!err.contains("panicked"), "{err}");
        drop(stdin);
    }
}

// ---- a worker driving `sockdup::handoff::Worker::incoming_nonblocking` from its own poll
// loop: `poll-serve-worker`, built from the example `poll_serve_worker` ----

/// The poll-loop worker: the example `poll_serve_worker`.
const POLL_WORKER: &str = env!("CARGO_BIN_EXE_poll-serve-worker");

#[test]
fn a_poll_loop_worker_serves_each_connection_once_on_one_thread() {
    // Under the acceptor, two workers whose only thread is their poll loop (which reads the
    // channel and serves the library's inbox too); every client gets its own bytes back exactly
    // once, and the acceptor's and the workers' descriptors end where they began.
    const THREADS: usize = 4;
    const PER_THREAD: usize = 100;
    let mut server = Server::start_logging(
        &["127.0.0.1:0"],
        &["--workers", "2"],
        &[POLL_WORKER],
        HANDOFF_LOG,
    );
    let workers = server.wait_workers(2, &BTreeSet::new());
    let mut made = server.warm_up(2, "warm") as usize;
    let acceptor_fds = server.settled_fd_count(None);
    // Each worker's descriptors when it holds no connection: the fewest seen over a while.
    let idle: Vec<(u32, usize)> = workers.iter().map(|&p| (p, idle_fd_count(p))).collect();
    let failures = echo_load(server.tcp(), THREADS, PER_THREAD, "poll");
    assert!(failures.is_empty(), "failed: {failures:?}");
    made += THREADS * PER_THREAD;
    for &pid in &workers {
        let threads = sockdup_tests::util::threads_of(pid);
        assert_eq!(threads, 1, "worker {pid} runs {threads} threads");
    }
    for &(pid, n) in &idle {
        wait_idle(pid, n);
    }
    assert_eq!(
        server.settled_fd_count(Some(acceptor_fds)),
        acceptor_fds,
        "the acceptor's descriptors"
    );
    assert_eq!(server.workers(), workers, "a worker was replaced");
    let summary = server.stop(WAIT);
    assert_eq!(summary.total as usize, made, "{}", server.stderr.text());
    assert_eq!(summary.per_worker.iter().sum::<u64>(), summary.total);
    assert_eq!(
        (summary.redispatched, summary.restarts, summary.replaced),
        (0, 0, 0),
        "{summary:?}"
    );
}

#[test]
fn the_poll_loop_worker_serves_on_after_the_end_of_its_input_and_then_exits_0() {
    // The non-blocking protocol end to end, piped: one batch answered `ok` and `fail` in one
    // write, `done` when the connection ends and its descriptor closed; then the end of the
    // input while a connection is open: that connection is still served, `done` comes when it
    // ends, and the worker exits 0, having said nothing more.
    let _guard = sockdup::startup().expect("startup");
    let (mut child, mut stdin, mut stdout) = piped_worker(&[POLL_WORKER]);
    let pid = child.id();
    let loopback = Loopback::new();
    let hand_over = |stdin: &mut std::process::ChildStdin, ids: &[u64]| {
        let (client, accepted) = loopback.pair();
        let record = sockdup::duplicate_socket(&accepted, pid).expect("duplicate");
        drop(accepted);
        let lines: String = ids
            .iter()
            .map(|id| format!("conn {id} {record}\n"))
            .collect();
        stdin.write_all(lines.as_bytes()).expect("write conn lines");
        client
    };
    // The same record twice in one write: the first is redeemed, the second's ticket is spent.
    let mut first = hand_over(&mut stdin, &[1, 2]);
    assert_eq!(read_line(&mut stdout), "ok 1\n");
    let fail = read_line(&mut stdout);
    assert!(fail.starts_with("fail 2 "), "{fail:?}");
    first.write_all(b"first").expect("write");
    first.shutdown(Shutdown::Write).expect("shutdown");
    let mut got = String::new();
    first.read_to_string(&mut got).expect("read the echo");
    assert_eq!(got, "first");
    assert_eq!(read_line(&mut stdout), "done 1\n");
    // Its descriptors with no connection: the same twice in a row.
    let idle = util::wait_until(WAIT, || {
        let a = fd_count(pid)?;
        thread::sleep(Duration::from_millis(20));
        (fd_count(pid)? == a).then_some(a)
    });
    let mut last = hand_over(&mut stdin, &[3]);
    assert_eq!(read_line(&mut stdout), "ok 3\n");
    last.write_all(b"before the end;").expect("write");
    let mut got = [0u8; 15];
    last.read_exact(&mut got).expect("read the echo");
    assert_eq!(&got, b"before the end;");
    assert_eq!(fd_count(pid), Some(idle + 1), "serving one connection");
    // The acceptor's end closes while the connection is open: it is served to its end.
    drop(stdin);
    last.write_all(b"after the end").expect("write");
    last.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = String::new();
    last.read_to_string(&mut rest).expect("read the echo");
    assert_eq!(rest, "after the end");
    assert_eq!(read_line(&mut stdout), "done 3\n");
    let status = util::wait_until(WAIT, || child.try_wait().expect("try_wait"));
    assert!(status.success(), "{status:?}");
    let mut more = String::new();
    stdout.read_to_string(&mut more).expect("read the rest");
    assert!(more.is_empty(), "{more:?}");
}

#[test]
fn the_poll_loop_worker_answers_a_malformed_line_at_once_and_exits_1() {
    answers_a_malformed_line_at_once_and_exits_1(&[POLL_WORKER]);
}

#[test]
fn a_worker_whose_input_is_not_a_pipe_reads_it_to_its_end_and_exits_0() {
    // A worker's input redirected by hand from /dev/null or a file cannot be watched by
    // epoll (EPERM); it is read anyway: its end ends the worker, as a pipe's does.
    let dir = TempDir::new("input");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").expect("write the file");
    for input in [std::path::Path::new("/dev/null"), empty.as_path()] {
        let mut child = Command::new(BIN)
            .args(["worker", "--app", "echo"])
            .stdin(std::fs::File::open(input).expect("open the input"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the worker");
        let status = util::wait_until(WAIT, || child.try_wait().expect("try_wait"));
        let mut out = String::new();
        let mut err = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("stdout");
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("stderr");
        assert!(status.success(), "{input:?}: {status:?}: {err}");
        assert_eq!(out, format!("pid {}\n", child.id()), "{input:?}");
    }
}
