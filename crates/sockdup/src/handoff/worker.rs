//! The worker side: announce this process to the acceptor, receive records, redeem them, and
//! hand out ready connections.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use sockdup_core::catalog::AF_UNIX;
use sockdup_core::error::Error;
use sockdup_core::line::{LineBuffer, LineMessage, MAX_LINE};
use sockdup_core::proto::handoff::{ErrorReport, FromWorker, ToWorker};
use sockdup_core::wire::ProtocolInfo;

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
    pub(super) out: Arc<Channel>,
}

/// A connection a worker received: the stream, and the acceptor's id for it. Dropping it (or
/// [`finish`](Self::finish)) tells the acceptor the connection is done.
#[derive(Debug)]
pub struct Connection {
    // First, so that it drops (sending `done`) before the stream closes.
    done: Done,
    stream: Stream,
}

/// A received connection's `done`: written once, when the connection is finished or dropped.
/// What the blocking and the async connections share.
#[derive(Debug)]
pub(super) struct Done {
    id: u64,
    out: Arc<Channel>,
    sent: bool,
}

impl Done {
    pub(super) fn new(id: u64, out: Arc<Channel>) -> Self {
        Self {
            id,
            out,
            sent: false,
        }
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Tells the acceptor the connection is done, once.
    pub(super) fn send(&mut self) {
        if !self.sent {
            self.sent = true;
            // Each connection's own write: gathering them in a flusher thread measured slower
            // (one more thread waking up) than what the shared writes saved.
            let _ = self.out.write(&FromWorker::Done(self.id).encode());
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.send();
    }
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

impl AsFd for Stream {
    /// The connection's descriptor (to watch it in an event loop).
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(s) => s.as_fd(),
            Self::Unix(s) => s.as_fd(),
        }
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
pub(super) struct Channel {
    out: Mutex<io::Stdout>,
}

impl Channel {
    /// Writes `text` (whole lines) in one write.
    pub(super) fn write(&self, text: &str) -> io::Result<()> {
        let mut out = lock(&self.out);
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

impl Worker {
    /// Starts sockdup in this process and tells the acceptor its pid (the seed's steps 3-4).
    /// If sockdup is already started here, the worker joins that run, with its options: a
    /// worker that serves its inbox from its own event loop starts sockdup with
    /// [`Options::inbox_served_by_caller`](crate::Options::inbox_served_by_caller) first (see
    /// [`incoming_nonblocking`](Self::incoming_nonblocking)).
    ///
    /// # Errors
    /// As [`crate::startup`]; an error from [`Error::from_errno`] if standard output is closed.
    pub fn announce() -> Result<Self, Error> {
        let guard = crate::startup()?;
        let out = Arc::new(Channel {
            out: Mutex::new(io::stdout()),
        });
        out.write(&FromWorker::Pid(std::process::id()).encode())
            .map_err(|e| Error::from_errno(e, "announcing this worker on standard output"))?;
        Ok(Self { _guard: guard, out })
    }

    /// The connections the acceptor hands over, redeemed, until it closes the channel (its
    /// shutdown). A record that cannot be redeemed is reported to the acceptor (which gives
    /// the connection to another worker) and yielded as an error.
    ///
    /// Every `conn` line that one read of standard input brings is redeemed before any is
    /// yielded, and the answers for all of them go to the acceptor in one write.
    ///
    /// A line from the acceptor that is not the protocol (malformed, or longer than
    /// [`MAX_LINE`]) is answered at once with an `error` line; it is yielded as an error of
    /// kind [`ProtocolViolation`](crate::ErrorKind::ProtocolViolation), the iteration ends, and
    /// [`Incoming::broken`] holds it: the process should finish its open connections and exit
    /// with a failure status.
    ///
    /// If the acceptor dies (even by SIGKILL), its end of standard input closes with it: the
    /// connections it already handed over are still yielded (a confirmation nobody reads does
    /// not drop them: no other process holds them any more), then the iteration ends, as at a
    /// shutdown, and the process should finish what it has and exit. That is how a worker
    /// outlives its acceptor without being orphaned for good; a parent-death signal
    /// (`PR_SET_PDEATHSIG`) would instead kill the connections it serves.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming {
            worker: self,
            input: io::stdin(),
            intake: Intake::new(),
        }
    }

    /// [`incoming`](Self::incoming) for a caller's own event loop (epoll, poll, mio...): a
    /// [`NonblockingIncoming`] whose descriptor ([`AsFd`]) is readable when `conn` lines wait,
    /// and whose [`try_next_batch`](NonblockingIncoming::try_next_batch) takes what is there
    /// without blocking. No thread of its own: the loop that serves the connections receives
    /// them too. The protocol is the same: every `conn` line one read brings is redeemed and
    /// confirmed (`ok`, or `fail`) in one write before the batch is handed out, and `done` is
    /// written when a [`Connection`] is dropped or finished
    /// ([`Connection::finish_all`] for many at once).
    ///
    /// ```no_run
    /// use rustix::event::{PollFd, PollFlags, poll};
    ///
    /// let worker = sockdup::handoff::Worker::announce()?;
    /// let mut incoming = worker.incoming_nonblocking()?;
    /// let mut open = Vec::new();
    /// loop {
    ///     // A real loop watches its connections in the same call.
    ///     poll(&mut [PollFd::new(&incoming, PollFlags::IN)], None)?;
    ///     let batch = incoming.try_next_batch();
    ///     let ended = batch.ended();
    ///     for conn in batch {
    ///         match conn {
    ///             Ok(conn) => open.push(conn), // serve it from the loop
    ///             // Reported to the acceptor already: it gives the connection to another worker.
    ///             Err(e) => eprintln!("{e}"),
    ///         }
    ///     }
    ///     if ended {
    ///         // Shutdown (or the acceptor died, or broke the protocol: `incoming.broken()`):
    ///         // stop watching, finish `open`, exit.
    ///         break;
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// The descriptor is a close-on-exec copy of standard input, and **standard input is made
    /// non-blocking** (`O_NONBLOCK` belongs to the pipe's open file): the process must not read
    /// standard input by any other means (the caller must not read the descriptor either; only
    /// watch it), and a second `NonblockingIncoming` would take lines from the first. The `ok`
    /// and `done` lines are written to standard output (blocking) with one `write(2)` per batch
    /// or per [`finish_all`](Connection::finish_all): the acceptor reads them as they come, so
    /// such a write waits only if it stopped reading, a few lines' worth at most.
    ///
    /// The acceptor pushes each connection's descriptor into this process's inbox, and waits
    /// for the inbox's answer, before it writes the `conn` line. By default the library's inbox
    /// thread answers. To have the same loop do it (one thread for everything: fewer wake-ups
    /// and context switches per connection), start sockdup with
    /// [`Options::inbox_served_by_caller`](crate::Options::inbox_served_by_caller) before
    /// [`announce`](Self::announce), watch the guard's [`CallerInbox`](crate::CallerInbox) in
    /// the same `poll`, bound the wait by its [`timeout`](crate::CallerInbox::timeout), and
    /// call its [`serve_ready`](crate::CallerInbox::serve_ready) when it is readable or due;
    /// `examples/poll_serve_worker.rs` does. Such a loop must not block elsewhere for long: the
    /// acceptor waits for the inbox's answer (up to its ack timeout).
    ///
    /// The end is as for [`incoming`](Self::incoming): once the acceptor closed the channel
    /// (its shutdown, or its death), a batch says [`ended`](Batch::ended) (after the
    /// connections that came before the end, which are still yours to serve); the descriptor
    /// then stays readable (end of file), so stop watching it. A line that is not the protocol
    /// is answered with an `error` line and ends the channel the same way; the batch's last
    /// item is that error, of kind [`ProtocolViolation`](crate::ErrorKind::ProtocolViolation),
    /// and [`NonblockingIncoming::broken`] keeps it.
    ///
    /// # Errors
    /// An OS error if standard input cannot be copied or made non-blocking.
    pub fn incoming_nonblocking(&self) -> Result<NonblockingIncoming<'_>, Error> {
        Ok(NonblockingIncoming {
            worker: self,
            input: nonblocking_stdin()?,
            intake: Intake::new(),
        })
    }

    /// Redeems one record into `T` with `make`; the answer for the acceptor is added to
    /// `answers` (`fail` if `make` fails: the acceptor still holds the connection and gives it
    /// to another worker).
    fn redeem<T>(
        rt: Option<&Runtime>,
        id: u64,
        info: &ProtocolInfo,
        make: &mut impl FnMut(OwnedFd, bool) -> Result<T, Error>,
        answers: &mut String,
    ) -> Result<T, Error> {
        let redeemed = match rt {
            Some(rt) => crate::api::redeem_one(rt, info),
            // Not started: the public call says why.
            None => crate::socket_from_info(info),
        }
        .and_then(|fd: OwnedFd| make(fd, info.address_family == AF_UNIX));
        let answer = match &redeemed {
            Ok(_) => FromWorker::Redeemed(id),
            Err(e) => FromWorker::Failed {
                id,
                error: ErrorReport::of(e),
            },
        };
        answer.encode_into(answers);
        redeemed
    }

    /// Redeems the connections of `conns` (each into `T` with `make`) and answers them all in
    /// one write, followed by the `error` line of `broken` (the line after them was not the
    /// protocol), if any. Returns them with their ids, in order.
    pub(super) fn redeem_all<T>(
        &self,
        conns: Vec<(u64, ProtocolInfo)>,
        broken: Option<&Error>,
        mut make: impl FnMut(OwnedFd, bool) -> Result<T, Error>,
    ) -> Vec<(u64, Result<T, Error>)> {
        let mut answers = String::new();
        let mut redeemed = Vec::with_capacity(conns.len());
        // One look-up (and one getpid) for the whole batch.
        let rt = Runtime::current().ok();
        for (id, info) in conns {
            let r = Self::redeem(rt.as_deref(), id, &info, &mut make, &mut answers);
            redeemed.push((id, r));
        }
        if let Some(e) = broken {
            FromWorker::Error(ErrorReport::of(e)).encode_into(&mut answers);
        }
        if answers.is_empty() {
            return redeemed;
        }
        if let Err(e) = self.out.write(&answers) {
            // Nobody reads the confirmations: the acceptor is gone (killed, crashed), or it is
            // killing this worker (it sends the kill before it closes the pipe). Either way no
            // other worker gets these connections, and the acceptor's descriptors are closed
            // or about to be: this process holds the only ones, so it serves them.
            tracing::warn!(error = %e, "sockdup worker: the acceptor does not hear; serving what was redeemed");
        }
        redeemed
    }
}

/// The `conn` lines `lines` holds whole, and the error of the first line that is not the
/// protocol, if any (the lines after it are left unread).
fn parse_lines(lines: &mut LineBuffer) -> (Vec<(u64, ProtocolInfo)>, Option<Error>) {
    let mut conns = Vec::new();
    loop {
        match lines.next_message::<ToWorker>() {
            Ok(Some(ToWorker::Conn { id, record })) => conns.push((id, record)),
            Ok(None) => return (conns, None),
            Err(e) => return (conns, Some(e)),
        }
    }
}

/// The connections a [`Worker`] receives: [`Worker::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    worker: &'a Worker,
    input: io::Stdin,
    intake: Intake<Connection>,
}

impl Incoming<'_> {
    /// Why the channel from the acceptor broke, if it did: a line that was not the protocol
    /// (already answered with an `error` line). `None` after a clean end (the acceptor closed
    /// the channel).
    pub fn broken(&self) -> Option<&Error> {
        self.intake.broken()
    }

    /// Reads once from standard input and redeems every whole `conn` line it completed.
    fn fill(&mut self) {
        // A read as large as stdin's own buffer bypasses it: one read(2).
        let n = match self.input.lock().read(self.intake.chunk()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        self.intake
            .take(self.worker, n, std_stream, Connection::new);
    }
}

impl Iterator for Incoming<'_> {
    type Item = Result<Connection, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.intake.pop() {
                return Some(item);
            }
            if self.intake.ended() {
                return None;
            }
            self.fill();
        }
    }
}

/// The connections a [`Worker`] receives in a caller's event loop:
/// [`Worker::incoming_nonblocking`]. Its descriptor ([`AsFd`]) is the acceptor's channel: watch
/// it for readability, never read it.
#[derive(Debug)]
pub struct NonblockingIncoming<'a> {
    worker: &'a Worker,
    /// A non-blocking copy of standard input.
    input: OwnedFd,
    intake: Intake<Connection>,
}

impl AsFd for NonblockingIncoming<'_> {
    /// The channel's read side: readable when `conn` lines wait (or at its end). Watch it;
    /// reading it would take lines from [`try_next_batch`](NonblockingIncoming::try_next_batch).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.input.as_fd()
    }
}

impl NonblockingIncoming<'_> {
    /// What the channel holds now, without blocking: one read (what does not fit stays, and
    /// the descriptor stays readable), every whole `conn` line it completed redeemed and
    /// confirmed in one write. An empty batch if nothing waited. Once the channel ended, every
    /// call returns an empty batch that says so.
    pub fn try_next_batch(&mut self) -> Batch {
        while !self.intake.ended() {
            match rustix::io::read(&self.input, self.intake.chunk()) {
                Ok(n) => {
                    self.intake
                        .take(self.worker, n, std_stream, Connection::new);
                    break;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                // Like the blocking worker: a channel that cannot be read has ended.
                Err(e) => {
                    tracing::debug!(error = %e, "sockdup worker: reading the acceptor's channel");
                    self.intake
                        .take(self.worker, 0, std_stream, Connection::new);
                }
            }
        }
        Batch {
            conns: self.intake.pop_all(),
            ended: self.intake.ended(),
        }
    }

    /// Why the channel from the acceptor broke, if it did: a line that was not the protocol
    /// (already answered with an `error` line). `None` while it is open and after a clean end.
    pub fn broken(&self) -> Option<&Error> {
        self.intake.broken()
    }

    /// Whether the channel ended (closed by the acceptor, or broken): no connection will come.
    pub fn ended(&self) -> bool {
        self.intake.ended()
    }
}

/// What one [`NonblockingIncoming::try_next_batch`] took: the connections, in the acceptor's
/// order (iterate it), and whether the channel ended with them.
///
/// Each item is a redeemed [`Connection`], or the error of a record that could not be
/// redeemed (the acceptor was told and gives that connection to another worker: log it and go
/// on); after a line that was not the protocol, the last item is that error and the batch has
/// [`ended`](Self::ended).
#[derive(Debug)]
#[must_use = "the connections are yours to serve; dropping one tells the acceptor it is done"]
pub struct Batch {
    conns: Vec<Result<Connection, Error>>,
    ended: bool,
}

impl Batch {
    /// Whether the acceptor's channel ended with this batch (or before it): no connection
    /// will come; serve the ones you hold and exit (with a failure status if
    /// [`NonblockingIncoming::broken`]).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// How many items (connections and errors) it holds.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether it holds no item.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

impl IntoIterator for Batch {
    type Item = Result<Connection, Error>;
    type IntoIter = std::vec::IntoIter<Result<Connection, Error>>;

    fn into_iter(self) -> Self::IntoIter {
        self.conns.into_iter()
    }
}

/// A redeemed stream socket as the std type its family calls for.
fn std_stream(fd: OwnedFd, unix: bool) -> Result<Stream, Error> {
    Ok(if unix {
        Stream::Unix(UnixStream::from(fd))
    } else {
        Stream::Tcp(TcpStream::from(fd))
    })
}

/// What every way of reading the acceptor's channel shares (the blocking [`Incoming`], the
/// [`NonblockingIncoming`] of a caller's event loop, and the tokio one): the bytes read and not
/// yet a whole line, the connections redeemed and not yet handed out (`C`: a connection type
/// built from its [`Done`] and its stream), and how the channel ended. The callers only read.
#[derive(Debug)]
pub(super) struct Intake<C> {
    /// Bytes read from the channel, not yet a whole line.
    lines: LineBuffer,
    /// Room for one read.
    chunk: Vec<u8>,
    /// Redeemed and answered, not yet handed out.
    ready: VecDeque<Result<C, Error>>,
    ended: bool,
    /// The acceptor's line that was not the protocol: why the channel broke.
    broken: Option<Error>,
}

impl<C> Intake<C> {
    pub(super) fn new() -> Self {
        Self {
            lines: LineBuffer::new(MAX_LINE),
            chunk: vec![0u8; 64 * 1024],
            ready: VecDeque::new(),
            ended: false,
            broken: None,
        }
    }

    /// Where the next read goes; then [`take`](Self::take) what it read.
    pub(super) fn chunk(&mut self) -> &mut [u8] {
        &mut self.chunk
    }

    /// The next connection (or redemption error) to hand out.
    pub(super) fn pop(&mut self) -> Option<Result<C, Error>> {
        self.ready.pop_front()
    }

    /// Every connection (and redemption error) not yet handed out, in order.
    pub(super) fn pop_all(&mut self) -> Vec<Result<C, Error>> {
        self.ready.drain(..).collect()
    }

    /// Whether the channel ended (closed, or broken): nothing more will be read.
    pub(super) fn ended(&self) -> bool {
        self.ended
    }

    pub(super) fn broken(&self) -> Option<&Error> {
        self.broken.as_ref()
    }

    /// Takes the `n` bytes just read into [`chunk`](Self::chunk) (0: the channel closed) and
    /// redeems every whole `conn` line they completed, each stream made by `make` and each
    /// connection by `wrap`; the answers go to the acceptor in one write. A line that is not
    /// the protocol is answered with an `error` line, queued as an error after the connections
    /// before it, and ends the channel.
    pub(super) fn take<S>(
        &mut self,
        worker: &Worker,
        n: usize,
        make: impl FnMut(OwnedFd, bool) -> Result<S, Error>,
        wrap: impl Fn(Done, S) -> C,
    ) {
        if n == 0 {
            // The channel closed; a last line without its line end was cut short.
            self.ended = true;
            if !self.lines.partial().is_empty() {
                tracing::debug!("sockdup worker: the acceptor's last line was cut short");
            }
            return;
        }
        self.lines.extend(&self.chunk[..n]);
        let (conns, broken) = parse_lines(&mut self.lines);
        let redeemed = worker.redeem_all(conns, broken.as_ref(), make);
        for (id, r) in redeemed {
            self.ready
                .push_back(r.map(|stream| wrap(Done::new(id, worker.out.clone()), stream)));
        }
        if let Some(e) = broken {
            tracing::error!(error = %e, "sockdup worker: the acceptor's line is not the protocol");
            self.ready
                .push_back(Err(Error::new(e.kind(), e.message().to_owned())));
            self.broken = Some(e);
            self.ended = true;
        }
    }
}

/// A close-on-exec copy of standard input (the acceptor's channel) in non-blocking mode, for
/// the worker that reads it from an event loop. `O_NONBLOCK` belongs to the pipe's open file,
/// so standard input itself is non-blocking from then on.
pub(super) fn nonblocking_stdin() -> Result<OwnedFd, Error> {
    let input = rustix::io::fcntl_dupfd_cloexec(io::stdin().as_fd(), 3)
        .map_err(|e| Error::from_errno(e, "copying standard input"))?;
    rustix::fs::fcntl_getfl(&input)
        .and_then(|fl| rustix::fs::fcntl_setfl(&input, fl | rustix::fs::OFlags::NONBLOCK))
        .map_err(|e| Error::from_errno(e, "making standard input non-blocking"))?;
    Ok(input)
}

impl Connection {
    fn new(done: Done, stream: Stream) -> Self {
        Self { done, stream }
    }

    /// The acceptor's id for this connection.
    pub fn id(&self) -> u64 {
        self.done.id()
    }

    /// The stream.
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Closes the stream and tells the acceptor this connection is done.
    pub fn finish(mut self) {
        self.done.send();
    }

    /// [`finish`](Self::finish) for many connections at once: their `done` lines go to the
    /// acceptor in one write (one per worker channel, if they came from different [`Worker`]s)
    /// instead of one write each, then their streams close. For a server that learns of
    /// several finished connections at a time (an event loop, after one `epoll_wait`): fewer
    /// writes for it, and fewer reads and wake-ups for the acceptor.
    pub fn finish_all(conns: impl IntoIterator<Item = Connection>) {
        let mut conns: Vec<Connection> = conns.into_iter().collect();
        let mut text = String::new();
        let mut out: Option<Arc<Channel>> = None;
        for c in &mut conns {
            if c.done.sent {
                continue;
            }
            if let Some(o) = out.as_ref().filter(|o| !Arc::ptr_eq(o, &c.done.out)) {
                let _ = o.write(&text);
                text.clear();
            }
            out = Some(c.done.out.clone());
            FromWorker::Done(c.done.id).encode_into(&mut text);
            c.done.sent = true;
        }
        if let Some(o) = out.filter(|_| !text.is_empty()) {
            let _ = o.write(&text);
        }
        // The streams close after the acceptor was told, as a single connection's do.
        drop(conns);
    }
}
