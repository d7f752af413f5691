//! `raw-acceptor --listen ADDR [--workers N]`: the raw twin of `sockdup serve`.
//!
//! The acceptor process binds `ADDR`, spawns N worker processes (this executable again, in the
//! hidden `--worker` mode), each with its end of a pre-made `AF_UNIX` `SOCK_SEQPACKET`
//! socketpair as its standard input, then accepts connections and passes each one to the next
//! worker in turn with a single bare `sendmsg` carrying `SCM_RIGHTS`, and closes its own
//! descriptor at once: no sockdup, no records, no acknowledgement. A worker `recvmsg`s each
//! descriptor and serves the HTTP hello protocol from its event loop
//! ([`sockdup_loadtest::serve_all`], the serving code of `sockdup worker --app hello`).
//!
//! SIGTERM, SIGINT or SIGHUP stops the acceptor: it kills and reaps its workers and exits 0.
//! Workers also die with the acceptor (`PR_SET_PDEATHSIG`), and exit when their channel
//! closes; the acceptor exits when a worker is gone.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{ExitCode, Stdio};

use sockdup_loadtest::{
    Options, die_with_parent, fd_channel, listen, recv_fd, send_fd, serve_all, spawn_self_worker,
    stdin_channel, stop_children_on_signal,
};

fn worker() -> Result<(), String> {
    die_with_parent().map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
    let channel = stdin_channel().map_err(|e| format!("standard input: {e}"))?;
    serve_all(move || match recv_fd(channel.as_fd()) {
        Ok(Some(fd)) => Some(TcpStream::from(fd)),
        // The acceptor is gone: so are the connections it would send.
        Ok(None) => None,
        Err(e) => {
            eprintln!("raw-acceptor: receiving a connection: {e}");
            None
        }
    })
    .map_err(|e| format!("serving: {e}"))
}

fn acceptor(options: &Options) -> Result<(), String> {
    let addr = options.listen.ok_or("--listen is required")?;
    let listener = listen(addr, false).map_err(|e| format!("listening on {addr}: {e}"))?;
    let mut channels: Vec<OwnedFd> = Vec::new();
    let mut children = Vec::new();
    for _ in 0..options.workers {
        let (ours, theirs) = fd_channel().map_err(|e| format!("socketpair: {e}"))?;
        let child = spawn_self_worker(Stdio::from(theirs), &[])
            .map_err(|e| format!("starting a worker: {e}"))?;
        channels.push(ours);
        children.push(child);
    }
    stop_children_on_signal(children.iter().map(std::process::Child::id).collect())
        .map_err(|e| format!("installing the signal handlers: {e}"))?;
    let mut next = 0;
    let result = loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            // Out of descriptors or the like: the connection is lost, the server goes on.
            Err(e) => {
                eprintln!("raw-acceptor: accept: {e}");
                continue;
            }
        };
        if let Err(e) = send_fd(channels[next].as_fd(), stream.as_fd()) {
            break Err(format!("handing a connection to worker {next}: {e}"));
        }
        drop(stream);
        next = (next + 1) % channels.len();
    };
    drop(channels);
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = Options::parse("raw-acceptor", args).and_then(|options| {
        if options.worker {
            worker()
        } else {
            acceptor(&options)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw-acceptor: {e}");
            ExitCode::FAILURE
        }
    }
}
