//! `floor-acceptor --listen ADDR [--workers N]`: the floor twin of `sockdup serve`.
//!
//! What `sockdup serve`'s contract needs from the kernel and nothing else, so that
//! `sockdup serve` / floor shows what sockdup's own code costs, and floor / `raw-acceptor` what
//! the guarantee costs. Like `sockdup serve`'s acceptor it waits in `epoll` on a non-blocking
//! listener, accepts what one wake-up brings (at most 256), deals the connections round-robin,
//! and sends each worker its share in batches of at most 64: per batch one `sendmsg` with
//! `SCM_RIGHTS` to the worker, then a blocking wait for the worker's acknowledgement that it
//! holds them (what sockdup's inbox acknowledgement guarantees), and only then closes its own
//! descriptors. Connections left after one batch per worker go out on the next turn, without
//! waiting in `epoll` (as `sockdup serve` does). There are no records, no inbox table, no
//! `conn`/`ok`/`done` lines. A worker (this executable again, `--worker`) receives a batch on
//! its channel, acknowledges it, and serves the connections from the same event loop as
//! `sockdup worker --app hello` ([`sockdup_loadtest::serve_all`]).
//!
//! SIGTERM, SIGINT or SIGHUP stops the acceptor: it kills and reaps its workers and exits 0.
//! Workers die with the acceptor (`PR_SET_PDEATHSIG`) and exit when their channel closes; the
//! acceptor exits when a worker is gone.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;

use rustix::event::epoll;
use rustix::net::SocketFlags;
use sockdup_loadtest::{
    MAX_BATCH, Options, Workers, acceptor_main, die_with_parent, listen, recv_fds, send_ack,
    send_fds, serve_all, stdin_channel, wait_ack,
};

/// The most connections accepted per wake-up (as `sockdup serve`).
const ACCEPT_BATCH: usize = 256;

fn worker() -> Result<(), String> {
    die_with_parent().map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
    let channel = stdin_channel().map_err(|e| format!("standard input: {e}"))?;
    let mut held: VecDeque<OwnedFd> = VecDeque::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    serve_all(move || {
        if held.is_empty() {
            batch.clear();
            match recv_fds(channel.as_fd(), &mut batch) {
                Ok(true) => {}
                // The acceptor is gone: so are the connections it would send.
                Ok(false) => return None,
                Err(e) => {
                    eprintln!("floor-acceptor: receiving connections: {e}");
                    return None;
                }
            }
            // The batch is ours: the acceptor may close its descriptors.
            if let Err(e) = send_ack(channel.as_fd()) {
                eprintln!("floor-acceptor: acknowledging connections: {e}");
            }
            held.extend(batch.drain(..));
        }
        held.pop_front().map(TcpStream::from)
    })
    .map_err(|e| format!("serving: {e}"))
}

fn acceptor(options: &Options) -> Result<(), String> {
    let addr = options.listen.ok_or("--listen is required")?;
    let listener = listen(addr, false).map_err(|e| format!("listening on {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("making the listener non-blocking: {e}"))?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
    epoll::add(
        &ep,
        &listener,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN,
    )
    .map_err(|e| format!("epoll_ctl: {e}"))?;
    let workers = Workers::start(options.workers)?;
    serve(&ep, listener.as_fd(), workers.channels())
}

fn serve(ep: &OwnedFd, listener: BorrowedFd<'_>, channels: &[OwnedFd]) -> Result<(), String> {
    let n = channels.len();
    let mut events = Vec::with_capacity(8);
    let mut queue: VecDeque<OwnedFd> = VecDeque::with_capacity(ACCEPT_BATCH);
    let mut batches: Vec<Vec<OwnedFd>> = (0..n).map(|_| Vec::with_capacity(MAX_BATCH)).collect();
    let mut next = 0;
    loop {
        let timeout = if queue.is_empty() {
            None
        } else {
            Some(rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            })
        };
        events.clear();
        match epoll::wait(
            ep,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        if !events.is_empty() {
            while queue.len() < ACCEPT_BATCH {
                match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
                    Ok(fd) => queue.push_back(fd),
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => {}
                    // Out of descriptors or the like: the connection stays in the backlog.
                    Err(e) => {
                        eprintln!("floor-acceptor: accept: {e}");
                        break;
                    }
                }
            }
        }
        // One batch of at most MAX_BATCH per worker per turn, dealt round-robin.
        while let Some(fd) = queue.pop_front() {
            let Some(slot) = (0..n)
                .map(|k| (next + k) % n)
                .find(|&i| batches[i].len() < MAX_BATCH)
            else {
                queue.push_front(fd);
                break;
            };
            batches[slot].push(fd);
            next = (slot + 1) % n;
        }
        for (slot, batch) in batches.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let fds: Vec<BorrowedFd<'_>> = batch.iter().map(AsFd::as_fd).collect();
            send_fds(channels[slot].as_fd(), &fds)
                .and_then(|()| wait_ack(channels[slot].as_fd()))
                .map_err(|e| format!("handing connections to worker {slot}: {e}"))?;
            drop(fds);
            // Acknowledged: the worker holds them; ours close.
            batch.clear();
        }
    }
}

fn main() -> ExitCode {
    acceptor_main("floor-acceptor", worker, acceptor)
}
