//! Python bindings of shmkit: conversions and exception mapping only.
//!
//! The Python package (python/shmkit/) builds its classes on what this
//! module exports: the buffer-exporting [`segment::Segment`], the native half
//! of `SharedMemory`, and a few functions.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use shmkit::{Error, RenameFlags};

use crate::errors::to_pyerr;

mod array;
mod errors;
mod manager;
mod queue;
mod segment;
mod shareable_list;
mod shared_memory;
mod sync;

/// `shmkit.shared_memory`: tests patch its `_make_filename`, and lists
/// create their blocks through its `SharedMemory`.
fn shared_memory_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("shmkit.shared_memory")?.unbind())
        })
        .map(|m| m.bind(py))
}

/// Forgets segment `name` in this process's leak tracker, as CPython's
/// `resource_tracker.unregister` does: a manager's shutdown unlinked it.
#[pyfunction]
fn tracker_unregister(name: &str) {
    shmkit::tracker::unregister(name);
}

/// Whether this process has a leak tracker already: a process it forks
/// from now on shares its tracker table.
#[pyfunction]
fn tracker_started() -> bool {
    shmkit::tracker::watcher_pid().is_some()
}

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

/// Runs the `shmkit` command (`ls`, `show`, `rm`, `gc`, `serve`, …) with
/// `argv`, whose first item is the program's name, and returns its exit
/// status. It writes to the process's stdout and stderr directly, so
/// Python's own buffers should be flushed first. The GIL is released.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| shmkit_cli::run(argv))
}

#[pymodule]
fn _shmkit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<segment::Segment>()?;
    m.add_class::<array::ArraySegment>()?;
    m.add_class::<shared_memory::SharedMemoryBase>()?;
    m.add_class::<shareable_list::ShareableListBase>()?;
    m.add_class::<manager::ManagerClient>()?;
    m.add_class::<queue::QueueBase>()?;
    m.add_class::<queue::Sink>()?;
    m.add_class::<manager::PyRelayClient>()?;
    m.add_function(wrap_pyfunction!(manager::manager_child_settings, m)?)?;
    m.add_function(wrap_pyfunction!(manager::manager_child_address, m)?)?;
    m.add_function(wrap_pyfunction!(manager::manager_serve_child, m)?)?;
    m.add_function(wrap_pyfunction!(manager::manager_serve_child_relay, m)?)?;
    m.add_function(wrap_pyfunction!(segment::open_segment, m)?)?;
    m.add_function(wrap_pyfunction!(unlink, m)?)?;
    m.add_function(wrap_pyfunction!(errors::errno_exceptions, m)?)?;
    m.add_function(wrap_pyfunction!(tracker_unregister, m)?)?;
    m.add_function(wrap_pyfunction!(tracker_started, m)?)?;
    m.add_function(wrap_pyfunction!(rename, m)?)?;
    m.add_function(wrap_pyfunction!(make_filename, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    sync::register(m)?;
    m.add("SHM_RENAME_NOREPLACE", RenameFlags::NOREPLACE.bits())?;
    m.add("SHM_RENAME_EXCHANGE", RenameFlags::EXCHANGE.bits())?;
    Ok(())
}
