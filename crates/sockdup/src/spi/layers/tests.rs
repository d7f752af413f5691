//! Unit tests of the layers over a recording stand-in for the base provider: no I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sockdup_core::catalog::{Catalog, base_entry};
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::wire::ProtocolInfo;

use super::layered::keep_provider_fields;
use super::trace::registered_instances;
use super::{Config, Layered, REGISTRY, check_catalog, kinds, settings_help, trace_reports};
use crate::spi::{Event, EventSink, Handle, NetworkEvents, Provider, SockOpt, Upcall};
use crate::sync::lock;

/// A layer's `config` from key-value pairs.
pub(super) fn config(pairs: &[(&str, &str)]) -> Config {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Asserts an InvalidLayerSetting error whose message holds every needle.
#[track_caller]
pub(super) fn refused(e: Error, needles: &[&str]) {
    assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting, "{e}");
    assert_eq!(e.code(), sockdup_core::error::WSAEINVAL);
    for n in needles {
        assert!(e.message().contains(n), "{n:?} missing from: {e}");
    }
}

/// A base provider stand-in that records the records it is handed and answers
/// duplicates with a ticket.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(&'static str, ProtocolInfo)>>);

impl Recorder {
    fn saw(&self, call: &'static str, info: &ProtocolInfo) {
        lock(&self.0).push((call, info.clone()));
    }
}

impl Provider for Recorder {
    fn startup(&self, _: &Arc<Upcall>, info: &ProtocolInfo) -> Result<(), Error> {
        self.saw("startup", info);
        Ok(())
    }
    fn cleanup(&self) -> Result<(), Error> {
        Ok(())
    }
    fn socket(&self, _: i32, _: i32, _: i32, info: &ProtocolInfo) -> Result<Handle, Error> {
        self.saw("socket", info);
        Ok(Handle(7))
    }
    fn socket_from_info(&self, info: &ProtocolInfo) -> Result<Handle, Error> {
        self.saw("socket_from_info", info);
        Ok(Handle(8))
    }
    fn connect(&self, _: Handle, _: &SocketAddr) -> Result<(), Error> {
        Ok(())
    }
    fn bind(&self, _: Handle, _: &SocketAddr) -> Result<(), Error> {
        Ok(())
    }
    fn listen(&self, _: Handle, _: i32) -> Result<(), Error> {
        Ok(())
    }
    fn accept(&self, s: Handle) -> Result<Handle, Error> {
        Ok(s)
    }
    fn send(&self, _: Handle, data: &[u8]) -> Result<usize, Error> {
        Ok(data.len())
    }
    fn recv(&self, _: Handle, _: &mut [u8]) -> Result<usize, Error> {
        Ok(0)
    }
    fn close_socket(&self, _: Handle) -> Result<(), Error> {
        Ok(())
    }
    fn duplicate_socket(
        &self,
        _: Handle,
        pid: u32,
        info: &ProtocolInfo,
    ) -> Result<ProtocolInfo, Error> {
        self.saw("duplicate", info);
        Ok(ProtocolInfo {
            provider_reserved: 0xfeed,
            service_flags3: pid,
            service_flags4: 0xabc,
            ..info.clone()
        })
    }
    fn get_sock_opt(&self, _: Handle, _: SockOpt) -> Result<i64, Error> {
        Ok(0)
    }
    fn set_sock_opt(&self, _: Handle, _: SockOpt, _: i64) -> Result<(), Error> {
        Ok(())
    }
    fn event_select(&self, _: Handle, _: u32, _: &EventSink) -> Result<(), Error> {
        Ok(())
    }
    fn enum_network_events(&self, _: Handle, _: Option<&Event>) -> Result<NetworkEvents, Error> {
        Ok(NetworkEvents::default())
    }
    fn address_to_string(&self, addr: &SocketAddr, info: &ProtocolInfo) -> Result<String, Error> {
        self.saw("address_to_string", info);
        Ok(addr.to_string())
    }
    fn string_to_address(&self, text: &str, info: &ProtocolInfo) -> Result<SocketAddr, Error> {
        self.saw("string_to_address", info);
        text.parse()
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "bad"))
    }
}

/// Builds the providers of `chain` the way the dispatcher does, over a recorder.
fn stack(catalog: &Catalog, chain: u32, base: &Arc<Recorder>) -> Arc<dyn Provider> {
    let (layers, base_info) = catalog.resolve(chain).unwrap();
    let mut next: Arc<dyn Provider> = base.clone();
    let mut next_is_base = true;
    for layer in layers.iter().rev() {
        next = Arc::new(
            Layered::new(
                (*layer).clone(),
                chain,
                base_info.clone(),
                next,
                next_is_base,
            )
            .unwrap(),
        );
        next_is_base = false;
    }
    next
}

#[test]
fn the_propagation_rule_through_seven_entries() {
    let mut c = Catalog::builtin();
    let mut top = 1003;
    for i in 0..6 {
        top = c
            .install(
                ["trace", "policy", "fault"][i % 3],
                "l",
                i % 2 == 0,
                BTreeMap::new(),
                &[top],
            )
            .unwrap()
            .1[0];
    }
    let chain = c.entry(top).unwrap();
    assert_eq!(chain.protocol_chain.len, 7);
    let base = Arc::new(Recorder::default());
    let top_provider = stack(&c, top, &base);
    let upcall = Arc::new(Upcall::default());
    top_provider.startup(&upcall, &chain).unwrap();
    let s = top_provider.socket(10, 1, 0, &chain).unwrap();
    let record = top_provider.duplicate_socket(s, 4242, &chain).unwrap();
    // Up: the chain's own entry, with the base provider's fields kept.
    assert_eq!(record.catalog_entry_id, top);
    assert_eq!(record.protocol_chain, chain.protocol_chain);
    assert_eq!(
        (
            record.provider_reserved,
            record.service_flags3,
            record.service_flags4
        ),
        (0xfeed, 4242, 0xabc)
    );
    // Down, in the target: the base gets its own entry with the ticket.
    top_provider.socket_from_info(&record).unwrap();
    let addr: SocketAddr = "[::1]:80".parse().unwrap();
    top_provider.address_to_string(&addr, &chain).unwrap();
    top_provider.string_to_address("[::1]:80", &chain).unwrap();
    let seen = lock(&base.0).clone();
    let calls: Vec<&str> = seen.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        calls,
        [
            "startup",
            "socket",
            "duplicate",
            "socket_from_info",
            "address_to_string",
            "string_to_address"
        ]
    );
    let own = base_entry(1003).unwrap();
    for (call, info) in &seen {
        let mut expected = own.clone();
        keep_provider_fields(&mut expected, info);
        assert_eq!(info, &expected, "{call}: the base must get its own entry");
    }
    assert_eq!(
        seen[3].1.provider_reserved, 0xfeed,
        "socket_from_info carries the ticket down"
    );
    // Every trace instance in the stack was handed the chain's record, unmodified.
    for report in trace_reports().iter().filter(|r| r.chain_id == top) {
        assert!(
            report.entries_seen.iter().all(|&id| id == top),
            "{report:?}"
        );
        assert!(!report.entries_seen.is_empty());
    }
}

#[test]
fn non_ifs_layers_wrap_and_unwrap_handles() {
    let mut c = Catalog::builtin();
    let (_, chains) = c
        .install("trace", "wrap", false, BTreeMap::new(), &[1001])
        .unwrap();
    let base = Arc::new(Recorder::default());
    let p = stack(&c, chains[0], &base);
    let upcall = Arc::new(Upcall::default());
    let chain = c.entry(chains[0]).unwrap();
    p.startup(&upcall, &chain).unwrap();
    let s = p.socket(2, 1, 0, &chain).unwrap();
    assert!(!s.is_ifs());
    assert_eq!(
        upcall.query_socket_handle_context(s).unwrap(),
        7,
        "the context is the lower handle"
    );
    assert_eq!(upcall.owner(s), Some(chains[0] - 1));
    assert_eq!(p.send(s, b"abc").unwrap(), 3);
    p.close_socket(s).unwrap();
    assert_eq!(
        upcall.query_socket_handle_context(s).unwrap_err().code(),
        10038
    );
}

#[test]
fn the_registry_names_each_kind_once_and_each_takes_empty_settings() {
    assert_eq!(kinds(), ["trace", "policy", "fault"]);
    for (i, r) in REGISTRY.iter().enumerate() {
        assert!(
            REGISTRY[..i].iter().all(|o| o.name != r.name),
            "{} twice",
            r.name
        );
        (r.check)(&Config::new()).unwrap();
    }
    let help = settings_help();
    for r in REGISTRY {
        assert!(help.contains(&format!("  {} ", r.name)), "{help}");
    }
    assert!(help.lines().all(|l| l.len() <= 96), "{help}");
    assert!(
        help.contains("connect=") && help.contains("string_to_address"),
        "{help}"
    );
}

#[test]
fn check_catalog_checks_every_layer_against_the_registry() {
    let mut c = Catalog::builtin();
    check_catalog(&c).unwrap();
    for kind in kinds() {
        c.install(kind, kind, true, Config::new(), &[1001]).unwrap();
    }
    check_catalog(&c).unwrap();
    // The core keeps kinds and settings as given: the registry refuses them.
    let mut bad = c.clone();
    bad.install(
        "fault",
        "flaky",
        true,
        config(&[("fail.conect", "10050")]),
        &[1002],
    )
    .unwrap();
    let e = check_catalog(&bad).unwrap_err();
    refused(
        e,
        &[
            "(fault layer \"flaky\")",
            "\"fail.conect\"",
            "fail.CALL",
            "delay.CALL",
            "socket_from_info",
        ],
    );
    let mut bad = c.clone();
    let (magic, _) = bad
        .install("magic", "m", true, Config::new(), &[1002])
        .unwrap();
    let e = check_catalog(&bad).unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::InvalidCatalog, 10022));
    assert!(
        e.message().contains(&format!("catalog entry {magic}"))
            && e.message().contains("no layer kind \"magic\"")
            && e.message().contains("trace, policy, fault"),
        "{e}"
    );
    // A hand-edited file: the core reads it, the registry refuses it, naming the key.
    let edited = r#"{"version":1,"layers":[{"id":1101,"kind":"fault","name":"f","ifs":true,"provider_id":"5d0c4d75-7b3e-4c1a-9e51-736f636b6475","config":{"fail.conect":"10050"}}],"chains":[{"id":1102,"entries":[1101,1001]}]}"#;
    let e = check_catalog(&Catalog::from_json(edited).unwrap()).unwrap_err();
    refused(e, &["catalog entry 1101", "\"fail.conect\"", "delay.CALL"]);
    let fixed = edited.replace("fail.conect", "fail.connect");
    check_catalog(&Catalog::from_json(&fixed).unwrap()).unwrap();
}

/// A catalog whose next installed ids start at `first`: tests running at the same time share
/// the process's trace reports, and tell theirs apart by chain id.
fn catalog_from(first: u32) -> Catalog {
    let pad = first - 2;
    Catalog::from_json(&format!(
        r#"{{"version":1,"layers":[{{"id":{pad},"kind":"trace","name":"pad","ifs":true,"provider_id":"5d0c4d75-7b3e-4c1a-9e51-736f636b6475"}}],"chains":[{{"id":{},"entries":[{pad},1007]}}]}}"#,
        pad + 1
    ))
    .unwrap()
}

/// A layer of `kind` with `config` over the recorder, in a catalog whose ids start at `first`;
/// its chain's entry.
fn one_layer(
    first: u32,
    kind: &str,
    ifs: bool,
    config: &[(&str, &str)],
) -> (Arc<dyn Provider>, ProtocolInfo, Arc<Upcall>) {
    let mut c = catalog_from(first);
    let config = config
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let (_, chains) = c.install(kind, kind, ifs, config, &[1001]).unwrap();
    let p = stack(&c, chains[0], &Arc::new(Recorder::default()));
    let upcall = Arc::new(Upcall::default());
    let chain = c.entry(chains[0]).unwrap();
    p.startup(&upcall, &chain).unwrap();
    (p, chain, upcall)
}

#[test]
fn policy_refusals_are_refused_by_layer_and_name_the_rule() {
    let (p, chain, _) = one_layer(3000, "policy", true, &[("connect", "10.0.0.0/8")]);
    let s = p.socket(2, 1, 0, &chain).unwrap();
    p.connect(s, &"10.1.2.3:80".parse().unwrap()).unwrap();
    let e = p.connect(s, &"127.0.0.1:80".parse().unwrap()).unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::RefusedByLayer, 10013));
    assert!(e.message().contains("rule connect=10.0.0.0/8"), "{e}");
    let (p, chain, _) = one_layer(3100, "policy", true, &[("target_uids", "4242")]);
    let s = p.socket(2, 1, 0, &chain).unwrap();
    let e = p
        .duplicate_socket(s, crate::sys::getpid(), &chain)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RefusedByLayer);
    assert!(e.message().contains("rule target_uids=4242"), "{e}");
}

#[test]
fn fault_injections_carry_the_configured_code() {
    let (p, chain, _) = one_layer(3200, "fault", true, &[("fail.send", "10055")]);
    let s = p.socket(2, 1, 0, &chain).unwrap();
    let e = p.send(s, b"x").unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Injected, 10055));
    assert!(e.message().contains("injected WSAENOBUFS into send"), "{e}");
    assert_eq!(p.recv(s, &mut [0; 4]).unwrap(), 0, "other calls pass");
}

#[test]
fn a_layer_with_a_setting_its_kind_does_not_take_is_not_built() {
    let mut c = catalog_from(6000);
    c.install("fault", "f", true, BTreeMap::new(), &[1001])
        .unwrap();
    let mut spec = c.layers()[1].clone();
    spec.config
        .insert("fail.conect".to_owned(), "10050".to_owned());
    let base: Arc<dyn Provider> = Arc::new(Recorder::default());
    let e = Layered::new(spec, 1102, base_entry(1001).unwrap(), base, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting);
    assert!(e.message().contains("fail.conect"), "{e}");
}

/// The reports of the trace instances serving chain `chain`.
fn reports_of(chain: u32) -> Vec<super::TraceReport> {
    trace_reports()
        .into_iter()
        .filter(|r| r.chain_id == chain)
        .collect()
}

#[test]
fn trace_memory_stays_bounded_over_many_sockets() {
    // A non-IFS trace (a new handle per socket) under an IFS one (the handles it is given).
    let mut c = catalog_from(4000);
    let (_, lower) = c
        .install("trace", "own handles", false, BTreeMap::new(), &[1001])
        .unwrap();
    let (_, top) = c
        .install("trace", "passes", true, BTreeMap::new(), &[lower[0]])
        .unwrap();
    let chain_id = top[0];
    let p = stack(&c, chain_id, &Arc::new(Recorder::default()));
    let upcall = Arc::new(Upcall::default());
    let chain = c.entry(chain_id).unwrap();
    p.startup(&upcall, &chain).unwrap();
    const SOCKETS: u64 = 100_000;
    let mut handles = std::collections::HashSet::new();
    for _ in 0..SOCKETS {
        let s = p.socket(2, 1, 0, &chain).unwrap();
        handles.insert(s);
        assert_eq!(p.send(s, b"abc").unwrap(), 3);
        p.close_socket(s).unwrap();
    }
    assert_eq!(
        handles.len() as u64,
        SOCKETS,
        "every socket had its own handle"
    );
    let reports = reports_of(chain_id);
    assert_eq!(
        reports.len(),
        2,
        "one report per layer instance: {reports:?}"
    );
    for r in &reports {
        assert!(r.sockets.is_empty(), "closed sockets leave no counters");
        assert_eq!(r.totals.calls["socket"], SOCKETS);
        assert_eq!(r.totals.calls["close"], SOCKETS);
        assert_eq!(r.totals.bytes_sent, 3 * SOCKETS, "totals stay");
        assert!(r.entries_seen.len() <= 256);
    }
    assert!(
        registered_instances() < 100,
        "the instance list does not grow per socket: {}",
        registered_instances()
    );
}

#[test]
fn instances_of_dropped_stacks_do_not_pile_up() {
    let mut c = catalog_from(5000);
    let (_, chains) = c
        .install("trace", "t", true, BTreeMap::new(), &[1002])
        .unwrap();
    for _ in 0..1000 {
        let p = stack(&c, chains[0], &Arc::new(Recorder::default()));
        drop(p);
    }
    assert!(
        registered_instances() < 100,
        "dead instances are pruned: {}",
        registered_instances()
    );
    assert!(reports_of(chains[0]).is_empty());
}

#[test]
fn a_socket_number_that_comes_back_starts_afresh() {
    // The recorder gives every new socket descriptor 7, as the kernel reuses the number of a
    // descriptor that left the chain without a close (taken out with `into_fd`).
    let (p, chain, _) = one_layer(3300, "trace", true, &[]);
    let s = p.socket(2, 1, 0, &chain).unwrap();
    p.send(s, b"abcd").unwrap();
    let counted = || {
        reports_of(chain.catalog_entry_id)
            .iter()
            .map(|r| r.sockets.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(counted()[0][&7].bytes_sent, 4);
    let again = p.socket(2, 1, 0, &chain).unwrap();
    assert_eq!(again, s);
    assert!(counted()[0].is_empty(), "{:?}", counted());
    assert_eq!(reports_of(chain.catalog_entry_id)[0].totals.bytes_sent, 4);
}
