//! The `sockdup` command.
#![forbid(unsafe_code)]

fn main() {}
