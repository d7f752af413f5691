//! The codecs of sockdup's line protocols: typed messages that implement
//! [`LineMessage`](crate::line::LineMessage), read with the one bounded reader of [`crate::line`].
//!
//! - [`handoff`]: acceptor and workers (`sockdup serve`).
//! - [`upgrade`]: the takeover of published listeners (`sockdup exec`).
//! - [`demo`]: the demo's source and target.

pub mod demo;
pub mod handoff;
pub mod upgrade;
