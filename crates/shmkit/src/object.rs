//! The header that marks a segment as one of shmkit's typed objects (a lock,
//! a queue, an array…), so that whoever attaches by name, in Rust or Python,
//! and the `shmkit` command can tell what the segment holds.
//!
//! The first [`HEADER_SIZE`] bytes of such a segment are:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | [`MAGIC`], stored last, with release ordering |
//! | 8 | 4 | the [`Kind`] (little-endian `u32`) |
//! | 12 | 4 | the kind's layout version |
//! | 16 | 48 | the kind's own use |
//!
//! The object's state follows at [`HEADER_SIZE`] (64, so a cache line
//! apart and aligned for any atomic). A creator writes its state, then
//! [`publish`]es the header; [`read`] waits a short while for a creator
//! that is still initialising, and reports a segment whose creator died
//! before publishing as not an object at all. The magic cannot begin a
//! ShareableList (its first word would claim more items than any segment
//! holds), nor a numpy buffer a user wrote by hand in practice.
//!
//! ```
//! use shmkit::object::{self, Kind};
//! use shmkit::SharedMemory;
//!
//! let shm = SharedMemory::create(4096)?;
//! assert_eq!(object::peek(shm.region()), None);
//! object::publish(shm.region(), Kind::Event, 1)?;
//! assert_eq!(object::peek(shm.region()), Some((Kind::Event, 1)));
//! # shm.unlink()?;
//! # Ok::<(), shmkit::Error>(())
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::{Error, Region, Result};

/// `\x7fSHMKOBJ` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"\x7fSHMKOBJ");
/// Bytes of the header; an object's state starts here.
pub const HEADER_SIZE: usize = 64;
const KIND_AT: usize = 8;
const VERSION_AT: usize = 12;
/// How long [`read`] waits for a creator to publish.
const PUBLISH_WAIT: Duration = Duration::from_millis(500);

/// What a typed segment holds. The numbers are part of the layout: never
/// reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A robust mutex.
    Lock,
    /// A robust mutex its owner may take again.
    RLock,
    /// A counting semaphore.
    Semaphore,
    /// A semaphore that refuses to rise above its start value.
    BoundedSemaphore,
    /// A flag processes wait on.
    Event,
    /// A condition variable with its lock.
    Condition,
    /// A barrier for a fixed number of parties.
    Barrier,
    /// A queue of messages.
    Queue,
    /// A typed n-dimensional array.
    Array,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Lock,
        Kind::RLock,
        Kind::Semaphore,
        Kind::BoundedSemaphore,
        Kind::Event,
        Kind::Condition,
        Kind::Barrier,
        Kind::Queue,
        Kind::Array,
    ];

    /// The number stored in the header.
    pub fn code(self) -> u32 {
        match self {
            Kind::Lock => 1,
            Kind::RLock => 2,
            Kind::Semaphore => 3,
            Kind::BoundedSemaphore => 4,
            Kind::Event => 5,
            Kind::Condition => 6,
            Kind::Barrier => 7,
            Kind::Queue => 16,
            Kind::Array => 32,
        }
    }

    /// The kind stored as `code`, if any.
    pub fn from_code(code: u32) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The kind's name as `shmkit ls` prints it and Python spells it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::RLock => "rlock",
            Kind::Semaphore => "semaphore",
            Kind::BoundedSemaphore => "bounded_semaphore",
            Kind::Event => "event",
            Kind::Condition => "condition",
            Kind::Barrier => "barrier",
            Kind::Queue => "queue",
            Kind::Array => "array",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Writes the header of a freshly initialised object: kind and version
/// first, the magic last, so that a reader that sees the magic sees the
/// whole header and (by release ordering) the state written before.
pub fn publish(region: &Region, kind: Kind, version: u32) -> Result<()> {
    if region.len() < HEADER_SIZE {
        return Err(Error::OutOfBounds {
            offset: 0,
            len: HEADER_SIZE,
            size: region.len(),
        });
    }
    region
        .atomic_u32(KIND_AT)?
        .store(kind.code(), Ordering::Relaxed);
    region
        .atomic_u32(VERSION_AT)?
        .store(version, Ordering::Relaxed);
    region.atomic_u64(0)?.store(MAGIC, Ordering::Release);
    Ok(())
}

/// The kind and version of a published object, or `None` for any other
/// segment (including one whose creator has not published yet).
pub fn peek(region: &Region) -> Option<(Kind, u32)> {
    if region.len() < HEADER_SIZE {
        return None;
    }
    if region.atomic_u64(0).ok()?.load(Ordering::Acquire) != MAGIC {
        return None;
    }
    let kind = Kind::from_code(region.atomic_u32(KIND_AT).ok()?.load(Ordering::Relaxed))?;
    let version = region.atomic_u32(VERSION_AT).ok()?.load(Ordering::Relaxed);
    Some((kind, version))
}

/// The kind and version in a copy of a segment's first bytes (as the
/// `shmkit` command reads them, without mapping), or `None`.
pub fn parse(header: &[u8]) -> Option<(Kind, u32)> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(header.get(at..at + 4)?.try_into().ok()?))
    };
    if header.len() < HEADER_SIZE || header[..8] != MAGIC.to_le_bytes() {
        return None;
    }
    Some((Kind::from_code(word(KIND_AT)?)?, word(VERSION_AT)?))
}

/// The version of the `expected` object in `region` (of the segment
/// `name`), waiting briefly for a creator that has not published yet.
///
/// Fails with [`Error::WrongKind`] when the segment holds something else,
/// or nothing a creator ever finished.
pub fn read(region: &Region, name: &str, expected: Kind) -> Result<u32> {
    let deadline = Instant::now() + PUBLISH_WAIT;
    loop {
        if let Some((kind, version)) = peek(region) {
            if kind == expected {
                return Ok(version);
            }
            return Err(Error::WrongKind {
                name: name.to_owned(),
                expected: expected.name(),
                found: kind.name(),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::WrongKind {
                name: name.to_owned(),
                expected: expected.name(),
                found: "no shmkit object",
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedMemory;

    #[test]
    fn every_code_maps_back_to_its_kind() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(Kind::from_code(0), None);
    }

    #[test]
    fn a_plain_segment_is_no_object_and_read_says_so() {
        let shm = SharedMemory::create(4096).unwrap();
        let err = read(shm.region(), shm.name(), Kind::Lock).unwrap_err();
        assert!(err.to_string().contains("no shmkit object"), "{err}");
        publish(shm.region(), Kind::Queue, 3).unwrap();
        assert_eq!(read(shm.region(), shm.name(), Kind::Queue).unwrap(), 3);
        assert_eq!(
            parse(&shm.read_vec(0, HEADER_SIZE).unwrap()),
            Some((Kind::Queue, 3))
        );
        assert_eq!(parse(&shm.read_vec(0, 8).unwrap()), None);
        let err = read(shm.region(), shm.name(), Kind::Lock).unwrap_err();
        assert!(err.to_string().contains("holds a queue"), "{err}");
        shm.unlink().unwrap();
    }

    #[test]
    fn a_segment_smaller_than_the_header_is_refused() {
        let shm = SharedMemory::create(16).unwrap();
        assert!(publish(shm.region(), Kind::Lock, 1).is_err());
        assert_eq!(peek(shm.region()), None);
        shm.unlink().unwrap();
    }
}
