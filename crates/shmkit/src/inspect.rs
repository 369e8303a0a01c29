//! Looking at the segments on this machine without disturbing them, and
//! removing the ones nobody uses: what `shmkit ls`, `show`, `rm` and `gc`
//! are made of.
//!
//! # Looking without touching
//!
//! Inspection opens a segment read-only and copies bytes out with `pread`:
//! it never maps a segment, never takes or keeps a `flock`, and registers
//! nothing with a leak tracker. So a shmkit process's `LOCK_SH` mark, a
//! tracker's `LOCK_EX | LOCK_NB` probe and the `/proc` entries of the
//! processes involved are the same with or without an inspector.
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
//! moment would lose its mark. Only [`remove`] takes that lock, on purpose.
//! The kernel leaves out of `/proc/locks` a lock whose taker has exited
//! (a fork child that inherited the descriptor still holds it: its
//! descriptor shows the use) or lives in another pid namespace (a container
//! sharing this `/dev/shm`: invisible here, but [`remove`]'s lock sees it).
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
//! use shmkit::{inspect, SharedMemory};
//!
//! let shm = SharedMemory::create(64)?;
//! let all = inspect::segments()?;
//! let seg = all.iter().find(|s| s.name == shm.name()).unwrap();
//! assert_eq!(seg.size, 64);
//! let procs = inspect::Processes::scan(&all);
//! // This process maps it and holds a descriptor on it.
//! assert!(procs.users(seg).pids().contains(&std::process::id()));
//! assert_eq!(procs.usage(seg), inspect::Usage::InUse);
//! shm.unlink()?;
//! # Ok::<(), shmkit::Error>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::list::layout::Layout;
use crate::list::{ByteSource, ItemType, Value};
use crate::name;
use crate::sys::{self, FileKey, FileStat};

/// The most bytes of list metadata (header, offsets, formats, codes) that
/// recognising a ShareableList copies: lists of up to about 3.9 million
/// items. Larger segments are reported as [`Contents::Data`].
pub const MAX_LIST_METADATA: usize = 64 << 20;

/// One POSIX shared memory segment: a regular file in `/dev/shm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
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
    key: FileKey,
}

impl Segment {
    fn from_stat(name: String, st: &FileStat) -> Segment {
        let (secs, nanos) = st.birth.unwrap_or(st.change);
        let created = if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nanos)
        } else {
            UNIX_EPOCH
        };
        Segment {
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

/// Every segment in `/dev/shm`, sorted by name.
///
/// Only regular files count (not directories, FIFOs or symbolic links), and
/// only names that are UTF-8, as every name a segment API can open is.
pub fn segments() -> Result<Vec<Segment>> {
    let entries = sys::shm_entries().map_err(|source| Error::Io {
        op: "list",
        name: sys::SHM_DIR.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let Some(name) = entry.to_str() else { continue };
        if name::validate(name).is_err() {
            continue;
        }
        // Gone since the listing: not an error.
        if let Ok(st) = sys::shm_stat(name) {
            if st.regular {
                out.push(Segment::from_stat(name.to_owned(), &st));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The segment `name` (with or without its leading slash).
///
/// ```
/// use shmkit::{inspect, Error};
/// assert!(matches!(inspect::segment("never_made_here"), Err(Error::NotFound { .. })));
/// assert!(matches!(inspect::segment("a/b"), Err(Error::InvalidName { .. })));
/// ```
pub fn segment(name: &str) -> Result<Segment> {
    let bare = name::validate(name)?;
    let st = sys::shm_stat(bare).map_err(|e| Error::from_errno("stat", bare, e))?;
    if !st.regular {
        return Err(not_a_segment(bare));
    }
    Ok(Segment::from_stat(bare.to_owned(), &st))
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
    pub fn scan<'a>(segments: impl IntoIterator<Item = &'a Segment>) -> Processes {
        let keys: HashSet<FileKey> = segments.into_iter().map(|s| s.key).collect();
        Self::scan_keys(&keys, &[], &HashSet::new())
    }

    /// The scan, leaving out this process's descriptors `own_fds` and the
    /// `flock`s on `locked_by_us` (files on which this process holds the
    /// only `flock`, exclusively).
    fn scan_keys(
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
    pub fn users(&self, segment: &Segment) -> Users {
        self.users.get(&segment.key).cloned().unwrap_or_default()
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
    pub fn usage(&self, segment: &Segment) -> Usage {
        self.usage_of(&segment.key)
    }

    fn usage_of(&self, key: &FileKey) -> Usage {
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
            fields.nth(6).and_then(parse_dec::<i64>) == Some(sys::CLEANUP_MARK_START)
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
    if parse_dec::<i64>(fields.next()?) == Some(crate::sys::CLEANUP_MARK_START) {
        return None;
    }
    let lock = Lock {
        pid: u32::try_from(pid).ok().filter(|&p| p > 0),
        kind: String::from_utf8_lossy(kind).into_owned(),
        access: String::from_utf8_lossy(access).into_owned(),
    };
    Some(((major, minor, ino), lock))
}

/// The leak trackers' view: which shmkit processes track each segment name
/// (from [`crate::tracker::registered`]). The trackers of processes this one
/// may not inspect (other users', without root) are missing.
///
/// Only shmkit's trackers can be read: CPython's resource tracker keeps its
/// names in its own private memory, so a segment tracked by the stdlib is
/// never reported as tracked.
///
/// ```
/// let shm = shmkit::SharedMemory::options().track(true).create(64)?;
/// let pid = std::process::id() as i32;
/// assert!(shmkit::inspect::tracked()[shm.name()].contains(&pid));
/// shm.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn tracked() -> HashMap<String, Vec<i32>> {
    let mut by_name: HashMap<String, Vec<i32>> = HashMap::new();
    for registration in crate::tracker::registered() {
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

/// What a segment holds, recognised by its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Contents {
    /// Nothing: a size of zero.
    Empty,
    /// A `ShareableList` of Python 3.9+ (made by the stdlib or shmkit: the
    /// two are byte-identical) with this many items.
    ShareableList {
        /// The number of items.
        len: usize,
    },
    /// A glibc named semaphore (`sem_open`), which lives in `/dev/shm` as
    /// `sem.NAME`.
    Semaphore,
    /// Anything else.
    Data,
}

/// A read-only descriptor on a segment, checked to be a regular file.
struct ReadOnly {
    fd: OwnedFd,
    stat: FileStat,
    name: String,
}

impl ReadOnly {
    fn open(name: &str) -> Result<ReadOnly> {
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
            stat,
            name: bare.to_owned(),
        })
    }

    /// A private copy of `len` bytes at `offset`; fails if the file no
    /// longer has them.
    fn copy(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let got = sys::read_at(&self.fd, offset as u64, &mut buf)
            .map_err(|e| Error::from_errno("read", &self.name, e))?;
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

/// The list codec's view of a segment opened read-only: private copies of
/// some ranges (the metadata), and `pread` for the rest. Nothing here is
/// memory another process can write while the codec reads it.
struct Copies<'a> {
    size: usize,
    pieces: Vec<(usize, Vec<u8>)>,
    file: Option<&'a ReadOnly>,
}

impl ByteSource for Copies<'_> {
    fn size(&self) -> usize {
        self.size
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let end = match offset.checked_add(buf.len()) {
            Some(end) if end <= self.size => end,
            _ => {
                return Err(Error::OutOfBounds {
                    offset,
                    len: buf.len(),
                    size: self.size,
                })
            }
        };
        for (start, bytes) in &self.pieces {
            if offset >= *start && end <= start + bytes.len() {
                buf.copy_from_slice(&bytes[offset - start..end - start]);
                return Ok(());
            }
        }
        match self.file {
            Some(file) => {
                buf.copy_from_slice(&file.copy(offset, buf.len())?);
                Ok(())
            }
            None => Err(Error::OutOfBounds {
                offset,
                len: buf.len(),
                size: self.size,
            }),
        }
    }
}

/// Recognises a ShareableList in `file`, copying only its metadata (at most
/// [`MAX_LIST_METADATA`] bytes): the count, checked against the size before
/// anything else is read; the offsets, validated by the codec; and every
/// item's format and code, which must be ones a list writes. The list must
/// fill the segment exactly, as CPython and shmkit make them on Linux.
fn recognise(file: &ReadOnly) -> Option<(Layout, Copies<'_>)> {
    let size = usize::try_from(file.stat.size).ok()?;
    if size < 16 {
        return None;
    }
    let count = i64::from_ne_bytes(file.copy(0, 8).ok()?.try_into().ok()?);
    let n = usize::try_from(count).ok()?;
    // size = 8(n+2) + data + 9n, with data a multiple of 8.
    let metadata = n.checked_mul(17)?.checked_add(16)?;
    let data = size.checked_sub(metadata)?;
    if data % 8 != 0 || metadata > MAX_LIST_METADATA {
        return None;
    }
    let head = 8 * (n + 2);
    let mut src = Copies {
        size,
        pieces: vec![(0, file.copy(0, head).ok()?)],
        file: None,
    };
    let layout = Layout::attach(&src).ok()?;
    if layout.size() != size {
        return None;
    }
    let tail = layout.formats_offset();
    src.pieces.push((tail, file.copy(tail, size - tail).ok()?));
    for i in 0..n {
        layout.item_type(&src, i as isize).ok()?;
    }
    src.file = Some(file);
    Some((layout, src))
}

/// What the segment `name` holds. Reads only the list metadata, if any.
///
/// ```
/// use shmkit::inspect::{self, Contents};
/// use shmkit::list::{ShareableList, ValueRef};
///
/// let list = ShareableList::create(&[ValueRef::Int(1), ValueRef::Str("two")])?;
/// assert_eq!(
///     inspect::contents(list.shm().name())?,
///     Contents::ShareableList { len: 2 }
/// );
/// list.shm().unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn contents(name: &str) -> Result<Contents> {
    let file = ReadOnly::open(name)?;
    Ok(contents_of(&file))
}

fn contents_of(file: &ReadOnly) -> Contents {
    if file.stat.size == 0 {
        return Contents::Empty;
    }
    if let Some((layout, _)) = recognise(file) {
        return Contents::ShareableList { len: layout.len() };
    }
    // glibc: `sem.NAME`, sizeof(sem_t) bytes (32 on 64-bit, 16 on 32-bit).
    if file.name.starts_with("sem.") && matches!(file.stat.size, 16 | 32) {
        return Contents::Semaphore;
    }
    Contents::Data
}

/// One item of a list, as [`read_list`] found it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListItem {
    /// Its position.
    pub index: usize,
    /// Its slot's size in bytes.
    pub slot: usize,
    /// Its type and format (e.g. `"8s"`), or why they are not those of a
    /// list item (an item caught while another process rewrote it, …).
    pub kind: Result<(ItemType, String), String>,
    /// Its value, or why it could not be read (the above, or a `str` that
    /// CPython cut in the middle of a character, …).
    pub value: Result<Value, String>,
}

/// A copy of a list, read item by item.
#[derive(Debug, Clone, PartialEq)]
pub struct ListCopy {
    /// The segment's size (the list's size).
    pub size: usize,
    /// The items, in order.
    pub items: Vec<ListItem>,
}

impl ListCopy {
    /// All formats joined, as CPython's `ShareableList.format`; items whose
    /// format is not one a list writes add nothing.
    pub fn format(&self) -> String {
        self.items
            .iter()
            .filter_map(|i| i.kind.as_ref().ok())
            .map(|(_, f)| f.as_str())
            .collect()
    }
}

/// Reads the ShareableList in segment `name`, or `None` if it holds none.
///
/// ```
/// use shmkit::inspect;
/// use shmkit::list::{ShareableList, Value, ValueRef};
///
/// let list = ShareableList::create(&[ValueRef::Float(2.5), ValueRef::None])?;
/// let copy = inspect::read_list(list.shm().name())?.unwrap();
/// assert_eq!(copy.format(), "dxxxxxx?x");
/// assert_eq!(copy.items[0].value, Ok(Value::Float(2.5)));
/// list.shm().unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn read_list(name: &str) -> Result<Option<ListCopy>> {
    let file = ReadOnly::open(name)?;
    let Some((layout, mut src)) = recognise(&file) else {
        return Ok(None);
    };
    // One copy of the items too, unless that is large: then each is read
    // when it is decoded.
    if src.size <= MAX_LIST_METADATA {
        src.pieces.push((0, file.copy(0, src.size)?));
    }
    let items = (0..layout.len())
        .map(|i| {
            let at = i as isize;
            let kind = layout
                .item_type(&src, at)
                .and_then(|ty| Ok((ty, layout.item_format(&src, at)?)))
                .map_err(|e| e.to_string());
            let value = match &kind {
                Ok(_) => layout.get(&src, at).map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            ListItem {
                index: i,
                slot: layout.slot(i).len(),
                kind,
                value,
            }
        })
        .collect();
    Ok(Some(ListCopy {
        size: src.size,
        items,
    }))
}

/// A private copy of up to `len` bytes of segment `name` from `offset`
/// (fewer at its end), and the segment's size.
///
/// ```
/// use shmkit::{inspect, SharedMemory};
/// let shm = SharedMemory::create(8)?;
/// shm.write_at(2, b"hi")?;
/// assert_eq!(inspect::read(shm.name(), 2, 100)?, (b"hi\0\0\0\0".to_vec(), 8));
/// assert!(inspect::read(shm.name(), 9, 1).is_err());
/// shm.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn read(name: &str, offset: u64, len: usize) -> Result<(Vec<u8>, u64)> {
    let file = ReadOnly::open(name)?;
    let size = file.stat.size;
    if offset > size {
        return Err(Error::OutOfBounds {
            offset: usize::try_from(offset).unwrap_or(usize::MAX),
            len,
            size: usize::try_from(size).unwrap_or(usize::MAX),
        });
    }
    let len = len.min(usize::try_from(size - offset).unwrap_or(usize::MAX));
    let mut buf = vec![0u8; len];
    let got = sys::read_at(&file.fd, offset, &mut buf)
        .map_err(|e| Error::from_errno("read", &file.name, e))?;
    buf.truncate(got);
    Ok((buf, size))
}

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
/// use shmkit::{inspect::{self, Removal}, SharedMemory};
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
/// use shmkit::{inspect::{self, Removal}, SharedMemory};
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
            Ok(match sys::try_lock_exclusive(&file.fd) {
                Ok(()) => Held::Locked(file),
                Err(_) => Held::Busy(file),
            })
        })
        .collect();
    let mut keys = HashSet::new();
    let mut locked = HashSet::new();
    let mut own_fds = Vec::new();
    for held in opened.iter().flatten() {
        let file = match held {
            Held::Locked(f) => {
                locked.insert(f.stat.key);
                f
            }
            Held::Busy(f) => f,
        };
        keys.insert(file.stat.key);
        own_fds.push(file.fd.as_raw_fd());
    }
    // Taking the same file twice (two spellings of one name) would make the
    // second lock fail: that one then reads as busy, with no user; the first
    // decides.
    let procs = Processes::scan_keys(&keys, &own_fds, &locked);
    opened
        .into_iter()
        .map(|held| match held? {
            Held::Busy(file) if force => {
                let users = procs.users.get(&file.stat.key).cloned().unwrap_or_default();
                match unlink_if_same(&file)? {
                    Removal::Removed if !users.is_empty() => Ok(Removal::RemovedInUse(users)),
                    other => Ok(other),
                }
            }
            Held::Busy(file) => Ok(Removal::InUse(
                procs.users.get(&file.stat.key).cloned().unwrap_or_default(),
            )),
            Held::Locked(file) => {
                let key = file.stat.key;
                match procs.usage_of(&key) {
                    Usage::InUse => Ok(Removal::InUse(procs.users[&key].clone())),
                    Usage::Unknown => Ok(Removal::Unknown {
                        unreadable: procs.unreadable.clone(),
                    }),
                    Usage::Leaked => unlink_if_same(&file),
                }
            }
        })
        .collect()
}

fn unlink_if_same(file: &ReadOnly) -> Result<Removal> {
    match sys::shm_stat(&file.name) {
        Ok(now) if now.key == file.stat.key => {}
        Ok(_) => return Ok(Removal::Replaced),
        Err(e) => return Err(Error::from_errno("stat", &file.name, e)),
    }
    sys::shm_unlink(&file.name).map_err(|e| Error::from_errno("unlink", &file.name, e))?;
    Ok(Removal::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(sys::set_cleanup_mark(&marked));
        let me = sys::own_pid();
        let fd = marked.as_raw_fd() as u32;
        assert!(holds_cleanup_mark(me, fd));
        assert!(!holds_cleanup_mark(me, shm.as_raw_fd() as u32));
        // Our handle's descriptor is a use; the marked one is not.
        let keys: HashSet<FileKey> = [seg.key].into();
        let procs = Processes::scan_keys(&keys, &[shm.as_raw_fd()], &HashSet::new());
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

    #[test]
    fn recognises_lists_and_only_lists() {
        use crate::list::{ShareableList, ValueRef};
        use crate::SharedMemory;
        let list = ShareableList::create(&[ValueRef::Str("howdy"), ValueRef::Int(3)]).unwrap();
        let name = list.shm().name().to_owned();
        let got = contents(&name);
        let plain = SharedMemory::create(list.shm().size()).unwrap();
        let plain_got = contents(plain.name());
        let zeros16 = SharedMemory::create(16).unwrap();
        let zeros_got = contents(zeros16.name());
        let _ = list.shm().unlink();
        let _ = plain.unlink();
        let _ = zeros16.unlink();
        // Counts that the size cannot hold, or a table that is not one.
        let liar = SharedMemory::create(4096).unwrap();
        let mut lies = Vec::new();
        for count in [i64::MAX, -1, 200, 0] {
            liar.write_at(0, &count.to_ne_bytes()).unwrap();
            liar.write_at(8, &[0xff; 64]).unwrap();
            lies.push(contents(liar.name()));
        }
        let _ = liar.unlink();
        for lie in lies {
            assert_eq!(lie.unwrap(), Contents::Data);
        }
        assert_eq!(got.unwrap(), Contents::ShareableList { len: 2 });
        assert_eq!(plain_got.unwrap(), Contents::Data);
        // An empty list is 16 zero bytes.
        assert_eq!(zeros_got.unwrap(), Contents::ShareableList { len: 0 });
    }
}
