//! The worker side: announce this process to the acceptor, receive records, redeem them, and
//! hand out ready connections.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use sockdup_core::catalog::AF_UNIX;
use sockdup_core::error::Error;
use sockdup_core::wire::ProtocolInfo;

use super::proto::{Line, to_acceptor};
use crate::startup::lock;

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
    out: Arc<Mutex<io::Stdout>>,
}

/// A connection a worker received: the stream, and the acceptor's id for it. Dropping it (or
/// [`finish`](Self::finish)) tells the acceptor the connection is done.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    stream: Stream,
    out: Arc<Mutex<io::Stdout>>,
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

fn say(out: &Mutex<io::Stdout>, line: &Line) -> io::Result<()> {
    let mut out = lock(out);
    writeln!(out, "{}", to_acceptor(line))?;
    out.flush()
}

impl Worker {
    /// Starts sockdup in this process and tells the acceptor its pid (the seed's steps 3-4).
    ///
    /// # Errors
    /// As [`crate::startup`]; `WSAENETDOWN` if standard output is closed.
    pub fn announce() -> Result<Self, Error> {
        let guard = crate::startup()?;
        let out = Arc::new(Mutex::new(io::stdout()));
        say(&out, &Line::Pid(std::process::id()))
            .map_err(|e| Error::from_errno(e, "announcing this worker on standard output"))?;
        Ok(Self { _guard: guard, out })
    }

    /// The connections the acceptor hands over, redeemed, until it closes the channel (its
    /// shutdown). A record that cannot be redeemed is reported to the acceptor (which gives
    /// the connection to another worker) and yielded as an error.
    pub fn incoming(&self) -> impl Iterator<Item = Result<Connection, Error>> + '_ {
        io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .filter_map(move |line| {
                let (id, text) = line.trim().strip_prefix("conn ")?.split_once(' ')?;
                let id: u64 = id.parse().ok()?;
                Some(self.redeem(id, text))
            })
    }

    fn redeem(&self, id: u64, text: &str) -> Result<Connection, Error> {
        let redeemed = text.parse::<ProtocolInfo>().and_then(|info| {
            let fd: OwnedFd = crate::socket_from_info(&info)?;
            Ok(if info.address_family == AF_UNIX {
                Stream::Unix(UnixStream::from(fd))
            } else {
                Stream::Tcp(TcpStream::from(fd))
            })
        });
        match redeemed {
            Ok(stream) => {
                say(&self.out, &Line::Redeemed(id))
                    .map_err(|e| Error::from_errno(e, "confirming a connection to the acceptor"))?;
                Ok(Connection {
                    id,
                    stream,
                    out: self.out.clone(),
                    finished: false,
                })
            }
            Err(e) => {
                let _ = say(&self.out, &Line::Failed(id, e.code()));
                Err(e)
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
            let _ = say(&self.out, &Line::Done(self.id));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.done();
    }
}
