//! The `hello` app: a minimal HTTP/1.1 server that answers every request with
//! `200 OK` and [`BODY`].
//!
//! - A request is its request line and header lines up to the blank line (CRLF or bare LF
//!   line ends; empty lines before a request line are skipped). Its body, framed by
//!   `Content-Length` or by `Transfer-Encoding: chunked`, is read and discarded; an
//!   `Expect: 100-continue` gets its `100 Continue` first.
//! - Connections persist: HTTP/1.1 unless the request says `Connection: close`, HTTP/1.0 only
//!   with `Connection: keep-alive`. Pipelined requests are answered in order.
//! - `HEAD` gets the headers of the `GET` answer without the body.
//! - A malformed request (bad request line, bad header line, missing or repeated `Host` in
//!   HTTP/1.1, bad or conflicting `Content-Length`, bad chunk, a head over [`MAX_HEAD`] bytes)
//!   gets `400 Bad Request` and the connection closes; an HTTP version other than 1.x gets
//!   `505`.
//! - An idle connection closes after [`IDLE_TIMEOUT`]; when the worker drains (its acceptor
//!   shuts down) idle connections close once idle for the event loop's tick (a connection
//!   just handed over gets that long to send its request) and the request in progress is
//!   answered with `Connection: close`.
//!
//! Every close after a response is graceful: the write side is shut down first and the
//! client's remaining bytes are read (for at most [`LINGER`]), so a client that sent more
//! still gets the response rather than a reset.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What every request gets.
pub(crate) const BODY: &[u8] = b"hello from sockdup\n";

/// The longest request head (request line and headers) accepted.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// The most header lines accepted in a head (and trailer lines after a chunked body).
const MAX_HEADERS: usize = 100;

/// The longest chunk-size line accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// How long a connection may stay silent (between requests, or within one) before it closes.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a close waits for the client's remaining bytes after the response.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// An error response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    BadRequest,
    VersionNotSupported,
}

impl Status {
    fn line(self) -> (u16, &'static str, &'static [u8]) {
        match self {
            Self::BadRequest => (400, "Bad Request", b"bad request\n"),
            Self::VersionNotSupported => (
                505,
                "HTTP Version Not Supported",
                b"only HTTP/1.0 and HTTP/1.1 are supported\n",
            ),
        }
    }
}

/// How a request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked,
}

/// What the server needs from a request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    head_only: bool,
    /// HTTP/1.0 (else 1.1).
    http10: bool,
    /// Close after the response.
    close: bool,
    body: Body,
    expect_continue: bool,
}

/// What the event loop does with a connection after [`Session::advance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep reading (after writing out what was added).
    More,
    /// Write out what was added, then close: gracefully (shut down the write side, read the
    /// client's remaining bytes for at most [`LINGER`]) if `linger`, else at once.
    Close { linger: bool },
}

/// Where the parser stands within a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a request head.
    Head,
    /// This many body bytes still to drop.
    Body(u64),
    /// Waiting for a chunk-size line.
    ChunkLine,
    /// This many chunk bytes still to drop.
    ChunkData(u64),
    /// Waiting for the empty line after a chunk's data.
    ChunkEnd,
    /// Waiting for the trailer lines' end; this many read so far.
    Trailers(usize),
}

/// One connection's HTTP state, without I/O: bytes go in with [`Session::feed`], responses
/// come out of [`Session::advance`]. The event loop does the reading and writing.
#[derive(Debug)]
pub(crate) struct Session {
    /// Bytes read and not yet used.
    buf: Vec<u8>,
    state: State,
    /// The request being read (its head is parsed).
    req: Option<Request>,
}

impl Session {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::new(),
            state: State::Head,
            req: None,
        }
    }

    /// Takes bytes read from the client.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether the connection is between requests with nothing of the next one read: where
    /// a drain closes it.
    pub(crate) fn idle(&self) -> bool {
        self.state == State::Head && self.buf.iter().all(|&b| b == b'\r' || b == b'\n')
    }

    /// Uses the bytes fed so far: every request they complete gets its response appended to
    /// `out` (an `Expect: 100-continue` its `100 Continue`). `draining`: answer with
    /// `Connection: close`, and close at the next request boundary.
    pub(crate) fn advance(&mut self, out: &mut Vec<u8>, draining: bool) -> Next {
        match self.run(out, draining) {
            Ok(next) => next,
            Err(status) => {
                let (code, reason, body) = status.line();
                respond(out, code, reason, body, false, Some("close"));
                self.state = State::Head;
                Next::Close { linger: true }
            }
        }
    }

    fn run(&mut self, out: &mut Vec<u8>, draining: bool) -> Result<Next, Status> {
        loop {
            match self.state {
                State::Head => {
                    let blank = self
                        .buf
                        .iter()
                        .position(|&b| b != b'\r' && b != b'\n')
                        .unwrap_or(self.buf.len());
                    // Empty lines before a request line are skipped (a lone CR may wait for its LF).
                    let skip = self.buf[..blank]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    self.buf.drain(..skip);
                    let Some(end) = head_end(&self.buf) else {
                        if self.buf.len() > MAX_HEAD {
                            return Err(Status::BadRequest);
                        }
                        if draining && self.idle() {
                            return Ok(Next::Close { linger: false });
                        }
                        return Ok(Next::More);
                    };
                    let req = parse_head(&self.buf[..end])?;
                    self.buf.drain(..end);
                    if req.expect_continue && req.body != Body::Length(0) && self.buf.is_empty() {
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    self.state = match req.body {
                        Body::Length(n) => State::Body(n),
                        Body::Chunked => State::ChunkLine,
                    };
                    self.req = Some(req);
                }
                State::Body(n) | State::ChunkData(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
                    self.buf.drain(..take);
                    let left = n - take as u64;
                    let chunk = matches!(self.state, State::ChunkData(_));
                    if left > 0 {
                        self.state = if chunk {
                            State::ChunkData(left)
                        } else {
                            State::Body(left)
                        };
                        return Ok(Next::More);
                    }
                    if chunk {
                        self.state = State::ChunkEnd;
                    } else if self.respond(out, draining) {
                        return Ok(Next::Close { linger: true });
                    }
                }
                State::ChunkLine => {
                    let Some(line) = self.line(MAX_CHUNK_LINE)? else {
                        return Ok(Next::More);
                    };
                    let size = parse_chunk_size(&line).ok_or(Status::BadRequest)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    let Some(line) = self.line(2)? else {
                        return Ok(Next::More);
                    };
                    if !line.is_empty() {
                        return Err(Status::BadRequest);
                    }
                    self.state = State::ChunkLine;
                }
                State::Trailers(k) => {
                    let Some(line) = self.line(MAX_HEAD)? else {
                        return Ok(Next::More);
                    };
                    if line.is_empty() {
                        if self.respond(out, draining) {
                            return Ok(Next::Close { linger: true });
                        }
                    } else if k + 1 > MAX_HEADERS {
                        return Err(Status::BadRequest);
                    } else {
                        self.state = State::Trailers(k + 1);
                    }
                }
            }
        }
    }

    /// Answers the request just read; whether the connection closes after it.
    fn respond(&mut self, out: &mut Vec<u8>, draining: bool) -> bool {
        self.state = State::Head;
        let Some(req) = self.req.take() else {
            return true;
        };
        let close = req.close || draining;
        let connection = if close {
            Some("close")
        } else if req.http10 {
            Some("keep-alive")
        } else {
            None
        };
        respond(out, 200, "OK", BODY, req.head_only, connection);
        close
    }

    /// A line (without its line end) taken out of `buf`, if it is all there; longer than
    /// `max` is malformed.
    fn line(&mut self, max: usize) -> Result<Option<Vec<u8>>, Status> {
        if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
        if self.buf.len() > max {
            return Err(Status::BadRequest);
        }
        Ok(None)
    }
}

/// Appends a response to `out`.
fn respond(
    out: &mut Vec<u8>,
    code: u16,
    reason: &str,
    body: &[u8],
    head_only: bool,
    connection: Option<&str>,
) {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(192);
    let _ = write!(
        head,
        "HTTP/1.1 {code} {reason}\r\nDate: {}\r\nServer: sockdup\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        http_date(SystemTime::now()),
        body.len()
    );
    if let Some(c) = connection {
        head.push_str("Connection: ");
        head.push_str(c);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// Where the head in `buf` ends (just after its blank line), if it is all there.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        let rest = &buf[i + 1..];
        if rest.starts_with(b"\r\n") {
            Some(i + 3)
        } else if rest.starts_with(b"\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// A token character (RFC 9110 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().copied().all(is_tchar)
}

/// Whether a field value holds no control character but HTAB.
fn is_field_value(s: &[u8]) -> bool {
    s.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The comma-separated elements of a list field, trimmed, lower-cased, empty ones left out.
fn list_elements(value: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
        .map(<[u8]>::to_ascii_lowercase)
}

/// Parses a request head (request line, header lines, blank line).
pub(crate) fn parse_head(head: &[u8]) -> Result<Request, Status> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (method, http10) = parse_request_line(lines.next().ok_or(Status::BadRequest)?)?;
    let mut fields = Fields::default();
    let mut count = 0usize;
    for line in lines {
        if line.is_empty() {
            continue; // the blank line that ends the head
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(Status::BadRequest);
        }
        fields.add(line)?;
    }
    fields.into_request(method == b"HEAD", http10)
}

/// The request line's method, and whether the version is HTTP/1.0 (else 1.1 or another 1.x).
fn parse_request_line(line: &[u8]) -> Result<(&[u8], bool), Status> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    if !is_token(method) || target.is_empty() || !target.iter().all(|&b| b > 0x20 && b != 0x7f) {
        return Err(Status::BadRequest);
    }
    let http10 = match version {
        b"HTTP/1.0" => true,
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => false,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(Status::VersionNotSupported);
        }
        _ => return Err(Status::BadRequest),
    };
    Ok((method, http10))
}

/// What the header fields of a request head say, as they are read.
#[derive(Debug, Default)]
struct Fields {
    hosts: usize,
    length: Option<u64>,
    /// Whether the last transfer coding is chunked, if there is a Transfer-Encoding.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Fields {
    /// Reads one header field line.
    fn add(&mut self, line: &[u8]) -> Result<(), Status> {
        if matches!(line[0], b' ' | b'\t') {
            return Err(Status::BadRequest); // an obsolete line folding
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Status::BadRequest)?;
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if !is_token(name) || !is_field_value(value) {
            return Err(Status::BadRequest);
        }
        match name.to_ascii_lowercase().as_slice() {
            b"host" => self.hosts += 1,
            b"content-length" => {
                let n = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or(Status::BadRequest)?;
                if self.length.is_some_and(|l| l != n) {
                    return Err(Status::BadRequest);
                }
                self.length = Some(n);
            }
            b"transfer-encoding" => {
                // Only the last coding frames the body; it must be chunked.
                let last = list_elements(value).last().ok_or(Status::BadRequest)?;
                self.chunked = Some(last == b"chunked");
            }
            b"connection" => {
                for option in list_elements(value) {
                    self.close |= option == b"close";
                    self.keep_alive |= option == b"keep-alive";
                }
            }
            b"expect" => {
                self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        Ok(())
    }

    /// The request these fields describe, for a HEAD request or not, of HTTP/1.0 or 1.1.
    fn into_request(self, head_only: bool, http10: bool) -> Result<Request, Status> {
        if (!http10 && self.hosts != 1) || self.hosts > 1 {
            return Err(Status::BadRequest);
        }
        let mut close = self.close;
        let body = match self.chunked {
            Some(true) if !http10 => {
                // With both, the message may have been framed differently on the way: close.
                close |= self.length.is_some();
                Body::Chunked
            }
            Some(_) => return Err(Status::BadRequest),
            None => Body::Length(self.length.unwrap_or(0)),
        };
        Ok(Request {
            head_only,
            http10,
            close: if http10 {
                !self.keep_alive || close
            } else {
                close
            },
            body,
            expect_continue: self.expect_continue && !http10,
        })
    }
}

/// The size of a chunk-size line (hex digits, then optional `;extensions`).
pub(crate) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = trim_ows(&line[..end]);
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// The IMF-fixdate of `t` (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm), for days >= 0.
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {hh:02}:{mm:02}:{ss:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Request, Status> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(http_date(t), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn heads_end_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn keep_alive_and_close() {
        let r = req("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert!(!r.close && !r.http10 && !r.head_only);
        assert_eq!(r.body, Body::Length(0));
        assert!(
            req("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(
            req("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(req("GET / HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(
            !req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(req("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().head_only);
    }

    #[test]
    fn bodies_are_framed() {
        let r =
            req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n")
                .unwrap();
        assert_eq!(r.body, Body::Length(12));
        assert!(r.expect_continue);
        let r =
            req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").unwrap();
        assert_eq!(r.body, Body::Chunked);
        assert!(!r.close);
        let r = req(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap();
        assert!(r.close);
        assert_eq!(
            req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
                .unwrap()
                .body,
            Body::Length(3)
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1 x\r\nHost: a\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
            "GET / HTTX/1.1\r\nHost: a\r\n\r\n",
            "\u{e9}\r\n\r\n",
        ] {
            assert_eq!(req(bad), Err(Status::BadRequest), "{bad:?}");
        }
        assert_eq!(
            req("GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
            Err(Status::VersionNotSupported)
        );
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"0;name=value"), Some(0));
        assert_eq!(parse_chunk_size(b"10 ; x"), Some(16));
        for bad in [&b""[..], b"x", b"-1", b"ffffffffffffffffff"] {
            assert_eq!(parse_chunk_size(bad), None);
        }
    }

    /// Feeds `input` in pieces of `step` bytes; the responses (dates blanked) and the last
    /// `Next`.
    fn session(input: &[u8], step: usize, draining: bool) -> (String, Next) {
        let mut s = Session::new();
        let mut out = Vec::new();
        let mut next = Next::More;
        for piece in input.chunks(step.max(1)) {
            s.feed(piece);
            next = s.advance(&mut out, draining);
            if next != Next::More {
                break;
            }
        }
        let text = String::from_utf8(out).unwrap();
        let undated = text
            .lines()
            .map(|l| {
                if l.starts_with("Date: ") {
                    "Date: X"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        (undated, next)
    }

    #[test]
    fn a_session_answers_pipelined_requests_however_the_bytes_are_cut() {
        let input = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;x=y\r\nabc\r\n0\r\nTrailer: t\r\n\r\n\
            HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        let (whole, next) = session(input, input.len(), false);
        assert_eq!(next, Next::Close { linger: true });
        assert_eq!(whole.matches("HTTP/1.1 200 OK").count(), 4, "{whole}");
        assert_eq!(whole.matches("hello from sockdup").count(), 3, "{whole}");
        assert!(whole.ends_with("Connection: close\n"), "{whole}");
        for step in 1..40 {
            assert_eq!(
                session(input, step, false),
                (whole.clone(), next),
                "step {step}"
            );
        }
    }

    #[test]
    fn a_session_refuses_malformed_requests_and_closes() {
        let (out, next) = session(b"GET / HTTP/1.1\r\n\r\n", 3, false);
        assert!(out.starts_with("HTTP/1.1 400 Bad Request"), "{out}");
        assert_eq!(next, Next::Close { linger: true });
        let (out, _) = session(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 100, false);
        assert!(out.starts_with("HTTP/1.1 505"), "{out}");
        let huge = vec![b'a'; MAX_HEAD + 2];
        let (out, next) = session(&huge, 1000, false);
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert_eq!(next, Next::Close { linger: true });
        let bad_chunk = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        let (out, _) = session(bad_chunk, 7, false);
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }

    #[test]
    fn a_session_continues_and_drains() {
        let (out, next) = session(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            1000,
            false,
        );
        assert_eq!(out, "HTTP/1.1 100 Continue\n");
        assert_eq!(next, Next::More);
        // Draining: the request is answered with Connection: close; an idle session closes.
        let (out, next) = session(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1000, true);
        assert!(out.contains("Connection: close"), "{out}");
        assert_eq!(next, Next::Close { linger: true });
        let mut s = Session::new();
        assert!(s.idle());
        assert_eq!(
            s.advance(&mut Vec::new(), true),
            Next::Close { linger: false }
        );
        s.feed(b"GE");
        assert!(!s.idle());
        assert_eq!(s.advance(&mut Vec::new(), true), Next::More);
        // HTTP/1.0 keep-alive is said so.
        let (out, next) = session(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            5,
            false,
        );
        assert!(out.contains("Connection: keep-alive"), "{out}");
        assert_eq!(next, Next::More);
    }
}
