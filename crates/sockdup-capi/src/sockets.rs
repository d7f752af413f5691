//! The process's `SOCKET` table (`ws2_32`'s socket contexts): which `sockdup::spi::Socket`
//! serves each `SOCKET` value the C calls see.
//!
//! Two kinds of entries:
//! - sockets this library made (`WSASocketW`, new or redeemed): the `spi::Socket` owns the
//!   descriptor (through the upcall table), and its handle is the `SOCKET`; `closesocket` closes
//!   it. Closing such a `SOCKET` with `close(2)` instead leaves its entry behind (as a handle
//!   closed with `CloseHandle` leaves `ws2_32`'s context behind on Windows): use `closesocket`.
//! - descriptors the program made itself (`socket(2)`, `accept(2)`), *adopted* on first use:
//!   the `spi::Socket` of the base provider owns a duplicate of the descriptor (same open file
//!   description), and the entry remembers the socket's inode, so a number closed with `close(2)`
//!   and reused by another socket is noticed and adopted afresh.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use sockdup::spi::Socket;
use sockdup::{Error, ErrorKind};

use crate::types::SOCKET;

/// An adopted descriptor's socket: its device and inode (`fstat`).
type Identity = (u64, u64);

#[derive(Debug)]
struct Slot {
    socket: Arc<Socket>,
    adopted: Option<Identity>,
}

/// The table, and the pid of the process it belongs to.
static TABLE: Mutex<Option<(u32, HashMap<SOCKET, Slot>)>> = Mutex::new(None);

/// This process's table. One inherited through `fork()` (the parent's run's sockets) is
/// forgotten, not dropped: its sockets' descriptors are the child's copies to close as it likes,
/// and closing them through the parent's run would be wrong.
fn table() -> impl std::ops::DerefMut<Target = HashMap<SOCKET, Slot>> {
    struct Table(MutexGuard<'static, Option<(u32, HashMap<SOCKET, Slot>)>>);
    impl std::ops::Deref for Table {
        type Target = HashMap<SOCKET, Slot>;
        fn deref(&self) -> &Self::Target {
            &self.0.as_ref().expect("set by table()").1
        }
    }
    impl std::ops::DerefMut for Table {
        fn deref_mut(&mut self) -> &mut Self::Target {
            &mut self.0.as_mut().expect("set by table()").1
        }
    }
    let mut guard = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    match guard.take() {
        Some((owner, map)) if owner == pid => *guard = Some((owner, map)),
        Some((_, inherited)) => {
            std::mem::forget(inherited);
            *guard = Some((pid, HashMap::new()));
        }
        None => *guard = Some((pid, HashMap::new())),
    }
    Table(guard)
}

fn not_a_socket(s: SOCKET) -> Error {
    Error::new(
        ErrorKind::NotASocket,
        format!("SOCKET {s} is not a socket of this process (closed already, or never a socket)"),
    )
}

/// A duplicate (close-on-exec) of descriptor `s` of the caller's, or `WSAENOTSOCK` if `s` is
/// no open descriptor.
fn dup_of(s: SOCKET) -> Result<OwnedFd, Error> {
    let fd = RawFd::try_from(s)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| not_a_socket(s))?;
    // SAFETY: the descriptor is borrowed for the one `fcntl(F_DUPFD_CLOEXEC)` call below and
    // never kept; if `fd` is not open the kernel answers EBADF (mapped to WSAENOTSOCK).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_dupfd_cloexec(borrowed, 0).map_err(|e| {
        if e == rustix::io::Errno::BADF {
            not_a_socket(s)
        } else {
            Error::from_errno(e, &format!("duplicating SOCKET {s} to look at it"))
        }
    })
}

/// The identity of the socket `fd` is a descriptor of, or `WSAENOTSOCK` if it is no socket.
fn identity(s: SOCKET, fd: BorrowedFd<'_>) -> Result<Identity, Error> {
    let st = rustix::fs::fstat(fd)
        .map_err(|e| Error::from_errno(e, &format!("looking at SOCKET {s} (fstat)")))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err(not_a_socket(s));
    }
    Ok((st.st_dev, st.st_ino))
}

/// The socket `s` names: this library's, or the caller's descriptor adopted now.
///
/// # Errors
/// `WSAENOTSOCK` for a value that is no socket of this process; `WSANOTINITIALISED` without
/// `WSAStartup`; `WSAEAFNOSUPPORT` for a socket no base entry serves.
pub(crate) fn lookup(s: SOCKET) -> Result<Arc<Socket>, Error> {
    let stale = {
        let mut t = table();
        match t.get(&s) {
            Some(Slot {
                socket,
                adopted: None,
            }) => return Ok(socket.clone()),
            Some(Slot {
                socket,
                adopted: Some(id),
            }) => {
                let still = dup_of(s).and_then(|d| identity(s, d.as_fd()));
                if still.ok().as_ref() == Some(id) {
                    return Ok(socket.clone());
                }
                // The number was closed (and perhaps reused): this entry's duplicate goes.
                t.remove(&s)
            }
            None => None,
        }
    };
    drop(stale);
    adopt(s)
}

/// Adopts the caller's descriptor `s` as a socket of the base provider.
fn adopt(s: SOCKET) -> Result<Arc<Socket>, Error> {
    let dup = dup_of(s)?;
    let id = identity(s, dup.as_fd())?;
    let socket = Arc::new(Socket::from_fd(dup)?);
    let old = table().insert(
        s,
        Slot {
            socket: socket.clone(),
            adopted: Some(id),
        },
    );
    // Another thread adopted it at the same moment: its duplicate may go.
    drop(old);
    Ok(socket)
}

/// Enters a socket this library made; its handle is its `SOCKET`.
pub(crate) fn insert(socket: Socket) -> SOCKET {
    let s = socket.handle().raw() as SOCKET;
    let old = table().insert(
        s,
        Slot {
            socket: Arc::new(socket),
            adopted: None,
        },
    );
    if let Some(old) = old {
        if old.adopted.is_none() {
            // A socket of ours whose number was closed with close(2) and now came back: its
            // `spi::Socket` would close the number (now the new socket's) on drop. Leak it.
            std::mem::forget(old);
        }
    }
    s
}

/// `closesocket`: closes `s`, whoever made it.
///
/// # Errors
/// `WSAENOTSOCK` for a value that is no socket of this process; the providers' errors.
pub(crate) fn close(s: SOCKET) -> Result<(), Error> {
    let slot = table().remove(&s);
    match slot {
        Some(Slot {
            socket,
            adopted: None,
        }) => match Arc::try_unwrap(socket) {
            Ok(socket) => socket.close(),
            // Another thread is in a call on it: the last one out closes it (dropping closes).
            Err(shared) => {
                drop(shared);
                Ok(())
            }
        },
        Some(Slot {
            socket,
            adopted: Some(_),
        }) => {
            drop(socket);
            close_callers(s)
        }
        None => close_callers(s),
    }
}

/// Closes the caller's descriptor `s`, which must be a socket.
fn close_callers(s: SOCKET) -> Result<(), Error> {
    let dup = dup_of(s)?;
    identity(s, dup.as_fd())?;
    drop(dup);
    // `dup_of` accepted the number, so it fits a RawFd.
    let fd = RawFd::try_from(s).map_err(|_| not_a_socket(s))?;
    // SAFETY: `fd` is an open socket descriptor of this process (just checked), and the caller
    // gives it up by calling closesocket on it: nothing else of ours owns that number (adopted
    // sockets own a duplicate), so taking ownership to close it closes it once.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Closes every socket this library made and forgets the adopted ones (the last
/// `WSACleanup`, as on Windows).
pub(crate) fn close_all() {
    let all = std::mem::take(&mut *table());
    drop(all);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_is_no_descriptor_is_not_a_socket() {
        for s in [usize::MAX, 1 << 40, (i32::MAX as usize) + 1, 999_999] {
            assert_eq!(
                lookup(s).expect_err("no socket").kind(),
                ErrorKind::NotASocket
            );
            assert_eq!(
                close(s).expect_err("no socket").kind(),
                ErrorKind::NotASocket
            );
        }
    }

    #[test]
    fn a_descriptor_that_is_no_socket_is_not_a_socket() {
        let file = std::fs::File::open("/proc/self/stat").expect("open");
        let s = std::os::fd::AsRawFd::as_raw_fd(&file) as SOCKET;
        assert_eq!(lookup(s).expect_err("a file").kind(), ErrorKind::NotASocket);
        assert_eq!(close(s).expect_err("a file").kind(), ErrorKind::NotASocket);
        drop(file);
    }
}
