//! With the `bundle-manager` feature (which `pyproject.toml` turns on for
//! every maturin build: `pip install .`, `maturin build`, `maturin
//! develop`), builds the native `shmkit-manager` program and puts it at
//! `python/shmkit/_bin/shmkit-manager`, where maturin packs it into the wheel
//! beside the extension and where `SharedMemoryManager.start()` looks for it.
//!
//! A build script is the one hook that every way of building the package
//! runs; cargo has no stable way for one package to depend on another's
//! binary. The program is built by a second cargo in its own target
//! directory (the outer build holds the lock on its own), linked statically:
//! with no dynamic loader at work it starts sooner, and that start-up is most
//! of `start()`'s time.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if env::var_os("CARGO_FEATURE_BUNDLE_MANAGER").is_none() {
        return;
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("crates/shmkit-py sits two levels below the workspace root");
    for watched in ["crates/shmkit", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let target_dir = root.join("target").join("manager");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // The outer build's settings (its target directory, flags, profile) are
    // not the program's: start the inner cargo from a clean slate.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    // Share the outer build's job slots rather than adding a second set.
    if let Some(flags) = env::var_os("CARGO_MAKEFLAGS") {
        cmd.env("MAKEFLAGS", flags);
    }
    cmd.current_dir(root)
        .args(["rustc", "--release", "--locked", "-q", "-p", "shmkit"])
        .args(["--bin", "shmkit-manager", "--target-dir"])
        .arg(&target_dir)
        .args(["--", "-C", "target-feature=+crt-static"]);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build shmkit-manager: {e}"));
    assert!(status.success(), "building shmkit-manager failed: {status}");

    let built = target_dir.join("release").join("shmkit-manager");
    let dest_dir = root.join("python").join("shmkit").join("_bin");
    std::fs::create_dir_all(&dest_dir).expect("create python/shmkit/_bin");
    let dest = dest_dir.join("shmkit-manager");
    // Replace rather than overwrite: a manager started from the old file may
    // still be running, and writing into a running program fails (ETXTBSY).
    let tmp = dest_dir.join(".shmkit-manager.tmp");
    std::fs::copy(&built, &tmp).expect("copy shmkit-manager beside the package");
    // An old time stamp, so that cargo runs this script again only when the
    // program is missing or was replaced, not after every build.
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1)))
        .expect("date shmkit-manager");
    std::fs::rename(&tmp, &dest).expect("move shmkit-manager into place");
    println!("cargo:rerun-if-changed={}", dest.display());
}
