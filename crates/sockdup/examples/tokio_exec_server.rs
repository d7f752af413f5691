//! A tokio echo server that runs under `sockdup exec` and survives upgrades: it takes its
//! listener in the socket-activation convention (`LISTEN_FDS`, descriptor 3), serves each
//! connection in a task of a one-thread runtime, and at SIGTERM (the new version has taken
//! over) stops accepting, finishes the connections it has, and exits 0. Running the same
//! command line again replaces it without refusing a connection:
//!
//! ```text
//! cargo build -p sockdup --features tokio --example tokio_exec_server
//! sockdup exec --listen web=127.0.0.1:8080 -- target/debug/examples/tokio_exec_server
//! # later, the upgrade: the same command line (with the new binary)
//! sockdup exec --listen web=127.0.0.1:8080 -- target/debug/examples/tokio_exec_server
//! ```
//!
//! The listener is made non-blocking for tokio ([`sockdup::tokio::tcp_listener`]); that is a
//! property of the socket, shared with the old and the new server's descriptors, so every
//! server on it must accept without blocking calls (as tokio does).

use std::future::poll_fn;
use std::os::fd::AsFd;
use std::task::Poll;

use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(serve())
}

async fn serve() -> Result<()> {
    let activated = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)?
        .ok_or("no listener in LISTEN_FDS: run under `sockdup exec --listen NAME=ADDR`")?;
    // Checked to be a listening TCP socket, made non-blocking, registered (a copy).
    let listener = sockdup::tokio::tcp_listener(activated.as_fd())?;
    drop(activated);
    let mut term = signal(SignalKind::terminate())?;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        // The next connection, or `None` at SIGTERM.
        let next = poll_fn(|cx| {
            if term.poll_recv(cx).is_ready() {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let Some(accepted) = next else { break };
        let Ok((mut conn, _peer)) = accepted else {
            // Out of descriptors or the like: the connection waits in the backlog.
            tokio::task::yield_now().await;
            continue;
        };
        tasks.spawn(async move {
            let (mut r, mut w) = conn.split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // Taken over: new connections go to the new server; finish ours, then exit 0.
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}
