//! `sockdup serve` with an async worker: `tokio-serve-worker` (built from the example
//! `tokio_serve_worker`, a tokio echo server taking its connections with
//! `sockdup::handoff::Worker::incoming_async`). Real processes, loopback, bounded waits.
//!
//! Covered: 1 000 echo connections, each served exactly once, with a worker SIGKILLed midway
//! (the acceptor starts another; no connection lost or served twice; the descriptors of the
//! acceptor and of the surviving worker back where they were; a clean drain at SIGTERM); the protocol spoken to a piped
//! worker (`ok` and `fail` for one batch in one write, `done` when the connection ends, exit 0
//! when the input closes; a malformed line answered at once with `error`, exit 1); the example
//! and the test's copy are the same program.

mod util;

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use util::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_sockdup");
const WORKER: &str = env!("CARGO_BIN_EXE_tokio-serve-worker");

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(10);

/// A running `sockdup serve --listen 127.0.0.1:0 --workers N -- tokio-serve-worker`.
struct Server {
    child: Child,
    pid: u32,
    stderr: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Server {
    fn start(workers: usize) -> Self {
        let dir = TempDir::new("srv-tokio");
        let port_file = dir.path().join("ports");
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--port-file"])
            .arg(&port_file)
            .args(["--workers", &workers.to_string(), "--", WORKER])
            .current_dir(dir.path())
            // The acceptor's debug lines say which worker (pid) it handed connections to.
            .env("RUST_LOG", "warn,sockdup::handoff::acceptor=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sockdup serve");
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        util::wait_until(WAIT, || {
            let lines = stderr.lock().unwrap();
            lines
                .iter()
                .any(|l| l.contains("sockdup serve: listening on"))
                .then_some(())
        });
        let text = std::fs::read_to_string(&port_file).expect("read the port file");
        let addr = text.trim().parse().expect("a TCP address");
        Self {
            child,
            pid,
            stderr,
            addr,
            _dir: dir,
        }
    }

    fn text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The worker processes (the serve process's children) right now.
    fn workers(&self) -> BTreeSet<u32> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
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

    /// Waits until `n` workers run, none of them in `not`.
    fn wait_workers(&self, n: usize, not: &BTreeSet<u32>) -> BTreeSet<u32> {
        util::wait_until(WAIT, || {
            let now = self.workers();
            (now.len() == n && now.is_disjoint(not)).then_some(now)
        })
    }

    /// Echo connections (at least `min`) until each worker in `pids` has been handed one;
    /// returns how many were made. The acceptor connects to a worker's inbox at its first
    /// handoff and keeps the connection while the worker lives: its descriptor counts compare
    /// only when every worker has been handed something.
    fn warm_up(&self, pids: &BTreeSet<u32>, min: usize, tag: &str) -> usize {
        let handed = |pid: &u32| {
            let pid = format!("pid={pid} ");
            self.stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("connections handed to a worker") && l.contains(&pid))
        };
        let until = std::time::Instant::now() + WAIT;
        let mut made = 0;
        while made < min || !pids.iter().all(handed) {
            assert!(
                std::time::Instant::now() < until,
                "workers {pids:?} not all handed a connection:\n{}",
                self.text()
            );
            echo_once(self.addr, &format!("{tag}-{made};")).expect("warm-up");
            made += 1;
        }
        made
    }

    /// The serve process's descriptor count once it is `want` or holds still (the same over
    /// 100 ms), or after 5 s.
    fn settled_fd_count(&self, want: Option<usize>) -> usize {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let a = fd_count(self.pid).expect("serve's fds");
            thread::sleep(Duration::from_millis(100));
            let b = fd_count(self.pid).expect("serve's fds");
            if want.map_or(a == b, |w| b == w) || std::time::Instant::now() > until {
                return b;
            }
        }
    }

    /// SIGTERM, a clean exit, and the summary line's numbers: (total, per worker, restarts).
    fn stop(&mut self) -> (u64, Vec<u64>, u64) {
        signal(self.pid, Signal::TERM);
        let child = &mut self.child;
        let status = util::wait_until(WAIT, || child.try_wait().expect("try_wait"));
        let text = self.text();
        assert!(status.success(), "serve exited with {status:?}:\n{text}");
        assert!(!text.contains("panicked"), "a panic on stderr:\n{text}");
        let line = util::wait_until(WAIT, || {
            self.stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("sockdup serve: summary:"))
                .cloned()
        });
        // "... summary: connections T (worker 1: A, worker 2: B), re-dispatched R, restarts S, ..."
        let rest = line.split_once("connections ").expect("summary").1;
        let (total, rest) = rest.split_once(" (").expect("summary");
        let (per, rest) = rest.split_once("), ").expect("summary");
        let per_worker = per
            .split(", ")
            .map(|w| {
                w.split_once(": ")
                    .expect("summary")
                    .1
                    .parse()
                    .expect("count")
            })
            .collect();
        let restarts = rest
            .split(", ")
            .find_map(|c| c.strip_prefix("restarts "))
            .expect("restarts")
            .parse()
            .expect("restarts");
        (total.parse().expect("total"), per_worker, restarts)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
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

fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// One echo connection: sends `token`, closes its write side, and expects exactly `token`
/// back before the end of the stream (a connection served twice would echo it twice).
fn echo_once(addr: SocketAddr, token: &str) -> Result<(), String> {
    let run = || -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, WAIT)?;
        s.set_read_timeout(Some(WAIT))?;
        s.set_write_timeout(Some(WAIT))?;
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

#[test]
fn an_async_worker_serves_a_thousand_connections_each_once_through_a_sigkill() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 248;
    const WARM_UP: usize = 8;
    let mut server = Server::start(2);
    let addr = server.addr;
    let first = server.wait_workers(2, &BTreeSet::new());
    // Warm up: both workers announced, the acceptor's connections to their inboxes made.
    let mut warm = server.warm_up(&first, WARM_UP, "warm");
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
    let idle = (0..50)
        .filter_map(|_| {
            thread::sleep(Duration::from_millis(2));
            fd_count(victim)
        })
        .min()
        .expect("the worker's fds");
    util::wait_until(WAIT, || (fd_count(victim)? <= idle).then_some(()));
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
    warm += server.warm_up(&after, 0, "again");
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
    let (total, per_worker, restarts) = server.stop();
    assert_eq!(
        total as usize,
        THREADS * PER_THREAD + warm,
        "{}",
        server.text()
    );
    assert_eq!(THREADS * PER_THREAD + WARM_UP, 1000);
    assert_eq!(per_worker.iter().sum::<u64>(), total);
    assert!(restarts >= 1, "{}", server.text());
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

/// Starts `tokio-serve-worker` with piped standard input and output, as an acceptor would, and
/// reads its `pid` line.
fn piped_worker() -> (
    Child,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = Command::new(WORKER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tokio-serve-worker");
    let stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut pid = String::new();
    stdout.read_line(&mut pid).expect("read the pid line");
    assert_eq!(pid.trim(), format!("pid {}", child.id()));
    (child, stdin, stdout)
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
    let (mut child, mut stdin, mut stdout) = piped_worker();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    let (accepted, _) = listener.accept().expect("accept");
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
    drop(stdin);
    let status = util::wait_until(WAIT, || child.try_wait().expect("try_wait"));
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read the rest");
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn the_async_worker_answers_a_malformed_line_at_once_and_exits_1() {
    for (bad, what) in [
        ("hello worker\n", "hello worker"),
        ("conn 1 not-a-record\n", "the record is not valid"),
    ] {
        let (mut child, mut stdin, mut stdout) = piped_worker();
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
