//! The plumbing every layer shares: one [`Layered`] provider around the next one, with the
//! kind's [`Hooks`] called around each call.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use sockdup_core::catalog::{Layer, ProviderCall};
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::wire::ProtocolInfo;

use super::{Call, Detail, Hooks, Outcome, kind_of};
use crate::spi::{Event, EventSink, Handle, NetworkEvents, Provider, SockOpt, Upcall};

/// One layer of one chain: the hooks of its kind, around the next provider.
#[derive(Debug)]
pub(crate) struct Layered {
    spec: Layer,
    /// The base entry at the bottom of the chain: what the base provider must be handed.
    base: ProtocolInfo,
    next: Arc<dyn Provider>,
    next_is_base: bool,
    upcall: OnceLock<Arc<Upcall>>,
    hooks: Box<dyn Hooks>,
}

impl Layered {
    /// Layer `spec` of chain entry `chain_id`, over `next` (the base provider when
    /// `next_is_base`, whose own entry is `base`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidCatalog`] for a kind no module implements;
    /// [`ErrorKind::InvalidLayerSetting`] for settings the kind does not take.
    pub(crate) fn new(
        spec: Layer,
        chain_id: u32,
        base: ProtocolInfo,
        next: Arc<dyn Provider>,
        next_is_base: bool,
    ) -> Result<Self, Error> {
        let hooks = (kind_of(&spec)?.build)(&spec, chain_id)?;
        Ok(Self {
            spec,
            base,
            next,
            next_is_base,
            upcall: OnceLock::new(),
            hooks,
        })
    }

    fn upcall(&self) -> Result<&Arc<Upcall>, Error> {
        self.upcall
            .get()
            .ok_or_else(|| Error::new(ErrorKind::NotStarted, "the layer was not started"))
    }

    /// The record to hand down: the same one to a layer; the base entry, with the provider
    /// fields of the one given, to the base provider.
    fn down<'a>(&'a self, info: &'a ProtocolInfo) -> Cow<'a, ProtocolInfo> {
        if !self.next_is_base {
            return Cow::Borrowed(info);
        }
        let mut base = self.base.clone();
        keep_provider_fields(&mut base, info);
        Cow::Owned(base)
    }

    /// The lower provider's handle for this layer's handle `s`.
    fn lower(&self, s: Handle) -> Result<Handle, Error> {
        if self.spec.ifs {
            Ok(s)
        } else {
            Ok(Handle(self.upcall()?.query_socket_handle_context(s)?))
        }
    }

    /// This layer's handle for the lower provider's handle `lower`.
    fn wrap(&self, lower: Handle) -> Result<Handle, Error> {
        if self.spec.ifs {
            Ok(lower)
        } else {
            Ok(self
                .upcall()?
                .create_socket_handle(self.spec.id, lower.raw()))
        }
    }

    /// Runs one call: the hooks' check, the call, the hooks' accounting.
    fn call<T>(
        &self,
        call: Call<'_>,
        f: impl FnOnce() -> Result<T, Error>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Result<T, Error> {
        let result = self.hooks.before(&call).and_then(|()| f());
        let o = match &result {
            Ok(v) => outcome(v),
            Err(_) => Outcome::Failed,
        };
        self.hooks.after(&call, o);
        result
    }

    /// A call on socket `s`, with nothing more to say.
    fn on(&self, name: ProviderCall, s: Handle) -> Call<'static> {
        Call {
            name,
            socket: Some(s),
            info: None,
            detail: Detail::None,
        }
    }
}

/// A call that hands the layer record `info`, on no socket.
fn with(name: ProviderCall, info: &ProtocolInfo) -> Call<'_> {
    Call {
        name,
        socket: None,
        info: Some(info),
        detail: Detail::None,
    }
}

/// Copies the provider's own fields (the ticket in `dwProviderReserved`, and the reserved
/// service flags the base provider fills) from `from` into `to`.
pub(crate) fn keep_provider_fields(to: &mut ProtocolInfo, from: &ProtocolInfo) {
    to.provider_reserved = from.provider_reserved;
    to.service_flags2 = from.service_flags2;
    to.service_flags3 = from.service_flags3;
    to.service_flags4 = from.service_flags4;
}

fn done<T>(_: &T) -> Outcome {
    Outcome::Done
}

fn opened(h: &Handle) -> Outcome {
    Outcome::Opened(*h)
}

impl Provider for Layered {
    fn startup(&self, upcall: &Arc<Upcall>, info: &ProtocolInfo) -> Result<(), Error> {
        let _ = self.upcall.set(upcall.clone());
        self.call(
            with(ProviderCall::Startup, info),
            || self.next.startup(upcall, &self.down(info)),
            done,
        )
    }

    fn cleanup(&self) -> Result<(), Error> {
        let call = Call {
            name: ProviderCall::Cleanup,
            socket: None,
            info: None,
            detail: Detail::None,
        };
        self.call(call, || self.next.cleanup(), done)
    }

    fn socket(
        &self,
        family: i32,
        socket_type: i32,
        protocol: i32,
        info: &ProtocolInfo,
    ) -> Result<Handle, Error> {
        self.call(
            with(ProviderCall::Socket, info),
            || {
                let lower = self
                    .next
                    .socket(family, socket_type, protocol, &self.down(info))?;
                self.wrap(lower)
            },
            opened,
        )
    }

    fn socket_from_info(&self, info: &ProtocolInfo) -> Result<Handle, Error> {
        self.call(
            with(ProviderCall::SocketFromInfo, info),
            || {
                let lower = self.next.socket_from_info(&self.down(info))?;
                self.wrap(lower)
            },
            opened,
        )
    }

    fn connect(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error> {
        let call = Call {
            detail: Detail::Connect(addr),
            ..self.on(ProviderCall::Connect, s)
        };
        self.call(call, || self.next.connect(self.lower(s)?, addr), done)
    }

    fn bind(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error> {
        self.call(
            self.on(ProviderCall::Bind, s),
            || self.next.bind(self.lower(s)?, addr),
            done,
        )
    }

    fn listen(&self, s: Handle, backlog: i32) -> Result<(), Error> {
        self.call(
            self.on(ProviderCall::Listen, s),
            || self.next.listen(self.lower(s)?, backlog),
            done,
        )
    }

    fn accept(&self, s: Handle) -> Result<Handle, Error> {
        self.call(
            self.on(ProviderCall::Accept, s),
            || self.wrap(self.next.accept(self.lower(s)?)?),
            opened,
        )
    }

    fn send(&self, s: Handle, data: &[u8]) -> Result<usize, Error> {
        self.call(
            self.on(ProviderCall::Send, s),
            || self.next.send(self.lower(s)?, data),
            |n| Outcome::Sent(*n),
        )
    }

    fn recv(&self, s: Handle, buf: &mut [u8]) -> Result<usize, Error> {
        self.call(
            self.on(ProviderCall::Recv, s),
            || self.next.recv(self.lower(s)?, buf),
            |n| Outcome::Received(*n),
        )
    }

    fn close_socket(&self, s: Handle) -> Result<(), Error> {
        // A close releases the socket even when this layer's check refuses it (a fault layer
        // failing `close`), as `close(2)` releases a descriptor whatever it reports: the
        // caller gave the socket up (`Socket::close` and `Drop` cannot try again), so a refusal
        // that kept it would leak it. The refusal is still what the caller hears.
        let call = self.on(ProviderCall::Close, s);
        let refused = self.hooks.before(&call);
        let closed = self.lower(s).and_then(|lower| {
            let closed = self.next.close_socket(lower);
            if !self.spec.ifs {
                self.upcall()?.close_socket_handle(s)?;
            }
            closed
        });
        let result = refused.and(closed);
        let outcome = if result.is_ok() {
            Outcome::Done
        } else {
            Outcome::Failed
        };
        self.hooks.after(&call, outcome);
        result
    }

    fn duplicate_socket(
        &self,
        s: Handle,
        target_pid: u32,
        info: &ProtocolInfo,
    ) -> Result<ProtocolInfo, Error> {
        let call = Call {
            info: Some(info),
            detail: Detail::Duplicate(target_pid),
            ..self.on(ProviderCall::Duplicate, s)
        };
        self.call(
            call,
            || {
                let below =
                    self.next
                        .duplicate_socket(self.lower(s)?, target_pid, &self.down(info))?;
                // On the way up: the record this layer was given, with the provider's fields.
                // A layer below already returned exactly that.
                if !self.next_is_base {
                    return Ok(below);
                }
                let mut up = info.clone();
                keep_provider_fields(&mut up, &below);
                Ok(up)
            },
            done,
        )
    }

    fn get_sock_opt(&self, s: Handle, opt: SockOpt) -> Result<i64, Error> {
        self.call(
            self.on(ProviderCall::GetSockOpt, s),
            || self.next.get_sock_opt(self.lower(s)?, opt),
            done,
        )
    }

    fn set_sock_opt(&self, s: Handle, opt: SockOpt, value: i64) -> Result<(), Error> {
        self.call(
            self.on(ProviderCall::SetSockOpt, s),
            || self.next.set_sock_opt(self.lower(s)?, opt, value),
            done,
        )
    }

    fn event_select(&self, s: Handle, events: u32, sink: &EventSink) -> Result<(), Error> {
        self.call(
            self.on(ProviderCall::EventSelect, s),
            || self.next.event_select(self.lower(s)?, events, sink),
            done,
        )
    }

    fn enum_network_events(
        &self,
        s: Handle,
        event: Option<&Event>,
    ) -> Result<NetworkEvents, Error> {
        self.call(
            self.on(ProviderCall::EnumNetworkEvents, s),
            || self.next.enum_network_events(self.lower(s)?, event),
            done,
        )
    }

    fn address_to_string(&self, addr: &SocketAddr, info: &ProtocolInfo) -> Result<String, Error> {
        self.call(
            with(ProviderCall::AddressToString, info),
            || self.next.address_to_string(addr, &self.down(info)),
            done,
        )
    }

    fn string_to_address(&self, text: &str, info: &ProtocolInfo) -> Result<SocketAddr, Error> {
        self.call(
            with(ProviderCall::StringToAddress, info),
            || self.next.string_to_address(text, &self.down(info)),
            done,
        )
    }
}
