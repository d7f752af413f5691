//! Load-test twins of `sockdup serve`, sharing one HTTP hello handler.
//!
//! `scripts/handoff-bench.py` compares `sockdup serve --workers 2 -- sockdup worker --app hello`
//! with two servers from this crate (and a Node.js `cluster` server):
//!
//! - `raw-acceptor`: the raw twin of the handoff. One acceptor process accepts every connection
//!   and passes it, round-robin, with one bare `sendmsg` carrying `SCM_RIGHTS` over a
//!   pre-made `AF_UNIX` socketpair to one of its worker processes (no sockdup, no
//!   acknowledgement); the worker `recvmsg`s the descriptor and serves it.
//! - `floor-acceptor`: the floor of `sockdup serve`'s guarantee. The same epoll accept loop
//!   and batches (at most 64 per worker per turn) as `sockdup serve`'s acceptor; per batch one
//!   `sendmsg` with `SCM_RIGHTS` ([`send_fds`]) and a blocking wait for the worker's
//!   acknowledgement that it holds them ([`send_ack`], [`wait_ack`]), as sockdup's inbox
//!   acknowledges a push; no records, no inbox table, no `conn`/`ok`/`done` lines.
//! - `reuseport-server`: the ceiling. Every worker process binds the same address with
//!   `SO_REUSEPORT` and accepts for itself: the kernel spreads connections, nothing is handed
//!   off.
//!
//! Both serve connections with [`serve_all`]: the event loop and HTTP state machine of
//! `sockdup worker --app hello`, the very same source files (included with `#[path]`), so that
//! the comparison measures how connections reach the workers and nothing else.
//!
//! [`serve_http`] (the twins' former, thread-per-connection server, kept for comparison) is a
//! minimal HTTP/1.1 server that answers every request
//! `200 OK` with the body [`BODY`], honours keep-alive, and closes after answering a request
//! that asked for `Connection: close` (or an HTTP/1.0 request without `keep-alive`). It sends
//! the same bytes as `sockdup worker --app hello` ([`response`]: `Date`, `Server`,
//! `Content-Type`, `Content-Length`, `Connection` when closing), closes the same way (shut
//! down the write side, read until the client closes: [`LINGER`]), and runs one thread per
//! connection with the same read timeout ([`TICK`]), so that the comparison measures how
//! connections reach the workers, not the HTTP code. (It parses less: no chunked bodies, no
//! `Expect`, no `400`s; none of that is on the benchmark's path.)
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, sockopt,
};

/// The body of every response.
pub const BODY: &[u8] = b"hello from sockdup\n";

/// How long a connection closing after its response waits for the client's remaining bytes
/// (as `sockdup worker --app hello` does).
pub const LINGER: Duration = Duration::from_secs(1);

/// The read timeout of every connection: how often a waiting read wakes (as `sockdup worker
/// --app hello` sets it).
pub const TICK: Duration = Duration::from_millis(200);

/// The whole `200 OK` response at time `now`, byte for byte what `sockdup worker --app hello`
/// sends: `Date`, `Server`, `Content-Type`, `Content-Length` and, if given, `Connection`.
pub fn response(now: SystemTime, connection: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nDate: {}\r\nServer: sockdup\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        http_date(now),
        BODY.len()
    );
    if let Some(c) = connection {
        out.push_str("Connection: ");
        out.push_str(c);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(BODY);
    bytes
}

/// The IMF-fixdate of `t` (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // The civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {hh:02}:{mm:02}:{ss:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

/// A connection [`serve_http`] can serve: a byte stream whose write side can be shut down.
pub trait HalfClose: Read + Write {
    /// Shuts down the write side (sends FIN).
    ///
    /// # Errors
    /// As `shutdown(SHUT_WR)`.
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl<T: HalfClose + ?Sized> HalfClose for &mut T {
    fn shutdown_write(&mut self) -> io::Result<()> {
        (**self).shutdown_write()
    }
}

impl HalfClose for TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// The environment variable through which a server tells the worker processes it spawns its
/// pid, so that they can notice they were orphaned.
pub const PARENT_ENV: &str = "SOCKDUP_LOADTEST_PARENT";

/// The largest request head accepted; a longer one closes the connection.
const MAX_HEAD: usize = 16 * 1024;

/// The listen backlog of every listening socket here: 128, as std's `TcpListener::bind`,
/// which `sockdup serve` uses (far above the benchmark's 32 concurrent connections).
pub const BACKLOG: i32 = 128;

/// What a request asks of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    /// Bytes of the head, including the blank line.
    len: usize,
    /// Bytes of body that follow (`Content-Length`).
    body: usize,
    /// The connection closes after the response.
    close: bool,
    /// HTTP/1.0 (answered with `Connection: keep-alive` when it stays open).
    http10: bool,
}

/// Parses the request head at the start of `buf`: `Ok(None)` if it is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ()> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ())?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(())?;
    let http10 = request_line.ends_with("HTTP/1.0");
    let (mut close, mut keep_alive, mut body) = (false, false, 0);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(())?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            body = value.parse().map_err(|_| ())?;
        }
    }
    Ok(Some(Head {
        len: end + 4,
        body,
        close: close || (http10 && !keep_alive),
        http10,
    }))
}

/// Serves the HTTP hello protocol on `stream` until the client closes it or asks to. A close
/// after a response is graceful, as in `sockdup worker --app hello`: the write side is shut
/// down, then the client's remaining bytes are read until it closes (at most [`LINGER`]).
///
/// # Errors
/// A failed read or write, or a request that is not HTTP.
pub fn serve_http<S: HalfClose>(mut stream: S) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8 * 1024];
    loop {
        // Answer every complete request already read (pipelining).
        let mut at = 0;
        while let Some(head) = parse_head(&buf[at..])
            .map_err(|()| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP request"))?
        {
            if buf.len() - at < head.len + head.body {
                break;
            }
            at += head.len + head.body;
            let connection = match (head.close, head.http10) {
                (true, _) => Some("close"),
                (false, true) => Some("keep-alive"),
                (false, false) => None,
            };
            stream.write_all(&response(SystemTime::now(), connection))?;
            if head.close {
                linger(&mut stream);
                return Ok(());
            }
        }
        buf.drain(..at);
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// No more writes, then the client's remaining bytes are read and dropped until it closes,
/// for at most [`LINGER`].
fn linger<S: HalfClose>(stream: &mut S) {
    if stream.shutdown_write().is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 8 * 1024];
    let mut total = 0usize;
    while Instant::now() < until && total < 1 << 20 {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

// The serving loop of `sockdup worker --app hello`, shared word for word: the twins serve
// connections exactly as the sockdup worker does, so the benchmark compares the handoffs alone.
// The twins serve hello only: the echo protocol is the sockdup worker's.
#[allow(dead_code)]
#[path = "../../sockdup-cli/src/worker/evloop.rs"]
mod evloop;
#[path = "../../sockdup-cli/src/worker/hello.rs"]
mod hello;

/// Serves the HTTP hello protocol on every connection `next` yields, from one event loop on
/// this thread (the same code as `sockdup worker --app hello`: epoll, non-blocking sockets, a
/// state machine per connection), while `next` runs on a thread of its own (as the worker's
/// handoff reader does); returns once `next` has yielded `None` and every connection is done.
///
/// # Errors
/// Creating the event loop or its thread; the epoll set's errors.
pub fn serve_all<F>(mut next: F) -> io::Result<()>
where
    F: FnMut() -> Option<TcpStream> + Send + 'static,
{
    let (feeder, event_loop) = evloop::channel()?;
    let feeding = std::thread::Builder::new()
        .name("feed".into())
        .spawn(move || {
            while let Some(stream) = next() {
                if !feeder.send(evloop::Feed::Conn(stream)) {
                    return;
                }
            }
            feeder.send(evloop::Feed::End);
        })?;
    // A failed loop returns at once: the feeding thread may be blocked in `next`.
    event_loop.run(evloop::Protocol::Hello)?;
    let _ = feeding.join();
    Ok(())
}

/// Serves `stream` on a thread of its own (one thread per connection), with the read timeout
/// [`TICK`] (the twins' former way; [`serve_all`] is what they use now).
pub fn spawn_connection(stream: TcpStream) {
    std::thread::spawn(move || {
        if stream.set_read_timeout(Some(TICK)).is_ok() {
            let _ = serve_http(stream);
        }
    });
}

/// A listening TCP socket on `addr` (close-on-exec, `SO_REUSEADDR`, backlog [`BACKLOG`]),
/// with `SO_REUSEPORT` if `reuseport`.
///
/// # Errors
/// As `socket`, `setsockopt`, `bind` and `listen`.
pub fn listen(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    net::bind(&fd, &addr)?;
    net::listen(&fd, BACKLOG)?;
    Ok(TcpListener::from(fd))
}

/// A connected pair of close-on-exec `AF_UNIX` `SOCK_SEQPACKET` sockets, to carry descriptors.
///
/// # Errors
/// As `socketpair`.
pub fn fd_channel() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends `fd` over `channel`: one `sendmsg` of one byte with `SCM_RIGHTS`; never raises
/// `SIGPIPE`.
///
/// # Errors
/// As `sendmsg` (`EPIPE` once the receiver is gone).
pub fn send_fd(channel: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::NOBUFS.raw_os_error(),
        ));
    }
    net::sendmsg(
        channel,
        &[IoSlice::new(b"c")],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one descriptor sent by [`send_fd`] (close-on-exec); `Ok(None)` when the sender
/// closed the channel.
///
/// # Errors
/// As `recvmsg`; `EBADMSG` for a message without a descriptor.
pub fn recv_fd(channel: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let msg = loop {
        match net::recvmsg(
            channel,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut received = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut rights) = m {
            received = received.or(rights.next());
        }
    }
    match (msg.bytes, received) {
        (_, Some(fd)) => Ok(Some(fd)),
        (0, None) => Ok(None),
        (_, None) => Err(io::Error::from_raw_os_error(
            rustix::io::Errno::BADMSG.raw_os_error(),
        )),
    }
}

/// The most descriptors one [`send_fds`] message carries: `sockdup serve`'s batch limit (one
/// wake-up's connections for one worker, at most 64).
pub const MAX_BATCH: usize = 64;

/// Sends `fds` (at most [`MAX_BATCH`]) over `channel` in one `sendmsg` with `SCM_RIGHTS`; the
/// one-byte payload is the count. Never raises `SIGPIPE`.
///
/// # Errors
/// As `sendmsg` (`EPIPE` once the receiver is gone); `EINVAL` for more than [`MAX_BATCH`].
pub fn send_fds(channel: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > MAX_BATCH {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::INVAL.raw_os_error(),
        ));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_BATCH))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::NOBUFS.raw_os_error(),
        ));
    }
    let count = [fds.len() as u8];
    loop {
        match net::sendmsg(
            channel,
            &[IoSlice::new(&count)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map(drop).map_err(Into::into),
        }
    }
}

/// Receives one [`send_fds`] message into `into` (close-on-exec descriptors, appended);
/// `Ok(false)` when the sender closed the channel.
///
/// # Errors
/// As `recvmsg`; `EBADMSG` for a message without descriptors.
pub fn recv_fds(channel: BorrowedFd<'_>, into: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_BATCH))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut count = [0u8; 1];
    let msg = loop {
        match net::recvmsg(
            channel,
            &mut [IoSliceMut::new(&mut count)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let before = into.len();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            into.extend(rights);
        }
    }
    match (msg.bytes, into.len() > before) {
        (_, true) => Ok(true),
        (0, false) => Ok(false),
        (_, false) => Err(io::Error::from_raw_os_error(
            rustix::io::Errno::BADMSG.raw_os_error(),
        )),
    }
}

/// Sends the one-byte acknowledgement that a [`recv_fds`] message arrived (the receiver holds
/// its descriptors).
///
/// # Errors
/// As `send`.
pub fn send_ack(channel: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        match net::send(channel, b"k", SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map(drop).map_err(Into::into),
        }
    }
}

/// Waits (blocking) for the acknowledgement [`send_ack`] sends.
///
/// # Errors
/// As `recv`; `EPIPE` if the receiver closed the channel instead.
pub fn wait_ack(channel: BorrowedFd<'_>) -> io::Result<()> {
    let mut byte = [0u8; 1];
    loop {
        match net::recv(channel, &mut byte, RecvFlags::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            Ok((0, _)) => {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::PIPE.raw_os_error(),
                ));
            }
            other => return other.map(drop).map_err(Into::into),
        }
    }
}

/// Command-line options shared by the servers: `--listen ADDR --workers N`, and the hidden
/// `--worker` a server passes to the processes it spawns from its own executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The address to listen on.
    pub listen: Option<SocketAddr>,
    /// How many worker processes.
    pub workers: usize,
    /// This process is a worker (spawned by the server itself).
    pub worker: bool,
}

impl Options {
    /// Parses the arguments after the program name; `Err` holds the message for the user.
    ///
    /// # Errors
    /// An unknown option, a missing or malformed value, or `--help` (the usage).
    pub fn parse(program: &str, args: impl IntoIterator<Item = OsString>) -> Result<Self, String> {
        let usage = format!("usage: {program} --listen ADDR [--workers N]");
        let mut options = Self {
            listen: None,
            workers: 2,
            worker: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg.into_string().map_err(|_| usage.clone())?;
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next().and_then(|v| v.into_string().ok()))
                    .ok_or_else(|| format!("{name} needs a value\n{usage}"))
            };
            match name.as_str() {
                "--listen" => {
                    let v = value()?;
                    options.listen = Some(
                        v.parse()
                            .map_err(|e| format!("--listen {v}: {e}\n{usage}"))?,
                    );
                }
                "--workers" => {
                    let v = value()?;
                    options.workers =
                        v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            format!("--workers {v}: not a positive number\n{usage}")
                        })?;
                }
                "--worker" => options.worker = true,
                "-h" | "--help" => return Err(usage),
                _ => return Err(format!("unknown argument {name}\n{usage}")),
            }
        }
        if options.listen.is_none() && !options.worker {
            return Err(format!("--listen is required\n{usage}"));
        }
        Ok(options)
    }
}

/// Spawns this executable again as a worker (`--worker` plus `extra` arguments), with `stdin`
/// as its standard input and [`PARENT_ENV`] set to this process's pid.
///
/// # Errors
/// As `current_exe` and `spawn`.
pub fn spawn_self_worker(stdin: Stdio, extra: &[OsString]) -> io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .arg("--worker")
        .args(extra)
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(stdin)
        .spawn()
}

/// In a worker: asks the kernel to kill this process when its parent exits
/// (`PR_SET_PDEATHSIG`), and exits at once if the parent named in [`PARENT_ENV`] is already
/// gone, so that a killed server leaves no workers behind.
///
/// # Errors
/// As `prctl`.
pub fn die_with_parent() -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let expected = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    if expected.is_some() && parent != expected {
        std::process::exit(1);
    }
    Ok(())
}

/// On SIGTERM, SIGINT or SIGHUP: kills the processes `pids` (the workers), reaps them, and
/// exits with status 0, so that a stopped server leaves nothing behind (not even zombies for
/// init to reap). The signals are handled on a thread of their own.
///
/// # Errors
/// As registering the signal handlers.
pub fn stop_children_on_signal(pids: Vec<u32>) -> io::Result<()> {
    use rustix::process::{Pid, Signal, WaitOptions};
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let pids: Vec<Pid> = pids
                .iter()
                .filter_map(|p| i32::try_from(*p).ok().and_then(Pid::from_raw))
                .collect();
            for pid in &pids {
                let _ = rustix::process::kill_process(*pid, Signal::KILL);
            }
            for pid in &pids {
                let _ = rustix::process::waitpid(Some(*pid), WaitOptions::empty());
            }
            std::process::exit(0);
        }
    });
    Ok(())
}

/// Waits until one of `children` exits, kills the others, and returns the first one's exit
/// code (1 if it was killed by a signal).
pub fn supervise(mut children: Vec<Child>) -> i32 {
    loop {
        let exited = children
            .iter_mut()
            .find_map(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            for child in &mut children {
                // The one that exited is reaped already: kill fails and wait returns at once.
                let _ = child.kill();
                let _ = child.wait();
            }
            return status.code().unwrap_or(1);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// This process's standard input as a descriptor of its own (the channel a worker receives
/// descriptors on).
///
/// # Errors
/// As `fcntl(F_DUPFD_CLOEXEC)`.
pub fn stdin_channel() -> io::Result<OwnedFd> {
    io::stdin().as_fd().try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A fake connection: reads from `input`, collects what is written.
    struct Fake {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // One byte at a time, to exercise split requests.
            let n = buf.len().min(1);
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl HalfClose for Fake {
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.output.extend_from_slice(b"<FIN>");
            Ok(())
        }
    }

    /// What the server wrote, with the dates replaced by `DATE`.
    fn run(input: &str) -> String {
        let mut fake = Fake {
            input: Cursor::new(input.as_bytes().to_vec()),
            output: Vec::new(),
        };
        serve_http(&mut fake).unwrap();
        undate(&fake.output)
    }

    fn undate(bytes: &[u8]) -> String {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        text.split("\r\n")
            .map(|l| {
                if l.starts_with("Date: ") {
                    "Date: DATE"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    fn resp(connection: Option<&str>) -> String {
        undate(&response(SystemTime::now(), connection))
    }

    #[test]
    fn the_response_is_sockdup_worker_s() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            response(t, Some("close")),
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: sockdup\r\n\
              Content-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\
              Connection: close\r\n\r\nhello from sockdup\n"
        );
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn keep_alive_pipelined_then_close() {
        let req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let close = "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n";
        let after = "GET /never HTTP/1.1\r\n\r\n";
        let out = run(&format!("{req}{req}{close}{after}"));
        let want = format!("{}{}{}<FIN>", resp(None), resp(None), resp(Some("close")));
        assert_eq!(out, want);
    }

    #[test]
    fn bodies_are_skipped_and_http10_closes() {
        let post = "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let old = "GET / HTTP/1.0\r\n\r\n";
        let want = format!("{}{}<FIN>", resp(None), resp(Some("close")));
        assert_eq!(run(&format!("{post}{old}")), want);
        let old_ka = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(run(old_ka), resp(Some("keep-alive")));
    }

    #[test]
    fn eof_mid_request_answers_nothing() {
        assert!(run("GET / HTTP/1.1\r\nHost").is_empty());
    }

    #[test]
    fn options() {
        let parse = |a: &[&str]| Options::parse("x", a.iter().map(OsString::from));
        let o = parse(&["--listen", "127.0.0.1:1", "--workers=3"]).unwrap();
        assert_eq!(o.listen, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!((o.workers, o.worker), (3, false));
        assert!(parse(&["--workers", "2"]).is_err());
        assert!(parse(&["--listen", "nope"]).is_err());
        assert!(parse(&["--listen", "127.0.0.1:1", "--workers", "0"]).is_err());
        assert!(parse(&["--worker"]).unwrap().worker);
    }

    #[test]
    fn a_batch_crosses_the_channel_and_is_acknowledged() {
        let (a, b) = fd_channel().unwrap();
        let pairs: Vec<_> = (0..MAX_BATCH)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        let fds: Vec<BorrowedFd<'_>> = pairs.iter().map(|(x, _)| x.as_fd()).collect();
        send_fds(a.as_fd(), &fds).unwrap();
        let mut got = Vec::new();
        assert!(recv_fds(b.as_fd(), &mut got).unwrap());
        assert_eq!(got.len(), MAX_BATCH);
        send_ack(b.as_fd()).unwrap();
        wait_ack(a.as_fd()).unwrap();
        // In order: the last one received is the last one's twin.
        let mut last = std::os::unix::net::UnixStream::from(got.pop().unwrap());
        last.write_all(b"z").unwrap();
        let mut buf = [0u8; 1];
        (&pairs[MAX_BATCH - 1].1).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"z");
        let too_many: Vec<BorrowedFd<'_>> = (0..=MAX_BATCH).map(|_| a.as_fd()).collect();
        assert!(send_fds(a.as_fd(), &too_many).is_err());
        drop(b);
        assert!(wait_ack(a.as_fd()).is_err());
        let (c, d) = fd_channel().unwrap();
        drop(c);
        assert!(!recv_fds(d.as_fd(), &mut got).unwrap());
    }

    #[test]
    fn a_descriptor_crosses_the_channel() {
        let (a, b) = fd_channel().unwrap();
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        send_fd(a.as_fd(), x.as_fd()).unwrap();
        drop(x);
        let got = recv_fd(b.as_fd()).unwrap().unwrap();
        let mut got = std::os::unix::net::UnixStream::from(got);
        got.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        (&y).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(a);
        assert!(recv_fd(b.as_fd()).unwrap().is_none());
    }
}
