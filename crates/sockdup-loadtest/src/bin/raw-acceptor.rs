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

use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::ExitCode;

use sockdup_loadtest::{
    Workers, acceptor_main, die_with_parent, listen, recv_fd, send_fd, serve_all, stdin_channel,
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

fn acceptor(options: &sockdup_loadtest::Options) -> Result<(), String> {
    let addr = options.listen.ok_or("--listen is required")?;
    let listener = listen(addr, false).map_err(|e| format!("listening on {addr}: {e}"))?;
    let workers = Workers::start(options.workers)?;
    let channels = workers.channels();
    let mut next = 0;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            // Out of descriptors or the like: the connection is lost, the server goes on.
            Err(e) => {
                eprintln!("raw-acceptor: accept: {e}");
                continue;
            }
        };
        if let Err(e) = send_fd(channels[next].as_fd(), stream.as_fd()) {
            return Err(format!("handing a connection to worker {next}: {e}"));
        }
        drop(stream);
        next = (next + 1) % channels.len();
    }
}

fn main() -> ExitCode {
    acceptor_main("raw-acceptor", worker, acceptor)
}
