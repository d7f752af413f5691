//! `sockdup exec`: runs a server with listening sockets it binds or takes over from the
//! running `sockdup exec` of the same pid file ([`sockdup::upgrade`]), passed in the systemd
//! socket-activation convention, so that running the same command line again replaces the
//! server without refusing a connection.
//!
//! The steps, fresh: bind every `--listen NAME=ADDR`, publish them under the pid file, start
//! COMMAND with them. The steps, taking over (the pid file names a running server): take the
//! named listeners over, check they are bound where `--listen` says, start COMMAND with them,
//! wait `--ready-after` (COMMAND must still run), complete the takeover; the old `sockdup
//! exec` then sends SIGTERM to its COMMAND, waits for it (at most `--drain-deadline`, then
//! SIGKILL) and exits 0. A COMMAND that exits before it is ready aborts the takeover: the old
//! server keeps serving.
//!
//! COMMAND gets the listeners as descriptors 3, 4, ... in `--listen` order, with
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` set; `LISTEN_PID` must be COMMAND's own
//! pid, so COMMAND starts through this executable's hidden `exec-child` subcommand, which
//! sets it and replaces itself with COMMAND (same pid).
//!
//! COMMAND gets SIGTERM when its `sockdup exec` dies, even by SIGKILL (`PR_SET_PDEATHSIG`): no
//! server lingers unsupervised holding the listeners. If the new `sockdup exec` dies after the
//! handover while the old one still drains, the old one takes the listeners back and, once its
//! COMMAND has stopped, starts COMMAND again on them.
//!
//! Exit status: COMMAND's when it exits on its own (128 + the signal if killed), 0 after a
//! handover or a SIGTERM/SIGINT that COMMAND survives with status 0, 1 when a step fails.

use std::ffi::OsString;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use sockdup::upgrade::{Published, Upgrade, check_name};

use crate::CliError;
use crate::listen::{ListenAddr, SocketFile, bind, parse_seconds};
use crate::wait::{Watched, poll_until};

/// The pid of the `sockdup exec` that starts `exec-child` (which checks it is still its parent).
const PARENT_ENV: &str = "SOCKDUP_EXEC_PARENT";

/// The arguments of `sockdup exec`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A listener, NAME=ADDR (repeat for several): NAME is what COMMAND sees in
    /// LISTEN_FDNAMES (letters, digits, '.', '_', '-'); ADDR is HOST:PORT for TCP, or a path
    /// starting with / or ./, or unix:PATH, for a Unix stream socket.
    #[arg(long = "listen", value_name = "NAME=ADDR", required = true)]
    pub(crate) listen: Vec<String>,

    /// The pid file naming the running server. Default: a file in $XDG_RUNTIME_DIR (or the
    /// temporary directory) named after the --listen list, so the same command line finds it.
    #[arg(long, value_name = "PATH")]
    pub(crate) pid_file: Option<PathBuf>,

    /// Only take over: fail if no server runs with this pid file, instead of binding.
    #[arg(long)]
    pub(crate) takeover: bool,

    /// Seconds COMMAND must run before a takeover completes (if it exits sooner, the takeover
    /// is aborted and the old server keeps serving).
    #[arg(long, value_name = "SECONDS", default_value = "0.5", value_parser = parse_seconds)]
    pub(crate) ready_after: Duration,

    /// Seconds the old COMMAND may take to finish after SIGTERM before it is killed.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) drain_deadline: Duration,

    /// Seconds each step of a takeover may take (the old server's answer, the new one's
    /// readiness).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) timeout: Duration,

    /// The server and its arguments (after --): a program that takes its listening sockets
    /// from LISTEN_FDS, e.g. `sockdup worker --app hello --listen-fds`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

/// One `--listen NAME=ADDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Spec {
    name: String,
    text: String,
    addr: ListenAddr,
}

impl Spec {
    fn parse(text: &str) -> Result<Self, CliError> {
        let (name, addr) = text.split_once('=').ok_or_else(|| {
            CliError::Usage(format!(
                "--listen {text:?}: give NAME=ADDR, e.g. web=127.0.0.1:8080"
            ))
        })?;
        check_name(name)
            .map_err(|e| CliError::Usage(format!("--listen {text:?}: {}", e.message())))?;
        Ok(Self {
            name: name.to_owned(),
            text: addr.to_owned(),
            addr: ListenAddr::parse(addr)?,
        })
    }
}

/// The default pid file: one per `--listen` list, so running the same command line again
/// finds the running server.
fn default_pid_file(specs: &[String]) -> PathBuf {
    // FNV-1a: stable across builds and Rust versions, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in specs.join("\n").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(std::env::temp_dir, PathBuf::from);
    dir.join(format!("sockdup-exec-{h:016x}.pid"))
}

/// Runs `sockdup exec`.
pub(crate) fn run(args: Args) -> Result<ExitCode, CliError> {
    crate::init_logging();
    let specs = args
        .listen
        .iter()
        .map(|s| Spec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(CliError::Usage(format!("--listen names {:?} twice", w[0])));
    }
    let Some((program, rest)) = args.command.split_first() else {
        return Err(CliError::Usage(
            "give the server command after --, e.g. -- sockdup worker --app hello --listen-fds"
                .into(),
        ));
    };
    let pid_file = args
        .pid_file
        .clone()
        .unwrap_or_else(|| default_pid_file(&args.listen));
    let _guard = sockdup::startup().map_err(|e| CliError::sockdup("starting sockdup", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    crate::graceful_signals(&stop)?;
    let events = Events::new(stop)?;
    let upgrade = Upgrade::new(&pid_file).timeout(args.timeout);
    let running = upgrade
        .running_server()
        .map_err(|e| CliError::sockdup("reading the pid file", e))?;
    let launch = Launch {
        program,
        rest,
        specs: &specs,
    };
    let Started {
        published,
        mut server,
        socket_files,
    } = match running {
        Some(old) => take_over(&upgrade, &launch, old, args.ready_after, &events)?,
        None if args.takeover => {
            return Err(CliError::failed(format!(
                "--takeover: no server runs with the pid file {}: nothing to take over",
                pid_file.display()
            )));
        }
        None => start_fresh(&upgrade, &launch)?,
    };
    let outcome = supervise(
        &published,
        &launch,
        &mut server,
        &events,
        args.drain_deadline,
    );
    let handed_over = published.handed_over().is_some();
    drop(published);
    if !handed_over {
        for f in &socket_files {
            f.remove();
        }
    }
    outcome
}

/// What COMMAND is and which listeners it gets.
struct Launch<'a> {
    program: &'a OsString,
    rest: &'a [OsString],
    specs: &'a [Spec],
}

impl Launch<'_> {
    /// Starts COMMAND with `fds` (in `--listen` order) as descriptors 3, 4, ...
    fn spawn(&self, fds: &[BorrowedFd<'_>]) -> Result<Watched, CliError> {
        let exe = std::env::current_exe()
            .map_err(|e| CliError::failed(format!("finding this executable: {e}")))?;
        let mappings = fds
            .iter()
            .zip(3..)
            .map(|(fd, child_fd)| {
                Ok(FdMapping {
                    parent_fd: fd.try_clone_to_owned()?,
                    child_fd,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| CliError::failed(format!("duplicating a listener for COMMAND: {e}")))?;
        let names: Vec<&str> = self.specs.iter().map(|s| s.name.as_str()).collect();
        let mut cmd = Command::new(exe);
        cmd.arg("exec-child")
            .env(PARENT_ENV, std::process::id().to_string())
            .arg("--")
            .arg(self.program)
            .args(self.rest)
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env_remove("LISTEN_PID");
        cmd.fd_mappings(mappings)
            .map_err(|e| CliError::failed(format!("passing the listeners: {e}")))?;
        let child = cmd.spawn().map_err(|e| {
            CliError::failed(format!("starting {}: {e}", self.program.to_string_lossy()))
        })?;
        Watched::new(child)
    }

    fn shown(&self) -> String {
        self.specs
            .iter()
            .map(|s| format!("{}={}", s.name, s.text))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A server running: the published listeners, COMMAND, and the Unix socket files this
/// process created (removed at exit unless handed over).
struct Started {
    published: Published,
    server: Watched,
    socket_files: Vec<SocketFile>,
}

fn start_fresh(upgrade: &Upgrade, launch: &Launch<'_>) -> Result<Started, CliError> {
    let mut bound = Vec::with_capacity(launch.specs.len());
    let mut files = Vec::new();
    let result = (|| {
        for spec in launch.specs {
            let b = bind(&spec.addr)?;
            files.extend(b.socket_file.clone());
            bound.push((spec.name.clone(), b.fd));
        }
        let published = upgrade
            .publish(bound)
            .map_err(|e| CliError::sockdup("publishing the listeners", e))?;
        let fds: Vec<BorrowedFd<'_>> = published.listeners().map(|(_, fd)| fd).collect();
        let server = launch.spawn(&fds)?;
        eprintln!(
            "sockdup exec: listening {} (pid file {}); pid {} runs the server",
            launch.shown(),
            upgrade.pid_file().display(),
            server.id()
        );
        Ok((published, server))
    })();
    match result {
        Ok((published, server)) => Ok(Started {
            published,
            server,
            socket_files: files,
        }),
        Err(e) => {
            for f in &files {
                f.remove();
            }
            Err(e)
        }
    }
}

fn take_over(
    upgrade: &Upgrade,
    launch: &Launch<'_>,
    old: u32,
    ready_after: Duration,
    events: &Events,
) -> Result<Started, CliError> {
    let names: Vec<&str> = launch.specs.iter().map(|s| s.name.as_str()).collect();
    let takeover = upgrade.take_over(&names).map_err(|e| {
        CliError::sockdup(format!("taking the listeners over from process {old}"), e)
    })?;
    for spec in launch.specs {
        let fd = takeover
            .listener(&spec.name)
            .expect("every name asked for was taken");
        check_bound_as_asked(spec, fd)?;
    }
    let fds: Vec<BorrowedFd<'_>> = takeover.listeners().map(|(_, fd)| fd).collect();
    let mut server = launch.spawn(&fds)?;
    match events.wait(&server, None, Some(Instant::now() + ready_after))? {
        Event::TimedOut => {}
        Event::Exited => {
            drop(takeover);
            let status = server.wait();
            return Err(CliError::failed(format!(
                "the server exited ({}) before it was ready (--ready-after {ready_after:?}): takeover aborted, \
                 process {old} keeps serving",
                describe(status)
            )));
        }
        Event::Signal | Event::HandedOver => {
            drop(takeover);
            let status = stop_child(&mut server, Duration::from_secs(5));
            return Err(CliError::failed(format!(
                "stopped by a signal before the server was ready: takeover aborted, the server {}, process {old} \
                 keeps serving",
                describe(status)
            )));
        }
    }
    let published = takeover.complete().map_err(|e| {
        stop_child(&mut server, Duration::from_secs(1));
        CliError::sockdup(format!("completing the takeover from process {old}"), e)
    })?;
    eprintln!(
        "sockdup exec: took over {} from process {old} (pid file {}); pid {} runs the server",
        launch.shown(),
        upgrade.pid_file().display(),
        server.id()
    );
    // The Unix socket files now belong to this server: the old one leaves them in place,
    // and whichever server stops without handing over removes them.
    let socket_files = launch
        .specs
        .iter()
        .filter_map(|s| match &s.addr {
            ListenAddr::Unix(path) => SocketFile::of(path),
            ListenAddr::Tcp(_) => None,
        })
        .collect();
    Ok(Started {
        published,
        server,
        socket_files,
    })
}

/// A listener taken over must be where `--listen` says (unless the port there is 0).
fn check_bound_as_asked(spec: &Spec, fd: BorrowedFd<'_>) -> Result<(), CliError> {
    let ListenAddr::Tcp(text) = &spec.addr else {
        return Ok(());
    };
    let Ok(wanted) = text.to_socket_addrs().map(Iterator::collect::<Vec<_>>) else {
        return Ok(());
    };
    if wanted.iter().all(|a| a.port() == 0) {
        return Ok(());
    }
    let local = fd
        .try_clone_to_owned()
        .map(TcpListener::from)
        .and_then(|l| l.local_addr())
        .map_err(|e| {
            CliError::failed(format!(
                "reading the address of listener {}: {e}",
                spec.name
            ))
        })?;
    if wanted.contains(&local) {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "the running server's listener {} is bound to {local}, not {text}: takeover aborted (the old server \
             keeps serving); to move a listener, start a server with another pid file",
            spec.name
        )))
    }
}

/// Waits for COMMAND to exit, a handover, or a signal; returns this process's exit status.
///
/// After a handover COMMAND is stopped (drained); if meanwhile the successor died and the
/// library took the listeners back ([`Published::wait`]), COMMAND starts again on them and
/// this process serves on.
fn supervise(
    published: &Published,
    launch: &Launch<'_>,
    server: &mut Watched,
    events: &Events,
    drain: Duration,
) -> Result<ExitCode, CliError> {
    loop {
        let mut event = Event::TimedOut;
        // Without a deadline, nothing times out; the loop only guards against a spurious
        // wakeup, and against a handover undone at once (the successor died and this server
        // took its listeners back before it looked: it serves on).
        while event == Event::TimedOut
            || (event == Event::HandedOver && published.handed_over().is_none())
        {
            event = events.wait(server, Some(published.handover_fd()), None)?;
        }
        match event {
            Event::Exited => {
                let status = server.wait();
                eprintln!("sockdup exec: the server exited ({})", describe(status));
                return Ok(exit_code(status));
            }
            Event::HandedOver => {
                let h = published.handed_over().ok_or_else(|| {
                    CliError::failed("the handover was undone while it was being read".to_owned())
                })?;
                eprintln!(
                    "sockdup exec: process {} took over {}; stopping the server (pid {})",
                    h.pid,
                    h.names.join(", "),
                    server.id()
                );
                let status = stop_child(server, drain);
                eprintln!(
                    "sockdup exec: the old server stopped ({})",
                    describe(status)
                );
                if published.handed_over().is_some() {
                    return Ok(ExitCode::SUCCESS);
                }
                eprintln!(
                    "sockdup exec: process {} died after taking over; this process took the listeners back \
                     and starts the server again",
                    h.pid
                );
                let fds: Vec<BorrowedFd<'_>> = launch
                    .specs
                    .iter()
                    .filter_map(|s| published.listener(&s.name))
                    .collect();
                *server = launch.spawn(&fds)?;
            }
            Event::Signal | Event::TimedOut => {
                let status = stop_child(server, drain);
                eprintln!("sockdup exec: stopped; the server {}", describe(status));
                return Ok(exit_code(status));
            }
        }
    }
}

/// SIGTERM, then SIGKILL after `deadline`; returns how COMMAND ended.
fn stop_child(server: &mut Watched, deadline: Duration) -> ExitStatus {
    if let Some(pid) = i32::try_from(server.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let exited = poll_until(&[server.pidfd.as_fd()], Some(Instant::now() + deadline))
        .is_ok_and(|ready| ready[0]);
    if !exited {
        tracing::warn!(
            pid = server.id(),
            "the server did not stop within the drain deadline; killing it"
        );
        let _ = server.child.kill();
    }
    server.wait()
}

/// What woke [`Events::wait`], in order of precedence when several happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// COMMAND exited.
    Exited,
    /// A successor took over.
    HandedOver,
    /// SIGTERM or SIGINT arrived.
    Signal,
    /// The deadline passed.
    TimedOut,
}

/// What `sockdup exec` waits for, all in one `poll`: COMMAND's exit (its pidfd), SIGTERM or
/// SIGINT (a socket the signal handler writes to, beside the flag), and a handover
/// ([`Published::handover_fd`]).
struct Events {
    /// Readable once a signal arrived; never drained (a signal means stop, for good).
    signal: UnixStream,
    stop: Arc<AtomicBool>,
}

impl Events {
    fn new(stop: Arc<AtomicBool>) -> Result<Self, CliError> {
        let failed =
            |e: std::io::Error| CliError::failed(format!("installing a signal handler: {e}"));
        let (signal, write) = UnixStream::pair().map_err(failed)?;
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let write = write.try_clone().map_err(failed)?;
            signal_hook::low_level::pipe::register(sig, write).map_err(failed)?;
        }
        Ok(Self { signal, stop })
    }

    /// Blocks until COMMAND exits, a handover (if `handover` is given), a signal, or
    /// `deadline`.
    fn wait(
        &self,
        server: &Watched,
        handover: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<Event, CliError> {
        let mut fds = vec![server.pidfd.as_fd(), self.signal.as_fd()];
        fds.extend(handover);
        // A signal before the handler's socket was registered shows in the flag only.
        let signalled = self.stop.load(Ordering::SeqCst);
        let ready = if signalled {
            vec![false; fds.len()]
        } else {
            poll_until(&fds, deadline)
                .map_err(|e| CliError::failed(format!("waiting for the server: {e}")))?
        };
        Ok(if ready[0] {
            Event::Exited
        } else if ready.get(2) == Some(&true) {
            Event::HandedOver
        } else if signalled || ready[1] || self.stop.load(Ordering::SeqCst) {
            Event::Signal
        } else {
            Event::TimedOut
        })
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)),
        _ => ExitCode::FAILURE,
    }
}

/// The hidden `exec-child` subcommand: sets `LISTEN_PID` to this process's pid and replaces
/// this process with COMMAND (so the pid stays the same). Returns only on failure.
pub(crate) fn exec_child(command: &[OsString]) -> ExitCode {
    let Some((program, rest)) = command.split_first() else {
        eprintln!("sockdup exec-child: no command given");
        return ExitCode::from(2);
    };
    // COMMAND stops (drains) when its `sockdup exec` dies, even by SIGKILL: an orphan would
    // serve on unsupervised, holding the listeners, and keep a fresh `sockdup exec` from
    // binding them. The signal survives the exec of COMMAND. A parent that died before this
    // line would never send it: check.
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        eprintln!("sockdup exec-child: prctl(PR_SET_PDEATHSIG): {e}");
        return ExitCode::from(1);
    }
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get().to_string());
    if let Some(expected) = std::env::var_os(PARENT_ENV)
        && parent.as_deref().map(std::ffi::OsStr::new) != Some(expected.as_os_str())
    {
        eprintln!("sockdup exec-child: sockdup exec exited before its server started");
        return ExitCode::from(1);
    }
    let err = Command::new(program)
        .args(rest)
        .env("LISTEN_PID", std::process::id().to_string())
        .env_remove(PARENT_ENV)
        .exec();
    eprintln!(
        "sockdup exec: cannot run {}: {err}",
        program.to_string_lossy()
    );
    ExitCode::from(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s = Spec::parse("web=127.0.0.1:8080").unwrap();
        assert_eq!(
            (s.name.as_str(), s.text.as_str()),
            ("web", "127.0.0.1:8080")
        );
        assert_eq!(
            Spec::parse("sock=unix:/tmp/a.sock").unwrap().addr,
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        for bad in [
            "127.0.0.1:8080",
            "=127.0.0.1:1",
            "a b=127.0.0.1:1",
            "a:b=127.0.0.1:1",
            "web=8080",
        ] {
            assert!(matches!(Spec::parse(bad), Err(CliError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn a_server_exit_wakes_the_wait_and_a_deadline_ends_it() {
        let mut done = Watched::new(Command::new("true").spawn().unwrap()).unwrap();
        let start = Instant::now();
        let ready = poll_until(&[done.pidfd.as_fd()], Some(start + Duration::from_secs(10)));
        assert_eq!(ready.unwrap(), vec![true], "the exit wakes the poll");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(done.wait().success());
        let mut running = Watched::new(Command::new("sleep").arg("10").spawn().unwrap()).unwrap();
        let start = Instant::now();
        let ready = poll_until(
            &[running.pidfd.as_fd()],
            Some(start + Duration::from_millis(50)),
        );
        assert_eq!(ready.unwrap(), vec![false], "the deadline ends the wait");
        assert!(start.elapsed() >= Duration::from_millis(50));
        let status = stop_child(&mut running, Duration::from_secs(5));
        assert_eq!(
            status.signal(),
            Some(15),
            "stopped by its SIGTERM, not by waiting"
        );
    }

    #[test]
    fn default_pid_file_follows_the_listen_list() {
        let a = default_pid_file(&["web=127.0.0.1:8080".into()]);
        assert_eq!(a, default_pid_file(&["web=127.0.0.1:8080".into()]));
        assert_ne!(a, default_pid_file(&["web=127.0.0.1:8081".into()]));
        assert!(
            a.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sockdup-exec-")
        );
    }
}
