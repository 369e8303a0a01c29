//! [`ArraySegment`]: an array segment's data, exported through the buffer
//! protocol, for `shmkit.numpy` to build ndarrays on.
//!
//! The segment is unlinked when the last object that refers to it in this
//! process is freed and no other process holds it (see
//! `shmkit::array::Array::unlink_if_unused`), unless that was turned off.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::{ffi, PyErr};
use shmkit::array::{Array, DType, Order};
use shmkit::{Error, Options};

use crate::errors::to_pyerr;

/// Creates at least this large release the GIL while the kernel reserves pages.
const RELEASE_GIL_ABOVE: usize = 1 << 20;

/// One handle of an array segment in this process, shared by its
/// writable and read-only exporters.
struct Held {
    /// The mapping every exported buffer points into; `None` only while
    /// being dropped.
    array: Option<Array>,
    /// After a fork, this process's own handle: the inherited one's open
    /// file is the parent's, so its lock speaks for the parent.
    own: Mutex<Option<Array>>,
    /// Whether to unlink the segment when the last reference goes, if
    /// nobody else holds it.
    auto: AtomicBool,
}

impl Held {
    fn array(&self) -> &Array {
        self.array.as_ref().expect("an array is held until dropped")
    }

    /// The handle whose lock is this process's.
    fn with_own<R>(&self, f: impl FnOnce(&Array) -> R) -> R {
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        f(own.as_ref().unwrap_or(self.array()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.auto.load(Ordering::Acquire) {
            let _ = self.with_own(Array::unlink_if_unused);
        }
        let own = self.own.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(array) = self.array.take() {
            release(array, own);
        }
    }
}

type Handles = (Array, Option<Array>);

/// The release thread's queue, and the process it belongs to.
static REAPER: Mutex<Option<(u32, Sender<Handles>)>> = Mutex::new(None);

/// The release thread: drops what it is sent, and ends once idle for a
/// moment, so that a process that forks later has no thread to warn about.
fn reap(rx: &Receiver<Handles>) {
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(handles) => drop(handles),
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                // Senders send under this lock: nothing can arrive between
                // the last look and the queue's removal.
                let mut reaper = REAPER.lock().unwrap_or_else(|e| e.into_inner());
                if let Ok(handles) = rx.try_recv() {
                    drop(reaper);
                    drop(handles);
                    continue;
                }
                *reaper = None;
                return;
            }
        }
    }
}

/// From this many bytes of data on, a handle is unmapped and closed by a
/// background thread: the kernel frees a segment's pages at its last
/// unmap, which for a large array takes long enough to stall the Python
/// thread that dropped it.
const RELEASE_IN_BACKGROUND_FROM: usize = 1 << 20;

/// Unmaps and closes `array` (and `own`): here for a small array, else on a
/// thread of this process's own. The segment was unlinked already, or is
/// someone else's to unlink.
fn release(array: Array, own: Option<Array>) {
    if array.descriptor().data_len < RELEASE_IN_BACKGROUND_FROM {
        return;
    }
    let mut reaper = REAPER.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    // A fork child has the parent's sender but not its thread.
    if reaper.as_ref().is_none_or(|(p, _)| *p != pid) {
        let (tx, rx) = std::sync::mpsc::channel::<Handles>();
        let started = std::thread::Builder::new()
            .name("shmkit-array-release".into())
            .spawn(move || reap(&rx));
        *reaper = started.is_ok().then_some((pid, tx));
    }
    if let Some((_, tx)) = reaper.as_ref() {
        // On failure the handles come back in the error and drop here.
        let _ = tx.send((array, own));
    }
}

fn array_err(e: Error, name: &str) -> PyErr {
    match e {
        Error::BadArray { .. } | Error::WrongKind { .. } => PyValueError::new_err(e.to_string()),
        e => to_pyerr(e, name),
    }
}

fn options(track: bool) -> Options {
    Options::new().track(track)
}

/// The data of an array segment, as a buffer: read-only for a read-only
/// exporter, whatever the mapping allows, so that numpy refuses to make a
/// view built on it writable.
#[pyclass(frozen, weakref, module = "shmkit._shmkit")]
pub(crate) struct ArraySegment {
    held: Arc<Held>,
    readonly: bool,
}

#[pymethods]
impl ArraySegment {
    /// A new zero-filled array segment under `name` (a fresh one if None).
    #[staticmethod]
    #[pyo3(signature = (name, dtype, shape, fortran=false, readonly=false, track=true))]
    fn create(
        py: Python<'_>,
        name: Option<&str>,
        dtype: &str,
        shape: Vec<usize>,
        fortran: bool,
        readonly: bool,
        track: bool,
    ) -> PyResult<Self> {
        let dt = DType::parse(dtype).map_err(PyValueError::new_err)?;
        let order = if fortran { Order::Fortran } else { Order::C };
        let size = shape
            .iter()
            .try_fold(dt.itemsize(), |n, &d| n.checked_mul(d))
            .unwrap_or(usize::MAX);
        let make = || Array::create_with(&options(track), name, dt, &shape, order, readonly);
        let array = if size >= RELEASE_GIL_ABOVE {
            py.detach(make)
        } else {
            make()
        }
        .map_err(|e| array_err(e, name.unwrap_or("")))?;
        Ok(Self::wrap(array, false))
    }

    /// Attaches to the array segment `name`; `readonly` exports read-only
    /// buffers even if the segment is not marked read-only.
    #[staticmethod]
    #[pyo3(signature = (name, readonly=false, track=true))]
    fn open(name: &str, readonly: bool, track: bool) -> PyResult<Self> {
        let array = Array::open_with(&options(track), name).map_err(|e| array_err(e, name))?;
        let readonly = readonly || array.readonly();
        Ok(Self::wrap(array, readonly))
    }

    /// A read-only exporter of the same handle.
    fn readonly_twin(&self) -> Self {
        ArraySegment {
            held: Arc::clone(&self.held),
            readonly: true,
        }
    }

    /// The segment's name, without a slash.
    #[getter]
    fn name(&self) -> &str {
        self.held.array().name()
    }

    /// numpy's `dtype.str` of the elements.
    #[getter]
    fn dtype(&self) -> String {
        self.held.array().dtype().to_string()
    }

    /// The shape.
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.held.array().shape().to_vec()
    }

    /// Whether the elements are in Fortran order.
    #[getter]
    fn fortran(&self) -> bool {
        self.held.array().descriptor().order == Order::Fortran
    }

    /// Whether this exporter's buffers are read-only.
    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }

    /// Whether the segment itself is marked read-only.
    #[getter]
    fn marked_readonly(&self) -> bool {
        self.held.array().readonly()
    }

    /// The data's length in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.held.array().descriptor().data_len
    }

    /// The address of the first data byte.
    #[getter]
    fn address(&self) -> usize {
        self.held.array().data_ptr() as usize
    }

    /// The segment's inode number, which tells it from a later segment of
    /// the same name.
    #[getter]
    fn ino(&self) -> PyResult<u64> {
        rustix::fs::fstat(self.held.array().shared_memory())
            .map(|st| st.st_ino)
            .map_err(|e| PyErr::from(std::io::Error::from(e)))
    }

    /// Whether the segment is unlinked once nothing in any process holds it.
    #[getter]
    fn get_auto(&self) -> bool {
        self.held.auto.load(Ordering::Acquire)
    }

    #[setter]
    fn set_auto(&self, auto: bool) {
        self.held.auto.store(auto, Ordering::Release);
    }

    /// Transfers on their way and not yet given up on.
    #[getter]
    fn in_flight(&self) -> u32 {
        self.held.array().in_flight()
    }

    /// Records a transfer to another process, given up on after `seconds`.
    fn begin_transfer(&self, seconds: f64) {
        self.held
            .array()
            .begin_transfer(Duration::from_secs_f64(seconds.clamp(0.0, 86_400.0)));
    }

    /// Records that a transfer arrived.
    fn end_transfer(&self) {
        self.held.array().end_transfer();
    }

    /// In a fork child: takes a handle of this process's own, so that its
    /// lock, not the parent's, says this process holds the segment.
    fn after_fork(&self) {
        let array = self.held.array();
        let ino = self.ino().ok();
        let own = Array::open_with(&options(array.shared_memory().is_tracked()), array.name())
            .ok()
            .filter(|own| {
                rustix::fs::fstat(own.shared_memory())
                    .ok()
                    .map(|s| s.st_ino)
                    == ino
            });
        if own.is_none() {
            // The name no longer stands for this segment: not ours to free.
            self.held.auto.store(false, Ordering::Release);
        }
        *self.held.own.lock().unwrap_or_else(|e| e.into_inner()) = own;
    }

    /// Unlinks the segment if nothing else holds it and nothing is in
    /// flight; returns whether it did. This handle's lock may be gone
    /// after a failed probe, so call it only when letting go.
    fn unlink_if_unused(&self) -> PyResult<bool> {
        let name = self.name().to_owned();
        self.held
            .with_own(Array::unlink_if_unused)
            .map_err(|e| array_err(e, &name))
    }

    /// Removes the name now (attached processes keep their views).
    fn unlink(&self) -> PyResult<()> {
        self.held.auto.store(false, Ordering::Release);
        self.held
            .array()
            .shared_memory()
            .unlink()
            .map_err(|e| to_pyerr(e, self.name()))
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        if this.readonly && flags & ffi::PyBUF_WRITABLE != 0 {
            return Err(PyBufferError::new_err("the shared array is read-only"));
        }
        let array = this.held.array();
        // SAFETY: `view` is the Py_buffer CPython handed us; the data range
        // lies inside the mapping (the descriptor was checked against the
        // segment's size), which stays mapped while `slf`, which the view
        // keeps a reference to, is alive.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                array.data_ptr().cast::<std::ffi::c_void>(),
                array.descriptor().data_len as ffi::Py_ssize_t,
                c_int::from(this.readonly),
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}

impl ArraySegment {
    fn wrap(array: Array, readonly: bool) -> Self {
        ArraySegment {
            held: Arc::new(Held {
                array: Some(array),
                own: Mutex::new(None),
                auto: AtomicBool::new(true),
            }),
            readonly,
        }
    }
}
