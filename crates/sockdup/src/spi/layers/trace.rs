//! The `trace` layer: counts calls, bytes and errors per open socket and in total, remembers
//! which catalog entries it was handed, and emits a `tracing` event per call.
//!
//! Memory stays bounded however many sockets come and go: a socket's counters go when it
//! closes (its counts live on in the totals), a new socket that gets the number of one that
//! left without a close (`Socket::into_fd`) starts afresh, and the process-wide list of
//! instances ([`trace_reports`]) holds weak references, pruned whenever an instance is added
//! or the list is read, so the instances of a dropped dispatcher do not pile up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use sockdup_core::catalog::{Layer, ProviderCall};
use sockdup_core::error::Error;

use super::{Call, Config, Hooks, LayerKind, LayerSettings, Outcome, unknown};
use crate::spi::Handle;
use crate::sync::lock;

/// The settings of a `trace` layer: it has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TraceSettings {}

impl LayerSettings for TraceSettings {
    const KIND: &'static str = "trace";

    fn valid_keys() -> String {
        "none (a trace layer takes no settings)".to_owned()
    }

    fn usage() -> String {
        "none".to_owned()
    }

    fn parse(config: &Config) -> Result<Self, Error> {
        match config.keys().next() {
            Some(key) => Err(unknown::<Self>(key)),
            None => Ok(Self {}),
        }
    }
}

/// Counters of one socket, or of a whole layer instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls by name (`"send"`, `"duplicate"`, …).
    pub calls: BTreeMap<&'static str, u64>,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Calls that failed.
    pub errors: u64,
}

impl Counters {
    fn count(&mut self, call: ProviderCall, outcome: Outcome) {
        *self.calls.entry(call.name()).or_default() += 1;
        match outcome {
            Outcome::Failed => self.errors += 1,
            Outcome::Sent(n) => self.bytes_sent += n as u64,
            Outcome::Received(n) => self.bytes_received += n as u64,
            Outcome::Done | Outcome::Opened(_) => {}
        }
    }
}

/// What one `trace` layer instance saw in this process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceReport {
    /// The layer's own catalog entry id.
    pub layer_id: u32,
    /// The chain entry this instance serves.
    pub chain_id: u32,
    /// Totals over every socket.
    pub totals: Counters,
    /// Per open socket, by this layer's handle number (a socket's entry goes when it closes;
    /// its counts stay in `totals`).
    pub sockets: BTreeMap<u64, Counters>,
    /// `dwCatalogEntryId` of every record handed to this layer, in order (the last 256).
    pub entries_seen: Vec<u32>,
}

/// How many entries `entries_seen` keeps.
const ENTRIES_KEPT: usize = 256;

/// Every live `trace` instance of this process; dead ones are pruned on each add and read.
static TRACES: Mutex<Vec<Weak<Mutex<TraceReport>>>> = Mutex::new(Vec::new());

/// What every live `trace` layer instance of this process has counted so far (the instances of
/// a dispatcher that is gone, after the last `Startup` guard dropped, are gone too).
pub fn trace_reports() -> Vec<TraceReport> {
    let mut traces = lock(&TRACES);
    traces.retain(|t| t.strong_count() > 0);
    traces
        .iter()
        .filter_map(Weak::upgrade)
        .map(|t| lock(&t).clone())
        .collect()
}

/// How many instances the process-wide list holds, live or not yet pruned.
#[cfg(test)]
pub(super) fn registered_instances() -> usize {
    lock(&TRACES).len()
}

/// One `trace` layer instance.
#[derive(Debug)]
pub(crate) struct Trace {
    report: Arc<Mutex<TraceReport>>,
}

impl LayerKind for Trace {
    type Settings = TraceSettings;

    fn new(spec: &Layer, chain_id: u32, _: TraceSettings) -> Self {
        let report = Arc::new(Mutex::new(TraceReport {
            layer_id: spec.id,
            chain_id,
            ..TraceReport::default()
        }));
        let mut traces = lock(&TRACES);
        traces.retain(|t| t.strong_count() > 0);
        traces.push(Arc::downgrade(&report));
        Self { report }
    }
}

impl Hooks for Trace {
    // Everything is counted after the call, under one lock per call.
    fn after(&self, call: &Call<'_>, outcome: Outcome) {
        let mut r = lock(&self.report);
        if let Some(info) = call.info {
            if r.entries_seen.len() == ENTRIES_KEPT {
                r.entries_seen.remove(0);
            }
            r.entries_seen.push(info.catalog_entry_id);
        }
        r.totals.count(call.name, outcome);
        if let Outcome::Opened(new) = outcome {
            // A socket that left without a close (its descriptor taken out) had this number:
            // the new socket starts with no counts of its own.
            r.sockets.remove(&new.raw());
        }
        if let Some(s) = call.socket {
            if call.name == ProviderCall::Close {
                // A closed socket's counters live on in the totals only, so a long-running
                // process does not collect one entry per socket it ever had.
                r.sockets.remove(&s.raw());
            } else {
                r.sockets
                    .entry(s.raw())
                    .or_default()
                    .count(call.name, outcome);
            }
        }
        tracing::debug!(
            layer = r.layer_id,
            chain = r.chain_id,
            call = call.name.name(),
            socket = call.socket.map(Handle::raw),
            failed = matches!(outcome, Outcome::Failed),
            "sockdup trace"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spi::layers::tests::{config, refused};

    #[test]
    fn trace_takes_no_settings() {
        assert_eq!(
            TraceSettings::parse(&Config::new()).unwrap(),
            TraceSettings {}
        );
        refused(
            TraceSettings::parse(&config(&[("verbose", "1")])).unwrap_err(),
            &["\"verbose\"", "trace layer takes no settings"],
        );
    }
}

#[cfg(test)]
mod bounded {
    use super::*;
    use crate::spi::layers::Detail;

    fn on(name: ProviderCall, socket: Option<Handle>) -> Call<'static> {
        Call {
            name,
            socket,
            info: None,
            detail: Detail::None,
        }
    }

    /// A million sockets through one trace instance, in the order a chain calls it (opened,
    /// used, closed; every 16th leaves by `into_fd`, without a close, and its number comes back
    /// for a later socket; up to 64 open at once): the per-socket state never holds more
    /// than the open sockets, and the totals hold everything. The hooks are called directly, so
    /// the million costs seconds; `chains.rs` drives the same layer through real chains.
    #[test]
    fn a_million_sockets_leave_no_per_socket_state_behind() {
        const SOCKETS: u64 = 1_000_000;
        const OPEN: u64 = 64;
        let spec = Layer {
            id: 1101,
            kind: "trace".into(),
            name: "t".into(),
            ifs: true,
            provider_id: sockdup_core::wire::Guid::default(),
            config: Config::new(),
        };
        let t = Trace::new(&spec, 1102, TraceSettings {});
        let handle = |i: u64| Handle(1000 + i % OPEN);
        let mut most = 0;
        for i in 0..SOCKETS {
            let h = handle(i);
            // A socket that left without a close had this number OPEN sockets ago.
            t.after(&on(ProviderCall::Socket, None), Outcome::Opened(h));
            t.after(&on(ProviderCall::Send, Some(h)), Outcome::Sent(10));
            if i % 16 != 0 {
                t.after(&on(ProviderCall::Close, Some(h)), Outcome::Done);
            }
            most = most.max(lock(&t.report).sockets.len());
        }
        let r = lock(&t.report);
        assert!(most <= OPEN as usize, "{most} sockets' counters at once");
        assert!(r.sockets.len() <= OPEN as usize, "{}", r.sockets.len());
        assert_eq!(r.totals.calls["socket"], SOCKETS);
        assert_eq!(r.totals.bytes_sent, 10 * SOCKETS);
        assert!(r.entries_seen.len() <= ENTRIES_KEPT);
    }
}
