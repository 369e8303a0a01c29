//! [`SharedMemoryManager`]: CPython's class of that name, for Rust: a
//! manager server that this program starts (on a thread or in a child
//! process) or connects to, and that makes segments which it unlinks when
//! it shuts down.

use std::process::{Child, Command};

use super::address::Address;
use super::client::{self, Client};
use super::server::{random_authkey, ServerHandle, ServerOptions};
use crate::error::Result;
use crate::list::{ShareableList, ValueRef};
use crate::shared_memory::{Options, SharedMemory};

/// A manager of shared memory segments, wire-compatible with CPython's
/// `multiprocessing.managers.SharedMemoryManager`: Python processes can
/// connect to one started here, and this one can connect to a Python one.
///
/// Segments are made in this process and then handed to the server to
/// track, as CPython does; if the server cannot take one, it is unlinked at
/// once. A manager that [`start`](Self::start)ed its server shuts it down
/// when dropped, and the server unlinks every segment it tracks.
///
/// ```
/// use shmkit::manager::SharedMemoryManager;
/// use shmkit::list::Value;
///
/// let smm = SharedMemoryManager::start()?;
/// let shm = smm.shared_memory(4096)?;
/// let list = smm.shareable_list(&[Value::Int(1), Value::from("two")])?;
/// assert_eq!(smm.list_segments()?, [shm.name(), list.shm().name()]);
///
/// let name = shm.name().to_owned();
/// drop(smm); // shuts the server down: both segments are unlinked
/// assert!(!shmkit::exists(&name));
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedMemoryManager {
    client: Client,
    server: Owned,
}

/// The server behind a manager, as far as the manager is concerned.
#[derive(Debug)]
enum Owned {
    /// Someone else's, reached with [`SharedMemoryManager::connect`].
    Connected,
    /// Started by this manager, on a thread.
    Thread(ServerHandle),
    /// Started by this manager, in a child process.
    Process(Child),
    /// Started by this manager, and shut down.
    Stopped,
}

impl SharedMemoryManager {
    /// Starts a server on a thread of this process, on a private Unix
    /// socket with a random key.
    pub fn start() -> Result<Self> {
        Self::start_thread(ServerOptions::new())
    }

    /// Starts a server with `options` on a thread of this process.
    pub fn start_thread(options: ServerOptions) -> Result<Self> {
        let handle = options.bind()?.spawn()?;
        Ok(SharedMemoryManager {
            client: Client::new(handle.address().clone(), handle.authkey()),
            server: Owned::Thread(handle),
        })
    }

    /// Starts a server with `options` in a child process, as CPython's
    /// `start()` does. `command` must run a program that calls
    /// [`serve_child`](super::serve_child) when [`CHILD_ENV`](super::CHILD_ENV)
    /// is set (this program, say, or `shmkit serve`); its stdin and stdout
    /// carry the handshake, its stderr is inherited.
    ///
    /// The child watches this process: if it dies, even by `SIGKILL`, the
    /// child unlinks every segment it tracks and exits. It ignores `SIGINT`.
    pub fn start_process(command: Command, options: ServerOptions) -> Result<Self> {
        let authkey = match &options.authkey {
            Some(key) => key.to_vec(),
            None => random_authkey(),
        };
        let (child, address) = super::process::spawn(command, &options, &authkey)?;
        Ok(SharedMemoryManager {
            client: Client::new(address, &authkey),
            server: Owned::Process(child),
        })
    }

    /// Connects to a running manager, checking the address and key with a
    /// `dummy` call as CPython's `connect()` does. Dropping the result
    /// leaves the server running.
    pub fn connect(address: Address, authkey: &[u8]) -> Result<Self> {
        Ok(SharedMemoryManager {
            client: Client::connect(address, authkey)?,
            server: Owned::Connected,
        })
    }

    /// The server's address.
    pub fn address(&self) -> &Address {
        self.client.address()
    }

    /// The shared secret.
    pub fn authkey(&self) -> &[u8] {
        self.client.authkey()
    }

    /// The client this manager calls the server with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The manager process's pid, for a manager from
    /// [`start_process`](Self::start_process).
    pub fn process_id(&self) -> Option<u32> {
        match &self.server {
            Owned::Process(child) => Some(child.id()),
            _ => None,
        }
    }

    /// Creates a segment of `size` bytes under a fresh name, tracked by the
    /// server (CPython's `smm.SharedMemory(size)`).
    pub fn shared_memory(&self, size: usize) -> Result<SharedMemory> {
        self.made_and_tracked(|| SharedMemory::create(size), SharedMemory::name)
    }

    /// Creates a segment named `name`, tracked by the server (gh-101014).
    pub fn shared_memory_named(&self, name: &str, size: usize) -> Result<SharedMemory> {
        self.made_and_tracked(
            || SharedMemory::create_named(name, size),
            SharedMemory::name,
        )
    }

    /// Creates a segment with `options`, named `name` or under a fresh name,
    /// tracked by the server.
    pub fn shared_memory_with(
        &self,
        options: &Options,
        name: Option<&str>,
        size: usize,
    ) -> Result<SharedMemory> {
        self.made_and_tracked(
            || match name {
                Some(name) => options.create_named(name, size),
                None => options.create(size),
            },
            SharedMemory::name,
        )
    }

    /// Creates a [`ShareableList`] of `values` under a fresh name, tracked
    /// by the server (CPython's `smm.ShareableList(sequence)`).
    pub fn shareable_list<'a, V: 'a>(&self, values: &'a [V]) -> Result<ShareableList>
    where
        &'a V: Into<ValueRef<'a>>,
    {
        self.made_and_tracked(|| ShareableList::create(values), |l| l.shm().name())
    }

    /// Creates a [`ShareableList`] named `name`, tracked by the server.
    pub fn shareable_list_named<'a, V: 'a>(
        &self,
        name: &str,
        values: &'a [V],
    ) -> Result<ShareableList>
    where
        &'a V: Into<ValueRef<'a>>,
    {
        self.made_and_tracked(
            || ShareableList::create_named(name, values),
            |l| l.shm().name(),
        )
    }

    /// CPython's flow: connect and authenticate, create the segment here,
    /// ask the server to track it, and unlink it if that fails.
    fn made_and_tracked<T>(
        &self,
        make: impl FnOnce() -> Result<T>,
        name: impl Fn(&T) -> &str,
    ) -> Result<T> {
        let mut conn = self.client.open()?;
        let made = make()?;
        let tracked = client::call(&mut conn, "track_segment", vec![name(&made).into()], vec![]);
        match tracked {
            Ok(_) => Ok(made),
            Err(e) => {
                let _ = crate::unlink(name(&made));
                Err(e)
            }
        }
    }

    /// The names the server tracks.
    pub fn list_segments(&self) -> Result<Vec<String>> {
        self.client.list_segments()
    }

    /// Shuts the server down: it unlinks every segment it tracks and stops;
    /// a server this manager started is then waited for (a process gets one
    /// second, then `SIGTERM`, then `SIGKILL`, as CPython gives it one
    /// second before `terminate()` and `kill()`). Calling it again does
    /// nothing. On a manager from [`connect`](Self::connect) it sends the
    /// request each time: it stops the server it is connected to.
    pub fn shutdown(&mut self) -> Result<()> {
        let server = match self.server {
            Owned::Connected => return self.client.shutdown(),
            Owned::Stopped => return Ok(()),
            _ => std::mem::replace(&mut self.server, Owned::Stopped),
        };
        match server {
            Owned::Thread(handle) => match self.client.shutdown() {
                Ok(()) => handle.join(),
                Err(e) => {
                    handle.stop()?;
                    Err(e)
                }
            },
            Owned::Process(mut child) => {
                let result = self.client.shutdown();
                super::process::reap(&mut child);
                result
            }
            Owned::Connected | Owned::Stopped => Ok(()),
        }
    }
}

impl Drop for SharedMemoryManager {
    fn drop(&mut self) {
        if let Owned::Thread(_) | Owned::Process(_) = self.server {
            if let Err(e) = self.shutdown() {
                tracing::warn!(error = %e, "manager shutdown failed");
            }
        }
    }
}
