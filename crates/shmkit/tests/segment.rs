//! SharedMemory across real processes, and the promises made about failures.
//!
//! Child roles are `#[ignore]`d tests that the parent runs in a fresh process
//! (`--ignored --exact`), so they never run on their own.

use std::process::Command;
use std::sync::atomic::Ordering;

use shmkit::{Error, Options, RenameFlags, SharedMemory};

/// Unlinks a name when dropped, so a failing test leaves /dev/shm clean.
struct Cleanup(Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = shmkit::unlink(name);
        }
    }
}

fn unique(tag: &str) -> String {
    format!("shmkit_test_{tag}_{}", std::process::id())
}

/// Runs the ignored test `role` in a child process with `env`.
fn run_child(role: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        role,
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn child")
}

#[test]
#[ignore = "child role for writes_from_a_child_process_are_seen"]
fn child_attach_and_write() {
    let name = std::env::var("SHMKIT_NAME").unwrap();
    let shm = SharedMemory::open(&name).unwrap();
    assert_eq!(shm.size(), 4096);
    assert_eq!(shm.read_vec(0, 6).unwrap(), b"parent");
    shm.write_at(100, b"child was here").unwrap();
    shm.atomic_u64(8).unwrap().fetch_add(41, Ordering::SeqCst);
}

#[test]
fn writes_from_a_child_process_are_seen() {
    let shm = SharedMemory::create(4096).unwrap();
    let _c = Cleanup(vec![shm.name().to_owned()]);
    shm.write_at(0, b"parent").unwrap();
    shm.atomic_u64(8).unwrap().store(1, Ordering::SeqCst);

    let out = run_child("child_attach_and_write", &[("SHMKIT_NAME", shm.name())]);
    assert!(out.status.success(), "child failed: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));

    assert_eq!(shm.read_vec(100, 14).unwrap(), b"child was here");
    assert_eq!(shm.atomic_u64(8).unwrap().load(Ordering::SeqCst), 42);
}

#[test]
fn create_is_exclusive_and_attach_needs_the_name() {
    let name = unique("excl");
    let _c = Cleanup(vec![name.clone()]);
    let a = SharedMemory::create_named(&name, 100).unwrap();
    assert_eq!(a.name(), name);
    assert!(matches!(
        SharedMemory::create_named(&name, 100),
        Err(Error::AlreadyExists { name: n }) if n == name
    ));
    let b = SharedMemory::open(&format!("/{name}")).unwrap();
    assert_eq!(b.size(), 100);
    a.unlink().unwrap();
    assert!(matches!(a.unlink(), Err(Error::NotFound { .. })));
    assert!(matches!(
        SharedMemory::open(&name),
        Err(Error::NotFound { .. })
    ));
    // The mappings outlive the name.
    b.write_at(0, b"still mapped").unwrap();
    assert_eq!(a.read_vec(0, 12).unwrap(), b"still mapped");
}

#[test]
fn created_segments_have_mode_0600_and_the_exact_size() {
    let shm = SharedMemory::create(5000).unwrap();
    let _c = Cleanup(vec![shm.name().to_owned()]);
    let meta = std::fs::metadata(format!("/dev/shm/{}", shm.name())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 5000);
    assert_eq!(shm.size(), 5000);
}

#[test]
fn failed_calls_leave_nothing_behind() {
    let name = unique("fail");
    assert!(matches!(
        SharedMemory::create_named(&name, 0),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        SharedMemory::create_named(&name, usize::MAX),
        Err(Error::InvalidSize { .. })
    ));
    for bad in ["", "a/b", "a\0b", "..", &"x".repeat(256)] {
        assert!(
            matches!(
                SharedMemory::create_named(bad, 10),
                Err(Error::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    // Too large to map on any machine: the create must undo itself.
    let huge = Options::new().reserve(false).create_named(&name, 1 << 62);
    assert!(huge.is_err());
    assert!(!shmkit::exists(&name));
}

#[test]
fn an_empty_segment_cannot_be_attached() {
    let name = unique("empty");
    let _c = Cleanup(vec![name.clone()]);
    std::fs::File::create(format!("/dev/shm/{name}")).unwrap();
    assert!(matches!(
        SharedMemory::open(&name),
        Err(Error::Empty { .. })
    ));
    assert!(
        shmkit::exists(&name),
        "attach must not unlink what it did not create"
    );
}

#[test]
fn open_or_create_sizes_only_a_new_segment() {
    let name = unique("ooc");
    let _c = Cleanup(vec![name.clone()]);
    let a = Options::new().open_or_create(&name, Some(64)).unwrap();
    assert_eq!(a.size(), 64);
    let b = Options::new().open_or_create(&name, Some(8)).unwrap();
    assert_eq!(b.size(), 64);
}

#[test]
fn rename_replaces_refuses_or_exchanges() {
    let (x, y, z) = (unique("rx"), unique("ry"), unique("rz"));
    let _c = Cleanup(vec![x.clone(), y.clone(), z.clone()]);
    let mut a = SharedMemory::create_named(&x, 8).unwrap();
    let b = SharedMemory::create_named(&y, 16).unwrap();
    a.write_at(0, b"A").unwrap();
    b.write_at(0, b"B").unwrap();

    assert!(matches!(
        a.rename(&y, RenameFlags::NOREPLACE),
        Err(Error::AlreadyExists { name }) if name == y
    ));
    assert_eq!(a.name(), x);

    a.rename(&y, RenameFlags::EXCHANGE).unwrap();
    assert_eq!(a.name(), y);
    assert_eq!(
        SharedMemory::open(&y).unwrap().read_vec(0, 1).unwrap(),
        b"A"
    );
    assert_eq!(
        SharedMemory::open(&x).unwrap().read_vec(0, 1).unwrap(),
        b"B"
    );

    assert!(matches!(
        a.rename(&z, RenameFlags::EXCHANGE),
        Err(Error::NotFound { name }) if name == z
    ));
    assert!(matches!(
        a.rename(&z, RenameFlags::EXCHANGE | RenameFlags::NOREPLACE),
        Err(Error::InvalidFlags(_))
    ));

    a.rename(&x, RenameFlags::REPLACE).unwrap();
    assert!(!shmkit::exists(&y));
    assert_eq!(
        SharedMemory::open(&x).unwrap().read_vec(0, 1).unwrap(),
        b"A"
    );
}

#[test]
#[cfg(feature = "serde")]
fn serde_carries_the_name_and_attaches() {
    let shm = SharedMemory::create(32).unwrap();
    let _c = Cleanup(vec![shm.name().to_owned()]);
    shm.write_at(0, b"serde").unwrap();
    let json = serde_json::to_string(&shm).unwrap();
    assert_eq!(json, format!("\"{}\"", shm.name()));
    let back: SharedMemory = serde_json::from_str(&json).unwrap();
    assert_eq!(back.read_vec(0, 5).unwrap(), b"serde");
    let err = serde_json::from_str::<SharedMemory>("\"no_such_segment_serde\"").unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn region_bounds_and_alignment_are_checked() {
    let shm = SharedMemory::create(16).unwrap();
    let _c = Cleanup(vec![shm.name().to_owned()]);
    assert!(matches!(
        shm.write_at(10, &[0; 7]),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        shm.read_vec(usize::MAX, 2),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(shm.atomic_u64(12), Err(Error::OutOfBounds { .. })));
    assert!(matches!(shm.atomic_u32(2), Err(Error::Misaligned { .. })));
    shm.atomic_u32(12).unwrap().store(7, Ordering::Relaxed);
    assert_eq!(shm.read_vec(12, 4).unwrap(), 7u32.to_ne_bytes());
}

#[test]
#[ignore = "child role for a_full_dev_shm_is_an_error_not_a_sigbus"]
fn child_create_in_small_dev_shm() {
    let err = SharedMemory::create(8 << 20).unwrap_err();
    assert!(
        matches!(err, Error::NoSpace { size, .. } if size == 8 << 20),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(28));
    assert!(list_shm().is_empty(), "left behind: {:?}", list_shm());
    // A size that fits still works.
    let ok = SharedMemory::create(256 << 10).unwrap();
    ok.write_at(ok.size() - 1, b"x").unwrap();
    ok.unlink().unwrap();
}

/// Runs the child in a private mount namespace whose /dev/shm is a 1 MiB
/// tmpfs; needs root and unshare(1).
#[test]
fn a_full_dev_shm_is_an_error_not_a_sigbus() {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root || Command::new("unshare").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and unshare(1)");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m tmpfs /dev/shm && exec "$0" --ignored --exact child_create_in_small_dev_shm --nocapture"#)
        .arg(exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{out:?}"
    );
}

fn list_shm() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
