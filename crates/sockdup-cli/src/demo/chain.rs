//! `sockdup demo --chain LAYER[,LAYER...]`: the demo's scenario through a layered protocol
//! chain.
//!
//! [`run`] (the `sockdup demo` process) writes a temporary catalog ([`build_catalog`]) with the
//! layers installed over TCP/IPv4 (entry 1001), the first listed on top, and starts the source
//! (`sockdup demo-source`) with `SOCKDUP_CATALOG` naming it: a process reads its catalog at its
//! first use of the SPI, and this crate cannot change its own environment (`set_var` is
//! `unsafe`). The source passes the same catalog to the target. `run` removes the catalog's
//! directory once the source (which reaps the target) has exited.
//!
//! In the source ([`Source`]) and the target ([`Target`]) every call on the socket goes through
//! `sockdup::spi::Socket`, so through every layer of the chain, and each process counts the
//! calls it makes ([`Tally`]). The report at the end ([`report`]) prints what each layer saw:
//! a `trace` layer's counters (`sockdup::spi::layers::trace_reports`), which must equal that
//! count exactly (calls, bytes, errors, per socket) and have been handed only records of the
//! chain's catalog entry; a `policy` or `fault` layer keeps no counters, so the report says
//! which calls passed through it.
//!
//! The SPI has no `getsockname`/`getpeername`, so the socket's addresses (for the checks of
//! steps 1 and 8) come from `/proc`: the socket inode behind the descriptor (the IFS handle)
//! in `/proc/self/fd`, looked up in `/proc/self/net/tcp` ([`tcp_addrs`]). The SPI has no
//! receive timeout either: a target stuck in `recv` is covered by the source's bounded wait
//! for its answer, after which the source kills and reaps it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use sockdup::ProtocolInfo;
use sockdup::catalog::{AF_INET, Catalog, IPPROTO_TCP, Layer, SOCK_STREAM};
use sockdup::spi::layers::{self, Counters};
use sockdup::spi::{Handle, Socket};
use sockdup::wire::MAX_PROTOCOL_CHAIN;

use super::{ToSource, expect_with, io_failed, receive_record};
use crate::CliError;
use crate::wait::Watched;

/// The environment variable naming a process's catalog file.
pub(super) const CATALOG_VAR: &str = "SOCKDUP_CATALOG";

/// The most layers `--chain` takes: a chain holds at most seven entries, the base entry last.
const MAX_LAYERS: usize = MAX_PROTOCOL_CHAIN - 1;

/// The longest `sockdup demo --chain` waits for its source process. Every wait of the source
/// is bounded already (by [`super::TIMEOUT`]); this only stops a source stuck elsewhere.
const SOURCE_LIMIT: Duration = Duration::from_secs(120);

/// The layer kinds of `--chain`, top first, as given (each one of [`layers::kinds`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainSpec(Vec<String>);

impl ChainSpec {
    /// Parses `--chain`'s value: 1 to 6 layer kinds separated by commas.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let known = layers::kinds();
        let kinds = known.join(", ");
        let mut layers = Vec::new();
        for word in text.split(',') {
            let word = word.trim();
            if word.is_empty() {
                return Err(format!(
                    "{text:?} has an empty layer name: list layer kinds ({kinds}) separated by commas"
                ));
            }
            if !known.contains(&word) {
                return Err(format!(
                    "{word:?} is not a layer kind; the kinds are {kinds}"
                ));
            }
            layers.push(word.to_owned());
        }
        if layers.len() > MAX_LAYERS {
            return Err(format!(
                "{} layers are too many: a protocol chain holds at most {MAX_PROTOCOL_CHAIN} \
                 entries, the base entry among them, so at most {MAX_LAYERS} layers",
                layers.len()
            ));
        }
        Ok(Self(layers))
    }

    /// The kinds, top first.
    fn kinds(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for ChainSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Catalog ids as a list: `[1101, 1001]`.
pub(super) fn ids(ids: &[u32]) -> String {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    format!("[{}]", ids.join(", "))
}

/// The base entry the chain goes over: TCP/IPv4 (1001).
fn tcp_ipv4() -> Result<ProtocolInfo, CliError> {
    sockdup::catalog::base_entry_for(AF_INET, SOCK_STREAM, IPPROTO_TCP)
        .ok_or_else(|| CliError::failed("the built-in catalog has no TCP/IPv4 entry"))
}

// ---------------------------------------------------------------------------------------------
// `sockdup demo --chain`: the catalog, and the source process
// ---------------------------------------------------------------------------------------------

/// A fresh directory of its own under the system's temporary directory (mode 0700, made by
/// `tempfile`, which retries names that exist), removed with its contents when dropped.
fn temp_dir() -> Result<tempfile::TempDir, CliError> {
    tempfile::Builder::new()
        .prefix("sockdup-demo-")
        .tempdir()
        .map_err(|e| {
            CliError::failed(format!(
                "creating a temporary directory in {} failed: {e}",
                std::env::temp_dir().display()
            ))
        })
}

/// The built-in catalog with the layers of `spec` installed over TCP/IPv4, the first on top:
/// the last one over entry 1001 first, then each earlier one over the chain before. Returns
/// the catalog and the top chain's id.
fn build_catalog(spec: &ChainSpec) -> Result<(Catalog, u32), CliError> {
    let mut catalog = Catalog::builtin();
    let mut over = tcp_ipv4()?.catalog_entry_id;
    for kind in spec.kinds().iter().rev() {
        let (layer, chains) = catalog
            .install(kind, kind, true, BTreeMap::new(), &[over])
            .map_err(|e| {
                CliError::sockdup(
                    format!("installing a {kind:?} layer over entry {over} in the demo's catalog"),
                    e,
                )
            })?;
        over = chains.first().copied().ok_or_else(|| {
            CliError::failed(format!(
                "installing layer {layer} ({kind}) over entry {over} made no chain"
            ))
        })?;
    }
    Ok((catalog, over))
}

/// Runs `sockdup demo --chain SPEC`: writes the chain's temporary catalog, runs the source
/// (`sockdup demo-source`) with it, and removes it. Returns the source's exit status; the
/// source has printed the steps, and its error if it failed.
///
/// # Errors
/// If the catalog cannot be written, or the source cannot be started, is killed by a signal
/// or does not finish within [`SOURCE_LIMIT`] (it is killed and reaped then).
pub(crate) fn run(spec: &ChainSpec) -> Result<ExitCode, CliError> {
    let (catalog, _) = build_catalog(spec)?;
    let dir = temp_dir()?;
    let path = dir.path().join("catalog.json");
    sockdup::save_catalog_to(&path, &catalog)
        .map_err(|e| CliError::sockdup("writing the demo's temporary catalog", e))?;

    let exe = std::env::current_exe().map_err(io_failed("finding this program's path"))?;
    let child = Command::new(&exe)
        .arg("demo-source")
        .arg("--chain")
        .arg(spec.to_string())
        .env(CATALOG_VAR, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(io_failed(&format!(
            "starting the source ({} demo-source)",
            exe.display()
        )))?;
    let mut child = Watched::new(child)?;
    let pid = child.id();

    // Whatever happens, the child is reaped before the catalog goes.
    let status: Result<ExitStatus, String> = match child.wait_within(SOURCE_LIMIT) {
        Ok(Some(status)) => Ok(status),
        waited => {
            let _ = child.child.kill();
            let _ = child.wait();
            Err(match waited {
                Err(e) => format!("could not be waited for ({e}), and was killed"),
                _ => format!(
                    "did not finish within {} s, and was killed",
                    SOURCE_LIMIT.as_secs()
                ),
            })
        }
    };
    drop(dir);
    match status {
        Ok(status) if status.success() => Ok(ExitCode::SUCCESS),
        Ok(status) => match status.code() {
            Some(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1).max(1))),
            None => Err(CliError::failed(format!(
                "the demo's source process (pid {pid}) ended with {status}"
            ))),
        },
        Err(why) => Err(CliError::failed(format!(
            "the demo's source process (pid {pid}) {why}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// The chain, as the catalog of a demo process has it
// ---------------------------------------------------------------------------------------------

/// A protocol chain of this process's catalog (the file named by `SOCKDUP_CATALOG`).
#[derive(Debug)]
pub(super) struct Chain {
    /// The catalog file.
    path: PathBuf,
    /// The chain's catalog entry id.
    id: u32,
    /// Its entries, top layer first, the base entry last.
    entries: Vec<u32>,
    /// Its layers, top first.
    layers: Vec<Layer>,
}

impl Chain {
    /// The catalog file named by `SOCKDUP_CATALOG`, and the catalog in it.
    fn catalog() -> Result<(PathBuf, Catalog), CliError> {
        let path = std::env::var_os(CATALOG_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                CliError::failed(format!(
                    "{CATALOG_VAR} is not set: `sockdup demo --chain` sets it for the processes \
                     it starts"
                ))
            })?;
        let catalog = sockdup::load_catalog_from(&path)
            .map_err(|e| CliError::sockdup("reading the demo's catalog", e))?;
        Ok((path, catalog))
    }

    /// Chain entry `id` of `catalog`.
    fn from_catalog(path: PathBuf, catalog: &Catalog, id: u32) -> Result<Self, CliError> {
        let entry = catalog.entry(id).ok_or_else(|| {
            CliError::failed(format!("the catalog {} has no entry {id}", path.display()))
        })?;
        let entries = entry.protocol_chain.used().to_vec();
        let Some((_, layer_ids)) = entries.split_last().filter(|_| entries.len() > 1) else {
            return Err(CliError::failed(format!(
                "catalog entry {id} of {} is not a protocol chain (its chain: {})",
                path.display(),
                ids(&entries)
            )));
        };
        let layers = layer_ids
            .iter()
            .map(|l| {
                catalog.layer(*l).cloned().ok_or_else(|| {
                    CliError::failed(format!("chain {id} names {l}, which is not a layer"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path,
            id,
            entries,
            layers,
        })
    }

    /// The source's chain: the first one of its catalog, which must be the layers of `spec`
    /// over TCP/IPv4.
    pub(super) fn for_source(spec: &ChainSpec) -> Result<Self, CliError> {
        let (path, catalog) = Self::catalog()?;
        let first = catalog.chains().first().map(|c| c.id).ok_or_else(|| {
            CliError::failed(format!(
                "the catalog {} has no protocol chain",
                path.display()
            ))
        })?;
        let chain = Self::from_catalog(path, &catalog, first)?;
        let kinds: Vec<&str> = chain.layers.iter().map(|l| l.kind.as_str()).collect();
        if kinds != spec.kinds() || chain.entries.last() != Some(&tcp_ipv4()?.catalog_entry_id) {
            return Err(CliError::failed(format!(
                "the first chain of the catalog {} is {} ({}), not {spec} over TCP/IPv4",
                chain.path.display(),
                chain.id,
                chain.layout()
            )));
        }
        Ok(chain)
    }

    /// The target's chain: the one the record names, which must have the record's entries.
    fn for_record(record: &ProtocolInfo) -> Result<Self, CliError> {
        let (path, catalog) = Self::catalog()?;
        let chain = Self::from_catalog(path, &catalog, record.catalog_entry_id)?;
        if chain.entries != record.protocol_chain.used() {
            return Err(CliError::failed(format!(
                "the record's chain {} is not the chain {} of catalog entry {} in {}",
                ids(record.protocol_chain.used()),
                ids(&chain.entries),
                chain.id,
                chain.path.display()
            )));
        }
        Ok(chain)
    }

    /// The chain's layers and base entry, top first: `trace "trace" 1101 over TCP/IPv4 1001`.
    fn layout(&self) -> String {
        let mut parts: Vec<String> = self
            .layers
            .iter()
            .map(|l| format!("{} {:?} {}", l.kind, l.name, l.id))
            .collect();
        if let Some(base) = self.entries.last() {
            let name = sockdup::catalog::base_entry(*base)
                .map_or_else(|| "base entry".to_owned(), |e| e.protocol_name);
            parts.push(format!("{name} {base}"));
        }
        parts.join(" over ")
    }

    /// The source's first line: where its catalog came from and what chain it holds.
    pub(super) fn introduce(&self) -> String {
        format!(
            "started by `sockdup demo` (pid {}) with {CATALOG_VAR}={}, a temporary catalog; \
             its chain {} {}: {}",
            std::os::unix::process::parent_id(),
            self.path.display(),
            self.id,
            ids(&self.entries),
            self.layout()
        )
    }

    /// Checks that `socket` belongs to this chain's catalog entry.
    fn check_socket(&self, socket: &Socket, made_by: &str) -> Result<(), CliError> {
        let entry = socket.catalog_entry();
        if entry.catalog_entry_id != self.id || entry.protocol_chain.used() != self.entries {
            return Err(CliError::failed(format!(
                "{made_by} gave a socket of catalog entry {} (chain {}), not of the chain {} {}",
                entry.catalog_entry_id,
                ids(entry.protocol_chain.used()),
                self.id,
                ids(&self.entries)
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// What a process made through the chain, and what the layers saw
// ---------------------------------------------------------------------------------------------

/// The calls a process made through the chain, counted as a `trace` layer counts them: what
/// each trace layer of the chain must have seen.
#[derive(Debug)]
struct Tally {
    totals: Counters,
    sockets: BTreeMap<u64, Counters>,
    /// How many calls handed the chain a record (`startup`, `socket`, `socket_from_info`,
    /// `duplicate`).
    records: usize,
    /// The per-socket counts just before the socket closed ([`Tally::before_close`]).
    at_close: Option<String>,
}

impl Default for Tally {
    /// The dispatcher starts the chain (`WSPStartup`, with the chain's entry) at the process's
    /// first use of it, and a tally is made just before that first use.
    fn default() -> Self {
        let mut tally = Self {
            totals: Counters::default(),
            sockets: BTreeMap::new(),
            records: 0,
            at_close: None,
        };
        tally.count("startup", None, true, &Ok(()), |()| (0, 0));
        tally
    }
}

impl Tally {
    /// Counts one call: its name, its socket handle if it has one, whether it hands the chain
    /// a record, its outcome, and the bytes it moved (`moved` gives sent and received).
    fn count<T>(
        &mut self,
        call: &'static str,
        socket: Option<Handle>,
        with_record: bool,
        result: &Result<T, sockdup::Error>,
        moved: impl FnOnce(&T) -> (usize, usize),
    ) {
        let (failed, sent, received) = match result {
            Ok(v) => {
                let (s, r) = moved(v);
                (false, s as u64, r as u64)
            }
            Err(_) => (true, 0, 0),
        };
        let add = |c: &mut Counters| {
            *c.calls.entry(call).or_default() += 1;
            c.errors += u64::from(failed);
            c.bytes_sent += sent;
            c.bytes_received += received;
        };
        add(&mut self.totals);
        match socket {
            // As a trace layer does: a closed socket's counts live on in the totals only.
            Some(s) if call == "close" => {
                self.sockets.remove(&s.raw());
            }
            Some(s) => add(self.sockets.entry(s.raw()).or_default()),
            None => {}
        }
        if with_record {
            self.records += 1;
        }
    }
}

impl Tally {
    /// Just before the socket closes (when a trace layer forgets its own counts): checks that
    /// every trace layer of `chain` counted, per open socket, what this tally did, and keeps
    /// that for the report.
    fn before_close(&mut self, chain: &Chain) -> Result<(), CliError> {
        for r in layers::trace_reports() {
            if r.chain_id == chain.id && r.sockets != self.sockets {
                return Err(CliError::failed(format!(
                    "before the close, trace layer {} counted per socket {{{}}}, but this \
                     process made {{{}}}",
                    r.layer_id,
                    per_socket(&r.sockets),
                    per_socket(&self.sockets)
                )));
            }
        }
        self.at_close = Some(per_socket(&self.sockets));
        Ok(())
    }
}

/// Per-socket counters: `socket 7: calls {connect 1}, bytes_sent 0, …`.
fn per_socket(sockets: &BTreeMap<u64, Counters>) -> String {
    let sockets: Vec<String> = sockets
        .iter()
        .map(|(s, c)| {
            format!(
                "socket {s}: calls {{{}}}, bytes_sent {}, bytes_received {}, errors {}",
                calls(c),
                c.bytes_sent,
                c.bytes_received,
                c.errors
            )
        })
        .collect();
    if sockets.is_empty() {
        "no open socket".to_owned()
    } else {
        sockets.join("; ")
    }
}

/// Calls by name: `close 1, connect 1`.
fn calls(c: &Counters) -> String {
    let calls: Vec<String> = c.calls.iter().map(|(k, v)| format!("{k} {v}")).collect();
    calls.join(", ")
}

/// What a layer does with its settings, for the report.
fn settings(layer: &Layer) -> String {
    if layer.config.is_empty() {
        return match layer.kind.as_str() {
            "policy" => "no rules: allows every call".to_owned(),
            "fault" => "no settings: injects nothing".to_owned(),
            _ => "no settings".to_owned(),
        };
    }
    let set: Vec<String> = layer
        .config
        .iter()
        .map(|(k, v)| format!("{}={v:?}", k.escape_debug()))
        .collect();
    set.join(", ")
}

/// The per-layer report of one process, top layer first, checked against `tally`: every trace
/// layer of the chain must have counted exactly the calls of `tally`, per socket too, and
/// been handed only records of the chain's entry; the process must have no other trace layer.
fn report(chain: &Chain, tally: &Tally) -> Result<Vec<String>, CliError> {
    let reports = layers::trace_reports();
    check_trace_layers(chain, &reports)?;
    let mut lines = Vec::new();
    for (i, layer) in chain.layers.iter().enumerate() {
        let name = format!("layer {} ({} {:?})", layer.id, layer.kind, layer.name);
        if layer.kind != "trace" {
            lines.push(passed_through(chain, i, &name, tally));
            continue;
        }
        let Some(r) = reports.iter().find(|r| r.layer_id == layer.id) else {
            return Err(CliError::failed(format!("{name} has no trace report")));
        };
        lines.push(trace_line(chain, &name, r, tally)?);
    }
    Ok(lines)
}

/// Checks that this process has trace reports of exactly the chain's trace layers.
fn check_trace_layers(chain: &Chain, reports: &[layers::TraceReport]) -> Result<(), CliError> {
    let mut have: Vec<u32> = reports.iter().map(|r| r.layer_id).collect();
    let mut want: Vec<u32> = chain
        .layers
        .iter()
        .filter(|l| l.kind == "trace")
        .map(|l| l.id)
        .collect();
    have.sort_unstable();
    want.sort_unstable();
    if have != want {
        return Err(CliError::failed(format!(
            "this process has trace reports of layers {}, but the trace layers of chain {} are {}",
            ids(&have),
            chain.id,
            ids(&want)
        )));
    }
    Ok(())
}

/// The report line of layer `i` of the chain (`name`), which is not a trace layer and keeps
/// no counters: every call went through it, as the trace layer below it (if any) shows.
fn passed_through(chain: &Chain, i: usize, name: &str, tally: &Tally) -> String {
    let layer = &chain.layers[i];
    let mine = calls(&tally.totals);
    let total: u64 = tally.totals.calls.values().sum();
    let evidence = match chain.layers[i + 1..].iter().find(|l| l.kind == "trace") {
        Some(below) => format!("the trace layer {} below it counted every one", below.id),
        None => "the base provider below it, the only provider that touches the socket, \
                 carried them out"
            .to_owned(),
    };
    format!(
        "report: {name}, {}, keeps no counters: all {total} calls this process made \
         through chain {} ({mine}) went through it ({evidence})",
        settings(layer),
        chain.id
    )
}

/// The report line of trace layer `name`, whose report `r` must match `tally` exactly.
fn trace_line(
    chain: &Chain,
    name: &str,
    r: &layers::TraceReport,
    tally: &Tally,
) -> Result<String, CliError> {
    if r.chain_id != chain.id {
        return Err(CliError::failed(format!(
            "{name} reports for chain {}, not {}",
            r.chain_id, chain.id
        )));
    }
    if r.totals != tally.totals {
        return Err(CliError::failed(format!(
            "{name} counted calls {{{}}}, bytes_sent {}, bytes_received {}, errors {}; but \
             this process made calls {{{}}}, bytes_sent {}, bytes_received {}, errors {}",
            calls(&r.totals),
            r.totals.bytes_sent,
            r.totals.bytes_received,
            r.totals.errors,
            calls(&tally.totals),
            tally.totals.bytes_sent,
            tally.totals.bytes_received,
            tally.totals.errors
        )));
    }
    if r.sockets != tally.sockets {
        return Err(CliError::failed(format!(
            "{name} counted per socket {:?}, but this process made {:?}",
            r.sockets, tally.sockets
        )));
    }
    if r.entries_seen != vec![chain.id; tally.records] {
        return Err(CliError::failed(format!(
            "{name} was handed records of catalog entries {}, but this process handed the \
             chain {} records, all of chain entry {}",
            ids(&r.entries_seen),
            tally.records,
            chain.id
        )));
    }
    let at_close = tally
        .at_close
        .as_ref()
        .map(|open| format!("just before the close: {open}; now: "))
        .unwrap_or_default();
    Ok(format!(
        "report: {name} of chain {} saw: calls {{{}}}, bytes_sent {}, bytes_received {}, \
         errors {}; entries_seen {}; per socket, {at_close}{}: exactly the calls this \
         process made",
        r.chain_id,
        calls(&r.totals),
        r.totals.bytes_sent,
        r.totals.bytes_received,
        r.totals.errors,
        ids(&r.entries_seen),
        per_socket(&r.sockets),
    ))
}

// ---------------------------------------------------------------------------------------------
// The socket's addresses, from /proc
// ---------------------------------------------------------------------------------------------

/// The local and remote addresses of the TCP/IPv4 socket behind IFS handle `handle` (a
/// descriptor of this process): its inode from `/proc/self/fd`, its addresses from
/// `/proc/self/net/tcp`.
fn tcp_addrs(handle: Handle) -> Result<(SocketAddr, SocketAddr), CliError> {
    if !handle.is_ifs() {
        return Err(CliError::failed(format!(
            "handle {} is a non-IFS layer's handle, not a descriptor: its addresses cannot be read",
            handle.raw()
        )));
    }
    let fd = handle.raw();
    let link_path = format!("/proc/self/fd/{fd}");
    let link =
        std::fs::read_link(&link_path).map_err(io_failed(&format!("reading {link_path}")))?;
    let inode: u64 = link
        .to_str()
        .and_then(|l| l.strip_prefix("socket:["))
        .and_then(|l| l.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            CliError::failed(format!(
                "descriptor {fd} is {}, not a socket",
                link.display()
            ))
        })?;
    let table = std::fs::read_to_string("/proc/self/net/tcp")
        .map_err(io_failed("reading /proc/self/net/tcp"))?;
    find_tcp(&table, inode).ok_or_else(|| {
        CliError::failed(format!(
            "socket {inode} (descriptor {fd}) is not in /proc/self/net/tcp: not a connected \
             TCP/IPv4 socket"
        ))
    })
}

/// The addresses of the socket with inode `inode` in the text of `/proc/net/tcp`.
fn find_tcp(table: &str, inode: u64) -> Option<(SocketAddr, SocketAddr)> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        Some((proc_addr(fields.get(1)?)?, proc_addr(fields.get(2)?)?))
    })
}

/// An address of `/proc/net/tcp`: the IPv4 address's four bytes, as they lie in memory, printed
/// as one native-endian hex number, a colon, and the port in hex.
fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    if ip.len() != 8 || port.len() != 4 {
        return None;
    }
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((Ipv4Addr::from(ip.to_ne_bytes()), port)))
}

// ---------------------------------------------------------------------------------------------
// The source and the target
// ---------------------------------------------------------------------------------------------

/// Turns a failed SPI call into a failure saying what it was.
fn spi_failed(doing: &str) -> impl FnOnce(sockdup::Error) -> CliError + '_ {
    move |e| CliError::sockdup(doing, e)
}

/// The source's socket in the chain variant: made by `Socket::new`, which must pick the chain.
#[derive(Debug)]
pub(super) struct Source {
    chain: Chain,
    /// `None` once closed.
    socket: Option<Socket>,
    handle: Handle,
    tally: Tally,
}

impl Source {
    /// Step 1: `Socket::new(AF_INET, SOCK_STREAM, 0)` and `Socket::connect(to)`.
    pub(super) fn connect(chain: Chain, to: SocketAddr) -> Result<Self, CliError> {
        let mut tally = Tally::default();
        let made = Socket::new(AF_INET, SOCK_STREAM, 0);
        tally.count("socket", None, true, &made, |_| (0, 0));
        let socket = made.map_err(spi_failed(
            "creating a socket through the catalog (sockdup::spi::Socket::new, WSASocketW)",
        ))?;
        chain.check_socket(&socket, "Socket::new(AF_INET, SOCK_STREAM, 0)")?;
        let handle = socket.handle();
        let connected = socket.connect(&to);
        tally.count("connect", Some(handle), false, &connected, |()| (0, 0));
        connected.map_err(|e| {
            CliError::sockdup(
                format!("connecting to the peer at {to} through the chain (Socket::connect)"),
                e,
            )
        })?;
        Ok(Self {
            chain,
            socket: Some(socket),
            handle,
            tally,
        })
    }

    /// The socket of step 1, for its line.
    pub(super) fn describe(&self) -> String {
        format!(
            "Socket::new(AF_INET, SOCK_STREAM, 0) -> TCP socket handle {} of catalog entry {} \
             (chain {}); with Socket::connect through the chain, it is",
            self.handle.raw(),
            self.chain.id,
            ids(&self.chain.entries)
        )
    }

    /// The socket's addresses (from `/proc`).
    pub(super) fn addrs(&self) -> Result<(SocketAddr, SocketAddr), CliError> {
        tcp_addrs(self.handle)
    }

    /// The catalog file, for the target.
    pub(super) fn catalog(&self) -> &Path {
        &self.chain.path
    }

    /// Step 5: `Socket::duplicate(pid)`; the record must carry the chain's entry.
    pub(super) fn duplicate(&mut self, pid: u32) -> Result<ProtocolInfo, CliError> {
        let socket = self
            .socket
            .as_ref()
            .ok_or_else(|| CliError::failed("the source's socket is closed already"))?;
        let duplicated = socket.duplicate(pid);
        self.tally
            .count("duplicate", Some(self.handle), true, &duplicated, |_| {
                (0, 0)
            });
        let record = duplicated.map_err(|e| {
            CliError::sockdup(
                format!(
                    "duplicating the socket for process {pid} through the chain \
                     (Socket::duplicate, WSADuplicateSocketW)"
                ),
                e,
            )
        })?;
        if record.catalog_entry_id != self.chain.id
            || record.protocol_chain.used() != self.chain.entries
        {
            return Err(CliError::failed(format!(
                "Socket::duplicate returned a record of catalog entry {} (chain {}), not of the \
                 chain {} {}: a layer broke the propagation rule",
                record.catalog_entry_id,
                ids(record.protocol_chain.used()),
                self.chain.id,
                ids(&self.chain.entries)
            )));
        }
        Ok(record)
    }

    /// Step 10: `Socket::close`.
    pub(super) fn close(&mut self) -> Result<String, CliError> {
        let socket = self
            .socket
            .take()
            .ok_or_else(|| CliError::failed("the source's socket is closed already"))?;
        self.tally.before_close(&self.chain)?;
        let closed = socket.close();
        self.tally
            .count("close", Some(self.handle), false, &closed, |()| (0, 0));
        closed.map_err(spi_failed(
            "closing the socket through the chain (Socket::close)",
        ))?;
        Ok(format!(
            "handle {}, with Socket::close through the chain",
            self.handle.raw()
        ))
    }

    /// What each layer saw in this process.
    pub(super) fn report(&self) -> Result<Vec<String>, CliError> {
        report(&self.chain, &self.tally)
    }
}

/// What the target holds in the chain variant: the socket `Socket::from_info` made of the
/// record, through the record's chain.
#[derive(Debug, Default)]
pub(super) struct Target {
    /// The record's chain, once a record arrived.
    chain: Option<Chain>,
    /// `None` until redeemed, and once closed.
    socket: Option<Socket>,
    handle: Option<Handle>,
    tally: Option<Tally>,
}

impl Target {
    pub(super) fn holds_socket(&self) -> bool {
        self.socket.is_some()
    }

    /// The socket, its handle and the tally, or a failure if there is no socket.
    fn parts(&mut self) -> Result<(&Socket, Handle, &mut Tally), CliError> {
        match (&self.socket, self.handle, &mut self.tally) {
            (Some(socket), Some(handle), Some(tally)) => Ok((socket, handle, tally)),
            _ => Err(CliError::failed("the target holds no socket")),
        }
    }

    /// Steps 7 and 8: decodes the record, redeems it with `Socket::from_info` through its
    /// chain, and checks that it works once only. Returns the socket's addresses.
    pub(super) fn redeem(
        &mut self,
        to_source: &ToSource,
        me: u32,
        record: &ProtocolInfo,
    ) -> Result<String, CliError> {
        if self.tally.is_some() {
            return Err(CliError::failed(
                "the source sent a second record: the demo redeems one",
            ));
        }
        receive_record(to_source, me, record, true)?;
        let chain = Chain::for_record(record)?;

        // 8) WSPSocket with the record, through the chain.
        let tally = self.tally.insert(Tally::default());
        let made = Socket::from_info(record);
        tally.count("socket_from_info", None, true, &made, |_| (0, 0));
        let socket = made.map_err(spi_failed(
            "redeeming the record through its chain (sockdup::spi::Socket::from_info, WSASocketW \
             with FROM_PROTOCOL_INFO)",
        ))?;
        chain.check_socket(&socket, "Socket::from_info")?;
        let handle = socket.handle();
        let (local, peer) = tcp_addrs(handle)?;
        to_source.log(&format!(
            "8) Socket::from_info -> handle {} of catalog entry {} (chain {}: each layer made its \
             state for it): a TCP socket connected from {local} to {peer}, the source's socket",
            handle.raw(),
            chain.id,
            ids(&chain.entries)
        ))?;
        let again = Socket::from_info(record);
        tally.count("socket_from_info", None, true, &again, |_| (0, 0));
        match again {
            Ok(_) => {
                return Err(CliError::failed(
                    "the record was redeemed a second time: it must work once only",
                ));
            }
            Err(e) => to_source.log(&format!(
                "8) the same record again -> refused, as it must be: {e}"
            ))?,
        }
        self.chain = Some(chain);
        self.socket = Some(socket);
        self.handle = Some(handle);
        Ok(format!("{local} {peer}"))
    }

    /// Sends all of `text` with `Socket::send`.
    pub(super) fn send_all(&mut self, text: &str) -> Result<(), CliError> {
        let (socket, handle, tally) = self.parts()?;
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            let sent = socket.send(rest);
            tally.count("send", Some(handle), false, &sent, |n| (*n, 0));
            match sent.map_err(spi_failed(
                "sending to the peer through the chain (Socket::send)",
            ))? {
                0 => {
                    return Err(CliError::failed("Socket::send sent nothing to the peer"));
                }
                n => rest = &rest[n.min(rest.len())..],
            }
        }
        Ok(())
    }

    /// Receives exactly `text` with `Socket::recv`.
    pub(super) fn expect(&mut self, text: &str) -> Result<(), CliError> {
        let (socket, handle, tally) = self.parts()?;
        expect_with(text, |buf| {
            let got = socket.recv(buf);
            tally.count("recv", Some(handle), false, &got, |n| (0, *n));
            got.map_err(|e| format!("receiving {text:?} failed: {e}"))
        })
        .map_err(|e| CliError::failed(format!("reading from the peer through the chain: {e}")))
    }

    /// Step 10: `Socket::close`.
    pub(super) fn close(&mut self) -> Result<String, CliError> {
        let (Some(chain), Some(handle), Some(tally)) = (&self.chain, self.handle, &mut self.tally)
        else {
            return Err(CliError::failed("the target holds no socket"));
        };
        let socket = self
            .socket
            .take()
            .ok_or_else(|| CliError::failed("the target holds no socket"))?;
        tally.before_close(chain)?;
        let closed = socket.close();
        tally.count("close", Some(handle), false, &closed, |()| (0, 0));
        closed.map_err(spi_failed(
            "closing the socket through the chain (Socket::close)",
        ))?;
        Ok(format!(
            "handle {}, with Socket::close through the chain",
            handle.raw()
        ))
    }

    /// What each layer saw in this process.
    pub(super) fn report(&self) -> Result<Vec<String>, CliError> {
        match (&self.chain, &self.tally) {
            (Some(chain), Some(tally)) => report(chain, tally),
            _ => Err(CliError::failed(
                "the source asked for a layer report before the target redeemed a record",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_specs() {
        let spec = ChainSpec::parse("policy, trace,fault").unwrap();
        assert_eq!(spec.kinds(), ["policy", "trace", "fault"]);
        assert_eq!(spec.to_string(), "policy,trace,fault");
        assert!(ChainSpec::parse("trace,trace,trace,trace,trace,trace").is_ok());
        let e = ChainSpec::parse("trace,trace,trace,trace,trace,trace,trace").unwrap_err();
        assert!(e.contains("at most 6"), "{e}");
        assert!(
            ChainSpec::parse("bogus")
                .unwrap_err()
                .contains("not a layer kind")
        );
        assert!(ChainSpec::parse("").unwrap_err().contains("empty"));
        assert!(ChainSpec::parse("trace,").unwrap_err().contains("empty"));
    }

    #[test]
    fn catalogs_put_the_first_layer_on_top() {
        let (catalog, top) =
            build_catalog(&ChainSpec::parse("policy,trace,fault").unwrap()).expect("build");
        let chain = catalog.entry(top).expect("top chain");
        let kinds: Vec<&str> = chain.protocol_chain.used()[..3]
            .iter()
            .map(|id| catalog.layer(*id).expect("a layer").kind.as_str())
            .collect();
        assert_eq!(kinds, ["policy", "trace", "fault"]);
        assert_eq!(chain.protocol_chain.used()[3], 1001);
        assert_eq!(catalog.chains()[0].id, top, "the top chain comes first");
    }

    #[test]
    fn proc_net_tcp_lines() {
        let addr = |ip: [u8; 4], port: u16| format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: {} {} 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 100 0 0 10 0\n   \
             1: {} {} 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0 20 4 30 10 -1\n",
            addr([127, 0, 0, 1], 8080),
            addr([0, 0, 0, 0], 0),
            addr([127, 0, 0, 1], 40000),
            addr([127, 0, 0, 1], 8080),
        );
        assert_eq!(
            find_tcp(&table, 222),
            Some((
                "127.0.0.1:40000".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap()
            ))
        );
        assert_eq!(find_tcp(&table, 333), None);
        assert_eq!(proc_addr("garbage"), None);
        assert_eq!(proc_addr("0100007F:1F9"), None);
        assert_eq!(proc_addr("XX00007F:1F90"), None);
    }
}
