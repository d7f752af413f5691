//! The dispatcher (`ws2_32`'s role): loads the catalog, builds each chain's providers on first
//! use, and routes calls by catalog entry; [`Socket`] is what applications hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use sockdup_core::catalog::{self, Catalog, SOCK_STREAM};
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::flags::XP1_IFS_HANDLES;
use sockdup_core::wire::ProtocolInfo;

use super::layers::{Layered, check_catalog, keep_provider_fields};
use super::library::LIBRARY_KIND;
use super::{BaseProvider, Event, EventSink, Handle, NetworkEvents, Provider, SockOpt, Upcall};
use crate::catalog_file;
use crate::startup::Runtime;
use crate::sync::lock;
use crate::transfer;

/// One run's dispatcher: the catalog it loaded, the upcall table, and the providers built so far.
#[derive(Debug)]
pub(crate) struct Ws2 {
    catalog: Catalog,
    upcall: Arc<Upcall>,
    base: Arc<BaseProvider>,
    /// Each entry's top provider and the entry itself, built on first use.
    stacks: Mutex<HashMap<u32, Stack>>,
    /// For chains with provider libraries over built-in layers: the providers below the
    /// libraries, built when the lowest library starts its next provider.
    below: Mutex<HashMap<u32, Arc<dyn Provider>>>,
}

type Stack = (Arc<dyn Provider>, Arc<ProtocolInfo>);

impl Ws2 {
    pub(crate) fn new(catalog: Catalog) -> Result<Self, Error> {
        let upcall = Arc::new(Upcall::default());
        let base = Arc::new(BaseProvider::default());
        let first = sockdup_core::catalog::base_entries().remove(0);
        base.startup(&upcall, &first)?;
        Ok(Self {
            catalog,
            upcall,
            base,
            stacks: Mutex::new(HashMap::new()),
            below: Mutex::new(HashMap::new()),
        })
    }

    /// Built-in `layers` (top first) of chain `id` over `bottom` (the base provider when
    /// `bottom_is_base`), the top one returned.
    fn build(
        &self,
        id: u32,
        layers: &[&sockdup_core::catalog::Layer],
        base_info: &ProtocolInfo,
        bottom: Arc<dyn Provider>,
        bottom_is_base: bool,
    ) -> Result<Arc<dyn Provider>, Error> {
        let (mut next, mut next_is_base) = (bottom, bottom_is_base);
        for layer in layers.iter().rev() {
            next = Arc::new(Layered::new(
                (*layer).clone(),
                id,
                base_info.clone(),
                next,
                next_is_base,
            )?);
            next_is_base = false;
        }
        Ok(next)
    }

    /// The entry `id` of the catalog.
    fn entry(&self, id: u32) -> Result<Arc<ProtocolInfo>, Error> {
        Ok(Arc::new(self.catalog.entry(id).ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownCatalogEntry,
                format!("catalog entry {id} vanished"),
            )
        })?))
    }

    /// The providers of chain `id` below its provider libraries (its built-in layers under the
    /// lowest library, over the base provider), started with the chain's entry: what the
    /// lowest library gets when it starts its next provider, a built-in layer.
    fn below_libraries(&self, id: u32) -> Result<Arc<dyn Provider>, Error> {
        if let Some(p) = lock(&self.below).get(&id) {
            return Ok(p.clone());
        }
        let (layers, base_info) = self.catalog.resolve(id)?;
        let last = layers
            .iter()
            .rposition(|l| l.kind == LIBRARY_KIND)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::PropagationRule,
                    format!(
                        "catalog entry {id} has no provider library: only a provider library starts \
                         the providers below it with the chain's entry"
                    ),
                )
            })?;
        let rest = &layers[last + 1..];
        let top = self.build(id, rest, &base_info, self.base.clone(), true)?;
        if !rest.is_empty() {
            top.startup(&self.upcall, &*self.entry(id)?)?;
        }
        lock(&self.below).insert(id, top.clone());
        Ok(top)
    }

    /// The provider that serves catalog entry `id` (the top of its chain), and the entry.
    fn provider(&self, id: u32) -> Result<Stack, Error> {
        if let Some(stack) = lock(&self.stacks).get(&id) {
            return Ok(stack.clone());
        }
        let (layers, base_info) = self.catalog.resolve(id)?;
        let entry = self.entry(id)?;
        // A provider library loads every provider below it itself (`WSPStartup` of the next,
        // with the propagation rule; built-in layers below the libraries through
        // libsockdup's `WSPStartup`, [`below_libraries`]): the dispatcher builds the built-in
        // layers above it.
        super::library::check_chain_for_libraries(id, &layers)?;
        let (built_in, library) = match layers.iter().position(|l| l.kind == LIBRARY_KIND) {
            Some(i) => (&layers[..i], Some(layers[i])),
            None => (&layers[..], None),
        };
        let (bottom, bottom_is_base): (Arc<dyn Provider>, bool) = match library {
            Some(lib) => (super::library::load(lib)?, false),
            None => (self.base.clone(), true),
        };
        let next = self.build(id, built_in, &base_info, bottom, bottom_is_base)?;
        if !layers.is_empty() {
            next.startup(&self.upcall, &entry)?;
        }
        lock(&self.stacks).insert(id, (next.clone(), entry.clone()));
        Ok((next, entry))
    }
}

impl Ws2 {
    /// The record the base provider would receive for chain record `info`: the chain's base
    /// entry, with `info`'s provider fields (ticket, target pid, run nonce).
    fn base_form(&self, info: &ProtocolInfo) -> Result<ProtocolInfo, Error> {
        let (_, mut base) = self.catalog.resolve(info.catalog_entry_id)?;
        keep_provider_fields(&mut base, info);
        Ok(base)
    }
}

/// This run's dispatcher, kept with the run ([`Runtime::extension`]): built, loading the
/// catalog (checked against the registry of layer kinds), on first use.
fn ws2_of(rt: &Runtime) -> Result<Arc<Ws2>, Error> {
    rt.extension(|| Ws2::new(catalog_file::load_catalog(check_catalog)?))
}

/// The dispatcher of this process's current run.
fn ws2() -> Result<(Arc<Runtime>, Arc<Ws2>), Error> {
    let rt = Runtime::current()?;
    let ws2 = ws2_of(&rt)?;
    Ok((rt, ws2))
}

/// The base provider of this process's current run (MSAFD's role), for code that hands it to
/// provider libraries as a `WSPPROC_TABLE` (`sockdup-capi`'s `WSPStartup`, exported by libsockdup).
///
/// # Errors
/// `WSANOTINITIALISED` without `startup()`; `WSAEINVAL` for an invalid catalog file.
pub fn base_provider() -> Result<Arc<dyn Provider>, Error> {
    let (_, ws2) = ws2()?;
    let base: Arc<dyn Provider> = ws2.base.clone();
    Ok(base)
}

/// The providers of chain `chain_id` below its provider libraries (its built-in layers under
/// the lowest library, over the base provider), started with the chain's entry: what
/// libsockdup's `WSPStartup` serves a provider library whose next entry is a built-in layer.
/// Calls on them take the chain's entry, as between layers (the propagation rule).
///
/// # Errors
/// As [`base_provider`]; `WSAEINVAL` for an entry that is no chain with a provider library.
pub fn below_libraries(chain_id: u32) -> Result<Arc<dyn Provider>, Error> {
    let (_, ws2) = ws2()?;
    ws2.below_libraries(chain_id)
}

/// The upcall table (`WPU*`) of this process's current run: the one every provider of the
/// process registers its handles with.
///
/// # Errors
/// As [`base_provider`].
pub fn process_upcall() -> Result<Arc<Upcall>, Error> {
    let (_, ws2) = ws2()?;
    Ok(ws2.upcall.clone())
}

/// The catalog this process's current run loaded (what `WSCEnumProtocols` lists).
///
/// # Errors
/// As [`base_provider`].
#[doc(alias = "WSCEnumProtocols")]
pub fn process_catalog() -> Result<Catalog, Error> {
    let (_, ws2) = ws2()?;
    Ok(ws2.catalog.clone())
}

/// A socket created or redeemed through the catalog: every call goes through the provider
/// chain of its catalog entry. Dropping it closes this descriptor (`WSPCloseSocket`).
#[derive(Debug)]
pub struct Socket {
    handle: Handle,
    entry: Arc<ProtocolInfo>,
    provider: Arc<dyn Provider>,
    ws2: Arc<Ws2>,
    closed: bool,
}

impl Socket {
    /// `WSASocketW` without a protocol info: a new socket from the first visible catalog entry
    /// that matches (a chain, when one is installed over the base entry). Protocol 0 matches
    /// entries flagged `PFL_MATCHES_PROTOCOL_ZERO`.
    ///
    /// # Errors
    /// `WSANOTINITIALISED` without `startup()`; `WSAEINVAL` for an invalid catalog file;
    /// `WSAEAFNOSUPPORT` if no entry matches; errors of the providers.
    #[doc(alias = "WSASocketW", alias = "WSPSocket")]
    pub fn new(family: i32, socket_type: i32, protocol: i32) -> Result<Self, Error> {
        let (_, ws2) = ws2()?;
        let entry = ws2.catalog.entry_for_socket(family, socket_type, protocol).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("no catalog entry serves family {family}, type {socket_type}, protocol {protocol} (see `sockdup catalog`)"),
            )
        })?;
        Self::open(ws2, entry.catalog_entry_id, |p, e| {
            p.socket(family, socket_type, protocol, e)
        })
    }

    /// A socket of catalog entry `id`, whose top provider `make` asks for a handle.
    fn open(
        ws2: Arc<Ws2>,
        id: u32,
        make: impl FnOnce(&dyn Provider, &ProtocolInfo) -> Result<Handle, Error>,
    ) -> Result<Self, Error> {
        let stack = ws2.provider(id)?;
        Self::on(ws2, stack, make)
    }

    /// A socket of the chain `stack` (its top provider and entry), whose top provider `make`
    /// asks for a handle.
    fn on(
        ws2: Arc<Ws2>,
        (provider, entry): Stack,
        make: impl FnOnce(&dyn Provider, &ProtocolInfo) -> Result<Handle, Error>,
    ) -> Result<Self, Error> {
        let handle = make(provider.as_ref(), &entry)?;
        Ok(Self {
            handle,
            entry,
            provider,
            ws2,
            closed: false,
        })
    }

    /// `WSASocketW` with a catalog entry (not a duplicate's record): a new socket of that
    /// entry's family, type and protocol, through that entry's chain, whatever comes first in
    /// the catalog.
    ///
    /// # Errors
    /// `WSAEINVAL` if this process's catalog has no such entry; errors of the providers.
    #[doc(alias = "WSASocketW", alias = "WSPSocket")]
    pub fn for_entry(entry: &ProtocolInfo) -> Result<Self, Error> {
        let (_, ws2) = ws2()?;
        Self::open(ws2, entry.catalog_entry_id, |p, e| {
            p.socket(e.address_family, e.socket_type, e.protocol, e)
        })
    }

    /// `WSASocketW` with a duplicate's record: routes by its `dwCatalogEntryId` through the
    /// same chain as in the source, so each layer makes its state for the new descriptor.
    ///
    /// # Errors
    /// `WSAEINVAL` if this process's catalog has no such entry, or the record cannot be
    /// redeemed (see [`crate::socket_from_info`]).
    #[doc(alias = "WSASocketW", alias = "WSPSocket")]
    pub fn from_info(info: &ProtocolInfo) -> Result<Self, Error> {
        let (_, ws2) = ws2()?;
        Self::open(ws2, info.catalog_entry_id, |p, _| p.socket_from_info(info))
    }

    /// The catalog entry this socket belongs to.
    pub fn catalog_entry(&self) -> &ProtocolInfo {
        &self.entry
    }

    /// The handle the top provider gave out (a descriptor number for IFS chains).
    pub fn handle(&self) -> Handle {
        self.handle
    }

    /// `WSAConnect`.
    ///
    /// # Errors
    /// The providers' errors (a policy layer's refusal is `WSAEACCES`).
    #[doc(alias = "WSAConnect", alias = "WSPConnect")]
    pub fn connect(&self, addr: &SocketAddr) -> Result<(), Error> {
        self.provider.connect(self.handle, addr)
    }

    /// `bind`.
    ///
    /// # Errors
    /// The providers' errors.
    #[doc(alias = "WSPBind")]
    pub fn bind(&self, addr: &SocketAddr) -> Result<(), Error> {
        self.provider.bind(self.handle, addr)
    }

    /// `listen`.
    ///
    /// # Errors
    /// The providers' errors.
    #[doc(alias = "WSPListen")]
    pub fn listen(&self, backlog: i32) -> Result<(), Error> {
        self.provider.listen(self.handle, backlog)
    }

    /// `WSAAccept`: the accepted connection, through the same chain. It inherits the
    /// listener's event registration when this process made it (the same events, signalled to
    /// the same event or channel; through the chain, as an `event_select` of the new socket).
    ///
    /// # Errors
    /// The providers' errors.
    #[doc(alias = "WSAAccept", alias = "WSPAccept")]
    pub fn accept(&self) -> Result<Self, Error> {
        let handle = self.provider.accept(self.handle)?;
        let accepted = Self {
            handle,
            entry: self.entry.clone(),
            provider: self.provider.clone(),
            ws2: self.ws2.clone(),
            closed: false,
        };
        let inherited = self
            .base_handle()
            .ok()
            .and_then(|b| self.ws2.base.registration(b));
        if let Some((events, sink)) = inherited {
            let sink = match sink {
                EventSink::Channel { sender, .. } => EventSink::Channel {
                    handle: accepted.handle,
                    sender,
                },
                other => other,
            };
            // Each layer sees the call. An accepted socket is connected already: FD_CONNECT
            // (recorded at once on a connected socket) has no meaning for it.
            accepted
                .provider
                .event_select(accepted.handle, events & !super::FD_CONNECT, &sink)?;
        }
        Ok(accepted)
    }

    /// The base provider's handle under this socket's chain (its descriptor).
    fn base_handle(&self) -> Result<Handle, Error> {
        let mut h = self.handle;
        while !h.is_ifs() {
            h = Handle(self.ws2.upcall.query_socket_handle_context(h)?);
        }
        Ok(h)
    }

    /// `WSASend`.
    ///
    /// # Errors
    /// The providers' errors.
    #[doc(alias = "WSASend", alias = "WSPSend")]
    pub fn send(&self, data: &[u8]) -> Result<usize, Error> {
        self.provider.send(self.handle, data)
    }

    /// `WSARecv`.
    ///
    /// # Errors
    /// The providers' errors.
    #[doc(alias = "WSARecv", alias = "WSPRecv")]
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
        self.provider.recv(self.handle, buf)
    }

    /// `WSADuplicateSocketW` through the chain: the record carries the chain's catalog entry,
    /// with the base provider's ticket in `dwProviderReserved`.
    ///
    /// # Errors
    /// As [`crate::duplicate_socket`], and a policy layer's refusal (`WSAEACCES`).
    #[doc(alias = "WSADuplicateSocketW", alias = "WSPDuplicateSocket")]
    pub fn duplicate(&self, target_pid: u32) -> Result<ProtocolInfo, Error> {
        self.provider
            .duplicate_socket(self.handle, target_pid, &self.entry)
    }

    /// `getsockopt`.
    ///
    /// # Errors
    /// The providers' errors.
    #[doc(alias = "WSPGetSockOpt")]
    pub fn get_opt(&self, opt: SockOpt) -> Result<i64, Error> {
        self.provider.get_sock_opt(self.handle, opt)
    }

    /// `setsockopt`.
    ///
    /// # Errors
    /// The providers' errors.
    #[doc(alias = "WSPSetSockOpt")]
    pub fn set_opt(&self, opt: SockOpt, value: i64) -> Result<(), Error> {
        self.provider.set_sock_opt(self.handle, opt, value)
    }

    /// `WSAEventSelect`: records the network events of `events` (`FD_READ`, `FD_WRITE`,
    /// `FD_OOB`, `FD_ACCEPT`, `FD_CONNECT`, `FD_CLOSE`; 0 cancels) for
    /// [`enum_network_events`](Self::enum_network_events) and sets `event` for each. Like
    /// Windows, it makes the socket non-blocking (every descriptor of it, in every process),
    /// clears the record, and cancels the socket's earlier registration, whichever descriptor
    /// made it in whatever process, before it returns. Events already pending are recorded
    /// before it returns. See the [module docs](super) for the rules.
    ///
    /// # Errors
    /// `WSAEINVAL` for bits that are no network event; `WSAENOTSOCK` for a closed socket;
    /// `WSAENETDOWN` (`peer-timed-out`) if the process holding the registration does not
    /// acknowledge its cancellation within 10 s; the providers' errors.
    #[doc(alias = "WSAEventSelect", alias = "WSPEventSelect")]
    pub fn event_select(&self, event: &Event, events: u32) -> Result<(), Error> {
        self.provider
            .event_select(self.handle, events, &EventSink::Event(event.clone()))
    }

    /// `WSAAsyncSelect`: as [`event_select`](Self::event_select), but each recorded event is
    /// sent through `sink` as a [`Notification`](super::Notification) naming this socket's
    /// handle (the channel stands in for the window and its message). 0 cancels.
    ///
    /// # Errors
    /// As [`event_select`](Self::event_select).
    #[doc(alias = "WSAAsyncSelect", alias = "WSPAsyncSelect")]
    pub fn async_select(
        &self,
        events: u32,
        sink: std::sync::mpsc::Sender<super::Notification>,
    ) -> Result<(), Error> {
        self.provider.event_select(
            self.handle,
            events,
            &EventSink::Channel {
                handle: self.handle,
                sender: sink,
            },
        )
    }

    /// `WSAEnumNetworkEvents`: the network events recorded since the registration or the last
    /// enumeration, with their errors, and clears them; resets `event` if given. A socket
    /// whose registration was cancelled (by a registration elsewhere) reports nothing.
    ///
    /// # Errors
    /// `WSAENOTSOCK` for a closed socket; the providers' errors.
    #[doc(alias = "WSAEnumNetworkEvents", alias = "WSPEnumNetworkEvents")]
    pub fn enum_network_events(&self, event: Option<&Event>) -> Result<NetworkEvents, Error> {
        self.provider.enum_network_events(self.handle, event)
    }

    /// Wraps a descriptor this process already has (any socket of a family, type and protocol
    /// the base provider serves) as a `Socket` of the base provider, so that event selection
    /// and the rest work on it. The descriptor is the socket's from now on.
    ///
    /// # Errors
    /// `WSANOTINITIALISED` without `startup()`; `WSAENOTSOCK` if `fd` is not a socket;
    /// `WSAEAFNOSUPPORT` if no base entry serves its family, type and protocol.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        let (_, ws2) = ws2()?;
        let (family, kind, protocol) = crate::sys::socket_triple(fd.as_fd()).map_err(|e| {
            Error::from_errno(e, "reading the descriptor's family, type and protocol")
        })?;
        let entry = catalog::base_entries()
            .into_iter()
            .find(|e| e.address_family == family && e.socket_type == kind && e.protocol == protocol)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "no base entry serves family {family}, type {kind}, protocol {protocol}"
                    ),
                )
            })?;
        let handle = ws2.upcall.modify_ifs_handle(entry.catalog_entry_id, fd);
        let provider: Arc<dyn Provider> = ws2.base.clone();
        Ok(Self {
            handle,
            entry: Arc::new(entry),
            provider,
            ws2,
            closed: false,
        })
    }

    /// `closesocket`, reporting errors (dropping closes too, silently).
    ///
    /// # Errors
    /// The providers' errors.
    #[doc(alias = "closesocket", alias = "WSPCloseSocket")]
    pub fn close(mut self) -> Result<(), Error> {
        self.closed = true;
        self.provider.close_socket(self.handle)
    }

    /// This socket's descriptor, for an IFS handle. The socket's layers forget it (as after
    /// a close); the descriptor is the caller's.
    ///
    /// # Errors
    /// `WSAEINVAL` for a non-IFS handle, which has no descriptor of its own.
    pub fn into_fd(mut self) -> Result<OwnedFd, Error> {
        if !self.handle.is_ifs() {
            return Err(Error::new(
                ErrorKind::NoDescriptor,
                format!(
                    "the socket of catalog entry {} has a non-IFS handle (a layer hands out its own): use it through sockdup::spi::Socket",
                    self.entry.catalog_entry_id
                ),
            ));
        }
        self.ws2.base.forget(self.handle);
        let fd = self.ws2.upcall.take_fd(self.handle)?;
        self.closed = true;
        Ok(fd)
    }
}

/// Redeems `infos` through their chains (base records from the table), keeping only the
/// descriptors: all or nothing. Every chain is resolved, and refused if it has a non-IFS layer
/// (its sockets have no descriptor of their own), and every ticket checked, before anything
/// is redeemed; a layer that fails part way gets what was redeemed put back.
pub(crate) fn redeem_fds(rt: &Runtime, infos: &[ProtocolInfo]) -> Result<Vec<OwnedFd>, Error> {
    let ws2 = ws2_of(rt)?;
    let batch = infos.len() > 1;
    let at = |i: usize, e: Error| {
        if batch {
            e.context(format_args!("record {i} of the batch"))
        } else {
            e
        }
    };
    let mut stacks = Vec::with_capacity(infos.len());
    let mut base_forms = Vec::with_capacity(infos.len());
    for (i, info) in infos.iter().enumerate() {
        if catalog::is_base_id(info.catalog_entry_id) {
            stacks.push(None);
            base_forms.push(info.clone());
            continue;
        }
        let (provider, entry) = ws2.provider(info.catalog_entry_id).map_err(|e| at(i, e))?;
        if entry.service_flags1 & XP1_IFS_HANDLES == 0 {
            return Err(at(
                i,
                Error::new(
                    ErrorKind::NoDescriptor,
                    format!(
                        "the record names catalog entry {}, a chain with a non-IFS layer, whose sockets have no \
                         descriptor of their own: redeem it with sockdup::spi::Socket::from_info",
                        info.catalog_entry_id
                    ),
                ),
            ));
        }
        base_forms.push(ws2.base_form(info).map_err(|e| at(i, e))?);
        stacks.push(Some((provider, entry)));
    }
    if batch {
        transfer::check_all(rt, &base_forms)?;
    }
    let mut out: Vec<OwnedFd> = Vec::with_capacity(infos.len());
    for (i, (info, stack)) in infos.iter().zip(stacks).enumerate() {
        let redeemed = match stack {
            None => transfer::claim(rt, info),
            Some(stack) => Socket::on(ws2.clone(), stack, |p, _| p.socket_from_info(info))
                .and_then(Socket::into_fd),
        };
        match redeemed {
            Ok(fd) => out.push(fd),
            Err(e) => {
                transfer::restore(rt, base_forms.into_iter().zip(out).collect());
                return Err(at(i, e));
            }
        }
    }
    Ok(out)
}

impl Drop for Socket {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.provider.close_socket(self.handle);
        }
    }
}

fn entry_for(family: i32, info: Option<&ProtocolInfo>, ws2: &Ws2) -> Result<u32, Error> {
    match info {
        Some(info) => Ok(info.catalog_entry_id),
        None => ws2
            .catalog
            .entry_for_socket(family, SOCK_STREAM, 0)
            .map(|e| e.catalog_entry_id)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!("no catalog entry serves address family {family}"),
                )
            }),
    }
}

/// `WSAAddressToStringW`: through the chain of `info`'s entry, or of the first stream entry of
/// the address's family.
///
/// # Errors
/// The providers' errors.
#[doc(alias = "WSAAddressToStringW", alias = "WSPAddressToString")]
pub fn address_to_string(addr: &SocketAddr, info: Option<&ProtocolInfo>) -> Result<String, Error> {
    let (_, ws2) = ws2()?;
    let family = if addr.is_ipv4() {
        sockdup_core::catalog::AF_INET
    } else {
        sockdup_core::catalog::AF_INET6
    };
    let (provider, entry) = ws2.provider(entry_for(family, info, &ws2)?)?;
    provider.address_to_string(addr, &entry)
}

/// `WSAStringToAddressW`: through the chain of `info`'s entry, or of the first stream entry of
/// `family`.
///
/// # Errors
/// `WSAEINVAL` if `text` is not an address; the providers' errors.
#[doc(alias = "WSAStringToAddressW", alias = "WSPStringToAddress")]
pub fn string_to_address(
    text: &str,
    family: i32,
    info: Option<&ProtocolInfo>,
) -> Result<SocketAddr, Error> {
    let (_, ws2) = ws2()?;
    let (provider, entry) = ws2.provider(entry_for(family, info, &ws2)?)?;
    provider.string_to_address(text, &entry)
}
