//! [`Condition`]: a futex sequence number that each notify advances, a
//! count of sleepers (so a notify with nobody waiting makes no system
//! call), and the lock: its own RLock inside the segment, or a named
//! [`Lock`](super::Lock)/[`RLock`](super::RLock) whose name the segment
//! records so that every attacher finds it.
//!
//! State (`CONDITION_SIZE` bytes, 8-aligned):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 72 | its own RLock (unused with a named lock) |
//! | 72 | 4 | sequence number (futex word) |
//! | 76 | 4 | sleepers (a hint: one that died is counted until the next `notify_all`) |
//! | 80 | 4 | length of the named lock's name, 0 for its own lock |
//! | 84 | 255 | the named lock's name |

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::handle::Handle;
use super::lock::{LockState, LOCK_SIZE, MUTEXES};
use super::wait::Wait;
use super::{Acquired, Lock, RLock};
use crate::object::{self, Kind};
use crate::sys::futex;
use crate::{Error, Options, Region, Result};

const SEQ_AT: usize = 72;
const _: () = assert!(LOCK_SIZE <= 72);
const SLEEPERS_AT: usize = 76;
const NAME_LEN_AT: usize = 80;
const NAME_AT: usize = 84;
/// Bytes a condition takes in a region (8-aligned).
pub const CONDITION_SIZE: usize = 344;

/// The lock a condition uses.
#[derive(Debug)]
enum CondLock {
    /// The RLock in the condition's own state.
    Own,
    /// A named lock of its own segment.
    Plain(Lock<'static>),
    /// A named RLock of its own segment.
    Recursive(RLock<'static>),
}

/// A condition variable that processes share by name (as
/// `multiprocessing.Condition`), with its lock: by default an RLock in its
/// own segment, robust like every shmkit lock.
///
/// Waits may wake without a notify (as POSIX's do), and a notify of `n`
/// may wake more than `n` waiters that were about to sleep: wait in a loop
/// on the predicate.
///
/// ```
/// use shmkit::sync::Condition;
///
/// let cond = Condition::create()?;
/// cond.acquire_lock()?;
/// // Nobody notifies: the wait times out, holding the lock again after.
/// let (notified, _) = cond.wait_timeout(std::time::Duration::from_millis(1))?;
/// assert!(!notified);
/// cond.notify_all()?;
/// cond.release_lock()?;
/// cond.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct Condition<'r> {
    handle: Handle<'r>,
    lock: CondLock,
}

fn init(lock_name: Option<&str>) -> impl FnOnce(&Region, usize) -> Result<()> + '_ {
    move |region, at| {
        LockState::init(region, at)?;
        region.atomic_u32(at + SEQ_AT)?.store(0, Ordering::Relaxed);
        region
            .atomic_u32(at + SLEEPERS_AT)?
            .store(0, Ordering::Relaxed);
        let name = lock_name.unwrap_or("");
        if name.len() > crate::name::MAX_LEN {
            return Err(Error::InvalidFlags("the lock's name is too long"));
        }
        region.write_at(at + NAME_AT, name.as_bytes())?;
        region
            .atomic_u32(at + NAME_LEN_AT)?
            .store(name.len() as u32, Ordering::Relaxed);
        Ok(())
    }
}

/// Opens the named lock whose name the state at `at` records.
fn recorded_lock(options: &Options, region: &Region, at: usize) -> Result<CondLock> {
    let len = region.atomic_u32(at + NAME_LEN_AT)?.load(Ordering::Relaxed) as usize;
    if len == 0 {
        return Ok(CondLock::Own);
    }
    let bad = || Error::WrongKind {
        name: String::new(),
        expected: Kind::Condition.name(),
        found: "condition with a damaged lock name",
    };
    if len > crate::name::MAX_LEN {
        return Err(bad());
    }
    let bytes = region.read_vec(at + NAME_AT, len)?;
    let name = String::from_utf8(bytes).map_err(|_| bad())?;
    open_lock(options, &name)
}

fn open_lock(options: &Options, name: &str) -> Result<CondLock> {
    let shm = options.open(name)?;
    match object::peek(shm.region()) {
        Some((Kind::Lock, _)) => Ok(CondLock::Plain(Lock::open_with(options, name)?)),
        _ => Ok(CondLock::Recursive(RLock::open_with(options, name)?)),
    }
}

impl Condition<'static> {
    /// Creates one, with its own lock, under a fresh `psm_` name.
    pub fn create() -> Result<Self> {
        Self::create_with(&Options::new(), None, None)
    }

    /// Creates one, with its own lock, called `name`.
    pub fn create_named(name: &str) -> Result<Self> {
        Self::create_with(&Options::new(), Some(name), None)
    }

    /// Creates one with `options`, under `name` or a fresh one, using the
    /// named [`Lock`] or [`RLock`] `lock_name` (its own lock if `None`).
    pub fn create_with(
        options: &Options,
        name: Option<&str>,
        lock_name: Option<&str>,
    ) -> Result<Self> {
        let lock = match lock_name {
            Some(n) => open_lock(options, n)?,
            None => CondLock::Own,
        };
        let handle = Handle::create(
            options,
            name,
            Kind::Condition,
            CONDITION_SIZE,
            MUTEXES,
            init(lock_name),
        )?;
        Ok(Condition { handle, lock })
    }

    /// Attaches to the one called `name` (and to its named lock, if any).
    pub fn open(name: &str) -> Result<Self> {
        Self::open_with(&Options::new(), name)
    }

    /// Attaches to the one called `name` with `options` (`track`).
    pub fn open_with(options: &Options, name: &str) -> Result<Self> {
        let handle = Handle::open(options, name, Kind::Condition, CONDITION_SIZE, MUTEXES)?;
        let lock = recorded_lock(options, handle.region(), handle.at())?;
        Ok(Condition { handle, lock })
    }
}

impl<'r> Condition<'r> {
    /// Makes a fresh one, with its own lock, in the [`CONDITION_SIZE`]
    /// bytes at `at` (a multiple of 8) of `region`.
    pub fn init_at(region: &'r Region, at: usize) -> Result<Self> {
        let handle = Handle::borrowed(region, at, CONDITION_SIZE, MUTEXES)?;
        init(None)(region, at)?;
        Ok(Condition {
            handle,
            lock: CondLock::Own,
        })
    }

    /// Uses the one made at `at` of `region`.
    pub fn at(region: &'r Region, at: usize) -> Result<Self> {
        let handle = Handle::borrowed(region, at, CONDITION_SIZE, MUTEXES)?;
        let lock = recorded_lock(&Options::new(), region, at)?;
        Ok(Condition { handle, lock })
    }

    /// The segment's name (`None` for one placed in a region).
    pub fn name(&self) -> Option<&str> {
        self.handle.name()
    }

    /// The segment it lives in (`None` for one placed in a region).
    pub fn shared_memory(&self) -> Option<&crate::SharedMemory> {
        self.handle.shared_memory()
    }

    /// The name of the named lock it uses, `None` for its own.
    pub fn lock_name(&self) -> Option<&str> {
        match &self.lock {
            CondLock::Own => None,
            CondLock::Plain(l) => l.name(),
            CondLock::Recursive(l) => l.name(),
        }
    }

    /// Removes the segment's name (not its named lock's).
    pub fn unlink(&self) -> Result<()> {
        self.handle.unlink()
    }

    pub(crate) fn lock_state(&self) -> LockState<'_> {
        match &self.lock {
            CondLock::Own => LockState::new(self.handle.region(), self.handle.at(), true),
            CondLock::Plain(l) => Ok(l.state()),
            CondLock::Recursive(l) => Ok(l.state()),
        }
        .expect("checked when the handle was made")
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        self.handle
            .region()
            .atomic_u32(self.handle.at() + at)
            .expect("checked when the handle was made")
    }

    /// Takes its lock, waiting as long as it takes.
    pub fn acquire_lock(&self) -> Result<Acquired> {
        Ok(self
            .acquire_lock_with(&mut Wait::forever())?
            .expect("a wait without deadline only ends holding the lock"))
    }

    /// Takes its lock within `wait`'s limits (see [`Lock::acquire`]).
    pub fn acquire_lock_with(&self, wait: &mut Wait<'_>) -> Result<Option<Acquired>> {
        self.lock_state().acquire(wait)
    }

    /// Releases one hold of its lock.
    pub fn release_lock(&self) -> Result<()> {
        self.lock_state().release()
    }

    /// Whether the calling thread holds its lock.
    pub fn is_owned(&self) -> bool {
        self.lock_state().held_by_me()
    }

    /// Clears the owner-died mark of its lock.
    pub fn mark_repaired(&self) {
        self.lock_state().mark_repaired()
    }

    /// Releases the lock (every hold), waits for a notify, takes the lock
    /// back: whether a notify came (rather than the deadline), and how the
    /// lock was taken back. The caller must hold the lock
    /// ([`Error::NotOwner`]).
    pub fn wait_with(&self, wait: &mut Wait<'_>) -> Result<(bool, Acquired)> {
        let lock = self.lock_state();
        if !lock.held_by_me() {
            return Err(Error::NotOwner);
        }
        let seq = self.word(SEQ_AT);
        let sleepers = self.word(SLEEPERS_AT);
        let start = seq.load(Ordering::Acquire);
        sleepers.fetch_add(1, Ordering::Relaxed);
        let depth = match lock.release_all() {
            Ok(d) => d,
            Err(e) => {
                sleepers.fetch_sub(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut outcome = Ok(false);
        loop {
            if seq.load(Ordering::Acquire) != start {
                outcome = Ok(true);
                break;
            }
            match wait.sleep(seq, start) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        sleepers.fetch_sub(1, Ordering::Relaxed);
        let acquired = lock.restore(depth)?;
        Ok((outcome?, acquired))
    }

    /// Waits as long as it takes (see [`wait_with`](Self::wait_with)).
    pub fn wait(&self) -> Result<Acquired> {
        Ok(self.wait_with(&mut Wait::forever())?.1)
    }

    /// Waits at most `timeout` (see [`wait_with`](Self::wait_with)).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(bool, Acquired)> {
        self.wait_with(&mut Wait::timeout(timeout))
    }

    /// Wakes up to `n` waiters (perhaps more). The caller must hold the
    /// lock ([`Error::NotOwner`]).
    pub fn notify(&self, n: u32) -> Result<()> {
        if !self.lock_state().held_by_me() {
            return Err(Error::NotOwner);
        }
        let seq = self.word(SEQ_AT);
        seq.fetch_add(1, Ordering::Release);
        if self.word(SLEEPERS_AT).load(Ordering::Relaxed) > 0 && n > 0 {
            futex::wake(seq, n);
        }
        Ok(())
    }

    /// Wakes every waiter. The caller must hold the lock.
    pub fn notify_all(&self) -> Result<()> {
        self.notify(u32::MAX)
    }

    /// How many waiters it counts (a dead waiter stays counted).
    pub fn sleepers(&self) -> u32 {
        self.word(SLEEPERS_AT).load(Ordering::Relaxed)
    }
}
