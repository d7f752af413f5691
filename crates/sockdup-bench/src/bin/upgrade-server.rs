//! The server process of the `upgrade` benchmark: holds `N` TCP listeners on `127.0.0.1` and
//! hands them to the benchmark over and over.
//!
//! ```text
//! upgrade-server sockdup N PID_FILE
//! upgrade-server raw N
//! ```
//!
//! - `sockdup`: calls `sockdup::startup()`, publishes the listeners as `l0` .. `l{N-1}`
//!   ([`sockdup_bench::listener_name`]) with `Upgrade::new(PID_FILE).publish`, prints
//!   [`SERVER_READY`] on its standard output, and answers takeovers (the benchmark aborts each)
//!   until its standard input reaches end-of-file; then it stops publishing (removing the pid
//!   file) and exits.
//! - `raw` (the raw twin, as systemd's fd store or tableflip hand listeners over): its standard
//!   input is a pre-connected `AF_UNIX` `SOCK_SEQPACKET` socket. It prints [`SERVER_READY`],
//!   then for each [`FDS_REQUEST`] byte it receives sends all `N` listeners back with bare
//!   `sendmsg` `SCM_RIGHTS`, [`MAX_FDS`] per message (one byte of payload, [`RAW`], each),
//!   until the socket reaches end-of-file.
//!
//! Both modes raise the soft `RLIMIT_NOFILE` to the hard limit first, pin themselves to the CPU
//! [`TARGET_CPU_ENV`] names (if set, before any thread starts), and die with the benchmark
//! (`PR_SET_PDEATHSIG`).
//!
//! Not meant to be run by hand: the benchmark spawns it (`env!("CARGO_BIN_EXE_upgrade-server")`).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;

use rustix::io::Errno;
use rustix::net::{self, RecvFlags};
use sockdup::upgrade::Upgrade;
use sockdup_bench::{FDS_REQUEST, MAX_FDS, RAW, SERVER_READY, TARGET_CPU_ENV};

const USAGE: &str = "usage: upgrade-server sockdup N PID_FILE | upgrade-server raw N";

fn ready() -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{SERVER_READY}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("printing {SERVER_READY}: {e}"))
}

fn serve_sockdup(listeners: Vec<TcpListener>, pid_file: &str) -> Result<(), String> {
    let _guard = sockdup::startup().map_err(|e| format!("sockdup::startup: {e}"))?;
    let named = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| (sockdup_bench::listener_name(i), l));
    let published = Upgrade::new(pid_file)
        .publish(named)
        .map_err(|e| format!("publishing: {e}"))?;
    ready()?;
    // Serve takeovers (on sockdup's threads) until the benchmark closes our standard input.
    let mut sink = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
    if let Some(h) = published.handed_over() {
        return Err(format!(
            "process {} completed a takeover; the benchmark only aborts",
            h.pid
        ));
    }
    drop(published);
    Ok(())
}

fn serve_raw(listeners: &[TcpListener], ctl: BorrowedFd<'_>) -> Result<(), String> {
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(AsFd::as_fd).collect();
    ready()?;
    let mut b = [0u8; 8];
    loop {
        match net::recv(ctl, &mut b, RecvFlags::empty()) {
            Ok((0, _)) => return Ok(()), // the benchmark went away
            Ok((1, _)) if b[0] == FDS_REQUEST => {
                for chunk in fds.chunks(MAX_FDS) {
                    sockdup_bench::send_fds(ctl, &[RAW], chunk)
                        .map_err(|e| format!("sendmsg with SCM_RIGHTS: {e}"))?;
                }
            }
            Ok((n, _)) => return Err(format!("unexpected request of {n} bytes")),
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("receiving a request: {e}")),
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (mode, n, pid_file) = match args {
        [mode, n] if mode == "raw" => (mode.as_str(), n, None),
        [mode, n, pid_file] if mode == "sockdup" => (mode.as_str(), n, Some(pid_file.as_str())),
        _ => return Err(USAGE.into()),
    };
    let n: usize = n
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("N is {n:?}: give a number of listeners, at least 1"))?;
    sockdup_bench::raise_nofile_limit().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    // Pin before startup(), so sockdup's threads inherit the CPU.
    if let Some(cpu) = std::env::var(TARGET_CPU_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        sockdup_bench::pin_to(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
    }
    let listeners =
        sockdup_bench::tcp_listeners(n).map_err(|e| format!("binding {n} listeners: {e}"))?;
    match (mode, pid_file) {
        ("sockdup", Some(pid_file)) => serve_sockdup(listeners, pid_file),
        _ => serve_raw(&listeners, std::io::stdin().as_fd()),
    }
}

fn main() -> ExitCode {
    // Die with the benchmark even if it is killed outright.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upgrade-server: {e}");
            ExitCode::FAILURE
        }
    }
}
