//! Which `OSError` subclass CPython raises for an errno, and its text: the
//! one table both the manager server (for the exceptions it sends back) and
//! the Python bindings (for the ones they raise) use, so the two never
//! disagree with each other or with CPython.

/// errno → the `OSError` subclass `OSError(errno, …)` becomes, as CPython's
/// `Objects/exceptions.c` maps them (the same in 3.9–3.13 on Linux). Any
/// errno not listed stays a plain `OSError`.
pub const ERRNO_EXCEPTIONS: &[(i32, &str)] = &[
    (libc::EAGAIN, "BlockingIOError"),
    (libc::EALREADY, "BlockingIOError"),
    (libc::EINPROGRESS, "BlockingIOError"),
    (libc::EWOULDBLOCK, "BlockingIOError"),
    (libc::EPIPE, "BrokenPipeError"),
    (libc::ESHUTDOWN, "BrokenPipeError"),
    (libc::ECHILD, "ChildProcessError"),
    (libc::ECONNABORTED, "ConnectionAbortedError"),
    (libc::ECONNREFUSED, "ConnectionRefusedError"),
    (libc::ECONNRESET, "ConnectionResetError"),
    (libc::EEXIST, "FileExistsError"),
    (libc::ENOENT, "FileNotFoundError"),
    (libc::EISDIR, "IsADirectoryError"),
    (libc::ENOTDIR, "NotADirectoryError"),
    (libc::EINTR, "InterruptedError"),
    (libc::EACCES, "PermissionError"),
    (libc::EPERM, "PermissionError"),
    (libc::ESRCH, "ProcessLookupError"),
    (libc::ETIMEDOUT, "TimeoutError"),
];

/// The name of the exception CPython raises for `OSError(errno, …)`.
pub fn exception_name(errno: i32) -> &'static str {
    ERRNO_EXCEPTIONS
        .iter()
        .find(|&&(e, _)| e == errno)
        .map_or("OSError", |&(_, name)| name)
}

/// The C library's text for `errno` (CPython's `strerror`), without the
/// " (os error N)" Rust appends.
pub fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_cpython_subclasses() {
        assert_eq!(exception_name(libc::ENOENT), "FileNotFoundError");
        assert_eq!(exception_name(libc::EEXIST), "FileExistsError");
        assert_eq!(exception_name(libc::EACCES), "PermissionError");
        assert_eq!(exception_name(libc::EPERM), "PermissionError");
        assert_eq!(exception_name(libc::EINVAL), "OSError");
        assert_eq!(exception_name(libc::ENOSPC), "OSError");
        for &(errno, name) in ERRNO_EXCEPTIONS {
            assert!(errno > 0);
            assert!(name.ends_with("Error"), "{name}");
            // Every errno that appears twice (EAGAIN is EWOULDBLOCK on
            // Linux) names the same class.
            assert_eq!(exception_name(errno), name);
        }
    }

    #[test]
    fn strerror_is_the_c_text() {
        assert_eq!(strerror(libc::ENOENT), "No such file or directory");
        assert!(!strerror(libc::EEXIST).contains("os error"));
    }
}
