//! Provider libraries (layers in C, loaded with dlopen) used by Rust processes through
//! `sockdup::spi::Socket`: the counting layer of `examples/c/counting_lsp.c` over TCP/IPv4
//! between two `peer` processes, its view of each record (the propagation rule), one runtime
//! per process, and broken libraries refused at use with nothing left loaded.

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use sockdup::catalog::Catalog;
use sockdup::spi::library::{LIBRARY_KIND, PATH_KEY};
use sockdup_tests::cprov::{self, calls};
use util::{CatalogFile, Peer, TempDir};

/// A catalog with the provider library at `path` installed over TCP/IPv4: (catalog, layer id,
/// chain id).
fn over_tcp(path: &Path) -> (Catalog, u32, u32) {
    let mut c = Catalog::builtin();
    let config = BTreeMap::from([(PATH_KEY.to_owned(), path.to_str().unwrap().to_owned())]);
    let (layer, chains) = c
        .install(LIBRARY_KIND, "counting", true, config, &[1001])
        .unwrap();
    (c, layer, chains[0])
}

fn peer(file: &CatalogFile, log: &Path) -> Peer {
    let [(k, v)] = file.env();
    Peer::spawn_with_env(
        Some(""),
        &[(k, v), ("COUNTING_LSP_LOG", log.to_str().unwrap())],
    )
}

/// The files mapped into process `pid`.
fn maps(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default()
}

#[test]
fn the_c_counting_layer_carries_a_tcp_socket_between_rust_processes() {
    let dir = TempDir::new("counting");
    let lsp = cprov::counting_lsp(dir.path());
    counting_between_peers(&dir, &lsp);
}

/// The same layer linked with `-lsockdup`: loading it into the peer (which holds sockdup
/// itself) loads a second copy of libsockdup's code; the layer's WSC calls bind to the peer's
/// exports and the copy's WSPStartup forwards to the peer's, so the duplicate still lands in
/// the peer's one runtime (its inbox, its ticket table, its catalog).
#[test]
fn a_c_layer_linked_with_libsockdup_still_reaches_the_one_runtime_of_a_rust_process() {
    let dir = TempDir::new("counting-linked");
    let lsp = cprov::counting_lsp_linked(dir.path());
    counting_between_peers(&dir, &lsp);
}

fn counting_between_peers(dir: &TempDir, lsp: &Path) {
    let libsockdup = cprov::libsockdup();
    let lsp = lsp.to_path_buf();
    let (catalog, layer, chain) = over_tcp(&lsp);
    let file = CatalogFile::new("counting-cat", &catalog);
    let (source_log, target_log) = (dir.path().join("source.log"), dir.path().join("target.log"));
    let mut source = peer(&file, &source_log);
    let mut target = peer(&file, &target_log);

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let out = source.ok(&format!("spi-tcp-connect {addr}"));
    let (s, rest) = out.split_once(' ').unwrap();
    assert!(
        rest.starts_with(&format!("{chain} ")),
        "the chain makes the socket: {out}"
    );
    let (mut remote, _) = l.accept().unwrap();
    remote
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let record = source.ok(&format!("spi-dup {s} {}", target.pid));
    let info: sockdup::ProtocolInfo = record.parse().unwrap();
    assert_eq!(
        info.catalog_entry_id, chain,
        "the user gets the chain's entry"
    );
    assert_eq!(info.protocol_chain.used(), [layer, 1001]);
    assert_ne!(
        info.provider_reserved, 0,
        "the base provider's ticket is kept"
    );
    assert_eq!(info.service_flags3, target.pid, "and its target");

    // Counted once the source's connection to the target's inbox is there (it stays), with
    // the pushed descriptor waiting in the target's table.
    let target_fds = target.fdcount();
    let out = target.ok(&format!("spi-redeem {record}"));
    let (t, rest) = out.split_once(' ').unwrap();
    assert!(rest.starts_with(&format!("{chain} ")), "{out}");
    source.ok(&format!("spi-close {s}"));
    assert_eq!(
        target.ok(&format!("spi-send {t} through the C layer")),
        "19"
    );
    let mut buf = [0u8; 64];
    let n = remote.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"through the C layer");
    remote.write_all(b"back").unwrap();
    assert_eq!(target.ok(&format!("spi-recv {t}")), "back");
    target.ok(&format!("spi-close {t}"));

    // The source: started for the chain (handed the chain's entry), it started the base
    // provider with the base's own entry; its socket and its duplicate went down as the base
    // entry and the duplicate came back up as the chain's entry with the base's fields.
    let started = calls(&source_log, "WSPStartup");
    assert_eq!(started.len(), 1, "{started:?}");
    let st = &started[0];
    assert_eq!(st["in"], chain.to_string());
    assert_eq!(st["in_chain"], "2");
    assert_eq!(st["own"], layer.to_string(), "it found itself in the chain");
    assert_eq!(
        (st["next"].as_str(), st["next_base"].as_str()),
        ("1001", "1")
    );
    assert_eq!(
        (st["down"].as_str(), st["down_chain"].as_str()),
        ("1001", "1")
    );
    assert_eq!(st["error"], "0");
    // One runtime: the base provider it loaded is this build's libsockdup.so, whose WSPStartup
    // forwarded to the peer's own (else the ticket below would not be in the peer's inbox).
    assert_eq!(
        Path::new(&st["below"]),
        std::fs::canonicalize(&libsockdup).unwrap()
    );
    assert!(
        maps(source.pid).contains("libsockdup.so"),
        "the copy was loaded"
    );
    let sockets = calls(&source_log, "WSPSocket");
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    assert_eq!(sockets[0]["af"], "2", "a new socket: the family");
    assert_eq!(sockets[0]["in"], chain.to_string());
    assert_eq!(
        (
            sockets[0]["down"].as_str(),
            sockets[0]["down_chain"].as_str()
        ),
        ("1001", "1")
    );
    let dups = calls(&source_log, "WSPDuplicateSocket");
    assert_eq!(dups.len(), 1, "{dups:?}");
    let d = &dups[0];
    assert_eq!(d["count"], "1");
    assert_eq!(d["pid"], target.pid.to_string());
    assert_eq!(
        (d["down"].as_str(), d["down_chain"].as_str()),
        ("1001", "1")
    );
    assert_eq!(
        (d["up"].as_str(), d["up_chain"].as_str()),
        (&*chain.to_string(), "2")
    );
    assert_eq!(d["reserved"], info.provider_reserved.to_string());
    assert_eq!(d["flags3"], target.pid.to_string());

    // The target: no duplicate; its WSPSocket got FROM_PROTOCOL_INFO and the chain's record,
    // and passed the base entry with the ticket down.
    assert!(calls(&target_log, "WSPDuplicateSocket").is_empty());
    let redeemed = calls(&target_log, "WSPSocket");
    assert_eq!(redeemed.len(), 1, "{redeemed:?}");
    let r = &redeemed[0];
    cprov::assert_redeemed_by_the_rule(r, chain, info.provider_reserved);
    assert_eq!(r["error"], "0");
    assert_eq!(calls(&target_log, "WSPSend").len(), 1);
    assert_eq!(calls(&target_log, "WSPRecv").len(), 1);
    assert_eq!(calls(&target_log, "WSPCloseSocket").len(), 1);

    // The layer stays loaded (as Windows keeps a started provider); the target's descriptors
    // are those before the redeem but the waiting duplicate, redeemed and closed.
    assert!(maps(target.pid).contains(lsp.to_str().unwrap()));
    assert_eq!(target.fdcount(), target_fds - 1);
}

#[test]
fn broken_libraries_are_refused_at_use_naming_the_path_and_nothing_stays_loaded() {
    let dir = TempDir::new("broken-use");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let missing = dir.path().join("libmissing.so");
    let cases = [
        (missing, 10105, "invalid-provider", "cannot be read"),
        (
            cprov::broken(dir.path(), "not-elf"),
            10105,
            "invalid-provider",
            "not a shared library",
        ),
        (
            cprov::broken(dir.path(), "no-wspstartup"),
            10105,
            "invalid-provider",
            "does not define WSPStartup",
        ),
        (
            cprov::broken(dir.path(), "imports-wspstartup"),
            10105,
            "invalid-provider",
            "only imports WSPStartup",
        ),
        (
            cprov::broken(dir.path(), "failing-wspstartup"),
            10106,
            "provider-failed-init",
            "failed with 10050",
        ),
        (
            cprov::broken(dir.path(), "empty-table"),
            10106,
            "provider-failed-init",
            "left lpWSPSocket or lpWSPCloseSocket NULL",
        ),
    ];
    for (path, code, kind, why) in cases {
        let (catalog, _, chain) = over_tcp(&path);
        let file = CatalogFile::new("broken-cat", &catalog);
        let mut p = file.peer();
        let fds = p.fdcount();
        for attempt in 0..2 {
            let e = p.fails(&format!("spi-tcp-connect {addr}"));
            assert_eq!(
                (e.code, e.kind.as_str()),
                (code, kind),
                "{path:?} #{attempt}: {e:?}"
            );
            assert!(
                e.message.contains(path.to_str().unwrap()) && e.message.contains(why),
                "{path:?}: {e:?}"
            );
        }
        // Nothing half-loaded: the library is not mapped, no descriptor is left, and the base
        // entry under the chain still works.
        assert!(
            !maps(p.pid).contains(path.to_str().unwrap()),
            "{path:?} stayed loaded"
        );
        assert_eq!(p.fdcount(), fds, "{path:?}");
        let e = p.fails(&format!("spi-redeem {}", {
            let mut info = catalog.entry(chain).unwrap();
            info.provider_reserved = 1;
            info
        }));
        assert_eq!(
            e.code, code,
            "a record of the chain meets the same refusal: {e:?}"
        );
    }
}

/// The C layer over a chain of the built-in `trace` layer over TCP/IPv4: the layer starts its
/// next provider (a built-in layer) through libsockdup's `WSPStartup` with the chain's record
/// unchanged, and the trace layer below it sees every call with the chain's entry.
#[test]
fn a_c_layer_over_a_built_in_layer_passes_the_chain_record_down_unchanged() {
    let dir = TempDir::new("counting-over-trace");
    let lsp = cprov::counting_lsp(dir.path());
    let mut c = Catalog::builtin();
    let (trace, trace_chains) = c
        .install("trace", "trace", true, BTreeMap::new(), &[1001])
        .unwrap();
    let config = BTreeMap::from([(PATH_KEY.to_owned(), lsp.to_str().unwrap().to_owned())]);
    let (layer, chains) = c
        .install(LIBRARY_KIND, "counting", true, config, &[trace_chains[0]])
        .unwrap();
    let chain = chains[0];
    let file = CatalogFile::new("counting-over-trace-cat", &c);
    let (source_log, target_log) = (dir.path().join("source.log"), dir.path().join("target.log"));
    let mut source = peer(&file, &source_log);
    let mut target = peer(&file, &target_log);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let out = source.ok(&format!("spi-tcp-connect {addr}"));
    let (s, rest) = out.split_once(' ').unwrap();
    assert!(rest.starts_with(&format!("{chain} ")), "{out}");
    let (mut remote, _) = l.accept().unwrap();
    remote
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let record = source.ok(&format!("spi-dup {s} {}", target.pid));
    let info: sockdup::ProtocolInfo = record.parse().unwrap();
    assert_eq!(info.protocol_chain.used(), [layer, trace, 1001]);
    let out = target.ok(&format!("spi-redeem {record}"));
    let (t, _) = out.split_once(' ').unwrap();
    source.ok(&format!("spi-close {s}"));
    target.ok(&format!("spi-send {t} over trace"));
    let mut buf = [0u8; 16];
    let n = remote.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"over trace");
    target.ok(&format!("spi-close {t}"));

    let st = &calls(&source_log, "WSPStartup")[0];
    assert_eq!(
        (st["own"].as_str(), st["next"].as_str()),
        (&*layer.to_string(), &*trace.to_string())
    );
    assert_eq!(st["next_base"], "0");
    assert_eq!(
        (st["down"].as_str(), st["down_chain"].as_str()),
        (&*chain.to_string(), "3")
    );
    let d = &calls(&source_log, "WSPDuplicateSocket")[0];
    assert_eq!(
        (d["down"].as_str(), d["down_chain"].as_str()),
        (&*chain.to_string(), "3")
    );
    assert_eq!(
        (d["up"].as_str(), d["up_chain"].as_str()),
        (&*chain.to_string(), "3")
    );
    let r = &calls(&target_log, "WSPSocket")[0];
    assert_eq!(r["af"], "-1");
    assert_eq!(
        (r["down"].as_str(), r["down_chain"].as_str()),
        (&*chain.to_string(), "3")
    );

    // The trace layer below it was handed the chain's record, unmodified, each time.
    let source_traces = source.traces();
    assert_eq!(source_traces.len(), 1, "{source_traces:?}");
    assert_eq!(
        source_traces[0]["seen"],
        format!("{chain},{chain},{chain}"),
        "startup, socket, duplicate"
    );
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
    assert!(
        target_traces[0]["calls"].contains("send:1"),
        "{target_traces:?}"
    );
}
