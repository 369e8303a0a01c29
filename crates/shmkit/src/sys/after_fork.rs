//! The system calls the tracker's watcher makes in its fork child of a
//! process that may have had other threads, each holding any lock at the
//! moment of the fork: every function here is a plain system call or a few
//! (rustix's `linux_raw` backend, not libc), takes no lock and does not
//! allocate, so it is async-signal-safe. The fork itself, `_exit` and the
//! scheduling calls are with the rest of the platform's calls.

use std::ffi::{c_void, CStr};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{self, FlockOperation, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::thread::futex;

use super::proc_nalloc::{each_line, parse_hex};
use super::stack_text::Line;

/// The futex word's bit the kernel sets when its owner died holding it.
pub(crate) const FUTEX_OWNER_DIED: u32 = futex::OWNER_DIED;
/// The futex word's bit that asks the kernel to wake waiters on the death
/// of its owner.
pub(crate) const FUTEX_WAITERS: u32 = futex::WAITERS;
/// The bits of a futex word that hold its owner's thread id.
pub(crate) const FUTEX_TID_MASK: u32 = libc::FUTEX_TID_MASK;

/// The size of the page [`locked_low_page`] maps.
pub(crate) const PAGE: usize = 4096;

/// One page of a new memfd named `name`, on which this process holds
/// `LOCK_EX`, mapped shared and read-only at a low address (below the
/// kernel's top-down mmap area, so below every segment mapped later): the
/// descriptor and the address. None if any step fails.
pub(crate) fn locked_low_page(name: &CStr) -> Option<(OwnedFd, usize)> {
    use rustix::mm::{mmap, MapFlags, ProtFlags};
    let fd = fs::memfd_create(name, fs::MemfdFlags::CLOEXEC).ok()?;
    fs::ftruncate(&fd, PAGE as u64).ok()?;
    fs::flock(&fd, FlockOperation::LockExclusive).ok()?;
    for hint in [0x10_0000usize, 0x100_0000, 0x1000_0000, 0x10_0000_0000] {
        // SAFETY: FIXED_NOREPLACE never replaces an existing mapping, so
        // no memory anyone uses changes.
        let got = unsafe {
            mmap(
                hint as *mut c_void,
                PAGE,
                ProtFlags::READ,
                MapFlags::SHARED | MapFlags::FIXED_NOREPLACE,
                &fd,
                0,
            )
        };
        if let Ok(ptr) = got {
            return Some((fd, ptr as usize));
        }
    }
    None
}

/// Unmaps the page at `addr` that [`locked_low_page`] mapped (in this
/// process or, inherited, in its parent).
///
/// Precondition (not checked): nothing in this process uses that page,
/// which no reference can point into (it is never handed out as memory).
pub(crate) fn unmap_page(addr: usize) {
    if addr == 0 {
        return;
    }
    // SAFETY: by the precondition, nothing reads the page; an address that
    // holds no mapping just makes munmap a no-op.
    let _ = unsafe { rustix::mm::munmap(addr as *mut c_void, PAGE) };
}

/// Unmaps every mapping of a file in `/dev/shm` that this process has,
/// inherited from its parent (read from `/proc/self/maps`, 64 at a time).
///
/// Precondition (not checked): call it only in a fork child that uses no
/// segment, whose parent's `Region`s and `SharedMemory`s are never touched
/// again.
pub(crate) fn unmap_shm_mappings() {
    const NEEDLE: &[u8] = b" /dev/shm/";
    loop {
        let mut ranges = [(0usize, 0usize); 64];
        let mut found = 0;
        let read = each_line(c"/proc/self/maps", |line| {
            if line.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                let addrs = line.split(|&b| b == b' ').next().unwrap_or(b"");
                let mut parts = addrs.split(|&b| b == b'-');
                if let (Some(lo), Some(hi)) = (
                    parts.next().and_then(parse_hex),
                    parts.next().and_then(parse_hex),
                ) {
                    if hi > lo {
                        ranges[found] = (lo, hi);
                        found += 1;
                    }
                }
            }
            found < ranges.len()
        });
        if !read {
            return;
        }
        for &(lo, hi) in &ranges[..found] {
            // SAFETY: by the precondition, nothing in this process uses the
            // parent's segments.
            let _ = unsafe { rustix::mm::munmap(lo as *mut c_void, hi - lo) };
        }
        if found < ranges.len() {
            return;
        }
    }
}

/// Closes every descriptor but stderr and those in `keep` (listed from
/// `/proc/self/fd`, or, where that cannot be opened, every number below
/// 4096).
///
/// Precondition (not checked): nothing in this process uses, or owns as an
/// `OwnedFd` it will drop, a descriptor outside `keep` and 2: call it only
/// in a fork child, before it opens anything.
pub(crate) fn close_all_but(keep: &[RawFd]) {
    let Ok(dir) = fs::openat(
        CWD,
        c"/proc/self/fd",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        for fd in 0..4096 {
            if fd != 2 && !keep.contains(&fd) {
                // SAFETY: by the precondition, nothing uses these
                // descriptors; a number not open just fails.
                unsafe { rustix::io::close(fd) };
            }
        }
        return;
    };
    let dir_fd = dir.as_raw_fd();
    let mut space = [MaybeUninit::<u8>::uninit(); 4096];
    // Closing while listing is fine on /proc/self/fd; list until a pass
    // closes nothing new.
    loop {
        let mut closed = 0;
        let _ = fs::seek(&dir, fs::SeekFrom::Start(0));
        let mut entries = fs::RawDir::new(dir.as_fd(), &mut space);
        while let Some(Ok(entry)) = entries.next() {
            let mut fd: RawFd = 0;
            let mut digits = 0;
            for &b in entry.file_name().to_bytes() {
                if b.is_ascii_digit() {
                    fd = fd.saturating_mul(10).saturating_add(RawFd::from(b - b'0'));
                    digits += 1;
                } else {
                    digits = 0;
                    break;
                }
            }
            if digits > 0 && fd != 2 && !keep.contains(&fd) && fd != dir_fd {
                // SAFETY: as above; the listing's own descriptor is spared.
                unsafe { rustix::io::close(fd) };
                closed += 1;
            }
        }
        if closed == 0 {
            break;
        }
    }
}

/// A fresh open file (read-only) of the file behind this process's
/// descriptor `fd`, through `/proc/self/fd/FD`: a file description, and so
/// a `flock`, of its own. None for a negative `fd` or on failure.
pub(crate) fn reopen(fd: RawFd) -> Option<OwnedFd> {
    let mut path = Line::new();
    path.push(b"/proc/self/fd/")
        .num(usize::try_from(fd).ok()?)
        .push(b"\0");
    fs::openat(
        CWD,
        path.c_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// `chdir("/")`: a long-lived child must not keep its parent's working
/// directory (and the filesystem under it) busy. Best effort.
pub(crate) fn chdir_root() {
    let _ = rustix::process::chdir(c"/");
}

/// One `write` of `bytes` to descriptor 2; best effort.
pub(crate) fn write_stderr(bytes: &[u8]) {
    // SAFETY: only borrowed for this write; fd 2 is kept open wherever this
    // is called (`close_all_but` spares it), and a closed one just fails.
    let stderr = unsafe { BorrowedFd::borrow_raw(2) };
    let _ = rustix::io::write(stderr, bytes);
}

/// Sleeps `ms` milliseconds (less than a second), by `poll` on nothing.
pub(crate) fn sleep_ms(ms: u64) {
    let t = Timespec {
        tv_sec: 0,
        tv_nsec: (ms * 1_000_000) as _,
    };
    let _ = rustix::event::poll(&mut [], Some(&t));
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
}

/// Reads and drops what `fd` delivers until end of file (or an error other
/// than `EINTR`).
pub(crate) fn read_until_eof(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(_) | Err(Errno::INTR) => continue,
            Err(_) => break,
        }
    }
}

/// Whether `fd` is readable (for a pipe: at end of file, or holding data)
/// right now, without blocking.
pub(crate) fn readable_now(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

/// Waits up to `limit` for `fd` to turn readable (a pidfd: its process
/// has exited); whether it did. `EINTR` starts the wait again.
pub(crate) fn readable_within(fd: BorrowedFd<'_>, limit: Duration) -> Result<bool, Errno> {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let limit = timespec(limit);
    loop {
        match rustix::event::poll(&mut fds, Some(&limit)) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    }
}

/// `FUTEX_WAIT` (shared, not private: the word may be in memory several
/// processes map) while `word` holds `expected`, at most `limit`; returns on
/// a wake, a timeout, a signal or a changed word alike.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, limit: Duration) {
    let _ = futex::wait(
        word,
        futex::Flags::empty(),
        expected,
        Some(&timespec(limit)),
    );
}

/// `FUTEX_WAKE` of one waiter on `word` (shared, as [`futex_wait`]).
pub(crate) fn futex_wake_one(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), 1);
}

/// `flock(LOCK_SH)`, blocking, restarted after `EINTR`; returns on success
/// or any other error.
pub(crate) fn lock_shared(fd: impl AsFd) {
    while let Err(Errno::INTR) = fs::flock(&fd, FlockOperation::LockShared) {}
}

/// `flock(LOCK_SH | LOCK_NB)`: whether it was granted.
pub(crate) fn try_lock_shared(fd: impl AsFd) -> bool {
    fs::flock(fd, FlockOperation::NonBlockingLockShared).is_ok()
}

/// `flock(LOCK_UN)`; best effort.
pub(crate) fn unlock(fd: impl AsFd) {
    let _ = fs::flock(fd, FlockOperation::Unlock);
}

/// `/dev/shm/NAME\0` on the stack; None for a name that cannot be a
/// segment's. Unlike validated names elsewhere in `sys`, these bytes come
/// from a shared table any process may have written.
struct ShmBytesPath {
    buf: [u8; 9 + 256 + 1],
    len: usize,
}

impl ShmBytesPath {
    fn new(name: &[u8]) -> Option<ShmBytesPath> {
        if name.is_empty() || name.len() > 255 || name.contains(&0) || name.contains(&b'/') {
            return None;
        }
        let mut buf = [0u8; 9 + 256 + 1];
        buf[..9].copy_from_slice(b"/dev/shm/");
        buf[9..9 + name.len()].copy_from_slice(name);
        Some(ShmBytesPath {
            buf,
            len: 9 + name.len() + 1,
        })
    }

    fn c_str(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[..self.len]).unwrap_or(c"/")
    }
}

/// A fresh open file of segment `name`, read-only and without following a
/// link or blocking on a FIFO someone put in its place.
pub(crate) fn open_shm_bytes(name: &[u8]) -> Option<OwnedFd> {
    let path = ShmBytesPath::new(name)?;
    fs::openat(
        CWD,
        path.c_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()
}

/// Unlinks segment `name` if it still names the file `fd` has open, and
/// that file has not been unlinked already; whether this call unlinked it.
pub(crate) fn unlink_if_same(name: &[u8], fd: BorrowedFd<'_>) -> bool {
    let Some(path) = ShmBytesPath::new(name) else {
        return false;
    };
    let (Ok(mine), Ok(now)) = (
        fs::fstat(fd),
        fs::statat(CWD, path.c_str(), fs::AtFlags::SYMLINK_NOFOLLOW),
    ) else {
        return false;
    };
    mine.st_nlink > 0
        && (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)
        && fs::unlinkat(CWD, path.c_str(), fs::AtFlags::empty()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_segments_are_refused() {
        for bad in [&b""[..], b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(open_shm_bytes(bad).is_none());
        }
    }

    #[test]
    fn unlink_if_same_spares_a_file_made_since() {
        // Untracked: these files are unlinked behind the handles' backs.
        let untracked = crate::SharedMemory::options().track(false);
        let first = untracked.create(64).unwrap();
        let name = first.name().as_bytes().to_vec();
        let fd = open_shm_bytes(&name).unwrap();
        first.unlink().unwrap();
        // Another file under the same name: not the one `fd` has open.
        let second = untracked.create_named(first.name(), 64).unwrap();
        assert!(!unlink_if_same(&name, fd.as_fd()));
        let fd = open_shm_bytes(&name).unwrap();
        assert!(unlink_if_same(&name, fd.as_fd()));
        assert!(!unlink_if_same(&name, fd.as_fd()), "unlinked already");
        drop(second);
    }

    #[test]
    fn a_pipe_reads_as_readable_once_its_writer_is_gone() {
        let (read, write) = pipe().unwrap();
        assert!(!readable_now(read.as_fd()));
        assert_eq!(
            readable_within(read.as_fd(), Duration::from_millis(1)),
            Ok(false)
        );
        drop(write);
        assert!(readable_now(read.as_fd()));
        read_until_eof(read.as_fd());
    }

    #[test]
    fn a_reopened_file_locks_on_its_own() {
        let (fd, addr) = locked_low_page(c"shmkit-test-page").unwrap();
        assert!(addr != 0 && addr % PAGE == 0);
        let other = reopen(fd.as_raw_fd()).unwrap();
        // `fd` holds LOCK_EX: another open file of the memfd is refused.
        assert!(!try_lock_shared(&other));
        unlock(&fd);
        assert!(try_lock_shared(&other));
        unmap_page(addr);
        assert!(reopen(-1).is_none());
    }
}
