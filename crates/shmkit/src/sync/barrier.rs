//! [`Barrier`]: parties, arrivals, generation and a broken flag, guarded by
//! a robust mutex; a futex sequence number that every change advances; and
//! presence slots, one robust mutex per registered thread, through which
//! the death of a party shows.
//!
//! State (`BARRIER_SIZE` bytes, 8-aligned):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 72 | the lock guarding the fields below |
//! | 72 | 4 | parties |
//! | 76 | 4 | arrived in this generation |
//! | 80 | 4 | generation (advances when the barrier passes) |
//! | 84 | 4 | broken (1) or not (0) |
//! | 88 | 4 | resets (advances at each `reset`) |
//! | 92 | 4 | sequence number (futex word; advances at every change) |
//! | 96 | 72 × [`SLOTS`] | presence slots: a robust mutex, then the generation its thread last arrived in |
//!
//! A thread takes a free slot at its first wait and holds its mutex until
//! it drops the handle. When it dies the kernel marks the mutex
//! `OWNER_DIED`. Waiters look at the slots between sleeps: a dead party
//! that has not arrived in the current generation can never arrive, so
//! the barrier breaks; one that died after arriving is harmless until the
//! barrier passes, then it breaks the next generation if anyone waits in
//! it. Beyond [`SLOTS`] threads, a party waits unregistered and its death
//! goes unnoticed (the others then wait for it until their timeout).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::handle::Handle;
use super::lock::{LockState, LOCK_SIZE};
use super::wait::Wait;
use crate::object::Kind;
use crate::sys::futex::{self, tid};
use crate::sys::robust_mutex::{Locked, RobustMutex, OWNER_DIED, TID_MASK};
use crate::{Error, Options, Region, Result};

const PARTIES_AT: usize = 72;
const _: () = assert!(LOCK_SIZE <= PARTIES_AT);
const COUNT_AT: usize = 76;
const GENERATION_AT: usize = 80;
const BROKEN_AT: usize = 84;
const RESETS_AT: usize = 88;
const SEQ_AT: usize = 92;
const SLOTS_AT: usize = 96;
const SLOT_SIZE: usize = 72;
const SLOT_ARRIVED_AT: usize = 64;
/// How many threads a barrier watches for death.
pub const SLOTS: usize = 32;
/// Bytes a barrier takes in a region (8-aligned).
pub const BARRIER_SIZE: usize = SLOTS_AT + SLOTS * SLOT_SIZE;

const MUTEX_OFFSETS: [usize; SLOTS + 1] = {
    let mut out = [0; SLOTS + 1];
    let mut i = 0;
    while i < SLOTS {
        out[i + 1] = SLOTS_AT + i * SLOT_SIZE;
        i += 1;
    }
    out
};

/// A barrier for a fixed number of parties that processes share by name
/// (as `multiprocessing.Barrier`). A party that dies breaks it for the
/// others (see the module's layout notes for exactly when), and a wait
/// that times out breaks it too, as in Python.
///
/// ```
/// use shmkit::sync::Barrier;
///
/// let barrier = Barrier::create(2)?;
/// let other = Barrier::open(barrier.name().unwrap())?;
/// let mut indices = std::thread::scope(|s| {
///     let t = s.spawn(|| other.wait().unwrap());
///     let mine = barrier.wait().unwrap();
///     vec![mine, t.join().unwrap()]
/// });
/// indices.sort();
/// assert_eq!(indices, [0, 1]);
/// barrier.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct Barrier<'r> {
    handle: Handle<'r>,
}

fn init(parties: u32) -> impl FnOnce(&Region, usize) -> Result<()> {
    move |region, at| {
        if parties == 0 {
            return Err(Error::InvalidFlags("a barrier needs at least one party"));
        }
        LockState::init(region, at)?;
        for (off, value) in [
            (PARTIES_AT, parties),
            (COUNT_AT, 0),
            (GENERATION_AT, 0),
            (BROKEN_AT, 0),
            (RESETS_AT, 0),
            (SEQ_AT, 0),
        ] {
            region.atomic_u32(at + off)?.store(value, Ordering::Relaxed);
        }
        for i in 0..SLOTS {
            let slot = at + SLOTS_AT + i * SLOT_SIZE;
            RobustMutex::at(region, slot)
                .ok_or_else(|| Error::OutOfBounds {
                    offset: slot,
                    len: SLOT_SIZE,
                    size: region.len(),
                })?
                .init()
                .map_err(|e| Error::Io {
                    op: "pthread_mutex_init",
                    name: String::new(),
                    source: std::io::Error::from_raw_os_error(e.raw_os_error()),
                })?;
            region
                .atomic_u32(slot + SLOT_ARRIVED_AT)?
                .store(u32::MAX, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Barrier<'static> {
    /// Creates one for `parties` under a fresh `psm_` name.
    pub fn create(parties: u32) -> Result<Self> {
        Self::create_with(&Options::new(), None, parties)
    }

    /// Creates one for `parties` called `name`.
    pub fn create_named(name: &str, parties: u32) -> Result<Self> {
        Self::create_with(&Options::new(), Some(name), parties)
    }

    /// Creates one with `options`, under `name` or a fresh one.
    pub fn create_with(options: &Options, name: Option<&str>, parties: u32) -> Result<Self> {
        let handle = Handle::create(
            options,
            name,
            Kind::Barrier,
            BARRIER_SIZE,
            &MUTEX_OFFSETS,
            init(parties),
        )?;
        Ok(Barrier { handle })
    }

    /// Attaches to the one called `name`.
    pub fn open(name: &str) -> Result<Self> {
        Self::open_with(&Options::new(), name)
    }

    /// Attaches to the one called `name` with `options` (`track`).
    pub fn open_with(options: &Options, name: &str) -> Result<Self> {
        let handle = Handle::open(options, name, Kind::Barrier, BARRIER_SIZE, &MUTEX_OFFSETS)?;
        Ok(Barrier { handle })
    }
}

impl<'r> Barrier<'r> {
    /// Makes a fresh one for `parties` in the [`BARRIER_SIZE`] bytes at
    /// `at` (a multiple of 8) of `region`.
    pub fn init_at(region: &'r Region, at: usize, parties: u32) -> Result<Self> {
        let handle = Handle::borrowed(region, at, BARRIER_SIZE, &MUTEX_OFFSETS)?;
        init(parties)(region, at)?;
        Ok(Barrier { handle })
    }

    /// Uses the one made at `at` of `region`.
    pub fn at(region: &'r Region, at: usize) -> Result<Self> {
        let handle = Handle::borrowed(region, at, BARRIER_SIZE, &MUTEX_OFFSETS)?;
        Ok(Barrier { handle })
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

    fn word(&self, at: usize) -> &AtomicU32 {
        self.handle
            .region()
            .atomic_u32(self.handle.at() + at)
            .expect("checked when the handle was made")
    }

    fn guard(&self) -> LockState<'_> {
        LockState::new(self.handle.region(), self.handle.at(), false)
            .expect("checked when the handle was made")
    }

    fn slot(&self, i: usize) -> RobustMutex<'_> {
        RobustMutex::at(
            self.handle.region(),
            self.handle.at() + SLOTS_AT + i * SLOT_SIZE,
        )
        .expect("checked when the handle was made")
    }

    fn slot_arrived(&self, i: usize) -> &AtomicU32 {
        self.word(SLOTS_AT + i * SLOT_SIZE + SLOT_ARRIVED_AT)
    }

    /// Takes the state lock; a holder that died mid-change leaves the
    /// state suspect, so the barrier breaks.
    fn lock(&self) -> Result<LockState<'_>> {
        let guard = self.guard();
        let got = guard
            .acquire(&mut Wait::forever())?
            .expect("a wait without deadline only ends holding the lock");
        if got == super::Acquired::OwnerDied {
            self.word(BROKEN_AT).store(1, Ordering::Relaxed);
            guard.mark_repaired();
        }
        Ok(guard)
    }

    fn changed(&self) {
        let seq = self.word(SEQ_AT);
        seq.fetch_add(1, Ordering::Release);
        futex::wake(seq, u32::MAX);
    }

    /// This thread's slot, taking a free one if it has none.
    fn register(&self) -> Option<usize> {
        let me = tid();
        let mut free = None;
        for i in 0..SLOTS {
            let w = self.slot(i).word().load(Ordering::Relaxed);
            if w & TID_MASK == me {
                return Some(i);
            }
            if w == 0 && free.is_none() {
                free = Some(i);
            }
        }
        let start = free?;
        (start..SLOTS).find(|&i| {
            let slot = self.slot(i);
            slot.word().load(Ordering::Relaxed) == 0
                && match slot.try_lock() {
                    Ok(Locked::Clean) => true,
                    // A death between the look and the lock: leave the mark.
                    Ok(Locked::OwnerDied) => {
                        let _ = slot.unlock();
                        false
                    }
                    Err(_) => false,
                }
        })
    }

    /// Whether a registered party died and can no longer arrive in
    /// `generation`; frees its slot.
    fn party_died(&self, generation: u32) -> bool {
        let mut died = false;
        for i in 0..SLOTS {
            let slot = self.slot(i);
            if slot.word().load(Ordering::Relaxed) & OWNER_DIED == 0 {
                continue;
            }
            if self.slot_arrived(i).load(Ordering::Relaxed) == generation {
                // It arrived before it died: harmless until the barrier passes.
                continue;
            }
            if let Ok(Locked::OwnerDied) = slot.try_lock() {
                self.slot_arrived(i).store(u32::MAX, Ordering::Relaxed);
                let _ = slot.unlock();
                died = true;
            }
        }
        died
    }

    fn break_it(&self) -> Result<()> {
        let guard = self.lock()?;
        self.word(BROKEN_AT).store(1, Ordering::Relaxed);
        guard.release()?;
        self.changed();
        Ok(())
    }

    /// How many parties it waits for.
    pub fn parties(&self) -> u32 {
        self.word(PARTIES_AT).load(Ordering::Relaxed)
    }

    /// How many parties wait now.
    pub fn n_waiting(&self) -> u32 {
        self.word(COUNT_AT).load(Ordering::Relaxed)
    }

    /// Whether it is broken.
    pub fn is_broken(&self) -> bool {
        self.word(BROKEN_AT).load(Ordering::Acquire) != 0
    }

    /// Waits for every party: this party's arrival index (0 for the first,
    /// `parties - 1` for the last), or [`Error::BrokenBarrier`].
    pub fn wait(&self) -> Result<u32> {
        self.wait_with(&mut Wait::forever())
    }

    /// Waits at most `timeout`; a timeout breaks the barrier.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_with(&mut Wait::timeout(timeout))
    }

    /// Waits within `wait`'s limits; running out of time or being
    /// interrupted breaks the barrier (so that no other party waits for
    /// this one forever).
    pub fn wait_with(&self, wait: &mut Wait<'_>) -> Result<u32> {
        let slot = self.register();
        let guard = self.lock()?;
        let generation = self.word(GENERATION_AT).load(Ordering::Relaxed);
        let resets = self.word(RESETS_AT).load(Ordering::Relaxed);
        if self.is_broken() || self.party_died(generation) {
            self.word(BROKEN_AT).store(1, Ordering::Relaxed);
            guard.release()?;
            self.changed();
            return Err(Error::BrokenBarrier);
        }
        let parties = self.parties();
        let count = self.word(COUNT_AT);
        let index = count.load(Ordering::Relaxed);
        if let Some(i) = slot {
            self.slot_arrived(i).store(generation, Ordering::Relaxed);
        }
        if index + 1 >= parties {
            count.store(0, Ordering::Relaxed);
            self.word(GENERATION_AT)
                .store(generation.wrapping_add(1), Ordering::Relaxed);
            guard.release()?;
            self.changed();
            return Ok(index);
        }
        count.store(index + 1, Ordering::Relaxed);
        let seq = self.word(SEQ_AT);
        let mut seen = seq.load(Ordering::Acquire);
        guard.release()?;
        loop {
            if self.word(RESETS_AT).load(Ordering::Acquire) != resets {
                return Err(Error::BrokenBarrier);
            }
            if self.word(GENERATION_AT).load(Ordering::Acquire) != generation {
                return Ok(index);
            }
            if self.is_broken() {
                return Err(Error::BrokenBarrier);
            }
            if self.party_died(generation) {
                self.break_it()?;
                return Err(Error::BrokenBarrier);
            }
            match wait.sleep(seq, seen) {
                Ok(true) => seen = seq.load(Ordering::Acquire),
                Ok(false) => {
                    // One last look: a pass that came with the deadline counts.
                    if self.word(GENERATION_AT).load(Ordering::Acquire) != generation
                        && self.word(RESETS_AT).load(Ordering::Acquire) == resets
                    {
                        return Ok(index);
                    }
                    self.break_it()?;
                    return Err(Error::BrokenBarrier);
                }
                Err(e) => {
                    self.break_it()?;
                    return Err(e);
                }
            }
        }
    }

    /// Breaks it: every waiter, now and later, gets
    /// [`Error::BrokenBarrier`] until [`reset`](Self::reset).
    pub fn abort(&self) -> Result<()> {
        self.break_it()
    }

    /// Returns it to the empty, unbroken state; parties waiting now get
    /// [`Error::BrokenBarrier`]. Frees the slots of dead parties.
    pub fn reset(&self) -> Result<()> {
        let guard = self.lock()?;
        for i in 0..SLOTS {
            let slot = self.slot(i);
            if slot.word().load(Ordering::Relaxed) & OWNER_DIED != 0 {
                if let Ok(Locked::OwnerDied) = slot.try_lock() {
                    let _ = slot.unlock();
                }
            }
            self.slot_arrived(i).store(u32::MAX, Ordering::Relaxed);
        }
        self.word(COUNT_AT).store(0, Ordering::Relaxed);
        self.word(BROKEN_AT).store(0, Ordering::Relaxed);
        self.word(RESETS_AT).fetch_add(1, Ordering::Release);
        guard.release()?;
        self.changed();
        Ok(())
    }
}

impl Drop for Barrier<'_> {
    fn drop(&mut self) {
        // Leave: the slot this thread holds is given up, so that its end
        // is not taken for a death. Another thread's slot stays, and with
        // it (see `Handle`) the mapping.
        let me = tid();
        for i in 0..SLOTS {
            let slot = self.slot(i);
            if slot.word().load(Ordering::Relaxed) & TID_MASK == me {
                self.slot_arrived(i).store(u32::MAX, Ordering::Relaxed);
                let _ = slot.unlock();
            }
        }
    }
}
