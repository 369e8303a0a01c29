//! The OS layer: the only place in the crate that makes a system call
//! needing `unsafe` or touches raw memory (`region` aside, which owns its
//! mapping). Elsewhere only rustix's safe calls are made, chiefly by the
//! tracker's watcher, which runs after `fork` on raw system calls alone.
//!
//! Each platform gets one module with the same functions; only Linux is
//! implemented and tested today. Everything here takes names that
//! [`crate::name::validate`] has already accepted.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
// Futexes and glibc's robust mutex, for `crate::sync`.
#[cfg(all(target_os = "linux", feature = "sync"))]
pub(crate) mod futex;
#[cfg(all(target_os = "linux", feature = "sync"))]
pub(crate) mod robust_mutex;

#[cfg(not(target_os = "linux"))]
compile_error!("shmkit supports Linux only for now; see sys/mod.rs for where a port goes");
