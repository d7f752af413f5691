//! `sockdup serve`: an acceptor ([`sockdup::handoff::Acceptor`]) that listens on TCP and Unix
//! stream addresses and hands every connection to one of N worker processes running a command.
//!
//! The steps: bind every `--listen` address (a stale Unix socket file nobody listens on is
//! replaced), start sockdup in this process ([`sockdup::startup`]), turn SIGTERM and SIGINT
//! into a graceful shutdown (a second one stops at once, status 1), write the bound addresses
//! to `--port-file` if asked, print the `listening on` line on stderr, and run the acceptor
//! until a shutdown. Then the summary goes to stderr, the Unix socket files this process
//! created are removed, and the status is 0.
//!
//! Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default `warn`);
//! `RUST_LOG=debug` shows which worker got which connection.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use sockdup::handoff::{Acceptor, Policy, Summary};

use crate::CliError;
use crate::listen::{Bound, ListenAddr, bind, parse_seconds, write_port_file};

/// The arguments of `sockdup serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// An address to listen on (repeat for several): HOST:PORT for TCP (port 0 picks a free
    /// port; see --port-file), or a path starting with / or ./, or unix:PATH, for a Unix
    /// stream socket.
    #[arg(long = "listen", value_name = "ADDR", required = true)]
    pub(crate) listen: Vec<String>,

    /// How many worker processes run COMMAND.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) workers: u32,

    /// How a connection's worker is chosen: each ready worker in turn (rr), or the one with
    /// the fewest connections not yet done (least).
    #[arg(long, value_enum, default_value_t = PolicyArg::Rr)]
    pub(crate) policy: PolicyArg,

    /// The most connections a worker may have not yet done; when every worker has that many,
    /// new connections wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_outstanding: u32,

    /// Seconds a worker may take to announce itself or to confirm a connection before it is
    /// replaced.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub(crate) answer_timeout: Duration,

    /// Seconds the workers may take to finish their connections at shutdown before they are
    /// killed.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) drain_deadline: Duration,

    /// Write the bound addresses to this file, one a line (HOST:PORT or unix:PATH, in --listen
    /// order), before the "listening on" line; the file is replaced atomically.
    #[arg(long, value_name = "PATH")]
    pub(crate) port_file: Option<PathBuf>,

    /// The worker command and its arguments (after --), e.g. `sockdup worker --app hello`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

/// `--policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PolicyArg {
    /// Round robin over the ready workers.
    Rr,
    /// The ready worker with the fewest connections not yet done.
    Least,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Rr => Self::RoundRobin,
            PolicyArg::Least => Self::LeastOutstanding,
        }
    }
}

/// The summary printed at exit, one line: `sockdup serve: summary: connections T (worker 1:
/// A, worker 2: B), re-dispatched R, restarts S, replaced P`.
pub(crate) fn summary_line(s: &Summary) -> String {
    let mut per = String::new();
    for (i, n) in s.per_worker.iter().enumerate() {
        if i > 0 {
            per.push_str(", ");
        }
        let _ = write!(per, "worker {}: {n}", i + 1);
    }
    format!(
        "sockdup serve: summary: connections {} ({per}), re-dispatched {}, restarts {}, replaced {}",
        s.total(),
        s.redispatched,
        s.restarts,
        s.replaced
    )
}

/// Runs `sockdup serve`.
pub(crate) fn run(args: Args) -> Result<(), CliError> {
    crate::init_logging();
    let addrs = args
        .listen
        .iter()
        .map(|a| ListenAddr::parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((program, rest)) = args.command.split_first() else {
        return Err(CliError::Usage(
            "give the worker command after --, e.g. -- sockdup worker --app hello".into(),
        ));
    };
    let mut bound = Vec::with_capacity(addrs.len());
    let mut files = Vec::new();
    let outcome = (|| {
        for addr in &addrs {
            let b = bind(addr)?;
            files.extend(b.socket_file.clone());
            bound.push(b);
        }
        serve(&args, program, rest, bound)
    })();
    for f in &files {
        f.remove();
    }
    outcome
}

fn serve(
    args: &Args,
    program: &OsString,
    rest: &[OsString],
    bound: Vec<Bound>,
) -> Result<(), CliError> {
    let _guard = sockdup::startup().map_err(|e| CliError::sockdup("starting sockdup", e))?;
    let shown: Vec<String> = bound.iter().map(|b| b.shown.clone()).collect();
    let workers = args.workers as usize;
    let mut acceptor = Acceptor::new(program, rest)
        .workers(workers)
        .policy(args.policy.into())
        .max_outstanding(args.max_outstanding as usize)
        .answer_timeout(args.answer_timeout)
        .drain_deadline(args.drain_deadline);
    for b in bound {
        acceptor = if b.unix {
            acceptor.listener(UnixListener::from(b.fd))
        } else {
            acceptor.listener(TcpListener::from(b.fd))
        };
    }
    let flag = acceptor.shutdown_handle().flag();
    crate::graceful_signals(&flag)?;
    if let Some(path) = &args.port_file {
        write_port_file(path, &shown)?;
    }
    eprintln!(
        "sockdup serve: listening on {} with {workers} worker{}",
        shown.join(", "),
        if workers == 1 { "" } else { "s" }
    );
    let summary = acceptor
        .run()
        .map_err(|e| CliError::sockdup("running the acceptor", e))?;
    eprintln!("{}", summary_line(&summary));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_every_count() {
        let s = Summary {
            per_worker: vec![3, 4],
            redispatched: 1,
            restarts: 2,
            replaced: 5,
        };
        assert_eq!(
            summary_line(&s),
            "sockdup serve: summary: connections 7 (worker 1: 3, worker 2: 4), re-dispatched 1, restarts 2, replaced 5"
        );
    }
}
