//! A tokio echo server fed by records: the worker side of a hand-off, async.
//!
//! Run as a worker, it prints its pid, then reads records (one `sockdup1:` line each, made by
//! any process with `sockdup::duplicate_socket(&connection, worker_pid)`) on stdin, turns each
//! into a `tokio::net::TcpStream` ([`sockdup::tokio::FromInfo`]) and echoes it in a task of a
//! one-thread runtime, until stdin ends and its connections close.
//!
//! Run with `--demo`, it plays the source too: it starts itself as a worker, accepts three
//! loopback connections, hands each to the worker with `sockdup::tokio::duplicate_socket`, and
//! checks that each is echoed:
//!
//! ```text
//! cargo run -p sockdup --features tokio --example tokio_echo_worker -- --demo
//! ```

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

use sockdup::tokio::FromInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let _guard = sockdup::startup()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    if std::env::args().nth(1).as_deref() == Some("--demo") {
        runtime.block_on(demo())
    } else {
        runtime.block_on(worker())
    }
}

/// The worker: records in on stdin, one echo task per connection.
async fn worker() -> Result<()> {
    println!("{}", std::process::id());
    std::io::stdout().flush()?;
    let handle = tokio::runtime::Handle::current();
    // Reading stdin blocks: a pool thread reads it and spawns a task per record.
    let tasks = tokio::task::spawn_blocking(move || {
        let mut tasks = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if !line.trim().is_empty() {
                tasks.push(handle.spawn(echo(line)));
            }
        }
        tasks
    })
    .await?;
    for task in tasks {
        if let Err(e) = task.await? {
            eprintln!("worker: {e}");
        }
    }
    Ok(())
}

/// Redeems one record into a tokio stream and echoes it until the client closes.
async fn echo(line: String) -> Result<()> {
    let record: sockdup::ProtocolInfo = line.trim().parse()?;
    let mut stream = tokio::net::TcpStream::from_info(&record)?;
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    Ok(())
}

/// The source: accepts connections and hands each to a worker it starts.
async fn demo() -> Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut pid = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut pid)?;
    let pid: u32 = pid.trim().parse()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    for i in 0..3 {
        let mut client = tokio::net::TcpStream::connect(addr).await?;
        let (conn, _) = listener.accept().await?;
        let record = sockdup::tokio::duplicate_socket(&conn, pid).await?;
        drop(conn); // the worker holds the connection now
        writeln!(stdin, "{record}")?;
        let message = format!("hello {i}");
        client.write_all(message.as_bytes()).await?;
        let mut answer = vec![0u8; message.len()];
        client.read_exact(&mut answer).await?;
        assert_eq!(answer, message.as_bytes(), "the worker echoes");
        println!(
            "connection {i}: worker {pid} echoed {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    drop(stdin);
    let status = child.wait()?;
    println!("worker exited: {status}");
    Ok(())
}
