//! The handoff line protocol, between an acceptor (`sockdup serve`) and its workers, over the
//! workers' standard input (acceptor to worker, [`ToWorker`]) and standard output (worker to
//! acceptor, [`FromWorker`]):
//!
//! ```text
//! worker:   pid PID                   once, after sockdup::startup()
//! acceptor: conn ID RECORD            a connection duplicated for this worker (RECORD: the
//!                                     record's one-line text form)
//! worker:   ok ID                     redeemed: the acceptor may close its descriptor
//! worker:   fail ID CODE KIND [MSG]   could not redeem (the acceptor gives the connection to
//!                                     another worker); KIND is the error kind's name
//! worker:   done ID                   the connection is finished (least-outstanding dispatch)
//! worker:   error CODE KIND [MSG]     the acceptor's last line was not the protocol (malformed
//!                                     or too long): the worker takes nothing more and exits
//! ```
//!
//! Fields are separated by one space; ids are decimal `u64`, pids decimal non-zero `u32`, codes
//! decimal `i32`. A line that is anything else is refused by [`LineMessage::parse`] with
//! [`ErrorKind::ProtocolViolation`]: each side hears a broken stream at once (the worker answers
//! with `error`, the acceptor replaces the worker) instead of waiting for a timeout.

use std::fmt::Write as _;

use crate::error::{Error, ErrorKind};
use crate::line::{LineMessage, decimal_u64, number, utf8};
use crate::wire::{ProtocolInfo, TextEncoder};

/// The error of a `fail` or `error` line: the one [`ErrorReport`] of every line protocol
/// (`CODE KIND [MESSAGE]`).
pub use crate::line::ErrorReport;

/// A line from the acceptor to a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToWorker {
    /// `conn ID RECORD`: a connection duplicated to this worker, to redeem with the record.
    Conn {
        /// The acceptor's id for the connection (echoed in `ok`, `fail` and `done`).
        id: u64,
        /// The duplicate's record.
        record: ProtocolInfo,
    },
}

/// A line from a worker to the acceptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromWorker {
    /// `pid PID`: the worker started sockdup and can receive duplicates (its first line).
    Pid(u32),
    /// `ok ID`: connection `ID` redeemed.
    Redeemed(u64),
    /// `fail ID CODE KIND [MESSAGE]`: connection `ID` could not be redeemed.
    Failed {
        /// The connection.
        id: u64,
        /// Why.
        error: ErrorReport,
    },
    /// `done ID`: connection `ID` is finished.
    Done(u64),
    /// `error CODE KIND [MESSAGE]`: the acceptor's line was not the protocol; the worker takes
    /// no more connections and exits.
    Error(ErrorReport),
}

impl ToWorker {
    /// Appends the line of `ToWorker::Conn { id, record }` (newline included) to `out`, the
    /// record's text written by `text`: the same bytes as [`LineMessage::encode_into`],
    /// without building the message, and cheaper for the records of one batch.
    pub fn encode_conn_into(
        id: u64,
        record: &ProtocolInfo,
        text: &mut TextEncoder,
        out: &mut String,
    ) {
        let _ = write!(out, "conn {id} ");
        text.encode_into(record, out);
        out.push('\n');
    }

    /// [`encode_conn_into`](Self::encode_conn_into) for a writer of bytes (the acceptor's
    /// batch, written to a pipe): the same bytes, without formatting machinery or UTF-8
    /// checks.
    pub fn encode_conn_bytes_into(
        id: u64,
        record: &ProtocolInfo,
        text: &mut TextEncoder,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(b"conn ");
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = id;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
        out.push(b' ');
        text.encode_bytes_into(record, out);
        out.push(b'\n');
    }
}

impl LineMessage for ToWorker {
    fn encode_into(&self, out: &mut String) {
        match self {
            Self::Conn { id, record } => {
                let _ = writeln!(out, "conn {id} {record}");
            }
        }
    }

    fn parse(line: &str) -> Result<Self, Error> {
        let mut w = line.splitn(3, ' ');
        match (w.next(), w.next(), w.next()) {
            (Some("conn"), Some(id), Some(record)) => {
                let id = number::<u64>(id, false)
                    .ok_or_else(|| violation(line, "the connection id is not a number"))?;
                if record.contains(' ') {
                    return Err(violation(line, "more fields than `conn ID RECORD`"));
                }
                let record = record.parse::<ProtocolInfo>().map_err(|e| {
                    violation(line, &format!("the record is not valid: {}", e.message()))
                })?;
                Ok(Self::Conn { id, record })
            }
            _ => Err(violation(line, "expected `conn ID RECORD`")),
        }
    }
}

impl LineMessage for FromWorker {
    fn encode_into(&self, out: &mut String) {
        let _ = match self {
            Self::Pid(pid) => write!(out, "pid {pid}"),
            Self::Redeemed(id) => write!(out, "ok {id}"),
            Self::Failed { id, error } => {
                let _ = write!(out, "fail {id} ");
                error.encode_into(out);
                Ok(())
            }
            Self::Done(id) => write!(out, "done {id}"),
            Self::Error(error) => {
                out.push_str("error ");
                error.encode_into(out);
                Ok(())
            }
        };
        out.push('\n');
    }

    fn parse(line: &str) -> Result<Self, Error> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let id = || {
            number::<u64>(rest, false)
                .ok_or_else(|| violation(line, &format!("expected `{word} ID`")))
        };
        match word {
            "pid" => number::<u32>(rest, false)
                .filter(|&p| p != 0)
                .map(Self::Pid)
                .ok_or_else(|| violation(line, "expected `pid PID` with a pid above 0")),
            "ok" => id().map(Self::Redeemed),
            "done" => id().map(Self::Done),
            "fail" => {
                let (id, fields) = rest
                    .split_once(' ')
                    .ok_or_else(|| violation(line, "expected `fail ID CODE KIND [MESSAGE]`"))?;
                let id = number::<u64>(id, false)
                    .ok_or_else(|| violation(line, "the connection id is not a number"))?;
                Ok(Self::Failed {
                    id,
                    error: parse_report(line, fields)?,
                })
            }
            "error" => parse_report(line, rest).map(Self::Error),
            _ => Err(violation(
                line,
                "expected one of `pid`, `ok`, `fail`, `done`, `error`",
            )),
        }
    }

    /// `ok ID` and `done ID`, two lines per connection, are read straight from the bytes (no
    /// UTF-8 validation, no splitting: a prefix and digits); every other line, and one of
    /// these that is not well formed (an id too large, a second field), goes to
    /// [`parse`](LineMessage::parse) through the default's UTF-8 check, so the result and
    /// every error are the same.
    fn parse_bytes(line: &[u8]) -> Result<Self, Error> {
        let fast = if let Some(id) = line.strip_prefix(b"ok ") {
            decimal_u64(id).map(Self::Redeemed)
        } else if let Some(id) = line.strip_prefix(b"done ") {
            decimal_u64(id).map(Self::Done)
        } else {
            None
        };
        match fast {
            Some(message) => Ok(message),
            None => Self::parse(utf8(line)?),
        }
    }
}

/// The [`ErrorReport`] `text` of `line`.
fn parse_report(line: &str, text: &str) -> Result<ErrorReport, Error> {
    ErrorReport::parse(text).map_err(|e| violation(line, e.message()))
}

/// A [`ProtocolViolation`](ErrorKind::ProtocolViolation) naming the line (its start) and what
/// is wrong with it.
fn violation(line: &str, what: &str) -> Error {
    let shown: String = line.chars().take(48).collect();
    let cut = if shown.len() < line.len() { "..." } else { "" };
    Error::new(
        ErrorKind::ProtocolViolation,
        format!("{shown:?}{cut} is not a line of the sockdup handoff protocol: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;
    use proptest::prelude::*;

    fn record() -> ProtocolInfo {
        let mut r = catalog::base_entries()[0].clone();
        r.service_flags3 = 4242;
        r.service_flags4 = 7;
        r.provider_reserved = 99;
        r
    }

    fn report() -> ErrorReport {
        ErrorReport::of(&Error::new(
            ErrorKind::AlreadyRedeemed,
            "this record was already redeemed",
        ))
    }

    #[test]
    fn a_batch_of_conn_lines_is_what_encode_into_writes() {
        let (mut text, mut bytes_text) = (TextEncoder::new(), TextEncoder::new());
        let (mut fast, mut slow, mut bytes) = (String::new(), String::new(), Vec::new());
        for (id, ticket) in [
            (0u64, 1u32),
            (7, 2),
            (u64::MAX, 0xffff_ffff),
            (8, 0),
            (10, 3),
            (1_000_000_007, 4),
        ] {
            let mut r = record();
            r.provider_reserved = ticket;
            ToWorker::encode_conn_into(id, &r, &mut text, &mut fast);
            ToWorker::encode_conn_bytes_into(id, &r, &mut bytes_text, &mut bytes);
            ToWorker::Conn { id, record: r }.encode_into(&mut slow);
        }
        assert_eq!(fast, slow);
        assert_eq!(bytes, slow.into_bytes());
    }

    #[test]
    fn every_message_round_trips() {
        let conn = ToWorker::Conn {
            id: u64::MAX,
            record: record(),
        };
        let line = conn.encode();
        assert!(
            line.starts_with(&format!("conn {} sockdup1:", u64::MAX)),
            "{line}"
        );
        assert_eq!(ToWorker::parse(line.trim_end_matches('\n')).unwrap(), conn);
        for m in [
            FromWorker::Pid(42),
            FromWorker::Pid(u32::MAX),
            FromWorker::Redeemed(0),
            FromWorker::Done(u64::MAX),
            FromWorker::Failed {
                id: 7,
                error: report(),
            },
            FromWorker::Failed {
                id: 8,
                error: ErrorReport {
                    kind: "injected".into(),
                    code: -5,
                    message: String::new(),
                },
            },
            FromWorker::Error(report()),
        ] {
            let line = m.encode();
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line:?}"
            );
            assert_eq!(FromWorker::parse(line.trim_end_matches('\n')).unwrap(), m);
        }
        assert_eq!(
            FromWorker::Failed {
                id: 3,
                error: report()
            }
            .encode(),
            "fail 3 10022 already-redeemed this record was already redeemed\n"
        );
    }

    #[test]
    fn garbage_is_a_protocol_violation() {
        for bad in [
            "",
            "hello world",
            "pid",
            "pid x",
            "pid 0",
            "pid 1 2",
            "pid +1",
            "pid  1",
            "pid 99999999999",
            "ok",
            "ok -1",
            "ok 1 2",
            "done x",
            "fail 1",
            "fail 1 10022",
            "fail x 10022 invalid-argument",
            "fail 1 x invalid-argument",
            "fail 1 10022 Not-A-Kind",
            "error",
            "error 10050",
            "error x protocol-violation",
            "OK 1",
        ] {
            let e = FromWorker::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ProtocolViolation, "{bad:?}: {e}");
        }
        let good = ToWorker::Conn {
            id: 1,
            record: record(),
        }
        .encode();
        let good = good.trim_end_matches('\n');
        for bad in [
            "",
            "conn",
            "conn 1",
            "conn x sockdup1:AAAA",
            "conn 1 notarecord",
            "conn 1 sockdup1:!!!",
            &format!("{good} extra"),
            &good.replacen("conn", "CONN", 1),
            "ok 1",
        ] {
            let e = ToWorker::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ProtocolViolation, "{bad:?}: {e}");
        }
    }

    /// What `parse_bytes` must give for `line`: the text parser's answer after a UTF-8 check.
    fn by_text(line: &[u8]) -> Result<FromWorker, (ErrorKind, String)> {
        let text = std::str::from_utf8(line).map_err(|_| {
            (
                ErrorKind::ProtocolViolation,
                "received a line that is not UTF-8: the other side does not speak this protocol"
                    .to_owned(),
            )
        })?;
        FromWorker::parse(text).map_err(|e| (e.kind(), e.message().to_owned()))
    }

    fn by_bytes(line: &[u8]) -> Result<FromWorker, (ErrorKind, String)> {
        FromWorker::parse_bytes(line).map_err(|e| (e.kind(), e.message().to_owned()))
    }

    #[test]
    fn the_byte_parser_gives_what_the_text_parser_gives() {
        let huge = format!("ok {}", "9".repeat(5000));
        let lines: Vec<&[u8]> = vec![
            b"ok 0",
            b"ok 007",
            b"done 18446744073709551615",
            b"ok 18446744073709551616",
            b"done 99999999999999999999999",
            huge.as_bytes(),
            b"ok",
            b"ok ",
            b"ok  1",
            b"ok 1 ",
            b"ok +1",
            b"ok -1",
            b"ok 1 2",
            b"ok 1\r",
            b"ok \xff",
            b"ok 1\xff",
            b"\xff\xfe",
            b"done",
            b"done x",
            b"OK 1",
            b"okay 1",
            b"ok\t1",
            b"ok \x001",
            b"",
            b" ",
            b"pid 42",
            b"fail 1 10022 already-redeemed gone",
            b"error 10050 protocol-violation \xc3\xa9",
        ];
        for line in lines {
            let got = by_bytes(line);
            assert_eq!(got, by_text(line), "{:?}", String::from_utf8_lossy(line));
            if let Err((kind, _)) = got {
                assert_eq!(kind, ErrorKind::ProtocolViolation);
            }
        }
        assert_eq!(by_bytes(b"ok 12"), Ok(FromWorker::Redeemed(12)));
        assert_eq!(by_bytes(b"done 0"), Ok(FromWorker::Done(0)));
    }

    #[test]
    fn a_line_buffer_reads_answers_cut_anywhere_and_refuses_garbage_and_huge_lines() {
        use crate::line::LineBuffer;
        let stream = b"pid 7\nok 1\ndone 1\nok 18446744073709551615\r\n";
        for cut in 0..stream.len() {
            let mut b = LineBuffer::new(64);
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                b.extend(part);
                while let Some(m) = b.next_message::<FromWorker>().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(
                got,
                vec![
                    FromWorker::Pid(7),
                    FromWorker::Redeemed(1),
                    FromWorker::Done(1),
                    FromWorker::Redeemed(u64::MAX)
                ],
                "cut at {cut}"
            );
        }
        let mut b = LineBuffer::new(64);
        b.extend(b"ok 1\n\xff\xff\n");
        assert_eq!(
            b.next_message::<FromWorker>().unwrap(),
            Some(FromWorker::Redeemed(1))
        );
        let e = b.next_message::<FromWorker>().unwrap_err();
        assert!(e.message().contains("not UTF-8"), "{e}");
        // A line that never ends: refused once past the bound, before its end arrives.
        let mut b = LineBuffer::new(64);
        b.extend(b"ok ");
        b.extend(&[b'1'; 100]);
        let e = b.next_message::<FromWorker>().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ProtocolViolation);
        assert!(e.message().contains("longer than 64 bytes"), "{e}");
    }

    proptest! {
        #[test]
        fn the_byte_parser_agrees_with_the_text_parser(
            line in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assert_eq!(by_bytes(&line), by_text(&line));
        }

        #[test]
        fn the_byte_parser_agrees_on_near_misses(
            word in prop::sample::select(vec!["ok ", "done ", "ok", "done", "pid "]),
            rest in "[ 0-9+\\-\r]{0,25}",
        ) {
            let line = format!("{word}{rest}");
            prop_assert_eq!(by_bytes(line.as_bytes()), by_text(line.as_bytes()));
        }

        #[test]
        fn parse_never_panics(line in "\\PC{0,200}") {
            let _ = FromWorker::parse(&line);
            let _ = ToWorker::parse(&line);
        }

        #[test]
        fn parse_never_panics_on_near_misses(
            word in prop::sample::select(vec!["pid", "ok", "fail", "done", "error", "conn"]),
            rest in "[ 0-9a-z:+-]{0,40}",
        ) {
            let line = format!("{word} {rest}");
            if let Ok(m) = FromWorker::parse(&line) {
                prop_assert_eq!(FromWorker::parse(m.encode().trim_end_matches('\n')).unwrap(), m);
            }
            let _ = ToWorker::parse(&line);
        }
    }
}
