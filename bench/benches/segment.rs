//! SharedMemory from Rust: the lifecycle calls (compare them with
//! `shm-floor`, which makes the same system calls without the crate) and the
//! per-access paths on a mapped segment.
//!
//! `cargo bench -p shmkit-bench --bench segment` (about 20 s; criterion
//! filters work: `… --bench segment -- lifecycle`).

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use shmkit::SharedMemory;

const SIZE: usize = 4096;

/// Unlinks a segment the bench made, even if a bench panics.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = shmkit::unlink(&self.0);
    }
}

fn lifecycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("lifecycle");

    // The floor's `create` workload, through the crate: a fresh name,
    // openat(O_CREAT|O_EXCL), fallocate, mmap; then unlinkat, munmap, close.
    // (Unlinking before the drop saves cloning the name; the kernel does the
    // same work in either order.)
    g.bench_function("create+unlink+drop", |b| {
        b.iter(|| {
            let shm = SharedMemory::create(black_box(SIZE)).expect("create");
            let unlinked = shm.unlink();
            drop(shm);
            unlinked.expect("unlink");
        })
    });

    // As the stdlib sizes segments: ftruncate instead of fallocate.
    let sparse = SharedMemory::options().reserve(false);
    g.bench_function("create(reserve=false)+unlink+drop", |b| {
        b.iter(|| {
            let shm = sparse.create(black_box(SIZE)).expect("create");
            let unlinked = shm.unlink();
            drop(shm);
            unlinked.expect("unlink");
        })
    });

    // The floor's `attach`: openat, fstat, mmap; munmap, close.
    let target = SharedMemory::create(SIZE).expect("create the attach target");
    let _guard = Unlink(target.name().to_owned());
    target.write_at(0, &[1]).expect("write");
    let name = target.name().to_owned();
    g.bench_function("open+drop", |b| {
        b.iter(|| drop(SharedMemory::open(black_box(&name)).expect("open")))
    });
    g.finish();
}

fn access(c: &mut Criterion) {
    let shm = SharedMemory::create(SIZE).expect("create");
    let _guard = Unlink(shm.name().to_owned());
    let mut g = c.benchmark_group("access");
    g.bench_function("read_at 8 bytes", |b| {
        let mut out = [0u8; 8];
        b.iter(|| {
            shm.read_at(black_box(64), &mut out).expect("read");
            black_box(out)
        })
    });
    g.bench_function("write_at 8 bytes", |b| {
        let data = 0x0123_4567_89ab_cdef_u64.to_le_bytes();
        b.iter(|| {
            shm.write_at(black_box(64), black_box(&data))
                .expect("write")
        })
    });
    g.bench_function("atomic_u64 fetch_add", |b| {
        b.iter(|| {
            shm.atomic_u64(black_box(128))
                .expect("aligned")
                .fetch_add(1, Ordering::SeqCst)
        })
    });
    let counter = shm.atomic_u64(128).expect("aligned");
    g.bench_function("fetch_add on a held &AtomicU64", |b| {
        b.iter(|| black_box(counter).fetch_add(1, Ordering::SeqCst))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = lifecycle, access
}
criterion_main!(benches);
