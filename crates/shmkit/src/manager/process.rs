//! The manager process: a child that runs a [`Server`](super::Server) for
//! the process that spawned it, as CPython's `SharedMemoryManager.start()`
//! runs one.
//!
//! Rust cannot fork a running program safely, so the child is a program
//! started afresh (often the same executable, as CPython's "spawn" start
//! method re-runs the interpreter) that calls [`serve_child`] when it finds
//! [`CHILD_ENV`] set. The parent writes the settings, key included, to the
//! child's stdin as one pickled frame, so the key never shows in a command
//! line or an environment; the child answers with its address on a line of
//! stdout, then serves until it is shut down, its parent dies, or it gets
//! `SIGTERM`, and in every case unlinks its segments first. It ignores
//! `SIGINT`, as CPython's manager process does.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::address::Address;
use super::auth::ChallengeKind;
use super::error::ManagerError;
use super::frame;
use super::pickle::{self, PyValue};
use super::server::{ServerOptions, Source, Stopper};
use crate::error::Result;
use crate::sys;

/// Set in a manager child's environment by
/// [`SharedMemoryManager::start_process`](super::SharedMemoryManager::start_process).
pub const CHILD_ENV: &str = "SHMKIT_MANAGER_CHILD";

/// The line a child prints once it listens, before the hex of its pickled
/// address.
const READY: &[u8] = b"shmkit-manager-address ";
/// The line a child prints when it cannot listen, before the reason.
const FAILED: &[u8] = b"shmkit-manager-error ";

/// How long a parent waits for its child's address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopping parent waits for the child to exit before it sends
/// `SIGTERM`, and then `SIGKILL` (CPython's `shutdown_timeout`).
const EXIT_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts `command` as a manager process with `options` (and `authkey`);
/// returns it once it reported its address.
pub(crate) fn spawn(
    mut command: Command,
    options: &ServerOptions,
    authkey: &[u8],
) -> Result<(Child, Address)> {
    let config = PyValue::Dict(vec![
        ("authkey".into(), PyValue::Bytes(authkey.to_vec())),
        (
            "address".into(),
            options
                .address
                .as_ref()
                .map_or(PyValue::None, Address::to_py),
        ),
        ("parent".into(), i64::from(std::process::id()).into()),
        (
            "max_message_len".into(),
            PyValue::Int(i64::try_from(options.max_message_len).unwrap_or(i64::MAX)),
        ),
        (
            "timeout".into(),
            options
                .timeout
                .map_or(PyValue::None, |t| t.as_secs_f64().into()),
        ),
        (
            "legacy".into(),
            (options.challenge == ChallengeKind::Legacy).into(),
        ),
    ]);
    command
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| ManagerError::io("spawn the manager process", e))?;
    let fail = |child: &mut Child, e: crate::Error| {
        let _ = child.kill();
        let _ = child.wait();
        Err(e)
    };
    // A child that exits at once closes its stdin: the write then fails,
    // and the child's exit, below, says more than the broken pipe.
    let mut stdin = child.stdin.take().expect("piped");
    let _ = frame::write(&mut stdin, &pickle::dumps(&config));
    drop(stdin);

    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    // Reads the child's stdout to its end, so that the child never blocks
    // on a full pipe; only the first protocol line matters.
    let reader = std::thread::Builder::new()
        .name("shmkit-manager-stdout".into())
        .spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = Vec::new();
            let mut reported = false;
            while matches!(lines.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                // libtest and other hosts may print before us on the same
                // line, so the marker is looked for anywhere in it.
                if !reported {
                    let text = line.trim_ascii_end();
                    if let Some(hex) = after(text, READY) {
                        reported = true;
                        let _ = tx.send(Ok(hex.to_vec()));
                    } else if let Some(reason) = after(text, FAILED) {
                        reported = true;
                        let _ = tx.send(Err(String::from_utf8_lossy(reason).into_owned()));
                    }
                }
                line.clear();
            }
        });
    if let Err(e) = reader {
        return fail(&mut child, ManagerError::io("spawn a thread", e).into());
    }
    let message = match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Ok(hex)) => {
            let address = unhex(&hex)
                .and_then(|b| pickle::loads(&b).ok())
                .map(|v| Address::from_py(&v));
            match address {
                Some(Ok(address)) => return Ok((child, address)),
                _ => "the manager process reported an unreadable address".to_owned(),
            }
        }
        Ok(Err(reason)) => format!("the manager process could not start: {reason}"),
        Err(mpsc::RecvTimeoutError::Timeout) => format!(
            "the manager process did not report its address within {} s",
            STARTUP_TIMEOUT.as_secs()
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            format!(
                "the manager process exited ({status}) before reporting its address; \
                 does the program call shmkit::manager::serve_child() when {CHILD_ENV} is set?"
            )
        }
    };
    fail(&mut child, ManagerError::Process(message).into())
}

/// Waits up to [`EXIT_TIMEOUT`] for the child, then asks it to stop with
/// `SIGTERM` (it unlinks its segments), and finally kills it.
pub(crate) fn reap(child: &mut Child) {
    if wait_for(child, EXIT_TIMEOUT) {
        return;
    }
    let _ = sys::terminate(child.id());
    if wait_for(child, EXIT_TIMEOUT) {
        return;
    }
    tracing::warn!(
        pid = child.id(),
        "the manager process did not stop: killing it"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_for(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The child's side: reads its settings from stdin, listens, prints its
/// address, and serves until it is shut down, its parent dies or it gets
/// `SIGTERM`, unlinking every tracked segment in all three cases. `SIGINT`
/// is ignored.
///
/// Call it from `main` when [`CHILD_ENV`] is set:
///
/// ```no_run
/// fn main() -> shmkit::Result<()> {
///     if std::env::var_os(shmkit::manager::CHILD_ENV).is_some() {
///         return shmkit::manager::serve_child();
///     }
///     // ... the program, which may call
///     // SharedMemoryManager::start_process(Command::new(std::env::current_exe()?), ...)
///     Ok(())
/// }
/// ```
pub fn serve_child() -> Result<()> {
    serve_child_with(&mut [])
}

/// `SIGTERM`, as `signal-hook` reports it on a socket: unlink and stop.
struct Sigterm(std::os::unix::net::UnixStream);

impl Source for Sigterm {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    fn ready(&mut self, stopper: &Stopper) -> bool {
        tracing::warn!("the manager process got SIGTERM: unlinking and stopping");
        stopper.stop();
        false
    }
}

/// [`serve_child`], with `sources` waited on beside the server.
pub(crate) fn serve_child_with(sources: &mut [&mut (dyn Source + 'static)]) -> Result<()> {
    let settings = frame::read(&mut std::io::stdin().lock(), 64 << 10)
        .map_err(crate::Error::from)
        .and_then(|b| Ok(pickle::loads(&b).map_err(ManagerError::from)?))
        .and_then(|v| options_from(&v));
    let options = match settings {
        Ok(options) => options,
        Err(e) => {
            report_failure(&e);
            return Err(e);
        }
    };
    sys::ignore_sigint().map_err(|e| ManagerError::io("ignore SIGINT", e))?;
    let sigterm = sys::sigterm_socket().map_err(|e| ManagerError::io("handle SIGTERM", e))?;
    let server = match options.bind() {
        Ok(server) => server,
        Err(e) => {
            report_failure(&e);
            return Err(e);
        }
    };
    let mut sigterm = Sigterm(sigterm);
    let mut all: Vec<&mut (dyn Source + 'static)> = vec![&mut sigterm];
    all.extend(sources.iter_mut().map(|s| &mut **s));
    let mut line = b"\n".to_vec();
    line.extend_from_slice(READY);
    line.extend(hex(&pickle::dumps(&server.address().to_py())).bytes());
    line.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&line)
        .and_then(|()| stdout.flush())
        .map_err(|e| ManagerError::io("report the address", e))?;
    drop(stdout);
    server.serve_with(&mut all)
}

fn report_failure(e: &crate::Error) {
    let text = e.to_string().replace('\n', " ");
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(b"\n");
    let _ = stdout.write_all(FAILED);
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

fn options_from(settings: &PyValue) -> Result<ServerOptions> {
    let bad = |what: &str| -> crate::Error {
        ManagerError::Process(format!("bad manager settings: {what}")).into()
    };
    let get = |key: &str| settings.get(&key.into()).ok_or_else(|| bad(key));
    let mut options = ServerOptions::new();
    match get("authkey")? {
        PyValue::Bytes(key) => options = options.authkey(key),
        _ => return Err(bad("authkey")),
    }
    match get("address")? {
        PyValue::None => {}
        address => options = options.address(Address::from_py(address)?),
    }
    match get("parent")? {
        PyValue::Int(pid) => {
            options = options.watch_process(u32::try_from(*pid).map_err(|_| bad("parent"))?)
        }
        _ => return Err(bad("parent")),
    }
    match get("max_message_len")? {
        PyValue::Int(n) => {
            options = options.max_message_len(usize::try_from(*n).map_err(|_| bad("max"))?)
        }
        _ => return Err(bad("max_message_len")),
    }
    match get("timeout")? {
        PyValue::None => options = options.timeout(None),
        PyValue::Float(t) => {
            let t = Duration::try_from_secs_f64(*t).map_err(|_| bad("timeout"))?;
            options = options.timeout(Some(t));
        }
        _ => return Err(bad("timeout")),
    }
    if let PyValue::Bool(true) = get("legacy")? {
        options = options.challenge(ChallengeKind::Legacy);
    }
    // Optional: the parent's private directory for the default socket.
    match settings.get(&"dir".into()) {
        None | Some(PyValue::None) => {}
        Some(PyValue::Str(dir)) => options = options.private_dir(dir),
        Some(_) => return Err(bad("dir")),
    }
    Ok(options)
}

/// What follows the first `marker` in `line`.
fn after<'a>(line: &'a [u8], marker: &[u8]) -> Option<&'a [u8]> {
    line.windows(marker.len())
        .position(|w| w == marker)
        .map(|at| &line[at + marker.len()..])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}
