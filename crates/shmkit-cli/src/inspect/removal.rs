//! Removing segments: only those nobody uses, or (as `rm -f`) even those in
//! use, but never a new segment that took an old one's name meanwhile.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd};

use shmkit::usage::{self, Processes, ReadOnly, Usage, Users};
use shmkit::{Error, Result};

/// What [`remove`] did with one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Unlinked.
    Removed,
    /// Left alone: in use by these processes (possibly none that can be
    /// named, when only a lock shows the use).
    InUse(Users),
    /// Left alone: nobody was seen using it, but these processes could not
    /// be inspected.
    Unknown {
        /// The pids whose descriptors were unreadable.
        unreadable: Vec<u32>,
    },
    /// Left alone: the name came to refer to another file while it was
    /// being checked.
    Replaced,
    /// Unlinked although these processes still used it (only
    /// [`remove_in_use`] does this): they keep the memory they map or hold
    /// open until they let go of it; only the name is gone.
    RemovedInUse(Users),
}

/// Removes the segments `names`, each only if no live process uses it.
///
/// For each name, on a fresh read-only descriptor: take `flock(LOCK_EX |
/// LOCK_NB)` (failing means some open file holds a lock on it: in use),
/// then, while holding it, look in `/proc` for anyone mapping it or holding
/// it open, check that the name still refers to the file that was locked,
/// and only then unlink it. Whoever opens the segment after that look gets
/// the unlinked file, as with any unlink.
///
/// Each result is in the order of `names`: an error for a bad, missing or
/// forbidden name, else what was done.
///
/// ```
/// use shmkit::SharedMemory;
/// use shmkit_cli::inspect::{self, Removal};
/// let shm = SharedMemory::create(8)?;
/// // This process still uses it: refused.
/// let refused = inspect::remove(&[shm.name()]);
/// assert!(matches!(refused[0], Ok(Removal::InUse(_))));
/// let name = shm.name().to_owned();
/// drop(shm);
/// assert!(matches!(inspect::remove(&[name.as_str()])[0], Ok(Removal::Removed)));
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn remove(names: &[&str]) -> Vec<Result<Removal>> {
    // Bounded batches, so as many descriptors are never open at once.
    names
        .chunks(256)
        .flat_map(|batch| remove_batch(batch, false))
        .collect()
}

/// Removes the segments `names` even while processes use them, as `rm` does
/// a file in use: the name goes at once, and whoever maps or holds a segment
/// keeps its memory until they let go. Each result says who still used it
/// ([`Removal::RemovedInUse`]), as far as this process can see (other users'
/// processes need root), or [`Removal::Removed`] when nobody was seen.
///
/// Each name is opened and looked up in `/proc` first, and unlinked only if
/// it still refers to that file ([`Removal::Replaced`] otherwise), so a
/// segment made under the same name meanwhile is left alone. No lock is
/// taken: a shmkit process attaching at that moment keeps its mark.
///
/// ```
/// use shmkit::SharedMemory;
/// use shmkit_cli::inspect::{self, Removal};
/// let shm = SharedMemory::create(8)?;
/// shm.write_at(0, b"kept")?;
/// let removed = inspect::remove_in_use(&[shm.name()]);
/// let Ok(Removal::RemovedInUse(users)) = &removed[0] else { panic!("{removed:?}") };
/// assert!(users.pids().contains(&std::process::id()));
/// assert!(!shmkit::exists(shm.name()));
/// assert_eq!(shm.read_vec(0, 4)?, b"kept"); // the memory stays ours
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn remove_in_use(names: &[&str]) -> Vec<Result<Removal>> {
    names
        .chunks(256)
        .flat_map(|batch| remove_batch(batch, true))
        .collect()
}

enum Held {
    Locked(ReadOnly),
    Busy(ReadOnly),
}

fn remove_batch(names: &[&str], force: bool) -> Vec<Result<Removal>> {
    let opened: Vec<Result<Held>> = names
        .iter()
        .map(|name| {
            let file = ReadOnly::open(name)?;
            if force {
                // Unlinked whoever uses it: no lock to take, and so none
                // to take from a shmkit process attaching now.
                return Ok(Held::Busy(file));
            }
            Ok(if file.try_lock_exclusive() {
                Held::Locked(file)
            } else {
                Held::Busy(file)
            })
        })
        .collect();
    let mut keys = HashSet::new();
    let mut locked = HashSet::new();
    let mut own_fds = Vec::new();
    for held in opened.iter().flatten() {
        let file = match held {
            Held::Locked(f) => {
                locked.insert(f.info().key);
                f
            }
            Held::Busy(f) => f,
        };
        keys.insert(file.info().key);
        own_fds.push(file.as_fd().as_raw_fd());
    }
    // Taking the same file twice (two spellings of one name) would make the
    // second lock fail: that one then reads as busy, with no user; the first
    // decides.
    let procs = Processes::scan_excluding(&keys, &own_fds, &locked);
    opened
        .into_iter()
        .map(|held| match held? {
            Held::Busy(file) if force => {
                let users = procs.users_of(&file.info().key);
                match unlink_if_same(&file)? {
                    Removal::Removed if !users.is_empty() => Ok(Removal::RemovedInUse(users)),
                    other => Ok(other),
                }
            }
            Held::Busy(file) => Ok(Removal::InUse(procs.users_of(&file.info().key))),
            Held::Locked(file) => {
                let key = file.info().key;
                match procs.usage_of(&key) {
                    Usage::InUse => Ok(Removal::InUse(procs.users_of(&key))),
                    Usage::Unknown => Ok(Removal::Unknown {
                        unreadable: procs.unreadable().to_vec(),
                    }),
                    Usage::Leaked => unlink_if_same(&file),
                }
            }
        })
        .collect()
}

fn unlink_if_same(file: &ReadOnly) -> Result<Removal> {
    let name = &file.info().name;
    match usage::segment(name) {
        Ok(now) if now.key == file.info().key => {}
        Ok(_) => return Ok(Removal::Replaced),
        Err(e @ Error::NotFound { .. }) => return Err(e),
        // Something else, not a segment, took the name.
        Err(_) if shmkit::exists(name) => return Ok(Removal::Replaced),
        Err(e) => return Err(e),
    }
    shmkit::unlink(name)?;
    Ok(Removal::Removed)
}
