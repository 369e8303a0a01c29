//! The OS layer: the only place in the crate that makes a system call
//! needing `unsafe` or touches raw memory (`region` aside, which owns its
//! mapping).
//!
//! Each platform gets one module with the same functions (`linux`); only
//! Linux is implemented and tested today. Everything there takes names
//! that [`crate::name::validate`] has already accepted. Beside it, for the
//! tracker's watcher, which runs in a fork child and may not allocate:
//! `after_fork` (its system calls, async-signal-safe), `proc_nalloc`
//! (reading `/proc` through stack buffers) and `stack_text` (its paths and
//! messages). These take bytes from a shared table, so they check names
//! themselves. `tracking` holds the tracked process's own calls.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
#[cfg(target_os = "linux")]
pub(crate) mod after_fork;
#[cfg(target_os = "linux")]
pub(crate) mod proc_nalloc;
#[cfg(target_os = "linux")]
pub(crate) mod stack_text;
#[cfg(target_os = "linux")]
pub(crate) mod tracking;
// Futexes and glibc's robust mutex, for `crate::sync`.
#[cfg(all(target_os = "linux", feature = "sync"))]
pub(crate) mod futex;
#[cfg(all(target_os = "linux", feature = "sync"))]
pub(crate) mod robust_mutex;

#[cfg(not(target_os = "linux"))]
compile_error!("shmkit supports Linux only for now; see sys/mod.rs for where a port goes");
