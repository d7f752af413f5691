//! Tests of `sockdup catalog install-library`: a C provider library (examples/c/counting_lsp.c)
//! installed with a chain over TCP/IPv4 and listed, and the files refused at install without
//! starting them (missing, not ELF, no WSPStartup, one only imported, a built-in layer between
//! two libraries), each leaving the catalog file as it was. A library whose WSPStartup fails installs:
//! install does not start it.

mod util;
use util::{TempDir, assert_fails, assert_ok, stdout};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sockdup_tests::cprov;

const BIN: &str = env!("CARGO_BIN_EXE_sockdup");

struct Catalog {
    dir: TempDir,
    path: PathBuf,
}

impl Catalog {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let path = dir.path().join("catalog.json");
        Self { dir, path }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SOCKDUP_CATALOG", &self.path)
            .output()
            .expect("run sockdup")
    }

    fn contents(&self) -> Option<String> {
        std::fs::read_to_string(&self.path).ok()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_c_layer_installs_over_tcp_and_is_listed() {
    let cat = Catalog::new("install-library");
    let lsp = cprov::counting_lsp(cat.dir.path());
    let out = cat.run(&[
        "catalog",
        "install-library",
        s(&lsp),
        "--over",
        "1001",
        "--name",
        "counting",
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("Installed layer 1101 (provider library \"counting\"")
            && text.contains(s(&lsp))
            && text.contains("chain 1102 over 1001: chain 2: [1101, 1001]"),
        "{text}"
    );
    let catalog = sockdup::load_catalog_from(&cat.path).unwrap();
    let layer = catalog.layer(1101).unwrap();
    assert_eq!(layer.kind, "library");
    assert_eq!(
        sockdup::spi::library::library_path(layer),
        Some(std::fs::canonicalize(&lsp).unwrap().as_path())
    );
    assert_ne!(layer.provider_id, sockdup::catalog::BASE_PROVIDER_ID);
    let listing = stdout(&cat.run(&["catalog"]));
    assert!(listing.contains("1101 library \"counting\""), "{listing}");

    // Only through install-library, which checks the file.
    let out = cat.run(&[
        "catalog",
        "install",
        "library",
        "--over",
        "1001",
        "--set",
        &format!("path={}", s(&lsp)),
    ]);
    assert_fails(&out, 2, &["install-library"]);
}

#[test]
fn files_that_are_no_provider_are_refused_at_install_and_nothing_is_written() {
    let cat = Catalog::new("refused");
    let dir = cat.dir.path();
    let cases = [
        (dir.join("libmissing.so"), "cannot be read"),
        (cprov::broken(dir, "not-elf"), "not a shared library"),
        (
            cprov::broken(dir, "no-wspstartup"),
            "does not define WSPStartup",
        ),
        (
            cprov::broken(dir, "imports-wspstartup"),
            "only imports WSPStartup",
        ),
    ];
    for (path, why) in &cases {
        let out = cat.run(&["catalog", "install-library", s(path), "--over", "1001"]);
        assert_fails(&out, 1, &[s(path), why, "invalid-provider", "10105"]);
        assert_eq!(cat.contents(), None, "{path:?}: nothing written");
    }
    // Over a chain of a built-in layer: fine. Over a chain of a built-in layer over another
    // library: the libraries of a chain must be next to each other.
    let lsp = cprov::counting_lsp(dir);
    assert_ok(&cat.run(&["catalog", "install", "trace", "--over", "1001"]));
    let out = cat.run(&["catalog", "install-library", s(&lsp), "--over", "1102"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("chain 1104 over 1102: chain 3: [1103, 1101, 1001]"),
        "{}",
        stdout(&out)
    );
    let out = cat.run(&["catalog", "install", "trace", "--over", "1104"]);
    assert_ok(&out);
    let before = cat.contents();
    let out = cat.run(&["catalog", "install-library", s(&lsp), "--over", "1106"]);
    assert_fails(
        &out,
        1,
        &[
            "sits between the provider libraries",
            "catalog-change-refused",
        ],
    );
    assert_eq!(cat.contents(), before);
}

#[test]
fn a_failing_wspstartup_installs_since_install_does_not_start_it() {
    // Its refusal at first use is tested with the peer (sockdup-tests' provider_libraries).
    let cat = Catalog::new("failing");
    let lib = cprov::broken(cat.dir.path(), "failing-wspstartup");
    let out = cat.run(&["catalog", "install-library", s(&lib), "--over", "1001"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("chain 1102 over 1001"),
        "{}",
        stdout(&out)
    );
}
