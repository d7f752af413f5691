//! The worker side in a tokio runtime (the `tokio` feature): [`Worker::incoming_async`].

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ::tokio::net::{TcpStream, UnixStream};
use sockdup_core::error::{Error, ErrorKind};

use super::worker::{Done, Intake, Worker, nonblocking_stdin};

/// A connection an async worker received ([`Worker::incoming_async`]): a tokio stream, and the
/// acceptor's id for it. Dropping it (or [`finish`](Self::finish)) tells the acceptor the
/// connection is done, as [`Connection`](super::Connection) does.
#[derive(Debug)]
pub struct AsyncConnection {
    // First, so that it drops (sending `done`) before the stream closes.
    done: Done,
    stream: AsyncStream,
}

/// A received stream as a tokio type, registered with the runtime: TCP or Unix (by the
/// record's address family). It implements [`AsyncRead`] and [`AsyncWrite`].
#[derive(Debug)]
pub enum AsyncStream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream connection.
    Unix(UnixStream),
}

impl AsyncRead for AsyncStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AsyncStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Makes `fd` (a redeemed stream socket) non-blocking and registers it with the current
/// runtime as the tokio type its family calls for.
fn tokio_stream(fd: OwnedFd, unix: bool) -> Result<AsyncStream, Error> {
    rustix::fs::fcntl_getfl(&fd)
        .and_then(|fl| rustix::fs::fcntl_setfl(&fd, fl | rustix::fs::OFlags::NONBLOCK))
        .map_err(|e| Error::from_errno(e, "making the connection non-blocking"))?;
    let registered = if unix {
        UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)).map(AsyncStream::Unix)
    } else {
        TcpStream::from_std(std::net::TcpStream::from(fd)).map(AsyncStream::Tcp)
    };
    registered
        .map_err(|e| Error::from_errno(e, "registering the connection with the tokio runtime"))
}

impl Worker {
    /// [`incoming`](Self::incoming) for a tokio runtime: the connections the acceptor hands
    /// over, each stream a tokio type ([`AsyncStream`]), with the same protocol: every `conn`
    /// line one read brings is redeemed and confirmed (`ok`, or `fail`) in one write before
    /// any is yielded, and `done` is written when the [`AsyncConnection`] is dropped or
    /// finished. Call [`AsyncIncoming::next`] in a loop and spawn a task per connection:
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sockdup::Error> {
    /// let worker = sockdup::handoff::Worker::announce()?;
    /// let mut incoming = worker.incoming_async()?;
    /// while let Some(conn) = incoming.next().await {
    ///     let mut conn = conn?;
    ///     tokio::spawn(async move {
    ///         let (mut r, mut w) = tokio::io::split(conn.stream());
    ///         let _ = tokio::io::copy(&mut r, &mut w).await;
    ///     });
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Standard input is read through the runtime's I/O driver, never blocking a runtime
    /// thread: a copy of descriptor 0 is registered, and **standard input is made
    /// non-blocking** (`O_NONBLOCK` belongs to the pipe's open file, so the process must not
    /// read it with blocking calls as well, e.g. [`incoming`](Self::incoming) or
    /// `std::io::stdin`). The `ok` and `done` lines are written to standard output with one
    /// `write(2)` each batch or connection, as the blocking worker does: the acceptor reads
    /// them as they come (it never waits on writing to a worker), so such a write waits only
    /// if the acceptor stopped reading, a few lines' worth at most.
    ///
    /// The end is as for [`incoming`](Self::incoming): `None` once the acceptor closed the
    /// channel (its shutdown, or its death); a line that is not the protocol is answered with
    /// an `error` line, yielded as an error of kind
    /// [`ProtocolViolation`](crate::ErrorKind::ProtocolViolation), and kept in
    /// [`AsyncIncoming::broken`]. The connections are `'static` and `Send`; they outlive the
    /// stream and the worker.
    ///
    /// # Errors
    /// Outside a tokio runtime ([`InvalidArgument`](crate::ErrorKind::InvalidArgument)); an
    /// OS error if standard input cannot be copied, made non-blocking or registered.
    ///
    /// # Panics
    /// Within a runtime built without I/O, as tokio's `AsyncFd`.
    pub fn incoming_async(&self) -> Result<AsyncIncoming<'_>, Error> {
        if ::tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "Worker::incoming_async must be called within a tokio runtime",
            ));
        }
        let input = nonblocking_stdin()?;
        let input = crate::sys::async_readable(input)
            .map_err(|e| Error::from_errno(e, "registering standard input with the runtime"))?;
        Ok(AsyncIncoming {
            worker: self,
            input,
            intake: Intake::new(),
        })
    }
}

/// The connections an async worker receives: [`Worker::incoming_async`].
#[derive(Debug)]
pub struct AsyncIncoming<'a> {
    worker: &'a Worker,
    input: AsyncFd<OwnedFd>,
    intake: Intake<AsyncConnection>,
}

impl AsyncIncoming<'_> {
    /// The next connection, redeemed and confirmed; `None` once the acceptor closed the
    /// channel (or after a line that was not the protocol). A record that could not be
    /// redeemed (reported to the acceptor, which gives the connection to another worker) is
    /// yielded as an error, and the stream goes on.
    ///
    /// Cancel-safe: dropping the future between two reads loses nothing (what one read
    /// brought is redeemed and queued before the future can be dropped again).
    pub async fn next(&mut self) -> Option<Result<AsyncConnection, Error>> {
        loop {
            if let Some(item) = self.intake.pop() {
                return Some(item);
            }
            if self.intake.ended() {
                return None;
            }
            // Like the blocking worker: a channel that cannot be read has ended.
            let n: usize = self.read().await.unwrap_or(0);
            self.intake
                .take(self.worker, n, tokio_stream, AsyncConnection::new);
        }
    }

    /// Why the channel from the acceptor broke, if it did: a line that was not the protocol
    /// (already answered with an `error` line). `None` after a clean end.
    pub fn broken(&self) -> Option<&Error> {
        self.intake.broken()
    }

    /// One read of standard input, once it is readable.
    async fn read(&mut self) -> io::Result<usize> {
        loop {
            let mut ready = self.input.readable().await?;
            let chunk = self.intake.chunk();
            match ready.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut chunk[..]).map_err(io::Error::from)
            }) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(r) => return r,
                // Not readable after all: wait again.
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncConnection {
    fn new(done: Done, stream: AsyncStream) -> Self {
        Self { done, stream }
    }

    /// The acceptor's id for this connection.
    pub fn id(&self) -> u64 {
        self.done.id()
    }

    /// The stream.
    pub fn stream(&mut self) -> &mut AsyncStream {
        &mut self.stream
    }

    /// Closes the stream and tells the acceptor this connection is done.
    pub fn finish(mut self) {
        self.done.send();
    }
}
