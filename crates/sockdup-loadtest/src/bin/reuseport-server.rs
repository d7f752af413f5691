//! `reuseport-server --listen ADDR [--workers N]`: the ceiling for `sockdup serve`.
//!
//! N worker processes (this executable again, in the hidden `--worker` mode) each bind `ADDR`
//! with `SO_REUSEPORT` and accept for themselves: the kernel spreads the connections among
//! them and nothing is handed off. Each connection is served with the HTTP hello protocol from
//! its event loop ([`sockdup_loadtest::serve_all`]), as in `raw-acceptor`.
//!
//! The first process only supervises: when a worker exits, it kills the others and exits with
//! that worker's status; on SIGTERM, SIGINT or SIGHUP it kills and reaps the workers and exits
//! 0. Workers also die with it (`PR_SET_PDEATHSIG`).
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::process::{ExitCode, Stdio};

use sockdup_loadtest::{
    Options, die_with_parent, listen, serve_all, spawn_self_worker, stop_children_on_signal,
    supervise,
};

fn worker(options: &Options) -> Result<(), String> {
    die_with_parent().map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
    let addr = options.listen.ok_or("--listen is required")?;
    let listener = listen(addr, true).map_err(|e| format!("listening on {addr}: {e}"))?;
    serve_all(move || {
        loop {
            match listener.accept() {
                Ok((stream, _)) => return Some(stream),
                Err(e) => eprintln!("reuseport-server: accept: {e}"),
            }
        }
    })
    .map_err(|e| format!("serving: {e}"))
}

fn supervisor(options: &Options) -> Result<i32, String> {
    let addr = options.listen.ok_or("--listen is required")?;
    let mut children = Vec::new();
    for _ in 0..options.workers {
        let extra = [OsString::from("--listen"), OsString::from(addr.to_string())];
        match spawn_self_worker(Stdio::null(), &extra) {
            Ok(child) => children.push(child),
            Err(e) => {
                for mut child in children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(format!("starting a worker: {e}"));
            }
        }
    }
    stop_children_on_signal(children.iter().map(std::process::Child::id).collect())
        .map_err(|e| format!("installing the signal handlers: {e}"))?;
    Ok(supervise(children))
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = Options::parse("reuseport-server", args).and_then(|options| {
        if options.worker {
            worker(&options).map(|()| 0)
        } else {
            supervisor(&options)
        }
    });
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("reuseport-server: {e}");
            ExitCode::FAILURE
        }
    }
}
