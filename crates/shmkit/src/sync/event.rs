//! [`Event`]: one futex word, the flag in bit 0 and a "someone may sleep"
//! bit, so that `set` makes a system call only when someone waits.
//!
//! State (`EVENT_SIZE` bytes, 8-aligned): at 0, a `u32` with the flag (bit
//! 0) and the sleepers bit (31); 4 bytes reserved.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::handle::Handle;
use super::wait::{block_on, Step, Wait};
use crate::object::Kind;
use crate::sys::futex;
use crate::{Options, Region, Result};

const SET: u32 = 1;
const SLEEPERS: u32 = 0x8000_0000;
/// Bytes an event takes in a region (8-aligned).
pub const EVENT_SIZE: usize = 8;

fn init(region: &Region, at: usize) -> Result<()> {
    region.atomic_u32(at)?.store(0, Ordering::Relaxed);
    region.atomic_u32(at + 4)?.store(0, Ordering::Relaxed);
    Ok(())
}

/// A flag that processes set, clear and wait for, by name (as
/// `multiprocessing.Event`).
///
/// ```
/// use shmkit::sync::Event;
///
/// let event = Event::create()?;
/// let seen = Event::open(event.name().unwrap())?;
/// std::thread::scope(|s| {
///     s.spawn(|| seen.wait());
///     event.set();
/// });
/// assert!(seen.is_set());
/// event.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct Event<'r> {
    handle: Handle<'r>,
}

impl Event<'static> {
    /// Creates one, clear, under a fresh `psm_` name.
    pub fn create() -> Result<Self> {
        Self::create_with(&Options::new(), None)
    }

    /// Creates one, clear, called `name`.
    pub fn create_named(name: &str) -> Result<Self> {
        Self::create_with(&Options::new(), Some(name))
    }

    /// Creates one with `options`, under `name` or a fresh one.
    pub fn create_with(options: &Options, name: Option<&str>) -> Result<Self> {
        let handle = Handle::create(options, name, Kind::Event, EVENT_SIZE, &[], init)?;
        Ok(Event { handle })
    }

    /// Attaches to the one called `name`.
    pub fn open(name: &str) -> Result<Self> {
        Self::open_with(&Options::new(), name)
    }

    /// Attaches to the one called `name` with `options` (`track`).
    pub fn open_with(options: &Options, name: &str) -> Result<Self> {
        let handle = Handle::open(options, name, Kind::Event, EVENT_SIZE, &[])?;
        Ok(Event { handle })
    }
}

impl<'r> Event<'r> {
    /// Makes a fresh, clear one in the [`EVENT_SIZE`] bytes at `at` (a
    /// multiple of 8) of `region`.
    pub fn init_at(region: &'r Region, at: usize) -> Result<Self> {
        let handle = Handle::borrowed(region, at, EVENT_SIZE, &[])?;
        init(region, at)?;
        Ok(Event { handle })
    }

    /// Uses the one made at `at` of `region`.
    pub fn at(region: &'r Region, at: usize) -> Result<Self> {
        let handle = Handle::borrowed(region, at, EVENT_SIZE, &[])?;
        Ok(Event { handle })
    }

    fn word(&self) -> &AtomicU32 {
        self.handle
            .region()
            .atomic_u32(self.handle.at())
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

    /// Whether it is set.
    pub fn is_set(&self) -> bool {
        self.word().load(Ordering::Acquire) & SET != 0
    }

    /// Sets it and wakes every waiter.
    pub fn set(&self) {
        let word = self.word();
        if word.swap(SET, Ordering::Release) & SLEEPERS != 0 {
            futex::wake(word, u32::MAX);
        }
    }

    /// Clears it.
    pub fn clear(&self) {
        self.word().fetch_and(!SET, Ordering::Release);
    }

    /// Waits until it is set.
    pub fn wait(&self) {
        // A wait without deadline or hook cannot end otherwise.
        let _ = self.wait_with(&mut Wait::forever());
    }

    /// Waits at most `timeout`; whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_with(&mut Wait::timeout(timeout)).unwrap_or(false)
    }

    /// Waits within `wait`'s limits: whether it is set.
    pub fn wait_with(&self, wait: &mut Wait<'_>) -> Result<bool> {
        let word = self.word();
        let got = block_on(word, wait, |sleeping| {
            let v = word.load(Ordering::Acquire);
            if v & SET != 0 {
                return Step::Done(());
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
}
