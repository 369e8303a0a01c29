//! `futex-floor`: the floor of a hand-off between two processes, a futex
//! ping-pong with no library: two 32-bit words in a shared mapping, each
//! side setting the other's word and waking it, then sleeping on its own.
//! A round trip is two wakes and two sleeps, what any process-shared lock
//! or semaphore hand-off costs at least on this kernel.
//!
//! ```text
//! futex-floor [--rounds N] [--batches K]
//! ```
//!
//! Prints one JSON line: `{"name":"futex_pingpong","iterations":N,
//! "batches":K,"median_ns":…,"batch_ns":[…]}` (ns per round trip, wall
//! clock). The child is this program again (`--child NAME`); the segment
//! is unlinked as soon as both sides have it mapped.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use rustix::fs::Mode;
use rustix::mm::{mmap, MapFlags, ProtFlags};
use rustix::shm;
use rustix::thread::futex;

/// Sleeps until `word` is non-zero, then clears it.
fn take(word: &AtomicU32) {
    loop {
        if word.swap(0, Ordering::Acquire) != 0 {
            return;
        }
        let _ = futex::wait(word, futex::Flags::empty(), 0, None);
    }
}

/// Sets `word` and wakes its sleeper.
fn give(word: &AtomicU32) {
    word.store(1, Ordering::Release);
    let _ = futex::wake(word, futex::Flags::empty(), 1);
}

fn words(name: &str, create: bool) -> &'static [AtomicU32; 2] {
    let flags = if create {
        shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR
    } else {
        shm::OFlags::RDWR
    };
    let fd = shm::open(name, flags, Mode::from_raw_mode(0o600)).expect("shm_open");
    if create {
        rustix::fs::ftruncate(&fd, 4096).expect("ftruncate");
    }
    // SAFETY: a fresh shared mapping of 4096 bytes, never unmapped (the
    // process ends with it); only ever accessed through atomics.
    let ptr = unsafe {
        mmap(
            std::ptr::null_mut(),
            4096,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &fd,
            0,
        )
        .expect("mmap")
    };
    // SAFETY: the mapping is page-aligned, 4096 bytes, lives for the
    // process, and is zero-filled (a valid pair of atomics).
    unsafe { &*(ptr as *const [AtomicU32; 2]) }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let w = words(&args[i + 1], false);
        loop {
            take(&w[0]);
            give(&w[1]);
        }
    }
    let rounds = value("--rounds", 20_000);
    let batches = value("--batches", 5).max(1);
    let name = format!("/futex_floor_{}", std::process::id());
    let w = words(&name, true);
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(["--child", &name])
        .spawn()
        .expect("spawn the child");
    // One round trip proves the child has the mapping; the name can go.
    give(&w[0]);
    take(&w[1]);
    let _ = shm::unlink(&name);
    let mut batch_ns = Vec::new();
    for _ in 0..batches {
        let t0 = Instant::now();
        for _ in 0..rounds {
            give(&w[0]);
            take(&w[1]);
        }
        batch_ns.push(t0.elapsed().as_nanos() as f64 / rounds as f64);
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut sorted = batch_ns.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "name": "futex_pingpong",
            "iterations": rounds,
            "batches": batches,
            "median_ns": median,
            "batch_ns": batch_ns,
        })
    );
    ExitCode::SUCCESS
}
