//! Protocol chains between real processes: sockets created, duplicated and redeemed through
//! installed layers, and the propagation rule of the record through them.

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use sockdup::catalog::Catalog;
use util::{CatalogFile, Peer, PeerError};

fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Asserts a peer's error: its Winsock code and its kind (`ErrorKind::name()`).
#[track_caller]
fn assert_error(e: &PeerError, code: i32, kind: &str) {
    assert_eq!(e.code, code, "{e:?}");
    assert_eq!(e.kind, kind, "{e:?}");
}

fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

fn accept(l: &TcpListener) -> TcpStream {
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn read_some(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_policy_trace_base_chain_carries_the_record_both_ways() {
    let mut c = Catalog::builtin();
    let (trace, trace_chains) = c
        .install("trace", "trace", true, BTreeMap::new(), &[1001])
        .unwrap();
    let (policy, chains) = c
        .install(
            "policy",
            "policy",
            true,
            BTreeMap::new(),
            &[trace_chains[0]],
        )
        .unwrap();
    let chain = chains[0];
    let file = CatalogFile::new("ptb", &c);
    let mut source = file.peer();
    let mut target = file.peer();
    let (l, addr) = listener();

    // Socket creation picks the newest chain over TCP/IPv4.
    let out = source.ok(&format!("spi-tcp-connect {addr}"));
    let (s, rest) = out.split_once(' ').unwrap();
    assert!(rest.starts_with(&format!("{chain} ")), "{out}");
    let mut remote = accept(&l);

    let record = source.ok(&format!("spi-dup {s} {}", target.pid));
    let info: sockdup::ProtocolInfo = record.parse().unwrap();
    assert_eq!(
        info.catalog_entry_id, chain,
        "the user gets the chain's entry"
    );
    assert_eq!(info.protocol_chain.used(), [policy, trace, 1001]);
    assert_ne!(
        info.provider_reserved, 0,
        "the base provider's ticket is kept"
    );
    assert_eq!(info.service_flags3, target.pid);

    // The trace layer sits under policy: it must have been handed the chain's own record,
    // unmodified, for socket creation and for the duplicate.
    let source_traces = source.traces();
    assert_eq!(source_traces.len(), 1, "{source_traces:?}");
    assert_eq!(
        source_traces[0]["seen"],
        format!("{chain},{chain},{chain}"),
        "startup, socket, duplicate"
    );

    let out = target.ok(&format!("spi-redeem {record}"));
    let (t, rest) = out.split_once(' ').unwrap();
    assert!(rest.starts_with(&format!("{chain} ")), "{out}");
    let target_traces = target.traces();
    assert_eq!(
        target_traces[0]["seen"],
        format!("{chain},{chain}"),
        "startup, socket_from_info"
    );
    assert!(
        target_traces[0]["calls"].contains("socket_from_info:1"),
        "{target_traces:?}"
    );

    target.ok(&format!("spi-send {t} through-the-chain"));
    assert_eq!(read_some(&mut remote), "through-the-chain");
    remote.write_all(b"back-up-the-chain").unwrap();
    assert_eq!(target.ok(&format!("spi-recv {t}")), "back-up-the-chain");
    let target_traces = target.traces();
    assert_eq!(target_traces[0]["sent"], "17");
    assert_eq!(target_traces[0]["received"], "17");
}

#[test]
fn a_seven_deep_chain_works_end_to_end() {
    let mut c = Catalog::builtin();
    let mut top = 1001;
    for i in 0..6 {
        let kind = if i % 2 == 0 { "trace" } else { "fault" };
        top = c
            .install(kind, kind, true, BTreeMap::new(), &[top])
            .unwrap()
            .1[0];
    }
    assert_eq!(c.entry(top).unwrap().protocol_chain.len, 7);
    let file = CatalogFile::new("seven", &c);
    let mut source = file.peer();
    let mut target = file.peer();
    let (l, addr) = listener();
    let out = source.ok(&format!("spi-tcp-connect {addr}"));
    let s = out.split(' ').next().unwrap();
    let mut remote = accept(&l);
    let record = source.ok(&format!("spi-dup {s} {}", target.pid));
    let t = target.ok(&format!("spi-redeem {record}"));
    let t = t.split(' ').next().unwrap();
    target.ok(&format!("spi-send {t} seven-deep"));
    assert_eq!(read_some(&mut remote), "seven-deep");
    for report in target.traces() {
        assert!(
            report["seen"].split(',').all(|id| id == top.to_string()),
            "{report:?}"
        );
    }
}

#[test]
fn records_of_unknown_entries_and_broken_catalogs_are_einval() {
    let mut c = Catalog::builtin();
    c.install("trace", "trace", true, BTreeMap::new(), &[1001])
        .unwrap();
    let file = CatalogFile::new("unknown", &c);
    let mut source = file.peer();
    // The target has only the built-in entries: the chain's record names an entry it lacks.
    let mut bare_target = Peer::spawn_with_env(
        Some(""),
        &[("SOCKDUP_CATALOG", "/nonexistent/sockdup-catalog.json")],
    );
    let (_l, addr) = listener();
    let out = source.ok(&format!("spi-tcp-connect {addr}"));
    let s = out.split(' ').next().unwrap();
    let record = source.ok(&format!("spi-dup {s} {}", bare_target.pid));
    let e = bare_target.fails(&format!("spi-redeem {record}"));
    assert_error(&e, 10022, "unknown-catalog-entry");
    assert!(
        e.message.contains("not in this process's catalog"),
        "{}",
        e.message
    );
    let e = bare_target.fails(&format!("redeem {record}"));
    // socket_from_info routes by the entry too.
    assert_error(&e, 10022, "unknown-catalog-entry");

    // A layer missing from the catalog file: refused on load, naming the entry.
    let broken =
        std::env::temp_dir().join(format!("sockdup-chains-{}-broken.json", std::process::id()));
    std::fs::write(
        &broken,
        r#"{"version":1,"chains":[{"id":1102,"entries":[1101,1001]}]}"#,
    )
    .unwrap();
    let mut p = Peer::spawn_with_env(Some(""), &[("SOCKDUP_CATALOG", broken.to_str().unwrap())]);
    let e = p.fails(&format!("spi-tcp-connect {addr}"));
    assert_error(&e, 10022, "invalid-catalog");
    assert!(
        e.message.contains("catalog entry 1102") && e.message.contains("1101"),
        "{}",
        e.message
    );
    let _ = std::fs::remove_file(&broken);
}

#[test]
fn a_hand_edited_layer_setting_is_refused_when_a_process_loads_the_catalog() {
    let mut c = Catalog::builtin();
    c.install(
        "fault",
        "flaky",
        true,
        config(&[("fail.connect", "10050")]),
        &[1001],
    )
    .unwrap();
    let file = CatalogFile::new("bad-setting", &c);
    let text = std::fs::read_to_string(file.path()).unwrap();
    std::fs::write(
        file.path(),
        text.replace("\"fail.connect\"", "\"fail.conect\""),
    )
    .unwrap();
    let mut p = file.peer();
    let (_l, addr) = listener();
    let e = p.fails(&format!("spi-tcp-connect {addr}"));
    assert_error(&e, 10022, "invalid-layer-setting");
    assert!(
        e.message.contains("\"fail.conect\"")
            && e.message.contains("fail.CALL")
            && e.message.contains("delay.CALL"),
        "{}",
        e.message
    );
}

#[test]
fn the_policy_layer_refuses_with_the_rule() {
    let mut c = Catalog::builtin();
    c.install(
        "policy",
        "no-loopback",
        true,
        config(&[("connect", "10.0.0.0/8")]),
        &[1001],
    )
    .unwrap();
    let file = CatalogFile::new("policy-connect", &c);
    let mut p = file.peer();
    let (_l, addr) = listener();
    let e = p.fails(&format!("spi-tcp-connect {addr}"));
    assert_error(&e, 10013, "refused-by-layer");
    assert!(
        e.message.contains("rule connect=10.0.0.0/8"),
        "{}",
        e.message
    );

    let mut c = Catalog::builtin();
    c.install(
        "policy",
        "uid-4242-only",
        true,
        config(&[("target_uids", "4242")]),
        &[1001],
    )
    .unwrap();
    let file = CatalogFile::new("policy-uid", &c);
    let mut source = file.peer();
    let target = file.peer();
    let out = source.ok(&format!("spi-tcp-connect {addr}"));
    let s = out.split(' ').next().unwrap();
    let e = source.fails(&format!("spi-dup {s} {}", target.pid));
    assert_error(&e, 10013, "refused-by-layer");
    assert!(e.message.contains("rule target_uids=4242"), "{}", e.message);
}

#[test]
fn the_fault_layer_injects_errors_and_delays() {
    let mut c = Catalog::builtin();
    c.install(
        "fault",
        "flaky",
        true,
        config(&[("fail.send", "10055"), ("delay.connect", "200")]),
        &[1001],
    )
    .unwrap();
    let file = CatalogFile::new("fault", &c);
    let mut p = file.peer();
    let (_l, addr) = listener();
    let start = std::time::Instant::now();
    let out = p.ok(&format!("spi-tcp-connect {addr}"));
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "the connect delay was injected"
    );
    let s = out.split(' ').next().unwrap();
    let e = p.fails(&format!("spi-send {s} x"));
    assert_error(&e, 10055, "injected");
    assert!(
        e.message.contains("injected WSAENOBUFS into send"),
        "{}",
        e.message
    );
}

#[test]
fn a_non_ifs_layer_hands_out_its_own_handles() {
    let mut c = Catalog::builtin();
    let (_, chains) = c
        .install("trace", "wrapper", false, BTreeMap::new(), &[1001])
        .unwrap();
    assert_eq!(
        c.entry(chains[0]).unwrap().service_flags1 & sockdup::flags::XP1_IFS_HANDLES,
        0
    );
    let file = CatalogFile::new("nonifs", &c);
    let mut source = file.peer();
    let mut target = file.peer();
    let (l, addr) = listener();
    let out = source.ok(&format!("spi-tcp-connect {addr}"));
    let mut parts = out.split(' ');
    let s = parts.next().unwrap();
    let handle: u64 = parts.nth(1).unwrap().parse().unwrap();
    assert!(
        handle >= 1 << 32,
        "a non-IFS handle is not a descriptor: {handle}"
    );
    let mut remote = accept(&l);
    let record = source.ok(&format!("spi-dup {s} {}", target.pid));
    // Without the chain, a non-IFS socket has no descriptor to give.
    let e = target.fails(&format!("redeem {record}"));
    assert_error(&e, 10022, "no-descriptor");
    assert!(e.message.contains("non-IFS"), "{}", e.message);
    // The refusal came before anything was redeemed: the record still works through the chain.
    let t = target.ok(&format!("spi-redeem {record}"));
    let t = t.split(' ').next().unwrap();
    target.ok(&format!("spi-send {t} wrapped"));
    assert_eq!(read_some(&mut remote), "wrapped");
    target.ok(&format!("spi-close {t}"));
}

#[test]
fn addresses_convert_through_the_chain() {
    let mut c = Catalog::builtin();
    c.install("trace", "trace", true, BTreeMap::new(), &[1001])
        .unwrap();
    let file = CatalogFile::new("addr", &c);
    let mut p = file.peer();
    assert_eq!(p.ok("addr2str 127.0.0.1:8080"), "127.0.0.1:8080");
    assert_eq!(p.ok("str2addr 10.1.2.3:99"), "10.1.2.3:99");
    let e = p.fails("str2addr nonsense");
    assert_eq!(e.code, 10022);
    let report = &p.traces()[0];
    assert!(
        report["calls"].contains("address_to_string:1")
            && report["calls"].contains("string_to_address:2"),
        "{report:?}"
    );
}

#[test]
fn no_descriptor_or_handle_leaks_through_chains() {
    let mut c = Catalog::builtin();
    let (_, ifs) = c
        .install("trace", "ifs", true, BTreeMap::new(), &[1001])
        .unwrap();
    c.install("trace", "wrapper", false, BTreeMap::new(), &[ifs[0]])
        .unwrap();
    let file = CatalogFile::new("leaks", &c);
    let mut source = file.peer();
    let mut target = file.peer();
    let (l, addr) = listener();
    let out = source.ok(&format!("spi-tcp-connect {addr}"));
    let s = out.split(' ').next().unwrap();
    let _remote = accept(&l);
    let cycle = |source: &mut Peer, target: &mut Peer| {
        let record = source.ok(&format!("spi-dup {s} {}", target.pid));
        let t = target.ok(&format!("spi-redeem {record}"));
        target.ok(&format!("spi-close {}", t.split(' ').next().unwrap()));
    };
    cycle(&mut source, &mut target);
    let (ours, theirs) = (source.fdcount(), target.fdcount());
    for _ in 0..500 {
        cycle(&mut source, &mut target);
    }
    assert_eq!(source.fdcount(), ours, "the source leaked descriptors");
    assert_eq!(target.fdcount(), theirs, "the target leaked descriptors");
}

#[test]
fn the_policy_layer_checks_the_targets_executable() {
    let peer_exe = env!("CARGO_BIN_EXE_peer");
    let (_l, addr) = listener();
    for (rule, allowed) in [
        (peer_exe.to_owned(), true),
        ("/nonexistent/".to_owned(), false),
    ] {
        let mut c = Catalog::builtin();
        c.install(
            "policy",
            "exe",
            true,
            config(&[("target_exe", &rule)]),
            &[1001],
        )
        .unwrap();
        let file = CatalogFile::new(if allowed { "exe-ok" } else { "exe-no" }, &c);
        let mut source = file.peer();
        let target = file.peer();
        let out = source.ok(&format!("spi-tcp-connect {addr}"));
        let s = out.split(' ').next().unwrap();
        match source.cmd(&format!("spi-dup {s} {}", target.pid)) {
            Ok(_) => assert!(allowed, "{rule} should have refused"),
            Err(e) => {
                assert!(!allowed, "{rule} refused: {}", e.message);
                assert_error(&e, 10013, "refused-by-layer");
                assert!(
                    e.message.contains("rule target_exe=/nonexistent/"),
                    "{}",
                    e.message
                );
            }
        }
    }
}
