//! `sockdup worker --listen-fds`: the built-in apps as a socket-activated server, accepting
//! on the listening sockets passed in `LISTEN_FDS` (read with the `listenfd` crate, as any
//! Rust server supporting socket activation would), e.g. under `sockdup exec`.
//!
//! SIGTERM or SIGINT stops accepting; the connections already accepted are finished (the
//! `hello` app answers requests in progress with `Connection: close`), then the process exits
//! 0. Connections still waiting in a listener's queue stay there, for whoever else holds the
//! socket (the next version of the server, under `sockdup exec`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use listenfd::ListenFd;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{SocketFlags, accept_with};
use sockdup::handoff::Stream;

use super::App;
use super::Sock;
use super::evloop::{Feed, Feeder};
use crate::CliError;

/// How often the accept loop looks at the stop flag.
const TICK: Duration = Duration::from_millis(50);

/// A listener passed in, and whether it is a Unix one.
struct Passed {
    fd: OwnedFd,
    unix: bool,
}

fn take_listeners() -> Result<Vec<Passed>, CliError> {
    let mut env = ListenFd::from_env();
    if env.len() == 0 {
        return Err(CliError::failed(
            "no listening socket was passed: LISTEN_FDS is unset or 0, or LISTEN_PID names another process \
             (run this under `sockdup exec --listen NAME=ADDR -- ...` or a systemd socket unit)",
        ));
    }
    let failed = |i: usize, e: std::io::Error| {
        CliError::failed(format!("descriptor {} from LISTEN_FDS: {e}", i + 3))
    };
    let mut out = Vec::with_capacity(env.len());
    for i in 0..env.len() {
        // listenfd checks the socket's kind; a descriptor of the wrong kind stays for the next try.
        if let Some(l) = env
            .take_tcp_listener(i)
            .or_else(|_| Ok(None))
            .map_err(|e| failed(i, e))?
        {
            out.push(Passed {
                fd: l.into(),
                unix: false,
            });
        } else if let Some(l) = env.take_unix_listener(i).map_err(|e| failed(i, e))? {
            out.push(Passed {
                fd: l.into(),
                unix: true,
            });
        } else {
            return Err(CliError::failed(format!(
                "descriptor {} from LISTEN_FDS is not a listening TCP or Unix stream socket",
                i + 3
            )));
        }
    }
    Ok(out)
}

/// Runs the socket-activated server.
pub(super) fn run(app: App) -> Result<(), CliError> {
    let listeners = take_listeners()?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| CliError::failed(format!("installing a signal handler: {e}")))?;
    }
    let (feeder, event_loop) = super::evloop::channel()
        .map_err(|e| CliError::failed(format!("creating the event loop: {e}")))?;
    // Accepting stays on a thread of its own: the listeners are shared with the other version
    // of the server and stay blocking (see `accept`). The connections are served on this one.
    let acceptor = thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(listeners, &stop, &feeder))
        .map_err(|e| CliError::failed(format!("starting the accept loop: {e}")))?;
    // A failed loop returns at once (leaving `run` ends the process, accept thread and all).
    event_loop
        .run(app.protocol())
        .map_err(|e| CliError::failed(format!("the event loop failed: {e}")))?;
    acceptor
        .join()
        .unwrap_or_else(|_| Err(CliError::failed("the accept loop panicked")))
}

/// Accepts until `stop`, handing each connection to the event loop; then closes the listeners
/// and tells the loop the end.
fn accept_loop(
    listeners: Vec<Passed>,
    stop: &AtomicBool,
    feeder: &Feeder<Sock>,
) -> Result<(), CliError> {
    let tick = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: TICK.as_nanos() as i64,
    };
    let mut result = Ok(());
    while !stop.load(Ordering::SeqCst) {
        let mut polled: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| PollFd::new(&l.fd, PollFlags::IN))
            .collect();
        match poll(&mut polled, Some(&tick)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                result = Err(CliError::failed(format!("polling the listeners: {e}")));
                break;
            }
        }
        let ready: Vec<bool> = polled.iter().map(|p| !p.revents().is_empty()).collect();
        drop(polled);
        // The signal may have woken another thread (the event loop's) rather than this one's
        // poll: a connection that came after it is not ours to take.
        if stop.load(Ordering::SeqCst) {
            break;
        }
        for (l, _) in listeners.iter().zip(ready).filter(|(_, r)| *r) {
            let Some(conn) = accept(l) else { continue };
            let stream = if l.unix {
                Stream::Unix(conn.into())
            } else {
                Stream::Tcp(conn.into())
            };
            feeder.send(Feed::Conn(Sock::Plain(stream)));
        }
    }
    drop(listeners);
    tracing::debug!("sockdup worker: stopping");
    feeder.send(Feed::End);
    result
}

/// Accepts the connection `poll` saw. The listener is shared with the other version of the
/// server and stays in blocking mode (its mode is shared too, so not ours to change): if the
/// other process took the connection first, this waits for the next one, which under
/// `sockdup exec` at worst delays noticing SIGTERM until then; nothing is lost either way.
fn accept(l: &Passed) -> Option<OwnedFd> {
    match accept_with(l.fd.as_fd(), SocketFlags::CLOEXEC) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(error = %e, "accept");
            None
        }
    }
}
