//! The `shmkit` binary against real segments.

use std::process::Command;

use shmkit::SharedMemory;

fn shmkit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shmkit"))
        .args(args)
        .output()
        .expect("run shmkit")
}

struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = shmkit::unlink(&self.0);
    }
}

#[test]
fn show_hexdumps_a_range() {
    let shm = SharedMemory::create(64).unwrap();
    let _guard = Unlink(shm.name().to_owned());
    shm.write_at(16, b"howdy").unwrap();
    let out = shmkit(&["show", shm.name(), "--offset", "16", "--length", "5"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("64 bytes"), "{text}");
    assert!(text.contains("00000010: 68 6f 77 64 79"), "{text}");
}

#[test]
fn show_reports_bad_input_without_a_panic() {
    for (args, want) in [
        (
            vec!["show", "no_such_segment_for_cli_test"],
            "does not exist",
        ),
        (vec!["show", "a/b"], "invalid shared memory name"),
    ] {
        let out = shmkit(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("shmkit: ") && err.contains(want), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let shm = SharedMemory::create(8).unwrap();
    let _guard = Unlink(shm.name().to_owned());
    let out = shmkit(&["show", shm.name(), "--offset", "4", "--length", "8"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("outside a segment"));
}
