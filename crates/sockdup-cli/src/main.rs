//! The `sockdup` command: runs the Winsock handoff scenario between two real processes
//! (`sockdup demo`), decodes `WSAPROTOCOL_INFOW` records (`sockdup inspect`) and manages the
//! installed catalog of layered providers and protocol chains (`sockdup catalog`).
//!
//! The command is a thin layer over the `sockdup` library:
//!
//! - `demo` ([`demo`]) walks the ten steps of the handoff table in the `WSPDuplicateSocket`
//!   specification with this process as the source and a second copy of this executable (the
//!   hidden `demo-target` subcommand) as the target, and checks every step; `demo --chain`
//!   walks them through a layered protocol chain of a temporary catalog, with the source in a
//!   process started with that catalog (the hidden `demo-source` subcommand).
//! - `inspect` ([`inspect`]) decodes a record given as text, as a file of 628 raw bytes, or on
//!   stdin, and prints its fields with their Winsock names, as JSON ([`record::to_json`]), or
//!   as raw bytes.
//! - `catalog` ([`catalog`]) lists every catalog entry (`WSCEnumProtocols` order), installs a
//!   layer over entries, removes a chain or a layer, and resets the catalog file.
//! - `serve` ([`serve`]) listens on TCP and Unix addresses and hands every connection to one of
//!   N worker processes running a command ([`sockdup::handoff::Acceptor`]); `worker`
//!   ([`worker`]) is such a worker, with a built-in app (`echo`, or `hello`: HTTP/1.1).
//!
//! Exit status: 0 on success, 1 when a step or a decode fails (the message, with the Winsock
//! error code, goes to stderr), 2 for a usage error. A failure of the library prints as
//! `sockdup: error[KIND]: MESSAGE (NAME CODE)`, `KIND` being the stable name of its
//! [`sockdup::ErrorKind`] (`already-redeemed`); other failures as `sockdup: error: MESSAGE`.
#![forbid(unsafe_code)]

mod catalog;
mod demo;
mod exec;
mod inspect;
mod listen;
mod record;
mod serve;
mod wait;
mod worker;

use std::ffi::OsString;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Windows Sockets 2 socket duplication for Linux.
///
/// A source process turns a socket into a 628-byte WSAPROTOCOL_INFOW record bound to one target
/// process (WSADuplicateSocketW / WSPDuplicateSocket); the record travels through any IPC; the
/// target turns it into its own descriptor of the same socket, once (WSASocketW with the
/// record, FROM_PROTOCOL_INFO).
#[derive(Debug, Parser)]
#[command(name = "sockdup", version, propagate_version = true)]
#[command(
    after_help = "Exit status: 0 on success, 1 if a step or a decode fails (the error, \
    with its Winsock code, is printed on stderr), 2 for a usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hand a connected TCP socket from this process to another one, step by step.
    ///
    /// Runs the "handoff mode" scenario of the WSPDuplicateSocket specification with two real
    /// processes: this process (the source) connects a TCP socket to a peer it serves itself,
    /// starts a second copy of this program (the target), asks it for its process id over a
    /// pipe, duplicates the socket for it (sockdup::duplicate_socket, i.e.
    /// WSADuplicateSocketW / WSPDuplicateSocket) and sends the record as one line; the target
    /// turns the record into its own descriptor (sockdup::socket_from_info, i.e. WSASocketW
    /// with FROM_PROTOCOL_INFO) and exchanges data with the peer. Both close their
    /// descriptors; the peer must see end-of-file only after the last one closes.
    ///
    /// Every step is printed as one line naming the process that did it, and checked. Any
    /// failure is reported on stderr, with its Winsock error code, and the exit status is 1.
    /// No step waits more than 10 seconds.
    ///
    /// With --chain, the same steps run through a layered protocol chain: a temporary catalog
    /// (removed at the end) gets the listed layers installed over TCP/IPv4 (entry 1001), the
    /// first listed on top; the source creates its socket with sockdup::spi::Socket::new
    /// (WSASocketW, which picks the chain), duplicates it with Socket::duplicate, and the
    /// target redeems the record with Socket::from_info, so every call goes through every
    /// layer, in both processes. At the end each process prints what each layer saw (the
    /// trace layers' counters, checked against the calls the process made).
    #[command(after_long_help = "Examples:\n  \
        sockdup demo                        the plain handoff, on a std TcpStream\n  \
        sockdup demo --chain trace          through a trace layer over TCP/IPv4\n  \
        sockdup demo --chain policy,trace   a policy layer on top of a trace layer")]
    Demo(demo::Args),

    /// The source side of `sockdup demo --chain` (started by the demo with SOCKDUP_CATALOG
    /// naming its temporary catalog; not for direct use).
    #[command(name = "demo-source", hide = true)]
    DemoSource(demo::SourceArgs),

    /// The target side of `sockdup demo` (spawned by the demo; not for direct use).
    #[command(name = "demo-target", hide = true)]
    DemoTarget(demo::TargetArgs),

    /// Decode a WSAPROTOCOL_INFOW record and print its fields.
    ///
    /// The record may be the one-line text form printed by a source (it starts with
    /// "sockdup1:"), a file holding the 628 raw bytes that WSADuplicateSocketW /
    /// WSPDuplicateSocket fill in (written by sockdup, Windows or Wine) or the text form, or
    /// standard input in either form ("-" or no argument).
    ///
    /// Without options every field is printed, one per line, with the names of its flags and
    /// values (XP1_*, PFL_*, AF_*, SOCK_*, IPPROTO_*) and, for a sockdup duplicate, what its
    /// reserved fields hold (target process id, inbox run nonce, ticket): the record WSASocketW /
    /// sockdup::socket_from_info redeems in the target.
    #[command(after_long_help = "Examples:\n  \
        sockdup inspect sockdup1:ZgACAAAA...        decode a record given as text\n  \
        sockdup inspect record.bin --json | jq .service_flags3\n  \
        some-source | sockdup inspect --raw > record.bin")]
    Inspect(inspect::Args),

    /// List the catalog, or install and remove layered providers in it.
    ///
    /// Without a subcommand, every catalog entry is printed in WSCEnumProtocols order (as
    /// `netsh winsock show catalog` does): protocol chains (newest first), the built-in base
    /// entries (1001-1007), then the hidden entries of the layers. For each: its catalog id,
    /// its protocol chain, provider, service flags (XP1_*), provider flags (PFL_*), address
    /// family, socket type and protocol, and whether it is hidden.
    ///
    /// The catalog file is SOCKDUP_CATALOG if set, else $XDG_CONFIG_HOME/sockdup/catalog.json,
    /// else $HOME/.config/sockdup/catalog.json; without it only the built-in entries exist.
    /// Changes replace the file atomically; a change that fails leaves it as it was.
    #[command(args_conflicts_with_subcommands = true)]
    #[command(after_long_help = "Examples:\n  \
        sockdup catalog                                 list every entry\n  \
        sockdup catalog --json | jq '.[].catalog_entry_id'\n  \
        sockdup catalog install trace --over 1001 1003  layer over TCP/IPv4 and TCP/IPv6\n  \
        sockdup catalog remove 1101                     remove a layer and its chains\n  \
        sockdup catalog reset                           back to the built-in entries")]
    Catalog(catalog::Args),

    /// Listen on TCP and Unix addresses and hand every connection to one of N worker processes.
    ///
    /// Binds every --listen address, starts N workers running COMMAND, and hands each
    /// accepted connection to a ready worker (round robin, or the one with the fewest
    /// connections not yet done): the worker announces its pid on its stdout ("pid N"), this
    /// process duplicates the connection for it (sockdup::duplicate_socket) and sends the
    /// record on the worker's stdin; the worker redeems it and confirms. A worker that dies,
    /// refuses or stops answering before confirming has its connections given to another;
    /// dead workers are restarted; workers whose output is not the protocol are replaced.
    /// Workers are built with sockdup::handoff::Worker; `sockdup worker` is one.
    ///
    /// One line goes to stderr once the listeners are bound: "sockdup serve: listening on
    /// ADDR[, ADDR...] with N workers". SIGTERM or SIGINT shuts down gracefully: no new
    /// connection is accepted (the listeners close), the workers' inputs close, and they get
    /// --drain-deadline seconds to finish before they are killed; a second signal exits at
    /// once (status 1). At exit a summary goes to stderr: connections per worker,
    /// re-dispatches, restarts and replacements; the status is 0.
    ///
    /// Logs go to stderr; RUST_LOG sets their level (default warn): RUST_LOG=debug shows which
    /// worker got which connection.
    #[command(after_long_help = "Examples:\n  \
        sockdup serve --listen 127.0.0.1:8080 --workers 2 -- sockdup worker --app hello\n  \
        sockdup serve --listen [::1]:7007 --listen unix:/tmp/echo.sock --workers 4 --policy least \\\n      \
        -- sockdup worker --app echo\n  \
        sockdup serve --listen 127.0.0.1:0 --port-file port.txt --workers 2 -- ./my-worker")]
    Serve(serve::Args),

    /// A worker for `sockdup serve`: serve the connections an acceptor hands over.
    ///
    /// Announces this process on stdout, then redeems every connection the acceptor sends on
    /// stdin and serves it from one event loop (epoll, a state machine per connection, not
    /// a thread per connection): `echo` sends back every byte until the
    /// client closes; `hello` is a minimal HTTP/1.1 server answering every request with
    /// "200 OK" and "hello from sockdup" (keep-alive, Connection: close, request bodies
    /// discarded, 400 for a malformed request). Stdout carries only the handoff protocol;
    /// logs go to stderr. When the acceptor closes stdin, the worker finishes its connections
    /// and exits.
    #[command(after_long_help = "Example:\n  \
        sockdup serve --listen 127.0.0.1:8080 --workers 2 -- sockdup worker --app hello")]
    Worker(worker::Args),

    /// Run a server with listeners it binds, or takes over from the running `sockdup exec`
    /// of the same pid file, without refusing a connection.
    ///
    /// COMMAND gets the listeners as descriptors 3, 4, ... (in --listen order) with
    /// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set: the systemd socket-activation
    /// convention, so servers that support it (e.g. through the listenfd crate) work
    /// unmodified. If the pid file names a running `sockdup exec`, this one takes the
    /// listeners over from it (sockdup::upgrade), starts COMMAND with them, and once COMMAND
    /// has run for --ready-after, tells the old one, which sends SIGTERM to its own COMMAND,
    /// waits for it (at most --drain-deadline) and exits. Both servers accept from the same
    /// listening sockets meanwhile, so no connection attempt is refused. A COMMAND that exits
    /// before it is ready aborts the takeover; the old server keeps serving.
    ///
    /// Without a takeover, exits with COMMAND's status; SIGTERM and SIGINT are passed on to
    /// COMMAND as SIGTERM.
    #[command(after_long_help = "Examples:\n  \
        sockdup exec --listen web=127.0.0.1:8080 -- sockdup worker --app hello --listen-fds\n  \
        # later, the same command line again: a zero-downtime replacement\n  \
        sockdup exec --listen web=127.0.0.1:8080 -- sockdup worker --app hello --listen-fds\n  \
        sockdup exec --listen web=[::]:443 --listen admin=unix:/run/app.sock --pid-file /run/app.pid -- ./server")]
    Exec(exec::Args),

    /// Sets LISTEN_PID and runs COMMAND in this process (sockdup exec's helper).
    #[command(hide = true)]
    ExecChild(ExecChildArgs),
}

/// The hidden `exec-child` subcommand's arguments.
#[derive(Debug, clap::Args)]
struct ExecChildArgs {
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// How a command failed; printed on stderr by `main`.
#[derive(Debug)]
pub(crate) enum CliError {
    /// A sockdup call failed; `context` says what the command was doing.
    Sockdup {
        /// What the command was doing, e.g. "decoding the record".
        context: String,
        /// The library's error, whose `Display` ends with the Winsock name and number.
        error: sockdup::Error,
    },
    /// The command line or its input cannot be used (exit status 2).
    Usage(String),
    /// Anything else: an I/O failure, a check of the demo that did not hold.
    Failed(String),
}

impl CliError {
    /// A sockdup error, with what the command was doing.
    pub(crate) fn sockdup(context: impl Into<String>, error: sockdup::Error) -> Self {
        Self::Sockdup {
            context: context.into(),
            error,
        }
    }

    /// A failure described by `message`.
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Sockdup { .. } | Self::Failed(_) => 1,
        }
    }

    /// The line `main` prints on stderr: `sockdup: error[KIND]: MESSAGE (NAME CODE)` for a
    /// library error (its kind's stable name, then what the command was doing and the error),
    /// `sockdup: error: MESSAGE` for anything else.
    fn report(&self) -> String {
        match self {
            Self::Sockdup { error, .. } => format!("sockdup: error[{}]: {self}", error.kind()),
            Self::Usage(_) | Self::Failed(_) => format!("sockdup: error: {self}"),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sockdup { context, error } => write!(f, "{context}: {error}"),
            Self::Usage(message) | Self::Failed(message) => f.write_str(message),
        }
    }
}

/// Turns SIGTERM and SIGINT into `flag`: the first asks for a graceful stop; a second one,
/// with the flag already set, exits at once (status 1).
pub(crate) fn graceful_signals(
    flag: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), CliError> {
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, flag.clone())
            .and_then(|_| signal_hook::flag::register(signal, flag.clone()))
            .map_err(|e| CliError::failed(format!("installing a signal handler: {e}")))?;
    }
    Ok(())
}

/// Sends `tracing` events to stderr, filtered by `RUST_LOG` (default `warn`; an unusable
/// directive is left out).
pub(crate) fn init_logging() {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    // Chains holding provider libraries (layers in C) work in every subcommand.
    sockdup_capi::provider::register();
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version land here too; clap knows which stream and status to use.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let outcome = match cli.command {
        Command::Demo(args) => match args.chain {
            None => demo::run_source(None),
            // The source runs in a process started with the chain's catalog; its status,
            // and its error message if any, are the demo's.
            Some(chain) => match demo::run_chain(&chain) {
                Ok(code) => return code,
                Err(e) => Err(e),
            },
        },
        Command::DemoSource(args) => demo::run_source(Some(&args.chain)),
        // The target reports its failures to the source, over its stdout.
        Command::DemoTarget(args) => return demo::run_target(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Catalog(args) => catalog::run(&args),
        Command::Serve(args) => serve::run(args),
        Command::Worker(args) => worker::run(&args),
        Command::Exec(args) => match exec::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::ExecChild(args) => return exec::exec_child(&args.command),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_print_their_kind_and_others_do_not() {
        let e = CliError::sockdup(
            "redeeming the record",
            sockdup::Error::new(
                sockdup::ErrorKind::AlreadyRedeemed,
                "the record was already redeemed",
            ),
        );
        assert_eq!(
            e.report(),
            "sockdup: error[already-redeemed]: redeeming the record: the record was already \
             redeemed (WSAEINVAL 10022)"
        );
        assert_eq!(
            CliError::failed("no such file").report(),
            "sockdup: error: no such file"
        );
        assert_eq!(
            CliError::Usage("bad flag".into()).report(),
            "sockdup: error: bad flag"
        );
    }
}
