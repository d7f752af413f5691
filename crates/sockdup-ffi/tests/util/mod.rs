//! Building C programs against the libsockdup Cargo just built, and running them as child
//! processes spoken to by lines.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// How long a child may take to say its next line (a failure bound, not a measurement).
pub const LINE_WAIT: Duration = Duration::from_secs(20);

/// The repository's root.
pub fn repo() -> PathBuf {
    sockdup_tests::cprov::workspace()
}

/// The directory holding `libsockdup.so` and `libsockdup.a`, built now (once per test binary,
/// by [`sockdup_tests::cprov::libsockdup`]) with the profile and target directory this test
/// was built with: Cargo does not build a package's cdylib/staticlib for its integration tests
/// (they cannot link it), so without this the tests could pick up a stale library.
pub fn lib_dir() -> PathBuf {
    let so = sockdup_tests::cprov::libsockdup();
    let dir = so.parent().expect("the profile directory").to_path_buf();
    assert!(
        dir.join("libsockdup.a").is_file(),
        "cargo build -p sockdup-ffi made no libsockdup.a in {}",
        dir.display()
    );
    dir
}

/// `include/` of the C headers.
pub fn include_dir() -> PathBuf {
    sockdup_tests::cprov::include_dir()
}

/// Compiles `sources` with gcc into `out`, against libsockdup.so (found at run time through
/// an rpath), or against libsockdup.a with `static_lib`. Panics with gcc's output on failure.
pub fn compile(sources: &[&Path], out: &Path, static_lib: bool) -> PathBuf {
    let lib = lib_dir();
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "gcc".into()));
    cmd.args(["-Wall", "-Wextra", "-Werror", "-std=c11", "-g", "-pthread"]);
    cmd.arg("-I").arg(include_dir());
    cmd.args(sources);
    if static_lib {
        cmd.arg(lib.join("libsockdup.a")).args(["-ldl", "-lm"]);
    } else {
        cmd.arg("-L").arg(&lib).arg("-lsockdup");
        cmd.arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    cmd.arg("-o").arg(out);
    let result = cmd.output().expect("running gcc (install gcc)");
    assert!(
        result.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out.to_path_buf()
}

/// Compiles a program given as source text.
pub fn compile_text(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("writing the C source");
    compile(&[&src], &dir.join(name), false)
}

/// A C program (or any child) spoken to by lines on stdin and stdout; killed if dropped early.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    name: String,
}

impl Peer {
    pub fn spawn(program: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            name: format!("{} {}", program.display(), args.join(" ")),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line, within [`LINE_WAIT`].
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(LINE_WAIT)
            .unwrap_or_else(|e| panic!("{}: no line within {LINE_WAIT:?} ({e})", self.name))
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("writing to the child");
        stdin.flush().expect("flushing");
    }

    /// Waits for the exit (within [`LINE_WAIT`]) and asserts it was 0.
    pub fn succeeds(mut self) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + LINE_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not exit within {LINE_WAIT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a program to its end (within `limit`), returning its status, stdout and stderr.
pub fn run(
    program: &Path,
    args: &[&str],
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    run_command(Command::new(program).args(args), limit)
}

/// Runs a command to its end (within `limit`), returning its status, stdout and stderr.
pub fn run_command(
    cmd: &mut Command,
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}
