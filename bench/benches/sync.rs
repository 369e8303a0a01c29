//! `shmkit::sync` from Rust: the uncontended paths (no system call), and a
//! round trip between two threads over two semaphores (a futex wait and
//! wake each way).
//!
//! `cargo bench -p shmkit-bench --bench sync`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use shmkit::sync::{Event, Lock, Semaphore, Wait};

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync");
    let lock = Lock::create().expect("create");
    g.bench_function("lock+unlock", |b| {
        b.iter(|| drop(black_box(lock.lock()).expect("no owner died")))
    });
    g.bench_function("acquire+release (raw)", |b| {
        b.iter(|| {
            let got = lock.acquire(&mut Wait::no_wait()).expect("acquire");
            black_box(got);
            lock.release().expect("release");
        })
    });
    let sem = Semaphore::create(1).expect("create");
    g.bench_function("semaphore try_acquire+release", |b| {
        b.iter(|| {
            black_box(sem.try_acquire());
            sem.release(1).expect("release");
        })
    });
    let event = Event::create().expect("create");
    event.set();
    g.bench_function("event wait (set)", |b| b.iter(|| event.wait()));
    g.finish();
    for name in [lock.name(), sem.name(), event.name()] {
        let _ = shmkit::unlink(name.expect("named"));
    }
}

fn ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync");
    g.measurement_time(Duration::from_secs(3));
    let ping = Semaphore::create(0).expect("create");
    let pong = Semaphore::create(0).expect("create");
    let stop = Event::create().expect("create");
    std::thread::scope(|s| {
        s.spawn(|| {
            let ping = Semaphore::open(ping.name().expect("named")).expect("open");
            let pong = Semaphore::open(pong.name().expect("named")).expect("open");
            loop {
                ping.acquire();
                if stop.is_set() {
                    return;
                }
                pong.release(1).expect("release");
            }
        });
        g.bench_function("semaphore ping-pong round trip (threads)", |b| {
            b.iter(|| {
                ping.release(1).expect("release");
                pong.acquire();
            })
        });
        stop.set();
        ping.release(1).expect("release");
    });
    g.finish();
    for name in [ping.name(), pong.name(), stop.name()] {
        let _ = shmkit::unlink(name.expect("named"));
    }
}

criterion_group!(benches, uncontended, ping_pong);
criterion_main!(benches);
