//! `ShareableListBase`: the native half of `shmkit.shared_memory.ShareableList`.
//!
//! Item access is the hot path (CPython spends three `struct` calls on each),
//! so it lives here, over the core's layout codec; the Python subclass adds
//! `__repr__`, `__reduce__` and `__class_getitem__`.

use pyo3::exceptions::{PyIndexError, PyKeyError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyRange, PyRangeMethods, PySlice, PyString,
    PyTuple,
};
use pyo3::{ffi, intern};
use shmkit::list::raw::{FixedImage, Layout};
use shmkit::list::{ByteSink, ListError, Value, ValueRef};
use shmkit::{Error, Region};

use crate::errors::to_pyerr;
use crate::segment::Segment;
use crate::shared_memory_module;

/// The native half of `shmkit.shared_memory.ShareableList`: a fixed-length
/// list of int, float, bool, str, bytes and None in a shared memory block,
/// in CPython's layout, with every item read and written natively.
#[pyclass(subclass, dict, weakref, module = "shmkit._shmkit")]
pub(crate) struct ShareableListBase {
    /// The `SharedMemory` the list lives in, as CPython exposes it.
    #[pyo3(get, set)]
    shm: Option<Py<PyAny>>,
    /// The mapping, held so that items stay readable whatever is done to
    /// `shm`, and never read after an unmap.
    segment: Option<Py<Segment>>,
    layout: Option<Layout>,
}

impl ShareableListBase {
    /// The mapping and layout, or an error for a list whose `__init__`
    /// never ran.
    fn parts<'a>(&'a self, py: Python<'a>) -> PyResult<(&'a Region, &'a Layout)> {
        match (&self.segment, &self.layout) {
            (Some(segment), Some(layout)) => Ok((segment.bind(py).get().region(), layout)),
            _ => Err(PyValueError::new_err("ShareableList is not initialised")),
        }
    }
}

/// `SharedMemory(name, create=True, size=size, **kwargs)`.
fn create<'py>(
    class: &Bound<'py, PyAny>,
    kwargs: &Bound<'py, PyDict>,
    name: Option<&Bound<'py, PyAny>>,
    size: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let none = class.py().None().into_bound(class.py());
    class.call((name.unwrap_or(&none), true, size), Some(kwargs))
}

#[pymethods]
impl ShareableListBase {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>) -> Self {
        ShareableListBase {
            shm: None,
            segment: None,
            layout: None,
        }
    }

    /// Creates a list of `sequence` (in a new segment, named `name` if
    /// given), or attaches to the list in segment `name`. `track` (a
    /// shmkit extension, as SharedMemory's) is passed to its segment.
    #[pyo3(signature = (sequence=None, *, name=None, track=true))]
    fn __init__(
        slf: &Bound<'_, Self>,
        sequence: Option<&Bound<'_, PyAny>>,
        name: Option<&Bound<'_, PyAny>>,
        track: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let module = shared_memory_module(py)?;
        let class = module.getattr(intern!(py, "SharedMemory"))?;
        // Only an untracked list passes `track`, so a SharedMemory class
        // without it (patched in by a user) still serves the default.
        let kwargs = PyDict::new(py);
        if !track {
            kwargs.set_item(intern!(py, "track"), false)?;
        }
        let name = name.filter(|n| !n.is_none());
        let sequence = sequence.filter(|s| !s.is_none());

        let (shm, layout) = if let (Some(name), None) = (name, sequence) {
            let shm = class.call((name,), Some(&kwargs))?;
            let segment = segment_of(&shm)?;
            let layout = Layout::attach(segment.bind(py).get().region()).map_err(list_err)?;
            (shm, layout)
        } else if let Some((layout, bytes)) = match sequence {
            Some(seq) => fixed_image(seq)?,
            None => None,
        } {
            // Every item has an 8-byte slot: the bytes are ready, in one piece.
            let shm = create(&class, &kwargs, name, layout.size())?;
            let segment = segment_of(&shm)?;
            let mut region = segment.bind(py).get().region();
            if let Err(e) = region.write(0, &bytes) {
                let _ = shm.call_method0(intern!(py, "unlink"));
                return Err(list_err(e));
            }
            (shm, layout)
        } else {
            // CPython: `sequence = sequence or ()`.
            let items = match sequence {
                Some(seq) if seq.is_truthy()? => collect(seq)?,
                _ => Vec::new(),
            };
            let mut values = Vec::with_capacity(items.len());
            for item in &items {
                values.push(value_ref(item)?);
            }
            // Every check happens here, before anything exists.
            let layout = Layout::for_values(&values).map_err(list_err)?;
            let shm = create(&class, &kwargs, name, layout.size())?;
            let segment = segment_of(&shm)?;
            // Fresh tmpfs pages are zero, so only the list's own bytes are
            // written.
            let mut region = segment.bind(py).get().region();
            let written = layout.write_new(&mut region, &values);
            if let Err(e) = written {
                let _ = shm.call_method0(intern!(py, "unlink"));
                return Err(list_err(e));
            }
            (shm, layout)
        };
        let segment = segment_of(&shm)?;
        let mut this = slf.borrow_mut();
        this.shm = Some(shm.unbind());
        this.segment = Some(segment);
        this.layout = Some(layout);
        Ok(())
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.parts(py)?.1.len())
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (region, layout) = self.parts(py)?;
        if let Ok(slice) = index.cast::<PySlice>() {
            let idx = slice.indices(layout.len() as isize)?;
            let out = PyList::empty(py);
            let mut i = idx.start;
            for _ in 0..idx.slicelength {
                out.append(to_py(py, layout.get(region, i).map_err(list_err)?)?)?;
                i += idx.step;
            }
            return Ok(out.into_any());
        }
        let i = item_index(index)?;
        match layout.get(region, i) {
            Ok(value) => to_py(py, value),
            Err(Error::List(ListError::IndexOutOfRange { .. })) => {
                Err(PyIndexError::new_err("index out of range"))
            }
            Err(Error::List(ListError::InvalidUtf8 { index, .. })) => {
                Err(decode_error(py, region, layout, index))
            }
            Err(e) => Err(list_err(e)),
        }
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        index: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (mut region, layout) = self.parts(py)?;
        if let Ok(slice) = index.cast::<PySlice>() {
            let idx = slice.indices(layout.len() as isize)?;
            let items: Vec<Bound<'_, PyAny>> = value.try_iter()?.collect::<PyResult<_>>()?;
            if items.len() != idx.slicelength {
                return Err(PyValueError::new_err(format!(
                    "a ShareableList cannot change length: {} items for a slice of {}",
                    items.len(),
                    idx.slicelength
                )));
            }
            // Check every value before writing any.
            let values = items
                .iter()
                .map(value_ref_at_set)
                .collect::<PyResult<Vec<_>>>()?;
            let mut i = idx.start;
            for &v in &values {
                layout.check_set(i, v).map_err(list_err)?;
                i += idx.step;
            }
            let mut i = idx.start;
            for v in values {
                layout.set(&mut region, i, v).map_err(list_err)?;
                i += idx.step;
            }
            return Ok(());
        }
        let i = item_index(index)?;
        match layout.set(&mut region, i, value_ref_at_set(value)?) {
            Err(Error::List(ListError::IndexOutOfRange { .. })) => {
                Err(PyIndexError::new_err("assignment index out of range"))
            }
            other => other.map_err(list_err),
        }
    }

    /// `del sl[i]` and `del sl[i:j]` set the items to None; the length of a
    /// ShareableList is fixed.
    fn __delitem__(&self, py: Python<'_>, index: &Bound<'_, PyAny>) -> PyResult<()> {
        let (mut region, layout) = self.parts(py)?;
        if let Ok(slice) = index.cast::<PySlice>() {
            let idx = slice.indices(layout.len() as isize)?;
            let mut i = idx.start;
            for _ in 0..idx.slicelength {
                layout
                    .set(&mut region, i, ValueRef::None)
                    .map_err(list_err)?;
                i += idx.step;
            }
            return Ok(());
        }
        match layout.set(&mut region, item_index(index)?, ValueRef::None) {
            Err(Error::List(ListError::IndexOutOfRange { .. })) => {
                Err(PyIndexError::new_err("assignment index out of range"))
            }
            other => other.map_err(list_err),
        }
    }

    /// Iterates over a snapshot of the items: one copy of the segment,
    /// decoded at once (a list iterator then hands them out at C speed).
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.to_list(py)?.try_iter().map(Bound::into_any)
    }

    /// All items, as a plain list, decoded from one copy of the segment
    /// (a consistent snapshot as far as one memcpy is, and cheaper than
    /// reading shared memory item by item).
    fn to_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let (region, layout) = self.parts(py)?;
        let n = layout.len();
        // SAFETY: PyList_New returns a new reference to a list of `n` NULL
        // slots (or NULL with an exception set, which the wrapper turns into
        // an error). A list whose tail is still NULL, as on an early return
        // below, is valid to free.
        let list = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyList_New(n as ffi::Py_ssize_t))?
                .cast_into_unchecked::<PyList>()
        };
        layout
            .decode_all(region, |i, value| -> Result<(), Stop> {
                let item = to_py(py, value).map_err(Stop::Python)?;
                // SAFETY: decode_all hands out positions 0..n once each, so
                // the slot is in range and still NULL; SET_ITEM steals the
                // reference `into_ptr` hands over.
                #[cfg(not(feature = "abi3-py311"))]
                unsafe {
                    ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr())
                };
                // SAFETY: as above; the limited API has no SET_ITEM macro, and
                // SetItem also steals the reference (it cannot fail on an
                // index in range).
                #[cfg(feature = "abi3-py311")]
                unsafe {
                    ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr())
                };
                Ok(())
            })
            .map_err(|stop| match stop {
                Stop::List(e) => list_err(e),
                Stop::Python(e) => e,
            })?;
        Ok(list)
    }

    /// The number of items equal (by Python's `==`) to `value`.
    fn count(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut n = 0;
        for item in self.to_list(py)?.iter() {
            if value.eq(&item)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The position of the first item equal to `value`.
    fn index(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<usize> {
        for (i, item) in self.to_list(py)?.iter().enumerate() {
            if value.eq(&item)? {
                return Ok(i);
            }
        }
        Err(PyValueError::new_err(format!(
            "{} not in this container",
            value.repr()?
        )))
    }

    /// The struct format of every item, joined, as CPython's `format`.
    #[getter]
    fn format(&self, py: Python<'_>) -> PyResult<String> {
        let (region, layout) = self.parts(py)?;
        layout.format(region).map_err(list_err)
    }

    /// The struct format of item `position`.
    fn _get_packing_format(&self, py: Python<'_>, position: isize) -> PyResult<String> {
        let (region, layout) = self.parts(py)?;
        match layout.item_format(region, position) {
            Err(Error::List(ListError::IndexOutOfRange { .. })) => {
                Err(PyIndexError::new_err("Requested position out of range."))
            }
            other => other.map_err(list_err),
        }
    }
}

/// The items of `seq`, sized up front (lists and tuples by index, anything
/// else through its iterator).
fn collect<'py>(seq: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(list) = seq.cast::<PyList>() {
        return Ok(list.iter().collect());
    }
    if let Ok(tuple) = seq.cast::<PyTuple>() {
        return Ok(tuple.iter().collect());
    }
    let mut items = Vec::with_capacity(seq.len().unwrap_or(0));
    for item in seq.try_iter()? {
        items.push(item?);
    }
    Ok(items)
}

/// The bytes of a new list of `seq` when it is a `range`, a list or a tuple
/// of ints, floats, bools and Nones only (the common case, and the one
/// [`FixedImage`] writes in one pass); None otherwise, for the general path.
fn fixed_image(seq: &Bound<'_, PyAny>) -> PyResult<Option<(Layout, Vec<u8>)>> {
    if let Ok(range) = seq.cast::<PyRange>() {
        return fixed_range(range);
    }
    let items = if let Ok(list) = seq.cast::<PyList>() {
        list.as_sequence().clone()
    } else if let Ok(tuple) = seq.cast::<PyTuple>() {
        tuple.as_sequence().clone()
    } else {
        return Ok(None);
    };
    let n = items.len()?;
    if n == 0 {
        return Ok(None);
    }
    let mut image = FixedImage::new(n).map_err(list_err)?;
    for item in items.try_iter()? {
        let item = item?;
        match value_ref(&item)? {
            ValueRef::Str(_) | ValueRef::Bytes(_) => return Ok(None),
            // A list that grew while we read it: the general path copes.
            value => {
                if image.push(value).is_err() {
                    return Ok(None);
                }
            }
        }
    }
    image.finish().map(Some).or(Ok(None))
}

/// A `range` computed, not iterated: no int object is made.
fn fixed_range(range: &Bound<'_, PyRange>) -> PyResult<Option<(Layout, Vec<u8>)>> {
    let (Ok(start), Ok(step)) = (range.start(), range.step()) else {
        return Ok(None); // beyond isize: the general path raises
    };
    let n = range.len()?;
    if n == 0 {
        return Ok(None);
    }
    let (start, step) = (start as i64, step as i64);
    // The last item bounds them all (a range is monotonic).
    let last = i64::try_from(n - 1)
        .ok()
        .and_then(|k| k.checked_mul(step))
        .and_then(|d| d.checked_add(start));
    if last.is_none() {
        return Ok(None);
    }
    let mut image = FixedImage::new(n).map_err(list_err)?;
    let mut v = start;
    for _ in 0..n {
        image.push(ValueRef::Int(v)).map_err(list_err)?;
        v = v.wrapping_add(step);
    }
    image.finish().map(Some).map_err(list_err)
}

/// Why a bulk decode stopped: bad bytes, or Python failed to make a value.
enum Stop {
    List(Error),
    Python(PyErr),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::List(e)
    }
}

/// The segment object behind a Python `SharedMemory`.
fn segment_of(shm: &Bound<'_, PyAny>) -> PyResult<Py<Segment>> {
    let py = shm.py();
    Ok(shm
        .getattr(intern!(py, "_mmap"))?
        .cast_into::<Segment>()?
        .unbind())
}

/// An item index as CPython's list accepts it: an int (bools included) or
/// anything with `__index__`.
fn item_index(index: &Bound<'_, PyAny>) -> PyResult<isize> {
    if let Ok(int) = index.cast::<PyInt>() {
        // Beyond isize, no list has that index.
        return Ok(int.extract::<isize>().unwrap_or(isize::MAX));
    }
    if index.hasattr(intern!(index.py(), "__index__"))? {
        return index.extract::<isize>();
    }
    Err(PyTypeError::new_err(format!(
        "list indices must be integers or slices, not {}",
        index.get_type().name()?
    )))
}

/// A Python value as the codec's borrowed value. Types are matched exactly,
/// as CPython's `_types_mapping[type(value)]` does (so `True` is a bool and
/// an IntEnum is refused), with CPython's KeyError for the rest.
fn value_ref<'a>(value: &'a Bound<'_, PyAny>) -> PyResult<ValueRef<'a>> {
    typed_value(value, false)
}

/// [`value_ref`] as `__setitem__` sees it: CPython tests `isinstance(value,
/// (str, bytes))` there, so subclasses of str and bytes are stored as such.
fn value_ref_at_set<'a>(value: &'a Bound<'_, PyAny>) -> PyResult<ValueRef<'a>> {
    typed_value(value, true)
}

fn typed_value<'a>(value: &'a Bound<'_, PyAny>, text_subclasses: bool) -> PyResult<ValueRef<'a>> {
    if text_subclasses {
        if let Ok(text) = value.cast::<PyString>() {
            return Ok(ValueRef::Str(text.to_str()?));
        }
        if let Ok(bytes) = value.cast::<PyBytes>() {
            return Ok(ValueRef::Bytes(bytes.as_bytes()));
        }
    }
    if value.is_none() {
        Ok(ValueRef::None)
    } else if value.is_exact_instance_of::<PyBool>() {
        Ok(ValueRef::Bool(value.is_truthy()?))
    } else if value.is_exact_instance_of::<PyInt>() {
        value.extract::<i64>().map(ValueRef::Int).map_err(|_| {
            // CPython raises struct.error after creating the segment (which
            // then leaks); this is refused before anything exists.
            PyOverflowError::new_err("int too large for a ShareableList item (64-bit)")
        })
    } else if value.is_exact_instance_of::<PyFloat>() {
        Ok(ValueRef::Float(value.cast::<PyFloat>()?.value()))
    } else if value.is_exact_instance_of::<PyString>() {
        Ok(ValueRef::Str(value.cast::<PyString>()?.to_str()?))
    } else if value.is_exact_instance_of::<PyBytes>() {
        Ok(ValueRef::Bytes(value.cast::<PyBytes>()?.as_bytes()))
    } else {
        Err(PyKeyError::new_err(value.get_type().unbind()))
    }
}

/// The UnicodeDecodeError CPython raises for a str item whose bytes are not
/// UTF-8 (its own lists can hold one: it cuts multibyte text at creation).
fn decode_error(py: Python<'_>, region: &Region, layout: &Layout, index: usize) -> PyErr {
    let slot = layout.slot(index);
    let raw = match region.read_vec(slot.start, slot.len()) {
        Ok(raw) => raw,
        Err(e) => return list_err(e),
    };
    let end = raw.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    match PyBytes::new(py, &raw[..end]).call_method1(intern!(py, "decode"), ("utf-8",)) {
        Err(e) => e,
        Ok(_) => PyValueError::new_err(format!("item {index} is not valid UTF-8")),
    }
}

#[inline]
fn to_py(py: Python<'_>, value: Value) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        Value::Int(v) => v.into_pyobject(py)?.into_any(),
        Value::Float(v) => PyFloat::new(py, v).into_any(),
        Value::Bool(v) => PyBool::new(py, v).to_owned().into_any(),
        Value::None => py.None().into_bound(py),
        Value::Str(v) => PyString::new(py, &v).into_any(),
        Value::Bytes(v) => PyBytes::new(py, &v).into_any(),
    })
}

/// A list error as the exception CPython raises for the same failure, or a
/// ValueError where CPython has none (it returns garbage or crashes).
fn list_err(err: Error) -> PyErr {
    match err {
        Error::List(ListError::IndexOutOfRange { .. }) => {
            PyIndexError::new_err("index out of range")
        }
        Error::List(e) => PyValueError::new_err(e.to_string()),
        other => to_pyerr(other, ""),
    }
}
