//! The native half of the Python package `sockdup` (`sockdup._sockdup`): `socket.share` and
//! `socket.fromshare` on Linux, through the `sockdup` crate.
//!
//! The Python half (`python/sockdup/__init__.py`) defines the exception class, wraps a redeemed
//! descriptor in a `socket.socket` and adds `install()`; everything else is here, one native call
//! per Python call.
//!
//! The process's sockdup run ([`sockdup::startup`]) starts on first use and is kept for the life
//! of the process. A child made by `fork()` inherits the parent's guard but not its inbox thread:
//! the first call in the child notices the pid changed, forgets the inherited guard (dropping it
//! would stop the parent's inbox, whose eventfd the child shares) and starts its own run.

use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString, PyType};
use sockdup::{Error, ErrorKind, ProtocolInfo, Startup};

/// This process's sockdup run: the pid that started it and its guard.
static RUN: Mutex<Option<(u32, Startup)>> = Mutex::new(None);

/// Set by `sockdup.install()`: a share to a child of this process that has not opened its inbox
/// yet waits for it ([`CHILD_WAIT`]), as Windows code shares to a worker as soon as it has its pid.
static WAIT_FOR_CHILDREN: AtomicBool = AtomicBool::new(false);

/// How long a share waits for a child's inbox (a forked child opens it in its at-fork hook, a
/// spawned one when it imports the module that calls `install()`, which takes Python's start-up).
const CHILD_WAIT: Duration = Duration::from_secs(3);

/// The Python class `sockdup.Error`, registered by the package's `__init__` at import.
static ERROR_CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Whether this process's run is started, so that a call needs no lock and no `getpid`. The
/// package clears it in a child made by `os.fork()` (its at-fork hook, [`_forked`]); a fork the
/// hook does not see is caught by the library's own check ([`in_run`]).
static STARTED: AtomicBool = AtomicBool::new(false);

/// Starts sockdup in this process unless it already runs here.
fn ensure_started() -> Result<(), Error> {
    if STARTED.load(Ordering::Acquire) {
        return Ok(());
    }
    start_here()
}

/// Starts sockdup in this process unless it already runs here; a run inherited through `fork()`
/// is forgotten and a new one started.
fn start_here() -> Result<(), Error> {
    let pid = std::process::id();
    let mut run = RUN.lock().unwrap_or_else(|e| e.into_inner());
    match run.take() {
        Some((owner, guard)) if owner == pid => *run = Some((owner, guard)),
        inherited => {
            // Inherited through fork(): the parent's inbox thread does not exist here, and
            // dropping the guard would wake (stop) the parent's inbox through the eventfd both
            // processes share. The library's own startup() forgets the inherited run the same
            // way.
            if let Some((_, guard)) = inherited {
                std::mem::forget(guard);
            }
            *run = Some((pid, sockdup::startup()?));
        }
    }
    STARTED.store(true, Ordering::Release);
    Ok(())
}

/// Runs `call` in this process's run, starting it first if needed. A run inherited through a
/// fork the at-fork hook did not see (the library answers `Forked`) is replaced by a new one and
/// the call made once more.
///
/// Called with the GIL held, so [`RUN`] is only ever locked by a thread holding the GIL: a
/// thread calling `os.fork()` holds it too, so no child inherits [`RUN`] locked.
fn in_run<T>(call: impl Fn() -> Result<T, Error>) -> Result<T, Error> {
    ensure_started()?;
    match call() {
        Err(e) if e.kind() == ErrorKind::Forked => {
            STARTED.store(false, Ordering::Release);
            start_here()?;
            call()
        }
        done => done,
    }
}

/// The `errno` a Python program on Linux expects beside the Winsock code.
fn errno_for(err: &Error) -> Option<i32> {
    if let Some(os) = std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
    {
        return Some(os);
    }
    use sockdup::error as e;
    Some(match err.code() {
        e::WSAEACCES => libc_errno::EACCES,
        e::WSAEFAULT => libc_errno::EFAULT,
        e::WSAEINVAL | e::WSA_INVALID_PARAMETER => libc_errno::EINVAL,
        e::WSAEMFILE => libc_errno::EMFILE,
        e::WSAEINPROGRESS if err.kind() == ErrorKind::WouldBlock => libc_errno::EAGAIN,
        e::WSAEINPROGRESS => libc_errno::EINPROGRESS,
        e::WSAENOTSOCK => libc_errno::ENOTSOCK,
        e::WSAEAFNOSUPPORT => libc_errno::EAFNOSUPPORT,
        e::WSAEADDRINUSE => libc_errno::EADDRINUSE,
        e::WSAENETDOWN => libc_errno::ENETDOWN,
        e::WSAENOBUFS => libc_errno::ENOBUFS,
        _ => return None,
    })
}

/// Linux's errno numbers (x86-64, aarch64 and every other architecture Rust targets on Linux
/// share these), without a dependency for a dozen constants.
mod libc_errno {
    pub(crate) const EACCES: i32 = 13;
    pub(crate) const EFAULT: i32 = 14;
    pub(crate) const EINVAL: i32 = 22;
    pub(crate) const EMFILE: i32 = 24;
    pub(crate) const EAGAIN: i32 = 11;
    pub(crate) const EINPROGRESS: i32 = 115;
    pub(crate) const ENOTSOCK: i32 = 88;
    pub(crate) const EAFNOSUPPORT: i32 = 97;
    pub(crate) const EADDRINUSE: i32 = 98;
    pub(crate) const ENETDOWN: i32 = 100;
    pub(crate) const ENOBUFS: i32 = 105;
}

/// `sockdup.Error(errno, message)` with `winerror` (the Winsock code) and `kind` set.
fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let Some(class) = ERROR_CLASS.get(py) else {
        return PyErr::new::<pyo3::exceptions::PyOSError, _>(err.to_string());
    };
    let made = class
        .bind(py)
        .call1((errno_for(&err), err.message()))
        .and_then(|exc| {
            exc.setattr("winerror", err.code())?;
            exc.setattr("kind", err.kind().name())?;
            Ok(exc)
        });
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// A copy of descriptor `fd`, made while the caller holds the GIL.
///
/// A closed socket (`fileno()` is -1) or a descriptor that is not open is `WSAENOTSOCK`, as
/// Winsock reports an invalid handle.
#[allow(unsafe_code)]
fn copy_fd(_py: Python<'_>, fd: i32) -> Result<OwnedFd, Error> {
    let not_open = || {
        Error::new(
            ErrorKind::NotASocket,
            format!(
                "descriptor {fd} is not open (a closed socket's fileno() is -1): pass an open socket"
            ),
        )
    };
    if fd < 0 {
        return Err(not_open());
    }
    // SAFETY: `fd` is the `fileno()` of the caller's object, which the caller keeps alive for
    // this call; the GIL is held (`_py`), so no Python code closes it before the copy below is
    // made, and the borrow does not outlive this function. A number that is not open makes
    // `try_clone_to_owned` fail with EBADF, touching nothing.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().map_err(|e| {
        if e.raw_os_error() == Some(9) {
            not_open()
        } else {
            Error::from_errno(e, "copying the socket's descriptor")
        }
    })
}

/// The descriptor number of `sock`: its `fileno()`.
fn fileno(sock: &Bound<'_, PyAny>) -> PyResult<i32> {
    match sock.getattr(pyo3::intern!(sock.py(), "fileno")) {
        Ok(method) => method.call0()?.extract(),
        Err(_) => Err(PyTypeError::new_err(format!(
            "share() takes a socket.socket or an object with fileno(), not {}",
            sock.get_type().name()?
        ))),
    }
}

/// A target pid as Python gives it: any int; out of range is the library's `InvalidPid`.
fn target_pid(pid: i64) -> Result<u32, Error> {
    u32::try_from(pid).map_err(|_| {
        Error::new(
            ErrorKind::InvalidPid,
            format!("process id {pid} is out of range: pass the target process's pid (os.getpid() there)"),
        )
    })
}

/// Whether process `pid` is a child of this one (its parent in `/proc/PID/stat` is us).
fn is_child(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses; the last ')' ends it.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse::<u32>().ok())
        == Some(std::process::id())
}

/// `duplicate_socket`; after `install()`, a child of this process that has not opened its inbox
/// yet is waited for ([`CHILD_WAIT`]).
fn duplicate_waiting(socket: &OwnedFd, pid: u32) -> Result<ProtocolInfo, Error> {
    let deadline = Instant::now() + CHILD_WAIT;
    let mut pause = Duration::from_micros(200);
    loop {
        match sockdup::duplicate_socket(socket, pid) {
            Err(e)
                if e.kind() == ErrorKind::TargetNotStarted
                    && WAIT_FOR_CHILDREN.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && is_child(pid) =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            done => return done,
        }
    }
}

fn duplicate(py: Python<'_>, sock: &Bound<'_, PyAny>, pid: i64) -> PyResult<ProtocolInfo> {
    let fd = fileno(sock)?;
    let run = || -> Result<ProtocolInfo, Error> {
        let pid = target_pid(pid)?;
        let copy = copy_fd(py, fd)?;
        // The wait for the target's inbox must not hold the GIL; starting the run does (see
        // `in_run`).
        in_run(|| py.detach(|| duplicate_waiting(&copy, pid))).map_err(|e| match e.kind() {
                // The library names the copy's number; the caller knows its own.
                ErrorKind::NotASocket => Error::new(
                    ErrorKind::NotASocket,
                    format!(
                        "descriptor {fd} (the fileno() given) is not a socket: only sockets can be shared"
                    ),
                ),
                _ => e,
            })
    };
    run().map_err(|e| to_py(py, e))
}

/// Duplicates `sock` for process `pid` and returns the 628-byte WSAPROTOCOL_INFOW record, as
/// `socket.share` does on Windows; when it returns, the target holds the socket, so this
/// process may close its own or exit at once. The target redeems the record once with
/// `sockdup.fromshare` (or `socket.fromshare` after `sockdup.install()`).
///
/// `sock` is a `socket.socket` or any object with `fileno()`. The target must have opened its
/// inbox (any use of sockdup there, or `sockdup.startup()`). This process's inbox opens on
/// first use.
///
/// Raises `sockdup.Error`: `winerror` 10038 (`not-a-socket`) for a descriptor that is not an
/// open socket; 10022 for a bad pid, a process that does not exist or has not started sockdup
/// (`target-not-started`), or refuses this user; 10055 when the target's inbox is full; the
/// message says which. `TypeError` for an object without `fileno()`.
#[pyfunction]
#[pyo3(signature = (sock, pid, /))]
fn share<'py>(
    py: Python<'py>,
    sock: &Bound<'py, PyAny>,
    pid: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let info = duplicate(py, sock, pid)?;
    Ok(PyBytes::new(py, &info.to_bytes()))
}

/// As `share`, but returns the record's one-line text form (`sockdup1:` and URL-safe base64),
/// for an environment variable, JSON or a command line; `fromshare` takes it as a `str`.
#[pyfunction]
#[pyo3(signature = (sock, pid, /))]
fn share_text(py: Python<'_>, sock: &Bound<'_, PyAny>, pid: i64) -> PyResult<String> {
    Ok(duplicate(py, sock, pid)?.to_string())
}

/// A record from what Python passed: 628 bytes, or the text form (a `str`, or bytes that start
/// with `sockdup1:`). Bytes of another length are `ValueError`, as CPython's `fromshare` does.
fn record(py: Python<'_>, data: &Bound<'_, PyAny>, what: &str) -> PyResult<ProtocolInfo> {
    let parse_bytes = |b: &[u8]| -> PyResult<ProtocolInfo> {
        if b.len() != ProtocolInfo::LEN && !b.starts_with(sockdup::wire::TEXT_PREFIX.as_bytes()) {
            return Err(PyValueError::new_err(format!(
                "{what}: the data is {} bytes, but a WSAPROTOCOL_INFOW record is {}: pass the bytes share() returned, unchanged (or its text form, a str)",
                b.len(),
                ProtocolInfo::LEN
            )));
        }
        if b.len() == ProtocolInfo::LEN {
            ProtocolInfo::from_bytes(b).map_err(|e| to_py(py, e))
        } else {
            ProtocolInfo::from_raw_or_text(b).map_err(|e| to_py(py, e))
        }
    };
    if let Ok(b) = data.cast::<PyBytes>() {
        parse_bytes(b.as_bytes())
    } else if let Ok(s) = data.cast::<PyString>() {
        s.to_cow()?.parse().map_err(|e| to_py(py, e))
    } else if let Ok(b) = data.cast::<PyByteArray>() {
        parse_bytes(&b.to_vec())
    } else if let Ok(view) = data.call_method0(pyo3::intern!(py, "tobytes")) {
        // A memoryview.
        parse_bytes(view.cast::<PyBytes>()?.as_bytes())
    } else {
        Err(PyTypeError::new_err(format!(
            "{what} takes the record as bytes (628 of them) or its text form as a str, not {}",
            data.get_type().name()?
        )))
    }
}

/// Redeems a record (bytes or text); returns `(fd, family, type, proto)`. `sockdup.fromshare`
/// wraps the descriptor in a `socket.socket`.
#[pyfunction]
#[pyo3(signature = (data, /))]
fn redeem(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<(i32, i32, i32, i32)> {
    let info = record(py, data, "fromshare")?;
    let fd = in_run(|| sockdup::socket_from_info(&info)).map_err(|e| to_py(py, e))?;
    debug_assert!(fd.as_raw_fd() >= 0);
    Ok((
        fd.into_raw_fd(),
        info.address_family,
        info.socket_type,
        info.protocol,
    ))
}

/// Opens this process's inbox now, if it is not open yet.
#[pyfunction]
fn startup(py: Python<'_>) -> PyResult<()> {
    ensure_started().map_err(|e| to_py(py, e))
}

/// Decodes a record (the 628 bytes or the text form) into a dict with the keys and values of
/// `sockdup inspect --json`: the WSAPROTOCOL_INFOW fields (`service_flags3` is the target's
/// pid, `provider_reserved` the ticket, `protocol_chain` a dict of `len` and seven `entries`).
/// Redeems nothing. `ValueError` for bytes of the wrong length, `sockdup.Error` (10022) for
/// input that is no record.
#[pyfunction]
#[pyo3(signature = (data, /))]
fn inspect<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    let ProtocolInfo {
        service_flags1,
        service_flags2,
        service_flags3,
        service_flags4,
        provider_flags,
        provider_id,
        catalog_entry_id,
        protocol_chain,
        version,
        address_family,
        max_sockaddr,
        min_sockaddr,
        socket_type,
        protocol,
        protocol_max_offset,
        network_byte_order,
        security_scheme,
        message_size,
        provider_reserved,
        protocol_name,
    } = record(py, data, "inspect")?;
    let d = PyDict::new(py);
    d.set_item("service_flags1", service_flags1)?;
    d.set_item("service_flags2", service_flags2)?;
    d.set_item("service_flags3", service_flags3)?;
    d.set_item("service_flags4", service_flags4)?;
    d.set_item("provider_flags", provider_flags)?;
    d.set_item("provider_id", provider_id.to_string())?;
    d.set_item("catalog_entry_id", catalog_entry_id)?;
    let chain = PyDict::new(py);
    chain.set_item("len", protocol_chain.len)?;
    chain.set_item("entries", protocol_chain.entries.to_vec())?;
    d.set_item("protocol_chain", chain)?;
    d.set_item("version", version)?;
    d.set_item("address_family", address_family)?;
    d.set_item("max_sockaddr", max_sockaddr)?;
    d.set_item("min_sockaddr", min_sockaddr)?;
    d.set_item("socket_type", socket_type)?;
    d.set_item("protocol", protocol)?;
    d.set_item("protocol_max_offset", protocol_max_offset)?;
    d.set_item("network_byte_order", network_byte_order)?;
    d.set_item("security_scheme", security_scheme)?;
    d.set_item("message_size", message_size)?;
    d.set_item("provider_reserved", provider_reserved)?;
    d.set_item("protocol_name", protocol_name)?;
    Ok(d)
}

/// How many duplicates wait in this process's inbox, not yet redeemed (0 before first use).
#[pyfunction]
fn pending(py: Python<'_>) -> PyResult<usize> {
    let started = RUN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|(pid, _)| *pid == std::process::id());
    if !started {
        return Ok(0);
    }
    sockdup::pending().map_err(|e| to_py(py, e))
}

/// Forgets that this process's run is started: called in a child made by `os.fork()` (the
/// package registers it with `os.register_at_fork`), whose first call then starts its own.
#[pyfunction]
fn _forked() {
    STARTED.store(false, Ordering::Release);
}

/// Makes a share to a child that has not opened its inbox yet wait for it (`install()` does).
#[pyfunction]
#[pyo3(signature = (on, /))]
fn _wait_for_children(on: bool) {
    WAIT_FOR_CHILDREN.store(on, Ordering::Relaxed);
}

/// Registers `sockdup.Error` (done once by the package at import).
#[pyfunction]
fn _set_error_class(py: Python<'_>, cls: Bound<'_, PyType>) {
    let _ = ERROR_CLASS.set(py, cls.unbind());
}

/// The native module `sockdup._sockdup`.
#[pymodule]
fn _sockdup(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(share, m)?)?;
    m.add_function(wrap_pyfunction!(share_text, m)?)?;
    m.add_function(wrap_pyfunction!(redeem, m)?)?;
    m.add_function(wrap_pyfunction!(startup, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(pending, m)?)?;
    m.add_function(wrap_pyfunction!(_set_error_class, m)?)?;
    m.add_function(wrap_pyfunction!(_wait_for_children, m)?)?;
    m.add_function(wrap_pyfunction!(_forked, m)?)?;
    m.add("RECORD_LEN", ProtocolInfo::LEN)?;
    Ok(())
}
