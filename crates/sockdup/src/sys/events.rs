//! The system calls of network-event selection: the socket's owner slot (`F_SETOWN`), a
//! whole-socket record lock, the socket's identity (`SO_COOKIE`), its state, `epoll`, and the
//! per-process unix socket that carries cross-process cancellations.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll;
use rustix::event::{PollFd, PollFlags};
use rustix::io::{Errno, Result};
use rustix::net::sockopt;

use super::InboxAddress;

/// `EPOLLONESHOT`: an event disarms the descriptor until `epoll_ctl(MOD)` arms it again.
pub(crate) const ONESHOT: u32 = 1 << 30;
/// `EPOLLIN` (= `POLLIN`).
pub(crate) const IN: u32 = 0x001;
/// `EPOLLPRI` (= `POLLPRI`).
pub(crate) const PRI: u32 = 0x002;
/// `EPOLLOUT` (= `POLLOUT`).
pub(crate) const OUT: u32 = 0x004;
/// `EPOLLERR` (= `POLLERR`).
pub(crate) const ERR: u32 = 0x008;
/// `EPOLLHUP` (= `POLLHUP`).
pub(crate) const HUP: u32 = 0x010;
/// `EPOLLRDHUP` (= `POLLRDHUP`).
pub(crate) const RDHUP: u32 = 0x2000;

/// Makes the calling thread `SCHED_BATCH`: same share of the CPU as any thread, but waking up
/// does not preempt the thread running on its CPU (the kernel skips wakeup preemption for
/// non-`SCHED_NORMAL` tasks); it runs on an idle CPU at once, or when that thread blocks or its
/// slice ends.
pub(crate) fn defer_wakeups() -> Result<()> {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the `sched_param` passed by reference, which lives for
    // the call; pid 0 is the calling thread. Neither rustix nor nix wraps it.
    #[allow(unsafe_code)]
    let r = unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_BATCH, &param) };
    if r != 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    Ok(())
}

/// The pid in the socket's owner slot (`F_GETOWN`), shared by every descriptor of the socket
/// in every process (it belongs to the open file description); 0 if none.
pub(crate) fn owner(fd: BorrowedFd<'_>) -> Result<u32> {
    // SAFETY: F_GETOWN takes no argument and reads nothing from this process's memory; `fd`
    // is a live descriptor borrowed for the call. Neither rustix nor nix wraps F_GETOWN.
    #[allow(unsafe_code)]
    let r = unsafe { nix::libc::fcntl(fd.as_raw_fd(), nix::libc::F_GETOWN) };
    if r == -1 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    // A negative answer is a process group, which sockdup never sets: no registration.
    Ok(u32::try_from(r).unwrap_or(0))
}

/// Writes `pid` (0 clears) into the socket's owner slot (`F_SETOWN`). The owner also receives
/// `SIGURG` when urgent data arrives (ignored unless a handler is installed) and `SIGIO` if
/// the socket has `O_ASYNC` set.
pub(crate) fn set_owner(fd: BorrowedFd<'_>, pid: u32) -> Result<()> {
    let pid = nix::libc::c_int::try_from(pid).map_err(|_| Errno::INVAL)?;
    // SAFETY: F_SETOWN takes an int by value and touches no memory of this process; `fd` is a
    // live descriptor borrowed for the call. Neither rustix nor nix wraps F_SETOWN.
    #[allow(unsafe_code)]
    let r = unsafe { nix::libc::fcntl(fd.as_raw_fd(), nix::libc::F_SETOWN, pid) };
    if r < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    Ok(())
}

/// Takes this process's exclusive record lock on the socket (`F_SETLKW` on the whole file),
/// waiting for another process's. Record locks belong to a process and an inode, so two
/// processes holding descriptors of one socket exclude each other.
pub(crate) fn lock(fd: BorrowedFd<'_>) -> Result<()> {
    loop {
        match rustix::fs::fcntl_lock(fd, rustix::fs::FlockOperation::LockExclusive) {
            Err(Errno::INTR) => {}
            other => return other,
        }
    }
}

/// Releases [`lock`].
pub(crate) fn unlock(fd: BorrowedFd<'_>) -> Result<()> {
    rustix::fs::fcntl_lock(fd, rustix::fs::FlockOperation::Unlock)
}

/// The socket's `SO_COOKIE`: a 64-bit id, unique while the system runs, the same through
/// every descriptor of the socket in every process.
pub(crate) fn cookie(fd: BorrowedFd<'_>) -> Result<u64> {
    sockopt::socket_cookie(fd)
}

/// Takes the socket's pending error (`SO_ERROR`, which clears it): 0 if none.
pub(crate) fn take_error(fd: BorrowedFd<'_>) -> i32 {
    match sockopt::socket_error(fd) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) | Err(e) => e.raw_os_error(),
    }
}

/// What kind of socket `fd` is, for the rules of network events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Not a stream socket: datagrams (no connection, no close).
    Datagram,
    /// A listening stream socket.
    Listening,
    /// A connected stream socket.
    Connected,
    /// A stream socket whose connect is in progress.
    Connecting,
    /// A stream socket neither connected nor listening (new, or closed).
    Idle,
}

/// The state of socket `fd`, read from the kernel.
pub(crate) fn shape(fd: BorrowedFd<'_>) -> Result<Shape> {
    let kind = sockopt::socket_type(fd)?;
    if kind != rustix::net::SocketType::STREAM && kind != rustix::net::SocketType::SEQPACKET {
        return Ok(Shape::Datagram);
    }
    if sockopt::socket_acceptconn(fd)? {
        return Ok(Shape::Listening);
    }
    if rustix::net::getpeername(fd).is_ok_and(|a| a.is_some()) {
        return Ok(Shape::Connected);
    }
    // SYN_SENT polls as nothing at all; an unconnected or closed socket polls as HUP.
    Ok(if poll_now(fd) & (HUP | ERR | OUT) == 0 {
        Shape::Connecting
    } else {
        Shape::Idle
    })
}

/// The socket's readiness now (`poll` with no wait): `IN`, `OUT`, `PRI`, `ERR`, `HUP`, `RDHUP`.
pub(crate) fn poll_now(fd: BorrowedFd<'_>) -> u32 {
    let mut p = [PollFd::new(
        &fd,
        PollFlags::IN | PollFlags::OUT | PollFlags::PRI | PollFlags::RDHUP,
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut p, Some(&zero)) {
        Ok(_) => u32::from(p[0].revents().bits()),
        Err(_) => 0,
    }
}

/// Bytes waiting to be read (`FIONREAD`).
pub(crate) fn readable_bytes(fd: BorrowedFd<'_>) -> u64 {
    rustix::io::ioctl_fionread(fd).unwrap_or(0)
}

/// Waits until `fd` is readable, for `timeout` at most (`None`: no limit); says whether it is.
pub(crate) fn wait_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> Result<Vec<bool>> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let ts = left.map(timespec);
        match rustix::event::poll(&mut polled, ts.as_ref()) {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(polled.iter().map(|p| !p.revents().is_empty()).collect()),
        }
    }
}

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// A new `epoll` instance, close-on-exec.
pub(crate) fn epoll_new() -> Result<OwnedFd> {
    epoll::create(epoll::CreateFlags::CLOEXEC)
}

/// Adds `fd` to `ep` with `flags` (level-triggered), tagged `token`.
pub(crate) fn epoll_add(
    ep: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    token: u64,
    flags: u32,
) -> Result<()> {
    epoll::add(
        ep,
        fd,
        epoll::EventData::new_u64(token),
        epoll::EventFlags::from_bits_retain(flags),
    )
}

/// Changes `fd`'s flags in `ep`.
pub(crate) fn epoll_modify(
    ep: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    token: u64,
    flags: u32,
) -> Result<()> {
    epoll::modify(
        ep,
        fd,
        epoll::EventData::new_u64(token),
        epoll::EventFlags::from_bits_retain(flags),
    )
}

/// Removes `fd` from `ep`.
pub(crate) fn epoll_delete(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<()> {
    epoll::delete(ep, fd)
}

/// Waits for events on `ep` (no limit); `(token, flags)` pairs.
pub(crate) fn epoll_wait(ep: BorrowedFd<'_>, out: &mut Vec<(u64, u32)>) -> Result<()> {
    epoll_collect(ep, out, None)
}

/// What the `epoll` set `ep` holds ready now, without waiting (`epoll_wait` with timeout 0).
pub(crate) fn epoll_ready(ep: BorrowedFd<'_>, out: &mut Vec<(u64, u32)>) -> Result<()> {
    epoll_collect(ep, out, Some(&timespec(Duration::ZERO)))
}

fn epoll_collect(
    ep: BorrowedFd<'_>,
    out: &mut Vec<(u64, u32)>,
    timeout: Option<&rustix::time::Timespec>,
) -> Result<()> {
    let mut buf = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 64];
    out.clear();
    let (got, _) = loop {
        match epoll::wait(ep, &mut buf, timeout) {
            Err(Errno::INTR) => continue,
            other => break other?,
        }
    };
    out.extend(got.iter().map(|e| {
        let (data, flags) = (e.data, e.flags);
        (data.u64(), flags.bits())
    }));
    Ok(())
}

/// Where process `pid` listens for cancellations of its registrations.
pub(crate) fn events_address(pid: u32) -> InboxAddress {
    InboxAddress::Abstract(format!("sockdup/v1/events/{pid}"))
}

/// This process's listening socket for cancellations (`SOCK_SEQPACKET`, non-blocking).
pub(crate) fn listen_events(pid: u32) -> Result<OwnedFd> {
    super::listen_inbox(&events_address(pid))
}

/// A connection to process `pid`'s cancellation socket; replies that take longer than
/// `timeout` fail with `EAGAIN`.
pub(crate) fn connect_events(pid: u32, timeout: Duration) -> Result<OwnedFd> {
    super::connect_inbox(&events_address(pid), timeout)
}
