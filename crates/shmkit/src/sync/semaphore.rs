//! [`Semaphore`] and [`BoundedSemaphore`]: one futex word holding the count
//! and a "someone may sleep" bit, so that a release makes a system call
//! only when a taker sleeps, and a sleeper that died leaves nothing behind
//! but one extra wake.
//!
//! State (`SEMAPHORE_SIZE` bytes, 8-aligned):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | count (bits 0–30), sleepers bit (31) |
//! | 4 | 4 | bound: the most the count may reach (`0x7fff_ffff` if unbounded) |

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::handle::Handle;
use super::wait::{block_on, Step, Wait};
use crate::object::Kind;
use crate::sys::futex;
use crate::{Error, Options, Region, Result};

const SLEEPERS: u32 = 0x8000_0000;
/// The largest count a semaphore holds.
pub const MAX_COUNT: u32 = 0x7fff_ffff;
const BOUND_AT: usize = 4;
/// Bytes a semaphore takes in a region (8-aligned).
pub const SEMAPHORE_SIZE: usize = 8;

#[derive(Clone, Copy)]
pub(crate) struct SemState<'a> {
    word: &'a AtomicU32,
    bound: &'a AtomicU32,
}

impl<'a> SemState<'a> {
    pub(crate) fn new(region: &'a Region, at: usize) -> Result<Self> {
        Ok(SemState {
            word: region.atomic_u32(at)?,
            bound: region.atomic_u32(at + BOUND_AT)?,
        })
    }

    pub(crate) fn value(&self) -> u32 {
        self.word.load(Ordering::Relaxed) & MAX_COUNT
    }

    pub(crate) fn bound(&self) -> u32 {
        self.bound.load(Ordering::Relaxed) & MAX_COUNT
    }

    pub(crate) fn acquire(&self, wait: &mut Wait<'_>) -> Result<bool> {
        let word = self.word;
        let got = block_on(word, wait, |sleeping| {
            let v = word.load(Ordering::Relaxed);
            if v & MAX_COUNT > 0 {
                return match word.compare_exchange_weak(
                    v,
                    v - 1,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => Step::Done(()),
                    Err(_) => Step::Retry,
                };
            }
            if !sleeping {
                return Step::Retry;
            }
            if v & SLEEPERS == 0
                && word
                    .compare_exchange(v, v | SLEEPERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return Step::Retry;
            }
            Step::Sleep(v | SLEEPERS)
        })?;
        Ok(got.is_some())
    }

    pub(crate) fn release(&self, n: u32) -> Result<()> {
        let bound = self.bound();
        let mut v = self.word.load(Ordering::Relaxed);
        loop {
            let count = (v & MAX_COUNT)
                .checked_add(n)
                .filter(|&c| c <= bound)
                .ok_or(Error::TooManyReleases)?;
            // Clearing the bit and waking every sleeper: those that find
            // nothing set it again before they sleep.
            match self
                .word
                .compare_exchange_weak(v, count, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if v & SLEEPERS != 0 {
            futex::wake(self.word, u32::MAX);
        }
        Ok(())
    }
}

fn init(value: u32, bound: u32) -> impl FnOnce(&Region, usize) -> Result<()> {
    move |region, at| {
        if value > MAX_COUNT || value > bound {
            return Err(Error::InvalidFlags(
                "a semaphore's value must be at most its bound and 2^31-1",
            ));
        }
        let s = SemState::new(region, at)?;
        s.word.store(value, Ordering::Relaxed);
        s.bound.store(bound, Ordering::Relaxed);
        Ok(())
    }
}

macro_rules! semaphore_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name<'r> {
            handle: Handle<'r>,
        }

        impl $name<'static> {
            /// Attaches to the one called `name`.
            pub fn open(name: &str) -> Result<Self> {
                Self::open_with(&Options::new(), name)
            }

            /// Attaches to the one called `name` with `options` (`track`).
            pub fn open_with(options: &Options, name: &str) -> Result<Self> {
                let handle = Handle::open(options, name, $kind, SEMAPHORE_SIZE, &[])?;
                Ok($name { handle })
            }
        }

        impl<'r> $name<'r> {
            /// Uses the one made at `at` of `region`.
            pub fn at(region: &'r Region, at: usize) -> Result<Self> {
                let handle = Handle::borrowed(region, at, SEMAPHORE_SIZE, &[])?;
                Ok($name { handle })
            }

            fn state(&self) -> SemState<'_> {
                SemState::new(self.handle.region(), self.handle.at())
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

            /// Removes the segment's name.
            pub fn unlink(&self) -> Result<()> {
                self.handle.unlink()
            }

            /// The count now.
            pub fn value(&self) -> u32 {
                self.state().value()
            }

            /// Takes one, waiting as long as it takes.
            pub fn acquire(&self) {
                // A wait without deadline or hook cannot end otherwise.
                let _ = self.acquire_with(&mut Wait::forever());
            }

            /// Takes one if the count is above zero.
            pub fn try_acquire(&self) -> bool {
                self.acquire_with(&mut Wait::no_wait()).unwrap_or(false)
            }

            /// Takes one, waiting at most `timeout`; whether it did.
            pub fn acquire_timeout(&self, timeout: Duration) -> bool {
                self.acquire_with(&mut Wait::timeout(timeout)).unwrap_or(false)
            }

            /// Takes one within `wait`'s limits: `Ok(false)` when the
            /// deadline passed, [`Error::Interrupted`] from the hook.
            pub fn acquire_with(&self, wait: &mut Wait<'_>) -> Result<bool> {
                self.state().acquire(wait)
            }

            /// Adds `n` to the count and wakes sleepers;
            /// [`Error::TooManyReleases`] if the count would pass its bound.
            pub fn release(&self, n: u32) -> Result<()> {
                self.state().release(n)
            }
        }
    };
}

semaphore_type!(
    /// A counting semaphore shared by name. Its count belongs to nobody (as
    /// in POSIX): a process that dies after taking one does not give it
    /// back.
    ///
    /// ```
    /// use shmkit::sync::Semaphore;
    ///
    /// let sem = Semaphore::create(1)?;
    /// assert!(sem.try_acquire());
    /// assert!(!sem.try_acquire());
    /// Semaphore::open(sem.name().unwrap())?.release(1)?;
    /// assert_eq!(sem.value(), 1);
    /// sem.unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    Semaphore,
    Kind::Semaphore
);

semaphore_type!(
    /// A semaphore whose count may never rise above its start value: a
    /// release beyond it fails with [`Error::TooManyReleases`]. Its count
    /// belongs to nobody, as [`Semaphore`]'s.
    ///
    /// ```
    /// use shmkit::sync::BoundedSemaphore;
    ///
    /// let sem = BoundedSemaphore::create(2)?;
    /// sem.acquire();
    /// sem.release(1)?;
    /// assert!(matches!(sem.release(1), Err(shmkit::Error::TooManyReleases)));
    /// sem.unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    BoundedSemaphore,
    Kind::BoundedSemaphore
);

macro_rules! semaphore_makers {
    ($name:ident, $kind:expr, $bound:expr) => {
        impl $name<'static> {
            /// Creates one with count `value` under a fresh `psm_` name.
            pub fn create(value: u32) -> Result<Self> {
                Self::create_with(&Options::new(), None, value)
            }

            /// Creates one with count `value` called `name`.
            pub fn create_named(name: &str, value: u32) -> Result<Self> {
                Self::create_with(&Options::new(), Some(name), value)
            }

            /// Creates one with `options`, under `name` or a fresh one.
            pub fn create_with(options: &Options, name: Option<&str>, value: u32) -> Result<Self> {
                let bound: fn(u32) -> u32 = $bound;
                let handle = Handle::create(
                    options,
                    name,
                    $kind,
                    SEMAPHORE_SIZE,
                    &[],
                    init(value, bound(value)),
                )?;
                Ok($name { handle })
            }
        }

        impl<'r> $name<'r> {
            /// Makes a fresh one with count `value` in the
            /// [`SEMAPHORE_SIZE`] bytes at `at` (a multiple of 8) of `region`.
            pub fn init_at(region: &'r Region, at: usize, value: u32) -> Result<Self> {
                let handle = Handle::borrowed(region, at, SEMAPHORE_SIZE, &[])?;
                let bound: fn(u32) -> u32 = $bound;
                init(value, bound(value))(region, at)?;
                Ok($name { handle })
            }
        }
    };
}

semaphore_makers!(Semaphore, Kind::Semaphore, |_| MAX_COUNT);
semaphore_makers!(BoundedSemaphore, Kind::BoundedSemaphore, |v| v);
