//! Benchmarks of sockdup (see `benches/handoff.rs`), each measured beside its raw twin: the same
//! hand-off done with a bare `SCM_RIGHTS` `sendmsg`/`recvmsg` round trip.
//!
//! The benchmark process (the source) drives one target process, the `bench-target` binary of
//! this crate, over one pre-connected `AF_UNIX` `SOCK_SEQPACKET` socketpair that is the target's
//! standard input. This library holds the few constants of that control protocol, one message
//! per `SOCK_SEQPACKET` record:
//!
//! | From source | Payload | Target's answer |
//! |-------------|---------|-----------------|
//! | raw twin | [`RAW`] with descriptors in `SCM_RIGHTS` | closes them, answers [`ACK`] (1 byte) |
//! | sockdup records | `k * 628` bytes: `k` [`ProtocolInfo::to_bytes`](sockdup::ProtocolInfo::to_bytes) records | redeems each with `socket_from_info` and closes it; no answer |
//! | one SPI record | [`SPI`], then one 628-byte record | redeems it with [`sockdup::spi::Socket::from_info`] (through the chain of its catalog entry) and closes it; no answer |
//! | end of a timed run | [`FINISH`] | how many records it redeemed since the last [`FINISH`], `u64` little-endian |
//!
//! Records of protocol chains name catalog entries that only exist in the catalog file both
//! processes read (`SOCKDUP_CATALOG`, which the benchmark sets for itself and the target).
//!
//! At start the target sends [`READY`] once its inbox is open (`sockdup::startup()`). It exits
//! when the control socket reaches end-of-file (the source went away), on any error, and (through
//! `PR_SET_PDEATHSIG`) when the source dies.
//!
//! # Placement
//!
//! On a small or virtualised machine the cost of one hand-off depends mostly on where the
//! scheduler puts the two processes: a wake-up on the same CPU costs a context switch, a wake-up
//! of another, idle CPU can cost tens of microseconds (an inter-processor interrupt, and in a VM
//! an exit to the hypervisor). Left alone, the scheduler picks either from run to run and the
//! ratios flip. So the benchmark chooses ([`Placement`], `SOCKDUP_BENCH_PIN`):
//!
//! - `same` (the default): the source and every thread of the target on one CPU. Wake-ups are
//!   cheap and the measurement is the CPU work of each side: the library's cost beside the bare
//!   syscalls.
//! - `split`: the source on one CPU, the target on another. Every wake-up crosses CPUs, as
//!   between busy processes of a real system; the measurement is dominated by wake-up latency.
//! - `none`: no pinning (the scheduler decides; expect bimodal samples).
#![forbid(unsafe_code)]

use std::io;

use rustix::thread::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};

/// The target's inbox is open: the source may duplicate to it.
pub const READY: u8 = b'r';
/// A raw-twin message: descriptors attached, one byte of payload.
pub const RAW: u8 = b'F';
/// The target's answer to [`RAW`].
pub const ACK: u8 = b'a';
/// End of a timed run: the target answers with its redeemed count.
pub const FINISH: u8 = b'E';
/// Leads a message of one record that the target redeems through the SPI dispatcher
/// ([`sockdup::spi::Socket::from_info`]) rather than with `socket_from_info`. Such a message is
/// `1 + 628` bytes, never a multiple of 628, so it cannot be mistaken for a batch of records.
pub const SPI: u8 = b'S';
/// Bytes of an [`SPI`] message.
pub const SPI_MESSAGE_LEN: usize = 1 + RECORD_LEN;
/// Bytes of one record on the control socket.
pub const RECORD_LEN: usize = sockdup::ProtocolInfo::LEN;
/// The most records one control message may carry.
pub const MAX_RECORDS_PER_MESSAGE: usize = 64;
/// Linux's `SCM_MAX_FD`: the most descriptors one message may carry.
pub const MAX_FDS: usize = 253;

/// The environment variable that names the CPU the target pins itself to, set by the benchmark
/// for the target; absent, the target is not pinned.
pub const TARGET_CPU_ENV: &str = "SOCKDUP_BENCH_TARGET_CPU";

/// Where the benchmark runs the source and the target (see [Placement](crate#placement)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Source and target on one CPU.
    Same,
    /// Source on one CPU, target on another.
    Split,
    /// No pinning.
    Free,
}

impl Placement {
    /// The placement `SOCKDUP_BENCH_PIN` asks for: `same` (also when unset or empty), `split` or
    /// `none`.
    ///
    /// # Errors
    /// Any other value, with a message naming the accepted ones.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("SOCKDUP_BENCH_PIN")
            .unwrap_or_default()
            .trim()
        {
            "" | "same" => Ok(Self::Same),
            "split" => Ok(Self::Split),
            "none" => Ok(Self::Free),
            other => Err(format!(
                "SOCKDUP_BENCH_PIN is {other:?}: use \"same\" (default), \"split\" or \"none\""
            )),
        }
    }

    /// The name `SOCKDUP_BENCH_PIN` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Same => "same",
            Self::Split => "split",
            Self::Free => "none",
        }
    }
}

/// The CPUs the calling thread may run on (`sched_getaffinity`), in order.
///
/// # Errors
/// As the system call.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// The CPU the calling thread runs on now (`sched_getcpu`).
pub fn current_cpu() -> usize {
    sched_getcpu()
}

/// Pins the calling thread to `cpu` (`sched_setaffinity`); threads and processes it starts
/// afterwards inherit the pinning.
///
/// # Errors
/// As the system call (`EINVAL` for a CPU this thread may not use).
pub fn pin_to(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    Ok(sched_setaffinity(None, &set)?)
}
