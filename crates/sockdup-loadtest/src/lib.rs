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
//! All of them serve connections with [`serve_all`]: the event loop and HTTP state machine of
//! `sockdup worker --app hello`, the very same source files (included with `#[path]`), so that
//! the comparison measures how connections reach the workers and nothing else.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, sockopt,
};

/// The environment variable through which a server tells the worker processes it spawns its
/// pid, so that they can notice they were orphaned.
pub const PARENT_ENV: &str = "SOCKDUP_LOADTEST_PARENT";

/// The listen backlog of every listening socket here: 128, as std's `TcpListener::bind`,
/// which `sockdup serve` uses (far above the benchmark's 32 concurrent connections).
pub const BACKLOG: i32 = 128;

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

/// The worker processes of an acceptor twin (`raw-acceptor`, `floor-acceptor`): this
/// executable again in `--worker` mode, each with its end of an [`fd_channel`] as standard
/// input, killed and reaped (after the channels close) when this drops or the acceptor gets
/// SIGTERM, SIGINT or SIGHUP ([`stop_children_on_signal`]).
#[derive(Debug)]
pub struct Workers {
    channels: Vec<OwnedFd>,
    children: Vec<Child>,
}

impl Workers {
    /// Starts `n` workers.
    ///
    /// # Errors
    /// Making a channel, starting a worker or installing the signal handlers.
    pub fn start(n: usize) -> Result<Self, String> {
        let mut workers = Self {
            channels: Vec::with_capacity(n),
            children: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let (ours, theirs) = fd_channel().map_err(|e| format!("socketpair: {e}"))?;
            let child = spawn_self_worker(Stdio::from(theirs), &[])
                .map_err(|e| format!("starting a worker: {e}"))?;
            workers.channels.push(ours);
            workers.children.push(child);
        }
        stop_children_on_signal(workers.children.iter().map(Child::id).collect())
            .map_err(|e| format!("installing the signal handlers: {e}"))?;
        Ok(workers)
    }

    /// The acceptor's end of each worker's channel, in worker order.
    pub fn channels(&self) -> &[OwnedFd] {
        &self.channels
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.channels.clear();
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `main` of an acceptor twin called `name`: parses the [`Options`], runs `worker` in
/// `--worker` mode and `acceptor` otherwise, and prints a failure as `name: error`.
pub fn acceptor_main(
    name: &str,
    worker: impl FnOnce() -> Result<(), String>,
    acceptor: impl FnOnce(&Options) -> Result<(), String>,
) -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = Options::parse(name, args).and_then(|options| {
        if options.worker {
            worker()
        } else {
            acceptor(&options)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
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
    use std::io::{Read, Write};

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
