//! Helpers shared by the process tests: spawning and driving `peer` processes (over the codec
//! of [`sockdup_tests`]); the rest (bounded waits, descriptor counts) is
//! [`sockdup_tests::util`], re-exported here.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::io::Write;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use sockdup_core::line::LineReader;
use sockdup_tests::{Answer, MAX_LINE};

pub use sockdup_tests::util::{TempDir, fd_count, fds_of, is_root, threads_of, wait_until};

/// A running `peer` helper process.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: LineReader<ChildStdout>,
    pub pid: u32,
}

/// An `err` answer: the Winsock code, the name of the error's kind (`already-redeemed`), and
/// the message.
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

    /// Spawns a peer through `cmd`, a command that runs the peer (`env!("CARGO_BIN_EXE_peer")`)
    /// with its stdin and stdout, e.g. inside `unshare`; `pid` is then `cmd`'s own.
    #[track_caller]
    pub fn spawn_through(cmd: Command, startup: Option<&str>, env: &[(&str, &str)]) -> Self {
        Self::spawn_from(cmd, startup, env)
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
        let stdout = LineReader::new(child.stdout.take().expect("stdout"), MAX_LINE);
        let pid = child.id();
        let mut peer = Self {
            child,
            stdin,
            stdout,
            pid,
        };
        // One answer before handing the peer out: right after spawning it may still be in
        // exec, with the descriptors of its exec handshake open, and tests count descriptors.
        match startup {
            Some(opts) => peer.ok(&format!("startup {opts}")),
            None => peer.ok("pid"),
        };
        peer
    }

    /// Sends one command and returns its answer.
    #[track_caller]
    pub fn cmd(&mut self, line: &str) -> Result<String, PeerError> {
        self.raw(format!("{line}\n").as_bytes())
    }

    /// Sends `bytes` as they are (one line or not) and returns the answer.
    #[track_caller]
    pub fn raw(&mut self, bytes: &[u8]) -> Result<String, PeerError> {
        let line: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
        let line = line.trim_end();
        self.stdin.write_all(bytes).expect("write to peer");
        self.stdin.flush().expect("flush peer");
        let answer = match self.stdout.read_message::<Answer>() {
            Ok(Some(answer)) => answer,
            Ok(None) => panic!(
                "peer {} closed its stdout instead of answering {line:?} (did it crash?)",
                self.pid
            ),
            Err(e) => panic!("peer {} answered {line:?} with garbage: {e}", self.pid),
        };
        match answer {
            Answer::Ok(value) => Ok(value),
            Answer::Err(f) => Err(PeerError {
                code: f.code,
                kind: f.kind,
                message: f.message,
            }),
        }
    }

    /// Sends one command that must succeed.
    #[track_caller]
    pub fn ok(&mut self, line: &str) -> String {
        match self.cmd(line) {
            Ok(v) => v,
            Err(e) => panic!(
                "peer {}: {line:?} failed: {} {} {}",
                self.pid, e.code, e.kind, e.message
            ),
        }
    }

    /// The peer's `trace` reports (`layer=… chain=… seen=… calls=… …` per layer instance),
    /// each as a `key=value` map.
    #[track_caller]
    pub fn traces(&mut self) -> Vec<sockdup_tests::cprov::Call> {
        self.ok("trace")
            .split(" | ")
            .filter(|r| !r.is_empty())
            .map(sockdup_tests::cprov::key_values)
            .collect()
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
        let answer = self.stdout.read_line().expect("read from peer");
        assert_eq!(
            answer, None,
            "peer {} answered {line:?} instead of dying",
            self.pid
        );
        self.child.wait().expect("wait for peer")
    }

    /// Waits at most `limit` for the peer to exit by itself.
    #[track_caller]
    pub fn exits_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        sockdup_tests::util::exits_within(&mut self.child, limit)
    }

    /// Sends one command and does not wait for its answer (read it with [`answer`](Self::answer)).
    #[track_caller]
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to peer");
        self.stdin.flush().expect("flush peer");
    }

    /// The answer to a command sent with [`send`](Self::send).
    #[track_caller]
    pub fn answer(&mut self) -> Result<String, PeerError> {
        match self.stdout.read_message::<Answer>() {
            Ok(Some(Answer::Ok(value))) => Ok(value),
            Ok(Some(Answer::Err(f))) => Err(PeerError {
                code: f.code,
                kind: f.kind,
                message: f.message,
            }),
            Ok(None) => panic!("peer {} closed its stdout instead of answering", self.pid),
            Err(e) => panic!("peer {} answered with garbage: {e}", self.pid),
        }
    }

    /// Kills the peer with `SIGKILL` and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops (`SIGSTOP`) or continues (`SIGCONT`) the peer.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).expect("a pid");
        rustix::process::kill_process(pid, signal).expect("signal the peer");
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

/// Polls `f` until it returns `Some`, for at most `limit` ([`wait_until`]).
#[track_caller]
pub fn wait_for<T>(limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_until(limit, f)
}

/// A catalog file of one test's own (in a [`TempDir`], removed when dropped, also when the test
/// panics), and peers that use it.
pub struct CatalogFile {
    dir: TempDir,
    path: std::path::PathBuf,
}

impl CatalogFile {
    /// `catalog`, saved for the test `name`.
    #[track_caller]
    pub fn new(name: &str, catalog: &sockdup::catalog::Catalog) -> Self {
        let dir = TempDir::new(name);
        let path = dir.path().join("catalog.json");
        sockdup::save_catalog_to(&path, catalog).unwrap();
        Self { dir, path }
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The environment that points a process at it.
    pub fn env(&self) -> [(&str, &str); 1] {
        [("SOCKDUP_CATALOG", self.path.to_str().unwrap())]
    }

    /// A started peer using it.
    #[track_caller]
    pub fn peer(&self) -> Peer {
        Peer::spawn_with_env(Some(""), &self.env())
    }
}
