//! Handoff mode at scale: an [`Acceptor`] that owns listening sockets and hands every accepted
//! connection to one of N worker processes, and the [`Worker`] side that receives them.
//!
//! This is the seed's "typical use": one process establishes connections and hands them off to
//! processes responsible for the exchange. The workers are started from a command; each
//! announces its pid on its standard output; the acceptor duplicates connections to it in
//! batches with [`duplicate_sockets`](crate::duplicate_sockets) and sends the records on its
//! standard input; the worker redeems them and confirms. See the `proto` line protocol in the
//! source.

mod acceptor;
mod proto;
mod worker;

pub use acceptor::{Acceptor, Listener, Policy, ShutdownHandle, Summary};
pub use worker::{Connection, Stream, Worker};
