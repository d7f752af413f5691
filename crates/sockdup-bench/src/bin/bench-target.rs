//! The target process of the `handoff` benchmark: starts sockdup, then serves the control
//! protocol of [`sockdup_bench`] on its standard input (a `SOCK_SEQPACKET` socket from the
//! benchmark): closes raw-twin descriptors and acknowledges, redeems sockdup records (with
//! `socket_from_info`, or through the SPI dispatcher for [`SPI`] messages), and reports how many
//! it redeemed at the end of each timed run.
//!
//! The catalog the SPI dispatcher routes by is the file `SOCKDUP_CATALOG` names, set by the
//! benchmark.
//!
//! Not meant to be run by hand: the benchmark spawns it (`env!("CARGO_BIN_EXE_bench-target")`).
#![forbid(unsafe_code)]

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;

use rustix::io::Errno;
use rustix::net::{
    self, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendFlags,
};
use sockdup_bench::{
    ACK, FINISH, FLOOR_FDS, FLOOR_FDS_ONE_WAY, FLOOR_RECORDS, MAX_FDS, MAX_RECORDS_PER_MESSAGE,
    RAW, RAW_ONE_WAY, READY, RECORD_LEN, SPI, SPI_MESSAGE_LEN,
};

fn send(ctl: BorrowedFd<'_>, bytes: &[u8]) -> Result<(), String> {
    net::send(ctl, bytes, SendFlags::NOSIGNAL)
        .map(drop)
        .map_err(|e| format!("answering the benchmark: {e}"))
}

fn redeem(records: &[u8]) -> Result<u64, String> {
    let infos = records
        .chunks_exact(RECORD_LEN)
        .map(sockdup::ProtocolInfo::from_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("decoding: {e}"))?;
    // One record: socket_from_info; a batch: sockets_from_info, one lock for all of them.
    let count = if let [info] = infos.as_slice() {
        drop(sockdup::socket_from_info(info).map_err(|e| format!("redeeming: {e}"))?);
        1
    } else {
        sockdup::sockets_from_info(&infos)
            .map_err(|e| format!("redeeming: {e}"))?
            .len()
    };
    Ok(count as u64)
}

/// One record through the SPI dispatcher: `Socket::from_info` routes it by its catalog entry
/// (through every layer of a chain), then the socket closes through the same chain. `close`
/// does the work of dropping it, but reports an error instead of ignoring it.
fn redeem_spi(record: &[u8]) -> Result<u64, String> {
    let info = sockdup::ProtocolInfo::from_bytes(record).map_err(|e| format!("decoding: {e}"))?;
    sockdup::spi::Socket::from_info(&info)
        .map_err(|e| format!("redeeming through the SPI: {e}"))?
        .close()
        .map_err(|e| format!("closing through the SPI: {e}"))?;
    Ok(1)
}

fn serve(ctl: BorrowedFd<'_>) -> Result<(), String> {
    let mut buf = vec![0u8; MAX_RECORDS_PER_MESSAGE * RECORD_LEN + 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut redeemed: u64 = 0;
    // Every message and every redeemed record since the start, for `SOCKDUP_BENCH_COUNTS`.
    let (mut messages, mut redeemed_total, mut raw_fds) = (0u64, 0u64, 0u64);
    // The floor twin's descriptors, waiting for their records.
    let mut kept: std::collections::VecDeque<std::os::fd::OwnedFd> = Default::default();
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = match net::recvmsg(
            ctl,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(format!("receiving from the benchmark: {e}")),
        };
        // Close every descriptor that came (the raw twin's work), as the buffer drains; the
        // floor twin's are kept for their records.
        let keep = matches!(buf.first(), Some(&FLOOR_FDS | &FLOOR_FDS_ONE_WAY)) && msg.bytes == 1;
        let mut fds = 0usize;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                if keep {
                    let before = kept.len();
                    kept.extend(rights);
                    fds += kept.len() - before;
                } else {
                    fds += rights.count();
                }
            }
        }
        if msg
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
        {
            return Err("a control message was truncated".into());
        }
        messages += 1;
        match &buf[..msg.bytes] {
            [] if fds == 0 => {
                // The benchmark went away. With SOCKDUP_BENCH_COUNTS set, say how much work
                // came, so that a profile of this process (callgrind) can be divided by it.
                if std::env::var_os("SOCKDUP_BENCH_COUNTS").is_some() {
                    eprintln!(
                        "bench-target counts: messages={messages} redeemed={redeemed_total} raw_fds={raw_fds}"
                    );
                }
                return Ok(());
            }
            [RAW] => {
                raw_fds += fds as u64;
                send(ctl, &[ACK])?
            }
            [RAW_ONE_WAY] => raw_fds += fds as u64,
            [FLOOR_FDS_ONE_WAY] => {}
            [FLOOR_FDS] => send(ctl, &[ACK])?,
            [FLOOR_RECORDS, records @ ..] if fds == 0 && records.len() % RECORD_LEN == 0 => {
                let n = records.len() / RECORD_LEN;
                if n > kept.len() {
                    return Err(format!(
                        "{n} floor records for {} kept descriptors",
                        kept.len()
                    ));
                }
                // Each record is looked at as a redeem looks at it (which descriptor, is it for
                // this process), then its descriptor closes.
                for (record, fd) in records.chunks_exact(RECORD_LEN).zip(kept.drain(..n)) {
                    std::hint::black_box((&record[..16], fd));
                }
                redeemed += n as u64;
                redeemed_total += n as u64;
            }
            [FINISH] => {
                send(ctl, &redeemed.to_le_bytes())?;
                redeemed = 0;
            }
            [SPI, record @ ..] if fds == 0 && record.len() + 1 == SPI_MESSAGE_LEN => {
                let n = redeem_spi(record)?;
                redeemed += n;
                redeemed_total += n;
            }
            records if fds == 0 && !records.is_empty() && records.len() % RECORD_LEN == 0 => {
                let n = redeem(records)?;
                redeemed += n;
                redeemed_total += n;
            }
            other => {
                return Err(format!(
                    "unexpected control message: {} bytes, {fds} descriptors",
                    other.len()
                ));
            }
        }
    }
}

fn main() -> ExitCode {
    // Die with the benchmark even if it is killed outright.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // Pin before startup(), so the inbox thread inherits the CPU.
    if let Some(cpu) = std::env::var(sockdup_bench::TARGET_CPU_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        && let Err(e) = sockdup_bench::pin_to(cpu)
    {
        eprintln!("bench-target: pinning to CPU {cpu}: {e}");
        return ExitCode::FAILURE;
    }
    let stdin = std::io::stdin();
    let ctl = stdin.as_fd();
    let _guard = match sockdup::startup() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("bench-target: sockdup::startup: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = send(ctl, &[READY]).and_then(|()| serve(ctl));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-target: {e}");
            ExitCode::FAILURE
        }
    }
}
