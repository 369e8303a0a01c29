//! The "cleanup pending" mark: how a watcher tells attachers to wait for
//! its decision on a segment whose tracked users all died (see
//! `shared_memory::found_size`). Built on generic `sys` primitives: an
//! open-file-description lock on one byte, and a mode bit as a hint.
//! The watcher's side ([`Marks`], setting and dropping them) runs after
//! `fork` and so allocates nothing; the attacher's side (waiting a mark
//! out) is ordinary code.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::sys::{self, after_fork, FileKey};

use super::{Table, VALID};

/// The byte a watcher locks (an open-file-description `fcntl` lock, a
/// family the kernel keeps apart from `flock`) on a segment it is about to
/// clean up. It lies far past any real size, so it cannot meet a lock a
/// program takes on its data.
pub(crate) const CLEANUP_MARK_START: i64 = i64::MAX - 1;

/// The mode bit a watcher sets beside its mark, as a hint that attachers
/// see in the `fstat` they make anyway: `S_ISVTX`, which means nothing on
/// a regular file. Only the file's owner may set it (a watcher of another
/// user's segment marks it without the hint, so attachers do not wait); a
/// hint left behind (a watcher killed mid-cleanup) costs the segment's
/// attachers one `fcntl` each to find no mark.
pub(crate) const CLEANUP_HINT: u32 = sys::MODE_STICKY;

/// Sets (`on`) or clears the hint on `fd`'s file; returns whether the bit
/// changed. Safe in a forked child.
pub(crate) fn set_cleanup_hint(fd: impl AsFd, on: bool) -> bool {
    sys::set_mode_bits(fd, CLEANUP_HINT, on)
}

/// Sets the mark on the open file `fd` (non-blocking; a read lock, which a
/// read-only descriptor may take). Safe in a forked child.
pub(crate) fn set_cleanup_mark(fd: impl AsFd) -> bool {
    sys::ofd_read_lock_byte(fd, CLEANUP_MARK_START)
}

/// Whether a watcher is deciding about `fd`'s file, whose mode is `mode`:
/// it shows the hint (free: every attach has the mode) and another open
/// file holds the mark (one `fcntl`, asked only then).
pub(crate) fn cleanup_pending(fd: impl AsFd, mode: u32) -> bool {
    mode & CLEANUP_HINT != 0 && sys::ofd_byte_locked(fd, CLEANUP_MARK_START)
}

/// Waits, at most `limit`, until no open file holds the mark on the file
/// `key`. Polls `/proc/locks` every 200 µs, which needs no descriptor of
/// the file (a waiter's descriptor would count as a use with the watcher):
/// a watcher holds the mark while the dying process finishes its exit
/// (milliseconds, more for a large one), and a blocking `F_OFD_SETLKW`
/// could not be bounded without a signal.
pub(crate) fn wait_cleanup_done(key: FileKey, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    while cleanup_mark_held(key) && start.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Whether `/proc/locks` lists the mark on the file `key`.
fn cleanup_mark_held(key: FileKey) -> bool {
    let Ok(text) = sys::proc_locks() else {
        return false;
    };
    let file = format!("{:02x}:{:02x}:{} ", key.0, key.1, key.2);
    let start = format!(" {CLEANUP_MARK_START} ");
    text.split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line);
        !line.contains("->") && line.contains(&file) && line.contains(&start)
    })
}

/// Open files of tracked segments on which this watcher holds the "cleanup
/// pending" mark ([`set_cleanup_mark`]), on the stack: the watcher does
/// not allocate. Closing a file drops its mark; `_exit` closes any left.
pub(super) struct Marks {
    /// The marked open files, the first `len` of them.
    fds: [Option<OwnedFd>; MAX_MARKS],
    /// The table slot each mark is for.
    slots: [usize; MAX_MARKS],
    /// Whether we set the mode hint on each (and must clear it again).
    hinted: [bool; MAX_MARKS],
    len: usize,
}

/// Segments past this many are cleaned up unmarked: an attach may then win
/// the race and keep one alive. It also bounds the descriptors the watcher
/// opens.
const MAX_MARKS: usize = 256;

impl Marks {
    /// No marks.
    pub(super) fn new() -> Self {
        Marks {
            fds: [const { None }; MAX_MARKS],
            slots: [usize::MAX; MAX_MARKS],
            hinted: [false; MAX_MARKS],
            len: 0,
        }
    }

    /// Whether no mark is set.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks (and hints, where this process may) each segment registered
    /// in `table` that still has the registered file under its name, up to
    /// [`MAX_MARKS`] of them.
    pub(super) fn set_all(&mut self, table: &Table) {
        for i in table.used_slots() {
            if self.len == MAX_MARKS {
                return;
            }
            if table.state(i).load(Ordering::Acquire) != VALID || !table.first_of_name(i) {
                continue;
            }
            let Some(fd) = after_fork::open_shm_bytes(&table.name(i)) else {
                continue;
            };
            // Not a file someone else made since under the name.
            let ino = table.ino(i);
            if ino != 0 && sys::fstat(&fd).map_or(true, |st| st.st_ino != ino) {
                continue;
            }
            if set_cleanup_mark(&fd) {
                // Mark first, hint second: an attacher that sees the hint
                // always finds the mark.
                self.hinted[self.len] = set_cleanup_hint(&fd, true);
                self.fds[self.len] = Some(fd);
                self.slots[self.len] = i;
                self.len += 1;
            }
        }
    }

    /// The marked descriptor of slot `i`'s segment, if it has one: the
    /// probe uses it rather than open another (the lease it asks for fails
    /// while this process has two open files of the segment).
    pub(super) fn fd_of(&self, i: usize) -> Option<BorrowedFd<'_>> {
        let k = self.slots[..self.len].iter().position(|&s| s == i)?;
        self.fds[k].as_ref().map(|fd| fd.as_fd())
    }

    /// Drops every mark, and the hints of segments still linked.
    pub(super) fn clear(&mut self) {
        for (fd, &hinted) in self.fds[..self.len].iter_mut().zip(&self.hinted) {
            if let Some(fd) = fd.take() {
                if hinted {
                    set_cleanup_hint(&fd, false);
                }
                // Dropped here: closing the file drops its mark.
            }
        }
        self.len = 0;
    }
}
