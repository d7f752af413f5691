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
//! - `chain3/base`: one unconnected TCP/IPv4 socket made with `spi::Socket::for_entry` of base
//!   entry 1001, duplicated with `Socket::duplicate`; its record goes one-way ([`SPI`]) to the
//!   target's main thread, which redeems it with `Socket::from_info` and closes it.
//!   `chain3/layered`: the same through a chain of three IFS layers installed over 1001 (`trace`
//!   over `fault` over `policy`, the last two without settings), in both processes: every
//!   duplicate, redeem and close passes each layer (the trace layer's counters included).
//!   `ratios.py` prints layered/base.
//!
//! - `single/floor`, `batch64/floor` (and `-one-way`, and `batch64/floor-known`): the floor
//!   twins, the contract's least work with nothing of sockdup's ([`floor_twin`]), and
//!   `raw-one-way`, the raw twin without its acknowledgement. `ratios.py` prints each floor
//!   against raw and sockdup against its floor.
//!
//! Every measurement of `N` iterations ends only when the target has answered a final
//! [`FINISH`] (after redeeming all the records it was sent), so the target's redeem work is
//! counted; both twins pay that last round trip. `ratios.py` beside `Cargo.toml` prints the
//! sockdup/raw ratios from criterion's estimates.
//!
//! The target is the `bench-target` binary of this crate, a separate process; it is killed when
//! the benchmark ends (and dies by itself if the benchmark dies).
//!
//! # The catalog
//!
//! The chain lives in a catalog file that both processes must read, and each process reads
//! `SOCKDUP_CATALOG` once, at its first SPI use. Setting it for the target is a `Command::env`;
//! setting it for this process would need `std::env::set_var`, which is `unsafe` in edition 2024
//! (forbidden here). So `main` writes the catalog to a fresh temporary directory and re-executes
//! this benchmark with the same arguments and `SOCKDUP_CATALOG` (and [`CHILD_ENV`]) set, waits for
//! it, removes the directory and exits with its status. Neither the user's catalog
//! (`~/.config/sockdup`) nor a `SOCKDUP_CATALOG` of the caller is read or written; the child
//! checks that the catalog it loads is the one it expects.
//!
//! Both processes are pinned to one CPU unless `SOCKDUP_BENCH_PIN` says otherwise (`split`: one
//! CPU each; `none`): see the library's [Placement](sockdup_bench#placement) section for why.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rustix::net::{self, RecvFlags, SendFlags};
use sockdup::catalog::Catalog;
use sockdup::spi::Socket;
use sockdup_bench::{
    ACK, FINISH, FLOOR_FDS, FLOOR_FDS_ONE_WAY, FLOOR_RECORDS, MAX_RECORDS_PER_MESSAGE, RAW,
    RAW_ONE_WAY, READY, RECORD_LEN, SPI, SPI_MESSAGE_LEN, TARGET_CPU_ENV,
};

/// Sockets duplicated per `batch64` iteration.
const BATCH: usize = 64;
const _: () = assert!(BATCH <= MAX_RECORDS_PER_MESSAGE);

/// The base catalog entry `chain3` stands on: TCP/IPv4.
const BASE_ENTRY: u32 = 1001;
/// The variable the library reads its catalog file's path from.
const CATALOG_ENV: &str = "SOCKDUP_CATALOG";
/// Set (to `1`) in the re-executed benchmark, which runs the measurements (see
/// [the catalog](self#the-catalog)).
const CHILD_ENV: &str = "SOCKDUP_BENCH_CHILD";

/// The target process and the source's end of its control socket.
struct Target {
    child: Child,
    ctl: OwnedFd,
    pid: u32,
}

impl Target {
    /// Starts the target, pinned to `cpu` if given, reading the catalog file `catalog`, and
    /// waits until its inbox is open.
    fn spawn(cpu: Option<usize>, catalog: &Path) -> Self {
        let (ctl, theirs) = sockdup_bench::control_pair().expect("control socketpair");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bench-target"));
        cmd.stdin(Stdio::from(theirs))
            .env_remove(TARGET_CPU_ENV)
            .env(CATALOG_ENV, catalog);
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

    /// One-way: one record for the target to redeem through the SPI dispatcher.
    fn send_spi(&self, record: &sockdup::ProtocolInfo) {
        let mut msg = [0u8; SPI_MESSAGE_LEN];
        msg[0] = SPI;
        msg[1..].copy_from_slice(&record.to_bytes());
        net::send(&self.ctl, &msg, SendFlags::NOSIGNAL).expect("sending an SPI record");
    }

    /// The raw twin: `fds` in one `SCM_RIGHTS` message, then the target's one-byte answer.
    fn raw_round_trip(&self, fds: &[BorrowedFd<'_>]) {
        sockdup_bench::send_fds(self.ctl.as_fd(), &[RAW], fds).expect("sendmsg with SCM_RIGHTS");
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
    /// Ends the target by closing its control socket (it exits by itself, so a profiler
    /// around it finishes its report), and kills it if it has not exited within 30 s.
    fn drop(&mut self) {
        let _ = net::shutdown(&self.ctl, net::Shutdown::Both);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The floor twin: the least any implementation of the contract does for `fds`, here with
/// nothing else: it identifies each socket (its family, type and protocol, which its record
/// names: three `getsockopt`), passes the descriptors by `SCM_RIGHTS` to the target (which keeps
/// them and acknowledges, unless `one_way`), and sends their records separately, one message of
/// 628 bytes each, as a record travels through the caller's own channel; the target takes the
/// kept descriptors for the records and closes them. One thread on each side, no table, no
/// ticket, no encoding beyond patching three words of a template: what is left of sockdup's
/// cost when everything that is not the contract's is gone.
fn floor_twin(target: &Target, fds: &[BorrowedFd<'_>], one_way: bool, iters: u64) -> Duration {
    floor_twin_of(target, fds, one_way, true, iters)
}

/// [`floor_twin`], identifying each socket only if `identify` (a caller that already knows
/// its sockets' family, type and protocol, as an acceptor knows its listener's, need not).
fn floor_twin_of(
    target: &Target,
    fds: &[BorrowedFd<'_>],
    one_way: bool,
    identify: bool,
    iters: u64,
) -> Duration {
    let template = sockdup::catalog::base_entry(1001)
        .expect("base entry 1001")
        .to_bytes();
    let mut wire = Vec::with_capacity(1 + fds.len() * RECORD_LEN);
    let start = Instant::now();
    for _ in 0..iters {
        wire.clear();
        wire.push(FLOOR_RECORDS);
        for (i, fd) in fds.iter().enumerate() {
            if identify {
                let family = net::sockopt::socket_domain(fd).expect("SO_DOMAIN");
                let kind = net::sockopt::socket_type(fd).expect("SO_TYPE");
                let protocol = net::sockopt::socket_protocol(fd).expect("SO_PROTOCOL");
                std::hint::black_box((family, kind, protocol));
            }
            let at = wire.len();
            wire.extend_from_slice(&template);
            wire[at + 4..at + 8].copy_from_slice(&(i as u32).to_le_bytes());
        }
        if one_way {
            sockdup_bench::send_fds(target.ctl.as_fd(), &[FLOOR_FDS_ONE_WAY], fds)
                .expect("sendmsg with SCM_RIGHTS");
        } else {
            sockdup_bench::send_fds(target.ctl.as_fd(), &[FLOOR_FDS], fds)
                .expect("sendmsg with SCM_RIGHTS");
            let mut b = [0u8; 8];
            assert_eq!(target.recv(&mut b), [ACK]);
        }
        target.send_records(&wire);
    }
    let redeemed = target.finish();
    let elapsed = start.elapsed();
    assert_eq!(redeemed, iters * fds.len() as u64);
    elapsed
}

/// The one-way raw twin: `iters` bare `SCM_RIGHTS` messages of `fds`, no answer.
fn raw_one_way(target: &Target, fds: &[BorrowedFd<'_>], iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        sockdup_bench::send_fds(target.ctl.as_fd(), &[RAW_ONE_WAY], fds)
            .expect("sendmsg with SCM_RIGHTS");
    }
    let redeemed = target.finish();
    let elapsed = start.elapsed();
    assert_eq!(redeemed, 0);
    elapsed
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
    g.bench_function("floor", |b| {
        b.iter_custom(|iters| floor_twin(target, &[sock.as_fd()], false, iters));
    });
    g.bench_function("raw-one-way", |b| {
        b.iter_custom(|iters| raw_one_way(target, &[sock.as_fd()], iters));
    });
    g.bench_function("floor-one-way", |b| {
        b.iter_custom(|iters| floor_twin(target, &[sock.as_fd()], true, iters));
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
    let fds: Vec<BorrowedFd<'_>> = socks.iter().map(AsFd::as_fd).collect();
    g.bench_function("raw", |b| {
        b.iter_custom(|iters| raw_twin(target, &fds, iters));
    });
    g.bench_function("floor", |b| {
        b.iter_custom(|iters| floor_twin(target, &fds, false, iters));
    });
    g.bench_function("raw-one-way", |b| {
        b.iter_custom(|iters| raw_one_way(target, &fds, iters));
    });
    g.bench_function("floor-one-way", |b| {
        b.iter_custom(|iters| floor_twin(target, &fds, true, iters));
    });
    g.bench_function("floor-known", |b| {
        b.iter_custom(|iters| floor_twin_of(target, &fds, false, false, iters));
    });
    g.finish();
}

/// The catalog of `chain3`: three IFS layers over [`BASE_ENTRY`], `trace` over `fault` over
/// `policy`, the last two without settings (so they check and pass everything). Returns it with
/// the id of the top chain. Deterministic: the same ids on every call.
fn chain3_catalog() -> (Catalog, u32) {
    let mut catalog = Catalog::builtin();
    let mut top = BASE_ENTRY;
    for kind in ["policy", "fault", "trace"] {
        let (_, chains) = catalog
            .install(
                kind,
                &format!("bench {kind}"),
                true,
                BTreeMap::new(),
                &[top],
            )
            .unwrap_or_else(|e| panic!("installing a {kind} layer: {e}"));
        top = chains[0];
    }
    (catalog, top)
}

/// `chain3/base` and `chain3/layered`; `chain_info` is the chain's entry of [`chain3_catalog`].
fn chain3(c: &mut Criterion, target: &Target, chain_info: &sockdup::ProtocolInfo) {
    let chain_id = chain_info.catalog_entry_id;
    assert_eq!(
        chain_info.protocol_chain.len, 4,
        "three layers over the base"
    );
    let base_info = sockdup::catalog::base_entry(BASE_ENTRY).expect("base entry 1001");
    let base = Socket::for_entry(&base_info).expect("a TCP socket of entry 1001");
    let layered = Socket::for_entry(chain_info).expect("a TCP socket of the chain");
    let mut g = c.benchmark_group("chain3");
    for (name, sock, entry) in [("base", &base, BASE_ENTRY), ("layered", &layered, chain_id)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let record = sock.duplicate(target.pid).expect("duplicate");
                    target.send_spi(&record);
                }
                let redeemed = target.finish();
                let elapsed = start.elapsed();
                assert_eq!(redeemed, iters, "the target redeemed every record");
                elapsed
            });
        });
        // What the target redeemed went through the entry measured.
        let record = sock.duplicate(target.pid).expect("duplicate");
        assert_eq!(record.catalog_entry_id, entry);
        target.send_spi(&record);
        assert_eq!(target.finish(), 1);
    }
    g.finish();
}

/// Writes the `chain3` catalog to a fresh temporary directory, runs this benchmark again with
/// the same arguments and `SOCKDUP_CATALOG` naming it, removes the directory, and returns the
/// run's exit status (128 + the signal if a signal ended it).
fn reexec_with_catalog() -> ExitCode {
    let run = |path: &Path| -> Result<std::process::ExitStatus, String> {
        sockdup::save_catalog_to(path, &chain3_catalog().0).map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
        Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(CATALOG_ENV, path)
            .env(CHILD_ENV, "1")
            .status()
            .map_err(|e| format!("re-executing the benchmark: {e}"))
    };
    // A new directory of this process's own: create_dir fails on anything already there.
    let status = sockdup_bench::fresh_temp_dir("sockdup-bench").and_then(|dir| {
        let status = run(&dir.join("catalog.json"));
        let _ = std::fs::remove_dir_all(&dir);
        status
    });
    match status {
        Ok(s) => {
            let code = s
                .code()
                .or_else(|| s.signal().map(|n| 128 + n))
                .unwrap_or(1);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("handoff: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let Some(catalog) = std::env::var_os(CHILD_ENV)
        .and_then(|_| std::env::var_os(CATALOG_ENV))
        .map(PathBuf::from)
    else {
        return reexec_with_catalog();
    };
    // Die with the parent that waits for this run (and removes the catalog file).
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let (expected, chain_id) = chain3_catalog();
    let loaded = sockdup::load_catalog_from(&catalog).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded,
        expected,
        "{} is not the benchmark's catalog",
        catalog.display()
    );
    // Modest defaults so the whole run stays well under two minutes; the command line
    // (`-- --measurement-time 10` and so on) still overrides them.
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
        .configure_from_args();
    let target_cpu = sockdup_bench::place("handoff").unwrap_or_else(|e| panic!("{e}"));
    let guard = sockdup::startup().expect("sockdup::startup in the benchmark");
    let target = Target::spawn(target_cpu, &catalog);
    single(&mut c, &target);
    batch64(&mut c, &target);
    let chain_info = loaded.entry(chain_id).expect("the chain's entry");
    chain3(&mut c, &target, &chain_info);
    drop(target);
    drop(guard);
    c.final_summary();
    ExitCode::SUCCESS
}
