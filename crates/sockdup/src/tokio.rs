//! Async use with [tokio](https://tokio.rs) (the `tokio` feature, off by default).
//!
//! - [`duplicate_socket`] and [`duplicate_sockets`]: [`crate::duplicate_socket`] and
//!   [`crate::duplicate_sockets`] as futures; the wait for the target's inbox happens on tokio's
//!   blocking pool, never on a runtime thread.
//! - [`FromInfo`]: redeem a record straight into a tokio socket type
//!   (`tokio::net::TcpStream::from_info(&record)`), registered with the current runtime.
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

use std::os::fd::{AsFd, OwnedFd};

use sockdup_core::catalog::{AF_INET, AF_INET6, AF_UNIX, IPPROTO_TCP, IPPROTO_UDP};
use sockdup_core::catalog::{SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM};
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::wire::ProtocolInfo;

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
    match ::tokio::task::spawn_blocking(move || crate::duplicate_sockets(&owned, target_pid)).await
    {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::new(
            ErrorKind::Os,
            "the tokio runtime shut down before the duplication ran; nothing was sent",
        )),
    }
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
        let nonblocking = rustix::fs::fcntl_getfl(&fd)
            .and_then(|fl| rustix::fs::fcntl_setfl(&fd, fl | rustix::fs::OFlags::NONBLOCK));
        nonblocking.map_err(|e| Error::from_errno(e, "making the redeemed socket non-blocking"))?;
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
