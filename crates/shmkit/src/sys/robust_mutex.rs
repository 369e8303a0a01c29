//! glibc's process-shared, robust `pthread_mutex_t` in shared memory.
//!
//! Robustness is the kernel's: glibc links each robust mutex a thread holds
//! into that thread's robust list, and when the thread dies the kernel sets
//! `FUTEX_OWNER_DIED` in the mutex's word and wakes one waiter, whose lock
//! call then returns `EOWNERDEAD`. This module makes the mutex consistent
//! again at once and reports the death to the caller, who decides what the
//! protected data needs.
//!
//! Hazard: while a thread holds the mutex, the thread's robust list points
//! into the mapping. Unmapping it then leaves the list pointing at nothing,
//! and glibc or the kernel would later walk unmapped (or reused) memory. A
//! mapping whose mutex this process holds must therefore stay mapped; the
//! owners in `crate::sync` leak it rather than unmap it.

use std::marker::PhantomData;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;

use crate::Region;

/// Bytes reserved for a mutex: glibc's `pthread_mutex_t` (40 bytes on
/// x86-64, 48 on aarch64, 24 on 32-bit targets), then two words of the
/// owner's own at [`SPARE_AT`], reached without another bounds check.
pub(crate) const MUTEX_SIZE: usize = 64;
/// Where the two spare words start in the reservation.
pub(crate) const SPARE_AT: usize = 56;
const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= SPARE_AT);

/// The owner's thread id in the mutex's word (`FUTEX_TID_MASK`).
pub(crate) const TID_MASK: u32 = 0x3fff_ffff;
/// Set in the word by the kernel when the owner died holding it.
pub(crate) const OWNER_DIED: u32 = 0x4000_0000;
/// Set in the word while a thread sleeps waiting for it.
pub(crate) const WAITERS: u32 = 0x8000_0000;

extern "C" {
    // glibc 2.30 and later; not (yet) in the libc crate.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// A robust mutex at a checked offset of a mapping, for as long as the
/// mapping is borrowed.
#[derive(Clone, Copy)]
pub(crate) struct RobustMutex<'r> {
    ptr: *mut libc::pthread_mutex_t,
    _region: PhantomData<&'r Region>,
}

/// What a successful lock found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locked {
    /// The previous owner unlocked it.
    Clean,
    /// The previous owner died holding it; the mutex is consistent again,
    /// the data it guards may not be.
    OwnerDied,
}

fn locked(rc: libc::c_int, mutex: *mut libc::pthread_mutex_t) -> Result<Locked, Errno> {
    match rc {
        0 => Ok(Locked::Clean),
        libc::EOWNERDEAD => {
            // SAFETY: we hold the mutex (EOWNERDEAD means so), which is what
            // pthread_mutex_consistent asks; `mutex` is valid (see `at`).
            match unsafe { libc::pthread_mutex_consistent(mutex) } {
                0 => Ok(Locked::OwnerDied),
                e => Err(Errno::from_raw_os_error(e)),
            }
        }
        e => Err(Errno::from_raw_os_error(e)),
    }
}

impl<'r> RobustMutex<'r> {
    /// The mutex in the [`MUTEX_SIZE`] bytes at `at` of `region`, which must
    /// lie inside it and be 8-aligned; `None` otherwise.
    pub(crate) fn at(region: &'r Region, at: usize) -> Option<Self> {
        let end = at.checked_add(MUTEX_SIZE)?;
        if end > region.len() || at % 8 != 0 {
            return None;
        }
        Some(RobustMutex {
            ptr: region.as_ptr().wrapping_add(at).cast(),
            _region: PhantomData,
        })
    }

    /// The mutex's futex word (first in glibc's layout on every Linux
    /// target), for looking at: owner, waiters, owner-died.
    pub(crate) fn word(&self) -> &'r AtomicU32 {
        // SAFETY: the word is inside the borrowed mapping, 4-aligned (the
        // mutex is 8-aligned), and glibc and the kernel only change it
        // atomically.
        unsafe { AtomicU32::from_ptr(self.ptr.cast()) }
    }

    /// Spare word `i` (0 or 1) of the reservation, after the mutex.
    pub(crate) fn spare(&self, i: usize) -> &'r AtomicU32 {
        assert!(i < 2, "two spare words");
        // SAFETY: SPARE_AT + 4 * i + 4 <= MUTEX_SIZE, inside the checked,
        // 8-aligned reservation, beyond the pthread_mutex_t (static
        // assertion above); only ever accessed atomically.
        unsafe { AtomicU32::from_ptr(self.ptr.cast::<u8>().add(SPARE_AT + 4 * i).cast()) }
    }

    /// Initialises a fresh mutex: process-shared, robust, error-checking
    /// (the owner locking it again gets `EDEADLK`, not a hang). Nobody may
    /// use it meanwhile.
    pub(crate) fn init(&self) -> Result<(), Errno> {
        // SAFETY: `ptr` is MUTEX_SIZE reserved, aligned bytes of a mapping
        // that outlives `self`; the attribute object lives on this stack and
        // is destroyed after use. The pthread functions touch only those.
        unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            let rc = libc::pthread_mutexattr_init(attr.as_mut_ptr());
            if rc != 0 {
                return Err(Errno::from_raw_os_error(rc));
            }
            let mut rc =
                libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED);
            if rc == 0 {
                rc = libc::pthread_mutexattr_setrobust(
                    attr.as_mut_ptr(),
                    libc::PTHREAD_MUTEX_ROBUST,
                );
            }
            if rc == 0 {
                rc = libc::pthread_mutexattr_settype(
                    attr.as_mut_ptr(),
                    libc::PTHREAD_MUTEX_ERRORCHECK,
                );
            }
            if rc == 0 {
                rc = libc::pthread_mutex_init(self.ptr, attr.as_ptr());
            }
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
            if rc == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw_os_error(rc))
            }
        }
    }

    /// Locks without waiting: `Err(BUSY)` if another thread holds it,
    /// `Err(DEADLK)` if this one does.
    pub(crate) fn try_lock(&self) -> Result<Locked, Errno> {
        // SAFETY: a mutex `init` made in memory that outlives `self`; another
        // process's garbage there is detected by glibc as EINVAL at worst.
        locked(unsafe { libc::pthread_mutex_trylock(self.ptr) }, self.ptr)
    }

    /// Locks, waiting at most `timeout`: `Err(TIMEDOUT)` then,
    /// `Err(DEADLK)` if this thread holds it.
    pub(crate) fn lock_for(&self, timeout: Duration) -> Result<Locked, Errno> {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let mut sec = now
            .tv_sec
            .saturating_add(timeout.as_secs().try_into().unwrap_or(i64::MAX));
        let mut nsec = now.tv_nsec + i64::from(timeout.subsec_nanos());
        if nsec >= 1_000_000_000 {
            nsec -= 1_000_000_000;
            sec = sec.saturating_add(1);
        }
        let abstime = libc::timespec {
            tv_sec: sec as libc::time_t,
            tv_nsec: nsec as _,
        };
        // SAFETY: as in `try_lock`; `abstime` lives on this stack.
        let rc = unsafe { pthread_mutex_clocklock(self.ptr, libc::CLOCK_MONOTONIC, &abstime) };
        locked(rc, self.ptr)
    }

    /// Unlocks: `Err(PERM)` unless this thread holds it.
    pub(crate) fn unlock(&self) -> Result<(), Errno> {
        // SAFETY: as in `try_lock`; glibc checks the owner of a robust mutex
        // and refuses anyone else.
        match unsafe { libc::pthread_mutex_unlock(self.ptr) } {
            0 => Ok(()),
            e => Err(Errno::from_raw_os_error(e)),
        }
    }
}
