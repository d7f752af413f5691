//! Process-level tests of sockdup. The `peer` binary is a process the tests drive line by line
//! over its stdin and stdout; the tests in `tests/` spawn it as sources, targets and bystanders.
#![forbid(unsafe_code)]
