//! The watcher process: forked from the library, it lives on raw system
//! calls only (rustix's `linux_raw` backend: no libc, no allocation, no
//! locks), because the process it was forked from may have had other
//! threads holding any lock at that moment.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::fs::{self, FlockOperation, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::process::Pid;

use std::sync::atomic::Ordering;

use super::{Table, INTENT, SLOTS, VALID};

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
    use rustix::mm::{mmap, MapFlags, ProtFlags};
    let fd = fs::memfd_create(c"shmkit-tracker", fs::MemfdFlags::CLOEXEC).ok()?;
    fs::ftruncate(&fd, 4096).ok()?;
    fs::flock(&fd, FlockOperation::LockExclusive).ok()?;
    // Low addresses, below the kernel's top-down mmap area.
    for hint in [0x10_0000usize, 0x100_0000, 0x1000_0000, 0x10_0000_0000] {
        // SAFETY: FIXED_NOREPLACE never replaces an existing mapping.
        let got = unsafe {
            mmap(
                hint as *mut std::ffi::c_void,
                4096,
                ProtFlags::READ,
                MapFlags::SHARED | MapFlags::FIXED_NOREPLACE,
                &fd,
                0,
            )
        };
        if let Ok(ptr) = got {
            return Some(Sentinel {
                fd,
                addr: ptr as usize,
            });
        }
    }
    None
}

/// Forks a watcher for `table`; returns its pid and the pipe's write end,
/// which this process must keep open for as long as it lives.
/// `table_fd` is the table's memfd, kept open in the watcher so that
/// `shmkit ls` can read what it tracks.
pub(super) fn launch(table: Table, table_fd: RawFd) -> Result<(Pid, OwnedFd), Errno> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let parent = rustix::process::getpid();
    let sentinel = sentinel();
    let sentinel_fd = sentinel.as_ref().map_or(-1, |s| s.fd.as_raw_fd());
    let sentinel_addr = sentinel.as_ref().map_or(0, |s| s.addr);
    table.ready().store(0, Ordering::Relaxed);
    // The child calls only async-signal-safe functions (raw system calls
    // through rustix's linux_raw backend, no allocator, no lock another
    // thread may have held at the fork) and ends with `_exit`; see `run`.
    let child = || -> std::convert::Infallible {
        run(
            read.as_raw_fd(),
            table,
            table_fd,
            parent,
            sentinel_fd,
            sentinel_addr,
        )
    };
    match crate::sys::fork(child)? {
        crate::sys::Forked::Parent(pid) => {
            drop(read);
            // Only the mapping keeps the sentinel (and its lock) now.
            drop(sentinel);
            wait_ready(&table);
            Ok((pid, write))
        }
    }
}

/// Waits (100 ms at most) until the new watcher is watching. Until then a
/// death of this process would go unseen for the watcher's start-up (a
/// millisecond or so), and a parent that checks for the segment at once
/// (CPython's tests do) could attach it first. Only the first tracked
/// segment of a process pays this.
fn wait_ready(table: &Table) {
    use rustix::thread::futex;
    let start = std::time::Instant::now();
    let limit = std::time::Duration::from_millis(100);
    while table.ready().load(Ordering::Acquire) == 0 {
        let Some(left) = limit.checked_sub(start.elapsed()) else {
            return;
        };
        let timeout = futex::Timespec {
            tv_sec: 0,
            tv_nsec: left.as_nanos() as _,
        };
        let _ = futex::wait(table.ready(), futex::Flags::empty(), 0, Some(&timeout));
    }
}

fn sleep_ms(ms: u64) {
    let t = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: (ms * 1_000_000) as _,
    };
    let _ = rustix::event::poll(&mut [], Some(&t));
}

/// A message built on the stack and written to stderr in one `write`.
struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 1024],
            len: 0,
        }
    }
    fn push(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }
    fn num(&mut self, mut v: usize) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
        self
    }
    fn emit(&self) {
        // SAFETY: fd 2 is kept open in the watcher (it is the only one).
        let stderr = unsafe { BorrowedFd::borrow_raw(2) };
        let _ = rustix::io::write(stderr, &self.buf[..self.len]);
    }
}

/// `/dev/shm/NAME\0` on the stack; None for a name that cannot be a segment.
struct Path {
    buf: [u8; 9 + 256 + 1],
    len: usize,
}

impl Path {
    fn new(name: &[u8]) -> Option<Path> {
        if name.is_empty() || name.len() > 255 || name.contains(&0) || name.contains(&b'/') {
            return None;
        }
        let mut buf = [0u8; 9 + 256 + 1];
        buf[..9].copy_from_slice(b"/dev/shm/");
        buf[9..9 + name.len()].copy_from_slice(name);
        Some(Path {
            buf,
            len: 9 + name.len() + 1,
        })
    }
    fn c_str(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[..self.len]).unwrap_or(c"/")
    }
}

/// Closes every descriptor but stderr and those in `keep`: the watcher must not keep
/// anyone's pipes open, nor, above all, the segments' open files (their
/// locks would look like a live user).
fn close_others(keep: &[RawFd]) {
    let Ok(dir) = fs::openat(
        CWD,
        c"/proc/self/fd",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        for fd in 0..4096 {
            if fd != 2 && !keep.contains(&fd) {
                // SAFETY: nothing in the watcher uses these descriptors.
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
        let _ = fs::seek(&dir, rustix::fs::SeekFrom::Start(0));
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
                // SAFETY: as above.
                unsafe { rustix::io::close(fd) };
                closed += 1;
            }
        }
        if closed == 0 {
            break;
        }
    }
}

fn parse_hex(s: &[u8]) -> Option<usize> {
    let mut v: usize = 0;
    if s.is_empty() {
        return None;
    }
    for &b in s {
        let d = (b as char).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(d as usize)?;
    }
    Some(v)
}

/// Unmaps every mapping of a file in `/dev/shm` inherited from the parent:
/// a mapping keeps its open file alive, and with it the parent's
/// `LOCK_SH`, which would make every segment look used forever.
fn unmap_segments() {
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
            // SAFETY: nothing in the watcher uses the parent's segments.
            let _ = unsafe { rustix::mm::munmap(lo as *mut std::ffi::c_void, hi - lo) };
        }
        if found < ranges.len() {
            return;
        }
    }
}

/// Calls `f` on each line of the file at `path` (a line longer than the
/// 8 KiB buffer is skipped) until it returns false; false if the file
/// cannot be opened. No allocation.
fn each_line(path: &CStr, f: impl FnMut(&[u8]) -> bool) -> bool {
    each_line_at(path, f).is_ok()
}

/// [`each_line`], with the reason the file could not be opened.
fn each_line_at(path: &CStr, mut f: impl FnMut(&[u8]) -> bool) -> Result<(), Errno> {
    let file = fs::openat(CWD, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut buf = [0u8; 8192];
    let mut have = 0;
    loop {
        let n = match rustix::io::read(&file, &mut buf[have..]) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(_) => 0,
        };
        let end = have + n;
        let mut start = 0;
        while let Some(nl) = buf[start..end].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if !f(line) {
                return Ok(());
            }
        }
        // Keep the unfinished line; drop one that fills the buffer.
        if start == 0 && end == buf.len() {
            have = 0;
        } else {
            buf.copy_within(start..end, 0);
            have = end - start;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// A fresh open file of the sentinel inherited as `fd`: a lock of our own,
/// not the parent's.
fn reopen(fd: RawFd) -> Option<OwnedFd> {
    if fd < 0 {
        return None;
    }
    let mut path = Line::new();
    path.push(b"/proc/self/fd/").num(fd as usize).push(b"\0");
    let c = CStr::from_bytes_with_nul(&path.buf[..path.len]).ok()?;
    fs::openat(CWD, c, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()
}

fn run(
    read: RawFd,
    table: Table,
    table_fd: RawFd,
    parent: Pid,
    sentinel_fd: RawFd,
    sentinel_addr: usize,
) -> ! {
    // Ctrl-C and kill meant for the parent's group must not stop the
    // cleanup; a watcher ends only when its parent does (or by SIGKILL).
    crate::sys::block_all_signals();
    let _ = rustix::process::chdir(c"/");
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
    crate::sys::prefer_realtime();
    let own = reopen(sentinel_fd);
    close_others(&[read, table_fd, own.as_ref().map_or(-1, |f| f.as_raw_fd())]);
    unmap_segments();
    if sentinel_addr != 0 {
        // SAFETY: the parent's sentinel page; nothing here uses it.
        let _ = unsafe { rustix::mm::munmap(sentinel_addr as *mut std::ffi::c_void, 4096) };
    }
    // Opened after the clean-up of descriptors, so it survives it.
    let parent_pidfd =
        rustix::process::pidfd_open(parent, rustix::process::PidfdFlags::empty()).ok();
    // SAFETY: `read` is the pipe's read end, open until we exit.
    let pipe = unsafe { BorrowedFd::borrow_raw(read) };
    if let Some(own) = own {
        // The tracking thread's death wakes us as its exit begins
        // (`Table::arm_death_wake`), before its files are released and well
        // before its parent's `wait()` returns. Once the marks are set, we
        // move off the dying process's CPU, where the sentinel's wake-up
        // would otherwise land, behind the rest of its exit.
        let mut marks = Marks::new();
        signal_ready(&table);
        if wait_owner_death(&table, pipe) {
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
            if owner == parent.as_raw_nonzero().get() && (table.main_locker() || exiting_now(owner))
            {
                marks.set_all(&table);
                if !marks.is_empty() && !exiting(owner) {
                    marks.clear();
                }
            }
            // Buys: the sentinel's later wake-up is not queued on the CPU
            // where the dying process is still tearing itself down.
            avoid_cpu_of(owner);
            // The process must be gone within 2 s, fork children included,
            // or the marks are dropped and the wait below goes on without.
            if !marks.is_empty() {
                let dying = owner_gone(parent_pidfd.as_ref()) && try_shared(&own);
                if !dying {
                    marks.clear();
                }
            }
        }
        // Returns once the parent and its fork children are gone and every
        // file they had is released (see `Sentinel`): only then is a
        // segment nobody holds truly left over, and not one a live process
        // is about to unlink itself.
        while let Err(Errno::INTR) = fs::flock(&own, FlockOperation::LockShared) {}
        cleanup(table, &mut marks);
        crate::sys::exit_now();
    }
    signal_ready(&table);
    wait_eof(pipe);
    // End of file comes while the parent's exit closes its descriptors,
    // maybe before the segments'. Wait until it is gone for good: its pidfd
    // turns readable as it becomes a zombie, all files closed. This wakes
    // us as early as its own parent's wait() returns, so a parent that
    // checks at once (CPython's tests do) finds the segment gone. A second
    // at most: it may have exec'd instead.
    match parent_pidfd {
        Some(fd) => {
            use rustix::event::{PollFd, PollFlags, Timespec};
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            let second = Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            while let Err(Errno::INTR) = rustix::event::poll(&mut fds, Some(&second)) {}
        }
        None => {
            for _ in 0..1000 {
                if rustix::process::getppid() != Some(parent) {
                    break;
                }
                sleep_ms(1);
            }
        }
    }
    cleanup(table, &mut Marks::new());
    crate::sys::exit_now()
}

/// Open files of tracked segments on which this watcher holds the "cleanup
/// pending" mark (`mark::set_cleanup_mark`), on the stack: the watcher does
/// not allocate. Closing a file drops its mark; `_exit` closes any left.
struct Marks {
    fds: [RawFd; MAX_MARKS],
    /// The table slot each mark is for.
    slots: [usize; MAX_MARKS],
    /// Whether we set the mode hint on each (and must clear it again).
    hinted: [bool; MAX_MARKS],
    len: usize,
}

/// Segments past this many are cleaned up unmarked (as before marks
/// existed): an attach may then win the race and keep one alive. It also
/// bounds the descriptors the watcher opens.
const MAX_MARKS: usize = 256;

impl Marks {
    fn new() -> Self {
        Marks {
            fds: [-1; MAX_MARKS],
            slots: [usize::MAX; MAX_MARKS],
            hinted: [false; MAX_MARKS],
            len: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn set_all(&mut self, table: &Table) {
        for i in table.used_slots() {
            if self.len == MAX_MARKS {
                return;
            }
            if table.state(i).load(Ordering::Acquire) != VALID || !first_of_name(table, i) {
                continue;
            }
            let Some(fd) = open_segment(&table.name(i)) else {
                continue;
            };
            // Not a file someone else made since under the name.
            let ino = table.ino(i);
            if ino != 0 && fs::fstat(&fd).map_or(true, |st| st.st_ino != ino) {
                continue;
            }
            if super::mark::set_cleanup_mark(&fd) {
                // Mark first, hint second: an attacher that sees the hint
                // always finds the mark.
                self.hinted[self.len] = super::mark::set_cleanup_hint(&fd, true);
                self.fds[self.len] = std::os::fd::IntoRawFd::into_raw_fd(fd);
                self.slots[self.len] = i;
                self.len += 1;
            }
        }
    }

    /// The marked descriptor of slot `i`'s segment, if it has one: the
    /// probe uses it rather than open another (see `probe`).
    fn fd_of(&self, i: usize) -> Option<BorrowedFd<'_>> {
        let k = self.slots[..self.len].iter().position(|&s| s == i)?;
        // SAFETY: a descriptor this struct opened and owns; the borrow ends
        // before `clear` closes it (it needs `&mut self`).
        Some(unsafe { BorrowedFd::borrow_raw(self.fds[k]) })
    }

    /// Drops every mark, and the hints of segments still linked.
    fn clear(&mut self) {
        for (&fd, &hinted) in self.fds[..self.len].iter().zip(&self.hinted) {
            if hinted {
                // SAFETY: a descriptor this struct opened and owns, open
                // until the close below.
                super::mark::set_cleanup_hint(unsafe { BorrowedFd::borrow_raw(fd) }, false);
            }
            // SAFETY: as above; closed once.
            unsafe { rustix::io::close(fd) };
        }
        self.len = 0;
    }
}

/// Waits up to two seconds for the process that forked us to be gone for
/// good (its pidfd turns readable once it is a zombie, every file closed);
/// false if it is still alive then, or cannot be watched.
fn owner_gone(pidfd: Option<&OwnedFd>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let Some(fd) = pidfd else {
        return false;
    };
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let limit = Timespec {
        tv_sec: 2,
        tv_nsec: 0,
    };
    loop {
        match rustix::event::poll(&mut fds, Some(&limit)) {
            Ok(n) => return n > 0,
            Err(Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// `flock(LOCK_SH | LOCK_NB)` on the sentinel: whether no fork child of the
/// dead process still holds it.
fn try_shared(own: &OwnedFd) -> bool {
    fs::flock(own, FlockOperation::NonBlockingLockShared).is_ok()
}

fn signal_ready(table: &Table) {
    table.ready().store(1, Ordering::Release);
    let _ = rustix::thread::futex::wake(table.ready(), rustix::thread::futex::Flags::empty(), 1);
}

fn wait_eof(pipe: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    loop {
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => break,
            Ok(_) | Err(Errno::INTR) => continue,
            Err(_) => break,
        }
    }
}

/// Whether slot `i` is the first VALID slot holding its name.
fn first_of_name(table: &Table, i: usize) -> bool {
    let name = table.name(i);
    table
        .used_slots()
        .take_while(|&j| j < i)
        .all(|j| table.state(j).load(Ordering::Acquire) != VALID || !table.name_is(j, &name))
}

/// Blocks until the tracking thread dies (true), or until end of file on
/// the pipe without that (false): no death word, or one that never fires
/// because the process replaced its robust list. The futex wait times out
/// every second to look at the pipe, which bounds the second case.
fn wait_owner_death(table: &Table, pipe: BorrowedFd<'_>) -> bool {
    use rustix::thread::futex;
    let Some(word) = table.death_word() else {
        return false;
    };
    let second = futex::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    loop {
        let v = word.load(Ordering::Acquire);
        if v & futex::OWNER_DIED != 0 || v & libc::FUTEX_TID_MASK == 0 {
            return true;
        }
        // The kernel wakes a dead owner's waiters only if this bit is set.
        if v & futex::WAITERS == 0
            && word
                .compare_exchange(v, v | futex::WAITERS, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            continue;
        }
        // Shared (not PRIVATE): the word is in a memfd mapped by two
        // processes.
        let _ = futex::wait(
            word,
            futex::Flags::empty(),
            v | futex::WAITERS,
            Some(&second),
        );
        if word.load(Ordering::Acquire) & futex::OWNER_DIED != 0 {
            return true;
        }
        if pipe_closed(pipe) {
            return false;
        }
    }
}

/// Whether the pipe is at end of file, without blocking.
fn pipe_closed(pipe: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&pipe, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

/// Pins this process to every CPU but the one process `pid` last ran on,
/// when there is another; best effort.
fn avoid_cpu_of(pid: i32) {
    let Some(cpu) = last_cpu(pid) else {
        return;
    };
    crate::sys::avoid_cpu(cpu);
}

/// Field 39 of `/proc/PID/stat`: the CPU the process last ran on.
fn last_cpu(pid: i32) -> Option<usize> {
    usize::try_from(stat_field(pid, 39)?).ok()
}

/// The kernel's `PF_EXITING` task flag (include/linux/sched.h), set as a
/// thread enters `do_exit`, before anything of it is released.
const PF_EXITING: u64 = 0x4;

/// Buys: marks set on a thread's death are kept only if the whole process
/// is going, so attachers of a live process never wait.
///
/// Whether process `pid` is dying: its main thread is exiting. The thread
/// whose death woke us may be another one, killed a moment before the main
/// thread in the same exit, so a "no" is asked again for a few
/// milliseconds before it is believed.
fn exiting(pid: i32) -> bool {
    for _ in 0..10 {
        if exiting_now(pid) {
            return true;
        }
        sleep_ms(1);
    }
    false
}

/// Whether process `pid` is exiting (its main thread has `PF_EXITING`; a
/// zombie keeps it) or gone.
fn exiting_now(pid: i32) -> bool {
    stat_field(pid, 9).is_none_or(|flags| flags & PF_EXITING != 0)
}

/// A segment file's identity, as `/proc` prints it.
#[derive(Clone, Copy)]
struct Key {
    major: u32,
    minor: u32,
    ino: u64,
}

/// Whether `MAJOR:MINOR:INODE` (hex, hex, decimal: `/proc/locks`) is `key`.
fn is_lock_file(field: &[u8], key: Key) -> bool {
    let mut parts = field.split(|&b| b == b':');
    parts.next().and_then(parse_hex) == Some(key.major as usize)
        && parts.next().and_then(parse_hex) == Some(key.minor as usize)
        && parts.next().and_then(parse_dec) == Some(key.ino)
}

/// The fields of a held lock in a line of `/proc/locks`
/// (`ID: KIND MODE ACCESS PID MAJOR:MINOR:INODE START END`): pid, file,
/// start. None for a waiter (`ID: -> …`), which holds nothing.
fn lock_fields(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty()).skip(1);
    if fields.next()? == b"->" {
        return None;
    }
    let pid = fields.nth(2)?;
    Some((pid, fields.next()?, fields.next()?))
}

/// Whether a lock starting at `start` is a watcher's "cleanup pending"
/// mark, which says a watcher is judging the segment, not that anyone uses
/// it (`inspect` skips it too).
fn is_mark_start(start: &[u8]) -> bool {
    parse_dec(start) == Some(super::mark::CLEANUP_MARK_START as u64)
}

/// Whether every process that holds a `flock` on the segment `key` is
/// exiting, per `/proc/locks`: one that died with ours and is still closing
/// its files, after which a retry finds the segment free. A live holder
/// makes it that process's business (it may be about to unlink it
/// itself), so no retry. True when it cannot be told.
fn held_only_by_exiting(key: Key) -> bool {
    let mut live_holder = false;
    each_line(c"/proc/locks", |line| {
        let Some((pid, file, _)) = lock_fields(line) else {
            return true;
        };
        if line.split(|&b| b == b' ').any(|f| f == b"FLOCK") && is_lock_file(file, key) {
            live_holder = parse_dec(pid)
                .and_then(|p| i32::try_from(p).ok())
                .is_some_and(|p| !exiting_now(p));
        }
        !live_holder
    });
    !live_holder
}

/// What a look at a segment's users found, from the weakest claim on it to
/// the strongest; several findings combine into the strongest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Users {
    /// Nobody but us.
    None,
    /// Only processes that are exiting (died with ours, still closing
    /// their files): worth a retry.
    Exiting,
    /// A process that could have it open could not be inspected (another
    /// user's, without privilege): kept, as no use is not proven.
    Unknown,
    /// A live process maps it, holds it open or holds a lock on it.
    Live,
}

/// Who uses the segment `key` (owned by `uid`, permission bits `mode`)
/// besides this watcher, by the rule `shmkit ls` applies
/// (`crate::usage`): a mapping, an open descriptor or a lock, in any
/// process this one may inspect, read from `/proc` with stack buffers only.
/// A watcher's descriptors that hold a "cleanup pending" mark are not
/// uses: they are how watchers judge, and two watchers judging the same
/// segment must not keep it for each other.
fn users_of(key: Key, uid: u32, mode: u32) -> Users {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let mut found = Users::None;
    each_line(c"/proc/locks", |line| {
        let Some((pid, file, start)) = lock_fields(line) else {
            return true;
        };
        if !is_lock_file(file, key) || is_mark_start(start) {
            return true;
        }
        // The kernel prints -1 for an OFD lock, 0 for another namespace's
        // taker: either way a lock proves an open file, so a use.
        let pid = parse_signed(pid).unwrap_or(0);
        if pid == i64::from(me) {
            return true; // our own probe's flock
        }
        let exiting = i32::try_from(pid).is_ok_and(|p| p > 0 && exiting_now(p));
        found = found.max(if exiting { Users::Exiting } else { Users::Live });
        found != Users::Live
    });
    if found == Users::Live {
        return found;
    }
    let Ok(proc_dir) = fs::openat(
        CWD,
        c"/proc",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Users::Unknown;
    };
    let mut space = [MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = fs::RawDir::new(proc_dir.as_fd(), &mut space);
    while let Some(Ok(entry)) = entries.next() {
        let Some(pid) = parse_dec(entry.file_name().to_bytes()).and_then(|p| i32::try_from(p).ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        found = found.max(process_uses(pid, key, uid, mode));
        if found == Users::Live {
            break;
        }
    }
    found
}

/// Whether process `pid` maps or holds open the segment `key`.
fn process_uses(pid: i32, key: Key, uid: u32, mode: u32) -> Users {
    let mut uses = false;
    let mut blind = false;
    let maps = proc_path(pid, b"/maps");
    // "START-END PERMS OFFSET MAJOR:MINOR INODE [PATH]"
    let read = maps.as_ref().map_or(Err(Errno::INVAL), |p| {
        each_line_at(p.c_str(), |line| {
            let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
            let dev = fields.nth(3).unwrap_or(b"");
            let ino = fields.next().and_then(parse_dec);
            let mut parts = dev.split(|&b| b == b':');
            uses = ino == Some(key.ino)
                && parts.next().and_then(parse_hex) == Some(key.major as usize)
                && parts.next().and_then(parse_hex) == Some(key.minor as usize);
            !uses
        })
    });
    match read {
        Ok(()) => {}
        Err(Errno::NOENT | Errno::SRCH) => return Users::None, // gone
        Err(_) => blind = true,
    }
    if !uses {
        match open_fds_use(pid, key) {
            Ok(found) => uses = found,
            Err(Errno::NOENT | Errno::SRCH) => return Users::None,
            Err(_) => blind = true,
        }
    }
    if uses {
        return if exiting_now(pid) {
            Users::Exiting
        } else {
            Users::Live
        };
    }
    if blind && !holds_nothing(pid) && could_open(pid, uid, mode) {
        return Users::Unknown;
    }
    Users::None
}

/// Whether a descriptor of process `pid` other than a watcher's mark is
/// open on the segment `key`.
fn open_fds_use(pid: i32, key: Key) -> Result<bool, Errno> {
    let path = proc_path(pid, b"/fd").ok_or(Errno::INVAL)?;
    let dir = fs::openat(
        CWD,
        path.c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut space = [MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = fs::RawDir::new(dir.as_fd(), &mut space);
    let mut target = [0u8; 32];
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name();
        let Some(fd) = parse_dec(name.to_bytes()) else {
            continue;
        };
        // Segments live in /dev/shm (a renamed or unlinked one too, with
        // " (deleted)" after it): skip everything else without a stat.
        let Ok(len) = fs::readlinkat_raw(&dir, name, &mut target[..]) else {
            continue;
        };
        if !target[..len.min(target.len())].starts_with(b"/dev/shm/") {
            continue;
        }
        let Ok(st) = fs::statat(&dir, name, fs::AtFlags::empty()) else {
            continue;
        };
        if st.st_ino == key.ino
            && fs::major(st.st_dev) == key.major
            && fs::minor(st.st_dev) == key.minor
            && !holds_mark(pid, fd)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether descriptor `fd` of process `pid` holds a "cleanup pending" mark
/// (`/proc/PID/fdinfo/FD` lists the locks an open file holds).
fn holds_mark(pid: i32, fd: u64) -> bool {
    let mut path = Line::new();
    path.push(b"/proc/")
        .num(pid as usize)
        .push(b"/fdinfo/")
        .num(fd as usize)
        .push(b"\0");
    let Ok(c) = CStr::from_bytes_with_nul(&path.buf[..path.len]) else {
        return false;
    };
    let mut mark = false;
    each_line(c, |line| {
        // "lock:\t1: OFDLCK ADVISORY READ -1 00:1b:12 START END"
        if let Some(rest) = line.strip_prefix(b"lock:") {
            mark = lock_fields(rest.trim_ascii_start()).is_some_and(|(_, _, s)| is_mark_start(s));
        }
        !mark
    });
    mark
}

/// `/proc/PID` followed by `tail`, NUL-terminated.
fn proc_path(pid: i32, tail: &[u8]) -> Option<Line> {
    let mut path = Line::new();
    path.push(b"/proc/")
        .num(usize::try_from(pid).ok()?)
        .push(tail)
        .push(b"\0");
    Some(path)
}

impl Line {
    fn c_str(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[..self.len]).unwrap_or(c"/")
    }
}

/// Whether `pid` can hold no file at all: a zombie, or a kernel thread.
fn holds_nothing(pid: i32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let zombie = proc_path(pid, b"/stat").is_some_and(|p| {
        let mut buf = [0u8; 1024];
        let Ok(fd) = fs::openat(
            CWD,
            p.c_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return true; // gone
        };
        let len = rustix::io::read(&fd, &mut buf).unwrap_or(0);
        buf[..len]
            .iter()
            .rposition(|&b| b == b')')
            .and_then(|at| buf.get(at + 2))
            .is_some_and(|&state| state == b'Z' || state == b'X')
    });
    zombie || stat_field(pid, 9).is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Whether process `pid`, whose `/proc` entries this watcher may not read,
/// could have opened a segment owned by `uid` with permission bits `mode`:
/// always if the mode lets its group or others in, else if one of its user
/// ids is root's or the owner's (the rule the manager's clean-up applies;
/// `/proc/PID/status` is readable by all). One gone meanwhile could not.
fn could_open(pid: i32, uid: u32, mode: u32) -> bool {
    if mode & 0o077 != 0 {
        return true;
    }
    let Some(path) = proc_path(pid, b"/status") else {
        return true;
    };
    let mut could = true;
    let opened = each_line(path.c_str(), |line| {
        let Some(ids) = line.strip_prefix(b"Uid:") else {
            return true;
        };
        could = ids
            .split(|&b| b == b'\t' || b == b' ')
            .filter(|f| !f.is_empty())
            .any(|f| parse_dec(f).is_none_or(|u| u == 0 || u == u64::from(uid)));
        false
    });
    opened && could
}

fn parse_signed(s: &[u8]) -> Option<i64> {
    match s.strip_prefix(b"-") {
        Some(digits) => parse_dec(digits)
            .and_then(|v| i64::try_from(v).ok())
            .map(|v| -v),
        None => parse_dec(s).and_then(|v| i64::try_from(v).ok()),
    }
}

fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |v, &b| {
        v.checked_mul(10)?
            .checked_add(u64::from(b.checked_sub(b'0').filter(|&d| d < 10)?))
    })
}

/// Numeric field `n` (1-based, `n` >= 3) of `/proc/PID/stat`.
fn stat_field(pid: i32, n: usize) -> Option<u64> {
    let mut path = Line::new();
    path.push(b"/proc/")
        .num(usize::try_from(pid).ok()?)
        .push(b"/stat\0");
    let c = CStr::from_bytes_with_nul(&path.buf[..path.len]).ok()?;
    let fd = fs::openat(CWD, c, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut buf = [0u8; 1024];
    let len = rustix::io::read(&fd, &mut buf).ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let after = buf[..len].iter().rposition(|&b| b == b')')? + 2;
    let field = buf[after..len]
        .split(|&b| b == b' ')
        .nth(n.checked_sub(3)?)?;
    let mut v = 0u64;
    for &d in field {
        v = v
            .checked_mul(10)?
            .checked_add(u64::from(d.checked_sub(b'0').filter(|&d| d < 10)?))?;
    }
    Some(v)
}

/// Unlinks `name` if it still names the file `fd` has open, and that file
/// has not been unlinked already (by another watcher, a peer, `shmkit gc`).
fn unlink_if_same(name: &[u8], fd: BorrowedFd<'_>) -> bool {
    let Some(path) = Path::new(name) else {
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

/// A fresh open file of segment `name`, read-only and without following a
/// link or blocking on a FIFO someone put in its place.
fn open_segment(name: &[u8]) -> Option<OwnedFd> {
    let path = Path::new(name)?;
    fs::openat(
        CWD,
        path.c_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()
}

/// Which file under a slot's name is the one the slot stands for.
#[derive(Clone, Copy)]
enum Want {
    /// A registered segment: this inode (0: whatever is there).
    Ino(u64),
    /// An intent: a file born no earlier than this (ns), unless it is the
    /// inode `.1`, which a registration of the same name covers.
    BornSince(u64, u64),
}

fn want(table: &Table, i: usize) -> Want {
    if table.state(i).load(Ordering::Acquire) == INTENT {
        let name = table.name(i);
        let registered = table
            .used_slots()
            .find(|&j| table.state(j).load(Ordering::Acquire) == VALID && table.name_is(j, &name))
            .map_or(0, |j| table.ino(j));
        Want::BornSince(table.since(i), registered)
    } else {
        Want::Ino(table.ino(i))
    }
}

/// Whether a file with status `st` was born at `since` (ns) or later.
///
/// An intent is written before `shm_open(O_CREAT | O_EXCL)`, stamped with
/// the coarse real-time clock that tmpfs stamps a new file's birth with,
/// so the file that create makes is never born earlier than its intent. A
/// file born earlier existed before the create began: someone else's (the
/// create failed with EEXIST and its process died before dropping the
/// intent), never unlinked for it. A file born in the same clock tick just
/// before the intent cannot be told from ours; that needs someone else to
/// create the same name within the tick and our create to die before
/// dropping its intent, and the file is still unlinked only once nobody
/// uses it. Without a birth time (a filesystem that keeps none), the last
/// status change stands in: never earlier than the birth, so a file of
/// ours still passes, and only a recent change can make another's pass.
fn born_since(st: &fs::Statx, since: u64) -> bool {
    let t = if fs::StatxFlags::from_bits_retain(st.stx_mask).contains(fs::StatxFlags::BTIME) {
        st.stx_btime
    } else {
        st.stx_ctime
    };
    let ns = u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(t.tv_nsec));
    ns >= since
}

enum Probe {
    /// No such file: unlinked by someone else.
    Gone,
    /// A file that is not the slot's (see [`Want`]): left alone.
    Foreign,
    Unlinked,
    /// Still used; `retry` when only exiting processes use it.
    InUse {
        retry: bool,
    },
}

/// Decides for one slot's segment, and unlinks it if nobody uses it.
///
/// `marked` is this watcher's marked descriptor of it, if any: the lease
/// below fails while this process has two open files of the segment.
/// Otherwise a fresh descriptor is opened, and marked too, so that another
/// watcher judging the same segment at the same moment does not count it
/// as a user.
///
/// The cheap checks come first: `flock(LOCK_EX | LOCK_NB)` fails if any
/// shmkit handle lives; then a write lease, which the kernel grants only
/// if no other open file of the segment exists anywhere (a descriptor or
/// a mapping, whoever holds it), so granted means unused. It needs the
/// file's owner or CAP_LEASE; where it is refused, or fails because some
/// open file exists, `/proc` is read to find out whose (`users_of`).
fn probe(name: &[u8], want: Want, marked: Option<BorrowedFd<'_>>) -> Probe {
    let fresh;
    let fd = match marked {
        Some(fd) => fd,
        None => {
            let Some(fd) = open_segment(name) else {
                return Probe::Gone;
            };
            fresh = fd;
            fresh.as_fd()
        }
    };
    let Ok(st) = fs::statx(
        fd,
        c"",
        fs::AtFlags::EMPTY_PATH,
        fs::StatxFlags::BASIC_STATS | fs::StatxFlags::BTIME,
    ) else {
        return Probe::Gone;
    };
    if u32::from(st.stx_mode) & 0o170000 != 0o100000 {
        return Probe::Foreign;
    }
    let ours = match want {
        Want::Ino(ino) => ino == 0 || ino == st.stx_ino,
        Want::BornSince(since, registered) => st.stx_ino != registered && born_since(&st, since),
    };
    if !ours {
        return Probe::Foreign;
    }
    if marked.is_none() {
        super::mark::set_cleanup_mark(fd);
    }
    let key = Key {
        major: st.stx_dev_major,
        minor: st.stx_dev_minor,
        ino: st.stx_ino,
    };
    if fs::flock(fd, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Probe::InUse {
            retry: held_only_by_exiting(key),
        };
    }
    let leased = crate::sys::set_lease(fd, true);
    let users = if leased {
        Users::None
    } else {
        users_of(key, st.stx_uid, u32::from(st.stx_mode) & 0o7777)
    };
    let outcome = match users {
        // Another watcher may have unlinked it meanwhile.
        Users::None if unlink_if_same(name, fd) => Probe::Unlinked,
        Users::None => Probe::Gone,
        Users::Exiting => Probe::InUse { retry: true },
        Users::Unknown | Users::Live => Probe::InUse { retry: false },
    };
    if leased {
        crate::sys::set_lease(fd, false);
    }
    // A marked descriptor stays open until the marks are dropped; its lock
    // must not turn away the shmkit handles attaching meanwhile.
    let _ = fs::flock(fd, FlockOperation::Unlock);
    outcome
}

/// Unlinks the leftover segments in `table`, then drops `marks`, so that
/// processes waiting to attach see the outcome.
fn cleanup(table: Table, marks: &mut Marks) {
    let live = |i: usize| match table.state(i).load(Ordering::Acquire) {
        VALID => first_of_name(&table, i),
        INTENT => true,
        _ => false,
    };
    let has = |set: &[u64], i: usize| set[i / 64] & (1 << (i % 64)) != 0;
    // Unlink first, talk later: a parent may be checking for the segment
    // the moment its child is gone.
    // CPython's count: names registered and not unregistered, once each,
    // those someone else unlinked included (CPython's own tests count
    // them, and expect the FileNotFoundError line each gets). An intent
    // counts only if it left a file of ours.
    let mut leaked = 0usize;
    let mut gone = [0u64; SLOTS / 64];
    // Names still in use (see the retries below).
    let mut pending = [0u64; SLOTS / 64];
    let mut retry = [0u64; SLOTS / 64];
    // Registrations first: an intent for the same file defers to them.
    for pass in [VALID, INTENT] {
        for i in table.used_slots() {
            if table.state(i).load(Ordering::Acquire) != pass || !live(i) {
                continue;
            }
            let intent = pass == INTENT;
            // A quiet registration is cleaned up like any other, in silence.
            let loud = !table.is_quiet(i);
            match probe(&table.name(i), want(&table, i), marks.fd_of(i)) {
                Probe::InUse { retry: again } => {
                    leaked += usize::from(loud);
                    pending[i / 64] |= u64::from(loud) << (i % 64);
                    if again {
                        retry[i / 64] |= 1 << (i % 64);
                    }
                }
                Probe::Gone | Probe::Foreign if !intent => {
                    leaked += usize::from(loud);
                    gone[i / 64] |= u64::from(loud) << (i % 64);
                }
                Probe::Unlinked => leaked += usize::from(loud),
                Probe::Gone | Probe::Foreign => {}
            }
        }
    }
    marks.clear();
    if leaked > 0 {
        Line::new()
            .push(b"shmkit: UserWarning: resource_tracker: There appear to be ")
            .num(leaked)
            .push(b" leaked shared_memory objects to clean up at shutdown\n")
            .emit();
    }
    for i in (0..SLOTS).filter(|&i| has(&gone, i)) {
        let name = table.name(i);
        Line::new()
            .push(b"shmkit: UserWarning: resource_tracker: '/")
            .push(&name)
            .push(b"': [Errno 2] No such file or directory: '/")
            .push(&name)
            .push(b"'\n")
            .emit();
    }
    // Retried a few times: names whose every user is itself exiting (it
    // died with ours and is still closing its files).
    // Buys: a segment a co-dying process (a fork child) still holds for a
    // moment is unlinked, not reported "still open" and leaked.
    for delay in [10, 20, 40, 80, 150] {
        if retry.iter().all(|&w| w == 0) {
            break;
        }
        sleep_ms(delay);
        for i in 0..SLOTS {
            if !has(&retry, i) {
                continue;
            }
            match probe(&table.name(i), want(&table, i), None) {
                Probe::InUse { retry: true } => {}
                Probe::InUse { retry: false } => retry[i / 64] &= !(1 << (i % 64)),
                _ => {
                    retry[i / 64] &= !(1 << (i % 64));
                    pending[i / 64] &= !(1 << (i % 64));
                }
            }
        }
    }
    for i in (0..SLOTS).filter(|&i| has(&pending, i)) {
        Line::new()
            .push(b"shmkit: resource_tracker: '/")
            .push(&table.name(i))
            .push(b"': still open in another process; not unlinked\n")
            .emit();
    }
}
