//! A process for the tests to drive: one command per line on stdin, one answer per line on
//! stdout, `ok [VALUE...]` or `err CODE KIND MESSAGE` (the codec: [`sockdup_tests::Command`],
//! [`sockdup_tests::Answer`]). Descriptors it holds are named by index.
//!
//! Commands: `startup [ttl=S] [capacity=N] [ack=S] [allow=any|nobody] [inbox=caller|unserved]`,
//! `cleanup`, `pid`, `tcp-listen`,
//! `tcp-connect ADDR`, `udp-bind`, `unix-pair`, `pipe`, `dup IDX PID`, `dup-many IDX,IDX PID`,
//! `redeem RECORD`, `redeem-many RECORD...`, `close IDX`, `write IDX TEXT`, `read IDX`, `accept IDX`, `keepalive IDX`,
//! `set-keepalive IDX`, `nonblock IDX`, `set-nonblock IDX`, `udp-connect ADDR`, `fdcount`,
//! `cloexec` (lists descriptors above 2 that are not close-on-exec), `squat PID`, `hold-inbox PID N`
//! (opens N raw connections to PID's inbox and keeps them), `exit`; through the
//! catalog's chains: `spi-tcp-connect ADDR` (answers `IDX CATALOG_ID HANDLE`), `spi-dup IDX PID`,
//! `spi-redeem RECORD`, `spi-send IDX TEXT`, `spi-recv IDX`, `spi-close IDX`, `spi-into-fd IDX`,
//! `addr2str ADDR`, `str2addr TEXT`, `trace` (the trace layers' reports); upgrades:
//! `publish PIDFILE [timeout=S] NAME=IDX...`, `take-over PIDFILE NAME...` (answers
//! `NAME=IDX...`, this process's own copies), `complete`, `abort`, `drop-takeover`,
//! `handed-over` (`none` or `PID NAME...`), `wait-handover SECONDS`, `unpublish`,
//! `take-and-crash PIDFILE NAME` (asks by hand, reads the first answer line, aborts); the
//! control socket by hand: `ctl-connect PIDFILE`, `ctl-send TEXT`, `ctl-recv`, `ctl-redeem`,
//! `ctl-hold PIDFILE N`; exhaustion: `set-nofile N` (`RLIMIT_NOFILE`), `dup-repeat IDX PID N`
//! (answers `N FIRST LAST`), `fill IDX` (copies of IDX until out of descriptors), `unfill N|all`;
//! a hostile inbox peer: `attack PID WHAT`.
//!
//! With `inbox=caller` the peer starts sockdup with `Options::inbox_served_by_caller` and
//! serves its inbox from a poll loop while it waits for its next command (one thread: no inbox
//! thread); with `inbox=unserved` it starts so but never serves it (sources pushing to it wait
//! for their ack timeout).
//!
//! A command that is not one of these, or lacks an argument, is answered at once with an `err`
//! (kind `protocol-violation` or `invalid-argument`); a line too long or not UTF-8 is answered
//! so too, and the peer then exits (status 1): its input is out of step.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};
use sockdup::{Error, ErrorKind};
use sockdup_core::line::{LineMessage, LineReader};
use sockdup_tests::{Answer, Command, MAX_LINE, Verb};

#[derive(Default)]
struct Peer {
    fds: HashMap<usize, OwnedFd>,
    socks: HashMap<usize, sockdup::spi::Socket>,
    next: usize,
    guard: Option<sockdup::Startup>,
    squat: Option<OwnedFd>,
    /// Raw connections to another process's inbox (`hold-inbox`).
    held: Vec<OwnedFd>,
    /// Copies of a descriptor that use up this process's descriptors (`fill`).
    filler: Vec<OwnedFd>,
    published: Option<sockdup::upgrade::Published>,
    takeover: Option<sockdup::upgrade::Takeover>,
    /// The current raw control connection (`ctl-connect`).
    ctl: Option<LineReader<UnixStream>>,
    /// The names the last `take` line sent on it asked for, in order.
    ctl_asked: Vec<String>,
    /// The records its `listeners COUNT RECORD` lines carried, with the names asked for.
    ctl_records: Vec<(String, sockdup::ProtocolInfo)>,
    /// Raw control connections kept by `ctl-hold`.
    ctl_held: Vec<UnixStream>,
    /// Event objects (`ev-new`).
    events: HashMap<usize, sockdup::spi::Event>,
    /// `async_select` channels by socket index (`ev-async`).
    notes: HashMap<usize, std::sync::mpsc::Receiver<sockdup::spi::Notification>>,
    /// The inbox this peer serves while it waits for a command (`startup inbox=caller`),
    /// shared with its input ([`ServingStdin`]).
    serving: Rc<RefCell<Option<sockdup::CallerInbox>>>,
}

/// What a command answers: `ok VALUE` or the error.
type Outcome = Result<String, Error>;

/// A closure turning an OS error into an [`Error`] saying what was being done.
fn os<E: Into<std::io::Error>>(doing: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::from_errno(e, doing)
}

/// An [`ErrorKind::InvalidArgument`] error: the command does not fit the peer's state.
fn refused(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// Answers with nothing.
fn done() -> Outcome {
    Ok(String::new())
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

    /// The chain socket named by argument `i`.
    fn spi(&self, c: &Command, i: usize) -> Result<&sockdup::spi::Socket, Error> {
        let idx: usize = c.parsed(i, "socket index")?;
        self.socks
            .get(&idx)
            .ok_or_else(|| refused(format!("no socket {idx}")))
    }

    /// The descriptor named by argument `i`.
    fn fd(&self, c: &Command, i: usize) -> Result<&OwnedFd, Error> {
        let idx: usize = c.parsed(i, "descriptor index")?;
        self.fd_at(idx)
    }

    fn fd_at(&self, idx: usize) -> Result<&OwnedFd, Error> {
        self.fds
            .get(&idx)
            .ok_or_else(|| refused(format!("no descriptor {idx}")))
    }

    /// Carries out one command.
    fn run(&mut self, c: &Command) -> Outcome {
        match c.verb {
            Verb::Startup => self.startup(c),
            Verb::Cleanup => {
                self.serving.replace(None);
                self.guard = None;
                done()
            }
            Verb::Pid => Ok(std::process::id().to_string()),
            Verb::Exit => std::process::exit(0),
            Verb::TcpListen
            | Verb::TcpConnect
            | Verb::UdpBind
            | Verb::UdpConnect
            | Verb::UnixPair
            | Verb::Pipe => self.make(c),
            Verb::Dup | Verb::DupMany | Verb::Redeem | Verb::RedeemMany => self.handoff(c),
            Verb::Close
            | Verb::Write
            | Verb::Read
            | Verb::Accept
            | Verb::Keepalive
            | Verb::SetKeepalive
            | Verb::Nonblock
            | Verb::SetNonblock => self.use_fd(c),
            Verb::FdCount => fd_count(),
            Verb::Cloexec => inheritable(),
            Verb::Squat => self.squat(c),
            Verb::HoldInbox => self.hold_inbox(c),
            Verb::Attack => attack(c),
            Verb::SpiTcpConnect
            | Verb::SpiDup
            | Verb::SpiRedeem
            | Verb::SpiSend
            | Verb::SpiRecv
            | Verb::SpiClose
            | Verb::SpiIntoFd => self.spi_call(c),
            Verb::Addr2Str | Verb::Str2Addr | Verb::Trace => spi_info(c),
            Verb::Publish
            | Verb::TakeOver
            | Verb::Complete
            | Verb::Abort
            | Verb::DropTakeover
            | Verb::HandedOver
            | Verb::WaitHandover
            | Verb::Unpublish
            | Verb::TakeAndCrash => self.upgrade(c),
            Verb::CtlConnect | Verb::CtlSend | Verb::CtlRecv | Verb::CtlRedeem | Verb::CtlHold => {
                self.control(c)
            }
            Verb::SetNofile => set_nofile(c),
            Verb::DupRepeat => self.dup_repeat(c),
            Verb::Fill | Verb::Unfill => self.fill(c),
            Verb::SpiFromFd
            | Verb::EvNew
            | Verb::EvSelect
            | Verb::EvAsync
            | Verb::EvEnum
            | Verb::EvWait
            | Verb::EvReset
            | Verb::EvNotes => self.events(c),
        }
    }

    /// `startup [ttl=S] [capacity=N] [share=N] [ack=S] [allow=any|nobody]
    /// [inbox=caller|unserved]`.
    fn startup(&mut self, c: &Command) -> Outcome {
        let mut o = sockdup::Options::from_env()?;
        let mut serve = false;
        let seconds = |v: &str, what: &str| {
            v.parse()
                .map(Duration::from_secs_f64)
                .map_err(|_| c.bad(format!("bad {what} {v:?}")))
        };
        for opt in c.words() {
            o = match opt.split_once('=') {
                Some(("ttl", v)) => o.ttl(seconds(v, "ttl")?),
                Some(("capacity", v)) => o.capacity(
                    v.parse()
                        .map_err(|_| c.bad(format!("bad capacity {v:?}")))?,
                ),
                Some(("ack", v)) => o.ack_timeout(seconds(v, "ack")?),
                Some(("share", v)) => {
                    o.source_capacity(v.parse().map_err(|_| c.bad(format!("bad share {v:?}")))?)
                }
                Some(("allow", "any")) => o.allow(sockdup::Allow::AnyUser),
                Some(("allow", "nobody")) => o.allow(sockdup::Allow::Uids(vec![])),
                Some(("inbox", how @ ("caller" | "unserved"))) => {
                    serve = how == "caller";
                    o.inbox_served_by_caller()
                }
                _ => return Err(c.bad(format!("unknown option {opt}"))),
            };
        }
        let guard = o.startup()?;
        let inbox = guard.caller_inbox().filter(|_| serve).cloned();
        self.serving.replace(inbox);
        self.guard = Some(guard);
        done()
    }

    /// Makes sockets (or a pipe) and keeps them: `tcp-listen`, `tcp-connect ADDR`, `udp-bind`,
    /// `udp-connect ADDR`, `unix-pair`, `pipe`.
    fn make(&mut self, c: &Command) -> Outcome {
        match c.verb {
            Verb::TcpListen => {
                let l = TcpListener::bind("127.0.0.1:0").map_err(os("binding"))?;
                let addr = l.local_addr().map_err(os("getsockname"))?;
                Ok(format!("{} {addr}", self.keep(l)))
            }
            Verb::TcpConnect => {
                let to = c.required(0, "address")?;
                let s = TcpStream::connect(to).map_err(os("connecting"))?;
                Ok(self.keep(s).to_string())
            }
            Verb::UdpBind | Verb::UdpConnect => {
                let s = UdpSocket::bind("127.0.0.1:0").map_err(os("binding"))?;
                if c.verb == Verb::UdpConnect {
                    s.connect(c.required(0, "address")?)
                        .map_err(os("connecting"))?;
                }
                let addr = s.local_addr().map_err(os("getsockname"))?;
                Ok(format!("{} {addr}", self.keep(s)))
            }
            Verb::UnixPair => {
                let (x, y) = UnixStream::pair().map_err(os("socketpair"))?;
                Ok(format!("{} {}", self.keep(x), self.keep(y)))
            }
            _ => {
                let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(os("pipe"))?;
                Ok(format!("{} {}", self.keep(r), self.keep(w)))
            }
        }
    }

    /// `dup IDX PID`, `dup-many IDX,IDX PID`, `redeem RECORD`, `redeem-many RECORD...`.
    fn handoff(&mut self, c: &Command) -> Outcome {
        match c.verb {
            Verb::Dup => {
                let pid: u32 = c.parsed(1, "pid")?;
                Ok(sockdup::duplicate_socket(self.fd(c, 0)?, pid)?.to_string())
            }
            Verb::DupMany => {
                let pid: u32 = c.parsed(1, "pid")?;
                let mut socks = Vec::new();
                for i in c.required(0, "descriptor indexes")?.split(',') {
                    let idx = i
                        .parse()
                        .map_err(|_| c.bad(format!("{i:?} is not a descriptor index")))?;
                    socks.push(self.fd_at(idx)?.as_fd());
                }
                let records = sockdup::duplicate_sockets(&socks, pid)?;
                Ok(join(records.iter().map(ToString::to_string)))
            }
            Verb::Redeem => {
                let info: sockdup::ProtocolInfo = c.word(0).unwrap_or("").parse()?;
                let fd = sockdup::socket_from_info(&info)?;
                Ok(self.keep(fd).to_string())
            }
            _ => {
                let infos = c
                    .words()
                    .map(str::parse::<sockdup::ProtocolInfo>)
                    .collect::<Result<Vec<_>, _>>()?;
                let fds = sockdup::sockets_from_info(&infos)?;
                Ok(join(fds.into_iter().map(|fd| self.keep(fd).to_string())))
            }
        }
    }

    /// Calls on a kept descriptor: `close`, `write`, `read`, `accept`, `keepalive`,
    /// `set-keepalive`, `nonblock`, `set-nonblock`.
    fn use_fd(&mut self, c: &Command) -> Outcome {
        if c.verb == Verb::Close {
            let idx: usize = c.parsed(0, "index")?;
            self.fds
                .remove(&idx)
                .ok_or_else(|| refused(format!("no descriptor {idx}")))?;
            return done();
        }
        let fd = self.fd(c, 0)?;
        match c.verb {
            Verb::Write => {
                rustix::io::write(fd, c.rest(1).as_bytes()).map_err(os("write"))?;
                done()
            }
            Verb::Read => {
                let mut buf = [0u8; 4096];
                let n = rustix::io::read(fd, &mut buf).map_err(os("read"))?;
                Ok(if n == 0 {
                    "<eof>".into()
                } else {
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                })
            }
            Verb::Accept => {
                let conn =
                    rustix::net::accept_with(fd, SocketFlags::CLOEXEC).map_err(os("accept"))?;
                Ok(self.keep(conn).to_string())
            }
            Verb::Keepalive => Ok(sockopt::socket_keepalive(fd)
                .map_err(os("getsockopt"))?
                .to_string()),
            Verb::SetKeepalive => {
                sockopt::set_socket_keepalive(fd, true).map_err(os("setsockopt"))?;
                done()
            }
            Verb::Nonblock => {
                let fl = rustix::fs::fcntl_getfl(fd).map_err(os("fcntl"))?;
                Ok(fl.contains(rustix::fs::OFlags::NONBLOCK).to_string())
            }
            _ => {
                let fl = rustix::fs::fcntl_getfl(fd).map_err(os("fcntl"))?;
                rustix::fs::fcntl_setfl(fd, fl | rustix::fs::OFlags::NONBLOCK)
                    .map_err(os("fcntl"))?;
                done()
            }
        }
    }

    /// `dup-repeat IDX PID N`: N duplicates of one socket for PID, 253 a call; answers
    /// `N FIRST LAST`.
    fn dup_repeat(&mut self, c: &Command) -> Outcome {
        let idx: usize = c.parsed(0, "index")?;
        let pid: u32 = c.parsed(1, "pid")?;
        let n: usize = c.parsed(2, "count")?;
        let fd = self.fd_at(idx)?;
        let (mut first, mut last) = (None, None);
        let mut left = n;
        while left > 0 {
            let k = left.min(253);
            let records = sockdup::duplicate_sockets(&vec![fd; k], pid)?;
            first = first.or_else(|| records.first().cloned());
            last = records.last().cloned();
            left -= k;
        }
        match (first, last) {
            (Some(f), Some(l)) => Ok(format!("{n} {f} {l}")),
            _ => Ok("0".into()),
        }
    }

    /// `fill IDX` (copies of IDX until out of descriptors), `unfill N|all`.
    fn fill(&mut self, c: &Command) -> Outcome {
        if c.verb == Verb::Unfill {
            let n = match c.required(0, "count")? {
                "all" => self.filler.len(),
                _ => c.parsed(0, "count")?,
            };
            let keep = self.filler.len().saturating_sub(n);
            self.filler.truncate(keep);
            return Ok(self.filler.len().to_string());
        }
        let fd = self.fd(c, 0)?;
        let mut opened = Vec::new();
        loop {
            match rustix::io::fcntl_dupfd_cloexec(fd, 0) {
                Ok(copy) => opened.push(copy),
                Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) => break,
                Err(e) => return Err(Error::from_errno(e, "dup")),
            }
        }
        let n = opened.len();
        self.filler.extend(opened);
        Ok(n.to_string())
    }

    /// `squat PID`: binds the inbox address of process PID before it does.
    fn squat(&mut self, c: &Command) -> Outcome {
        let addr = inbox_name(c.parsed(0, "pid")?)?;
        let fd = seqpacket()?;
        rustix::net::bind(&fd, &addr).map_err(os("bind"))?;
        rustix::net::listen(&fd, 16).map_err(os("listen"))?;
        self.squat = Some(fd);
        done()
    }

    /// `hold-inbox PID N`: opens N connections to the inbox of process PID, sends nothing, and
    /// keeps them; answers how many this peer holds.
    fn hold_inbox(&mut self, c: &Command) -> Outcome {
        let addr = inbox_name(c.parsed(0, "pid")?)?;
        let n: usize = c.parsed(1, "count")?;
        for _ in 0..n {
            let fd = seqpacket()?;
            rustix::net::connect(&fd, &addr).map_err(os("connect"))?;
            self.held.push(fd);
        }
        Ok(self.held.len().to_string())
    }

    /// Calls through the catalog's chains: `spi-tcp-connect`, `spi-dup`, `spi-redeem`,
    /// `spi-send`, `spi-recv`, `spi-close`, `spi-into-fd`.
    fn spi_call(&mut self, c: &Command) -> Outcome {
        match c.verb {
            Verb::SpiTcpConnect => {
                let addr: SocketAddr = c.parsed(0, "address")?;
                let family = if addr.is_ipv4() { 2 } else { 10 };
                let sock = sockdup::spi::Socket::new(family, 1, 0)?;
                sock.connect(&addr)?;
                Ok(self.keep_spi(sock))
            }
            Verb::SpiDup => {
                let pid: u32 = c.parsed(1, "pid")?;
                Ok(self.spi(c, 0)?.duplicate(pid)?.to_string())
            }
            Verb::SpiRedeem => {
                let info: sockdup::ProtocolInfo = c.word(0).unwrap_or("").parse()?;
                let sock = sockdup::spi::Socket::from_info(&info)?;
                Ok(self.keep_spi(sock))
            }
            Verb::SpiSend => Ok(self.spi(c, 0)?.send(c.rest(1).as_bytes())?.to_string()),
            Verb::SpiRecv => {
                let mut buf = [0u8; 4096];
                let n = self.spi(c, 0)?.recv(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
            Verb::SpiClose => {
                let idx: usize = c.parsed(0, "index")?;
                let sock = self
                    .socks
                    .remove(&idx)
                    .ok_or_else(|| refused("no such socket"))?;
                sock.close()?;
                done()
            }
            _ => {
                let idx: usize = c.parsed(0, "index")?;
                let sock = self
                    .socks
                    .remove(&idx)
                    .ok_or_else(|| refused("no such socket"))?;
                let fd = sock.into_fd()?;
                Ok(self.keep(fd).to_string())
            }
        }
    }

    /// The network-event commands: `spi-from-fd`, `ev-new`, `ev-select`, `ev-async`,
    /// `ev-enum`, `ev-wait`, `ev-reset`, `ev-notes`.
    fn events(&mut self, c: &Command) -> Outcome {
        let mask = |i: usize| -> Result<u32, Error> {
            let w = c.required(i, "event mask")?;
            let parsed = match w.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => w.parse().ok(),
            };
            parsed.ok_or_else(|| c.bad(format!("{w:?} is not an event mask")))
        };
        let event = |p: &Self, i: usize| -> Result<sockdup::spi::Event, Error> {
            let idx: usize = c.parsed(i, "event index")?;
            p.events
                .get(&idx)
                .cloned()
                .ok_or_else(|| refused(format!("no event {idx}")))
        };
        match c.verb {
            Verb::SpiFromFd => {
                let idx: usize = c.parsed(0, "descriptor index")?;
                let fd = self
                    .fds
                    .remove(&idx)
                    .ok_or_else(|| refused(format!("no descriptor {idx}")))?;
                let sock = sockdup::spi::Socket::from_fd(fd)?;
                Ok(self.keep_spi(sock))
            }
            Verb::EvNew => {
                self.next += 1;
                self.events.insert(self.next, sockdup::spi::Event::new()?);
                Ok(self.next.to_string())
            }
            Verb::EvSelect => {
                let e = event(self, 1)?;
                self.spi(c, 0)?.event_select(&e, mask(2)?)?;
                done()
            }
            Verb::EvAsync => {
                let idx: usize = c.parsed(0, "socket index")?;
                let (tx, rx) = std::sync::mpsc::channel();
                self.spi(c, 0)?.async_select(mask(1)?, tx)?;
                self.notes.insert(idx, rx);
                done()
            }
            Verb::EvEnum => {
                let e = match c.word(1) {
                    Some(_) => Some(event(self, 1)?),
                    None => None,
                };
                let n = self.spi(c, 0)?.enum_network_events(e.as_ref())?;
                let errors: Vec<String> = n.errors.iter().map(i32::to_string).collect();
                Ok(format!(
                    "events={:#x} errors={}",
                    n.events,
                    errors.join(",")
                ))
            }
            Verb::EvWait => {
                let e = event(self, 0)?;
                let ms: u64 = c.parsed(1, "milliseconds")?;
                let set = e.wait(Some(std::time::Duration::from_millis(ms)))?;
                Ok(if set { "set" } else { "timeout" }.to_owned())
            }
            Verb::EvReset => {
                event(self, 0)?.reset();
                done()
            }
            _ => {
                let idx: usize = c.parsed(0, "socket index")?;
                let ms: u64 = c.parsed(1, "milliseconds")?;
                let rx = self
                    .notes
                    .get(&idx)
                    .ok_or_else(|| refused(format!("socket {idx} has no channel")))?;
                let mut out = Vec::new();
                if let Ok(n) = rx.recv_timeout(std::time::Duration::from_millis(ms)) {
                    out.push(n);
                    out.extend(rx.try_iter());
                }
                Ok(out
                    .iter()
                    .map(|n| format!("{}:{}", n.event, n.error))
                    .collect::<Vec<_>>()
                    .join(" "))
            }
        }
    }

    /// The upgrade commands: `publish`, `take-over`, `complete`, `abort`, `drop-takeover`,
    /// `handed-over`, `wait-handover`, `unpublish`, `take-and-crash`.
    fn upgrade(&mut self, c: &Command) -> Outcome {
        let describe = |h: sockdup::upgrade::Handover| format!("{} {}", h.pid, h.names.join(" "));
        match c.verb {
            Verb::Publish => self.publish(c),
            Verb::TakeOver => self.take_over(c),
            Verb::Complete => {
                let t = self.takeover.take().ok_or_else(|| refused("no takeover"))?;
                self.published = Some(t.complete()?);
                done()
            }
            Verb::Abort => {
                let t = self.takeover.take().ok_or_else(|| refused("no takeover"))?;
                t.abort()?;
                done()
            }
            Verb::DropTakeover => {
                self.takeover.take().ok_or_else(|| refused("no takeover"))?;
                done()
            }
            Verb::HandedOver => {
                let p = self.published()?;
                Ok(p.handed_over().map_or("none".into(), describe))
            }
            Verb::WaitHandover => {
                let secs: f64 = c.parsed(0, "seconds")?;
                let p = self.published()?;
                Ok(p.wait_timeout(Duration::from_secs_f64(secs))
                    .map_or("none".into(), describe))
            }
            Verb::Unpublish => {
                self.published
                    .take()
                    .ok_or_else(|| refused("nothing published"))?;
                done()
            }
            _ => take_and_crash(c),
        }
    }

    fn published(&self) -> Result<&sockdup::upgrade::Published, Error> {
        self.published
            .as_ref()
            .ok_or_else(|| refused("nothing published"))
    }

    /// `publish PIDFILE [timeout=S] NAME=IDX...`.
    fn publish(&mut self, c: &Command) -> Outcome {
        let mut up = sockdup::upgrade::Upgrade::new(c.required(0, "pid file")?);
        let mut listeners = Vec::new();
        for w in c.words().skip(1) {
            match w.split_once('=') {
                Some(("timeout", v)) => {
                    let secs: f64 = v.parse().map_err(|_| c.bad(format!("bad timeout {v:?}")))?;
                    up = up.timeout(Duration::from_secs_f64(secs));
                }
                Some((name, idx)) => {
                    let idx = idx
                        .parse()
                        .map_err(|_| c.bad(format!("{idx:?} is not a descriptor index")))?;
                    let fd = self.fd_at(idx)?.try_clone().map_err(os("dup"))?;
                    listeners.push((name.to_owned(), fd));
                }
                None => return Err(c.bad(format!("bad listener {w}"))),
            }
        }
        self.published = Some(up.publish(listeners)?);
        done()
    }

    /// `take-over PIDFILE NAME...`.
    fn take_over(&mut self, c: &Command) -> Outcome {
        let up = sockdup::upgrade::Upgrade::new(c.required(0, "pid file")?);
        let names: Vec<&str> = c.words().skip(1).collect();
        let t = up.take_over(&names)?;
        let mut out = Vec::new();
        for (name, fd) in t.listeners() {
            let own = fd.try_clone_to_owned().map_err(os("dup"))?;
            out.push(format!("{name}={}", self.keep(own)));
        }
        self.takeover = Some(t);
        Ok(out.join(" "))
    }
}

impl Peer {
    /// The raw control-socket commands: `ctl-connect`, `ctl-send`, `ctl-recv`, `ctl-redeem`,
    /// `ctl-hold`.
    fn control(&mut self, c: &Command) -> Outcome {
        let wait = Duration::from_secs(10);
        match c.verb {
            Verb::CtlConnect => {
                let stream = control_connect(c.required(0, "pid file")?)?;
                self.ctl = Some(LineReader::new(stream, sockdup_core::line::MAX_LINE));
                self.ctl_records.clear();
                done()
            }
            Verb::CtlSend => {
                let ctl = self
                    .ctl
                    .as_mut()
                    .ok_or_else(|| refused("no control connection"))?;
                let text = c.rest(0);
                if let Some(rest) = text.strip_prefix("take ") {
                    self.ctl_asked = rest.split(' ').skip(1).map(str::to_owned).collect();
                }
                let mut stream = ctl.get_ref();
                stream
                    .write_all(format!("{}\n", c.rest(0)).as_bytes())
                    .map_err(os("writing the control connection"))?;
                done()
            }
            Verb::CtlRecv => {
                let ctl = self
                    .ctl
                    .as_mut()
                    .ok_or_else(|| refused("no control connection"))?;
                let line = first_line(ctl, wait)?;
                let mut words = line.splitn(3, ' ');
                if let (Some("listeners"), Some(count), Some(record)) =
                    (words.next(), words.next(), words.next())
                {
                    let count: u32 = count
                        .parse()
                        .map_err(|_| refused(format!("bad count in {line:?}")))?;
                    let first = record.parse::<sockdup::ProtocolInfo>()?;
                    for record in sockdup_core::proto::upgrade::expand(count, &first) {
                        let name = self
                            .ctl_asked
                            .get(self.ctl_records.len())
                            .cloned()
                            .unwrap_or_default();
                        self.ctl_records.push((name, record));
                    }
                }
                Ok(line)
            }
            Verb::CtlRedeem => {
                let records: Vec<_> = self.ctl_records.drain(..).collect();
                let infos: Vec<_> = records.iter().map(|(_, r)| r.clone()).collect();
                let fds = sockdup::sockets_from_info(&infos)?;
                let mut out = Vec::new();
                for ((name, _), fd) in records.iter().zip(fds) {
                    out.push(format!("{name}={}", self.keep(fd)));
                }
                Ok(out.join(" "))
            }
            _ => {
                let pid_file = c.required(0, "pid file")?;
                let n: usize = c.parsed(1, "count")?;
                let (mut answered, mut closed, mut first) = (0, 0, String::new());
                for _ in 0..n {
                    let stream = control_connect(pid_file)?;
                    let mut reader = LineReader::new(stream, sockdup_core::line::MAX_LINE);
                    let wait = Duration::from_secs(5);
                    let line = first_line(&mut reader, wait)?;
                    if line != "closed" {
                        answered += 1;
                        if first.is_empty() {
                            first = line;
                        }
                        if first_line(&mut reader, wait)? == "closed" {
                            closed += 1;
                        }
                    } else {
                        closed += 1;
                    }
                    self.ctl_held.push(reader.into_inner());
                }
                Ok(format!("answered={answered} closed={closed} first={first}"))
            }
        }
    }
}

/// A raw connection to the takeover control socket of the process `pid_file` names (where the
/// library says it is, following `SOCKDUP_RUNTIME_DIR`).
fn control_connect(pid_file: &str) -> Result<UnixStream, Error> {
    let text = std::fs::read_to_string(pid_file).map_err(os("reading the pid file"))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| refused(format!("the pid file holds {text:?}")))?;
    let dir = std::env::var_os("SOCKDUP_RUNTIME_DIR").map(std::path::PathBuf::from);
    let addr = match sockdup::upgrade::control_address(pid, dir.as_deref()) {
        sockdup::InboxAddress::Abstract(name) => SocketAddrUnix::new_abstract_name(name.as_bytes()),
        sockdup::InboxAddress::Path(path) => SocketAddrUnix::new(path),
    }
    .map_err(os("naming the control socket"))?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(os("socket"))?;
    rustix::net::connect(&fd, &addr).map_err(os("connecting to the control socket"))?;
    Ok(UnixStream::from(fd))
}

/// The next line on a control connection within `wait`, or `closed` at its end (or reset).
fn first_line(reader: &mut LineReader<UnixStream>, wait: Duration) -> Outcome {
    reader
        .get_ref()
        .set_read_timeout(Some(wait))
        .map_err(os("setting a read timeout"))?;
    match reader.read_line() {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Ok("closed".into()),
        Err(e) if e.kind() == ErrorKind::Os => Ok("closed".into()),
        Err(e) => Err(e),
    }
}

/// Words joined by single spaces.
fn join(words: impl Iterator<Item = String>) -> String {
    words.collect::<Vec<_>>().join(" ")
}

/// `set-nofile N`: `RLIMIT_NOFILE` soft and hard limits to N.
fn set_nofile(c: &Command) -> Outcome {
    let n: u64 = c.parsed(0, "limit")?;
    let limit = rustix::process::Rlimit {
        current: Some(n),
        maximum: Some(n),
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
        .map_err(os("setrlimit(RLIMIT_NOFILE)"))?;
    done()
}

/// `fdcount`: descriptors open in this process.
fn fd_count() -> Outcome {
    Ok(std::fs::read_dir("/proc/self/fd")
        .map_err(os("reading /proc/self/fd"))?
        .count()
        .saturating_sub(1)
        .to_string())
}

/// `cloexec`: descriptors above 2 that are not close-on-exec, as `N->TARGET,...`.
fn inheritable() -> Outcome {
    let mut bad = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").map_err(os("reading /proc/self/fd"))? {
        let n: i32 = entry
            .map_err(os("reading /proc/self/fd"))?
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
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).unwrap_or_default();
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

/// `addr2str ADDR`, `str2addr TEXT`, `trace` (the trace layers' reports).
fn spi_info(c: &Command) -> Outcome {
    match c.verb {
        Verb::Addr2Str => {
            let addr: SocketAddr = c.parsed(0, "address")?;
            sockdup::spi::address_to_string(&addr, None)
        }
        Verb::Str2Addr => {
            Ok(sockdup::spi::string_to_address(c.word(0).unwrap_or(""), 2, None)?.to_string())
        }
        _ => Ok(sockdup::spi::layers::trace_reports()
            .iter()
            .map(|r| {
                let calls: Vec<String> = r
                    .totals
                    .calls
                    .iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect();
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
    }
}

/// `take-and-crash PIDFILE NAME`: the documented control address, spoken to by hand, so this
/// process can die after the old one has duplicated the listeners for it and before it
/// redeems.
fn take_and_crash(c: &Command) -> Outcome {
    let pid_file = c.required(0, "pid file")?;
    let name = c.required(1, "name")?;
    let pid = std::fs::read_to_string(pid_file).map_err(os("reading the pid file"))?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(os("socket"))?;
    let addr =
        SocketAddrUnix::new_abstract_name(format!("sockdup/v1/{}/upgrade", pid.trim()).as_bytes())
            .map_err(os("naming"))?;
    rustix::net::connect(&fd, &addr).map_err(os("connect"))?;
    let mut stream = UnixStream::from(fd);
    stream
        .write_all(format!("take 2 {name}\n").as_bytes())
        .map_err(os("write"))?;
    let first = LineReader::new(&stream, sockdup_core::line::MAX_LINE).read_line()?;
    if !first
        .as_deref()
        .is_some_and(|l| l.starts_with("listeners "))
    {
        return Err(Error::new(
            ErrorKind::ProtocolViolation,
            format!("expected a listener line, got {first:?}"),
        ));
    }
    std::process::abort();
}

/// Writes one answer; false if stdout is gone.
fn answer(out: &mut impl Write, answer: &Answer) -> bool {
    out.write_all(answer.encode().as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

fn main() -> std::process::ExitCode {
    // Chains holding provider libraries (C layers) work here as in the sockdup command.
    sockdup_capi::provider::register();
    let mut peer = Peer::default();
    let input = ServingStdin {
        serving: peer.serving.clone(),
    };
    let mut input = LineReader::new(input, MAX_LINE);
    let mut out = std::io::stdout();
    loop {
        let outcome = match input.read_line() {
            // stdin closed: exit, dropping everything (the inbox closes unredeemed duplicates).
            Ok(None) => return std::process::ExitCode::SUCCESS,
            Ok(Some(line)) => Command::parse(&line).and_then(|c| peer.run(&c)),
            Err(e) => {
                // An oversized or non-UTF-8 line: the input is out of step. Say so and stop.
                answer(&mut out, &Answer::from(Err::<String, _>(e)));
                return std::process::ExitCode::FAILURE;
            }
        };
        if !answer(&mut out, &Answer::from(outcome)) {
            return std::process::ExitCode::SUCCESS;
        }
    }
}

/// The peer's standard input (read unbuffered: the line reader buffers), which, while the peer
/// serves its inbox (`startup inbox=caller`), waits for the next command in a poll loop that
/// serves the inbox meanwhile.
struct ServingStdin {
    serving: Rc<RefCell<Option<sockdup::CallerInbox>>>,
}

impl std::io::Read for ServingStdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, poll};
        let stdin = std::io::stdin();
        loop {
            let Some(inbox) = self.serving.borrow().clone() else {
                return Ok(rustix::io::read(stdin.as_fd(), buf)?);
            };
            let timeout = inbox.timeout().map(|d| {
                rustix::time::Timespec::try_from(d).unwrap_or(rustix::time::Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                })
            });
            let mut fds = [
                PollFd::new(&stdin, PollFlags::IN),
                PollFd::new(&inbox, PollFlags::IN),
            ];
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            let command = !fds[0].revents().is_empty();
            // Readable or due (a spare call returns at once).
            if let Err(e) = inbox.serve_ready() {
                eprintln!("peer {}: serving the inbox: {e}", std::process::id());
            }
            if command {
                return Ok(rustix::io::read(stdin.as_fd(), buf)?);
            }
        }
    }
}

/// The abstract address of process `pid`'s inbox (this peer does not follow a runtime directory).
fn inbox_name(pid: u32) -> Result<SocketAddrUnix, Error> {
    match sockdup::inbox_address(pid) {
        sockdup::InboxAddress::Abstract(name) => {
            SocketAddrUnix::new_abstract_name(name.as_bytes()).map_err(os("naming"))
        }
        sockdup::InboxAddress::Path(path) => SocketAddrUnix::new(path).map_err(os("naming")),
    }
}

/// `attack PID WHAT`: connects to the inbox of process PID as a hostile peer would (bare
/// sockets, not the library), sends one message, and answers with the inbox's reply: `ok N`
/// (it issued N tickets), the error kind it answered, `closed` (it closed without a word) or
/// `silent` (no answer in 5 s). WHAT is one of
/// - `random:SEED:LEN`: LEN pseudo-random bytes;
/// - `short`: the first 6 bytes of a well-formed push of one socket, with the socket;
/// - `lying:COUNT:N`: a push that says COUNT descriptors and carries N sockets;
/// - `bad-header:N`: N sockets (253 is the most one message carries) under a header of garbage;
/// - `pipes:N`: a well-formed push of N pipe ends;
/// - `mixed:N`: a well-formed push of N-1 sockets and a pipe end;
/// - `long:N`: a well-formed push header of one socket, padded to N bytes;
/// - `push:N`: a well-formed push of N sockets (an honest one, from a dishonest process).
///
/// Every descriptor this peer made for the attack is closed when it answers.
fn attack(c: &Command) -> Outcome {
    use sockdup_core::message::{Reply, Request};
    let pid: u32 = c.parsed(0, "pid")?;
    let what = c.required(1, "attack")?;
    let parts: Vec<&str> = what.split(':').collect();
    let num = |i: usize| -> Result<usize, Error> {
        parts
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| c.bad(format!("attack {what}: argument {i} must be a number")))
    };
    let sockets = |n: usize| -> Result<Vec<OwnedFd>, Error> {
        let udp = UdpSocket::bind("127.0.0.1:0").map_err(os("binding"))?;
        (0..n)
            .map(|_| udp.try_clone().map(OwnedFd::from).map_err(os("dup")))
            .collect()
    };
    let pipe_ends = |n: usize| -> Result<Vec<OwnedFd>, Error> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let (r, w) =
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(os("pipe"))?;
            out.push(r);
            if out.len() < n {
                out.push(w);
            }
        }
        Ok(out)
    };
    let push = |count: usize| {
        Request::Push {
            count: count as u32,
        }
        .encode()
    };
    let (bytes, fds): (Vec<u8>, Vec<OwnedFd>) = match parts[0] {
        "random" => {
            let mut x = num(1)? as u64 | 1;
            let bytes = (0..num(2)?)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            (bytes, Vec::new())
        }
        "short" => (push(1)[..6].to_vec(), sockets(1)?),
        "lying" => (push(num(1)?), sockets(num(2)?)?),
        "bad-header" => (b"\xffGARBAGE-HEADER".to_vec(), sockets(num(1)?)?),
        "pipes" => (push(num(1)?), pipe_ends(num(1)?)?),
        "mixed" => {
            let n = num(1)?.max(1);
            let mut fds = sockets(n - 1)?;
            fds.extend(pipe_ends(1)?);
            (push(n), fds)
        }
        "long" => {
            let mut bytes = push(1);
            bytes.resize(num(1)?, 0);
            (bytes, sockets(1)?)
        }
        "push" => (push(num(1)?), sockets(num(1)?)?),
        _ => return Err(c.bad(format!("unknown attack {what}"))),
    };
    let addr = inbox_name(pid)?;
    let conn = seqpacket()?;
    rustix::net::connect(&conn, &addr).map_err(os("connect"))?;
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![
        std::mem::MaybeUninit::uninit();
        rustix::cmsg_space!(ScmRights(borrowed.len().max(1)))
    ];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() {
        control.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed));
    }
    match rustix::net::sendmsg(
        &conn,
        &[std::io::IoSlice::new(&bytes)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    ) {
        // Refused at the door: the inbox answered and closed before the message went out.
        Ok(_) | Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {}
        Err(e) => return Err(os("sendmsg")(e)),
    }
    drop(fds);
    sockopt::set_socket_timeout(&conn, sockopt::Timeout::Recv, Some(Duration::from_secs(5)))
        .map_err(os("setsockopt"))?;
    let mut buf = vec![0u8; sockdup_core::message::MAX_MESSAGE];
    let mut reset = false;
    let answer = loop {
        break match rustix::net::recv(&conn, &mut buf, rustix::net::RecvFlags::empty()) {
            Ok((0, _)) => "closed".to_string(),
            Ok((n, _)) => {
                match Reply::decode(&buf[..n]).map_err(|e| e.context("the inbox's reply"))? {
                    r if r.status == 0 => format!("ok {}", r.tickets.len()),
                    r => r.text.split(' ').next().unwrap_or("").to_string(),
                }
            }
            Err(rustix::io::Errno::AGAIN) => "silent".to_string(),
            // A reset (our message unread when the inbox closed) comes before what the inbox
            // said before closing: read once more.
            Err(rustix::io::Errno::CONNRESET) if !reset => {
                reset = true;
                continue;
            }
            Err(rustix::io::Errno::CONNRESET) => "closed".to_string(),
            Err(e) => return Err(os("recv")(e)),
        };
    };
    Ok(answer)
}

/// A new close-on-exec `AF_UNIX` `SOCK_SEQPACKET` socket, as inboxes use.
fn seqpacket() -> Result<OwnedFd, Error> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(os("socket"))
}
