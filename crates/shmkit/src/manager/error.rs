//! [`ManagerError`]: what can go wrong talking to or running a manager.

use std::io;

use super::pickle::PickleError;

/// A manager operation failed; carried by
/// [`Error::Manager`](crate::Error::Manager).
///
/// The comment on each variant names the Python exception that bindings
/// should raise for it, as CPython's `multiprocessing` would.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// A socket operation failed (`OSError` with the errno).
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done: `"connect"`, `"bind"`, `"send"`, …
        op: &'static str,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The peer closed the connection between messages (`EOFError`).
    #[error("the connection was closed")]
    Eof,
    /// The peer closed the connection in the middle of a message
    /// (`OSError("got end of file during message")`).
    #[error("got end of file during message")]
    Truncated,
    /// A message announced more bytes than the reader accepts
    /// (`OSError("bad message length")`); nothing was allocated for it.
    #[error("bad message length: {len} bytes announced, at most {max} accepted")]
    TooLong {
        /// The announced length.
        len: u64,
        /// The most the reader accepts.
        max: u64,
    },
    /// A message header holds a negative length other than the `-1` escape
    /// (`OSError("bad message length")`).
    #[error("bad message length: {0}")]
    BadLength(i32),
    /// The handshake failed (`multiprocessing.AuthenticationError`), with
    /// CPython's message: "digest received was wrong" when the peer does not
    /// know the key, "digest sent was rejected" when the peer refused ours.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// A message is not a pickle of the supported subset
    /// (`pickle.UnpicklingError`).
    #[error(transparent)]
    Pickle(#[from] PickleError),
    /// A reply or request has the wrong shape, such as a reply that is not a
    /// `(kind, payload)` pair (`ValueError`).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered with an error (`multiprocessing.managers.RemoteError`):
    /// the `'#TRACEBACK'` text it sent, or for `'#ERROR'` a description.
    #[error("the manager reported an error:\n{}", dashes(traceback))]
    Remote {
        /// The remote traceback, as CPython formats it.
        traceback: String,
    },
    /// A manager process could not be started, or did not report its
    /// address in time (`RuntimeError`).
    #[error("manager process: {0}")]
    Process(String),
}

fn dashes(text: &str) -> String {
    let line = "-".repeat(75);
    format!("{line}\n{}{line}", text)
}

impl ManagerError {
    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        ManagerError::Io { op, source }
    }

    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ManagerError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// For [`Remote`](Self::Remote): the exception type and message on the
    /// traceback's last line, e.g. `("FileNotFoundError", "[Errno 2] …")`.
    ///
    /// ```
    /// use shmkit::manager::ManagerError;
    /// let e = ManagerError::Remote {
    ///     traceback: "Traceback (most recent call last):\n  ...\nKeyError: 'Foo'\n".into(),
    /// };
    /// assert_eq!(e.remote_exception(), Some(("KeyError", "'Foo'")));
    /// ```
    pub fn remote_exception(&self) -> Option<(&str, &str)> {
        let ManagerError::Remote { traceback } = self else {
            return None;
        };
        let last = traceback.trim_end().lines().next_back()?;
        match last.split_once(": ") {
            Some((kind, message)) if !kind.contains(' ') => Some((kind, message)),
            _ if !last.contains(' ') => Some((last, "")),
            _ => None,
        }
    }
}
