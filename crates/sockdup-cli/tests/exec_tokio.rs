//! `sockdup exec` with an async server: `tokio-exec-server` (built from the example
//! `tokio_exec_server`, a tokio echo server on its `LISTEN_FDS` listener that drains and exits
//! 0 at SIGTERM), upgraded three times under a light, steady stream of echo connections with
//! no connection failed; and the example and the test's copy are the same program. Real
//! processes, loopback, bounded waits.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_sockdup");
const SERVER: &str = env!("CARGO_BIN_EXE_tokio-exec-server");

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `sockdup exec --listen web=127.0.0.1:PORT -- tokio-exec-server`, its stderr in a file.
struct Exec {
    child: Child,
    log: PathBuf,
}

impl Exec {
    fn start(dir: &Path, port: u16) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(format!("exec-{}.log", N.fetch_add(1, Ordering::SeqCst)));
        let child = Command::new(BIN)
            .args(["exec", "--listen", &format!("web=127.0.0.1:{port}")])
            .args(["--pid-file", &pid_file(dir).to_string_lossy()])
            .args([
                "--ready-after",
                "0.2",
                "--drain-deadline",
                "5",
                "--timeout",
                "5",
            ])
            .args(["--", SERVER])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn sockdup exec");
        Self { child, log }
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
        let child = &mut self.child;
        util::wait_until(WAIT, || child.try_wait().expect("wait"))
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

/// Waits until `exec` serves: the pid file names it and a connection is echoed.
#[track_caller]
fn serving(dir: &Path, exec: &Exec, port: u16) {
    let start = Instant::now();
    while pid_in(dir) != Some(exec.pid()) || echo(port, "ready?").is_err() {
        assert!(
            start.elapsed() < WAIT,
            "{} not serving; log:\n{}",
            exec.pid(),
            exec.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_async_server_upgraded_three_times_under_load_fails_no_connection() {
    let dir = TempDir::new("exec-tokio");
    let port = free_port();
    let mut current = Exec::start(dir.path(), port);
    serving(dir.path(), &current, port);

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
        let mut next = Exec::start(dir.path(), port);
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
