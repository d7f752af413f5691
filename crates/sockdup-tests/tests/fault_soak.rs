//! The fault soak: a `fault` layer under both processes' chains fails every call it can
//! (`socket`, `connect`, `send`, `duplicate`, `socket_from_info`, `close`) at random with one
//! of several Winsock errors (seeded: the seed is printed, `SOCKDUP_FAULT_SEED` repeats a run),
//! while a source duplicates connections to a target that redeems them and answers on them.
//! Every socket ends exactly once: the test holds the other end of each connection and sees
//! either the target's one answer or, for a socket nobody could serve, only the end of the
//! stream; and both processes' descriptors come back.

mod util;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, SystemTime};

use sockdup::catalog::Catalog;
use util::{CatalogFile, Peer, wait_until};

const SOCKETS: usize = 150;
/// The calls the layer fails, and how often (percent).
const CALLS: &[&str] = &[
    "socket",
    "connect",
    "send",
    "duplicate",
    "socket_from_info",
    "close",
];
const RATE: &str = "20";
const CODES: &str = "10050,10055,10024,10022";

fn fds(p: &Peer) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", p.pid))
        .unwrap()
        .count()
}

/// Counts an injected fault (or fails the test for any other error).
fn tally(faults: &mut BTreeMap<(String, i32), usize>, call: &str, e: &util::PeerError) {
    assert_eq!(e.kind, "injected", "{call}: a real failure: {e:?}");
    *faults.entry((call.to_owned(), e.code)).or_default() += 1;
}

#[test]
fn under_random_faults_every_socket_is_served_or_closed_exactly_once() {
    let seed: u64 = std::env::var("SOCKDUP_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        });
    eprintln!("fault soak: seed {seed} (SOCKDUP_FAULT_SEED={seed} repeats this run)");
    let mut settings = BTreeMap::from([("seed".to_owned(), seed.to_string())]);
    for call in CALLS {
        settings.insert(format!("fail.{call}"), CODES.to_owned());
        settings.insert(format!("rate.{call}"), RATE.to_owned());
    }
    let mut c = Catalog::builtin();
    c.install("fault", "chaos", true, settings, &[1001])
        .unwrap();
    let file = CatalogFile::new("fault-soak", &c);
    let mut source = Peer::spawn_with_env(None, &file.env());
    let mut target = Peer::spawn_with_env(None, &file.env());
    let (source_base, target_base) = (fds(&source), fds(&target));
    source.ok("startup");
    // Short-lived duplicates: those the target could not redeem end by expiry.
    target.ok("startup ttl=2");

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut faults = BTreeMap::new();
    // The test's end of each connection, and whether the target answered on it.
    let mut ends = Vec::new();
    let (mut served, mut abandoned) = (0, 0);
    for i in 0..SOCKETS {
        let s = match source.cmd(&format!("spi-tcp-connect {addr}")) {
            Ok(out) => out.split(' ').next().unwrap().to_owned(),
            Err(e) => {
                tally(&mut faults, "spi-tcp-connect", &e);
                continue;
            }
        };
        let (end, _) = l.accept().unwrap();
        end.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let record = source.cmd(&format!("spi-dup {s} {}", target.pid));
        // The source gives its socket up either way (a failed close still releases it).
        if let Err(e) = source.cmd(&format!("spi-close {s}")) {
            tally(&mut faults, "spi-close", &e);
        }
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                tally(&mut faults, "spi-dup", &e);
                ends.push((end, None));
                continue;
            }
        };
        // A redeem that fails leaves the duplicate pending: try again, or abandon it to expire.
        let mut t = None;
        for _ in 0..2 {
            match target.cmd(&format!("spi-redeem {record}")) {
                Ok(out) => {
                    t = Some(out.split(' ').next().unwrap().to_owned());
                    break;
                }
                Err(e) => tally(&mut faults, "spi-redeem", &e),
            }
        }
        let Some(t) = t else {
            abandoned += 1;
            ends.push((end, None));
            continue;
        };
        let answer = format!("served-{i};");
        let mut sent = false;
        for _ in 0..3 {
            match target.cmd(&format!("spi-send {t} {answer}")) {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(e) => tally(&mut faults, "spi-send", &e),
            }
        }
        if let Err(e) = target.cmd(&format!("spi-close {t}")) {
            tally(&mut faults, "spi-close", &e);
        }
        served += usize::from(sent);
        ends.push((end, sent.then_some(answer)));
    }

    // Every end sees its one answer, or none, and then the end of the stream (abandoned
    // duplicates close when their time-to-live ends).
    for (mut end, answer) in ends.drain(..) {
        let mut got = String::new();
        end.read_to_string(&mut got)
            .expect("the end of the stream (a socket nobody closed?)");
        assert_eq!(got, answer.unwrap_or_default());
    }
    for (p, base, what) in [
        (&mut source, source_base, "source"),
        (&mut target, target_base, "target"),
    ] {
        p.ok("cleanup");
        let mut last = 0;
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(Duration::from_secs(10), || {
                last = fds(p);
                (last == base).then_some(())
            })
        }));
        assert!(
            ok.is_ok(),
            "the {what} holds {last} descriptors, not {base}"
        );
    }
    let total: usize = faults.values().sum();
    eprintln!(
        "fault soak: {SOCKETS} connections, {served} served, {abandoned} abandoned to expiry, \
         {total} faults injected:"
    );
    for ((call, code), n) in &faults {
        eprintln!("  {call:<16} {code}: {n}");
    }
    assert!(total > 0, "no fault was injected");
}
