//! Linear-sum assignment at the sizes of DETR-style matching (900 queries x 20 or 100 targets) and a square 300x300,
//! uniform random costs with a fixed seed. The peer is scipy on one core: tools/bench_lsap_scipy.py, run in the same
//! session, prints its times for the same shapes.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use instagen::detection::hungarian::{batched, linear_sum_assignment, linear_sum_assignment_f32};
use instagen::util::Rng;
use std::hint::black_box;

fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64).collect()
}

fn single(c: &mut Criterion) {
    let mut group = c.benchmark_group("lsap");
    for (rows, cols) in [(900usize, 20usize), (900, 100), (300, 300)] {
        let cost = uniform(rows * cols, 42);
        group.bench_with_input(BenchmarkId::from_parameter(format!("{rows}x{cols}")), &cost, |b, cost| {
            b.iter(|| linear_sum_assignment(black_box(cost), rows, cols, false).unwrap())
        });
    }
    group.finish();
}

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("lsap_batched");
    // A training batch: 16 images, 900 queries, 20 targets each (rayon over the images).
    let costs: Vec<(Vec<f32>, usize, usize)> =
        (0..16).map(|b| (uniform(900 * 20, 100 + b).into_iter().map(|x| x as f32).collect(), 900, 20)).collect();
    group.bench_function("16x900x20", |b| b.iter(|| batched(black_box(&costs)).unwrap()));
    // The same 16 one after another on one thread (the parallel speed-up is the ratio of the two).
    group.bench_function("16x900x20_serial", |b| {
        b.iter(|| {
            black_box(&costs)
                .iter()
                .map(|(c, r, k)| linear_sum_assignment_f32(c, *r, *k, false).unwrap())
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

criterion_group!(benches, single, batch);
criterion_main!(benches);
