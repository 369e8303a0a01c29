//! `shmkit::sync` from Rust: the uncontended paths (no system call), and a
//! round trip between two processes over two semaphores (a futex wait and
//! wake each way), to set beside `futex-floor`.
//!
//! `cargo bench -p shmkit-bench --bench sync`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
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

/// Set in the child this bench starts for the ping-pong: `PING PONG`.
const PONG_ENV: &str = "SHMKIT_BENCH_SYNC_PONG";

/// The child's side: take a ping, give a pong, until killed.
fn pong_child(names: &str) -> ! {
    let (ping, pong) = names.split_once(' ').expect("two names");
    let ping = Semaphore::open(ping).expect("open");
    let pong = Semaphore::open(pong).expect("open");
    loop {
        ping.acquire();
        pong.release(1).expect("release");
    }
}

fn ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync");
    g.measurement_time(Duration::from_secs(3));
    let ping = Semaphore::create(0).expect("create");
    let pong = Semaphore::create(0).expect("create");
    let names = format!(
        "{} {}",
        ping.name().expect("named"),
        pong.name().expect("named")
    );
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(PONG_ENV, names)
        .spawn()
        .expect("spawn the child");
    g.bench_function("semaphore ping-pong round trip (processes)", |b| {
        b.iter(|| {
            ping.release(1).expect("release");
            pong.acquire();
        })
    });
    g.finish();
    let _ = child.kill();
    let _ = child.wait();
    for name in [ping.name(), pong.name()] {
        let _ = shmkit::unlink(name.expect("named"));
    }
}

criterion_group!(benches, uncontended, ping_pong);

fn main() {
    if let Ok(names) = std::env::var(PONG_ENV) {
        pong_child(&names);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
