//! Windows Sockets 2 socket duplication for Linux.
//!
//! A source process turns a socket into a 628-byte record bound to one target process
//! ([`duplicate_socket`], `WSPDuplicateSocket`); the record travels through any IPC (a pipe, a
//! file, an environment variable, an HTTP body; [`ProtocolInfo`] has a one-line text form); the
//! target turns it into its own descriptor of the same socket ([`socket_from_info`], `WSPSocket`
//! with a protocol info), once, and nobody else can.
//!
//! ```no_run
//! # fn main() -> Result<(), sockdup::Error> {
//! // In the source, with the target's pid learned over some IPC:
//! let _guard = sockdup::startup()?;
//! # let target_pid = 1234;
//! let stream = std::net::TcpStream::connect("127.0.0.1:8080").expect("connect");
//! let record = sockdup::duplicate_socket(&stream, target_pid)?;
//! println!("{record}"); // one line: send it to the target any way you like
//! drop(stream); // the target already holds its descriptor
//!
//! // In the target:
//! let _guard = sockdup::startup()?;
//! # let line = String::new();
//! let record: sockdup::ProtocolInfo = line.parse()?;
//! let fd = sockdup::socket_from_info(&record)?;
//! let stream = std::net::TcpStream::from(fd);
//! # drop(stream); Ok(()) }
//! ```
//!
//! # How it works
//!
//! [`startup`] opens this process's *inbox*: an `AF_UNIX` `SOCK_SEQPACKET` socket at an address
//! derived from the pid ([`InboxAddress`]), served by one background thread. [`duplicate_socket`]
//! connects to the target's inbox (and keeps the connection), checks with `SO_PEERCRED` and a
//! pidfd that the target itself listens there, sends the descriptor with `SCM_RIGHTS`, and waits
//! for the ticket the inbox assigns. The record is the base catalog entry for the socket's real
//! family, type and protocol, with the target's pid in `dwServiceFlags3`, the inbox run's nonce in
//! `dwServiceFlags4` and the ticket in `dwProviderReserved`. [`socket_from_info`] takes the
//! ticket's descriptor out of this process's table, once. A duplicate nobody redeems is closed
//! when its time-to-live ends, or when the target stops sockdup or exits.
//!
//! All descriptors of a duplicated socket share one socket: options, non-blocking mode, data;
//! it stays open until the last one closes, in whatever process. Every descriptor sockdup creates
//! is close-on-exec.
//!
//! # Async use
//!
//! With the `tokio` feature (off by default), the module `sockdup::tokio` offers duplication as futures that never block a runtime thread, and `FromInfo`, which
//! redeems a record straight into a `tokio::net` socket type.
//!
//! # Errors
//!
//! Every function returns [`Error`]: [`Error::kind`] names the reason ([`ErrorKind`]: one variant
//! per reason, each documented with its Winsock code), [`Error::code`] is the Winsock number, and
//! the message ([`Display`](std::fmt::Display)) says what went wrong and what to do. The README's
//! error table is generated from [`ErrorKind`] ([`error::markdown_table`]).

mod api;
mod catalog_api;
mod catalog_file;
pub mod handoff;
pub mod spi;
mod startup;
mod sync;
mod sys;
#[cfg(feature = "tokio")]
pub mod tokio;
mod transfer;
mod transport;
pub mod upgrade;

pub use api::{
    duplicate_socket, duplicate_sockets, inbox_address, pending, socket_from_info,
    sockets_from_info,
};
pub use catalog_api::{load_catalog, load_catalog_from, save_catalog_to, update_catalog_at};
pub use catalog_file::catalog_path;
pub use sockdup_core::error::{self, Error, ErrorKind};
pub use sockdup_core::wire::{self, Guid, ProtocolChain, ProtocolInfo};
pub use sockdup_core::{catalog, flags};
pub use startup::{Allow, CallerInbox, Options, Startup, startup};
pub use sys::{InboxAddress, is_cloexec};
