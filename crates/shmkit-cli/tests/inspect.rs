//! `shmkit ls`, `show`, `rm` and `gc` against real segments and real
//! processes: a list, a segment leaked by a SIGKILLed creator, segments a
//! live child still uses (with shmkit's lock, and with a bare descriptor),
//! and bad input.
//!
//! Every `gc` here names its segments: other test runs on this machine
//! make segments of their own at the same time.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value as Json;
use shmkit::list::{ShareableList, ValueRef};
use shmkit::{Options, SharedMemory};

fn shmkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmkit"))
        .args(args)
        .output()
        .expect("run shmkit")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh name of this test's own (the pytest suite's prefix).
fn unique(tag: &str) -> String {
    format!(
        "shmkit_t{}_{tag}_{}",
        std::process::id(),
        &shmkit::name::generate()[4..]
    )
}

/// Unlinks the name at the end of the test, whatever happens.
struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = shmkit::unlink(&self.0);
    }
}

/// The `ls --json` entry of `name`.
fn ls_entry(name: &str) -> Json {
    let out = shmkit(&["ls", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let listing: Json = serde_json::from_slice(&out.stdout).expect("ls --json is JSON");
    let mut entry = listing["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {listing}"))
        .clone();
    // For the failure messages: what could not be inspected, and by whom.
    let unreadable: Vec<String> = listing["unreadable_processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            format!("{p} ({})", comm.trim())
        })
        .collect();
    entry["unreadable"] = unreadable.into();
    entry
}

/// The `ls --json` entry of `name` once `ready` holds for it (or after 5 s).
/// While another test thread starts a process, the child holds copies of
/// this process's descriptors until it calls exec, and `ls` rightly sees it
/// as a user for that moment.
fn ls_entry_when(name: &str, ready: impl Fn(&Json) -> bool) -> Json {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let entry = ls_entry(name);
        if ready(&entry) || std::time::Instant::now() > deadline {
            return entry;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn user_pids(entry: &Json) -> Vec<u64> {
    entry["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["pid"].as_u64().unwrap())
        .collect()
}

/// A child process (this test binary again, running `hold_a_segment`) that
/// creates segment `name` untracked, says so, and sleeps until killed.
struct Holder(Child);

impl Holder {
    fn start(name: &str) -> Holder {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hold_a_segment",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SHMKIT_CLI_TEST_HOLD", name)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the holder");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.ends_with("holding") => break,
                Some(Ok(_)) => continue,
                _ => panic!("the holder exited early"),
            }
        }
        Holder(child)
    }

    fn pid(&self) -> u64 {
        u64::from(self.0.id())
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL: nothing cleans up
        let _ = self.0.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Not a test of its own: the body of [`Holder`]'s child.
#[test]
fn hold_a_segment() {
    let Ok(name) = std::env::var("SHMKIT_CLI_TEST_HOLD") else {
        return;
    };
    let shm = Options::new()
        .track(false)
        .create_named(&name, 4096)
        .unwrap();
    shm.write_at(0, b"held").unwrap();
    println!("holding");
    std::thread::sleep(Duration::from_secs(60));
    drop(shm);
}

#[test]
fn ls_and_show_see_a_list_and_this_process_using_it() {
    let name = unique("list");
    let list = ShareableList::create_named(
        &name,
        &[
            ValueRef::Str("howdy"),
            ValueRef::Bytes(b"HoWdY"),
            ValueRef::Float(-273.154),
            ValueRef::Int(100),
            ValueRef::None,
            ValueRef::Bool(true),
        ],
    )
    .unwrap();
    let _guard = Unlink(name.clone());

    let entry = ls_entry(&name);
    assert_eq!(entry["holds"]["kind"], "shareable_list", "{entry}");
    assert_eq!(entry["holds"]["items"], 6);
    assert_eq!(entry["state"], "in_use");
    assert_eq!(entry["mode"], "0600");
    assert_eq!(entry["size"], list.shm().size() as u64);
    let me = u64::from(std::process::id());
    assert!(user_pids(&entry).contains(&me), "{entry}");
    let locks = entry["locks"].as_array().unwrap();
    assert!(
        locks
            .iter()
            .any(|l| l["pid"] == me && l["kind"] == "FLOCK" && l["access"] == "READ"),
        "{entry}"
    );

    let out = shmkit(&["show", &name]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("a ShareableList of 6 items") && text.contains("'8s8sdqxxxxxx?xxxxxxxx?'"),
        "{text}"
    );
    for (ty, format, value) in [
        ("str", "8s", "'howdy'"),
        ("bytes", "8s", "b'HoWdY'"),
        ("float", "d", "-273.154"),
        ("int", "q", "100"),
        ("None", "xxxxxx?x", "None"),
        ("bool", "xxxxxxx?", "True"),
    ] {
        assert!(
            text.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.get(1) == Some(&ty) && cells.get(2) == Some(&format) && l.ends_with(value)
            }),
            "{ty} {value} in\n{text}"
        );
    }

    // --hex (or a range) hexdumps the same segment instead.
    let out = shmkit(&["show", "--hex", &name]);
    assert!(stdout(&out).contains("00000000: 06 00 00 00"), "{out:?}");
    let out = shmkit(&["show", "--json", &name]);
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["items"][2]["value"], -273.154);
    assert_eq!(doc["items"][1]["hex"], "486f576459");
    drop(list);
}

#[test]
fn inspecting_leaves_no_trace_in_the_segment_s_users() {
    let name = unique("quiet");
    let shm = SharedMemory::create_named(&name, 64).unwrap();
    let _guard = Unlink(name.clone());
    // While ls reads the segment it takes no lock: a shmkit process could
    // always add its own shared lock, and nothing but this test is a user.
    let me = [u64::from(std::process::id())];
    let entry = ls_entry_when(&name, |e| user_pids(e) == me);
    assert_eq!(user_pids(&entry), me);
    assert_eq!(entry["locks"].as_array().unwrap().len(), 1, "{entry}");
    drop(shm);
    let entry = ls_entry_when(&name, |e| e["state"] == "leaked");
    assert_eq!(entry["state"], "leaked", "{entry}");
    assert_eq!(entry["holds"]["kind"], "data");
}

#[test]
fn a_segment_leaked_by_a_killed_creator_is_collected() {
    let name = unique("leak");
    let _guard = Unlink(name.clone());
    let mut holder = Holder::start(&name);
    assert!(user_pids(&ls_entry(&name)).contains(&holder.pid()));
    holder.kill();

    let entry = ls_entry_when(&name, |e| e["state"] == "leaked");
    assert_eq!(entry["state"], "leaked", "{entry}");
    assert!(entry["users"].as_array().unwrap().is_empty());

    let out = shmkit(&["gc", "--dry-run", &name]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>().len(), 1, "{out:?}");
    assert!(stdout(&out).starts_with(&format!("would remove {name} ")));
    assert!(shmkit::exists(&name), "--dry-run removed it");

    let out = shmkit(&["gc", &name]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).starts_with(&format!("removed {name} ")),
        "{out:?}"
    );
    assert!(!shmkit::exists(&name));
}

#[test]
fn a_segment_a_live_child_uses_is_left_alone() {
    let name = unique("busy");
    let _guard = Unlink(name.clone());
    let mut holder = Holder::start(&name);
    let entry = ls_entry_when(&name, |e| user_pids(e) == [holder.pid()]);
    assert_eq!(entry["state"], "in_use");
    assert_eq!(user_pids(&entry), [holder.pid()], "{entry}");

    let out = shmkit(&["gc", &name]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "");
    let out = shmkit(&["rm", &name]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("in use by {}", holder.pid())) && err.contains("not removed"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(shmkit::exists(&name));

    holder.kill();
    let out = shmkit(&["rm", &name]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("removed {name}\n"));
    assert!(!shmkit::exists(&name));
}

#[test]
fn a_bare_descriptor_without_a_lock_counts_as_use() {
    let name = unique("fd");
    let shm = SharedMemory::create_named(&name, 64).unwrap();
    let _guard = Unlink(name.clone());
    // A child with only a plain descriptor on it: no lock, no mapping. It
    // opens the file itself: a descriptor of ours left open for it to inherit
    // would leak into every child the other tests start meanwhile.
    let mut sleeper = Command::new("sh")
        .args(["-c", &format!("exec 3</dev/shm/{name} && exec sleep 60")])
        .spawn()
        .unwrap();
    let comm = format!("/proc/{}/comm", sleeper.id());
    while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(shm);

    let sleeper_pid = [u64::from(sleeper.id())];
    let entry = ls_entry_when(&name, |e| user_pids(e) == sleeper_pid);
    assert_eq!(user_pids(&entry), sleeper_pid, "{entry}");
    assert!(entry["locks"].as_array().unwrap().is_empty(), "{entry}");
    let other = unique("fd_free");
    drop(SharedMemory::create_named(&other, 8).unwrap());
    let _guard2 = Unlink(other.clone());
    ls_entry_when(&other, |e| e["state"] == "leaked");
    // One name in use and one free: the free one goes, the status says 3.
    let out = shmkit(&["rm", &name, &other]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stderr(&out).contains(&format!("in use by {} (sleep)", sleeper.id())));
    assert_eq!(stdout(&out), format!("removed {other}\n"));
    assert!(shmkit::exists(&name) && !shmkit::exists(&other));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn bad_names_missing_segments_and_no_permission_are_one_line_errors() {
    let missing = unique("missing");
    for args in [
        vec!["show", "a/b"],
        vec!["rm", "a/b"],
        vec!["gc", "a/b"],
        vec!["show", ""],
        vec!["show", &missing],
        vec!["rm", &missing],
    ] {
        let out = shmkit(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("shmkit: ") && !err.contains("panicked"),
            "{err}"
        );
        assert!(
            err.contains("does not exist") || err.contains("invalid shared memory name"),
            "{err}"
        );
    }
    // A usage error is status 2, and the help lists the statuses.
    assert_eq!(shmkit(&["rm"]).status.code(), Some(2));
    assert!(stdout(&shmkit(&["rm", "--help"])).contains("Exit status:"));

    // No permission: a segment with mode 000, looked at by a user who is
    // not its owner's root (as nobody when this test runs as root).
    let name = unique("noperm");
    let shm = Options::new().mode(0).create_named(&name, 16).unwrap();
    let _guard = Unlink(name.clone());
    drop(shm);
    for args in [["show", name.as_str()], ["rm", name.as_str()]] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmkit"));
        cmd.args(args);
        if rustix::process::geteuid().is_root() {
            cmd.uid(65534).gid(65534);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("permission denied"), "{err}");
    }
    assert!(shmkit::exists(&name));
}

#[test]
fn demo_says_how_to_install_the_python_package_when_it_cannot_run() {
    for python in ["/nonexistent/python3", "false"] {
        let out = Command::new(env!("CARGO_BIN_EXE_shmkit"))
            .args(["demo", "--workers", "2"])
            .env("SHMKIT_PYTHON", python)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{python}: {out:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("pip install shmkit"), "{err}");
    }
}

/// A CPython with the stdlib (3.13, else 3.11), or `None`.
fn python() -> Option<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/find-python");
    ["3.13", "3.11"].iter().find_map(|version| {
        let out = Command::new(&script).arg(version).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })
}

#[test]
fn show_decodes_a_list_the_stdlib_made() {
    let Some(python) = python() else {
        eprintln!("no CPython 3.11 or 3.13 found: skipping");
        return;
    };
    let name = unique("stdlib");
    let _guard = Unlink(name.clone());
    // Made, then left for us: closed, and forgotten by its resource tracker.
    let made = Command::new(python)
        .args([
            "-c",
            "import sys\n\
             from multiprocessing import resource_tracker, shared_memory\n\
             sl = shared_memory.ShareableList(['a', 2, 3.5, None, b'x'], name=sys.argv[1])\n\
             resource_tracker.unregister(sl.shm._name, 'shared_memory')\n\
             sl.shm.close()\n",
            &name,
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");

    let entry = ls_entry(&name);
    assert_eq!(entry["holds"]["items"], 5, "{entry}");
    let out = shmkit(&["show", "--json", &name]);
    assert!(out.status.success(), "{out:?}");
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["format"], "8sqdxxxxxx?x8s");
    let reprs: Vec<&str> = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["repr"].as_str().unwrap())
        .collect();
    assert_eq!(reprs, ["'a'", "2", "3.5", "None", "b'x'"]);
}

/// Bytes a terminal acts on instead of printing: C0 controls but the line
/// ends, DEL, and (as UTF-8) C1 controls and the right-to-left override.
fn raw_controls(text: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, &b) in text.iter().enumerate() {
        if (b < 0x20 && b != b'\n') || b == 0x7f {
            found.push(format!("byte {b:#04x} at {i}"));
        }
    }
    let lossy = String::from_utf8_lossy(text);
    for c in lossy.chars() {
        if ('\u{80}'..='\u{9f}').contains(&c) || c == '\u{202e}' {
            found.push(format!("{c:?}"));
        }
    }
    if std::str::from_utf8(text).is_err() {
        found.push("bytes that are not UTF-8".to_owned());
    }
    found
}

/// A child holding `/dev/shm/NAME` open, under a command name that is
/// itself hostile (an escape sequence and a byte that is not UTF-8): the
/// kernel names a process after the file it executed, here a symbolic link
/// to `sleep`.
struct HostileSleeper {
    child: Child,
    dir: std::path::PathBuf,
}

impl HostileSleeper {
    const COMM: &'static [u8] = b"\x1b[2Jz\xffsleep";

    fn start(name: &str) -> HostileSleeper {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(unique("comm"));
        std::fs::create_dir(&dir).unwrap();
        let link = dir.join(std::ffi::OsStr::from_bytes(Self::COMM));
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("a sleep program");
        std::os::unix::fs::symlink(sleep, &link).unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg("exec 3<\"$1\" && exec \"$0\" 60")
            .arg(&link)
            .arg(format!("/dev/shm/{name}"))
            .spawn()
            .unwrap();
        let comm = format!("/proc/{}/comm", child.id());
        while std::fs::read(&comm).unwrap_or_default() != [Self::COMM, b"\n"].concat() {
            std::thread::sleep(Duration::from_millis(5));
        }
        HostileSleeper { child, dir }
    }
}

impl Drop for HostileSleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn hostile_names_never_reach_the_terminal_raw() {
    let base = unique("hostile");
    // A title-setting and a screen-clearing escape, a newline that would
    // forge a row, C1's CSI, a right-to-left override, and a wide name
    // (for the alignment), each made by this test.
    let suffixes = [
        "\x1b]0;pwned\x07",
        "\x1b[2J",
        "\nforged_row  64B  0600  root",
        "\u{9b}31m",
        "\u{202e}evil",
        "_共有",
    ];
    let names: Vec<String> = suffixes.iter().map(|s| format!("{base}{s}")).collect();
    let _guards: Vec<Unlink> = names.iter().map(|n| Unlink(n.clone())).collect();
    for name in &names {
        drop(
            Options::new()
                .track(false)
                .create_named(name, 64)
                .expect("create"),
        );
    }
    // One is in use by a process whose own name is hostile.
    let busy = &names[1];
    let sleeper = HostileSleeper::start(busy);
    let quoted = |name: &str| {
        // What the CLI must show: git's quoting, checked by hand here.
        let mut q = String::from("\"");
        for b in name.bytes() {
            match b {
                b'\n' => q.push_str("\\n"),
                0x07 => q.push_str("\\a"),
                b' '..=b'~' => q.push(char::from(b)),
                b => q.push_str(&format!("\\{b:03o}")),
            }
        }
        q.push('"');
        q
    };

    // ls: one row per name, escaped, the columns aligned.
    let out = shmkit(&["ls"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(raw_controls(&out.stdout), Vec::<String>::new());
    let text = stdout(&out);
    let header = text.lines().next().unwrap();
    let mode_column = header.find("MODE").unwrap();
    assert!(!text.lines().any(|l| l.starts_with("forged_row")), "{text}");
    for name in &names[..5] {
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&quoted(name)))
            .collect();
        assert_eq!(rows.len(), 1, "{name:?} in\n{text}");
        assert!(
            rows[0][mode_column..].starts_with("0600  "),
            "{}\n{text}",
            rows[0]
        );
    }
    // The wide name: aligned by display width (two columns per character).
    let wide = text
        .lines()
        .find(|l| l.starts_with(&names[5]))
        .unwrap_or_else(|| panic!("{} not in\n{text}", names[5]));
    let before_mode = &wide[..wide.find("0600").unwrap()];
    assert_eq!(
        before_mode.chars().count() + 2,
        mode_column,
        "{wide}\n{header}"
    );
    // The user's command name too: escaped, its stray byte as well.
    let user = format!("{}(\"\\033[2Jz\\377sleep\")", sleeper.child.id());
    assert!(text.contains(&user), "{user} not in\n{text}");

    // --json keeps the names exactly, and the command name as UTF-8.
    let entry = ls_entry(busy);
    assert_eq!(entry["name"], busy.as_str());
    assert_eq!(
        entry["users"][0]["command"], "\u{1b}[2Jz\u{fffd}sleep",
        "{entry}"
    );

    // show: a hexdump's header, and a message for a name that is missing.
    let out = shmkit(&["show", &names[0]]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(raw_controls(&out.stdout), Vec::<String>::new());
    assert!(stdout(&out).starts_with(&format!("{}: 64 bytes\n", quoted(&names[0]))));
    let missing = format!("{base}_gone\x1b[2J\n");
    let out = shmkit(&["show", &missing]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(raw_controls(&out.stderr), Vec::<String>::new());
    assert_eq!(stderr(&out).lines().count(), 1, "{out:?}");

    // rm: refused (stderr) for the one in use, with its user's name.
    let out = shmkit(&["rm", busy]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(raw_controls(&out.stderr), Vec::<String>::new());
    assert_eq!(
        stderr(&out),
        format!(
            "shmkit: {}: in use by {} (\"\\033[2Jz\\377sleep\"); not removed\n",
            quoted(busy),
            sleeper.child.id()
        )
    );

    // gc --dry-run and gc: one line each, escaped.
    let free: Vec<&str> = names
        .iter()
        .filter(|n| *n != busy)
        .map(String::as_str)
        .collect();
    let mut args = vec!["gc", "--dry-run"];
    args.extend(&free);
    let out = shmkit(&args);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(raw_controls(&out.stdout), Vec::<String>::new());
    assert_eq!(stdout(&out).lines().count(), free.len(), "{out:?}");
    args.remove(1);
    let out = shmkit(&args);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(raw_controls(&out.stdout), Vec::<String>::new());
    let text = stdout(&out);
    assert_eq!(text.lines().count(), free.len(), "{text}");
    assert!(
        text.contains(&format!("removed {} (64B", quoted(&names[2]))),
        "{text}"
    );
    assert!(free.iter().all(|n| !shmkit::exists(n)));

    // rm of a free one prints its name escaped on stdout.
    drop(sleeper);
    let out = shmkit(&["rm", busy]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("removed {}\n", quoted(busy)));
}

#[test]
fn show_escapes_what_a_list_s_values_hold() {
    let name = unique("hostile_list");
    let list = ShareableList::create_named(
        &name,
        &[
            ValueRef::Str("a\u{1b}[2J\u{202e}b"),
            ValueRef::Bytes(b"\x1b]0;x\x07"),
        ],
    )
    .unwrap();
    let _guard = Unlink(name.clone());
    let out = shmkit(&["show", &name]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(raw_controls(&out.stdout), Vec::<String>::new());
    let text = stdout(&out);
    assert!(text.contains(r"'a\x1b[2J\342\200\256b'"), "{text}");
    assert!(text.contains(r"b'\x1b]0;x\x07'"), "{text}");
    drop(list);
}

#[test]
fn rm_force_removes_a_segment_in_use_and_names_its_users() {
    let name = unique("force");
    let _guard = Unlink(name.clone());
    let holder = Holder::start(&name);
    ls_entry_when(&name, |e| user_pids(e) == [holder.pid()]);
    // Without --force: refused, as before.
    let out = shmkit(&["rm", &name]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(shmkit::exists(&name));

    let out = shmkit(&["rm", "--force", &name]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stderr(&out), "");
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "removed {name}, which was in use by {} (",
            holder.pid()
        )) && text.ends_with(": they keep its memory until they let go of it\n"),
        "{text}"
    );
    assert!(!shmkit::exists(&name));
    // The holder still has its memory: its mapping is still there.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", holder.pid())).unwrap();
    assert!(
        maps.contains(&format!("/dev/shm/{name} (deleted)")),
        "{maps}"
    );

    // A free segment: removed as plain rm does; a missing one: an error.
    let free = unique("force_free");
    drop(SharedMemory::create_named(&free, 8).unwrap());
    let _guard2 = Unlink(free.clone());
    ls_entry_when(&free, |e| e["state"] == "leaked");
    let out = shmkit(&["rm", "-f", &free]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("removed {free}\n"));
    let out = shmkit(&["rm", "--force", &free]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("does not exist"), "{out:?}");
}

#[test]
fn notes_on_what_could_not_be_read_need_v() {
    // ls looks at processes only when there is a segment to judge, and a
    // private /dev/shm may hold none but ours.
    let name = unique("notes");
    let _shm = SharedMemory::create_named(&name, 8).unwrap();
    let _guard = Unlink(name.clone());
    let quiet = shmkit(&["ls"]);
    assert!(quiet.status.success(), "{quiet:?}");
    assert!(!stderr(&quiet).contains("could not be read"), "{quiet:?}");
    // Where a process's mappings cannot be read while its descriptors can
    // (pid 1 in some containers), -v says so, before or after the command.
    let pid1_blind =
        std::fs::read("/proc/1/maps").is_err() && std::fs::read_dir("/proc/1/fd").is_ok();
    for args in [["-v", "ls"], ["ls", "--verbose"]] {
        let loud = shmkit(&args);
        assert!(loud.status.success(), "{loud:?}");
        if pid1_blind {
            assert!(
                stderr(&loud).contains("note: the mappings of 1 ("),
                "{loud:?}"
            );
        }
    }
}

/// Not a test of its own: a child that names itself as the Python manager's
/// program does, creates segment `name` tracked, closes it, and sleeps
/// until killed, as a manager holding a segment whose creator closed it.
#[test]
fn act_as_a_manager() {
    let Ok(name) = std::env::var("SHMKIT_CLI_TEST_MANAGER") else {
        return;
    };
    // The main thread's name, whichever thread writes it.
    std::fs::write("/proc/self/comm", "shmkit-manager").unwrap();
    drop(
        Options::new()
            .track(true)
            .create_named(&name, 4096)
            .unwrap(),
    );
    println!("holding");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_manager_s_unused_segment_is_idle_labelled_and_kept_by_gc() {
    let name = unique("managed");
    let _guard = Unlink(name.clone());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "act_as_a_manager",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHMKIT_CLI_TEST_MANAGER", &name)
        // Its watcher reports the segment it leaves at the kill, as CPython's
        // tracker would: expected here, and noise in the test's output.
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.ends_with("holding"))));
    let pid = child.id();

    let entry = ls_entry_when(&name, |e| e["users"].as_array().unwrap().is_empty());
    assert_eq!(entry["state"], "idle", "{entry}");
    assert_eq!(
        entry["trackers"],
        serde_json::json!([{"pid": pid, "command": "shmkit-manager", "manager": true}]),
        "{entry}"
    );
    let table = stdout(&shmkit(&["ls"]));
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(row.contains(&format!(" {pid}(shmkit-manager) ")), "{row}");
    for args in [vec!["gc", &name], vec!["gc", "--prefix", &name]] {
        let out = shmkit(&args);
        assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    }
    assert!(shmkit::exists(&name));
    let _ = child.kill();
    let _ = child.wait();
}
