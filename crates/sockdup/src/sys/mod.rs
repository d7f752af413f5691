//! The Linux layer: every system call sockdup makes, through rustix (and nix for `SO_PEERCRED`
//! and `F_SETOWN`). The library's only `unsafe` lives on this floor (the owner slot's `fcntl`s
//! and the watcher thread's `sched_setscheduler` in [`events`], tokio's `AsyncFd`
//! registration), each block with its `SAFETY` note.
//!
//! What the rest of the crate needs from the OS, and nothing more: the inbox's `AF_UNIX`
//! `SOCK_SEQPACKET` socket and its address, `SCM_RIGHTS` send and receive (always with
//! `MSG_CMSG_CLOEXEC`, truncation reported, unclaimed descriptors closed), peer credentials,
//! pidfds, and reading a socket's family, type and protocol. Every descriptor created here is
//! close-on-exec.
//!
//! Failures come out as rustix's typed [`Errno`]; turning them into sockdup's `Error` is the
//! callers' business ([`Error::from_errno`](sockdup_core::Error::from_errno) takes an `Errno`).

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};

use rustix::io::{Errno, Result};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
    sockopt,
};
use rustix::process::{Pid, PidfdFlags};
use sockdup_core::message::MAX_FDS_PER_MESSAGE;

pub(crate) mod events;
pub(crate) mod procfs;

/// Where a process's inbox listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxAddress {
    /// A name in the abstract `AF_UNIX` namespace of the network namespace (the default).
    Abstract(String),
    /// A socket file, for processes in different network namespaces or containers
    /// (`SOCKDUP_RUNTIME_DIR`).
    Path(PathBuf),
}

impl InboxAddress {
    /// The address of process `pid`'s inbox: in `runtime_dir` if given, else abstract.
    pub fn for_pid(pid: u32, runtime_dir: Option<&Path>) -> Self {
        match runtime_dir {
            Some(dir) => Self::Path(dir.join(format!("sockdup-{pid}.sock"))),
            None => Self::Abstract(format!("sockdup/v1/{pid}")),
        }
    }

    fn to_sockaddr(&self) -> Result<SocketAddrUnix> {
        match self {
            Self::Abstract(name) => Ok(SocketAddrUnix::new_abstract_name(name.as_bytes())?),
            Self::Path(path) => Ok(SocketAddrUnix::new(path.as_path())?),
        }
    }
}

impl fmt::Display for InboxAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Abstract(name) => write!(f, "@{name}"),
            Self::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// This process's id.
pub(crate) fn getpid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// This process's real user id.
pub(crate) fn getuid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// 32 random bits from the kernel (`getrandom`), for nonces and ticket numbering.
pub(crate) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // getrandom on a 4-byte buffer does not return short; if the call fails, fall back to
    // a mix of time and pid: these values need to be unlikely to repeat, not secret.
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_ok() {
        u32::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.subsec_nanos() ^ getpid().rotate_left(16)
    }
}

fn unix_socket(kind: SocketType, flags: SocketFlags) -> Result<OwnedFd> {
    net::socket_with(
        AddressFamily::UNIX,
        kind,
        SocketFlags::CLOEXEC | flags,
        None,
    )
}

/// A non-blocking listening socket of `kind` bound at `addr`. A stale socket file left by a
/// dead process with the same pid is replaced.
fn listen_at(addr: &InboxAddress, kind: SocketType) -> Result<OwnedFd> {
    let fd = unix_socket(kind, SocketFlags::NONBLOCK)?;
    if let InboxAddress::Path(path) = addr {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Errno::from_io_error(&e).unwrap_or(Errno::IO));
            }
            _ => {}
        }
    }
    net::bind(&fd, &addr.to_sockaddr()?)?;
    net::listen(&fd, 128)?;
    Ok(fd)
}

/// A blocking connection of `kind` to `addr`; reads and writes that take longer than
/// `timeout` fail with `EAGAIN`.
fn connect_at(addr: &InboxAddress, kind: SocketType, timeout: Duration) -> Result<OwnedFd> {
    let fd = unix_socket(kind, SocketFlags::empty())?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(timeout))?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))?;
    net::connect(&fd, &addr.to_sockaddr()?)?;
    Ok(fd)
}

/// The inbox's listening `SOCK_SEQPACKET` socket at `addr`, non-blocking.
pub(crate) fn listen_inbox(addr: &InboxAddress) -> Result<OwnedFd> {
    listen_at(addr, SocketType::SEQPACKET)
}

/// A takeover control socket (`SOCK_STREAM`, for lines of text) listening at `addr`,
/// non-blocking.
pub(crate) fn listen_control(addr: &InboxAddress) -> Result<OwnedFd> {
    listen_at(addr, SocketType::STREAM)
}

/// A blocking connection to the takeover control socket at `addr`.
pub(crate) fn connect_control(addr: &InboxAddress, timeout: Duration) -> Result<OwnedFd> {
    connect_at(addr, SocketType::STREAM, timeout)
}

/// Accepts one connection, non-blocking and close-on-exec; `Ok(None)` when none is waiting.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> Result<Option<OwnedFd>> {
    match net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A blocking connection to the inbox at `addr`; replies that take longer than `timeout` fail
/// with `EAGAIN`.
pub(crate) fn connect_inbox(addr: &InboxAddress, timeout: Duration) -> Result<OwnedFd> {
    connect_at(addr, SocketType::SEQPACKET, timeout)
}

/// The kernel-verified credentials of the process at the other end of a unix socket
/// (`SO_PEERCRED`): for a connecting client, the process that called `listen`; for the
/// listener, the one that called `connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// The peer's pid as this process's pid namespace sees it; `None` when the peer lives in a
    /// pid namespace this one cannot see (an ancestor's, or a sibling's: the kernel reports 0).
    pub(crate) pid: Option<u32>,
    /// The peer's uid, as this process's user namespace sees it.
    pub(crate) uid: u32,
}

/// The credentials of the process at the other end of `fd` (`SO_PEERCRED`).
///
/// Read through nix rather than rustix: rustix's `UCred` holds the pid as a non-zero `Pid`, and
/// the kernel's 0 (a peer in a pid namespace this process cannot see) does not fit it.
pub(crate) fn peer_cred(fd: BorrowedFd<'_>) -> Result<PeerCred> {
    let cred = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| Errno::from_raw_os_error(e as i32))?;
    Ok(PeerCred {
        pid: u32::try_from(cred.pid()).ok().filter(|&p| p != 0),
        uid: cred.uid(),
    })
}

/// Whether `fd` is a socket (`fstat`): what a target checks of every descriptor pushed to it.
pub(crate) fn is_socket(fd: BorrowedFd<'_>) -> Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    Ok(rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket)
}

/// Sends one message with `fds` attached (`SCM_RIGHTS`); never raises `SIGPIPE`.
pub(crate) fn send_with_fds(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<()> {
    send_flags(fd, bytes, fds, SendFlags::NOSIGNAL)
}

/// [`send_with_fds`] without waiting (`MSG_DONTWAIT`): `EAGAIN` if the receiver's queue is
/// full.
pub(crate) fn try_send_with_fds(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<()> {
    send_flags(fd, bytes, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
}

fn send_flags(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> Result<()> {
    debug_assert!(fds.len() <= MAX_FDS_PER_MESSAGE);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::NOBUFS);
    }
    net::sendmsg(fd, &[IoSlice::new(bytes)], &mut control, flags)?;
    Ok(())
}

/// One received message.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes of payload (0 with no descriptors: the peer closed).
    pub(crate) len: usize,
    /// The descriptors that arrived, each close-on-exec.
    pub(crate) fds: Vec<OwnedFd>,
    /// `MSG_CTRUNC`: some descriptors did not arrive (the receiver is out of descriptors, or
    /// more came than one message may carry). Those that did are in `fds`, to be closed.
    pub(crate) truncated: bool,
    /// `MSG_TRUNC`: the message was longer than the buffer; its tail is lost.
    pub(crate) too_long: bool,
}

/// Receives one message and up to 253 descriptors, with `MSG_CMSG_CLOEXEC`.
pub(crate) fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Received> {
    recv_flags(fd, buf, RecvFlags::CMSG_CLOEXEC)
}

fn recv_flags(fd: BorrowedFd<'_>, buf: &mut [u8], flags: RecvFlags) -> Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = net::recvmsg(fd, &mut [IoSliceMut::new(buf)], &mut control, flags)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated: msg.flags.contains(ReturnFlags::CTRUNC),
        too_long: msg.flags.contains(ReturnFlags::TRUNC),
    })
}

/// [`recv_with_fds`] without waiting (`MSG_DONTWAIT`): `None` if no message is there.
pub(crate) fn try_recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Option<Received>> {
    match recv_flags(fd, buf, RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT) {
        Ok(r) => Ok(Some(r)),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The socket's family, type and protocol as the kernel reports them (`SO_DOMAIN`, `SO_TYPE`,
/// `SO_PROTOCOL`). Fails with `ENOTSOCK` for anything that is not a socket.
pub(crate) fn socket_triple(fd: BorrowedFd<'_>) -> Result<(i32, i32, i32)> {
    let family = sockopt::socket_domain(fd)?;
    let kind = sockopt::socket_type(fd)?;
    let protocol = sockopt::socket_protocol(fd)?;
    Ok((
        i32::from(family.as_raw()),
        kind.as_raw() as i32,
        protocol.map_or(0, |p| p.as_raw().get() as i32),
    ))
}

/// A new close-on-exec descriptor of the same open file (`F_DUPFD_CLOEXEC`).
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0)
}

/// A pidfd for `pid` (`pidfd_open`); `ESRCH` if no such process exists.
pub(crate) fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(Errno::SRCH)?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty())
}

/// Whether a process `pid` exists (`kill(pid, 0)`; `EPERM` means it exists under another user).
pub(crate) fn process_exists(pid: u32) -> Result<bool> {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(false);
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) | Err(Errno::PERM) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the process behind `pidfd` has exited (its pidfd polls readable).
pub(crate) fn has_exited(pidfd: BorrowedFd<'_>) -> Result<bool> {
    exits_within(pidfd, Duration::ZERO)
}

/// Whether the process behind `pidfd` exits within `wait` (at once if it already has).
pub(crate) fn exits_within(pidfd: BorrowedFd<'_>, wait: Duration) -> Result<bool> {
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let timeout = rustix::time::Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    Ok(rustix::event::poll(&mut fds, Some(&timeout))? > 0)
}

/// Blocks until at least one of `fds` is readable (or hung up); says which are.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>]) -> Result<Vec<bool>> {
    poll_readable_within(fds, None)
}

/// As [`poll_readable`], giving up after `wait` (then none is readable), if given.
pub(crate) fn poll_readable_within(
    fds: &[BorrowedFd<'_>],
    wait: Option<Duration>,
) -> Result<Vec<bool>> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let timeout = wait.map(|w| rustix::time::Timespec {
        tv_sec: i64::try_from(w.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(w.subsec_nanos()),
    });
    loop {
        match rustix::event::poll(&mut polled, timeout.as_ref()) {
            Err(Errno::INTR) => continue,
            other => {
                other?;
                break;
            }
        }
    }
    Ok(polled.iter().map(|p| !p.revents().is_empty()).collect())
}

/// An `eventfd` used to wake the inbox thread.
pub(crate) fn waker() -> Result<OwnedFd> {
    rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
}

/// Wakes whoever polls `waker`.
pub(crate) fn wake(waker: BorrowedFd<'_>) -> Result<()> {
    rustix::io::write(waker, &1u64.to_ne_bytes())?;
    Ok(())
}

/// Makes `waker` (an [`waker`] eventfd) unreadable again; nothing happens if it was not woken.
pub(crate) fn unwake(waker: BorrowedFd<'_>) {
    let _ = rustix::io::read(waker, &mut [0u8; 8]);
}

/// Blocks until this process holds an exclusive `flock` on `file` (released when it closes).
pub(crate) fn lock_exclusive(file: &std::fs::File) -> Result<()> {
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::LockExclusive) {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// Whether `fd` is close-on-exec.
pub fn is_cloexec<Fd: AsFd>(fd: Fd) -> io::Result<bool> {
    Ok(rustix::io::fcntl_getfd(fd)?.contains(rustix::io::FdFlags::CLOEXEC))
}

/// Socket calls of the base provider, one syscall each.
pub(crate) mod socket {
    use std::net::SocketAddr;
    use std::os::fd::{BorrowedFd, OwnedFd};

    use rustix::io::{Errno, Result};
    use rustix::net::{self, AddressFamily, Protocol, SendFlags, SocketFlags, SocketType, sockopt};

    /// `socket(family, type | SOCK_CLOEXEC, protocol)`.
    pub(crate) fn open(family: i32, socket_type: i32, protocol: i32) -> Result<OwnedFd> {
        let family =
            AddressFamily::from_raw(u16::try_from(family).map_err(|_| Errno::AFNOSUPPORT)?);
        let kind = SocketType::from_raw(u32::try_from(socket_type).map_err(|_| Errno::INVAL)?);
        let protocol = u32::try_from(protocol)
            .ok()
            .and_then(std::num::NonZeroU32::new)
            .map(Protocol::from_raw);
        net::socket_with(family, kind, SocketFlags::CLOEXEC, protocol)
    }

    /// `connect(2)`.
    pub(crate) fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> Result<()> {
        net::connect(fd, addr)
    }

    /// `bind(2)`.
    pub(crate) fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> Result<()> {
        net::bind(fd, addr)
    }

    /// `listen(2)`.
    pub(crate) fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<()> {
        net::listen(fd, backlog)
    }

    /// `accept4(2)` with `SOCK_CLOEXEC`.
    pub(crate) fn accept(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
        net::accept_with(fd, SocketFlags::CLOEXEC)
    }

    /// Accepts one connection from a non-blocking listener ([`set_nonblocking`]),
    /// close-on-exec and blocking; `Ok(None)` when none is waiting. A connection that was
    /// aborted before it was accepted is skipped.
    pub(crate) fn try_accept(listener: BorrowedFd<'_>) -> Result<Option<OwnedFd>> {
        loop {
            match net::accept_with(listener, SocketFlags::CLOEXEC) {
                Ok(fd) => return Ok(Some(fd)),
                Err(Errno::AGAIN) => return Ok(None),
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes `fd` non-blocking (`O_NONBLOCK` on its open file description).
    pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
        let fl = rustix::fs::fcntl_getfl(fd)?;
        rustix::fs::fcntl_setfl(fd, fl | rustix::fs::OFlags::NONBLOCK)
    }

    /// `send(2)` with `MSG_NOSIGNAL`.
    pub(crate) fn send(fd: BorrowedFd<'_>, data: &[u8]) -> Result<usize> {
        net::send(fd, data, SendFlags::NOSIGNAL)
    }

    /// `read(2)` (a `recv` without flags).
    pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize> {
        rustix::io::read(fd, buf)
    }

    /// The option's value as an integer.
    pub(crate) fn get_opt(fd: BorrowedFd<'_>, opt: sockdup_core::sockopt::SockOpt) -> Result<i64> {
        use sockdup_core::sockopt::SockOpt::*;
        Ok(match opt {
            KeepAlive => i64::from(sockopt::socket_keepalive(fd)?),
            ReuseAddr => i64::from(sockopt::socket_reuseaddr(fd)?),
            NoDelay => i64::from(sockopt::tcp_nodelay(fd)?),
            RecvBufferSize => sockopt::socket_recv_buffer_size(fd)? as i64,
            SendBufferSize => sockopt::socket_send_buffer_size(fd)? as i64,
            // An option a newer core names and this layer does not know yet.
            _ => return Err(Errno::NOPROTOOPT),
        })
    }

    /// Sets the option from an integer.
    pub(crate) fn set_opt(
        fd: BorrowedFd<'_>,
        opt: sockdup_core::sockopt::SockOpt,
        value: i64,
    ) -> Result<()> {
        use sockdup_core::sockopt::SockOpt::*;
        let size = || usize::try_from(value).map_err(|_| Errno::INVAL);
        match opt {
            KeepAlive => sockopt::set_socket_keepalive(fd, value != 0)?,
            ReuseAddr => sockopt::set_socket_reuseaddr(fd, value != 0)?,
            NoDelay => sockopt::set_tcp_nodelay(fd, value != 0)?,
            RecvBufferSize => sockopt::set_socket_recv_buffer_size(fd, size()?)?,
            SendBufferSize => sockopt::set_socket_send_buffer_size(fd, size()?)?,
            _ => return Err(Errno::NOPROTOOPT),
        }
        Ok(())
    }
}

/// `fd` registered with the current tokio runtime's I/O driver for readiness to read (the
/// `tokio` feature: [`crate::tokio::handed_over`] waits on an eventfd this way).
///
/// # Panics
/// Outside a tokio runtime with I/O enabled.
#[cfg(feature = "tokio")]
pub(crate) fn async_readable(fd: OwnedFd) -> io::Result<::tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `register_with_interest` requires that the descriptor stay open, and not be
    // replaced, for as long as it is registered: the `AsyncFd` owns the `OwnedFd`, which
    // nothing else can close, and closes it only when the `AsyncFd` drops, after deregistering.
    #[allow(unsafe_code)]
    let registered = unsafe {
        ::tokio::io::unix::AsyncFd::register_with_interest(fd, ::tokio::io::Interest::READABLE)
    };
    registered.map_err(io::Error::from)
}
