//! What `/proc` tells about another process: its real uid, its executable and its pid namespace.
//!
//! Reading files, not making system calls of its own, but it is the operating system's view of
//! a process, so it lives on this floor; the policy layer asks here instead of reading `/proc`
//! itself. Results are plain values or `io::Error`s; no SPI type.

use std::io;
use std::path::PathBuf;

/// The real uid of process `pid` (the first `Uid:` field of `/proc/PID/status`).
///
/// # Errors
/// The OS error reading the file (`ENOENT` for a process that does not exist), or
/// `InvalidData` if the file has no readable `Uid:` line.
pub(crate) fn process_uid(pid: u32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    real_uid(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no Uid: line"),
        )
    })
}

/// The real uid in the text of a `/proc/PID/status` file.
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The executable of process `pid` (the link `/proc/PID/exe`).
///
/// # Errors
/// The OS error reading the link (`ENOENT` for a process that does not exist, `EACCES` for
/// another user's process without the right to look).
pub(crate) fn process_exe(pid: u32) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
}

/// Whether process `pid` lives in another pid namespace than this process (the links
/// `/proc/PID/ns/pid` and `/proc/self/ns/pid` name different namespaces): then the pids the
/// two see of each other differ.
///
/// # Errors
/// The OS error reading either link (`ENOENT` for a process that does not exist, `EACCES`
/// without the right to look).
pub(crate) fn in_other_pid_namespace(pid: u32) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?;
    let ours = std::fs::metadata("/proc/self/ns/pid")?;
    Ok((theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_uid_is_the_first_uid_field() {
        assert_eq!(
            real_uid("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n"),
            Some(1000)
        );
        assert_eq!(real_uid("Name:\tx\n"), None);
        assert_eq!(real_uid("Uid:\tnobody\n"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let me = super::super::getpid();
        assert_eq!(process_uid(me).unwrap(), super::super::getuid());
        assert_eq!(process_exe(me).unwrap(), std::env::current_exe().unwrap());
        assert!(process_uid(u32::MAX).is_err());
        assert!(process_exe(u32::MAX).is_err());
    }

    #[test]
    fn this_process_shares_its_own_pid_namespace() {
        assert!(!in_other_pid_namespace(std::process::id()).unwrap());
    }
}
