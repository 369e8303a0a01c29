//! Leak tracking that works across unrelated processes.
//!
//! CPython's resource tracker unlinks every segment a process registered when
//! that process exits, even when another process still uses it (gh-82300).
//! shmkit's tracker asks the kernel instead:
//!
//! * every shmkit handle holds `flock(LOCK_SH)` on the descriptor it already
//!   has (`sys::hold`). The lock lives as long as the open file
//!   does, mapping included, and the kernel drops it when the process dies,
//!   however it dies;
//! * a *tracked* handle also writes its name and inode into a table that
//!   this process shares (`MAP_SHARED` memory, no syscall) with a small
//!   watcher process, forked from this library the first time something is
//!   tracked. A tracked create writes an intent first, before the file
//!   exists, so that no SIGKILL between the two leaks it; the inode (or,
//!   for an intent, the file's birth time) keeps the watcher off a file
//!   someone else made under the same name;
//! * the watcher blocks reading a pipe whose write end only this process (and
//!   its fork children) hold. End of file means they are all gone. It then
//!   judges each segment still in the table: `flock(LOCK_EX | LOCK_NB)`
//!   fails if a shmkit handle lives; a write lease succeeds only if no
//!   other open file of it exists at all; where the lease cannot decide,
//!   `/proc` says who maps it, holds it open or locks it (the rule of
//!   `shmkit ls`), so a stdlib process's segment is seen too. Unused, it is
//!   unlinked, with CPython's warning on stderr; used, it is left alone;
//! * as the process starts to exit, before its files are released, the
//!   watcher marks its segments "cleanup pending" (`sys::set_cleanup_mark`),
//!   and an attach that finds the mark waits for the outcome instead of
//!   keeping the segment alive (`segment::found_size`). A parent that
//!   attaches the moment its child is reaped thus finds the segment gone.
//!
//! [`crate::Options::track`] turns it on in Rust; Python's `track=True` (the
//! default) uses it.

mod registered;
mod watcher;

pub use registered::{registered, Registration};

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rustix::io::Errno;
use rustix::process::Pid;

/// Slots in the shared table: one per tracked name alive in this process
/// tree. Pages are touched only where names land, so the 4 MiB reservation
/// costs little.
const SLOTS: usize = 1 << 14;
/// A slot: state (4 bytes), name length (4), inode (8), intent time (8),
/// name (up to 255 bytes + pad).
const SLOT_SIZE: usize = NAME_AT + 256;
/// Where in a slot the segment's inode number is kept (0: not known yet).
const INO_AT: usize = 8;
/// Where in a slot an intent's time is kept (see [`INTENT`]).
const SINCE_AT: usize = 16;
const NAME_AT: usize = 24;
/// The first page holds a bitmap of the pages where slots were ever
/// used, so the watcher's final scan touches only those (it races a parent
/// that checks for the segment the moment its child is gone).
const HEADER: usize = 4096;
const PAGE: usize = 4096;
const PAGES: usize = (SLOTS * SLOT_SIZE).div_ceil(PAGE);
const TABLE_SIZE: usize = HEADER + SLOTS * SLOT_SIZE;
/// Where in the header the owner's pid is kept, after the bitmap.
const OWNER_AT: usize = HEADER - 8;
/// Where the byte offset of the robust mutex's futex word is kept (an i32;
/// -1 when there is none): see [`Table::arm_death_wake`].
const ROBUST_WORD_AT: usize = HEADER - 16;
/// Set to 1 (and woken) by a watcher once it is watching: see
/// `watcher::launch`.
const READY_AT: usize = HEADER - 20;
/// 1 when the thread that holds the robust mutex is the process's main
/// thread, whose death is the process's; 0 for another thread, which may
/// die alone.
const MAIN_LOCKER_AT: usize = HEADER - 24;
/// The robust mutex itself (64 bytes reserved; a `pthread_mutex_t` is 40
/// or 48).
const ROBUST_AT: usize = HEADER / 2;
const _: () = assert!(PAGES.div_ceil(64) * 8 <= ROBUST_AT);
const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= 64);
const _: () = assert!(ROBUST_AT + 64 <= MAIN_LOCKER_AT && MAIN_LOCKER_AT + 4 <= READY_AT);
const _: () = assert!(READY_AT + 4 <= ROBUST_WORD_AT);
const _: () = assert!(SLOT_SIZE % 8 == 0 && HEADER % 8 == 0);
/// The memfd name of a table, as `/proc/PID/fd` shows it (`/memfd:NAME`).
pub const TABLE_MEMFD: &std::ffi::CStr = c"shmkit-tracker-table";

/// Maps a table's memfd: read-write for our own, read-only for another
/// process's (`registered`).
fn map_table(fd: &OwnedFd, writable: bool) -> Result<NonNull<u8>, Errno> {
    use rustix::mm::{mmap, MapFlags, ProtFlags};
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // SAFETY: a fresh mapping of a file we hold overlaps nothing Rust knows
    // of; it is never unmapped while a `Table` of ours points into it.
    let ptr = unsafe {
        mmap(
            std::ptr::null_mut(),
            TABLE_SIZE,
            prot,
            MapFlags::SHARED,
            fd,
            0,
        )?
    };
    NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)
}

/// Never used: a lookup may stop here.
const EMPTY: u32 = 0;
/// Claimed, name being written.
const WRITING: u32 = 1;
/// Holds a registered name.
const VALID: u32 = 2;
/// Was used; free for a new name, but lookups go on past it.
const DELETED: u32 = 3;
/// A create under this name is under way: written before `shm_open`, so
/// that a SIGKILL between the file's birth and its registration (a large
/// reservation takes a while) cannot leak it. Not a set member: each
/// create has its own slot, dropped once the name is registered (`VALID`,
/// with its inode) or the create failed. The watcher takes the file for
/// ours only if it was born no earlier than the intent's time
/// (`watcher::born_since`).
const INTENT: u32 = 4;

/// The table shared by this process, its fork children and the watcher.
#[derive(Clone, Copy)]
struct Table(NonNull<u8>);

// SAFETY: the table is plain shared memory whose slots are claimed with
// atomic compare-and-swap; nothing in it is tied to a thread.
unsafe impl Send for Table {}
unsafe impl Sync for Table {}

impl Table {
    /// A table in a memfd named [`TABLE_MEMFD`], so that `shmkit ls` can
    /// find it through `/proc/PID/fd` of the process and its watcher, which
    /// both keep the descriptor.
    fn new() -> Result<(Table, OwnedFd), Errno> {
        use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
        let fd = memfd_create(TABLE_MEMFD, MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, TABLE_SIZE as u64)?;
        let ptr = map_table(&fd, true)?;
        let table = Table(ptr);
        table.owner().store(
            rustix::process::getpid().as_raw_nonzero().get(),
            Ordering::Relaxed,
        );
        table.arm_death_wake();
        Ok((table, fd))
    }

    /// Locks a robust, process-shared mutex in the table, and never unlocks
    /// it. When this thread dies, the kernel marks the mutex's word
    /// `OWNER_DIED` and wakes its waiter (the watcher) at the start of the
    /// exit, before the address space is torn down: hundreds of
    /// microseconds before the pipe's end of file, and well before the
    /// parent's `wait()` returns. That head start lets the watcher unlink a
    /// leaked segment before a parent that checks at once can attach to it.
    ///
    /// The word is found by value (a robust mutex's word holds its owner's
    /// thread id, in glibc and musl alike) and its offset published for the
    /// watcher; -1 (no early wake: the watcher waits for end of file) if
    /// any step fails. The wake is per thread: if the thread that first
    /// tracked a segment is not the main thread and exits before the
    /// process, the watcher wakes early once for nothing, sees the process
    /// is not exiting ([`Table::main_locker`]) and falls back to end of file.
    fn arm_death_wake(&self) {
        self.robust_word_at().store(-1, Ordering::Relaxed);
        // SAFETY: the mutex lives in our fresh table mapping, which is never
        // unmapped, at an offset reserved for it (64 bytes, checked above);
        // the attribute object lives on this stack and is destroyed after
        // use. The pthread functions only touch those two.
        let locked = unsafe {
            let mutex = self
                .0
                .as_ptr()
                .add(ROBUST_AT)
                .cast::<libc::pthread_mutex_t>();
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            if libc::pthread_mutexattr_init(attr.as_mut_ptr()) != 0 {
                return;
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
        };
        if !locked {
            return;
        }
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        let main = tid as i32 == rustix::process::getpid().as_raw_nonzero().get();
        self.word(MAIN_LOCKER_AT)
            .store(main.into(), Ordering::Relaxed);
        let words = std::mem::size_of::<libc::pthread_mutex_t>() / 4;
        if let Some(k) = (0..words).find(|&k| {
            self.word(ROBUST_AT + 4 * k).load(Ordering::Relaxed) & libc::FUTEX_TID_MASK == tid
        }) {
            self.robust_word_at()
                .store((ROBUST_AT + 4 * k) as i32, Ordering::Release);
        }
    }

    /// The 4-byte word at byte `at` of the header.
    fn word(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at % 4 == 0 && at + 4 <= HEADER);
        // SAFETY: inside the header page of the mapping, 4-byte aligned.
        unsafe { &*(self.0.as_ptr().add(at).cast::<AtomicU32>()) }
    }

    fn robust_word_at(&self) -> &AtomicI32 {
        // SAFETY: ROBUST_WORD_AT is inside the header page, 4-byte aligned.
        unsafe { &*(self.0.as_ptr().add(ROBUST_WORD_AT).cast::<AtomicI32>()) }
    }

    /// The futex word that turns `OWNER_DIED` when the tracking thread dies,
    /// if [`arm_death_wake`](Self::arm_death_wake) succeeded.
    fn death_word(&self) -> Option<&AtomicU32> {
        let at = usize::try_from(self.robust_word_at().load(Ordering::Acquire)).ok()?;
        (at >= ROBUST_AT && at + 4 <= ROBUST_AT + 64 && at % 4 == 0).then(|| self.word(at))
    }

    /// Whether the robust mutex's holder is the main thread, so that its
    /// death wake means the process is exiting.
    fn main_locker(&self) -> bool {
        self.word(MAIN_LOCKER_AT).load(Ordering::Acquire) == 1
    }

    /// The watcher-ready word (`READY_AT`).
    fn ready(&self) -> &AtomicU32 {
        self.word(READY_AT)
    }

    /// The pid of the process that made the table (its fork children share
    /// it).
    fn owner(&self) -> &AtomicI32 {
        // SAFETY: OWNER_AT is inside the header page, 4-byte aligned.
        unsafe { &*(self.0.as_ptr().add(OWNER_AT).cast::<AtomicI32>()) }
    }

    fn slot(&self, i: usize) -> *mut u8 {
        // SAFETY: i < SLOTS, so the slot is inside the mapping.
        unsafe { self.0.as_ptr().add(HEADER + i * SLOT_SIZE) }
    }

    fn state(&self, i: usize) -> &AtomicU32 {
        // SAFETY: the slot is inside the mapping, which lives for the rest
        // of the process; slots are 4-byte aligned.
        unsafe { &*(self.slot(i).cast::<AtomicU32>()) }
    }

    /// Word `w` of the used-pages bitmap.
    fn used_word(&self, w: usize) -> &AtomicU64 {
        // SAFETY: PAGES / 64 words fit the header page; 8-byte aligned.
        unsafe { &*(self.0.as_ptr().cast::<AtomicU64>().add(w)) }
    }

    fn mark_used(&self, i: usize) {
        let page = i * SLOT_SIZE / PAGE;
        self.used_word(page / 64)
            .fetch_or(1 << (page % 64), Ordering::Release);
    }

    /// Every slot that may ever have been used, in order.
    fn used_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..PAGES)
            .filter(move |&p| self.used_word(p / 64).load(Ordering::Acquire) & (1 << (p % 64)) != 0)
            .flat_map(|p| {
                let first = (p * PAGE).div_ceil(SLOT_SIZE);
                let end = ((p + 1) * PAGE).div_ceil(SLOT_SIZE).min(SLOTS);
                first..end
            })
    }

    /// The name in slot `i` (only meaningful while its state is `VALID`).
    fn name(&self, i: usize) -> &[u8] {
        // SAFETY: as in `state`; the length word is written before the state
        // is published as VALID and never exceeds 255.
        unsafe {
            let base = self.slot(i);
            let len = (*(base.add(4).cast::<AtomicU32>())).load(Ordering::Relaxed) as usize;
            std::slice::from_raw_parts(base.add(NAME_AT), len.min(255))
        }
    }

    fn write_name(&self, i: usize, name: &[u8]) {
        // SAFETY: the caller claimed slot i (state WRITING), so nobody else
        // writes it; name.len() <= 255 fits.
        unsafe {
            let base = self.slot(i);
            (*(base.add(4).cast::<AtomicU32>())).store(name.len() as u32, Ordering::Relaxed);
            std::ptr::copy_nonoverlapping(name.as_ptr(), base.add(NAME_AT), name.len());
        }
    }

    /// The 8-byte word at byte `at` of slot `i` (`INO_AT`, `SINCE_AT`).
    fn slot_word(&self, i: usize, at: usize) -> &AtomicU64 {
        debug_assert!(at == INO_AT || at == SINCE_AT);
        // SAFETY: inside slot i, which is inside the mapping; slots and
        // these offsets are 8-byte aligned (HEADER and SLOT_SIZE are
        // multiples of 8).
        unsafe { &*(self.slot(i).add(at).cast::<AtomicU64>()) }
    }

    /// The inode of the segment registered in slot `i` (0: unknown).
    fn ino(&self, i: usize) -> u64 {
        self.slot_word(i, INO_AT).load(Ordering::Acquire)
    }

    /// When the intent in slot `i` was written (ns of the coarse real-time
    /// clock).
    fn since(&self, i: usize) -> u64 {
        self.slot_word(i, SINCE_AT).load(Ordering::Acquire)
    }

    fn start(name: &[u8]) -> usize {
        // FNV-1a.
        let mut h: u32 = 0x811c_9dc5;
        for &b in name {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h as usize & (SLOTS - 1)
    }

    /// Adds `name` unless it is there already (a set, as CPython's tracker
    /// keeps: attaching a hundred times registers once), with the inode of
    /// the file it names now: a name registered earlier for a file since
    /// unlinked now stands for this one.
    fn insert(&self, name: &[u8], ino: u64) -> bool {
        self.claim(name, VALID, ino, 0).is_some()
    }

    /// Writes an intent for `name` (see [`INTENT`]) in a slot of its own;
    /// returns the slot.
    fn insert_intent(&self, name: &[u8], since: u64) -> Option<usize> {
        self.claim(name, INTENT, 0, since)
    }

    /// Drops the intent in slot `i`.
    fn drop_intent(&self, i: usize) {
        if self
            .state(i)
            .compare_exchange(INTENT, DELETED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.trim(i);
        }
    }

    fn claim(&self, name: &[u8], new: u32, ino: u64, since: u64) -> Option<usize> {
        let start = Self::start(name);
        for _ in 0..8 {
            let mut free = None;
            for k in 0..SLOTS {
                let i = (start + k) & (SLOTS - 1);
                match self.state(i).load(Ordering::Acquire) {
                    VALID if new == VALID && self.name(i) == name => {
                        if self.ino(i) != ino {
                            self.slot_word(i, INO_AT).store(ino, Ordering::Release);
                        }
                        return Some(i);
                    }
                    EMPTY => {
                        free.get_or_insert(i);
                        break;
                    }
                    DELETED => {
                        free.get_or_insert(i);
                    }
                    _ => {}
                }
            }
            // None: full.
            let i = free?;
            let state = self.state(i);
            let seen = state.load(Ordering::Relaxed);
            if (seen == EMPTY || seen == DELETED)
                && state
                    .compare_exchange(seen, WRITING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                self.mark_used(i);
                self.write_name(i, name);
                self.slot_word(i, INO_AT).store(ino, Ordering::Relaxed);
                self.slot_word(i, SINCE_AT).store(since, Ordering::Relaxed);
                state.store(new, Ordering::Release);
                return Some(i);
            }
            // Another thread took that slot: look again.
        }
        None
    }

    /// Keeps probe chains short: a tombstone at the end of a chain (the next
    /// slot never used) becomes never-used again, and so do the tombstones
    /// before it. Racing an insert into the next slot can only make that
    /// entry unreachable for `remove`, which is harmless: the watcher finds
    /// its segment gone (unlinked) and skips it.
    fn trim(&self, mut i: usize) {
        if self.state((i + 1) & (SLOTS - 1)).load(Ordering::Acquire) != EMPTY {
            return;
        }
        for _ in 0..SLOTS {
            if self
                .state(i)
                .compare_exchange(DELETED, EMPTY, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return;
            }
            i = (i + SLOTS - 1) & (SLOTS - 1);
        }
    }

    /// Removes every slot holding `name` (a set, as CPython's tracker keeps).
    fn remove(&self, name: &[u8]) {
        let start = Self::start(name);
        for k in 0..SLOTS {
            let i = (start + k) & (SLOTS - 1);
            let state = self.state(i);
            match state.load(Ordering::Acquire) {
                EMPTY => return,
                VALID
                    if self.name(i) == name
                        && state
                            .compare_exchange(VALID, DELETED, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok() =>
                {
                    self.trim(i);
                }
                _ => {}
            }
        }
    }
}

/// This process's side of the tracker.
struct Tracker {
    table: Table,
    /// The table's memfd, kept for relaunched watchers and for `shmkit ls`.
    table_fd: OwnedFd,
    /// The watcher's pid.
    watcher: AtomicI32,
    /// The write end of the watcher's pipe; also serializes relaunches.
    pipe: Mutex<Option<OwnedFd>>,
    /// When the watcher was last checked on (ms since `epoch`; 0: never).
    last_check: AtomicU64,
    epoch: std::time::Instant,
}

static TRACKER: OnceLock<Option<Tracker>> = OnceLock::new();

fn tracker() -> Option<&'static Tracker> {
    TRACKER
        .get_or_init(|| {
            let (table, table_fd) = Table::new().ok()?;
            let (pid, pipe) = watcher::launch(table, table_fd.as_raw_fd()).ok()?;
            Some(Tracker {
                table,
                table_fd,
                watcher: AtomicI32::new(pid.as_raw_nonzero().get()),
                pipe: Mutex::new(Some(pipe)),
                last_check: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
            })
        })
        .as_ref()
}

impl Tracker {
    /// Whether it is time to check on the watcher again: at most every
    /// 100 ms, so the check (a system call) stays off the hot path.
    fn check_due(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_check.load(Ordering::Relaxed);
        if now.wrapping_sub(last) < 100 && last != 0 {
            return false;
        }
        self.last_check.store(now.max(1), Ordering::Relaxed);
        true
    }

    /// Whether the watcher still runs. One syscall for the process that
    /// forked it (`waitid` without reaping), two for its fork children.
    fn watcher_alive(&self) -> bool {
        use rustix::process::{test_kill_process, waitid, WaitId, WaitIdOptions};
        let Some(pid) = Pid::from_raw(self.watcher.load(Ordering::Relaxed)) else {
            return false;
        };
        let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        match waitid(WaitId::Pid(pid), opts) {
            Ok(Some(_)) => false,
            Ok(None) => true,
            // Not our child (we are a fork child of its parent), or reaped
            // by someone else: ask whether the pid still exists.
            Err(_) => !matches!(test_kill_process(pid), Err(Errno::SRCH)),
        }
    }

    /// Starts a new watcher for the same table, so names registered so far
    /// stay tracked, with the warning CPython gives in this case.
    fn relaunch(&self) {
        let Ok(mut pipe) = self.pipe.lock() else {
            return;
        };
        if self.watcher_alive() {
            return; // another thread relaunched it
        }
        if let Some(old) = Pid::from_raw(self.watcher.load(Ordering::Relaxed)) {
            // Reap it if it is our zombie; harmless otherwise.
            let _ = rustix::process::waitpid(Some(old), rustix::process::WaitOptions::NOHANG);
        }
        eprintln!(
            "UserWarning: resource_tracker: process died unexpectedly, relaunching.  \
             Some resources might leak."
        );
        match watcher::launch(self.table, self.table_fd.as_raw_fd()) {
            Ok((pid, fd)) => {
                self.watcher
                    .store(pid.as_raw_nonzero().get(), Ordering::Relaxed);
                *pipe = Some(fd);
            }
            Err(_) => self.watcher.store(0, Ordering::Relaxed),
        }
    }
}

/// Registers the validated (bare) `name`, whose file has inode `ino`,
/// with this process's watcher, starting it if needed. Returns whether the
/// name is now tracked.
pub(crate) fn register(bare: &str, ino: u64) -> bool {
    let Some(t) = tracker() else {
        return false;
    };
    if t.check_due() && !t.watcher_alive() {
        t.relaunch();
    }
    t.table.insert(bare.as_bytes(), ino)
}

/// A create of a tracked segment under way (see [`INTENT`]); dropping it
/// drops the record, so it must live until the name is registered or the
/// create has failed (and what it made is unlinked).
pub(crate) struct Intent {
    slot: usize,
}

impl Drop for Intent {
    fn drop(&mut self) {
        if let Some(Some(t)) = TRACKER.get() {
            t.table.drop_intent(self.slot);
        }
    }
}

/// Records, before `shm_open(O_CREAT)`, that this process is about to
/// create `bare`; None if the tracker is unavailable or full (the create
/// then goes on untracked until it registers).
pub(crate) fn intend(bare: &str) -> Option<Intent> {
    let t = tracker()?;
    if t.check_due() && !t.watcher_alive() {
        t.relaunch();
    }
    // The coarse clock is the one tmpfs stamps a new file's birth with, so
    // a file this create makes is never stamped earlier than this.
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    let since = u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64);
    let slot = t.table.insert_intent(bare.as_bytes(), since)?;
    Some(Intent { slot })
}

/// Stops tracking the segment `name` in this process (and its fork
/// children), as a successful `unlink()` of a tracked handle does. Names
/// never registered are ignored, silently.
pub fn unregister(name: &str) {
    let Ok(bare) = crate::name::validate(name) else {
        return;
    };
    if let Some(Some(t)) = TRACKER.get() {
        t.table.remove(bare.as_bytes());
    }
}

/// The pid of this process's watcher, if one has been started.
pub fn watcher_pid() -> Option<u32> {
    match TRACKER.get() {
        Some(Some(t)) => u32::try_from(t.watcher.load(Ordering::Relaxed))
            .ok()
            .filter(|&p| p != 0),
        _ => None,
    }
}
