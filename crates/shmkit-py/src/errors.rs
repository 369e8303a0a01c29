//! Core errors as the exceptions CPython raises for the same failures.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;
use shmkit::Error;

/// Turns a core error into the exception CPython raises for the same
/// failure; `filename` is the name as the Python caller spelled it (with its
/// slash), which CPython puts in `OSError.filename`.
pub(crate) fn to_pyerr(err: Error, filename: &str) -> PyErr {
    match (&err, err.errno()) {
        (Error::InvalidName { problem, .. }, None) => PyValueError::new_err(problem.to_string()),
        (Error::Empty { .. }, _) => PyValueError::new_err("cannot mmap an empty file"),
        (Error::InvalidSize { .. }, _) => PyValueError::new_err(err.to_string()),
        // CPython's mmap module names no file in its errors.
        (Error::Io { op: "map", .. }, Some(errno)) => PyOSError::new_err((errno, strerror(errno))),
        (_, Some(errno)) => {
            let strerror = strerror(errno);
            PyOSError::new_err((errno, strerror, filename.to_owned()))
        }
        _ => PyOSError::new_err(err.to_string()),
    }
}

/// The C library's text for `errno`, without Rust's " (os error N)" suffix.
fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}
