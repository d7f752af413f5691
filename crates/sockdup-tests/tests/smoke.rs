mod util;
use util::Peer;

#[test]
fn smoke_tcp_between_two_peers() {
    let mut server = Peer::spawn(None);
    let mut source = Peer::spawn(Some(""));
    let mut target = Peer::spawn(Some(""));
    let out = server.ok("tcp-listen");
    let (l, addr) = out.split_once(' ').unwrap();
    let c = source.ok(&format!("tcp-connect {addr}"));
    let s = server.ok(&format!("accept {l}"));
    let rec = source.ok(&format!("dup {c} {}", target.pid));
    source.ok(&format!("close {c}"));
    let t = target.ok(&format!("redeem {rec}"));
    target.ok(&format!("write {t} hello"));
    assert_eq!(server.ok(&format!("read {s}")), "hello");
    let e = target.fails(&format!("redeem {rec}"));
    assert_eq!(e.code, 10022, "{}", e.message);
    eprintln!("{}", e.message);
}
