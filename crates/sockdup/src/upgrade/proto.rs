//! One takeover connection: the typed lines of [`sockdup_core::proto::upgrade`] over an
//! `AF_UNIX` stream, framed by the one bounded buffer ([`LineBuffer`], [`MAX_LINE`]).
//!
//! Each message must arrive whole within its timeout: the deadline is the message's, not each
//! read's, so a peer that trickles a byte at a time cannot hold a connection open for longer.
//! Writes never raise `SIGPIPE` (a library must not kill a host program whose peer left).

use std::io;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::SendFlags;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::line::{LineBuffer, LineMessage, MAX_LINE};

/// A takeover connection, either side.
#[derive(Debug)]
pub(super) struct Conn {
    stream: UnixStream,
    lines: LineBuffer,
}

/// What one non-blocking read of a connection brought ([`Conn::poll_message`]).
pub(super) enum Polled<M> {
    /// A whole message.
    Message(M),
    /// Not yet a whole line: wait for more.
    Pending,
    /// The peer closed the connection (a partial line is dropped).
    Closed,
}

impl Conn {
    pub(super) fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            lines: LineBuffer::new(MAX_LINE),
        }
    }

    pub(super) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one message.
    ///
    /// # Errors
    /// The write's, as an [`Error`] saying it was `doing` that.
    pub(super) fn send(&self, message: &impl LineMessage, doing: &str) -> Result<(), Error> {
        self.send_raw(&message.encode(), doing)
    }

    /// Sends lines already encoded (several messages in one write), without `SIGPIPE`; a
    /// write timeout (`SO_SNDTIMEO`) is [`ErrorKind::PeerTimedOut`].
    pub(super) fn send_raw(&self, lines: &str, doing: &str) -> Result<(), Error> {
        let mut left = lines.as_bytes();
        while !left.is_empty() {
            match rustix::net::send(&self.stream, left, SendFlags::NOSIGNAL) {
                Ok(n) => left = &left[n..],
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    return Err(Error::new(
                        ErrorKind::PeerTimedOut,
                        format!("{doing}: the other process does not read its takeover connection"),
                    ));
                }
                Err(e) => return Err(Error::from_errno(e, doing)),
            }
        }
        Ok(())
    }

    /// The next message from `peer`, which must arrive whole within `timeout`. The stream
    /// must be blocking.
    ///
    /// # Errors
    /// [`ErrorKind::PeerClosed`] if `peer` closed the connection, [`ErrorKind::PeerTimedOut`]
    /// if the whole message did not arrive in time, [`ErrorKind::ProtocolViolation`] for an
    /// oversized or malformed line, and the message's own parse errors.
    pub(super) fn recv<M: LineMessage>(
        &mut self,
        peer: &str,
        timeout: Duration,
    ) -> Result<M, Error> {
        let deadline = Instant::now() + timeout;
        let timed_out = || {
            Error::new(
                ErrorKind::PeerTimedOut,
                format!("{peer} did not answer within {timeout:?}"),
            )
        };
        loop {
            if let Some(message) = self.lines.next_message::<M>()? {
                return Ok(message);
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(timed_out)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| Error::from_errno(e, "setting a read timeout"))?;
            match self.lines.read_from(&mut self.stream) {
                Ok(0) => {
                    return Err(Error::new(
                        ErrorKind::PeerClosed,
                        format!("{peer} closed the takeover connection"),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(Error::from_errno(e, &format!("reading from {peer}"))),
            }
        }
    }

    /// One read of a non-blocking stream, and the message it completed, if any.
    ///
    /// # Errors
    /// [`ErrorKind::ProtocolViolation`] for an oversized or malformed line (as soon as it shows),
    /// the message's own parse errors, and the read's.
    pub(super) fn poll_message<M: LineMessage>(&mut self) -> Result<Polled<M>, Error> {
        if let Some(message) = self.lines.next_message::<M>()? {
            return Ok(Polled::Message(message));
        }
        match self.lines.read_from(&mut self.stream) {
            Ok(0) => return Ok(Polled::Closed),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(Polled::Pending);
            }
            Err(e) => return Err(Error::from_errno(e, "reading a takeover connection")),
        }
        Ok(match self.lines.next_message::<M>()? {
            Some(message) => Polled::Message(message),
            None => Polled::Pending,
        })
    }
}
