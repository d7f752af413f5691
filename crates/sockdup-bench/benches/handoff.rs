//! Criterion benchmark `handoff`: sockdup's duplicate-and-redeem between two real processes,
//! each group beside its raw twin measured in the same run.
//!
//! - `single/sockdup`: `duplicate_socket` of one UDP socket to the target, then its 628-byte
//!   record one-way to the target's main thread, which decodes it, redeems it with
//!   `socket_from_info` and closes the descriptor. `single/raw`: one `sendmsg` of that socket with
//!   `SCM_RIGHTS` over a pre-connected `SOCK_SEQPACKET` socketpair; the target closes it and
//!   answers one byte.
//! - `batch64/sockdup`: `duplicate_sockets` of 64 UDP sockets, 64 records in one message, the
//!   target redeems all 64. `batch64/raw`: one `sendmsg` carrying the 64 descriptors, and the
//!   one-byte answer. Throughput in descriptors per second.
//!
//! Every measurement of `N` iterations ends only when the target has answered a final
//! [`FINISH`] (after redeeming all the records it was sent), so the target's redeem work is
//! counted; both twins pay that last round trip. `ratios.py` beside `Cargo.toml` prints the
//! sockdup/raw ratios from criterion's estimates.
//!
//! The target is the `bench-target` binary of this crate, a separate process; it is killed when
//! the benchmark ends (and dies by itself if the benchmark dies).
//!
//! Both processes are pinned to one CPU unless `SOCKDUP_BENCH_PIN` says otherwise (`split`: one
//! CPU each; `none`): see the library's [Placement](sockdup_bench#placement) section for why.
#![forbid(unsafe_code)]

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rustix::net::{
    self, AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketFlags, SocketType, sockopt,
};
use sockdup_bench::{
    ACK, FINISH, MAX_FDS, MAX_RECORDS_PER_MESSAGE, Placement, RAW, READY, RECORD_LEN,
    TARGET_CPU_ENV,
};

/// Sockets duplicated per `batch64` iteration.
const BATCH: usize = 64;
const _: () = assert!(BATCH <= MAX_RECORDS_PER_MESSAGE);

/// The target process and the source's end of its control socket.
struct Target {
    child: Child,
    ctl: OwnedFd,
    pid: u32,
}

impl Target {
    /// Starts the target, pinned to `cpu` if given, and waits until its inbox is open.
    fn spawn(cpu: Option<usize>) -> Self {
        let (ctl, theirs) = net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        // A hung target fails the benchmark instead of hanging it.
        sockopt::set_socket_timeout(&ctl, sockopt::Timeout::Recv, Some(Duration::from_secs(30)))
            .expect("SO_RCVTIMEO");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bench-target"));
        cmd.stdin(Stdio::from(theirs)).env_remove(TARGET_CPU_ENV);
        if let Some(cpu) = cpu {
            cmd.env(TARGET_CPU_ENV, cpu.to_string());
        }
        let child = cmd.spawn().expect("spawning bench-target");
        let pid = child.id();
        let target = Self { child, ctl, pid };
        let mut b = [0u8; 8];
        assert_eq!(target.recv(&mut b), [READY], "bench-target did not start");
        target
    }

    /// Receives one answer; panics (killing the target as `self` drops) if it exited or hung.
    fn recv<'b>(&self, buf: &'b mut [u8]) -> &'b [u8] {
        let (n, _) = net::recv(&self.ctl, &mut *buf, RecvFlags::empty())
            .unwrap_or_else(|e| panic!("waiting for bench-target: {e}"));
        assert!(n > 0, "bench-target exited (see its stderr above)");
        &buf[..n]
    }

    /// One-way: the records, 628 bytes each, in one message.
    fn send_records(&self, bytes: &[u8]) {
        net::send(&self.ctl, bytes, SendFlags::NOSIGNAL).expect("sending records");
    }

    /// The raw twin: `fds` in one `SCM_RIGHTS` message, then the target's one-byte answer.
    fn raw_round_trip(&self, fds: &[BorrowedFd<'_>]) {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        net::sendmsg(
            &self.ctl,
            &[IoSlice::new(&[RAW])],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .expect("sendmsg with SCM_RIGHTS");
        let mut b = [0u8; 8];
        assert_eq!(self.recv(&mut b), [ACK]);
    }

    /// Ends a timed run: returns how many records the target redeemed since the last call.
    fn finish(&self) -> u64 {
        net::send(&self.ctl, &[FINISH], SendFlags::NOSIGNAL).expect("sending FINISH");
        let mut b = [0u8; 8];
        let answer = self.recv(&mut b);
        u64::from_le_bytes(answer.try_into().expect("an 8-byte count"))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raw twin: `iters` bare `SCM_RIGHTS` round trips of `fds`, timed like the sockdup side.
fn raw_twin(target: &Target, fds: &[BorrowedFd<'_>], iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        target.raw_round_trip(fds);
    }
    let redeemed = target.finish();
    let elapsed = start.elapsed();
    assert_eq!(redeemed, 0);
    elapsed
}

fn udp_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket")
}

fn single(c: &mut Criterion, target: &Target) {
    let sock = udp_socket();
    let mut g = c.benchmark_group("single");
    g.bench_function("sockdup", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let record = sockdup::duplicate_socket(&sock, target.pid).expect("duplicate");
                target.send_records(&record.to_bytes());
            }
            let redeemed = target.finish();
            let elapsed = start.elapsed();
            assert_eq!(redeemed, iters, "the target redeemed every record");
            elapsed
        });
    });
    g.bench_function("raw", |b| {
        b.iter_custom(|iters| raw_twin(target, &[sock.as_fd()], iters));
    });
    g.finish();
}

fn batch64(c: &mut Criterion, target: &Target) {
    let socks: Vec<UdpSocket> = (0..BATCH).map(|_| udp_socket()).collect();
    let mut g = c.benchmark_group("batch64");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("sockdup", |b| {
        let mut wire = Vec::with_capacity(BATCH * RECORD_LEN);
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let records = sockdup::duplicate_sockets(&socks, target.pid).expect("duplicate");
                wire.clear();
                for r in &records {
                    wire.extend_from_slice(&r.to_bytes());
                }
                target.send_records(&wire);
            }
            let redeemed = target.finish();
            let elapsed = start.elapsed();
            assert_eq!(
                redeemed,
                iters * BATCH as u64,
                "the target redeemed every record"
            );
            elapsed
        });
    });
    g.bench_function("raw", |b| {
        let fds: Vec<BorrowedFd<'_>> = socks.iter().map(AsFd::as_fd).collect();
        b.iter_custom(|iters| raw_twin(target, &fds, iters));
    });
    g.finish();
}

/// Pins this (the source's only) thread as `SOCKDUP_BENCH_PIN` asks, before anything else
/// starts, and returns the CPU for the target.
fn place() -> Result<Option<usize>, String> {
    let placement = Placement::from_env()?;
    let cpus = sockdup_bench::allowed_cpus().map_err(|e| format!("sched_getaffinity: {e}"))?;
    let here = sockdup_bench::current_cpu();
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
        sockdup_bench::pin_to(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
    }
    let show = |c: Option<usize>| c.map_or_else(|| "any CPU".to_owned(), |c| format!("CPU {c}"));
    eprintln!(
        "handoff: SOCKDUP_BENCH_PIN={}: source on {}, target on {} (of CPUs {cpus:?})",
        placement.name(),
        show(source),
        show(target)
    );
    Ok(target)
}

fn main() {
    // Modest defaults so the whole run stays well under two minutes; the command line
    // (`-- --measurement-time 10` and so on) still overrides them.
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
        .configure_from_args();
    let target_cpu = place().unwrap_or_else(|e| panic!("{e}"));
    let guard = sockdup::startup().expect("sockdup::startup in the benchmark");
    let target = Target::spawn(target_cpu);
    single(&mut c, &target);
    batch64(&mut c, &target);
    drop(target);
    drop(guard);
    c.final_summary();
}
