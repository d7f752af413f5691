//! sockdup's C interface as a Rust crate: the code behind `libsockdup.so`/`libsockdup.a` (built
//! by the `sockdup-ffi` package) and its headers `winsock2.h` and `ws2spi.h`.
//!
//! Every exported function has Windows' name, signature and return convention (`SOCKET_ERROR` /
//! `INVALID_SOCKET` and [`WSAGetLastError`](winsock::WSAGetLastError) for the API, `*lpErrno`
//! for the SPI). Rust programs that load C providers (the `sockdup` command, the test peer)
//! depend on this crate, so the process has one runtime, one catalog and one upcall table: the
//! `sockdup` crate's, which this crate uses and never duplicates.
//!
//! A `SOCKET` is a file descriptor for IFS chains; any socket descriptor of the process (from
//! `socket(2)`, `accept(2)`) is a valid `SOCKET`, served by the base provider of its family,
//! type and protocol. A value that is no socket is `WSAENOTSOCK`; a `NULL` or short buffer is
//! `WSAEFAULT`; a panic becomes `WSASYSCALLFAILURE` and never unwinds into C.
//!
//! All of the C interface's `unsafe` code is here (the raw pointers of the C calls, `dlopen`,
//! calls through C function tables), each block with its `// SAFETY:` note. Elsewhere the
//! workspace has three system calls that neither rustix nor nix wraps safely, in the `sockdup`
//! crate's `sys` floor (`F_GETOWN`, `F_SETOWN`, tokio's `AsyncFd` registration), and the
//! Python binding's borrow of a `fileno()`.

#![allow(unsafe_code)]

pub mod guard;
pub mod provider;
pub mod ptr;
mod sockets;
pub mod types;
pub mod winsock;

pub use types::*;
