//! [`Server`]: CPython's `SharedMemoryServer`, natively. It keeps the names
//! of the segments its clients made, and unlinks them all when it stops,
//! whatever stops it: a `shutdown` request, [`Stopper::stop`], or the death
//! of a process it watches.
//!
//! Each connection is CPython's one-shot function call, on a thread of its
//! own: the server challenges, then answers the client's challenge, reads
//! one `(None, funcname, args, kwds)` request, replies `('#RETURN', result)`
//! or `('#TRACEBACK', text)`, and closes. After a wrong key the client gets
//! `#FAILURE#` and a traceback, and nothing runs.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::address::{Address, Listener};
use super::auth::{self, AuthKey, ChallengeKind};
use super::connection::Connection;
use super::error::ManagerError;
use super::frame;
use super::pickle::{self, PyValue};
use crate::error::{Error, Result};
use crate::sys;

/// How long a connection may sit idle in the middle of a request before the
/// server drops it, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping server waits for requests already being answered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections a server answers at once, each on a thread with a
/// descriptor; further ones wait in the listen backlog until one ends (a
/// silent one ends at the idle limit). CPython's server has no such limit,
/// but nothing a manager does needs more, and without it every connection
/// that says nothing pins a thread.
pub const MAX_CONNECTIONS: usize = 128;

/// What requests being received and decoded may hold together, at least:
/// see [`Pool`].
const REQUEST_MEMORY: usize = 256 << 20;

/// How often a server with [`MAX_CONNECTIONS`] connections looks again.
const FULL_POLL: Duration = Duration::from_millis(20);

/// Memory shared by all connections' requests. Before a request's payload
/// is read, its connection sets aside the payload's length plus what the
/// decoder may spend on it ([`request_budget`]), and waits while the
/// pool cannot give that much. The connection cap alone would not bound
/// memory ([`MAX_CONNECTIONS`] connections each sending a longest request
/// would each be paid in full), and this pool alone would not bound threads:
/// hence both. The pool is never smaller than one longest request needs,
/// so every request the server accepts can be served.
#[derive(Debug)]
struct Pool {
    used: Mutex<usize>,
    freed: Condvar,
    size: usize,
}

/// Decoder memory per byte of a request. Every request a manager serves is
/// a function name and a segment name or two, a few hundred bytes at most,
/// which the fixed [`pickle::BUDGET_BASE`] covers many times over; so
/// requests get a quarter of [`pickle::decode_budget`]'s allowance, and a
/// long pickle of cheap opcodes is refused after a few times its size.
const REQUEST_BUDGET_PER_BYTE: usize = 4;

/// The decoder's budget for a request of `len` bytes.
fn request_budget(len: usize) -> usize {
    len.saturating_mul(REQUEST_BUDGET_PER_BYTE)
        .saturating_add(pickle::BUDGET_BASE)
}

/// What one request costs the [`Pool`]: its payload and the decoder's
/// budget for it.
fn request_cost(len: usize) -> usize {
    len.saturating_add(request_budget(len))
}

impl Pool {
    fn for_requests_up_to(max_len: usize) -> Pool {
        Pool {
            used: Mutex::new(0),
            freed: Condvar::new(),
            size: REQUEST_MEMORY.max(request_cost(max_len)),
        }
    }

    /// Sets `cost` bytes aside, waiting at most `timeout` (forever with
    /// `None`) for other requests to give them back.
    fn take(&self, cost: usize, timeout: Option<Duration>) -> Option<Taken<'_>> {
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let short = |used: &mut usize| used.saturating_add(cost) > self.size;
        let mut used = match timeout {
            Some(t) => {
                let (guard, waited) = self
                    .freed
                    .wait_timeout_while(used, t, short)
                    .unwrap_or_else(PoisonError::into_inner);
                if waited.timed_out() && guard.saturating_add(cost) > self.size {
                    return None;
                }
                guard
            }
            None => self
                .freed
                .wait_while(used, short)
                .unwrap_or_else(PoisonError::into_inner),
        };
        *used += cost;
        Some(Taken { pool: self, cost })
    }
}

/// Bytes set aside in a [`Pool`], given back when dropped.
struct Taken<'a> {
    pool: &'a Pool,
    cost: usize,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        *self
            .pool
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) -= self.cost;
        self.pool.freed.notify_all();
    }
}

/// Settings for a [`Server`]; [`bind`](Self::bind) makes one.
///
/// ```
/// use shmkit::manager::{Client, Server};
///
/// let server = Server::options()
///     .address("127.0.0.1:0".parse().unwrap())
///     .authkey(b"secret")
///     .bind()?;
/// let handle = server.spawn()?;
/// let client = Client::new(handle.address().clone(), b"secret");
/// assert_eq!(client.list_segments()?, Vec::<String>::new());
/// client.shutdown()?;
/// handle.join()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub(crate) address: Option<Address>,
    pub(crate) authkey: Option<AuthKey>,
    pub(crate) max_message_len: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) challenge: ChallengeKind,
    pub(crate) watch: Option<u32>,
    pub(crate) private_dir: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            address: None,
            authkey: None,
            max_message_len: frame::DEFAULT_MAX_LEN,
            timeout: Some(DEFAULT_TIMEOUT),
            challenge: ChallengeKind::Modern,
            watch: None,
            private_dir: None,
        }
    }
}

impl ServerOptions {
    /// The defaults: a private Unix socket, a random key, modern challenges,
    /// 64 MiB messages, a 60 s idle limit, no process watched.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where to listen. Without one, a Unix socket `listener-XXXXXXXX` in a
    /// new private directory `pymp-XXXXXXXX` under the temporary directory,
    /// mode `0600`, as CPython chooses (and removes when the server stops).
    pub fn address(mut self, address: Address) -> Self {
        self.address = Some(address);
        self
    }

    /// Where the default socket goes (with no [`address`](Self::address)):
    /// a directory only this user may enter (mode `0700`), such as one
    /// CPython's `multiprocessing.util.get_temp_dir()` made. Without it, a
    /// fresh `pymp-XXXXXXXX` is made, and removed when the server ends;
    /// reusing one spares that work for a short-lived server.
    pub fn private_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.private_dir = Some(dir.into());
        self
    }

    /// The shared secret. Without one, 32 random bytes, as CPython's
    /// `process.current_process().authkey` is.
    pub fn authkey(mut self, authkey: &[u8]) -> Self {
        self.authkey = Some(AuthKey::new(authkey));
        self
    }

    /// The longest request accepted after authentication (during it, 256
    /// bytes, as in CPython).
    pub fn max_message_len(mut self, max_len: usize) -> Self {
        self.max_message_len = max_len;
        self
    }

    /// How long a connection may wait for its peer in the middle of the
    /// exchange (`None`: forever, as CPython's server does).
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Which challenge to send: [`ChallengeKind::Modern`] (the default)
    /// works with every CPython; [`ChallengeKind::Legacy`] is what 3.11 and
    /// earlier send.
    pub fn challenge(mut self, kind: ChallengeKind) -> Self {
        self.challenge = kind;
        self
    }

    /// Watches process `pid`: when it exits, even by `SIGKILL`, the server
    /// unlinks every segment it tracks that no live process still uses, and
    /// stops (the others stay registered with this process's leak tracker,
    /// which removes them once unused). Meant for the parent that started a
    /// manager process, so that its death cannot leak segments.
    /// On Linux this is a `pidfd`, so the server learns at once.
    ///
    /// ```
    /// use std::process::{Command, Stdio};
    /// use shmkit::manager::{Client, Server};
    ///
    /// // `cat` stands in for a parent: it lives until its stdin closes.
    /// let mut parent = Command::new("cat").stdin(Stdio::piped()).spawn()?;
    /// let server = Server::options().watch_process(parent.id()).bind()?.spawn()?;
    /// let shm = shmkit::SharedMemory::create(16)?;
    /// let name = shm.name().to_owned();
    /// Client::new(server.address().clone(), server.authkey()).track_segment(&name)?;
    /// drop(shm); // nothing uses it any more
    ///
    /// drop(parent.stdin.take()); // the "parent" exits...
    /// parent.wait()?;
    /// server.join()?; // ...so the server stops by itself,
    /// assert!(!shmkit::exists(&name)); // having unlinked the unused segment
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn watch_process(mut self, pid: u32) -> Self {
        self.watch = Some(pid);
        self
    }

    /// Binds the listening socket.
    pub fn bind(self) -> Result<Server> {
        let listener = Listener::bind(self.address.as_ref(), self.private_dir.as_deref())?;
        let authkey = match self.authkey {
            Some(key) => key,
            None => AuthKey::new(&random_authkey()),
        };
        let stop = sys::event().map_err(|e| ManagerError::io("eventfd", e.into()))?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                stop,
                active: (Mutex::new(0), Condvar::new()),
                requests: Pool::for_requests_up_to(self.max_message_len),
            }),
            config: Arc::new(Config {
                authkey,
                max_message_len: self.max_message_len,
                timeout: self.timeout,
                challenge: self.challenge,
            }),
            watch: self.watch,
        })
    }
}

/// 32 random bytes, as CPython gives every main process for its authkey.
pub fn random_authkey() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).expect("the OS random number generator failed");
    key
}

/// A bound manager server, ready to [`serve`](Self::serve) (on this thread)
/// or [`spawn`](Self::spawn) (on a new one).
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
    config: Arc<Config>,
    watch: Option<u32>,
}

#[derive(Debug)]
struct Config {
    authkey: AuthKey,
    max_message_len: usize,
    timeout: Option<Duration>,
    challenge: ChallengeKind,
}

/// What the connection threads, the watcher and the stoppers share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Readable once the server is stopping.
    stop: OwnedFd,
    /// Connections being handled, to let them finish before the end, and
    /// to keep them under [`MAX_CONNECTIONS`].
    active: (Mutex<usize>, Condvar),
    /// Memory for the requests being read.
    requests: Pool,
}

#[derive(Debug, Default)]
struct State {
    segments: Vec<String>,
    /// Set once the segments were unlinked: no more may be tracked.
    closed: bool,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the list
        // of names is still the best knowledge there is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses further tracking and unlinks every tracked segment,
    /// continuing past failures. Only the first call does anything.
    pub(crate) fn close_and_unlink(&self) {
        let names = {
            let mut state = self.state();
            if state.closed {
                return;
            }
            state.closed = true;
            std::mem::take(&mut state.segments)
        };
        let mut failed = 0usize;
        for name in &names {
            failed += usize::from(!unlink_tracked(name));
        }
        tracing::debug!(count = names.len(), failed, "manager unlinked its segments");
    }

    /// What the death of the watched process does: refuses further
    /// tracking, and unlinks every tracked segment that no live process
    /// still maps, holds open or locks. The others are left in place and
    /// stay registered with this process's leak tracker, whose watcher (or
    /// their users' own trackers) removes them once unused; a `shutdown`
    /// still unlinks everything, as CPython's does.
    ///
    /// A process this one cannot inspect (another user's, without root)
    /// counts as a user of every segment it would be allowed to open.
    pub(crate) fn close_and_unlink_unused(&self) {
        let mut names = {
            let mut state = self.state();
            if state.closed {
                return;
            }
            state.closed = true;
            std::mem::take(&mut state.segments)
        };
        names.sort_unstable();
        names.dedup();
        let mut segments = Vec::with_capacity(names.len());
        for name in &names {
            match crate::inspect::segment(name) {
                Ok(segment) => segments.push(segment),
                Err(Error::NotFound { .. }) => crate::tracker::unregister(name),
                // Not a segment we can judge: left as it is, still registered.
                Err(e) => {
                    tracing::warn!(segment = %name, error = %e, "manager left a segment it could not inspect")
                }
            }
        }
        let processes = crate::inspect::Processes::scan(&segments);
        let (mut unlinked, mut kept) = (0usize, 0usize);
        for segment in &segments {
            // Processes whose descriptors could not be read may be users
            // too (those whose mappings alone could not be read are judged
            // by their descriptors, as `inspect` explains).
            let used = match processes.usage(segment) {
                crate::inspect::Usage::InUse => true,
                crate::inspect::Usage::Leaked => false,
                crate::inspect::Usage::Unknown => processes
                    .unreadable()
                    .iter()
                    .any(|&pid| could_open(pid, segment)),
            };
            if used {
                kept += 1;
                tracing::info!(segment = %segment.name, "manager left a segment still in use");
            } else if unlink_tracked(&segment.name) {
                unlinked += 1;
            }
        }
        tracing::debug!(
            unlinked,
            kept,
            "manager cleaned up after its watched process"
        );
    }

    /// Wakes the accept loop (and the watcher) for good.
    pub(crate) fn signal_stop(&self) {
        if let Err(e) = sys::notify(&self.stop) {
            tracing::error!(error = %e, "manager could not signal its own stop");
        }
    }

    pub(crate) fn stop_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stop.as_fd()
    }

    fn active(&self) -> usize {
        *self.active.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_stopping(&self) -> bool {
        sys::wait_readable(&[self.stop.as_fd()], Some(Duration::ZERO))
            .map(|r| r[0])
            .unwrap_or(false)
    }

    /// Unlinks everything, then stops.
    pub(crate) fn stop(&self) {
        self.close_and_unlink();
        self.signal_stop();
    }

    /// Unlinks what nobody uses any more, then stops: see
    /// [`close_and_unlink_unused`](Self::close_and_unlink_unused).
    pub(crate) fn stop_unused(&self) {
        self.close_and_unlink_unused();
        self.signal_stop();
    }
}

/// Unlinks `name`, which the server tracked, and stops registering it with
/// the leak tracker; false (with a warning) if it could not be unlinked, in
/// which case it stays registered, for the tracker's watcher to try again.
fn unlink_tracked(name: &str) -> bool {
    match crate::unlink(name) {
        Ok(()) | Err(Error::NotFound { .. }) => {
            crate::tracker::unregister(name);
            true
        }
        Err(e) => {
            tracing::warn!(segment = %name, error = %e, "manager could not unlink a segment");
            false
        }
    }
}

/// Whether process `pid`, whose descriptors and mappings this process may
/// not read, could have `segment` open: always if the segment lets its
/// group or others in, else if one of the process's user ids is root's or
/// the owner's (`/proc/PID/status` is readable by all). A process gone
/// meanwhile could not.
fn could_open(pid: u32, segment: &crate::inspect::Segment) -> bool {
    if segment.mode & 0o077 != 0 {
        return true;
    }
    let Ok(status) = sys::proc_read(pid, "status") else {
        return false;
    };
    let status = String::from_utf8_lossy(&status);
    let Some(uids) = status.lines().find_map(|l| l.strip_prefix("Uid:")) else {
        return true;
    };
    uids.split_whitespace()
        .map(|u| u.parse::<u32>().ok())
        .any(|u| u.is_none_or(|u| u == 0 || u == segment.uid))
}

impl Server {
    /// A server on `address` (a private Unix socket with `None`) with
    /// `authkey`, and every other setting at its default.
    pub fn bind(address: Option<Address>, authkey: &[u8]) -> Result<Server> {
        let mut options = ServerOptions::new().authkey(authkey);
        options.address = address;
        options.bind()
    }

    /// Settings for the less common ways to make a server.
    pub fn options() -> ServerOptions {
        ServerOptions::new()
    }

    /// Where the server listens (for TCP port 0, the port it got).
    pub fn address(&self) -> &Address {
        self.listener.address()
    }

    /// The shared secret clients must know.
    pub fn authkey(&self) -> &[u8] {
        &self.config.authkey
    }

    /// A handle that stops the server from anywhere.
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.shared))
    }

    /// Serves until stopped, then unlinks every tracked segment (if the stop
    /// did not already) and removes its socket file.
    pub fn serve(self) -> Result<()> {
        self.serve_with(&mut [])
    }

    /// [`serve`](Self::serve), waiting on `sources` too, on this thread.
    pub(crate) fn serve_with(self, sources: &mut [&mut (dyn Source + 'static)]) -> Result<()> {
        let mut watch = match self.watch {
            Some(pid) => super::watch::start(pid, &self.shared)?,
            None => None,
        };
        let mut all: Vec<&mut (dyn Source + 'static)> = Vec::with_capacity(sources.len() + 1);
        if let Some(watch) = watch.as_mut() {
            all.push(watch);
        }
        all.extend(sources.iter_mut().map(|s| &mut **s));
        tracing::debug!(address = %self.address(), "manager serving");
        let result = self.accept_loop(&mut all);
        self.shared.stop();
        self.drain();
        result
    }

    /// Serves on a new thread.
    pub fn spawn(self) -> Result<ServerHandle> {
        let address = self.address().clone();
        let authkey = self.config.authkey.clone();
        let stopper = self.stopper();
        let thread = std::thread::Builder::new()
            .name("shmkit-manager".into())
            .spawn(move || self.serve())
            .map_err(|e| ManagerError::io("spawn a thread", e))?;
        Ok(ServerHandle {
            address,
            authkey,
            stopper,
            thread: Some(thread),
        })
    }

    fn accept_loop(&self, sources: &mut [&mut (dyn Source + 'static)]) -> Result<()> {
        let stopper = self.stopper();
        let mut done = vec![false; sources.len()];
        loop {
            // At the connection limit, the listener is left alone (new
            // connections wait in its backlog) and looked at again shortly.
            let full = self.shared.active() >= MAX_CONNECTIONS;
            let mut fds = vec![self.shared.stop_fd()];
            let live: Vec<usize> = (0..sources.len()).filter(|&i| !done[i]).collect();
            fds.extend(live.iter().map(|&i| sources[i].fd()));
            if !full {
                fds.push(self.listener.as_fd());
            }
            let timeout = full.then_some(FULL_POLL);
            let ready = sys::wait_readable(&fds, timeout)
                .map_err(|e| ManagerError::io("poll", e.into()))?;
            drop(fds);
            if ready[0] {
                return Ok(());
            }
            for (&i, _) in live.iter().zip(&ready[1..]).filter(|(_, &r)| r) {
                done[i] = !sources[i].ready(&stopper);
            }
            if full || !ready[1 + live.len()] {
                continue;
            }
            match self.listener.accept() {
                Ok(stream) => self.dispatch(Connection::from_stream(stream)),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of descriptors, say: CPython carries on, and so do
                    // we, without spinning.
                    tracing::warn!(error = %e, "manager accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Answers a connection on a thread of its own.
    fn dispatch(&self, conn: Connection) {
        let shared = Arc::clone(&self.shared);
        let config = Arc::clone(&self.config);
        *shared
            .active
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        let spawned = std::thread::Builder::new()
            .name("shmkit-manager-conn".into())
            .spawn(move || {
                handle(conn, &shared, &config);
                let (count, cv) = &shared.active;
                *count.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
                cv.notify_all();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "manager could not start a connection thread");
            *self
                .shared
                .active
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner) -= 1;
        }
    }

    /// Gives requests in flight a moment to be answered.
    fn drain(&self) {
        let (count, cv) = &self.shared.active;
        let guard = count.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = cv.wait_timeout_while(guard, DRAIN_TIMEOUT, |n| *n > 0);
    }
}

/// Registers `name`, which the server now tracks, with this process's leak
/// tracker, so that `shmkit::tracker::registered()` (and `shmkit ls`) show
/// this process as its owner, and so that its watcher removes the segment,
/// once unused, should this process die without unlinking it. The first
/// registration starts the watcher: a manager that tracks nothing never
/// starts one. Called with the state locked, so that no stop can unlink
/// (and unregister) the name between the two.
fn register(name: &str) {
    if let Ok(bare) = crate::name::validate(name) {
        // The inode ties the registration to this file, not to whatever a
        // later create puts under the name (0, unknown, if it is gone).
        let ino = sys::shm_stat(bare).map_or(0, |st| st.key.2);
        crate::tracker::register(bare, ino);
    }
}

/// Stops a [`Server`] from any thread: unlinks every segment it tracks, then
/// ends its [`serve`](Server::serve).
///
/// ```
/// use shmkit::manager::{Client, Server};
///
/// let server = Server::bind(None, b"k")?;
/// let (address, stopper) = (server.address().clone(), server.stopper());
/// let serving = std::thread::spawn(move || server.serve());
///
/// let shm = shmkit::SharedMemory::create(8)?;
/// Client::new(address, b"k").track_segment(shm.name())?;
/// assert_eq!(stopper.segments(), [shm.name()]);
/// stopper.stop();
/// serving.join().unwrap()?;
/// assert!(!shmkit::exists(shm.name()));
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    /// Unlinks every tracked segment and stops the server. Tracking requests
    /// that arrive afterwards are refused, so nothing tracked late can leak.
    pub fn stop(&self) {
        self.0.stop();
    }

    /// What the death of the watched process does: unlinks the tracked
    /// segments that no live process uses, and stops the server.
    pub(crate) fn stop_unused(&self) {
        self.0.stop_unused();
    }

    /// Whether the server is stopping or stopped.
    pub fn is_stopped(&self) -> bool {
        self.0.is_stopping()
    }

    /// Tracks `name` as a `track_segment` request would, without a
    /// connection: for code in the server's own process (the manager
    /// process's relay from its parent). False once the server is stopping:
    /// the name is not tracked, and the caller must unlink it itself.
    pub fn track(&self, name: &str) -> bool {
        let mut state = self.0.state();
        if state.closed {
            return false;
        }
        register(name);
        state.segments.push(name.to_owned());
        true
    }

    /// The names the server tracks now.
    pub fn segments(&self) -> Vec<String> {
        self.0.state().segments.clone()
    }
}

/// Something besides the listener that [`Server::serve_with`] waits on, on
/// the serving thread: a manager process's tracking channel, its `SIGTERM`
/// socket, the pidfd of the process it watches. One loop rather than a
/// thread each, because a manager that is started and stopped at once
/// would spend more on starting and joining threads than on its work.
pub(crate) trait Source {
    /// The descriptor to wait on for readability.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Handles a readable [`fd`](Self::fd); false once the source has
    /// nothing more to say (it is then no longer waited on).
    fn ready(&mut self, stopper: &Stopper) -> bool;
}

/// A [`Server`] running on a thread of this process. Dropping it stops the
/// server (unlinking its segments) and waits for the thread.
#[derive(Debug)]
pub struct ServerHandle {
    address: Address,
    authkey: AuthKey,
    stopper: Stopper,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// Where the server listens.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The shared secret clients must know.
    pub fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// A handle that stops the server.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stops the server (unlinking its segments) and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.stopper.stop();
        self.wait()
    }

    /// Waits until something else stops the server (a `shutdown` request, a
    /// [`Stopper`], a watched process's death).
    pub fn join(mut self) -> Result<()> {
        self.wait()
    }

    fn wait(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(ManagerError::Process("the manager thread panicked".into()).into())
            }),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stopper.stop();
            let _ = self.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// One connection

/// A reply, and whether it is the answer to `shutdown`.
struct Outcome {
    reply: PyValue,
    shutdown: bool,
}

fn handle(mut conn: Connection, shared: &Shared, config: &Config) {
    if let Err(e) = conn.set_timeout(config.timeout) {
        tracing::warn!(error = %e, "manager could not set a timeout");
    }
    conn.set_max_message_len(config.max_message_len);
    let Some(outcome) = exchange(&mut conn, shared, config) else {
        return;
    };
    if let Err(e) = conn.send(&outcome.reply) {
        tracing::debug!(error = %e, "manager could not send its reply");
    }
    if outcome.shutdown {
        // CPython's `Server.shutdown` replies, and `_handle_request` replies
        // again; clients read one. Only then does the server stop.
        let _ = conn.send(&outcome.reply);
        shared.signal_stop();
    }
}

/// Authenticates, reads the request and runs it. `None` when there is no
/// one left to reply to.
fn exchange(conn: &mut Connection, shared: &Shared, config: &Config) -> Option<Outcome> {
    let traceback = |func: &str, exc: String| Outcome {
        reply: PyValue::Tuple(vec!["#TRACEBACK".into(), traceback(func, &exc).into()]),
        shutdown: false,
    };
    let handshake = auth::deliver_challenge(conn, &config.authkey, config.challenge)
        .and_then(|()| auth::answer_challenge(conn, &config.authkey));
    if let Err(e) = handshake {
        return match e {
            // The peer is gone: nobody to tell.
            Error::Manager(ManagerError::Eof | ManagerError::Io { .. }) => {
                tracing::debug!(error = %e, "manager peer left during the handshake");
                None
            }
            e => {
                tracing::warn!(error = %e, "manager refused a connection");
                Some(traceback("_handle_request", exception_line(&e)))
            }
        };
    }
    let len = match conn.recv_len() {
        Ok(len) => len,
        Err(Error::Manager(ManagerError::Eof)) => return None,
        Err(e) => return Some(traceback("_handle_request", exception_line(&e))),
    };
    // Held until the request is answered and dropped.
    let Some(_memory) = shared.requests.take(request_cost(len), config.timeout) else {
        tracing::warn!(len, "manager had no memory free for a request in time");
        return Some(traceback("_handle_request", "MemoryError".into()));
    };
    let request = conn.recv_payload(len).and_then(|bytes| {
        Ok(pickle::loads_within(&bytes, request_budget(len)).map_err(ManagerError::from)?)
    });
    let request = match request {
        Ok(request) => request,
        Err(e) => return Some(traceback("_handle_request", exception_line(&e))),
    };
    tracing::debug!(request = %request, "manager request");
    let (func, args, kwds) = match parse_request(&request) {
        Ok(parsed) => parsed,
        Err(exc) => return Some(traceback("_handle_request", exc)),
    };
    let shutdown = func == Func::Shutdown;
    match call(shared, func, args, kwds) {
        Ok(result) => Some(Outcome {
            reply: PyValue::Tuple(vec!["#RETURN".into(), result]),
            shutdown,
        }),
        Err(exc) => Some(traceback(func.name(), exc)),
    }
}

/// A traceback in CPython's shape, for `RemoteError` to show.
fn traceback(func: &str, exception: &str) -> String {
    format!(
        "Traceback (most recent call last):\n  File \"shmkit/manager/server.rs\", in {func}\n{exception}\n"
    )
}

/// The last line of the traceback CPython would print for `e`.
fn exception_line(e: &Error) -> String {
    match e {
        Error::Manager(m) => match m {
            ManagerError::Authentication(reason) => {
                format!("multiprocessing.context.AuthenticationError: {reason}")
            }
            ManagerError::Pickle(p) => format!("_pickle.UnpicklingError: {p}"),
            ManagerError::Eof => "EOFError".into(),
            ManagerError::Truncated => "OSError: got end of file during message".into(),
            ManagerError::TooLong { .. } | ManagerError::BadLength(_) => {
                format!("OSError: bad message length ({m})")
            }
            other => format!("OSError: {other}"),
        },
        other => os_error_line(other),
    }
}

/// `FileNotFoundError: [Errno 2] No such file or directory: '/psm_x'` and
/// its kin, for an error about segment `name`.
fn os_error_line(e: &Error) -> String {
    let name = match e {
        Error::NotFound { name }
        | Error::AlreadyExists { name }
        | Error::PermissionDenied { name }
        | Error::InvalidName { name, .. }
        | Error::Io { name, .. } => Some(format!("/{}", name.trim_start_matches('/'))),
        _ => None,
    };
    let Some(errno) = e.errno() else {
        return format!("ValueError: {e}");
    };
    let kind = crate::pyexc::exception_name(errno);
    let text = crate::pyexc::strerror(errno);
    match name {
        Some(name) => format!(
            "{kind}: [Errno {errno}] {text}: {}",
            PyValue::Str(name).repr()
        ),
        None => format!("{kind}: [Errno {errno}] {text}"),
    }
}

// ---------------------------------------------------------------------------
// The functions

/// The functions a `SharedMemoryServer` exposes (its `public` list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    TrackSegment,
    ReleaseSegment,
    ListSegments,
    Shutdown,
    Dummy,
    DebugInfo,
    NumberOfObjects,
    Create,
    Incref,
    Decref,
    GetMethods,
    AcceptConnection,
}

impl Func {
    const ALL: [Func; 12] = [
        Func::TrackSegment,
        Func::ReleaseSegment,
        Func::ListSegments,
        Func::Shutdown,
        Func::Dummy,
        Func::DebugInfo,
        Func::NumberOfObjects,
        Func::Create,
        Func::Incref,
        Func::Decref,
        Func::GetMethods,
        Func::AcceptConnection,
    ];

    fn name(self) -> &'static str {
        match self {
            Func::TrackSegment => "track_segment",
            Func::ReleaseSegment => "release_segment",
            Func::ListSegments => "list_segments",
            Func::Shutdown => "shutdown",
            Func::Dummy => "dummy",
            Func::DebugInfo => "debug_info",
            Func::NumberOfObjects => "number_of_objects",
            Func::Create => "create",
            Func::Incref => "incref",
            Func::Decref => "decref",
            Func::GetMethods => "get_methods",
            Func::AcceptConnection => "accept_connection",
        }
    }

    /// The class CPython defines it on, for messages.
    fn owner(self) -> &'static str {
        match self {
            Func::TrackSegment
            | Func::ReleaseSegment
            | Func::ListSegments
            | Func::Shutdown
            | Func::Create => "SharedMemoryServer",
            _ => "Server",
        }
    }

    /// Parameter names after `self` and the connection.
    fn params(self) -> &'static [&'static str] {
        match self {
            Func::TrackSegment | Func::ReleaseSegment => &["segment_name"],
            Func::Incref | Func::Decref => &["ident"],
            Func::GetMethods => &["token"],
            Func::AcceptConnection => &["name"],
            Func::Create => &["typeid"],
            _ => &[],
        }
    }
}

type Parsed<'a> = (Func, &'a [PyValue], &'a [(PyValue, PyValue)]);

/// `ignore, funcname, args, kwds = request` and the `public` check, with
/// CPython's exceptions.
fn parse_request(request: &PyValue) -> std::result::Result<Parsed<'_>, String> {
    let Some(items) = request.as_sequence() else {
        return Err(format!(
            "TypeError: cannot unpack non-iterable {} object",
            request.type_name()
        ));
    };
    let [_, funcname, args, kwds] = items else {
        return Err(if items.len() < 4 {
            format!(
                "ValueError: not enough values to unpack (expected 4, got {})",
                items.len()
            )
        } else {
            "ValueError: too many values to unpack (expected 4)".into()
        });
    };
    let func = Func::ALL
        .into_iter()
        .find(|f| funcname.as_str() == Some(f.name()))
        .ok_or_else(|| format!("AssertionError: {} unrecognized", funcname.repr()))?;
    let Some(args) = args.as_sequence() else {
        return Err(format!(
            "TypeError: {}.{}() argument after * must be an iterable, not {}",
            func.owner(),
            func.name(),
            args.type_name()
        ));
    };
    let PyValue::Dict(kwds) = kwds else {
        return Err(format!(
            "TypeError: {}.{}() argument after ** must be a mapping, not {}",
            func.owner(),
            func.name(),
            kwds.type_name()
        ));
    };
    Ok((func, args, kwds))
}

/// Python's argument binding for `func(c, *args, **kwds)`, with its
/// messages. `Create` takes extra arguments, which it ignores.
fn bind<'a>(
    func: Func,
    args: &'a [PyValue],
    kwds: &'a [(PyValue, PyValue)],
) -> std::result::Result<Vec<&'a PyValue>, String> {
    let params = func.params();
    let qualname = format!("{}.{}()", func.owner(), func.name());
    let variadic = func == Func::Create;
    if args.len() > params.len() && !variadic {
        return Err(format!(
            "TypeError: {qualname} takes {} positional arguments but {} were given",
            params.len() + 2,
            args.len() + 2
        ));
    }
    let mut bound: Vec<Option<&PyValue>> = params.iter().map(|_| None).collect();
    for (slot, arg) in bound.iter_mut().zip(args) {
        *slot = Some(arg);
    }
    for (key, value) in kwds {
        let Some(key) = key.as_str() else {
            return Err("TypeError: keywords must be strings".into());
        };
        match params.iter().position(|p| *p == key) {
            // `typeid` is positional-only.
            Some(i) if !variadic => {
                if bound[i].is_some() {
                    return Err(format!(
                        "TypeError: {qualname} got multiple values for argument '{key}'"
                    ));
                }
                bound[i] = Some(value);
            }
            _ if variadic => {}
            _ => {
                return Err(format!(
                    "TypeError: {qualname} got an unexpected keyword argument '{key}'"
                ))
            }
        }
    }
    let missing: Vec<String> = params
        .iter()
        .zip(&bound)
        .filter(|(_, b)| b.is_none())
        .map(|(p, _)| format!("'{p}'"))
        .collect();
    if !missing.is_empty() {
        let s = if missing.len() == 1 { "" } else { "s" };
        return Err(format!(
            "TypeError: {qualname} missing {} required positional argument{s}: {}",
            missing.len(),
            missing.join(" and ")
        ));
    }
    Ok(bound.into_iter().map(|b| b.expect("checked")).collect())
}

fn segment_name(value: &PyValue) -> std::result::Result<&str, String> {
    let name = value.as_str().ok_or_else(|| {
        format!(
            "TypeError: a segment name must be str, not {}",
            value.type_name()
        )
    })?;
    crate::name::validate(name).map_err(|e| os_error_line(&e))?;
    Ok(name)
}

/// Runs `func`; `Err` is the exception line of a traceback.
fn call(
    shared: &Shared,
    func: Func,
    args: &[PyValue],
    kwds: &[(PyValue, PyValue)],
) -> std::result::Result<PyValue, String> {
    let args = bind(func, args, kwds)?;
    match func {
        Func::TrackSegment => {
            // CPython keeps duplicates, and so do we: each is unlinked once.
            let name = segment_name(args[0])?;
            let mut state = shared.state();
            if state.closed {
                return Err(
                    "RuntimeError: the manager is shutting down; the segment is not tracked".into(),
                );
            }
            register(name);
            state.segments.push(name.to_owned());
            Ok(PyValue::None)
        }
        Func::ReleaseSegment => {
            let target = args[0];
            {
                let mut state = shared.state();
                let at = state
                    .segments
                    .iter()
                    .position(|n| target.as_str() == Some(n.as_str()))
                    .ok_or("ValueError: list.remove(x): x not in list")?;
                state.segments.remove(at);
            }
            let name = segment_name(target)?;
            let unlinked = crate::unlink(name);
            if matches!(unlinked, Ok(()) | Err(Error::NotFound { .. })) {
                // Under the lock, so that a concurrent track of the same
                // name is either still listed here or registers after.
                let state = shared.state();
                if !state.segments.iter().any(|n| n == name) {
                    crate::tracker::unregister(name);
                }
            }
            unlinked.map_err(|e| os_error_line(&e))?;
            Ok(PyValue::None)
        }
        Func::ListSegments => Ok(PyValue::List(
            shared
                .state()
                .segments
                .iter()
                .map(|n| n.as_str().into())
                .collect(),
        )),
        Func::Shutdown => {
            shared.close_and_unlink();
            Ok(PyValue::None)
        }
        Func::Dummy => Ok(PyValue::None),
        Func::DebugInfo => Ok(PyValue::Str(String::new())),
        Func::NumberOfObjects => Ok(PyValue::Int(0)),
        // A SharedMemoryManager registers no types, so CPython's lookups
        // fail the same way.
        Func::Create | Func::Incref | Func::Decref => Err(format!("KeyError: {}", args[0].repr())),
        Func::GetMethods | Func::AcceptConnection => Err(format!(
            "NotImplementedError: {}: a SharedMemoryManager has no shared objects",
            func.name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(func: &str, args: Vec<PyValue>, kwds: Vec<(PyValue, PyValue)>) -> PyValue {
        PyValue::Tuple(vec![
            PyValue::None,
            func.into(),
            PyValue::Tuple(args),
            PyValue::Dict(kwds),
        ])
    }

    fn run(shared: &Shared, request: &PyValue) -> std::result::Result<PyValue, String> {
        let (func, args, kwds) = parse_request(request)?;
        call(shared, func, args, kwds)
    }

    fn shared() -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            stop: sys::event().unwrap(),
            active: (Mutex::new(0), Condvar::new()),
            requests: Pool::for_requests_up_to(frame::DEFAULT_MAX_LEN),
        }
    }

    #[test]
    fn the_request_pool_is_shared_and_waits() {
        let pool = Pool::for_requests_up_to(frame::DEFAULT_MAX_LEN);
        assert!(pool.size >= request_cost(frame::DEFAULT_MAX_LEN));
        let all = pool.take(pool.size, None).unwrap();
        assert!(pool.take(1, Some(Duration::from_millis(20))).is_none());
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| pool.take(1, Some(Duration::from_secs(5))).is_some());
            std::thread::sleep(Duration::from_millis(20));
            drop(all);
            assert!(waiter.join().unwrap());
        });
        assert_eq!(*pool.used.lock().unwrap(), 0);
    }

    #[test]
    fn requests_get_cpythons_answers_and_errors() {
        let s = shared();
        let none = Ok(PyValue::None);
        assert_eq!(run(&s, &req("dummy", vec![], vec![])), none);
        assert_eq!(run(&s, &req("debug_info", vec![], vec![])), Ok("".into()));
        assert_eq!(
            run(&s, &req("number_of_objects", vec![], vec![])),
            Ok(0.into())
        );
        assert_eq!(
            run(&s, &req("track_segment", vec!["a".into()], vec![])),
            none
        );
        assert_eq!(
            run(
                &s,
                &req(
                    "track_segment",
                    vec![],
                    vec![("segment_name".into(), "a".into())]
                )
            ),
            none
        );
        assert_eq!(
            run(&s, &req("list_segments", vec![], vec![])),
            Ok(PyValue::List(vec!["a".into(), "a".into()]))
        );
        let err = |r: std::result::Result<PyValue, String>| r.unwrap_err();
        assert_eq!(
            err(run(&s, &req("nope", vec![], vec![]))),
            "AssertionError: 'nope' unrecognized"
        );
        assert_eq!(
            err(run(&s, &req("track_segment", vec![], vec![]))),
            "TypeError: SharedMemoryServer.track_segment() missing 1 required positional argument: 'segment_name'"
        );
        assert_eq!(
            err(run(&s, &req("dummy", vec![1.into()], vec![]))),
            "TypeError: Server.dummy() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            err(run(&s, &req("dummy", vec![], vec![("x".into(), 1.into())]))),
            "TypeError: Server.dummy() got an unexpected keyword argument 'x'"
        );
        assert_eq!(
            err(run(
                &s,
                &req("track_segment", vec!["b".into()], vec![("segment_name".into(), "b".into())])
            )),
            "TypeError: SharedMemoryServer.track_segment() got multiple values for argument 'segment_name'"
        );
        assert_eq!(
            err(run(&s, &req("track_segment", vec![1.into()], vec![]))),
            "TypeError: a segment name must be str, not int"
        );
        assert!(
            err(run(&s, &req("track_segment", vec!["a/b".into()], vec![])))
                .starts_with("OSError: [Errno 22] Invalid argument: '/a/b'")
        );
        assert_eq!(
            err(run(
                &s,
                &req("create", vec!["Foo".into(), 1.into()], vec![])
            )),
            "KeyError: 'Foo'"
        );
        assert_eq!(
            err(run(&s, &PyValue::Tuple(vec![PyValue::None]))),
            "ValueError: not enough values to unpack (expected 4, got 1)"
        );
        assert_eq!(
            err(run(&s, &PyValue::Int(1))),
            "TypeError: cannot unpack non-iterable int object"
        );
        assert_eq!(
            err(run(&s, &req("release_segment", vec!["zzz".into()], vec![]))),
            "ValueError: list.remove(x): x not in list"
        );
        // Released though already gone: the name is dropped, the error told.
        let gone = format!("shmkit_server_unit_{}", std::process::id());
        run(
            &s,
            &req("track_segment", vec![gone.as_str().into()], vec![]),
        )
        .unwrap();
        assert_eq!(
            err(run(
                &s,
                &req("release_segment", vec![gone.as_str().into()], vec![])
            )),
            format!("FileNotFoundError: [Errno 2] No such file or directory: '/{gone}'")
        );
        assert_eq!(
            run(&s, &req("list_segments", vec![], vec![])),
            Ok(PyValue::List(vec!["a".into(), "a".into()]))
        );
        // After shutdown, nothing more is tracked.
        assert_eq!(run(&s, &req("shutdown", vec![], vec![])), none);
        assert!(
            err(run(&s, &req("track_segment", vec!["c".into()], vec![])))
                .starts_with("RuntimeError")
        );
        assert_eq!(
            run(&s, &req("list_segments", vec![], vec![])),
            Ok(PyValue::List(vec![]))
        );
    }
}
