//! Arrays seen from another process: a child opens by name what its parent
//! made, reads and writes it, and the last holder frees it.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;

use common::fresh_name;
use shmkit::array::{Array, DType, Order};
use shmkit::Options;

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
#[ignore = "child role for a_child_works_on_its_parents_array"]
fn child_array_sum() {
    let name = std::env::var("SHMKIT_NAME").unwrap();
    let a = Array::open(&name).unwrap();
    assert_eq!(a.dtype(), DType::parse("<i8").unwrap());
    assert_eq!((a.shape(), a.strides()), (&[3, 4][..], vec![8, 24]));
    let mut all = vec![0i64; a.len()];
    a.read_into(&mut all).unwrap();
    let sum: i64 = all.iter().sum();
    a.set(&[2, 3], sum).unwrap();
    a.atomic_i64(&[0, 0])
        .unwrap()
        .fetch_add(100, Ordering::SeqCst);
    // The parent holds it: not freed here.
    assert!(!a.unlink_if_unused().unwrap());
}

#[test]
fn a_child_works_on_its_parents_array() {
    let (name, _guard) = fresh_name("array");
    let a = Array::create_with(
        &Options::new(),
        Some(&name),
        DType::parse("<i8").unwrap(),
        &[3, 4],
        Order::Fortran,
        false,
    )
    .unwrap();
    let values: Vec<i64> = (0..12).collect();
    a.write_from(&values).unwrap();
    let out = run_child("child_array_sum", &[("SHMKIT_NAME", &name)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Element [2, 3] in Fortran order is the last one.
    assert_eq!(a.get::<i64>(&[2, 3]).unwrap(), 66);
    assert_eq!(a.get::<i64>(&[0, 0]).unwrap(), 100);
    assert!(a.unlink_if_unused().unwrap());
    assert!(!shmkit::exists(&name));
}

#[test]
#[ignore = "child role for the_tracker_cleans_up_arrays_silently"]
fn child_leave_tracked() {
    let name = std::env::var("SHMKIT_NAME").unwrap();
    let opts = Options::new().track(true);
    if std::env::var("SHMKIT_PLAIN").is_ok() {
        std::mem::forget(opts.create_named(&name, 4096).unwrap());
    } else {
        let dtype = DType::parse("<f8").unwrap();
        let a = Array::create_with(&opts, Some(&name), dtype, &[16], Order::C, false).unwrap();
        std::mem::forget(a);
    }
    std::process::exit(0);
}

/// A tracked array left behind is unlinked when its process exits, without
/// the leak warning that a plain segment left behind gets.
#[test]
fn the_tracker_cleans_up_arrays_silently() {
    for plain in [false, true] {
        let (name, _guard) = fresh_name("array");
        let mut env = vec![("SHMKIT_NAME", name.as_str())];
        if plain {
            env.push(("SHMKIT_PLAIN", "1"));
        }
        let out = run_child("child_leave_tracked", &env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!shmkit::exists(&name));
        assert_eq!(stderr.contains("leaked shared_memory"), plain, "{stderr}");
    }
}

#[test]
fn a_segment_that_is_no_array_is_refused() {
    let (name, _guard) = fresh_name("array");
    let shm = shmkit::SharedMemory::create_named(&name, 8192).unwrap();
    let err = Array::open(&name).unwrap_err();
    assert!(err.to_string().contains("no shmkit object"), "{err}");
    shmkit::object::publish(shm.region(), shmkit::object::Kind::Array, 1).unwrap();
    let err = Array::open(&name).unwrap_err();
    assert!(err.to_string().contains("dtype"), "{err}");
}

// The fuzz target's body, on stable Rust.

#[path = "../../../fuzz/common/array_decode.rs"]
mod array_decode;

/// Counts allocations per thread, so that the fuzz body can check the
/// decoder's budget here too.
#[global_allocator]
static ALLOC: array_decode::Counting = array_decode::Counting;

mod fuzz_body {
    use super::array_decode;
    use proptest::prelude::*;

    fn seeds() -> Vec<Vec<u8>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/array_decode");
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect()
    }

    #[test]
    fn the_fuzz_seeds_pass() {
        let seeds = seeds();
        assert!(seeds.len() >= 4);
        for data in &seeds {
            array_decode::run(data);
        }
        // The counting allocator is really installed: a vector counts.
        let (_, peak) = array_decode::peak_during(|| vec![0u8; 8192]);
        assert!(peak >= 8192);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..800)) {
            array_decode::run(&data);
        }

        #[test]
        fn on_mutated_seeds(
            which in 0usize..5,
            edits in proptest::collection::vec((0usize..700, any::<u8>()), 1..6),
        ) {
            let seeds = seeds();
            let mut data = seeds[which % seeds.len()].clone();
            for (at, b) in edits {
                let at = at % data.len();
                data[at] = b;
            }
            array_decode::run(&data);
        }
    }
}
