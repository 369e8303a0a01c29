//! The leak tracker across processes: children are this test binary re-run
//! with `SHMKIT_TRACKER_CHILD` set, so nothing but the crate is needed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmkit::{Options, SharedMemory};

const WARNING: &str =
    "resource_tracker: There appear to be 1 leaked shared_memory objects to clean up at shutdown";

/// The child's work, chosen by `SHMKIT_TRACKER_CHILD=<mode>:<name>`:
/// it creates or attaches, prints the name, then waits for a line on stdin
/// (or to be killed) and exits without unlinking (unless told to).
#[test]
fn child_helper() {
    let Ok(spec) = std::env::var("SHMKIT_TRACKER_CHILD") else {
        return;
    };
    let (mode, name) = spec.split_once(':').unwrap();
    let tracked = !mode.contains("untracked");
    let opts = Options::new().track(tracked);
    if mode.contains("thread") {
        // The first tracked create happens on a thread that then exits,
        // closing its handle: the tracker's death wake fires while this
        // process lives on, and nothing may be unlinked for it.
        let owned = name.to_owned();
        std::thread::spawn(move || {
            Options::new()
                .track(true)
                .create_named(&owned, 4096)
                .unwrap();
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            shmkit::exists(name),
            "unlinked while its tracker's process lives"
        );
        println!("{name}");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        std::process::exit(0);
    }
    let shm = if mode.starts_with("create") {
        opts.create_named(name, 4096).unwrap()
    } else if mode.contains("reserve") {
        // Reserving a large sparse segment's pages holds the attach between
        // its open and its registration for a while.
        println!("opening {name}");
        opts.clone().reserve(true).open(name).unwrap()
    } else {
        opts.open(name).unwrap()
    };
    assert_eq!(shm.is_tracked(), tracked);
    let mut second = None;
    if mode.contains("relaunch") {
        // Kill our watcher; the next tracked open starts another, which
        // inherits the table (so `name` stays tracked too).
        let pid = shmkit::tracker::watcher_pid().unwrap();
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        second = Some(opts.create_named(&format!("{name}_2"), 64).unwrap());
        assert_ne!(shmkit::tracker::watcher_pid(), Some(pid));
    }
    println!("{}", shm.name());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    if mode.contains("unlink") {
        shm.unlink().unwrap();
        assert!(matches!(shm.unlink(), Err(shmkit::Error::NotFound { .. })));
    }
    drop(second);
    std::process::exit(0);
}

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "shmkit_trk_{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn spawn(mode: &str, name: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_helper", "--nocapture", "--test-threads=1"])
        .env("SHMKIT_TRACKER_CHILD", format!("{mode}:{name}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it has the segment open.
    let mut out = BufReader::new(child.stdout.as_mut().unwrap());
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "child ended early");
        if line.trim().ends_with(name) {
            break;
        }
    }
    child
}

/// Ends the child (SIGKILL, or a line on stdin for a normal exit) and
/// returns its stderr, which ends when its watcher has finished too.
fn finish(mut child: Child, kill: bool) -> String {
    if kill {
        child.kill().unwrap();
    } else {
        use std::io::Write;
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    child.wait().unwrap();
    stderr_of(&mut child)
}

/// The child's stderr to its end, which comes when its watcher has
/// finished too.
fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

fn gone_within(name: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !shmkit::exists(name) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn cleanup(name: &str) {
    let _ = shmkit::unlink(name);
}

#[test]
fn creator_exiting_normally_is_cleaned_up_with_a_warning() {
    let name = unique("exit");
    let start = Instant::now();
    let err = finish(spawn("create", &name), false);
    assert!(gone_within(&name, Duration::from_secs(2)));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(err.contains(WARNING), "stderr: {err}");
}

#[test]
fn sigkilled_creator_is_cleaned_up_within_two_seconds() {
    let name = unique("kill");
    let child = spawn("create", &name);
    let mut child = child;
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    while shmkit::exists(&name) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        killed.elapsed()
    );
    let err = stderr_of(&mut child);
    assert!(err.contains(WARNING), "stderr: {err}");
}

#[test]
fn segment_survives_while_a_tracked_reader_lives() {
    let name = unique("reader");
    let creator = spawn("create", &name);
    let reader = spawn("attach", &name);
    let err = finish(creator, true);
    assert!(shmkit::exists(&name), "unlinked under a live reader");
    assert!(
        err.contains("still open in another process"),
        "stderr: {err}"
    );
    let err = finish(reader, true);
    assert!(gone_within(&name, Duration::from_secs(2)));
    assert!(err.contains(WARNING), "stderr: {err}");
}

#[test]
fn an_attacher_exiting_never_unlinks_what_the_creator_uses() {
    // gh-82300, in Rust: this process holds the segment (untracked).
    let name = unique("gh82300");
    let shm = SharedMemory::create_named(&name, 64).unwrap();
    let _ = finish(spawn("attach", &name), false);
    std::thread::sleep(Duration::from_millis(100));
    assert!(shmkit::exists(&name));
    shm.unlink().unwrap();
}

#[test]
fn untracked_segments_are_left_alone_silently() {
    let name = unique("untracked");
    let err = finish(spawn("create-untracked", &name), true);
    std::thread::sleep(Duration::from_millis(300));
    assert!(shmkit::exists(&name));
    assert!(!err.contains("resource_tracker"), "stderr: {err}");
    cleanup(&name);
}

#[test]
fn unlink_unregisters_and_a_second_unlink_is_quiet() {
    let name = unique("unlink");
    let err = finish(spawn("create-unlink", &name), false);
    assert!(!shmkit::exists(&name));
    assert!(!err.contains("resource_tracker"), "stderr: {err}");
}

#[test]
fn tracking_starts_a_watcher_in_this_process() {
    let shm = Options::new().track(true).create(64).unwrap();
    assert!(shm.is_tracked());
    assert!(shmkit::tracker::watcher_pid().is_some());
    let mut shm = shm;
    let new = unique("renamed");
    shm.rename(&new, shmkit::RenameFlags::NOREPLACE).unwrap();
    assert!(shm.is_tracked());
    shm.unlink().unwrap();
}

/// A Rust creator and a Python reader (shmkit's Python package, from the
/// repository's venv; skipped when it is not there).
#[test]
fn rust_creator_python_reader() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(python) = ["3.11", "3.13"]
        .iter()
        .map(|v| root.join(format!(".venv-{v}/bin/python")))
        .find(|p| p.exists())
    else {
        eprintln!("skipped: no .venv-3.x with shmkit");
        return;
    };
    let name = unique("rustpy");
    let creator = spawn("create", &name);
    let code = "import sys\nfrom shmkit.shared_memory import SharedMemory\n\
                s = SharedMemory(sys.argv[1])\nprint('ready', flush=True)\nsys.stdin.readline()\n";
    let mut reader = Command::new(python)
        .args(["-c", code, &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(reader.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.trim() != "ready" {
        let err = stderr_of(&mut reader);
        let _ = reader.wait();
        finish(creator, true);
        cleanup(&name);
        eprintln!("skipped: shmkit does not import there: {err}");
        return;
    }
    let _ = finish(creator, true);
    std::thread::sleep(Duration::from_millis(200));
    assert!(shmkit::exists(&name), "unlinked under a live Python reader");
    let err = finish(reader, true);
    assert!(gone_within(&name, Duration::from_secs(2)));
    assert!(err.contains(WARNING), "stderr: {err}");
}

#[test]
fn a_killed_watcher_is_relaunched_and_keeps_the_names() {
    let name = unique("relaunch");
    let err = finish(spawn("create-relaunch", &name), true);
    assert!(
        err.contains("process died unexpectedly, relaunching"),
        "stderr: {err}"
    );
    assert!(gone_within(&name, Duration::from_secs(2)));
    assert!(gone_within(&format!("{name}_2"), Duration::from_secs(2)));
    assert!(
        err.contains("There appear to be 2 leaked shared_memory objects"),
        "stderr: {err}"
    );
}

#[test]
fn a_tracking_thread_that_exits_does_not_count_as_the_process_dying() {
    let name = unique("thread");
    let child = spawn("thread", &name);
    // Not held by anyone, but its tracker's process lives: still there.
    std::thread::sleep(Duration::from_millis(300));
    assert!(shmkit::exists(&name));
    let err = finish(child, true);
    assert!(gone_within(&name, Duration::from_secs(2)), "stderr: {err}");
    assert!(err.contains(WARNING), "stderr: {err}");
    cleanup(&name);
}

/// Whether this process's watcher runs at real-time priority, as it does
/// where the system allows it (root, or an RLIMIT_RTPRIO): then it always
/// marks a dying process's segments before that process's parent can
/// attach; otherwise it usually does.
fn watcher_is_real_time() -> bool {
    let probe = Options::new()
        .track(true)
        .create_named(&unique("rtprobe"), 1)
        .unwrap();
    let pid = shmkit::tracker::watcher_pid().unwrap() as i32;
    probe.unlink().unwrap();
    // SAFETY: a plain system call on a pid.
    unsafe { libc::sched_getscheduler(pid) == libc::SCHED_FIFO }
}

/// CPython's test_shared_memory_cleaned_after_process_termination, as a
/// Rust program sees it: the parent attaches the moment its child is
/// reaped, and must find the segment gone (its watcher marked it "cleanup
/// pending" as the child began to exit), never keep it alive.
#[test]
fn attaching_the_moment_the_creator_is_reaped_finds_it_gone() {
    let strict = watcher_is_real_time();
    let mut kept = 0;
    for _ in 0..10 {
        let name = unique("reaped");
        let mut child = spawn("create", &name);
        child.kill().unwrap();
        child.wait().unwrap();
        let attached = SharedMemory::open(&name);
        let err = stderr_of(&mut child);
        cleanup(&name);
        assert!(err.contains(WARNING), "stderr: {err}");
        match attached {
            Err(shmkit::Error::NotFound { .. }) => {}
            Ok(_) if !strict => kept += 1,
            other => {
                panic!("attached a segment whose only user was dead: {other:?}; stderr: {err}")
            }
        }
    }
    if kept > 0 {
        eprintln!("without real-time priority, the attach won the race {kept} times in 10");
    }
}

/// An attach that finds a segment marked "cleanup pending" waits for the
/// watcher's decision: not found if it unlinked the segment, attached as
/// usual if it left it (someone else holds it).
#[test]
fn an_attach_waits_out_a_pending_cleanup() {
    use std::os::fd::AsRawFd;
    for unlink in [true, false] {
        let name = unique("pending");
        let shm = Options::new().track(false).create_named(&name, 64).unwrap();
        drop(shm);
        // What a watcher does: its own open file, a read lock far past the
        // end (the range tracker::mark::set_cleanup_mark uses), and the sticky bit as
        // the hint attachers look for.
        let path = format!("/dev/shm/{name}");
        let watcher = std::fs::File::open(&path).unwrap();
        set_mode(&path, 0o1600);
        // SAFETY: plain old data, then one fcntl on a descriptor we own.
        let marked = unsafe {
            let mut lock: libc::flock = std::mem::zeroed();
            lock.l_type = libc::F_RDLCK as libc::c_short;
            lock.l_whence = libc::SEEK_SET as libc::c_short;
            lock.l_start = i64::MAX - 1;
            lock.l_len = 1;
            libc::fcntl(watcher.as_raw_fd(), libc::F_OFD_SETLK, &lock) == 0
        };
        assert!(marked);
        let decide = {
            let name = name.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                if unlink {
                    shmkit::unlink(&name).unwrap();
                }
                drop(watcher);
            })
        };
        let start = Instant::now();
        let attached = SharedMemory::open(&name);
        let waited = start.elapsed();
        decide.join().unwrap();
        cleanup(&name);
        assert!(
            waited >= Duration::from_millis(90),
            "did not wait: {waited:?}"
        );
        if unlink {
            assert!(
                matches!(attached, Err(shmkit::Error::NotFound { .. })),
                "{attached:?}"
            );
        } else {
            assert_eq!(attached.unwrap().len(), 64);
        }
    }
    // A hint left behind with no mark (its watcher was killed) is ignored.
    let name = unique("stale");
    let shm = Options::new().track(false).create_named(&name, 64).unwrap();
    set_mode(&format!("/dev/shm/{name}"), 0o1600);
    let start = Instant::now();
    let again = SharedMemory::open(&name).unwrap();
    assert!(start.elapsed() < Duration::from_millis(50));
    drop((shm, again));
    cleanup(&name);
}

fn set_mode(path: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The counting CPython's tests expect: a name registered and unlinked by
/// someone else (here, this process) still counts as leaked, and gets
/// CPython's FileNotFoundError line.
#[test]
fn a_tracked_segment_unlinked_by_another_process_is_counted_with_its_error() {
    let name = unique("peer");
    let child = spawn("create", &name);
    shmkit::unlink(&name).unwrap();
    let err = finish(child, true);
    assert!(err.contains(WARNING), "stderr: {err}");
    let line =
        format!("resource_tracker: '/{name}': [Errno 2] No such file or directory: '/{name}'");
    assert!(err.contains(&line), "stderr: {err}");
}

/// An attacher's watcher finds the segment held by a live process (its
/// creator) and leaves it at once: no retries that would unlink it the
/// moment the creator closes it before unlinking it itself (CPython's
/// test_shared_memory_across_processes closes, then unlinks).
#[test]
fn a_segment_a_live_process_holds_is_not_retried() {
    use std::io::Write;
    let name = unique("live");
    let shm = Options::new().track(false).create_named(&name, 64).unwrap();
    let mut child = spawn("attach", &name);
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    child.wait().unwrap();
    // The watcher's first look comes as the child is reaped; closing after
    // it must not get the segment unlinked by a later look.
    std::thread::sleep(Duration::from_millis(50));
    drop(shm);
    let err = stderr_of(&mut child);
    std::thread::sleep(Duration::from_millis(400));
    let survived = shmkit::exists(&name);
    cleanup(&name);
    assert!(
        survived,
        "unlinked after its creator closed it; stderr: {err}"
    );
    assert!(
        err.contains("still open in another process"),
        "stderr: {err}"
    );
}

/// A tracked attach is covered from before its open: an attacher killed
/// while it reserves a large sparse segment's pages, before it could
/// register the name, still has its watcher clean the segment up.
#[test]
fn an_attacher_killed_mid_attach_still_has_it_cleaned_up() {
    let name = unique("midattach");
    drop(
        Options::new()
            .reserve(false)
            .create_named(&name, 512 << 20)
            .unwrap(),
    );
    // `spawn` returns on the child's "opening" line, just before its attach.
    let mut child = spawn("attach-reserve", &name);
    std::thread::sleep(Duration::from_millis(5));
    child.kill().unwrap();
    child.wait().unwrap();
    let mut rest = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    let err = stderr_of(&mut child);
    let gone = gone_within(&name, Duration::from_secs(2));
    cleanup(&name);
    assert!(
        !rest.contains(&name),
        "the attach finished before the kill, so this proves nothing: {rest}"
    );
    assert!(
        gone,
        "left behind by an attacher killed mid-attach; stderr: {err}"
    );
}

/// Two processes that hold one tracked segment die at the same moment:
/// their watchers judge it at once, and neither may take the other's
/// probe for a user and leave the segment behind.
#[test]
fn processes_dying_together_leave_nothing() {
    for round in 0..20 {
        let name = unique("together");
        let mut creator = spawn("create", &name);
        let mut attacher = spawn("attach", &name);
        creator.kill().unwrap();
        attacher.kill().unwrap();
        creator.wait().unwrap();
        attacher.wait().unwrap();
        let err = stderr_of(&mut creator) + &stderr_of(&mut attacher);
        let gone = gone_within(&name, Duration::from_secs(2));
        cleanup(&name);
        assert!(gone, "round {round}: left behind; stderr: {err}");
    }
}
