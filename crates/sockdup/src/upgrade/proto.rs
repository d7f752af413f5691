//! One takeover connection: the typed lines of [`sockdup_core::proto::upgrade`] over an
//! `AF_UNIX` stream, read with the one bounded reader ([`LineReader`], [`MAX_LINE`]).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::line::{LineMessage, LineReader, MAX_LINE};

/// A takeover connection, either side.
#[derive(Debug)]
pub(super) struct Conn {
    reader: LineReader<UnixStream>,
}

impl Conn {
    pub(super) fn new(stream: UnixStream) -> Self {
        Self {
            reader: LineReader::new(stream, MAX_LINE),
        }
    }

    pub(super) fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    /// Sends one message.
    ///
    /// # Errors
    /// The write's, as an [`Error`] saying it was `doing` that.
    pub(super) fn send(&self, message: &impl LineMessage, doing: &str) -> Result<(), Error> {
        self.send_raw(&message.encode(), doing)
    }

    /// Sends lines already encoded (several messages in one write).
    pub(super) fn send_raw(&self, lines: &str, doing: &str) -> Result<(), Error> {
        self.stream()
            .write_all(lines.as_bytes())
            .map_err(|e| Error::from_errno(e, doing))
    }

    /// The next message from `peer`, within the read timeout.
    ///
    /// # Errors
    /// [`ErrorKind::PeerClosed`] if `peer` closed the connection, [`ErrorKind::PeerTimedOut`]
    /// if it sent nothing in time (`timeout`, for the message),
    /// [`ErrorKind::ProtocolViolation`] for an oversized or malformed line, and the message's
    /// own parse errors.
    pub(super) fn recv<M: LineMessage>(
        &mut self,
        peer: &str,
        timeout: Duration,
    ) -> Result<M, Error> {
        match self.reader.read_message::<M>() {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(Error::new(
                ErrorKind::PeerClosed,
                format!("{peer} closed the takeover connection"),
            )),
            Err(e) if e.kind() == ErrorKind::PeerTimedOut => Err(Error::new(
                ErrorKind::PeerTimedOut,
                format!("{peer} did not answer within {timeout:?}"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Sets how long a read may wait.
    pub(super) fn set_read_timeout(&self, timeout: Duration) {
        let _ = self.stream().set_read_timeout(Some(timeout));
    }
}
