//! Listening addresses as `--listen` gives them, binding them, and the small files around
//! them: shared by `sockdup serve` and `sockdup exec`.

use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::CliError;

/// The longest duration an option takes, in seconds (a day).
pub(crate) const MAX_SECONDS: f64 = 86_400.0;

/// Parses a number of seconds (fractions allowed), more than 0 and at most a day.
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= MAX_SECONDS) {
        return Err(format!(
            "{text:?}: give more than 0 and at most {MAX_SECONDS} seconds"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

/// Where `--listen` asks to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListenAddr {
    /// HOST:PORT, as given (resolved when bound).
    Tcp(String),
    /// A Unix stream socket's path.
    Unix(PathBuf),
}

impl ListenAddr {
    pub(crate) fn parse(text: &str) -> Result<Self, CliError> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(CliError::Usage(
                    "--listen unix: needs a path, e.g. unix:/run/app.sock".into(),
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') || text.starts_with("./") {
            return Ok(Self::Unix(PathBuf::from(text)));
        }
        if text
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.is_empty())
        {
            return Err(CliError::Usage(format!(
                "--listen {text:?}: give HOST:PORT for TCP, or a path starting with / or ./, or unix:PATH, for a Unix socket"
            )));
        }
        Ok(Self::Tcp(text.to_owned()))
    }
}

/// A bound listener, what to print for it, and the socket file to remove at the end.
pub(crate) struct Bound {
    /// The listening socket.
    pub(crate) fd: OwnedFd,
    /// Whether it is a Unix stream socket (else TCP).
    pub(crate) unix: bool,
    /// HOST:PORT as bound, or unix:PATH.
    pub(crate) shown: String,
    pub(crate) socket_file: Option<SocketFile>,
}

/// A Unix socket file this process created: removed at the end if it is still the same file.
#[derive(Clone)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket file at `path` as it is now, if it is one: for a listener taken over, whose
    /// file this process did not create but now answers for.
    pub(crate) fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.file_type().is_socket().then(|| Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    pub(crate) fn remove(&self) {
        let same = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub(crate) fn bind(addr: &ListenAddr) -> Result<Bound, CliError> {
    match addr {
        ListenAddr::Tcp(text) => {
            let addrs: Vec<_> = text
                .to_socket_addrs()
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::InvalidInput {
                        CliError::Usage(format!(
                            "--listen {text:?} is not HOST:PORT ({e}); for a Unix socket give a path starting with / or ./, or unix:PATH"
                        ))
                    } else {
                        CliError::failed(format!("resolving {text}: {e}"))
                    }
                })?
                .collect();
            let listener = TcpListener::bind(&addrs[..])
                .map_err(|e| CliError::failed(format!("listening on {text}: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| CliError::failed(format!("reading the address of {text}: {e}")))?;
            Ok(Bound {
                fd: listener.into(),
                unix: false,
                shown: local.to_string(),
                socket_file: None,
            })
        }
        ListenAddr::Unix(path) => {
            let listener = bind_unix(path)?;
            let meta = std::fs::symlink_metadata(path).map_err(|e| {
                CliError::failed(format!("reading the socket file {}: {e}", path.display()))
            })?;
            Ok(Bound {
                fd: listener.into(),
                unix: true,
                shown: format!("unix:{}", path.display()),
                socket_file: Some(SocketFile {
                    path: path.clone(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                }),
            })
        }
    }
}

/// Binds a Unix stream listener at `path`, replacing a stale socket file (one nobody listens
/// on, left by a process that did not remove it); anything else in the way is an error.
fn bind_unix(path: &Path) -> Result<UnixListener, CliError> {
    let failed = |e: io::Error| CliError::failed(format!("listening on {}: {e}", path.display()));
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket =
                std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
            let refused = is_socket
                && UnixStream::connect(path)
                    .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
            if !refused {
                return Err(failed(e));
            }
            tracing::info!(path = %path.display(), "replacing a stale socket file");
            std::fs::remove_file(path).map_err(failed)?;
            UnixListener::bind(path).map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

/// Writes `lines` to `path` through a temporary file beside it and a rename.
pub(crate) fn write_port_file(path: &Path, lines: &[String]) -> Result<(), CliError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CliError::failed(format!("writing the port file {}: {e}", path.display()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:8080").ok(),
            Some(ListenAddr::Tcp("127.0.0.1:8080".into()))
        );
        assert_eq!(
            ListenAddr::parse("[::1]:0").ok(),
            Some(ListenAddr::Tcp("[::1]:0".into()))
        );
        assert_eq!(
            ListenAddr::parse("/run/a.sock").ok(),
            Some(ListenAddr::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            ListenAddr::parse("./a.sock").ok(),
            Some(ListenAddr::Unix("./a.sock".into()))
        );
        assert_eq!(
            ListenAddr::parse("unix:a.sock").ok(),
            Some(ListenAddr::Unix("a.sock".into()))
        );
        for bad in ["unix:", "8080", "localhost", "host:", ""] {
            assert!(
                matches!(ListenAddr::parse(bad), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn seconds_parse_within_bounds() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "-1", "nan", "inf", "1e300", "x", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
