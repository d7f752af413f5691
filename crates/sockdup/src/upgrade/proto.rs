//! The takeover protocol: lines of text over an `AF_UNIX` stream connection from the new
//! process to the running one's control socket.
//!
//! ```text
//! new: take 1 NAME...            version 1; the listeners it wants, by name
//! old: listener NAME RECORD      one per name, in the order asked: a duplicate for the new pid
//! old: offered                   all records sent
//!  or: error CODE MESSAGE        refused (a Winsock code and what went wrong); the end
//! new: ready                     redeemed and accepting: the old process may stop
//!  or: abort                     the new process gives up; the old one keeps serving
//! old: done                      the pid file names the new process; the old one stops
//!  or: aborted                   nothing changed
//!  or: error CODE MESSAGE        the handover could not finish; the old one keeps serving
//! ```

use sockdup_core::error::{Error, WSAEINVAL};

/// The protocol version this build speaks.
pub(crate) const VERSION: u32 = 1;

/// The longest listener name, as for systemd's `FileDescriptorName=`.
pub const MAX_NAME_LEN: usize = 255;

/// Checks that `name` can name a listener: 1 to 255 ASCII letters, digits, `.`, `_` or `-`
/// (a name travels in `LISTEN_FDNAMES`, where `:` separates names, and in this protocol's
/// lines, where spaces do).
///
/// # Errors
/// `WSAEINVAL`, saying what is wrong with the name.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "listener name {name:?} must be 1 to {MAX_NAME_LEN} characters long"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(format!(
            "listener name {name:?} contains {c:?}: use ASCII letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// A line from the new process to the old one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ToOld {
    Take(Vec<String>),
    Ready,
    Abort,
}

/// A line from the old process to the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ToNew {
    Listener(String, String),
    Offered,
    Done,
    Aborted,
    Refused(i32, String),
}

impl ToOld {
    pub(crate) fn encode(&self) -> String {
        match self {
            Self::Take(names) => format!("take {VERSION} {}\n", names.join(" ")),
            Self::Ready => "ready\n".into(),
            Self::Abort => "abort\n".into(),
        }
    }

    /// Parses a line (without its newline). A `take` of another version, or with a bad name,
    /// is an error the old process sends back as is.
    pub(crate) fn parse(line: &str) -> Result<Self, Error> {
        let mut words = line.split(' ');
        match words.next() {
            Some("take") => {
                let version = words.next().unwrap_or("");
                if version != VERSION.to_string() {
                    return Err(Error::invalid(format!(
                        "the new process speaks takeover protocol version {version:?}, this one speaks {VERSION}: \
                         run the same sockdup version on both sides"
                    )));
                }
                let names = words.map(str::to_owned).collect::<Vec<_>>();
                if names.is_empty() {
                    return Err(Error::invalid(
                        "a takeover must ask for at least one listener",
                    ));
                }
                names.iter().try_for_each(|n| check_name(n))?;
                Ok(Self::Take(names))
            }
            Some("ready") if words.next().is_none() => Ok(Self::Ready),
            Some("abort") if words.next().is_none() => Ok(Self::Abort),
            _ => Err(Error::invalid(format!(
                "{:?} is not a line of the sockdup takeover protocol",
                truncate(line)
            ))),
        }
    }
}

impl ToNew {
    pub(crate) fn encode(&self) -> String {
        match self {
            Self::Listener(name, record) => format!("listener {name} {record}\n"),
            Self::Offered => "offered\n".into(),
            Self::Done => "done\n".into(),
            Self::Aborted => "aborted\n".into(),
            // One line: a message never spans lines.
            Self::Refused(code, message) => {
                format!("error {code} {}\n", message.replace('\n', " "))
            }
        }
    }

    /// Parses a line (without its newline); `None` if it is not a line of this protocol.
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (word, rest) {
            ("listener", rest) => {
                let (name, record) = rest.split_once(' ')?;
                check_name(name).ok()?;
                (!record.is_empty() && !record.contains(' '))
                    .then(|| Self::Listener(name.into(), record.into()))
            }
            ("offered", "") => Some(Self::Offered),
            ("done", "") => Some(Self::Done),
            ("aborted", "") => Some(Self::Aborted),
            ("error", rest) => {
                let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Self::Refused(code.parse().ok()?, message.into()))
            }
            _ => None,
        }
    }
}

/// The start of a line, for messages about lines that make no sense.
pub(crate) fn truncate(line: &str) -> &str {
    match line.char_indices().nth(80) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// The error a refusal line carries, as this process's error.
pub(crate) fn refusal(old_pid: u32, code: i32, message: &str) -> Error {
    let code = if code > 0 { code } else { WSAEINVAL };
    Error::from_code(
        code,
        format!("process {old_pid} refused the takeover: {message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web", "a", "admin-v2", "x.y_z", &"n".repeat(255)] {
            check_name(good).unwrap();
        }
        for bad in ["", "a b", "a:b", "ü", "a\n", &"n".repeat(256)] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.code(), 10022);
            assert!(e.message().contains("listener name"), "{e}");
        }
    }

    #[test]
    fn lines_round_trip() {
        for l in [
            ToOld::Take(vec!["web".into(), "admin".into()]),
            ToOld::Ready,
            ToOld::Abort,
        ] {
            let text = l.encode();
            assert!(text.ends_with('\n'));
            assert_eq!(ToOld::parse(text.trim_end_matches('\n')).unwrap(), l);
        }
        for l in [
            ToNew::Listener("web".into(), "sockdup1:AAAA".into()),
            ToNew::Offered,
            ToNew::Done,
            ToNew::Aborted,
            ToNew::Refused(10036, "busy with pid 7".into()),
        ] {
            assert_eq!(ToNew::parse(l.encode().trim_end_matches('\n')).unwrap(), l);
        }
        assert_eq!(
            ToNew::parse(
                ToNew::Refused(10022, "two\nlines".into())
                    .encode()
                    .trim_end()
            ),
            Some(ToNew::Refused(10022, "two lines".into()))
        );
    }

    #[test]
    fn bad_lines() {
        for bad in [
            "",
            "take",
            "take 1",
            "take 2 web",
            "take 1 a:b",
            "ready now",
            "hello",
        ] {
            let e = ToOld::parse(bad).unwrap_err();
            assert_eq!(e.code(), 10022, "{bad}");
        }
        assert!(
            ToOld::parse("take 2 web")
                .unwrap_err()
                .message()
                .contains("version")
        );
        for bad in [
            "",
            "listener web",
            "listener a:b rec",
            "error x y",
            "done 1",
            "offered!",
        ] {
            assert_eq!(ToNew::parse(bad), None, "{bad}");
        }
        assert_eq!(truncate(&"x".repeat(200)).len(), 80);
    }
}
