//! Provider libraries loaded into C programs linked with libsockdup: the counting layer of
//! `examples/c/counting_lsp.c` installed over TCP/IPv4 and used between the two C processes of
//! `examples/c/handoff.c` (whose `WSASocketW` picks the chain), its counters and its view of
//! each record (the propagation rule); a library whose `WSPStartup` fails, refused at use.

mod util;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use sockdup::catalog::Catalog;
use sockdup::spi::library::{LIBRARY_KIND, PATH_KEY};
use sockdup_tests::cprov::{self, calls};
use util::{compile, lib_dir, repo};

const WAIT: Duration = Duration::from_secs(10);

/// `examples/c/counting_lsp.c` (or `source` text) as a shared library `dir/NAME.so`, linked
/// with nothing of sockdup's.
fn shared(dir: &Path, name: &str, source: &Path) -> PathBuf {
    let out = dir.join(format!("lib{name}.so"));
    cprov::compile_shared(source, &out, &["-std=c11"]);
    out
}

/// A catalog file in `dir` with the library at `path` over TCP/IPv4: (file, layer, chain).
fn catalog_over_tcp(dir: &Path, path: &Path) -> (PathBuf, u32, u32) {
    let mut c = Catalog::builtin();
    let config = BTreeMap::from([(PATH_KEY.to_owned(), path.to_str().unwrap().to_owned())]);
    let (layer, chains) = c
        .install(LIBRARY_KIND, "counting", true, config, &[1001])
        .unwrap();
    let file = dir.join("catalog.json");
    sockdup::save_catalog_to(&file, &c).unwrap();
    (file, layer, chains[0])
}

/// A C program spoken to by lines, with its own environment.
struct Proc {
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(WAIT).expect("a line within 10 s")
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
    }

    fn exit_status(mut self) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("the C program did not exit within 10 s");
    }
}

#[test]
fn the_c_counting_layer_over_tcp_between_two_c_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lsp = shared(
        dir.path(),
        "counting_lsp",
        &repo().join("examples/c/counting_lsp.c"),
    );
    let (catalog, layer, chain) = catalog_over_tcp(dir.path(), &lsp);
    let handoff = compile(
        &[&repo().join("examples/c/handoff.c")],
        &dir.path().join("handoff"),
        false,
    );
    let (source_log, target_log) = (dir.path().join("source.log"), dir.path().join("target.log"));
    let env = |log: &'static str, path: &Path| {
        [
            ("SOCKDUP_CATALOG", catalog.clone()),
            (log, path.to_path_buf()),
        ]
    };
    let (senv, tenv) = (
        env("COUNTING_LSP_LOG", &source_log),
        env("COUNTING_LSP_LOG", &target_log),
    );
    let senv: Vec<(&str, &Path)> = senv.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let tenv: Vec<(&str, &Path)> = tenv.iter().map(|(k, v)| (*k, v.as_path())).collect();

    let target = Proc::spawn(&handoff, &["target"], &tenv);
    let mut source = Proc::spawn(&handoff, &["source", "tcp"], &senv);
    let mut target = target;
    let pid_line = target.line();
    assert!(pid_line.starts_with("pid "), "{pid_line}");
    let target_pid = pid_line["pid ".len()..].to_owned();
    source.send(&pid_line);
    let record_line = source.line();
    let text = record_line.strip_prefix("record ").expect("a record line");
    let info: sockdup::ProtocolInfo = text.parse().expect("a record");
    assert_eq!(info.catalog_entry_id, chain, "WSASocketW picked the chain");
    assert_eq!(info.protocol_chain.used(), [layer, 1001]);
    assert_ne!(info.provider_reserved, 0);
    target.send(&record_line);
    assert_eq!(target.line(), "ok");
    assert_eq!(source.line(), "ok");
    assert!(source.exit_status().success());
    assert!(target.exit_status().success());

    // The source: WSPStartup with the chain's entry, the base provider (this libsockdup.so)
    // started with its own entry; WSPSocket and WSPDuplicateSocket counted, the record down as
    // the base entry and up as the chain's, with the ticket kept.
    let st = &calls(&source_log, "WSPStartup")[0];
    assert_eq!(
        (st["in"].as_str(), st["own"].as_str()),
        (&*chain.to_string(), &*layer.to_string())
    );
    assert_eq!(
        (st["down"].as_str(), st["down_chain"].as_str()),
        ("1001", "1")
    );
    // (Cargo's uplifted target/<profile>/libsockdup.so is a hard link of the deps/ one.)
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    };
    assert_eq!(
        inode(Path::new(&st["below"])),
        inode(&lib_dir().join("libsockdup.so")),
        "the base provider is the program's own libsockdup: {}",
        st["below"]
    );
    let sockets = calls(&source_log, "WSPSocket");
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    assert_eq!(
        (
            sockets[0]["down"].as_str(),
            sockets[0]["down_chain"].as_str()
        ),
        ("1001", "1")
    );
    let dups = calls(&source_log, "WSPDuplicateSocket");
    assert_eq!(dups.len(), 1, "{dups:?}");
    let d = &dups[0];
    assert_eq!(
        (d["count"].as_str(), d["pid"].as_str()),
        ("1", &*target_pid)
    );
    assert_eq!(
        (d["down"].as_str(), d["down_chain"].as_str()),
        ("1001", "1")
    );
    assert_eq!(
        (d["up"].as_str(), d["up_chain"].as_str()),
        (&*chain.to_string(), "2")
    );
    assert_eq!(d["reserved"], info.provider_reserved.to_string());
    assert_eq!(
        calls(&source_log, "WSPCloseSocket").len(),
        1,
        "closesocket went through it"
    );

    // The target: WSPSocket with FROM_PROTOCOL_INFO and the chain's record, the base entry with
    // the ticket passed down; no duplicate.
    assert!(calls(&target_log, "WSPDuplicateSocket").is_empty());
    let r = &calls(&target_log, "WSPSocket")[0];
    sockdup_tests::cprov::assert_redeemed_by_the_rule(r, chain, info.provider_reserved);
    assert_eq!(calls(&target_log, "WSPCloseSocket").len(), 1);
}

#[test]
fn a_failing_wspstartup_is_refused_at_use_in_a_c_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("failing.c");
    std::fs::write(
        &src,
        "#include <sockdup/ws2spi.h>\n\
         int WSPAPI WSPStartup(WORD v, LPWSPDATA d, LPWSAPROTOCOL_INFOW i, WSPUPCALLTABLE u,\n\
                               LPWSPPROC_TABLE t) {\n\
             (void)v; (void)d; (void)i; (void)u; (void)t;\n\
             return 10050;\n\
         }\n",
    )
    .unwrap();
    let lib = shared(dir.path(), "failing", &src);
    let (catalog, _, _) = catalog_over_tcp(dir.path(), &lib);
    let program = util::compile_text(
        dir.path(),
        "first_socket",
        "#include <sockdup/winsock2.h>\n\
         #include <stdio.h>\n\
         #include <sys/socket.h>\n\
         int main(void) {\n\
             WSADATA d;\n\
             if (WSAStartup(MAKEWORD(2, 2), &d) != 0) return 2;\n\
             for (int i = 0; i < 2; i++) {\n\
                 SOCKET s = WSASocketW(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);\n\
                 char m[1024];\n\
                 sockdup_last_error_message(m, sizeof m);\n\
                 printf(\"%d %d %s\\n\", s == INVALID_SOCKET, WSAGetLastError(), m);\n\
             }\n\
             return WSACleanup();\n\
         }\n",
    );
    let (status, out, err) = util::run_command(
        Command::new(&program).env("SOCKDUP_CATALOG", &catalog),
        WAIT,
    );
    assert!(status.success(), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in lines {
        // Refused, at every use (nothing half-loaded stays to be used), naming the library.
        assert!(line.starts_with("1 10106 "), "{line}");
        assert!(
            line.contains(lib.to_str().unwrap()) && line.contains("failed with 10050"),
            "{line}"
        );
    }
}
