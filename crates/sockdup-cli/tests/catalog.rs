//! Tests of `sockdup catalog`: listing the entries (as text and as JSON with the keys of
//! `sockdup inspect --json`), installing layers over base entries and chains, the 7-entry chain
//! limit, removing chains and layers, reset, and refusals that leave the catalog file as it was.
//!
//! Every test has its own catalog file, given to the spawned `sockdup` in `SOCKDUP_CATALOG`.

mod util;
use util::{TempDir, assert_fails, assert_ok, stderr, stdout};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sockdup::catalog::{Catalog, base_entry};
use sockdup::flags::{PFL_HIDDEN, XP1_IFS_HANDLES};

const BIN: &str = env!("CARGO_BIN_EXE_sockdup");

/// A catalog file path in a directory that does not exist yet, inside a fresh temporary
/// directory removed on drop.
struct CatalogFile {
    _dir: TempDir,
    path: PathBuf,
}

impl CatalogFile {
    fn new() -> Self {
        let dir = TempDir::new("catalog");
        let path = dir.path().join("nested/catalog.json");
        Self { _dir: dir, path }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `sockdup args...` with this file as `SOCKDUP_CATALOG`.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("SOCKDUP_CATALOG", &self.path);
        output(cmd)
    }

    /// Runs `sockdup args...` and asserts that it succeeded; returns its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_ok(&out);
        stdout(&out)
    }

    /// `sockdup catalog --json`, parsed.
    #[track_caller]
    fn json(&self) -> Vec<Value> {
        let text = self.ok(&["catalog", "--json"]);
        assert_eq!(text.trim().lines().count(), 1, "one line of JSON: {text}");
        match serde_json::from_str(&text).expect("valid JSON") {
            Value::Array(entries) => entries,
            other => panic!("not a JSON array: {other}"),
        }
    }

    /// The catalog ids in the order `sockdup catalog --json` lists them.
    #[track_caller]
    fn ids(&self) -> Vec<u64> {
        self.json()
            .iter()
            .map(|e| u(e, "catalog_entry_id"))
            .collect()
    }

    /// The file's bytes, or `None` if it does not exist.
    fn contents(&self) -> Option<Vec<u8>> {
        std::fs::read(&self.path).ok()
    }

    /// The catalog in the file, as the library reads it.
    #[track_caller]
    fn catalog(&self) -> Catalog {
        sockdup::load_catalog_from(&self.path).expect("the catalog file is valid")
    }

    /// `sockdup catalog install args...`: the new layer id and chain ids, from the library's
    /// view of the file before and after.
    #[track_caller]
    fn install(&self, args: &[&str]) -> (u32, Vec<u32>) {
        let before = self.catalog();
        let mut all = vec!["catalog", "install"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        let after = self.catalog();
        let layer = after
            .layers()
            .iter()
            .find(|l| before.layer(l.id).is_none())
            .expect("a new layer")
            .id;
        let chains: Vec<u32> = after
            .chains()
            .iter()
            .filter(|c| c.entries.first() == Some(&layer))
            .map(|c| c.id)
            .collect();
        assert!(
            text.contains(&format!("Installed layer {layer} ")),
            "{text}"
        );
        for chain in &chains {
            assert!(text.contains(&format!("chain {chain} over ")), "{text}");
        }
        (layer, chains)
    }
}

/// Runs `cmd`, capturing its output, and checks that it did not panic.
fn output(mut cmd: Command) -> Output {
    let out = cmd.output().expect("run sockdup");
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(
        !o.contains("panicked") && !e.contains("panicked"),
        "panicked:\n{o}\n{e}"
    );
    assert_ne!(out.status.code(), None, "killed by a signal: {e}");
    out
}

/// `obj[key]` as a `u64`.
#[track_caller]
fn u(obj: &Value, key: &str) -> u64 {
    obj[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a u64 in {obj}"))
}

/// `protocol_chain.len` of a JSON entry.
#[track_caller]
fn chain_len(obj: &Value) -> i64 {
    obj["protocol_chain"]["len"]
        .as_i64()
        .unwrap_or_else(|| panic!("no protocol_chain.len in {obj}"))
}

/// The keys of a JSON object, and of its `protocol_chain` object.
#[track_caller]
fn keys(obj: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let top = obj.as_object().expect("a JSON object");
    let chain = top["protocol_chain"].as_object().expect("a chain object");
    (
        top.keys().cloned().collect(),
        chain.keys().cloned().collect(),
    )
}

/// The JSON entry with catalog id `id`.
#[track_caller]
fn entry(entries: &[Value], id: u32) -> &Value {
    entries
        .iter()
        .find(|e| u(e, "catalog_entry_id") == u64::from(id))
        .unwrap_or_else(|| panic!("no entry {id}"))
}

/// The lines of the human listing from `Catalog entry {id}` to the next blank line.
#[track_caller]
fn block(listing: &str, id: u32) -> String {
    let start = listing
        .find(&format!("Catalog entry {id}\n"))
        .unwrap_or_else(|| panic!("no entry {id} in:\n{listing}"));
    let rest = &listing[start..];
    rest[..rest.find("\n\n").unwrap_or(rest.len())].to_owned()
}

/// Where `Catalog entry {id}` starts in the human listing.
#[track_caller]
fn position(listing: &str, id: u32) -> usize {
    listing
        .find(&format!("Catalog entry {id}\n"))
        .unwrap_or_else(|| panic!("no entry {id} in:\n{listing}"))
}

const BUILTIN: [u64; 7] = [1001, 1002, 1003, 1004, 1005, 1006, 1007];

// --- listing --------------------------------------------------------------------------------

/// Every command that reads the catalog file (and refuses it when it is not valid).
const READERS: [&[&str]; 4] = [
    &["catalog"],
    &["catalog", "--json"],
    &["catalog", "install", "trace", "--over", "1001"],
    &["catalog", "remove", "1102"],
];

#[test]
fn lists_the_seven_builtin_entries_without_a_file() {
    let file = CatalogFile::new();
    let text = file.ok(&["catalog"]);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains(&file.path().display().to_string()) && first.contains("does not exist"),
        "{text}"
    );
    assert_eq!(text.matches("Catalog entry ").count(), 7, "{text}");
    let mut last = 0;
    for id in 1001..=1007 {
        let at = position(&text, id);
        assert!(at > last, "entry {id} out of order:\n{text}");
        last = at;
        let b = block(&text, id);
        assert!(b.contains("chain           base"), "{b}");
        assert!(b.contains("hidden          no"), "{b}");
        assert!(b.contains("5d0c4d75-7b3e-4c1a-9e51-736f636b6475"), "{b}");
        assert!(b.contains("XP1_IFS_HANDLES"), "{b}");
        assert!(b.contains("PFL_MATCHES_PROTOCOL_ZERO"), "{b}");
    }
    let tcp = block(&text, 1001);
    for name in [
        "AF_INET",
        "SOCK_STREAM",
        "IPPROTO_TCP",
        "sockdup Linux TCP/IPv4",
    ] {
        assert!(tcp.contains(name), "{name}: {tcp}");
    }
    let udp6 = block(&text, 1004);
    for name in [
        "AF_INET6",
        "SOCK_DGRAM",
        "IPPROTO_UDP",
        "XP1_CONNECTIONLESS",
    ] {
        assert!(udp6.contains(name), "{name}: {udp6}");
    }
    assert!(block(&text, 1007).contains("SOCK_SEQPACKET"));
    assert!(block(&text, 1005).contains("AF_UNIX"));

    assert_eq!(file.ids(), BUILTIN);
    assert_eq!(file.contents(), None, "listing does not create the file");
}

#[test]
fn json_entries_have_exactly_the_keys_of_inspect_json() {
    let file = CatalogFile::new();
    // The keys `sockdup inspect --json` prints, for a base entry's record.
    let record = base_entry(1001).expect("entry 1001").to_string();
    let out = file.run(&["inspect", "--json", &record]);
    assert_ok(&out);
    let inspected: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let want = keys(&inspected);
    assert_eq!(want.0.len(), 20, "{inspected}");

    let builtin = file.json();
    assert_eq!(builtin.len(), 7);
    assert_eq!(
        builtin[0], inspected,
        "entry 1001 prints as inspect prints it"
    );

    let (trace, chains) = file.install(&["trace", "--over", "1001", "1003"]);
    let (policy, over) = file.install(&["policy", "--over", &chains[0].to_string()]);
    let entries = file.json();
    assert_eq!(entries.len(), 7 + 3 + 2);
    let catalog = file.catalog();
    let expected = catalog.all_entries();
    assert_eq!(entries.len(), expected.len());
    for (json, info) in entries.iter().zip(&expected) {
        assert_eq!(keys(json), want, "{json}");
        assert_eq!(
            u(json, "catalog_entry_id"),
            u64::from(info.catalog_entry_id)
        );
        assert_eq!(
            chain_len(json),
            i64::from(info.protocol_chain.len),
            "{json}"
        );
        let used: Vec<u64> = json["protocol_chain"]["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e.as_u64().expect("u64 entry"))
            .collect();
        assert_eq!(used.len(), 7);
        let want_entries: Vec<u64> = info
            .protocol_chain
            .entries
            .iter()
            .map(|&e| u64::from(e))
            .collect();
        assert_eq!(used, want_entries, "{json}");
        assert_eq!(
            json["protocol_name"],
            Value::from(info.protocol_name.clone())
        );
        assert_eq!(
            json["provider_id"],
            Value::from(info.provider_id.to_string())
        );
        assert_eq!(u(json, "provider_flags"), u64::from(info.provider_flags));
        assert_eq!(u(json, "service_flags1"), u64::from(info.service_flags1));
    }
    assert_eq!(chain_len(entry(&entries, over[0])), 3);
    assert_eq!(chain_len(entry(&entries, chains[0])), 2);
    assert_eq!(chain_len(entry(&entries, chains[1])), 2);
    for id in 1001..=1007 {
        assert_eq!(chain_len(entry(&entries, id)), 1);
    }
    assert_eq!(chain_len(entry(&entries, trace)), 0);
    assert_eq!(chain_len(entry(&entries, policy)), 0);
}

// --- install --------------------------------------------------------------------------------

#[test]
fn install_trace_over_two_base_entries_lists_the_chains_first_and_hides_the_layer() {
    let file = CatalogFile::new();
    let out = file.run(&["catalog", "install", "trace", "--over", "1001", "1003"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("Installed layer 1101 (trace \"trace\", IFS)"),
        "{text}"
    );
    assert!(
        text.contains("chain 1102 over 1001: chain 2: [1101, 1001]"),
        "{text}"
    );
    assert!(
        text.contains("chain 1103 over 1003: chain 2: [1101, 1003]"),
        "{text}"
    );
    assert!(text.contains(&file.path().display().to_string()), "{text}");

    let mut want = vec![1102, 1103];
    want.extend(BUILTIN);
    want.push(1101);
    assert_eq!(file.ids(), want);
    let entries = file.json();
    let layer = entry(&entries, 1101);
    assert_ne!(u(layer, "provider_flags") & u64::from(PFL_HIDDEN), 0);
    for chain in [1102, 1103] {
        assert_eq!(
            u(entry(&entries, chain), "provider_flags") & u64::from(PFL_HIDDEN),
            0
        );
    }

    let listing = file.ok(&["catalog"]);
    assert!(
        listing
            .lines()
            .next()
            .unwrap_or_default()
            .contains("(exists)"),
        "{listing}"
    );
    assert!(position(&listing, 1102) < position(&listing, 1103));
    assert!(position(&listing, 1103) < position(&listing, 1001));
    assert!(position(&listing, 1007) < position(&listing, 1101));
    let chain = block(&listing, 1102);
    assert!(chain.contains("chain 2: [1101, 1001]"), "{chain}");
    assert!(chain.contains("hidden          no"), "{chain}");
    assert!(
        chain.contains("\"trace over [sockdup Linux TCP/IPv4]\""),
        "{chain}"
    );
    let hidden = block(&listing, 1101);
    assert!(hidden.contains("layered (hidden)"), "{hidden}");
    assert!(hidden.contains("hidden          yes"), "{hidden}");
    assert!(hidden.contains("PFL_HIDDEN"), "{hidden}");

    // The file is the library's catalog file, as the library would write it.
    let mut expected = Catalog::builtin();
    expected
        .install("trace", "trace", true, Default::default(), &[1001, 1003])
        .expect("install");
    assert_eq!(file.catalog(), expected);
}

#[test]
fn install_over_a_chain_makes_a_three_long_chain_with_name_settings_and_non_ifs() {
    let file = CatalogFile::new();
    let (trace, chains) = file.install(&["trace", "--over", "1001"]);
    let (policy, over) = file.install(&[
        "policy",
        "--over",
        &chains[0].to_string(),
        "--name",
        "block lan",
        "--non-ifs",
        "--set",
        "connect=10.0.0.0/8",
        "--set",
        "target_exe=/opt/a=b",
    ]);
    assert_eq!(over.len(), 1);
    let catalog = file.catalog();
    let chain = catalog
        .chains()
        .iter()
        .find(|c| c.id == over[0])
        .expect("the new chain");
    assert_eq!(chain.entries, [policy, trace, 1001]);
    let layer = catalog.layer(policy).expect("the policy layer");
    assert_eq!(layer.kind, "policy");
    assert_eq!(layer.name, "block lan");
    assert!(!layer.ifs);
    assert_eq!(
        layer.config.get("connect").map(String::as_str),
        Some("10.0.0.0/8")
    );
    assert_eq!(
        layer.config.get("target_exe").map(String::as_str),
        Some("/opt/a=b"),
        "the value is everything after the first '='"
    );

    assert_eq!(file.ids()[..2], [u64::from(over[0]), u64::from(chains[0])]);
    let entries = file.json();
    let top = entry(&entries, over[0]);
    assert_eq!(chain_len(top), 3);
    assert_eq!(u(top, "service_flags1") & u64::from(XP1_IFS_HANDLES), 0);
    let listing = file.ok(&["catalog"]);
    let b = block(&listing, over[0]);
    assert!(
        b.contains(&format!("chain 3: [{policy}, {trace}, 1001]")),
        "{b}"
    );
    assert!(
        b.contains("\"block lan over [sockdup Linux TCP/IPv4]\""),
        "{b}"
    );
    assert!(!b.contains("XP1_IFS_HANDLES"), "{b}");
    let hidden = block(&listing, policy);
    assert!(
        hidden.contains("non-IFS") && hidden.contains("connect=\"10.0.0.0/8\""),
        "{hidden}"
    );
}

#[test]
fn chains_stop_at_seven_entries_and_the_file_stays_as_it_was() {
    let file = CatalogFile::new();
    let mut top = 1001u32;
    for _ in 0..6 {
        top = file.install(&["fault", "--over", &top.to_string()]).1[0];
    }
    assert_eq!(chain_len(entry(&file.json(), top)), 7);
    let before = file.contents();
    let out = file.run(&["catalog", "install", "trace", "--over", &top.to_string()]);
    assert_fails(
        &out,
        1,
        &[
            "error[catalog-change-refused]",
            "MAX_PROTOCOL_CHAIN",
            "WSAEINVAL 10022",
        ],
    );
    assert_eq!(file.contents(), before);
}

#[test]
fn bad_installs_fail_clearly_and_change_nothing() {
    let file = CatalogFile::new();
    // Before any file exists: a failed install does not create it.
    let out = file.run(&["catalog", "install", "magic", "--over", "1001"]);
    assert_fails(
        &out,
        1,
        &[
            "error[catalog-change-refused]",
            "\"magic\"",
            "trace, policy, fault",
            "WSAEINVAL 10022",
        ],
    );
    assert_eq!(file.contents(), None);

    let (layer, _) = file.install(&["trace", "--over", "1001"]);
    let before = file.contents();
    assert!(before.is_some());
    let layer = layer.to_string();
    let cases: [(&[&str], i32, &str); 9] = [
        (&["magic", "--over", "1001"], 1, "WSAEINVAL 10022"),
        (&["trace", "--over", "4242"], 1, "4242"),
        (&["trace", "--over", "1001", "4242"], 1, "4242"),
        (
            &["trace", "--over", &layer],
            1,
            "neither a base entry nor a chain",
        ),
        (&["trace", "--over", "1001", "1001"], 2, "more than once"),
        (&["trace"], 2, "--over"),
        (&["trace", "--over", "x"], 2, "--over"),
        (
            &["trace", "--over", "1001", "--set", "novalue"],
            2,
            "KEY=VALUE",
        ),
        (&["trace", "--over", "1001", "--name", ""], 2, "--name"),
    ];
    for (args, code, needle) in cases {
        let mut all = vec!["catalog", "install"];
        all.extend_from_slice(args);
        let out = file.run(&all);
        assert_fails(&out, code, &[needle]);
        assert_eq!(file.contents(), before, "{args:?} changed the file");
    }
}

/// The valid keys of a fault layer, as its refusals list them.
const FAULT_KEYS: [&str; 5] = [
    "fail.CALL",
    "delay.CALL",
    "connect",
    "socket_from_info",
    "string_to_address",
];

#[test]
fn install_refuses_a_setting_the_layer_does_not_take_naming_the_valid_keys() {
    let file = CatalogFile::new();
    let out = file.run(&[
        "catalog",
        "install",
        "fault",
        "--over",
        "1001",
        "--set",
        "fail.conect=10050",
    ]);
    let mut needles = vec![
        "error[invalid-layer-setting]",
        "\"fail.conect\"",
        "WSAEINVAL 10022",
    ];
    needles.extend(FAULT_KEYS);
    assert_fails(&out, 1, &needles);
    assert_eq!(file.contents(), None, "a refused install writes nothing");

    let (_, chains) = file.install(&["trace", "--over", "1001"]);
    let before = file.contents();
    let over = chains[0].to_string();
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["fault", "--over", "1001", "--set", "fail.send=many"],
            &[
                "\"fail.send\"",
                "\"many\"",
                "Winsock error number",
                "delay.CALL",
            ],
        ),
        (
            &["fault", "--over", &over, "--set", "delay.connect=-5"],
            &["\"delay.connect\"", "milliseconds", "fail.CALL"],
        ),
        (
            &["policy", "--over", "1001", "--set", "deny=10.0.0.0/8"],
            &["\"deny\"", "target_uids", "target_exe", "connect"],
        ),
        (
            &["policy", "--over", "1001", "--set", "connect=10.0.0.0/33"],
            &["\"connect\"", "10.0.0.0/33", "target_uids"],
        ),
        (
            &["trace", "--over", "1002", "--set", "verbose=1"],
            &["\"verbose\"", "takes no settings"],
        ),
    ];
    for (args, needles) in cases {
        let mut all = vec!["catalog", "install"];
        all.extend_from_slice(args);
        let out = file.run(&all);
        assert_fails(&out, 1, needles);
        assert_eq!(file.contents(), before, "{args:?} changed the file");
    }
    // The same settings, spelt right, install.
    file.install(&[
        "fault",
        "--over",
        "1001",
        "--set",
        "fail.connect=10050",
        "--set",
        "delay.send=5",
    ]);
}

#[test]
fn a_hand_edited_setting_is_refused_when_the_catalog_is_read() {
    let file = CatalogFile::new();
    file.install(&["fault", "--over", "1001", "--set", "fail.connect=10050"]);
    let good = String::from_utf8(file.contents().expect("the file")).expect("UTF-8");
    assert!(good.contains("\"fail.connect\""), "{good}");
    let edited = good.replace("\"fail.connect\"", "\"fail.conect\"");
    std::fs::write(file.path(), &edited).expect("write");
    let shown = file.path().display().to_string();
    let mut needles = vec![
        "error[invalid-layer-setting]",
        shown.as_str(),
        "\"fail.conect\"",
        "WSAEINVAL 10022",
    ];
    needles.extend(FAULT_KEYS);
    for args in READERS {
        let out = file.run(args);
        assert_fails(&out, 1, &needles);
        assert_eq!(
            file.contents().as_deref(),
            Some(edited.as_bytes()),
            "{args:?} changed the file"
        );
    }
    let e = sockdup::load_catalog_from(file.path()).expect_err("refused on load");
    assert_eq!(e.kind(), sockdup::ErrorKind::InvalidLayerSetting);
    assert!(e.message().contains("fail.conect"), "{e}");
}

// --- remove and reset -----------------------------------------------------------------------

#[test]
fn removing_a_layer_removes_its_chains() {
    let file = CatalogFile::new();
    let (trace, chains) = file.install(&["trace", "--over", "1001", "1003"]);
    let (fault, over) = file.install(&["fault", "--over", &chains[0].to_string()]);
    let (_, own) = file.install(&["policy", "--over", "1002"]);

    let text = file.ok(&["catalog", "remove", &trace.to_string()]);
    for id in [chains[0], chains[1], over[0]] {
        assert!(text.contains(&id.to_string()), "{id}: {text}");
    }
    assert!(text.contains(&format!("Removed layer {fault} ")), "{text}");
    let ids = file.ids();
    for id in [trace, chains[0], chains[1], over[0]] {
        assert!(!ids.contains(&u64::from(id)), "{id} still listed: {ids:?}");
    }
    assert!(ids.contains(&u64::from(own[0])), "{ids:?}");
    assert!(
        !ids.contains(&u64::from(fault)),
        "a layer in no chain goes too: {ids:?}"
    );
    assert_eq!(file.catalog().chains().len(), 1);

    // The last chain of a layer: the layer goes with it.
    let text = file.ok(&["catalog", "remove", &own[0].to_string()]);
    assert!(
        text.contains(&format!("Removed chain {}", own[0])),
        "{text}"
    );
    assert!(file.catalog().chains().is_empty());
    assert!(file.catalog().layers().is_empty());
    assert!(text.contains("in no chain now"), "{text}");
    assert_eq!(file.json().len(), 7);
}

#[test]
fn removing_a_base_entry_or_an_unknown_id_is_refused() {
    let file = CatalogFile::new();
    file.install(&["trace", "--over", "1001"]);
    let before = file.contents();
    let out = file.run(&["catalog", "remove", "1001"]);
    assert_fails(
        &out,
        1,
        &[
            "error[catalog-change-refused]",
            "built-in",
            "WSAEINVAL 10022",
        ],
    );
    let out = file.run(&["catalog", "remove", "4242"]);
    assert_fails(
        &out,
        1,
        &[
            "error[catalog-change-refused]",
            "no entry 4242",
            "WSAEINVAL 10022",
        ],
    );
    let out = file.run(&["catalog", "remove", "-5"]);
    assert_fails(&out, 2, &[]);
    assert_eq!(file.contents(), before);
}

#[test]
fn reset_goes_back_to_the_builtin_entries() {
    let file = CatalogFile::new();
    file.install(&["trace", "--over", "1001", "1002"]);
    assert_eq!(file.ids().len(), 10);
    let text = file.ok(&["catalog", "reset"]);
    assert!(text.contains(&file.path().display().to_string()), "{text}");
    assert_eq!(file.contents(), None);
    assert_eq!(file.ids(), BUILTIN);
    // Again, with no file: fine.
    file.ok(&["catalog", "reset"]);
    assert_eq!(file.ids(), BUILTIN);
}

// --- bad catalog files and no catalog path --------------------------------------------------

#[test]
fn an_invalid_catalog_file_is_reported_with_its_path() {
    let file = CatalogFile::new();
    let dir = file.path().parent().expect("parent");
    std::fs::create_dir_all(dir).expect("mkdir");
    let shown = file.path().display().to_string();
    let bad: [(&str, &str); 3] = [
        ("{ not json", "not valid"),
        (
            r#"{"version":1,"chains":[{"id":1102,"entries":[4000,1001]}]}"#,
            "catalog entry 1102",
        ),
        (r#"{"version":7}"#, "version 7"),
    ];
    for (text, needle) in bad {
        std::fs::write(file.path(), text).expect("write");
        for args in READERS {
            let out = file.run(args);
            assert_fails(&out, 1, &[&shown, needle, "WSAEINVAL 10022"]);
            assert_eq!(
                file.contents().as_deref(),
                Some(text.as_bytes()),
                "{args:?} changed the file"
            );
        }
    }
    // Reset is the way out.
    file.ok(&["catalog", "reset"]);
    assert_eq!(file.ids(), BUILTIN);
}

#[test]
fn without_a_catalog_path_changes_ask_for_sockdup_catalog() {
    let run = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("SOCKDUP_CATALOG")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("HOME");
        output(cmd)
    };
    for args in [
        &["catalog", "install", "trace", "--over", "1001"][..],
        &["catalog", "remove", "1101"],
        &["catalog", "reset"],
    ] {
        let out = run(args);
        assert_fails(&out, 1, &["SOCKDUP_CATALOG"]);
    }
    let out = run(&["catalog"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.starts_with("Catalog file: none"), "{text}");
    assert_eq!(text.matches("Catalog entry ").count(), 7, "{text}");
}

#[test]
fn help_describes_the_catalog_commands() {
    let file = CatalogFile::new();
    let text = file.ok(&["catalog", "--help"]);
    for word in [
        "WSCEnumProtocols",
        "SOCKDUP_CATALOG",
        "install",
        "remove",
        "reset",
    ] {
        assert!(text.contains(word), "{word}: {text}");
    }
    let text = file.ok(&["catalog", "install", "--help"]);
    assert!(text.contains("trace, policy or fault"), "{text}");
    for key in [
        "target_uids",
        "target_exe",
        "connect=",
        "fail.CALL",
        "delay.CALL",
    ] {
        assert!(text.contains(key), "{key}: {text}");
    }
    for call in sockdup::catalog::ProviderCall::ALL {
        assert!(text.contains(call.name()), "{call:?}: {text}");
    }
    let out = file.run(&["catalog", "--json", "reset"]);
    assert_fails(&out, 2, &["--json"]);
}
