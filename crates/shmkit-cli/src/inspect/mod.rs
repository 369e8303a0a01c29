//! Looking at the segments on this machine without disturbing them, and
//! removing the ones nobody uses: what `shmkit ls`, `show`, `rm` and `gc`
//! are made of.
//!
//! Who uses a segment is the core's to judge ([`shmkit::usage`], which the
//! manager's clean-up shares); this module lists every segment
//! ([`segments`]), decodes and removes on top of it, through the same read-only descriptors: nothing here maps a
//! segment, keeps a lock or registers with a leak tracker.

use std::collections::HashMap;

mod contents;
mod listing;
mod removal;

pub use contents::{contents, read, read_list, Contents, ListCopy, ListItem, MAX_LIST_METADATA};
pub use listing::segments;
pub use removal::{remove, remove_in_use, Removal};

/// The leak trackers' view: which shmkit processes track each segment name
/// (from [`shmkit::tracker::registered`]). The trackers of processes this one
/// may not inspect (other users', without root) are missing.
///
/// Only shmkit's trackers can be read: CPython's resource tracker keeps its
/// names in its own private memory, so a segment tracked by the stdlib is
/// never reported as tracked.
///
/// ```
/// let shm = shmkit::SharedMemory::options().track(true).create(64)?;
/// let pid = std::process::id() as i32;
/// assert!(shmkit_cli::inspect::tracked()[shm.name()].contains(&pid));
/// shm.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn tracked() -> HashMap<String, Vec<i32>> {
    let mut by_name: HashMap<String, Vec<i32>> = HashMap::new();
    for registration in shmkit::tracker::registered() {
        for name in registration.names {
            let pids = by_name.entry(name).or_default();
            if !pids.contains(&registration.pid) {
                pids.push(registration.pid);
            }
        }
    }
    for pids in by_name.values_mut() {
        pids.sort_unstable();
    }
    by_name
}
