//! A process for the tests to drive: one command per line on stdin, one answer per line on
//! stdout, `ok [VALUE...]` or `err CODE MESSAGE`. Descriptors it holds are named by index.
//!
//! Commands: `startup [ttl=S] [capacity=N] [ack=S] [allow=any|nobody]`, `cleanup`, `pid`, `tcp-listen`,
//! `tcp-connect ADDR`, `udp-bind`, `unix-pair`, `pipe`, `dup IDX PID`, `dup-many IDX,IDX PID`,
//! `redeem RECORD`, `redeem-many RECORD...`, `close IDX`, `write IDX TEXT`, `read IDX`, `accept IDX`, `keepalive IDX`,
//! `set-keepalive IDX`, `nonblock IDX`, `set-nonblock IDX`, `udp-connect ADDR`, `fdcount`,
//! `cloexec` (lists descriptors above 2 that are not close-on-exec), `squat PID`, `exit`; through the
//! catalog's chains: `spi-tcp-connect ADDR` (answers `IDX CATALOG_ID HANDLE`), `spi-dup IDX PID`,
//! `spi-redeem RECORD`, `spi-send IDX TEXT`, `spi-recv IDX`, `spi-close IDX`, `spi-into-fd IDX`,
//! `addr2str ADDR`, `str2addr TEXT`, `trace` (the trace layers' reports); upgrades:
//! `publish PIDFILE [timeout=S] NAME=IDX...`, `take-over PIDFILE NAME...` (answers
//! `NAME=IDX...`, this process's own copies), `complete`, `abort`, `drop-takeover`,
//! `handed-over` (`none` or `PID NAME...`), `wait-handover SECONDS`, `unpublish`,
//! `take-and-crash PIDFILE NAME` (asks by hand, reads the first answer line, aborts).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};

struct Peer {
    fds: HashMap<usize, OwnedFd>,
    socks: HashMap<usize, sockdup::spi::Socket>,
    next: usize,
    guard: Option<sockdup::Startup>,
    squat: Option<OwnedFd>,
    published: Option<sockdup::upgrade::Published>,
    takeover: Option<sockdup::upgrade::Takeover>,
}

type Answer = Result<String, String>;

fn err(e: sockdup::Error) -> String {
    format!("{} {} {}", e.code(), e.kind().name(), e)
}

fn io(e: std::io::Error) -> String {
    format!("0 {e}")
}

impl Peer {
    fn keep(&mut self, fd: impl Into<OwnedFd>) -> usize {
        self.next += 1;
        self.fds.insert(self.next, fd.into());
        self.next
    }

    fn keep_spi(&mut self, sock: sockdup::spi::Socket) -> String {
        self.next += 1;
        let out = format!(
            "{} {} {}",
            self.next,
            sock.catalog_entry().catalog_entry_id,
            sock.handle().raw()
        );
        self.socks.insert(self.next, sock);
        out
    }

    fn spi(&self, arg: Option<&str>) -> Result<&sockdup::spi::Socket, String> {
        let idx: usize = arg
            .and_then(|a| a.parse().ok())
            .ok_or("0 missing socket index")?;
        self.socks
            .get(&idx)
            .ok_or_else(|| format!("0 no socket {idx}"))
    }

    fn fd(&self, arg: Option<&str>) -> Result<&OwnedFd, String> {
        let idx: usize = arg
            .and_then(|a| a.parse().ok())
            .ok_or("0 missing descriptor index")?;
        self.fds
            .get(&idx)
            .ok_or_else(|| format!("0 no descriptor {idx}"))
    }

    fn run(&mut self, line: &str) -> Answer {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let a = words.next();
        let b = words.next();
        match cmd {
            "startup" => {
                let mut o = sockdup::Options::from_env().map_err(err)?;
                for opt in line.split_whitespace().skip(1) {
                    match opt.split_once('=') {
                        Some(("ttl", v)) => {
                            o = o.ttl(Duration::from_secs_f64(v.parse().map_err(|_| "0 bad ttl")?))
                        }
                        Some(("capacity", v)) => {
                            o = o.capacity(v.parse().map_err(|_| "0 bad capacity")?)
                        }
                        Some(("ack", v)) => {
                            o = o.ack_timeout(Duration::from_secs_f64(
                                v.parse().map_err(|_| "0 bad ack")?,
                            ))
                        }
                        Some(("allow", "any")) => o = o.allow(sockdup::Allow::AnyUser),
                        Some(("allow", "nobody")) => o = o.allow(sockdup::Allow::Uids(vec![])),
                        _ => return Err(format!("0 unknown option {opt}")),
                    }
                }
                self.guard = Some(o.startup().map_err(err)?);
                Ok(String::new())
            }
            "cleanup" => {
                self.guard = None;
                Ok(String::new())
            }
            "pid" => Ok(std::process::id().to_string()),
            "tcp-listen" => {
                let l = TcpListener::bind("127.0.0.1:0").map_err(io)?;
                let addr = l.local_addr().map_err(io)?;
                Ok(format!("{} {addr}", self.keep(l)))
            }
            "tcp-connect" => {
                let s = TcpStream::connect(a.ok_or("0 missing address")?).map_err(io)?;
                Ok(self.keep(s).to_string())
            }
            "udp-bind" => {
                let s = UdpSocket::bind("127.0.0.1:0").map_err(io)?;
                let addr = s.local_addr().map_err(io)?;
                Ok(format!("{} {addr}", self.keep(s)))
            }
            "unix-pair" => {
                let (x, y) = UnixStream::pair().map_err(io)?;
                Ok(format!("{} {}", self.keep(x), self.keep(y)))
            }
            "pipe" => {
                let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| io(e.into()))?;
                Ok(format!("{} {}", self.keep(r), self.keep(w)))
            }
            "dup" => {
                let pid = b.and_then(|p| p.parse().ok()).ok_or("0 missing pid")?;
                Ok(sockdup::duplicate_socket(self.fd(a)?, pid)
                    .map_err(err)?
                    .to_string())
            }
            "dup-many" => {
                let pid = b.and_then(|p| p.parse().ok()).ok_or("0 missing pid")?;
                let mut socks = Vec::new();
                for i in a.unwrap_or("").split(',') {
                    socks.push(self.fd(Some(i))?.as_fd());
                }
                let records = sockdup::duplicate_sockets(&socks, pid).map_err(err)?;
                Ok(records
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "))
            }
            "redeem" => {
                let info: sockdup::ProtocolInfo = a.unwrap_or("").parse().map_err(err)?;
                let fd = sockdup::socket_from_info(&info).map_err(err)?;
                Ok(self.keep(fd).to_string())
            }
            "redeem-many" => {
                let infos = line
                    .split_whitespace()
                    .skip(1)
                    .map(str::parse::<sockdup::ProtocolInfo>)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                let fds = sockdup::sockets_from_info(&infos).map_err(err)?;
                Ok(fds
                    .into_iter()
                    .map(|fd| self.keep(fd).to_string())
                    .collect::<Vec<_>>()
                    .join(" "))
            }
            "close" => {
                let idx: usize = a.and_then(|x| x.parse().ok()).ok_or("0 missing index")?;
                self.fds.remove(&idx).ok_or("0 no such descriptor")?;
                Ok(String::new())
            }
            "write" => {
                let fd = self.fd(a)?;
                let text = line.splitn(3, ' ').nth(2).unwrap_or("");
                rustix::io::write(fd, text.as_bytes()).map_err(|e| io(e.into()))?;
                Ok(String::new())
            }
            "read" => {
                let fd = self.fd(a)?;
                let mut buf = [0u8; 4096];
                let n = rustix::io::read(fd, &mut buf).map_err(|e| io(e.into()))?;
                Ok(if n == 0 {
                    "<eof>".into()
                } else {
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                })
            }
            "accept" => {
                let fd = self.fd(a)?;
                let c =
                    rustix::net::accept_with(fd, SocketFlags::CLOEXEC).map_err(|e| io(e.into()))?;
                Ok(self.keep(c).to_string())
            }
            "keepalive" => Ok(sockopt::socket_keepalive(self.fd(a)?)
                .map_err(|e| io(e.into()))?
                .to_string()),
            "set-keepalive" => {
                sockopt::set_socket_keepalive(self.fd(a)?, true).map_err(|e| io(e.into()))?;
                Ok(String::new())
            }
            "set-nonblock" => {
                let fd = self.fd(a)?;
                let fl = rustix::fs::fcntl_getfl(fd).map_err(|e| io(e.into()))?;
                rustix::fs::fcntl_setfl(fd, fl | rustix::fs::OFlags::NONBLOCK)
                    .map_err(|e| io(e.into()))?;
                Ok(String::new())
            }
            "udp-connect" => {
                let s = UdpSocket::bind("127.0.0.1:0").map_err(io)?;
                s.connect(a.ok_or("0 missing address")?).map_err(io)?;
                let addr = s.local_addr().map_err(io)?;
                Ok(format!("{} {addr}", self.keep(s)))
            }
            "nonblock" => {
                let fl = rustix::fs::fcntl_getfl(self.fd(a)?).map_err(|e| io(e.into()))?;
                Ok(fl.contains(rustix::fs::OFlags::NONBLOCK).to_string())
            }
            "fdcount" => Ok(std::fs::read_dir("/proc/self/fd")
                .map_err(io)?
                .count()
                .saturating_sub(1)
                .to_string()),
            "cloexec" => {
                let mut bad = Vec::new();
                for entry in std::fs::read_dir("/proc/self/fd").map_err(io)? {
                    let n: i32 = entry
                        .map_err(io)?
                        .file_name()
                        .to_string_lossy()
                        .parse()
                        .unwrap_or(-1);
                    if n <= 2 {
                        continue;
                    }
                    // The directory iterator's own descriptor disappears before we look: skip it.
                    let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{n}")) else {
                        continue;
                    };
                    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}"))
                        .unwrap_or_default();
                    // flags are octal; O_CLOEXEC is 02000000.
                    let flags = fdinfo
                        .lines()
                        .find_map(|l| l.strip_prefix("flags:"))
                        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                        .unwrap_or(0);
                    if flags & 0o2000000 == 0 {
                        bad.push(format!("{n}->{}", target.display()));
                    }
                }
                Ok(bad.join(","))
            }
            "squat" => {
                let pid: u32 = a.and_then(|p| p.parse().ok()).ok_or("0 missing pid")?;
                let fd = rustix::net::socket_with(
                    AddressFamily::UNIX,
                    SocketType::SEQPACKET,
                    SocketFlags::CLOEXEC,
                    None,
                )
                .map_err(|e| io(e.into()))?;
                let name = match sockdup::inbox_address(pid) {
                    sockdup::InboxAddress::Abstract(n) => n,
                    other => return Err(format!("0 cannot squat on {other}")),
                };
                let addr =
                    SocketAddrUnix::new_abstract_name(name.as_bytes()).map_err(|e| io(e.into()))?;
                rustix::net::bind(&fd, &addr).map_err(|e| io(e.into()))?;
                rustix::net::listen(&fd, 16).map_err(|e| io(e.into()))?;
                self.squat = Some(fd);
                Ok(String::new())
            }
            "spi-tcp-connect" => {
                let addr: std::net::SocketAddr = a.and_then(|x| x.parse().ok()).ok_or("0 missing address")?;
                let family = if addr.is_ipv4() { 2 } else { 10 };
                let sock = sockdup::spi::Socket::new(family, 1, 0).map_err(err)?;
                sock.connect(&addr).map_err(err)?;
                Ok(self.keep_spi(sock))
            }
            "spi-dup" => {
                let pid = b.and_then(|p| p.parse().ok()).ok_or("0 missing pid")?;
                Ok(self.spi(a)?.duplicate(pid).map_err(err)?.to_string())
            }
            "spi-redeem" => {
                let info: sockdup::ProtocolInfo = a.unwrap_or("").parse().map_err(err)?;
                let sock = sockdup::spi::Socket::from_info(&info).map_err(err)?;
                Ok(self.keep_spi(sock))
            }
            "spi-send" => {
                let text = line.splitn(3, ' ').nth(2).unwrap_or("");
                Ok(self.spi(a)?.send(text.as_bytes()).map_err(err)?.to_string())
            }
            "spi-recv" => {
                let mut buf = [0u8; 4096];
                let n = self.spi(a)?.recv(&mut buf).map_err(err)?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
            "spi-close" => {
                let idx: usize = a.and_then(|x| x.parse().ok()).ok_or("0 missing index")?;
                self.socks.remove(&idx).ok_or("0 no such socket")?.close().map_err(err)?;
                Ok(String::new())
            }
            "spi-into-fd" => {
                let idx: usize = a.and_then(|x| x.parse().ok()).ok_or("0 missing index")?;
                let sock = self.socks.remove(&idx).ok_or("0 no such socket")?;
                let fd = sock.into_fd().map_err(err)?;
                Ok(self.keep(fd).to_string())
            }
            "addr2str" => {
                let addr: std::net::SocketAddr = a.and_then(|x| x.parse().ok()).ok_or("0 missing address")?;
                sockdup::spi::address_to_string(&addr, None).map_err(err)
            }
            "str2addr" => Ok(sockdup::spi::string_to_address(a.unwrap_or(""), 2, None).map_err(err)?.to_string()),
            "trace" => Ok(sockdup::spi::layers::trace_reports()
                .iter()
                .map(|r| {
                    let calls: Vec<String> = r.totals.calls.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    let seen: Vec<String> = r.entries_seen.iter().map(u32::to_string).collect();
                    format!(
                        "layer={} chain={} seen={} calls={} sent={} received={} errors={} sockets={}",
                        r.layer_id,
                        r.chain_id,
                        seen.join(","),
                        calls.join(","),
                        r.totals.bytes_sent,
                        r.totals.bytes_received,
                        r.totals.errors,
                        r.sockets.len()
                    )
                })
                .collect::<Vec<_>>()
                .join(" | ")),
            "publish" | "take-over" | "complete" | "abort" | "drop-takeover" | "handed-over"
            | "wait-handover" | "unpublish" | "take-and-crash" => self.upgrade(cmd, line),
            "exit" => std::process::exit(0),
            "" => Ok(String::new()),
            other => Err(format!("0 unknown command {other}")),
        }
    }
}

impl Peer {
    fn upgrade(&mut self, cmd: &str, line: &str) -> Answer {
        use sockdup::upgrade::Upgrade;
        let mut words = line.split_whitespace().skip(1);
        let describe = |h: sockdup::upgrade::Handover| format!("{} {}", h.pid, h.names.join(" "));
        match cmd {
            "publish" => {
                let mut up = Upgrade::new(words.next().ok_or("0 missing pid file")?);
                let mut listeners = Vec::new();
                for w in words {
                    match w.split_once('=') {
                        Some(("timeout", v)) => {
                            up = up.timeout(Duration::from_secs_f64(
                                v.parse().map_err(|_| "0 bad timeout")?,
                            ))
                        }
                        Some((name, idx)) => {
                            let fd = self.fd(Some(idx))?.try_clone().map_err(io)?;
                            listeners.push((name.to_owned(), fd));
                        }
                        None => return Err(format!("0 bad listener {w}")),
                    }
                }
                self.published = Some(up.publish(listeners).map_err(err)?);
                Ok(String::new())
            }
            "take-over" => {
                let up = Upgrade::new(words.next().ok_or("0 missing pid file")?);
                let names: Vec<&str> = words.collect();
                let t = up.take_over(&names).map_err(err)?;
                let mut out = Vec::new();
                for (name, fd) in t.listeners() {
                    let own = fd.try_clone_to_owned().map_err(io)?;
                    out.push(format!("{name}={}", self.keep(own)));
                }
                self.takeover = Some(t);
                Ok(out.join(" "))
            }
            "complete" => {
                let t = self.takeover.take().ok_or("0 no takeover")?;
                self.published = Some(t.complete().map_err(err)?);
                Ok(String::new())
            }
            "abort" => {
                let t = self.takeover.take().ok_or("0 no takeover")?;
                t.abort().map_err(err)?;
                Ok(String::new())
            }
            "drop-takeover" => {
                self.takeover.take().ok_or("0 no takeover")?;
                Ok(String::new())
            }
            "handed-over" => {
                let p = self.published.as_ref().ok_or("0 nothing published")?;
                Ok(p.handed_over().map_or("none".into(), describe))
            }
            "wait-handover" => {
                let p = self.published.as_ref().ok_or("0 nothing published")?;
                let secs: f64 = words
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("0 missing seconds")?;
                Ok(p.wait_timeout(Duration::from_secs_f64(secs))
                    .map_or("none".into(), describe))
            }
            "unpublish" => {
                self.published.take().ok_or("0 nothing published")?;
                Ok(String::new())
            }
            "take-and-crash" => {
                // The documented control address, spoken to by hand, so this process can die
                // after the old one has duplicated the listeners for it and before it redeems.
                let pid_file = words.next().ok_or("0 missing pid file")?;
                let name = words.next().ok_or("0 missing name")?;
                let pid = std::fs::read_to_string(pid_file).map_err(io)?;
                let fd = rustix::net::socket_with(
                    AddressFamily::UNIX,
                    SocketType::STREAM,
                    SocketFlags::CLOEXEC,
                    None,
                )
                .map_err(|e| io(e.into()))?;
                let addr = SocketAddrUnix::new_abstract_name(
                    format!("sockdup/v1/{}/upgrade", pid.trim()).as_bytes(),
                )
                .map_err(|e| io(e.into()))?;
                rustix::net::connect(&fd, &addr).map_err(|e| io(e.into()))?;
                let mut stream = UnixStream::from(fd);
                stream
                    .write_all(format!("take 1 {name}\n").as_bytes())
                    .map_err(io)?;
                let mut first = String::new();
                std::io::BufReader::new(&stream)
                    .read_line(&mut first)
                    .map_err(io)?;
                if !first.starts_with("listener ") {
                    return Err(format!("0 expected a listener line, got {first:?}"));
                }
                std::process::abort();
            }
            _ => Err(format!("0 unknown command {cmd}")),
        }
    }
}

fn main() {
    let mut peer = Peer {
        fds: HashMap::new(),
        socks: HashMap::new(),
        next: 0,
        guard: None,
        squat: None,
        published: None,
        takeover: None,
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let answer = match peer.run(line.trim()) {
            Ok(v) if v.is_empty() => "ok".to_owned(),
            Ok(v) => format!("ok {v}"),
            Err(e) => format!("err {}", e.replace('\n', " ")),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    // stdin closed: exit, dropping everything (the inbox closes unredeemed duplicates).
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}
