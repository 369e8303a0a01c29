//! Linux: POSIX shared memory is a file in the tmpfs at `/dev/shm`, so the
//! `shm_*` calls are the file calls glibc would make, and rename, which POSIX
//! lacks, is `renameat2` inside that directory.

use std::ffi::{c_void, CStr};
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

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
