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
//! The `upgrade` benchmark (see `benches/upgrade.rs`) drives another helper, the
//! `upgrade-server` binary: a server holding `N` TCP listeners that either publishes them for
//! [`sockdup::upgrade`] takeovers or, as the raw twin, sends all `N` back with bare
//! `SCM_RIGHTS` messages ([`MAX_FDS`] per message) for each [`FDS_REQUEST`] byte.
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

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::io::Errno;
use rustix::net::{
    self, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
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
/// The floor twin's descriptors (see the `handoff` benchmark's docs): attached to a one-byte
/// message; the target keeps them, in order, and answers [`ACK`].
pub const FLOOR_FDS: u8 = b'P';
/// [`FLOOR_FDS`] without the answer: the one-way floor twin.
pub const FLOOR_FDS_ONE_WAY: u8 = b'p';
/// Leads a message of the floor twin's records, [`RECORD_LEN`] bytes each: the target takes as
/// many of the descriptors it keeps, oldest first, and closes them (its "redeem").
pub const FLOOR_RECORDS: u8 = b'Q';
/// A one-way raw-twin message: descriptors attached, the target closes them and answers nothing.
pub const RAW_ONE_WAY: u8 = b'f';
/// Bytes of an [`SPI`] message.
pub const SPI_MESSAGE_LEN: usize = 1 + RECORD_LEN;
/// Bytes of one record on the control socket.
pub const RECORD_LEN: usize = sockdup::ProtocolInfo::LEN;
/// The most records one control message may carry.
pub const MAX_RECORDS_PER_MESSAGE: usize = 64;
/// Linux's `SCM_MAX_FD`: the most descriptors one message may carry.
pub const MAX_FDS: usize = 253;
/// The raw twin of the `upgrade` benchmark: a one-byte request to `upgrade-server raw`, which
/// answers with all its listeners in `SCM_RIGHTS` messages of at most [`MAX_FDS`] descriptors
/// and one byte of payload ([`RAW`]) each.
pub const FDS_REQUEST: u8 = b'L';
/// The line `upgrade-server` prints on its standard output once it serves.
pub const SERVER_READY: &str = "ready";

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

/// Pins this thread (the source's) as `SOCKDUP_BENCH_PIN` asks, before anything else starts,
/// and returns the CPU for the helper process (pass it in [`TARGET_CPU_ENV`]). Prints the
/// placement to standard error, prefixed with `bench`.
///
/// # Errors
/// A bad `SOCKDUP_BENCH_PIN`, `split` with one usable CPU, or a failed system call, as a
/// message.
pub fn place(bench: &str) -> Result<Option<usize>, String> {
    let placement = Placement::from_env()?;
    let cpus = allowed_cpus().map_err(|e| format!("sched_getaffinity: {e}"))?;
    // `none` asks nothing of the CPU this runs on (so the benchmark also runs under
    // valgrind, whose processes have no vDSO for `getcpu`).
    let here = if placement == Placement::Free {
        cpus[0]
    } else {
        current_cpu()
    };
    let first = if cpus.contains(&here) { here } else { cpus[0] };
    let (source, target) = match placement {
        Placement::Free => (None, None),
        Placement::Same => (Some(first), Some(first)),
        Placement::Split => match cpus.iter().find(|&&c| c != first) {
            Some(&other) => (Some(first), Some(other)),
            None => return Err("SOCKDUP_BENCH_PIN=split needs two usable CPUs".into()),
        },
    };
    if let Some(cpu) = source {
        pin_to(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
    }
    let show = |c: Option<usize>| c.map_or_else(|| "any CPU".to_owned(), |c| format!("CPU {c}"));
    eprintln!(
        "{bench}: SOCKDUP_BENCH_PIN={}: source on {}, target on {} (of CPUs {cpus:?})",
        placement.name(),
        show(source),
        show(target)
    );
    Ok(target)
}

/// Creates a new directory of this process's own under the temporary directory, named
/// `PREFIX-PID-NANOS`, and returns its path.
///
/// # Errors
/// If it cannot be created (`create_dir` fails on anything already there), as a message naming
/// the path.
pub fn fresh_temp_dir(prefix: &str) -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:09}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// One `sendmsg` of `payload` with `fds` (at most [`MAX_FDS`]) in `SCM_RIGHTS`.
///
/// # Errors
/// As the system call.
///
/// # Panics
/// With more than [`MAX_FDS`] descriptors.
pub fn send_fds(sock: BorrowedFd<'_>, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    net::sendmsg(
        sock,
        &[IoSlice::new(payload)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// One `recvmsg` (with `MSG_CMSG_CLOEXEC`, retried on `EINTR`) into `buf`; the descriptors that
/// came with it are appended to `fds`. Returns the payload's length (0 with no descriptor: the
/// peer closed).
///
/// # Errors
/// As the system call; `EMSGSIZE` if the payload or the descriptors were truncated (those
/// that did come are still appended).
pub fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let msg = loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        match net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut *buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = m {
                        fds.extend(rights);
                    }
                }
                break m;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    if msg
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(Errno::MSGSIZE.into());
    }
    Ok(msg.bytes)
}

/// Raises this process's soft limit of open descriptors (`RLIMIT_NOFILE`) to its hard limit,
/// as a server holding a thousand listeners needs; returns the new soft limit (`None`:
/// unlimited).
///
/// # Errors
/// As `setrlimit`.
pub fn raise_nofile_limit() -> io::Result<Option<u64>> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(limit.maximum)
}

/// The name the `upgrade` benchmark publishes listener `i` under: `l0`, `l1`, ...
pub fn listener_name(i: usize) -> String {
    format!("l{i}")
}

/// Binds `n` TCP listeners on `127.0.0.1`, each on a port of the system's choice.
///
/// # Errors
/// As `bind` (`EMFILE` past the descriptor limit: see [`raise_nofile_limit`]).
pub fn tcp_listeners(n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect()
}

/// A connected `SOCK_SEQPACKET` pair for driving a helper process: this side (whose receives
/// give up after 30 s, so a hung helper fails the benchmark instead of hanging it) and the
/// helper's side, for its standard input.
pub fn control_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ctl, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::sockopt::set_socket_timeout(
        &ctl,
        rustix::net::sockopt::Timeout::Recv,
        Some(std::time::Duration::from_secs(30)),
    )?;
    Ok((ctl, theirs))
}
