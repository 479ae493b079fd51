//! Criterion benchmark of the coalescing planner (no I/O): one million requests.

use criterion::{Criterion, criterion_group, criterion_main};
use getmany::Request;
use getmany::coalesce::{CoalescePolicy, plan};

fn planner(c: &mut Criterion) {
    // 1e6 ranges of 16 KiB over 1,000 objects, in an interleaved order.
    let requests: Vec<Request> = (0..1_000_000u64)
        .map(|i| {
            let slot = (i / 1000) * 16384;
            Request::range(format!("objects/{:04}", i % 1000), slot..slot + 16384)
        })
        .collect();
    let policy = CoalescePolicy::default();
    let mut group = c.benchmark_group("planner");
    group.sample_size(10);
    group.bench_function("plan 1e6 ranges over 1,000 objects", |b| {
        b.iter(|| plan(std::hint::black_box(&requests), &policy))
    });
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
