//! # shmkit
//!
//! Python's `multiprocessing.shared_memory`, for Rust: named POSIX shared
//! memory segments that CPython 3.9–3.13 processes can share with Rust
//! processes, byte for byte.
//!
//! ```
//! use shmkit::SharedMemory;
//!
//! // One process creates a segment under a fresh `psm_xxxxxxxx` name…
//! let shm = SharedMemory::create(1024)?;
//! shm.write_at(0, b"howdy")?;
//!
//! // …another attaches by that name (here the same process, for brevity).
//! let other = SharedMemory::open(shm.name())?;
//! assert_eq!(other.read_vec(0, 5)?, b"howdy");
//!
//! // Whoever is last removes the name.
//! shm.unlink()?;
//! # Ok::<(), shmkit::Error>(())
//! ```
//!
//! Memory that another process may write is never handed out as a safe
//! `&[u8]`: see [`Region`] for the ways in.
#![deny(unsafe_op_in_unsafe_fn)]
// Only the OS layer (`sys`) and the mapped memory (`region`) may hold
// `unsafe`; the tracker's watcher, which runs after `fork`, makes its raw
// calls through `sys`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "array")]
pub mod array;
mod error;
#[cfg(feature = "list")]
pub mod list;
#[cfg(feature = "manager")]
pub mod manager;
pub mod name;
pub mod object;
pub mod pyexc;
#[cfg(feature = "list")]
pub mod pyrepr;
#[cfg(feature = "queue")]
pub mod queue;
#[allow(unsafe_code)]
mod region;
mod shared_memory;
#[cfg(feature = "sync")]
pub mod sync;
// Without the manager, the calls only it makes go unused.
#[cfg_attr(not(feature = "manager"), allow(dead_code))]
#[allow(unsafe_code)]
mod sys;
pub mod tracker;
#[cfg(feature = "manager")]
pub mod usage;

pub use error::{Error, NameProblem, Result};
#[cfg(feature = "list")]
pub use list::ShareableList;
#[cfg(feature = "manager")]
pub use manager::SharedMemoryManager;
pub use region::Region;
pub use shared_memory::{exists, rename, unlink, Options, RenameFlags, SharedMemory};

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(all(doctest, feature = "manager"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
