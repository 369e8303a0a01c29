//! Python bindings of shmkit: conversions and exception mapping only.
//!
//! The Python classes live in `python/shmkit/*.py`, thin as CPython's own;
//! this module gives them a buffer-exporting [`Segment`] and a few functions.

use std::ffi::c_int;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::exceptions::{PyBufferError, PyOSError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyInt, PyString};
use pyo3::{ffi, PyErr};

use rustix::fs::OFlags;
use shmkit::{Error, Options, RenameFlags, SharedMemory};

/// Turns a core error into the exception CPython raises for the same
/// failure; `filename` is the name as the Python caller spelled it (with its
/// slash), which CPython puts in `OSError.filename`.
fn to_pyerr(err: Error, filename: &str) -> PyErr {
    match (&err, err.errno()) {
        (Error::InvalidName { problem, .. }, None) => PyValueError::new_err(problem.to_string()),
        (Error::Empty { .. }, _) => PyValueError::new_err("cannot mmap an empty file"),
        (Error::InvalidSize { .. }, _) => PyValueError::new_err(err.to_string()),
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

/// A mapped segment that exports its memory through the buffer protocol.
///
/// The mapping and its descriptor live exactly as long as this object;
/// `close()` only forbids new exports. So a numpy array that keeps this
/// object as its base can never point at unmapped memory.
#[pyclass(frozen, module = "shmkit._shmkit")]
struct Segment {
    shm: SharedMemory,
    exports: AtomicUsize,
    closed: AtomicBool,
}

impl Segment {
    fn new(shm: SharedMemory) -> Self {
        Segment {
            shm,
            exports: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }
}

#[pymethods]
impl Segment {
    /// Size of the mapping in bytes.
    #[getter]
    fn size(&self) -> usize {
        self.shm.size()
    }

    /// The open descriptor, or -1 once closed.
    #[getter]
    fn fd(&self) -> i32 {
        if self.closed() {
            -1
        } else {
            self.shm.as_raw_fd()
        }
    }

    /// Whether `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Buffers currently exported (memoryviews and their kin).
    #[getter]
    fn exports(&self) -> usize {
        self.exports.load(Ordering::Acquire)
    }

    /// Forbids new buffer exports. Raises BufferError while buffers are
    /// exported, as CPython's mmap does. The memory is unmapped, and the
    /// descriptor closed, when this object is freed.
    fn close(&self) -> PyResult<()> {
        if self.exports.load(Ordering::Acquire) > 0 {
            return Err(PyBufferError::new_err(
                "cannot close exported pointers exist",
            ));
        }
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        if this.closed() {
            return Err(PyValueError::new_err("mmap closed or invalid"));
        }
        // SAFETY: `view` is the Py_buffer CPython handed us; ptr/len describe
        // a live read-write mapping that stays mapped while `slf`, which the
        // view keeps a reference to, is alive.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                this.shm.as_ptr().cast::<std::ffi::c_void>(),
                this.shm.size() as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        this.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Creates at least this large release the GIL while the kernel reserves pages.
const RELEASE_GIL_ABOVE: usize = 1 << 20;

/// Opens or creates the segment `name` (spelled as the Python caller gave
/// it, slash included) and maps it.
#[pyfunction]
#[pyo3(signature = (name, create, exclusive, size, mode=0o600, reserve=true))]
fn open_segment(
    py: Python<'_>,
    name: &str,
    create: bool,
    exclusive: bool,
    size: Option<usize>,
    mode: u32,
    reserve: bool,
) -> PyResult<Segment> {
    open_core(py, name, create, exclusive, size, mode, reserve)
        .map(Segment::new)
        .map_err(|e| to_pyerr(e, name))
}

/// [`open_segment`] with the core's error, which callers can match on
/// before it becomes an exception.
fn open_core(
    py: Python<'_>,
    name: &str,
    create: bool,
    exclusive: bool,
    size: Option<usize>,
    mode: u32,
    reserve: bool,
) -> Result<SharedMemory, Error> {
    let opts = Options::new().mode(mode).reserve(reserve);
    let open = || match (create, exclusive, size) {
        (true, true, Some(size)) => opts.create_named(name, size),
        (true, _, size) => opts.open_or_create(name, size),
        (false, _, _) => opts.open(name),
    };
    // Releasing the GIL costs more than a small open takes; only reserving
    // many pages (the kernel zeroes them) is slow enough to be worth it.
    match size {
        Some(size) if create && reserve && size >= RELEASE_GIL_ABOVE => py.detach(open),
        _ => open(),
    }
}

/// The work of `SharedMemory.__init__`: CPython's argument checks, in its
/// order and with its messages, then the open. `flags`, `mode` and
/// `prepend_slash` are the instance's `_flags`, `_mode` and
/// `_prepend_leading_slash` (class attributes a subclass may override),
/// honoured as CPython honours them. Returns `(_name, segment, size)` for
/// the caller to store.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn init_shared_memory<'py>(
    py: Python<'py>,
    name: &Bound<'py, PyAny>,
    create: &Bound<'py, PyAny>,
    size: &Bound<'py, PyAny>,
    mut flags: i32,
    mode: u32,
    prepend_slash: bool,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, Segment>, usize)> {
    // CPython's checks, in CPython's order, with its messages.
    let negative = match size.cast::<PyInt>() {
        Ok(int) => int.lt(0)?,
        Err(_) => !size.ge(0)?,
    };
    if negative {
        return Err(PyValueError::new_err("'size' must be a positive integer"));
    }
    let create = create.is_truthy()?;
    let mut want_size = None;
    if create {
        flags = O_CREAT | O_EXCL | O_RDWR;
        if !size.is_truthy()? {
            return Err(PyValueError::new_err(
                "'size' must be a positive number different from zero",
            ));
        }
        // Refuse a float size before anything exists (CPython leaks a
        // 0-byte segment here).
        want_size = Some(
            size.call_method0(intern!(py, "__index__"))
                .or_else(|_| {
                    Err(PyTypeError::new_err(format!(
                        "'{}' object cannot be interpreted as an integer",
                        size.get_type().name()?
                    )))
                })?
                .extract::<usize>()?,
        );
    }
    let exclusive = flags & O_EXCL != 0;
    if name.is_none() && !exclusive {
        return Err(PyValueError::new_err(
            "'name' can only be None if create=True",
        ));
    }
    let want_create = flags & O_CREAT != 0;

    let (seg, full_name) = if name.is_none() {
        let module = shared_memory_module(py)?;
        loop {
            let candidate = module.getattr(intern!(py, "_make_filename"))?.call0()?;
            let candidate_str = candidate.cast::<PyString>()?.to_str()?;
            match open_core(
                py,
                candidate_str,
                want_create,
                exclusive,
                want_size,
                mode,
                true,
            ) {
                Err(Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(to_pyerr(e, candidate_str)),
                Ok(shm) => break (Segment::new(shm), candidate),
            }
        }
    } else {
        let full = if prepend_slash {
            let Ok(name) = name.cast::<PyString>() else {
                return Err(PyTypeError::new_err(format!(
                    "can only concatenate str (not \"{}\") to str",
                    name.get_type().name()?
                )));
            };
            PyString::new(py, &format!("/{}", name.to_str()?)).into_any()
        } else {
            name.clone()
        };
        let seg = open_segment(
            py,
            full.cast::<PyString>()?.to_str()?,
            want_create,
            exclusive,
            want_size,
            mode,
            true,
        )?;
        (seg, full)
    };
    let size = seg.shm.size();
    Ok((full_name, Bound::new(py, seg)?, size))
}

fn shared_memory_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("shmkit.shared_memory")?.unbind())
        })
        .map(|m| m.bind(py))
}

// The platform's open(2) flags, as Python's `os.O_*` has them.
const O_CREAT: i32 = OFlags::CREATE.bits() as i32;
const O_EXCL: i32 = OFlags::EXCL.bits() as i32;
const O_RDWR: i32 = OFlags::RDWR.bits() as i32;

/// `shm_unlink(name)`.
#[pyfunction]
fn unlink(name: &str) -> PyResult<()> {
    shmkit::unlink(name).map_err(|e| to_pyerr(e, name))
}

/// Renames segment `old` to `new` (both as spelled by the caller).
#[pyfunction]
fn rename(old: &str, new: &str, flags: u32) -> PyResult<()> {
    let flags = RenameFlags::from_bits(flags).map_err(|e| to_pyerr(e, old))?;
    shmkit::rename(old, new, flags).map_err(|e| {
        let which = match &e {
            Error::NotFound { name }
            | Error::AlreadyExists { name }
            | Error::InvalidName { name, .. }
                if name.trim_start_matches('/') == new.trim_start_matches('/') =>
            {
                new
            }
            _ => old,
        };
        to_pyerr(e, which)
    })
}

/// A fresh CPython-style name with its leading slash: `/psm_xxxxxxxx`.
#[pyfunction]
fn make_filename() -> String {
    let mut name = String::with_capacity(13);
    name.push('/');
    name.push_str(&shmkit::name::generate());
    name
}

#[pymodule]
fn _shmkit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Segment>()?;
    m.add_function(wrap_pyfunction!(open_segment, m)?)?;
    m.add_function(wrap_pyfunction!(init_shared_memory, m)?)?;
    m.add_function(wrap_pyfunction!(unlink, m)?)?;
    m.add_function(wrap_pyfunction!(rename, m)?)?;
    m.add_function(wrap_pyfunction!(make_filename, m)?)?;
    m.add("SHM_RENAME_NOREPLACE", RenameFlags::NOREPLACE.bits())?;
    m.add("SHM_RENAME_EXCHANGE", RenameFlags::EXCHANGE.bits())?;
    Ok(())
}
