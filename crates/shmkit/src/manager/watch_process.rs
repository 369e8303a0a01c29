//! Watching the process that started a manager: when it dies, by any means,
//! the server unlinks the segments no live process uses any more, and stops
//! (see `Shared::close_and_unlink_unused`). CPython's manager has no such
//! guard; a parent killed by `SIGKILL` leaves its manager's segments behind
//! until the resource tracker notices, if it ever does.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::error::ManagerError;
use super::server::{Shared, Source, Stopper};
use crate::error::Result;
use crate::sys;

/// How often the fallback (no `pidfd`) checks the process.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A `pidfd` of the watched process, waited on by the serving loop: it
/// turns readable when the process exits.
pub(crate) struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Source for Pidfd {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn ready(&mut self, stopper: &Stopper) -> bool {
        died(self.pid);
        stopper.stop_unused();
        false
    }
}

fn died(pid: u32) {
    tracing::warn!(
        pid,
        "the manager's watched process died: unlinking what nothing uses, and stopping"
    );
}

/// Starts watching process `pid`: a [`Pidfd`] for the serving loop where
/// the system has them, else a thread that checks every 100 ms (and ends
/// when the server stops). A process already gone stops the server now.
pub(crate) fn start(pid: u32, shared: &Arc<Shared>) -> Result<Option<Pidfd>> {
    // If `pid` is our parent, a change of parent is also its death: that
    // closes the race of a parent dying before the watch starts.
    let is_parent = sys::parent_pid() == Some(pid);
    let gone = move || (is_parent && sys::parent_pid() != Some(pid)) || !sys::process_exists(pid);
    match sys::pidfd_open(pid) {
        Ok(fd) if !gone() => return Ok(Some(Pidfd { fd, pid })),
        Ok(_) | Err(rustix::io::Errno::SRCH) => {
            died(pid);
            shared.stop_unused();
            return Ok(None);
        }
        // No pidfd (Linux before 5.3, or seccomp): check periodically.
        Err(_) => {}
    }
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("shmkit-manager-watch".into())
        .spawn(move || loop {
            if gone() {
                died(pid);
                shared.stop_unused();
                return;
            }
            if let Ok(ready) = sys::wait_readable(&[shared.stop_fd()], Some(POLL_INTERVAL)) {
                if ready[0] {
                    return;
                }
            }
        })
        .map_err(|e| ManagerError::io("spawn a thread", e))?;
    Ok(None)
}
