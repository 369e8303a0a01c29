//! The watcher process: forked from the library, it lives on plain system
//! calls only, made through `crate::sys` (rustix's raw calls, and libc's
//! async-signal-safe wrappers for `fork`, `_exit`, the signal mask,
//! scheduling, leases and OFD locks), with no allocation and no locks,
//! because the
//! process it was forked from may have had other threads holding any lock
//! (the allocator's among them) at that moment.
//!
//! This file starts it and runs it: the sentinel, the fork, the
//! start-up handshake, and the loop from waiting to cleaning up. Waiting for
//! the owner's death is [`wait`], judging one segment [`probe`] (with
//! [`users`] for who else holds it), and the last clean-up [`cleanup`]; the
//! "cleanup pending" marks are `super::mark`'s.

mod cleanup;
mod probe;
mod users;
mod wait;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::io::Errno;

use super::mark::Marks;
use super::Table;
use crate::sys::{self, after_fork};

/// The sentinel: one page of a memfd on which this process holds
/// `LOCK_EX`, mapped below every segment and with no descriptor left open.
/// When a process dies, the kernel drops its mappings' files in reverse
/// address order after its descriptors, so the sentinel's lock goes last:
/// the watcher's blocking `LOCK_SH` returns once every segment file of the
/// dead process (and of its fork children, which inherit the mapping) is
/// released, before its parent's `wait()` returns.
struct Sentinel {
    fd: OwnedFd,
    addr: usize,
}

fn sentinel() -> Option<Sentinel> {
    let (fd, addr) = after_fork::locked_low_page(c"shmkit-tracker")?;
    Some(Sentinel { fd, addr })
}

/// Forks a watcher for `table`; returns its pid and the pipe's write end,
/// which this process must keep open for as long as it lives.
/// `table_fd` is the table's memfd, kept open in the watcher so that
/// `shmkit ls` can read what it tracks.
pub(super) fn launch(table: Table, table_fd: RawFd) -> Result<(i32, OwnedFd), Errno> {
    let (read, write) = after_fork::pipe()?;
    let parent = sys::own_pid();
    let sentinel = sentinel();
    let sentinel_fd = sentinel.as_ref().map_or(-1, |s| s.fd.as_raw_fd());
    let sentinel_addr = sentinel.as_ref().map_or(0, |s| s.addr);
    table.ready().store(0, Ordering::Relaxed);
    // The child calls only async-signal-safe functions (plain system calls
    // through `sys`, no allocator, no lock another thread may have held at
    // the fork) and ends with `_exit`; see `run`. It never returns, so
    // `read` outlives its borrow.
    let child = || -> std::convert::Infallible {
        run(
            read.as_fd(),
            table,
            table_fd,
            parent,
            sentinel_fd,
            sentinel_addr,
        )
    };
    match sys::fork(child)? {
        sys::Forked::Parent(pid) => {
            drop(read);
            // Only the mapping keeps the sentinel (and its lock) now.
            drop(sentinel);
            wait_ready(&table);
            Ok((pid.as_raw_nonzero().get(), write))
        }
    }
}

/// Waits (100 ms at most) until the new watcher is watching. Until then a
/// death of this process would go unseen for the watcher's start-up (a
/// millisecond or so), and a parent that checks for the segment at once
/// (CPython's tests do) could attach it first. Only the first tracked
/// segment of a process pays this.
fn wait_ready(table: &Table) {
    let start = std::time::Instant::now();
    let limit = Duration::from_millis(100);
    while table.ready().load(Ordering::Acquire) == 0 {
        let Some(left) = limit.checked_sub(start.elapsed()) else {
            return;
        };
        after_fork::futex_wait(table.ready(), 0, left);
    }
}

/// Tells [`wait_ready`] in the parent that the watcher is watching.
fn signal_ready(table: &Table) {
    table.ready().store(1, Ordering::Release);
    after_fork::futex_wake_one(table.ready());
}

/// The watcher's life, in the fork child: `pipe` is the read end whose
/// end of file says the parent is gone; the sentinel (see [`Sentinel`]) is
/// the parent's descriptor number `sentinel_fd`, mapped at `sentinel_addr`.
fn run(
    pipe: BorrowedFd<'_>,
    table: Table,
    table_fd: RawFd,
    parent: u32,
    sentinel_fd: RawFd,
    sentinel_addr: usize,
) -> ! {
    // Ctrl-C and kill meant for the parent's group must not stop the
    // cleanup; a watcher ends only when its parent does (or by SIGKILL).
    sys::block_all_signals();
    after_fork::chdir_root();
    // Woken as its process dies, the watcher races that process's parent
    // to the segments: it must mark them before the parent, told of the
    // death, attaches. A sleeper of the lowest real-time priority is woken
    // on an idle CPU, or preempts whatever runs, at once; an ordinary one may
    // be queued behind the dying process's own exit for a millisecond or
    // more. So it asks for SCHED_FIFO where allowed (root, or an
    // RLIMIT_RTPRIO), else for a higher nice value (CAP_SYS_NICE), else
    // runs as it is. It sleeps the rest of its life, and its last work is
    // bounded (`cleanup`).
    // Buys: the death wake runs the watcher at once instead of queued
    // behind the dying process's exit, so its marks precede the parent.
    sys::prefer_realtime();
    // A fresh open file of the sentinel: a lock of our own, not the
    // parent's.
    let own = after_fork::reopen(sentinel_fd);
    // The watcher must not keep anyone's pipes open, nor, above all, the
    // segments' open files (their locks would look like a live user). The
    // closed ones include the parent's `OwnedFd`s copied into this child,
    // which are never dropped: the child ends in `_exit`.
    after_fork::close_all_but(&[
        pipe.as_raw_fd(),
        table_fd,
        own.as_ref().map_or(-1, |f| f.as_raw_fd()),
    ]);
    // A mapping keeps its open file alive, and with it the parent's
    // `LOCK_SH`, which would make every segment look used forever. Nothing
    // in the watcher touches the parent's segments or its sentinel page.
    after_fork::unmap_shm_mappings();
    after_fork::unmap_page(sentinel_addr);
    // Opened after the clean-up of descriptors, so it survives it.
    let parent_pidfd = sys::pidfd_open(parent).ok();
    if let Some(own) = own {
        // The tracking thread's death wakes us as its exit begins
        // (`Table::arm_death_wake`), before its files are released and well
        // before its parent's `wait()` returns. Once the marks are set, we
        // move off the dying process's CPU, where the sentinel's wake-up
        // would otherwise land, behind the rest of its exit.
        let mut marks = Marks::new();
        signal_ready(&table);
        if wait::owner_death(&table, pipe) {
            let owner = table.owner().load(Ordering::Relaxed);
            // Mark each tracked segment "cleanup pending", so that a process
            // attaching from now on waits for our decision instead of
            // holding the segment (`shared_memory::found_size`). Marking
            // comes first, for a small process exits in a few dozen
            // microseconds; then the marks are kept only if the whole
            // process is dying: not if a thread exited alone, nor if we were
            // relaunched by a fork child (whose death is not the table
            // owner's). Another thread than the main one often dies alone
            // (a server's connection thread), so its death sets marks only
            // once the process is seen exiting: a mark makes every attacher
            // of the segment wait.
            if i32::try_from(parent) == Ok(owner)
                && (table.main_locker() || wait::exiting_now(owner))
            {
                marks.set_all(&table);
                if !marks.is_empty() && !wait::exiting(owner) {
                    marks.clear();
                }
            }
            // Buys: the sentinel's later wake-up is not queued on the CPU
            // where the dying process is still tearing itself down.
            wait::avoid_cpu_of(owner);
            // The process must be gone within 2 s, fork children included,
            // or the marks are dropped and the wait below goes on without.
            if !marks.is_empty() {
                let dying =
                    wait::owner_gone(parent_pidfd.as_ref()) && after_fork::try_lock_shared(&own);
                if !dying {
                    marks.clear();
                }
            }
        }
        // Returns once the parent and its fork children are gone and every
        // file they had is released (see `Sentinel`): only then is a
        // segment nobody holds truly left over, and not one a live process
        // is about to unlink itself.
        after_fork::lock_shared(&own);
        cleanup::cleanup(table, &mut marks);
        sys::exit_now();
    }
    signal_ready(&table);
    after_fork::read_until_eof(pipe);
    // End of file comes while the parent's exit closes its descriptors,
    // maybe before the segments'. Wait until it is gone for good: its pidfd
    // turns readable as it becomes a zombie, all files closed. This wakes
    // us as early as its own parent's wait() returns, so a parent that
    // checks at once (CPython's tests do) finds the segment gone. A second
    // at most: it may have exec'd instead.
    match parent_pidfd {
        Some(fd) => {
            let _ = after_fork::readable_within(fd.as_fd(), Duration::from_secs(1));
        }
        None => {
            for _ in 0..1000 {
                if sys::parent_pid() != Some(parent) {
                    break;
                }
                after_fork::sleep_ms(1);
            }
        }
    }
    cleanup::cleanup(table, &mut Marks::new());
    sys::exit_now()
}
