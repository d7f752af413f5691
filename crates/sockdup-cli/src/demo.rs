//! `sockdup demo`: the "handoff mode" scenario of the `WSPDuplicateSocket` specification, with
//! two real processes.
//!
//! | Step | Who | What |
//! |-----:|-----|------|
//! | 1 | source | creates a TCP socket and connects it to the peer (a thread of the source) |
//! | 2 | source | starts the target and asks it for its process id over its stdin pipe |
//! | 3 | target | receives the request and answers |
//! | 4 | source | receives the process id |
//! | 5 | source | `sockdup::duplicate_socket` (`WSPDuplicateSocket`) |
//! | 6 | source | sends the record as one text line |
//! | 7 | target | receives the record |
//! | 8 | target | `sockdup::socket_from_info` (`WSPSocket`), once |
//! | 9 | target, peer | exchange data both ways |
//! | 10 | source, target | close; the peer sees EOF only after the last close |
//!
//! The pipes carry lines, typed by the demo protocol's codec
//! (`sockdup_core::proto::demo`) and read with the one bounded line reader. Source to target
//! (the target's stdin): `pid?`, `record <record>`, `send <step> <text>`,
//! `expect <step> <text>`, `close`, `report`, `quit`. Target to source (its stdout):
//! `log <line>` (printed by the source as it is, so the output stays in order), then one
//! answer per request: `ok <result>`, `err <code> <kind> <message>` (a sockdup error) or
//! `fail <message>`. A malformed line is an error at once on either side: the target answers
//! it with `err` and exits with status 1; the source stops with a `protocol-violation` error.
//! Every wait is bounded by [`TIMEOUT`].
//!
//! `sockdup demo --chain LAYER[,LAYER...]` runs the same scenario through a layered protocol
//! chain ([`chain`]): only how the sockets are made, duplicated, redeemed, used and closed
//! differs ([`SourceSocket`], [`Held`]), and each process ends with what each layer saw (the
//! `report` request). The source then runs in a process of its own (the hidden `demo-source`
//! subcommand), started with `SOCKDUP_CATALOG` naming the chain's temporary catalog, since a
//! process reads its catalog at its first use of the SPI; the target (`demo-target --spi`) is
//! started with the same catalog.

mod chain;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use sockdup::ProtocolInfo;
use sockdup_core::line::{LineMessage, LineReader, MAX_LINE};
use sockdup_core::proto::demo::{Reply, Request};

pub(crate) use chain::run as run_chain;

use crate::CliError;
use crate::wait::{Watched, poll_until};

/// The arguments of `sockdup demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Run the demo through a protocol chain of these layers (trace, policy or fault; at most
    /// 6), the first listed on top, installed over TCP/IPv4 (entry 1001) in a temporary
    /// catalog.
    #[arg(long, value_name = "LAYER[,LAYER...]", value_parser = chain::ChainSpec::parse)]
    pub(crate) chain: Option<chain::ChainSpec>,
}

/// The arguments of the hidden `sockdup demo-source`.
#[derive(Debug, clap::Args)]
pub(crate) struct SourceArgs {
    /// The layers of the chain the catalog named by SOCKDUP_CATALOG must hold on top.
    #[arg(long, value_name = "LAYER[,LAYER...]", value_parser = chain::ChainSpec::parse)]
    pub(crate) chain: chain::ChainSpec,
}

/// The arguments of the hidden `sockdup demo-target`.
#[derive(Debug, clap::Args)]
pub(crate) struct TargetArgs {
    /// Redeem the record with sockdup::spi::Socket::from_info and use the socket through its
    /// chain (the catalog named by SOCKDUP_CATALOG).
    #[arg(long)]
    pub(crate) spi: bool,
}

/// The longest the demo waits for anything: a line from the target, the peer, data, an exit.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long the peer watches for a premature EOF after the source closes its descriptor.
const NO_EOF_WATCH: Duration = Duration::from_millis(300);

/// Prints one line of the demo; a closed stdout is ignored (the checks decide the exit status,
/// not the printing).
fn say(label: &str, text: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "[{label}] {text}");
    let _ = out.flush();
}

/// A closure that turns an I/O error into a failure saying what was being done.
fn io_failed(doing: &str) -> impl FnOnce(io::Error) -> CliError + '_ {
    move |e| CliError::failed(format!("{doing} failed: {e}"))
}

/// The first `n` characters of `s`, with an ellipsis if it is longer.
fn abbreviate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n).chain(['…']).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------------

/// The source's socket: how it is made, duplicated and closed is all that differs between the
/// plain demo and the chain variant.
enum SourceSocket {
    /// The plain demo: a std `TcpStream`, duplicated with `sockdup::duplicate_socket`; `None`
    /// once closed.
    Stream(Option<TcpStream>),
    /// The chain variant: a `sockdup::spi::Socket` of the chain.
    Chain(Box<chain::Source>),
}

impl SourceSocket {
    /// Step 1: a TCP socket connected to `to`; through `chain` if there is one.
    fn connect(chain: Option<chain::Chain>, to: SocketAddr) -> Result<Self, CliError> {
        match chain {
            None => TcpStream::connect(to)
                .map(|stream| Self::Stream(Some(stream)))
                .map_err(io_failed("connecting to the peer")),
            Some(chain) => chain::Source::connect(chain, to).map(|c| Self::Chain(Box::new(c))),
        }
    }

    /// The socket's local and remote addresses.
    fn addrs(&self) -> Result<(SocketAddr, SocketAddr), CliError> {
        match self {
            Self::Stream(Some(stream)) => Ok((
                stream
                    .local_addr()
                    .map_err(io_failed("reading the socket's address"))?,
                stream
                    .peer_addr()
                    .map_err(io_failed("reading the socket's peer address"))?,
            )),
            Self::Stream(None) => Err(CliError::failed("the source's socket is closed already")),
            Self::Chain(c) => c.addrs(),
        }
    }

    /// What step 1 made, for its line: `<socket> connected from <local> to the peer at <to>`.
    fn connected(&self, local: SocketAddr, to: SocketAddr) -> String {
        let socket = match self {
            Self::Stream(stream) => {
                format!(
                    "TCP socket fd {}",
                    stream.as_ref().map_or(-1, |s| s.as_raw_fd())
                )
            }
            Self::Chain(c) => c.describe(),
        };
        format!("{socket} connected from {local} to the peer at {to} (a thread of the source)")
    }

    /// Step 5: duplicates the socket for process `pid`; returns the record and the name of the
    /// call that made it.
    fn duplicate(&mut self, pid: u32) -> Result<(ProtocolInfo, &'static str), CliError> {
        match self {
            Self::Stream(Some(stream)) => sockdup::duplicate_socket(stream, pid)
                .map(|record| (record, "duplicate_socket"))
                .map_err(|e| {
                    CliError::sockdup(
                        format!(
                            "duplicating the socket for process {pid} (sockdup::duplicate_socket)"
                        ),
                        e,
                    )
                }),
            Self::Stream(None) => Err(CliError::failed("the source's socket is closed already")),
            Self::Chain(c) => c.duplicate(pid).map(|record| (record, "Socket::duplicate")),
        }
    }

    /// What the record says about its protocol chain, for step 5's line (nothing in the plain
    /// demo, whose record is a base entry's).
    fn chain_note(&self, record: &ProtocolInfo) -> String {
        match self {
            Self::Stream(_) => String::new(),
            Self::Chain(_) => format!(", chain {}", chain::ids(record.protocol_chain.used())),
        }
    }

    /// Step 10: closes the source's descriptor; says which one, and how.
    fn close(&mut self) -> Result<String, CliError> {
        match self {
            Self::Stream(stream) => Ok(close_stream(stream)),
            Self::Chain(c) => c.close(),
        }
    }

    /// The catalog file of the chain variant, which the target must use too.
    fn catalog(&self) -> Option<&Path> {
        match self {
            Self::Stream(_) => None,
            Self::Chain(c) => Some(c.catalog()),
        }
    }
}

/// Runs the source side of the demo (this process), starting the target and the peer: the
/// plain demo, or with `chain`, the chain variant in a process started with the chain's
/// catalog (`sockdup demo-source`).
pub(crate) fn run_source(chain: Option<&chain::ChainSpec>) -> Result<(), CliError> {
    let src = format!("source {}", std::process::id());
    let _guard = sockdup::startup().map_err(|e| {
        CliError::sockdup(
            "starting sockdup in the source (sockdup::startup, WSAStartup)",
            e,
        )
    })?;
    let chain = chain.map(chain::Chain::for_source).transpose()?;
    if let Some(chain) = &chain {
        say(&src, &chain.introduce());
    }
    let mut peer = Peer::start()?;
    let (mut socket, local, remote) = connect(&src, chain, &mut peer)?;
    let mut target = Target::spawn(socket.catalog())?;
    let pid = target_pid(&src, &socket, &mut target)?;
    let record = duplicate(&src, &mut socket, pid)?;
    hand_over(&src, &mut target, &record, &format!("{local} {remote}"))?;

    // 9) Data exchange, both ways.
    let to_peer = format!("hello peer, from target {pid}");
    exchange(
        &mut target,
        &mut peer,
        "9",
        &to_peer,
        "hello target, from the peer",
    )?;
    close_both(&src, &mut socket, &mut target, &mut peer)?;

    // The chain variant: what each layer saw, in the target, then in the source.
    if let SourceSocket::Chain(c) = &socket {
        target.request(&Request::Report)?;
        for line in c.report()? {
            say(&src, &line);
        }
    }
    target.finish()?;
    say(
        &src,
        &format!("the target (pid {pid}) exited with status 0; all 10 steps checked out"),
    );
    Ok(())
}

/// Step 1 (`LPWSPSocket`, `LPWSPConnect`): the source's socket, connected to the peer, which
/// must have accepted it; returns it with its local and remote addresses.
fn connect(
    src: &str,
    chain: Option<chain::Chain>,
    peer: &mut Peer,
) -> Result<(SourceSocket, SocketAddr, SocketAddr), CliError> {
    let socket = SourceSocket::connect(chain, peer.addr)?;
    let (local, remote) = socket.addrs()?;
    say(
        src,
        &format!(
            "1) socket + connect: {}",
            socket.connected(local, peer.addr)
        ),
    );
    let accepted = peer.ask(PeerCmd::Accept)?;
    if accepted != local.to_string() {
        return Err(CliError::failed(format!(
            "the peer accepted a connection from {accepted}, not from the source's socket {local}"
        )));
    }
    Ok((socket, local, remote))
}

/// Steps 2 to 4: asks the target for its process id, which must be the one the source
/// started.
fn target_pid(src: &str, socket: &SourceSocket, target: &mut Target) -> Result<u32, CliError> {
    // 2) Request the target's process identifier.
    say(
        src,
        &format!(
            "2) started the target (a copy of this program{}) and asks for its process id over \
             its stdin pipe: \"pid?\"",
            if socket.catalog().is_some() {
                ", with the same SOCKDUP_CATALOG"
            } else {
                ""
            }
        ),
    );
    let answer = target.request(&Request::Pid)?;

    // 4) Receive the process identifier.
    let pid: u32 = answer.trim().parse().map_err(|_| {
        CliError::failed(format!(
            "the target answered {answer:?} instead of a process id"
        ))
    })?;
    if pid != target.child.id() {
        return Err(CliError::failed(format!(
            "the target says its process id is {pid}, but the source started process {}",
            target.child.id()
        )));
    }
    say(src, &format!("4) received the target's process id: {pid}"));
    Ok(pid)
}

/// Step 5 (`WSPDuplicateSocket`): the record for process `pid`, which must name it.
fn duplicate(src: &str, socket: &mut SourceSocket, pid: u32) -> Result<ProtocolInfo, CliError> {
    let (record, call) = socket.duplicate(pid)?;
    if record.service_flags3 != pid {
        return Err(CliError::failed(format!(
            "{call} returned a record for process {}, not {pid}",
            record.service_flags3
        )));
    }
    say(
        src,
        &format!(
            "5) {call} -> record for pid {pid} (catalog entry {}{}, ticket {:#010x}); \
             the target already holds the descriptor",
            record.catalog_entry_id,
            socket.chain_note(&record),
            record.provider_reserved
        ),
    );
    Ok(record)
}

/// Step 6 (send the `WSAPROTOCOL_INFO` structure to the target); steps 7 and 8 happen in the
/// target, which answers with its socket's addresses: they must be `addrs`, the source's.
fn hand_over(
    src: &str,
    target: &mut Target,
    record: &ProtocolInfo,
    addrs: &str,
) -> Result<(), CliError> {
    let line = record.to_string();
    target.send(&Request::Record(record.clone()))?;
    say(
        src,
        &format!(
            "6) sent the record to the target as one line of {} characters: {}",
            line.len(),
            abbreviate(&line, 40)
        ),
    );
    let theirs = target.reply()?;
    if theirs != addrs {
        return Err(CliError::failed(format!(
            "the target's socket has addresses {theirs}, but the source's has {addrs}: not the same socket"
        )));
    }
    Ok(())
}

/// Step 10 (`LPWSPCloseSocket`): the source closes first, the socket must stay open (the peer
/// sees no EOF, data still flows); then the target closes, and the peer sees EOF.
fn close_both(
    src: &str,
    socket: &mut SourceSocket,
    target: &mut Target,
    peer: &mut Peer,
) -> Result<(), CliError> {
    let closed = socket.close()?;
    say(
        src,
        &format!(
            "10) closed its descriptor ({closed}); the socket stays open: the target holds another"
        ),
    );
    peer.ask(PeerCmd::NoEofWithin(NO_EOF_WATCH))?;
    exchange(
        target,
        peer,
        "10",
        "still connected after the source closed",
        "acknowledged",
    )?;
    target.request(&Request::Close)?;
    peer.ask(PeerCmd::ExpectEof)?;
    Ok(())
}

/// The target sends `to_peer` and the peer checks it; the peer sends `to_target` and the
/// target checks it.
fn exchange(
    target: &mut Target,
    peer: &mut Peer,
    step: &str,
    to_peer: &str,
    to_target: &str,
) -> Result<(), CliError> {
    target.request(&Request::Send {
        step: step.to_owned(),
        text: to_peer.to_owned(),
    })?;
    peer.ask(PeerCmd::Expect(step.to_owned(), to_peer.to_owned()))?;
    peer.ask(PeerCmd::Send(step.to_owned(), to_target.to_owned()))?;
    target.request(&Request::Expect {
        step: step.to_owned(),
        text: to_target.to_owned(),
    })?;
    Ok(())
}

/// The target process, seen from the source: its pipes and, through a reader thread, the lines
/// it writes.
struct Target {
    child: Watched,
    stdin: Option<ChildStdin>,
    /// What the reader thread read: each line, parsed; after an error, nothing more.
    lines: Receiver<Result<Reply, sockdup::Error>>,
}

impl Target {
    /// Starts `<this executable> demo-target` with piped stdin and stdout; with `catalog`,
    /// as `demo-target --spi` with `SOCKDUP_CATALOG` naming it.
    fn spawn(catalog: Option<&Path>) -> Result<Self, CliError> {
        let exe = std::env::current_exe().map_err(io_failed("finding this program's path"))?;
        let mut command = Command::new(&exe);
        command.arg("demo-target");
        if let Some(path) = catalog {
            command.arg("--spi").env(chain::CATALOG_VAR, path);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io_failed(&format!(
                "starting the target ({} demo-target)",
                exe.display()
            )))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, lines) = mpsc::channel();
        let target = Self {
            child: Watched::new(child)?,
            stdin,
            lines,
        };
        let Some(stdout) = stdout else {
            return Err(CliError::failed("the target's stdout is not a pipe"));
        };
        thread::Builder::new()
            .name("demo-target-reader".into())
            .spawn(move || read_replies(stdout, &tx))
            .map_err(io_failed("starting the thread that reads the target"))?;
        Ok(target)
    }

    /// Writes one request to the target's stdin.
    fn send(&mut self, request: &Request) -> Result<(), CliError> {
        let pid = self.child.id();
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| CliError::failed("the pipe to the target is already closed"))?;
        stdin
            .write_all(request.encode().as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(io_failed(&format!(
                "writing to the target's (pid {pid}) stdin"
            )))
    }

    /// Waits for the target's answer, printing its log lines on the way.
    fn reply(&mut self) -> Result<String, CliError> {
        let pid = self.child.id();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let reply = match self.lines.recv_timeout(wait) {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    return Err(CliError::sockdup(
                        format!("reading the answer of the target (pid {pid})"),
                        e,
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(CliError::failed(format!(
                        "the target (pid {pid}) did not answer within {} s",
                        TIMEOUT.as_secs()
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.reap(Duration::from_secs(1));
                    return Err(CliError::failed(format!(
                        "the target (pid {pid}) closed its stdout without answering ({status})"
                    )));
                }
            };
            if let Some(answer) = answer(pid, reply)? {
                return Ok(answer);
            }
        }
    }

    /// Sends `request` and waits for the answer.
    fn request(&mut self, request: &Request) -> Result<String, CliError> {
        self.send(request)?;
        self.reply()
    }

    /// Tells the target to quit, closes its stdin and checks that it exits with status 0.
    fn finish(mut self) -> Result<(), CliError> {
        let pid = self.child.id();
        self.send(&Request::Quit)?;
        self.stdin = None;
        match self.child.wait_within(TIMEOUT) {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => Err(CliError::failed(format!(
                "the target (pid {pid}) exited with {status}"
            ))),
            Ok(None) => Err(CliError::failed(format!(
                "the target (pid {pid}) did not exit within {} s of being told to quit",
                TIMEOUT.as_secs()
            ))),
            Err(e) => Err(CliError::failed(format!(
                "waiting for the target (pid {pid}) failed: {e}"
            ))),
        }
    }

    /// Closes the target's stdin, gives it `grace` to exit, kills it if it has not, and reaps
    /// it; says how it ended.
    fn reap(&mut self, grace: Duration) -> String {
        self.stdin = None;
        match self.child.wait_within(grace) {
            Ok(Some(status)) => status.to_string(),
            Ok(None) | Err(_) => {
                let _ = self.child.child.kill();
                match self.child.child.wait() {
                    Ok(status) => format!("killed: {status}"),
                    Err(e) => format!("could not be reaped: {e}"),
                }
            }
        }
    }
}

impl Drop for Target {
    /// Never leaves a zombie or a stray target behind, whatever step failed.
    fn drop(&mut self) {
        self.reap(Duration::from_secs(1));
    }
}

/// The target's replies, parsed, from `from` to `to`: until the end of output, or the first
/// malformed line (sent as its error, so the source hears of it at once).
fn read_replies(from: impl Read, to: &Sender<Result<Reply, sockdup::Error>>) {
    let mut reader = LineReader::new(from, MAX_LINE);
    while let Some(reply) = reader.read_message::<Reply>().transpose() {
        let stop = reply.is_err();
        if to.send(reply).is_err() || stop {
            break;
        }
    }
}

/// What a reply of the target (pid `pid`) means to the source: a log line is printed (and
/// `None` returned: the answer is still to come); `ok` is the answer; `err` and `fail` are
/// failures.
fn answer(pid: u32, reply: Reply) -> Result<Option<String>, CliError> {
    match reply {
        Reply::Log(text) => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
            Ok(None)
        }
        Reply::Ok(answer) => Ok(Some(answer)),
        Reply::Err(e) => Err(CliError::sockdup(
            format!("the target (pid {pid}) failed"),
            e,
        )),
        Reply::Failed(message) => Err(CliError::failed(format!(
            "the target (pid {pid}) failed: {message}"
        ))),
    }
}

/// What the source asks of the peer thread.
#[derive(Debug)]
enum PeerCmd {
    /// Accept the source's connection; answer with the address it came from.
    Accept,
    /// Read exactly this text (step label, text).
    Expect(String, String),
    /// Write this text (step label, text).
    Send(String, String),
    /// Check that nothing, in particular no EOF, arrives within this time.
    NoEofWithin(Duration),
    /// Check that the next read is EOF.
    ExpectEof,
}

/// The remote end of the connection: a listener on 127.0.0.1 served by a thread of the source.
struct Peer {
    addr: SocketAddr,
    commands: Sender<PeerCmd>,
    answers: Receiver<Result<String, String>>,
}

impl Peer {
    /// Binds a listener on an ephemeral port of 127.0.0.1 and starts the thread serving it.
    fn start() -> Result<Self, CliError> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(io_failed("binding the peer's listener"))?;
        let addr = listener
            .local_addr()
            .map_err(io_failed("reading the peer's address"))?;
        let (commands, rx) = mpsc::channel();
        let (tx, answers) = mpsc::channel();
        thread::Builder::new()
            .name("demo-peer".into())
            .spawn(move || serve_peer(&listener, &rx, &tx))
            .map_err(io_failed("starting the peer thread"))?;
        Ok(Self {
            addr,
            commands,
            answers,
        })
    }

    /// Has the peer thread do `cmd`, and waits for the outcome.
    fn ask(&mut self, cmd: PeerCmd) -> Result<String, CliError> {
        self.commands
            .send(cmd)
            .map_err(|_| CliError::failed("the peer thread has stopped"))?;
        match self.answers.recv_timeout(TIMEOUT + Duration::from_secs(1)) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(message)) => Err(CliError::failed(format!("the peer: {message}"))),
            Err(RecvTimeoutError::Timeout) => Err(CliError::failed(format!(
                "the peer did not finish within {} s",
                TIMEOUT.as_secs()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(CliError::failed("the peer thread has stopped"))
            }
        }
    }
}

/// The peer thread: accepts one connection and carries out the source's commands on it,
/// printing what it saw before it answers (so the output stays in order).
fn serve_peer(
    listener: &TcpListener,
    commands: &Receiver<PeerCmd>,
    answers: &Sender<Result<String, String>>,
) {
    let label = "peer";
    let mut conn: Option<TcpStream> = None;
    for cmd in commands {
        let outcome = match (cmd, conn.as_mut()) {
            (PeerCmd::Accept, _) => accept(listener).map(|(stream, from)| {
                say(
                    label,
                    &format!("1) accepted the connection from {from} (the source's socket)"),
                );
                conn = Some(stream);
                from.to_string()
            }),
            (_, None) => Err("no connection was accepted".to_owned()),
            (PeerCmd::Expect(step, text), Some(c)) => expect(c, &text).map(|()| {
                say(label, &format!("{step}) received {text:?}: as sent"));
                String::new()
            }),
            (PeerCmd::Send(step, text), Some(c)) => c
                .write_all(text.as_bytes())
                .map(|()| {
                    say(label, &format!("{step}) sent {text:?}"));
                    String::new()
                })
                .map_err(|e| format!("writing {text:?} failed: {e}")),
            (PeerCmd::NoEofWithin(wait), Some(c)) => no_eof_within(c, wait).map(|()| {
                say(
                    label,
                    &format!(
                        "10) no EOF within {} ms of the source's close: the socket is still open",
                        wait.as_millis()
                    ),
                );
                String::new()
            }),
            (PeerCmd::ExpectEof, Some(c)) => expect_eof(c).map(|()| {
                say(
                    label,
                    "10) read EOF: the socket closed with its last descriptor, the target's",
                );
                String::new()
            }),
        };
        if answers.send(outcome).is_err() {
            return;
        }
    }
}

/// Accepts one connection within [`TIMEOUT`].
fn accept(listener: &TcpListener) -> Result<(TcpStream, SocketAddr), String> {
    let deadline = Instant::now() + TIMEOUT;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("setting up the listener failed: {e}"))?;
    loop {
        match listener.accept() {
            Ok((stream, from)) => {
                stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_read_timeout(Some(TIMEOUT)))
                    .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
                    .map_err(|e| format!("setting up the connection failed: {e}"))?;
                return Ok((stream, from));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                poll_until(&[listener.as_fd()], Some(deadline))
                    .map_err(|e| format!("waiting for a connection failed: {e}"))?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Err(format!(
                    "no connection arrived within {} s",
                    TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("accept failed: {e}")),
        }
    }
}

/// Reads exactly `text` from `stream` (within the stream's read timeout).
fn expect(stream: &mut TcpStream, text: &str) -> Result<(), String> {
    expect_with(text, |buf| {
        loop {
            match stream.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!(
                        "{text:?} did not arrive within {} s",
                        TIMEOUT.as_secs()
                    ));
                }
                Err(e) => return Err(format!("reading {text:?} failed: {e}")),
            }
        }
    })
}

/// Reads as many bytes as `text` has with `read` (which returns 0 at EOF, like `read(2)`) and
/// checks that they are `text`.
fn expect_with(
    text: &str,
    mut read: impl FnMut(&mut [u8]) -> Result<usize, String>,
) -> Result<(), String> {
    let mut buf = vec![0u8; text.len()];
    let mut filled = 0;
    while filled < buf.len() {
        match read(&mut buf[filled..])? {
            0 => {
                return Err(format!(
                    "the connection closed (EOF) before {text:?} arrived"
                ));
            }
            n => filled += n.min(buf.len() - filled),
        }
    }
    if buf == text.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "expected {text:?}, received {:?}",
            String::from_utf8_lossy(&buf)
        ))
    }
}

/// Checks that nothing arrives on `stream` within `wait`: no data, no EOF.
fn no_eof_within(stream: &mut TcpStream, wait: Duration) -> Result<(), String> {
    let set = |s: &TcpStream, t| {
        s.set_read_timeout(Some(t))
            .map_err(|e| format!("setting a read timeout failed: {e}"))
    };
    set(stream, wait)?;
    let mut byte = [0u8; 1];
    let outcome = match stream.read(&mut byte) {
        Ok(0) => Err(
            "EOF arrived right after the source closed its descriptor: the socket \
                      closed although the target still holds one"
                .to_owned(),
        ),
        Ok(_) => Err(format!("unexpected data arrived: {:?}", byte[0] as char)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
        Err(e) => Err(format!("reading failed: {e}")),
    };
    set(stream, TIMEOUT)?;
    outcome
}

/// Checks that the next read on `stream` is EOF (within the stream's read timeout).
fn expect_eof(stream: &mut TcpStream) -> Result<(), String> {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!(
            "expected EOF, received {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(format!(
            "no EOF within {} s of the last close: a descriptor of the socket is still open somewhere",
            TIMEOUT.as_secs()
        )),
        Err(e) => Err(format!("reading failed while waiting for EOF: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The target
// ---------------------------------------------------------------------------------------------

/// The target's side of the pipe to the source: its stdout.
struct ToSource {
    label: String,
}

impl ToSource {
    fn send(&self, reply: &Reply) -> Result<(), CliError> {
        let mut out = io::stdout().lock();
        out.write_all(reply.encode().as_bytes())
            .and_then(|()| out.flush())
            .map_err(io_failed("writing to the source over stdout"))
    }

    /// A log line, printed by the source as `[target <pid>] <text>`.
    fn log(&self, text: &str) -> Result<(), CliError> {
        self.send(&Reply::Log(format!("[{}] {text}", self.label)))
    }

    /// The answer to the current request.
    fn ok(&self, text: &str) -> Result<(), CliError> {
        self.send(&Reply::Ok(text.to_owned()))
    }
}

/// Runs the target side of the demo (`sockdup demo-target`): answers the source's requests on
/// stdin until `quit` or end of input. A failure, a malformed request among them, is reported
/// to the source at once as an `err` line (a sockdup error, with its code and kind) or a
/// `fail` line (a check that did not hold), and the target exits with status 1; the failure
/// goes to stderr only if the source cannot be told.
pub(crate) fn run_target(args: &TargetArgs) -> ExitCode {
    let to_source = ToSource {
        label: format!("target {}", std::process::id()),
    };
    match serve_target(&to_source, args.spi) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let shown = e.to_string();
            let reply = match e {
                CliError::Sockdup { context, error } => Reply::Err(error.context(context)),
                CliError::Usage(message) | CliError::Failed(message) => Reply::Failed(message),
            };
            if to_source.send(&reply).is_err() {
                let _ = writeln!(io::stderr(), "sockdup demo-target: error: {shown}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What the target holds of the shared socket: how it redeems, uses and closes it is all that
/// differs between the plain demo and the chain variant.
enum Held {
    /// The plain demo: the `TcpStream` from `sockdup::socket_from_info`, once redeemed.
    Stream(Option<TcpStream>),
    /// The chain variant (`--spi`): a `sockdup::spi::Socket` of the record's chain.
    Chain(Box<chain::Target>),
}

impl Held {
    fn holds_socket(&self) -> bool {
        match self {
            Self::Stream(stream) => stream.is_some(),
            Self::Chain(c) => c.holds_socket(),
        }
    }

    /// Steps 7 and 8; returns the socket's addresses ("local peer").
    fn redeem(
        &mut self,
        to_source: &ToSource,
        me: u32,
        record: &ProtocolInfo,
    ) -> Result<String, CliError> {
        match self {
            Self::Stream(slot) => {
                let (stream, addrs) = redeem(to_source, me, record)?;
                *slot = Some(stream);
                Ok(addrs)
            }
            Self::Chain(c) => c.redeem(to_source, me, record),
        }
    }

    fn send_all(&mut self, text: &str) -> Result<(), CliError> {
        match self {
            Self::Stream(Some(s)) => s
                .write_all(text.as_bytes())
                .map_err(io_failed("writing to the peer over the shared socket")),
            Self::Stream(None) => Err(CliError::failed("the target holds no socket")),
            Self::Chain(c) => c.send_all(text),
        }
    }

    fn expect(&mut self, text: &str) -> Result<(), CliError> {
        match self {
            Self::Stream(Some(s)) => expect(s, text).map_err(|e| {
                CliError::failed(format!("reading from the peer over the shared socket: {e}"))
            }),
            Self::Stream(None) => Err(CliError::failed("the target holds no socket")),
            Self::Chain(c) => c.expect(text),
        }
    }

    /// Closes the target's descriptor; says which one, and how.
    fn close(&mut self) -> Result<String, CliError> {
        match self {
            Self::Stream(stream) => Ok(close_stream(stream)),
            Self::Chain(c) => c.close(),
        }
    }

    /// The lines of the per-layer report (the chain variant only).
    fn report(&self) -> Result<Vec<String>, CliError> {
        match self {
            Self::Stream(_) => Err(CliError::failed(
                "the source asked for a layer report, but the plain demo uses no layers",
            )),
            Self::Chain(c) => c.report(),
        }
    }
}

fn serve_target(to_source: &ToSource, spi: bool) -> Result<(), CliError> {
    let me = std::process::id();
    let guard = sockdup::startup().map_err(|e| {
        CliError::sockdup(
            "starting sockdup in the target (sockdup::startup, WSAStartup)",
            e,
        )
    })?;
    let mut held = if spi {
        Held::Chain(Box::default())
    } else {
        Held::Stream(None)
    };
    let mut requests = LineReader::new(io::stdin().lock(), MAX_LINE);
    while let Some(request) = requests
        .read_message::<Request>()
        .map_err(|e| CliError::sockdup("reading the source's request", e))?
    {
        let verb = request.verb();
        if matches!(
            request,
            Request::Send { .. } | Request::Expect { .. } | Request::Close
        ) && !held.holds_socket()
        {
            return Err(CliError::failed(format!(
                "the source asked for {verb:?} before the target holds a socket"
            )));
        }
        match request {
            Request::Pid => {
                // 3) Receive the process identifier request and respond.
                to_source.log(&format!(
                    "3) received the process-id request; answers {me} (its sockdup inbox \
                     listens at {})",
                    guard.inbox_address()
                ))?;
                to_source.ok(&me.to_string())?;
            }
            Request::Record(record) => {
                let addrs = held.redeem(to_source, me, &record)?;
                to_source.ok(&addrs)?;
            }
            Request::Send { step, text } => {
                held.send_all(&text)?;
                to_source.log(&format!("{step}) sent {text:?} to the peer"))?;
                to_source.ok("")?;
            }
            Request::Expect { step, text } => {
                held.expect(&text)?;
                to_source.log(&format!("{step}) received {text:?} from the peer: as sent"))?;
                to_source.ok("")?;
            }
            Request::Close => {
                let closed = held.close()?;
                to_source.log(&format!(
                    "10) closed its descriptor ({closed}), the socket's last one"
                ))?;
                to_source.ok("")?;
            }
            Request::Report => {
                for line in held.report()? {
                    to_source.log(&line)?;
                }
                to_source.ok("")?;
            }
            Request::Quit => return Ok(()),
        }
    }
    // The source closed the pipe: nothing more to do.
    Ok(())
}

/// Step 7: checks that the record received was made for this process (`me`); with
/// `show_chain`, its protocol chain is part of the line.
fn receive_record(
    to_source: &ToSource,
    me: u32,
    record: &ProtocolInfo,
    show_chain: bool,
) -> Result<(), CliError> {
    // 7) Receive the WSAPROTOCOL_INFO structure.
    if record.service_flags3 != me {
        return Err(CliError::failed(format!(
            "the record was made for process {}, not for this target ({me})",
            record.service_flags3
        )));
    }
    to_source.log(&format!(
        "7) received the record ({} characters): catalog entry {} {:?}{}, made for pid {me}, \
         ticket {:#010x}",
        record.to_string().len(),
        record.catalog_entry_id,
        record.protocol_name,
        if show_chain {
            format!(" (chain {})", chain::ids(record.protocol_chain.used()))
        } else {
            String::new()
        },
        record.provider_reserved
    ))?;
    Ok(())
}

/// Steps 7 and 8: decodes the record, redeems it, and checks that it works once only. Returns
/// the stream and its addresses ("local peer") for the source to compare with its own.
fn redeem(
    to_source: &ToSource,
    me: u32,
    record: &ProtocolInfo,
) -> Result<(TcpStream, String), CliError> {
    receive_record(to_source, me, record, false)?;

    // 8) WSPSocket with the record: the shared socket's descriptor.
    let fd = sockdup::socket_from_info(record).map_err(|e| {
        CliError::sockdup(
            "redeeming the record (sockdup::socket_from_info, WSASocketW with FROM_PROTOCOL_INFO)",
            e,
        )
    })?;
    let cloexec = sockdup::is_cloexec(fd.as_fd())
        .map_err(io_failed("reading the descriptor's close-on-exec flag"))?;
    if !cloexec {
        return Err(CliError::failed(
            "socket_from_info returned a descriptor without close-on-exec",
        ));
    }
    let raw = fd.as_raw_fd();
    let stream = TcpStream::from(fd);
    let local = stream
        .local_addr()
        .map_err(io_failed("reading the redeemed socket's address"))?;
    let peer = stream
        .peer_addr()
        .map_err(io_failed("reading the redeemed socket's peer address"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(io_failed("setting timeouts on the redeemed socket"))?;
    to_source.log(&format!(
        "8) socket_from_info -> fd {raw} (close-on-exec): a TCP socket connected from {local} \
         to {peer}, the source's socket"
    ))?;
    match sockdup::socket_from_info(record) {
        Ok(_) => {
            return Err(CliError::failed(
                "the record was redeemed a second time: it must work once only",
            ));
        }
        Err(e) => to_source.log(&format!(
            "8) the same record again -> refused, as it must be: {e}"
        ))?,
    }
    Ok((stream, format!("{local} {peer}")))
}

/// Closes a plain descriptor held by either process of the demo: `fd N` (or `fd -1` if it was
/// already gone).
fn close_stream(stream: &mut Option<TcpStream>) -> String {
    format!("fd {}", stream.take().map_or(-1, |s| s.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockdup::ErrorKind;

    /// The replies `read_replies` passes on for `bytes`.
    fn replies(bytes: &[u8]) -> Vec<Result<Reply, sockdup::Error>> {
        let (tx, rx) = mpsc::channel();
        read_replies(bytes, &tx);
        drop(tx);
        rx.into_iter().collect()
    }

    #[test]
    fn a_malformed_line_from_the_target_stops_the_source_at_once() {
        let got = replies(b"log [target 1] 3) hello\nwhat is this\nok 1\n");
        assert_eq!(got.len(), 2, "nothing after the malformed line: {got:?}");
        assert!(matches!(&got[0], Ok(Reply::Log(t)) if t == "[target 1] 3) hello"));
        let Err(e) = &got[1] else { panic!("{got:?}") };
        assert_eq!(e.kind(), ErrorKind::ProtocolViolation);
        // An oversized line too, before its end.
        let got = replies(&[b'x'; MAX_LINE + 1]);
        assert!(matches!(&got[..], [Err(e)] if e.kind() == ErrorKind::ProtocolViolation));
    }

    #[test]
    fn the_targets_errors_keep_their_kind() {
        let line = "err 10022 already-redeemed the record was already redeemed";
        let reply = Reply::parse(line).expect("a reply");
        let Err(CliError::Sockdup { context, error }) = answer(42, reply) else {
            panic!("not a sockdup error");
        };
        assert_eq!(context, "the target (pid 42) failed");
        assert_eq!(error.kind(), ErrorKind::AlreadyRedeemed);
        let e = answer(42, Reply::Failed("a check".into())).unwrap_err();
        assert!(matches!(e, CliError::Failed(m) if m == "the target (pid 42) failed: a check"));
        assert_eq!(
            answer(42, Reply::Ok("7".into())).unwrap().as_deref(),
            Some("7")
        );
    }
}
