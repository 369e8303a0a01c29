//! The manager process: a child that runs a [`Server`](super::Server) for
//! the process that spawned it, as CPython's `SharedMemoryManager.start()`
//! runs one.
//!
//! Rust cannot fork a running program safely, so the child is a program
//! started afresh (often the same executable, as CPython's "spawn" start
//! method re-runs the interpreter) that calls [`serve_child`] when it finds
//! [`CHILD_ENV`] set. The parent writes the [`Settings`], key included, to
//! the child's stdin, so the key never shows in a command line or an
//! environment; the child answers with a [`Report`] line on stdout, then
//! serves until it is shut down, its parent dies, or it gets `SIGTERM`, and
//! in every case unlinks its segments first. It ignores `SIGINT`, as
//! CPython's manager process does.
//!
//! This module is the only one that encodes or decodes either message; the
//! Python bindings call [`Settings::encode`] and [`Report::decode`].
//!
//! Both are written with the manager's own wire codec, not a new format: the
//! settings are one length-prefixed pickle frame (a dict of plain values),
//! read with a bounded length, and the report carries the address pickled
//! as the manager protocol pickles addresses ([`Address::to_py`]), in hex so
//! that it is one printable line on a stdout other code may write to too.

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
/// The longest settings frame a child reads: a key, an address and a few
/// numbers take far less.
const MAX_SETTINGS_LEN: usize = 64 << 10;
/// The longest report a parent decodes (a hex address is at most a few
/// hundred bytes; a reason a line of text).
const MAX_REPORT_LEN: usize = 64 << 10;

/// What a manager child is told on its stdin: how to run its server.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The key clients authenticate with.
    pub authkey: Vec<u8>,
    /// Where to listen; `None`: a new socket of the child's choosing.
    pub address: Option<Address>,
    /// The process whose death stops the server.
    pub parent: u32,
    /// The longest message the server accepts.
    pub max_message_len: usize,
    /// How long a connection may stay silent (`None`: forever).
    pub timeout: Option<Duration>,
    /// Whether to use CPython's pre-3.12 challenge.
    pub legacy: bool,
    /// Where a default socket goes (a private directory of the parent's).
    pub dir: Option<String>,
}

impl Settings {
    /// Settings for a child of this process with default limits.
    pub fn new(authkey: &[u8]) -> Settings {
        Settings {
            authkey: authkey.to_vec(),
            address: None,
            parent: std::process::id(),
            max_message_len: frame::DEFAULT_MAX_LEN,
            timeout: None,
            legacy: false,
            dir: None,
        }
    }

    /// The bytes a parent writes to its child's stdin.
    pub fn encode(&self) -> Vec<u8> {
        let dict = PyValue::Dict(vec![
            ("authkey".into(), PyValue::Bytes(self.authkey.clone())),
            (
                "address".into(),
                self.address.as_ref().map_or(PyValue::None, Address::to_py),
            ),
            ("parent".into(), i64::from(self.parent).into()),
            (
                "max_message_len".into(),
                PyValue::Int(i64::try_from(self.max_message_len).unwrap_or(i64::MAX)),
            ),
            (
                "timeout".into(),
                self.timeout
                    .map_or(PyValue::None, |t| t.as_secs_f64().into()),
            ),
            ("legacy".into(), self.legacy.into()),
            (
                "dir".into(),
                self.dir.clone().map_or(PyValue::None, PyValue::Str),
            ),
        ]);
        let mut out = Vec::new();
        frame::write(&mut out, &pickle::dumps(&dict)).expect("a Vec takes any frame");
        out
    }

    /// Reads the settings [`Settings::encode`] wrote from `input`.
    pub fn read_from(input: &mut impl std::io::Read) -> Result<Settings> {
        let bytes = frame::read(input, MAX_SETTINGS_LEN)?;
        let value = pickle::loads(&bytes).map_err(ManagerError::from)?;
        Settings::from_py(&value)
    }

    /// Decodes what [`Settings::encode`] made.
    pub fn decode(bytes: &[u8]) -> Result<Settings> {
        let mut input = bytes;
        let settings = Settings::read_from(&mut input)?;
        if !input.is_empty() {
            return Err(bad_settings("trailing bytes"));
        }
        Ok(settings)
    }

    fn from_py(settings: &PyValue) -> Result<Settings> {
        let bad = bad_settings;
        let get = |key: &str| settings.get(&key.into()).ok_or_else(|| bad(key));
        let authkey = match get("authkey")? {
            PyValue::Bytes(key) => key.clone(),
            _ => return Err(bad("authkey")),
        };
        let address = match get("address")? {
            PyValue::None => None,
            address => Some(Address::from_py(address)?),
        };
        let parent = match get("parent")? {
            PyValue::Int(pid) => u32::try_from(*pid).map_err(|_| bad("parent"))?,
            _ => return Err(bad("parent")),
        };
        let max_message_len = match get("max_message_len")? {
            PyValue::Int(n) => usize::try_from(*n).map_err(|_| bad("max_message_len"))?,
            _ => return Err(bad("max_message_len")),
        };
        let timeout = match get("timeout")? {
            PyValue::None => None,
            PyValue::Float(t) => Some(Duration::try_from_secs_f64(*t).map_err(|_| bad("timeout"))?),
            _ => return Err(bad("timeout")),
        };
        let legacy = match get("legacy")? {
            PyValue::Bool(b) => *b,
            _ => return Err(bad("legacy")),
        };
        // Optional: older parents did not send it.
        let dir = match settings.get(&"dir".into()) {
            None | Some(PyValue::None) => None,
            Some(PyValue::Str(dir)) => Some(dir.clone()),
            Some(_) => return Err(bad("dir")),
        };
        Ok(Settings {
            authkey,
            address,
            parent,
            max_message_len,
            timeout,
            legacy,
            dir,
        })
    }

    /// The server options these settings stand for.
    fn options(&self) -> ServerOptions {
        let mut options = ServerOptions::new()
            .authkey(&self.authkey)
            .watch_process(self.parent)
            .max_message_len(self.max_message_len)
            .timeout(self.timeout);
        if let Some(address) = &self.address {
            options = options.address(address.clone());
        }
        if self.legacy {
            options = options.challenge(ChallengeKind::Legacy);
        }
        if let Some(dir) = &self.dir {
            options = options.private_dir(dir);
        }
        options
    }
}

fn bad_settings(what: &str) -> crate::Error {
    ManagerError::Process(format!("bad manager settings: {what}")).into()
}

/// What a manager child reports on a line of its stdout once it listens or
/// cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// It listens at this address.
    Ready(Address),
    /// It could not start, for this reason (one line of text).
    Failed(String),
}

impl Report {
    /// The line a child prints, newline included. A newline goes first too:
    /// whatever the host printed before (libtest does) ends its own line.
    pub fn encode(&self) -> Vec<u8> {
        let mut line = b"\n".to_vec();
        match self {
            Report::Ready(address) => {
                line.extend_from_slice(READY);
                line.extend(hex(&pickle::dumps(&address.to_py())).bytes());
            }
            Report::Failed(reason) => {
                line.extend_from_slice(FAILED);
                line.extend(reason.replace(['\n', '\r'], " ").bytes());
            }
        }
        line.push(b'\n');
        line
    }

    /// The report in one line of a child's stdout, `Ok(None)` if the line
    /// holds none. Other output may come before the marker on the same line.
    pub fn decode(line: &[u8]) -> Result<Option<Report>> {
        let unreadable =
            || ManagerError::Process("the manager process reported an unreadable address".into());
        if line.len() > MAX_REPORT_LEN {
            return Err(unreadable().into());
        }
        let line = line.trim_ascii();
        if let Some(hex) = after(line, READY) {
            let value = unhex(hex)
                .and_then(|b| pickle::loads(&b).ok())
                .ok_or_else(unreadable)?;
            let address = Address::from_py(&value).map_err(|_| unreadable())?;
            return Ok(Some(Report::Ready(address)));
        }
        if let Some(reason) = after(line, FAILED) {
            return Ok(Some(Report::Failed(
                String::from_utf8_lossy(reason).into_owned(),
            )));
        }
        Ok(None)
    }
}

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
    let settings = Settings {
        authkey: authkey.to_vec(),
        address: options.address.clone(),
        parent: std::process::id(),
        max_message_len: options.max_message_len,
        timeout: options.timeout,
        legacy: options.challenge == ChallengeKind::Legacy,
        dir: None,
    };
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
    let _ = stdin.write_all(&settings.encode());
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
                if !reported {
                    if let Some(report) = Report::decode(&line).transpose() {
                        reported = true;
                        let _ = tx.send(report);
                    }
                }
                line.clear();
            }
        });
    if let Err(e) = reader {
        return fail(&mut child, ManagerError::io("spawn a thread", e).into());
    }
    let message = match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Ok(Report::Ready(address))) => return Ok((child, address)),
        Ok(Ok(Report::Failed(reason))) => {
            format!("the manager process could not start: {reason}")
        }
        Ok(Err(e)) => e.to_string(),
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
    let options = match Settings::read_from(&mut std::io::stdin().lock()) {
        Ok(settings) => settings.options(),
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
    let line = Report::Ready(server.address().clone()).encode();
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&line)
        .and_then(|()| stdout.flush())
        .map_err(|e| ManagerError::io("report the address", e))?;
    drop(stdout);
    server.serve_with(&mut all)
}

fn report_failure(e: &crate::Error) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&Report::Failed(e.to_string()).encode());
    let _ = stdout.flush();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Settings {
        Settings {
            authkey: b"k\0\xffey".to_vec(),
            address: Some(Address::from_py(&PyValue::Str("/tmp/x/listener".into())).unwrap()),
            parent: 4_000_000,
            max_message_len: 1234,
            timeout: Some(Duration::from_millis(2500)),
            legacy: true,
            dir: Some("/tmp/pymp-x".into()),
        }
    }

    #[test]
    fn settings_round_trip_every_field() {
        let s = full();
        assert_eq!(Settings::decode(&s.encode()).unwrap(), s);
        let bare = Settings::new(b"");
        assert_eq!(Settings::decode(&bare.encode()).unwrap(), bare);
        let tcp = Settings {
            address: Some(
                Address::from_py(&PyValue::Tuple(vec![
                    PyValue::Str("127.0.0.1".into()),
                    PyValue::Int(0),
                ]))
                .unwrap(),
            ),
            ..full()
        };
        assert_eq!(Settings::decode(&tcp.encode()).unwrap(), tcp);
    }

    #[test]
    fn bad_settings_are_errors() {
        let good = full().encode();
        assert!(Settings::decode(b"").is_err());
        assert!(Settings::decode(&good[..good.len() - 1]).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Settings::decode(&trailing).is_err());
        // A frame longer than any settings is refused before it is read.
        assert!(Settings::decode(&[0x7f, 0xff, 0xff, 0xff]).is_err());
        // Each field of the wrong type names the field.
        let dict = PyValue::Dict(vec![("authkey".into(), PyValue::Str("k".into()))]);
        let mut bytes = Vec::new();
        frame::write(&mut bytes, &pickle::dumps(&dict)).unwrap();
        let e = Settings::decode(&bytes).unwrap_err().to_string();
        assert!(e.contains("authkey"), "{e}");
    }

    #[test]
    fn report_round_trips() {
        let ready = Report::Ready(full().address.unwrap());
        assert_eq!(
            Report::decode(&ready.encode()).unwrap(),
            Some(ready.clone())
        );
        let failed = Report::Failed("cannot\nlisten".into());
        assert_eq!(
            Report::decode(&failed.encode()).unwrap(),
            Some(Report::Failed("cannot listen".into()))
        );
        // Other output before the marker on the same line.
        let mut line = b"test foo ... ".to_vec();
        line.extend_from_slice(ready.encode().trim_ascii_start());
        assert_eq!(Report::decode(&line).unwrap(), Some(ready));
        assert_eq!(Report::decode(b"hello\n").unwrap(), None);
    }

    #[test]
    fn bad_reports_are_errors() {
        for line in [
            &b"shmkit-manager-address 8"[..],
            b"shmkit-manager-address zz",
            b"shmkit-manager-address 80",
        ] {
            assert!(Report::decode(line).is_err());
        }
        let long = vec![b'a'; MAX_REPORT_LEN + 1];
        assert!(Report::decode(&long).is_err());
    }
}
