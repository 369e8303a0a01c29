//! [`Lock`] and [`RLock`]: glibc's robust, process-shared mutex, plus a
//! depth word for re-entry and a flag that remembers an owner's death
//! until someone says the data is repaired.
//!
//! State (`LOCK_SIZE` bytes, 8-aligned):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 56 | `pthread_mutex_t` (robust, process-shared, error-checking) |
//! | 56 | 4 | depth: how many times the owner holds it (written by the owner only) |
//! | 60 | 4 | owner died: 1 from a death until [`mark_repaired`](LockGuard::mark_repaired) |
//! | 64 | 8 | reserved |

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rustix::io::Errno;

use super::handle::Handle;
use super::wait::{spin, Wait};
use super::{Acquired, OwnerDied};
use crate::object::Kind;
use crate::sys::futex::tid;
use crate::sys::robust_mutex::{Locked, RobustMutex, TID_MASK};
use crate::{Error, Options, Region, Result};

/// Where describe finds the depth and the owner-died flag.
pub(crate) const DEPTH_AT: usize = crate::sys::robust_mutex::SPARE_AT;
pub(crate) const DIED_AT: usize = DEPTH_AT + 4;
/// Bytes a lock takes in a region (8-aligned).
pub const LOCK_SIZE: usize = 72;
pub(crate) const MUTEXES: &[usize] = &[0];

/// A lock's state in a region: every operation, for both kinds.
#[derive(Clone, Copy)]
pub(crate) struct LockState<'a> {
    mutex: RobustMutex<'a>,
    depth: &'a AtomicU32,
    died: &'a AtomicU32,
    recursive: bool,
}

fn errno(op: &'static str, e: Errno) -> Error {
    Error::Io {
        op,
        name: String::new(),
        source: std::io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

impl<'a> LockState<'a> {
    /// The lock at `at` of `region` (checked when the handle was made).
    pub(crate) fn new(region: &'a Region, at: usize, recursive: bool) -> Result<Self> {
        let mutex = RobustMutex::at(region, at).ok_or_else(|| Error::OutOfBounds {
            offset: at,
            len: LOCK_SIZE,
            size: region.len(),
        })?;
        Ok(LockState {
            mutex,
            depth: mutex.spare(0),
            died: mutex.spare(1),
            recursive,
        })
    }

    /// Writes a fresh, unlocked lock.
    pub(crate) fn init(region: &Region, at: usize) -> Result<()> {
        let state = LockState::new(region, at, false)?;
        state
            .mutex
            .init()
            .map_err(|e| errno("pthread_mutex_init", e))?;
        state.depth.store(0, Ordering::Relaxed);
        state.died.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// The owner's thread id, 0 when free.
    pub(crate) fn owner(&self) -> u32 {
        self.mutex.word().load(Ordering::Relaxed) & TID_MASK
    }

    pub(crate) fn held_by_me(&self) -> bool {
        let owner = self.owner();
        owner != 0 && owner == tid()
    }

    pub(crate) fn owner_died(&self) -> bool {
        self.died.load(Ordering::Acquire) != 0
    }

    pub(crate) fn mark_repaired(&self) {
        self.died.store(0, Ordering::Release);
    }

    /// What the caller now holds: the death flag is reported to every
    /// holder until someone repairs.
    fn taken(&self, locked: Locked) -> Acquired {
        if locked == Locked::OwnerDied {
            self.died.store(1, Ordering::Release);
        }
        self.depth.store(1, Ordering::Relaxed);
        if self.owner_died() {
            Acquired::OwnerDied
        } else {
            Acquired::Clean
        }
    }

    /// Takes the lock within the wait's limits: `Ok(None)` if it could not.
    pub(crate) fn acquire(&self, wait: &mut Wait<'_>) -> Result<Option<Acquired>> {
        match self.mutex.try_lock() {
            Ok(l) => return Ok(Some(self.taken(l))),
            // DEADLK: this thread holds it; the slow path tells the kinds apart.
            Err(Errno::BUSY) | Err(Errno::DEADLK) => {}
            Err(e) => return Err(errno("pthread_mutex_trylock", e)),
        }
        self.acquire_slow(wait)
    }

    #[cold]
    fn acquire_slow(&self, wait: &mut Wait<'_>) -> Result<Option<Acquired>> {
        if self.held_by_me() {
            if self.recursive {
                let depth = self.depth.load(Ordering::Relaxed);
                let depth = depth.checked_add(1).ok_or(Error::InvalidFlags(
                    "an RLock cannot be held more than 2^32-1 times",
                ))?;
                self.depth.store(depth, Ordering::Relaxed);
                return Ok(Some(if self.owner_died() {
                    Acquired::OwnerDied
                } else {
                    Acquired::Clean
                }));
            }
            // Only this thread could release it, and it is waiting.
            return if wait.blocks() && !wait.has_deadline() {
                Err(Error::WouldDeadlock)
            } else {
                Ok(None)
            };
        }
        if !wait.blocks() {
            return Ok(None);
        }
        let spun = spin(|| {
            if self.owner() != 0 {
                return None;
            }
            match self.mutex.try_lock() {
                Ok(l) => Some(Ok(self.taken(l))),
                Err(Errno::BUSY) => None,
                Err(e) => Some(Err(errno("pthread_mutex_trylock", e))),
            }
        });
        if let Some(got) = spun {
            return got.map(Some);
        }
        loop {
            let Some(slice) = wait.slice() else {
                return Ok(None);
            };
            match self.mutex.lock_for(slice) {
                Ok(l) => return Ok(Some(self.taken(l))),
                Err(Errno::TIMEDOUT) | Err(Errno::INTR) => wait.check()?,
                Err(Errno::DEADLK) => return Err(Error::WouldDeadlock),
                Err(e) => return Err(errno("pthread_mutex_clocklock", e)),
            }
        }
    }

    /// Releases one hold: `Err(NotOwner)` unless this thread holds it.
    pub(crate) fn release(&self) -> Result<()> {
        if self.recursive {
            if !self.held_by_me() {
                return Err(Error::NotOwner);
            }
            let depth = self.depth.load(Ordering::Relaxed);
            if depth > 1 {
                self.depth.store(depth - 1, Ordering::Relaxed);
                return Ok(());
            }
        }
        self.depth.store(0, Ordering::Relaxed);
        match self.mutex.unlock() {
            Ok(()) => Ok(()),
            Err(Errno::PERM) => Err(Error::NotOwner),
            Err(e) => Err(errno("pthread_mutex_unlock", e)),
        }
    }

    /// Releases every hold (for a condition's wait): the depth to restore.
    pub(crate) fn release_all(&self) -> Result<u32> {
        if !self.held_by_me() {
            return Err(Error::NotOwner);
        }
        let depth = self.depth.load(Ordering::Relaxed).max(1);
        self.depth.store(0, Ordering::Relaxed);
        match self.mutex.unlock() {
            Ok(()) => Ok(depth),
            Err(Errno::PERM) => Err(Error::NotOwner),
            Err(e) => Err(errno("pthread_mutex_unlock", e)),
        }
    }

    /// Takes it again after [`release_all`](Self::release_all), waiting
    /// as long as it takes (a condition's wait must return holding it);
    /// the hook still runs, but cannot end this wait.
    pub(crate) fn restore(&self, depth: u32) -> Result<Acquired> {
        let mut wait = Wait::forever();
        let got = self
            .acquire(&mut wait)?
            .expect("a wait without deadline only ends holding the lock");
        self.depth.store(depth, Ordering::Relaxed);
        Ok(got)
    }
}

macro_rules! lock_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $recursive:expr, $guard:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name<'r> {
            handle: Handle<'r>,
        }

        impl $name<'static> {
            /// Creates one in a new segment under a fresh `psm_` name.
            pub fn create() -> Result<Self> {
                Self::create_with(&Options::new(), None)
            }

            /// Creates one in a new segment called `name` (fails if taken).
            pub fn create_named(name: &str) -> Result<Self> {
                Self::create_with(&Options::new(), Some(name))
            }

            /// Creates one with `options` (mode, `track`…), under `name` or
            /// a fresh one.
            pub fn create_with(options: &Options, name: Option<&str>) -> Result<Self> {
                let handle = Handle::create(options, name, $kind, LOCK_SIZE, MUTEXES, LockState::init)?;
                Ok($name { handle })
            }

            /// Attaches to the one called `name`.
            pub fn open(name: &str) -> Result<Self> {
                Self::open_with(&Options::new(), name)
            }

            /// Attaches to the one called `name` with `options` (`track`).
            pub fn open_with(options: &Options, name: &str) -> Result<Self> {
                let handle = Handle::open(options, name, $kind, LOCK_SIZE, MUTEXES)?;
                Ok($name { handle })
            }
        }

        impl<'r> $name<'r> {
            /// Makes a fresh, unlocked one in the [`LOCK_SIZE`] bytes at `at`
            /// (a multiple of 8) of `region`. Nobody may be using that place.
            /// The region must stay mapped while a lock there is held.
            pub fn init_at(region: &'r Region, at: usize) -> Result<Self> {
                let handle = Handle::borrowed(region, at, LOCK_SIZE, MUTEXES)?;
                LockState::init(region, at)?;
                Ok($name { handle })
            }

            /// Uses the one that [`init_at`](Self::init_at) made at `at`.
            pub fn at(region: &'r Region, at: usize) -> Result<Self> {
                let handle = Handle::borrowed(region, at, LOCK_SIZE, MUTEXES)?;
                Ok($name { handle })
            }

            pub(crate) fn state(&self) -> LockState<'_> {
                LockState::new(self.handle.region(), self.handle.at(), $recursive)
                    .expect("checked when the handle was made")
            }

            /// The segment's name (`None` for one placed in a region).
            pub fn name(&self) -> Option<&str> {
                self.handle.name()
            }

            /// The segment it lives in (`None` for one placed in a region).
            pub fn shared_memory(&self) -> Option<&crate::SharedMemory> {
                self.handle.shared_memory()
            }

            /// Removes the segment's name; handles already attached keep
            /// working.
            pub fn unlink(&self) -> Result<()> {
                self.handle.unlink()
            }

            /// Takes it, waiting as long as it takes.
            ///
            /// # Panics
            /// If this thread holds it already (a plain lock would wait
            /// for itself forever), or if the mutex's memory was
            /// overwritten with something glibc rejects.
            pub fn lock(&self) -> std::result::Result<$guard<'_>, OwnerDied<$guard<'_>>> {
                self.guarded(&mut Wait::forever())
                    .expect("a wait without deadline only ends holding the lock")
            }

            /// Takes it if it is free (or, for an RLock, held by this
            /// thread); `None` otherwise.
            pub fn try_lock(&self) -> Option<std::result::Result<$guard<'_>, OwnerDied<$guard<'_>>>> {
                self.guarded(&mut Wait::no_wait())
            }

            /// Takes it, waiting at most `timeout`; `None` if it could not.
            pub fn lock_timeout(
                &self,
                timeout: Duration,
            ) -> Option<std::result::Result<$guard<'_>, OwnerDied<$guard<'_>>>> {
                self.guarded(&mut Wait::timeout(timeout))
            }

            fn guarded(
                &self,
                wait: &mut Wait<'_>,
            ) -> Option<std::result::Result<$guard<'_>, OwnerDied<$guard<'_>>>> {
                let got = match self.acquire(wait) {
                    Ok(got) => got?,
                    Err(e) => panic!("cannot take the lock: {e}"),
                };
                let guard = $guard {
                    lock: self,
                    _not_send: std::marker::PhantomData,
                };
                Some(match got {
                    Acquired::Clean => Ok(guard),
                    Acquired::OwnerDied => Err(OwnerDied::new(guard)),
                })
            }

            /// Takes it within `wait`'s limits, without a guard: the
            /// caller must [`release`](Self::release). `Ok(None)` when the
            /// deadline passed (or the lock was busy, for
            /// [`Wait::no_wait`]); [`Error::WouldDeadlock`] when this thread
            /// holds a plain lock and would wait forever for itself.
            pub fn acquire(&self, wait: &mut Wait<'_>) -> Result<Option<Acquired>> {
                self.state().acquire(wait)
            }

            /// Releases a hold taken with [`acquire`](Self::acquire);
            /// [`Error::NotOwner`] unless this thread holds it.
            pub fn release(&self) -> Result<()> {
                self.state().release()
            }

            /// Whether anyone holds it.
            pub fn is_locked(&self) -> bool {
                self.state().owner() != 0
            }

            /// Whether the calling thread holds it.
            pub fn is_owned(&self) -> bool {
                self.state().held_by_me()
            }

            /// The kernel thread id of the holder, if any.
            pub fn owner_tid(&self) -> Option<u32> {
                Some(self.state().owner()).filter(|&t| t != 0)
            }

            /// Whether a holder died with it and nobody marked the data
            /// repaired since.
            pub fn owner_died(&self) -> bool {
                self.state().owner_died()
            }

            /// Clears the owner-died mark (see [`OwnerDied`]).
            pub fn mark_repaired(&self) {
                self.state().mark_repaired()
            }
        }

        /// Holds the lock; releases one hold when dropped.
        #[derive(Debug)]
        #[must_use = "the lock is released when the guard is dropped"]
        pub struct $guard<'a> {
            lock: &'a $name<'a>,
            // The thread that took it must release it.
            _not_send: std::marker::PhantomData<*const ()>,
        }

        impl $guard<'_> {
            /// Declares the guarded data consistent again after an owner's
            /// death: later holders are no longer told of it.
            pub fn mark_repaired(&self) {
                self.lock.state().mark_repaired()
            }
        }

        impl Drop for $guard<'_> {
            fn drop(&mut self) {
                // This thread holds it (the guard is not Send), so this
                // cannot fail.
                let _ = self.lock.state().release();
            }
        }
    };
}

lock_type!(
    /// A lock that processes share by name: glibc's robust mutex, so that
    /// a holder's death hands it to the next taker, who is told.
    ///
    /// Owned, unlike `multiprocessing.Lock`: only the thread that holds it
    /// may release it ([`Error::NotOwner`] otherwise).
    ///
    /// ```
    /// use shmkit::sync::Lock;
    ///
    /// let lock = Lock::create()?;
    /// let other = Lock::open(lock.name().unwrap())?; // another process would
    /// {
    ///     let _held = lock.lock().expect("nobody died holding it");
    ///     assert!(other.is_locked());
    ///     assert!(other.try_lock().is_none());
    /// }
    /// assert!(!other.is_locked());
    /// lock.unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    Lock,
    Kind::Lock,
    false,
    LockGuard
);

lock_type!(
    /// A lock that its holder may take again (as `threading.RLock`), shared
    /// by name and robust as [`Lock`] is. Each take needs its release.
    ///
    /// ```
    /// use shmkit::sync::RLock;
    ///
    /// let lock = RLock::create()?;
    /// let outer = lock.lock().expect("clean");
    /// let inner = lock.try_lock().expect("this thread holds it").expect("clean");
    /// drop(inner);
    /// assert!(lock.is_owned());
    /// drop(outer);
    /// assert!(!lock.is_locked());
    /// lock.unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    RLock,
    Kind::RLock,
    true,
    RLockGuard
);
