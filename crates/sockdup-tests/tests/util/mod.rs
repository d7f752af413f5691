//! Helpers shared by the process tests: spawning and driving `peer` processes, counting
//! descriptors, waiting with a bound.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `peer` helper process.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

/// An `err` answer: the Winsock code (0 for a non-sockdup error), the kind's name (empty for a
/// non-sockdup error) and the message.
#[derive(Debug)]
pub struct PeerError {
    pub code: i32,
    pub kind: String,
    pub message: String,
}

impl Peer {
    /// Spawns a peer; with `startup`, it calls `sockdup::startup()` with those options first.
    #[track_caller]
    pub fn spawn(startup: Option<&str>) -> Self {
        Self::spawn_with_env(startup, &[])
    }

    #[track_caller]
    pub fn spawn_with_env(startup: Option<&str>, env: &[(&str, &str)]) -> Self {
        Self::spawn_from(Command::new(env!("CARGO_BIN_EXE_peer")), startup, env)
    }

    /// Spawns a peer running as user `uid` (the test process must be root).
    #[track_caller]
    pub fn spawn_as(uid: u32, startup: Option<&str>) -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
        cmd.uid(uid).gid(uid);
        Self::spawn_from(cmd, startup, &[])
    }

    #[track_caller]
    fn spawn_from(mut cmd: Command, startup: Option<&str>, env: &[(&str, &str)]) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let pid = child.id();
        let mut peer = Self {
            child,
            stdin,
            stdout,
            pid,
        };
        if let Some(opts) = startup {
            peer.ok(&format!("startup {opts}"));
        }
        peer
    }

    /// Sends one command and returns its answer.
    pub fn cmd(&mut self, line: &str) -> Result<String, PeerError> {
        writeln!(self.stdin, "{line}").expect("write to peer");
        self.stdin.flush().expect("flush peer");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("read from peer");
        let answer = answer.trim_end();
        if let Some(rest) = answer.strip_prefix("ok") {
            Ok(rest.trim_start().to_owned())
        } else if let Some(rest) = answer.strip_prefix("err ") {
            // `err CODE KIND MESSAGE`, or `err CODE MESSAGE` for an error without a kind.
            let (code, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (kind, message) = match rest.split_once(' ').unwrap_or((rest, "")) {
                (kind, message) if sockdup::ErrorKind::from_name(kind).is_some() => {
                    (kind.to_owned(), message)
                }
                _ => (String::new(), rest),
            };
            Err(PeerError {
                code: code.parse().unwrap_or(-1),
                kind,
                message: message.to_owned(),
            })
        } else {
            panic!(
                "peer {} answered {answer:?} to {line:?} (did it crash?)",
                self.pid
            )
        }
    }

    /// Sends one command that must succeed.
    #[track_caller]
    pub fn ok(&mut self, line: &str) -> String {
        match self.cmd(line) {
            Ok(v) => v,
            Err(e) => panic!(
                "peer {}: {line:?} failed: {} {}",
                self.pid, e.code, e.message
            ),
        }
    }

    /// Sends one command that must fail, and returns the failure.
    #[track_caller]
    pub fn fails(&mut self, line: &str) -> PeerError {
        match self.cmd(line) {
            Ok(v) => panic!(
                "peer {}: {line:?} succeeded with {v:?} but should have failed",
                self.pid
            ),
            Err(e) => e,
        }
    }

    pub fn fdcount(&mut self) -> usize {
        self.ok("fdcount").parse().expect("fdcount")
    }

    /// Sends one command after which the peer must die without answering; returns how it
    /// ended.
    #[track_caller]
    pub fn crashes(&mut self, line: &str) -> std::process::ExitStatus {
        writeln!(self.stdin, "{line}").expect("write to peer");
        self.stdin.flush().expect("flush peer");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("read from peer");
        assert_eq!(
            answer, "",
            "peer {} answered {line:?} instead of dying",
            self.pid
        );
        self.child.wait().expect("wait for peer")
    }

    /// Asks the peer to exit and waits for it.
    pub fn exit(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this process runs as root (needed to start peers as another user).
pub fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// Descriptors open in this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
        .saturating_sub(1)
}

/// Polls `f` until it returns `Some`, for at most `limit`.
#[track_caller]
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
