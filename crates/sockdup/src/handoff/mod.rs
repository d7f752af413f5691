//! Handoff mode at scale: an [`Acceptor`] that owns listening sockets and hands every accepted
//! connection to one of N worker processes, and the [`Worker`] side that receives them.
//!
//! This is the seed's "typical use": one process establishes connections and hands them off to
//! processes responsible for the exchange. The workers are started from a command; each
//! announces its pid on its standard output; the acceptor duplicates connections to it in
//! batches with [`duplicate_sockets`](crate::duplicate_sockets) and sends the records on its
//! standard input; the worker redeems them and confirms. The line protocol and its codec are
//! [`sockdup_core::proto::handoff`].
//!
//! The acceptor's decisions (which worker, backpressure, re-dispatch, restarts, timeouts, the
//! drain) are an I/O-free state machine (`dispatch.rs`), unit-tested without processes; the
//! acceptor is the epoll, pipe and process driver around it.

mod acceptor;
#[cfg(feature = "tokio")]
mod async_worker;
mod dispatch;
mod worker;

pub use acceptor::{Acceptor, Listener, ShutdownHandle};
#[cfg(feature = "tokio")]
pub use async_worker::{AsyncConnection, AsyncIncoming, AsyncStream};
pub use dispatch::{Policy, Summary};
pub use worker::{Batch, Connection, Incoming, NonblockingIncoming, Stream, Worker};
