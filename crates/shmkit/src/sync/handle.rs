//! The memory a primitive lives in: a named segment of its own (created or
//! attached, with the [`object`] header in front), or a place a user chose
//! inside a region of theirs.

use crate::object::{self, Kind, HEADER_SIZE};
use crate::sys::robust_mutex::{RobustMutex, TID_MASK};
use crate::{Error, Options, Region, Result, SharedMemory};

/// The layout version every primitive writes today.
pub(crate) const VERSION: u32 = 1;

pub(crate) enum Mem<'r> {
    /// A segment of the primitive's own, state at [`HEADER_SIZE`].
    Owned(Option<SharedMemory>),
    /// A place in someone else's region.
    Borrowed(&'r Region),
}

/// A primitive's memory and where its state starts, plus where its robust
/// mutexes are (offsets from the state), so that dropping it never unmaps
/// a mutex this process holds.
pub(crate) struct Handle<'r> {
    mem: Mem<'r>,
    at: usize,
    mutexes: &'static [usize],
}

impl std::fmt::Debug for Handle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.name())
            .field("at", &self.at)
            .finish()
    }
}

/// Checks that `size` bytes at `at` fit in `region` and are 8-aligned.
pub(crate) fn check_place(region: &Region, at: usize, size: usize) -> Result<()> {
    if at % 8 != 0 {
        return Err(Error::Misaligned {
            offset: at,
            align: 8,
        });
    }
    match at.checked_add(size) {
        Some(end) if end <= region.len() => Ok(()),
        _ => Err(Error::OutOfBounds {
            offset: at,
            len: size,
            size: region.len(),
        }),
    }
}

impl<'r> Handle<'r> {
    /// A new segment for a `kind` whose state takes `size` bytes, initialised
    /// by `init(region, state_offset)` before the header is published.
    pub(crate) fn create(
        opts: &Options,
        name: Option<&str>,
        kind: Kind,
        size: usize,
        mutexes: &'static [usize],
        init: impl FnOnce(&Region, usize) -> Result<()>,
    ) -> Result<Handle<'static>> {
        let total = HEADER_SIZE + size;
        let shm = match name {
            Some(name) => opts.create_named(name, total)?,
            None => opts.create(total)?,
        };
        let made = init(shm.region(), HEADER_SIZE)
            .and_then(|()| object::publish(shm.region(), kind, VERSION));
        if let Err(e) = made {
            let _ = shm.unlink();
            return Err(e);
        }
        Ok(Handle {
            mem: Mem::Owned(Some(shm)),
            at: HEADER_SIZE,
            mutexes,
        })
    }

    /// Attaches to the `kind` named `name`, whose state takes `size` bytes.
    pub(crate) fn open(
        opts: &Options,
        name: &str,
        kind: Kind,
        size: usize,
        mutexes: &'static [usize],
    ) -> Result<Handle<'static>> {
        let shm = opts.open(name)?;
        let version = object::read(shm.region(), name, kind)?;
        let found = if version != VERSION {
            Some("version this shmkit cannot read")
        } else if shm.size() < HEADER_SIZE + size {
            Some("truncated segment")
        } else {
            None
        };
        if let Some(found) = found {
            return Err(Error::WrongKind {
                name: name.to_owned(),
                expected: kind.name(),
                found,
            });
        }
        Ok(Handle {
            mem: Mem::Owned(Some(shm)),
            at: HEADER_SIZE,
            mutexes,
        })
    }

    /// The state at `at` of `region`, checked to fit and be aligned.
    pub(crate) fn borrowed(
        region: &'r Region,
        at: usize,
        size: usize,
        mutexes: &'static [usize],
    ) -> Result<Handle<'r>> {
        check_place(region, at, size)?;
        Ok(Handle {
            mem: Mem::Borrowed(region),
            at,
            mutexes,
        })
    }

    pub(crate) fn region(&self) -> &Region {
        match &self.mem {
            Mem::Owned(shm) => shm.as_ref().expect("kept until dropped").region(),
            Mem::Borrowed(r) => r,
        }
    }

    /// Where the state starts in [`region`](Self::region).
    pub(crate) fn at(&self) -> usize {
        self.at
    }

    pub(crate) fn name(&self) -> Option<&str> {
        match &self.mem {
            Mem::Owned(shm) => shm.as_ref().map(|s| s.name()),
            Mem::Borrowed(_) => None,
        }
    }

    pub(crate) fn shared_memory(&self) -> Option<&SharedMemory> {
        match &self.mem {
            Mem::Owned(shm) => shm.as_ref(),
            Mem::Borrowed(_) => None,
        }
    }

    /// Removes the name (attached handles keep working).
    pub(crate) fn unlink(&self) -> Result<()> {
        match &self.mem {
            Mem::Owned(Some(shm)) => shm.unlink(),
            Mem::Owned(None) => Ok(()),
            Mem::Borrowed(_) => Err(Error::InvalidFlags(
                "a primitive placed in a region has no name of its own to unlink",
            )),
        }
    }

    /// Whether a thread of this process holds one of the mutexes.
    fn held_here(&self) -> bool {
        self.mutexes.iter().any(|&off| {
            RobustMutex::at(self.region(), self.at + off).is_some_and(|m| {
                let owner = m.word().load(std::sync::atomic::Ordering::Relaxed) & TID_MASK;
                crate::sys::futex::is_own_thread(owner)
            })
        })
    }
}

impl Drop for Handle<'_> {
    fn drop(&mut self) {
        if self.held_here() {
            if let Mem::Owned(shm) = &mut self.mem {
                // A mutex this process holds is linked into its thread's
                // robust list; unmapping it would leave the list pointing
                // at nothing (see `sys::robust_mutex`). The mapping stays
                // for the rest of the process.
                std::mem::forget(shm.take());
            }
        }
    }
}
