//! [`SharedMemory`]: a named block of memory that processes share, the
//! seeds' central concept.

use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::name;
use crate::region::Region;
use crate::sys::{self, Disposition};

/// How many generated names [`Options::create`] tries before it gives up.
/// Names have 32 random bits, so reaching this means something other than
/// chance is answering `EEXIST`.
const NAME_ATTEMPTS: usize = 1000;

/// Flags for [`SharedMemory::rename`], with the values CPython gives
/// `SHM_RENAME_NOREPLACE` and `SHM_RENAME_EXCHANGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenameFlags(u32);

impl RenameFlags {
    /// Replace any segment that already has the new name (the default).
    pub const REPLACE: RenameFlags = RenameFlags(0);
    /// Fail with [`Error::AlreadyExists`] if the new name is taken.
    pub const NOREPLACE: RenameFlags = RenameFlags(1);
    /// Swap the two names atomically; both must exist.
    pub const EXCHANGE: RenameFlags = RenameFlags(2);

    /// Flags from their raw value; unknown bits are refused.
    pub fn from_bits(bits: u32) -> Result<Self> {
        if bits & !3 != 0 {
            return Err(Error::InvalidFlags("unknown rename flag"));
        }
        Ok(RenameFlags(bits))
    }

    /// The raw value.
    pub fn bits(self) -> u32 {
        self.0
    }

    fn has(self, other: RenameFlags) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for RenameFlags {
    type Output = RenameFlags;
    fn bitor(self, rhs: RenameFlags) -> RenameFlags {
        RenameFlags(self.0 | rhs.0)
    }
}

/// Settings for creating or opening a segment; [`SharedMemory`]'s
/// constructors use the defaults.
///
/// ```
/// use shmkit::Options;
/// let shm = Options::new().mode(0o640).reserve(false).create(1 << 20)?;
/// assert_eq!(shm.size(), 1 << 20);
/// shm.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    mode: u32,
    reserve: bool,
    /// Whether an attach reserves the pages of the segment it finds: only
    /// when [`Options::reserve`] asked for it, as attaching is the hot path
    /// and most segments were reserved by their creator.
    reserve_open: bool,
    track: bool,
    /// Whether the tracker cleans up without a leak warning (see
    /// `tracker::QUIET`): set by the object types whose clean-up at exit is
    /// how they are meant to end.
    quiet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: 0o600,
            reserve: true,
            reserve_open: false,
            track: false,
            quiet: false,
        }
    }
}

impl Options {
    /// Mode `0600` and reserved pages, as [`SharedMemory::create`] uses.
    pub fn new() -> Self {
        Self::default()
    }

    /// The permission bits of a created segment (before the umask), `0600`
    /// by default as in CPython.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Whether creating and attaching allocate every page up front
    /// (`fallocate`), so that a full `/dev/shm` fails the call with
    /// [`Error::NoSpace`] instead of killing a later write with `SIGBUS`.
    ///
    /// By default a create reserves and an attach does not: a segment made
    /// by shmkit (or reserved by whoever attached it) is reserved already,
    /// but one that another program made sparse (CPython always does) is
    /// not, and writing it on a full `/dev/shm` dies of `SIGBUS`.
    /// `reserve(true)` makes an attach reserve too: the pages the segment
    /// lacks are allocated then (nothing it holds changes), and a full
    /// `/dev/shm` is an [`Error::NoSpace`] from the attach, which leaves the
    /// segment as it was. `reserve(false)` turns it off for both.
    ///
    /// The cost: memory is committed at creation (or attach) rather than at
    /// first touch, and the call takes time in proportion to the pages it
    /// allocates (the kernel zeroes each page once, which a first write
    /// would otherwise do); an attach to a segment whose pages are all there
    /// still walks them. Turn it off for large segments that will stay
    /// sparse.
    ///
    /// ```
    /// use shmkit::Options;
    /// let made = Options::new().reserve(false).create(1 << 16)?; // sparse
    /// let attached = Options::new().reserve(true).open(made.name())?; // now reserved
    /// assert_eq!(attached.size(), 1 << 16);
    /// made.unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reserve(mut self, reserve: bool) -> Self {
        self.reserve = reserve;
        self.reserve_open = reserve;
        self
    }

    /// Whether creation reserves pages (see [`reserve`](Self::reserve)).
    pub fn reserves(&self) -> bool {
        self.reserve
    }

    /// Whether an attach reserves the pages of the segment it finds (see
    /// [`reserve`](Self::reserve)).
    pub fn reserves_on_open(&self) -> bool {
        self.reserve_open
    }

    /// Whether this process's leak tracker (see [`crate::tracker`]) unlinks
    /// the segment once every process that created or attached it with
    /// tracking has exited, if nobody unlinked it and nobody still has it
    /// open. Off by default in Rust; Python's `track=True` (its default)
    /// turns it on. [`SharedMemory::unlink`] stops the tracking.
    ///
    /// ```
    /// use shmkit::Options;
    /// let shm = Options::new().track(true).create(64)?;
    /// shm.unlink()?; // no longer tracked
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn track(mut self, track: bool) -> Self {
        self.track = track;
        self
    }

    /// Tracking, if on, cleans up without CPython's leak warning.
    #[cfg(feature = "array")]
    pub(crate) fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Creates a segment of `size` bytes under a fresh `psm_xxxxxxxx` name,
    /// retrying while generated names collide.
    pub fn create(&self, size: usize) -> Result<SharedMemory> {
        for _ in 0..NAME_ATTEMPTS {
            match self.create_named(&name::generate(), size) {
                Err(Error::AlreadyExists { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::Io {
            op: "create",
            name: name::PREFIX.to_owned(),
            source: std::io::Error::from_raw_os_error(Errno::EXIST.raw_os_error()),
        })
    }

    /// Creates a segment of `size` bytes named `name`; fails with
    /// [`Error::AlreadyExists`] if the name is taken.
    pub fn create_named(&self, name: &str, size: usize) -> Result<SharedMemory> {
        self.open_with(name, Disposition::CreateNew, Some(size))
    }

    /// Attaches to the existing segment `name`, at its full size.
    pub fn open(&self, name: &str) -> Result<SharedMemory> {
        self.open_with(name, Disposition::Open, None)
    }

    /// Attaches to `name`, creating it first if it does not exist. `size`, if
    /// given, is applied to a segment found empty (one this call created);
    /// an existing segment keeps its size.
    pub fn open_or_create(&self, name: &str, size: Option<usize>) -> Result<SharedMemory> {
        self.open_with(name, Disposition::OpenOrCreate, size)
    }

    fn open_with(
        &self,
        name: &str,
        disposition: Disposition,
        size: Option<usize>,
    ) -> Result<SharedMemory> {
        let bare = name::validate(name)?;
        if let Some(size) = size {
            check_size(size)?;
        }
        // A tracked create or attach is recorded before the file is open
        // here, so a SIGKILL at any moment from here on leaves the watcher
        // something to find. Only an exclusive create knows the file will
        // be new; the others take whatever is under the name.
        let intent = match (self.track, disposition) {
            (false, _) => None,
            (true, Disposition::CreateNew) => crate::tracker::intend_create(bare, self.quiet),
            (true, _) => crate::tracker::intend_attach(bare, self.quiet),
        };
        let mut fd = sys::shm_open(bare, disposition, self.mode).map_err(|e| {
            // A directory: EINVAL, as glibc's shm_open (and so CPython)
            // answers, rather than open(2)'s EISDIR.
            let e = if e == Errno::ISDIR { Errno::INVAL } else { e };
            Error::from_errno("open", bare, e)
        })?;
        let created = disposition == Disposition::CreateNew;
        let (found, ino) = if created {
            (None, None)
        } else {
            let (reopened, size, ino) = self.found_size(bare, fd)?;
            fd = reopened;
            (Some(size), Some(ino))
        };
        match self.size_and_map(bare, &fd, found, size) {
            Ok(region) => {
                // Every handle marks the segment as in use, tracked or not,
                // so no tracker unlinks it under us.
                sys::hold(&fd);
                let tracked = self.track && {
                    let ino = match ino {
                        Some(ino) => Some(ino),
                        None => sys::fstat(&fd).ok().map(|st| st.st_ino),
                    };
                    // Registered before the intent is dropped, so one of
                    // the two always covers the file.
                    ino.is_some_and(|ino| crate::tracker::register(bare, ino, self.quiet))
                };
                drop(intent);
                Ok(SharedMemory {
                    name: bare.to_owned(),
                    region,
                    fd,
                    tracked,
                    quiet: self.quiet,
                })
            }
            Err(err) => {
                // Never leave a half-made segment behind (CPython leaks one
                // here); an attach must not unlink what it did not create.
                if created {
                    let _ = sys::shm_unlink(bare);
                }
                drop(intent);
                Err(err)
            }
        }
    }

    /// Sizes (a new or empty segment) and maps it; `found` is the size an
    /// existing segment was found with, None for one just created.
    fn size_and_map(
        &self,
        name: &str,
        fd: &OwnedFd,
        found: Option<usize>,
        size: Option<usize>,
    ) -> Result<Region> {
        let size = match (found, size) {
            // Linux keeps the requested size exactly; no fstat needed.
            (None | Some(0), Some(size)) => {
                self.resize(name, fd, size)?;
                size
            }
            (found, None) => found.unwrap_or(0),
            (Some(found), Some(_)) => found,
        };
        if size == 0 {
            return Err(Error::Empty {
                name: name.to_owned(),
            });
        }
        let ptr = sys::map(fd, size).map_err(|e| Error::from_errno("map", name, e))?;
        Ok(Region::from_raw(ptr, size))
    }

    fn resize(&self, name: &str, fd: &OwnedFd, size: usize) -> Result<()> {
        let size64 = size as u64;
        let result = if self.reserve {
            sys::reserve(fd, size64)
        } else {
            sys::truncate(fd, size64)
        };
        result.map_err(|e| match e {
            Errno::NOSPC | Errno::FBIG => Error::NoSpace {
                name: name.to_owned(),
                size: size64,
            },
            e => Error::from_errno("resize", name, e),
        })
    }
}

impl Options {
    /// The size and inode of the existing segment `fd`, its pages reserved
    /// if [`reserve`](Self::reserve) asked for that on attach, with the
    /// descriptor to use from now on: `fd`, or a fresh one of the same name
    /// (see [`found_size`]).
    fn found_size(&self, name: &str, fd: OwnedFd) -> Result<(OwnedFd, usize, u64)> {
        let (fd, size, ino) = found_size(name, fd)?;
        if self.reserve_open && size > 0 {
            // fallocate without KEEP_SIZE on [0, size) changes no size and
            // no byte: it only fills holes. tmpfs frees what it allocated
            // if it fails.
            sys::reserve(&fd, size as u64).map_err(|e| match e {
                Errno::NOSPC | Errno::FBIG => Error::NoSpace {
                    name: name.to_owned(),
                    size: size as u64,
                },
                e => Error::from_errno("reserve", name, e),
            })?;
        }
        Ok((fd, size, ino))
    }
}

/// The size and inode of an existing segment, after waiting out a pending
/// cleanup: when the segment's tracked users have all died and a watcher is
/// deciding whether to unlink it (`crate::tracker`), attaching would keep
/// alive a segment that is leaked by every other measure (and CPython's
/// tests attach the moment the creator is reaped). So the attach waits for
/// the decision: an unlinked segment is not found; one that another live
/// process holds is attached as usual. A watcher that takes over 2 s (the
/// tracker's own bound) is not waited for further.
///
/// While it waits, the attach holds no descriptor of the segment (it
/// reopens the name afterwards): the watcher counts every other open file
/// of it as a user, and would keep it for the very attach that waits.
///
/// The watcher's mark is an `fcntl` lock, which costs a system call to
/// ask about, so it is asked only when the mode shows the watcher's hint
/// (`tracker::mark::CLEANUP_HINT`), which the `fstat` every attach makes anyway
/// reports for free.
///
/// Only a regular file is a segment: anything else someone put in
/// `/dev/shm` (a FIFO, a device) fails as CPython's `mmap` fails on it,
/// with `EINVAL`, and is never waited on or changed.
fn found_size(name: &str, mut fd: OwnedFd) -> Result<(OwnedFd, usize, u64)> {
    let stat = |fd: &OwnedFd| sys::fstat(fd).map_err(|e| Error::from_errno("stat", name, e));
    let mut st = stat(&fd)?;
    // A new file found under the name after the wait is judged afresh, once.
    for _ in 0..2 {
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(Error::Io {
                op: "map",
                name: name.to_owned(),
                source: std::io::Error::from_raw_os_error(Errno::INVAL.raw_os_error()),
            });
        }
        // Unlinked since we opened it: a watcher's decision (its lease holds
        // an open back until the unlink is done) or anyone's. Attaching
        // would only map a segment nobody else can find.
        if st.st_nlink == 0 {
            return Err(Error::NotFound {
                name: name.to_owned(),
            });
        }
        if !crate::tracker::cleanup_pending(&fd, st.st_mode) {
            break;
        }
        let key = sys::fd_stat(&fd)
            .map_err(|e| Error::from_errno("stat", name, e))?
            .key;
        drop(fd);
        crate::tracker::wait_cleanup_done(key, std::time::Duration::from_secs(2));
        fd = sys::shm_open(name, Disposition::Open, 0o600).map_err(|e| {
            let e = if e == Errno::ISDIR { Errno::INVAL } else { e };
            Error::from_errno("open", name, e)
        })?;
        st = stat(&fd)?;
        if st.st_ino == key.2 {
            break;
        }
    }
    let size = usize::try_from(st.st_size).map_err(|_| Error::InvalidSize {
        size: st.st_size as u64,
        reason: "larger than the address space",
    })?;
    Ok((fd, size, st.st_ino))
}

fn check_size(size: usize) -> Result<()> {
    if size == 0 {
        return Err(Error::InvalidSize {
            size: 0,
            reason: "a segment must have at least one byte",
        });
    }
    if size > isize::MAX as usize {
        return Err(Error::InvalidSize {
            size: size as u64,
            reason: "larger than the address space",
        });
    }
    Ok(())
}

/// A named POSIX shared memory segment, mapped into this process.
///
/// Names and bytes are those of CPython's `multiprocessing.shared_memory`,
/// so a Python process and a Rust process can share one segment. Dropping
/// the handle unmaps it and closes its descriptor ("close"); the segment
/// itself lives on until someone calls [`unlink`](Self::unlink).
///
/// Bytes are reached through the [`Region`] it dereferences to: copies, atomic
/// views and raw pointers, because other processes may write at any time.
///
/// ```
/// use shmkit::SharedMemory;
///
/// let a = SharedMemory::create(4096)?;
/// a.write_at(0, b"hello")?;
///
/// let b = SharedMemory::open(a.name())?; // as another process would
/// assert_eq!(b.read_vec(0, 5)?, b"hello");
/// assert_eq!(b.size(), 4096);
///
/// a.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedMemory {
    name: String,
    region: Region,
    fd: OwnedFd,
    /// Registered with this process's leak tracker.
    tracked: bool,
    /// Whether its tracking is quiet ([`Options::quiet`]).
    quiet: bool,
}

impl SharedMemory {
    /// Creates a segment of `size` bytes under a fresh `psm_xxxxxxxx` name.
    #[doc(alias = "shm_open")]
    pub fn create(size: usize) -> Result<Self> {
        Options::new().create(size)
    }

    /// Creates a segment of `size` bytes named `name`.
    ///
    /// ```
    /// use shmkit::{Error, SharedMemory};
    /// let name = format!("doc_create_named_{}", std::process::id());
    /// let shm = SharedMemory::create_named(&name, 10)?;
    /// assert!(matches!(
    ///     SharedMemory::create_named(&name, 10),
    ///     Err(Error::AlreadyExists { .. })
    /// ));
    /// shm.unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn create_named(name: &str, size: usize) -> Result<Self> {
        Options::new().create_named(name, size)
    }

    /// Attaches to the existing segment `name`.
    ///
    /// ```
    /// use shmkit::{Error, SharedMemory};
    /// assert!(matches!(
    ///     SharedMemory::open("no_such_segment_here"),
    ///     Err(Error::NotFound { .. })
    /// ));
    /// ```
    pub fn open(name: &str) -> Result<Self> {
        Options::new().open(name)
    }

    /// Settings for the less common ways to create or open a segment.
    pub fn options() -> Options {
        Options::new()
    }

    /// The name, without a leading slash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size in bytes, as the segment had when it was mapped.
    pub fn size(&self) -> usize {
        self.region.len()
    }

    /// The mapped bytes (also reachable through `Deref`).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Removes the name from the system. Processes that have the segment
    /// mapped keep it; the memory is freed when the last of them lets go.
    #[doc(alias = "shm_unlink")]
    pub fn unlink(&self) -> Result<()> {
        unlink(&self.name)?;
        if self.tracked {
            crate::tracker::unregister(&self.name);
        }
        Ok(())
    }

    /// Whether this handle is registered with the leak tracker
    /// ([`Options::track`]).
    pub fn is_tracked(&self) -> bool {
        self.tracked
    }

    /// Gives the segment another name, atomically.
    ///
    /// With [`RenameFlags::REPLACE`] a segment that had `new_name` loses it;
    /// [`RenameFlags::NOREPLACE`] fails instead; [`RenameFlags::EXCHANGE`]
    /// swaps the two names. CPython offers this only on FreeBSD; on Linux it
    /// is `renameat2` inside `/dev/shm`.
    ///
    /// ```
    /// use shmkit::{RenameFlags, SharedMemory};
    /// let mut shm = SharedMemory::create(8)?;
    /// let new = format!("doc_rename_{}", std::process::id());
    /// shm.rename(&new, RenameFlags::NOREPLACE)?;
    /// assert_eq!(shm.name(), new);
    /// shm.unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn rename(&mut self, new_name: &str, flags: RenameFlags) -> Result<()> {
        rename(&self.name, new_name, flags)?;
        let new = name::validate(new_name)?.to_owned();
        if self.tracked {
            crate::tracker::unregister(&self.name);
            let ino = sys::fstat(&self.fd).map_or(0, |st| st.st_ino);
            self.tracked = crate::tracker::register(&new, ino, self.quiet);
        }
        self.name = new;
        Ok(())
    }

    /// Unmaps the segment and closes its descriptor; the same as dropping it.
    pub fn close(self) {}
}

impl Deref for SharedMemory {
    type Target = Region;
    fn deref(&self) -> &Region {
        &self.region
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SharedMemory {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Removes the segment `name` from the system (`shm_unlink`).
///
/// ```
/// use shmkit::{unlink, Error};
/// assert!(matches!(unlink("never_made_here"), Err(Error::NotFound { .. })));
/// ```
#[doc(alias = "shm_unlink")]
pub fn unlink(name: &str) -> Result<()> {
    let bare = name::validate(name)?;
    sys::shm_unlink(bare).map_err(|e| Error::from_errno("unlink", bare, e))
}

/// Renames the segment `old` to `new_name`, atomically; see
/// [`SharedMemory::rename`] for the flags.
pub fn rename(old: &str, new_name: &str, flags: RenameFlags) -> Result<()> {
    let old = name::validate(old)?;
    let new = name::validate(new_name)?;
    let exchange = flags.has(RenameFlags::EXCHANGE);
    let noreplace = flags.has(RenameFlags::NOREPLACE);
    if exchange && noreplace {
        return Err(Error::InvalidFlags(
            "EXCHANGE and NOREPLACE cannot be combined",
        ));
    }
    sys::rename(old, new, exchange, noreplace).map_err(|e| match e {
        Errno::NOENT => {
            // Under EXCHANGE either name may be the missing one.
            let missing = if exchange && sys::exists(old) {
                new
            } else {
                old
            };
            Error::NotFound {
                name: missing.to_owned(),
            }
        }
        Errno::EXIST => Error::AlreadyExists {
            name: new.to_owned(),
        },
        e => Error::from_errno("rename", old, e),
    })
}

/// Whether a segment called `name` exists.
pub fn exists(name: &str) -> bool {
    name::validate(name).is_ok_and(sys::exists)
}

/// Serialized as its name alone, so a handle can travel to another process
/// in any serde format.
#[cfg(feature = "serde")]
impl serde::Serialize for SharedMemory {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

/// Deserializing a name attaches to that segment.
///
/// ```
/// # let shm = shmkit::SharedMemory::create(8)?;
/// let json = serde_json::to_string(&shm).unwrap();
/// let again: shmkit::SharedMemory = serde_json::from_str(&json).unwrap();
/// assert_eq!(again.name(), shm.name());
/// # shm.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for SharedMemory {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        SharedMemory::open(&name).map_err(serde::de::Error::custom)
    }
}
