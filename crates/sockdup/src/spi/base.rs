//! The Linux base provider (MSAFD's role): real sockets, IFS handles (their descriptors), and
//! duplication through the inbox transport of the crate root.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, OnceLock};

use sockdup_core::catalog::{self, BASE_PROVIDER_ID};
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::wire::ProtocolInfo;

use super::{Handle, Provider, SockOpt, Upcall};
use crate::startup::Runtime;
use crate::sys::socket as os;
use crate::transfer;

/// The base provider. One instance serves every base entry.
#[derive(Debug, Default)]
pub(crate) struct BaseProvider {
    upcall: OnceLock<Arc<Upcall>>,
    /// `FD_*` registrations by handle (see `event_select`).
    events: std::sync::Mutex<std::collections::HashMap<Handle, u32>>,
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
        self.on(s, "connecting", |fd| os::connect(fd, addr))
    }

    fn bind(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error> {
        self.on(s, "binding", |fd| os::bind(fd, addr))
    }

    fn listen(&self, s: Handle, backlog: i32) -> Result<(), Error> {
        self.on(s, "listening", |fd| os::listen(fd, backlog))
    }

    fn accept(&self, s: Handle) -> Result<Handle, Error> {
        let upcall = self.upcall()?;
        let owner = upcall.owner(s).unwrap_or(0);
        let fd = self.on(s, "accepting", os::accept)?;
        Ok(upcall.modify_ifs_handle(owner, fd))
    }

    fn send(&self, s: Handle, data: &[u8]) -> Result<usize, Error> {
        self.on(s, "sending", |fd| os::send(fd, data))
    }

    fn recv(&self, s: Handle, buf: &mut [u8]) -> Result<usize, Error> {
        self.on(s, "receiving", |fd| os::recv(fd, buf))
    }

    fn close_socket(&self, s: Handle) -> Result<(), Error> {
        crate::sync::lock(&self.events).remove(&s);
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

    /// Records the interest per descriptor. (Windows keeps one registration per underlying
    /// socket across processes; sockdup keeps it per descriptor in this process.)
    fn event_select(&self, s: Handle, events: u32) -> Result<(), Error> {
        self.upcall()?.with_fd(s, |_| Ok(()))?;
        let mut map = crate::sync::lock(&self.events);
        if events == 0 {
            map.remove(&s);
        } else {
            map.insert(s, events);
        }
        Ok(())
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
