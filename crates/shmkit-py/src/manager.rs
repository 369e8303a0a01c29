//! The native half of `shmkit.managers`: a client of any manager server
//! (CPython's or shmkit's), and the entry point of the manager process that
//! `SharedMemoryManager.start()` forks, which runs the Rust server.
//!
//! Conversions and exception mapping only: the protocol, the server and its
//! guarantees (parent watching, unlinking at every kind of stop) live in
//! `shmkit::manager`.

use std::time::Duration;

use pyo3::exceptions::{PyEOFError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use shmkit::manager::{Address, Client, ManagerError, PyValue, RelayClient, Report, Settings};

use shmkit::pyexc::strerror;

use crate::errors::{os_error, to_pyerr};

/// A core error as the exception CPython's `multiprocessing` raises for the
/// same failure (each `ManagerError` variant documents its exception).
pub(crate) fn manager_err(py: Python<'_>, err: shmkit::Error) -> PyErr {
    let shmkit::Error::Manager(m) = err else {
        return to_pyerr(err, "");
    };
    match m {
        ManagerError::Io { source, .. } => match source.raw_os_error() {
            // OSError(errno, strerror) becomes FileNotFoundError and kin.
            Some(errno) => os_error(errno, (errno, strerror(errno))),
            None => PyErr::from(source),
        },
        ManagerError::Eof => PyEOFError::new_err(()),
        ManagerError::Authentication(reason) => {
            mp_error(py, "multiprocessing", "AuthenticationError", reason)
        }
        ManagerError::Remote { traceback } => {
            mp_error(py, "multiprocessing.managers", "RemoteError", traceback)
        }
        ManagerError::Pickle(p) => mp_error(py, "pickle", "UnpicklingError", p.to_string()),
        ManagerError::Protocol(message) => PyValueError::new_err(message),
        ManagerError::Process(message) => PyRuntimeError::new_err(message),
        other => PyOSError::new_err(other.to_string()),
    }
}

/// `module.name(message)` as an exception (an `OSError` if that fails).
fn mp_error(py: Python<'_>, module: &str, name: &str, message: String) -> PyErr {
    let made = py
        .import(module)
        .and_then(|m| m.getattr(name))
        .and_then(|cls| cls.call1((message.clone(),)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => PyOSError::new_err(message),
    }
}

/// A Python value as the pickle subset the protocol carries.
fn to_value(obj: &Bound<'_, PyAny>) -> PyResult<PyValue> {
    if obj.is_none() {
        Ok(PyValue::None)
    } else if let Ok(b) = obj.cast::<PyBool>() {
        Ok(PyValue::Bool(b.is_true()))
    } else if let Ok(i) = obj.cast::<PyInt>() {
        Ok(PyValue::Int(i.extract().map_err(|_| {
            PyValueError::new_err("manager requests carry 64-bit ints only")
        })?))
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        Ok(PyValue::Float(f.value()))
    } else if let Ok(s) = obj.cast::<PyString>() {
        Ok(PyValue::Str(s.to_str()?.to_owned()))
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        Ok(PyValue::Bytes(b.as_bytes().to_vec()))
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        t.iter()
            .map(|x| to_value(&x))
            .collect::<PyResult<_>>()
            .map(PyValue::Tuple)
    } else if let Ok(l) = obj.cast::<PyList>() {
        l.iter()
            .map(|x| to_value(&x))
            .collect::<PyResult<_>>()
            .map(PyValue::List)
    } else if let Ok(d) = obj.cast::<PyDict>() {
        d.iter()
            .map(|(k, v)| Ok((to_value(&k)?, to_value(&v)?)))
            .collect::<PyResult<_>>()
            .map(PyValue::Dict)
    } else {
        Err(PyTypeError::new_err(format!(
            "a manager request cannot carry a {}",
            obj.get_type().name()?
        )))
    }
}

/// A protocol value as the Python object it stands for.
fn to_object(py: Python<'_>, value: &PyValue) -> PyResult<Py<PyAny>> {
    Ok(match value {
        PyValue::None => py.None(),
        PyValue::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        PyValue::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        PyValue::Float(f) => f.into_pyobject(py)?.into_any().unbind(),
        PyValue::Str(s) => PyString::new(py, s).into_any().unbind(),
        PyValue::Bytes(b) => PyBytes::new(py, b).into_any().unbind(),
        PyValue::Tuple(items) => {
            let items = items
                .iter()
                .map(|v| to_object(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, items)?.into_any().unbind()
        }
        PyValue::List(items) => {
            let items = items
                .iter()
                .map(|v| to_object(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any().unbind()
        }
        PyValue::Dict(pairs) => {
            let d = PyDict::new(py);
            for (k, v) in pairs {
                d.set_item(to_object(py, k)?, to_object(py, v)?)?;
            }
            d.into_any().unbind()
        }
    })
}

/// A Python address (`str` path, `b'\0name'`, `(host, port)`) as a core
/// one; `None` is CPython's `ValueError: address type of None unrecognized`.
fn to_address(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Address> {
    let value = match to_value(obj) {
        Ok(v) => v,
        Err(_) => {
            return Err(PyValueError::new_err(format!(
                "address type of {} unrecognized",
                obj.repr()?
            )))
        }
    };
    Address::from_py(&value).map_err(|e| manager_err(py, e))
}

/// `multiprocessing.connection.Client` plus `dispatch`, for one manager:
/// each call opens a connection, authenticates both ways, makes one request
/// and closes, as CPython's server requires. The GIL is released meanwhile.
#[pyclass(frozen, module = "shmkit._shmkit", name = "ManagerClient")]
pub(crate) struct ManagerClient {
    client: Client,
    address: Py<PyAny>,
}

#[pymethods]
impl ManagerClient {
    #[new]
    #[pyo3(signature = (address, authkey, timeout=None))]
    fn new(
        py: Python<'_>,
        address: &Bound<'_, PyAny>,
        authkey: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Self> {
        let Ok(key) = authkey.cast::<PyBytes>() else {
            return Err(PyTypeError::new_err("authkey should be a byte string"));
        };
        let mut client = Client::new(to_address(py, address)?, key.as_bytes());
        if let Some(t) = timeout {
            let t = Duration::try_from_secs_f64(t)
                .map_err(|_| PyValueError::new_err("timeout must be a non-negative number"))?;
            client.set_timeout(Some(t));
        }
        Ok(ManagerClient {
            client,
            address: address.clone().unbind(),
        })
    }

    /// The address as given.
    #[getter]
    fn address(&self, py: Python<'_>) -> Py<PyAny> {
        self.address.clone_ref(py)
    }

    /// Asks the server to unlink segment `name` when it shuts down.
    fn track_segment(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        py.detach(|| self.client.track_segment(name))
            .map_err(|e| manager_err(py, e))
    }

    /// Asks the server to unlink segment `name` now and forget it.
    fn release_segment(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        py.detach(|| self.client.release_segment(name))
            .map_err(|e| manager_err(py, e))
    }

    /// The names of the segments the server tracks.
    fn list_segments(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.detach(|| self.client.list_segments())
            .map_err(|e| manager_err(py, e))
    }

    /// Asks the server to unlink every tracked segment and stop.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.client.shutdown())
            .map_err(|e| manager_err(py, e))
    }

    /// A request that does nothing: checks that the server answers and
    /// that the authkey is right, as CPython's `connect()` does.
    fn dummy(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.client.dummy())
            .map_err(|e| manager_err(py, e))
    }

    /// `func(*args, **kwds)` on the server; its result.
    #[pyo3(signature = (func, args=None, kwds=None))]
    fn dispatch(
        &self,
        py: Python<'_>,
        func: &str,
        args: Option<&Bound<'_, PyTuple>>,
        kwds: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let args = match args {
            Some(a) => a
                .iter()
                .map(|x| to_value(&x))
                .collect::<PyResult<Vec<_>>>()?,
            None => Vec::new(),
        };
        let kwds = match kwds {
            Some(d) => d
                .iter()
                .map(|(k, v)| Ok((to_value(&k)?, to_value(&v)?)))
                .collect::<PyResult<Vec<_>>>()?,
            None => Vec::new(),
        };
        let result = py
            .detach(|| self.client.dispatch_with(func, args, kwds))
            .map_err(|e| manager_err(py, e))?;
        to_object(py, &result)
    }
}

/// The settings a manager child reads on its stdin, as
/// `shmkit::manager::Settings` encodes them. `dir`: where a default socket
/// goes (a private directory of the parent's).
#[pyfunction]
#[pyo3(signature = (address, authkey, parent, timeout=60.0, dir=None))]
pub(crate) fn manager_child_settings<'py>(
    py: Python<'py>,
    address: &Bound<'py, PyAny>,
    authkey: &[u8],
    parent: u32,
    timeout: Option<f64>,
    dir: Option<String>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut settings = Settings::new(authkey);
    if !address.is_none() {
        settings.address = Some(to_address(py, address)?);
    }
    settings.parent = parent;
    settings.timeout = timeout
        .map(Duration::try_from_secs_f64)
        .transpose()
        .map_err(|_| PyValueError::new_err("timeout must be a non-negative number"))?;
    settings.dir = dir;
    Ok(PyBytes::new(py, &settings.encode()))
}

/// The address in a manager child's report line, `None` if the line is not
/// the report; `RuntimeError` if the child could not listen.
#[pyfunction]
pub(crate) fn manager_child_address(py: Python<'_>, line: &[u8]) -> PyResult<Py<PyAny>> {
    match Report::decode(line).map_err(|e| manager_err(py, e))? {
        None => Ok(py.None()),
        Some(Report::Ready(address)) => to_object(py, &address.to_py()),
        Some(Report::Failed(reason)) => Err(PyRuntimeError::new_err(format!(
            "the manager process could not start: {reason}"
        ))),
    }
}

/// Runs a manager server in this process until it is shut down, the parent
/// named in its settings dies, or it gets `SIGTERM`; `SIGINT` is ignored.
/// Settings come on stdin and the address goes to stdout (both pipes from
/// the parent). Meant for a freshly forked child, which exits right after.
#[pyfunction]
pub(crate) fn manager_serve_child(py: Python<'_>) -> PyResult<()> {
    py.detach(shmkit::manager::serve_child)
        .map_err(|e| manager_err(py, e))
}

/// [`manager_serve_child`], with the tracking channel (see
/// `shmkit::manager::serve_child_relay`) on the socket at `relay_fd`, which
/// the caller hands over: it is closed when this returns. For a forked
/// manager process; `start()` otherwise spawns the native `shmkit-manager`.
#[pyfunction]
pub(crate) fn manager_serve_child_relay(py: Python<'_>, relay_fd: i32) -> PyResult<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    if relay_fd < 3 {
        return Err(PyValueError::new_err(
            "relay_fd must be a descriptor above stderr",
        ));
    }
    // SAFETY: the caller (shmkit.managers, in the freshly forked manager
    // process) dup2()ed the channel to `relay_fd` for this call alone and
    // never uses that number again; this is its only owner from here on.
    let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(relay_fd) });
    py.detach(|| shmkit::manager::serve_child_relay(sock))
        .map_err(|e| manager_err(py, e))
}

/// The parent's end of a manager process's tracking channel
/// (`shmkit::manager::RelayClient`, which owns the line protocol). Made
/// from a socket descriptor it takes over (`socket.detach()`).
#[pyclass(frozen, module = "shmkit._shmkit", name = "RelayClient")]
pub(crate) struct PyRelayClient {
    inner: std::sync::Mutex<Option<RelayClient>>,
}

impl PyRelayClient {
    fn with<T>(&self, f: impl FnOnce(&RelayClient) -> std::io::Result<T>) -> PyResult<T> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let client = guard
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("the tracking channel is closed"))?;
        f(client).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => PyValueError::new_err(e.to_string()),
            _ => match e.raw_os_error() {
                Some(errno) => os_error(errno, (errno, strerror(errno))),
                None => PyOSError::new_err(e.to_string()),
            },
        })
    }
}

#[pymethods]
impl PyRelayClient {
    #[new]
    fn new(fd: i32) -> PyResult<Self> {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::net::UnixStream;

        if fd < 0 {
            return Err(PyValueError::new_err("fd must be a socket descriptor"));
        }
        // SAFETY: the caller hands the descriptor over (it comes from
        // `socket.detach()`, so no Python object closes it): this is its
        // only owner from here on.
        let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(PyRelayClient {
            inner: std::sync::Mutex::new(Some(RelayClient::new(sock))),
        })
    }

    /// Asks the manager process to track `name`; `ValueError` for a name
    /// the channel cannot carry (ask the server instead).
    fn send_track(&self, name: &str) -> PyResult<()> {
        self.with(|c| c.send_track(name))
    }

    /// Asks for one answer once every line sent before is handled.
    fn request_confirmation(&self) -> PyResult<()> {
        self.with(RelayClient::request_confirmation)
    }

    /// Waits for the answers to `count` requests; how many came before the
    /// channel closed.
    fn await_confirmations(&self, py: Python<'_>, count: usize) -> PyResult<usize> {
        py.detach(|| self.with(|c| c.await_confirmations(count)))
    }

    /// Asks the manager process to unlink every segment and stop.
    fn shutdown(&self) -> PyResult<()> {
        self.with(RelayClient::shutdown)
    }

    /// Closes this end of the channel.
    fn close(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
