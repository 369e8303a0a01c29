//! [`Segment`]: the mapped memory, exported through the buffer protocol.

use std::ffi::c_int;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::{ffi, PyErr};
use shmkit::{Error, Options, SharedMemory};

use crate::errors::to_pyerr;

/// A mapped segment that exports its memory through the buffer protocol.
///
/// The mapping and its descriptor live exactly as long as this object;
/// `close()` only forbids new exports. So a numpy array that keeps this
/// object as its base can never point at unmapped memory.
#[pyclass(frozen, module = "shmkit._shmkit")]
pub(crate) struct Segment {
    shm: SharedMemory,
    exports: AtomicUsize,
    closed: AtomicBool,
}

impl Segment {
    /// The mapped bytes.
    pub(crate) fn region(&self) -> &shmkit::Region {
        self.shm.region()
    }

    pub(crate) fn new(shm: SharedMemory) -> Self {
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
    pub(crate) fn size(&self) -> usize {
        self.shm.size()
    }

    /// The open descriptor, or -1 once closed.
    #[getter]
    pub(crate) fn fd(&self) -> i32 {
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
    pub(crate) fn close(&self) -> PyResult<()> {
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

/// How CPython's open flags ask for a segment.
#[derive(Clone, Copy)]
pub(crate) enum Want {
    /// `O_CREAT | O_EXCL`: a new segment of this size.
    Create(usize),
    /// `O_CREAT` alone: open, creating it (with this size, if given) if absent.
    OpenOrCreate(Option<usize>),
    /// Neither: an existing segment.
    Open,
}

impl Want {
    /// From CPython's `O_CREAT`/`O_EXCL` bits and the size of a create.
    pub(crate) fn from_flags(create: bool, exclusive: bool, size: Option<usize>) -> Self {
        match (create, exclusive, size) {
            (true, true, Some(size)) => Want::Create(size),
            (true, _, size) => Want::OpenOrCreate(size),
            (false, _, _) => Want::Open,
        }
    }
}

/// Opens or creates the segment `name` (spelled as the Python caller gave
/// it, slash included) and maps it.
///
/// `reserve` as [`Options::reserve`]; not given, a create reserves and an
/// attach does not.
#[pyfunction]
#[pyo3(signature = (name, create, exclusive, size, mode=0o600, reserve=None))]
pub(crate) fn open_segment(
    py: Python<'_>,
    name: &str,
    create: bool,
    exclusive: bool,
    size: Option<usize>,
    mode: u32,
    reserve: Option<bool>,
) -> PyResult<Segment> {
    let mut opts = Options::new().mode(mode);
    if let Some(reserve) = reserve {
        opts = opts.reserve(reserve);
    }
    open_core(py, name, Want::from_flags(create, exclusive, size), &opts)
        .map(Segment::new)
        .map_err(|e| to_pyerr(e, name))
}

/// [`open_segment`] with the core's error, which callers can match on
/// before it becomes an exception.
pub(crate) fn open_core(
    py: Python<'_>,
    name: &str,
    want: Want,
    opts: &Options,
) -> Result<SharedMemory, Error> {
    let open = || match want {
        Want::Create(size) => opts.create_named(name, size),
        Want::OpenOrCreate(size) => opts.open_or_create(name, size),
        Want::Open => opts.open(name),
    };
    // Releasing the GIL costs more than a small open takes; only reserving
    // many pages (the kernel zeroes them) is slow enough to be worth it.
    // An attach that reserves does not know the size beforehand; it is
    // rare enough that the cost of releasing the GIL does not matter.
    match want {
        Want::Create(size) if opts.reserves() && size >= RELEASE_GIL_ABOVE => py.detach(open),
        Want::Open | Want::OpenOrCreate(_) if opts.reserves_on_open() => py.detach(open),
        _ => open(),
    }
}
