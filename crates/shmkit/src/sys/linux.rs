//! Linux: POSIX shared memory is a file in the tmpfs at `/dev/shm`, so the
//! `shm_*` calls are the file calls glibc would make, and rename, which POSIX
//! lacks, is `renameat2` inside that directory.

use std::ffi::{c_void, CStr};
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};

use rustix::fs::{self, FallocateFlags, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;
use rustix::mm::{self, MapFlags, ProtFlags};

/// Where glibc and CPython keep POSIX shared memory on Linux.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// `/dev/shm/NAME\0` in a stack buffer: opening and unlinking are hot, and
/// a heap path (plus the copy that adds the NUL) costs as much as the rest
/// of the user-space work. `name` is validated (no NUL, at most 255 bytes).
struct ShmPath {
    buf: [u8; SHM_DIR.len() + 1 + crate::name::MAX_LEN + 1],
    len: usize,
}

impl ShmPath {
    fn new(name: &str) -> Self {
        let mut buf = [0u8; SHM_DIR.len() + 1 + crate::name::MAX_LEN + 1];
        let dir = SHM_DIR.len();
        buf[..dir].copy_from_slice(SHM_DIR.as_bytes());
        buf[dir] = b'/';
        buf[dir + 1..dir + 1 + name.len()].copy_from_slice(name.as_bytes());
        ShmPath {
            buf,
            len: dir + 1 + name.len() + 1,
        }
    }

    fn as_c_str(&self) -> &CStr {
        // Validated names hold no NUL, so the only one is the terminator.
        CStr::from_bytes_with_nul(&self.buf[..self.len]).expect("validated shm name")
    }
}

/// How [`shm_open`] treats a name that does or does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Fail with `ENOENT` if the name is free.
    Open,
    /// Create the name if it is free, else open it.
    OpenOrCreate,
    /// Fail with `EEXIST` if the name is taken.
    CreateNew,
}

/// `shm_open(name, O_RDWR | …, mode)`, with the `O_NOFOLLOW | O_CLOEXEC` that
/// glibc adds.
pub(crate) fn shm_open(name: &str, disposition: Disposition, mode: u32) -> Result<OwnedFd, Errno> {
    let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match disposition {
        Disposition::Open => {}
        Disposition::OpenOrCreate => flags |= OFlags::CREATE,
        Disposition::CreateNew => flags |= OFlags::CREATE | OFlags::EXCL,
    }
    fs::openat(
        CWD,
        ShmPath::new(name).as_c_str(),
        flags,
        Mode::from_raw_mode(mode),
    )
}

/// `shm_unlink(name)`.
pub(crate) fn shm_unlink(name: &str) -> Result<(), Errno> {
    fs::unlinkat(CWD, ShmPath::new(name).as_c_str(), fs::AtFlags::empty())
}

/// Gives the segment `size` bytes backed by real pages, so that running out of
/// room in `/dev/shm` is an `ENOSPC` now rather than a `SIGBUS` at first
/// touch. Falls back to a sparse `ftruncate` where `fallocate` is not
/// supported (a `/dev/shm` that is not tmpfs).
pub(crate) fn reserve(fd: impl AsFd, size: u64) -> Result<(), Errno> {
    match fs::fallocate(&fd, FallocateFlags::empty(), 0, size) {
        Err(Errno::OPNOTSUPP) => fs::ftruncate(&fd, size),
        other => other,
    }
}

/// `ftruncate(fd, size)`: sets the size without reserving pages.
pub(crate) fn truncate(fd: impl AsFd, size: u64) -> Result<(), Errno> {
    fs::ftruncate(fd, size)
}

/// The size, mode and owner of an open segment.
pub(crate) fn fstat(fd: impl AsFd) -> Result<fs::Stat, Errno> {
    fs::fstat(fd)
}

/// Marks this open file as in use: `flock(LOCK_SH | LOCK_NB)` on the
/// descriptor we already hold. The lock lives as long as the open file
/// (descriptor or mapping) and the kernel drops it when the process dies,
/// so a leak tracker's `LOCK_EX | LOCK_NB` probe tells a used segment from an
/// abandoned one (see `crate::tracker`). Shared locks never block each
/// other, and a failure (someone holds `LOCK_EX`) only loses the mark.
pub(crate) fn hold(fd: impl AsFd) {
    let _ = fs::flock(fd, fs::FlockOperation::NonBlockingLockShared);
}

/// `renameat2` inside `/dev/shm`.
pub(crate) fn rename(old: &str, new: &str, exchange: bool, noreplace: bool) -> Result<(), Errno> {
    let mut flags = RenameFlags::empty();
    if exchange {
        flags |= RenameFlags::EXCHANGE;
    }
    if noreplace {
        flags |= RenameFlags::NOREPLACE;
    }
    fs::renameat_with(
        CWD,
        ShmPath::new(old).as_c_str(),
        CWD,
        ShmPath::new(new).as_c_str(),
        flags,
    )
}

/// Maps `len` bytes of `fd` shared and read-write.
pub(crate) fn map(fd: impl AsFd, len: usize) -> Result<NonNull<u8>, Errno> {
    // SAFETY: a fresh mapping at an address the kernel chooses cannot overlap
    // memory Rust knows about; what the pointer may be used for is the
    // business of `Region`, which owns it from here on.
    let ptr = unsafe {
        mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )?
    };
    NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)
}

/// Unmaps a mapping made by [`map`].
///
/// # Safety
/// `ptr` and `len` must come from one call of [`map`], and nothing may use
/// the memory afterwards.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> Result<(), Errno> {
    // SAFETY: forwarded to the caller.
    unsafe { mm::munmap(ptr.as_ptr().cast::<c_void>(), len) }
}

/// Whether `/dev/shm` has an entry called `name` (whoever may open it).
pub(crate) fn exists(name: &str) -> bool {
    fs::statat(
        CWD,
        ShmPath::new(name).as_c_str(),
        fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .is_ok()
}

/// A socket that becomes readable each time this process gets `SIGTERM`
/// (which then no longer kills it), so that a manager process can unlink
/// its segments before it exits.
#[cfg(feature = "manager")]
pub(crate) fn sigterm_socket() -> std::io::Result<std::os::unix::net::UnixStream> {
    let (read, write) = std::os::unix::net::UnixStream::pair()?;
    write.set_nonblocking(true)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write)?;
    Ok(read)
}

/// `kill(pid, SIGTERM)`.
pub(crate) fn terminate(pid: u32) -> Result<(), Errno> {
    rustix::process::kill_process(to_pid(pid)?, rustix::process::Signal::TERM)
}

// ---------------------------------------------------------------------------
// For the manager: waiting on sockets, a stop signal, and a watched process.

/// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`: a descriptor that becomes
/// readable, for good, once [`notify`] has written to it.
pub(crate) fn event() -> Result<OwnedFd, Errno> {
    use rustix::event::EventfdFlags;
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
}

/// Makes an [`event`] descriptor readable (and leaves it so: nobody reads it).
pub(crate) fn notify(fd: impl AsFd) -> Result<(), Errno> {
    match rustix::io::write(fd, &1u64.to_ne_bytes()) {
        // The counter is full, which is readable already.
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `poll(2)` for readability: which of `fds` are readable (or closed or in
/// error) within `timeout` (forever without one). Restarts after `EINTR`.
pub(crate) fn wait_readable(
    fds: &[std::os::fd::BorrowedFd<'_>],
    timeout: Option<std::time::Duration>,
) -> Result<Vec<bool>, Errno> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let timeout = timeout.map(|t| Timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    loop {
        match rustix::event::poll(&mut polled, timeout.as_ref()) {
            Ok(_) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(polled.iter().map(|p| !p.revents().is_empty()).collect())
}

/// `pidfd_open(pid, 0)`: a descriptor that becomes readable when the process
/// exits.
pub(crate) fn pidfd_open(pid: u32) -> Result<OwnedFd, Errno> {
    rustix::process::pidfd_open(to_pid(pid)?, rustix::process::PidfdFlags::empty())
}

fn to_pid(pid: u32) -> Result<rustix::process::Pid, Errno> {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(Errno::SRCH)
}

/// The parent's pid, or `None` once the parent is gone and no reaper is
/// visible from this pid namespace.
pub(crate) fn parent_pid() -> Option<u32> {
    rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32)
}

/// Whether a process `pid` exists (it may be a zombie), by `kill(pid, 0)`.
pub(crate) fn process_exists(pid: u32) -> bool {
    match to_pid(pid) {
        Ok(pid) => !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH)),
        Err(_) => false,
    }
}

/// Makes `SIGINT` harmless to this process, as CPython's manager process
/// ignores it: a Ctrl-C meant for the parent must not kill the server.
/// (A handler that does nothing, which unlike `SIG_IGN` needs no `unsafe`.)
#[cfg(feature = "manager")]
pub(crate) fn ignore_sigint() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, flag).is_ok()
    });
    if installed {
        Ok(())
    } else {
        Err(std::io::Error::other("could not install a SIGINT handler"))
    }
}

// ---------------------------------------------------------------------------
// For `crate::usage` and the CLI: looking at segments, and at who uses them, without
// taking part: read-only opens, `pread` copies (nothing mapped), no lock kept.

/// A file's identity as `/proc/*/maps` and `/proc/locks` spell it: the
/// device's major and minor numbers, and the inode.
pub(crate) type FileKey = (u32, u32, u64);

/// What `statx` says about a file in `/dev/shm` or an open one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileStat {
    pub(crate) key: FileKey,
    pub(crate) regular: bool,
    pub(crate) size: u64,
    /// Permission bits only (`& 0o7777`).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Birth time (seconds, nanoseconds), if the filesystem keeps one.
    pub(crate) birth: Option<(i64, u32)>,
    /// Last status change.
    pub(crate) change: (i64, u32),
}

fn file_stat(s: &fs::Statx) -> FileStat {
    let birth = fs::StatxFlags::from_bits_retain(s.stx_mask)
        .contains(fs::StatxFlags::BTIME)
        .then_some((s.stx_btime.tv_sec, s.stx_btime.tv_nsec));
    FileStat {
        key: (s.stx_dev_major, s.stx_dev_minor, s.stx_ino),
        regular: u32::from(s.stx_mode) & 0o170000 == 0o100000,
        size: s.stx_size,
        mode: u32::from(s.stx_mode) & 0o7777,
        uid: s.stx_uid,
        gid: s.stx_gid,
        birth,
        change: (s.stx_ctime.tv_sec, s.stx_ctime.tv_nsec),
    }
}

const STATX_WANT: fs::StatxFlags = fs::StatxFlags::BASIC_STATS.union(fs::StatxFlags::BTIME);

/// `statx` of `/dev/shm/NAME`, not following a symbolic link.
pub(crate) fn shm_stat(name: &str) -> Result<FileStat, Errno> {
    let s = fs::statx(
        CWD,
        ShmPath::new(name).as_c_str(),
        fs::AtFlags::SYMLINK_NOFOLLOW,
        STATX_WANT,
    )?;
    Ok(file_stat(&s))
}

/// `statx` of an open file.
pub(crate) fn fd_stat(fd: impl AsFd) -> Result<FileStat, Errno> {
    let s = fs::statx(fd, c"", fs::AtFlags::EMPTY_PATH, STATX_WANT)?;
    Ok(file_stat(&s))
}

/// Opens `/dev/shm/NAME` read-only: no `flock`, no mapping. `O_NONBLOCK`
/// so that a FIFO someone put there cannot hang the caller.
pub(crate) fn shm_open_readonly(name: &str) -> Result<OwnedFd, Errno> {
    fs::openat(
        CWD,
        ShmPath::new(name).as_c_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
}

/// Reads up to `buf.len()` bytes at `offset`, retrying short reads; returns
/// how many were read (fewer only at the end of the file).
pub(crate) fn read_at(fd: impl AsFd, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(&fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `flock(LOCK_EX | LOCK_NB)`: succeeds only if no other open file holds a
/// `flock` on the same file. The lock goes with the descriptor.
pub(crate) fn try_lock_exclusive(fd: impl AsFd) -> Result<(), Errno> {
    fs::flock(fd, fs::FlockOperation::NonBlockingLockExclusive)
}

/// The names in `/dev/shm` (a queue's unlink looks for its buffers' names).
#[cfg(feature = "queue")]
pub(crate) fn shm_entries() -> std::io::Result<Vec<std::ffi::OsString>> {
    std::fs::read_dir(SHM_DIR)?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

/// The pids in `/proc`.
pub(crate) fn pids() -> std::io::Result<Vec<u32>> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// `/proc/PID/FILE` (`maps`, `stat`, `comm`), whole.
pub(crate) fn proc_read(pid: u32, file: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/{file}"))
}

/// The descriptors of process `pid` with the paths they point at.
pub(crate) fn proc_fds(pid: u32) -> std::io::Result<Vec<(u32, Vec<u8>)>> {
    use std::os::unix::ffi::OsStrExt;
    let dir = format!("/proc/{pid}/fd");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A descriptor closed since the listing is simply skipped.
        if let Ok(target) = std::fs::read_link(entry.path()) {
            out.push((fd, target.as_os_str().as_bytes().to_vec()));
        }
    }
    Ok(out)
}

/// The identity of the file behind descriptor `fd` of process `pid`.
pub(crate) fn proc_fd_key(pid: u32, fd: u32) -> Result<FileKey, Errno> {
    let st = fs::stat(format!("/proc/{pid}/fd/{fd}"))?;
    Ok((fs::major(st.st_dev), fs::minor(st.st_dev), st.st_ino))
}

/// `/proc/locks`: every file lock on the system (of this pid namespace),
/// readable by everyone.
pub(crate) fn proc_locks() -> std::io::Result<Vec<u8>> {
    std::fs::read("/proc/locks")
}

/// This process's pid.
pub(crate) fn own_pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Faults in, writable, the pages of `[addr, addr + len)` of a shared
/// mapping in one system call (`MADV_POPULATE_WRITE`, Linux 5.14), instead
/// of one page fault per page as a copy would take them. Best effort: an
/// older kernel refuses it and the copy faults as usual.
pub(crate) fn populate_write(addr: *mut u8, len: usize) {
    const PAGE: usize = 4096;
    let start = addr as usize & !(PAGE - 1);
    let end = (addr as usize).saturating_add(len).next_multiple_of(PAGE);
    // SAFETY: the range covers only pages of a mapping the caller holds (a
    // whole number of pages around a range inside it); populating changes
    // no contents, only what is resident.
    let _ = unsafe {
        rustix::mm::madvise(
            start as *mut std::ffi::c_void,
            end - start,
            rustix::mm::Advice::LinuxPopulateWrite,
        )
    };
}

/// An open-file-description `fcntl` lock of the one byte at `at`, of `kind`.
fn ofd_byte(kind: libc::c_int, at: i64) -> libc::flock {
    // SAFETY: `flock` is plain old data; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = at;
    lock.l_len = 1;
    lock
}

/// Takes a read lock on the byte at `at` of `fd`'s file for `fd`'s open
/// file description (`F_OFD_SETLK`, a family the kernel keeps apart from
/// `flock`), without blocking; a read-only descriptor may. Whether it was
/// taken. Only a raw `fcntl`: safe to call in a forked child.
pub(crate) fn ofd_read_lock_byte(fd: impl AsFd, at: i64) -> bool {
    use std::os::fd::AsRawFd;
    let lock = ofd_byte(libc::F_RDLCK, at);
    // SAFETY: F_OFD_SETLK reads the `flock` on our stack and nothing else.
    unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_OFD_SETLK, &lock) == 0 }
}

/// Whether another open file holds any `fcntl` lock on the byte at `at` of
/// `fd`'s file (`F_OFD_GETLK`). One system call.
pub(crate) fn ofd_byte_locked(fd: impl AsFd, at: i64) -> bool {
    use std::os::fd::AsRawFd;
    // Asking about a write lock reports any lock held on the range.
    let mut lock = ofd_byte(libc::F_WRLCK, at);
    // SAFETY: F_OFD_GETLK reads and writes the `flock` on our stack only.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
    r == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
}

/// `S_ISVTX`, which means nothing on a regular file.
pub(crate) const MODE_STICKY: u32 = libc::S_ISVTX;

/// Sets (`on`) or clears the mode `bits` of `fd`'s file, unless they are so
/// already or (clearing) the file is unlinked; returns whether they
/// changed. Only the owner may. Plain system calls: safe in a forked child.
pub(crate) fn set_mode_bits(fd: impl AsFd, bits: u32, on: bool) -> bool {
    let Ok(st) = fs::fstat(&fd) else {
        return false;
    };
    let mode = st.st_mode;
    if (mode & bits == bits) == on || (!on && st.st_nlink == 0) {
        return false;
    }
    let new = if on { mode | bits } else { mode & !bits };
    fs::fchmod(&fd, Mode::from_raw_mode(new & 0o7777)).is_ok()
}

/// A `MAP_SHARED` mapping of a whole file that other processes map too (the
/// leak tracker's table), read and written only through atomics at checked
/// offsets: another process may write any byte at any time, so no plain
/// reference into it is ever handed out. Unmapped when dropped.
pub(crate) struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the memory is only ever accessed through atomics (or by the
// pthread mutex functions, which are made for shared memory), so any
// thread may use it.
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes of `fd`: read-write, or read-only.
    pub(crate) fn new(fd: impl AsFd, len: usize, writable: bool) -> Result<Self, Errno> {
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping overlaps nothing Rust knows of; it is
        // unmapped only by `drop`, after every borrow of `self` ended.
        let ptr = unsafe { mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(SharedMapping { ptr, len })
    }

    /// The address of the `size` bytes at `at`, which must be inside the
    /// mapping and aligned to `align` (a bug otherwise: panics).
    fn at(&self, at: usize, size: usize, align: usize) -> *mut u8 {
        assert!(
            at.checked_add(size).is_some_and(|end| end <= self.len),
            "offset {at} out of a {}-byte mapping",
            self.len
        );
        let ptr = self.ptr.as_ptr().wrapping_add(at);
        assert!(ptr as usize % align == 0, "offset {at} misaligned");
        ptr
    }

    /// The 4-byte word at byte `at`.
    pub(crate) fn u32_at(&self, at: usize) -> &AtomicU32 {
        // SAFETY: inside the mapping and aligned (checked); the mapping
        // lives as long as `self`, and every access to it is atomic.
        unsafe { AtomicU32::from_ptr(self.at(at, 4, 4).cast()) }
    }

    /// The 4-byte word at byte `at`, signed.
    pub(crate) fn i32_at(&self, at: usize) -> &AtomicI32 {
        // SAFETY: as in `u32_at`.
        unsafe { AtomicI32::from_ptr(self.at(at, 4, 4).cast()) }
    }

    /// The 8-byte word at byte `at`.
    pub(crate) fn u64_at(&self, at: usize) -> &AtomicU64 {
        // SAFETY: as in `u32_at`.
        unsafe { AtomicU64::from_ptr(self.at(at, 8, 8).cast()) }
    }

    /// The `len` bytes at `at`, as atomics: the range is checked once, not
    /// per byte.
    fn bytes_at(&self, at: usize, len: usize) -> &[AtomicU8] {
        // SAFETY: inside the mapping (checked); `AtomicU8` has the size and
        // alignment of `u8`; the mapping lives as long as `self`, and every
        // access to it is atomic.
        unsafe { std::slice::from_raw_parts(self.at(at, len, 1).cast::<AtomicU8>(), len) }
    }

    /// Copies `out.len()` bytes from `at` with relaxed atomic loads.
    pub(crate) fn read_bytes(&self, at: usize, out: &mut [u8]) {
        let cells = self.bytes_at(at, out.len());
        for (b, cell) in out.iter_mut().zip(cells) {
            *b = cell.load(Ordering::Relaxed);
        }
    }

    /// Whether the `bytes.len()` bytes at `at` are `bytes`, loaded with
    /// relaxed atomics up to the first difference.
    pub(crate) fn bytes_eq(&self, at: usize, bytes: &[u8]) -> bool {
        self.bytes_at(at, bytes.len())
            .iter()
            .zip(bytes)
            .all(|(cell, &b)| cell.load(Ordering::Relaxed) == b)
    }

    /// Copies `bytes` to `at` with relaxed atomic stores (publish them with
    /// a release store after).
    pub(crate) fn write_bytes(&self, at: usize, bytes: &[u8]) {
        for (cell, &b) in self.bytes_at(at, bytes.len()).iter().zip(bytes) {
            cell.store(b, Ordering::Relaxed);
        }
    }

    /// Makes a process-shared, robust mutex in the 64 bytes at `at` and
    /// locks it, for good: when this thread dies the kernel marks its word
    /// `OWNER_DIED` and wakes its waiters. Whether every step succeeded.
    pub(crate) fn lock_robust_mutex(&self, at: usize) -> bool {
        const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= 64);
        let mutex = self
            .at(at, 64, std::mem::align_of::<libc::pthread_mutex_t>())
            .cast::<libc::pthread_mutex_t>();
        // SAFETY: `mutex` is 64 reserved, aligned bytes of the mapping
        // (checked), which outlives any use the kernel makes of it; the
        // attribute object lives on this stack and is destroyed after use.
        // The pthread functions only touch those two.
        unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            if libc::pthread_mutexattr_init(attr.as_mut_ptr()) != 0 {
                return false;
            }
            let ok =
                libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED)
                    == 0
                    && libc::pthread_mutexattr_setrobust(
                        attr.as_mut_ptr(),
                        libc::PTHREAD_MUTEX_ROBUST,
                    ) == 0
                    && libc::pthread_mutex_init(mutex, attr.as_ptr()) == 0
                    && libc::pthread_mutex_lock(mutex) == 0;
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
            ok
        }
    }

    /// Keeps the mapping for the rest of the process (and its fork
    /// children, which inherit it).
    pub(crate) fn leak(self) -> &'static SharedMapping {
        Box::leak(Box::new(self))
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: made by `new`; no borrow of `self` is left.
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) };
    }
}

// ---------------------------------------------------------------------------
// For the tracker's watcher, which runs in a fork child of a process that
// may have other threads: everything below is async-signal-safe (a plain
// system call or `_exit`), takes no lock and does not allocate.

/// Which side of [`fork`] returned.
pub(crate) enum Forked {
    /// The parent; the child's pid.
    Parent(rustix::process::Pid),
}

/// `fork()`, with `child` run in the child, which never returns from it.
///
/// Precondition (not checked): `child` uses only async-signal-safe calls
/// (raw system calls, no allocation, no lock), since another thread of this
/// process may have held any lock at the moment of the fork, and it ends
/// with [`exit_now`] (a child's `Infallible`: it cannot return).
pub(crate) fn fork(child: impl FnOnce() -> std::convert::Infallible) -> Result<Forked, Errno> {
    // SAFETY: the child runs only `child`, which by this function's
    // precondition is async-signal-safe, and never returns into the caller.
    match unsafe { libc::fork() } {
        -1 => Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN),
        )),
        // `child` returns an uninhabited type, so this arm never ends.
        #[allow(unreachable_code)]
        0 => match child() {},
        pid => rustix::process::Pid::from_raw(pid)
            .map(Forked::Parent)
            .ok_or(Errno::CHILD),
    }
}

/// `_exit(0)`: ends the process without running atexit handlers (after
/// [`fork`] they belong to the parent's program).
pub(crate) fn exit_now() -> ! {
    // SAFETY: `_exit` is async-signal-safe and touches no memory of ours.
    unsafe { libc::_exit(0) }
}

/// Blocks every signal that can be blocked, for this thread.
pub(crate) fn block_all_signals() {
    // SAFETY: sigfillset and sigprocmask are async-signal-safe and write
    // only the set on our stack.
    unsafe {
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(all.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, all.as_ptr(), std::ptr::null_mut());
    }
}

/// Asks for the lowest real-time priority (`SCHED_FIFO` 1, not inherited
/// by children) where allowed, else for nice -10, else leaves it; best
/// effort.
pub(crate) fn prefer_realtime() {
    // SAFETY: sched_setscheduler and setpriority are plain system calls
    // that read only the parameter on our stack.
    unsafe {
        let param = libc::sched_param { sched_priority: 1 };
        let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
        if libc::sched_setscheduler(0, policy, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, -10);
        }
    }
}

/// Takes `cpu` out of this process's CPU affinity, if it is in it and
/// another CPU is too; best effort.
pub(crate) fn avoid_cpu(cpu: usize) {
    if cpu >= libc::CPU_SETSIZE as usize {
        return;
    }
    // SAFETY: the cpu_set_t lives on this stack, and `cpu` is within it
    // (checked); the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0
            || !libc::CPU_ISSET(cpu, &set)
            || libc::CPU_COUNT(&set) < 2
        {
            return;
        }
        libc::CPU_CLR(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `fcntl(F_SETLEASE)` with a write lease (`true`) or none: whether it
/// succeeded. An open of the file by another process waits while we hold a
/// write lease.
pub(crate) fn set_lease(fd: impl AsFd, write: bool) -> bool {
    use std::os::fd::AsRawFd;
    let kind = if write { libc::F_WRLCK } else { libc::F_UNLCK };
    // SAFETY: a plain system call on a descriptor we hold; it reads and
    // writes no memory of ours.
    unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_SETLEASE, kind) == 0 }
}

/// Glibc's `M_ARENA_MAX` to 1: a program with a few threads and little
/// memory spares each thread the arena glibc would reserve (and trim) for
/// it. Best effort; call it before starting threads.
pub(crate) fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Takes over descriptor `fd`, inherited from the parent, if it is an open
/// socket.
///
/// Precondition (not checked): the process was started with `fd` handed to
/// it for the caller, and nothing else in it owns or uses that number; call
/// it once per descriptor.
pub(crate) fn take_inherited_socket(fd: i32) -> Option<std::os::unix::net::UnixStream> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    if fd < 0 {
        return None;
    }
    // SAFETY: only borrowed for the fstat; a number that is not open just
    // fails.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let st = fs::fstat(borrowed).ok()?;
    if fs::FileType::from_raw_mode(st.st_mode) != fs::FileType::Socket {
        return None;
    }
    // SAFETY: `fd` is open (fstat succeeded) and, by this function's
    // precondition, handed to the caller alone.
    Some(std::os::unix::net::UnixStream::from(unsafe {
        OwnedFd::from_raw_fd(fd)
    }))
}
