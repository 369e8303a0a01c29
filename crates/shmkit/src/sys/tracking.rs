//! The calls the leak tracker makes in the tracked process (not in its
//! watcher, whose calls are `after_fork`'s): its table's memfd, the thread
//! and process ids it records, its watcher's state, the coarse clock
//! intents are stamped with, and opening another process's table.

use std::ffi::CStr;
use std::os::fd::OwnedFd;

use rustix::fs::{self, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, WaitId, WaitIdOptions, WaitOptions};

/// A new memfd named `name`, close-on-exec, of `size` bytes (zeros).
pub(crate) fn memfd(name: &CStr, size: u64) -> Result<OwnedFd, Errno> {
    let fd = fs::memfd_create(name, fs::MemfdFlags::CLOEXEC)?;
    fs::ftruncate(&fd, size)?;
    Ok(fd)
}

/// The calling thread's id (the kernel's, as futex words hold it).
pub(crate) fn own_tid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// Whether process `pid` still runs: for a child of this process, by
/// `waitid` without reaping (one call; a zombie is not running); for
/// another process (a fork child asks about its parent's child), or one
/// someone else reaped, by `kill(pid, 0)` (which a zombie passes).
pub(crate) fn child_running(pid: i32) -> bool {
    let Some(pid) = Pid::from_raw(pid) else {
        return false;
    };
    let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    match rustix::process::waitid(WaitId::Pid(pid), opts) {
        Ok(Some(_)) => false,
        Ok(None) => true,
        Err(_) => !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH)),
    }
}

/// Reaps child `pid` if it is a zombie; harmless for any other pid.
pub(crate) fn reap_if_exited(pid: i32) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
    }
}

/// Now, in nanoseconds since the epoch, on the coarse real-time clock: the
/// one tmpfs stamps a new file's birth with.
pub(crate) fn coarse_now_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Opens `path` read-only, close-on-exec.
pub(crate) fn open_readonly(path: &std::path::Path) -> Result<OwnedFd, Errno> {
    fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
}
