//! Detection ops on the CPU backend: batched NMS on 1k / 10k / 100k boxes (80 classes), top-k and IoU at
//! detector sizes. The boxes come from `nms_boxes` (SplitMix64, seed 7); `tools/bench_nms_torchvision.py`
//! regenerates the same boxes bit for bit and times torchvision.ops.batched_nms on them, the peer.
//!
//! `max_out` = n keeps everything (the same work as torchvision); `max_out` = 1000 is what detectors use.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use instagen::backend::cpu::CpuBackend;
use instagen::graph::{Graph, Op};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};
use std::hint::black_box;

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 24 bits (exact in f32).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `n` boxes in a 1024 x 1024 image (sides 16..256), scores in [0, 1), classes in 0..80.
fn nms_boxes(n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut r = SplitMix(7);
    let (mut b, mut s, mut c) = (Vec::with_capacity(4 * n), Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let (x, y) = (r.unit() * 1024.0, r.unit() * 1024.0);
        let (w, h) = (16.0 + r.unit() * 240.0, 16.0 + r.unit() * 240.0);
        b.extend([x, y, x + w, y + h]);
        s.push(r.unit());
        c.push((r.next() % 80) as f32);
    }
    (b, s, c)
}

fn nms(c: &mut Criterion) {
    let mut group = c.benchmark_group("nms_cpu");
    group.sample_size(10);
    for n in [1000usize, 10_000, 100_000] {
        let (b, s, cl) = nms_boxes(n);
        let caps = if n > 1000 { vec![n, 1000] } else { vec![n] };
        for max_out in caps {
            let mut g = Graph::new();
            let ib = g.param("b", &[n, 4], DType::F32).unwrap();
            let is = g.param("s", &[n], DType::F32).unwrap();
            let ic = g.param("c", &[n], DType::I64).unwrap();
            let out = g.push(Op::Nms { iou_threshold: 0.5, max_out }, &[ib, is, ic]).unwrap();
            g.mark_output(out);
            let mut store = ParamStore::new();
            store.insert("b", HostTensor::from_f32(&[n, 4], DType::F32, &b).unwrap());
            store.insert("s", HostTensor::from_f32(&[n], DType::F32, &s).unwrap());
            store.insert("c", HostTensor::from_f32(&[n], DType::I64, &cl).unwrap());
            let mut ex = Executor::new(CpuBackend, g, &store).unwrap();
            ex.run(&[]).unwrap();
            let kept = *ex.get(out).unwrap().to_i64().last().unwrap();
            eprintln!("nms n={n} max_out={max_out}: kept {kept}");
            let id = BenchmarkId::from_parameter(format!("{n}_max{max_out}"));
            group.bench_function(id, |bch| bch.iter(|| black_box(ex.run(&[]).unwrap())));
        }
    }
    group.finish();
}

fn topk_and_iou(c: &mut Criterion) {
    let mut group = c.benchmark_group("box_ops_cpu");
    group.sample_size(10);
    let (b, s, _) = nms_boxes(200_000);
    // Top 1000 of 200k scores (the RPN's pre-NMS selection on one FPN level).
    let row = s.clone();
    group.bench_function("topk_200k_k1000", |bch| {
        bch.iter(|| black_box(instagen::detection::boxes::topk_row(&row, 1000)))
    });
    // IoU of 200k anchors against 20 ground-truth boxes.
    let mut out = vec![0f32; 200_000 * 20];
    let gt = b[..80].to_vec();
    group.bench_function("iou_200k_x_20", |bch| {
        bch.iter(|| instagen::detection::boxes::iou_matrix(black_box(&b), &gt, false, &mut out))
    });
    group.finish();
}

criterion_group!(benches, nms, topk_and_iou);
criterion_main!(benches);
