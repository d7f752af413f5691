//! Provider libraries: the check made at install (without starting the library), the loader
//! the dispatcher calls at first use (`dlopen`, `dlsym("WSPStartup")`), and the library's
//! `WSPPROC_TABLE` as a `sockdup::spi::Provider`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use object::{Object, ObjectKind, ObjectSymbol};
use sockdup::catalog::Layer;
use sockdup::error::code_name;
use sockdup::spi::library::{LibraryLoader, register_library_loader};
use sockdup::spi::{Event, EventSink, Handle, NetworkEvents, Provider, SockOpt, Upcall};
use sockdup::{Error, ErrorKind, ProtocolInfo};

use super::base::sockaddr_of;
use super::last::{clear_last_error, take_last_error};
use super::{LPWSPSTARTUP, WSABUF, WSPDATA, WSPPROC_TABLE};
use crate::types::*;

fn invalid(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidProvider,
        format!("the provider library {} {why}", path.display()),
    )
}

/// Checks, without loading it, that `path` is a shared library that itself defines
/// `WSPStartup` (in its dynamic symbols): what `sockdup catalog install-library` checks.
///
/// # Errors
/// [`ErrorKind::InvalidProvider`] naming the path: missing or unreadable, not ELF, not a shared
/// library, no `WSPStartup`, or one it only imports (it links `libsockdup` and would find its
/// base provider's).
pub fn check_library(path: &Path) -> Result<(), Error> {
    let bytes = std::fs::read(path).map_err(|e| invalid(path, format!("cannot be read: {e}")))?;
    let file = object::File::parse(&*bytes).map_err(|e| {
        invalid(
            path,
            format!("is not a shared library (not an object file this system loads: {e})"),
        )
    })?;
    if file.format() != object::BinaryFormat::Elf || file.kind() != ObjectKind::Dynamic {
        return Err(invalid(
            path,
            format!(
                "is not a shared library (an ELF {:?} file of kind {:?}): build it with `cc -shared -fPIC`",
                file.format(),
                file.kind()
            ),
        ));
    }
    let mut imported = false;
    for sym in file.dynamic_symbols() {
        if sym.name() != Ok("WSPStartup") {
            continue;
        }
        if sym.is_definition() {
            return Ok(());
        }
        imported = true;
    }
    Err(invalid(
        path,
        if imported {
            "only imports WSPStartup (from libsockdup?) and does not define its own: a provider \
             library must export its own WSPStartup"
        } else {
            "does not define WSPStartup: a provider library must export `int WSPStartup(WORD, \
             LPWSPDATA, LPWSAPROTOCOL_INFOW, WSPUPCALLTABLE, LPWSPPROC_TABLE)`"
        },
    ))
}

/// The loader of provider libraries, registered with `sockdup::spi::library`.
#[derive(Debug)]
struct Loader;

static LOADER: Loader = Loader;

/// Registers this crate's loader of provider libraries with the `sockdup` crate, so that chains
/// holding a provider library work in this process (from `WSASocketW` and from
/// `sockdup::spi::Socket` alike). Call it once at start; later calls do nothing. Returns
/// whether a loader is registered (this one or another).
pub fn register() -> bool {
    // The exported entry points a provider library calls, referenced so that a Rust program
    // linking this crate holds them (and exports them, with `EXPORTS`).
    std::hint::black_box([
        super::base::WSPStartup as *const (),
        super::catalog::WSCEnumProtocols as *const (),
        super::catalog::WSCGetProviderPath as *const (),
    ]);
    register_library_loader(&LOADER);
    sockdup::spi::library::library_loader_registered()
}

impl LibraryLoader for Loader {
    fn load(&self, layer: &Layer, path: &Path) -> Result<Arc<dyn Provider>, Error> {
        check_library(path)?;
        // SAFETY: loading a provider library runs its initialisers: the catalog names it as a
        // provider, installed by the user with `sockdup catalog install-library` (as Windows
        // loads a catalog's LSP DLLs); it was checked to be a shared library defining
        // WSPStartup.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| invalid(path, format!("cannot be loaded: {e}")))?;
        // SAFETY: WSPStartup of a provider library has the LPWSPSTARTUP signature (ws2spi.h).
        let startup: LPWSPSTARTUP = unsafe { lib.get::<LPWSPSTARTUP>(b"WSPStartup\0") }
            .map(|s| *s)
            .map_err(|e| invalid(path, format!("has no WSPStartup: {e}")))?;
        // The symbol found must be the library's own, not one of a library it links.
        let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let found = object_file(startup as usize);
        if found.as_ref() != Some(&want) {
            return Err(invalid(
                path,
                format!(
                    "does not define WSPStartup itself (dlsym found the one of {})",
                    found.map_or_else(|| "another object".to_owned(), |p| p.display().to_string())
                ),
            ));
        }
        Ok(Arc::new(LibraryProvider {
            layer_id: layer.id,
            path: path.to_path_buf(),
            startup,
            table: OnceLock::new(),
            _lib: lib,
        }))
    }
}

/// The file of the loaded object holding `addr`, canonical.
fn object_file(addr: usize) -> Option<PathBuf> {
    // SAFETY: Dl_info is plain data; all zeroes is valid.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr reads the loader's tables and writes `info` only.
    if unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0
        || info.dli_fname.is_null()
    {
        return None;
    }
    // SAFETY: dli_fname is the loader's NUL-terminated string for an object still loaded.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let name = PathBuf::from(name.to_str().ok()?);
    Some(std::fs::canonicalize(&name).unwrap_or(name))
}

/// A provider library's provider: its `WSPPROC_TABLE`, filled by its `WSPStartup`.
#[derive(Debug)]
struct LibraryProvider {
    layer_id: u32,
    path: PathBuf,
    startup: LPWSPSTARTUP,
    table: OnceLock<WSPPROC_TABLE>,
    /// Kept loaded while the provider lives (dropped last).
    _lib: libloading::Library,
}

impl LibraryProvider {
    fn table(&self) -> Result<&WSPPROC_TABLE, Error> {
        self.table.get().ok_or_else(|| {
            Error::new(
                ErrorKind::NotStarted,
                format!(
                    "the provider library {} was not started",
                    self.path.display()
                ),
            )
        })
    }

    /// The error for a call `name` that failed with `code`: the whole error when it came from
    /// this process's base provider below, else the code with the library named.
    fn failed(&self, name: &str, code: i32) -> Error {
        let code = if code == 0 { WSASYSCALLFAILURE } else { code };
        match take_last_error(code) {
            Some(e) => e,
            None => Error::with_code(
                ErrorKind::Remote,
                code,
                format!(
                    "{name} of the provider library {} (catalog entry {}) failed with {code} ({})",
                    self.path.display(),
                    self.layer_id,
                    code_name(code).unwrap_or("a provider's error")
                ),
            ),
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "the provider library {} (catalog entry {}) does not implement {name} (its slot is NULL)",
                self.path.display(),
                self.layer_id
            ),
        )
    }

    fn not_here(&self, name: &str) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "{name} through the provider library {} is not supported by sockdup yet: use a chain \
                 without it for this call",
                self.path.display()
            ),
        )
    }

    /// A call returning 0 or `SOCKET_ERROR`.
    fn int_call(&self, name: &str, f: impl FnOnce(*mut i32) -> i32) -> Result<(), Error> {
        let mut err = 0;
        clear_last_error();
        if f(&mut err) == SOCKET_ERROR {
            return Err(self.failed(name, err));
        }
        Ok(())
    }

    /// A call returning a `SOCKET` or `INVALID_SOCKET`.
    fn socket_call(&self, name: &str, f: impl FnOnce(*mut i32) -> SOCKET) -> Result<Handle, Error> {
        let mut err = 0;
        clear_last_error();
        let s = f(&mut err);
        if s == INVALID_SOCKET {
            return Err(self.failed(name, err));
        }
        Ok(Handle::from_raw(s as u64))
    }
}

impl Provider for LibraryProvider {
    fn startup(&self, _upcall: &Arc<Upcall>, info: &ProtocolInfo) -> Result<(), Error> {
        if self.table.get().is_some() {
            return Ok(());
        }
        let mut data = WSPDATA::default();
        let mut c = WSAPROTOCOL_INFOW::from_info(info);
        let mut table = WSPPROC_TABLE::default();
        clear_last_error();
        // SAFETY: the library's WSPStartup, with valid pointers to our own structures and the
        // process's upcall table by value (ws2spi.h's LPWSPSTARTUP).
        let code = unsafe {
            (self.startup)(
                0x0202,
                &mut data,
                &mut c,
                super::upcall::table(),
                &mut table,
            )
        };
        if code != 0 {
            let cause = take_last_error(code)
                .map(|e| format!(": {}", e.message()))
                .unwrap_or_default();
            return Err(Error::new(
                ErrorKind::ProviderFailedInit,
                format!(
                    "WSPStartup of the provider library {} (catalog entry {}) failed with {code} ({}){cause}",
                    self.path.display(),
                    self.layer_id,
                    code_name(code).unwrap_or("its own code")
                ),
            ));
        }
        if table.lpWSPSocket.is_none() || table.lpWSPCloseSocket.is_none() {
            // Started, but unusable: cleaned up before it is unloaded.
            if let Some(cleanup) = table.lpWSPCleanup {
                let mut err = 0;
                // SAFETY: the library's WSPCleanup, right after its WSPStartup succeeded.
                unsafe { cleanup(&mut err) };
            }
            return Err(Error::new(
                ErrorKind::ProviderFailedInit,
                format!(
                    "WSPStartup of the provider library {} left lpWSPSocket or lpWSPCloseSocket NULL: a \
                     provider must fill at least those",
                    self.path.display()
                ),
            ));
        }
        let _ = self.table.set(table);
        Ok(())
    }

    fn cleanup(&self) -> Result<(), Error> {
        let f = self
            .table()?
            .lpWSPCleanup
            .ok_or_else(|| self.missing("WSPCleanup"))?;
        // SAFETY: the library's WSPCleanup with a valid lpErrno.
        self.int_call("WSPCleanup", |e| unsafe { f(e) })
    }

    fn socket(
        &self,
        family: i32,
        socket_type: i32,
        protocol: i32,
        info: &ProtocolInfo,
    ) -> Result<Handle, Error> {
        let f = self
            .table()?
            .lpWSPSocket
            .ok_or_else(|| self.missing("WSPSocket"))?;
        let mut c = WSAPROTOCOL_INFOW::from_info(info);
        // SAFETY: the library's WSPSocket with a valid record and lpErrno.
        self.socket_call("WSPSocket", |e| unsafe {
            f(family, socket_type, protocol, &mut c, 0, 0, e)
        })
    }

    fn socket_from_info(&self, info: &ProtocolInfo) -> Result<Handle, Error> {
        let f = self
            .table()?
            .lpWSPSocket
            .ok_or_else(|| self.missing("WSPSocket"))?;
        let mut c = WSAPROTOCOL_INFOW::from_info(info);
        // SAFETY: the library's WSPSocket with a valid record and lpErrno; FROM_PROTOCOL_INFO
        // in af/type/protocol, as ws2_32 passes a duplicate's record.
        self.socket_call("WSPSocket", |e| unsafe {
            f(
                FROM_PROTOCOL_INFO,
                FROM_PROTOCOL_INFO,
                FROM_PROTOCOL_INFO,
                &mut c,
                0,
                0,
                e,
            )
        })
    }

    fn connect(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error> {
        let f = self
            .table()?
            .lpWSPConnect
            .ok_or_else(|| self.missing("WSPConnect"))?;
        let (sa, len) = sockaddr_of(addr);
        let null = std::ptr::null_mut();
        // SAFETY: the library's WSPConnect with a valid address and lpErrno; no QOS, no data.
        self.int_call("WSPConnect", |e| unsafe {
            f(
                s.raw() as SOCKET,
                std::ptr::from_ref(&sa).cast(),
                len,
                null,
                null,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                e,
            )
        })
    }

    fn bind(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error> {
        let f = self
            .table()?
            .lpWSPBind
            .ok_or_else(|| self.missing("WSPBind"))?;
        let (sa, len) = sockaddr_of(addr);
        // SAFETY: the library's WSPBind with a valid address and lpErrno.
        self.int_call("WSPBind", |e| unsafe {
            f(s.raw() as SOCKET, std::ptr::from_ref(&sa).cast(), len, e)
        })
    }

    fn listen(&self, s: Handle, backlog: i32) -> Result<(), Error> {
        let f = self
            .table()?
            .lpWSPListen
            .ok_or_else(|| self.missing("WSPListen"))?;
        // SAFETY: the library's WSPListen with a valid lpErrno.
        self.int_call("WSPListen", |e| unsafe { f(s.raw() as SOCKET, backlog, e) })
    }

    fn accept(&self, s: Handle) -> Result<Handle, Error> {
        let f = self
            .table()?
            .lpWSPAccept
            .ok_or_else(|| self.missing("WSPAccept"))?;
        // SAFETY: the library's WSPAccept with no address buffer and a valid lpErrno.
        self.socket_call("WSPAccept", |e| unsafe {
            f(
                s.raw() as SOCKET,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                None,
                0,
                e,
            )
        })
    }

    fn send(&self, s: Handle, data: &[u8]) -> Result<usize, Error> {
        let f = self
            .table()?
            .lpWSPSend
            .ok_or_else(|| self.missing("WSPSend"))?;
        let mut buf = WSABUF {
            len: u32::try_from(data.len()).unwrap_or(u32::MAX),
            buf: data.as_ptr().cast_mut().cast(),
        };
        let mut sent: DWORD = 0;
        let null = std::ptr::null_mut();
        // SAFETY: the library's WSPSend with one valid buffer (only read by a send) and valid
        // out-pointers; not overlapped.
        self.int_call("WSPSend", |e| unsafe {
            f(
                s.raw() as SOCKET,
                &mut buf,
                1,
                &mut sent,
                0,
                null,
                None,
                null,
                e,
            )
        })?;
        Ok(sent as usize)
    }

    fn recv(&self, s: Handle, out: &mut [u8]) -> Result<usize, Error> {
        let f = self
            .table()?
            .lpWSPRecv
            .ok_or_else(|| self.missing("WSPRecv"))?;
        let mut buf = WSABUF {
            len: u32::try_from(out.len()).unwrap_or(u32::MAX),
            buf: out.as_mut_ptr().cast(),
        };
        let (mut got, mut flags): (DWORD, DWORD) = (0, 0);
        let null = std::ptr::null_mut();
        // SAFETY: the library's WSPRecv with one valid writable buffer and valid out-pointers;
        // not overlapped.
        self.int_call("WSPRecv", |e| unsafe {
            f(
                s.raw() as SOCKET,
                &mut buf,
                1,
                &mut got,
                &mut flags,
                null,
                None,
                null,
                e,
            )
        })?;
        Ok((got as usize).min(out.len()))
    }

    fn close_socket(&self, s: Handle) -> Result<(), Error> {
        let f = self
            .table()?
            .lpWSPCloseSocket
            .ok_or_else(|| self.missing("WSPCloseSocket"))?;
        // SAFETY: the library's WSPCloseSocket with a valid lpErrno.
        self.int_call("WSPCloseSocket", |e| unsafe { f(s.raw() as SOCKET, e) })
    }

    fn duplicate_socket(
        &self,
        s: Handle,
        target_pid: u32,
        info: &ProtocolInfo,
    ) -> Result<ProtocolInfo, Error> {
        let f = self
            .table()?
            .lpWSPDuplicateSocket
            .ok_or_else(|| self.missing("WSPDuplicateSocket"))?;
        let mut c = WSAPROTOCOL_INFOW::from_info(info);
        // SAFETY: the library's WSPDuplicateSocket with a valid record buffer (pre-filled with
        // the chain's entry) and lpErrno.
        self.int_call("WSPDuplicateSocket", |e| unsafe {
            f(s.raw() as SOCKET, target_pid, &mut c, e)
        })?;
        c.to_info()
    }

    fn get_sock_opt(&self, _s: Handle, _opt: SockOpt) -> Result<i64, Error> {
        Err(self.not_here("WSPGetSockOpt"))
    }

    fn set_sock_opt(&self, _s: Handle, _opt: SockOpt, _value: i64) -> Result<(), Error> {
        Err(self.not_here("WSPSetSockOpt"))
    }

    fn event_select(&self, _s: Handle, _events: u32, _sink: &EventSink) -> Result<(), Error> {
        Err(self.not_here("WSPEventSelect"))
    }

    fn enum_network_events(
        &self,
        _s: Handle,
        _event: Option<&Event>,
    ) -> Result<NetworkEvents, Error> {
        Err(self.not_here("WSPEnumNetworkEvents"))
    }

    fn address_to_string(&self, _addr: &SocketAddr, _info: &ProtocolInfo) -> Result<String, Error> {
        Err(self.not_here("WSPAddressToString"))
    }

    fn string_to_address(&self, _text: &str, _info: &ProtocolInfo) -> Result<SocketAddr, Error> {
        Err(self.not_here("WSPStringToAddress"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_no_provider_are_refused_naming_the_path() {
        let dir = tempfile_dir();
        let missing = dir.join("missing.so");
        let e = check_library(&missing).unwrap_err();
        assert_eq!((e.kind(), e.code()), (ErrorKind::InvalidProvider, 10105));
        assert!(
            e.message().contains("missing.so") && e.message().contains("cannot be read"),
            "{e}"
        );
        let text = dir.join("text.so");
        std::fs::write(&text, "not a library").unwrap();
        let e = check_library(&text).unwrap_err();
        assert!(
            e.message().contains("text.so") && e.message().contains("not a shared library"),
            "{e}"
        );
        // The test binary itself: an ELF executable, no WSPStartup of its own.
        let exe = std::env::current_exe().unwrap();
        let e = check_library(&exe).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidProvider, "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sockdup-capi-lib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
