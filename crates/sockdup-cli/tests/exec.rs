//! Tests of `sockdup exec` with real processes: zero-downtime replacement of a
//! socket-activated server (`sockdup worker --app hello --listen-fds`) under a steady stream of
//! connections, and takeovers that are refused or fail, leaving the running server as it was;
//! and an async server (`tokio-exec-server`, built from the example `tokio_exec_server`)
//! upgraded three times under load.
//!
//! Ports: each test picks a free loopback port (bind to port 0, close) and passes it on
//! every command line, since a replacement runs the same command line. Every wait is bounded.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::{TempDir, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sockdup");
const TOKIO_SERVER: &str = env!("CARGO_BIN_EXE_tokio-exec-server");

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `sockdup exec` process, its stderr going to a file for the failure messages.
struct Exec {
    child: Child,
    log: PathBuf,
}

impl Exec {
    fn start(dir: &Path, listen: &[String], extra: &[&str], command: &[&str]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(format!("exec-{}.log", N.fetch_add(1, Ordering::SeqCst)));
        let mut cmd = Command::new(BIN);
        cmd.arg("exec");
        for l in listen {
            cmd.args(["--listen", l]);
        }
        cmd.args(["--pid-file", &pid_file(dir).to_string_lossy()]);
        // Short defaults, unless the test sets its own.
        for (opt, value) in [
            ("--ready-after", "0.2"),
            ("--drain-deadline", "5"),
            ("--timeout", "5"),
        ] {
            if !extra.contains(&opt) {
                cmd.args([opt, value]);
            }
        }
        cmd.args(extra)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        Self {
            child: cmd.spawn().expect("spawn sockdup exec"),
            log,
        }
    }

    /// `sockdup exec --listen web=127.0.0.1:PORT -- tokio-exec-server` (the example
    /// `tokio_exec_server`: a tokio echo server that drains and exits 0 at SIGTERM).
    fn tokio(dir: &Path, port: u16) -> Self {
        Self::start(
            dir,
            &[format!("web=127.0.0.1:{port}")],
            &[],
            &[TOKIO_SERVER],
        )
    }

    fn hello(dir: &Path, port: u16) -> Self {
        Self::start(
            dir,
            &[format!("web=127.0.0.1:{port}")],
            &[],
            &[BIN, "worker", "--app", "hello", "--listen-fds"],
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself.
    #[track_caller]
    fn exits(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                start.elapsed() < WAIT,
                "sockdup exec {} did not exit; log:\n{}",
                self.pid(),
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.exits()
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.terminate();
        }
    }
}

/// Whether process `pid` has a child yet (`sockdup exec`'s server).
fn has_child(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .is_ok_and(|c| !c.trim().is_empty())
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("server.pid")
}

fn pid_in(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One HTTP request on a fresh connection; `Err` says what went wrong.
fn get(port: u16) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    if text.starts_with("HTTP/1.1 200 OK") && text.ends_with("hello from sockdup\n") {
        Ok(())
    } else {
        Err(format!("unexpected answer {text:?}"))
    }
}

/// Waits until `exec` serves: the pid file names it and a request is answered.
#[track_caller]
fn serving(dir: &Path, exec: &Exec, port: u16) {
    serving_by(dir, exec, || get(port).is_ok());
}

/// Waits until the pid file names `exec` and `answers()` (a request to its server succeeds).
#[track_caller]
fn serving_by(dir: &Path, exec: &Exec, answers: impl Fn() -> bool) {
    let pid = exec.pid();
    let start = Instant::now();
    while pid_in(dir) != Some(pid) || !answers() {
        assert!(
            start.elapsed() < WAIT,
            "{pid} not serving; log:\n{}",
            exec.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn three_upgrades_under_a_steady_stream_of_connections_refuse_nothing() {
    let dir = TempDir::new("exec-upgrades");
    let port = free_port();
    let mut current = Exec::hello(dir.path(), port);
    serving(dir.path(), &current, port);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut failures) = (0u32, Vec::new());
                // Bounded: a stream of connections, not a flood.
                while !stop.load(Ordering::SeqCst) && ok + (failures.len() as u32) < 50_000 {
                    match get(port) {
                        Ok(()) => ok += 1,
                        Err(e) => failures.push(e),
                    }
                }
                (ok, failures)
            })
        })
        .collect();

    for round in 1..=3 {
        thread::sleep(Duration::from_millis(300));
        let mut next = Exec::hello(dir.path(), port);
        let status = current.exits();
        assert!(
            status.success(),
            "round {round}: the old sockdup exec ended with {status}; log:\n{}",
            current.log()
        );
        let log = current.log();
        assert!(
            log.contains(&format!("process {} took over web", next.pid())),
            "{log}"
        );
        assert!(log.contains("the old server stopped (status 0)"), "{log}");
        assert_eq!(
            pid_in(dir.path()),
            Some(next.pid()),
            "round {round}: the pid file names the new server"
        );
        assert!(
            next.child.try_wait().unwrap().is_none(),
            "round {round}: the new one runs; log:\n{}",
            next.log()
        );
        std::mem::swap(&mut current, &mut next);
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failures) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failures.extend(f);
    }
    eprintln!("requests answered: {ok}, failed: {}", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        failures.first()
    );
    assert!(ok > 100, "only {ok} requests ran");
    let status = current.terminate();
    assert!(status.success(), "{status}; log:\n{}", current.log());
    assert_eq!(
        pid_in(dir.path()),
        None,
        "the last server removes its pid file"
    );
}

#[test]
fn a_new_version_that_fails_to_start_leaves_the_old_one_serving() {
    let dir = TempDir::new("exec-crash");
    let port = free_port();
    let mut old = Exec::hello(dir.path(), port);
    serving(dir.path(), &old, port);
    let listen = [format!("web=127.0.0.1:{port}")];
    for command in [&["false"][..], &["/nonexistent/server"][..]] {
        let mut new = Exec::start(dir.path(), &listen, &[], command);
        let status = new.exits();
        assert_eq!(status.code(), Some(1), "{}", new.log());
        let log = new.log();
        assert!(
            log.contains("before it was ready")
                && log.contains(&format!("process {} keeps serving", old.pid())),
            "{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
        assert_eq!(pid_in(dir.path()), Some(old.pid()));
        get(port).unwrap();
        assert!(
            old.child.try_wait().unwrap().is_none(),
            "the old one still runs"
        );
    }
    // And a takeover after those works.
    let mut new = Exec::hello(dir.path(), port);
    assert!(old.exits().success(), "{}", old.log());
    serving(dir.path(), &new, port);
    assert!(new.terminate().success());
}

#[test]
fn refused_takeovers_say_why_and_change_nothing() {
    let dir = TempDir::new("exec-refused");
    let port = free_port();
    let hello = [BIN, "worker", "--app", "hello", "--listen-fds"];
    // --takeover with nothing to take over.
    let mut lone = Exec::start(
        dir.path(),
        &[format!("web=127.0.0.1:{port}")],
        &["--takeover"],
        &hello,
    );
    assert_eq!(lone.exits().code(), Some(1));
    assert!(
        lone.log().contains("nothing to take over"),
        "{}",
        lone.log()
    );

    // A pid file naming a process that is not a sockdup server: refused, the process untouched.
    let mut stranger = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(pid_file(dir.path()), format!("{}\n", stranger.id())).unwrap();
    let mut new = Exec::hello(dir.path(), port);
    assert_eq!(new.exits().code(), Some(1));
    assert!(
        new.log().contains("is not a sockdup server"),
        "{}",
        new.log()
    );
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger still runs"
    );
    assert_eq!(
        pid_in(dir.path()),
        Some(stranger.id()),
        "its pid file is left alone"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();

    // A stale pid file (its process is gone): a fresh start.
    let mut old = Exec::hello(dir.path(), port);
    serving(dir.path(), &old, port);

    // A listener that the running server binds elsewhere: refused, the old one serves on.
    let other = free_port();
    let mut moved = Exec::start(dir.path(), &[format!("web=127.0.0.1:{other}")], &[], &hello);
    assert_eq!(moved.exits().code(), Some(1));
    assert!(
        moved.log().contains(&format!("not 127.0.0.1:{other}")),
        "{}",
        moved.log()
    );
    // A name the running server does not have.
    let mut unknown = Exec::start(dir.path(), &[format!("api=127.0.0.1:{port}")], &[], &hello);
    assert_eq!(unknown.exits().code(), Some(1));
    assert!(
        unknown.log().contains("no listener named \"api\""),
        "{}",
        unknown.log()
    );
    assert_eq!(pid_in(dir.path()), Some(old.pid()));
    get(port).unwrap();
    assert!(old.terminate().success());
}

#[test]
fn unix_listeners_move_too_and_the_socket_file_goes_with_the_last_server() {
    let dir = TempDir::new("exec-unix");
    let sock = dir.path().join("app.sock");
    let listen = [format!("app=unix:{}", sock.display())];
    let echo = [BIN, "worker", "--app", "echo", "--listen-fds"];
    let roundtrip = || -> Result<(), String> {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
        s.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        (&buf == b"ping")
            .then_some(())
            .ok_or_else(|| "wrong echo".into())
    };
    let mut old = Exec::start(dir.path(), &listen, &[], &echo);
    wait_until(WAIT, || roundtrip().ok());
    let mut new = Exec::start(dir.path(), &listen, &[], &echo);
    assert!(old.exits().success(), "{}", old.log());
    assert_eq!(pid_in(dir.path()), Some(new.pid()));
    roundtrip().unwrap();
    assert!(
        sock.exists(),
        "the old server leaves the socket file to the new one"
    );
    assert!(new.terminate().success());
    assert!(!sock.exists(), "the last server removes it");
}

#[test]
fn concurrent_takeovers_one_wins_and_a_signal_before_ready_aborts() {
    let dir = TempDir::new("exec-concurrent");
    let port = free_port();
    let mut old = Exec::hello(dir.path(), port);
    serving(dir.path(), &old, port);
    let listen = [format!("web=127.0.0.1:{port}")];
    let hello = [BIN, "worker", "--app", "hello", "--listen-fds"];

    // Stopped while its server gets ready: the takeover is aborted, the old one serves on.
    let mut interrupted = Exec::start(dir.path(), &listen, &["--ready-after", "5"], &hello);
    wait_until(WAIT, || has_child(interrupted.pid()).then_some(()));
    assert_eq!(interrupted.terminate().code(), Some(1));
    let log = interrupted.log();
    assert!(
        log.contains("stopped by a signal before the server was ready"),
        "{log}"
    );
    assert_eq!(pid_in(dir.path()), Some(old.pid()));
    get(port).unwrap();

    // Two at once: the second asks while the first is getting ready.
    let mut first = Exec::start(dir.path(), &listen, &["--ready-after", "1"], &hello);
    wait_until(WAIT, || has_child(first.pid()).then_some(()));
    let mut second = Exec::hello(dir.path(), port);
    assert_eq!(second.exits().code(), Some(1));
    let log = second.log();
    assert!(
        log.contains("error[takeover-in-progress]") && log.contains("one takeover at a time"),
        "{log}"
    );
    assert!(old.exits().success(), "{}", old.log());
    serving(dir.path(), &first, port);
    assert!(first.terminate().success());
}

#[test]
fn the_server_gets_the_listeners_in_the_socket_activation_convention() {
    let dir = TempDir::new("exec-convention");
    let script = "echo \"fds=$LISTEN_FDS pid=$LISTEN_PID self=$$ names=$LISTEN_FDNAMES\"; \
                  readlink /proc/$$/fd/3 /proc/$$/fd/4";
    let out = Command::new(BIN)
        .args([
            "exec",
            "--listen",
            "a=127.0.0.1:0",
            "--listen",
            "b=127.0.0.1:0",
        ])
        .args(["--pid-file", &pid_file(dir.path()).to_string_lossy()])
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    util::assert_ok(&out);
    let text = util::stdout(&out);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let fields: Vec<&str> = first.split(' ').collect();
    assert_eq!(fields[0], "fds=2", "{text}");
    let pid = fields[1].strip_prefix("pid=").unwrap();
    assert_eq!(
        Some(pid),
        fields[2].strip_prefix("self="),
        "LISTEN_PID is the server's own pid: {text}"
    );
    assert_eq!(fields[3], "names=a:b", "{text}");
    for fd in [3, 4] {
        let target = lines.next().unwrap_or_default();
        assert!(
            target.starts_with("socket:["),
            "descriptor {fd} is {target:?}: {text}"
        );
    }
    assert_eq!(
        pid_in(dir.path()),
        None,
        "the pid file goes when the server ends without a successor"
    );
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills process `pid` (an orphaned COMMAND) if it still runs.
fn kill_pid(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

#[test]
fn sigkill_of_either_sockdup_exec_while_the_new_server_gets_ready_leaves_the_survivor_serving() {
    let hello = [BIN, "worker", "--app", "hello", "--listen-fds"];
    for victim in ["old", "new"] {
        let dir = TempDir::new(&format!("exec-sigkill-{victim}"));
        let port = free_port();
        let listen = [format!("web=127.0.0.1:{port}")];
        let mut old = Exec::hello(dir.path(), port);
        serving(dir.path(), &old, port);
        let mut new = Exec::start(dir.path(), &listen, &["--ready-after", "2"], &hello);
        // The new one has taken the listeners over and its server is getting ready.
        wait_until(WAIT, || has_child(new.pid()).then_some(()));
        let (killed, survivor) = if victim == "old" {
            (&mut old, &mut new)
        } else {
            (&mut new, &mut old)
        };
        let orphans = children(killed.pid());
        let _ = killed.child.kill();
        let _ = killed.child.wait();
        // The survivor serves on, and the pid file names it.
        let start = Instant::now();
        while pid_in(dir.path()) != Some(survivor.pid()) || get(port).is_err() {
            assert!(
                start.elapsed() < WAIT,
                "killing the {victim} sockdup exec: pid file {:?}, not {}; log:\n{}",
                pid_in(dir.path()),
                survivor.pid(),
                survivor.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            survivor.child.try_wait().unwrap().is_none(),
            "killing the {victim} sockdup exec: the survivor exited; log:\n{}",
            survivor.log()
        );
        // And it hands over in turn.
        let mut next = Exec::hello(dir.path(), port);
        assert!(
            survivor.exits().success(),
            "killing the {victim} sockdup exec: {}",
            survivor.log()
        );
        serving(dir.path(), &next, port);
        assert!(next.terminate().success());
        // The killed one's server got SIGTERM with it: it drains and exits rather than
        // serve on unsupervised.
        for pid in orphans {
            let gone = || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                (stat.is_empty() || state.starts_with('Z')).then_some(())
            };
            let start = Instant::now();
            while gone().is_none() {
                if start.elapsed() > WAIT {
                    kill_pid(pid);
                    panic!("killing the {victim} sockdup exec: its server {pid} lingers, orphaned");
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One echo round trip on a fresh connection.
fn echoes(port: u16) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    s.write_all(b"ping").map_err(|e| format!("write: {e}"))?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    (&back == b"ping")
        .then_some(())
        .ok_or_else(|| format!("echoed {back:?}"))
}

#[test]
fn sigkill_of_the_new_sockdup_exec_after_it_completed_gives_the_listeners_back_to_the_draining_old_one()
 {
    let dir = TempDir::new("exec-take-back");
    let port = free_port();
    let listen = [format!("web=127.0.0.1:{port}")];
    let echo = [BIN, "worker", "--app", "echo", "--listen-fds"];
    let mut old = Exec::start(dir.path(), &listen, &["--drain-deadline", "15"], &echo);
    wait_until(WAIT, || {
        (pid_in(dir.path()) == Some(old.pid()) && echoes(port).is_ok()).then_some(())
    });
    // A connection the old server holds open keeps it draining after the handover.
    let mut held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.set_read_timeout(Some(WAIT)).unwrap();
    held.write_all(b"x").unwrap();
    held.read_exact(&mut [0u8; 1]).unwrap();
    let mut new = Exec::start(dir.path(), &listen, &[], &echo);
    wait_until(WAIT, || {
        (pid_in(dir.path()) == Some(new.pid())).then_some(())
    });
    wait_until(WAIT, || {
        old.log().contains("stopping the server").then_some(())
    });
    let _ = new.child.kill();
    let _ = new.child.wait();
    // The old one takes the listeners back while it drains, and serves again once drained.
    wait_until(WAIT, || {
        (pid_in(dir.path()) == Some(old.pid())).then_some(())
    });
    drop(held);
    wait_until(WAIT, || echoes(port).is_ok().then_some(()));
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old one exited; log:\n{}",
        old.log()
    );
    assert!(
        old.log().contains("took the listeners back"),
        "{}",
        old.log()
    );
    // And it hands over in turn.
    let mut next = Exec::start(dir.path(), &listen, &[], &echo);
    assert!(old.exits().success(), "{}", old.log());
    wait_until(WAIT, || {
        (pid_in(dir.path()) == Some(next.pid()) && echoes(port).is_ok()).then_some(())
    });
    assert!(next.terminate().success(), "{}", next.log());
}

/// One echo connection: `token` sent, the write side closed, exactly `token` back.
fn echo(port: u16, token: &str) -> Result<(), String> {
    let run = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(WAIT))?;
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
fn an_async_server_upgraded_three_times_under_load_fails_no_connection() {
    let dir = TempDir::new("exec-tokio");
    let port = free_port();
    let mut current = Exec::tokio(dir.path(), port);
    serving_by(dir.path(), &current, || echo(port, "ready?").is_ok());

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut failures) = (0u32, Vec::new());
                let mut i = 0;
                // Light load: a connection, then a short pause; bounded.
                while !stop.load(Ordering::SeqCst) && i < 20_000 {
                    match echo(port, &format!("up-{t}-{i};")) {
                        Ok(()) => ok += 1,
                        Err(e) => failures.push(e),
                    }
                    i += 1;
                    thread::sleep(Duration::from_millis(1));
                }
                (ok, failures)
            })
        })
        .collect();

    for round in 1..=3 {
        thread::sleep(Duration::from_millis(300));
        let mut next = Exec::tokio(dir.path(), port);
        let status = current.exits();
        let log = current.log();
        assert!(
            status.success(),
            "round {round}: the old sockdup exec ended with {status}; log:\n{log}"
        );
        assert!(
            log.contains(&format!("process {} took over web", next.pid())),
            "{log}"
        );
        // The async server drained at SIGTERM and exited 0 by itself.
        assert!(log.contains("the old server stopped (status 0)"), "{log}");
        assert_eq!(pid_in(dir.path()), Some(next.pid()), "round {round}");
        assert!(
            next.child.try_wait().expect("wait").is_none(),
            "round {round}: the new one runs; log:\n{}",
            next.log()
        );
        std::mem::swap(&mut current, &mut next);
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failures) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().expect("client thread");
        ok += o;
        failures.extend(f);
    }
    eprintln!("connections echoed: {ok}, failed: {}", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} connections failed, first: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        failures.first()
    );
    assert!(ok > 100, "only {ok} connections ran");
    let status = current.terminate();
    assert!(status.success(), "{status}; log:\n{}", current.log());
    assert_eq!(
        pid_in(dir.path()),
        None,
        "the last server removes its pid file"
    );
}

#[test]
fn the_test_server_is_the_documented_example() {
    // The binary the tests run is built from the example's own file.
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("the manifest");
    let bin = manifest
        .split("[[bin]]")
        .find(|b| b.contains("name = \"tokio-exec-server\""))
        .expect("the test binary's [[bin]] section");
    assert!(
        bin.contains("path = \"../sockdup/examples/tokio_exec_server.rs\""),
        "the test binary is not the documented example: {bin}"
    );
}
