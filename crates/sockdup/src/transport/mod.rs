//! The transport between processes: this process's inbox thread (the target side), and the pool
//! of connections to other processes' inboxes (the source side).
//!
//! Below it is only `sys` (the syscalls) and the core (the ticket table, the message codec, the
//! uid policy); above it the runtime owns one of each per run.

mod client;
mod inbox;

pub(crate) use client::Pool;
pub(crate) use inbox::InboxThread;
