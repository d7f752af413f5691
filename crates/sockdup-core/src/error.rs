//! The one error type, the reasons it names, and the Winsock error numbers it carries.
//!
//! Every failure in sockdup is an [`Error`]: its [`kind`](Error::kind) names the reason
//! ([`ErrorKind`]), its [`code`](Error::code) is the number a Windows program would see from
//! `WSAGetLastError()` for the same condition, and its message is a sentence that says what went
//! wrong and what to do about it. Operating-system errors are turned into an [`Error`] in one
//! place ([`Error::from_errno`]).
//!
//! [`ErrorKind::ALL`] with [`ErrorKind::description`] is the one source of the error table
//! ([`markdown_table`]); the README holds a copy that a test compares with it.

use std::fmt;
use std::io;

/// `WSAEACCES`: permission denied (a policy layer refused the call).
pub const WSAEACCES: i32 = 10013;
/// `WSAEFAULT`: a buffer supplied by the caller is not valid or too small.
pub const WSAEFAULT: i32 = 10014;
/// `WSAEINVAL`: an argument is invalid.
pub const WSAEINVAL: i32 = 10022;
/// `WSAEMFILE`: no more socket descriptors are available.
pub const WSAEMFILE: i32 = 10024;
/// `WSAEINPROGRESS`: a blocking operation is in progress; retry.
pub const WSAEINPROGRESS: i32 = 10036;
/// `WSAENOTSOCK`: the descriptor is not a socket.
pub const WSAENOTSOCK: i32 = 10038;
/// `WSAEAFNOSUPPORT`: the address family is not supported by any catalog entry.
pub const WSAEAFNOSUPPORT: i32 = 10047;
/// `WSAEADDRINUSE`: the address is already in use.
pub const WSAEADDRINUSE: i32 = 10048;
/// `WSAENETDOWN`: the network subsystem (here: the transport to the target) has failed.
pub const WSAENETDOWN: i32 = 10050;
/// `WSAENOBUFS`: no buffer space is available.
pub const WSAENOBUFS: i32 = 10055;
/// `WSA_INVALID_PARAMETER`: a parameter of an event call is invalid (more than
/// `WSA_MAXIMUM_WAIT_EVENTS` events, or none, given to `WSAWaitForMultipleEvents`).
pub const WSA_INVALID_PARAMETER: i32 = 87;
/// `WSAEINVALIDPROVIDER`: a service provider library is not valid (missing, not a shared library,
/// no `WSPStartup` of its own).
pub const WSAEINVALIDPROVIDER: i32 = 10105;
/// `WSAEPROVIDERFAILEDINIT`: a service provider could not be loaded or started (its
/// `WSPStartup` failed, or this program cannot load provider libraries).
pub const WSAEPROVIDERFAILEDINIT: i32 = 10106;
/// `WSANOTINITIALISED`: no successful `WSAStartup` (here: `sockdup::startup()`) in this process.
pub const WSANOTINITIALISED: i32 = 10093;

/// The Winsock name of an error number (`"WSAEINVAL"` for 10022), or `None` for a number sockdup
/// does not use.
pub fn code_name(code: i32) -> Option<&'static str> {
    Some(match code {
        WSAEACCES => "WSAEACCES",
        WSAEFAULT => "WSAEFAULT",
        WSAEINVAL => "WSAEINVAL",
        WSAEMFILE => "WSAEMFILE",
        WSAEINPROGRESS => "WSAEINPROGRESS",
        WSAENOTSOCK => "WSAENOTSOCK",
        WSAEAFNOSUPPORT => "WSAEAFNOSUPPORT",
        WSAEADDRINUSE => "WSAEADDRINUSE",
        WSAENETDOWN => "WSAENETDOWN",
        WSAENOBUFS => "WSAENOBUFS",
        WSANOTINITIALISED => "WSANOTINITIALISED",
        WSAEINVALIDPROVIDER => "WSAEINVALIDPROVIDER",
        WSAEPROVIDERFAILEDINIT => "WSAEPROVIDERFAILEDINIT",
        WSA_INVALID_PARAMETER => "WSA_INVALID_PARAMETER",
        _ => return None,
    })
}

/// Why an [`Error`] happened: one variant per reason, so callers (and tests) tell reasons apart
/// without reading the message. [`Error::code`] is the Winsock number; several kinds share one
/// (`WSAEINVAL` stands for many reasons on Windows too).
///
/// The list is the source of the error tables in the crate docs and the README
/// ([`ErrorKind::ALL`], [`ErrorKind::description`]); a test keeps the README's copy in step.
/// New kinds may be added in any release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// This process has no live `Startup` guard: call `startup()` first (`WSANOTINITIALISED`).
    NotStarted,
    /// This process inherited sockdup through `fork()`; the inbox does not cross it: call `startup()` in the child (`WSANOTINITIALISED`).
    Forked,
    /// An option or `SOCKDUP_*` variable cannot be used (time-to-live, capacity, `SOCKDUP_ALLOW`, a runtime directory that does not exist) (`WSAEINVAL`).
    BadOption,
    /// Another process holds this process's inbox address at `startup()` (`WSAEADDRINUSE`).
    InboxAddressInUse,
    /// The target pid is 0 or out of range (`WSAEINVAL`).
    InvalidPid,
    /// No process has the target pid (it may have exited) (`WSAEINVAL`).
    NoSuchProcess,
    /// The target never called `startup()`, or uses another `SOCKDUP_RUNTIME_DIR` (`WSAEINVAL`).
    TargetNotStarted,
    /// This process may not connect to the target's inbox (its socket file's permissions) (`WSAEINVAL`).
    InboxNotReachable,
    /// Another process holds the target's inbox (or takeover control) address (`WSAEINVAL`).
    Squatter,
    /// The target's policy (`Allow`, `SOCKDUP_ALLOW`) refuses this process's user (`WSAEINVAL`).
    RefusedByTarget,
    /// The target's inbox holds its capacity of unredeemed duplicates, or this source's share of it (`WSAENOBUFS`).
    InboxFull,
    /// The target's inbox holds as many connections from this process as one process may (`WSAENOBUFS`).
    TooManyConnections,
    /// The other process is in a pid namespace this one cannot see (its pid reads as 0), so
    /// pids cannot bind a duplicate to it (`WSAEINVAL`).
    OtherPidNamespace,
    /// The target is out of descriptors and could not receive them all (`MSG_CTRUNC`) (`WSAEMFILE`).
    TargetOutOfDescriptors,
    /// The descriptor or handle is not an open socket (`ENOTSOCK`, `EBADF`) (`WSAENOTSOCK`).
    NotASocket,
    /// No catalog entry serves the socket's family, type and protocol (the base catalog has TCP and UDP over IPv4 and IPv6, and Unix stream, datagram and seqpacket sockets) (`WSAEAFNOSUPPORT`).
    Unsupported,
    /// The other process (an inbox, a takeover server) closed the connection before answering (`WSAENETDOWN`).
    PeerClosed,
    /// The other process did not answer within its timeout (`WSAENETDOWN`).
    PeerTimedOut,
    /// A message or line from the other side is malformed, too long, or not what the protocol expects here (`WSAENETDOWN`).
    ProtocolViolation,
    /// The record's bytes or text are not a protocol-info record (wrong length, corrupt, cut or altered in transit) (`WSAEINVAL`).
    MalformedRecord,
    /// A caller's buffer is too small for a record (`EFAULT` from the kernel too) (`WSAEFAULT`).
    BufferTooSmall,
    /// The record was not made by sockdup's `duplicate_socket` for this process (unknown provider, or a ticket never issued) (`WSAEINVAL`).
    NotSockdupRecord,
    /// The record was made for another process (`WSAEINVAL`).
    WrongProcess,
    /// The record was made for an earlier run of this process (sockdup restarted, or the pid was reused) (`WSAEINVAL`).
    EarlierRun,
    /// The record was already redeemed (or appears twice in one batch) (`WSAEINVAL`).
    AlreadyRedeemed,
    /// The record's time-to-live ended before it was redeemed (`WSAEINVAL`).
    Expired,
    /// The source withdrew the duplicate (its batch failed) (`WSAEINVAL`).
    Cancelled,
    /// The record or call names a catalog entry this process's catalog lacks, or one sockets never use (`WSAEINVAL`).
    UnknownCatalogEntry,
    /// The socket's chain has a non-IFS layer, so it has no descriptor of its own: use `spi::Socket` (`WSAEINVAL`).
    NoDescriptor,
    /// A layer handed a provider an entry that is not its own (the propagation rule is broken) (`WSAEINVAL`).
    PropagationRule,
    /// The catalog file is not valid (syntax, version, ids, chains, a layer's kind) (`WSAEINVAL`).
    InvalidCatalog,
    /// A layer setting has an unknown key or a bad value (the message lists the valid keys) (`WSAEINVAL`).
    InvalidLayerSetting,
    /// An install or removal cannot be made (no such entry, a base entry, a chain longer than 7, an entry named twice) (`WSAEINVAL`).
    CatalogChangeRefused,
    /// A `policy` layer refused the call (the message names the rule) (`WSAEACCES`).
    RefusedByLayer,
    /// A provider library is missing, is not a shared library, or does not itself define
    /// `WSPStartup` (the message names the path) (`WSAEINVALIDPROVIDER`).
    InvalidProvider,
    /// A provider library's `WSPStartup` failed, or this program cannot load provider libraries
    /// (the message names the path and what to do) (`WSAEPROVIDERFAILEDINIT`).
    ProviderFailedInit,
    /// A `fault` layer injected this error; its code is the one configured (the code given).
    Injected,
    /// A takeover found no pid file: nothing publishes there (`WSAEINVAL`).
    NoPidFile,
    /// The pid file names a process that is not running, names this process, or holds no pid (`WSAEINVAL`).
    StalePidFile,
    /// The process the pid file names answers no takeover (not a sockdup server) (`WSAEINVAL`).
    NotAServer,
    /// `publish` with a pid file naming another running server, or a control address in use (`WSAEADDRINUSE`).
    ServerRunning,
    /// A server refused a takeover by a process of another user (`WSAEACCES`).
    TakeoverNotPermitted,
    /// Another takeover of the same server is in progress: retry (`WSAEINPROGRESS`).
    TakeoverInProgress,
    /// The server already handed its listeners to another process (`WSAEINVAL`).
    AlreadyHandedOver,
    /// A listener name is empty, too long, has a character outside `A-Za-z0-9._-`, or is given twice (`WSAEINVAL`).
    BadListenerName,
    /// The server has no listener of that name, or none was asked for (`WSAEINVAL`).
    UnknownListener,
    /// An argument is invalid (`EINVAL` from the kernel, or a call's own check) (`WSAEINVAL`).
    InvalidArgument,
    /// `wait_for_events` was given more than 64 events (`WSA_MAXIMUM_WAIT_EVENTS`), or none (`WSA_INVALID_PARAMETER`).
    TooManyEvents,
    /// This process is out of descriptors (`EMFILE`, `ENFILE`) (`WSAEMFILE`).
    OutOfDescriptors,
    /// A call was interrupted (`EINTR`) or would block (`EAGAIN`): retry (`WSAEINPROGRESS`).
    WouldBlock,
    /// The address is in use (`EADDRINUSE`) (`WSAEADDRINUSE`).
    AddressInUse,
    /// The kernel is out of buffer space or memory (`ENOBUFS`, `ENOMEM`) (`WSAENOBUFS`).
    OutOfMemory,
    /// Another operating-system error (the message names it; `source()` holds it) (`WSAENETDOWN`).
    Os,
    /// Another process reported an error whose kind this build does not know; its code is the one reported (the code given).
    Remote,
}

impl ErrorKind {
    /// Every kind, in the order of the documentation's table.
    pub const ALL: &'static [ErrorKind] = &[
        Self::NotStarted,
        Self::Forked,
        Self::BadOption,
        Self::InboxAddressInUse,
        Self::InvalidPid,
        Self::NoSuchProcess,
        Self::TargetNotStarted,
        Self::InboxNotReachable,
        Self::Squatter,
        Self::RefusedByTarget,
        Self::InboxFull,
        Self::TooManyConnections,
        Self::OtherPidNamespace,
        Self::TargetOutOfDescriptors,
        Self::NotASocket,
        Self::Unsupported,
        Self::PeerClosed,
        Self::PeerTimedOut,
        Self::ProtocolViolation,
        Self::MalformedRecord,
        Self::BufferTooSmall,
        Self::NotSockdupRecord,
        Self::WrongProcess,
        Self::EarlierRun,
        Self::AlreadyRedeemed,
        Self::Expired,
        Self::Cancelled,
        Self::UnknownCatalogEntry,
        Self::NoDescriptor,
        Self::PropagationRule,
        Self::InvalidCatalog,
        Self::InvalidLayerSetting,
        Self::CatalogChangeRefused,
        Self::RefusedByLayer,
        Self::InvalidProvider,
        Self::ProviderFailedInit,
        Self::Injected,
        Self::NoPidFile,
        Self::StalePidFile,
        Self::NotAServer,
        Self::ServerRunning,
        Self::TakeoverNotPermitted,
        Self::TakeoverInProgress,
        Self::AlreadyHandedOver,
        Self::BadListenerName,
        Self::UnknownListener,
        Self::InvalidArgument,
        Self::TooManyEvents,
        Self::OutOfDescriptors,
        Self::WouldBlock,
        Self::AddressInUse,
        Self::OutOfMemory,
        Self::Os,
        Self::Remote,
    ];

    /// The Winsock number an error of this kind carries; `None` for [`Injected`](Self::Injected)
    /// and [`Remote`](Self::Remote), whose code is the one configured or reported.
    pub const fn code(self) -> Option<i32> {
        Some(match self {
            Self::NotStarted => WSANOTINITIALISED,
            Self::Forked => WSANOTINITIALISED,
            Self::BadOption => WSAEINVAL,
            Self::InboxAddressInUse => WSAEADDRINUSE,
            Self::InvalidPid => WSAEINVAL,
            Self::NoSuchProcess => WSAEINVAL,
            Self::TargetNotStarted => WSAEINVAL,
            Self::InboxNotReachable => WSAEINVAL,
            Self::Squatter => WSAEINVAL,
            Self::RefusedByTarget => WSAEINVAL,
            Self::InboxFull => WSAENOBUFS,
            Self::TooManyConnections => WSAENOBUFS,
            Self::OtherPidNamespace => WSAEINVAL,
            Self::TargetOutOfDescriptors => WSAEMFILE,
            Self::NotASocket => WSAENOTSOCK,
            Self::Unsupported => WSAEAFNOSUPPORT,
            Self::PeerClosed => WSAENETDOWN,
            Self::PeerTimedOut => WSAENETDOWN,
            Self::ProtocolViolation => WSAENETDOWN,
            Self::MalformedRecord => WSAEINVAL,
            Self::BufferTooSmall => WSAEFAULT,
            Self::NotSockdupRecord => WSAEINVAL,
            Self::WrongProcess => WSAEINVAL,
            Self::EarlierRun => WSAEINVAL,
            Self::AlreadyRedeemed => WSAEINVAL,
            Self::Expired => WSAEINVAL,
            Self::Cancelled => WSAEINVAL,
            Self::UnknownCatalogEntry => WSAEINVAL,
            Self::NoDescriptor => WSAEINVAL,
            Self::PropagationRule => WSAEINVAL,
            Self::InvalidCatalog => WSAEINVAL,
            Self::InvalidLayerSetting => WSAEINVAL,
            Self::CatalogChangeRefused => WSAEINVAL,
            Self::RefusedByLayer => WSAEACCES,
            Self::InvalidProvider => WSAEINVALIDPROVIDER,
            Self::ProviderFailedInit => WSAEPROVIDERFAILEDINIT,
            Self::NoPidFile => WSAEINVAL,
            Self::StalePidFile => WSAEINVAL,
            Self::NotAServer => WSAEINVAL,
            Self::ServerRunning => WSAEADDRINUSE,
            Self::TakeoverNotPermitted => WSAEACCES,
            Self::TakeoverInProgress => WSAEINPROGRESS,
            Self::AlreadyHandedOver => WSAEINVAL,
            Self::BadListenerName => WSAEINVAL,
            Self::UnknownListener => WSAEINVAL,
            Self::InvalidArgument => WSAEINVAL,
            Self::TooManyEvents => WSA_INVALID_PARAMETER,
            Self::OutOfDescriptors => WSAEMFILE,
            Self::WouldBlock => WSAEINPROGRESS,
            Self::AddressInUse => WSAEADDRINUSE,
            Self::OutOfMemory => WSAENOBUFS,
            Self::Os => WSAENETDOWN,
            Self::Injected | Self::Remote => return None,
        })
    }

    /// The kind's stable name (`"already-redeemed"`): what travels between processes in
    /// sockdup's protocols and what the command line prints.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NotStarted => "not-started",
            Self::Forked => "forked",
            Self::BadOption => "bad-option",
            Self::InboxAddressInUse => "inbox-address-in-use",
            Self::InvalidPid => "invalid-pid",
            Self::NoSuchProcess => "no-such-process",
            Self::TargetNotStarted => "target-not-started",
            Self::InboxNotReachable => "inbox-not-reachable",
            Self::Squatter => "squatter",
            Self::RefusedByTarget => "refused-by-target",
            Self::InboxFull => "inbox-full",
            Self::TooManyConnections => "too-many-connections",
            Self::OtherPidNamespace => "other-pid-namespace",
            Self::TargetOutOfDescriptors => "target-out-of-descriptors",
            Self::NotASocket => "not-a-socket",
            Self::Unsupported => "unsupported",
            Self::PeerClosed => "peer-closed",
            Self::PeerTimedOut => "peer-timed-out",
            Self::ProtocolViolation => "protocol-violation",
            Self::MalformedRecord => "malformed-record",
            Self::BufferTooSmall => "buffer-too-small",
            Self::NotSockdupRecord => "not-sockdup-record",
            Self::WrongProcess => "wrong-process",
            Self::EarlierRun => "earlier-run",
            Self::AlreadyRedeemed => "already-redeemed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::UnknownCatalogEntry => "unknown-catalog-entry",
            Self::NoDescriptor => "no-descriptor",
            Self::PropagationRule => "propagation-rule",
            Self::InvalidCatalog => "invalid-catalog",
            Self::InvalidLayerSetting => "invalid-layer-setting",
            Self::CatalogChangeRefused => "catalog-change-refused",
            Self::RefusedByLayer => "refused-by-layer",
            Self::InvalidProvider => "invalid-provider",
            Self::ProviderFailedInit => "provider-failed-init",
            Self::Injected => "injected",
            Self::NoPidFile => "no-pid-file",
            Self::StalePidFile => "stale-pid-file",
            Self::NotAServer => "not-a-server",
            Self::ServerRunning => "server-running",
            Self::TakeoverNotPermitted => "takeover-not-permitted",
            Self::TakeoverInProgress => "takeover-in-progress",
            Self::AlreadyHandedOver => "already-handed-over",
            Self::BadListenerName => "bad-listener-name",
            Self::UnknownListener => "unknown-listener",
            Self::InvalidArgument => "invalid-argument",
            Self::TooManyEvents => "too-many-events",
            Self::OutOfDescriptors => "out-of-descriptors",
            Self::WouldBlock => "would-block",
            Self::AddressInUse => "address-in-use",
            Self::OutOfMemory => "out-of-memory",
            Self::Os => "os",
            Self::Remote => "remote",
        }
    }

    /// The kind of a [`name`](Self::name), or `None` for a name this build does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// When sockdup returns this kind: one line of the error table.
    pub const fn description(self) -> &'static str {
        match self {
            Self::NotStarted => "this process has no live `Startup` guard: call `startup()` first",
            Self::Forked => {
                "this process inherited sockdup through `fork()`; the inbox does not cross it: call `startup()` in the child"
            }
            Self::BadOption => {
                "an option or `SOCKDUP_*` variable cannot be used (time-to-live, capacity, `SOCKDUP_ALLOW`, a runtime directory that does not exist)"
            }
            Self::InboxAddressInUse => {
                "another process holds this process's inbox address at `startup()`"
            }
            Self::InvalidPid => "the target pid is 0 or out of range",
            Self::NoSuchProcess => "no process has the target pid (it may have exited)",
            Self::TargetNotStarted => {
                "the target never called `startup()`, or uses another `SOCKDUP_RUNTIME_DIR`"
            }
            Self::InboxNotReachable => {
                "this process may not connect to the target's inbox (its socket file's permissions)"
            }
            Self::Squatter => {
                "another process holds the target's inbox (or takeover control) address"
            }
            Self::RefusedByTarget => {
                "the target's policy (`Allow`, `SOCKDUP_ALLOW`) refuses this process's user"
            }
            Self::InboxFull => {
                "the target's inbox holds its capacity of unredeemed duplicates, or this source's share of it"
            }
            Self::TooManyConnections => {
                "the target's inbox holds as many connections from this process as one process may"
            }
            Self::OtherPidNamespace => {
                "the other process is in a pid namespace this one cannot see (its pid reads as 0): sockdup works between processes of one pid namespace"
            }
            Self::TargetOutOfDescriptors => {
                "the target is out of descriptors and could not receive them all (`MSG_CTRUNC`)"
            }
            Self::NotASocket => {
                "the descriptor or handle is not an open socket (`ENOTSOCK`, `EBADF`)"
            }
            Self::Unsupported => {
                "no catalog entry serves the socket's family, type and protocol (the base catalog has TCP and UDP over IPv4 and IPv6, and Unix stream, datagram and seqpacket sockets)"
            }
            Self::PeerClosed => {
                "the other process (an inbox, a takeover server) closed the connection before answering"
            }
            Self::PeerTimedOut => "the other process did not answer within its timeout",
            Self::ProtocolViolation => {
                "a message or line from the other side is malformed, too long, or not what the protocol expects here"
            }
            Self::MalformedRecord => {
                "the record's bytes or text are not a protocol-info record (wrong length, corrupt, cut or altered in transit)"
            }
            Self::BufferTooSmall => {
                "a caller's buffer is too small for a record (`EFAULT` from the kernel too)"
            }
            Self::NotSockdupRecord => {
                "the record was not made by sockdup's `duplicate_socket` for this process (unknown provider, or a ticket never issued)"
            }
            Self::WrongProcess => "the record was made for another process",
            Self::EarlierRun => {
                "the record was made for an earlier run of this process (sockdup restarted, or the pid was reused)"
            }
            Self::AlreadyRedeemed => {
                "the record was already redeemed (or appears twice in one batch)"
            }
            Self::Expired => "the record's time-to-live ended before it was redeemed",
            Self::Cancelled => "the source withdrew the duplicate (its batch failed)",
            Self::UnknownCatalogEntry => {
                "the record or call names a catalog entry this process's catalog lacks, or one sockets never use"
            }
            Self::NoDescriptor => {
                "the socket's chain has a non-IFS layer, so it has no descriptor of its own: use `spi::Socket`"
            }
            Self::PropagationRule => {
                "a layer handed a provider an entry that is not its own (the propagation rule is broken)"
            }
            Self::InvalidCatalog => {
                "the catalog file is not valid (syntax, version, ids, chains, a layer's kind)"
            }
            Self::InvalidLayerSetting => {
                "a layer setting has an unknown key or a bad value (the message lists the valid keys)"
            }
            Self::CatalogChangeRefused => {
                "an install or removal cannot be made (no such entry, a base entry, a chain longer than 7, an entry named twice)"
            }
            Self::RefusedByLayer => {
                "a `policy` layer refused the call (the message names the rule)"
            }
            Self::InvalidProvider => {
                "a provider library is missing, is not a shared library, or does not itself define `WSPStartup` (the message names the path)"
            }
            Self::ProviderFailedInit => {
                "a provider library's `WSPStartup` failed, or this program cannot load provider libraries (the message says what to do)"
            }
            Self::Injected => "a `fault` layer injected this error; its code is the one configured",
            Self::NoPidFile => "a takeover found no pid file: nothing publishes there",
            Self::StalePidFile => {
                "the pid file names a process that is not running, names this process, or holds no pid"
            }
            Self::NotAServer => {
                "the process the pid file names answers no takeover (not a sockdup server)"
            }
            Self::ServerRunning => {
                "`publish` with a pid file naming another running server, or a control address in use"
            }
            Self::TakeoverNotPermitted => {
                "a server refused a takeover by a process of another user"
            }
            Self::TakeoverInProgress => "another takeover of the same server is in progress: retry",
            Self::AlreadyHandedOver => "the server already handed its listeners to another process",
            Self::BadListenerName => {
                "a listener name is empty, too long, has a character outside `A-Za-z0-9._-`, or is given twice"
            }
            Self::UnknownListener => {
                "the server has no listener of that name, or none was asked for"
            }
            Self::InvalidArgument => {
                "an argument is invalid (`EINVAL` from the kernel, or a call's own check)"
            }
            Self::TooManyEvents => {
                "`wait_for_events` was given more than 64 events (`WSA_MAXIMUM_WAIT_EVENTS`), or none"
            }
            Self::OutOfDescriptors => "this process is out of descriptors (`EMFILE`, `ENFILE`)",
            Self::WouldBlock => "a call was interrupted (`EINTR`) or would block (`EAGAIN`): retry",
            Self::AddressInUse => "the address is in use (`EADDRINUSE`)",
            Self::OutOfMemory => {
                "the kernel is out of buffer space or memory (`ENOBUFS`, `ENOMEM`)"
            }
            Self::Os => {
                "another operating-system error (the message names it; `source()` holds it)"
            }
            Self::Remote => {
                "another process reported an error whose kind this build does not know; its code is the one reported"
            }
        }
    }
}

/// The error table as Markdown: code, Winsock name, kind and when sockdup returns it, one row
/// per [`ErrorKind`], sorted by code. The README's "Errors" section holds this table.
pub fn markdown_table() -> String {
    let mut rows: Vec<&ErrorKind> = ErrorKind::ALL.iter().collect();
    rows.sort_by_key(|k| k.code().unwrap_or(i32::MAX));
    let mut out = String::from(
        "| Code | Name | Kind | When sockdup returns it |\n|-----:|------|------|-------------------------|\n",
    );
    for k in rows {
        let (code, name) = match k.code() {
            Some(c) => (c.to_string(), format!("`{}`", code_name(c).unwrap_or("?"))),
            None => ("any".to_owned(), "as given".to_owned()),
        };
        out.push_str(&format!(
            "| {code} | {name} | `{kind}` ({variant:?}) | {desc} |\n",
            kind = k.name(),
            variant = k,
            desc = k.description()
        ));
    }
    out
}

/// A sockdup failure: why ([`kind`](Self::kind)), a Winsock error number
/// ([`code`](Self::code)), and a sentence for people.
///
/// `Display` prints the sentence followed by the code, e.g.
/// `this record was made for process 4242, but this is process 4243: redeem it in the process it
/// was duplicated to (WSAEINVAL 10022)`.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    code: i32,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    /// An error of `kind` with a `message` that says what went wrong and what to do; the code is
    /// the kind's ([`ErrorKind::code`]; `WSAENETDOWN` for a kind without a fixed code: use
    /// [`with_code`](Self::with_code) for those).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: kind.code().unwrap_or(WSAENETDOWN),
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` with an explicit Winsock `code`: for [`ErrorKind::Injected`] (the code a
    /// fault layer was told to inject) and [`ErrorKind::Remote`] (the code another process sent).
    pub fn with_code(kind: ErrorKind, code: i32, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            source: None,
        }
    }

    /// An error another process reported, by its kind's name and code: the kind when this build
    /// knows the name (and it agrees with the code), else [`ErrorKind::Remote`].
    pub fn remote(kind_name: &str, code: i32, message: impl Into<String>) -> Self {
        let kind = ErrorKind::from_name(kind_name)
            .filter(|k| k.code().is_none_or(|c| c == code))
            .unwrap_or(ErrorKind::Remote);
        Self::with_code(kind, code, message)
    }

    /// Attaches the operating-system error that caused this one (shown by `source()`).
    pub fn with_source(mut self, source: io::Error) -> Self {
        self.source = Some(source);
        self
    }

    /// The same error with `context` before its message (`"record 3 of the batch: ..."`);
    /// kind, code and source stay.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The one mapping from an OS error (an `io::Error`, or rustix's `Errno`) to a kind and a
    /// Winsock code. `doing` says what sockdup was doing ("reading the socket's type"); the
    /// message names it and the OS error.
    pub fn from_errno(err: impl Into<io::Error>, doing: &str) -> Self {
        let err = err.into();
        let raw = err.raw_os_error().unwrap_or(0);
        let (kind, advice) = match raw {
            libc_errno::EFAULT => (ErrorKind::BufferTooSmall, "a buffer was not valid"),
            libc_errno::EINVAL => (ErrorKind::InvalidArgument, "an argument was invalid"),
            libc_errno::EMFILE | libc_errno::ENFILE => (
                ErrorKind::OutOfDescriptors,
                "no descriptor is left: close some, or raise the limit (ulimit -n)",
            ),
            libc_errno::EINTR | libc_errno::EAGAIN => (
                ErrorKind::WouldBlock,
                "the call was interrupted or would block: retry",
            ),
            libc_errno::ENOTSOCK => (ErrorKind::NotASocket, "the descriptor is not a socket"),
            libc_errno::EBADF => (ErrorKind::NotASocket, "the descriptor is not open"),
            libc_errno::EAFNOSUPPORT => (
                ErrorKind::Unsupported,
                "the address family is not supported",
            ),
            libc_errno::EADDRINUSE => (ErrorKind::AddressInUse, "the address is in use"),
            libc_errno::ENOBUFS | libc_errno::ENOMEM => (
                ErrorKind::OutOfMemory,
                "the kernel is out of buffer space or memory",
            ),
            _ => (ErrorKind::Os, "the transport failed"),
        };
        Self::new(kind, format!("{doing} failed: {err}; {advice}")).with_source(err)
    }

    /// Why this error happened.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The Winsock error number (`10022` for `WSAEINVAL`).
    pub fn code(&self) -> i32 {
        self.code
    }

    /// The Winsock name of [`code`](Self::code), e.g. `"WSAEINVAL"`.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code).unwrap_or("WSA error")
    }

    /// The sentence without the trailing code.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} {})", self.message, self.code_name(), self.code)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match err.code {
            WSAEINVAL | WSAEFAULT => io::ErrorKind::InvalidInput,
            WSAEINPROGRESS => io::ErrorKind::Interrupted,
            WSAENOBUFS => io::ErrorKind::OutOfMemory,
            WSAEADDRINUSE => io::ErrorKind::AddrInUse,
            WSAENETDOWN => io::ErrorKind::NetworkDown,
            WSAEAFNOSUPPORT => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

/// Linux errno values the mapping needs. The core has no libc dependency, and these numbers are
/// part of the Linux ABI (identical on every architecture sockdup builds for).
mod libc_errno {
    pub(super) const EINTR: i32 = 4;
    pub(super) const EBADF: i32 = 9;
    pub(super) const EAGAIN: i32 = 11;
    pub(super) const ENOMEM: i32 = 12;
    pub(super) const EFAULT: i32 = 14;
    pub(super) const EINVAL: i32 = 22;
    pub(super) const ENFILE: i32 = 23;
    pub(super) const EMFILE: i32 = 24;
    pub(super) const ENOTSOCK: i32 = 88;
    pub(super) const EAFNOSUPPORT: i32 = 97;
    pub(super) const EADDRINUSE: i32 = 98;
    pub(super) const ENOBUFS: i32 = 105;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_covers_the_seed_codes() {
        let cases = [
            (24, WSAEMFILE, ErrorKind::OutOfDescriptors),
            (23, WSAEMFILE, ErrorKind::OutOfDescriptors),
            (88, WSAENOTSOCK, ErrorKind::NotASocket),
            (9, WSAENOTSOCK, ErrorKind::NotASocket),
            (105, WSAENOBUFS, ErrorKind::OutOfMemory),
            (4, WSAEINPROGRESS, ErrorKind::WouldBlock),
            (14, WSAEFAULT, ErrorKind::BufferTooSmall),
            (22, WSAEINVAL, ErrorKind::InvalidArgument),
            (111, WSAENETDOWN, ErrorKind::Os),
        ];
        for (errno, code, kind) in cases {
            let e = Error::from_errno(io::Error::from_raw_os_error(errno), "testing");
            assert_eq!((e.code(), e.kind()), (code, kind), "errno {errno}");
            assert!(e.to_string().starts_with("testing failed: "));
            assert!(std::error::Error::source(&e).is_some());
        }
    }

    #[test]
    fn display_ends_with_name_and_number() {
        let e = Error::new(ErrorKind::InvalidPid, "pid 0 names no process");
        assert_eq!(e.to_string(), "pid 0 names no process (WSAEINVAL 10022)");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn kinds_have_unique_names_that_round_trip() {
        let mut names = std::collections::HashSet::new();
        for &k in ErrorKind::ALL {
            assert!(names.insert(k.name()), "{k:?} shares its name");
            assert_eq!(ErrorKind::from_name(k.name()), Some(k));
            assert!(!k.description().is_empty());
            if let Some(c) = k.code() {
                assert!(code_name(c).is_some(), "{k:?} has an unnamed code");
            }
        }
        assert_eq!(ErrorKind::from_name("no-such-kind"), None);
    }

    #[test]
    fn remote_errors_keep_known_kinds_and_codes() {
        let e = Error::remote("inbox-full", WSAENOBUFS, "full");
        assert_eq!((e.kind(), e.code()), (ErrorKind::InboxFull, WSAENOBUFS));
        // A kind this build does not know, or one whose code disagrees, is Remote.
        let e = Error::remote("from-the-future", 10099, "new");
        assert_eq!((e.kind(), e.code()), (ErrorKind::Remote, 10099));
        let e = Error::remote("inbox-full", WSAEINVAL, "mismatch");
        assert_eq!(e.kind(), ErrorKind::Remote);
        let e = Error::new(ErrorKind::AlreadyRedeemed, "spent").context("record 1 of the batch");
        assert_eq!(e.message(), "record 1 of the batch: spent");
        assert_eq!(e.kind(), ErrorKind::AlreadyRedeemed);
    }

    /// The README's "Errors" table is [`markdown_table`], unchanged.
    #[test]
    fn the_readme_error_table_matches_the_code() {
        let readme = include_str!("../../../README.md");
        let begin = "<!-- errors:begin (generated from ErrorKind; a test checks it) -->\n";
        let end = "<!-- errors:end -->";
        let start = readme
            .find(begin)
            .expect("the README has an errors:begin marker")
            + begin.len();
        let stop = readme[start..]
            .find(end)
            .expect("the README has an errors:end marker")
            + start;
        let table = markdown_table();
        assert!(
            readme[start..stop] == table,
            "the README's error table differs from the code; replace it with:\n\n{table}"
        );
    }
}
