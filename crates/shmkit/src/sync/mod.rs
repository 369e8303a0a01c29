//! Locks, semaphores and events that processes share by name, Rust and
//! Python alike, robust to the death of a holder.
//!
//! Each primitive lives either in a segment of its own, named like any
//! [`SharedMemory`](crate::SharedMemory) and marked by the
//! [`object`](crate::object) header (`create`, `create_named`, `open`), or
//! at an 8-aligned place inside a [`Region`](crate::Region) of the user's
//! (`init_at`, `at`), so that a layout of one's own can carry its lock.
//!
//! - [`Lock`] and [`RLock`] are glibc's robust, process-shared mutexes:
//!   when a holder dies, the kernel hands the lock to the next taker, who
//!   gets [`OwnerDied`] (like std's `PoisonError`) until someone calls
//!   [`mark_repaired`](LockGuard::mark_repaired). They are owned: only the
//!   holding thread may release.
//! - [`Semaphore`], [`BoundedSemaphore`] and [`Event`] are futex words.
//!   Their counts belong to nobody, as POSIX semaphores' do.
//!
//! Blocking calls spin briefly, then sleep in the kernel (futex); a wait
//! with a deadline or an interruption hook sleeps in slices of [`SLICE`]
//! and runs the hook between them. A [`Wait`] sets both.
//!
//! A counter needs no lock: [`Region::atomic_i64`](crate::Region::atomic_i64)
//! gives a 64-bit atomic at any 8-aligned offset:
//!
//! ```
//! use std::sync::atomic::Ordering;
//! let shm = shmkit::SharedMemory::create(64)?;
//! let hits = shm.atomic_i64(8)?;
//! hits.fetch_add(3, Ordering::SeqCst);
//! assert_eq!(hits.compare_exchange(3, 10, Ordering::SeqCst, Ordering::SeqCst), Ok(3));
//! # shm.unlink()?;
//! # Ok::<(), shmkit::Error>(())
//! ```

mod barrier;
mod condition;
mod describe;
mod event;
mod handle;
mod lock;
mod semaphore;
mod wait;

pub use barrier::{Barrier, BARRIER_SIZE, SLOTS};
pub use condition::{Condition, CONDITION_SIZE};
pub use describe::{describe, State};
pub use event::{Event, EVENT_SIZE};
pub use lock::{Lock, LockGuard, RLock, RLockGuard, LOCK_SIZE};
pub use semaphore::{BoundedSemaphore, Semaphore, MAX_COUNT, SEMAPHORE_SIZE};
pub use wait::{Wait, SLICE};

// For the queue, which is built of the same parts.
#[cfg(feature = "queue")]
pub(crate) use handle::{Handle, VERSION as OBJECT_VERSION};
#[cfg(feature = "queue")]
pub(crate) use lock::LockState;
#[cfg(feature = "queue")]
pub(crate) use wait::{block_on, Step};

/// How a lock was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a lock whose owner died may guard inconsistent data"]
pub enum Acquired {
    /// From a holder that released it.
    Clean,
    /// A holder died with it (now or earlier) and nobody marked the data
    /// repaired since: the guarded data may be half-written.
    OwnerDied,
}

/// The lock is held, but a holder died with it and nobody has marked the
/// data repaired: what it guards may be half-written. Take the guard with
/// [`into_inner`](Self::into_inner), repair, then call `mark_repaired` on
/// it; until then every taker is told.
///
/// ```
/// use shmkit::sync::Lock;
/// let lock = Lock::create()?;
/// let guard = match lock.lock() {
///     Ok(guard) => guard,
///     Err(died) => {
///         let guard = died.into_inner();
///         // ... repair the data ...
///         guard.mark_repaired();
///         guard
///     }
/// };
/// drop(guard);
/// # lock.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G) -> Self {
        OwnerDied { guard }
    }

    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// The guard, borrowed.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }
}

impl<G> std::fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a holder of the lock died holding it; the data it guards may be inconsistent")
    }
}

impl<G: std::fmt::Debug> std::error::Error for OwnerDied<G> {}
