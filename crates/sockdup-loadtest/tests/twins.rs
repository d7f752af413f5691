//! The load-test twins as real processes: `raw-acceptor`, `floor-acceptor` and
//! `reuseport-server`, two workers
//! each, on a loopback port. Each answers `Connection: close` requests, keep-alive and
//! pipelined requests, and a malformed request with `400` (the HTTP state machine of
//! `sockdup worker --app hello`, shared with it); each worker holds 40 open connections on two
//! threads (its feeding thread and the event loop, not a thread per connection); SIGTERM stops
//! the server (exit 0) and its workers. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

/// A free loopback port (bound, then let go: the server binds it next).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(bin: &str) -> Self {
        let addr = free_addr();
        let child = Command::new(bin)
            .args(["--listen", &addr.to_string(), "--workers", "2"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the twin");
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(start.elapsed() < WAIT, "{bin} never listened on {addr}");
            thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr }
    }

    fn connect(&self) -> (TcpStream, BufReader<TcpStream>) {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        (s.try_clone().expect("clone"), BufReader::new(s))
    }

    /// The worker processes (this process's children).
    fn workers(&self) -> Vec<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One response: its status, its `Connection` header, its body.
fn response(r: &mut impl BufRead) -> (u16, Option<String>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("the status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {line:?}"));
    let (mut length, mut connection) = (0usize, None);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("a header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':').expect("a header line");
        match n.to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().expect("a length"),
            "connection" => connection = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).expect("the body");
    (status, connection, body)
}

fn closed(r: &mut impl Read) -> bool {
    matches!(r.read(&mut [0u8; 1]), Ok(0))
}

fn serves_like_the_sockdup_worker(bin: &str) {
    let mut server = Server::start(bin);
    // New connection per request.
    for i in 0..20 {
        let (mut w, mut r) = server.connect();
        w.write_all(
            format!("GET /{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send");
        let (status, connection, body) = response(&mut r);
        assert_eq!((status, connection.as_deref()), (200, Some("close")));
        assert_eq!(body, b"hello from sockdup\n");
        assert!(closed(&mut r), "{bin}: the connection stayed open");
    }
    // Keep-alive, pipelined.
    let (mut w, mut r) = server.connect();
    w.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    assert_eq!(response(&mut r).0, 200);
    assert_eq!(response(&mut r).0, 200);
    // A malformed request: 400, then the end.
    let (mut w, mut r) = server.connect();
    w.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("send");
    assert_eq!(response(&mut r).0, 400);
    assert!(closed(&mut r));
    // Open connections do not cost threads.
    let mut open = Vec::new();
    for i in 0..80 {
        let (mut w, mut r) = server.connect();
        w.write_all(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("send");
        assert_eq!(response(&mut r).0, 200);
        open.push((w, r));
    }
    let workers = server.workers();
    assert_eq!(workers.len(), 2, "{bin}: workers {workers:?}");
    for pid in workers {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(threads <= 2, "{bin}: worker {pid} runs {threads} threads");
    }
    // SIGTERM stops it all.
    let pid = Pid::from_raw(i32::try_from(server.child.id()).expect("pid")).expect("pid");
    kill_process(pid, Signal::TERM).expect("SIGTERM");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(start.elapsed() < WAIT, "{bin} did not stop on SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{bin}: {status:?}");
    for (_, r) in &mut open {
        assert!(closed(r), "{bin}: a connection outlived its server");
    }
}

#[test]
fn the_raw_twin_serves_like_the_sockdup_worker() {
    serves_like_the_sockdup_worker(env!("CARGO_BIN_EXE_raw-acceptor"));
}

#[test]
fn the_reuseport_twin_serves_like_the_sockdup_worker() {
    serves_like_the_sockdup_worker(env!("CARGO_BIN_EXE_reuseport-server"));
}

#[test]
fn the_floor_twin_serves_like_the_sockdup_worker() {
    serves_like_the_sockdup_worker(env!("CARGO_BIN_EXE_floor-acceptor"));
}
