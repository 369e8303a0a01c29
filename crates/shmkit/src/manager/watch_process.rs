//! Watching the process that started a manager: when it dies, by any means,
//! the server unlinks the segments no live process uses any more, and stops
//! (see `Shared::close_and_unlink_unused`). CPython's manager has no such
//! guard; a parent killed by `SIGKILL` leaves its manager's segments behind
//! until the resource tracker notices, if it ever does.
//!
//! The server hands in what to do on the death and how to wait for its own
//! stop, so that this module knows nothing of the server.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::error::ManagerError;
use crate::error::Result;
use crate::sys;

/// How often the fallback (no `pidfd`) checks the process.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A `pidfd` of the watched process, for the serving loop to wait on: it
/// turns readable when the process exits.
pub(crate) struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Pidfd {
    /// The watched process.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Says that the watched process `pid` died, and what follows.
pub(crate) fn died(pid: u32) {
    tracing::warn!(
        pid,
        "the manager's watched process died: unlinking what nothing uses, and stopping"
    );
}

/// Starts watching process `pid`: a [`Pidfd`] for the serving loop where
/// the system has them, else a thread that checks every 100 ms. A process
/// already gone, or found gone by the thread, is [`died`] then `on_death`.
/// The thread ends once `wait_stopped(timeout)` says the server stopped.
pub(crate) fn start(
    pid: u32,
    on_death: impl Fn() + Send + 'static,
    wait_stopped: impl Fn(Duration) -> bool + Send + 'static,
) -> Result<Option<Pidfd>> {
    // If `pid` is our parent, a change of parent is also its death: that
    // closes the race of a parent dying before the watch starts.
    let is_parent = sys::parent_pid() == Some(pid);
    let gone = move || (is_parent && sys::parent_pid() != Some(pid)) || !sys::process_exists(pid);
    match sys::pidfd_open(pid) {
        Ok(fd) if !gone() => return Ok(Some(Pidfd { fd, pid })),
        Ok(_) | Err(rustix::io::Errno::SRCH) => {
            died(pid);
            on_death();
            return Ok(None);
        }
        // No pidfd (Linux before 5.3, or seccomp): check periodically.
        Err(_) => {}
    }
    std::thread::Builder::new()
        .name("shmkit-manager-watch".into())
        .spawn(move || loop {
            if gone() {
                died(pid);
                on_death();
                return;
            }
            if wait_stopped(POLL_INTERVAL) {
                return;
            }
        })
        .map_err(|e| ManagerError::io("spawn a thread", e))?;
    Ok(None)
}
