//! The built-in layered service providers, one module each, and the plumbing they share.
//!
//! - `trace` counts calls, bytes and errors per socket, remembers which catalog
//!   entries it was handed, and emits `tracing` events; read it with [`trace_reports`].
//! - `policy` refuses duplicates to targets outside its rules (`target_uids`, `target_exe`) and
//!   connections to addresses outside them (`connect`), with `WSAEACCES` naming the rule.
//! - `fault` injects errors (`fail.CALL = CODE`) and delays (`delay.CALL = MILLISECONDS`) into
//!   chosen calls.
//!
//! Each kind's module owns its settings: a typed struct parsed from the layer's `config` in the
//! catalog file (`LayerSettings`). The core's catalog knows only the structure (ids, chains,
//! names); [`check_catalog`] checks every layer of a catalog against the registry (its kind is
//! registered, its settings parse), and it runs wherever a catalog is read or written
//! (`sockdup::load_catalog*`, `sockdup::save_catalog_to`, `sockdup::update_catalog_at`, the
//! dispatcher), so a bad setting is refused at install, when a hand-edited catalog file is
//! loaded, and again here when a layer is built: an unknown key or a bad value is
//! [`ErrorKind::InvalidLayerSetting`] naming the key and listing the valid ones.
//!
//! What every layer shares is in one place, `Layered`: a layer is IFS (it passes the lower
//! provider's descriptors through) or non-IFS (it hands out its own handles from the upcall
//! table and maps them to the lower ones), and it follows the propagation rule (the record
//! goes down unmodified to a next layer, as the base entry with the provider fields to the base
//! provider, and comes back up as the chain's entry). A layer kind only says what it does
//! before and after each call (`Hooks`).
//!
//! Adding a layer kind: one module here, holding its type (implementing `Hooks` and
//! `LayerKind`) and its settings struct (implementing `LayerSettings`, with its parser and
//! valid keys), and one line in `REGISTRY`. Nothing else changes: the catalog, the checks on
//! load and save, and `sockdup catalog install --help` (built from [`settings_help`]) follow
//! the registry.

mod fault;
mod layered;
mod policy;
mod trace;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use sockdup_core::catalog::{Catalog, Layer, ProviderCall};
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::wire::ProtocolInfo;

use super::Handle;

pub(crate) use layered::{Layered, keep_provider_fields};
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

/// A layer's settings as stored in the catalog: key to value.
pub(crate) type Config = BTreeMap<String, String>;

/// The settings of one layer kind, parsed from its `config`.
pub(crate) trait LayerSettings: Sized {
    /// The layer kind these settings belong to (`"trace"`, …), as in the catalog file.
    const KIND: &'static str;

    /// The valid keys, for messages: `"target_uids (uids, comma-separated), …"`.
    fn valid_keys() -> String;

    /// The keys and their values, short, for `--help`: `"target_uids=UID,...  …"`.
    fn usage() -> String;

    /// Parses a layer's `config`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidLayerSetting`] for an unknown key or a bad value, naming the key and
    /// listing the valid keys ([`unknown`], [`bad_value`]).
    fn parse(config: &Config) -> Result<Self, Error>;
}

/// The error for setting `key` of kind `S`: `why` it is refused, then the valid keys.
fn refuse<S: LayerSettings>(key: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidLayerSetting,
        format!(
            "layer setting {key:?} {why}; the valid keys of a {} layer are {}",
            S::KIND,
            S::valid_keys()
        ),
    )
}

/// The error for a key kind `S` does not take.
pub(crate) fn unknown<S: LayerSettings>(key: &str) -> Error {
    refuse::<S>(key, &format!("is not a setting of a {} layer", S::KIND))
}

/// The error for a bad `value` of `key` of kind `S`, which should be `want`.
pub(crate) fn bad_value<S: LayerSettings>(key: &str, value: &str, want: &str) -> Error {
    refuse::<S>(
        key,
        &format!("has the value {value:?}, which is not {want}"),
    )
}

/// A comma-separated list, without empty items.
pub(crate) fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
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

/// A registry line: a kind's name, its settings' help and check, and its constructor.
pub(crate) struct Registered {
    /// The kind's name (`"trace"`, …), as in the catalog file.
    pub(crate) name: &'static str,
    /// Its settings' keys and values, short, for `--help`.
    pub(crate) usage: fn() -> String,
    /// Parses a `config` with the kind's parser, keeping only the verdict.
    pub(crate) check: fn(&Config) -> Result<(), Error>,
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
        usage: L::Settings::usage,
        check: check::<L::Settings>,
        build: build::<L>,
    }
}

fn check<S: LayerSettings>(config: &Config) -> Result<(), Error> {
    S::parse(config).map(drop)
}

fn build<L: LayerKind>(spec: &Layer, chain_id: u32) -> Result<Box<dyn Hooks>, Error> {
    let settings = L::Settings::parse(&spec.config).map_err(|e| in_layer(spec, e))?;
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

/// The layer kinds this sockdup implements, in registry order: `["trace", "policy", "fault"]`.
pub fn kinds() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.name).collect()
}

/// The settings every kind takes, one kind a paragraph (`  fault   fail.CALL=…`), wrapped
/// for a terminal: what `sockdup catalog install --help` prints.
pub fn settings_help() -> String {
    const WIDTH: usize = 96;
    let pad = REGISTRY.iter().map(|r| r.name.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for r in REGISTRY {
        let mut line = format!("  {:<w$}", r.name, w = pad);
        let mut fresh = true;
        for word in (r.usage)().split(' ') {
            if !fresh && line.len() + 1 + word.len() > WIDTH {
                out.push_str(line.trim_end());
                out.push('\n');
                line = " ".repeat(pad + 2);
                fresh = true;
            }
            if !fresh {
                line.push(' ');
            }
            line.push_str(word);
            fresh = false;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The context of an error about layer `spec`: `catalog entry 1101 (fault layer "flaky")`.
fn in_layer(spec: &Layer, e: Error) -> Error {
    e.context(format!(
        "catalog entry {} ({} layer {:?})",
        spec.id, spec.kind, spec.name
    ))
}

/// The registry line of `spec`'s kind.
///
/// # Errors
/// [`ErrorKind::InvalidCatalog`] for a kind no module implements, listing those that are.
pub(crate) fn kind_of(spec: &Layer) -> Result<&'static Registered, Error> {
    registered(&spec.kind).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidCatalog,
            format!(
                "catalog entry {} (layer {:?}): there is no layer kind {:?}; the kinds are {}",
                spec.id,
                spec.name,
                spec.kind,
                kinds().join(", ")
            ),
        )
    })
}

/// Checks every layer of `catalog` against the registry: its kind is one of [`kinds`], and its
/// settings parse with that kind's parser. The core has checked the structure already
/// ([`Catalog::validate`]); every path that reads or writes a catalog calls this.
///
/// # Errors
/// [`ErrorKind::InvalidCatalog`] (`WSAEINVAL`) for a kind no module implements, listing those
/// that are; [`ErrorKind::InvalidLayerSetting`] (`WSAEINVAL`) for a setting the kind does not
/// take or a bad value, naming the entry and the key and listing the valid keys.
///
/// Provider libraries (kind `library`, see [`super::library`]) are checked for their one setting
/// (an absolute path) and for their place in chains; the file itself is checked at install
/// and loaded at first use.
pub fn check_catalog(catalog: &Catalog) -> Result<(), Error> {
    catalog.layers().iter().try_for_each(|spec| {
        if spec.kind == super::library::LIBRARY_KIND {
            return super::library::check_settings(spec);
        }
        (kind_of(spec)?.check)(&spec.config).map_err(|e| in_layer(spec, e))
    })?;
    super::library::check_catalog_for_libraries(catalog)
}
