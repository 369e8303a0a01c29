//! What a copy of a primitive's segment says about its state, for the
//! `shmkit` command, which reads segments without mapping them: every
//! field is read from the bytes with a bounds check.

use crate::object::{self, Kind, HEADER_SIZE};
use crate::sys::robust_mutex::{OWNER_DIED, TID_MASK, WAITERS};

/// The state of a primitive, decoded from its segment's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// A [`Lock`](super::Lock) or [`RLock`](super::RLock).
    Lock {
        /// Its kind.
        kind: Kind,
        /// The holder's kernel thread id (not its process id), if held.
        owner_tid: Option<u32>,
        /// How many times the holder holds it (an RLock's depth).
        depth: u32,
        /// Whether threads sleep waiting for it.
        waiters: bool,
        /// Whether a holder died with it and nobody marked it repaired.
        owner_died: bool,
    },
    /// A [`Semaphore`](super::Semaphore) or
    /// [`BoundedSemaphore`](super::BoundedSemaphore).
    Semaphore {
        /// Its kind.
        kind: Kind,
        /// Its count.
        value: u32,
        /// Its bound (the largest count).
        bound: u32,
        /// Whether takers may sleep on it.
        waiters: bool,
    },
    /// An [`Event`](super::Event).
    Event {
        /// Whether it is set.
        set: bool,
        /// Whether threads may sleep waiting for it.
        waiters: bool,
    },
    /// Another kind of object: only its kind is known here.
    Other {
        /// The kind.
        kind: Kind,
        /// Its layout version.
        version: u32,
    },
}

fn word(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Decodes the state of the sync primitive whose segment begins with
/// `bytes` (a copy: 512 bytes are enough for every kind), or `None` when
/// they hold no shmkit object or are too short for its kind.
pub fn describe(bytes: &[u8]) -> Option<State> {
    let (kind, version) = object::parse(bytes)?;
    let s = HEADER_SIZE;
    if version != super::handle::VERSION {
        return Some(State::Other { kind, version });
    }
    Some(match kind {
        Kind::Lock | Kind::RLock => {
            let w = word(bytes, s)?;
            let tid = w & TID_MASK;
            State::Lock {
                kind,
                owner_tid: (tid != 0).then_some(tid),
                depth: word(bytes, s + super::lock::DEPTH_AT)?,
                waiters: w & WAITERS != 0,
                owner_died: word(bytes, s + super::lock::DIED_AT)? != 0 || w & OWNER_DIED != 0,
            }
        }
        Kind::Semaphore | Kind::BoundedSemaphore => {
            let w = word(bytes, s)?;
            State::Semaphore {
                kind,
                value: w & super::MAX_COUNT,
                bound: word(bytes, s + 4)? & super::MAX_COUNT,
                waiters: w & 0x8000_0000 != 0,
            }
        }
        Kind::Event => {
            let w = word(bytes, s)?;
            State::Event {
                set: w & 1 != 0,
                waiters: w & 0x8000_0000 != 0,
            }
        }
        kind => State::Other { kind, version },
    })
}
