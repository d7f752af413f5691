//! An echo server that runs as a `sockdup serve` worker from a hand-written poll(2) loop, on
//! one thread: the acceptor's channel ([`sockdup::handoff::Worker::incoming_nonblocking`]) and
//! this process's inbox ([`sockdup::CallerInbox`], from
//! [`sockdup::Options::inbox_served_by_caller`]: it receives the acceptor's descriptors) are
//! two more descriptors in the loop, next to the connections it serves. No async runtime, no
//! other thread: the loop receives the pushed descriptor and acknowledges it, reads the
//! `conn` line, redeems and confirms it, and serves the connection.
//!
//! ```text
//! cargo build -p sockdup --example poll_serve_worker
//! sockdup serve --listen 127.0.0.1:8080 --workers 2 -- target/debug/examples/poll_serve_worker
//! ```
//!
//! Standard output is the acceptor's channel: log to standard error only.

use std::io::{self, Read, Write};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, poll};
use sockdup::handoff::{Connection, Worker};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A connection being echoed.
struct Echo {
    conn: Connection,
    /// Read, not yet written back.
    pending: Vec<u8>,
    /// The client closed its side: close once `pending` is written.
    eof: bool,
}

fn main() -> Result<()> {
    // Starts sockdup with the inbox served by this loop (no inbox thread): first, so that the
    // start in `announce` joins this run. The loop must then serve it promptly: the acceptor
    // waits for its answer (up to its ack timeout) before it writes the `conn` line.
    let guard = sockdup::Options::from_env()?
        .inbox_served_by_caller()
        .startup()?;
    let inbox = guard
        .caller_inbox()
        .expect("the first start in this process")
        .clone();
    // Tells the acceptor this process's pid.
    let worker = Worker::announce()?;
    let mut incoming = worker.incoming_nonblocking()?;
    let mut open: Vec<Echo> = Vec::new();
    let mut ended = false;
    let mut buf = vec![0u8; 16 * 1024];
    while !(ended && open.is_empty()) {
        // One poll for the inbox, the channel (until its end) and every connection, no longer
        // than until the inbox's next expiry.
        let wait = inbox.timeout();
        let due = wait.map(|t| Instant::now() + t);
        let timeout = wait.map(rustix::time::Timespec::try_from).transpose()?;
        let (inbox_ready, channel, conns): (bool, PollFlags, Vec<PollFlags>) = {
            let mut fds = Vec::with_capacity(open.len() + 2);
            for e in &mut open {
                let want = if e.pending.is_empty() {
                    PollFlags::IN
                } else {
                    PollFlags::OUT
                };
                fds.push(PollFd::new(e.conn.stream(), want));
            }
            if !ended {
                fds.push(PollFd::new(&incoming, PollFlags::IN));
            }
            fds.push(PollFd::new(&inbox, PollFlags::IN));
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            let mut revents: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
            let inbox_ready = revents.pop().is_some_and(|r| !r.is_empty());
            let channel = if ended {
                PollFlags::empty()
            } else {
                revents.pop().unwrap_or_else(PollFlags::empty)
            };
            (inbox_ready, channel, revents)
        };
        // The inbox first: it receives (and acknowledges) the descriptors that the `conn`
        // lines will name; when due, it closes the duplicates that expired.
        if inbox_ready || due.is_some_and(|d| Instant::now() >= d) {
            inbox.serve_ready()?;
        }
        // The connections first: `conns` is in their order as polled.
        for (e, flags) in open.iter_mut().zip(conns) {
            if !flags.is_empty() && step(e, &mut buf) {
                e.eof = true;
                e.pending.clear();
            }
        }
        // Those finished in this turn tell the acceptor in one write, then close.
        let (finished, kept): (Vec<Echo>, Vec<Echo>) = open
            .into_iter()
            .partition(|e| e.eof && e.pending.is_empty());
        open = kept;
        Connection::finish_all(finished.into_iter().map(|e| e.conn));
        if channel.is_empty() {
            continue;
        }
        // New connections: redeemed and confirmed (`ok`) in one write; ours to serve.
        let batch = incoming.try_next_batch();
        ended = batch.ended();
        for conn in batch {
            match conn {
                Ok(mut conn) => {
                    rustix::io::ioctl_fionbio(&*conn.stream(), true)?;
                    open.push(Echo {
                        conn,
                        pending: Vec::new(),
                        eof: false,
                    });
                }
                // Reported to the acceptor already: it gives the connection to another worker
                // (or, the last item of an ended batch, the channel broke).
                Err(e) => eprintln!("poll_serve_worker: {e}"),
            }
        }
    }
    // The acceptor closed the channel (shutdown, or it died) and every connection is done.
    match incoming.broken() {
        Some(e) => Err(format!("the acceptor's channel broke: {e}").into()),
        None => Ok(()),
    }
}

/// Echoes what it can without blocking; true once the connection is done with (the client
/// closed and everything was written back, or an error).
fn step(e: &mut Echo, buf: &mut [u8]) -> bool {
    loop {
        if !e.pending.is_empty() {
            match e.conn.stream().write(&e.pending) {
                Ok(n) => {
                    e.pending.drain(..n);
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        if e.eof {
            return true;
        }
        match e.conn.stream().read(buf) {
            Ok(0) => e.eof = true,
            Ok(n) => e.pending.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}
