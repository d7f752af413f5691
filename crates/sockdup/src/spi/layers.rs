//! The built-in layered service providers, and the one wrapper that makes a layer out of each.
//!
//! - `trace` counts calls, bytes and errors per socket, remembers which catalog entries it was
//!   handed, and emits `tracing` events; read it with [`trace_reports`].
//! - `policy` refuses duplicates to targets outside its rules (`target_uids`, `target_exe`) and
//!   connections to addresses outside them (`connect`), with `WSAEACCES` naming the rule.
//! - `fault` injects errors (`fail.CALL = CODE`) and delays (`delay.CALL = MILLISECONDS`) into
//!   chosen calls.
//!
//! Settings come from the layer's `config` in the catalog file. A layer is IFS (it passes the
//! lower provider's descriptors through) or non-IFS (it hands out its own handles from the
//! upcall table and maps them to the lower ones).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sockdup_core::catalog::Layer;
use sockdup_core::error::{Error, WSAEACCES, code_name};
use sockdup_core::wire::ProtocolInfo;

use super::{Handle, Provider, SockOpt, Upcall};
use crate::sync::lock;

/// Counters of one socket, or of a whole layer instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls by name (`"send"`, `"duplicate"`, …).
    pub calls: BTreeMap<&'static str, u64>,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Calls that failed.
    pub errors: u64,
}

impl Counters {
    fn count(&mut self, call: &'static str, outcome: &Outcome) {
        *self.calls.entry(call).or_default() += 1;
        match outcome {
            Outcome::Failed => self.errors += 1,
            Outcome::Sent(n) => self.bytes_sent += *n as u64,
            Outcome::Received(n) => self.bytes_received += *n as u64,
            Outcome::Done => {}
        }
    }
}

/// What one `trace` layer instance saw in this process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceReport {
    /// The layer's own catalog entry id.
    pub layer_id: u32,
    /// The chain entry this instance serves.
    pub chain_id: u32,
    /// Totals over every socket.
    pub totals: Counters,
    /// Per open socket, by this layer's handle number (a socket's entry goes when it closes;
    /// its counts stay in `totals`).
    pub sockets: BTreeMap<u64, Counters>,
    /// `dwCatalogEntryId` of every record handed to this layer, in order (the last 256).
    pub entries_seen: Vec<u32>,
}

static TRACES: Mutex<Vec<Arc<Mutex<TraceReport>>>> = Mutex::new(Vec::new());

/// What every `trace` layer instance of this process has counted so far.
pub fn trace_reports() -> Vec<TraceReport> {
    lock(&TRACES).iter().map(|t| lock(t).clone()).collect()
}

enum Outcome {
    Done,
    Failed,
    Sent(usize),
    Received(usize),
}

/// What a call is about, for the rules that look at it.
enum Detail<'a> {
    None,
    Connect(&'a SocketAddr),
    Duplicate(u32),
}

#[derive(Debug)]
enum Behaviour {
    Trace(Arc<Mutex<TraceReport>>),
    Policy {
        target_uids: Option<Vec<u32>>,
        target_exe: Option<Vec<String>>,
        connect: Option<Vec<Net>>,
    },
    Fault {
        fail: BTreeMap<String, i32>,
        delay: BTreeMap<String, Duration>,
    },
}

/// An address rule of the policy layer: an IP with an optional prefix length and port.
#[derive(Debug, Clone, Copy)]
struct Net {
    ip: IpAddr,
    prefix: u8,
    port: Option<u16>,
}

impl Net {
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(sa) = text.parse::<SocketAddr>() {
            let prefix = if sa.is_ipv4() { 32 } else { 128 };
            return Some(Self {
                ip: sa.ip(),
                prefix,
                port: Some(sa.port()),
            });
        }
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, p.parse().ok()?),
            None => {
                let ip = text.parse::<IpAddr>().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        Some(Self {
            ip,
            prefix,
            port: None,
        })
    }

    fn contains(&self, addr: &SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((a, wa), (b, wb)) = (bits(self.ip), bits(addr.ip()));
        if wa != wb || self.prefix > wa {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        a & mask == b & mask
    }
}

fn list(config: &BTreeMap<String, String>, key: &str) -> Option<Vec<String>> {
    config.get(key).map(|v| {
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

impl Behaviour {
    fn new(spec: &Layer, chain_id: u32) -> Result<Self, Error> {
        let bad = |key: &str, value: &str, want: &str| {
            Error::invalid(format!(
                "layer {} ({}): setting {key}={value:?} is not {want}",
                spec.id, spec.kind
            ))
        };
        match spec.kind.as_str() {
            "trace" => {
                let report = Arc::new(Mutex::new(TraceReport {
                    layer_id: spec.id,
                    chain_id,
                    ..TraceReport::default()
                }));
                lock(&TRACES).push(report.clone());
                Ok(Self::Trace(report))
            }
            "policy" => {
                let target_uids = list(&spec.config, "target_uids")
                    .map(|v| {
                        v.iter()
                            .map(|u| u.parse().map_err(|_| bad("target_uids", u, "a uid")))
                            .collect()
                    })
                    .transpose()?;
                let connect = list(&spec.config, "connect")
                    .map(|v| {
                        v.iter()
                            .map(|n| {
                                Net::parse(n).ok_or_else(|| {
                                    bad("connect", n, "an address, network or ip:port")
                                })
                            })
                            .collect()
                    })
                    .transpose()?;
                Ok(Self::Policy {
                    target_uids,
                    target_exe: list(&spec.config, "target_exe"),
                    connect,
                })
            }
            "fault" => {
                let mut fail = BTreeMap::new();
                let mut delay = BTreeMap::new();
                for (k, v) in &spec.config {
                    if let Some(call) = k.strip_prefix("fail.") {
                        fail.insert(
                            call.to_owned(),
                            v.trim()
                                .parse()
                                .map_err(|_| bad(k, v, "a Winsock error number"))?,
                        );
                    } else if let Some(call) = k.strip_prefix("delay.") {
                        let ms: u64 = v
                            .trim()
                            .parse()
                            .map_err(|_| bad(k, v, "a number of milliseconds"))?;
                        delay.insert(call.to_owned(), Duration::from_millis(ms));
                    } else {
                        return Err(bad(k, v, "a fail.CALL or delay.CALL setting"));
                    }
                }
                Ok(Self::Fault { fail, delay })
            }
            other => Err(Error::invalid(format!(
                "layer {} has unknown kind {other:?}",
                spec.id
            ))),
        }
    }

    fn before(&self, spec: &Layer, call: &'static str, detail: &Detail<'_>) -> Result<(), Error> {
        match self {
            // Counted in `after`, under one lock per call.
            Self::Trace(_) => Ok(()),
            Self::Policy {
                target_uids,
                target_exe,
                connect,
            } => {
                let refuse = |rule: String| {
                    Err(Error::from_code(
                        WSAEACCES,
                        format!(
                            "policy layer {} ({:?}) refused {call}: {rule}",
                            spec.id, spec.name
                        ),
                    ))
                };
                match detail {
                    Detail::Duplicate(pid) => {
                        if let Some(uids) = target_uids {
                            let uid = process_uid(*pid);
                            if !uid.is_some_and(|u| uids.contains(&u)) {
                                return refuse(format!(
                                    "rule target_uids={} does not include process {pid}'s uid ({})",
                                    uids.iter()
                                        .map(u32::to_string)
                                        .collect::<Vec<_>>()
                                        .join(","),
                                    uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
                                ));
                            }
                        }
                        if let Some(exes) = target_exe {
                            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                            let shown = exe
                                .as_ref()
                                .map_or_else(|| "unknown".to_owned(), |p| p.display().to_string());
                            if !exes.iter().any(|prefix| shown.starts_with(prefix.as_str())) {
                                return refuse(format!(
                                    "rule target_exe={} does not match process {pid}'s executable {shown}",
                                    exes.join(",")
                                ));
                            }
                        }
                        Ok(())
                    }
                    Detail::Connect(addr) => match connect {
                        Some(nets) if !nets.iter().any(|n| n.contains(addr)) => refuse(format!(
                            "rule connect={} does not allow {addr}",
                            spec.config.get("connect").map_or("", String::as_str)
                        )),
                        _ => Ok(()),
                    },
                    Detail::None => Ok(()),
                }
            }
            Self::Fault { fail, delay } => {
                if let Some(d) = delay.get(call) {
                    std::thread::sleep(*d);
                }
                match fail.get(call) {
                    Some(&code) => Err(Error::from_code(
                        code,
                        format!(
                            "fault layer {} injected {} into {call} (as its catalog settings ask)",
                            spec.id,
                            code_name(code).unwrap_or("an error")
                        ),
                    )),
                    None => Ok(()),
                }
            }
        }
    }

    fn after(
        &self,
        spec: &Layer,
        call: &'static str,
        s: Option<Handle>,
        info: Option<&ProtocolInfo>,
        outcome: &Outcome,
    ) {
        if let Self::Trace(report) = self {
            let mut r = lock(report);
            if let Some(info) = info {
                if r.entries_seen.len() == 256 {
                    r.entries_seen.remove(0);
                }
                r.entries_seen.push(info.catalog_entry_id);
            }
            r.totals.count(call, outcome);
            if let Some(s) = s {
                if call == "close" {
                    // A closed socket's counters live on in the totals only, so a long-running
                    // process does not collect one entry per socket it ever had.
                    r.sockets.remove(&s.raw());
                } else {
                    r.sockets.entry(s.raw()).or_default().count(call, outcome);
                }
            }
            tracing::debug!(
                layer = spec.id,
                chain = r.chain_id,
                call,
                socket = s.map(Handle::raw),
                failed = matches!(outcome, Outcome::Failed),
                "sockdup trace"
            );
        }
    }
}

/// The real uid of process `pid`, from `/proc/PID/status`.
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One layer of one chain: the behaviour of its kind, around the next provider.
#[derive(Debug)]
pub(crate) struct Layered {
    spec: Layer,
    /// The base entry at the bottom of the chain: what the base provider must be handed.
    base: ProtocolInfo,
    next: Arc<dyn Provider>,
    next_is_base: bool,
    upcall: OnceLock<Arc<Upcall>>,
    behaviour: Behaviour,
}

impl Layered {
    pub(crate) fn new(
        spec: Layer,
        chain_id: u32,
        base: ProtocolInfo,
        next: Arc<dyn Provider>,
        next_is_base: bool,
    ) -> Result<Self, Error> {
        let behaviour = Behaviour::new(&spec, chain_id)?;
        Ok(Self {
            spec,
            base,
            next,
            next_is_base,
            upcall: OnceLock::new(),
            behaviour,
        })
    }

    fn upcall(&self) -> Result<&Arc<Upcall>, Error> {
        self.upcall.get().ok_or_else(|| {
            Error::from_code(
                sockdup_core::error::WSANOTINITIALISED,
                "the layer was not started",
            )
        })
    }

    /// The record to hand down: the same one to a layer; the base entry, with the provider
    /// fields of the one given, to the base provider.
    fn down<'a>(&'a self, info: &'a ProtocolInfo) -> Cow<'a, ProtocolInfo> {
        if !self.next_is_base {
            return Cow::Borrowed(info);
        }
        let mut base = self.base.clone();
        keep_provider_fields(&mut base, info);
        Cow::Owned(base)
    }

    fn lower(&self, s: Handle) -> Result<Handle, Error> {
        if self.spec.ifs {
            Ok(s)
        } else {
            Ok(Handle(self.upcall()?.query_socket_handle_context(s)?))
        }
    }

    fn wrap(&self, lower: Handle) -> Result<Handle, Error> {
        if self.spec.ifs {
            Ok(lower)
        } else {
            Ok(self
                .upcall()?
                .create_socket_handle(self.spec.id, lower.raw()))
        }
    }

    /// Runs one call: the behaviour's check, the call, the behaviour's accounting.
    fn call<T>(
        &self,
        name: &'static str,
        s: Option<Handle>,
        info: Option<&ProtocolInfo>,
        detail: Detail<'_>,
        f: impl FnOnce() -> Result<T, Error>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Result<T, Error> {
        let result = self
            .behaviour
            .before(&self.spec, name, &detail)
            .and_then(|()| f());
        let o = match &result {
            Ok(v) => outcome(v),
            Err(_) => Outcome::Failed,
        };
        self.behaviour.after(&self.spec, name, s, info, &o);
        result
    }
}

/// Copies the provider's own fields (the ticket in `dwProviderReserved`, and the reserved
/// service flags the base provider fills) from `from` into `to`.
pub(crate) fn keep_provider_fields(to: &mut ProtocolInfo, from: &ProtocolInfo) {
    to.provider_reserved = from.provider_reserved;
    to.service_flags2 = from.service_flags2;
    to.service_flags3 = from.service_flags3;
    to.service_flags4 = from.service_flags4;
}

fn done<T>(_: &T) -> Outcome {
    Outcome::Done
}

impl Provider for Layered {
    fn startup(&self, upcall: &Arc<Upcall>, info: &ProtocolInfo) -> Result<(), Error> {
        let _ = self.upcall.set(upcall.clone());
        self.call(
            "startup",
            None,
            Some(info),
            Detail::None,
            || self.next.startup(upcall, &self.down(info)),
            done,
        )
    }

    fn cleanup(&self) -> Result<(), Error> {
        self.call(
            "cleanup",
            None,
            None,
            Detail::None,
            || self.next.cleanup(),
            done,
        )
    }

    fn socket(
        &self,
        family: i32,
        socket_type: i32,
        protocol: i32,
        info: &ProtocolInfo,
    ) -> Result<Handle, Error> {
        self.call(
            "socket",
            None,
            Some(info),
            Detail::None,
            || {
                let lower = self
                    .next
                    .socket(family, socket_type, protocol, &self.down(info))?;
                self.wrap(lower)
            },
            done,
        )
    }

    fn socket_from_info(&self, info: &ProtocolInfo) -> Result<Handle, Error> {
        self.call(
            "socket_from_info",
            None,
            Some(info),
            Detail::None,
            || {
                let lower = self.next.socket_from_info(&self.down(info))?;
                self.wrap(lower)
            },
            done,
        )
    }

    fn connect(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error> {
        self.call(
            "connect",
            Some(s),
            None,
            Detail::Connect(addr),
            || self.next.connect(self.lower(s)?, addr),
            done,
        )
    }

    fn bind(&self, s: Handle, addr: &SocketAddr) -> Result<(), Error> {
        self.call(
            "bind",
            Some(s),
            None,
            Detail::None,
            || self.next.bind(self.lower(s)?, addr),
            done,
        )
    }

    fn listen(&self, s: Handle, backlog: i32) -> Result<(), Error> {
        self.call(
            "listen",
            Some(s),
            None,
            Detail::None,
            || self.next.listen(self.lower(s)?, backlog),
            done,
        )
    }

    fn accept(&self, s: Handle) -> Result<Handle, Error> {
        self.call(
            "accept",
            Some(s),
            None,
            Detail::None,
            || self.wrap(self.next.accept(self.lower(s)?)?),
            done,
        )
    }

    fn send(&self, s: Handle, data: &[u8]) -> Result<usize, Error> {
        self.call(
            "send",
            Some(s),
            None,
            Detail::None,
            || self.next.send(self.lower(s)?, data),
            |n| Outcome::Sent(*n),
        )
    }

    fn recv(&self, s: Handle, buf: &mut [u8]) -> Result<usize, Error> {
        self.call(
            "recv",
            Some(s),
            None,
            Detail::None,
            || self.next.recv(self.lower(s)?, buf),
            |n| Outcome::Received(*n),
        )
    }

    fn close_socket(&self, s: Handle) -> Result<(), Error> {
        self.call(
            "close",
            Some(s),
            None,
            Detail::None,
            || {
                let lower = self.lower(s)?;
                let closed = self.next.close_socket(lower);
                if !self.spec.ifs {
                    self.upcall()?.close_socket_handle(s)?;
                }
                closed
            },
            done,
        )
    }

    fn duplicate_socket(
        &self,
        s: Handle,
        target_pid: u32,
        info: &ProtocolInfo,
    ) -> Result<ProtocolInfo, Error> {
        self.call(
            "duplicate",
            Some(s),
            Some(info),
            Detail::Duplicate(target_pid),
            || {
                let below =
                    self.next
                        .duplicate_socket(self.lower(s)?, target_pid, &self.down(info))?;
                // On the way up: the record this layer was given, with the provider's fields.
                // A layer below already returned exactly that.
                if !self.next_is_base {
                    return Ok(below);
                }
                let mut up = info.clone();
                keep_provider_fields(&mut up, &below);
                Ok(up)
            },
            done,
        )
    }

    fn get_sock_opt(&self, s: Handle, opt: SockOpt) -> Result<i64, Error> {
        self.call(
            "getsockopt",
            Some(s),
            None,
            Detail::None,
            || self.next.get_sock_opt(self.lower(s)?, opt),
            done,
        )
    }

    fn set_sock_opt(&self, s: Handle, opt: SockOpt, value: i64) -> Result<(), Error> {
        self.call(
            "setsockopt",
            Some(s),
            None,
            Detail::None,
            || self.next.set_sock_opt(self.lower(s)?, opt, value),
            done,
        )
    }

    fn event_select(&self, s: Handle, events: u32) -> Result<(), Error> {
        self.call(
            "event_select",
            Some(s),
            None,
            Detail::None,
            || self.next.event_select(self.lower(s)?, events),
            done,
        )
    }

    fn address_to_string(&self, addr: &SocketAddr, info: &ProtocolInfo) -> Result<String, Error> {
        self.call(
            "address_to_string",
            None,
            Some(info),
            Detail::None,
            || self.next.address_to_string(addr, &self.down(info)),
            done,
        )
    }

    fn string_to_address(&self, text: &str, info: &ProtocolInfo) -> Result<SocketAddr, Error> {
        self.call(
            "string_to_address",
            None,
            Some(info),
            Detail::None,
            || self.next.string_to_address(text, &self.down(info)),
            done,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockdup_core::catalog::{Catalog, base_entry};

    /// A base provider stand-in that records the records it is handed and answers
    /// duplicates with a ticket.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(&'static str, ProtocolInfo)>>);

    impl Recorder {
        fn saw(&self, call: &'static str, info: &ProtocolInfo) {
            lock(&self.0).push((call, info.clone()));
        }
    }

    impl Provider for Recorder {
        fn startup(&self, _: &Arc<Upcall>, info: &ProtocolInfo) -> Result<(), Error> {
            self.saw("startup", info);
            Ok(())
        }
        fn cleanup(&self) -> Result<(), Error> {
            Ok(())
        }
        fn socket(&self, _: i32, _: i32, _: i32, info: &ProtocolInfo) -> Result<Handle, Error> {
            self.saw("socket", info);
            Ok(Handle(7))
        }
        fn socket_from_info(&self, info: &ProtocolInfo) -> Result<Handle, Error> {
            self.saw("socket_from_info", info);
            Ok(Handle(8))
        }
        fn connect(&self, _: Handle, _: &SocketAddr) -> Result<(), Error> {
            Ok(())
        }
        fn bind(&self, _: Handle, _: &SocketAddr) -> Result<(), Error> {
            Ok(())
        }
        fn listen(&self, _: Handle, _: i32) -> Result<(), Error> {
            Ok(())
        }
        fn accept(&self, s: Handle) -> Result<Handle, Error> {
            Ok(s)
        }
        fn send(&self, _: Handle, data: &[u8]) -> Result<usize, Error> {
            Ok(data.len())
        }
        fn recv(&self, _: Handle, _: &mut [u8]) -> Result<usize, Error> {
            Ok(0)
        }
        fn close_socket(&self, _: Handle) -> Result<(), Error> {
            Ok(())
        }
        fn duplicate_socket(
            &self,
            _: Handle,
            pid: u32,
            info: &ProtocolInfo,
        ) -> Result<ProtocolInfo, Error> {
            self.saw("duplicate", info);
            Ok(ProtocolInfo {
                provider_reserved: 0xfeed,
                service_flags3: pid,
                service_flags4: 0xabc,
                ..info.clone()
            })
        }
        fn get_sock_opt(&self, _: Handle, _: SockOpt) -> Result<i64, Error> {
            Ok(0)
        }
        fn set_sock_opt(&self, _: Handle, _: SockOpt, _: i64) -> Result<(), Error> {
            Ok(())
        }
        fn event_select(&self, _: Handle, _: u32) -> Result<(), Error> {
            Ok(())
        }
        fn address_to_string(
            &self,
            addr: &SocketAddr,
            info: &ProtocolInfo,
        ) -> Result<String, Error> {
            self.saw("address_to_string", info);
            Ok(addr.to_string())
        }
        fn string_to_address(&self, text: &str, info: &ProtocolInfo) -> Result<SocketAddr, Error> {
            self.saw("string_to_address", info);
            text.parse().map_err(|_| Error::invalid("bad"))
        }
    }

    /// Builds the providers of `chain` the way the dispatcher does, over a recorder.
    fn stack(catalog: &Catalog, chain: u32, base: &Arc<Recorder>) -> Arc<dyn Provider> {
        let (layers, base_info) = catalog.resolve(chain).unwrap();
        let mut next: Arc<dyn Provider> = base.clone();
        let mut next_is_base = true;
        for layer in layers.iter().rev() {
            next = Arc::new(
                Layered::new(
                    (*layer).clone(),
                    chain,
                    base_info.clone(),
                    next,
                    next_is_base,
                )
                .unwrap(),
            );
            next_is_base = false;
        }
        next
    }

    #[test]
    fn the_propagation_rule_through_seven_entries() {
        let mut c = Catalog::builtin();
        let mut top = 1003;
        for i in 0..6 {
            top = c
                .install(
                    ["trace", "policy", "fault"][i % 3],
                    "l",
                    i % 2 == 0,
                    BTreeMap::new(),
                    &[top],
                )
                .unwrap()
                .1[0];
        }
        let chain = c.entry(top).unwrap();
        assert_eq!(chain.protocol_chain.len, 7);
        let base = Arc::new(Recorder::default());
        let top_provider = stack(&c, top, &base);
        let upcall = Arc::new(Upcall::default());
        top_provider.startup(&upcall, &chain).unwrap();
        let s = top_provider.socket(10, 1, 0, &chain).unwrap();
        let record = top_provider.duplicate_socket(s, 4242, &chain).unwrap();
        // Up: the chain's own entry, with the base provider's fields kept.
        assert_eq!(record.catalog_entry_id, top);
        assert_eq!(record.protocol_chain, chain.protocol_chain);
        assert_eq!(
            (
                record.provider_reserved,
                record.service_flags3,
                record.service_flags4
            ),
            (0xfeed, 4242, 0xabc)
        );
        // Down, in the target: the base gets its own entry with the ticket.
        top_provider.socket_from_info(&record).unwrap();
        let addr: SocketAddr = "[::1]:80".parse().unwrap();
        top_provider.address_to_string(&addr, &chain).unwrap();
        top_provider.string_to_address("[::1]:80", &chain).unwrap();
        let seen = lock(&base.0).clone();
        let calls: Vec<&str> = seen.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            calls,
            [
                "startup",
                "socket",
                "duplicate",
                "socket_from_info",
                "address_to_string",
                "string_to_address"
            ]
        );
        let own = base_entry(1003).unwrap();
        for (call, info) in &seen {
            let mut expected = own.clone();
            keep_provider_fields(&mut expected, info);
            assert_eq!(info, &expected, "{call}: the base must get its own entry");
        }
        assert_eq!(
            seen[3].1.provider_reserved, 0xfeed,
            "socket_from_info carries the ticket down"
        );
        // Every trace instance in the stack was handed the chain's record, unmodified.
        for report in trace_reports().iter().filter(|r| r.chain_id == top) {
            assert!(
                report.entries_seen.iter().all(|&id| id == top),
                "{report:?}"
            );
            assert!(!report.entries_seen.is_empty());
        }
    }

    #[test]
    fn non_ifs_layers_wrap_and_unwrap_handles() {
        let mut c = Catalog::builtin();
        let (_, chains) = c
            .install("trace", "wrap", false, BTreeMap::new(), &[1001])
            .unwrap();
        let base = Arc::new(Recorder::default());
        let p = stack(&c, chains[0], &base);
        let upcall = Arc::new(Upcall::default());
        let chain = c.entry(chains[0]).unwrap();
        p.startup(&upcall, &chain).unwrap();
        let s = p.socket(2, 1, 0, &chain).unwrap();
        assert!(!s.is_ifs());
        assert_eq!(
            upcall.query_socket_handle_context(s).unwrap(),
            7,
            "the context is the lower handle"
        );
        assert_eq!(upcall.owner(s), Some(chains[0] - 1));
        assert_eq!(p.send(s, b"abc").unwrap(), 3);
        p.close_socket(s).unwrap();
        assert_eq!(
            upcall.query_socket_handle_context(s).unwrap_err().code(),
            10038
        );
    }

    #[test]
    fn policy_networks() {
        let n = Net::parse("127.0.0.0/8").unwrap();
        assert!(n.contains(&"127.1.2.3:80".parse().unwrap()));
        assert!(!n.contains(&"10.0.0.1:80".parse().unwrap()));
        assert!(!n.contains(&"[::1]:80".parse().unwrap()));
        let p = Net::parse("127.0.0.1:8080").unwrap();
        assert!(
            p.contains(&"127.0.0.1:8080".parse().unwrap())
                && !p.contains(&"127.0.0.1:8081".parse().unwrap())
        );
        assert!(
            Net::parse("::1")
                .unwrap()
                .contains(&"[::1]:9".parse().unwrap())
        );
        assert!(
            Net::parse("0.0.0.0/0")
                .unwrap()
                .contains(&"8.8.8.8:53".parse().unwrap())
        );
        assert!(Net::parse("bogus").is_none());
    }
}
