//! CPU backend benches through the executor, each with its work (FLOPs or bytes) so rates are printed.
//! The matrix product is compared with the `gemm` crate called directly in the same run (the peer: the
//! difference is the engine's overhead).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use instagen::backend::cpu::CpuBackend;
use instagen::graph::{Graph, NodeId, UnaryOp};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::pipeline::selfcheck;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

fn random(shape: &[usize], dtype: DType, rng: &mut Rng) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::from_f32(shape, dtype, &rng.normal_vec(n, 1.0)).unwrap()
}

/// An executor for a graph over inputs `a` (and `b`), with `out` as its output.
fn one_op(
    shapes: &[&[usize]],
    dtype: DType,
    build: impl Fn(&mut Graph, &[NodeId]) -> NodeId,
) -> (Executor<CpuBackend>, Vec<(String, HostTensor)>) {
    let mut g = Graph::new();
    let mut rng = Rng::new(1);
    let names = ["a", "b"];
    let ins: Vec<NodeId> = shapes.iter().zip(names).map(|(s, n)| g.input(n, s, dtype).unwrap()).collect();
    let out = build(&mut g, &ins);
    g.mark_output(out);
    let feed = shapes.iter().zip(names).map(|(s, n)| (n.to_string(), random(s, dtype, &mut rng))).collect();
    (Executor::new(CpuBackend, g, &ParamStore::new()).unwrap(), feed)
}

fn run(ex: &mut Executor<CpuBackend>, feed: &[(String, HostTensor)]) {
    let f: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    ex.run(&f).unwrap();
}

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    for n in [256usize, 512, 1024] {
        group.throughput(Throughput::Elements((2 * n * n * n) as u64)); // FLOPs
        for dtype in [DType::F32, DType::F16] {
            let (mut ex, feed) = one_op(&[&[n, n], &[n, n]], dtype, |g, x| g.matmul(x[0], x[1]).unwrap());
            group.bench_function(BenchmarkId::new(format!("engine_{dtype}"), n), |b| b.iter(|| run(&mut ex, &feed)));
        }
        let mut rng = Rng::new(2);
        let (a, bm) = (rng.normal_vec(n * n, 1.0), rng.normal_vec(n * n, 1.0));
        let mut out = vec![0f32; n * n];
        group.bench_function(BenchmarkId::new("gemm_crate_f32", n), |b| {
            b.iter(|| unsafe {
                gemm::gemm(
                    n, n, n,
                    out.as_mut_ptr(), 1, n as isize,
                    false,
                    a.as_ptr(), 1, n as isize,
                    bm.as_ptr(), 1, n as isize,
                    0.0f32, 1.0f32, false, false, false,
                    gemm::Parallelism::Rayon(0),
                )
            })
        });
    }
    group.finish();
}

fn memory_bound(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_bound");
    group.sample_size(20);
    let n = 1 << 22;
    group.throughput(Throughput::Bytes((3 * n * 4) as u64));
    let (mut ex, feed) = one_op(&[&[n], &[n]], DType::F32, |g, x| g.add(x[0], x[1]).unwrap());
    group.bench_function("add_f32_4M", |b| b.iter(|| run(&mut ex, &feed)));
    group.throughput(Throughput::Bytes((2 * n * 4) as u64));
    let (mut ex, feed) = one_op(&[&[n]], DType::F32, |g, x| g.unary(UnaryOp::Gelu, x[0]).unwrap());
    group.bench_function("gelu_f32_4M", |b| b.iter(|| run(&mut ex, &feed)));
    let (rows, cols) = (4096, 1024);
    group.throughput(Throughput::Bytes((2 * rows * cols * 4) as u64));
    let (mut ex, feed) = one_op(&[&[rows, cols]], DType::F32, |g, x| g.softmax(x[0], 1).unwrap());
    group.bench_function("softmax_f32_4096x1024", |b| b.iter(|| run(&mut ex, &feed)));
    let (mut ex, feed) = one_op(&[&[rows, cols]], DType::F32, |g, x| g.layer_norm(x[0], None, 1e-5).unwrap());
    group.bench_function("layer_norm_f32_4096x1024", |b| b.iter(|| run(&mut ex, &feed)));
    let (mut ex, feed) = one_op(&[&[rows, cols]], DType::F16, |g, x| g.cast(x[0], DType::F32).unwrap());
    group.throughput(Throughput::Bytes((rows * cols * 6) as u64));
    group.bench_function("cast_f16_to_f32_4096x1024", |b| b.iter(|| run(&mut ex, &feed)));
    group.finish();
}

fn transformer_step(c: &mut Criterion) {
    let (b, t, w, h) = (8, 64, 128, 4);
    let g = selfcheck::transformer_graph(b, t, w, h).unwrap();
    let store = instagen::nn::init_params(&g, 0).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &store).unwrap();
    let mut rng = Rng::new(3);
    let feed = vec![
        ("x".to_string(), random(&[b, t, w], DType::F32, &mut rng)),
        ("mask".to_string(), instagen::nn::causal_mask(t, DType::F32).unwrap()),
        ("target".to_string(), random(&[b, t, w], DType::F32, &mut rng)),
    ];
    let mut group = c.benchmark_group("transformer_block");
    group.sample_size(10);
    group.bench_function("fwd_bwd_B8_T64_C128", |bch| bch.iter(|| run(&mut ex, &feed)));
    group.finish();
}

/// The grounding head's deformable attention (4 levels 64^2..8^2, 900 queries, 8 heads x 32, 4 points) at
/// batch 1 and 2: the forward alone, and the forward plus the gradients of value, locations and weights of
/// `sum(out * r)`. `instagen bench cpu --filter msda` times batch 2 against PyTorch's `grid_sample` version.
fn msda(c: &mut Criterion) {
    let mut group = c.benchmark_group("msda");
    group.sample_size(10);
    for batch in [1usize, 2] {
        let sh = instagen::ops::msda::parity::head_shape(batch);
        let mut rng = Rng::new(5);
        let loc_n: usize = sh.loc().iter().product();
        let feed = vec![
            ("value".to_string(), random(&sh.value(), DType::F32, &mut rng)),
            ("loc".to_string(), HostTensor::from_f32(&sh.loc(), DType::F32, &rng.uniform_vec(loc_n, -0.1, 1.1)).unwrap()),
            ("attn".to_string(), random(&sh.attn(), DType::F32, &mut rng)),
            ("r".to_string(), random(&sh.dy(), DType::F32, &mut rng)),
        ];
        for grads in [false, true] {
            let mut g = Graph::new();
            let value = g.input("value", &sh.value(), DType::F32).unwrap();
            let loc = g.input("loc", &sh.loc(), DType::F32).unwrap();
            let attn = g.input("attn", &sh.attn(), DType::F32).unwrap();
            let out = instagen::nn::msda::msda(&mut g, value, loc, attn, &sh.levels).unwrap();
            let feed: Vec<(String, HostTensor)> = if grads {
                let r = g.input("r", &sh.dy(), DType::F32).unwrap();
                let prod = g.mul(out, r).unwrap();
                let loss = g.sum_all(prod).unwrap();
                for d in instagen::graph::autodiff::backward(&mut g, loss, &[value, loc, attn]).unwrap() {
                    g.mark_output(d);
                }
                feed.clone()
            } else {
                g.mark_output(out);
                feed[..3].to_vec()
            };
            let mut ex = Executor::new(CpuBackend, g, &ParamStore::new()).unwrap();
            let name = if grads { "fwd+bwd" } else { "fwd" };
            group.bench_function(BenchmarkId::new(name, format!("B{batch}")), |b| b.iter(|| run(&mut ex, &feed)));
        }
    }
    group.finish();
}

criterion_group!(benches, matmul, memory_bound, transformer_step, msda);
criterion_main!(benches);
