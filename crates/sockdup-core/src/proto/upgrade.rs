//! The takeover protocol (`sockdup::upgrade`): lines of text over an `AF_UNIX` stream connection
//! from the new process to the running one's control socket.
//!
//! ```text
//! new: take 2 NAME...              version 2; the listeners it wants, by name
//! old: listeners COUNT RECORD      the next COUNT names, in the order asked: duplicates for the
//!                                  new pid; RECORD is the first one's, and each next one's is the
//!                                  same record with the next ticket (one line per such run)
//! old: offered                     all records sent
//!  or: error CODE KIND MESSAGE     refused (Winsock code, ErrorKind name, what went wrong); the end
//! new: ready                       redeemed and accepting: the old process may stop
//!  or: abort                       the new process gives up; the old one keeps serving
//! old: done                        the pid file names the new process; the old one stops
//!  or: aborted                     nothing changed
//!  or: error CODE KIND MESSAGE     the handover could not finish; the old one keeps serving
//! ```
//!
//! [`ToOld`] is what the new process sends, [`ToNew`] what the old one answers; both implement
//! [`LineMessage`] and are read with [`LineReader`](crate::line::LineReader) bounded by
//! [`MAX_LINE`](crate::line::MAX_LINE). A line either side cannot parse ends the takeover at once:
//! the old process answers it with an `error` line of kind
//! [`ProtocolViolation`](ErrorKind::ProtocolViolation) and closes the session (it keeps
//! serving); the new process sends `abort` and reports the violation.

use crate::error::{Error, ErrorKind};
use crate::line::{ErrorReport, LineMessage};
use crate::wire::ProtocolInfo;

/// The protocol version this build speaks (2: records travel as runs, `listeners COUNT RECORD`,
/// instead of a line each).
pub const VERSION: u32 = 2;

/// The longest listener name, as for systemd's `FileDescriptorName=`.
pub const MAX_NAME_LEN: usize = 255;

/// Checks that `name` can name a listener: 1 to 255 ASCII letters, digits, `.`, `_` or `-`
/// (a name travels in `LISTEN_FDNAMES`, where `:` separates names, and in this protocol's
/// lines, where spaces do).
///
/// # Errors
/// [`ErrorKind::BadListenerName`], saying what is wrong with the name.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::new(
            ErrorKind::BadListenerName,
            format!(
                "listener name {:?} must be 1 to {MAX_NAME_LEN} characters long",
                truncate(name)
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::new(
            ErrorKind::BadListenerName,
            format!(
                "listener name {name:?} contains {c:?}: use ASCII letters, digits, '.', '_' and '-'"
            ),
        ));
    }
    Ok(())
}

/// Checks each name ([`check_name`]), that none repeats, and that there is at least one.
///
/// # Errors
/// [`ErrorKind::BadListenerName`] for a bad or repeated name; [`ErrorKind::UnknownListener`]
/// for no name at all.
pub fn check_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
    let names = names.into_iter();
    let mut seen = std::collections::HashSet::with_capacity(names.size_hint().0);
    for name in names {
        check_name(name)?;
        if !seen.insert(name) {
            return Err(Error::new(
                ErrorKind::BadListenerName,
                format!(
                    "the listener name {name:?} is given twice: each listener needs its own name"
                ),
            ));
        }
    }
    if seen.is_empty() {
        return Err(Error::new(
            ErrorKind::UnknownListener,
            "no listener given: name at least one",
        ));
    }
    Ok(())
}

/// A line from the new process to the old one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToOld {
    /// `take VERSION NAME...`: the listeners wanted, by name (checked, unique, at least one).
    Take(Vec<String>),
    /// `ready`: redeemed and accepting; the old process may stop.
    Ready,
    /// `abort`: the new process gives up; the old one keeps serving.
    Abort,
}

/// A line from the old process to the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToNew {
    /// `listeners COUNT RECORD`: duplicates of the next `COUNT` listeners asked for (at least
    /// one), for the new process: the first's record, and each next one's is the same record
    /// with the next ticket ([`expand`]).
    Listeners(u32, ProtocolInfo),
    /// `offered`: every listener asked for was sent.
    Offered,
    /// `done`: the pid file names the new process; the old one stops.
    Done,
    /// `aborted`: the abort is done; nothing changed.
    Aborted,
    /// `error CODE KIND MESSAGE`: the takeover is refused or could not finish.
    Refused(Refusal),
}

/// An error as it crosses from the old process to the new one (`error CODE KIND MESSAGE`): the
/// one [`ErrorReport`] of every line protocol ([`Refusal::of`] one way, [`Refusal::to_error`]
/// the other).
pub type Refusal = ErrorReport;

fn violation(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::ProtocolViolation, what.to_string())
}

fn not_a_line(line: &str) -> Error {
    violation(format!(
        "{:?} is not a line of the sockdup takeover protocol",
        truncate(line)
    ))
}

impl LineMessage for ToOld {
    fn encode_into(&self, out: &mut String) {
        match self {
            Self::Take(names) => {
                out.push_str("take ");
                out.push_str(&VERSION.to_string());
                for name in names {
                    out.push(' ');
                    out.push_str(name);
                }
            }
            Self::Ready => out.push_str("ready"),
            Self::Abort => out.push_str("abort"),
        }
        out.push('\n');
    }

    /// Parses a line (without its newline).
    ///
    /// # Errors
    /// [`ErrorKind::ProtocolViolation`] for a line that is not of this protocol or a `take` of
    /// another version; [`ErrorKind::BadListenerName`] for a bad or repeated name;
    /// [`ErrorKind::UnknownListener`] for a `take` of no name. The old process sends the error
    /// back as it is.
    fn parse(line: &str) -> Result<Self, Error> {
        let mut words = line.split(' ');
        match words.next() {
            Some("take") => {
                let version = words.next().unwrap_or("");
                if version != VERSION.to_string() {
                    return Err(violation(format!(
                        "the new process speaks takeover protocol version {:?}, this one speaks {VERSION}: \
                         run the same sockdup version on both sides",
                        truncate(version)
                    )));
                }
                let names = words.map(str::to_owned).collect::<Vec<_>>();
                if names.is_empty() {
                    return Err(Error::new(
                        ErrorKind::UnknownListener,
                        "a takeover must ask for at least one listener",
                    ));
                }
                check_names(names.iter().map(String::as_str))?;
                Ok(Self::Take(names))
            }
            Some("ready") if words.next().is_none() => Ok(Self::Ready),
            Some("abort") if words.next().is_none() => Ok(Self::Abort),
            _ => Err(not_a_line(line)),
        }
    }
}

impl LineMessage for ToNew {
    fn encode_into(&self, out: &mut String) {
        match self {
            Self::Listeners(count, record) => {
                use std::fmt::Write;
                let _ = write!(out, "listeners {count} {record}");
            }
            Self::Offered => out.push_str("offered"),
            Self::Done => out.push_str("done"),
            Self::Aborted => out.push_str("aborted"),
            Self::Refused(r) => {
                out.push_str("error ");
                r.encode_into(out);
            }
        }
        out.push('\n');
    }

    /// Parses a line (without its newline). An `error` line whose kind this build does not
    /// know becomes, with [`Refusal::to_error`], an error of kind [`ErrorKind::Remote`].
    ///
    /// # Errors
    /// [`ErrorKind::ProtocolViolation`] naming what is wrong.
    fn parse(line: &str) -> Result<Self, Error> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (word, rest) {
            ("listeners", rest) => {
                let (count, record) = rest.split_once(' ').ok_or_else(|| not_a_line(line))?;
                let count = count
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        violation(format!(
                            "{:?} is not a count of listeners (1 or more)",
                            truncate(count)
                        ))
                    })?;
                let record = record.parse::<ProtocolInfo>().map_err(|e| {
                    violation(format!(
                        "the record of a run of {count} listeners does not parse: {}",
                        e.message()
                    ))
                })?;
                Ok(Self::Listeners(count, record))
            }
            ("offered", "") => Ok(Self::Offered),
            ("done", "") => Ok(Self::Done),
            ("aborted", "") => Ok(Self::Aborted),
            ("error", rest) => Refusal::parse(rest).map(Self::Refused).map_err(|e| {
                violation(format!(
                    "{:?} is not a line of the sockdup takeover protocol: {}",
                    truncate(line),
                    e.message()
                ))
            }),
            _ => Err(not_a_line(line)),
        }
    }
}

/// The `count` records of a `listeners COUNT RECORD` line: `first`, then the same record with
/// each next ticket.
pub fn expand(count: u32, first: &ProtocolInfo) -> impl Iterator<Item = ProtocolInfo> + '_ {
    (0..count).map(move |i| ProtocolInfo {
        provider_reserved: first.provider_reserved.wrapping_add(i),
        ..first.clone()
    })
}

/// The start of a line (80 characters), for messages about lines that make no sense.
pub fn truncate(line: &str) -> &str {
    match line.char_indices().nth(80) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{WSAEINPROGRESS, WSAEINVAL, WSAENETDOWN};
    use proptest::prelude::*;

    fn record() -> ProtocolInfo {
        let mut r = crate::catalog::base_entries().remove(0);
        r.service_flags3 = 4242;
        r.provider_reserved = 7;
        r
    }

    #[test]
    fn names() {
        for good in ["web", "a", "admin-v2", "x.y_z", &"n".repeat(255)] {
            check_name(good).unwrap();
        }
        for bad in ["", "a b", "a:b", "ü", "a\n", &"n".repeat(256)] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadListenerName, "{bad:?}");
            assert_eq!(e.code(), WSAEINVAL);
            assert!(e.message().contains("listener name"), "{e}");
        }
        check_names(["a", "b"]).unwrap();
        let e = check_names(["a", "a"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadListenerName);
        assert!(e.message().contains("twice"), "{e}");
        let e = check_names([]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownListener);
        assert_eq!(
            check_names(["a b"]).unwrap_err().kind(),
            ErrorKind::BadListenerName
        );
    }

    #[test]
    fn lines_round_trip() {
        for l in [
            ToOld::Take(vec!["web".into(), "admin".into()]),
            ToOld::Ready,
            ToOld::Abort,
        ] {
            let text = l.encode();
            assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
            assert_eq!(ToOld::parse(text.trim_end_matches('\n')).unwrap(), l);
        }
        assert_eq!(
            ToOld::Take(vec!["web".into()]).encode(),
            "take 2 web\n",
            "the wire form of version 2"
        );
        for l in [
            ToNew::Listeners(1, record()),
            ToNew::Listeners(1000, record()),
            ToNew::Offered,
            ToNew::Done,
            ToNew::Aborted,
            ToNew::Refused(Refusal {
                kind: ErrorKind::TakeoverInProgress.name().into(),
                code: WSAEINPROGRESS,
                message: "busy with pid 7".into(),
            }),
            ToNew::Refused(Refusal {
                kind: ErrorKind::Remote.name().into(),
                code: 10099,
                message: String::new(),
            }),
        ] {
            let text = l.encode();
            assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
            assert_eq!(ToNew::parse(text.trim_end_matches('\n')).unwrap(), l);
        }
    }

    #[test]
    fn refusals_carry_kind_code_and_message_on_one_line() {
        let e = Error::new(
            ErrorKind::AlreadyHandedOver,
            "handed to process 12\nfor good",
        );
        let line = ToNew::Refused(Refusal::of(&e)).encode();
        assert_eq!(
            line,
            "error 10022 already-handed-over handed to process 12 for good\n"
        );
        let ToNew::Refused(r) = ToNew::parse(line.trim_end()).unwrap() else {
            panic!("{line}")
        };
        let back = r.to_error();
        assert_eq!(back.kind(), ErrorKind::AlreadyHandedOver);
        assert_eq!(back.code(), WSAEINVAL);
        assert_eq!(back.message(), "handed to process 12 for good");
        // A line without a kind is refused (a kind this build does not know arrives as
        // `ErrorKind::Remote`, see `ErrorReport`).
        let e = ToNew::parse("error 10022").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ProtocolViolation);
        assert!(
            e.message().contains("takeover protocol") && e.message().contains("kind"),
            "{e}"
        );
    }

    #[test]
    fn garbage_is_refused_with_a_kind() {
        for bad in [
            "",
            "take",
            "take 1 web",
            "take 3 web",
            "ready now",
            "hello",
            "abort!",
        ] {
            let e = ToOld::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ProtocolViolation, "{bad:?}");
            assert_eq!(e.code(), WSAENETDOWN);
        }
        assert!(
            ToOld::parse("take 1 web")
                .unwrap_err()
                .message()
                .contains("version")
        );
        assert_eq!(
            ToOld::parse("take 2").unwrap_err().kind(),
            ErrorKind::UnknownListener
        );
        for bad in ["take 2 a:b", "take 2 web web", "take 2 web  admin"] {
            let e = ToOld::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadListenerName, "{bad:?}");
        }
        for bad in [
            "",
            "listener web",
            "listeners 1",
            "listeners 0 sockdup1:AAAA",
            "listeners -1 sockdup1:AAAA",
            "listeners web sockdup1:AAAA",
            "listeners 1 not-a-record",
            "listeners 1 sockdup1:!!",
            "error x y",
            "error",
            "done 1",
            "offered!",
            "hello",
        ] {
            let e = ToNew::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ProtocolViolation, "{bad:?}");
        }
        assert_eq!(truncate(&"x".repeat(200)).len(), 80);
    }

    proptest! {
        #[test]
        fn parse_never_panics(line in "\\PC{0,300}") {
            let _ = ToOld::parse(&line);
            let _ = ToNew::parse(&line);
        }

        #[test]
        fn protocol_words_then_anything_never_panic(
            word in prop::sample::select(vec!["take", "take 1", "listener", "listener web",
                "error", "error 10022", "error 10022 unknown-listener", "ready", "offered"]),
            rest in "[ -~]{0,120}",
        ) {
            let line = format!("{word} {rest}");
            let _ = ToOld::parse(&line);
            let _ = ToNew::parse(&line);
        }

        #[test]
        fn takes_and_refusals_round_trip(
            names in prop::collection::hash_set("[A-Za-z0-9._-]{1,20}", 1..8),
            code in any::<i32>(),
            message in "[ -~]{0,200}",
        ) {
            let take = ToOld::Take(names.into_iter().collect());
            prop_assert_eq!(ToOld::parse(take.encode().trim_end_matches('\n')).unwrap(), take);
            let refused = ToNew::Refused(Refusal { kind: "remote".into(), code, message });
            prop_assert_eq!(ToNew::parse(refused.encode().trim_end_matches('\n')).unwrap(), refused);
        }
    }

    #[test]
    fn a_run_expands_to_consecutive_tickets_of_one_record() {
        let first = ProtocolInfo {
            provider_reserved: u32::MAX - 1,
            ..record()
        };
        let got: Vec<u32> = expand(4, &first).map(|r| r.provider_reserved).collect();
        assert_eq!(got, [u32::MAX - 1, u32::MAX, 0, 1]);
        assert!(expand(4, &first).all(|r| ProtocolInfo {
            provider_reserved: first.provider_reserved,
            ..r
        } == first));
        assert_eq!(expand(0, &first).count(), 0);
    }
}
