//! Criterion benchmark `upgrade`: how long a new process waits, from asking for a running
//! server's listeners to holding its own descriptors of them (accepting), for 1, 64 and 1000
//! listeners, beside the raw twin measured in the same run.
//!
//! Group `takeover`, one pair of benchmarks per listener count `N` (throughput: `N` listeners):
//!
//! - `sockdup/N`: [`Upgrade::take_over`] of all `N` names (`l0` .. `l{N-1}`) from an
//!   `upgrade-server sockdup N PID_FILE` process: pid file, pidfd, control connection,
//!   credentials, the `take` line, the old process's `duplicate_sockets` to this process's inbox,
//!   `N` record lines, `sockets_from_info`. Timed: the `take_over` call alone, which returns
//!   with the descriptors in hand. Not timed: the [`Takeover::abort`] that follows each one
//!   (closing the descriptors and waiting for the old process's `aborted`, so the next
//!   takeover may start).
//! - `raw/N`: one request byte to an `upgrade-server raw N` process over a pre-connected
//!   `SOCK_SEQPACKET` socketpair, which answers with all `N` listeners in bare `SCM_RIGHTS`
//!   messages (253 per message), received with `recvmsg(MSG_CMSG_CLOEXEC)` until `N`
//!   descriptors are in hand: what systemd's fd store or tableflip do. Timed: request to the
//!   last descriptor received. Not timed: closing them.
//!
//! Before each pair, one untimed round of each checks that what arrives is `N` distinct
//! listening TCP sockets on `127.0.0.1`. `ratios.py` prints sockdup/raw for each `N`.
//!
//! Both this process and the servers raise their soft `RLIMIT_NOFILE` to the hard limit
//! (1000 listeners, and their duplicates, pass the usual soft limit of 1024). Placement as in
//! `handoff` (`SOCKDUP_BENCH_PIN`, see the library's [Placement](sockdup_bench#placement)
//! section): by default this process and every thread of the servers run on one CPU.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use rustix::net::{self, SendFlags, sockopt};
use sockdup::upgrade::{Takeover, Upgrade};
use sockdup_bench::{FDS_REQUEST, MAX_FDS, RAW, SERVER_READY, TARGET_CPU_ENV};

/// The listener counts measured.
const COUNTS: [usize; 3] = [1, 64, 1000];

/// Winsock's `WSAEINPROGRESS`: another takeover of the same server is in progress.
const WSAEINPROGRESS: i32 = 10036;

/// An `upgrade-server` process. Dropping it closes its standard input (it exits by itself),
/// and kills it if it has not exited within a few seconds.
struct Server {
    child: Child,
    /// `sockdup` mode: the pipe to its standard input.
    stdin: Option<ChildStdin>,
    /// `raw` mode: this end of the socketpair that is its standard input.
    ctl: Option<OwnedFd>,
}

impl Server {
    fn command(cpu: Option<usize>) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_upgrade-server"));
        cmd.stdout(Stdio::piped()).env_remove(TARGET_CPU_ENV);
        if let Some(cpu) = cpu {
            cmd.env(TARGET_CPU_ENV, cpu.to_string());
        }
        cmd
    }

    /// Waits for the server's [`SERVER_READY`] line.
    fn started(mut self) -> Self {
        let out = self.child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        assert_eq!(
            line.trim_end(),
            SERVER_READY,
            "upgrade-server did not start (see its stderr above)"
        );
        self
    }

    /// `upgrade-server sockdup n pid_file`: publishes `n` listeners under `pid_file`.
    fn sockdup(n: usize, pid_file: &Path, cpu: Option<usize>) -> Self {
        let mut child = Self::command(cpu)
            .arg("sockdup")
            .arg(n.to_string())
            .arg(pid_file)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawning upgrade-server");
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            ctl: None,
        }
        .started()
    }

    /// `upgrade-server raw n`: sends its `n` listeners for each [`FDS_REQUEST`].
    fn raw(n: usize, cpu: Option<usize>) -> Self {
        let (ctl, theirs) = sockdup_bench::control_pair().expect("control socketpair");
        let child = Self::command(cpu)
            .arg("raw")
            .arg(n.to_string())
            .stdin(Stdio::from(theirs))
            .spawn()
            .expect("spawning upgrade-server");
        Self {
            child,
            stdin: None,
            ctl: Some(ctl),
        }
        .started()
    }

    /// The raw twin's round: one request, then `recvmsg` until `n` descriptors are in hand.
    fn raw_fetch(&self, n: usize) -> Vec<OwnedFd> {
        let ctl = self.ctl.as_ref().expect("a raw server").as_fd();
        net::send(ctl, &[FDS_REQUEST], SendFlags::NOSIGNAL).expect("sending a request");
        let mut fds = Vec::with_capacity(n);
        let mut buf = [0u8; 8];
        let mut messages = 0;
        while fds.len() < n {
            let bytes = sockdup_bench::recv_fds(ctl, &mut buf, &mut fds)
                .unwrap_or_else(|e| panic!("receiving listeners: {e}"));
            assert!(bytes > 0, "upgrade-server exited (see its stderr above)");
            assert_eq!(&buf[..bytes], [RAW], "a listener message");
            messages += 1;
        }
        assert_eq!(fds.len(), n, "exactly the listeners asked for");
        assert_eq!(messages, n.div_ceil(MAX_FDS), "{MAX_FDS} per message");
        fds
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        drop(self.ctl.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the benchmark's temporary directory (its pid files) when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks that `fds` are `n` distinct listening TCP sockets on 127.0.0.1.
fn check_listeners<'a>(fds: impl IntoIterator<Item = BorrowedFd<'a>>, n: usize, what: &str) {
    let mut addrs = HashSet::new();
    for fd in fds {
        assert!(
            sockopt::socket_acceptconn(fd).expect("SO_ACCEPTCONN"),
            "{what}: not listening"
        );
        let listener = TcpListener::from(fd.try_clone_to_owned().expect("dup"));
        let addr = listener.local_addr().expect("getsockname");
        assert!(
            matches!(addr, SocketAddr::V4(a) if a.ip().is_loopback()),
            "{what}: {addr}"
        );
        addrs.insert(addr);
    }
    assert_eq!(addrs.len(), n, "{what}: {n} distinct listeners");
}

/// Counts the `take_over` calls refused with `WSAEINPROGRESS` although the previous takeover's
/// `abort` had returned (retried; see the report at the end of the run).
#[derive(Default)]
struct Refusals {
    in_progress: u64,
    attempts: u64,
}

/// One timed takeover: `take_over(names)`, the time it took, and the takeover (to abort).
/// A `WSAEINPROGRESS` refusal is counted and retried at once, the new attempt timed afresh.
fn take_over(upgrade: &Upgrade, names: &[&str], refusals: &mut Refusals) -> (Duration, Takeover) {
    loop {
        refusals.attempts += 1;
        let start = Instant::now();
        let outcome = upgrade.take_over(names);
        let elapsed = start.elapsed();
        match outcome {
            Ok(t) => return (elapsed, t),
            Err(e) if e.code() == WSAEINPROGRESS => refusals.in_progress += 1,
            Err(e) => panic!("take_over: {e}"),
        }
    }
}

fn takeover(c: &mut Criterion, dir: &Path, cpu: Option<usize>, refusals: &mut Refusals) {
    let mut g = c.benchmark_group("takeover");
    for n in COUNTS {
        let pid_file = dir.join(format!("upgrade-{n}.pid"));
        let sockdup_server = Server::sockdup(n, &pid_file, cpu);
        let raw_server = Server::raw(n, cpu);
        let upgrade = Upgrade::new(&pid_file);
        let owned: Vec<String> = (0..n).map(sockdup_bench::listener_name).collect();
        let names: Vec<&str> = owned.iter().map(String::as_str).collect();

        // One untimed round of each, checked.
        let (_, t) = take_over(&upgrade, &names, refusals);
        assert_eq!(t.old_pid(), sockdup_server.child.id());
        assert!(
            t.listeners()
                .map(|(name, _)| name)
                .eq(names.iter().copied())
        );
        check_listeners(t.listeners().map(|(_, fd)| fd), n, "sockdup");
        t.abort().expect("abort");
        let fds = raw_server.raw_fetch(n);
        check_listeners(fds.iter().map(AsFd::as_fd), n, "raw");
        drop(fds);

        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("sockdup", n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let (elapsed, t) = take_over(&upgrade, &names, refusals);
                    timed += elapsed;
                    t.abort().expect("abort");
                }
                timed
            });
        });
        g.bench_function(BenchmarkId::new("raw", n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let fds = raw_server.raw_fetch(n);
                    timed += start.elapsed();
                    drop(fds);
                }
                timed
            });
        });
        drop(sockdup_server);
        assert!(
            !pid_file.exists(),
            "the server removed its pid file as it stopped"
        );
    }
    g.finish();
}

fn main() {
    // Modest defaults so the whole run stays well under two minutes; the command line
    // (`-- --measurement-time 10` and so on) still overrides them.
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    sockdup_bench::raise_nofile_limit().unwrap_or_else(|e| panic!("raising RLIMIT_NOFILE: {e}"));
    let cpu = sockdup_bench::place("upgrade").unwrap_or_else(|e| panic!("{e}"));
    let guard = sockdup::startup().expect("sockdup::startup in the benchmark");
    let dir = TempDir(
        sockdup_bench::fresh_temp_dir("sockdup-bench-upgrade").unwrap_or_else(|e| panic!("{e}")),
    );
    let mut refusals = Refusals::default();
    takeover(&mut c, &dir.0, cpu, &mut refusals);
    if refusals.in_progress > 0 {
        eprintln!(
            "upgrade: {} of {} take_over calls were refused with WSAEINPROGRESS right after the \
             previous takeover's abort() had returned (retried, untimed)",
            refusals.in_progress, refusals.attempts
        );
    }
    drop(dir);
    drop(guard);
    c.final_summary();
}
