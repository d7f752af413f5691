//! Provider libraries in C for the tests: `libsockdup.so` built once per test run (`cargo
//! build -p sockdup-ffi`, the profile of the running test), the example layer
//! `examples/c/counting_lsp.c` and the broken libraries the refusals are tested with, compiled
//! by `gcc` into a test's directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `crates/sockdup-ffi/include`.
pub fn include_dir() -> PathBuf {
    workspace().join("crates/sockdup-ffi/include")
}

/// The directory of the running test's profile (`target/debug`): `libsockdup.so` goes there,
/// beside the `peer` and `sockdup` programs.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let mut dir = exe.parent().expect("deps").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// `libsockdup.so` of this build, built on first use (once per test process).
pub fn libsockdup() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // Cargo does not build a cdylib-only package for another's tests: build it with
            // this test's profile and target directory.
            let dir = profile_dir();
            let profile = match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev".to_owned(),
                Some(other) => other.to_owned(),
            };
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args([
                "build",
                "--quiet",
                "--locked",
                "-p",
                "sockdup-ffi",
                "--profile",
            ])
            .arg(profile)
            .arg("--target-dir")
            .arg(dir.parent().expect("the target directory"))
            .current_dir(workspace());
            let status = cmd.status().expect("run cargo build -p sockdup-ffi");
            assert!(status.success(), "cargo build -p sockdup-ffi failed");
            let lib = dir.join("libsockdup.so");
            assert!(lib.is_file(), "{} was not built", lib.display());
            lib
        })
        .clone()
}

/// Compiles C `source` (a file) into the shared library `out` with `gcc -shared -fPIC` and
/// sockdup's headers, plus `extra` arguments; panics with gcc's output if it fails.
pub fn compile_shared(source: &Path, out: &Path, extra: &[&str]) {
    let output = Command::new("gcc")
        .args([
            "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-O1", "-I",
        ])
        .arg(include_dir())
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .expect("run gcc");
    assert!(
        output.status.success(),
        "gcc {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `examples/c/counting_lsp.c` compiled into `dir/libcounting_lsp.so`.
pub fn counting_lsp(dir: &Path) -> PathBuf {
    let out = dir.join("libcounting_lsp.so");
    compile_shared(
        &workspace().join("examples/c/counting_lsp.c"),
        &out,
        &["-std=c11"],
    );
    out
}

/// `examples/c/counting_lsp.c` linked with `-lsockdup` (this build's, found through an
/// rpath) into `dir/libcounting_lsp_linked.so`: loaded into a Rust program holding sockdup
/// itself, it brings a second copy of libsockdup's code into the process, which must not
/// become a second runtime.
pub fn counting_lsp_linked(dir: &Path) -> PathBuf {
    let lib = libsockdup();
    let libdir = lib.parent().expect("the library's directory");
    let out = dir.join("libcounting_lsp_linked.so");
    compile_shared(
        &workspace().join("examples/c/counting_lsp.c"),
        &out,
        &[
            "-std=c11",
            "-L",
            libdir.to_str().expect("UTF-8 path"),
            "-lsockdup",
            &format!("-Wl,-rpath,{}", libdir.display()),
        ],
    );
    out
}

/// The libraries that are no provider, by name: `(file name, C source)`; `not-elf` is a text
/// file, not compiled.
pub const BROKEN: &[(&str, &str)] = &[
    ("no-wspstartup", "int not_a_provider(void) { return 0; }\n"),
    (
        // Refers to WSPStartup without defining it: what a library linked with -lsockdup that
        // forgot its own would look like.
        "imports-wspstartup",
        "extern int WSPStartup(void);\nvoid *which(void) { return (void *)&WSPStartup; }\n",
    ),
    (
        // A provider whose WSPStartup fails (WSAENETDOWN, 10050).
        "failing-wspstartup",
        "#include <sockdup/ws2spi.h>\n\
         int WSPAPI WSPStartup(WORD v, LPWSPDATA d, LPWSAPROTOCOL_INFOW i, WSPUPCALLTABLE u,\n\
                               LPWSPPROC_TABLE t) {\n\
             (void)v; (void)d; (void)i; (void)u; (void)t;\n\
             return 10050;\n\
         }\n",
    ),
    (
        // A provider whose WSPStartup succeeds but fills no slot of its table.
        "empty-table",
        "#include <sockdup/ws2spi.h>\n\
         #include <string.h>\n\
         int WSPAPI WSPStartup(WORD v, LPWSPDATA d, LPWSAPROTOCOL_INFOW i, WSPUPCALLTABLE u,\n\
                               LPWSPPROC_TABLE t) {\n\
             (void)v; (void)d; (void)i; (void)u;\n\
             memset(t, 0, sizeof *t);\n\
             return 0;\n\
         }\n",
    ),
];

/// The broken library `name` of [`BROKEN`] (or `not-elf`, a text file) made in `dir`.
pub fn broken(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("lib{name}.so"));
    if name == "not-elf" {
        std::fs::write(&out, "this is not a shared library\n").expect("write");
        return out;
    }
    let (_, code) = BROKEN
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a broken library's name");
    let source = dir.join(format!("{name}.c"));
    std::fs::write(&source, code).expect("write the source");
    compile_shared(&source, &out, &[]);
    out
}

/// One line of a counting layer's log (`examples/c/counting_lsp.c`): the call's name first,
/// then `key=value` pairs.
pub type Call = std::collections::BTreeMap<String, String>;

/// The lines of the counting layer's log at `log` that start with `call`.
pub fn calls(log: &Path, call: &str) -> Vec<Call> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').next() == Some(call))
        .map(key_values)
        .collect()
}

/// The `key=value` words of `line` (others are skipped), as a map: a line of the counting
/// layer's log, or one report of the peer's `trace` verb.
pub fn key_values(line: &str) -> Call {
    line.split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Asserts that the counting layer, one layer over TCP/IPv4's base entry 1001, saw a redemption
/// `r` (its `WSPSocket` line) as the propagation rule says: `FROM_PROTOCOL_INFO` in
/// af/type/protocol and chain `chain`'s record (chain length 2) coming in, the base entry
/// (length 1) with the record's ticket `reserved` passed down.
pub fn assert_redeemed_by_the_rule(r: &Call, chain: u32, reserved: u32) {
    assert_eq!(
        (r["af"].as_str(), r["type"].as_str(), r["protocol"].as_str()),
        ("-1", "-1", "-1"),
        "{r:?}"
    );
    assert_eq!(
        (r["in"].as_str(), r["in_chain"].as_str()),
        (&*chain.to_string(), "2"),
        "{r:?}"
    );
    assert_eq!(
        (r["down"].as_str(), r["down_chain"].as_str()),
        ("1001", "1"),
        "{r:?}"
    );
    assert_eq!(r["reserved"], reserved.to_string(), "{r:?}");
}
