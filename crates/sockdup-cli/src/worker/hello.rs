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
//!   shuts down) idle connections close at once and the request in progress is answered with
//!   `Connection: close`.
//!
//! Every close after a response is graceful: the write side is shut down first and the
//! client's remaining bytes are read (for at most [`LINGER`]), so a client that sent more
//! still gets the response rather than a reset.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sockdup::handoff::Stream;

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

/// How often a waiting read wakes to look at the drain flag and the idle time.
const TICK: Duration = Duration::from_millis(200);

/// How long a close waits for the client's remaining bytes after the response.
const LINGER: Duration = Duration::from_secs(1);

/// Why a connection stops.
#[derive(Debug)]
enum Stop {
    /// The client closed, went idle too long, or the worker drains between requests.
    Quiet,
    /// The request is malformed: answer this and close.
    Bad(Status),
    /// The connection failed.
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

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

/// Serves HTTP requests on `stream` until the client closes, a request asks to close, a
/// request is malformed, the connection idles out, or `draining` is set between requests.
///
/// # Errors
/// The connection's I/O errors.
pub(crate) fn serve(stream: &mut Stream, draining: &AtomicBool) -> io::Result<()> {
    set_read_timeout(stream, Some(TICK))?;
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        last_data: Instant::now(),
    };
    loop {
        match conn.exchange(draining) {
            Ok(true) => {}
            Ok(false) => {
                conn.linger();
                return Ok(());
            }
            Err(Stop::Quiet) => return Ok(()),
            Err(Stop::Bad(status)) => {
                let (code, reason, body) = status.line();
                conn.respond(code, reason, body, false, Some("close"))?;
                conn.linger();
                return Ok(());
            }
            Err(Stop::Io(e)) => return Err(e),
        }
    }
}

struct Conn<'a> {
    stream: &'a mut Stream,
    /// Bytes read and not yet used.
    buf: Vec<u8>,
    last_data: Instant,
}

impl Conn<'_> {
    /// One request and its response; whether the connection stays open.
    fn exchange(&mut self, draining: &AtomicBool) -> Result<bool, Stop> {
        let head = self.read_head(draining)?;
        let req = parse_head(&head).map_err(Stop::Bad)?;
        if req.expect_continue && req.body != Body::Length(0) && self.buf.is_empty() {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        match req.body {
            Body::Length(n) => self.discard(n)?,
            Body::Chunked => self.discard_chunked()?,
        }
        let close = req.close || draining.load(Ordering::SeqCst);
        let connection = if close {
            Some("close")
        } else if req.http10 {
            Some("keep-alive")
        } else {
            None
        };
        self.respond(200, "OK", BODY, req.head_only, connection)?;
        Ok(!close)
    }

    /// Reads once more: new bytes go to `buf`. At a request boundary (`buf` empty) a drain
    /// closes the connection; anywhere, so does [`IDLE_TIMEOUT`] without a byte.
    fn fill(&mut self, draining: &AtomicBool) -> Result<(), Stop> {
        let mut chunk = [0u8; 8 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(Stop::Quiet),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.last_data = Instant::now();
                Ok(())
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                if (self.buf.is_empty() && draining.load(Ordering::SeqCst))
                    || self.last_data.elapsed() > IDLE_TIMEOUT
                {
                    Err(Stop::Quiet)
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(Stop::Io(e)),
        }
    }

    /// The next request head, through its blank line, taken out of `buf`.
    fn read_head(&mut self, draining: &AtomicBool) -> Result<Vec<u8>, Stop> {
        loop {
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
            if let Some(end) = head_end(&self.buf) {
                return Ok(self.buf.drain(..end).collect());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Stop::Bad(Status::BadRequest));
            }
            self.fill(draining)?;
        }
    }

    /// Reads and drops `n` body bytes.
    fn discard(&mut self, mut n: u64) -> Result<(), Stop> {
        // No drain check inside a request: it is answered.
        let busy = AtomicBool::new(false);
        loop {
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
            self.buf.drain(..take);
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            self.fill(&busy)?;
        }
    }

    /// A line (without its line end) taken out of `buf`; longer than `max` is malformed.
    fn line(&mut self, max: usize) -> Result<Vec<u8>, Stop> {
        let busy = AtomicBool::new(false);
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(Stop::Bad(Status::BadRequest));
            }
            self.fill(&busy)?;
        }
    }

    /// Reads and drops a chunked body with its trailers.
    fn discard_chunked(&mut self) -> Result<(), Stop> {
        loop {
            let line = self.line(MAX_CHUNK_LINE)?;
            let size = parse_chunk_size(&line).ok_or(Stop::Bad(Status::BadRequest))?;
            if size == 0 {
                break;
            }
            self.discard(size)?;
            if !self.line(2)?.is_empty() {
                return Err(Stop::Bad(Status::BadRequest));
            }
        }
        for _ in 0..=MAX_HEADERS {
            if self.line(MAX_HEAD)?.is_empty() {
                return Ok(());
            }
        }
        Err(Stop::Bad(Status::BadRequest))
    }

    fn respond(
        &mut self,
        code: u16,
        reason: &str,
        body: &[u8],
        head_only: bool,
        connection: Option<&str>,
    ) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {code} {reason}\r\nDate: {}\r\nServer: sockdup\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
            http_date(SystemTime::now()),
            body.len()
        );
        if let Some(c) = connection {
            out.push_str("Connection: ");
            out.push_str(c);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(body);
        }
        self.stream.write_all(&bytes)?;
        self.stream.flush()
    }

    /// Closes gracefully: no more writes, then the client's remaining bytes are read and
    /// dropped until it closes, for at most [`LINGER`].
    fn linger(&mut self) {
        if shutdown_write(self.stream).is_err() {
            return;
        }
        let until = Instant::now() + LINGER;
        let mut sink = [0u8; 8 * 1024];
        let mut total = 0usize;
        while Instant::now() < until && total < 1 << 20 {
            match self.stream.read(&mut sink) {
                Ok(0) => return,
                Ok(n) => total += n,
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn set_read_timeout(stream: &Stream, t: Option<Duration>) -> io::Result<()> {
    match stream {
        Stream::Tcp(s) => s.set_read_timeout(t),
        Stream::Unix(s) => s.set_read_timeout(t),
    }
}

fn shutdown_write(stream: &Stream) -> io::Result<()> {
    match stream {
        Stream::Tcp(s) => s.shutdown(Shutdown::Write),
        Stream::Unix(s) => s.shutdown(Shutdown::Write),
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
}
