//! `QueueBase`: the native half of `shmkit.queues.Queue`, so that a put or
//! a get is one call into Rust: pickle (in C, with a pickler kept between
//! calls), write the ring in place; read the ring into a `bytes`, unpickle.
//!
//! Items are pickled with protocol 5 and multiprocessing's reducers
//! (`ForkingPickler`'s table, rebuilt when someone registers more).
//! Out-of-band buffers of at least [`OOB_THRESHOLD`] bytes, and pickles
//! too large for the ring, travel in segments of their own (see
//! `shmkit::queue`); the receiver's buffers are memoryviews of those
//! mappings, freed when the last view goes.
//!
//! Waits release the GIL and run Python's signal handlers between sleeps,
//! so Ctrl-C interrupts a blocked `get`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView, PyTuple};
use shmkit::queue::{Buffers, Queue, BUFFERS, DEFAULT_CAPACITY, INDIRECT, PICKLED};
use shmkit::sync::Wait;
use shmkit::{Error, Options, Region, SharedMemory};

use crate::errors::to_pyerr;
use crate::segment::Segment;

/// Buffers at least this large leave the ring for a segment of their own.
/// Below it, copying through the ring (into it, out of it) costs less
/// than a segment's create, map and unlink; above it, the single copy
/// into a segment wins more the larger the buffer.
const OOB_THRESHOLD: usize = 64 << 10;

/// Cached Python objects: the module-level helpers of `shmkit.queues` and
/// the stdlib's `pickle.loads`, `queue.Empty`, `queue.Full`.
struct Globals {
    loads: Py<PyAny>,
    empty: Py<PyAny>,
    full: Py<PyAny>,
    make_pickler: Py<PyAny>,
    wrap: Py<PyAny>,
    copyreg_table: Py<PyDict>,
    extra_reducers: Py<PyDict>,
}

fn globals(py: Python<'_>) -> PyResult<&Globals> {
    static G: PyOnceLock<Globals> = PyOnceLock::new();
    G.get_or_try_init(py, || {
        let queue = py.import("queue")?;
        let queues = py.import("shmkit.queues")?;
        let reducers = py
            .import("multiprocessing.reduction")?
            .getattr("ForkingPickler")?
            .getattr("_extra_reducers")?;
        Ok::<_, PyErr>(Globals {
            loads: py.import("pickle")?.getattr("loads")?.unbind(),
            empty: queue.getattr("Empty")?.unbind(),
            full: queue.getattr("Full")?.unbind(),
            make_pickler: queues.getattr("_make_pickler")?.unbind(),
            wrap: queues.getattr("_wrap")?.unbind(),
            copyreg_table: py
                .import("copyreg")?
                .getattr("dispatch_table")?
                .cast_into::<PyDict>()?
                .unbind(),
            extra_reducers: reducers.cast_into::<PyDict>()?.unbind(),
        })
    })
}

/// The pickler's `buffer_callback`: takes the out-of-band buffers it is
/// handed.
#[pyclass(frozen, module = "shmkit._shmkit")]
pub(crate) struct Sink {
    buffers: Mutex<Vec<Py<PyAny>>>,
    /// Whether `buffers` may hold something (saves the lock otherwise).
    any: AtomicBool,
}

/// A pickle's chunks: one, but for huge pickles, which the pickler writes
/// in frames (kept apart so that the common case allocates nothing).
#[derive(Default)]
struct Chunks {
    first: Option<Py<PyBytes>>,
    rest: Vec<Py<PyBytes>>,
}

impl Chunks {
    fn iter(&self) -> impl Iterator<Item = &Py<PyBytes>> {
        self.first.iter().chain(&self.rest)
    }

    fn push(&mut self, bytes: Py<PyBytes>) {
        if self.first.is_none() {
            self.first = Some(bytes);
        } else {
            self.rest.push(bytes);
        }
    }
}

#[pymethods]
impl Sink {
    /// Keeps a large buffer out of band (returns False), lets a small one
    /// be pickled in band (True).
    fn __call__(&self, pb: Bound<'_, PyAny>) -> PyResult<bool> {
        let raw = pb.call_method0("raw")?;
        if raw.len()? < OOB_THRESHOLD {
            return Ok(true);
        }
        self.buffers
            .lock()
            .expect("not poisoned")
            .push(raw.unbind());
        self.any.store(true, Ordering::Relaxed);
        Ok(false)
    }
}

/// A pickler kept between puts: its bound `dump` and `clear_memo`, the
/// list its file's `write` appends to, its buffer callback, and the sizes
/// of the reducer tables it was built from (a registration since makes a
/// new one).
struct Pickler {
    dump: Py<PyAny>,
    clear_memo: Py<PyAny>,
    chunks: Py<PyList>,
    sink: Py<Sink>,
    tables: (usize, usize),
}

/// One item, pickled.
struct Pickled {
    chunks: Chunks,
    buffers: Vec<Py<PyAny>>,
}

impl Pickled {
    fn len(&self, py: Python<'_>) -> usize {
        self.chunks
            .iter()
            .map(|c| c.bind(py).as_bytes().len())
            .sum()
    }

    fn write(&self, py: Python<'_>, region: &Region, mut at: usize) -> shmkit::Result<()> {
        for c in self.chunks.iter() {
            let bytes = c.bind(py).as_bytes();
            region.write_at(at, bytes)?;
            at += bytes.len();
        }
        Ok(())
    }

    fn to_vec(&self, py: Python<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len(py));
        for c in self.chunks.iter() {
            out.extend_from_slice(c.bind(py).as_bytes());
        }
        out
    }
}

/// Copies a contiguous buffer into the start of `region`.
fn copy_buffer(py: Python<'_>, view: &Py<PyAny>, region: &Region) -> shmkit::Result<()> {
    let buf = PyBuffer::<u8>::get(view.bind(py))
        .map_err(|_| Error::InvalidFlags("an out-of-band buffer is no longer readable"))?;
    if !buf.is_c_contiguous() {
        return Err(Error::InvalidFlags(
            "an out-of-band buffer is not contiguous",
        ));
    }
    // SAFETY: `buf` holds an export of a C-contiguous buffer of
    // `len_bytes()` bytes at `buf_ptr()`, which stays valid while the
    // export lives; the GIL is held, so no Python code changes it meanwhile.
    let bytes = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
    region.write_at(0, bytes)
}

/// The error a failed queue call raises.
fn queue_err(e: Error, name: &str) -> PyErr {
    match e {
        Error::MessageTooLarge { .. } | Error::Corrupt { .. } => {
            PyValueError::new_err(e.to_string())
        }
        Error::Interrupted => PyKeyboardInterrupt::new_err(()),
        e => to_pyerr(e, name),
    }
}

/// Runs `f` with the GIL released, as the sync bindings' blocking calls do.
fn blocking<T: Send>(
    py: Python<'_>,
    name: &str,
    block: bool,
    timeout: Option<f64>,
    f: impl FnOnce(&mut Wait<'_>) -> shmkit::Result<T> + Send,
) -> PyResult<T> {
    crate::sync::blocking_with(py, block, timeout, f, |e| queue_err(e, name))
}

/// A large `bytes`, `bytearray` or `memoryview` item, wrapped so that its
/// buffer travels out of band (pickle keeps these in band otherwise).
fn large_bytes<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let bytes_like = obj.is_exact_instance_of::<PyBytes>()
        || obj.is_exact_instance_of::<pyo3::types::PyByteArray>()
        || obj.is_exact_instance_of::<PyMemoryView>();
    if bytes_like && obj.len().unwrap_or(0) * 8 >= OOB_THRESHOLD {
        return globals(py)?.wrap.bind(py).call1((obj,));
    }
    Ok(obj.clone())
}

fn check_timeout(timeout: Option<f64>) -> PyResult<()> {
    match timeout {
        Some(t) if t.is_nan() => Err(PyValueError::new_err("timeout must not be NaN")),
        _ => Ok(()),
    }
}

/// The native half of `shmkit.queues.Queue`: a queue in a shared memory
/// segment, attached by name from any process.
#[pyclass(subclass, weakref, frozen, module = "shmkit._shmkit")]
pub(crate) struct QueueBase {
    q: Queue,
    maxsize: u64,
    closed: AtomicBool,
    pickler: Mutex<Option<Pickler>>,
}

impl QueueBase {
    fn check_open(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().closed.load(Ordering::Relaxed) {
            let repr = slf.repr()?;
            return Err(PyValueError::new_err(format!("Queue {repr} is closed")));
        }
        Ok(())
    }

    fn name_str(&self) -> &str {
        self.q.name()
    }

    /// Pickles `obj` with the kept pickler (or, if another thread is using
    /// it, a fresh one).
    fn pickle(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Pickled> {
        let g = globals(py)?;
        let tables = (
            g.copyreg_table.bind(py).len(),
            g.extra_reducers.bind(py).len(),
        );
        let kept = match self.pickler.try_lock() {
            Ok(mut slot) => slot.take().filter(|p| p.tables == tables),
            Err(_) => None,
        };
        let p = match kept {
            Some(p) => p,
            None => {
                let sink = Py::new(
                    py,
                    Sink {
                        buffers: Mutex::new(Vec::new()),
                        any: AtomicBool::new(false),
                    },
                )?;
                let made = g.make_pickler.bind(py).call1((sink.clone_ref(py),))?;
                let (dump, clear_memo, chunks): (Py<PyAny>, Py<PyAny>, Py<PyList>) =
                    made.extract()?;
                Pickler {
                    dump,
                    clear_memo,
                    chunks,
                    sink,
                    tables,
                }
            }
        };
        let dumped = p.dump.bind(py).call1((obj,));
        let _ = p.clear_memo.bind(py).call0();
        let list = p.chunks.bind(py);
        let mut chunks = Chunks::default();
        let mut taken = Ok(());
        for chunk in list.iter() {
            match chunk.cast_into::<PyBytes>() {
                Ok(b) => chunks.push(b.unbind()),
                Err(e) => {
                    let data = e.into_inner();
                    match PyBuffer::<u8>::get(&data).and_then(|b| b.to_vec(py)) {
                        Ok(v) => chunks.push(PyBytes::new(py, &v).unbind()),
                        Err(e) => taken = Err(e),
                    }
                }
            }
        }
        if !list.is_empty() {
            // SAFETY: `list` is a live list (we hold it, and the GIL);
            // setting a slice to NULL deletes it, without the slice object
            // `del_slice` would make.
            if unsafe {
                pyo3::ffi::PyList_SetSlice(
                    list.as_ptr(),
                    0,
                    list.len() as isize,
                    std::ptr::null_mut(),
                )
            } != 0
            {
                return Err(PyErr::fetch(py));
            }
        }
        let sink = p.sink.get();
        let buffers = if sink.any.swap(false, Ordering::Relaxed) {
            std::mem::take(&mut *sink.buffers.lock().expect("not poisoned"))
        } else {
            Vec::new()
        };
        if let Ok(mut slot) = self.pickler.try_lock() {
            *slot = Some(p);
        }
        dumped?;
        taken?;
        Ok(Pickled { chunks, buffers })
    }

    /// Whether `item` goes through the ring alone (no buffer segments).
    fn inline(&self, py: Python<'_>, item: &Pickled) -> bool {
        item.buffers.is_empty() && item.len(py) <= self.q.max_message()
    }

    /// Puts an item that needs buffer segments: its out-of-band buffers,
    /// and the pickle itself when the ring cannot take it.
    fn put_buffers(
        &self,
        py: Python<'_>,
        item: Pickled,
        flags: u32,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        // Room for the names in the ring: generous, checked again inside.
        let indirect = item.len(py) + 64 * (item.buffers.len() + 1) > self.q.max_message();
        let mut sizes = Vec::with_capacity(item.buffers.len() + 1);
        if indirect {
            sizes.push(item.len(py));
        }
        for b in &item.buffers {
            sizes.push(b.bind(py).len()?);
        }
        if sizes.contains(&0) {
            // A segment cannot be empty; the threshold keeps buffers large.
            return Err(PyValueError::new_err(
                "an empty item cannot travel in a segment",
            ));
        }
        let payload = if indirect {
            Vec::new()
        } else {
            item.to_vec(py)
        };
        let flags = flags | if indirect { INDIRECT } else { 0 };
        let q = &self.q;
        blocking(py, self.name_str(), block, timeout, |wait| {
            q.push_with_buffers(&payload, flags, &sizes, wait, |i, region| {
                Python::attach(|py| {
                    if indirect && i == 0 {
                        item.write(py, region, 0)
                    } else {
                        copy_buffer(py, &item.buffers[i - usize::from(indirect)], region)
                    }
                })
            })
        })
    }

    /// Puts one pickled (or raw) item: in place in the ring if it fits now,
    /// else waiting with the GIL released.
    fn put_one(
        &self,
        py: Python<'_>,
        item: Pickled,
        flags: u32,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        if !self.inline(py, &item) {
            return self.put_buffers(py, item, flags, block, timeout);
        }
        let len = item.len(py);
        let n = self
            .q
            .push_records(&[len], &[flags], &mut Wait::no_wait(), |_, region, at| {
                item.write(py, region, at)
            })
            .map_err(|e| queue_err(e, self.name_str()))?;
        if n == 1 || !block {
            return Ok(n == 1);
        }
        let data = item.to_vec(py);
        let q = &self.q;
        let n = blocking(py, self.name_str(), block, timeout, |wait| {
            q.push_records(&[data.len()], &[flags], wait, |_, region, at| {
                region.write_at(at, &data)
            })
        })?;
        Ok(n == 1)
    }

    /// Turns a record into the item: `bytes` for a raw one, else the
    /// unpickled object (its buffers memoryviews of their segments).
    fn decode(
        py: Python<'_>,
        data: Bound<'_, PyBytes>,
        flags: u32,
        buffers: Vec<SharedMemory>,
    ) -> PyResult<Py<PyAny>> {
        if flags & PICKLED == 0 {
            return Ok(data.into_any().unbind());
        }
        let loads = globals(py)?.loads.bind(py);
        if flags & BUFFERS == 0 {
            return Ok(loads.call1((data,))?.unbind());
        }
        let mut views = Vec::with_capacity(buffers.len());
        for shm in buffers {
            let seg = Bound::new(py, Segment::new(shm))?;
            views.push(PyMemoryView::from(seg.as_any())?);
        }
        let (pickle, rest) = if flags & INDIRECT != 0 && !views.is_empty() {
            let first = views.remove(0);
            (first.into_any(), views)
        } else {
            (data.into_any(), views)
        };
        let kwargs = PyDict::new(py);
        kwargs.set_item("buffers", PyList::new(py, rest)?)?;
        Ok(loads.call((pickle,), Some(&kwargs))?.unbind())
    }

    /// Pops up to `max` records, handing each to `f(bytes, flags,
    /// buffers)`, waiting as the caller says; how many (0 when the wait
    /// ended first).
    fn pop_raw<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        block: bool,
        timeout: Option<f64>,
        mut f: impl FnMut(Bound<'py, PyBytes>, u32, Buffers) -> PyResult<()>,
    ) -> PyResult<usize> {
        let mut failed: Option<PyErr> = None;
        let n = self
            .q
            .pop_each(
                max,
                &mut Wait::no_wait(),
                |region, at, len, flags, buffers| {
                    if failed.is_some() {
                        return;
                    }
                    let made = PyBytes::new_with(py, len, |b| {
                        region
                            .read_at(at, b)
                            .map_err(|e| PyValueError::new_err(e.to_string()))
                    })
                    .and_then(|b| f(b, flags, buffers));
                    if let Err(e) = made {
                        failed = Some(e);
                    }
                },
            )
            .map_err(|e| queue_err(e, self.name_str()))?;
        if let Some(e) = failed {
            return Err(e);
        }
        if n > 0 || !block {
            return Ok(n);
        }
        let q = &self.q;
        let got = blocking(py, self.name_str(), block, timeout, |wait| {
            let mut got = Vec::new();
            q.pop_each(max, wait, |region, at, len, flags, buffers| {
                got.push((region.read_vec(at, len), flags, buffers))
            })?;
            Ok(got)
        })?;
        let n = got.len();
        for (data, flags, buffers) in got {
            let data = data.map_err(|e| queue_err(e, self.name_str()))?;
            f(PyBytes::new(py, &data), flags, buffers)?;
        }
        Ok(n)
    }
}

#[pymethods]
impl QueueBase {
    /// `Queue(maxsize=0, *, name=None, capacity=None, create=None,
    /// track=True)`: a new queue under a fresh name (or `name`, with
    /// `create=True`), or, given `name` alone, the existing queue of that
    /// name. `maxsize` bounds the items (0: only the ring's `capacity` in
    /// bytes does); `track` as for SharedMemory.
    #[new]
    #[pyo3(signature = (maxsize=0, *, name=None, capacity=None, create=None, track=true))]
    fn new(
        py: Python<'_>,
        maxsize: i64,
        name: Option<&str>,
        capacity: Option<usize>,
        create: Option<bool>,
        track: bool,
    ) -> PyResult<Self> {
        let opts = Options::new().track(track);
        let name = name.map(|n| n.strip_prefix('/').unwrap_or(n));
        let create = create.unwrap_or(name.is_none());
        let maxsize = u64::try_from(maxsize).unwrap_or(0);
        let label = name.unwrap_or("");
        let q = if create {
            let capacity = capacity.unwrap_or(DEFAULT_CAPACITY);
            py.detach(|| Queue::create_with(&opts, name, capacity, maxsize))
        } else {
            if name.is_none() {
                return Err(PyValueError::new_err(
                    "'name' can only be None if create=True",
                ));
            }
            py.detach(|| Queue::open_with(&opts, label))
        }
        .map_err(|e| match e {
            Error::InvalidSize { .. } | Error::InvalidFlags(_) => {
                PyValueError::new_err(e.to_string())
            }
            e => queue_err(e, label),
        })?;
        let maxsize = q.max_items();
        Ok(QueueBase {
            q,
            maxsize,
            closed: AtomicBool::new(false),
            pickler: Mutex::new(None),
        })
    }

    /// The segment's name (without a leading slash).
    #[getter]
    fn name(&self) -> &str {
        self.q.name()
    }

    /// The most items it holds (0: only the ring bounds it).
    #[getter]
    fn maxsize(&self) -> u64 {
        self.maxsize
    }

    /// The ring's capacity in bytes.
    #[getter]
    fn capacity(&self) -> usize {
        self.q.capacity()
    }

    /// Whether `close()` was called on this handle.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Puts `obj`, pickled; waits for room as `block` and `timeout` say,
    /// raising `queue.Full` when it cannot.
    #[pyo3(signature = (obj, block=true, timeout=None))]
    fn put(
        slf: &Bound<'_, Self>,
        obj: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let py = slf.py();
        Self::check_open(slf)?;
        check_timeout(timeout)?;
        let this = slf.get();
        let item = this.pickle(py, &large_bytes(py, obj)?)?;
        if this.put_one(py, item, PICKLED, block, timeout)? {
            Ok(())
        } else {
            Err(PyErr::from_value(globals(py)?.full.bind(py).call0()?))
        }
    }

    /// `put(obj, False)`.
    fn put_nowait(slf: &Bound<'_, Self>, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::put(slf, obj, false, None)
    }

    /// Puts `data` (any bytes-like object) as a raw message, as the Rust
    /// API's `push` does: `get()` returns it as `bytes`.
    #[pyo3(signature = (data, block=true, timeout=None))]
    fn put_bytes(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let py = slf.py();
        Self::check_open(slf)?;
        check_timeout(timeout)?;
        let bytes = match data.cast::<PyBytes>() {
            Ok(b) => b.clone(),
            Err(_) => PyBytes::new(py, &PyBuffer::<u8>::get(data)?.to_vec(py)?),
        };
        let item = Pickled {
            chunks: Chunks {
                first: Some(bytes.unbind()),
                rest: Vec::new(),
            },
            buffers: Vec::new(),
        };
        let this = slf.get();
        if item.len(py) > this.q.max_message() {
            return Err(queue_err(
                Error::MessageTooLarge {
                    size: item.len(py),
                    max: this.q.max_message(),
                },
                this.name_str(),
            ));
        }
        if this.put_one(py, item, 0, block, timeout)? {
            Ok(())
        } else {
            Err(PyErr::from_value(globals(py)?.full.bind(py).call0()?))
        }
    }

    /// Puts every item of `items` in order, as many at once as the ring
    /// takes. Raises `queue.Full` when the wait ends first, with the
    /// number of items put as its argument.
    #[pyo3(signature = (items, block=true, timeout=None))]
    fn put_many(
        slf: &Bound<'_, Self>,
        items: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let py = slf.py();
        Self::check_open(slf)?;
        check_timeout(timeout)?;
        let this = slf.get();
        let mut batch: Vec<Pickled> = Vec::new();
        let mut put = 0usize;
        let full = |put: usize| -> PyResult<()> {
            Err(PyErr::from_value(globals(py)?.full.bind(py).call1((put,))?))
        };
        let flush = |batch: &mut Vec<Pickled>, put: &mut usize| -> PyResult<bool> {
            let done = this.put_batch(py, batch, block, timeout)?;
            *put += done;
            let all = done == batch.len();
            batch.clear();
            Ok(all)
        };
        for obj in items.try_iter()? {
            let item = this.pickle(py, &large_bytes(py, &obj?)?)?;
            if this.inline(py, &item) {
                batch.push(item);
                continue;
            }
            if !flush(&mut batch, &mut put)? {
                return full(put);
            }
            if !this.put_buffers(py, item, PICKLED, block, timeout)? {
                return full(put);
            }
            put += 1;
        }
        if !flush(&mut batch, &mut put)? {
            return full(put);
        }
        Ok(())
    }

    /// Removes and returns an item, waiting as `block` and `timeout` say,
    /// raising `queue.Empty` when none came.
    #[pyo3(signature = (block=true, timeout=None))]
    fn get(slf: &Bound<'_, Self>, block: bool, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        Self::check_open(slf)?;
        check_timeout(timeout)?;
        let this = slf.get();
        let mut item = None;
        this.pop_raw(py, 1, block, timeout, |data, flags, buffers| {
            let buffers = buffers.map_err(|e| queue_err(e, this.name_str()))?;
            item = Some((data, flags, buffers));
            Ok(())
        })?;
        match item {
            Some((data, flags, buffers)) => Self::decode(py, data, flags, buffers),
            None => Err(PyErr::from_value(globals(py)?.empty.bind(py).call0()?)),
        }
    }

    /// `get(False)`.
    fn get_nowait(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Self::get(slf, false, None)
    }

    /// Removes and returns one message's bytes as they are in the ring: a
    /// raw message's, or a pickled item's pickle.
    #[pyo3(signature = (block=true, timeout=None))]
    fn get_bytes(
        slf: &Bound<'_, Self>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyBytes>> {
        let py = slf.py();
        Self::check_open(slf)?;
        check_timeout(timeout)?;
        let this = slf.get();
        let mut item = None;
        this.pop_raw(py, 1, block, timeout, |data, _, _| {
            item = Some(data.unbind());
            Ok(())
        })?;
        match item {
            Some(data) => Ok(data),
            None => Err(PyErr::from_value(globals(py)?.empty.bind(py).call0()?)),
        }
    }

    /// Removes and returns up to `max_items` items as a list: those there
    /// once the first came, waiting for it as `block` and `timeout` say
    /// (`queue.Empty` when none came).
    #[pyo3(signature = (max_items=1000, timeout=None, block=true))]
    fn get_many(
        slf: &Bound<'_, Self>,
        max_items: usize,
        timeout: Option<f64>,
        block: bool,
    ) -> PyResult<Py<PyList>> {
        let py = slf.py();
        Self::check_open(slf)?;
        check_timeout(timeout)?;
        let this = slf.get();
        // Records are copied out under the consumers' lock and decoded
        // after it is released, so that unpickling holds up no other
        // consumer.
        let mut raw = Vec::new();
        let n = this.pop_raw(
            py,
            max_items.max(1),
            block,
            timeout,
            |data, flags, buffers| {
                raw.push((data, flags, buffers));
                Ok(())
            },
        )?;
        if n == 0 {
            return Err(PyErr::from_value(globals(py)?.empty.bind(py).call0()?));
        }
        let out = PyList::empty(py);
        for (data, flags, buffers) in raw {
            let buffers = buffers.map_err(|e| queue_err(e, this.name_str()))?;
            out.append(Self::decode(py, data, flags, buffers)?)?;
        }
        Ok(out.unbind())
    }

    /// Items in the queue now.
    fn qsize(&self) -> usize {
        self.q.len()
    }

    /// Whether the queue is empty now.
    fn empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Whether the queue is full now (`maxsize` items, or no room in the
    /// ring for a small item).
    fn full(&self) -> bool {
        self.q.is_full()
    }

    /// This handle may no longer put or get (`ValueError`); the queue
    /// itself, and other handles, are unaffected.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Removes the queue's name, and the segments of large items still in
    /// it; handles already attached keep working.
    fn unlink(&self) -> PyResult<()> {
        self.q.unlink().map_err(|e| queue_err(e, self.name_str()))
    }

    /// Items put and not yet marked done.
    #[getter]
    fn _unfinished_tasks(&self) -> u64 {
        self.q.unfinished_tasks()
    }

    /// Marks one item's task done; `False` if every task was done already.
    fn _task_done(&self) -> bool {
        self.q.task_done()
    }

    /// Waits until every item put is marked done (GIL released, Ctrl-C
    /// interrupts); whether that happened before `timeout`.
    #[pyo3(signature = (timeout=None))]
    fn _join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        check_timeout(timeout)?;
        let q = &self.q;
        blocking(py, self.name_str(), true, timeout, |wait| q.join_wait(wait))
    }

    /// The state as a tuple: (items, ring bytes used, capacity, maxsize).
    fn _state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(
            py,
            [
                self.q.len(),
                self.q.used_bytes(),
                self.q.capacity(),
                self.maxsize as usize,
            ],
        )
    }
}

impl QueueBase {
    /// Pushes a batch of inline items, at once where they fit; how many
    /// were pushed.
    fn put_batch(
        &self,
        py: Python<'_>,
        batch: &[Pickled],
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        let lens: Vec<usize> = batch.iter().map(|p| p.len(py)).collect();
        let n = self
            .q
            .push_records(&lens, &[PICKLED], &mut Wait::no_wait(), |i, region, at| {
                batch[i].write(py, region, at)
            })
            .map_err(|e| queue_err(e, self.name_str()))?;
        if n == batch.len() || !block {
            return Ok(n);
        }
        let rest: Vec<Vec<u8>> = batch[n..].iter().map(|p| p.to_vec(py)).collect();
        let q = &self.q;
        let rest_lens: Vec<usize> = rest.iter().map(Vec::len).collect();
        let more = blocking(py, self.name_str(), block, timeout, |wait| {
            q.push_records(&rest_lens, &[PICKLED], wait, |i, region, at| {
                region.write_at(at, &rest[i])
            })
        })?;
        Ok(n + more)
    }
}
