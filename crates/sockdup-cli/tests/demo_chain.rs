//! Tests of `sockdup demo --chain`: the handoff demo through a layered protocol chain of a
//! temporary catalog, with the per-layer report of both processes; its refusal of bad layer
//! lists; and its hidden helper subcommands used on their own.

mod util;
use util::{DEMO_STEPS, TempDir, assert_fails, assert_ok, stderr, stdout};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sockdup");

/// Runs `sockdup args...` with `env` added and `stdin` (or an empty stdin).
fn run_with(args: &[&str], env: &[(&str, &Path)], stdin: &[u8]) -> Output {
    util::run_with_stdin(
        Command::new(BIN).args(args).envs(env.iter().copied()),
        stdin,
    )
}

fn run(args: &[&str]) -> Output {
    run_with(args, &[], b"")
}

/// The demo's output, by line, with the helpers the checks need.
struct Demo {
    text: String,
}

impl Demo {
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.lines()
    }

    /// The lines of `who` ("source", "target" or "peer"), without their label.
    fn by(&self, who: &str) -> Vec<&str> {
        self.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix('[')?;
                let (label, text) = rest.split_once("] ")?;
                (label == who || label.starts_with(&format!("{who} "))).then_some(text)
            })
            .collect()
    }

    /// The pid in the label of `who`'s lines.
    fn pid(&self, who: &str) -> String {
        self.lines()
            .find_map(|l| l.strip_prefix(&format!("[{who} ")))
            .and_then(|rest| rest.split(']').next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no line of the {who}:\n{}", self.text))
    }

    /// `who`'s first line of step `step`.
    fn step(&self, who: &str, step: u32) -> &str {
        self.by(who)
            .into_iter()
            .find(|l| l.starts_with(&format!("{step}) ")))
            .unwrap_or_else(|| panic!("no step {step} by the {who}:\n{}", self.text))
    }

    /// `who`'s per-layer report lines.
    fn reports(&self, who: &str) -> Vec<&str> {
        self.by(who)
            .into_iter()
            .filter(|l| l.starts_with("report: layer "))
            .collect()
    }
}

/// Runs `sockdup demo --chain <layers>`, checks the ten steps as the plain demo's test does,
/// and returns the output, the chain's catalog id and the temporary catalog's path.
fn chain_demo(layers: &str) -> (Demo, u32, PathBuf) {
    let out = run(&["demo", "--chain", layers]);
    assert_ok(&out);
    let demo = Demo { text: stdout(&out) };
    let text = &demo.text;
    for (step, who) in DEMO_STEPS {
        demo.step(who, step);
    }
    assert!(text.contains("read EOF"), "{text}");
    assert!(text.contains("all 10 steps checked out"), "{text}");
    assert_ne!(demo.pid("source"), demo.pid("target"));
    let first = |step: u32| {
        demo.lines()
            .position(|l| l.contains(&format!("] {step}) ")))
            .expect("step present")
    };
    for step in 1..10 {
        assert!(first(step) < first(step + 1), "step order:\n{text}");
    }

    // The source's first line names its catalog and the chain; Socket::new picked that chain.
    let intro = demo.by("source")[0];
    let path = intro
        .split("SOCKDUP_CATALOG=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no catalog path in {intro:?}"));
    let chain: u32 = intro
        .split("its chain ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no chain id in {intro:?}"));
    let entry = format!("catalog entry {chain} ");
    assert!(
        demo.step("source", 1)
            .contains("Socket::new(AF_INET, SOCK_STREAM, 0)")
            && demo.step("source", 1).contains(&entry),
        "{text}"
    );
    // Both sides name the chain's catalog entry: the record carries it.
    assert!(
        demo.step("source", 5)
            .starts_with("5) Socket::duplicate -> record for pid")
            && demo
                .step("source", 5)
                .contains(&format!("catalog entry {chain},")),
        "{text}"
    );
    assert!(
        demo.step("target", 7)
            .contains(&format!("catalog entry {chain} ")),
        "{text}"
    );
    assert!(
        demo.step("target", 8)
            .starts_with("8) Socket::from_info -> handle")
            && demo.step("target", 8).contains(&entry),
        "{text}"
    );
    assert!(text.contains("the same record again -> refused"), "{text}");
    // The temporary catalog and its directory are gone.
    let dir = path.parent().expect("the catalog's directory");
    assert!(!dir.exists(), "{} was not removed", dir.display());
    (demo, chain, path)
}

#[test]
fn demo_through_a_trace_layer_reports_what_it_saw_in_both_processes() {
    let (demo, chain, _) = chain_demo("trace");
    let text = &demo.text;
    let target_pid = demo.pid("target");
    let seen = format!("entries_seen [{chain}, {chain}, {chain}]");

    // The target: two redemptions (the second refused: one error), the data both ways.
    let target = demo.reports("target");
    assert_eq!(target.len(), 1, "{text}");
    let sent = "hello peer, from target ".len()
        + target_pid.len()
        + "still connected after the source closed".len();
    let received = "hello target, from the peer".len() + "acknowledged".len();
    for want in [
        format!("(trace \"trace\") of chain {chain} saw:"),
        "socket_from_info 2".to_owned(),
        "startup 1".to_owned(),
        "close 1".to_owned(),
        format!("bytes_sent {sent}, bytes_received {received}, errors 1"),
        seen.clone(),
        format!("bytes_sent {sent}, bytes_received {received}, errors 0; now: no open socket"),
        "exactly the calls this process made".to_owned(),
    ] {
        assert!(
            target[0].contains(&want),
            "target report lacks {want:?}:\n{text}"
        );
    }
    assert!(!target[0].contains("duplicate"), "{text}");

    // The source: socket, connect, duplicate, close, no data.
    let source = demo.reports("source");
    assert_eq!(source.len(), 1, "{text}");
    for want in [
        format!("(trace \"trace\") of chain {chain} saw:"),
        "calls {close 1, connect 1, duplicate 1, socket 1, startup 1}".to_owned(),
        "bytes_sent 0, bytes_received 0, errors 0".to_owned(),
        seen,
        "exactly the calls this process made".to_owned(),
    ] {
        assert!(
            source[0].contains(&want),
            "source report lacks {want:?}:\n{text}"
        );
    }
    // The reports come after the last step, the target's first.
    let position = |needle: &str| text.find(needle).expect("present");
    assert!(position("read EOF") < position(target[0]));
    assert!(position(target[0]) < position(source[0]));
    assert!(position(source[0]) < position("all 10 steps checked out"));
}

#[test]
fn demo_through_policy_trace_and_fault_layers() {
    let (demo, chain, _) = chain_demo("policy,trace,fault");
    let text = &demo.text;
    let intro = demo.by("source")[0];
    assert!(
        intro.contains("policy \"policy\"")
            && intro.find("policy").unwrap() < intro.find("trace").unwrap()
            && intro.find("trace").unwrap() < intro.find("fault").unwrap()
            && intro.contains("TCP/IPv4 1001"),
        "the first layer listed is on top: {intro}"
    );
    // The chain has 4 entries, top first, the base last.
    let step5 = demo.step("source", 5);
    let entries = step5
        .split("chain [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("the record's chain");
    assert_eq!(entries.split(", ").count(), 4, "{step5}");
    assert!(entries.ends_with("1001"), "{step5}");

    for who in ["source", "target"] {
        let reports = demo.reports(who);
        assert_eq!(
            reports.len(),
            3,
            "one line per layer from the {who}:\n{text}"
        );
        assert!(
            reports[0].contains("(policy \"policy\")") && reports[0].contains("went through it"),
            "{text}"
        );
        assert!(
            reports[1].contains("(trace \"trace\")")
                && reports[1].contains(&format!("of chain {chain} saw:")),
            "{text}"
        );
        assert!(
            reports[2].contains("(fault \"fault\")") && reports[2].contains("went through it"),
            "{text}"
        );
    }
    assert!(
        demo.reports("target")[1].contains("socket_from_info 2"),
        "{text}"
    );
    assert!(demo.reports("source")[1].contains("duplicate 1"), "{text}");
}

#[test]
fn demo_refuses_unknown_layers_and_long_chains() {
    let out = run(&["demo", "--chain", "bogus"]);
    assert_fails(
        &out,
        2,
        &["bogus", "not a layer kind", "trace, policy, fault"],
    );
    let out = run(&["demo", "--chain", "trace,bogus"]);
    assert_fails(&out, 2, &["\"bogus\" is not a layer kind"]);
    let out = run(&[
        "demo",
        "--chain",
        "trace,trace,trace,trace,trace,trace,trace",
    ]);
    assert_fails(&out, 2, &["at most 6 layers"]);
    let out = run(&["demo", "--chain", "trace,,fault"]);
    assert_fails(&out, 2, &["empty layer name"]);
    let out = run(&["demo", "--chain"]);
    assert_fails(&out, 2, &["--chain"]);
}

#[test]
fn plain_demo_uses_no_chain() {
    let out = run(&["demo"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("] 5) duplicate_socket -> record for pid"),
        "{text}"
    );
    assert!(text.contains("] 8) socket_from_info -> fd"), "{text}");
    assert!(text.contains("all 10 steps checked out"), "{text}");
    assert!(!text.contains("report:"), "{text}");
    assert!(!text.contains("SOCKDUP_CATALOG"), "{text}");
}

#[test]
fn help_mentions_chain_and_hides_the_helpers() {
    let out = run(&["--help"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        !text.contains("demo-source") && !text.contains("demo-target"),
        "{text}"
    );
    let out = run(&["demo", "--help"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("--chain <LAYER[,LAYER...]>"), "{text}");
    assert!(text.contains("Socket::from_info"), "{text}");
}

/// A catalog file in a directory of its own, removed when dropped (even when the test panics).
struct TempCatalog(TempDir);

impl TempCatalog {
    fn with_layer(kind: &str, name: &str) -> Self {
        let dir = TempDir::new(&format!("demo-chain-test-{name}"));
        let mut catalog = sockdup::catalog::Catalog::builtin();
        catalog
            .install(kind, kind, true, BTreeMap::new(), &[1001])
            .expect("install");
        sockdup::save_catalog_to(&dir.path().join("catalog.json"), &catalog).expect("save");
        Self(dir)
    }

    fn path(&self) -> PathBuf {
        self.0.path().join("catalog.json")
    }
}

#[test]
fn the_source_helper_checks_its_catalog() {
    // Without SOCKDUP_CATALOG: nothing to use.
    let out = Command::new(BIN)
        .args(["demo-source", "--chain", "trace"])
        .env_remove("SOCKDUP_CATALOG")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_fails(&out, 1, &["sockdup: error: SOCKDUP_CATALOG is not set"]);

    // A catalog whose chain is not the one asked for.
    let catalog = TempCatalog::with_layer("trace", "mismatch");
    let path = catalog.path();
    let out = run_with(
        &["demo-source", "--chain", "fault"],
        &[("SOCKDUP_CATALOG", &path)],
        b"",
    );
    assert_fails(&out, 1, &["not fault over TCP/IPv4"]);
}

#[test]
fn the_target_helper_refuses_requests_out_of_order() {
    let catalog = TempCatalog::with_layer("trace", "order");
    let path = catalog.path();
    let env = [("SOCKDUP_CATALOG", path.as_path())];
    // A request out of order fails a check of the demo (`fail`); a record that does not
    // decode is a sockdup error, with its code and kind (`err`).
    for (input, want) in [
        (
            &b"report\n"[..],
            "fail the source asked for a layer report before",
        ),
        (
            b"send 9 hello\n",
            "fail the source asked for \"send\" before",
        ),
        (
            b"record sockdup1:garbage\n",
            "err 10022 malformed-record reading the source's request: decoding the record",
        ),
    ] {
        let out = run_with(&["demo-target", "--spi"], &env, input);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stdout(&out).starts_with(want), "{}", stdout(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // The plain target has no layers to report.
    let out = run_with(&["demo-target"], &[], b"report\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("the plain demo uses no layers"),
        "{}",
        stdout(&out)
    );
}
