//! The soak helper of `scripts/soak.py` (not run in CI): many duplicate/redeem cycles between
//! two real processes, with both processes' descriptor counts and resident memory before and
//! after.
//!
//! `soak [--cycles N] [--batch B] [--warmup W] [--kind tcp|udp] [--api single|many|mixed]`
//! is the source: it starts itself again as the target (`soak --target`), opens one socket
//! (a connected TCP stream, or a bound UDP socket), and runs `W` warm-up cycles, then `N`
//! measured ones. A cycle is one duplicate of the socket for the target and its redemption
//! there (the target closes what it redeemed at once). The records travel to the target `B` at a
//! time, as one line on its stdin (the target answers each line once it has redeemed every
//! record on it), so the control channel costs little beside the cycles. `--api single` uses
//! `duplicate_socket` and `socket_from_info` per record; `many` uses `duplicate_sockets` and
//! `sockets_from_info` per line (up to 253 records a message); `mixed` (the default)
//! alternates line by line.
//!
//! Its last line on stdout is one JSON object: the cycles, the seconds they took, and for each
//! process (`source`, `target`) its pid, and its descriptors (`/proc/self/fd`) and `VmRSS`
//! (KiB, `/proc/self/status`) after the warm-up (`before`) and after the last cycle (`after`).
//! `samples` holds, every 100 000 cycles, `[cycles, source fds, source KiB, target fds,
//! target KiB]`. The verdict (a leak or not) is the script's.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use sockdup::ProtocolInfo;

/// Descriptors and resident memory of this process.
fn stats() -> (usize, u64) {
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    (fds, rss)
}

fn fail(why: impl std::fmt::Display) -> ExitCode {
    eprintln!("soak: {why}");
    ExitCode::FAILURE
}

/// The target: `redeem single|many RECORD...` lines are answered `ok N` once every record is
/// redeemed (and closed); `stats` is answered `stats FDS RSS_KIB`.
fn target() -> ExitCode {
    let _guard = match sockdup::startup() {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "pid {}", std::process::id());
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split(' ');
        let answer = match words.next() {
            Some("stats") => {
                let (fds, rss) = stats();
                format!("stats {fds} {rss}")
            }
            Some("redeem") => {
                let api = words.next().unwrap_or("single");
                let records: Result<Vec<ProtocolInfo>, _> = words.map(str::parse).collect();
                let outcome = records.and_then(|records| {
                    if api == "many" {
                        sockdup::sockets_from_info(&records).map(|fds| fds.len())
                    } else {
                        records.iter().try_fold(0, |n, r| {
                            sockdup::socket_from_info(r).map(|fd| {
                                drop(fd);
                                n + 1
                            })
                        })
                    }
                });
                match outcome {
                    Ok(n) => format!("ok {n}"),
                    Err(e) => format!("err {e}"),
                }
            }
            _ => format!("err unknown command {line:?}"),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}

struct Args {
    cycles: u64,
    batch: usize,
    warmup: u64,
    udp: bool,
    api: String,
    verbose: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        cycles: 1_000_000,
        batch: 250,
        warmup: 20_000,
        udp: false,
        api: "mixed".into(),
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("bad {flag} {v:?}"));
        match flag.as_str() {
            "--cycles" => a.cycles = num(value()?)?,
            "--warmup" => a.warmup = num(value()?)?,
            "--batch" => {
                a.batch = usize::try_from(num(value()?)?).map_err(|e| e.to_string())?;
                if !(1..=253).contains(&a.batch) {
                    return Err("--batch is 1 to 253".into());
                }
            }
            "--verbose" => a.verbose = true,
            "--kind" => a.udp = value()? == "udp",
            "--api" => {
                a.api = value()?;
                if !["single", "many", "mixed"].contains(&a.api.as_str()) {
                    return Err(format!("--api is single, many or mixed, not {:?}", a.api));
                }
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--target") {
        return target();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    match source(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// The target process, driven over its stdin and stdout.
struct Target {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: BufReader<std::process::ChildStdout>,
    pid: u32,
}

impl Target {
    fn start() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("--target")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the target: {e}"))?;
        let to = child.stdin.take().ok_or("no stdin")?;
        let from = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut t = Self {
            child,
            to,
            from,
            pid: 0,
        };
        t.pid = t
            .line()?
            .strip_prefix("pid ")
            .and_then(|p| p.parse().ok())
            .ok_or("the target did not say its pid")?;
        Ok(t)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.from.read_line(&mut l) {
            Ok(0) => Err("the target exited".into()),
            Ok(_) => Ok(l.trim_end().to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn ask(&mut self, line: &str) -> Result<String, String> {
        self.to
            .write_all(line.as_bytes())
            .map_err(|e| e.to_string())?;
        self.line()
    }

    fn stats(&mut self) -> Result<(usize, u64), String> {
        let a = self.ask("stats\n")?;
        let mut w = a.split(' ').skip(1).map(str::parse::<u64>);
        match (w.next(), w.next()) {
            (Some(Ok(fds)), Some(Ok(rss))) => Ok((fds as usize, rss)),
            _ => Err(format!("the target answered {a:?} to stats")),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cycles` cycles against `t`, `batch` a line.
fn run(
    args: &Args,
    t: &mut Target,
    sock: &OwnedFd,
    cycles: u64,
    line_no: &mut u64,
) -> Result<(), String> {
    let mut done = 0u64;
    while done < cycles {
        let n = (cycles - done).min(args.batch as u64) as usize;
        let many = match args.api.as_str() {
            "many" => true,
            "single" => false,
            _ => *line_no % 2 == 1,
        };
        *line_no += 1;
        let records = if many {
            let socks = vec![sock; n];
            sockdup::duplicate_sockets(&socks, t.pid).map_err(|e| e.to_string())?
        } else {
            (0..n)
                .map(|_| sockdup::duplicate_socket(sock, t.pid))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?
        };
        let mut line = String::with_capacity(16 + n * 860);
        line.push_str(if many { "redeem many" } else { "redeem single" });
        for r in &records {
            line.push(' ');
            line.push_str(&r.to_string());
        }
        line.push('\n');
        let answer = t.ask(&line)?;
        if answer != format!("ok {n}") {
            return Err(format!("the target answered {answer:?}"));
        }
        done += n as u64;
    }
    Ok(())
}

fn source(args: &Args) -> Result<(), String> {
    let _guard = sockdup::startup().map_err(|e| e.to_string())?;
    let mut t = Target::start()?;

    // One socket, duplicated again and again; the TCP stream's other end stays open.
    let (_keep, sock): (Option<(TcpListener, TcpStream)>, OwnedFd) = if args.udp {
        let u = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        (None, u.into())
    } else {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let s = TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let (peer, _) = l.accept().map_err(|e| e.to_string())?;
        (Some((l, peer)), s.into())
    };

    let mut line_no = 0;
    run(args, &mut t, &sock, args.warmup, &mut line_no)?;
    let (src_before, tgt_before) = (stats(), t.stats()?);
    let start = Instant::now();
    let mut progress = Instant::now();
    let mut samples = Vec::new();
    let mut done = 0;
    while done < args.cycles {
        let n = (args.cycles - done).min(100_000);
        run(args, &mut t, &sock, n, &mut line_no)?;
        done += n;
        let ((sf, sr), (tf, tr)) = (stats(), t.stats()?);
        samples.push(format!("[{done},{sf},{sr},{tf},{tr}]"));
        if args.verbose || progress.elapsed().as_secs() >= 10 {
            eprintln!(
                "soak: {done} of {} cycles, {:.0} s; source {sf} fds {sr} KiB, target {tf} fds {tr} KiB",
                args.cycles,
                start.elapsed().as_secs_f64()
            );
            progress = Instant::now();
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let (src_after, tgt_after) = (stats(), t.stats()?);
    let side = |pid: u32, b: (usize, u64), a: (usize, u64)| {
        format!(
            r#"{{"pid":{pid},"fds_before":{},"fds_after":{},"rss_kib_before":{},"rss_kib_after":{}}}"#,
            b.0, a.0, b.1, a.1
        )
    };
    println!(
        r#"{{"cycles":{},"warmup":{},"batch":{},"kind":"{}","api":"{}","seconds":{seconds:.1},"source":{},"target":{},"samples":[{}]}}"#,
        args.cycles,
        args.warmup,
        args.batch,
        if args.udp { "udp" } else { "tcp" },
        args.api,
        side(std::process::id(), src_before, src_after),
        side(t.pid, tgt_before, tgt_after),
        samples.join(","),
    );
    Ok(())
}
