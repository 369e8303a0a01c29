//! Waiting for the owner's death, and telling a death from a thread's
//! exit: the death word's futex (woken as the tracking thread starts to
//! exit), the pipe's end of file (when there is no word), the pidfd (the
//! process gone for good), `PF_EXITING` polling, and the move off the
//! dying process's CPU. All of it runs in the watcher after `fork`: stack
//! buffers and `crate::sys` calls only.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::sys::after_fork::{self, FUTEX_OWNER_DIED, FUTEX_TID_MASK, FUTEX_WAITERS};
use crate::sys::{self, proc_nalloc};
use crate::tracker::Table;

/// Blocks until the tracking thread dies (true), or until end of file on
/// the pipe without that (false): no death word, or one that never fires
/// because the process replaced its robust list. The futex wait times out
/// every second to look at the pipe, which bounds the second case.
pub(super) fn owner_death(table: &Table, pipe: BorrowedFd<'_>) -> bool {
    let Some(word) = table.death_word() else {
        return false;
    };
    let second = Duration::from_secs(1);
    loop {
        let v = word.load(Ordering::Acquire);
        if v & FUTEX_OWNER_DIED != 0 || v & FUTEX_TID_MASK == 0 {
            return true;
        }
        // The kernel wakes a dead owner's waiters only if this bit is set.
        if v & FUTEX_WAITERS == 0
            && word
                .compare_exchange(v, v | FUTEX_WAITERS, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            continue;
        }
        // Shared (not PRIVATE): the word is in a memfd mapped by two
        // processes.
        after_fork::futex_wait(word, v | FUTEX_WAITERS, second);
        if word.load(Ordering::Acquire) & FUTEX_OWNER_DIED != 0 {
            return true;
        }
        // Readable without blocking: at end of file, as the watcher never
        // gets data on it.
        if after_fork::readable_now(pipe) {
            return false;
        }
    }
}

/// Waits up to two seconds for the process that forked us to be gone for
/// good (its pidfd turns readable once it is a zombie, every file closed);
/// false if it is still alive then, or cannot be watched.
pub(super) fn owner_gone(pidfd: Option<&OwnedFd>) -> bool {
    let Some(fd) = pidfd else {
        return false;
    };
    after_fork::readable_within(fd.as_fd(), Duration::from_secs(2)).unwrap_or(false)
}

/// Pins this process to every CPU but the one process `pid` last ran on,
/// when there is another; best effort.
///
/// Buys: the sentinel's wake-up, which the kernel would queue on the CPU
/// where the dying process is still tearing itself down, runs elsewhere at
/// once.
pub(super) fn avoid_cpu_of(pid: i32) {
    let Some(cpu) = last_cpu(pid) else {
        return;
    };
    sys::avoid_cpu(cpu);
}

/// Field 39 of `/proc/PID/stat`: the CPU the process last ran on.
fn last_cpu(pid: i32) -> Option<usize> {
    usize::try_from(proc_nalloc::stat_field(pid, 39)?).ok()
}

/// The kernel's `PF_EXITING` task flag (include/linux/sched.h), set as a
/// thread enters `do_exit`, before anything of it is released.
const PF_EXITING: u64 = 0x4;

/// Whether process `pid` is dying: its main thread is exiting. The thread
/// whose death woke us may be another one, killed a moment before the main
/// thread in the same exit, so a "no" is asked again every millisecond for
/// ten before it is believed.
///
/// Buys: marks set on a thread's death are kept only if the whole process
/// is going, so attachers of a live process never wait.
pub(super) fn exiting(pid: i32) -> bool {
    for _ in 0..10 {
        if exiting_now(pid) {
            return true;
        }
        after_fork::sleep_ms(1);
    }
    false
}

/// Whether process `pid` is exiting (its main thread has `PF_EXITING`; a
/// zombie keeps it) or gone.
pub(super) fn exiting_now(pid: i32) -> bool {
    proc_nalloc::stat_field(pid, 9).is_none_or(|flags| flags & PF_EXITING != 0)
}
