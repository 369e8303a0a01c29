//! Core errors as the exceptions CPython raises for the same failures.

use pyo3::exceptions::{
    PyBlockingIOError, PyBrokenPipeError, PyChildProcessError, PyConnectionAbortedError,
    PyConnectionRefusedError, PyConnectionResetError, PyFileExistsError, PyFileNotFoundError,
    PyInterruptedError, PyIsADirectoryError, PyNotADirectoryError, PyOSError, PyPermissionError,
    PyProcessLookupError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::PyErr;
use shmkit::pyexc::{exception_name, strerror, ERRNO_EXCEPTIONS};
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
        (Error::Io { op: "map", .. }, Some(errno)) => os_error(errno, (errno, strerror(errno))),
        (_, Some(errno)) => os_error(errno, (errno, strerror(errno), filename.to_owned())),
        _ => PyOSError::new_err(err.to_string()),
    }
}

/// `OSError(*args)` as the subclass the core's table names for `errno`.
pub(crate) fn os_error<A>(errno: i32, args: A) -> PyErr
where
    A: Send + Sync + for<'py> IntoPyObject<'py> + 'static,
{
    match exception_name(errno) {
        "BlockingIOError" => PyBlockingIOError::new_err(args),
        "BrokenPipeError" => PyBrokenPipeError::new_err(args),
        "ChildProcessError" => PyChildProcessError::new_err(args),
        "ConnectionAbortedError" => PyConnectionAbortedError::new_err(args),
        "ConnectionRefusedError" => PyConnectionRefusedError::new_err(args),
        "ConnectionResetError" => PyConnectionResetError::new_err(args),
        "FileExistsError" => PyFileExistsError::new_err(args),
        "FileNotFoundError" => PyFileNotFoundError::new_err(args),
        "InterruptedError" => PyInterruptedError::new_err(args),
        "IsADirectoryError" => PyIsADirectoryError::new_err(args),
        "NotADirectoryError" => PyNotADirectoryError::new_err(args),
        "PermissionError" => PyPermissionError::new_err(args),
        "ProcessLookupError" => PyProcessLookupError::new_err(args),
        "TimeoutError" => PyTimeoutError::new_err(args),
        _ => PyOSError::new_err(args),
    }
}

/// The core's errno → exception-name table, as `[(errno, name)]`, so the
/// tests can check it against the interpreter's own mapping.
#[pyfunction]
pub(crate) fn errno_exceptions() -> Vec<(i32, &'static str)> {
    ERRNO_EXCEPTIONS.to_vec()
}
