//! ShareableList item access from Rust: the typed fast paths (target:
//! ≤ 10 ns per op) beside the general `get`/`set` that go through `Value`.
//!
//! `cargo bench -p shmkit-bench --bench list`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shmkit::list::{ShareableList, Value};

/// Unlinks the bench's segment, even if a bench panics.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = shmkit::unlink(&self.0);
    }
}

fn list_access(c: &mut Criterion) {
    let mut values: Vec<Value> = (0..1000).map(Value::Int).collect();
    values[1] = Value::Float(0.5);
    values[2] = Value::from("a string of 24 bytes....");
    let list = ShareableList::create(&values).expect("create the list");
    let _guard = Unlink(list.shm().name().to_owned());

    let mut g = c.benchmark_group("list");
    g.bench_function("get_i64", |b| {
        b.iter(|| list.get_i64(black_box(500)).unwrap())
    });
    g.bench_function("set_i64", |b| {
        b.iter(|| list.set_i64(black_box(500), black_box(7)).unwrap())
    });
    g.bench_function("get_f64", |b| {
        b.iter(|| list.get_f64(black_box(1)).unwrap())
    });
    g.bench_function("set_f64", |b| {
        b.iter(|| list.set_f64(black_box(1), black_box(0.25)).unwrap())
    });
    g.bench_function("get int as Value", |b| {
        b.iter(|| list.get(black_box(500)).unwrap())
    });
    g.bench_function("set int as Value", |b| {
        b.iter(|| list.set(black_box(500), black_box(7)).unwrap())
    });
    g.bench_function("get str", |b| b.iter(|| list.get(black_box(2)).unwrap()));
    g.bench_function("set str", |b| {
        b.iter(|| {
            list.set(black_box(2), black_box("another of 24 bytes....."))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, list_access);
criterion_main!(benches);
