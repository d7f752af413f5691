//! Async use with [tokio](https://tokio.rs) (the `tokio` feature, off by default).
//!
//! - [`duplicate_socket`] and [`duplicate_sockets`]: [`crate::duplicate_socket`] and
//!   [`crate::duplicate_sockets`] as futures; the wait for the target's inbox happens on tokio's
//!   blocking pool, never on a runtime thread.
//! - [`FromInfo`]: redeem a record straight into a tokio socket type
//!   (`tokio::net::TcpStream::from_info(&record)`), registered with the current runtime.
//! - Zero-downtime takeover ([`upgrade`](crate::upgrade)) from async code: [`take_over`],
//!   [`complete`] and [`abort`] off the runtime's threads, [`handed_over`] as a future, and
//!   tokio listeners of the listeners taken over ([`tcp_listener`], [`unix_listener`]).
//! - A `sockdup serve` worker in a runtime:
//!   [`Worker::incoming_async`](crate::handoff::Worker::incoming_async), the handoff protocol
//!   kept, each connection a tokio stream.
//!
//! ```no_run
//! use sockdup::tokio::FromInfo;
//!
//! # async fn run(listener: tokio::net::TcpListener, worker_pid: u32, line: &str)
//! # -> Result<(), sockdup::Error> {
//! let _guard = sockdup::startup()?;
//! // A source hands a tokio listener to a worker...
//! let record = sockdup::tokio::duplicate_socket(&listener, worker_pid).await?;
//! println!("{record}");
//!
//! // ...and the worker, inside its own runtime, takes it as a tokio listener.
//! let record: sockdup::ProtocolInfo = line.parse()?;
//! let listener = tokio::net::TcpListener::from_info(&record)?;
//! let (_stream, _peer) = listener.accept().await.expect("accept");
//! # Ok(()) }
//! ```
//!
//! # Why the blocking pool
//!
//! A duplication sends the descriptors to the target's inbox and waits for its tickets (up to the
//! target's acknowledgement timeout, 10 s by default, if the target is slow or stuck), on a
//! connection that is shared with the blocking API and kept in a pool. Rather than a second,
//! non-blocking implementation of that exchange, the futures here run the one blocking
//! implementation with [`tokio::task::spawn_blocking`]. The cost, per call (not per socket): a
//! copy of each descriptor (`F_DUPFD_CLOEXEC`, so the closure owns what it sends; closed when it
//! ends), and a hand-off to a pool thread and back, a few microseconds besides the exchange
//! itself. A runtime thread is never blocked; at most tokio's blocking-pool limit of
//! duplications wait at once.
//!
//! Dropping the future does not stop a duplication already started: it completes on the pool
//! and its records are lost; the target's copies are then closed when their time-to-live ends
//! ([`Options::ttl`](crate::Options::ttl)), as for any record nobody redeems.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use sockdup_core::catalog::{AF_INET, AF_INET6, AF_UNIX, IPPROTO_TCP, IPPROTO_UDP};
use sockdup_core::catalog::{SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM};
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::wire::ProtocolInfo;

use crate::upgrade::{Handover, Published, Takeover, Upgrade};

/// [`crate::duplicate_socket`] without blocking the runtime: duplicates `socket` for process
/// `target_pid`; when the future completes, the target holds a descriptor of the same socket.
///
/// Works with any socket (`tokio::net` types, std types, [`OwnedFd`]). The exchange with the
/// target's inbox runs on tokio's blocking pool (see [why](self#why-the-blocking-pool)), so
/// this must be awaited within a tokio runtime.
///
/// # Errors
/// As [`crate::duplicate_socket`]; [`OutOfDescriptors`](ErrorKind::OutOfDescriptors) if this
/// process cannot copy the descriptor for the pool thread.
///
/// # Panics
/// Outside a tokio runtime (as [`tokio::task::spawn_blocking`]); if the blocking call itself
/// panicked, the panic is resumed here.
#[doc(alias = "WSPDuplicateSocket")]
pub async fn duplicate_socket<S: AsFd>(socket: &S, target_pid: u32) -> Result<ProtocolInfo, Error> {
    let mut records = duplicate_sockets(std::slice::from_ref(socket), target_pid).await?;
    records.pop().ok_or_else(|| {
        Error::new(
            ErrorKind::ProtocolViolation,
            "the target's inbox answered with no ticket",
        )
    })
}

/// [`crate::duplicate_sockets`] without blocking the runtime: many sockets for one target, all
/// or nothing, one record per socket in order.
///
/// # Errors
/// As [`crate::duplicate_sockets`] and [`duplicate_socket`].
///
/// # Panics
/// As [`duplicate_socket`].
#[doc(alias = "WSPDuplicateSocket")]
pub async fn duplicate_sockets<S: AsFd>(
    sockets: &[S],
    target_pid: u32,
) -> Result<Vec<ProtocolInfo>, Error> {
    let owned = sockets
        .iter()
        .map(|s| {
            s.as_fd().try_clone_to_owned().map_err(|e| {
                Error::from_errno(e, "copying a descriptor for the duplication's pool thread")
            })
        })
        .collect::<Result<Vec<OwnedFd>, Error>>()?;
    blocking("the duplication", move || {
        crate::duplicate_sockets(&owned, target_pid)
    })
    .await
}

/// Runs a blocking sockdup call `f` on tokio's blocking pool; resumes its panic here.
async fn blocking<T, F>(what: &str, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    match ::tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::new(
            ErrorKind::Os,
            format!("the tokio runtime shut down before {what} ran; nothing was done"),
        )),
    }
}

/// [`Upgrade::take_over`] without blocking the runtime (it waits for the old process's
/// answers, up to the upgrade's timeout): when the future completes, this process holds its
/// descriptors of the listeners. Make tokio listeners of them with [`tcp_listener`] or
/// [`unix_listener`] and accept at once, then finish with [`complete`] or [`abort`].
///
/// ```no_run
/// # async fn run() -> Result<(), sockdup::Error> {
/// use sockdup::upgrade::Upgrade;
/// let _guard = sockdup::startup()?;
/// let upgrade = Upgrade::new("/run/myserver.pid");
/// let takeover = sockdup::tokio::take_over(&upgrade, &["web"]).await?;
/// let web = sockdup::tokio::tcp_listener(takeover.listener("web").expect("asked for"))?;
/// let published = sockdup::tokio::complete(takeover).await?;
/// // ... accept on `web`; when a successor takes over in turn:
/// let handover = sockdup::tokio::handed_over(&published).await?;
/// # drop((web, handover)); Ok(()) }
/// ```
///
/// # Errors
/// As [`Upgrade::take_over`].
///
/// # Panics
/// As [`duplicate_socket`].
pub async fn take_over(upgrade: &Upgrade, names: &[&str]) -> Result<Takeover, Error> {
    let upgrade = upgrade.clone();
    let names = names.iter().map(|&n| n.to_owned()).collect::<Vec<_>>();
    blocking("the takeover", move || {
        upgrade.take_over(&names.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
}

/// [`Takeover::complete`] without blocking the runtime (it waits for the old process's
/// confirmation): this process publishes the listeners, the old one stops.
///
/// # Errors
/// As [`Takeover::complete`].
///
/// # Panics
/// As [`duplicate_socket`].
pub async fn complete(takeover: Takeover) -> Result<Published, Error> {
    blocking("completing the takeover", move || takeover.complete()).await
}

/// [`Takeover::abort`] without blocking the runtime: the old process keeps serving, unchanged.
///
/// # Errors
/// As [`Takeover::abort`].
///
/// # Panics
/// As [`duplicate_socket`].
pub async fn abort(takeover: Takeover) -> Result<(), Error> {
    blocking("aborting the takeover", move || takeover.abort()).await
}

/// [`Published::wait`] as a future: completes once a successor has taken over (polling
/// [`Published::handover_fd`] through the runtime's I/O driver, no thread). If the successor
/// dies and this process takes the listeners back, it keeps waiting for the next one.
///
/// # Errors
/// An OS error if the descriptor cannot be copied or registered with the runtime.
///
/// # Panics
/// Outside a tokio runtime with I/O enabled, as [`tokio::io::unix::AsyncFd::new`].
pub async fn handed_over(published: &Published) -> Result<Handover, Error> {
    let fd = published
        .handover_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::from_errno(e, "copying the handover descriptor"))?;
    let fd = crate::sys::async_readable(fd)
        .map_err(|e| Error::from_errno(e, "registering the handover descriptor"))?;
    loop {
        if let Some(h) = published.handed_over() {
            return Ok(h);
        }
        let mut ready = fd
            .readable()
            .await
            .map_err(|e| Error::from_errno(e, "waiting for the handover"))?;
        if let Some(h) = published.handed_over() {
            return Ok(h);
        }
        // Readable but no handover: taken back after the successor died. Wait again.
        ready.clear_ready();
    }
}

/// A tokio TCP listener of `fd` (a listener of a [`Takeover`] or a [`Published`], or any
/// listening TCP socket): a copy of the descriptor, made non-blocking and registered with the
/// current runtime; `fd` itself stays open.
///
/// `O_NONBLOCK` is shared by every descriptor of the socket, in every process: an old server
/// that still accepts on its own descriptor with blocking calls gets `EAGAIN` from then on
/// (see [`FromInfo`]).
///
/// # Errors
/// [`InvalidArgument`](ErrorKind::InvalidArgument) (`WSAEINVAL`) if `fd` is not a listening
/// `AF_INET`/`AF_INET6` stream socket, or outside a tokio runtime; an OS error if it cannot be
/// copied or registered.
///
/// # Panics
/// Within a runtime built without I/O, as tokio's `from_std`.
pub fn tcp_listener(fd: BorrowedFd<'_>) -> Result<::tokio::net::TcpListener, Error> {
    let fd = listener_copy(fd, TCP, "tokio::net::TcpListener")?;
    register(
        ::tokio::net::TcpListener::from_std(fd.into()),
        "tokio::net::TcpListener",
    )
}

/// A tokio Unix listener of `fd`, as [`tcp_listener`] for `AF_UNIX` stream sockets.
///
/// # Errors
/// As [`tcp_listener`].
///
/// # Panics
/// As [`tcp_listener`].
pub fn unix_listener(fd: BorrowedFd<'_>) -> Result<::tokio::net::UnixListener, Error> {
    let fd = listener_copy(fd, UNIX, "tokio::net::UnixListener")?;
    register(
        ::tokio::net::UnixListener::from_std(fd.into()),
        "tokio::net::UnixListener",
    )
}

/// Checks that `fd` is a listening stream socket of one of `families` and a runtime is
/// current; returns a non-blocking copy.
fn listener_copy(fd: BorrowedFd<'_>, families: &[i32], name: &str) -> Result<OwnedFd, Error> {
    use rustix::net::sockopt;
    let domain = sockopt::socket_domain(fd)
        .map_err(|e| Error::from_errno(e, "reading the socket's family"))?;
    let socket_type =
        sockopt::socket_type(fd).map_err(|e| Error::from_errno(e, "reading the socket's type"))?;
    let listening = sockopt::socket_acceptconn(fd)
        .map_err(|e| Error::from_errno(e, "reading whether the socket listens"))?;
    let family = i32::from(domain.as_raw());
    let socket_type = socket_type.as_raw() as i32;
    if !(families.contains(&family) && socket_type == SOCK_STREAM && listening) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "the descriptor is a {} {} socket{}, but {name} needs a listening {} SOCK_STREAM socket",
                family_name(family),
                type_name(socket_type),
                if listening {
                    " that listens"
                } else {
                    " that does not listen"
                },
                families
                    .iter()
                    .map(|f| family_name(*f))
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
        ));
    }
    if ::tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("a {name} must be made within a tokio runtime"),
        ));
    }
    let fd = fd
        .try_clone_to_owned()
        .map_err(|e| Error::from_errno(e, "copying the listener's descriptor"))?;
    set_nonblocking(&fd)?;
    Ok(fd)
}

/// Sets `O_NONBLOCK` on `fd`'s open file description (shared with its other descriptors).
fn set_nonblocking(fd: &OwnedFd) -> Result<(), Error> {
    rustix::fs::fcntl_getfl(fd)
        .and_then(|fl| rustix::fs::fcntl_setfl(fd, fl | rustix::fs::OFlags::NONBLOCK))
        .map_err(|e| Error::from_errno(e, "making the socket non-blocking"))
}

/// A tokio socket type a record can be redeemed into ([`crate::socket_from_info`], then
/// `from_std`): `tokio::net::TcpStream::from_info(&record)`.
///
/// The record says which family and type its socket is; a type that does not fit is refused
/// (`WSAEINVAL`, [`InvalidArgument`](ErrorKind::InvalidArgument), the message naming both)
/// **before** anything is redeemed, so the record stays redeemable, into the right type or by
/// [`crate::socket_from_info`]. Whether a stream socket listens is not in the record: as with
/// std's `From<OwnedFd>`, a `TcpListener` made from a connected socket fails on `accept`, and a
/// `TcpStream` made from a listener fails on reads and writes.
///
/// The redeemed descriptor is switched to non-blocking mode (`O_NONBLOCK`), as tokio requires,
/// and registered with the current runtime's I/O driver. **`O_NONBLOCK`, like every option, is
/// a property of the socket, shared with every descriptor of it in every process**: the
/// process that duplicated the socket, if it still holds a descriptor and reads or writes it
/// expecting to block, gets `EAGAIN` (`WouldBlock`) instead from then on.
///
/// # Errors
/// As [`crate::socket_from_info`]; [`InvalidArgument`](ErrorKind::InvalidArgument) for the wrong
/// kind of socket or outside a tokio runtime (both checked first, nothing redeemed); the OS
/// error if the descriptor cannot be made non-blocking or registered (the record is spent
/// then, and the descriptor closed).
///
/// # Panics
/// Within a runtime built without I/O (`enable_io`), as tokio's `from_std`.
pub trait FromInfo: Sized {
    /// Redeems `info` (made for this process by [`crate::duplicate_socket`] or
    /// [`duplicate_socket`]) into this type. See the [trait](FromInfo).
    ///
    /// # Errors
    /// See the [trait](FromInfo#errors).
    #[doc(alias = "WSPSocket")]
    fn from_info(info: &ProtocolInfo) -> Result<Self, Error>;
}

/// What a tokio type accepts: its name, the families, the type, the protocols (0 is always
/// accepted: the default protocol of the family and type).
struct Fits {
    name: &'static str,
    families: &'static [i32],
    socket_type: i32,
    protocol: i32,
}

const TCP: &[i32] = &[AF_INET, AF_INET6];
const UNIX: &[i32] = &[AF_UNIX];

/// The name of a family, for messages.
fn family_name(f: i32) -> String {
    match f {
        AF_INET => "AF_INET".into(),
        AF_INET6 => "AF_INET6".into(),
        AF_UNIX => "AF_UNIX".into(),
        other => format!("address family {other}"),
    }
}

/// The name of a socket type, for messages.
fn type_name(t: i32) -> String {
    match t {
        SOCK_STREAM => "SOCK_STREAM".into(),
        SOCK_DGRAM => "SOCK_DGRAM".into(),
        SOCK_SEQPACKET => "SOCK_SEQPACKET".into(),
        other => format!("socket type {other}"),
    }
}

impl Fits {
    /// `Ok` if the record's socket fits and a runtime is current; otherwise the error saying
    /// what the record holds and what the type needs. Redeems nothing.
    fn check(&self, info: &ProtocolInfo) -> Result<(), Error> {
        let fits = self.families.contains(&info.address_family)
            && info.socket_type == self.socket_type
            && (info.protocol == 0 || info.protocol == self.protocol);
        if !fits {
            let wanted = self
                .families
                .iter()
                .map(|f| family_name(*f))
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the record holds a {} {} socket (protocol {}), but {} needs {wanted} {}: \
                     redeem it into the type that fits; the record was not redeemed",
                    family_name(info.address_family),
                    type_name(info.socket_type),
                    info.protocol,
                    self.name,
                    type_name(self.socket_type),
                ),
            ));
        }
        if ::tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{}::from_info must be called within a tokio runtime (it registers the socket \
                     with the runtime's I/O driver); the record was not redeemed",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// Checks, redeems, and makes the descriptor non-blocking.
    fn redeem(&self, info: &ProtocolInfo) -> Result<OwnedFd, Error> {
        self.check(info)?;
        let fd = crate::socket_from_info(info)?;
        set_nonblocking(&fd)?;
        Ok(fd)
    }
}

/// Registers a std socket with the current runtime.
fn register<T>(r: std::io::Result<T>, name: &str) -> Result<T, Error> {
    r.map_err(|e| Error::from_errno(e, &format!("registering a {name} with the tokio runtime")))
}

macro_rules! from_info {
    ($tokio:ty, $std:ty, $families:expr, $type:expr, $proto:expr) => {
        impl FromInfo for $tokio {
            fn from_info(info: &ProtocolInfo) -> Result<Self, Error> {
                let fits = Fits {
                    name: stringify!($tokio),
                    families: $families,
                    socket_type: $type,
                    protocol: $proto,
                };
                let fd = fits.redeem(info)?;
                register(<$tokio>::from_std(<$std>::from(fd)), fits.name)
            }
        }
    };
}

from_info!(
    ::tokio::net::TcpStream,
    std::net::TcpStream,
    TCP,
    SOCK_STREAM,
    IPPROTO_TCP
);
from_info!(
    ::tokio::net::TcpListener,
    std::net::TcpListener,
    TCP,
    SOCK_STREAM,
    IPPROTO_TCP
);
from_info!(
    ::tokio::net::UdpSocket,
    std::net::UdpSocket,
    TCP,
    SOCK_DGRAM,
    IPPROTO_UDP
);
from_info!(
    ::tokio::net::UnixStream,
    std::os::unix::net::UnixStream,
    UNIX,
    SOCK_STREAM,
    0
);
from_info!(
    ::tokio::net::UnixListener,
    std::os::unix::net::UnixListener,
    UNIX,
    SOCK_STREAM,
    0
);
from_info!(
    ::tokio::net::UnixDatagram,
    std::os::unix::net::UnixDatagram,
    UNIX,
    SOCK_DGRAM,
    0
);

#[cfg(test)]
mod tests {
    use super::*;

    fn record(family: i32, socket_type: i32, protocol: i32) -> ProtocolInfo {
        ProtocolInfo {
            address_family: family,
            socket_type,
            protocol,
            ..ProtocolInfo::default()
        }
    }

    const TCP_STREAM: Fits = Fits {
        name: "tokio::net::TcpStream",
        families: TCP,
        socket_type: SOCK_STREAM,
        protocol: IPPROTO_TCP,
    };

    #[test]
    fn a_wrong_kind_is_refused_naming_both() {
        let e = TCP_STREAM
            .check(&record(AF_INET6, SOCK_DGRAM, IPPROTO_UDP))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let m = e.to_string();
        assert!(m.contains("AF_INET6 SOCK_DGRAM"), "{m}");
        assert!(m.contains("tokio::net::TcpStream"), "{m}");
        assert!(m.contains("AF_INET or AF_INET6 SOCK_STREAM"), "{m}");
        for wrong in [
            record(AF_UNIX, SOCK_STREAM, 0),
            record(AF_INET, SOCK_STREAM, 262), // MPTCP
            record(AF_INET, SOCK_SEQPACKET, 0),
        ] {
            assert!(TCP_STREAM.check(&wrong).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn outside_a_runtime_a_fitting_record_is_refused_too() {
        let e = TCP_STREAM
            .check(&record(AF_INET, SOCK_STREAM, IPPROTO_TCP))
            .unwrap_err();
        assert!(e.to_string().contains("within a tokio runtime"), "{e}");
    }
}
