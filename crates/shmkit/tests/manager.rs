//! The manager across real processes: CPython 3.11 and 3.13 stdlib clients
//! against the Rust server, the Rust client against stdlib servers, a
//! manager process whose parent is killed, and this test binary in the
//! roles of parent and manager process.
//!
//! Interpreters are found through pyenv (`$PYENV_ROOT` or `~/.pyenv`,
//! versions `3.11*` and `3.13*`) or as `python3.11`/`python3.13` on `PATH`;
//! a missing one is reported on stderr and its tests pass without it.
//! Every segment a test makes is unlinked by a guard, even when it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmkit::list::{ShareableList, Value};
use shmkit::manager::{
    auth, frame, pickle, Address, ChallengeKind, Client, Connection, ManagerError, PyValue, Server,
    ServerOptions, SharedMemoryManager,
};
use shmkit::{Error, SharedMemory};

mod common;
use common::{fresh_name, Unlink};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn manager_error(e: Error) -> ManagerError {
    match e {
        Error::Manager(m) => m,
        other => panic!("expected a manager error, got {other:?}"),
    }
}

fn auth_reason(e: Error) -> String {
    match manager_error(e) {
        ManagerError::Authentication(reason) => reason,
        other => panic!("expected an authentication error, got {other:?}"),
    }
}

/// Kills and reaps a child process when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done().then(|| start.elapsed())
}

// ---------------------------------------------------------------------------
// Rust to Rust

#[test]
fn track_list_release_and_shutdown() {
    let handle = Server::bind(None, b"key").unwrap().spawn().unwrap();
    let Address::Unix(path) = handle.address().clone() else {
        panic!("the default address is a Unix socket");
    };
    let client = Client::connect(handle.address().clone(), b"key").unwrap();

    let a = SharedMemory::create(16).unwrap();
    let _ga = Unlink(a.name().to_owned());
    let b = SharedMemory::create(16).unwrap();
    let _gb = Unlink(b.name().to_owned());
    client.track_segment(a.name()).unwrap();
    client.track_segment(b.name()).unwrap();
    client.track_segment(b.name()).unwrap(); // kept twice, as CPython does
    assert_eq!(
        client.list_segments().unwrap(),
        [a.name(), b.name(), b.name()]
    );

    client.release_segment(a.name()).unwrap();
    assert!(!shmkit::exists(a.name()));
    // Gone already: the name is dropped all the same, and the error told.
    let e = manager_error(client.release_segment(a.name()).unwrap_err());
    assert_eq!(
        e.remote_exception(),
        Some(("ValueError", "list.remove(x): x not in list"))
    );
    shmkit::unlink(b.name()).unwrap();
    let e = manager_error(client.release_segment(b.name()).unwrap_err());
    let (kind, message) = e.remote_exception().unwrap();
    assert_eq!(kind, "FileNotFoundError");
    assert!(message.contains(&format!("'/{}'", b.name())), "{message}");
    assert_eq!(client.list_segments().unwrap(), [b.name()]);

    assert_eq!(
        client.dispatch("debug_info", vec![]).unwrap(),
        PyValue::Str(String::new())
    );
    assert_eq!(
        client.dispatch("number_of_objects", vec![]).unwrap(),
        PyValue::Int(0)
    );
    let e = manager_error(client.dispatch("exec", vec![]).unwrap_err());
    assert_eq!(
        e.remote_exception(),
        Some(("AssertionError", "'exec' unrecognized"))
    );

    // Shutdown goes past the segment that is gone (CPython stops there).
    let c = SharedMemory::create(16).unwrap();
    let _gc = Unlink(c.name().to_owned());
    client.track_segment(c.name()).unwrap();
    client.shutdown().unwrap();
    handle.join().unwrap();
    assert!(!shmkit::exists(c.name()));
    assert!(!path.exists(), "the socket file is removed");
    assert!(
        !path.parent().unwrap().exists(),
        "and its private directory"
    );
}

#[test]
fn shutdown_replies_twice_then_closes() {
    let handle = Server::options()
        .address("127.0.0.1:0".parse().unwrap())
        .authkey(b"k")
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let client = Client::new(handle.address().clone(), b"k");
    let mut conn = client.open().unwrap();
    conn.send(
        &pickle::loads(&frame_payload(
            "8004951300000000000000284e8c0873687574646f776e94297d9474942e",
        ))
        .unwrap(),
    )
    .unwrap();
    let expected = "8004950e000000000000008c072352455455524e944e86942e";
    assert_eq!(hex(&conn.recv_bytes().unwrap()), expected);
    assert_eq!(hex(&conn.recv_bytes().unwrap()), expected);
    assert!(matches!(
        manager_error(conn.recv_bytes().unwrap_err()),
        ManagerError::Eof
    ));
    handle.join().unwrap();
}

fn frame_payload(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_wrong_key_is_refused_both_ways_and_nothing_runs() {
    let handle = Server::bind(None, b"right").unwrap().spawn().unwrap();
    let address = handle.address().clone();
    let (name, _guard) = fresh_name("manager");

    // The client does not know the key: the server sends #FAILURE#.
    let wrong = Client::new(address.clone(), b"wrong");
    assert_eq!(
        auth_reason(wrong.track_segment(&name).unwrap_err()),
        "digest sent was rejected"
    );
    // What follows #FAILURE# on the wire: CPython's traceback frame.
    let mut conn = Connection::connect(&address).unwrap();
    let challenge = conn.recv_bytes_max(frame::AUTH_MAX_LEN).unwrap();
    assert!(challenge.starts_with(b"#CHALLENGE#{sha256}") && challenge.len() == 59);
    conn.send_bytes(&[0; 16]).unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), b"#FAILURE#");
    let reply = conn.recv().unwrap();
    let text = reply.as_sequence().unwrap()[1].as_str().unwrap().to_owned();
    assert_eq!(reply.as_sequence().unwrap()[0], PyValue::from("#TRACEBACK"));
    assert!(
        text.ends_with("AuthenticationError: digest received was wrong\n"),
        "{text}"
    );

    // The server does not know the client's key: the client refuses it.
    let right = Client::new(address.clone(), b"right");
    let mut conn = Connection::connect(&address).unwrap();
    auth::answer_challenge(&mut conn, b"right").unwrap();
    let e = auth::deliver_challenge(&mut conn, b"other", ChallengeKind::Modern).unwrap_err();
    assert_eq!(auth_reason(e), "digest received was wrong");

    assert!(right.list_segments().unwrap().is_empty(), "nothing was run");
    drop(handle);
}

#[test]
fn an_oversized_frame_during_auth_is_refused_without_reading_it() {
    let handle = Server::options()
        .address("127.0.0.1:0".parse().unwrap())
        .authkey(b"k")
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let Address::Tcp(addr) = handle.address().clone() else {
        panic!()
    };
    for header in [
        257u32.to_be_bytes().to_vec(),
        0x7fff_ffffu32.to_be_bytes().to_vec(),
        [&[0xff; 4][..], &u64::MAX.to_be_bytes()].concat(),
    ] {
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let challenge = frame::read(&mut raw, frame::AUTH_MAX_LEN).unwrap();
        assert!(challenge.starts_with(auth::CHALLENGE));
        raw.write_all(&header).unwrap();
        // CPython answers with the traceback of its OSError, then closes.
        let reply = pickle::loads(&frame::read(&mut raw, 1 << 20).unwrap()).unwrap();
        let text = reply.as_sequence().unwrap()[1].repr();
        assert!(text.contains("bad message length"), "{text}");
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    // 256 bytes are still allowed (and wrong).
    let mut conn = Connection::connect(handle.address()).unwrap();
    conn.recv_bytes_max(frame::AUTH_MAX_LEN).unwrap();
    conn.send_bytes(&[b'x'; 256]).unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), b"#FAILURE#");
    // And the server still serves.
    Client::connect(handle.address().clone(), b"k").unwrap();
}

#[test]
fn malformed_requests_get_tracebacks_not_crashes() {
    let handle = Server::bind(None, b"k").unwrap().spawn().unwrap();
    let client = Client::new(handle.address().clone(), b"k");
    let bad: [&[u8]; 5] = [
        b"",
        b"\x80\x04cos\nsystem\n(S'true'\ntR.",
        b"\x80\x04K\x01.",
        b"\x80\x04]\x94h\x00a.",
        b"\x80\x04(N\x8c\x05dummy)}",
    ];
    for payload in bad {
        let mut conn = client.open().unwrap();
        conn.send_bytes(payload).unwrap();
        let reply = conn.recv().unwrap();
        let items = reply.as_sequence().unwrap();
        assert_eq!(items[0], PyValue::from("#TRACEBACK"), "{payload:?}");
    }
    client.dummy().unwrap();
}

/// A server that authenticates with `key` and then answers each connection
/// with the next of `replies`: a stand-in for a manager that misbehaves.
fn fake_server(key: &'static [u8], replies: Vec<PyValue>) -> Address {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = Address::Tcp(listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for reply in replies {
            let (mut s, _) = listener.accept().unwrap();
            let message = auth::challenge(ChallengeKind::Legacy);
            frame::write(&mut s, &[auth::CHALLENGE, &message].concat()).unwrap();
            let answer = frame::read(&mut s, frame::AUTH_MAX_LEN).unwrap();
            auth::verify(key, &message, &answer).unwrap();
            frame::write(&mut s, auth::WELCOME).unwrap();
            let theirs = frame::read(&mut s, frame::AUTH_MAX_LEN).unwrap();
            let answer = auth::respond(key, &theirs[auth::CHALLENGE.len()..]).unwrap();
            frame::write(&mut s, &answer).unwrap();
            assert_eq!(
                frame::read(&mut s, frame::AUTH_MAX_LEN).unwrap(),
                auth::WELCOME
            );
            frame::read(&mut s, 1 << 20).unwrap();
            frame::write(&mut s, &pickle::dumps(&reply)).unwrap();
        }
    });
    address
}

#[test]
fn a_segment_the_server_will_not_track_is_unlinked() {
    let ok = PyValue::Tuple(vec!["#RETURN".into(), PyValue::None]);
    let refused = PyValue::Tuple(vec!["#TRACEBACK".into(), "RuntimeError: no\n".into()]);
    let address = fake_server(b"k", vec![ok, refused.clone(), refused]);
    let smm = SharedMemoryManager::connect(address, b"k").unwrap();
    let (name, _guard) = fresh_name("manager");
    let e = manager_error(smm.shared_memory_named(&name, 64).unwrap_err());
    assert_eq!(e.remote_exception(), Some(("RuntimeError", "no")));
    assert!(!shmkit::exists(&name), "created, refused, unlinked");
    let (name, _guard) = fresh_name("manager");
    assert!(smm.shareable_list_named(&name, &[Value::Int(1)]).is_err());
    assert!(!shmkit::exists(&name));
}

#[test]
fn a_thread_manager_makes_named_and_unnamed_segments_and_lists() {
    let mut smm = SharedMemoryManager::start().unwrap();
    let shm = smm.shared_memory(4096).unwrap();
    let _g1 = Unlink(shm.name().to_owned());
    let (name, _g2) = fresh_name("manager");
    let named = smm.shared_memory_named(&name, 100).unwrap();
    assert_eq!(named.name(), name);
    let (list_name, _g3) = fresh_name("manager");
    let list = smm
        .shareable_list_named(&list_name, &[Value::Int(1), Value::from("x")])
        .unwrap();
    assert_eq!(
        smm.list_segments().unwrap(),
        [shm.name(), name.as_str(), list_name.as_str()]
    );
    // A taken name fails before anything is tracked.
    assert!(matches!(
        smm.shared_memory_named(&name, 100),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(smm.list_segments().unwrap().len(), 3);
    smm.shutdown().unwrap();
    for n in [shm.name(), &name, list.shm().name()] {
        assert!(!shmkit::exists(n), "{n}");
    }
    smm.shutdown().unwrap(); // again: nothing to do
}

/// The time to shut down a manager tracking 1000 segments, against the time
/// to unlink 1000 segments directly; best of three rounds each.
#[test]
fn shutdown_with_1000_segments_costs_about_a_direct_unlink() {
    const N: usize = 1000;
    let mut best_direct = Duration::MAX;
    let mut best_shutdown = Duration::MAX;
    for _ in 0..3 {
        let handle = Server::bind(None, b"k").unwrap().spawn().unwrap();
        let client = Client::new(handle.address().clone(), b"k");
        let make = || -> Vec<(SharedMemory, Unlink)> {
            (0..N)
                .map(|_| {
                    let shm = SharedMemory::create(1).unwrap();
                    let guard = Unlink(shm.name().to_owned());
                    (shm, guard)
                })
                .collect()
        };
        let tracked = make();
        for (shm, _) in &tracked {
            client.track_segment(shm.name()).unwrap();
        }
        let direct = make();

        let start = Instant::now();
        for (shm, _) in &direct {
            shmkit::unlink(shm.name()).unwrap();
        }
        best_direct = best_direct.min(start.elapsed());

        let start = Instant::now();
        client.shutdown().unwrap();
        best_shutdown = best_shutdown.min(start.elapsed());
        handle.join().unwrap();
        assert!(tracked.iter().all(|(shm, _)| !shmkit::exists(shm.name())));
    }
    let ratio = best_shutdown.as_secs_f64() / best_direct.as_secs_f64();
    eprintln!(
        "shutdown of {N} tracked segments: {best_shutdown:?}; unlinking them directly: \
         {best_direct:?}; ratio {ratio:.2}"
    );
    // The request's own round trip (a connection, two HMACs) is the only
    // extra: allow it a fixed 5 ms on these shared machines.
    assert!(
        best_shutdown <= best_direct.mul_f64(1.5) + Duration::from_millis(5),
        "ratio {ratio:.2}"
    );
}

// ---------------------------------------------------------------------------
// A manager process: this test binary in the roles of parent and child

const PARENT_ENV: &str = "SHMKIT_MANAGER_TEST_PARENT";
const REPORT: &str = "manager-test-report";

/// This test binary, running the manager process's role.
fn child_command() -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "manager_child_role",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd
}

/// The manager process, run only by `SharedMemoryManager::start_process`.
#[test]
#[ignore = "child role: the manager process of the start_process tests"]
fn manager_child_role() {
    assert!(
        std::env::var_os(shmkit::manager::CHILD_ENV).is_some(),
        "run by SharedMemoryManager::start_process only"
    );
    shmkit::manager::serve_child().unwrap();
    // Exit before libtest reports: after a parent's SIGKILL nobody reads
    // this process's stdout any more, and the report would fail loudly.
    std::process::exit(0);
}

/// A parent that starts a manager process, makes segments through it,
/// reports them and waits to be killed.
#[test]
#[ignore = "child role: the parent that parent_sigkill_unlinks_everything kills"]
fn manager_parent_role() {
    assert!(
        std::env::var_os(PARENT_ENV).is_some(),
        "run by parent_sigkill_unlinks_everything only"
    );
    let smm = SharedMemoryManager::start_process(child_command(), ServerOptions::new()).unwrap();
    let a = smm.shared_memory(4096).unwrap();
    let b = smm.shared_memory(1).unwrap();
    let list = smm.shareable_list(&[Value::Int(1), Value::Int(2)]).unwrap();
    println!(
        "{REPORT} {} {} {} {}",
        smm.process_id().unwrap(),
        a.name(),
        b.name(),
        list.shm().name()
    );
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    panic!("was not killed");
}

const USER_ENV: &str = "SHMKIT_MANAGER_TEST_USER";
const KEEP_ENV: &str = "SHMKIT_MANAGER_TEST_KEEP";

/// A process that attaches to segment `$USER_ENV` (tracked, as a shmkit
/// process does by default in Python), says so, and waits to be killed.
#[test]
#[ignore = "child role: the user of a managed segment in parent_sigkill_spares"]
fn manager_user_role() {
    let Some(name) = std::env::var_os(USER_ENV) else {
        panic!("run by parent_sigkill_spares_what_a_live_process_maps only");
    };
    let shm = SharedMemory::options()
        .track(true)
        .open(name.to_str().unwrap())
        .unwrap();
    println!("{REPORT} attached {}", shm.name());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    panic!("was not killed");
}

/// A parent that starts a manager process, makes two segments through it,
/// starts a user of the first, reports, and waits to be killed.
#[test]
#[ignore = "child role: the parent that parent_sigkill_spares kills"]
fn manager_keeping_parent_role() {
    assert!(
        std::env::var_os(KEEP_ENV).is_some(),
        "run by parent_sigkill_spares_what_a_live_process_maps only"
    );
    let smm = SharedMemoryManager::start_process(child_command(), ServerOptions::new()).unwrap();
    let used = smm.shared_memory(4096).unwrap();
    let unused = smm.shared_memory(4096).unwrap();
    let mut user = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "manager_user_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(USER_ENV, used.name())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(user.stdout.take().unwrap()).lines();
    lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains(REPORT))
        .expect("the user attaches");
    println!(
        "{REPORT} {} {} {} {}",
        smm.process_id().unwrap(),
        user.id(),
        used.name(),
        unused.name()
    );
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    let _ = user.kill();
    let _ = user.wait();
    panic!("was not killed");
}

/// The parent of a manager process is killed while another process maps
/// one of its segments: the manager unlinks only the unused one, the used
/// one stays (registered under the manager's pid while its watcher lives),
/// and once its user is killed too, it is gone within 2 s.
#[test]
fn parent_sigkill_spares_what_a_live_process_maps() {
    {
        let mut parent = KillOnDrop(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "manager_keeping_parent_role",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(KEEP_ENV, "1")
                // Its watcher reports what it finds at the kill, as CPython's
                // tracker would: expected here, and noise in the test's output.
                .stderr(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let report = BufReader::new(parent.0.stdout.take().unwrap())
            .lines()
            .map(Result::unwrap)
            .find_map(|l| l.split_once(REPORT).map(|(_, rest)| rest.to_owned()))
            .expect("the parent role reports");
        let fields: Vec<&str> = report.split_whitespace().collect();
        let manager_pid: u32 = fields[0].parse().unwrap();
        let user_pid: i32 = fields[1].parse().unwrap();
        let (used, unused) = (fields[2].to_owned(), fields[3].to_owned());
        let _guards = [Unlink(used.clone()), Unlink(unused.clone())];
        let user = rustix::process::Pid::from_raw(user_pid).unwrap();
        struct KillPid(rustix::process::Pid);
        impl Drop for KillPid {
            fn drop(&mut self) {
                let _ = rustix::process::kill_process(self.0, rustix::process::Signal::KILL);
            }
        }
        let user_guard = KillPid(user);

        parent.0.kill().unwrap();
        parent.0.wait().unwrap();
        let unlinked = wait_until(Duration::from_secs(2), || !shmkit::exists(&unused));
        assert!(unlinked.is_some(), "the unused segment was not unlinked");
        assert!(
            wait_until(Duration::from_secs(2), || exited(manager_pid)).is_some(),
            "the manager did not stop"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(shmkit::exists(&used), "a segment in use was unlinked");

        drop(user_guard);
        let gone = wait_until(Duration::from_secs(2), || !shmkit::exists(&used));
        eprintln!("unused unlinked in {unlinked:?}; used gone {gone:?} after its user's death");
        assert!(gone.is_some(), "the used segment outlived its last user");
    }
}

#[test]
fn parent_sigkill_unlinks_everything_within_two_seconds() {
    let mut parent = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "manager_parent_role",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PARENT_ENV, "1")
            // Its watcher reports what it finds at the kill, as CPython's
            // tracker would: expected here, and noise in the test's output.
            .stderr(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(parent.0.stdout.take().unwrap()).lines();
    // libtest may have printed "test manager_parent_role ... " before it.
    let report = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|l| l.split_once(REPORT).map(|(_, rest)| rest.to_owned()))
        .expect("the parent role reports its segments");
    let fields: Vec<&str> = report.split_whitespace().collect();
    let server_pid: u32 = fields[0].parse().unwrap();
    let names: Vec<String> = fields[1..].iter().map(|s| s.to_string()).collect();
    let _guards: Vec<Unlink> = names.iter().cloned().map(Unlink).collect();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| shmkit::exists(n)));

    parent.0.kill().unwrap(); // SIGKILL: no destructor runs in the parent
    parent.0.wait().unwrap();
    let unlinked = wait_until(Duration::from_secs(5), || {
        names.iter().all(|n| !shmkit::exists(n))
    });
    let gone = wait_until(Duration::from_secs(5), || exited(server_pid));
    eprintln!(
        "after SIGKILL of the parent: segments unlinked in {unlinked:?}, server exited in {gone:?}"
    );
    assert!(
        unlinked.is_some_and(|t| t < Duration::from_secs(2)),
        "segments unlinked after {unlinked:?}"
    );
    assert!(gone.is_some_and(|t| t < Duration::from_secs(2)), "{gone:?}");
}

#[test]
fn the_manager_process_ignores_sigint_and_unlinks_on_sigterm() {
    let mut smm =
        SharedMemoryManager::start_process(child_command(), ServerOptions::new()).unwrap();
    let pid = smm.process_id().unwrap();
    let shm = smm.shared_memory(64).unwrap();
    let _guard = Unlink(shm.name().to_owned());

    let kill = |signal: &str| {
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    kill("-INT");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!exited(pid), "SIGINT killed the manager process");
    smm.client().dummy().unwrap();
    assert!(shmkit::exists(shm.name()));

    kill("-TERM");
    let gone = wait_until(Duration::from_secs(5), || exited(pid));
    assert!(gone.is_some(), "SIGTERM did not stop the manager process");
    assert!(!shmkit::exists(shm.name()), "SIGTERM unlinked the segment");
    // Shutting down a manager whose process is gone fails, harmlessly.
    assert!(smm.shutdown().is_err());
}

#[test]
fn a_manager_process_shuts_down_cleanly() {
    let options = ServerOptions::new()
        .address("127.0.0.1:0".parse().unwrap())
        .authkey(b"chosen key")
        .challenge(ChallengeKind::Legacy);
    let mut smm = SharedMemoryManager::start_process(child_command(), options).unwrap();
    assert!(matches!(smm.address(), Address::Tcp(_)));
    assert_eq!(smm.authkey(), b"chosen key");
    let pid = smm.process_id().unwrap();
    let list = smm.shareable_list(&[Value::from("howdy")]).unwrap();
    let _guard = Unlink(list.shm().name().to_owned());
    assert_eq!(smm.list_segments().unwrap(), [list.shm().name()]);
    smm.shutdown().unwrap();
    assert!(exited(pid));
    assert!(!shmkit::exists(list.shm().name()));
}

/// The pids whose shmkit leak trackers list segment `name`.
fn registered_by(name: &str) -> Vec<i32> {
    shmkit::tracker::registered()
        .into_iter()
        .filter(|r| r.names.iter().any(|n| n == name))
        .map(|r| r.pid)
        .collect()
}

/// A manager process registers each segment it tracks with its own leak
/// tracker, so `registered()` (and `shmkit ls`) name it as the owner of a
/// segment its creator closed; a normal shutdown unlinks and unregisters
/// it, and nothing warns of a leak.
#[test]
fn a_manager_process_registers_what_it_tracks() {
    let log = std::env::temp_dir().join(format!("shmkit-manager-stderr-{}", std::process::id()));
    let mut cmd = child_command();
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let mut smm = SharedMemoryManager::start_process(cmd, ServerOptions::new()).unwrap();
    let pid = smm.process_id().unwrap() as i32;
    let shm = smm.shared_memory(4096).unwrap();
    let name = shm.name().to_owned();
    let _guard = Unlink(name.clone());
    shm.close();
    assert!(shmkit::exists(&name));
    assert_eq!(registered_by(&name), [pid]);
    // Released: unlinked and no longer registered.
    let other = smm.shared_memory(64).unwrap();
    let other_name = other.name().to_owned();
    let _other_guard = Unlink(other_name.clone());
    drop(other);
    assert_eq!(registered_by(&other_name), [pid]);
    smm.client().release_segment(&other_name).unwrap();
    assert!(!shmkit::exists(&other_name));
    assert!(registered_by(&other_name).is_empty());

    smm.shutdown().unwrap();
    assert!(!shmkit::exists(&name));
    // The manager's watcher has seen it exit and found nothing to do.
    assert!(wait_until(Duration::from_secs(5), || registered_by(&name).is_empty()).is_some());
    std::thread::sleep(Duration::from_millis(300));
    let stderr = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(!stderr.contains("leaked"), "{stderr}");
}

/// A manager on a thread registers with this process's tracker; one that
/// tracks nothing starts no watcher of its own making.
#[test]
fn a_thread_manager_registers_under_this_process() {
    let smm = SharedMemoryManager::start().unwrap();
    let shm = smm.shared_memory(64).unwrap();
    let name = shm.name().to_owned();
    let _guard = Unlink(name.clone());
    drop(shm);
    assert!(registered_by(&name).contains(&(std::process::id() as i32)));
    drop(smm);
    assert!(!shmkit::exists(&name));
    assert!(registered_by(&name).is_empty());
}

/// `VmHWM` (peak resident set) of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        >> 10
}

/// Requests of 16 MiB of cheap opcodes that each build a value (a list of
/// `None`s, a chain of one-item tuples) are refused with CPython's shape,
/// an `UnpicklingError` in a traceback, and the manager process's peak
/// resident set stays within a few times the frame.
#[test]
fn a_manager_process_refuses_decoder_attacks_within_a_few_times_the_frame() {
    let mut smm =
        SharedMemoryManager::start_process(child_command(), ServerOptions::new()).unwrap();
    let pid = smm.process_id().unwrap();
    let n = 16 << 20;
    let mut nones = b"\x80\x04](".to_vec();
    nones.extend(std::iter::repeat_n(b'N', n - 6));
    nones.extend_from_slice(b"e.");
    let mut chain = b"\x80\x04N".to_vec();
    chain.extend(std::iter::repeat_n(0x85, n - 4));
    chain.push(b'.');
    for (what, attack) in [("APPENDS of None", nones), ("TUPLE1 chain", chain)] {
        let mut conn = smm.client().open().unwrap();
        conn.send_bytes(&attack).unwrap();
        let reply = conn.recv().unwrap();
        let peak = peak_rss_mib(pid);
        eprintln!("manager process after {what} (16 MiB): peak RSS {peak} MiB");
        let items = reply.as_sequence().unwrap();
        assert_eq!(items[0], PyValue::from("#TRACEBACK"), "{what}");
        let tb = items[1].as_str().unwrap();
        assert!(
            tb.contains("UnpicklingError") && tb.contains("too large"),
            "{tb}"
        );
        assert!(peak <= 8 * 16 + 64, "{what}: peak RSS {peak} MiB");
    }
    smm.client().dummy().unwrap();
    smm.shutdown().unwrap();
}

#[test]
fn a_child_that_does_not_serve_is_reported() {
    let e =
        SharedMemoryManager::start_process(Command::new("true"), ServerOptions::new()).unwrap_err();
    let ManagerError::Process(message) = manager_error(e) else {
        panic!()
    };
    assert!(message.contains("serve_child"), "{message}");
}

// ---------------------------------------------------------------------------
// CPython interop

/// The pyenv interpreter (or the one on `PATH`) for `3.minor`.
fn python(minor: u32) -> Option<PathBuf> {
    let exe = format!("python3.{minor}");
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(Ok(dir)) = root.map(|r| std::fs::read_dir(r.join("versions"))) {
        let mut found: Vec<PathBuf> = dir
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&format!("3.{minor}"))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
            .map(|e| e.path().join("bin").join(&exe))
            .collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    candidates.push(PathBuf::from(&exe));
    let found = candidates.into_iter().find(|c| {
        Command::new(c)
            .args(["-c", "import multiprocessing.managers"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        eprintln!("CPython 3.{minor} not found: its manager interop is not tested");
    }
    found
}

fn pythons() -> Vec<(u32, PathBuf)> {
    [11, 13]
        .into_iter()
        .filter_map(|m| python(m).map(|p| (m, p)))
        .collect()
}

/// What a Python client does against the Rust server: connect, make a
/// segment and a list through the manager, call a function that fails, and
/// try a wrong key. It keeps its segments open until its stdin closes, so
/// that they are held by someone until the Rust side has them open (other
/// test suites on this machine sweep generated names that nobody holds).
const PY_CLIENT: &str = r#"
import sys, multiprocessing
from multiprocessing import resource_tracker
from multiprocessing.managers import SharedMemoryManager, dispatch, RemoteError

kind, where, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
if kind == 'tcp':
    host, port = where.rsplit(':', 1)
    address = (host, int(port))
else:
    address = where
smm = SharedMemoryManager(address=address, authkey=key)
smm.connect()
shm = smm.SharedMemory(4096)
sl = smm.ShareableList([1, 2])
shm.buf[:5] = b'howdy'
assert sl[1] == 2
# The manager owns them now, not this process's resource tracker (gh-82300).
for name in (shm._name, sl.shm._name):
    resource_tracker.unregister(name, 'shared_memory')
with smm._Client(smm._address, authkey=smm._authkey) as conn:
    try:
        dispatch(conn, None, 'release_segment', ('never_tracked',))
    except RemoteError as e:
        print('remote', 'ValueError: list.remove(x): x not in list' in str(e))
bad = SharedMemoryManager(address=address, authkey=b'wrong' + key)
try:
    bad.connect()
except multiprocessing.AuthenticationError as e:
    print('auth', e)
print('made', shm.name, sl.shm.name, flush=True)
sys.stdin.read()
shm.close()
sl.shm.close()
"#;

#[test]
fn cpython_clients_use_the_rust_server() {
    for (minor, exe) in pythons() {
        for challenge in [ChallengeKind::Modern, ChallengeKind::Legacy] {
            for tcp in [true, false] {
                let key = shmkit::manager::random_authkey();
                let mut options = ServerOptions::new().authkey(&key).challenge(challenge);
                if tcp {
                    options = options.address("127.0.0.1:0".parse().unwrap());
                }
                let handle = options.bind().unwrap().spawn().unwrap();
                let (kind, where_) = match handle.address() {
                    Address::Tcp(a) => ("tcp", a.to_string()),
                    other => ("unix", other.to_string()),
                };
                let case = format!("3.{minor} {challenge:?} {kind}");
                let mut child = KillOnDrop(
                    Command::new(&exe)
                        .args(["-c", PY_CLIENT, kind, &where_, &hex(&key)])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                );
                let mut stdout = String::new();
                let mut lines = BufReader::new(child.0.stdout.take().unwrap());
                let mut names: Vec<String> = Vec::new();
                let mut line = String::new();
                while names.is_empty() && lines.read_line(&mut line).unwrap() > 0 {
                    if let Some(made) = line.strip_prefix("made ") {
                        names = made.split_whitespace().map(str::to_owned).collect();
                    }
                    stdout.push_str(&line);
                    line.clear();
                }
                let _guards: Vec<Unlink> = names.iter().cloned().map(Unlink).collect();
                // Held here before the client lets go of them.
                let opened = names.first().map(|n| SharedMemory::open(n));
                let list = names.get(1).map(|n| ShareableList::open(n));
                drop(child.0.stdin.take());
                lines.read_to_string(&mut stdout).unwrap();
                let status = child.0.wait().unwrap();
                let mut stderr = String::new();
                child
                    .0
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                assert!(status.success(), "{case}:\n{stdout}\n{stderr}");
                assert!(stderr.is_empty(), "{case} stderr:\n{stderr}");
                assert_eq!(names.len(), 2, "{case}: {stdout}");
                assert!(stdout.contains("remote True"), "{case}: {stdout}");
                assert!(
                    stdout.contains("auth digest sent was rejected"),
                    "{case}: {stdout}"
                );

                // The server tracks exactly what the client made, and the
                // bytes are there.
                assert_eq!(handle.stopper().segments(), names, "{case}");
                let shm = opened.unwrap().unwrap();
                assert_eq!(shm.read_vec(0, 5).unwrap(), b"howdy");
                let list = list.unwrap().unwrap();
                assert_eq!(list.to_vec().unwrap(), [Value::Int(1), Value::Int(2)]);

                handle.stop().unwrap();
                for n in &names {
                    assert!(!shmkit::exists(n), "{case}: {n} survived the shutdown");
                }
            }
        }
        eprintln!("CPython 3.{minor} clients: OK against the Rust server");
    }
}

/// A stdlib manager server: prints its address, serves until stdin closes.
const PY_SERVER: &str = r#"
import sys
from multiprocessing.managers import SharedMemoryManager
key = bytes.fromhex(sys.argv[2])
address = ('127.0.0.1', 0) if sys.argv[1] == 'tcp' else None
smm = SharedMemoryManager(address=address, authkey=key)
smm.start()
a = smm.address
print(('tcp %s:%d' % a) if isinstance(a, tuple) else ('unix ' + a), flush=True)
sys.stdin.read()
"#;

#[test]
fn the_rust_client_uses_cpython_servers() {
    for (minor, exe) in pythons() {
        for tcp in [true, false] {
            let key = shmkit::manager::random_authkey();
            let mut server = KillOnDrop(
                Command::new(&exe)
                    .args([
                        "-c",
                        PY_SERVER,
                        if tcp { "tcp" } else { "unix" },
                        &hex(&key),
                    ])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            let mut line = String::new();
            BufReader::new(server.0.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let (kind, where_) = line.trim().split_once(' ').unwrap();
            let address: Address = where_.parse().unwrap();
            assert_eq!(kind == "tcp", matches!(address, Address::Tcp(_)));
            let case = format!("3.{minor} {kind}");

            // A wrong key: refused, and nothing runs.
            assert_eq!(
                auth_reason(Client::connect(address.clone(), b"wrong").unwrap_err()),
                "digest sent was rejected",
                "{case}"
            );

            let client = Client::connect(address.clone(), &key).unwrap();
            let own = SharedMemory::create(64).unwrap();
            let _g0 = Unlink(own.name().to_owned());
            client.track_segment(own.name()).unwrap();

            let smm = SharedMemoryManager::connect(address.clone(), &key).unwrap();
            let shm = smm.shared_memory(4096).unwrap();
            let _g1 = Unlink(shm.name().to_owned());
            let list = smm
                .shareable_list(&[Value::Int(1), Value::from("two")])
                .unwrap();
            let _g2 = Unlink(list.shm().name().to_owned());
            let (name, _g3) = fresh_name("manager");
            smm.shared_memory_named(&name, 10).unwrap();
            assert_eq!(
                client.list_segments().unwrap(),
                [own.name(), shm.name(), list.shm().name(), name.as_str()],
                "{case}"
            );

            client.release_segment(own.name()).unwrap();
            assert!(!shmkit::exists(own.name()), "{case}");
            let e = manager_error(client.release_segment("never_tracked").unwrap_err());
            assert_eq!(
                e.remote_exception().map(|e| e.0),
                Some("ValueError"),
                "{case}"
            );
            let e = manager_error(client.dispatch("no_such_function", vec![]).unwrap_err());
            assert_eq!(
                e.remote_exception().map(|e| e.0),
                Some("AssertionError"),
                "{case}"
            );

            client.shutdown().unwrap();
            for n in [shm.name(), list.shm().name(), name.as_str()] {
                assert!(!shmkit::exists(n), "{case}: {n} survived the shutdown");
            }
            drop(smm); // connected only: leaves the (stopped) server alone

            drop(server.0.stdin.take()); // the Python parent exits
            let status = server.0.wait().unwrap();
            let mut stderr = String::new();
            server
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert!(status.success(), "{case}: {status}\n{stderr}");
            assert!(
                !stderr.contains("Traceback") && !stderr.contains("leaked"),
                "{case}:\n{stderr}"
            );
        }
        eprintln!("CPython 3.{minor} servers: OK with the Rust client");
    }
}

// ---------------------------------------------------------------------------
// The fuzz target's body, on stable Rust

#[path = "../../../fuzz/common/manager_decode.rs"]
mod manager_decode;

/// Counts allocations per thread, so that the fuzz body can check the
/// decoder's budget here too.
#[global_allocator]
static ALLOC: manager_decode::Counting = manager_decode::Counting;

mod fuzz_body {
    use super::manager_decode;
    use proptest::prelude::*;
    use shmkit::manager::{frame, pickle, PyValue};

    fn value() -> impl Strategy<Value = PyValue> {
        let leaf = prop_oneof![
            Just(PyValue::None),
            any::<bool>().prop_map(PyValue::Bool),
            any::<i64>().prop_map(PyValue::Int),
            any::<f64>().prop_map(PyValue::Float),
            "[a-zé€_#]{0,12}".prop_map(PyValue::Str),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(PyValue::Bytes),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(PyValue::Tuple),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(PyValue::List),
                proptest::collection::vec(("[a-z]{0,4}".prop_map(PyValue::Str), inner), 0..4)
                    .prop_map(PyValue::Dict),
            ]
        })
    }

    /// Framed pickles of `values`, as they travel.
    fn wire(values: &[PyValue]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            frame::write(&mut out, &pickle::dumps(v)).unwrap();
        }
        out
    }

    /// The attacks that cost a hundred times their size before there was a
    /// budget, checked against the peak allocation bound (a megabyte each).
    #[test]
    fn value_building_attacks_stay_within_the_allocation_bound() {
        let n = 1 << 20;
        let mut nones = b"\x80\x04](".to_vec();
        nones.extend(std::iter::repeat_n(b'N', n));
        nones.extend_from_slice(b"e.");
        let mut chain = b"\x80\x04N".to_vec();
        chain.extend(std::iter::repeat_n(0x85, n));
        chain.push(b'.');
        let mut gets = b"\x80\x04]\x94](".to_vec();
        for _ in 0..n / 2 {
            gets.extend_from_slice(b"h\x00");
        }
        gets.extend_from_slice(b"e.");
        let mut puts = b"\x80\x04](".to_vec();
        for _ in 0..n / 2 {
            puts.extend_from_slice(b"N\x94");
        }
        puts.extend_from_slice(b"e.");
        for (what, data) in [
            ("APPENDS of None", &nones),
            ("TUPLE1 chain", &chain),
            ("BINGET", &gets),
            ("MEMOIZE", &puts),
        ] {
            let peak = manager_decode::check_pickle(data);
            eprintln!("{what}: {} bytes, decoder peak {peak} bytes", data.len());
        }
        // The counting allocator is really installed: a vector counts.
        let (_, peak) = manager_decode::peak_during(|| vec![0u8; 4096]);
        assert!(peak >= 4096);
    }

    /// Every seed the fuzz target starts from, kept there because each once
    /// broke it (a dense re-dump, say), passes the body on stable Rust too.
    #[test]
    fn the_fuzz_seeds_pass() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/seeds/manager_decode"
        );
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            manager_decode::run(&data);
            seen += 1;
        }
        assert!(seen >= 4, "only {seen} seeds in {dir}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            manager_decode::run(&data);
        }

        #[test]
        fn values_round_trip(v in value()) {
            let back = pickle::loads(&pickle::dumps(&v)).unwrap();
            prop_assert_eq!(pickle::dumps(&back), pickle::dumps(&v));
        }

        #[test]
        fn on_damaged_traffic(
            values in proptest::collection::vec(value(), 1..4),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
        ) {
            let mut data = wire(&values);
            for (at, b) in damage {
                let at = at % data.len();
                data[at] = b;
            }
            if cut % 3 == 0 {
                data.truncate(cut / 3 % (data.len() + 1));
            }
            manager_decode::run(&data);
        }
    }
}
