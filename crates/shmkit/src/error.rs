//! The crate's one error type.

use std::io;

// The list's refusals live here, not in `list`, so that `list` depends on
// `error` and not the reverse.
#[cfg(feature = "list")]
mod list;
#[cfg(feature = "list")]
pub use list::ListError;

/// Why a segment name was refused before any system call was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameProblem {
    /// The name is empty once its leading slashes are removed.
    Empty,
    /// The name contains a `/` after its leading slashes.
    Slash,
    /// The name contains a NUL byte, which a C string cannot carry.
    Nul,
    /// The name is longer than the 255 bytes a file name may have.
    TooLong,
    /// The name is `.` or `..`, which name directories, not segments.
    Dot,
}

impl NameProblem {
    /// The errno the kernel or libc would have answered with, so that callers
    /// that mirror CPython's `OSError`s can keep its exception types.
    pub fn errno(self) -> Option<i32> {
        match self {
            NameProblem::Empty | NameProblem::Slash | NameProblem::Dot => {
                Some(rustix::io::Errno::INVAL.raw_os_error())
            }
            NameProblem::TooLong => Some(rustix::io::Errno::NAMETOOLONG.raw_os_error()),
            NameProblem::Nul => None,
        }
    }
}

impl std::fmt::Display for NameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameProblem::Empty => "the name is empty",
            NameProblem::Slash => "a name may not contain '/' after its leading slashes",
            NameProblem::Nul => "embedded null character",
            NameProblem::TooLong => "the name is longer than 255 bytes",
            NameProblem::Dot => "'.' and '..' are not segment names",
        })
    }
}

/// Everything that can go wrong in shmkit.
///
/// Each variant that concerns a segment carries its name (without the leading
/// slash), and I/O failures keep the underlying [`io::Error`], so that
/// bindings can map them to the exception types their language expects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The name was refused before any system call was made.
    #[error("invalid shared memory name {name:?}: {problem}")]
    InvalidName {
        /// The name as it was given.
        name: String,
        /// What is wrong with it.
        problem: NameProblem,
    },
    /// A size of zero, or one too large for this platform's address space.
    #[error("invalid shared memory size {size}: {reason}")]
    InvalidSize {
        /// The size as it was given.
        size: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An exclusive create found the name taken.
    #[error("shared memory segment {name:?} already exists")]
    AlreadyExists {
        /// The segment's name.
        name: String,
    },
    /// No segment has this name.
    #[error("shared memory segment {name:?} does not exist")]
    NotFound {
        /// The segment's name.
        name: String,
    },
    /// `/dev/shm` could not hold the requested size; nothing was left behind.
    #[error("no space left in /dev/shm for the {size} bytes of segment {name:?}")]
    NoSpace {
        /// The segment's name.
        name: String,
        /// The size that was asked for.
        size: u64,
    },
    /// The segment exists but has a size of zero, so it cannot be mapped.
    #[error("shared memory segment {name:?} is empty and cannot be mapped")]
    Empty {
        /// The segment's name.
        name: String,
    },
    /// The caller may not open the segment.
    #[error("permission denied for shared memory segment {name:?}")]
    PermissionDenied {
        /// The segment's name.
        name: String,
    },
    /// A byte range lies outside the segment.
    #[error("range {offset}..{offset}+{len} lies outside a segment of {size} bytes")]
    OutOfBounds {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Size of the segment.
        size: usize,
    },
    /// An atomic view was asked for at an offset its type cannot be aligned at.
    #[error("offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// The offset that was asked for.
        offset: usize,
        /// The alignment the type needs.
        align: usize,
    },
    /// The segment is not the kind of shmkit object that was asked for.
    #[error("shared memory segment {name:?} holds a {found}, not a {expected}")]
    WrongKind {
        /// The segment's name.
        name: String,
        /// The kind that was asked for.
        expected: &'static str,
        /// What the segment holds (`"no shmkit object"` for anything else).
        found: &'static str,
    },
    /// An array segment's descriptor, or an array asked for, that shmkit
    /// refuses (see [`array`](crate::array)).
    #[cfg(feature = "array")]
    #[error("shared memory segment {name:?}: {reason}")]
    BadArray {
        /// The segment's name.
        name: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// A blocking call was cut short by its interruption hook (see
    /// `sync::Wait`).
    #[error("the wait was interrupted")]
    Interrupted,
    /// The calling thread holds the lock it would wait for, so the wait
    /// would never end.
    #[error("this thread holds the lock already: waiting for it would never end")]
    WouldDeadlock,
    /// A lock was released, or a condition used, by a thread that does not
    /// hold the lock.
    #[error("cannot release un-acquired lock")]
    NotOwner,
    /// A bounded semaphore was released beyond its start value, or a
    /// semaphore beyond its largest count.
    #[error("Semaphore released too many times")]
    TooManyReleases,
    /// A barrier was broken (aborted, reset, or a party died or timed out).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// Flags that cannot be combined.
    #[error("invalid flags: {0}")]
    InvalidFlags(&'static str),
    /// A queue message does not fit the queue's ring even when it is empty.
    #[error("a message of {size} bytes does not fit a queue whose largest message is {max} bytes")]
    MessageTooLarge {
        /// The message's length in bytes.
        size: usize,
        /// The largest message the queue takes.
        max: usize,
    },
    /// A queue's shared state holds something no queue writes: another
    /// program wrote over it.
    #[error("queue {name:?} is corrupt: {what}")]
    Corrupt {
        /// The queue's segment name.
        name: String,
        /// What was found wrong.
        what: &'static str,
    },
    /// A [`ShareableList`](crate::ShareableList) operation was refused.
    #[cfg(feature = "list")]
    #[error(transparent)]
    List(#[from] ListError),
    /// A [`manager`](crate::manager) operation failed.
    #[cfg(feature = "manager")]
    #[error(transparent)]
    Manager(#[from] crate::manager::ManagerError),
    /// Any other failure of a system call.
    #[error("{op} of shared memory segment {name:?} failed: {source}")]
    Io {
        /// The operation that failed (`"open"`, `"map"`, …).
        op: &'static str,
        /// The segment's name.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The errno behind this error, when there is one: what CPython would put
    /// in `OSError.errno`.
    pub fn errno(&self) -> Option<i32> {
        use rustix::io::Errno;
        match self {
            Error::InvalidName { problem, .. } => problem.errno(),
            Error::AlreadyExists { .. } => Some(Errno::EXIST.raw_os_error()),
            Error::NotFound { .. } => Some(Errno::NOENT.raw_os_error()),
            Error::NoSpace { .. } => Some(Errno::NOSPC.raw_os_error()),
            Error::PermissionDenied { .. } => Some(Errno::ACCESS.raw_os_error()),
            Error::InvalidFlags(_) => Some(Errno::INVAL.raw_os_error()),
            Error::Io { source, .. } => source.raw_os_error(),
            #[cfg(feature = "manager")]
            Error::Manager(e) => e.errno(),
            _ => None,
        }
    }

    /// Turns an errno from a system call on segment `name` into the matching
    /// variant.
    pub(crate) fn from_errno(op: &'static str, name: &str, errno: rustix::io::Errno) -> Self {
        use rustix::io::Errno;
        let name = name.to_owned();
        match errno {
            Errno::EXIST => Error::AlreadyExists { name },
            Errno::NOENT => Error::NotFound { name },
            Errno::ACCESS | Errno::PERM => Error::PermissionDenied { name },
            _ => Error::Io {
                op,
                name,
                source: io::Error::from_raw_os_error(errno.raw_os_error()),
            },
        }
    }
}

/// `Result` with shmkit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
