//! libsockdup from C, in real processes: programs compiled with gcc against the library Cargo
//! built for this package, duplicating TCP, UDP and Unix sockets to and from each other and to
//! and from this (Rust) test process; bad pointers and handles; the header's layout.

// This test calls the exported functions from Rust, passing pointers to its own values.
#![allow(unsafe_code)]

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use sockdup_capi::types::{INVALID_SOCKET, WSAPROTOCOL_INFOW};
use util::{Peer, compile, compile_text, repo, run};

const KINDS: [&str; 3] = ["tcp", "udp", "unix"];
const WAIT: Duration = Duration::from_secs(10);

fn handoff(dir: &std::path::Path) -> std::path::PathBuf {
    compile(
        &[&repo().join("examples/c/handoff.c")],
        &dir.join("handoff"),
        false,
    )
}

/// `#define NAME NUMBER` lines of the header.
fn header_defines() -> HashMap<String, i64> {
    let text = std::fs::read_to_string(util::include_dir().join("sockdup/winsock2.h"))
        .expect("reading winsock2.h");
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "#define").then_some(())?;
            let name = w.next()?;
            let value = w.next()?;
            let value = if let Some(hex) = value.strip_prefix("0x") {
                i64::from_str_radix(hex, 16).ok()?
            } else {
                value
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .parse()
                    .ok()?
            };
            Some((name.to_owned(), value))
        })
        .collect()
}

#[test]
fn the_header_defines_every_code_and_flag_sockdup_uses() {
    let defines = header_defines();
    for kind in sockdup::ErrorKind::ALL {
        let Some(code) = kind.code() else { continue };
        let name = sockdup::error::code_name(code).expect("a named code");
        assert_eq!(
            defines.get(name),
            Some(&i64::from(code)),
            "{name} in winsock2.h"
        );
    }
    for (name, code) in [
        ("WSAECONNRESET", 10054),
        ("WSAECONNREFUSED", 10061),
        ("WSASYSCALLFAILURE", 10107),
        ("WSA_INVALID_HANDLE", 6),
    ] {
        assert_eq!(defines.get(name), Some(&code), "{name} in winsock2.h");
    }
    use sockdup::flags::*;
    for (name, value) in [
        ("XP1_CONNECTIONLESS", XP1_CONNECTIONLESS),
        ("XP1_GUARANTEED_DELIVERY", XP1_GUARANTEED_DELIVERY),
        ("XP1_MESSAGE_ORIENTED", XP1_MESSAGE_ORIENTED),
        ("XP1_IFS_HANDLES", XP1_IFS_HANDLES),
        ("XP1_SAN_SUPPORT_SDP", XP1_SAN_SUPPORT_SDP),
        ("PFL_HIDDEN", PFL_HIDDEN),
        ("PFL_MATCHES_PROTOCOL_ZERO", PFL_MATCHES_PROTOCOL_ZERO),
        ("PFL_NETWORKDIRECT_PROVIDER", PFL_NETWORKDIRECT_PROVIDER),
    ] {
        assert_eq!(
            defines.get(name),
            Some(&i64::from(value)),
            "{name} in winsock2.h"
        );
    }
}

#[test]
fn sockdup_pc_points_at_the_headers_and_the_release_library() {
    let pc_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(pc_dir.join("sockdup.pc")).expect("sockdup.pc");
    // pkg-config's own expansion, for the variables the file uses.
    let mut vars: HashMap<String, String> =
        HashMap::from([("pcfiledir".to_owned(), pc_dir.display().to_string())]);
    let expand = |value: &str, vars: &HashMap<String, String>| {
        let mut out = value.to_owned();
        for (k, v) in vars {
            out = out.replace(&format!("${{{k}}}"), v);
        }
        out
    };
    let mut fields = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=').filter(|(k, _)| !k.contains(':')) {
            let v = expand(v.trim(), &vars);
            vars.insert(k.trim().to_owned(), v);
        } else if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_owned(), expand(v.trim(), &vars));
        }
    }
    let includedir = std::path::PathBuf::from(&vars["includedir"]);
    assert!(includedir.join("sockdup/winsock2.h").is_file());
    assert_eq!(
        std::fs::canonicalize(&vars["prefix"]).expect("prefix exists"),
        std::fs::canonicalize(repo()).expect("repo"),
        "prefix is the repository"
    );
    assert_eq!(
        vars["libdir"],
        format!("{}/target/release", vars["prefix"]),
        "libdir is where cargo build --release -p sockdup-ffi puts libsockdup"
    );
    assert_eq!(fields["Libs"], format!("-L{} -lsockdup", vars["libdir"]));
    assert_eq!(fields["Cflags"], format!("-I{}", vars["includedir"]));
}

#[test]
fn c_sees_the_windows_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = compile_text(
        dir.path(),
        "layout",
        r#"
#include <sockdup/winsock2.h>
#include <stddef.h>
#include <stdio.h>
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %d %d\n", sizeof(WSAPROTOCOL_INFOW),
           offsetof(WSAPROTOCOL_INFOW, ProviderId), offsetof(WSAPROTOCOL_INFOW, dwCatalogEntryId),
           offsetof(WSAPROTOCOL_INFOW, ProtocolChain), offsetof(WSAPROTOCOL_INFOW, iVersion),
           offsetof(WSAPROTOCOL_INFOW, dwProviderReserved), offsetof(WSAPROTOCOL_INFOW, szProtocol),
           sizeof(WSADATA), sizeof(WSANETWORKEVENTS), INVALID_SOCKET == (SOCKET)-1,
           FROM_PROTOCOL_INFO);
    /* The generic names of ported code compile to the W calls. */
    WSAPROTOCOL_INFO generic;
    LPWSAPROTOCOL_INFO pointer = &generic;
    SOCKET (*socket_call)(int, int, int, LPWSAPROTOCOL_INFOW, GROUP, DWORD) = WSASocket;
    int (*duplicate_call)(SOCKET, DWORD, LPWSAPROTOCOL_INFOW) = WSADuplicateSocket;
    int (*enum_call)(LPINT, LPWSAPROTOCOL_INFOW, LPDWORD) = WSAEnumProtocols;
    if (!socket_call || !duplicate_call || !enum_call || pointer != &generic) return 1;
    return sizeof(SOCKET) == sizeof(void *) && sizeof(WCHAR) == 2 ? 0 : 1;
}
"#,
    );
    let (status, out, err) = run(&program, &[], WAIT);
    assert!(status.success(), "{err}");
    let expected = format!(
        "628 20 36 40 72 112 116 {} {} 1 -1\n",
        std::mem::size_of::<sockdup_capi::types::WSADATA>(),
        std::mem::size_of::<sockdup_capi::types::WSANETWORKEVENTS>()
    );
    assert_eq!(out, expected);
}

#[test]
fn c_to_c_handoff_of_tcp_udp_and_unix_sockets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (status, out, err) = run(&handoff(dir.path()), &[], WAIT);
    assert!(status.success(), "handoff failed: {err}");
    assert_eq!(out, "ok tcp\nok udp\nok unix\n");
}

#[test]
fn the_static_library_links_and_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = compile(
        &[&repo().join("examples/c/handoff.c")],
        &dir.path().join("handoff-static"),
        true,
    );
    let (status, out, err) = run(&program, &[], WAIT);
    assert!(status.success(), "handoff (static) failed: {err}");
    assert_eq!(out, "ok tcp\nok udp\nok unix\n");
}

#[test]
fn the_readme_c_example_builds_and_runs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let section = &readme[readme.find("\n## From C").expect("a From C section")..];
    let start = section.find("```c\n").expect("a C example") + 5;
    let code = &section[start..start + section[start..].find("```").expect("its end")];
    let dir = tempfile::tempdir().expect("tempdir");
    let program = compile_text(dir.path(), "readme", code);
    let (status, out, err) = run(&program, &[], WAIT);
    assert!(status.success(), "the README's example failed: {err}");
    assert_eq!(out, "the child said hello (exit 0)\n");
}

#[test]
fn bad_pointers_handles_lengths_and_events_from_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = compile(
        &[&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/calls.c")],
        &dir.path().join("calls"),
        false,
    );
    let (status, out, err) = run(&program, &[], WAIT);
    assert!(status.success(), "calls.c failed: {err}");
    assert_eq!(out, "ok\n");
}

/// Says "ping" through a socket this process got, expects "pong" back.
fn ping_pong(kind: &str, fd: OwnedFd) {
    let mut buf = [0u8; 16];
    match kind {
        "tcp" => {
            let mut s = TcpStream::from(fd);
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            s.write_all(b"ping").expect("send");
            s.read_exact(&mut buf[..4]).expect("recv");
        }
        "udp" => {
            let s = UdpSocket::from(fd);
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            s.send(b"ping").expect("send");
            assert_eq!(s.recv(&mut buf).expect("recv"), 4);
        }
        _ => {
            let mut s = UnixStream::from(fd);
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            s.write_all(b"ping").expect("send");
            s.read_exact(&mut buf[..4]).expect("recv");
        }
    }
    assert_eq!(&buf[..4], b"pong");
}

#[test]
fn c_to_rust_duplication_of_tcp_udp_and_unix_sockets() {
    let _sockdup = sockdup::startup().expect("startup");
    let dir = tempfile::tempdir().expect("tempdir");
    let program = handoff(dir.path());
    for kind in KINDS {
        let mut source = Peer::spawn(&program, &["source", kind]);
        source.send(&format!("pid {}", std::process::id()));
        let line = source.line();
        let text = line.strip_prefix("record ").expect("a record line");
        let record: sockdup::ProtocolInfo = text.parse().expect("a record");
        let fd = sockdup::socket_from_info(&record).expect("redeeming the C source's record");
        ping_pong(kind, fd);
        assert_eq!(source.line(), "ok");
        source.succeeds();
    }
}

/// Answers "pong" to the "ping" that arrives at `other`, the far end of the handed-off socket.
enum Other {
    Tcp(TcpStream),
    Udp(UdpSocket),
    Unix(UnixStream),
}

impl Other {
    fn answer(self) {
        let mut buf = [0u8; 16];
        match self {
            Other::Tcp(mut s) => {
                s.set_read_timeout(Some(WAIT)).expect("timeout");
                s.read_exact(&mut buf[..4]).expect("recv");
                assert_eq!(&buf[..4], b"ping");
                s.write_all(b"pong").expect("send");
            }
            Other::Udp(s) => {
                s.set_read_timeout(Some(WAIT)).expect("timeout");
                let (n, from) = s.recv_from(&mut buf).expect("recv");
                assert_eq!(&buf[..n], b"ping");
                s.send_to(b"pong", from).expect("send");
            }
            Other::Unix(mut s) => {
                s.set_read_timeout(Some(WAIT)).expect("timeout");
                s.read_exact(&mut buf[..4]).expect("recv");
                assert_eq!(&buf[..4], b"ping");
                s.write_all(b"pong").expect("send");
            }
        }
    }
}

fn rust_pair(kind: &str) -> (OwnedFd, Other) {
    match kind {
        "tcp" => {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            (client.into(), Other::Tcp(server))
        }
        "udp" => {
            let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let shared = UdpSocket::bind("127.0.0.1:0").expect("bind");
            shared
                .connect(other.local_addr().expect("addr"))
                .expect("connect");
            (shared.into(), Other::Udp(other))
        }
        _ => {
            let (a, b) = UnixStream::pair().expect("socketpair");
            (a.into(), Other::Unix(b))
        }
    }
}

#[test]
fn rust_to_c_duplication_of_tcp_udp_and_unix_sockets() {
    let _sockdup = sockdup::startup().expect("startup");
    let dir = tempfile::tempdir().expect("tempdir");
    let program = handoff(dir.path());
    for kind in KINDS {
        let mut target = Peer::spawn(&program, &["target"]);
        let line = target.line();
        let pid: u32 = line
            .strip_prefix("pid ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("expected \"pid N\", got {line:?}"));
        assert_eq!(pid, target.pid());
        let (shared, other) = rust_pair(kind);
        let record = sockdup::duplicate_socket(&shared, pid).expect("duplicating to the C target");
        target.send(&format!("record {record}"));
        drop(shared);
        other.answer();
        assert_eq!(target.line(), "ok");
        target.succeeds();
    }
}

#[test]
fn c_and_rust_calls_in_one_process_share_one_runtime() {
    use sockdup_capi::winsock::{WSACleanup, WSADuplicateSocketW, WSASocketW, closesocket};
    let _sockdup = sockdup::startup().expect("startup");
    let pid = std::process::id();
    let (a, b) = UnixStream::pair().expect("socketpair");

    // The C call duplicates (to this process), the Rust call redeems: one inbox, one run.
    let mut info = WSAPROTOCOL_INFOW::default();
    // SAFETY: `info` is a valid, writable WSAPROTOCOL_INFOW.
    let r = unsafe { WSADuplicateSocketW(a.as_raw_fd() as usize, pid, &mut info) };
    assert_eq!(
        r, 0,
        "WSADuplicateSocketW without WSAStartup, the Rust API having started sockdup"
    );
    let record = info.to_info().expect("a record");
    let fd = sockdup::socket_from_info(&record).expect("the Rust API redeems the C call's record");
    drop(fd);

    // And the other way round.
    let record = sockdup::duplicate_socket(&b, pid).expect("duplicate");
    let c = WSAPROTOCOL_INFOW::from_info(&record);
    // SAFETY: `c` is a valid WSAPROTOCOL_INFOW.
    let s = unsafe { WSASocketW(-1, -1, -1, &c, 0, 0) };
    assert_ne!(
        s, INVALID_SOCKET,
        "WSASocketW redeems the Rust API's record"
    );
    assert_eq!(closesocket(s), 0);
    assert_eq!(
        closesocket(a.as_raw_fd() as usize),
        0,
        "the adopted descriptor closes"
    );
    std::mem::forget(a); // closed by closesocket

    // The C side made no WSAStartup: its WSACleanup has nothing to end, and the Rust
    // API's runtime stays.
    assert_eq!(WSACleanup(), -1);
    assert_eq!(
        sockdup_capi::winsock::WSAGetLastError(),
        sockdup::error::WSANOTINITIALISED
    );
    sockdup::pending().expect("the Rust API's runtime is still up");
}

#[test]
fn the_c_handoff_example_is_clean_under_valgrind() {
    let found = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "valgrind is not installed, and CI=true: .ci/run installs it"
        );
        eprintln!("skipping: valgrind is not installed (apt-get install valgrind)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let program = handoff(dir.path());
    let (status, out, err) = util::run_command(
        std::process::Command::new("valgrind")
            .args([
                "-q",
                "--error-exitcode=1",
                "--trace-children=yes",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
            ])
            .arg(&program),
        Duration::from_secs(60),
    );
    assert!(status.success(), "valgrind found errors:\n{err}");
    assert_eq!(out, "ok tcp\nok udp\nok unix\n");
}
