//! `sockdup worker --app echo|hello`: a worker process for `sockdup serve`, built on
//! [`sockdup::handoff::Worker`].
//!
//! The worker announces itself on stdout, then serves every connection the acceptor hands it
//! from one event loop ([`evloop`]: epoll, non-blocking sockets, a state machine per
//! connection; the acceptor's channel is one more descriptor in its epoll set, its `conn`
//! lines read and redeemed on the same thread, and so is the library's inbox, started with
//! `sockdup::Options::inbox_served_by_caller`: the pushes of the acceptor's descriptors are
//! received and acknowledged there too, so the worker runs one thread), with the chosen app: `echo` sends back every byte until the client
//! closes; `hello` ([`hello`]) is a minimal HTTP/1.1 server. Standard output carries only the
//! handoff protocol; logs go to stderr (`RUST_LOG`, default `warn`).
//!
//! A line from the acceptor that is not the handoff protocol is answered at once with an
//! `error` line on stdout; the worker then finishes its open connections and exits with status 1.
//!
//! When the acceptor closes the worker's input (its shutdown, or its death: even killed with
//! SIGKILL, its end of the pipe closes with it), no new connection comes; the worker waits for the ones it has (the `hello` app closes idle keep-alive connections and
//! answers the requests in progress with `Connection: close`) and exits. Run by an acceptor
//! (stdin not a terminal), the worker ignores SIGINT: a Ctrl-C in the terminal reaches the
//! whole process group, and the acceptor, not the terminal, decides when its workers stop.

mod activated;
mod evloop;
mod hello;

use std::collections::BTreeSet;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;

use sockdup::handoff::{Connection, NonblockingIncoming, Stream, Worker};

use crate::CliError;

/// The arguments of `sockdup worker`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// What to serve on each connection: echo (every byte back, until the client closes) or
    /// hello (HTTP/1.1, "hello from sockdup" for every request).
    #[arg(long, value_enum)]
    pub(crate) app: App,

    /// Instead of taking connections from `sockdup serve`, accept them on the listening
    /// sockets passed by socket activation (LISTEN_FDS and LISTEN_PID, as `sockdup exec` and
    /// systemd set them); on SIGTERM, stop accepting, finish the open connections, exit 0.
    #[arg(long)]
    pub(crate) listen_fds: bool,

    /// For tests of the acceptor: announce this worker, wait for the acceptor's first line
    /// without redeeming anything, answer it with a line that is not the protocol, and wait for
    /// the end of the input (the acceptor should replace this worker at once).
    #[arg(long, hide = true)]
    pub(crate) test_write_garbage: bool,

    /// For tests of the acceptor: announce this worker (and say so on stderr, with its pid),
    /// take the acceptor's first `conn` lines without redeeming anything, answer them with the
    /// attack MODE, and wait for the end of the input (or the acceptor's kill).
    #[arg(long, hide = true, value_enum, value_name = "MODE")]
    pub(crate) test_hostile: Option<Hostile>,

    /// For tests of the acceptor: after announcing this worker, wait SECONDS before reading the
    /// acceptor's lines (so that `conn` lines wait in the pipe).
    #[arg(long, hide = true, value_name = "SECONDS", value_parser = crate::listen::parse_seconds)]
    pub(crate) test_read_delay: Option<std::time::Duration>,
}

/// `--test-hostile`: how a hostile worker answers the acceptor's first `conn` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Hostile {
    /// `ok ID` for an id the acceptor never gave out.
    OkUnknown,
    /// `ok ID` for connections it was not given (other workers', or not yet accepted).
    OkNotGiven,
    /// `fail ID ...` for connections it was not given.
    FailNotGiven,
    /// `done ID` for the connections it was given but never confirmed.
    DoneNotConfirmed,
    /// Bytes without a line end, without end (far past any line bound).
    EndlessLine,
    /// A line that never ends but stays short (a few hundred bytes), then silence.
    PartialLine,
    /// 1 MiB of pseudo-random bytes.
    RandomBytes,
}

/// `--app`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum App {
    /// Echo every byte back until the client closes.
    Echo,
    /// A minimal HTTP/1.1 server answering "hello from sockdup".
    Hello,
}

impl App {
    fn protocol(self) -> evloop::Protocol {
        match self {
            Self::Echo => evloop::Protocol::Echo,
            Self::Hello => evloop::Protocol::Hello,
        }
    }
}

/// A connection the worker serves.
pub(crate) enum Sock {
    /// Handed over by `sockdup serve`: dropping it tells the acceptor it is done.
    Handoff(Connection),
    /// Accepted on a listener of our own (`--listen-fds`).
    Plain(Stream),
}

impl evloop::Client for Sock {
    type Io = Stream;
    fn io(&mut self) -> &mut Stream {
        match self {
            Self::Handoff(c) => c.stream(),
            Self::Plain(s) => s,
        }
    }
    fn fd(&mut self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self.io() {
            Stream::Tcp(s) => AsFd::as_fd(&*s),
            Stream::Unix(s) => AsFd::as_fd(&*s),
        }
    }
    fn make_nonblocking(&mut self) -> io::Result<()> {
        match self.io() {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
        }
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self.io() {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }
    fn close_all(closed: &mut Vec<Self>) {
        // One write of `done` lines for every handed-over connection of the turn.
        let handed: Vec<Connection> = closed
            .drain(..)
            .filter_map(|s| match s {
                Self::Handoff(c) => Some(c),
                Self::Plain(_) => None,
            })
            .collect();
        Connection::finish_all(handed);
    }
}

/// Runs `sockdup worker`.
pub(crate) fn run(args: &Args) -> Result<(), CliError> {
    crate::init_logging();
    if args.listen_fds {
        return activated::run(args.app);
    }
    if !io::stdin().is_terminal() {
        // A registered handler replaces the default action (terminate): SIGINT is ignored.
        signal_hook::flag::register(
            signal_hook::consts::SIGINT,
            Arc::new(AtomicBool::new(false)),
        )
        .map_err(|e| CliError::failed(format!("installing a signal handler: {e}")))?;
    }
    // The real worker serves its inbox from its event loop (no inbox thread): started here,
    // before `announce`, whose start joins this run. The test modes that do not read their
    // input at once keep the inbox thread, so that the acceptor's pushes are answered
    // meanwhile (as they are by a worker that is merely slow).
    let loop_served =
        !args.test_write_garbage && args.test_hostile.is_none() && args.test_read_delay.is_none();
    let guard = if loop_served {
        let options = sockdup::Options::from_env()
            .map_err(|e| CliError::sockdup("reading sockdup's options", e))?;
        Some(
            options
                .inbox_served_by_caller()
                .startup()
                .map_err(|e| CliError::sockdup("starting sockdup", e))?,
        )
    } else {
        None
    };
    let inbox = guard.as_ref().and_then(|g| g.caller_inbox().cloned());
    let worker = Worker::announce().map_err(|e| CliError::sockdup("announcing this worker", e))?;
    if args.test_write_garbage {
        return write_garbage(worker);
    }
    if let Some(mode) = args.test_hostile {
        return hostile(worker, mode);
    }
    if let Some(delay) = args.test_read_delay {
        eprintln!(
            "sockdup worker: {} reads its input in {delay:?}",
            std::process::id()
        );
        thread::sleep(delay);
    }
    let incoming = worker
        .incoming_nonblocking()
        .map_err(|e| CliError::sockdup("watching the acceptor's channel", e))?;
    // The handoff channel is one more descriptor in the event loop's epoll set: its `conn`
    // lines are read, redeemed and confirmed on this thread, between two turns of serving.
    let mut handoff = Handoff {
        incoming,
        inbox,
        broken: None,
    };
    evloop::serve(&mut handoff, args.app.protocol())
        .map_err(|e| CliError::failed(format!("the event loop failed: {e}")))?;
    match handoff.broken {
        Some(e) => Err(CliError::sockdup("reading the acceptor's line", e)),
        None => Ok(()),
    }
}

/// The acceptor's channel as the event loop's source of connections, and this process's inbox
/// (which receives the acceptor's descriptors) as its side descriptor.
struct Handoff<'a> {
    incoming: NonblockingIncoming<'a>,
    /// The inbox, served by the loop (`None`: the library's thread serves it).
    inbox: Option<sockdup::CallerInbox>,
    /// The error that broke the acceptor's channel, if one did.
    broken: Option<sockdup::Error>,
}

impl evloop::Source<Sock> for Handoff<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        self.incoming.as_fd()
    }

    fn side_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inbox.as_ref().map(AsFd::as_fd)
    }

    fn serve_side(&mut self) {
        if let Some(inbox) = &self.inbox
            && let Err(e) = inbox.serve_ready()
        {
            tracing::error!(error = %e, "sockdup worker: serving the inbox failed");
        }
    }

    fn side_timeout(&self) -> Option<std::time::Duration> {
        self.inbox.as_ref()?.timeout()
    }

    fn take(&mut self, add: &mut dyn FnMut(Sock)) -> bool {
        let batch = self.incoming.try_next_batch();
        let ended = batch.ended();
        for conn in batch {
            match conn {
                Ok(conn) => {
                    tracing::debug!(id = conn.id(), "sockdup worker: serving a connection");
                    add(Sock::Handoff(conn));
                }
                Err(e)
                    if e.kind() == sockdup::ErrorKind::ProtocolViolation
                        && self.incoming.broken().is_some() =>
                {
                    // The acceptor's line was not the protocol; it was told so (an `error`
                    // line) and replaces this worker: finish what is open, and fail.
                    tracing::debug!("sockdup worker: the acceptor's channel broke; finishing");
                    self.broken = Some(e);
                }
                Err(e) => {
                    // The acceptor was told, and gives the connection to another worker.
                    tracing::warn!(error = %e, "sockdup worker: could not redeem a connection");
                }
            }
        }
        ended
    }
}

/// `--test-write-garbage`: the first line from the acceptor is answered with garbage; then
/// nothing more, until the end of the input (or the acceptor's kill).
fn write_garbage(worker: Worker) -> Result<(), CliError> {
    let mut stdin = io::stdin().lock();
    let mut first = String::new();
    let _ = stdin.read_line(&mut first);
    let mut out = io::stdout().lock();
    let _ = out.write_all(b"this is not the sockdup worker protocol\n");
    let _ = out.flush();
    drop(out);
    let _ = io::copy(&mut stdin, &mut io::sink());
    drop(worker);
    Ok(())
}

/// `--test-hostile MODE`: waits for the acceptor's first `conn` lines (one read), answers
/// them with the attack, then reads its input to the end (or until the acceptor's kill).
fn hostile(worker: Worker, mode: Hostile) -> Result<(), CliError> {
    let pid = std::process::id();
    eprintln!("sockdup worker: hostile worker {pid} ready ({mode:?})");
    let mut stdin = io::stdin().lock();
    let mut first = vec![0u8; 64 * 1024];
    let n = stdin.read(&mut first).unwrap_or(0);
    // The ids of the conn lines this read brought (the last one may be cut short).
    let given: BTreeSet<u64> = String::from_utf8_lossy(&first[..n])
        .lines()
        .filter_map(|l| l.strip_prefix("conn ")?.split(' ').next()?.parse().ok())
        .collect();
    let top = given.last().copied().unwrap_or(0);
    let not_given = (0..top + 8).filter(|id| !given.contains(id));
    let mut out = io::stdout().lock();
    let wrote = match mode {
        Hostile::OkUnknown => out.write_all(b"ok 4000000000000\n"),
        Hostile::OkNotGiven => (|| {
            for id in not_given {
                writeln!(out, "ok {id}")?;
            }
            Ok(())
        })(),
        Hostile::FailNotGiven => (|| {
            for id in not_given {
                writeln!(out, "fail {id} 10050 protocol-violation a lie")?;
            }
            Ok(())
        })(),
        Hostile::DoneNotConfirmed => (|| {
            for id in &given {
                writeln!(out, "done {id}")?;
            }
            Ok(())
        })(),
        // Until the acceptor stops reading (EPIPE) or kills this process.
        Hostile::EndlessLine => (|| loop {
            out.write_all(&[b'x'; 4096])?;
        })(),
        Hostile::PartialLine => out.write_all(format!("ok {}", "1".repeat(300)).as_bytes()),
        Hostile::RandomBytes => {
            // xorshift64*, seeded by the pid: no two runs alike, no dependency.
            let mut x = u64::from(pid) | 1 << 40;
            let mut bytes = Vec::with_capacity(1 << 20);
            while bytes.len() < 1 << 20 {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                bytes.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            out.write_all(&bytes)
        }
    };
    let _ = wrote.and_then(|()| out.flush());
    drop(out);
    let _ = io::copy(&mut stdin, &mut io::sink());
    drop(worker);
    Ok(())
}
