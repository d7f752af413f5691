//! Batch redemption (`sockets_from_info`) of records made through protocol chains, between two
//! processes: routed through each record's chain exactly as `socket_from_info` routes one record,
//! and all or nothing when base and chain records are mixed.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use sockdup::catalog::Catalog;
use util::{CatalogFile, Peer};

/// A catalog with a `trace` layer over TCP/IPv4, saved to a file of its own; returns the file
/// and the chain's entry id.
fn trace_catalog(name: &str) -> (CatalogFile, u32) {
    catalog_with(name, "trace", &[])
}

/// A catalog with one layer of `kind` and `settings` over TCP/IPv4.
fn catalog_with(name: &str, kind: &str, settings: &[(&str, &str)]) -> (CatalogFile, u32) {
    let mut c = Catalog::builtin();
    let config = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let (_, chains) = c.install(kind, kind, true, config, &[1001]).unwrap();
    (CatalogFile::new(name, &c), chains[0])
}

fn accept(l: &TcpListener) -> TcpStream {
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Opens a connection in `source` through the catalog (the trace chain) and duplicates it to
/// `target`; returns the record and the server side of the connection.
fn chain_record(
    source: &mut Peer,
    target: u32,
    l: &TcpListener,
    chain: u32,
) -> (String, TcpStream) {
    let addr = l.local_addr().unwrap();
    let out = source.ok(&format!("spi-tcp-connect {addr}"));
    let mut words = out.split(' ');
    let idx = words.next().unwrap().to_owned();
    assert_eq!(words.next(), Some(chain.to_string().as_str()), "{out}");
    let remote = accept(l);
    let record = source.ok(&format!("spi-dup {idx} {target}"));
    let info: sockdup::ProtocolInfo = record.parse().unwrap();
    assert_eq!(info.catalog_entry_id, chain, "a chain's record");
    (record, remote)
}

/// Opens a plain connection in `source` and duplicates it to `target` with `duplicate_socket`.
fn base_record(source: &mut Peer, target: u32, l: &TcpListener) -> (String, TcpStream) {
    let idx = source.ok(&format!("tcp-connect {}", l.local_addr().unwrap()));
    let remote = accept(l);
    let record = source.ok(&format!("dup {idx} {target}"));
    let info: sockdup::ProtocolInfo = record.parse().unwrap();
    assert!(sockdup::catalog::is_base_id(info.catalog_entry_id));
    (record, remote)
}

/// Each redeemed descriptor (by the target's index) is the socket whose far end is `remote`.
fn same_sockets(target: &mut Peer, indices: &str, remotes: &mut [TcpStream]) {
    let indices: Vec<&str> = indices.split(' ').collect();
    assert_eq!(indices.len(), remotes.len());
    for (i, (idx, remote)) in indices.iter().zip(remotes.iter_mut()).enumerate() {
        target.ok(&format!("write {idx} hello-{i}"));
        let mut buf = [0u8; 64];
        let n = remote.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], format!("hello-{i}").as_bytes());
        remote.write_all(b"back").unwrap();
        assert_eq!(target.ok(&format!("read {idx}")), "back");
    }
}

/// How many times the target's trace layer saw `socket_from_info`.
fn traced_redeems(target: &mut Peer) -> u32 {
    let report = target.ok("trace");
    report
        .split(' ')
        .find_map(|kv| kv.strip_prefix("calls="))
        .and_then(|calls| {
            calls
                .split(',')
                .find_map(|c| c.strip_prefix("socket_from_info:"))
        })
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn a_batch_of_chain_records_is_redeemed_through_the_chain() {
    let (catalog, chain) = trace_catalog("batch");
    let (mut source, mut target) = (catalog.peer(), catalog.peer());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (records, mut remotes): (Vec<String>, Vec<TcpStream>) = (0..3)
        .map(|_| chain_record(&mut source, target.pid, &l, chain))
        .unzip();
    let indices = target.ok(&format!("redeem-many {}", records.join(" ")));
    same_sockets(&mut target, &indices, &mut remotes);
    assert_eq!(
        traced_redeems(&mut target),
        3,
        "each record went up through the target's trace layer"
    );
    // Spent, each of them, as after single redemptions.
    for r in &records {
        let e = target.fails(&format!("redeem {r}"));
        assert_eq!(e.kind, "already-redeemed", "{e:?}");
    }
    source.exit();
    target.exit();
}

#[test]
fn a_layer_failing_part_way_puts_back_what_was_redeemed() {
    // The fault layer lets duplicates through and fails every redemption through its chain.
    let (catalog, chain) = catalog_with("fault", "fault", &[("fail.socket_from_info", "10055")]);
    let (mut source, mut target) = (catalog.peer(), catalog.peer());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (plain, remote) = base_record(&mut source, target.pid, &l);
    let (chained, _remote) = chain_record(&mut source, target.pid, &l, chain);
    let e = target.fails(&format!("redeem-many {plain} {chained}"));
    assert_eq!(
        (e.kind.as_str(), e.code),
        ("injected", 10055),
        "the layer's own error: {e:?}"
    );
    assert!(e.message.contains("record 1 of the batch"), "{e:?}");
    // The base record, redeemed before the chain's layer failed, was put back.
    let idx = target.ok(&format!("redeem {plain}"));
    same_sockets(&mut target, &idx, &mut [remote]);
    source.exit();
    target.exit();
}

#[test]
fn a_mixed_batch_is_all_or_nothing() {
    let (catalog, chain) = trace_catalog("mixed");
    let (mut source, mut target) = (catalog.peer(), catalog.peer());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (chained, remote_a) = chain_record(&mut source, target.pid, &l, chain);
    let (plain, remote_b) = base_record(&mut source, target.pid, &l);
    let (spent, _remote_c) = chain_record(&mut source, target.pid, &l, chain);
    target.ok(&format!("redeem {spent}"));

    // A spent chain record at the end: nothing before it is redeemed.
    let e = target.fails(&format!("redeem-many {chained} {plain} {spent}"));
    assert_eq!(e.kind, "already-redeemed", "{e:?}");
    assert!(e.message.contains("record 2 of the batch"), "{e:?}");
    // The same chain record twice: refused before anything is redeemed.
    let e = target.fails(&format!("redeem-many {plain} {chained} {chained}"));
    assert_eq!(e.kind, "already-redeemed", "{e:?}");
    assert!(e.message.contains("record 2 of the batch"), "{e:?}");
    assert!(e.message.contains("twice"), "{e:?}");
    // A record naming a chain this process does not have: refused, nothing redeemed.
    let mut foreign: sockdup::ProtocolInfo = chained.parse().unwrap();
    foreign.catalog_entry_id = 4242;
    let e = target.fails(&format!("redeem-many {plain} {foreign}"));
    assert_eq!(e.kind, "unknown-catalog-entry", "{e:?}");
    assert!(e.message.contains("record 1 of the batch"), "{e:?}");

    let indices = target.ok(&format!("redeem-many {chained} {plain}"));
    // Both good records were still waiting: the failed batches redeemed nothing.
    same_sockets(&mut target, &indices, &mut [remote_a, remote_b]);
    source.exit();
    target.exit();
}
