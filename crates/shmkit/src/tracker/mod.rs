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
//!   tracked. A tracked create or attach writes an intent first, before
//!   it opens the file, so that no SIGKILL between the two leaks it; the
//!   inode (or, for a create's intent, the file's birth time) keeps the
//!   watcher off a file someone else made under the same name;
//! * the watcher blocks reading a pipe whose write end only this process (and
//!   its fork children) hold. End of file means they are all gone. It then
//!   judges each segment still in the table: `flock(LOCK_EX | LOCK_NB)`
//!   fails if a shmkit handle lives; a write lease succeeds only if no
//!   other open file of it exists at all; where the lease cannot decide,
//!   `/proc` says who maps it, holds it open or locks it (the rule of
//!   `shmkit ls`), so a stdlib process's segment is seen too. Unused, it is
//!   unlinked, with CPython's warning on stderr; used, it is left alone;
//! * as the process starts to exit, before its files are released, the
//!   watcher marks its segments "cleanup pending" (`mark::set_cleanup_mark`),
//!   and an attach that finds the mark waits for the outcome instead of
//!   keeping the segment alive (`shared_memory::found_size`). A parent that
//!   attaches the moment its child is reaped thus finds the segment gone.
//!
//! [`crate::Options::track`] turns it on in Rust; Python's `track=True` (the
//! default) uses it.

pub(crate) mod mark;
mod registered;
mod watcher;

pub(crate) use mark::{cleanup_pending, wait_cleanup_done};
pub use registered::{registered, Registration};

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rustix::io::Errno;

use crate::sys::{self, tracking, SharedMapping};

/// Slots in the shared table: one per tracked name alive in this process
/// tree. Pages are touched only where names land, so the 4 MiB reservation
/// costs little.
const SLOTS: usize = 1 << 14;
/// A slot: state (4 bytes), name length and flags (4: see [`QUIET`]),
/// inode (8), intent time (8), name (up to 255 bytes + pad).
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
fn map_table(fd: &OwnedFd, writable: bool) -> Result<SharedMapping, Errno> {
    SharedMapping::new(fd, TABLE_SIZE, writable)
}

/// Never used: a lookup may stop here.
const EMPTY: u32 = 0;
/// Claimed, name being written.
const WRITING: u32 = 1;
/// Holds a registered name.
const VALID: u32 = 2;
/// Was used; free for a new name, but lookups go on past it.
const DELETED: u32 = 3;
/// A create or attach under this name is under way: written before
/// `shm_open`, so that a SIGKILL between the open and the registration (a
/// large reservation takes a while, and a process's first registration
/// starts its watcher) cannot leak the segment. Not a set member: each
/// create or attach has its own slot, dropped once the name is registered
/// (`VALID`, with its inode) or the call failed. For a create, the watcher
/// takes the file for ours only if it was born no earlier than the
/// intent's time (`watcher::born_since`); an attach's time is
/// [`ANY_BIRTH`].
const INTENT: u32 = 4;
/// An attach intent's time: whatever file is under the name is the one the
/// attach was to register, so it is judged as a registration would be.
const ANY_BIRTH: u64 = 0;
/// In a slot's name-length word: the watcher cleans the segment up without
/// CPython's leak warning. For segments whose clean-up at exit is how they
/// are meant to end (arrays that travel by name), not a leak to warn about.
const QUIET: u32 = 1 << 31;
/// The name's length in a slot's name-length word.
const LEN_MASK: u32 = 0xffff;

/// The table shared by this process, its fork children and the watcher.
/// Slots are claimed with atomic compare-and-swap; every access goes
/// through the mapping's checked atomics.
#[derive(Clone, Copy)]
struct Table<'m>(&'m SharedMapping);

/// A slot's name, copied out of the table (which another process may be
/// writing): no allocation, for the watcher after `fork`.
#[derive(Clone, Copy)]
struct Name {
    len: u8,
    bytes: [u8; 255],
}

impl std::ops::Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Table<'static> {
    /// A table in a memfd named [`TABLE_MEMFD`], so that `shmkit ls` can
    /// find it through `/proc/PID/fd` of the process and its watcher, which
    /// both keep the descriptor.
    fn new() -> Result<(Table<'static>, OwnedFd), Errno> {
        let fd = tracking::memfd(TABLE_MEMFD, TABLE_SIZE as u64)?;
        let table = Table(map_table(&fd, true)?.leak());
        // A pid is positive and at most `pid_max` (2^22), so it fits.
        table
            .owner()
            .store(sys::own_pid() as i32, Ordering::Relaxed);
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
        let locked = self.0.lock_robust_mutex(ROBUST_AT);
        if !locked {
            return;
        }
        let tid = tracking::own_tid();
        let main = tid == sys::own_pid();
        self.word(MAIN_LOCKER_AT)
            .store(main.into(), Ordering::Relaxed);
        let words = std::mem::size_of::<libc::pthread_mutex_t>() / 4;
        if let Some(k) = (0..words).find(|&k| {
            self.word(ROBUST_AT + 4 * k).load(Ordering::Relaxed) & sys::after_fork::FUTEX_TID_MASK
                == tid
        }) {
            self.robust_word_at()
                .store((ROBUST_AT + 4 * k) as i32, Ordering::Release);
        }
    }
}

impl<'m> Table<'m> {
    /// The 4-byte word at byte `at` of the header.
    fn word(&self, at: usize) -> &'m AtomicU32 {
        debug_assert!(at + 4 <= HEADER);
        self.0.u32_at(at)
    }

    fn robust_word_at(&self) -> &'m AtomicI32 {
        self.0.i32_at(ROBUST_WORD_AT)
    }

    /// The futex word that turns `OWNER_DIED` when the tracking thread dies,
    /// if [`arm_death_wake`](Self::arm_death_wake) succeeded.
    fn death_word(&self) -> Option<&'m AtomicU32> {
        let at = usize::try_from(self.robust_word_at().load(Ordering::Acquire)).ok()?;
        (at >= ROBUST_AT && at + 4 <= ROBUST_AT + 64 && at % 4 == 0).then(|| self.word(at))
    }

    /// Whether the robust mutex's holder is the main thread, so that its
    /// death wake means the process is exiting.
    fn main_locker(&self) -> bool {
        self.word(MAIN_LOCKER_AT).load(Ordering::Acquire) == 1
    }

    /// The watcher-ready word (`READY_AT`).
    fn ready(&self) -> &'m AtomicU32 {
        self.word(READY_AT)
    }

    /// The pid of the process that made the table (its fork children share
    /// it).
    fn owner(&self) -> &'m AtomicI32 {
        self.0.i32_at(OWNER_AT)
    }

    /// The byte offset of slot `i` in the table.
    fn slot(i: usize) -> usize {
        debug_assert!(i < SLOTS);
        HEADER + i * SLOT_SIZE
    }

    fn state(&self, i: usize) -> &'m AtomicU32 {
        self.0.u32_at(Self::slot(i))
    }

    /// Word `w` of the used-pages bitmap.
    fn used_word(&self, w: usize) -> &'m AtomicU64 {
        debug_assert!(w < PAGES.div_ceil(64));
        self.0.u64_at(8 * w)
    }

    /// The length word of slot `i`'s name, with its flags ([`QUIET`]).
    fn name_word(&self, i: usize) -> &'m AtomicU32 {
        self.0.u32_at(Self::slot(i) + 4)
    }

    /// The length of slot `i`'s name, as written (unchecked).
    fn name_len(&self, i: usize) -> usize {
        (self.name_word(i).load(Ordering::Relaxed) & LEN_MASK) as usize
    }

    fn mark_used(&self, i: usize) {
        let page = i * SLOT_SIZE / PAGE;
        self.used_word(page / 64)
            .fetch_or(1 << (page % 64), Ordering::Release);
    }

    /// Every slot that may ever have been used, in order.
    fn used_slots(&self) -> impl Iterator<Item = usize> + 'm {
        let table = *self;
        (0..PAGES)
            .filter(move |&p| {
                table.used_word(p / 64).load(Ordering::Acquire) & (1 << (p % 64)) != 0
            })
            .flat_map(|p| {
                let first = (p * PAGE).div_ceil(SLOT_SIZE);
                let end = ((p + 1) * PAGE).div_ceil(SLOT_SIZE).min(SLOTS);
                first..end
            })
    }

    /// The name in slot `i` (only meaningful while its state is `VALID`).
    fn name(&self, i: usize) -> Name {
        let len = self.name_len(i).min(255);
        let mut name = Name {
            len: len as u8,
            bytes: [0; 255],
        };
        self.0
            .read_bytes(Self::slot(i) + NAME_AT, &mut name.bytes[..len]);
        name
    }

    /// Whether slot `i` holds `name`, without copying it: lookups compare
    /// many slots, most of which differ in length or first bytes.
    fn name_is(&self, i: usize, name: &[u8]) -> bool {
        self.name_len(i) == name.len()
            && name.len() <= 255
            && self.0.bytes_eq(Self::slot(i) + NAME_AT, name)
    }

    /// Writes `name` (at most 255 bytes) into slot `i`, which the caller
    /// claimed (state `WRITING`), so nobody else writes it.
    fn write_name(&self, i: usize, name: &[u8], quiet: bool) {
        let name = &name[..name.len().min(255)];
        let flags = if quiet { QUIET } else { 0 };
        self.name_word(i)
            .store(name.len() as u32 | flags, Ordering::Relaxed);
        self.0.write_bytes(Self::slot(i) + NAME_AT, name);
    }

    /// The 8-byte word at byte `at` of slot `i` (`INO_AT`, `SINCE_AT`).
    fn slot_word(&self, i: usize, at: usize) -> &'m AtomicU64 {
        debug_assert!(at == INO_AT || at == SINCE_AT);
        self.0.u64_at(Self::slot(i) + at)
    }

    /// Whether slot `i` is the first `VALID` slot holding its name: the one
    /// a name registered twice is judged by.
    fn first_of_name(&self, i: usize) -> bool {
        let name = self.name(i);
        self.used_slots()
            .take_while(|&j| j < i)
            .all(|j| self.state(j).load(Ordering::Acquire) != VALID || !self.name_is(j, &name))
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
    /// unlinked now stands for this one. A quiet insert makes the name
    /// quiet; a loud one leaves it as it was.
    fn insert(&self, name: &[u8], ino: u64, quiet: bool) -> bool {
        self.claim(name, VALID, ino, 0, quiet).is_some()
    }

    /// Writes an intent for `name` (see [`INTENT`]) in a slot of its own;
    /// returns the slot.
    fn insert_intent(&self, name: &[u8], since: u64, quiet: bool) -> Option<usize> {
        self.claim(name, INTENT, 0, since, quiet)
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

    fn claim(&self, name: &[u8], new: u32, ino: u64, since: u64, quiet: bool) -> Option<usize> {
        let start = Self::start(name);
        for _ in 0..8 {
            let mut free = None;
            for k in 0..SLOTS {
                let i = (start + k) & (SLOTS - 1);
                match self.state(i).load(Ordering::Acquire) {
                    VALID if new == VALID && self.name_is(i, name) => {
                        if self.ino(i) != ino {
                            self.slot_word(i, INO_AT).store(ino, Ordering::Release);
                        }
                        if quiet {
                            self.name_word(i).fetch_or(QUIET, Ordering::Release);
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
                self.write_name(i, name, quiet);
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

    /// Whether slot `i` (a registration or an intent) is quiet.
    fn is_quiet(&self, i: usize) -> bool {
        self.name_word(i).load(Ordering::Acquire) & QUIET != 0
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
                    if self.name_is(i, name)
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
    table: Table<'static>,
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
                watcher: AtomicI32::new(pid),
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
        tracking::child_running(self.watcher.load(Ordering::Relaxed))
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
        // Reap it if it is our zombie; harmless otherwise.
        tracking::reap_if_exited(self.watcher.load(Ordering::Relaxed));
        eprintln!(
            "UserWarning: resource_tracker: process died unexpectedly, relaunching.  \
             Some resources might leak."
        );
        match watcher::launch(self.table, self.table_fd.as_raw_fd()) {
            Ok((pid, fd)) => {
                self.watcher.store(pid, Ordering::Relaxed);
                *pipe = Some(fd);
            }
            Err(_) => self.watcher.store(0, Ordering::Relaxed),
        }
    }
}

/// Registers the validated (bare) `name`, whose file has inode `ino`,
/// with this process's watcher, starting it if needed; `quiet` (see
/// [`QUIET`]) if its clean-up at exit is no leak. Returns whether the name
/// is now tracked.
pub(crate) fn register(bare: &str, ino: u64, quiet: bool) -> bool {
    let Some(t) = tracker() else {
        return false;
    };
    if t.check_due() && !t.watcher_alive() {
        t.relaunch();
    }
    t.table.insert(bare.as_bytes(), ino, quiet)
}

/// A create or attach of a tracked segment under way (see [`INTENT`]);
/// dropping it drops the record, so it must live until the name is
/// registered or the call has failed (and what a create made is
/// unlinked).
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

/// Records, before `shm_open(O_CREAT | O_EXCL)`, that this process is
/// about to create `bare`; None if the tracker is unavailable or full (the
/// create then goes on untracked until it registers).
pub(crate) fn intend_create(bare: &str, quiet: bool) -> Option<Intent> {
    // The coarse clock is the one tmpfs stamps a new file's birth with, so
    // a file this create makes is never stamped earlier than this.
    intend(bare, tracking::coarse_now_ns(), quiet)
}

/// Records, before `shm_open`, that this process is about to attach `bare`
/// (or create it if missing) with tracking. Also starts the watcher before
/// the segment is open here, so that the fork does not copy its descriptor.
pub(crate) fn intend_attach(bare: &str, quiet: bool) -> Option<Intent> {
    intend(bare, ANY_BIRTH, quiet)
}

fn intend(bare: &str, since: u64, quiet: bool) -> Option<Intent> {
    let t = tracker()?;
    if t.check_due() && !t.watcher_alive() {
        t.relaunch();
    }
    let slot = t.table.insert_intent(bare.as_bytes(), since, quiet)?;
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
