//! Bounded lines: the one framing of every sockdup line protocol (handoff, takeover, the demo),
//! and the trait their typed messages implement.
//!
//! A line is UTF-8 text ended by `\n` (a `\r` before it is dropped). A line longer than the
//! reader's bound, or one that is not UTF-8, is an error of kind
//! [`ProtocolViolation`](crate::ErrorKind::ProtocolViolation), never a silent skip: the reader
//! says so at once, so the side that reads can tell the other and stop waiting for it.
//!
//! [`LineBuffer`] is sans-I/O (bytes in, lines out), for event loops that read whatever is ready;
//! [`LineReader`] wraps any [`Read`] for code that blocks.
//!
//! An error crosses every line protocol the same way, as the line part [`ErrorReport`]
//! (`CODE KIND [MESSAGE]`), rebuilt on the other side with [`Error::remote`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Read};

use crate::error::{Error, ErrorKind};

/// The default bound of a line: 64 KiB, far above the longest legitimate line (a takeover of
/// many listeners, each record ~850 bytes of text, is sent as one line per listener).
pub const MAX_LINE: usize = 64 * 1024;

/// A typed message of a line protocol.
pub trait LineMessage: Sized {
    /// Appends the message to `out`, with its `\n`.
    fn encode_into(&self, out: &mut String);

    /// Parses one line (without its `\n`).
    ///
    /// # Errors
    /// [`ErrorKind::ProtocolViolation`] (or a more precise kind) naming what is wrong.
    fn parse(line: &str) -> Result<Self, Error>;

    /// Parses one line as it was read (without its `\n`): by default, the line as UTF-8 text
    /// to [`parse`](Self::parse). A protocol whose most frequent lines are ASCII may read those
    /// straight from the bytes, and must then give what this default gives for every line.
    ///
    /// # Errors
    /// [`ErrorKind::ProtocolViolation`] for a line that is not UTF-8; `parse`'s errors.
    fn parse_bytes(line: &[u8]) -> Result<Self, Error> {
        Self::parse(utf8(line)?)
    }

    /// The message as one line, with its `\n`.
    fn encode(&self) -> String {
        let mut out = String::new();
        self.encode_into(&mut out);
        out
    }
}

/// The longest message an [`ErrorReport`] carries: 16 KiB, so that a report stays well inside
/// [`MAX_LINE`] even when its message lists a thousand listener names. [`ErrorReport::of`] cuts
/// a longer one at a character boundary, ending it in `...`; [`ErrorReport::parse`] refuses one.
pub const MAX_REPORT_MESSAGE: usize = MAX_LINE / 4;

/// An error as it crosses a line protocol, from one process to another: the line part
/// `CODE KIND [MESSAGE]` (the Winsock code in decimal, the kind's stable
/// [`name`](ErrorKind::name), the message on one line), the same in every sockdup line protocol
/// (handoff `fail` and `error`, takeover `error`, demo `err`, the test peer's `err`).
///
/// [`of`](Self::of) makes the report of an error, [`encode_into`](Self::encode_into) writes it,
/// [`parse`](Self::parse) reads it back and [`to_error`](Self::to_error) rebuilds the error
/// with [`Error::remote`]: a kind this build does not know (or whose code disagrees) arrives as
/// [`ErrorKind::Remote`] with its code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReport {
    /// [`ErrorKind::name`] of the error (a token of `a-z`, `0-9` and `-`).
    pub kind: String,
    /// [`Error::code`].
    pub code: i32,
    /// [`Error::message`] on one line, at most [`MAX_REPORT_MESSAGE`] bytes.
    pub message: String,
}

impl ErrorReport {
    /// The report of `error`: its kind's name, its code, and its message made one line (control
    /// characters become spaces, surrounding spaces are dropped) and cut to
    /// [`MAX_REPORT_MESSAGE`] bytes at a character boundary (ending in `...`).
    pub fn of(error: &Error) -> Self {
        Self {
            kind: error.kind().name().to_owned(),
            code: error.code(),
            message: one_bounded_line(error.message()).trim().to_owned(),
        }
    }

    /// The error reported, as this process's [`Error`] ([`Error::remote`]).
    pub fn to_error(&self) -> Error {
        Error::remote(&self.kind, self.code, self.message.clone())
    }

    /// Appends `CODE KIND[ MESSAGE]` to `out` (no line end). A message that is not one bounded
    /// line (a report not made by [`of`](Self::of) or [`parse`](Self::parse)) is made one.
    pub fn encode_into(&self, out: &mut String) {
        let _ = write!(out, "{} {}", self.code, self.kind);
        if !self.message.is_empty() {
            out.push(' ');
            out.push_str(&one_bounded_line(&self.message));
        }
    }

    /// Parses `CODE KIND [MESSAGE]`: a decimal code (digits, a leading `-` at most), a kind name
    /// (1 to 64 of `a-z`, `0-9`, `-`), and a message of at most [`MAX_REPORT_MESSAGE`] bytes
    /// without control characters.
    ///
    /// # Errors
    /// [`ErrorKind::ProtocolViolation`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |what: &str| {
            Error::new(
                ErrorKind::ProtocolViolation,
                format!("expected an error as `CODE KIND [MESSAGE]`: {what}"),
            )
        };
        let mut w = text.splitn(3, ' ');
        let code = w
            .next()
            .and_then(|c| number::<i32>(c, true))
            .ok_or_else(|| bad("the error code is not a decimal number"))?;
        let kind = w
            .next()
            .filter(|k| is_kind_name(k))
            .ok_or_else(|| bad("the error kind is not a kind's name (a-z, 0-9, -)"))?;
        let message = w.next().unwrap_or("");
        if message.len() > MAX_REPORT_MESSAGE {
            return Err(bad(&format!(
                "the error message is longer than {MAX_REPORT_MESSAGE} bytes"
            )));
        }
        if message.chars().any(char::is_control) {
            return Err(bad("the error message holds a control character"));
        }
        Ok(Self {
            kind: kind.to_owned(),
            code,
            message: message.to_owned(),
        })
    }
}

impl From<&Error> for ErrorReport {
    fn from(error: &Error) -> Self {
        Self::of(error)
    }
}

/// `message` with each control character as a space, cut at a character boundary to
/// [`MAX_REPORT_MESSAGE`] bytes (ending in `...` where cut).
fn one_bounded_line(message: &str) -> Cow<'_, str> {
    const CUT: &str = "...";
    if message.len() <= MAX_REPORT_MESSAGE && !message.chars().any(char::is_control) {
        return Cow::Borrowed(message);
    }
    let cut = message.len() > MAX_REPORT_MESSAGE;
    let room = if cut {
        MAX_REPORT_MESSAGE - CUT.len()
    } else {
        MAX_REPORT_MESSAGE
    };
    let mut out = String::with_capacity(MAX_REPORT_MESSAGE.min(message.len()));
    for c in message.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > room {
            break;
        }
        out.push(c);
    }
    if cut {
        out.push_str(CUT);
    }
    Cow::Owned(out)
}

/// Whether `text` can be a kind's name: 1 to 64 of `a-z`, `0-9` and `-`.
fn is_kind_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A decimal number of only ASCII digits (and a leading `-` if `signed`): no `+`, no spaces.
pub(crate) fn number<T: std::str::FromStr>(text: &str, signed: bool) -> Option<T> {
    let digits = if signed {
        text.strip_prefix('-').unwrap_or(text)
    } else {
        text
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A decimal `u64` of only ASCII digits (no sign, no spaces), read from bytes: what
/// [`number`] gives for the same text, without UTF-8 validation; `None` for anything else or
/// an overflow.
pub(crate) fn decimal_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in bytes {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(n)
}

/// A line's bytes as text.
///
/// # Errors
/// [`ErrorKind::ProtocolViolation`] if they are not UTF-8.
pub(crate) fn utf8(line: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(line).map_err(|_| {
        Error::new(
            ErrorKind::ProtocolViolation,
            "received a line that is not UTF-8: the other side does not speak this protocol",
        )
    })
}

/// Bytes in, bounded lines out.
#[derive(Debug)]
pub struct LineBuffer {
    /// Bytes read, `start..end` not yet taken as lines; past `end`, initialised space that
    /// reads fill (kept, so it is zeroed once, not at every read).
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    start: usize,
    /// Where the bytes read so far end.
    end: usize,
    /// How far from `start` no `\n` has been found yet (so each byte is searched once).
    scanned: usize,
    max: usize,
}

/// How much one [`LineBuffer::read_from`] asks for: a read that brings less emptied a pipe or
/// socket that was not closed.
pub const READ_CHUNK: usize = 8192;

impl LineBuffer {
    /// A buffer whose lines may be at most `max` bytes long (without the `\n`).
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            scanned: 0,
            max: max.max(1),
        }
    }

    /// Adds bytes that arrived.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.make_room(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Reads once from `reader` (up to 8 KiB) into the buffer; returns how many bytes came
    /// (0 at end of input). `WouldBlock` and `Interrupted` are returned as they are.
    ///
    /// # Errors
    /// The reader's.
    pub fn read_from<R: Read + ?Sized>(&mut self, reader: &mut R) -> io::Result<usize> {
        self.make_room(READ_CHUNK);
        let n = reader.read(&mut self.buf[self.end..self.end + READ_CHUNK])?;
        self.end += n.min(READ_CHUNK);
        Ok(n)
    }

    /// The next complete line, if one is buffered.
    ///
    /// # Errors
    /// [`ErrorKind::ProtocolViolation`] for a line longer than the bound (as soon as more than
    /// the bound has arrived without a `\n`) or one that is not UTF-8. After an error the
    /// stream is out of step: stop reading it.
    pub fn next_line(&mut self) -> Result<Option<String>, Error> {
        Ok(self.take_line()?.map(str::to_owned))
    }

    /// The next complete line, parsed as `M` (without copying the line).
    ///
    /// # Errors
    /// As [`next_line`](Self::next_line), and `M`'s parse errors.
    pub fn next_message<M: LineMessage>(&mut self) -> Result<Option<M>, Error> {
        self.take_line_bytes()?.map(M::parse_bytes).transpose()
    }

    /// Bytes buffered after the last complete line (a line cut short by the end of input).
    pub fn partial(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Takes the next complete line out of the buffer, as text without its line end.
    fn take_line(&mut self) -> Result<Option<&str>, Error> {
        self.take_line_bytes()?.map(utf8).transpose()
    }

    /// Takes the next complete line out of the buffer, as bytes without its line end.
    fn take_line_bytes(&mut self) -> Result<Option<&[u8]>, Error> {
        let pending = &self.buf[self.start..self.end];
        let Some(pos) = memchr::memchr(b'\n', &pending[self.scanned..]) else {
            self.scanned = pending.len();
            if pending.len() > self.max {
                return Err(too_long(self.max));
            }
            return Ok(None);
        };
        let len = self.scanned + pos;
        if len > self.max {
            return Err(too_long(self.max));
        }
        let from = self.start;
        self.start += len + 1;
        self.scanned = 0;
        let mut line = &self.buf[from..from + len];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        Ok(Some(line))
    }

    /// Moves the unread bytes to the front, and makes sure `more` bytes fit after them.
    fn make_room(&mut self, more: usize) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + more {
            self.buf.resize(self.end + more, 0);
        }
    }
}

fn too_long(max: usize) -> Error {
    Error::new(
        ErrorKind::ProtocolViolation,
        format!(
            "received a line longer than {max} bytes: the other side does not speak this protocol"
        ),
    )
}

/// A blocking reader of bounded lines over any [`Read`].
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: LineBuffer,
}

impl<R: Read> LineReader<R> {
    /// Lines of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: LineBuffer::new(max),
        }
    }

    /// The next line, or `None` at the end of input (a last line without `\n` is dropped: the
    /// other side stopped mid-message).
    ///
    /// # Errors
    /// As [`LineBuffer::next_line`]; a read error becomes an [`Error`] from
    /// [`Error::from_errno`] (a read timeout: [`ErrorKind::PeerTimedOut`]).
    pub fn read_line(&mut self) -> Result<Option<String>, Error> {
        loop {
            if let Some(line) = self.buf.next_line()? {
                return Ok(Some(line));
            }
            match self.buf.read_from(&mut self.inner) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Error::new(
                        ErrorKind::PeerTimedOut,
                        "the other side did not send a line in time",
                    )
                    .with_source(e));
                }
                Err(e) => return Err(Error::from_errno(e, "reading a line")),
            }
        }
    }

    /// The next line parsed as `M`, or `None` at the end of input.
    ///
    /// # Errors
    /// As [`read_line`](Self::read_line), and `M`'s parse errors.
    pub fn read_message<M: LineMessage>(&mut self) -> Result<Option<M>, Error> {
        self.read_line()?.map(|l| M::parse(&l)).transpose()
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, mutably (reading from it directly skips buffered bytes).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The underlying reader; bytes already buffered are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_lines_across_reads_and_drops_cr() {
        let mut b = LineBuffer::new(16);
        b.extend(b"ok 1\r\nok");
        assert_eq!(b.next_line().unwrap().as_deref(), Some("ok 1"));
        assert_eq!(b.next_line().unwrap(), None);
        b.extend(b" 2\n\n");
        assert_eq!(b.next_line().unwrap().as_deref(), Some("ok 2"));
        assert_eq!(b.next_line().unwrap().as_deref(), Some(""));
        assert_eq!(b.next_line().unwrap(), None);
        assert!(b.partial().is_empty());
    }

    #[test]
    fn an_oversized_line_is_an_error_before_its_end_arrives() {
        let mut b = LineBuffer::new(8);
        b.extend(b"12345678");
        assert_eq!(b.next_line().unwrap(), None);
        b.extend(b"9");
        let e = b.next_line().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ProtocolViolation);
        assert!(e.message().contains("longer than 8 bytes"), "{e}");
        let mut b = LineBuffer::new(8);
        b.extend(b"123456789\n");
        assert_eq!(
            b.next_line().unwrap_err().kind(),
            ErrorKind::ProtocolViolation
        );
        let mut b = LineBuffer::new(8);
        b.extend(b"12345678\n");
        assert_eq!(b.next_line().unwrap().as_deref(), Some("12345678"));
    }

    #[test]
    fn non_utf8_is_an_error() {
        let mut b = LineBuffer::new(8);
        b.extend(b"\xff\n");
        assert_eq!(
            b.next_line().unwrap_err().kind(),
            ErrorKind::ProtocolViolation
        );
    }

    #[test]
    fn the_blocking_reader_ends_at_eof() {
        let mut r = LineReader::new(&b"a\nb\nc"[..], 8);
        assert_eq!(r.read_line().unwrap().as_deref(), Some("a"));
        assert_eq!(r.read_line().unwrap().as_deref(), Some("b"));
        assert_eq!(r.read_line().unwrap(), None);
        let mut r = LineReader::new(&[b'x'; 100][..], 8);
        assert_eq!(
            r.read_line().unwrap_err().kind(),
            ErrorKind::ProtocolViolation
        );
    }

    fn report() -> ErrorReport {
        ErrorReport::of(&Error::new(
            ErrorKind::AlreadyRedeemed,
            "this record was already redeemed",
        ))
    }

    fn encoded(r: &ErrorReport) -> String {
        let mut out = String::new();
        r.encode_into(&mut out);
        out
    }

    #[test]
    fn a_report_round_trips_and_rebuilds_the_error_with_its_kind_and_code() {
        let r = report();
        assert_eq!(
            encoded(&r),
            "10022 already-redeemed this record was already redeemed"
        );
        assert_eq!(ErrorReport::parse(&encoded(&r)).unwrap(), r);
        let e = r.to_error();
        assert_eq!(e.kind(), ErrorKind::AlreadyRedeemed);
        assert_eq!(e.code(), 10022);
        assert_eq!(e.message(), "this record was already redeemed");
        for kind in ErrorKind::ALL.iter().copied() {
            let e = Error::with_code(kind, kind.code().unwrap_or(-7), "x");
            let back = ErrorReport::parse(&encoded(&ErrorReport::of(&e)))
                .unwrap()
                .to_error();
            assert_eq!((back.kind(), back.code()), (kind, e.code()), "{kind:?}");
        }
        let bare = ErrorReport {
            kind: "injected".into(),
            code: -5,
            message: String::new(),
        };
        assert_eq!(encoded(&bare), "-5 injected");
        assert_eq!(ErrorReport::parse("-5 injected").unwrap(), bare);
        assert_eq!(ErrorReport::from(&r.to_error()), r);
    }

    #[test]
    fn an_unknown_kind_or_a_kind_with_another_code_arrives_as_remote_with_its_code() {
        let unknown = ErrorReport::parse("10055 from-a-newer-build x").unwrap();
        let e = unknown.to_error();
        assert_eq!(
            (e.kind(), e.code(), e.message()),
            (ErrorKind::Remote, 10055, "x")
        );
        let e = ErrorReport::parse("1 unknown-listener no")
            .unwrap()
            .to_error();
        assert_eq!((e.kind(), e.code()), (ErrorKind::Remote, 1));
    }

    #[test]
    fn a_report_is_one_bounded_line() {
        let long = format!("  two\nlines\tand\r {}", "é".repeat(MAX_REPORT_MESSAGE));
        let r = ErrorReport::of(&Error::new(ErrorKind::Os, long));
        assert!(r.message.len() <= MAX_REPORT_MESSAGE, "{}", r.message.len());
        assert!(r.message.starts_with("two lines and  é"), "{}", r.message);
        assert!(r.message.ends_with("é..."), "cut at a character boundary");
        assert_eq!(ErrorReport::parse(&encoded(&r)).unwrap(), r);
        assert!(encoded(&r).len() < MAX_LINE);
        let r = ErrorReport::of(&Error::new(ErrorKind::Os, "a\u{1}b\u{85}c\n"));
        assert_eq!(r.message, "a b c");
        // A report built by hand is still written as one bounded line.
        let by_hand = ErrorReport {
            message: format!("x\ny{}", "z".repeat(2 * MAX_REPORT_MESSAGE)),
            ..report()
        };
        let line = encoded(&by_hand);
        assert!(!line.contains('\n') && line.ends_with("z..."), "{line:.40}");
        assert!(ErrorReport::parse(&line).unwrap().message.len() <= MAX_REPORT_MESSAGE);
    }

    #[test]
    fn garbage_is_a_protocol_violation_naming_what_is_wrong() {
        for (bad, what) in [
            ("", "code"),
            ("x invalid-argument", "code"),
            ("+1 invalid-argument", "code"),
            (" 1 invalid-argument", "code"),
            ("1.0 invalid-argument", "code"),
            ("99999999999 invalid-argument", "code"),
            ("10022", "kind"),
            ("10022 ", "kind"),
            ("10022  invalid-argument", "kind"),
            ("10022 Not-A-Kind", "kind"),
            ("10022 not_a_kind m", "kind"),
            (&format!("10022 {}", "k".repeat(65)), "kind"),
            ("10022 invalid-argument two\tfields", "control"),
            (
                &format!("10022 os {}", "m".repeat(MAX_REPORT_MESSAGE + 1)),
                "longer",
            ),
        ] {
            let e = ErrorReport::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ProtocolViolation, "{bad:?}: {e}");
            assert!(e.message().contains(what), "{bad:?}: {e}");
        }
        let most = format!("10022 os {}", "m".repeat(MAX_REPORT_MESSAGE));
        assert_eq!(
            ErrorReport::parse(&most).unwrap().message.len(),
            MAX_REPORT_MESSAGE
        );
    }

    proptest! {
        #[test]
        fn parsing_a_report_never_panics(text in "\\PC{0,200}", near in "-?[0-9]{1,12} [a-zA-Z_-]{0,8}[ -~\t]{0,40}") {
            let _ = ErrorReport::parse(&text);
            if let Ok(r) = ErrorReport::parse(&near) {
                prop_assert_eq!(ErrorReport::parse(&encoded(&r)).unwrap(), r);
            }
        }

        #[test]
        fn any_error_crosses_as_one_line_with_its_kind_and_code(
            kind in prop::sample::select(ErrorKind::ALL.to_vec()),
            code in any::<i32>(),
            message in "\\PC{0,300}|[\\x00-\\x{ff}]{0,100}",
        ) {
            let e = Error::with_code(kind, kind.code().unwrap_or(code), message);
            let r = ErrorReport::of(&e);
            let line = encoded(&r);
            prop_assert!(!line.chars().any(char::is_control), "{:?}", line);
            let back = ErrorReport::parse(&line).unwrap();
            prop_assert_eq!(&back, &r);
            let back = back.to_error();
            prop_assert_eq!((back.kind(), back.code()), (kind, e.code()));
        }
    }

    proptest! {
        /// However the bytes arrive (in chunks of any size, through `extend` or `read_from`),
        /// the lines are those of the whole text, and what follows the last line end stays
        /// partial.
        #[test]
        fn lines_do_not_depend_on_how_the_bytes_arrive(
            text in "[a-c\\n]{0,300}",
            chunks in proptest::collection::vec(1usize..40, 1..40),
            through_read in any::<bool>(),
        ) {
            let bytes = text.as_bytes();
            let mut b = LineBuffer::new(1000);
            let mut got = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < bytes.len() {
                let n = chunks[i % chunks.len()].min(bytes.len() - at);
                if through_read {
                    let mut piece = &bytes[at..at + n];
                    prop_assert_eq!(b.read_from(&mut piece).unwrap(), n);
                } else {
                    b.extend(&bytes[at..at + n]);
                }
                while let Some(line) = b.next_line().unwrap() {
                    got.push(line);
                }
                at += n;
                i += 1;
            }
            let mut want: Vec<&str> = text.split('\n').collect();
            let rest = want.pop().unwrap_or("");
            prop_assert_eq!(got, want);
            prop_assert_eq!(b.partial(), rest.as_bytes());
        }

        #[test]
        fn any_bytes_in_any_chunks_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            cut in 0usize..512,
        ) {
            let mut b = LineBuffer::new(32);
            let cut = cut.min(bytes.len());
            b.extend(&bytes[..cut]);
            while let Ok(Some(_)) = b.next_line() {}
            b.extend(&bytes[cut..]);
            while let Ok(Some(line)) = b.next_line() {
                prop_assert!(line.len() <= 32);
            }
        }
    }
}
