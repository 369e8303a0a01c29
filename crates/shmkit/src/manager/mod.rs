//! A manager of shared memory segments, wire-compatible with CPython's
//! `multiprocessing.managers.SharedMemoryManager`, that never leaks.
//!
//! A manager is a server that remembers the names of the segments its
//! clients create and unlinks them all when it shuts down. This module
//! speaks CPython's protocol byte for byte, in both roles and with CPython
//! 3.9–3.13 on the other side:
//!
//! * [`frame`]: `multiprocessing.connection`'s length-prefixed messages;
//! * [`auth`]: both HMAC handshakes (3.12+'s `{sha256}`, and HMAC-MD5);
//! * [`pickle`]: the pickle subset the requests and replies use;
//! * [`Server`]: `SharedMemoryServer`'s functions (`track_segment`,
//!   `release_segment`, `list_segments`, `shutdown`, …);
//! * [`Client`]: calls them on any manager, CPython's included;
//! * [`SharedMemoryManager`]: starts a server on a thread or in a child
//!   process, and makes [`SharedMemory`](crate::SharedMemory) and
//!   [`ShareableList`](crate::ShareableList) through it.
//!
//! Where CPython's manager leaks, this one does not: `shutdown` unlinks
//! every segment even when some are already gone (CPython stops at the
//! first failure and never stops the server), and a server can
//! [watch](ServerOptions::watch_process) the process that started it, so
//! that the parent's death, even by `SIGKILL`, unlinks within moments
//! everything no live process still uses. Each segment a server tracks is
//! registered with its process's leak tracker, so that tools that read the
//! trackers ([`crate::tracker::registered`], `shmkit ls`) see who owns it.
//!
//! ```
//! use shmkit::manager::{Client, SharedMemoryManager};
//!
//! let smm = SharedMemoryManager::start()?;
//! let shm = smm.shared_memory(1024)?;
//!
//! // Any client with the address and key, a Python one included, sees it:
//! // SharedMemoryManager(address=..., authkey=...).connect()
//! let client = Client::connect(smm.address().clone(), smm.authkey())?;
//! assert_eq!(client.list_segments()?, [shm.name()]);
//!
//! let name = shm.name().to_owned();
//! client.shutdown()?; // or drop(smm)
//! assert!(!shmkit::exists(&name));
//! # Ok::<(), shmkit::Error>(())
//! ```

mod address;
pub mod auth;
mod client;
mod connection;
mod error;
pub mod frame;
pub mod pickle;
mod process;
mod relay;
mod server;
mod shared_memory_manager;
mod watch_process;

pub use address::{Address, Stream};
pub use auth::ChallengeKind;
pub use client::Client;
pub use connection::Connection;
pub use error::ManagerError;
pub use pickle::{PickleError, PickleProblem, PyValue};
pub use process::{serve_child, Report, Settings, CHILD_ENV};
pub use relay::{inherited_relay, serve_child_relay, RelayClient};
pub use server::{
    random_authkey, Server, ServerHandle, ServerOptions, Stopper, DEFAULT_TIMEOUT, MAX_CONNECTIONS,
};
pub use shared_memory_manager::SharedMemoryManager;

/// Makes `SIGINT` harmless to this process, as CPython's manager process
/// ignores it (bpo-36368): a Ctrl-C meant for the parent must not kill the
/// server. [`serve_child`] does this itself; a program that serves a
/// manager some other way may call it.
pub fn ignore_sigint() -> crate::Result<()> {
    crate::sys::ignore_sigint().map_err(|e| ManagerError::io("ignore SIGINT", e).into())
}
