//! Helpers shared by the CLI tests. The generic ones (bounded waits, temporary directories,
//! output as text) are [`sockdup_tests::util`], re-exported here; what is particular to the
//! `sockdup` command stays here.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::process::Output;

pub use sockdup_tests::util::{
    TempDir, TempFile, assert_ok, exits_within, first_line_within, run_with_stdin, spawn_piped,
    stderr, stdout, wait_until,
};

/// The seed's handoff steps and which process does each, as `sockdup demo` prints them.
pub const DEMO_STEPS: [(u32, &str); 11] = [
    (1, "source"),
    (2, "source"),
    (3, "target"),
    (4, "source"),
    (5, "source"),
    (6, "source"),
    (7, "target"),
    (8, "target"),
    (9, "target"),
    (10, "source"),
    (10, "target"),
];

/// Asserts a clean failure with exit status `code`: every one of `needles` on stderr, no
/// panic, nothing on stdout.
#[track_caller]
pub fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{err}",
        stdout(out)
    );
    assert!(!err.contains("panicked"), "panicked: {err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
}

/// The kind in a `sockdup: error[KIND]: ...` line on stderr, if there is one.
pub fn error_kind(out: &Output) -> Option<String> {
    let err = stderr(out);
    let rest = err.split("sockdup: error[").nth(1)?;
    Some(rest.split(']').next()?.to_owned())
}
