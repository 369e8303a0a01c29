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
#[cfg(target_os = "linux")]
pub(crate) mod after_fork;
#[cfg(target_os = "linux")]
pub(crate) mod proc_nalloc;
#[cfg(target_os = "linux")]
pub(crate) mod stack_text;

#[cfg(not(target_os = "linux"))]
compile_error!("shmkit supports Linux only for now; see sys/mod.rs for where a port goes");
