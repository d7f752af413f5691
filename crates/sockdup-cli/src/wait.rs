//! Waiting without sleeping: a child watched through a pidfd, and `poll` on several
//! descriptors until a deadline. Every wait of the command goes through here, so none of them
//! spins or sleeps in a loop.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::CliError;

/// A child process, and a pidfd that polls readable when it exits.
pub(crate) struct Watched {
    pub(crate) child: Child,
    pub(crate) pidfd: OwnedFd,
}

impl Watched {
    /// Watches `child`; if that fails, the child is killed and reaped.
    pub(crate) fn new(mut child: Child) -> Result<Self, CliError> {
        match rustix::process::pidfd_open(
            rustix::process::Pid::from_child(&child),
            rustix::process::PidfdFlags::empty(),
        ) {
            Ok(pidfd) => Ok(Self { child, pidfd }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(CliError::failed(format!(
                    "watching process {} (pidfd_open): {e}",
                    child.id()
                )))
            }
        }
    }

    /// The child's pid.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// How the child ended (it has, or is about to).
    pub(crate) fn wait(&mut self) -> ExitStatus {
        self.child
            .wait()
            .unwrap_or_else(|_| ExitStatus::from_raw(9))
    }

    /// How the child ended, if it does within `limit` (`None`: still running).
    pub(crate) fn wait_within(&mut self, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
        let exited = poll_until(&[self.pidfd.as_fd()], Some(Instant::now() + limit))?;
        if exited[0] {
            self.child.wait().map(Some)
        } else {
            self.child.try_wait()
        }
    }
}

/// Blocks until one of `fds` is readable (or hung up) or `deadline` passes; says which are
/// (none after the deadline). An interrupted `poll` resumes with the time left.
pub(crate) fn poll_until(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> std::io::Result<Vec<bool>> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        match rustix::event::poll(&mut polled, timeout.as_ref()) {
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(polled.iter().map(|p| !p.revents().is_empty()).collect()),
        }
    }
}
