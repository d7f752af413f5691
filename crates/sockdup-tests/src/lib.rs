//! Process-level tests of sockdup. The `peer` binary is a process the tests drive line by line
//! over its stdin and stdout; the tests in `tests/` spawn it as sources, targets and bystanders.
//!
//! This crate is test-only (never published): it holds the codec of the peer's line protocol
//! ([`Command`], [`Answer`]), used by the `peer` binary and by the tests that drive it, and the
//! helpers every process test of the workspace shares ([`util`]).
//!
//! # The peer protocol
//!
//! One command per line on the peer's stdin (`VERB [ARG...]`, see [`Verb`]), one answer per line
//! on its stdout: `ok [VALUE]`, or `err CODE KIND MESSAGE` where `CODE` is the Winsock number
//! and `KIND` the stable name of the error's [`ErrorKind`] (its
//! [`name()`](sockdup::ErrorKind::name)). Lines are read with the one bounded reader of
//! [`sockdup_core::line`]; a malformed command (an unknown verb, a missing or bad argument) is
//! answered at once with an `err` of kind `protocol-violation` or `invalid-argument`.
#![forbid(unsafe_code)]

pub mod util;
// Provider libraries in C (issue 14): libsockdup.so, the counting layer, broken libraries.
pub mod cprov;

/// The bound of a peer protocol line: 4 MiB, above the longest legitimate one (an answer to
/// `dup-many` of a few thousand records, ~850 bytes of text each), far above
/// [`sockdup_core::line::MAX_LINE`], which is the bound of sockdup's own protocols.
pub const MAX_LINE: usize = 4 * 1024 * 1024;

use sockdup::{Error, ErrorKind};
use sockdup_core::line::{ErrorReport, LineMessage};

macro_rules! verbs {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// The commands the peer knows (the first word of a command line).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Verb {
            $(
                #[doc = concat!("`", $name, "`")]
                $(#[doc = ""] #[doc = $doc])*
                $variant,
            )*
        }

        impl Verb {
            /// Every verb.
            pub const ALL: &'static [Verb] = &[$(Self::$variant),*];

            /// The verb as it is written on the line.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            /// The verb written `name`, if there is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

verbs! {
    Startup = "startup",
    Cleanup = "cleanup",
    Pid = "pid",
    TcpListen = "tcp-listen",
    TcpConnect = "tcp-connect",
    UdpBind = "udp-bind",
    UdpConnect = "udp-connect",
    UnixPair = "unix-pair",
    Pipe = "pipe",
    Dup = "dup",
    DupMany = "dup-many",
    Redeem = "redeem",
    RedeemMany = "redeem-many",
    Close = "close",
    Write = "write",
    Read = "read",
    Accept = "accept",
    Keepalive = "keepalive",
    SetKeepalive = "set-keepalive",
    Nonblock = "nonblock",
    SetNonblock = "set-nonblock",
    FdCount = "fdcount",
    Cloexec = "cloexec",
    Squat = "squat",
    HoldInbox = "hold-inbox",
    Exit = "exit",
    SpiTcpConnect = "spi-tcp-connect",
    SpiDup = "spi-dup",
    SpiRedeem = "spi-redeem",
    SpiSend = "spi-send",
    SpiRecv = "spi-recv",
    SpiClose = "spi-close",
    SpiIntoFd = "spi-into-fd",
    Addr2Str = "addr2str",
    Str2Addr = "str2addr",
    Trace = "trace",
    Publish = "publish",
    TakeOver = "take-over",
    Complete = "complete",
    Abort = "abort",
    DropTakeover = "drop-takeover",
    HandedOver = "handed-over",
    WaitHandover = "wait-handover",
    Unpublish = "unpublish",
    TakeAndCrash = "take-and-crash",
    /// `ctl-connect PIDFILE`: a raw connection to the takeover control socket of the process the
    /// pid file names (this peer's current control connection); the protocol spoken by hand.
    CtlConnect = "ctl-connect",
    /// `ctl-send TEXT`: writes TEXT and a newline on the current control connection.
    CtlSend = "ctl-send",
    /// `ctl-recv`: the next line on the current control connection (10 s at most), or `closed`;
    /// the records of `listeners COUNT RECORD` lines are remembered, with the names the last
    /// `ctl-send take ...` asked for, for `ctl-redeem`.
    CtlRecv = "ctl-recv",
    /// `ctl-redeem`: redeems the records `ctl-recv` remembered; answers `NAME=IDX...`.
    CtlRedeem = "ctl-redeem",
    /// `ctl-hold PIDFILE N`: opens N raw control connections, sends nothing, reads each one's
    /// first line and whether it is closed after (5 s at most each), and keeps them; answers
    /// `answered=A closed=C first=LINE`.
    CtlHold = "ctl-hold",
    /// `attack PID WHAT`: one hostile message to the inbox of PID by bare sockets (see the
    /// peer's `attack`); answers the inbox's reply (`ok N`, an error kind, `closed`, `silent`).
    Attack = "attack",
    /// `set-nofile N`: sets this process's `RLIMIT_NOFILE` (soft and hard) to N; raising the
    /// hard limit needs root (`CAP_SYS_RESOURCE`).
    SetNofile = "set-nofile",
    /// `dup-repeat IDX PID N`: duplicates descriptor IDX for PID N times (`duplicate_sockets`,
    /// 253 a call, the same socket throughout); answers `N FIRST LAST`, the first and the last
    /// record (the others are not kept: they wait in PID's inbox until redeemed or expired).
    DupRepeat = "dup-repeat",
    /// `fill IDX`: opens copies of descriptor IDX (`dup`) until this process is out of
    /// descriptors, and keeps them; answers how many it opened.
    Fill = "fill",
    /// `unfill N`: closes N of the copies `fill` opened (all of them if N is `all`); answers
    /// how many are left.
    Unfill = "unfill",
    /// `spi-from-fd IDX`: wraps descriptor IDX as a chain socket of the base provider
    /// (`Socket::from_fd`); answers like `spi-redeem`.
    SpiFromFd = "spi-from-fd",
    /// `ev-new`: a new event object (`WSACreateEvent`); answers its index.
    EvNew = "ev-new",
    /// `ev-select IDX EV MASK`: `event_select` of socket IDX with event EV and MASK (decimal or
    /// `0x` hex; 0 cancels).
    EvSelect = "ev-select",
    /// `ev-async IDX MASK`: `async_select` of socket IDX with MASK, to this socket's channel.
    EvAsync = "ev-async",
    /// `ev-enum IDX [EV]`: `enum_network_events`; answers `events=0xN errors=E0,E1,...`.
    EvEnum = "ev-enum",
    /// `ev-wait EV MS`: waits up to MS ms for event EV; answers `set` or `timeout`.
    EvWait = "ev-wait",
    /// `ev-reset EV`: resets event EV.
    EvReset = "ev-reset",
    /// `ev-notes IDX MS`: the notifications socket IDX's channel got, waiting up to MS ms for
    /// the first; answers `EVENT:ERROR` words (empty if none).
    EvNotes = "ev-notes",
}

/// One command line: a known [`Verb`] and its arguments, with accessors that refuse a missing
/// or malformed argument as [`ErrorKind::InvalidArgument`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// What to do.
    pub verb: Verb,
    /// Everything after the verb and one space, as sent (empty if nothing follows).
    args: String,
}

impl Command {
    /// A command of `verb` with `args` (words separated by single spaces).
    pub fn new(verb: Verb, args: impl Into<String>) -> Self {
        Self {
            verb,
            args: args.into(),
        }
    }

    /// The argument words.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.args.split_whitespace()
    }

    /// Argument word `i` (0 is the first after the verb), if present.
    pub fn word(&self, i: usize) -> Option<&str> {
        self.words().nth(i)
    }

    /// Argument word `i`, which must be present; `what` names it in the error.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if it is missing.
    pub fn required(&self, i: usize, what: &str) -> Result<&str, Error> {
        self.word(i)
            .ok_or_else(|| self.bad(format!("missing {what}")))
    }

    /// Argument word `i` parsed as `T`; `what` names it in the error.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if it is missing or does not parse.
    pub fn parsed<T: std::str::FromStr>(&self, i: usize, what: &str) -> Result<T, Error> {
        let word = self.required(i, what)?;
        word.parse()
            .map_err(|_| self.bad(format!("{word:?} is not a valid {what}")))
    }

    /// The text after the first `n` argument words, as sent (`write IDX TEXT` keeps the spaces
    /// of its text).
    pub fn rest(&self, n: usize) -> &str {
        let mut rest = self.args.as_str();
        for _ in 0..n {
            rest = rest.split_once(' ').map_or("", |(_, r)| r);
        }
        rest
    }

    /// An [`ErrorKind::InvalidArgument`] error about this command.
    pub fn bad(&self, why: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{}: {why}", self.verb.name()),
        )
    }
}

impl LineMessage for Command {
    fn encode_into(&self, out: &mut String) {
        out.push_str(self.verb.name());
        if !self.args.is_empty() {
            out.push(' ');
            out.push_str(&one_line(&self.args));
        }
        out.push('\n');
    }

    /// # Errors
    /// [`ErrorKind::ProtocolViolation`] for an empty line or an unknown verb.
    fn parse(line: &str) -> Result<Self, Error> {
        let line = line.trim();
        let (verb, args) = line.split_once(' ').unwrap_or((line, ""));
        if verb.is_empty() {
            return Err(Error::new(
                ErrorKind::ProtocolViolation,
                "received an empty line instead of a peer command",
            ));
        }
        let verb = Verb::from_name(verb).ok_or_else(|| {
            Error::new(
                ErrorKind::ProtocolViolation,
                format!("unknown command {:?}", abbreviate(verb, 40)),
            )
        })?;
        Ok(Self::new(verb, args))
    }
}

/// An `err` answer: the Winsock code, the kind's name and the message of an [`Error`], as every
/// sockdup line protocol carries an error (`CODE KIND [MESSAGE]`, one line, bounded).
pub type Failure = ErrorReport;

/// The peer's answer to one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `ok [VALUE]`: the command succeeded.
    Ok(String),
    /// `err CODE KIND [MESSAGE]`: the command failed.
    Err(Failure),
}

impl From<Result<String, Error>> for Answer {
    fn from(outcome: Result<String, Error>) -> Self {
        match outcome {
            Ok(value) => Self::Ok(value),
            Err(e) => Self::Err(Failure::from(&e)),
        }
    }
}

impl LineMessage for Answer {
    fn encode_into(&self, out: &mut String) {
        match self {
            Self::Ok(value) if value.is_empty() => out.push_str("ok"),
            Self::Ok(value) => {
                out.push_str("ok ");
                out.push_str(&one_line(value));
            }
            Self::Err(f) => {
                out.push_str("err ");
                f.encode_into(out);
            }
        }
        out.push('\n');
    }

    /// # Errors
    /// [`ErrorKind::ProtocolViolation`] for anything but `ok [VALUE]` or
    /// `err CODE KIND [MESSAGE]` (an [`ErrorReport`]: a numeric code, a kind name of `a-z0-9-`,
    /// a bounded message).
    fn parse(line: &str) -> Result<Self, Error> {
        let violation = |why: &str| {
            Error::new(
                ErrorKind::ProtocolViolation,
                format!("{:?} is not a peer answer: {why}", abbreviate(line, 80)),
            )
        };
        if line == "ok" {
            return Ok(Self::Ok(String::new()));
        }
        if let Some(value) = line.strip_prefix("ok ") {
            return Ok(Self::Ok(value.to_owned()));
        }
        let rest = line
            .strip_prefix("err ")
            .ok_or_else(|| violation("expected `ok [VALUE]` or `err CODE KIND [MESSAGE]`"))?;
        ErrorReport::parse(rest)
            .map(Self::Err)
            .map_err(|e| violation(e.message()))
    }
}

/// `text` on one line: line breaks become spaces.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The first `n` characters of `s`, with an ellipsis if it is longer.
fn abbreviate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_round_trip_and_keep_their_text() {
        for &verb in Verb::ALL {
            assert_eq!(Verb::from_name(verb.name()), Some(verb));
            let c = Command::new(verb, "1 two  words");
            assert_eq!(Command::parse(c.encode().trim_end()).unwrap(), c);
        }
        let c = Command::parse("write 3 hello  there").unwrap();
        assert_eq!(c.verb, Verb::Write);
        assert_eq!(c.word(0), Some("3"));
        assert_eq!(c.rest(1), "hello  there");
        assert_eq!(c.parsed::<usize>(0, "index").unwrap(), 3);
        let e = c.parsed::<u32>(1, "pid").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("\"hello\" is not a valid pid"), "{e}");
        let e = Command::parse("pid").unwrap().required(0, "x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn unknown_and_empty_commands_are_protocol_violations() {
        for line in ["", "   ", "frobnicate 1", "\u{1}"] {
            let e = Command::parse(line).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ProtocolViolation, "{line:?}");
        }
    }

    #[test]
    fn answers_round_trip() {
        let e = Error::new(ErrorKind::AlreadyRedeemed, "spent\nalready");
        for answer in [
            Answer::Ok(String::new()),
            Answer::Ok("1 127.0.0.1:80".into()),
            Answer::from(Err::<String, _>(e)),
        ] {
            let line = answer.encode();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            let back = Answer::parse(line.trim_end_matches('\n')).unwrap();
            match (&answer, &back) {
                (Answer::Err(a), Answer::Err(b)) => {
                    assert_eq!((a.code, &a.kind), (b.code, &b.kind));
                    assert_eq!(b.message, "spent already");
                    let err = b.to_error();
                    assert_eq!(err.kind(), ErrorKind::AlreadyRedeemed);
                    assert_eq!(err.code(), 10022);
                }
                _ => assert_eq!(answer, back),
            }
        }
    }

    #[test]
    fn garbage_answers_are_refused() {
        for line in [
            "",
            "okay",
            "err",
            "err 10022",
            "err x already-redeemed m",
            "err 10022 Not_A_Kind m",
            "fine",
        ] {
            let e = Answer::parse(line).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ProtocolViolation, "{line:?}");
        }
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(line in ".{0,200}") {
            let _ = Command::parse(&line);
            let _ = Answer::parse(&line);
        }
    }
}
