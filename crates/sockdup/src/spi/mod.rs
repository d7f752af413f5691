//! The service-provider interface: Winsock's `WSPPROC_TABLE` as the [`Provider`] trait, its
//! upcall table (`WPU*`) as [`Upcall`], the Linux base provider, the built-in layered
//! providers, and the dispatcher that routes sockets through protocol chains ([`Socket`]).
//!
//! | Winsock | here |
//! |---|---|
//! | `ws2_32.dll`: catalog, routing by `dwCatalogEntryId` | [`Socket`] and the dispatcher |
//! | `WSPPROC_TABLE` | [`Provider`] |
//! | `WSPUPCALLTABLE` | [`Upcall`] |
//! | MSAFD (base provider, IFS) | the Linux base provider (real descriptors) |
//! | layered service providers | the `trace`, `policy` and `fault` layers ([`layers`]) |
//!
//! # Network events
//!
//! [`Socket::event_select`] (`WSAEventSelect`), [`Socket::enum_network_events`]
//! (`WSAEnumNetworkEvents`) and [`Socket::async_select`] (`WSAAsyncSelect`, with a channel of
//! [`Notification`]s for the window) keep Windows' rules:
//!
//! - an event already pending is recorded before the call returns (data waiting: `FD_READ`; a
//!   connected socket: `FD_WRITE`, and `FD_CONNECT` first if asked for);
//! - `FD_READ` and `FD_OOB` are recorded once and re-enabled by the next receive through
//!   [`Socket::recv`]; `FD_WRITE` comes on connect/accept and then only after a
//!   [`Socket::send`] failed with would-block and space is available again; `FD_ACCEPT` is
//!   re-enabled by [`Socket::accept`]; re-enabled events are level-triggered;
//! - `FD_CONNECT` and `FD_CLOSE` come once; `FD_CLOSE` after all received data has been read
//!   (error 0), or with `WSAECONNRESET` (10054) for a reset; a failed connect records
//!   `FD_CONNECT` with its error (`WSAECONNREFUSED`, 10061) in
//!   `errors[`[`FD_CONNECT_BIT`]`]`;
//! - an accepted socket inherits its listener's registration (made in this process), without
//!   `FD_CONNECT`;
//! - the call makes the socket non-blocking (all its descriptors share that) and clears the
//!   record.
//!
//! I/O on the raw descriptor, or on another process's descriptor, is invisible to the rules:
//! it does not re-enable anything (a `read(2)` that empties the socket leaves `FD_READ`
//! disabled until the next [`Socket::recv`]). A registration's pending socket error is taken
//! (`SO_ERROR`) to report `FD_CONNECT`/`FD_CLOSE` errors.
//!
//! **One registration per socket, across processes**: a registration in any process, on any
//! descriptor of the socket (duplicated, redeemed, through chains, from [`Socket::from_fd`]),
//! cancels the earlier one wherever it is, and the cancellation has taken effect when the call
//! returns. Every descriptor of the socket shares one open file description, whose owner slot
//! (`F_SETOWN`) holds the registering pid; a new registrant takes the socket's record lock,
//! reads the slot, asks that process (through its cancellation socket, the abstract unix name
//! `@sockdup/v1/events/PID`, credentials checked) to drop its registration and waits for the
//! acknowledgement (10 s at most: `peer-timed-out`); an exited process needs no answer. The
//! record of events belongs to the registration: after another process's registration, this
//! one's [`Socket::enum_network_events`] returns nothing (Windows would return the other's
//! record). Owning the slot also means this process receives `SIGURG` for urgent data (its
//! default action is to ignore it) and `SIGIO` if `O_ASYNC` is set on the socket. Closing the
//! registering descriptor ends the registration; an exiting process takes its registrations
//! with it. Cost: per registering process one watcher thread (`epoll`), one eventfd and one
//! listening unix socket; per registration one descriptor (the watcher's copy).
//!
//! The propagation rule: a layer passes the record it was given, unmodified, to a next layer,
//! and the base provider's own catalog entry to the base provider (with `dwProviderReserved`
//! and the reserved service flags of the record it was given); on the way back up it restores
//! the chain's entry and keeps those provider fields. The base provider refuses any record that
//! is not one of its own entries, so a layer that breaks the rule fails loudly.

mod base;
mod events;
pub mod layers;
pub mod library;
mod watch;
mod ws2;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::wire::ProtocolInfo;

pub(crate) use base::BaseProvider;
pub use events::{
    Event, EventSink, NetworkEvents, Notification, WSA_MAXIMUM_WAIT_EVENTS, wait_for_events,
};
pub(crate) use ws2::redeem_fds;
pub use ws2::{Socket, address_to_string, string_to_address};
pub use ws2::{base_provider, below_libraries, process_catalog, process_upcall};

use crate::sync::lock;

/// A socket descriptor as the dispatcher hands it out: a real file descriptor for IFS
/// providers, or an entry of the [`Upcall`] handle table for non-IFS ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(u64);

/// Non-IFS handles start here, above any file descriptor.
const NON_IFS_BASE: u64 = 1 << 32;

impl Handle {
    /// The handle's number (a file descriptor for IFS handles).
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The handle with number `raw`, as a provider library hands it out (a `SOCKET`).
    pub fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// Whether this handle is a real file descriptor.
    pub fn is_ifs(self) -> bool {
        self.0 < NON_IFS_BASE
    }
}

pub use sockdup_core::sockopt::{
    FD_ACCEPT, FD_ACCEPT_BIT, FD_ALL_EVENTS, FD_CLOSE, FD_CLOSE_BIT, FD_CONNECT, FD_CONNECT_BIT,
    FD_MAX_EVENTS, FD_OOB, FD_OOB_BIT, FD_READ, FD_READ_BIT, FD_WRITE, FD_WRITE_BIT, SockOpt,
};

/// `WSPPROC_TABLE`: what a provider implements. `info` arguments follow the propagation rule
/// (see the [module docs](self)).
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// `WSPStartup`: the provider is loaded for catalog entry `info`, with the upcall table.
    #[doc(alias = "WSPStartup")]
    fn startup(&self, upcall: &Arc<Upcall>, info: &ProtocolInfo) -> Result<(), Error>;
    /// `WSPCleanup`.
    #[doc(alias = "WSPCleanup")]
    fn cleanup(&self) -> Result<(), Error>;
    /// `WSPSocket` without a duplicate record: a new socket.
    #[doc(alias = "WSPSocket")]
    fn socket(
        &self,
        family: i32,
        socket_type: i32,
        protocol: i32,
        info: &ProtocolInfo,
    ) -> Result<Handle, Error>;
    /// `WSPSocket` with a duplicate's record: this process's descriptor of the shared socket.
    #[doc(alias = "WSPSocket")]
    fn socket_from_info(&self, info: &ProtocolInfo) -> Result<Handle, Error>;
    /// `WSPConnect`.
    #[doc(alias = "WSPConnect")]
    fn connect(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error>;
    /// `WSPBind`.
    #[doc(alias = "WSPBind")]
    fn bind(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error>;
    /// `WSPListen`.
    #[doc(alias = "WSPListen")]
    fn listen(&self, s: Handle, backlog: i32) -> Result<(), Error>;
    /// `WSPAccept`.
    #[doc(alias = "WSPAccept")]
    fn accept(&self, s: Handle) -> Result<Handle, Error>;
    /// `WSPSend`.
    #[doc(alias = "WSPSend")]
    fn send(&self, s: Handle, data: &[u8]) -> Result<usize, Error>;
    /// `WSPRecv`.
    #[doc(alias = "WSPRecv")]
    fn recv(&self, s: Handle, buf: &mut [u8]) -> Result<usize, Error>;
    /// `WSPCloseSocket`: this descriptor goes; the socket lives while others remain.
    #[doc(alias = "WSPCloseSocket")]
    fn close_socket(&self, s: Handle) -> Result<(), Error>;
    /// `WSPDuplicateSocket`.
    #[doc(alias = "WSPDuplicateSocket")]
    fn duplicate_socket(
        &self,
        s: Handle,
        target_pid: u32,
        info: &ProtocolInfo,
    ) -> Result<ProtocolInfo, Error>;
    /// `WSPGetSockOpt`.
    #[doc(alias = "WSPGetSockOpt")]
    fn get_sock_opt(&self, s: Handle, opt: SockOpt) -> Result<i64, Error>;
    /// `WSPSetSockOpt`.
    #[doc(alias = "WSPSetSockOpt")]
    fn set_sock_opt(&self, s: Handle, opt: SockOpt, value: i64) -> Result<(), Error>;
    /// `WSPEventSelect` (an [`EventSink::Event`]) and `WSPAsyncSelect` (an
    /// [`EventSink::Channel`]): the network events (`FD_*`) of interest, signalled through
    /// `sink`; replaces any earlier registration for the socket, whichever descriptor made it,
    /// in whatever process. 0 cancels.
    #[doc(alias = "WSPEventSelect", alias = "WSPAsyncSelect")]
    fn event_select(&self, s: Handle, events: u32, sink: &EventSink) -> Result<(), Error>;
    /// `WSPEnumNetworkEvents`: takes (and clears) the network events recorded for the socket,
    /// and resets `event` if given.
    #[doc(alias = "WSPEnumNetworkEvents")]
    fn enum_network_events(&self, s: Handle, event: Option<&Event>)
    -> Result<NetworkEvents, Error>;
    /// `WSPAddressToString`.
    #[doc(alias = "WSPAddressToString")]
    fn address_to_string(&self, addr: &SocketAddr, info: &ProtocolInfo) -> Result<String, Error>;
    /// `WSPStringToAddress`.
    #[doc(alias = "WSPStringToAddress")]
    fn string_to_address(&self, text: &str, info: &ProtocolInfo) -> Result<SocketAddr, Error>;
}

#[derive(Debug)]
enum Entry {
    /// A real descriptor, owned by the table, registered to a catalog entry.
    Ifs { catalog_id: u32, fd: Arc<OwnedFd> },
    /// A non-IFS provider's handle with its context value.
    NonIfs { catalog_id: u32, context: u64 },
}

/// `WSPUPCALLTABLE`: the services the dispatcher offers providers. It owns every descriptor and
/// handle it hands out until they are closed.
#[derive(Debug, Default)]
pub struct Upcall {
    table: Mutex<UpcallTable>,
}

#[derive(Debug, Default)]
struct UpcallTable {
    entries: HashMap<u64, Entry>,
    next_non_ifs: u64,
}

fn not_a_handle(h: Handle) -> Error {
    Error::new(
        ErrorKind::NotASocket,
        format!(
            "handle {} is not a socket handle of this process (closed already?)",
            h.0
        ),
    )
}

impl Upcall {
    /// `WPUModifyIFSHandle`: takes ownership of a real descriptor for catalog entry
    /// `catalog_id`; the handle is the descriptor's number.
    #[doc(alias = "WPUModifyIFSHandle")]
    pub fn modify_ifs_handle(&self, catalog_id: u32, fd: OwnedFd) -> Handle {
        use std::os::fd::AsRawFd;
        let h = fd.as_raw_fd() as u64;
        lock(&self.table).entries.insert(
            h,
            Entry::Ifs {
                catalog_id,
                fd: Arc::new(fd),
            },
        );
        Handle(h)
    }

    /// `WPUCreateSocketHandle`: a new non-IFS handle for catalog entry `catalog_id`, carrying
    /// `context` (typically the lower provider's handle).
    #[doc(alias = "WPUCreateSocketHandle")]
    pub fn create_socket_handle(&self, catalog_id: u32, context: u64) -> Handle {
        let mut t = lock(&self.table);
        let h = NON_IFS_BASE + t.next_non_ifs;
        t.next_non_ifs += 1;
        t.entries.insert(
            h,
            Entry::NonIfs {
                catalog_id,
                context,
            },
        );
        Handle(h)
    }

    /// `WPUQuerySocketHandleContext`: the context of a non-IFS handle.
    ///
    /// # Errors
    /// `WSAENOTSOCK` for a handle not made by [`create_socket_handle`](Self::create_socket_handle).
    #[doc(alias = "WPUQuerySocketHandleContext")]
    pub fn query_socket_handle_context(&self, h: Handle) -> Result<u64, Error> {
        match lock(&self.table).entries.get(&h.0) {
            Some(Entry::NonIfs { context, .. }) => Ok(*context),
            _ => Err(not_a_handle(h)),
        }
    }

    /// `WPUModifyIFSHandle` for a handle the table holds already (a layer passing the
    /// descriptor of the provider below through): registers it to catalog entry `catalog_id`.
    ///
    /// # Errors
    /// `WSAENOTSOCK` for a handle the table does not hold.
    #[doc(alias = "WPUModifyIFSHandle")]
    pub fn set_owner(&self, h: Handle, catalog_id: u32) -> Result<(), Error> {
        match lock(&self.table).entries.get_mut(&h.0) {
            Some(Entry::Ifs { catalog_id: c, .. } | Entry::NonIfs { catalog_id: c, .. }) => {
                *c = catalog_id;
                Ok(())
            }
            None => Err(not_a_handle(h)),
        }
    }

    /// The catalog entry a handle is registered to.
    pub fn owner(&self, h: Handle) -> Option<u32> {
        lock(&self.table).entries.get(&h.0).map(|e| match e {
            Entry::Ifs { catalog_id, .. } | Entry::NonIfs { catalog_id, .. } => *catalog_id,
        })
    }

    /// `WPUCloseSocketHandle`: forgets a handle; an IFS handle's descriptor closes.
    ///
    /// # Errors
    /// `WSAENOTSOCK` for an unknown handle.
    #[doc(alias = "WPUCloseSocketHandle")]
    pub fn close_socket_handle(&self, h: Handle) -> Result<(), Error> {
        let entry = lock(&self.table)
            .entries
            .remove(&h.0)
            .ok_or_else(|| not_a_handle(h))?;
        drop(entry);
        Ok(())
    }

    /// Takes an IFS handle's descriptor out of the table.
    pub(crate) fn take_fd(&self, h: Handle) -> Result<OwnedFd, Error> {
        let mut t = lock(&self.table);
        match t.entries.remove(&h.0) {
            Some(Entry::Ifs { fd, .. }) => Arc::try_unwrap(fd)
                .or_else(|shared| crate::sys::dup_cloexec(shared.as_fd()))
                .map_err(|e| Error::from_errno(e, "taking a socket handle's descriptor")),
            Some(other) => {
                t.entries.insert(h.0, other);
                Err(Error::new(
                    ErrorKind::NoDescriptor,
                    format!(
                        "handle {} belongs to a non-IFS layer and has no descriptor of its own: use it through sockdup::spi::Socket",
                        h.0
                    ),
                ))
            }
            None => Err(not_a_handle(h)),
        }
    }

    /// Runs `f` with an IFS handle's descriptor, borrowed; the table's lock is not held
    /// during the call.
    pub(crate) fn with_fd<T>(
        &self,
        h: Handle,
        f: impl FnOnce(BorrowedFd<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let fd = match lock(&self.table).entries.get(&h.0) {
            Some(Entry::Ifs { fd, .. }) => fd.clone(),
            _ => return Err(not_a_handle(h)),
        };
        f(fd.as_fd())
    }
}
