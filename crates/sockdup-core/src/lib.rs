//! The I/O-free core of sockdup.
//!
//! Everything here is pure logic that takes time and bytes as arguments and never touches the
//! operating system, so it is tested on one thread without sockets (the smoltcp / quinn split):
//!
//! - [`wire`]: the 628-byte `WSAPROTOCOL_INFOW` record ([`ProtocolInfo`]), its GUID and protocol
//!   chain, and its one-line text form.
//! - [`error`]: the one [`Error`] type, whose [`Error::code`] is the Winsock error number.
//! - [`flags`]: the `XP1_*` and `PFL_*` constants and their names.
//! - [`allow`]: who may push into an inbox ([`Allow`](allow::Allow)), on kernel-verified uids.
//! - [`catalog`]: the base provider's built-in catalog entries.
//! - [`inbox`]: the per-process table of duplicates waiting to be redeemed (tickets, expiry,
//!   capacity), generic over the descriptor type.
//! - [`sockopt`]: [`SockOpt`](sockopt::SockOpt) and the `FD_*` network event bits.
//! - [`proto`]: the codecs of the line protocols (handoff, takeover, demo).
//! - [`message`]: the codec of the inbox's request and reply messages.
//! - [`line`](mod@line): the bounded line reader every line protocol uses, and their message trait.
//!
//! The `sockdup` crate joins this core to Linux; users depend on that crate, which re-exports the
//! types defined here.
#![forbid(unsafe_code)]

pub mod allow;
pub mod catalog;
pub mod error;
pub mod flags;
pub mod inbox;
pub mod line;
pub mod message;
pub mod proto;
pub mod sockopt;
pub mod wire;

pub use error::{Error, ErrorKind};
pub use wire::{Guid, ProtocolChain, ProtocolInfo};
