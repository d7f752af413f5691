//! The library's floors point one way: each module uses only modules on floors below its own
//! (and the `sockdup-core` crate, the ground). This reads the sources' `crate::` paths, so an
//! import that runs back up fails here, naming the file and the line.
//!
//! ```text
//! 9  lib.rs                      re-exports only
//! 8  tokio.rs                    async use (the `tokio` feature): the API and upgrade/, async
//! 7  handoff/  upgrade/          the patterns built on the API
//! 6  api.rs                      duplicate and redeem; base-vs-chain routing
//!    catalog_api.rs              the catalog file, checked against the SPI's layer registry
//! 5  spi/                        providers, layers, the dispatcher
//! 4  transfer.rs                 the base provider's duplication: records and tickets
//! 3  startup.rs                  the runtime of one run
//! 2  transport/  catalog_file.rs the inbox thread and connection pool; the catalog file
//! 1  sys/                        every syscall
//! 0  sync.rs                     a poison-free lock; the hasher of the process's own keys
//! ```

use std::path::{Path, PathBuf};

/// Each top-level module of the library and its floor.
const FLOORS: &[(&str, u32)] = &[
    ("sync", 0),
    ("sys", 1),
    ("transport", 2),
    ("catalog_file", 2),
    ("startup", 3),
    ("transfer", 4),
    ("spi", 5),
    ("api", 6),
    // The public catalog I/O: the file's floor (2) joined to the SPI's registry check (5).
    ("catalog_api", 6),
    ("handoff", 7),
    ("upgrade", 7),
    // The `tokio` feature: the API and takeover, as futures.
    ("tokio", 8),
    ("lib", 9),
];

/// Names the crate root re-exports, and the module (or `None`: the core) they come from.
const ROOT_NAMES: &[(&str, Option<&str>)] = &[
    ("duplicate_socket", Some("api")),
    ("duplicate_sockets", Some("api")),
    ("socket_from_info", Some("api")),
    ("sockets_from_info", Some("api")),
    ("inbox_address", Some("api")),
    ("pending", Some("api")),
    ("catalog_path", Some("catalog_file")),
    ("load_catalog", Some("catalog_api")),
    ("load_catalog_from", Some("catalog_api")),
    ("save_catalog_to", Some("catalog_api")),
    ("update_catalog_at", Some("catalog_api")),
    ("Allow", Some("startup")),
    ("Options", Some("startup")),
    ("Startup", Some("startup")),
    ("CallerInbox", Some("startup")),
    ("startup", Some("startup")),
    ("InboxAddress", Some("sys")),
    ("is_cloexec", Some("sys")),
    ("error", None),
    ("Error", None),
    ("ErrorKind", None),
    ("wire", None),
    ("Guid", None),
    ("ProtocolChain", None),
    ("ProtocolInfo", None),
    ("catalog", None),
    ("flags", None),
];

fn floor(module: &str) -> Option<u32> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`spi` for `src/spi/base.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::NAME` in code (not comments): the NAME.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '{')
            .collect();
        if let Some(group) = name.strip_prefix('{') {
            // `use crate::{a, b::c}`: every name of the group.
            let inner = after[1..].split('}').next().unwrap_or("");
            out.extend(inner.split(',').filter_map(|p| {
                let head = p.trim().split("::").next()?.trim();
                (!head.is_empty()).then(|| head.to_owned())
            }));
            let _ = group;
        } else if !name.is_empty() {
            out.push(name);
        }
        rest = after;
    }
    out
}

#[test]
fn every_module_uses_only_floors_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        let own = floor(&module).unwrap_or_else(|| {
            panic!(
                "{} is in module `{module}`, which has no floor: add it to FLOORS",
                file.display()
            )
        });
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") {
                continue;
            }
            for name in crate_paths(line) {
                let target = match floor(&name) {
                    Some(_) => Some(name.clone()),
                    None => match ROOT_NAMES.iter().find(|(n, _)| *n == name) {
                        Some((_, m)) => m.map(str::to_owned),
                        None => panic!(
                            "{}:{}: `crate::{name}` is neither a module nor a known root re-export: add it to this test",
                            file.display(),
                            n + 1
                        ),
                    },
                };
                let Some(target) = target else { continue };
                let theirs = floor(&target).unwrap();
                if target != module && theirs >= own {
                    wrong.push(format!(
                        "{}:{}: `{module}` (floor {own}) uses `crate::{name}` of `{target}` (floor {theirs})",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up or across the floors:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_reader_sees_grouped_and_plain_paths() {
    assert_eq!(
        crate_paths("use crate::{spi, transfer::claim}; // crate::api"),
        ["spi", "transfer"]
    );
    assert_eq!(crate_paths("    let x = crate::sys::getpid();"), ["sys"]);
}
