//! Tests of the `sockdup` binary: the two-process handoff demo, and `inspect` on real records
//! (made by this test process duplicating a socket to itself), on Wine-like records, and on bad
//! input.

mod util;
use util::{DEMO_STEPS, TempDir, assert_ok, error_kind, stderr, stdout};

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use sockdup::{ProtocolChain, ProtocolInfo};

const BIN: &str = env!("CARGO_BIN_EXE_sockdup");

/// The 20 field names of `ProtocolInfo`.
const FIELDS: [&str; 20] = [
    "service_flags1",
    "service_flags2",
    "service_flags3",
    "service_flags4",
    "provider_flags",
    "provider_id",
    "catalog_entry_id",
    "protocol_chain",
    "version",
    "address_family",
    "max_sockaddr",
    "min_sockaddr",
    "socket_type",
    "protocol",
    "protocol_max_offset",
    "network_byte_order",
    "security_scheme",
    "message_size",
    "provider_reserved",
    "protocol_name",
];

/// Runs `sockdup args...` with `stdin` (or an empty stdin).
fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    util::run_with_stdin(Command::new(BIN).args(args), stdin.unwrap_or_default())
}

/// Asserts a clean failure of the library with error `kind`: `sockdup: error[KIND]: ...` on
/// stderr, with `expect_in_stderr`, and no panic.
#[track_caller]
fn assert_fails_with(out: &Output, kind: &str, expect_in_stderr: &str) {
    assert_fails_cleanly(out, expect_in_stderr);
    assert_eq!(error_kind(out).as_deref(), Some(kind), "{}", stderr(out));
}

/// Asserts a clean failure: non-zero status, a message on stderr, no panic.
#[track_caller]
fn assert_fails_cleanly(out: &Output, expect_in_stderr: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "unexpected success; stdout:\n{}",
        stdout(out)
    );
    assert_ne!(out.status.code(), None, "killed by a signal: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(
        err.contains(expect_in_stderr),
        "stderr lacks {expect_in_stderr:?}:\n{err}"
    );
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
}

/// A temporary file that is removed when dropped (even when the test panics).
struct TempFile(util::TempFile);

impl TempFile {
    fn new(contents: &[u8]) -> Self {
        Self(util::TempFile::new(contents))
    }

    fn path(&self) -> &str {
        self.0.path().to_str().expect("temp path is UTF-8")
    }
}

/// A real record: this process duplicates a connected TCP socket to itself.
fn real_record() -> ProtocolInfo {
    let _guard = sockdup::startup().expect("startup");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stream = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    sockdup::duplicate_socket(&stream, std::process::id()).expect("duplicate to self")
}

/// A record as Wine's `WSADuplicateSocket` writes it for TCP/IPv4 (catalog id 1001, MSAFD
/// Tcpip's GUID, handle 0x1234 in dwServiceFlags3, the magic 0xff00ff00 in dwServiceFlags4);
/// the core's unit tests check it byte by byte against the Windows header's offsets.
fn wine_bytes() -> Vec<u8> {
    include_bytes!("../../sockdup-core/testdata/wine-tcp-ipv4.bin").to_vec()
}

/// Runs `inspect --json` on `record`'s text form and parses the output.
fn json_of(record: &ProtocolInfo) -> (Value, String) {
    let out = run(&["inspect", "--json", &record.to_string()], None);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(text.trim().lines().count(), 1, "one line of JSON: {text}");
    (serde_json::from_str(&text).expect("valid JSON"), text)
}

/// Checks that `json` holds exactly the fields of `info`.
#[track_caller]
fn assert_json_matches(json: &Value, info: &ProtocolInfo) {
    let obj = json.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = FIELDS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want);
    let u = |k: &str| {
        obj[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} is not a u64"))
    };
    let i = |k: &str| {
        obj[k]
            .as_i64()
            .unwrap_or_else(|| panic!("{k} is not an i64"))
    };
    assert_eq!(u("service_flags1"), u64::from(info.service_flags1));
    assert_eq!(u("service_flags2"), u64::from(info.service_flags2));
    assert_eq!(u("service_flags3"), u64::from(info.service_flags3));
    assert_eq!(u("service_flags4"), u64::from(info.service_flags4));
    assert_eq!(u("provider_flags"), u64::from(info.provider_flags));
    assert_eq!(
        obj["provider_id"],
        Value::from(info.provider_id.to_string())
    );
    assert_eq!(u("catalog_entry_id"), u64::from(info.catalog_entry_id));
    assert_eq!(i("version"), i64::from(info.version));
    assert_eq!(i("address_family"), i64::from(info.address_family));
    assert_eq!(i("max_sockaddr"), i64::from(info.max_sockaddr));
    assert_eq!(i("min_sockaddr"), i64::from(info.min_sockaddr));
    assert_eq!(i("socket_type"), i64::from(info.socket_type));
    assert_eq!(i("protocol"), i64::from(info.protocol));
    assert_eq!(
        i("protocol_max_offset"),
        i64::from(info.protocol_max_offset)
    );
    assert_eq!(i("network_byte_order"), i64::from(info.network_byte_order));
    assert_eq!(i("security_scheme"), i64::from(info.security_scheme));
    assert_eq!(u("message_size"), u64::from(info.message_size));
    assert_eq!(u("provider_reserved"), u64::from(info.provider_reserved));
    assert_eq!(
        obj["protocol_name"],
        Value::from(info.protocol_name.clone())
    );

    let chain = obj["protocol_chain"].as_object().expect("chain object");
    let mut chain_keys: Vec<&str> = chain.keys().map(String::as_str).collect();
    chain_keys.sort_unstable();
    assert_eq!(chain_keys, ["entries", "len"]);
    assert_eq!(
        chain["len"].as_i64(),
        Some(i64::from(info.protocol_chain.len))
    );
    let entries: Vec<u64> = chain["entries"]
        .as_array()
        .expect("entries array")
        .iter()
        .map(|e| e.as_u64().expect("entry is a u64"))
        .collect();
    let want: Vec<u64> = info
        .protocol_chain
        .entries
        .iter()
        .map(|&e| u64::from(e))
        .collect();
    assert_eq!(entries, want);
    assert_eq!(entries.len(), 7);
}

// --- demo -----------------------------------------------------------------------------------

#[test]
fn demo_runs_all_ten_steps_in_two_processes() {
    let out = run(&["demo"], None);
    assert_ok(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let by = |who: &str, step: u32| {
        lines
            .iter()
            .any(|l| l.starts_with(&format!("[{who} ")) && l.contains(&format!("] {step}) ")))
    };
    for (step, who) in DEMO_STEPS {
        assert!(by(who, step), "no step {step} by the {who}:\n{text}");
    }
    assert!(
        text.contains("duplicate_socket -> record for pid"),
        "{text}"
    );
    assert!(text.contains("read EOF"), "{text}");
    assert!(text.contains("all 10 steps checked out"), "{text}");

    // Two different processes: the source's and the target's labels carry different pids.
    let pid_of = |who: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("[{who} ")))
            .and_then(|rest| rest.split(']').next())
            .map(str::to_owned)
            .expect("a labelled line")
    };
    assert_ne!(pid_of("source"), pid_of("target"));
    // The order of the table: each step's first line comes after the previous step's.
    let first = |step: u32| {
        lines
            .iter()
            .position(|l| l.contains(&format!("] {step}) ")))
            .expect("step present")
    };
    for step in 1..10 {
        assert!(first(step) < first(step + 1), "step order:\n{text}");
    }
}

#[test]
fn help_names_the_winsock_calls_and_hides_the_target() {
    let out = run(&["--help"], None);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("WSADuplicateSocketW"), "{text}");
    assert!(text.contains("WSASocketW"), "{text}");
    assert!(text.contains("demo") && text.contains("inspect"), "{text}");
    assert!(!text.contains("demo-target"), "{text}");
    let out = run(&["inspect", "--help"], None);
    assert_ok(&out);
    assert!(stdout(&out).contains("sockdup1:"));
}

// --- inspect: real records ------------------------------------------------------------------

#[test]
fn inspect_prints_every_field_with_names() {
    let record = real_record();
    let out = run(&["inspect", &record.to_string()], None);
    assert_ok(&out);
    let text = stdout(&out);
    for field in FIELDS {
        assert!(text.contains(field), "no {field}:\n{text}");
    }
    for name in [
        "XP1_GUARANTEED_DELIVERY",
        "XP1_IFS_HANDLES",
        "PFL_MATCHES_PROTOCOL_ZERO",
        "AF_INET",
        "SOCK_STREAM",
        "IPPROTO_TCP",
        "BASE_PROTOCOL",
        "sockdup Linux TCP/IPv4",
        "target's process id",
        "nonce",
        "ticket",
    ] {
        assert!(text.contains(name), "no {name}:\n{text}");
    }
    assert!(text.contains(&record.provider_id.to_string()), "{text}");
    assert!(
        text.contains(&std::process::id().to_string()),
        "no pid:\n{text}"
    );
    assert!(
        text.contains(&format!("{:#010x}", record.provider_reserved)),
        "no ticket:\n{text}"
    );
}

#[test]
fn inspect_reads_text_from_stdin_and_raw_bytes_from_a_file() {
    let record = real_record();
    let text = record.to_string();
    let by_arg = run(&["inspect", &text], None);
    assert_ok(&by_arg);

    for args in [&["inspect", "-"][..], &["inspect"][..]] {
        let on_stdin = run(args, Some(format!("{text}\n").as_bytes()));
        assert_ok(&on_stdin);
        assert_eq!(stdout(&on_stdin), stdout(&by_arg), "{args:?}");
    }

    let raw = TempFile::new(&record.to_bytes());
    let from_file = run(&["inspect", raw.path()], None);
    assert_ok(&from_file);
    assert_eq!(stdout(&from_file), stdout(&by_arg));

    let raw_on_stdin = run(&["inspect", "-"], Some(&record.to_bytes()));
    assert_ok(&raw_on_stdin);
    assert_eq!(stdout(&raw_on_stdin), stdout(&by_arg));

    let text_file = TempFile::new(format!("{text}\n").as_bytes());
    let from_text_file = run(&["inspect", text_file.path()], None);
    assert_ok(&from_text_file);
    assert_eq!(stdout(&from_text_file), stdout(&by_arg));
}

#[test]
fn inspect_reads_a_text_record_of_exactly_628_bytes_as_text() {
    // A long protocol name makes the text form, with its newline, exactly 628 bytes: the length
    // of the raw form. It must still be read as text.
    let record = (1..=255)
        .map(|n| ProtocolInfo {
            protocol_name: "x".repeat(n),
            ..real_record()
        })
        .find(|r| r.to_string().len() + 1 == ProtocolInfo::LEN)
        .expect("some name length gives 627 characters");
    let line = format!("{record}\n");
    let expected = run(&["inspect", "--json", &record.to_string()], None);
    assert_ok(&expected);

    let on_stdin = run(&["inspect", "--json", "-"], Some(line.as_bytes()));
    assert_ok(&on_stdin);
    assert_eq!(stdout(&on_stdin), stdout(&expected));

    let file = TempFile::new(line.as_bytes());
    let from_file = run(&["inspect", "--json", file.path()], None);
    assert_ok(&from_file);
    assert_eq!(stdout(&from_file), stdout(&expected));
}

#[test]
fn inspect_json_has_exactly_the_struct_fields() {
    let record = real_record();
    let (json, _) = json_of(&record);
    assert_json_matches(&json, &record);

    // The same from a raw file and from stdin.
    let raw = TempFile::new(&record.to_bytes());
    let out = run(&["inspect", "--json", raw.path()], None);
    assert_ok(&out);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON"),
        json
    );
    let out = run(&["inspect", "--json"], Some(record.to_string().as_bytes()));
    assert_ok(&out);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON"),
        json
    );
}

#[test]
fn inspect_json_prints_u32_unsigned_and_i32_signed() {
    let record = ProtocolInfo {
        service_flags2: 0xFFFF_FFFF,
        service_flags4: 0xFFFF_FFFF,
        message_size: 0xFFFF_FFFF,
        provider_reserved: 0xFFFF_FFFF,
        catalog_entry_id: 0xFFFF_FFFF,
        protocol_chain: ProtocolChain {
            len: 7,
            entries: [0xFFFF_FFFF, 1, 2, 3, 4, 5, 1001],
        },
        version: -1,
        protocol_max_offset: i32::MIN,
        security_scheme: i32::MAX,
        ..real_record()
    };
    let (json, text) = json_of(&record);
    assert_json_matches(&json, &record);
    assert!(text.contains("\"message_size\":4294967295"), "{text}");
    assert!(text.contains("\"service_flags4\":4294967295"), "{text}");
    assert!(text.contains("\"provider_reserved\":4294967295"), "{text}");
    assert!(text.contains("\"catalog_entry_id\":4294967295"), "{text}");
    assert!(text.contains("[4294967295,1,2,3,4,5,1001]"), "{text}");
    assert!(text.contains("\"version\":-1"), "{text}");
    assert!(
        text.contains("\"protocol_max_offset\":-2147483648"),
        "{text}"
    );
    assert!(text.contains("\"security_scheme\":2147483647"), "{text}");

    // The human-readable form shows the chain top layer first, down to the base.
    let out = run(&["inspect", &record.to_string()], None);
    assert_ok(&out);
    let human = stdout(&out);
    assert!(human.contains("top layer"), "{human}");
    assert!(
        human.contains("1001 (\"sockdup Linux TCP/IPv4\") (base)"),
        "{human}"
    );
}

#[test]
fn inspect_raw_writes_the_628_bytes() {
    let record = real_record();
    let out = run(&["inspect", "--raw", &record.to_string()], None);
    assert_ok(&out);
    assert_eq!(out.stdout.len(), 628);
    assert_eq!(out.stdout.as_slice(), record.to_bytes().as_slice());

    let raw = TempFile::new(&record.to_bytes());
    let out = run(&["inspect", "--raw", raw.path()], None);
    assert_ok(&out);
    assert_eq!(out.stdout.as_slice(), record.to_bytes().as_slice());
}

#[test]
fn inspect_refuses_json_and_raw_together() {
    let record = real_record();
    let out = run(&["inspect", "--json", "--raw", &record.to_string()], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--json") && err.contains("--raw"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty());
}

// --- inspect: records from elsewhere --------------------------------------------------------

#[test]
fn inspect_decodes_a_wine_like_record() {
    let bytes = wine_bytes();
    let file = TempFile::new(&bytes);
    let out = run(&["inspect", file.path()], None);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("e70f1aa0-ab8b-11cf-8ca3-00805f48a192"),
        "{text}"
    );
    assert!(text.contains("MSAFD Tcpip"), "{text}");
    assert!(text.contains("\"TCP/IP\""), "{text}");
    assert!(text.contains("0xff00ff00"), "{text}");
    assert!(text.contains("Wine"), "{text}");
    assert!(
        !text.contains("A sockdup duplicate"),
        "a Wine record is not a sockdup duplicate:\n{text}"
    );

    let out = run(&["inspect", "--json", "-"], Some(&bytes));
    assert_ok(&out);
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let info = ProtocolInfo::from_bytes(&bytes).expect("decodes");
    assert_json_matches(&json, &info);
    assert_eq!(json["service_flags4"].as_u64(), Some(0xff00_ff00));
    assert_eq!(json["service_flags3"].as_u64(), Some(0x1234));
    assert_eq!(json["catalog_entry_id"].as_u64(), Some(1001));

    let out = run(&["inspect", "--raw", file.path()], None);
    assert_ok(&out);
    assert_eq!(out.stdout, bytes);
}

// --- inspect: bad input ---------------------------------------------------------------------

#[test]
fn inspect_rejects_garbage_text() {
    let out = run(&["inspect", "sockdup1:!!!"], None);
    assert_fails_with(&out, "malformed-record", "(WSAEINVAL 10022)");
    let out = run(&["inspect", "-"], Some(b"this is not a record at all\n"));
    assert_fails_with(&out, "malformed-record", "sockdup1:");
    assert!(stderr(&out).contains("WSAEINVAL 10022"));
    let out = run(&["inspect", "-"], Some(b""));
    assert_fails_with(&out, "malformed-record", "(WSAEINVAL 10022)");
}

#[test]
fn inspect_treats_other_words_as_paths_and_says_so() {
    let out = run(&["inspect", "random-text-that-is-no-record"], None);
    assert_fails_cleanly(&out, "sockdup1:");
    assert!(
        stderr(&out).contains("random-text-that-is-no-record"),
        "{}",
        stderr(&out)
    );
    let dir = TempDir::new("cli-missing");
    let missing = dir.path().join("does-not-exist");
    let out = run(&["inspect", missing.to_str().expect("UTF-8")], None);
    assert_fails_cleanly(&out, "no file");
    // Not a library error: no kind.
    assert!(
        stderr(&out).starts_with("sockdup: error: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn inspect_rejects_files_of_the_wrong_length() {
    let bytes: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37) | 0x80).collect();
    let file = TempFile::new(&bytes);
    let out = run(&["inspect", file.path()], None);
    assert_fails_with(&out, "malformed-record", "628");
    assert!(stderr(&out).contains("WSAEINVAL 10022"));

    let zeros = TempFile::new(&[0u8; 100]);
    let out = run(&["inspect", zeros.path()], None);
    assert_fails_with(&out, "malformed-record", "(WSAEINVAL 10022)");

    let long = TempFile::new(&[0u8; 629]);
    let out = run(&["inspect", long.path()], None);
    assert_fails_with(&out, "malformed-record", "628");
}

#[test]
fn inspect_rejects_a_chain_of_nine() {
    let record = ProtocolInfo {
        protocol_chain: ProtocolChain {
            len: 9,
            entries: [1001; 7],
        },
        ..real_record()
    };
    // to_bytes writes what it is given; from_bytes refuses it.
    let file = TempFile::new(&record.to_bytes());
    let out = run(&["inspect", file.path()], None);
    assert_fails_with(&out, "malformed-record", "protocol_chain.len");
    assert!(stderr(&out).contains("WSAEINVAL 10022"));

    let out = run(&["inspect", "--json", &record.to_string()], None);
    assert_fails_with(&out, "malformed-record", "protocol_chain.len");

    let out = run(&["inspect", "-"], Some(&record.to_bytes()));
    assert_fails_with(&out, "malformed-record", "protocol_chain.len");
}

#[test]
fn inspect_rejects_a_name_without_nul() {
    let mut bytes = wine_bytes();
    bytes[116..].fill(0x41);
    let file = TempFile::new(&bytes);
    let out = run(&["inspect", file.path()], None);
    assert_fails_with(&out, "malformed-record", "protocol_name");
}

#[test]
fn inspect_rejects_a_directory() {
    let dir = TempDir::new("cli-dir");
    let out = run(&["inspect", dir.path().to_str().expect("UTF-8")], None);
    assert_fails_cleanly(&out, "directory");
    assert!(Path::new(dir.path()).is_dir());
}

// --- the demo's line protocol ---------------------------------------------------------------

/// Runs `sockdup demo-target` as the demo does, writes `bytes` on its stdin (which stays
/// open), and returns its first answer line and its exit status, both within a bound: a
/// malformed request must be answered at once, not when the source gives up waiting.
fn demo_target_refuses(bytes: &[u8]) -> (String, std::process::ExitStatus) {
    let mut target = util::spawn_piped(Command::new(BIN).arg("demo-target"));
    let mut stdin = target.stdin.take().expect("stdin");
    stdin.write_all(bytes).expect("write the request");
    stdin.flush().expect("flush");
    let start = Instant::now();
    let answer = util::first_line_within(&mut target, Duration::from_secs(5))
        .expect("an answer line before the end of output");
    let status = util::exits_within(&mut target, Duration::from_secs(5));
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(stdin);
    (answer, status)
}

#[test]
fn the_demo_target_answers_a_malformed_request_at_once() {
    for garbage in [
        &b"hello target\n"[..],
        b"pid? now\n",
        b"send\n",
        b"\xff\xfe\n",
    ] {
        let (answer, status) = demo_target_refuses(garbage);
        assert!(
            answer.starts_with("err 10050 protocol-violation "),
            "{garbage:?}: {answer}"
        );
        assert_eq!(status.code(), Some(1), "{garbage:?}");
    }
    // A line longer than the bound: answered before its end arrives.
    let (answer, status) = demo_target_refuses(&[b'x'; 64 * 1024 + 1]);
    assert!(
        answer.starts_with("err 10050 protocol-violation "),
        "{answer}"
    );
    assert!(answer.contains("longer than"), "{answer}");
    assert_eq!(status.code(), Some(1));
    // Well-formed requests get their answers.
    let out = run(&["demo-target"], Some(b"pid?\nquit\n"));
    assert_ok(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("log [target "), "{text}");
    assert!(lines[1].starts_with("ok "), "{text}");
}
