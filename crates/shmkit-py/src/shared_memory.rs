//! `SharedMemoryBase`: the native half of `shmkit.shared_memory.SharedMemory`.
//!
//! The Python class (python/shmkit/shared_memory.py) subclasses this one and
//! adds what is not on the hot path (`__reduce__`, `__repr__`, `rename`).
//! State lives in struct fields rather than an instance dict, and `__init__`
//! is an ordinary method, so a Python subclass may define its own
//! `__init__` with any signature and call `super().__init__(...)`, as with
//! CPython's pure-Python class.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyString, PyTuple};
use rustix::fs::OFlags;
use shmkit::{Error, Options};

use crate::errors::to_pyerr;
use crate::segment::{open_core, Segment, Want};
use crate::shared_memory_module;

// The platform's open(2) flags, as Python's `os.O_*` has them.
const O_CREAT: i32 = OFlags::CREATE.bits() as i32;
const O_EXCL: i32 = OFlags::EXCL.bits() as i32;
const O_RDWR: i32 = OFlags::RDWR.bits() as i32;

/// The native half of `shmkit.shared_memory.SharedMemory`: a block of
/// shared memory, created or attached to by name, whose mapping lives as
/// long as anything (a memoryview, a numpy array) refers to it.
#[pyclass(subclass, dict, weakref, module = "shmkit._shmkit")]
pub(crate) struct SharedMemoryBase {
    /// The name as opened, with CPython's leading slash (`/psm_…`).
    #[pyo3(get, set)]
    _name: Option<Py<PyAny>>,
    segment: Option<Py<Segment>>,
    /// The memoryview of `buf`, made on first use.
    #[pyo3(get, set)]
    _buf: Option<Py<PyAny>>,
    /// The size of the block in bytes (CPython's private `_size`).
    #[pyo3(get)]
    _size: usize,
    /// Whether this process's leak tracker watches the block (`track=`).
    #[pyo3(get, set)]
    _track: bool,
}

#[pymethods]
impl SharedMemoryBase {
    /// Allocation only; the work is `__init__`'s, as in CPython.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        SharedMemoryBase {
            _name: None,
            segment: None,
            _buf: None,
            _size: 0,
            _track: true,
        }
    }

    /// `SharedMemory(name=None, create=False, size=0, *, track=True)`:
    /// with `create=True`, makes a new block of `size` bytes (named `name`,
    /// or a fresh `psm_xxxxxxxx`), reserving its pages so that a full
    /// `/dev/shm` is an `OSError(ENOSPC)` now rather than a SIGBUS later;
    /// otherwise attaches to the existing block `name` at its full size.
    /// With `track=True`, the block is unlinked once every process using it
    /// has gone without unlinking it. `reserve=True` makes an attach
    /// reserve the block's pages too (a create always does unless
    /// `reserve=False`), so that a block someone else made sparse raises
    /// `OSError(ENOSPC)` at the attach on a full `/dev/shm` instead of
    /// dying of SIGBUS at a write. CPython's argument checks, in its
    /// order and with its messages; `_flags`, `_mode` and
    /// `_prepend_leading_slash` are read from the instance, so a subclass
    /// that overrides them is honoured.
    #[pyo3(signature = (name=None, create=None, size=None, *, track=None, reserve=None))]
    fn __init__(
        slf: &Bound<'_, Self>,
        name: Option<&Bound<'_, PyAny>>,
        create: Option<&Bound<'_, PyAny>>,
        size: Option<&Bound<'_, PyAny>>,
        track: Option<&Bound<'_, PyAny>>,
        reserve: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let create = match create {
            Some(c) => c.is_truthy()?,
            None => false,
        };
        let track = match track {
            Some(t) => t.is_truthy()?,
            None => true,
        };
        let mut want_size = None;
        if let Some(size) = size {
            let negative = match size.cast::<PyInt>() {
                Ok(int) => int.lt(0)?,
                Err(_) => !size.ge(0)?,
            };
            if negative {
                return Err(PyValueError::new_err("'size' must be a positive integer"));
            }
        }
        let mut flags: i32 = slf.getattr(intern!(py, "_flags"))?.extract()?;
        if create {
            // CPython also stores these flags on the instance; nothing reads
            // them back, and the instance dict that would need costs time.
            flags = O_CREAT | O_EXCL | O_RDWR;
            let size = match size {
                Some(size) if size.is_truthy()? => size,
                _ => {
                    return Err(PyValueError::new_err(
                        "'size' must be a positive number different from zero",
                    ))
                }
            };
            // Refuse a float size before anything exists (CPython leaks a
            // 0-byte segment here).
            want_size = Some(index(size)?);
        }
        let name = name.filter(|n| !n.is_none());
        let exclusive = flags & O_EXCL != 0;
        if name.is_none() && !exclusive {
            return Err(PyValueError::new_err(
                "'name' can only be None if create=True",
            ));
        }
        let want_create = flags & O_CREAT != 0;
        // The mode matters only to a create; an attach skips the lookup.
        let mode: u32 = if want_create {
            slf.getattr(intern!(py, "_mode"))?.extract()?
        } else {
            0o600
        };
        let want = Want::from_flags(want_create, exclusive, want_size);
        let mut opts = Options::new().mode(mode).track(track);
        if let Some(reserve) = reserve.filter(|r| !r.is_none()) {
            opts = opts.reserve(reserve.is_truthy()?);
        }

        let (segment, full_name) = match name {
            None => {
                let module = shared_memory_module(py)?;
                loop {
                    let candidate = module.getattr(intern!(py, "_make_filename"))?.call0()?;
                    let text = candidate.cast::<PyString>()?.to_str()?;
                    match open_core(py, text, want, &opts) {
                        Err(Error::AlreadyExists { .. }) => continue,
                        Err(e) => return Err(to_pyerr(e, text)),
                        Ok(shm) => break (Segment::new(shm), candidate),
                    }
                }
            }
            Some(name) => {
                let prepend = slf
                    .getattr(intern!(py, "_prepend_leading_slash"))?
                    .is_truthy()?;
                let full = if prepend {
                    let Ok(name) = name.cast::<PyString>() else {
                        return Err(PyTypeError::new_err(format!(
                            "can only concatenate str (not \"{}\") to str",
                            name.get_type().name()?
                        )));
                    };
                    // One Python allocation, no Rust one: this is the hot path.
                    intern!(py, "/").add(name)?
                } else {
                    name.clone()
                };
                let text = full.cast::<PyString>()?.to_str()?;
                let shm = open_core(py, text, want, &opts).map_err(|e| to_pyerr(e, text))?;
                (Segment::new(shm), full)
            }
        };
        let size = segment.size();
        let segment = Py::new(py, segment)?;
        let mut this = slf.borrow_mut();
        this._name = Some(full_name.unbind());
        this.segment = Some(segment);
        this._buf = None;
        this._size = size;
        this._track = track;
        Ok(())
    }

    /// The segment object (CPython keeps an `mmap` here), or None once closed.
    #[getter]
    fn _mmap(&self, py: Python<'_>) -> Option<Py<Segment>> {
        self.segment.as_ref().map(|s| s.clone_ref(py))
    }

    /// The open descriptor, or -1 once closed.
    #[getter]
    fn _fd(&self, py: Python<'_>) -> i32 {
        self.segment.as_ref().map_or(-1, |s| s.bind(py).get().fd())
    }

    /// A memoryview of the contents of the block.
    #[getter]
    fn buf(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        let mut this = slf.borrow_mut();
        if this._buf.is_none() {
            if let Some(segment) = &this.segment {
                let view = pyo3::types::PyMemoryView::from(segment.bind(py).as_any())?;
                this._buf = Some(view.into_any().unbind());
            }
        }
        Ok(this._buf.as_ref().map(|b| b.clone_ref(py)))
    }

    /// The unique name of the block, without CPython's leading slash.
    #[getter]
    fn name(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        let this = slf.borrow();
        let Some(name) = &this._name else {
            return Ok(None);
        };
        let name = name.bind(py);
        let prepend = slf
            .getattr(intern!(py, "_prepend_leading_slash"))?
            .is_truthy()?;
        if let (true, Ok(text)) = (prepend, name.cast::<PyString>()) {
            if let Some(rest) = text.to_str()?.strip_prefix('/') {
                return Ok(Some(PyString::new(py, rest).into_any().unbind()));
            }
        }
        Ok(Some(name.clone().unbind()))
    }

    /// The size of the block in bytes.
    #[getter]
    fn size(&self) -> usize {
        self._size
    }

    /// Closes this process's access to the block. Raises BufferError, as the
    /// stdlib does, while slices or other views of `buf` are alive; arrays
    /// that only keep the block as their base stay valid.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let buf = slf.borrow_mut()._buf.take();
        if let Some(buf) = buf {
            if let Err(e) = buf.call_method0(py, intern!(py, "release")) {
                slf.borrow_mut()._buf = Some(buf);
                return Err(e);
            }
        }
        let segment = slf.borrow_mut().segment.take();
        if let Some(segment) = segment {
            if let Err(e) = segment.bind(py).get().close() {
                slf.borrow_mut().segment = Some(segment);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Requests that the block be destroyed once every process has closed
    /// it. Call it once, from one process. With `track=True` the leak
    /// tracker forgets the block (only once the unlink succeeded, so a
    /// second call raises FileNotFoundError and nothing else).
    fn unlink(&self, py: Python<'_>) -> PyResult<()> {
        let Some(name) = &self._name else {
            return Ok(());
        };
        let name = name.bind(py).cast::<PyString>()?.to_str()?;
        if name.is_empty() {
            return Ok(());
        }
        shmkit::unlink(name).map_err(|e| to_pyerr(e, name))?;
        if self._track {
            shmkit::tracker::unregister(name);
        }
        Ok(())
    }

    #[classattr]
    fn _flags() -> i32 {
        O_RDWR
    }

    #[classattr]
    fn _mode() -> u32 {
        0o600
    }

    #[classattr]
    fn _prepend_leading_slash() -> bool {
        true
    }
}

/// `operator.index(size)` with the message CPython's `ftruncate` gives,
/// and CPython's `OverflowError` for a size beyond a C `long` (its
/// `off_t`): 2**63 and up.
fn index(size: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = size.py();
    match size.call_method0(intern!(py, "__index__")) {
        Ok(i) => {
            // PyLong_AsLong's own OverflowError, message and all.
            let long: i64 = i.extract()?;
            usize::try_from(long)
                .map_err(|_| PyValueError::new_err("'size' must be a positive integer"))
        }
        Err(_) => Err(PyTypeError::new_err(format!(
            "'{}' object cannot be interpreted as an integer",
            size.get_type().name()?
        ))),
    }
}
