//! The one set of helpers the workspace's process tests share (the `sockdup-tests` tests and
//! the `sockdup-cli` tests): bounded waits, temporary directories that are removed even when a
//! test panics, running a program with a given stdin, reading its output, and counting
//! descriptors.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often [`wait_until`] polls.
const POLL: Duration = Duration::from_millis(10);

/// Polls `f` every 10 ms until it returns `Some`, for at most `limit`; panics (at the caller)
/// if it never does.
#[track_caller]
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// A fresh directory for one test's files (mode 0700, under the system's temporary
/// directory), removed with its contents when dropped, also when the test panics.
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A directory whose name starts with `sockdup-<name>-`.
    ///
    /// # Panics
    /// If it cannot be created.
    #[track_caller]
    pub fn new(name: &str) -> Self {
        Self(
            tempfile::Builder::new()
                .prefix(&format!("sockdup-{name}-"))
                .tempdir()
                .expect("create a temporary directory"),
        )
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A temporary file holding given bytes, removed when dropped, also when the test panics.
#[derive(Debug)]
pub struct TempFile(tempfile::TempPath);

impl TempFile {
    /// A new file (under the system's temporary directory) holding `contents`.
    ///
    /// # Panics
    /// If it cannot be created or written.
    #[track_caller]
    pub fn new(contents: &[u8]) -> Self {
        let mut file = tempfile::Builder::new()
            .prefix("sockdup-test-")
            .tempfile()
            .expect("create a temporary file");
        file.write_all(contents).expect("write a temporary file");
        Self(file.into_temp_path())
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Starts `cmd` with piped stdin, stdout and stderr.
///
/// # Panics
/// If it cannot be started.
#[track_caller]
pub fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?} failed: {e}"))
}

/// Runs `cmd` to its end with `stdin` as its standard input (then closed), collecting its
/// output.
///
/// # Panics
/// If it cannot be started or waited for.
#[track_caller]
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = spawn_piped(cmd);
    let mut input = child.stdin.take().expect("a piped stdin");
    // A program that exits without reading its input closes the pipe: not the test's failure.
    match input.write_all(stdin) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing to {cmd:?}'s stdin failed: {e}"),
    }
    drop(input);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?} failed: {e}"))
}

/// The first line `child` writes on its (piped) stdout, without its `\n`, if one arrives within
/// `limit` (`None` at its end of output). Reads on a thread of its own, which takes the child's
/// stdout.
///
/// # Panics
/// If the child's stdout is not piped, or no line and no end of output arrives within `limit`.
#[track_caller]
pub fn first_line_within(child: &mut Child, limit: Duration) -> Option<String> {
    let stdout = child.stdout.take().expect("a piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = sockdup_core::line::LineReader::new(stdout, sockdup_core::line::MAX_LINE);
        let _ = tx.send(reader.read_line());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => panic!("reading the child's stdout failed: {e}"),
        Err(_) => panic!("no line within {limit:?}"),
    }
}

/// Waits at most `limit` for `child` to exit; panics if it does not (after killing it).
#[track_caller]
pub fn exits_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not exit within {limit:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// A command's standard output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command succeeded, showing its output if not.
#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Whether this process runs as root (needed to start processes as another user).
pub fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// Descriptors open in this process.
///
/// # Panics
/// If `/proc/self/fd` cannot be read.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
        .saturating_sub(1)
}

/// How many threads process `pid` runs now (0 if it is gone).
pub fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// How many descriptors process `pid` holds now, read from outside so that counting does not
/// wake it (0 if it is gone).
pub fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_directories_go_away_even_on_panic() {
        let kept = std::sync::Mutex::new(None);
        let outcome = std::panic::catch_unwind(|| {
            let dir = TempDir::new("util-test");
            std::fs::write(dir.path().join("f"), b"x").unwrap();
            *kept.lock().unwrap() = Some(dir.path().to_owned());
            panic!("a failing test");
        });
        assert!(outcome.is_err());
        let path = kept.lock().unwrap().take().unwrap();
        assert!(!path.exists(), "{} was left behind", path.display());
    }

    #[test]
    fn waits_are_bounded() {
        let mut n = 0;
        assert_eq!(
            wait_until(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            3
        );
        let outcome = std::panic::catch_unwind(|| wait_until(Duration::ZERO, || None::<()>));
        assert!(outcome.is_err());
    }
}
