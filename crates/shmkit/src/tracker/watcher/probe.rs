//! Judging one tracked segment, and unlinking it when nobody uses it: is
//! the file under the name still the slot's (inode, or birth time for an
//! intent), does any shmkit handle hold it (`flock`), does any open file
//! exist at all (a write lease), and if that cannot be told, whose
//! (`super::users`). Runs in the watcher after `fork`: stack only.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;

use crate::sys::{self, after_fork, FileStat};
use crate::tracker::{mark, Table, INTENT, VALID};

use super::users::{held_only_by_exiting, users_of, Key, Users};

/// Which file under a slot's name is the one the slot stands for.
#[derive(Clone, Copy)]
pub(super) enum Want {
    /// A registered segment: this inode (0: whatever is there).
    Ino(u64),
    /// An intent: a file born no earlier than this (ns), unless it is the
    /// inode `.1`, which a registration of the same name covers.
    BornSince(u64, u64),
}

/// What slot `i` of `table` stands for.
pub(super) fn want(table: &Table, i: usize) -> Want {
    if table.state(i).load(Ordering::Acquire) == INTENT {
        let name = table.name(i);
        let registered = table
            .used_slots()
            .find(|&j| table.state(j).load(Ordering::Acquire) == VALID && table.name_is(j, &name))
            .map_or(0, |j| table.ino(j));
        Want::BornSince(table.since(i), registered)
    } else {
        Want::Ino(table.ino(i))
    }
}

/// Whether a file with status `st` was born at `since` (ns) or later.
///
/// An intent is written before `shm_open(O_CREAT | O_EXCL)`, stamped with
/// the coarse real-time clock that tmpfs stamps a new file's birth with,
/// so the file that create makes is never born earlier than its intent. A
/// file born earlier existed before the create began: someone else's (the
/// create failed with EEXIST and its process died before dropping the
/// intent), never unlinked for it. A file born in the same clock tick just
/// before the intent cannot be told from ours; that needs someone else to
/// create the same name within the tick and our create to die before
/// dropping its intent, and the file is still unlinked only once nobody
/// uses it. Without a birth time (a filesystem that keeps none), the last
/// status change stands in: never earlier than the birth, so a file of
/// ours still passes, and only a recent change can make another's pass.
fn born_since(st: &FileStat, since: u64) -> bool {
    let (secs, nanos) = st.birth.unwrap_or(st.change);
    let ns = u64::try_from(secs)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(nanos));
    ns >= since
}

/// What [`probe`] found, and did.
pub(super) enum Probe {
    /// No such file: unlinked by someone else.
    Gone,
    /// A file that is not the slot's (see [`Want`]): left alone.
    Foreign,
    /// Nobody used it, and this probe unlinked it.
    Unlinked,
    /// Still used; `retry` when only exiting processes use it.
    InUse {
        /// Whether a later probe may find it free.
        retry: bool,
    },
}

/// Decides for one slot's segment, and unlinks it if nobody uses it.
///
/// `marked` is this watcher's marked descriptor of it, if any: the lease
/// below fails while this process has two open files of the segment.
/// Otherwise a fresh descriptor is opened, and marked too, so that another
/// watcher judging the same segment at the same moment does not count it
/// as a user.
///
/// The cheap checks come first: `flock(LOCK_EX | LOCK_NB)` fails if any
/// shmkit handle lives; then a write lease, which the kernel grants only
/// if no other open file of the segment exists anywhere (a descriptor or
/// a mapping, whoever holds it), so granted means unused. It needs the
/// file's owner or CAP_LEASE; where it is refused, or fails because some
/// open file exists, `/proc` is read to find out whose (`users_of`).
pub(super) fn probe(name: &[u8], want: Want, marked: Option<BorrowedFd<'_>>) -> Probe {
    let fresh;
    let fd = match marked {
        Some(fd) => fd,
        None => {
            let Some(fd) = after_fork::open_shm_bytes(name) else {
                return Probe::Gone;
            };
            fresh = fd;
            fresh.as_fd()
        }
    };
    let Ok(st) = sys::fd_stat(fd) else {
        return Probe::Gone;
    };
    if !st.regular {
        return Probe::Foreign;
    }
    let (major, minor, ino) = st.key;
    let ours = match want {
        Want::Ino(want) => want == 0 || want == ino,
        Want::BornSince(since, registered) => ino != registered && born_since(&st, since),
    };
    if !ours {
        return Probe::Foreign;
    }
    if marked.is_none() {
        mark::set_cleanup_mark(fd);
    }
    let key = Key { major, minor, ino };
    if sys::try_lock_exclusive(fd).is_err() {
        return Probe::InUse {
            retry: held_only_by_exiting(key),
        };
    }
    let leased = sys::set_lease(fd, true);
    let users = if leased {
        Users::None
    } else {
        users_of(key, st.uid, st.mode)
    };
    let outcome = match users {
        // Another watcher may have unlinked it meanwhile.
        Users::None if after_fork::unlink_if_same(name, fd) => Probe::Unlinked,
        Users::None => Probe::Gone,
        Users::Exiting => Probe::InUse { retry: true },
        Users::Unknown | Users::Live => Probe::InUse { retry: false },
    };
    if leased {
        sys::set_lease(fd, false);
    }
    // A marked descriptor stays open until the marks are dropped; its lock
    // must not turn away the shmkit handles attaching meanwhile.
    after_fork::unlock(fd);
    outcome
}
