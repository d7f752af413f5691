//! The one error type, and the Winsock error numbers it carries.
//!
//! Every failure in sockdup is an [`Error`]: its [`code`](Error::code) is the number a Windows
//! program would see from `WSAGetLastError()` for the same condition, and its message is a sentence
//! that says what went wrong and what to do about it. Operating-system errors are turned into an
//! [`Error`] in one place ([`Error::from_errno`]).
//!
//! The table of which condition gives which code is in the `sockdup` crate's documentation
//! (section "Errors"), next to the functions that return them.

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
        _ => return None,
    })
}

/// A sockdup failure: a Winsock error number and a sentence for people.
///
/// `Display` prints the sentence followed by the code, e.g.
/// `this record was made for process 4242, but this is process 4243: redeem it in the process it
/// was duplicated to (WSAEINVAL 10022)`.
#[derive(Debug)]
pub struct Error {
    code: i32,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    /// An error with a Winsock `code` and a `message` that says what went wrong and what to do.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
        }
    }

    /// `WSAEINVAL` with `message`: the shorthand for the most common failure.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(WSAEINVAL, message)
    }

    /// Attaches the operating-system error that caused this one (shown by `source()`).
    pub fn with_source(mut self, source: io::Error) -> Self {
        self.source = Some(source);
        self
    }

    /// The one mapping from an OS error to a Winsock code. `doing` says what sockdup was doing
    /// ("reading the socket's type"); the message names it and the OS error.
    pub fn from_errno(err: io::Error, doing: &str) -> Self {
        let raw = err.raw_os_error().unwrap_or(0);
        let (code, advice) = match raw {
            libc_errno::EFAULT => (WSAEFAULT, "a buffer was not valid"),
            libc_errno::EINVAL => (WSAEINVAL, "an argument was invalid"),
            libc_errno::EMFILE | libc_errno::ENFILE => (
                WSAEMFILE,
                "no descriptor is left: close some, or raise the limit (ulimit -n)",
            ),
            libc_errno::EINTR | libc_errno::EAGAIN => (
                WSAEINPROGRESS,
                "the call was interrupted or would block: retry",
            ),
            libc_errno::ENOTSOCK => (WSAENOTSOCK, "the descriptor is not a socket"),
            libc_errno::EBADF => (WSAENOTSOCK, "the descriptor is not open"),
            libc_errno::EAFNOSUPPORT => (WSAEAFNOSUPPORT, "the address family is not supported"),
            libc_errno::EADDRINUSE => (WSAEADDRINUSE, "the address is in use"),
            libc_errno::ENOBUFS | libc_errno::ENOMEM => {
                (WSAENOBUFS, "the kernel is out of buffer space or memory")
            }
            _ => (WSAENETDOWN, "the transport failed"),
        };
        Self::new(code, format!("{doing} failed: {err}; {advice}")).with_source(err)
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
            (24, WSAEMFILE),
            (23, WSAEMFILE),
            (88, WSAENOTSOCK),
            (9, WSAENOTSOCK),
            (105, WSAENOBUFS),
            (4, WSAEINPROGRESS),
            (14, WSAEFAULT),
            (22, WSAEINVAL),
            (111, WSAENETDOWN),
        ];
        for (errno, code) in cases {
            let e = Error::from_errno(io::Error::from_raw_os_error(errno), "testing");
            assert_eq!(e.code(), code, "errno {errno}");
            assert!(e.to_string().starts_with("testing failed: "));
            assert!(std::error::Error::source(&e).is_some());
        }
    }

    #[test]
    fn display_ends_with_name_and_number() {
        let e = Error::invalid("pid 0 names no process");
        assert_eq!(e.to_string(), "pid 0 names no process (WSAEINVAL 10022)");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
    }
}
