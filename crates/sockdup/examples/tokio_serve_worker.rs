//! A tokio echo server that runs as a `sockdup serve` worker: the acceptor owns the listener
//! and hands each accepted connection over; this worker takes them as tokio streams
//! ([`sockdup::handoff::Worker::incoming_async`]) and echoes each in a task of a one-thread
//! runtime. No thread per connection, and standard input (the acceptor's channel) is read
//! through the runtime's I/O driver.
//!
//! ```text
//! cargo build -p sockdup --features tokio --example tokio_serve_worker
//! sockdup serve --listen 127.0.0.1:8080 --workers 2 -- target/debug/examples/tokio_serve_worker
//! ```
//!
//! Standard output is the acceptor's channel: log to standard error only.

use tokio::io::AsyncWriteExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(serve())
}

async fn serve() -> Result<()> {
    // Starts sockdup in this process and tells the acceptor its pid.
    let worker = sockdup::handoff::Worker::announce()?;
    let mut incoming = worker.incoming_async()?;
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(conn) = incoming.next().await {
        let mut conn = match conn {
            Ok(conn) => conn,
            // Reported to the acceptor already: it gives the connection to another worker.
            Err(e) => {
                eprintln!("tokio_serve_worker: {e}");
                continue;
            }
        };
        tasks.spawn(async move {
            let (mut r, mut w) = tokio::io::split(conn.stream());
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
            // `conn` drops here: the acceptor hears `done`.
        });
        // Reap the finished tasks as we go.
        while tasks.try_join_next().is_some() {}
    }
    // The acceptor closed the channel (shutdown, or it died): finish what we have, then exit.
    while tasks.join_next().await.is_some() {}
    match incoming.broken() {
        Some(e) => Err(format!("the acceptor's channel broke: {e}").into()),
        None => Ok(()),
    }
}
