//! The worker side: announce this process to the acceptor, receive records, redeem them, and
//! hand out ready connections.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use sockdup_core::catalog::AF_UNIX;
use sockdup_core::error::Error;
use sockdup_core::wire::ProtocolInfo;

use super::proto::{Line, to_acceptor};
use crate::startup::Runtime;
use crate::sync::lock;

/// A worker process of an [`Acceptor`](super::Acceptor): its standard input and output are the
/// acceptor's channel (so the application must log to standard error, not standard output).
///
/// ```no_run
/// let worker = sockdup::handoff::Worker::announce()?;
/// for conn in worker.incoming() {
///     let mut conn = conn?;
///     std::thread::spawn(move || {
///         let _ = std::io::copy(&mut conn.stream().try_clone().unwrap(), conn.stream());
///     });
/// }
/// # Ok::<(), sockdup::Error>(())
/// ```
#[derive(Debug)]
pub struct Worker {
    _guard: crate::Startup,
    out: Arc<Channel>,
}

/// A connection a worker received: the stream, and the acceptor's id for it. Dropping it (or
/// [`finish`](Self::finish)) tells the acceptor the connection is done.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    stream: Stream,
    out: Arc<Channel>,
    finished: bool,
}

/// A received stream: TCP or Unix.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream connection.
    Unix(UnixStream),
}

impl Stream {
    /// A second handle on the same connection (for a reader and a writer).
    ///
    /// # Errors
    /// As `try_clone` of the std types.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
            Self::Unix(s) => Self::Unix(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

/// The worker's side of the channel to the acceptor: its standard output.
#[derive(Debug)]
struct Channel {
    out: Mutex<io::Stdout>,
}

impl Channel {
    /// Writes `text` (whole lines) in one write.
    fn write(&self, text: &str) -> io::Result<()> {
        let mut out = lock(&self.out);
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

impl Worker {
    /// Starts sockdup in this process and tells the acceptor its pid (the seed's steps 3-4).
    ///
    /// # Errors
    /// As [`crate::startup`]; `WSAENETDOWN` if standard output is closed.
    pub fn announce() -> Result<Self, Error> {
        let guard = crate::startup()?;
        let out = Arc::new(Channel {
            out: Mutex::new(io::stdout()),
        });
        out.write(&(to_acceptor(&Line::Pid(std::process::id())) + "\n"))
            .map_err(|e| Error::from_errno(e, "announcing this worker on standard output"))?;
        Ok(Self { _guard: guard, out })
    }

    /// The connections the acceptor hands over, redeemed, until it closes the channel (its
    /// shutdown). A record that cannot be redeemed is reported to the acceptor (which gives
    /// the connection to another worker) and yielded as an error.
    ///
    /// Every `conn` line that one read of standard input brings is redeemed before any is
    /// yielded, and the answers for all of them go to the acceptor in one write.
    pub fn incoming(&self) -> impl Iterator<Item = Result<Connection, Error>> + '_ {
        Incoming {
            worker: self,
            input: io::stdin(),
            buf: Vec::new(),
            chunk: vec![0u8; 64 * 1024],
            ready: VecDeque::new(),
            ended: false,
        }
    }

    /// Redeems one record; the answer for the acceptor is added to `answers`.
    fn redeem(
        rt: Option<&Runtime>,
        id: u64,
        text: &str,
        answers: &mut String,
    ) -> Result<Stream, Error> {
        let redeemed = text.parse::<ProtocolInfo>().and_then(|info| {
            let fd: OwnedFd = match rt {
                Some(rt) => crate::api::redeem_one(rt, &info)?,
                // Not started: the public call says why.
                None => crate::socket_from_info(&info)?,
            };
            Ok(if info.address_family == AF_UNIX {
                Stream::Unix(UnixStream::from(fd))
            } else {
                Stream::Tcp(TcpStream::from(fd))
            })
        });
        let answer = match &redeemed {
            Ok(_) => Line::Redeemed(id),
            Err(e) => Line::Failed(id, e.code()),
        };
        answers.push_str(&to_acceptor(&answer));
        answers.push('\n');
        redeemed
    }

    /// Redeems the `conn` lines of `lines` and answers them all in one write.
    fn redeem_all(&self, lines: &[u8], ready: &mut VecDeque<Result<Connection, Error>>) {
        let mut answers = String::new();
        let mut redeemed = Vec::new();
        // One look-up (and one getpid) for the whole batch.
        let rt = Runtime::current().ok();
        for line in lines.split(|&b| b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let Some((id, text)) = line
                .trim()
                .strip_prefix("conn ")
                .and_then(|l| l.split_once(' '))
            else {
                continue;
            };
            let Ok(id) = id.parse::<u64>() else {
                continue;
            };
            redeemed.push((id, Self::redeem(rt.as_deref(), id, text, &mut answers)));
        }
        if redeemed.is_empty() {
            return;
        }
        let said = self.out.write(&answers);
        for (id, r) in redeemed {
            ready.push_back(match (r, &said) {
                (Ok(stream), Ok(())) => Ok(Connection {
                    id,
                    stream,
                    out: self.out.clone(),
                    finished: false,
                }),
                // Unconfirmed: the stream closes here, and the acceptor gives the
                // connection to another worker.
                (Ok(_), Err(e)) => Err(Error::from_errno(
                    io::Error::new(e.kind(), e.to_string()),
                    "confirming a connection to the acceptor",
                )),
                (Err(e), _) => Err(e),
            });
        }
    }
}

/// [`Worker::incoming`].
struct Incoming<'a> {
    worker: &'a Worker,
    input: io::Stdin,
    /// Bytes read from standard input, not yet a whole line.
    buf: Vec<u8>,
    /// Room for one read.
    chunk: Vec<u8>,
    /// Redeemed and answered, not yet yielded.
    ready: VecDeque<Result<Connection, Error>>,
    ended: bool,
}

impl Iterator for Incoming<'_> {
    type Item = Result<Connection, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            // A read as large as the buffer bypasses stdin's own buffer: one read(2).
            let n = match self.input.lock().read(&mut self.chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                // The channel closed: a last line without its line end still counts.
                self.ended = true;
                let rest = std::mem::take(&mut self.buf);
                self.worker.redeem_all(&rest, &mut self.ready);
                continue;
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
            if let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') {
                let rest = self.buf.split_off(end + 1);
                let lines = std::mem::replace(&mut self.buf, rest);
                self.worker.redeem_all(&lines, &mut self.ready);
            }
        }
    }
}

impl Connection {
    /// The acceptor's id for this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The stream.
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Closes the stream and tells the acceptor this connection is done.
    pub fn finish(mut self) {
        self.done();
    }

    fn done(&mut self) {
        if !self.finished {
            self.finished = true;
            // Each connection's own write: gathering them in a flusher thread measured slower
            // (one more thread waking up) than what the shared writes saved.
            let _ = self.out.write(&(to_acceptor(&Line::Done(self.id)) + "\n"));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.done();
    }
}
