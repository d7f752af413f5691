//! Benchmarks of sockdup (see `benches/`).
#![forbid(unsafe_code)]
