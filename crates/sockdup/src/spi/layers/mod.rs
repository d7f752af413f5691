//! The built-in layered service providers, one module each, and the plumbing they share.
//!
//! - `trace` counts calls, bytes and errors per socket, remembers which catalog
//!   entries it was handed, and emits `tracing` events; read it with [`trace_reports`].
//! - `policy` refuses duplicates to targets outside its rules (`target_uids`, `target_exe`) and
//!   connections to addresses outside them (`connect`), with `WSAEACCES` naming the rule.
//! - `fault` injects errors (`fail.CALL = CODE`) and delays (`delay.CALL = MILLISECONDS`) into
//!   chosen calls.
//!
//! Settings come from the layer's `config` in the catalog file, parsed by the core into the
//! kind's typed struct ([`sockdup_core::catalog::settings`]): the same parser refuses a bad
//! setting at install, when the catalog file is loaded, and here when a layer is built.
//!
//! What every layer shares is in one place, `Layered`: a layer is IFS (it passes the lower
//! provider's descriptors through) or non-IFS (it hands out its own handles from the upcall
//! table and maps them to the lower ones), and it follows the propagation rule (the record
//! goes down unmodified to a next layer, as the base entry with the provider fields to the base
//! provider, and comes back up as the chain's entry). A layer kind only says what it does
//! before and after each call (`Hooks`).
//!
//! Adding a layer kind: its settings struct in `sockdup_core::catalog::settings` (with its
//! name in `LAYER_KINDS`), a module here whose type implements `LayerKind`, and one line in
//! `REGISTRY`.

mod fault;
mod layered;
mod policy;
mod trace;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;

use sockdup_core::catalog::{Layer, LayerSettings, ProviderCall};
use sockdup_core::error::Error;
use sockdup_core::wire::ProtocolInfo;

use super::Handle;

pub(crate) use layered::Layered;
pub use trace::{Counters, TraceReport, trace_reports};

/// What a call is about, for the layers whose rules look at it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Detail<'a> {
    /// Nothing beyond the call's name and socket.
    None,
    /// `connect` to this address.
    Connect(&'a SocketAddr),
    /// `duplicate` for this target process.
    Duplicate(u32),
}

/// One call as a layer's hooks see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// Which call.
    pub(crate) name: ProviderCall,
    /// The socket it is made on (this layer's handle), if any.
    pub(crate) socket: Option<Handle>,
    /// The record it hands this layer, if any.
    pub(crate) info: Option<&'a ProtocolInfo>,
    /// What it is about.
    pub(crate) detail: Detail<'a>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It succeeded.
    Done,
    /// It failed (this layer's hook refused it, or a provider below failed).
    Failed,
    /// It sent this many bytes.
    Sent(usize),
    /// It received this many bytes.
    Received(usize),
    /// It made a new socket: this layer's handle for it.
    Opened(Handle),
}

/// What a layer kind does around each call; the plumbing ([`Layered`]) does the rest.
pub(crate) trait Hooks: Send + Sync + fmt::Debug {
    /// Before the call goes down: an error stops it (the providers below never see it).
    fn before(&self, call: &Call<'_>) -> Result<(), Error> {
        let _ = call;
        Ok(())
    }

    /// After the call, whatever its outcome (also when [`before`](Self::before) refused it).
    fn after(&self, call: &Call<'_>, outcome: Outcome) {
        let _ = (call, outcome);
    }
}

/// A built-in layer kind: its typed settings, and how to build one from them.
pub(crate) trait LayerKind: Hooks + Sized + 'static {
    /// The settings it takes, with their parser; their `KIND` is the kind's name.
    type Settings: LayerSettings;

    /// One instance, for layer `spec` serving chain entry `chain_id`.
    fn new(spec: &Layer, chain_id: u32, settings: Self::Settings) -> Self;
}

/// Parses a layer's settings with its kind's parser and builds its hooks.
pub(crate) type Build = fn(spec: &Layer, chain_id: u32) -> Result<Box<dyn Hooks>, Error>;

/// A registry line: a kind's name, and a constructor that parses the settings and builds it.
pub(crate) struct Registered {
    /// The kind's name (`"trace"`, …), as in the catalog file.
    pub(crate) name: &'static str,
    /// Parses `spec`'s settings with the kind's parser and builds its hooks.
    pub(crate) build: Build,
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The registry line of layer kind `L`.
const fn register<L: LayerKind>() -> Registered {
    Registered {
        name: L::Settings::KIND,
        build: build::<L>,
    }
}

fn build<L: LayerKind>(spec: &Layer, chain_id: u32) -> Result<Box<dyn Hooks>, Error> {
    let settings = L::Settings::parse(&spec.config).map_err(|e| {
        e.context(format!(
            "catalog entry {} ({} layer {:?})",
            spec.id, spec.kind, spec.name
        ))
    })?;
    Ok(Box::new(L::new(spec, chain_id, settings)))
}

/// Every built-in layer kind, by name: adding one is a module and a line here.
pub(crate) const REGISTRY: &[Registered] = &[
    register::<trace::Trace>(),
    register::<policy::Policy>(),
    register::<fault::Fault>(),
];

/// The registry line of kind `name`.
pub(crate) fn registered(name: &str) -> Option<&'static Registered> {
    REGISTRY.iter().find(|r| r.name == name)
}
