//! `shmkit serve`: a standalone manager, wire-compatible with CPython's
//! `SharedMemoryManager`, until SIGTERM, SIGINT or a `shutdown` request;
//! every segment it tracks is unlinked in all three cases.
//!
//! The native server (`shmkit::manager::Server`) listens on a private socket
//! of its own; `serve` listens on the public address and relays each
//! connection to it byte for byte, reading the frames as they pass, so that
//! it can log one line per connection (peer, function, outcome) without
//! taking part in the protocol: clients authenticate with the server itself.
//!
//! Each connection costs two threads here (one per direction) and one in
//! the server. At most [`MAX_CONNECTIONS`] are relayed at once; more wait
//! in the listen backlog. When the server ends a connection (answered, or
//! silent past the idle limit), the relay shuts the client's socket too, so
//! that a client that never speaks cannot keep a thread blocked reading it.
//! The idle limit is the server's 60 s; tests shorten it with the
//! environment variable `SHMKIT_SERVE_IDLE_SECONDS`.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use shmkit::manager::{frame, pickle, Address, PyValue, Server, Stream, MAX_CONNECTIONS};

/// The environment variable that sets the idle limit in seconds (for tests).
const IDLE_ENV: &str = "SHMKIT_SERVE_IDLE_SECONDS";

/// Frames longer than this are relayed but not kept for the log: a log line
/// needs only the function's name, and a hostile client must not make this
/// process hold and decode its frames on top of what the server does.
const LOG_FRAME_MAX: usize = 64 << 10;

/// What `serve` was asked for on the command line.
pub struct Args {
    pub address: Option<String>,
    pub authkey_file: Option<PathBuf>,
}

/// Everything serve made on disk, removed when it stops.
struct Cleanup {
    files: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir(d);
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A private directory `shmkit-serve-XXXXXXXX` (mode 0700) under the
/// temporary directory.
fn private_dir() -> Result<PathBuf, String> {
    let suffix: String = shmkit::manager::random_authkey()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = std::env::temp_dir().join(format!("shmkit-serve-{suffix}"));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The key: the bytes of `--authkey-file` (made with 32 random bytes, mode
/// 0600, if it does not exist), or 32 random bytes written to `authkey` in
/// the private directory.
fn authkey(args: &Args, cleanup: &mut Cleanup) -> Result<(Vec<u8>, PathBuf), String> {
    let (path, ours) = match &args.authkey_file {
        Some(p) => (p.clone(), false),
        None => (private(cleanup)?.join("authkey"), true),
    };
    match fs::read(&path) {
        Ok(key) if key.is_empty() => Err(format!("{}: the key file is empty", path.display())),
        Ok(key) => Ok((key, path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = shmkit::manager::random_authkey();
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(&key))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            if ours {
                cleanup.files.push(path.clone());
            }
            Ok((key, path))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn private(cleanup: &mut Cleanup) -> Result<PathBuf, String> {
    if cleanup.dir.is_none() {
        cleanup.dir = Some(private_dir()?);
    }
    Ok(cleanup.dir.clone().expect("just set"))
}

/// `host:port` is TCP, `@name` an abstract Unix socket, anything else a
/// Unix socket path (made with mode 0600).
fn listen(args: &Args, cleanup: &mut Cleanup) -> Result<(Listener, Address), String> {
    let path = match args.address.as_deref() {
        None => private(cleanup)?.join("listener"),
        Some(a) if a.starts_with('@') => {
            use std::os::linux::net::SocketAddrExt;
            let name = &a.as_bytes()[1..];
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)
                .map_err(|e| format!("bad address {a}: {e}"))?;
            let l =
                UnixListener::bind_addr(&addr).map_err(|e| format!("cannot listen on {a}: {e}"))?;
            return Ok((Listener::Unix(l), Address::Abstract(name.to_vec())));
        }
        Some(a) => match a.parse::<Address>() {
            Ok(Address::Tcp(addr)) => {
                let l =
                    TcpListener::bind(addr).map_err(|e| format!("cannot listen on {a}: {e}"))?;
                let bound = l.local_addr().map_err(|e| e.to_string())?;
                return Ok((Listener::Tcp(l), Address::Tcp(bound)));
            }
            _ => PathBuf::from(a),
        },
    };
    let l = UnixListener::bind(&path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    cleanup.files.push(path.clone());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    Ok((Listener::Unix(l), Address::Unix(path)))
}

/// Why serve stopped.
enum Stop {
    Signal(i32),
    Shutdown,
}

pub fn run(args: Args) -> Result<(), String> {
    init_logging();
    let mut cleanup = Cleanup {
        files: Vec::new(),
        dir: None,
    };
    let (key, key_path) = authkey(&args, &mut cleanup)?;
    let (listener, address) = listen(&args, &mut cleanup)?;

    // The native server, on a socket only this user can reach.
    let mut options = Server::options().authkey(&key);
    if let Some(idle) = std::env::var(IDLE_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|v| std::time::Duration::try_from_secs_f64(v).ok())
    {
        options = options.timeout(Some(idle));
    }
    let server = options
        .bind()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let inner = server.address().clone();
    let stopper = server.stopper();
    let handle = server.spawn().map_err(|e| e.to_string())?;

    let (tx, rx) = mpsc::channel();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let (read, write) = UnixStream::pair().map_err(|e| e.to_string())?;
        signal_hook::low_level::pipe::register(signal, write).map_err(|e| e.to_string())?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut byte = [0u8];
            if (&read).read(&mut byte).is_ok() {
                let _ = tx.send(Stop::Signal(signal));
            }
        });
    }
    {
        let tx = tx.clone();
        let stopper = stopper.clone();
        std::thread::spawn(move || {
            while !stopper.is_stopped() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = tx.send(Stop::Shutdown);
        });
    }

    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "address: {address}");
        let _ = writeln!(out, "python-address: {}", address.to_py().repr());
        let _ = writeln!(out, "authkey-file: {}", key_path.display());
        let _ = out.flush();
    }
    tracing::info!(%address, authkey_file = %key_path.display(), pid = std::process::id(), "serving");

    std::thread::spawn(move || accept_loop(listener, inner));

    let why = rx.recv().unwrap_or(Stop::Shutdown);
    let segments = stopper.segments().len();
    match why {
        Stop::Signal(n) => {
            tracing::info!(signal = n, segments, "stopping: unlinking every segment")
        }
        Stop::Shutdown => tracing::info!("stopped by a shutdown request"),
    }
    stopper.stop();
    handle.join().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + RELAY_GRACE;
    while RELAYS.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(cleanup);
    Ok(())
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// Connections being relayed; the command waits for them (briefly) before it
/// exits, so that the connection that asked for the shutdown is logged too.
static RELAYS: AtomicUsize = AtomicUsize::new(0);

/// How long exiting waits for connections still being relayed.
const RELAY_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn accept_loop(listener: Listener, inner: Address) {
    loop {
        // At the limit, new connections wait in the backlog.
        while RELAYS.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let accepted = match &listener {
            Listener::Unix(l) => l.accept().map(|(s, a)| {
                let peer = unix_peer(&s).unwrap_or_else(|| format!("{a:?}"));
                (Stream::Unix(s), peer)
            }),
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), a.to_string())),
        };
        match accepted {
            Ok((stream, peer)) => {
                let inner = inner.clone();
                RELAYS.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    relay(stream, peer, &inner);
                    RELAYS.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// `pid=N uid=N` of a Unix peer, from `SO_PEERCRED`.
fn unix_peer(s: &UnixStream) -> Option<String> {
    let cred = rustix::net::sockopt::socket_peercred(s).ok()?;
    Some(format!(
        "pid={} uid={}",
        cred.pid.as_raw_nonzero(),
        cred.uid.as_raw()
    ))
}

/// What one direction of a connection carried, as far as the log cares.
#[derive(Default)]
struct Seen {
    frames: Vec<Vec<u8>>,
}

/// Copies `from` to `to` until end of file, keeping the first five frames.
fn pump(mut from: Stream, mut to: Stream) -> Seen {
    let mut seen = Seen::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut parsing = true;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if parsing {
            pending.extend_from_slice(&buf[..n]);
            loop {
                match frame::decode(&pending, LOG_FRAME_MAX) {
                    Ok(Some((payload, used))) => {
                        seen.frames.push(payload.to_vec());
                        pending.drain(..used);
                        if seen.frames.len() >= 5 {
                            parsing = false;
                            pending = Vec::new();
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        parsing = false;
                        pending = Vec::new();
                        break;
                    }
                }
            }
        }
    }
    to.shutdown_write();
    seen
}

/// Relays one connection to the server and logs it.
fn relay(client: Stream, peer: String, inner: &Address) {
    let started = Instant::now();
    let server = match inner {
        Address::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
        other => Err(io::Error::other(format!(
            "unexpected inner address {other}"
        ))),
    };
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot reach the server");
            return;
        }
    };
    let (Ok(client2), Ok(client3), Ok(server2)) =
        (client.try_clone(), client.try_clone(), server.try_clone())
    else {
        tracing::warn!(%peer, "cannot clone sockets");
        return;
    };
    let upstream = std::thread::spawn(move || pump(client2, server2));
    let down = pump(server, client);
    // The server is done with this connection; so is the client, whether or
    // not it says so: this ends the upstream pump's read.
    client3.shutdown();
    let up = upstream.join().unwrap_or_default();
    let (function, outcome) = describe(&up, &down);
    tracing::info!(
        %peer,
        function = %function,
        outcome = %outcome,
        micros = started.elapsed().as_micros() as u64,
        "connection"
    );
}

/// Client frames: response, challenge, welcome, request. Server frames:
/// challenge, welcome, response, reply.
fn describe(up: &Seen, down: &Seen) -> (String, String) {
    let function = up
        .frames
        .get(3)
        .and_then(|f| pickle::loads(f).ok())
        .and_then(|v| match v {
            PyValue::Tuple(items) if items.len() == 4 => items[1].as_str().map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| "-".to_owned());
    let failure = shmkit::manager::auth::FAILURE;
    let outcome = if down.frames.get(1).is_some_and(|f| f.as_slice() == failure) {
        "authentication failed: wrong key".to_owned()
    } else if up.frames.get(2).is_some_and(|f| f.as_slice() == failure) {
        "authentication failed: the client refused the server".to_owned()
    } else {
        match down.frames.get(3).and_then(|f| pickle::loads(f).ok()) {
            Some(PyValue::Tuple(items)) if items.len() == 2 => match items[0].as_str() {
                Some("#RETURN") => "ok".to_owned(),
                Some(kind) => {
                    let last = match &items[1] {
                        PyValue::Str(tb) => {
                            tb.trim_end().lines().next_back().unwrap_or("").to_owned()
                        }
                        other => other.repr(),
                    };
                    format!("error ({kind}): {last}")
                }
                None => "unreadable reply".to_owned(),
            },
            _ if down.frames.is_empty() => "closed before the handshake".to_owned(),
            _ => "closed before a reply".to_owned(),
        }
    };
    (function, outcome)
}
