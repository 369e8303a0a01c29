//! Who uses a segment: which processes map it, hold it open or lock it,
//! judged from `/proc` without disturbing anyone. The manager's clean-up
//! relies on it to spare what is still in use, and `shmkit ls`, `gc` and
//! `rm` (which list every segment, decode and remove on top of it) show it.
//!
//! # Looking without touching
//!
//! Everything here opens a segment read-only and copies bytes out with
//! `pread`: it never maps a segment, never takes or keeps a `flock` (but
//! in [`ReadOnly::try_lock_exclusive`], which a remover asks for), and
//! registers nothing with a leak tracker. So a shmkit process's `LOCK_SH`
//! mark, a tracker's `LOCK_EX | LOCK_NB` probe and the `/proc` entries of
//! the processes involved are the same with or without an onlooker.
//!
//! # Who uses a segment
//!
//! [`Processes::scan`] reads, for every process, `/proc/PID/maps` (its
//! mappings, matched by device and inode, so a renamed segment is still
//! found) and `/proc/PID/fd` (its open descriptors), and reads
//! `/proc/locks` once. Every shmkit handle holds `flock(LOCK_SH)` on its
//! segment; a lock lives exactly as long as some open file of the segment
//! does, so any lock on it proves it in use, whoever holds it. `/proc/locks`
//! is readable by everyone, which makes it the non-intrusive form of the
//! tracker's `LOCK_EX | LOCK_NB` probe: a probe that succeeds holds the
//! segment exclusively for a moment, and a shmkit process opening it at that
//! moment would lose its mark. Only a remover takes that lock, on purpose.
//! The kernel leaves out of `/proc/locks` a lock whose taker has exited
//! (a fork child that inherited the descriptor still holds it: its
//! descriptor shows the use) or lives in another pid namespace (a container
//! sharing this `/dev/shm`: invisible here, but a remover's lock sees it).
//!
//! Without root, the maps and descriptors of other users' processes cannot
//! be read. A segment with no user in sight and no lock is then
//! [`Usage::Unknown`]: "no user found" is not "no user".
//!
//! Even root may be unable to read the maps of a process that belongs to an
//! outer user namespace (a container's own init, for one) while its
//! descriptors are readable. Such a process is judged by its descriptors
//! and locks alone, and listed by [`Processes::maps_unreadable`]: CPython and
//! shmkit keep a descriptor for as long as they map a segment, so only a
//! program that maps a segment and then closes its descriptor would go
//! unseen there.
//!
//! The `/proc` formats are parsed here by hand: three line formats, of which
//! only the fields that identify a file are needed, are less code than the
//! `procfs` crate's dependencies.
//!
//! ```
//! use shmkit::{usage, SharedMemory};
//!
//! let shm = SharedMemory::create(64)?;
//! let seg = usage::segment(shm.name())?;
//! assert_eq!(seg.size, 64);
//! let procs = usage::Processes::scan([&seg]);
//! // This process maps it and holds a descriptor on it.
//! assert!(procs.users(&seg).pids().contains(&std::process::id()));
//! assert_eq!(procs.usage(&seg), usage::Usage::InUse);
//! shm.unlink()?;
//! # Ok::<(), shmkit::Error>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::name;
use crate::sys::{self, FileStat};

/// A file's identity as `/proc/*/maps` and `/proc/locks` spell it: the
/// device's major and minor numbers, and the inode. A renamed segment keeps
/// it; a new segment under an old name does not.
pub type FileKey = (u32, u32, u64);

/// What `stat` says about one POSIX shared memory segment: a regular file
/// in `/dev/shm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The name, without a leading slash.
    pub name: String,
    /// The size in bytes.
    pub size: u64,
    /// The permission bits, e.g. `0o600`.
    pub mode: u32,
    /// The owner's user id.
    pub uid: u32,
    /// The owner's group id.
    pub gid: u32,
    /// When it was created (its birth time), or, on a filesystem that keeps
    /// none, when its status last changed (creation, `ftruncate`, `chmod`).
    pub created: SystemTime,
    /// Its file's identity, by which the scan finds its users.
    pub key: FileKey,
}

impl SegmentInfo {
    fn from_stat(name: String, st: &FileStat) -> SegmentInfo {
        let (secs, nanos) = st.birth.unwrap_or(st.change);
        let created = if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nanos)
        } else {
            UNIX_EPOCH
        };
        SegmentInfo {
            name,
            size: st.size,
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            created,
            key: st.key,
        }
    }

    /// How long ago it was [`created`](Self::created) (zero if the clock
    /// says it is in the future).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.created)
            .unwrap_or_default()
    }
}

fn not_a_segment(name: &str) -> Error {
    Error::Io {
        op: "inspect",
        name: name.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a shared memory segment (not a regular file)",
        ),
    }
}

/// The segment `name` (with or without its leading slash).
///
/// ```
/// use shmkit::{usage, Error};
/// assert!(matches!(usage::segment("never_made_here"), Err(Error::NotFound { .. })));
/// assert!(matches!(usage::segment("a/b"), Err(Error::InvalidName { .. })));
/// ```
pub fn segment(name: &str) -> Result<SegmentInfo> {
    let bare = name::validate(name)?;
    let st = sys::shm_stat(bare).map_err(|e| Error::from_errno("stat", bare, e))?;
    if !st.regular {
        return Err(not_a_segment(bare));
    }
    Ok(SegmentInfo::from_stat(bare.to_owned(), &st))
}

/// A file lock on a segment, as `/proc/locks` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The process that took it, if this pid namespace can see it. The lock
    /// outlives that process when a child inherited the descriptor.
    pub pid: Option<u32>,
    /// `FLOCK` (what shmkit handles hold), `POSIX`, `OFDLCK`, `LEASE`, …
    pub kind: String,
    /// `READ` (shared) or `WRITE` (exclusive).
    pub access: String,
}

/// The processes using one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    /// Processes that map it, by pid.
    pub mapped_by: Vec<u32>,
    /// Processes that hold a descriptor on it, by pid.
    pub open_by: Vec<u32>,
    /// The locks on it.
    pub locks: Vec<Lock>,
}

impl Users {
    /// Whether nothing was seen using the segment.
    pub fn is_empty(&self) -> bool {
        self.mapped_by.is_empty() && self.open_by.is_empty() && self.locks.is_empty()
    }

    /// Every live process seen using it, sorted: those that map it or hold
    /// it open, and the takers of its locks that are still alive.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .mapped_by
            .iter()
            .chain(&self.open_by)
            .copied()
            .chain(
                self.locks
                    .iter()
                    .filter_map(|l| l.pid)
                    .filter(|&p| sys::process_exists(p)),
            )
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// Whether a segment is still used, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A process maps it, holds it open, or holds a lock on it.
    InUse,
    /// Nothing uses it: every process that did is gone. Nobody will unlink
    /// it unless asked to.
    Leaked,
    /// No user was seen and it holds no lock, but some processes could not
    /// be inspected (run as root to see them all).
    Unknown,
}

/// Who uses which segment: one pass over `/proc`.
#[derive(Debug, Clone, Default)]
pub struct Processes {
    users: HashMap<FileKey, Users>,
    unreadable: Vec<u32>,
    maps_unreadable: Vec<u32>,
}

impl Processes {
    /// Finds the users of `segments` among every process of this pid
    /// namespace.
    pub fn scan<'a>(segments: impl IntoIterator<Item = &'a SegmentInfo>) -> Processes {
        let keys: HashSet<FileKey> = segments.into_iter().map(|s| s.key).collect();
        Self::scan_excluding(&keys, &[], &HashSet::new())
    }

    /// The scan of the files `keys`, leaving out this process's descriptors
    /// `own_fds` and the `flock`s on `locked_by_us` (files on which this
    /// process holds the only `flock`, exclusively): what a remover that
    /// holds them while it looks must not count as uses.
    pub fn scan_excluding(
        keys: &HashSet<FileKey>,
        own_fds: &[RawFd],
        locked_by_us: &HashSet<FileKey>,
    ) -> Processes {
        let mut found = Processes::default();
        if keys.is_empty() {
            return found;
        }
        if let Ok(text) = sys::proc_locks() {
            for line in text.split(|&b| b == b'\n') {
                let Some((key, lock)) = parse_lock_line(line) else {
                    continue;
                };
                if keys.contains(&key) && !(lock.kind == "FLOCK" && locked_by_us.contains(&key)) {
                    found.users.entry(key).or_default().locks.push(lock);
                }
            }
        }
        let me = sys::own_pid();
        for pid in sys::pids().unwrap_or_default() {
            let mut maps_readable = true;
            let mut fds_readable = true;
            match sys::proc_read(pid, "maps") {
                Ok(maps) => {
                    let mut seen = HashSet::new();
                    for line in maps.split(|&b| b == b'\n') {
                        if let Some(key) = parse_maps_key(line) {
                            if keys.contains(&key) && seen.insert(key) {
                                found.users.entry(key).or_default().mapped_by.push(pid);
                            }
                        }
                    }
                }
                Err(e) => maps_readable = gone(&e),
            }
            match sys::proc_fds(pid) {
                Ok(fds) => {
                    let mut seen = HashSet::new();
                    for (fd, target) in fds {
                        if !target.starts_with(b"/dev/shm/")
                            || (pid == me && own_fds.contains(&(fd as RawFd)))
                        {
                            continue;
                        }
                        if let Ok(key) = sys::proc_fd_key(pid, fd) {
                            if keys.contains(&key)
                                && !seen.contains(&key)
                                && !holds_cleanup_mark(pid, fd)
                            {
                                seen.insert(key);
                                found.users.entry(key).or_default().open_by.push(pid);
                            }
                        }
                    }
                }
                Err(e) => fds_readable = gone(&e),
            }
            let blind = !maps_readable || !fds_readable;
            if blind && !holds_nothing(pid) {
                if fds_readable {
                    found.maps_unreadable.push(pid);
                } else {
                    found.unreadable.push(pid);
                }
            }
        }
        found
    }

    /// The users of `segment` found by the scan.
    pub fn users(&self, segment: &SegmentInfo) -> Users {
        self.users_of(&segment.key)
    }

    /// The users of the file `key` found by the scan.
    pub fn users_of(&self, key: &FileKey) -> Users {
        self.users.get(key).cloned().unwrap_or_default()
    }

    /// The processes whose descriptors could not be read (other users'
    /// processes, without root): while there are any, no segment is called
    /// [`Usage::Leaked`].
    pub fn unreadable(&self) -> &[u32] {
        &self.unreadable
    }

    /// The processes whose descriptors were read but whose mappings could
    /// not be (see the [module docs](self)).
    pub fn maps_unreadable(&self) -> &[u32] {
        &self.maps_unreadable
    }

    /// Whether `segment` is in use, leaked, or cannot be told.
    pub fn usage(&self, segment: &SegmentInfo) -> Usage {
        self.usage_of(&segment.key)
    }

    /// Whether the file `key` is in use, leaked, or cannot be told.
    pub fn usage_of(&self, key: &FileKey) -> Usage {
        match self.users.get(key) {
            Some(u) if !u.is_empty() => Usage::InUse,
            _ if !self.unreadable.is_empty() => Usage::Unknown,
            _ => Usage::Leaked,
        }
    }
}

/// Whether a `/proc` read failed because the process is gone.
fn gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(Errno::SRCH.raw_os_error())
}

/// Whether `pid` can hold no segment at all: a kernel thread, a zombie, or
/// gone. `/proc/PID/stat` is readable by everyone.
fn holds_nothing(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(stat) = sys::proc_read(pid, "stat") else {
        return true;
    };
    // "pid (comm) state ppid pgrp session tty tpgid flags …"; comm may hold
    // spaces and parentheses, so fields are counted after the last ')'.
    let Some(end) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    let mut fields = stat[end + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let state = fields.next();
    let flags = fields
        .nth(5)
        .and_then(|f| std::str::from_utf8(f).ok()?.parse::<u64>().ok());
    matches!(state, Some(b"Z") | Some(b"X")) || flags.is_some_and(|f| f & PF_KTHREAD != 0)
}

/// Whether descriptor `fd` of `pid` is a leak tracker's watcher's marked
/// descriptor (its `fdinfo` lists the "cleanup pending" lock): the watcher
/// judging the segment, not a user of it. The watcher applies the same
/// rule, so that it and a manager's clean-up do not keep a segment for
/// each other.
fn holds_cleanup_mark(pid: u32, fd: u32) -> bool {
    let Ok(info) = sys::proc_read(pid, &format!("fdinfo/{fd}")) else {
        return false;
    };
    info.split(|&b| b == b'\n').any(|line| {
        line.strip_prefix(b"lock:").is_some_and(|lock| {
            let mut fields = lock
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|f| !f.is_empty());
            // "1: OFDLCK ADVISORY READ -1 00:1b:12 START END"
            fields.nth(6).and_then(parse_dec::<i64>)
                == Some(crate::tracker::mark::CLEANUP_MARK_START)
        })
    })
}

fn parse_hex_u32(s: &[u8]) -> Option<u32> {
    u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// `MAJOR:MINOR` in hex, as maps and locks print a device.
fn parse_dev(s: &[u8]) -> Option<(u32, u32)> {
    let colon = s.iter().position(|&b| b == b':')?;
    Some((parse_hex_u32(&s[..colon])?, parse_hex_u32(&s[colon + 1..])?))
}

fn parse_dec<T: std::str::FromStr>(s: &[u8]) -> Option<T> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The file a line of `/proc/PID/maps` maps:
/// `START-END PERMS OFFSET MAJOR:MINOR INODE [PATH]`; `None` for anonymous
/// memory (inode 0) and malformed lines.
fn parse_maps_key(line: &[u8]) -> Option<FileKey> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let (major, minor) = parse_dev(fields.nth(3)?)?;
    let ino: u64 = parse_dec(fields.next()?)?;
    (ino != 0).then_some((major, minor, ino))
}

/// A held lock in a line of `/proc/locks`:
/// `ID: KIND ADVISORY|MANDATORY|… READ|WRITE PID MAJOR:MINOR:INODE START END`.
/// Lines of waiters (`ID: -> …`) hold nothing and give `None`.
fn parse_lock_line(line: &[u8]) -> Option<(FileKey, Lock)> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let _id = fields.next()?;
    let kind = fields.next()?;
    if kind == b"->" {
        return None;
    }
    let _mode = fields.next()?;
    let access = fields.next()?;
    let pid: i64 = parse_dec(fields.next()?)?;
    let file = fields.next()?;
    let last = file.iter().rposition(|&b| b == b':')?;
    let (major, minor) = parse_dev(&file[..last])?;
    let ino: u64 = parse_dec(&file[last + 1..])?;
    // A leak tracker's "cleanup pending" mark says a watcher is judging the
    // segment, not that anyone uses it: counting it would keep alive the
    // very segments it is there to clean.
    if parse_dec::<i64>(fields.next()?) == Some(crate::tracker::mark::CLEANUP_MARK_START) {
        return None;
    }
    let lock = Lock {
        pid: u32::try_from(pid).ok().filter(|&p| p > 0),
        kind: String::from_utf8_lossy(kind).into_owned(),
        access: String::from_utf8_lossy(access).into_owned(),
    };
    Some(((major, minor, ino), lock))
}

/// A read-only descriptor on a segment, checked to be a regular file: how
/// to look at its bytes, or lock it for removal, without taking part.
#[derive(Debug)]
pub struct ReadOnly {
    fd: OwnedFd,
    info: SegmentInfo,
}

impl ReadOnly {
    /// Opens the segment `name` (with or without its leading slash)
    /// read-only, without following a symbolic link.
    pub fn open(name: &str) -> Result<ReadOnly> {
        let bare = name::validate(name)?;
        let fd = sys::shm_open_readonly(bare).map_err(|e| match e {
            // O_NOFOLLOW on a symbolic link.
            Errno::LOOP => not_a_segment(bare),
            e => Error::from_errno("open", bare, e),
        })?;
        let stat = sys::fd_stat(&fd).map_err(|e| Error::from_errno("stat", bare, e))?;
        if !stat.regular {
            return Err(not_a_segment(bare));
        }
        Ok(ReadOnly {
            fd,
            info: SegmentInfo::from_stat(bare.to_owned(), &stat),
        })
    }

    /// What `fstat` said when it was opened.
    pub fn info(&self) -> &SegmentInfo {
        &self.info
    }

    /// Reads up to `buf.len()` bytes at `offset` (`pread`): fewer at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        sys::read_at(&self.fd, offset, buf)
            .map_err(|e| Error::from_errno("read", &self.info.name, e))
    }

    /// `flock(LOCK_EX | LOCK_NB)`: true if taken, which proves that no other
    /// open file of the segment holds a lock. Held until this is dropped.
    pub fn try_lock_exclusive(&self) -> bool {
        sys::try_lock_exclusive(&self.fd).is_ok()
    }

    /// A private copy of `len` bytes at `offset`; fails if the file no
    /// longer has them.
    pub fn copy(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let got = self.read_at(offset as u64, &mut buf)?;
        if got < len {
            return Err(Error::OutOfBounds {
                offset,
                len,
                size: offset + got,
            });
        }
        Ok(buf)
    }
}

impl AsFd for ReadOnly {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn parses_maps_lines() {
        let line = b"7f3a1c000000-7f3a1c001000 rw-s 00000000 00:1b 2295756                    /dev/shm/psm_0bebf130 (deleted)";
        assert_eq!(parse_maps_key(line), Some((0, 0x1b, 2295756)));
        let anon =
            b"7ffd5e1c0000-7ffd5e1e1000 rw-p 00000000 00:00 0                          [stack]";
        assert_eq!(parse_maps_key(anon), None);
        assert_eq!(parse_maps_key(b""), None);
        assert_eq!(parse_maps_key(b"garbage line"), None);
        let big_minor = b"1000-2000 r--s 00000000 103:10f 42 /x";
        assert_eq!(parse_maps_key(big_minor), Some((0x103, 0x10f, 42)));
    }

    #[test]
    fn parses_lock_lines() {
        let (key, lock) =
            parse_lock_line(b"1: FLOCK  ADVISORY  READ  1234 00:1b:2295756 0 EOF").unwrap();
        assert_eq!(key, (0, 0x1b, 2295756));
        assert_eq!(lock.pid, Some(1234));
        assert_eq!(
            (lock.kind.as_str(), lock.access.as_str()),
            ("FLOCK", "READ")
        );
        let (_, ofd) = parse_lock_line(b"2: OFDLCK ADVISORY  WRITE -1 00:1b:7 0 EOF").unwrap();
        assert_eq!(ofd.pid, None);
        assert!(parse_lock_line(b"3: -> FLOCK  ADVISORY  WRITE 99 00:1b:7 0 EOF").is_none());
        let mark = b"5: OFDLCK ADVISORY  READ  -1 00:1b:7 9223372036854775806 9223372036854775806";
        assert!(parse_lock_line(mark).is_none(), "a cleanup mark is no use");
        assert!(parse_lock_line(b"").is_none());
        assert!(parse_lock_line(b"4: FLOCK ADVISORY READ x 00:1b:7 0 EOF").is_none());
    }

    #[test]
    fn a_watchers_marked_descriptor_is_no_use() {
        let shm = crate::SharedMemory::create(64).unwrap();
        let seg = segment(shm.name()).unwrap();
        let marked = sys::shm_open_readonly(shm.name()).unwrap();
        assert!(crate::tracker::mark::set_cleanup_mark(&marked));
        let me = sys::own_pid();
        let fd = marked.as_raw_fd() as u32;
        assert!(holds_cleanup_mark(me, fd));
        assert!(!holds_cleanup_mark(me, shm.as_raw_fd() as u32));
        // Our handle's descriptor is a use; the marked one is not.
        let keys: HashSet<FileKey> = [seg.key].into();
        let procs = Processes::scan_excluding(&keys, &[shm.as_raw_fd()], &HashSet::new());
        assert!(!procs.users(&seg).open_by.contains(&me));
        shm.unlink().unwrap();
    }

    #[test]
    fn a_kernel_thread_holds_nothing() {
        // pid 2 is kthreadd wherever this pid namespace is the host's.
        if let Ok(stat) = sys::proc_read(2, "stat") {
            if stat.starts_with(b"2 (kthreadd)") {
                assert!(holds_nothing(2));
            }
        }
        assert!(!holds_nothing(std::process::id()));
    }
}
