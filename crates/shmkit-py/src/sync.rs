//! `shmkit.sync`: the classes of `multiprocessing.synchronize` over
//! `shmkit::sync`, shared by name.
//!
//! The uncontended paths (a free lock, a semaphore with a count, a set
//! event) run with the GIL held and make no system call; only a call that
//! must block releases the GIL, and while it sleeps it wakes between
//! slices to run the interpreter's signal handlers, so Ctrl-C raises
//! KeyboardInterrupt as in `threading`.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyRuntimeError, PyRuntimeWarning, PyTypeError, PyValueError,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use shmkit::sync::{
    Acquired, Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore, Wait,
};
use shmkit::{Error, Options};

use crate::errors::to_pyerr;
use crate::segment::Segment;

create_exception!(
    shmkit.sync,
    OwnerDiedWarning,
    PyRuntimeWarning,
    "A shmkit lock was taken from a holder that died holding it: the data \
     it guards may be half-written. The lock's `owner_died` is True until \
     `mark_repaired()`."
);

/// `threading.BrokenBarrierError`, which `shmkit.sync.Barrier` raises as
/// `threading.Barrier` does.
fn broken_barrier(py: Python<'_>) -> PyErr {
    static CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    match CLASS.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("threading")?
                .getattr("BrokenBarrierError")?
                .unbind(),
        )
    }) {
        Ok(class) => match class.bind(py).call0() {
            Ok(e) => PyErr::from_value(e),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// A core error as the exception `threading`/`multiprocessing` raise.
fn sync_err(py: Python<'_>, err: Error, name: &str) -> PyErr {
    match err {
        Error::NotOwner => PyRuntimeError::new_err("cannot release un-acquired lock"),
        Error::WouldDeadlock => PyRuntimeError::new_err(
            "cannot acquire a lock this thread holds: the wait would never end",
        ),
        Error::TooManyReleases => PyValueError::new_err("Semaphore released too many times"),
        Error::BrokenBarrier => broken_barrier(py),
        Error::WrongKind { .. } => PyValueError::new_err(err.to_string()),
        Error::InvalidFlags(what) => PyValueError::new_err(what),
        Error::Interrupted => PyKeyboardInterrupt::new_err(()),
        e => to_pyerr(e, name),
    }
}

/// Runs a blocking call with the GIL released: `f` gets a [`Wait`] for
/// Python's `(block, timeout)` whose hook runs the signal handlers; an
/// exception they raise ends the wait and is raised.
fn blocking<T: Send>(
    py: Python<'_>,
    name: &str,
    block: bool,
    timeout: Option<f64>,
    f: impl FnOnce(&mut Wait<'_>) -> shmkit::Result<T> + Send,
) -> PyResult<T> {
    blocking_with(py, block, timeout, f, |e| sync_err(py, e, name))
}

/// [`blocking`], with `to_err` turning the other failures into exceptions
/// (the queue's bindings share it).
pub(crate) fn blocking_with<T: Send>(
    py: Python<'_>,
    block: bool,
    timeout: Option<f64>,
    f: impl FnOnce(&mut Wait<'_>) -> shmkit::Result<T> + Send,
    to_err: impl FnOnce(Error) -> PyErr,
) -> PyResult<T> {
    let mut raised: Option<PyErr> = None;
    let got = py.detach(|| {
        let mut hook = || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    raised = Some(e);
                    true
                }
            })
        };
        let mut wait = Wait::from_python(block, timeout).interruptible(&mut hook);
        f(&mut wait)
    });
    match got {
        Ok(t) => Ok(t),
        Err(Error::Interrupted) => Err(raised.unwrap_or_else(|| PyKeyboardInterrupt::new_err(()))),
        Err(e) => Err(to_err(e)),
    }
}

/// Warns of an owner's death (after which the lock stays held).
fn report(py: Python<'_>, got: Acquired, what: &str, name: &str) -> PyResult<()> {
    if got == Acquired::OwnerDied {
        let msg = format!(
            "a holder of {what} {name:?} died holding it; the data it guards may be \
             inconsistent (call mark_repaired() once it is repaired)"
        );
        let class = py.get_type::<OwnerDiedWarning>();
        PyErr::warn(
            py,
            &class,
            &std::ffi::CString::new(msg).unwrap_or_default(),
            1,
        )?;
    }
    Ok(())
}

fn options(track: bool) -> Options {
    Options::new().track(track)
}

/// How many generated names a create tries before giving up.
const NAME_ATTEMPTS: usize = 100;

/// Creates with a name from `shmkit.shared_memory._make_filename` (the
/// `psm_` names `SharedMemory` makes, and the function tests patch),
/// retrying while generated names collide.
fn with_fresh_name<T>(
    py: Python<'_>,
    mut make: impl FnMut(&str) -> shmkit::Result<T>,
) -> PyResult<T> {
    let module = crate::shared_memory_module(py)?;
    let mut last = None;
    for _ in 0..NAME_ATTEMPTS {
        let name: String = module
            .getattr(intern!(py, "_make_filename"))?
            .call0()?
            .extract()?;
        match make(bare(&name)) {
            Err(Error::AlreadyExists { .. }) => last = Some(name),
            Err(e) => return Err(sync_err(py, e, &name)),
            Ok(t) => return Ok(t),
        }
    }
    Err(sync_err(
        py,
        Error::AlreadyExists {
            name: last.unwrap_or_default(),
        },
        "",
    ))
}

/// A name as Python callers may spell it, with CPython's leading slash.
fn bare(name: &str) -> &str {
    name.strip_prefix('/').unwrap_or(name)
}

/// `shmkit.sync._rebuild`, which unpickling calls to attach by name.
fn rebuild(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static FUNC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    FUNC.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("shmkit.sync")?.getattr("_rebuild")?.unbind())
    })
    .map(|f| f.bind(py).clone())
}

fn reduce<'py>(
    slf: &Bound<'py, PyAny>,
    name: &str,
    track: bool,
    extra: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = slf.py();
    PyTuple::new(
        py,
        [
            rebuild(py)?,
            PyTuple::new(
                py,
                [
                    slf.get_type().into_any(),
                    name.into_pyobject(py)?.into_any(),
                    pyo3::types::PyBool::new(py, track).to_owned().into_any(),
                    extra,
                ],
            )?
            .into_any(),
        ],
    )
}

macro_rules! lock_class {
    ($py_name:ident, $name:literal, $core:ident, $what:literal) => {
        #[pyclass(frozen, module = "shmkit.sync", name = $name)]
        pub(crate) struct $py_name {
            pub(crate) inner: $core<'static>,
            track: bool,
        }

        impl $py_name {
            fn name_str(&self) -> &str {
                self.inner.name().unwrap_or("")
            }
        }

        #[pymethods]
        impl $py_name {
            #[new]
            #[pyo3(signature = (name=None, create=false, *, track=true))]
            fn new(
                py: Python<'_>,
                name: Option<&str>,
                create: bool,
                track: bool,
            ) -> PyResult<Self> {
                let opts = options(track);
                let inner = match name.map(bare) {
                    None => {
                        return Ok($py_name {
                            inner: with_fresh_name(py, |n| $core::create_with(&opts, Some(n)))?,
                            track,
                        })
                    }
                    Some(n) if create => $core::create_with(&opts, Some(n)),
                    Some(n) => $core::open_with(&opts, n),
                }
                .map_err(|e| sync_err(py, e, name.unwrap_or("")))?;
                Ok($py_name { inner, track })
            }

            /// The segment's name (without a leading slash).
            #[getter]
            fn name(&self) -> &str {
                self.name_str()
            }

            /// Takes the lock: `True`, or `False` when `block` is false or
            /// `timeout` seconds passed first (`None`: no limit).
            #[pyo3(signature = (block=true, timeout=None))]
            fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
                let got = match self.inner.acquire(&mut Wait::no_wait()) {
                    Ok(Some(got)) => Some(got),
                    Ok(None) if !block => None,
                    Ok(None) => {
                        let inner = &self.inner;
                        blocking(py, self.name_str(), block, timeout, |w| inner.acquire(w))?
                    }
                    Err(e) => return Err(sync_err(py, e, self.name_str())),
                };
                match got {
                    Some(got) => {
                        if let Err(e) = report(py, got, $what, self.name_str()) {
                            let _ = self.inner.release();
                            return Err(e);
                        }
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }

            /// Releases one hold; `RuntimeError` unless this thread holds it
            /// (shmkit locks are owned, unlike `multiprocessing.Lock`).
            fn release(&self, py: Python<'_>) -> PyResult<()> {
                self.inner
                    .release()
                    .map_err(|e| sync_err(py, e, self.name_str()))
            }

            fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
                self.acquire(py, true, None)
            }

            #[pyo3(signature = (*_exc))]
            fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<()> {
                self.release(py)
            }

            /// Whether anyone holds it.
            fn locked(&self) -> bool {
                self.inner.is_locked()
            }

            /// Whether the calling thread holds it.
            fn _is_owned(&self) -> bool {
                self.inner.is_owned()
            }

            /// True from a holder's death until `mark_repaired()`.
            #[getter]
            fn owner_died(&self) -> bool {
                self.inner.owner_died()
            }

            /// Declares the guarded data consistent again.
            fn mark_repaired(&self) {
                self.inner.mark_repaired()
            }

            /// The kernel thread id of the holder, or None.
            #[getter]
            fn owner_tid(&self) -> Option<u32> {
                self.inner.owner_tid()
            }

            /// Removes the name; handles already attached keep working.
            fn unlink(&self, py: Python<'_>) -> PyResult<()> {
                self.inner
                    .unlink()
                    .map_err(|e| sync_err(py, e, self.name_str()))
            }

            fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
                let me = slf.get();
                reduce(
                    slf.as_any(),
                    me.name_str(),
                    me.track,
                    slf.py().None().into_bound(slf.py()),
                )
            }

            fn __repr__(&self) -> String {
                format!(
                    "<shmkit.sync.{} name={:?} {}>",
                    $name,
                    self.name_str(),
                    if self.inner.is_locked() {
                        "locked"
                    } else {
                        "unlocked"
                    }
                )
            }
        }
    };
}

lock_class!(PyLock, "Lock", Lock, "lock");
lock_class!(PyRLock, "RLock", RLock, "rlock");

macro_rules! semaphore_class {
    ($py_name:ident, $name:literal, $core:ident) => {
        #[pyclass(frozen, module = "shmkit.sync", name = $name)]
        pub(crate) struct $py_name {
            inner: $core<'static>,
            track: bool,
        }

        impl $py_name {
            fn name_str(&self) -> &str {
                self.inner.name().unwrap_or("")
            }
        }

        #[pymethods]
        impl $py_name {
            #[new]
            #[pyo3(signature = (value=1, *, name=None, create=false, track=true))]
            fn new(
                py: Python<'_>,
                value: i64,
                name: Option<&str>,
                create: bool,
                track: bool,
            ) -> PyResult<Self> {
                if value < 0 {
                    return Err(PyValueError::new_err(
                        "semaphore initial value must be >= 0",
                    ));
                }
                let value = u32::try_from(value)
                    .ok()
                    .filter(|&v| v <= shmkit::sync::MAX_COUNT)
                    .ok_or_else(|| PyValueError::new_err("semaphore initial value too large"))?;
                let opts = options(track);
                let inner = match name.map(bare) {
                    None => {
                        return Ok($py_name {
                            inner: with_fresh_name(py, |n| {
                                $core::create_with(&opts, Some(n), value)
                            })?,
                            track,
                        })
                    }
                    Some(n) if create => $core::create_with(&opts, Some(n), value),
                    Some(n) => $core::open_with(&opts, n),
                }
                .map_err(|e| sync_err(py, e, name.unwrap_or("")))?;
                Ok($py_name { inner, track })
            }

            /// The segment's name (without a leading slash).
            #[getter]
            fn name(&self) -> &str {
                self.name_str()
            }

            /// Takes one: `True`, or `False` when `block` is false or
            /// `timeout` seconds passed first.
            #[pyo3(signature = (block=true, timeout=None))]
            fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
                if self.inner.try_acquire() {
                    return Ok(true);
                }
                if !block {
                    return Ok(false);
                }
                let inner = &self.inner;
                blocking(py, self.name_str(), block, timeout, |w| {
                    inner.acquire_with(w)
                })
            }

            /// Gives `n` back (anyone may: the count belongs to nobody).
            #[pyo3(signature = (n=1))]
            fn release(&self, py: Python<'_>, n: i64) -> PyResult<()> {
                if n < 1 {
                    return Err(PyValueError::new_err("n must be one or more"));
                }
                let n = u32::try_from(n).map_err(|_| sync_err(py, Error::TooManyReleases, ""))?;
                self.inner
                    .release(n)
                    .map_err(|e| sync_err(py, e, self.name_str()))
            }

            fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
                self.acquire(py, true, None)
            }

            #[pyo3(signature = (*_exc))]
            fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<()> {
                self.release(py, 1)
            }

            /// The count now.
            fn get_value(&self) -> u32 {
                self.inner.value()
            }

            /// Removes the name; handles already attached keep working.
            fn unlink(&self, py: Python<'_>) -> PyResult<()> {
                self.inner
                    .unlink()
                    .map_err(|e| sync_err(py, e, self.name_str()))
            }

            fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
                let me = slf.get();
                reduce(
                    slf.as_any(),
                    me.name_str(),
                    me.track,
                    slf.py().None().into_bound(slf.py()),
                )
            }

            fn __repr__(&self) -> String {
                format!(
                    "<shmkit.sync.{} name={:?} value={}>",
                    $name,
                    self.name_str(),
                    self.inner.value()
                )
            }
        }
    };
}

semaphore_class!(PySemaphore, "Semaphore", Semaphore);
semaphore_class!(PyBoundedSemaphore, "BoundedSemaphore", BoundedSemaphore);

/// A flag processes set, clear and wait for, by name.
#[pyclass(frozen, module = "shmkit.sync", name = "Event")]
pub(crate) struct PyEvent {
    inner: Event<'static>,
    track: bool,
}

impl PyEvent {
    fn name_str(&self) -> &str {
        self.inner.name().unwrap_or("")
    }
}

#[pymethods]
impl PyEvent {
    #[new]
    #[pyo3(signature = (name=None, create=false, *, track=true))]
    fn new(py: Python<'_>, name: Option<&str>, create: bool, track: bool) -> PyResult<Self> {
        let opts = options(track);
        let inner = match name.map(bare) {
            None => {
                return Ok(PyEvent {
                    inner: with_fresh_name(py, |n| Event::create_with(&opts, Some(n)))?,
                    track,
                })
            }
            Some(n) if create => Event::create_with(&opts, Some(n)),
            Some(n) => Event::open_with(&opts, n),
        }
        .map_err(|e| sync_err(py, e, name.unwrap_or("")))?;
        Ok(PyEvent { inner, track })
    }

    /// The segment's name (without a leading slash).
    #[getter]
    fn name(&self) -> &str {
        self.name_str()
    }

    /// Whether it is set.
    fn is_set(&self) -> bool {
        self.inner.is_set()
    }

    /// Sets it, waking every waiter.
    fn set(&self) {
        self.inner.set()
    }

    /// Clears it.
    fn clear(&self) {
        self.inner.clear()
    }

    /// Waits until it is set, at most `timeout` seconds; whether it is.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        if self.inner.is_set() {
            return Ok(true);
        }
        let inner = &self.inner;
        blocking(py, self.name_str(), true, timeout, |w| inner.wait_with(w))
    }

    /// Removes the name; handles already attached keep working.
    fn unlink(&self, py: Python<'_>) -> PyResult<()> {
        self.inner
            .unlink()
            .map_err(|e| sync_err(py, e, self.name_str()))
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let me = slf.get();
        reduce(
            slf.as_any(),
            me.name_str(),
            me.track,
            slf.py().None().into_bound(slf.py()),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "<shmkit.sync.Event name={:?} {}>",
            self.name_str(),
            if self.inner.is_set() { "set" } else { "unset" }
        )
    }
}

/// A condition variable shared by name, with its lock.
#[pyclass(frozen, module = "shmkit.sync", name = "Condition")]
pub(crate) struct PyCondition {
    inner: Condition<'static>,
    track: bool,
}

impl PyCondition {
    fn name_str(&self) -> &str {
        self.inner.name().unwrap_or("")
    }

    fn wait_inner(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let inner = &self.inner;
        let (notified, got) = blocking(py, self.name_str(), true, timeout, |w| inner.wait_with(w))?;
        report(py, got, "condition's lock", self.name_str())?;
        Ok(notified)
    }
}

#[pymethods]
impl PyCondition {
    #[new]
    #[pyo3(signature = (lock=None, *, name=None, create=false, track=true))]
    fn new(
        py: Python<'_>,
        lock: Option<&Bound<'_, PyAny>>,
        name: Option<&str>,
        create: bool,
        track: bool,
    ) -> PyResult<Self> {
        let lock_name = match lock.filter(|l| !l.is_none()) {
            None => None,
            Some(l) => {
                if let Ok(l) = l.cast::<PyLock>() {
                    Some(l.get().name_str().to_owned())
                } else if let Ok(l) = l.cast::<PyRLock>() {
                    Some(l.get().name_str().to_owned())
                } else {
                    return Err(PyTypeError::new_err(
                        "a shmkit Condition needs a shmkit.sync.Lock or RLock (or None)",
                    ));
                }
            }
        };
        let opts = options(track);
        let inner = match name.map(bare) {
            None => with_fresh_name(py, |n| {
                Condition::create_with(&opts, Some(n), lock_name.as_deref())
            })
            .map(Ok)?,
            Some(n) if create => Condition::create_with(&opts, Some(n), lock_name.as_deref()),
            Some(n) => {
                let c = Condition::open_with(&opts, n).map_err(|e| sync_err(py, e, n))?;
                if lock_name.is_some() && lock_name.as_deref() != c.lock_name() {
                    return Err(PyValueError::new_err(
                        "the condition uses another lock than the one given",
                    ));
                }
                Ok(c)
            }
        }
        .map_err(|e| sync_err(py, e, name.unwrap_or("")))?;
        Ok(PyCondition { inner, track })
    }

    /// The segment's name (without a leading slash).
    #[getter]
    fn name(&self) -> &str {
        self.name_str()
    }

    /// The name of the Lock/RLock it uses, or None for its own.
    #[getter]
    fn lock_name(&self) -> Option<&str> {
        self.inner.lock_name()
    }

    /// Takes the lock (see `Lock.acquire`).
    #[pyo3(signature = (block=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        let got = match self.inner.acquire_lock_with(&mut Wait::no_wait()) {
            Ok(Some(got)) => Some(got),
            Ok(None) if !block => None,
            Ok(None) => {
                let inner = &self.inner;
                blocking(py, self.name_str(), block, timeout, |w| {
                    inner.acquire_lock_with(w)
                })?
            }
            Err(e) => return Err(sync_err(py, e, self.name_str())),
        };
        match got {
            Some(got) => {
                if let Err(e) = report(py, got, "condition's lock", self.name_str()) {
                    let _ = self.inner.release_lock();
                    return Err(e);
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Releases the lock.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.inner
            .release_lock()
            .map_err(|e| sync_err(py, e, self.name_str()))
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.release(py)
    }

    fn _is_owned(&self) -> bool {
        self.inner.is_owned()
    }

    /// Marks the lock's data repaired after an owner's death.
    fn mark_repaired(&self) {
        self.inner.mark_repaired()
    }

    /// Releases the lock, waits for a notify (at most `timeout` seconds),
    /// takes the lock back: whether a notify came.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        if !self.inner.is_owned() {
            return Err(PyRuntimeError::new_err("cannot wait on un-acquired lock"));
        }
        self.wait_inner(py, timeout)
    }

    /// Waits until `predicate()` is true, at most `timeout` seconds; the
    /// predicate's last result.
    #[pyo3(signature = (predicate, timeout=None))]
    fn wait_for<'py>(
        &self,
        py: Python<'py>,
        predicate: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !self.inner.is_owned() {
            return Err(PyRuntimeError::new_err("cannot wait on un-acquired lock"));
        }
        let deadline = timeout.and_then(|t| {
            let t = std::time::Duration::try_from_secs_f64(t.max(0.0))
                .unwrap_or(std::time::Duration::MAX);
            std::time::Instant::now().checked_add(t)
        });
        let mut result = predicate.call0()?;
        while !result.is_truthy()? {
            let left = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    Some(left.as_secs_f64())
                }
                None => None,
            };
            self.wait_inner(py, left)?;
            result = predicate.call0()?;
        }
        Ok(result)
    }

    /// Wakes up to `n` waiters (perhaps more: waits may wake spuriously).
    #[pyo3(signature = (n=1))]
    fn notify(&self, n: i64) -> PyResult<()> {
        if !self.inner.is_owned() {
            return Err(PyRuntimeError::new_err("cannot notify on un-acquired lock"));
        }
        let n = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        self.inner
            .notify(n)
            .map_err(|_| PyRuntimeError::new_err("cannot notify on un-acquired lock"))
    }

    /// Wakes every waiter.
    fn notify_all(&self) -> PyResult<()> {
        self.notify(i64::from(u32::MAX))
    }

    /// Removes the name (not its lock's); handles attached keep working.
    fn unlink(&self, py: Python<'_>) -> PyResult<()> {
        self.inner
            .unlink()
            .map_err(|e| sync_err(py, e, self.name_str()))
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let me = slf.get();
        reduce(
            slf.as_any(),
            me.name_str(),
            me.track,
            slf.py().None().into_bound(slf.py()),
        )
    }

    fn __repr__(&self) -> String {
        format!("<shmkit.sync.Condition name={:?}>", self.name_str())
    }
}

/// A barrier for a fixed number of parties, shared by name.
#[pyclass(frozen, module = "shmkit.sync", name = "Barrier")]
pub(crate) struct PyBarrier {
    inner: Barrier<'static>,
    track: bool,
    action: Option<Py<PyAny>>,
    timeout: Option<f64>,
}

impl PyBarrier {
    fn name_str(&self) -> &str {
        self.inner.name().unwrap_or("")
    }
}

#[pymethods]
impl PyBarrier {
    #[new]
    #[pyo3(signature = (parties=None, action=None, timeout=None, *, name=None, create=false, track=true))]
    fn new(
        py: Python<'_>,
        parties: Option<i64>,
        action: Option<Py<PyAny>>,
        timeout: Option<f64>,
        name: Option<&str>,
        create: bool,
        track: bool,
    ) -> PyResult<Self> {
        let opts = options(track);
        let making = name.is_none() || create;
        let parties = match parties {
            Some(p) if p >= 1 => u32::try_from(p)
                .map_err(|_| PyValueError::new_err("parties must be at most 2**32-1"))?,
            Some(_) => return Err(PyValueError::new_err("parties must be >= 1")),
            None if making => {
                return Err(PyTypeError::new_err(
                    "Barrier() needs parties unless it attaches to a name",
                ))
            }
            None => 0,
        };
        let inner = match name.map(bare) {
            None => {
                with_fresh_name(py, |n| Barrier::create_with(&opts, Some(n), parties)).map(Ok)?
            }
            Some(n) if create => Barrier::create_with(&opts, Some(n), parties),
            Some(n) => Barrier::open_with(&opts, n),
        }
        .map_err(|e| sync_err(py, e, name.unwrap_or("")))?;
        if !making && parties != 0 && inner.parties() != parties {
            return Err(PyValueError::new_err(format!(
                "the barrier is for {} parties, not {parties}",
                inner.parties()
            )));
        }
        Ok(PyBarrier {
            inner,
            track,
            action: action.filter(|a| !a.is_none(py)),
            timeout,
        })
    }

    /// The segment's name (without a leading slash).
    #[getter]
    fn name(&self) -> &str {
        self.name_str()
    }

    /// Waits for every party: this party's arrival index. The last to
    /// arrive runs `action` (after the others are released).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u32> {
        let timeout = timeout.or(self.timeout);
        let inner = &self.inner;
        let index = blocking(py, self.name_str(), true, timeout, |w| inner.wait_with(w))?;
        if index + 1 == self.inner.parties() {
            if let Some(action) = &self.action {
                if let Err(e) = action.call0(py) {
                    let _ = self.inner.abort();
                    return Err(e);
                }
            }
        }
        Ok(index)
    }

    /// Breaks it: waiters now and later get BrokenBarrierError.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.inner
            .abort()
            .map_err(|e| sync_err(py, e, self.name_str()))
    }

    /// Empties and mends it; parties waiting now get BrokenBarrierError.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.inner
            .reset()
            .map_err(|e| sync_err(py, e, self.name_str()))
    }

    #[getter]
    fn parties(&self) -> u32 {
        self.inner.parties()
    }

    #[getter]
    fn n_waiting(&self) -> u32 {
        self.inner.n_waiting()
    }

    #[getter]
    fn broken(&self) -> bool {
        self.inner.is_broken()
    }

    /// Removes the name; handles already attached keep working.
    fn unlink(&self, py: Python<'_>) -> PyResult<()> {
        self.inner
            .unlink()
            .map_err(|e| sync_err(py, e, self.name_str()))
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let me = slf.get();
        let py = slf.py();
        let extra = PyTuple::new(
            py,
            [
                me.action
                    .as_ref()
                    .map_or_else(|| py.None(), |a| a.clone_ref(py)),
                me.timeout.into_pyobject(py)?.into_any().unbind(),
            ],
        )?;
        reduce(slf.as_any(), me.name_str(), me.track, extra.into_any())
    }

    fn __repr__(&self) -> String {
        format!(
            "<shmkit.sync.Barrier name={:?} waiters={}/{}>",
            self.name_str(),
            self.inner.n_waiting(),
            self.inner.parties()
        )
    }
}

/// An aligned 64-bit integer in a shmkit `SharedMemory` or a ShareableList's
/// int slot, read and changed atomically.
#[pyclass(frozen, module = "shmkit.sync", name = "AtomicInt")]
pub(crate) struct PyAtomicInt {
    segment: Py<Segment>,
    offset: usize,
}

impl PyAtomicInt {
    fn word<'a>(&'a self, py: Python<'a>) -> PyResult<&'a std::sync::atomic::AtomicI64> {
        self.segment
            .bind(py)
            .get()
            .region()
            .atomic_i64(self.offset)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

fn segment_of(shm: &Bound<'_, PyAny>) -> PyResult<Py<Segment>> {
    let py = shm.py();
    shm.getattr(intern!(py, "_mmap"))
        .ok()
        .and_then(|m| m.cast_into::<Segment>().ok())
        .map(Bound::unbind)
        .ok_or_else(|| {
            PyTypeError::new_err(
                "AtomicInt needs a shmkit SharedMemory or ShareableList (shmkit.shared_memory)",
            )
        })
}

#[pymethods]
impl PyAtomicInt {
    /// `AtomicInt(shm, offset)` (a multiple of 8 inside the segment) or
    /// `AtomicInt(shareable_list, index)` (an int item).
    #[new]
    fn new(py: Python<'_>, target: &Bound<'_, PyAny>, at: isize) -> PyResult<Self> {
        let is_list =
            target.hasattr(intern!(py, "shm"))? && !target.hasattr(intern!(py, "_mmap"))?;
        if is_list {
            let segment = segment_of(&target.getattr(intern!(py, "shm"))?)?;
            let offset = {
                let region = segment.bind(py).get().region();
                let layout = shmkit::list::raw::Layout::attach(region)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?;
                let i = layout.index(at).map_err(|_| {
                    pyo3::exceptions::PyIndexError::new_err("list index out of range")
                })?;
                match layout.item_type(region, at) {
                    Ok(shmkit::list::ItemType::Int) => {}
                    Ok(other) => {
                        return Err(PyTypeError::new_err(format!(
                            "item {at} of the list is a {other:?}, not an int"
                        )))
                    }
                    Err(e) => return Err(PyValueError::new_err(e.to_string())),
                }
                let slot = layout.slot(i);
                if slot.len() < 8 || slot.start % 8 != 0 {
                    return Err(PyValueError::new_err(format!(
                        "item {at} of the list is not an aligned 8-byte slot"
                    )));
                }
                slot.start
            };
            return Ok(PyAtomicInt { segment, offset });
        }
        let segment = segment_of(target)?;
        let offset =
            usize::try_from(at).map_err(|_| PyValueError::new_err("offset must be >= 0"))?;
        segment
            .bind(py)
            .get()
            .region()
            .atomic_i64(offset)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyAtomicInt { segment, offset })
    }

    /// The byte offset in the segment.
    #[getter]
    fn offset(&self) -> usize {
        self.offset
    }

    /// The value now.
    fn load(&self, py: Python<'_>) -> PyResult<i64> {
        Ok(self.word(py)?.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Stores `value`.
    fn store(&self, py: Python<'_>, value: i64) -> PyResult<()> {
        self.word(py)?
            .store(value, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Adds `delta` (wrapping at 64 bits); the value before.
    #[pyo3(signature = (delta=1))]
    fn add(&self, py: Python<'_>, delta: i64) -> PyResult<i64> {
        Ok(self
            .word(py)?
            .fetch_add(delta, std::sync::atomic::Ordering::SeqCst))
    }

    /// Stores `new` if the value is `expected`: `(True, expected)`, else
    /// `(False, the value found)`.
    fn compare_exchange(&self, py: Python<'_>, expected: i64, new: i64) -> PyResult<(bool, i64)> {
        use std::sync::atomic::Ordering::SeqCst;
        Ok(
            match self
                .word(py)?
                .compare_exchange(expected, new, SeqCst, SeqCst)
            {
                Ok(v) => (true, v),
                Err(v) => (false, v),
            },
        )
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "<shmkit.sync.AtomicInt offset={} value={}>",
            self.offset,
            self.load(py)?
        ))
    }
}

/// Adds the classes and the warning to the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLock>()?;
    m.add_class::<PyRLock>()?;
    m.add_class::<PySemaphore>()?;
    m.add_class::<PyBoundedSemaphore>()?;
    m.add_class::<PyEvent>()?;
    m.add_class::<PyCondition>()?;
    m.add_class::<PyBarrier>()?;
    m.add_class::<PyAtomicInt>()?;
    m.add("OwnerDiedWarning", m.py().get_type::<OwnerDiedWarning>())?;
    Ok(())
}
