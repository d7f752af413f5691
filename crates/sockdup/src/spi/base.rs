//! The Linux base provider (MSAFD's role): real sockets, IFS handles (their descriptors), and
//! duplication through the inbox transport of the crate root.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, OnceLock};

use sockdup_core::catalog::{self, BASE_PROVIDER_ID};
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::sockopt::{FD_ACCEPT, FD_OOB, FD_READ, FD_WRITE};
use sockdup_core::wire::ProtocolInfo;

use super::watch::Watcher;
use super::{Event, EventSink, Handle, NetworkEvents, Provider, SockOpt, Upcall};
use crate::startup::Runtime;
use crate::sys::socket as os;
use crate::transfer;

/// The base provider. One instance serves every base entry.
#[derive(Debug, Default)]
pub(crate) struct BaseProvider {
    upcall: OnceLock<Arc<Upcall>>,
    /// The network-event registrations and their thread, started by the first registration.
    watcher: OnceLock<Watcher>,
    /// Held while the watcher starts.
    starting: std::sync::Mutex<()>,
}

/// The base provider only ever receives its own entries; anything else means a layer above
/// broke the propagation rule.
fn own_entry(info: &ProtocolInfo, call: &str) -> Result<(), Error> {
    if info.provider_id == BASE_PROVIDER_ID && catalog::is_base_id(info.catalog_entry_id) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::PropagationRule,
        format!(
            "the base provider's {call} received catalog entry {} of provider {}, not one of its own entries: the layer \
         above must substitute the base provider's entry (the propagation rule)",
            info.catalog_entry_id, info.provider_id
        ),
    ))
}

impl BaseProvider {
    fn upcall(&self) -> Result<&Arc<Upcall>, Error> {
        self.upcall
            .get()
            .ok_or_else(|| Error::new(ErrorKind::NotStarted, "the base provider was not started"))
    }

    /// The watcher, started if need be.
    fn watcher(&self) -> Result<&Watcher, Error> {
        if let Some(w) = self.watcher.get() {
            return Ok(w);
        }
        let _one = crate::sync::lock(&self.starting);
        if self.watcher.get().is_none() {
            let _ = self.watcher.set(Watcher::start()?);
        }
        self.watcher
            .get()
            .ok_or_else(|| Error::new(ErrorKind::NotStarted, "the events watcher did not start"))
    }

    /// The registration of listener `s` in this process, for a socket it accepted.
    pub(crate) fn registration(&self, s: Handle) -> Option<(u32, EventSink)> {
        let w = self.watcher.get()?;
        self.upcall()
            .ok()?
            .with_fd(s, |fd| Ok(w.registration(s, fd)))
            .ok()
            .flatten()
    }

    /// Base handle `s` leaves the provider without a close (`Socket::into_fd`): its
    /// registration ends.
    pub(crate) fn forget(&self, s: Handle) {
        if let Some(w) = self.watcher.get() {
            w.forget(s);
        }
    }

    fn on<T>(
        &self,
        s: Handle,
        doing: &str,
        f: impl FnOnce(BorrowedFd<'_>) -> rustix::io::Result<T>,
    ) -> Result<T, Error> {
        self.upcall()?
            .with_fd(s, |fd| f(fd).map_err(|e| Error::from_errno(e, doing)))
    }
}

impl Provider for BaseProvider {
    fn startup(&self, upcall: &Arc<Upcall>, info: &ProtocolInfo) -> Result<(), Error> {
        own_entry(info, "WSPStartup")?;
        let _ = self.upcall.set(upcall.clone());
        Ok(())
    }

    fn cleanup(&self) -> Result<(), Error> {
        Ok(())
    }

    fn socket(
        &self,
        family: i32,
        socket_type: i32,
        protocol: i32,
        info: &ProtocolInfo,
    ) -> Result<Handle, Error> {
        own_entry(info, "WSPSocket")?;
        let (f, t, p) = (
            if family == 0 {
                info.address_family
            } else {
                family
            },
            if socket_type == 0 {
                info.socket_type
            } else {
                socket_type
            },
            if protocol == 0 {
                info.protocol
            } else {
                protocol
            },
        );
        if (f, t, p) != (info.address_family, info.socket_type, info.protocol) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "catalog entry {} does not serve family {f}, type {t}, protocol {p}",
                    info.catalog_entry_id
                ),
            ));
        }
        let fd = os::open(f, t, p).map_err(|e| Error::from_errno(e, "creating a socket"))?;
        Ok(self.upcall()?.modify_ifs_handle(info.catalog_entry_id, fd))
    }

    fn socket_from_info(&self, info: &ProtocolInfo) -> Result<Handle, Error> {
        own_entry(info, "WSPSocket")?;
        let fd = transfer::claim(&*Runtime::current()?, info)?;
        Ok(self.upcall()?.modify_ifs_handle(info.catalog_entry_id, fd))
    }

    fn connect(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error> {
        self.upcall()?.with_fd(s, |fd| {
            let r = os::connect(fd, addr);
            if let Some(w) = self.watcher.get() {
                w.connected(s, fd, r);
            }
            match r {
                Ok(()) => Ok(()),
                Err(e @ (rustix::io::Errno::INPROGRESS | rustix::io::Errno::ALREADY)) => {
                    Err(Error::new(
                        ErrorKind::WouldBlock,
                        format!(
                            "connecting a non-blocking socket: in progress ({e}); FD_CONNECT says when it ends"
                        ),
                    )
                    .with_source(std::io::Error::from(e)))
                }
                Err(e) => Err(Error::from_errno(e, "connecting")),
            }
        })
    }

    fn bind(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error> {
        self.on(s, "binding", |fd| os::bind(fd, addr))
    }

    fn listen(&self, s: Handle, backlog: i32) -> Result<(), Error> {
        self.on(s, "listening", |fd| {
            os::listen(fd, backlog)?;
            if let Some(w) = self.watcher.get() {
                w.listening(s, fd);
            }
            Ok(())
        })
    }

    fn accept(&self, s: Handle) -> Result<Handle, Error> {
        let upcall = self.upcall()?;
        let owner = upcall.owner(s).unwrap_or(0);
        let fd = self.on(s, "accepting", |fd| {
            let r = os::accept(fd);
            if let Some(w) = self.watcher.get() {
                w.rearm(s, fd, FD_ACCEPT);
            }
            r
        })?;
        Ok(upcall.modify_ifs_handle(owner, fd))
    }

    fn send(&self, s: Handle, data: &[u8]) -> Result<usize, Error> {
        self.on(s, "sending", |fd| {
            let r = os::send(fd, data);
            if r == Err(rustix::io::Errno::AGAIN) {
                if let Some(w) = self.watcher.get() {
                    w.rearm(s, fd, FD_WRITE);
                }
            }
            r
        })
    }

    fn recv(&self, s: Handle, buf: &mut [u8]) -> Result<usize, Error> {
        self.on(s, "receiving", |fd| {
            let r = os::recv(fd, buf);
            if let Some(w) = self.watcher.get() {
                w.rearm(s, fd, FD_READ | FD_OOB);
            }
            r
        })
    }

    fn close_socket(&self, s: Handle) -> Result<(), Error> {
        if let Some(w) = self.watcher.get() {
            w.forget(s);
        }
        self.upcall()?.close_socket_handle(s)
    }

    fn duplicate_socket(
        &self,
        s: Handle,
        target_pid: u32,
        info: &ProtocolInfo,
    ) -> Result<ProtocolInfo, Error> {
        own_entry(info, "WSPDuplicateSocket")?;
        self.upcall()?.with_fd(s, |fd| {
            let mut records = transfer::duplicate(&*Runtime::current()?, &[fd], target_pid)?;
            records.pop().ok_or_else(|| {
                Error::new(
                    ErrorKind::ProtocolViolation,
                    "the target's inbox answered with no ticket",
                )
            })
        })
    }

    fn get_sock_opt(&self, s: Handle, opt: SockOpt) -> Result<i64, Error> {
        self.on(s, "reading a socket option", |fd| os::get_opt(fd, opt))
    }

    fn set_sock_opt(&self, s: Handle, opt: SockOpt, value: i64) -> Result<(), Error> {
        self.on(s, "setting a socket option", |fd| {
            os::set_opt(fd, opt, value)
        })
    }

    /// One registration per socket across processes (see the `watch` module).
    fn event_select(&self, s: Handle, events: u32, sink: &EventSink) -> Result<(), Error> {
        let upcall = self.upcall()?;
        upcall.with_fd(s, |_| Ok(()))?;
        let w = self.watcher()?;
        upcall.with_fd(s, |fd| w.select(s, fd, events, sink))
    }

    fn enum_network_events(
        &self,
        s: Handle,
        event: Option<&Event>,
    ) -> Result<NetworkEvents, Error> {
        let upcall = self.upcall()?;
        upcall.with_fd(s, |fd| {
            Ok(match self.watcher.get() {
                Some(w) => w.enumerate(s, fd, event),
                None => {
                    if let Some(e) = event {
                        e.reset();
                    }
                    NetworkEvents::default()
                }
            })
        })
    }

    fn address_to_string(&self, addr: &SocketAddr, info: &ProtocolInfo) -> Result<String, Error> {
        own_entry(info, "WSPAddressToString")?;
        Ok(addr.to_string())
    }

    fn string_to_address(&self, text: &str, info: &ProtocolInfo) -> Result<SocketAddr, Error> {
        own_entry(info, "WSPStringToAddress")?;
        text.trim().parse().map_err(|_| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("{text:?} is not an address: expected 1.2.3.4:80 or [::1]:80"),
            )
        })
    }
}
