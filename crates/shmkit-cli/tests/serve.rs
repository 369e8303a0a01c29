//! `shmkit serve` with real stdlib clients (CPython 3.13, else 3.11): they
//! create segments through it, and every way of stopping it unlinks them.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// A CPython with the stdlib, or `None` (the test then says so and passes).
fn python() -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/find-python");
    for version in ["3.13", "3.11"] {
        if let Ok(out) = Command::new(&script).arg(version).output() {
            if out.status.success() {
                return Some(String::from_utf8(out.stdout).unwrap().trim().to_owned());
            }
        }
    }
    eprintln!("no CPython 3.11 or 3.13 found: skipping");
    None
}

struct Serve {
    child: Child,
    address: String,
    /// The `address:` line, as shmkit's `Address` reads it.
    native_address: String,
    authkey_file: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        Serve::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shmkit"))
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run shmkit serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut address, mut authkey_file, mut native) = (None, None, None);
        while address.is_none() || authkey_file.is_none() || native.is_none() {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "serve exited early"
            );
            let line = line.trim_end();
            if let Some(a) = line.strip_prefix("address: ") {
                native = Some(a.to_owned());
            } else if let Some(a) = line.strip_prefix("python-address: ") {
                address = Some(a.to_owned());
            } else if let Some(k) = line.strip_prefix("authkey-file: ") {
                authkey_file = Some(PathBuf::from(k));
            }
        }
        Serve {
            child,
            address: address.unwrap(),
            native_address: native.unwrap(),
            authkey_file: authkey_file.unwrap(),
            _stdout: stdout,
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).unwrap();
        kill_process(pid, signal).unwrap();
    }

    /// Waits (at most 5 s) for the exit; returns its success and stderr.
    fn wait(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.success(), err)
    }

    /// Runs `code` in the stdlib Python with `address` and `key` defined;
    /// returns its stdout's words.
    fn client(&self, python: &str, code: &str) -> Vec<String> {
        let prelude = format!(
            "from multiprocessing import resource_tracker, connection\n\
             from multiprocessing.managers import SharedMemoryManager, dispatch\n\
             address = {}\nkey = open({:?}, 'rb').read()\n",
            self.address,
            self.authkey_file.display().to_string()
        );
        let out = Command::new(python)
            .arg("-c")
            .arg(prelude + code)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a SharedMemory and a ShareableList through the manager, hands
/// them over (unregistering them from its own resource tracker), prints
/// their names.
const CREATE: &str = "\
smm = SharedMemoryManager(address, key)
smm.connect()
shm = smm.SharedMemory(4096)
sl = smm.ShareableList([1, 'two', None])
for s in (shm, sl.shm):
    resource_tracker.unregister(s._name, 'shared_memory')
    print(s.name)
";

fn gone(names: &[String]) -> bool {
    names.iter().all(|n| !shmkit::exists(n))
}

#[test]
fn sigterm_unlinks_and_the_log_has_a_line_per_connection() {
    let Some(python) = python() else { return };
    let serve = Serve::start(&[]);
    let socket = PathBuf::from(serve.address.trim_matches('\''));
    let dir = socket.parent().unwrap().to_owned();
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(&serve.authkey_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let names = serve.client(&python, CREATE);
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| shmkit::exists(n)));
    // A wrong key is refused, and logged.
    let refused = serve.client(
        &python,
        "try:\n    SharedMemoryManager(address, b'wrong').connect()\n\
         except Exception as e:\n    print(type(e).__name__)\n",
    );
    assert_eq!(refused, ["AuthenticationError"]);

    serve.signal(Signal::TERM);
    let (ok, log) = serve.wait();
    assert!(ok, "{log}");
    assert!(gone(&names), "{names:?}");
    assert!(!dir.exists(), "the private directory is removed");
    assert!(log.contains("function=dummy outcome=ok"), "{log}");
    assert!(log.contains("function=track_segment outcome=ok"), "{log}");
    assert!(log.contains("outcome=authentication failed"), "{log}");
    assert!(log.contains("peer=pid="), "{log}");
}

#[test]
fn a_shutdown_request_stops_it_and_the_key_file_is_used() {
    let Some(python) = python() else { return };
    let dir = std::env::temp_dir().join(format!("shmkit-serve-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, b"a key of our own").unwrap();
    let socket = dir.join("sock");
    let serve = Serve::start(&[
        "--address",
        socket.to_str().unwrap(),
        "--authkey-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(serve.authkey_file, key);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let names = serve.client(&python, CREATE);
    let listed = serve.client(
        &python,
        "with connection.Client(address, authkey=key) as c:\n\
         \x20   print(*dispatch(c, None, 'list_segments'))\n\
         with connection.Client(address, authkey=key) as c:\n\
         \x20   dispatch(c, None, 'shutdown')\n",
    );
    assert_eq!(listed, names);
    let (ok, log) = serve.wait();
    assert!(ok, "{log}");
    assert!(log.contains("function=shutdown outcome=ok"), "{log}");
    assert!(gone(&names));
    assert!(!socket.exists());
    assert_eq!(std::fs::read(&key).unwrap(), b"a key of our own");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigint_unlinks_too_and_tcp_works() {
    let Some(python) = python() else { return };
    let serve = Serve::start(&["--address", "127.0.0.1:0"]);
    assert!(
        serve.address.starts_with("('127.0.0.1', "),
        "{}",
        serve.address
    );
    let names = serve.client(&python, CREATE);
    assert!(names.iter().all(|n| shmkit::exists(n)));
    serve.signal(Signal::INT);
    let (ok, log) = serve.wait();
    assert!(ok, "{log}");
    assert!(gone(&names));
}

impl Serve {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many entries `/proc/PID/<what>` has (`task`: threads, `fd`).
    fn count(&self, what: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/{what}", self.pid()))
            .unwrap()
            .count()
    }

    /// A line of `/proc/PID/status`, in KiB (`VmHWM`: peak resident set).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(&self.native_address)
    }

    /// An authenticated connection, ready for one request.
    fn connect(&self) -> shmkit::manager::Connection {
        use shmkit::manager::{auth, Address, ChallengeKind, Connection};
        let key = std::fs::read(&self.authkey_file).unwrap();
        let mut conn = Connection::connect(&Address::Unix(self.socket())).unwrap();
        auth::answer_challenge(&mut conn, &key).unwrap();
        auth::deliver_challenge(&mut conn, &key, ChallengeKind::Modern).unwrap();
        conn
    }
}

/// Waits up to `limit` for `done`.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// Thirty clients read the challenge and then say nothing. At the idle
/// limit every one of their threads and descriptors in `serve` is released,
/// while the clients still hold their ends open.
#[test]
fn silent_connections_are_released_at_the_idle_limit() {
    use std::os::unix::net::UnixStream;
    let serve = Serve::start_with_env(&[], &[("SHMKIT_SERVE_IDLE_SECONDS", "1")]);
    // The accept thread starts just after the address is printed.
    std::thread::sleep(Duration::from_millis(300));
    let (threads, fds) = (serve.count("task"), serve.count("fd"));
    let silent: Vec<UnixStream> = (0..30)
        .map(|_| {
            let mut s = UnixStream::connect(serve.socket()).unwrap();
            let challenge = shmkit::manager::frame::read(&mut s, 256).unwrap();
            assert!(challenge.starts_with(b"#CHALLENGE#"));
            s
        })
        .collect();
    let (busy_threads, busy_fds) = (serve.count("task"), serve.count("fd"));
    assert!(busy_threads >= threads + 30, "{busy_threads} threads");
    let released = wait_for(Duration::from_secs(10), || {
        serve.count("task") <= threads && serve.count("fd") <= fds
    });
    eprintln!(
        "serve: {threads} threads, {fds} fds before; {busy_threads}, {busy_fds} with 30 silent \
         connections; {}, {} after the idle limit",
        serve.count("task"),
        serve.count("fd")
    );
    assert!(released, "threads and descriptors were not released");
    // It still serves.
    let mut conn = serve.connect();
    conn.send(&shmkit::manager::PyValue::Tuple(vec![
        shmkit::manager::PyValue::None,
        "dummy".into(),
        shmkit::manager::PyValue::Tuple(vec![]),
        shmkit::manager::PyValue::Dict(vec![]),
    ]))
    .unwrap();
    assert_eq!(conn.recv().unwrap().repr(), "('#RETURN', None)");
    drop(silent);
}

/// Requests of 16 MiB of cheap opcodes that each build a value: `None`s
/// appended to a list, and a chain of one-item tuples.
fn decoder_attacks() -> Vec<(&'static str, Vec<u8>)> {
    let n = 16 << 20;
    let mut nones = b"\x80\x04](".to_vec();
    nones.extend(std::iter::repeat_n(b'N', n - 6));
    nones.extend_from_slice(b"e.");
    let mut chain = b"\x80\x04N".to_vec();
    chain.extend(std::iter::repeat_n(0x85, n - 4));
    chain.push(b'.');
    vec![("APPENDS of None", nones), ("TUPLE1 chain", chain)]
}

/// Each attack is refused with CPython's shape (an `UnpicklingError` in a
/// traceback), and the peak resident set of `serve` stays within a few
/// times the frame.
#[test]
fn decoder_attacks_are_refused_within_a_few_times_the_frame() {
    let serve = Serve::start(&[]);
    for (what, attack) in decoder_attacks() {
        let mut conn = serve.connect();
        conn.send_bytes(&attack).unwrap();
        let reply = conn.recv().unwrap();
        let peak = serve.status_kib("VmHWM");
        eprintln!(
            "serve after {what} ({} MiB): peak RSS {} MiB, RSS now {} MiB",
            attack.len() >> 20,
            peak >> 10,
            serve.status_kib("VmRSS") >> 10
        );
        let items = reply.as_sequence().unwrap().to_vec();
        assert_eq!(items[0].as_str(), Some("#TRACEBACK"), "{what}");
        let tb = items[1].as_str().unwrap();
        assert!(
            tb.contains("UnpicklingError") && tb.contains("too large"),
            "{what}: {tb}"
        );
        // The frame, the decoder's budget (4 bytes per byte) and room for
        // the process itself: far from the 2.8 GiB it took unbounded.
        assert!(
            peak >> 10 <= 8 * (attack.len() as u64 >> 20) + 64,
            "{what}: {peak} KiB"
        );
    }
}

/// `serve` registers each segment it tracks with its own leak tracker, so
/// `shmkit ls` names it as the owner; stopping unlinks and unregisters it,
/// and its tracker warns of no leak.
#[test]
fn tracked_segments_are_registered_under_serves_pid() {
    use shmkit::manager::{Address, Client};
    let serve = Serve::start(&[]);
    let key = std::fs::read(&serve.authkey_file).unwrap();
    let client = Client::new(Address::Unix(serve.socket()), &key);
    let shm = shmkit::SharedMemory::create(4096).unwrap();
    let name = shm.name().to_owned();
    client.track_segment(&name).unwrap();
    drop(shm);
    let owners = |name: &str| -> Vec<i32> {
        shmkit::tracker::registered()
            .into_iter()
            .filter(|r| r.names.iter().any(|n| n == name))
            .map(|r| r.pid)
            .collect()
    };
    assert_eq!(owners(&name), [serve.pid() as i32]);
    serve.signal(Signal::TERM);
    let (ok, log) = serve.wait();
    assert!(ok, "{log}");
    assert!(!shmkit::exists(&name));
    assert!(wait_for(Duration::from_secs(5), || owners(&name).is_empty()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!log.contains("leaked"), "{log}");
}

/// Eight clients send a 16 MiB attack each at once: the requests share the
/// server's request memory (256 MiB with their decoding), so the peak
/// resident set stays far below eight times one attack's, and each client
/// still gets its traceback.
#[test]
fn concurrent_decoder_attacks_share_one_memory_bound() {
    let serve = Serve::start(&[]);
    let (_, attack) = decoder_attacks().remove(0);
    let attack = std::sync::Arc::new(attack);
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let attack = std::sync::Arc::clone(&attack);
                let mut conn = serve.connect();
                scope.spawn(move || {
                    conn.send_bytes(&attack).unwrap();
                    conn.recv().unwrap().repr()
                })
            })
            .collect();
        for client in clients {
            let reply = client.join().unwrap();
            assert!(reply.contains("UnpicklingError"), "{reply}");
        }
    });
    let peak = serve.status_kib("VmHWM") >> 10;
    eprintln!("serve after 8 concurrent 16 MiB attacks: peak RSS {peak} MiB");
    assert!(peak <= 320, "peak RSS {peak} MiB");
}
