//! Watching the process that started a manager: when it dies, by any means,
//! the server unlinks its segments and stops. CPython's manager has no such
//! guard; a parent killed by `SIGKILL` leaves its manager's segments behind
//! until the resource tracker notices, if it ever does.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use super::error::ManagerError;
use super::server::Shared;
use crate::error::Result;
use crate::sys;

/// How often the fallback (no `pidfd`) checks the process.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Starts a thread that stops the server when process `pid` exits. The
/// thread ends when the server stops, whichever comes first.
pub(crate) fn spawn(pid: u32, shared: Arc<Shared>) -> Result<std::thread::JoinHandle<()>> {
    // If `pid` is our parent, a change of parent is also its death: that
    // closes the race of a parent dying before the watch starts.
    let is_parent = sys::parent_pid() == Some(pid);
    std::thread::Builder::new()
        .name("shmkit-manager-watch".into())
        .spawn(move || {
            if watch(pid, is_parent, &shared) {
                tracing::warn!(
                    pid,
                    "the manager's watched process died: unlinking and stopping"
                );
                shared.stop();
            }
        })
        .map_err(|e| ManagerError::io("spawn a thread", e).into())
}

/// Waits until `pid` dies (`true`) or the server stops (`false`).
fn watch(pid: u32, is_parent: bool, shared: &Shared) -> bool {
    let gone = || (is_parent && sys::parent_pid() != Some(pid)) || !sys::process_exists(pid);
    match sys::pidfd_open(pid) {
        Ok(pidfd) => {
            if gone() {
                return true;
            }
            loop {
                match sys::wait_readable(&[pidfd.as_fd(), shared.stop_fd()], None) {
                    Ok(ready) if ready[0] => return true,
                    Ok(ready) if ready[1] => return false,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "manager watch: poll failed, polling instead");
                        break;
                    }
                }
            }
        }
        Err(rustix::io::Errno::SRCH) => return true,
        // No pidfd (Linux before 5.3, or seccomp): check periodically.
        Err(_) => {}
    }
    loop {
        if gone() {
            return true;
        }
        match sys::wait_readable(&[shared.stop_fd()], Some(POLL_INTERVAL)) {
            Ok(ready) if ready[0] => return false,
            _ => {}
        }
    }
}
