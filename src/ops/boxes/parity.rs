//! Parity cases: box ops and NMS (`kernels/boxes.cu`), top-k and gather (`kernels/topk.cu`); launcher
//! `ops/boxes/launch.rs`.
//!
//! Index outputs (NMS, top-k) must match exactly: their tolerance (0.5) is below the distance of two indices.
//! f16/bf16 scores make ties common (bf16 has 128 values in [0.5, 1)), which checks the tie order (lower index
//! first) on both sides.

use crate::parity::{constant, Case, Gen, Tol, Work};
use crate::boxes::BBOX_XFORM_CLIP;
use crate::graph::Op;
use crate::tensor::DType;

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const INDEX: [DType; 2] = [DType::I32, DType::I64];
/// Exact integer results (indices, counts).
const EXACT: Tol = Tol { atol: 0.5, rtol: 0.0 };
const WEIGHTS: [f32; 4] = [10.0, 10.0, 5.0, 5.0];

fn box_iou_case(dt: DType, a: &[usize], b: &[usize], giou: bool) -> Case {
    let name = format!("box_iou{} {dt} {a:?} x {b:?}", if giou { " giou" } else { "" });
    let ins = vec![(a.to_vec(), dt, Gen::Boxes(100.0)), (b.to_vec(), dt, Gen::Boxes(100.0))];
    // f16/bf16 boxes are rounded before the IoU; both sides compute from the same stored values, but the
    // f32 result is rounded to the storage type once more: the dtype's default tolerance.
    let kernel = format!("box_iou_fwd_{dt}");
    Case::new(name, ins, Tol::for_dtype(dt), &[&kernel], move |g, x| g.push(Op::BoxIou { giou }, &[x[0], x[1]]))
}

fn encode_case(dt: DType, n: usize) -> Case {
    let ins = vec![(vec![n, 4], dt, Gen::Boxes(200.0)), (vec![n, 4], dt, Gen::Boxes(200.0))];
    let kernel = format!("box_encode_fwd_{dt}");
    // logf on the GPU is within 1 ulp; the deltas of nearly equal sizes are small differences of larger
    // terms, so allow 1e-5 absolute on top of the f32 default.
    let tol = if dt == DType::F32 { Tol { atol: 1e-5, rtol: 1e-5 } } else { Tol::for_dtype(dt) };
    Case::new(format!("box_encode {dt} [{n}, 4]"), ins, tol, &[&kernel], |g, x| {
        g.push(Op::BoxEncode { weights: WEIGHTS }, &[x[0], x[1]])
    })
}

fn decode_case(dt: DType, n: usize, k: usize, weights: [f32; 4], spread: f32) -> Case {
    let ins = vec![(vec![n, 4], dt, Gen::Boxes(200.0)), (vec![n, 4 * k], dt, Gen::Uniform(-spread, spread))];
    let kernel = format!("box_decode_fwd_{dt}");
    let name = format!("box_decode {dt} [{n}, {}] weights {weights:?}", 4 * k);
    // expf within 2 ulp on the GPU, times widths up to 100 and added to centres up to 200.
    let tol = if dt == DType::F32 { Tol { atol: 1e-4, rtol: 2e-5 } } else { Tol::for_dtype(dt) };
    Case::new(name, ins, tol, &[&kernel], move |g, x| {
        g.push(Op::BoxDecode { weights, clamp: BBOX_XFORM_CLIP }, &[x[0], x[1]])
    })
}

fn nms_case(sd: DType, cd: DType, n: usize, classes: usize, iou: f32, max_out: usize) -> Case {
    let ins = vec![
        (vec![n, 4], DType::F32, Gen::Boxes(100.0)),
        (vec![n], sd, Gen::Uniform(0.0, 1.0)),
        (vec![n], cd, Gen::Index(classes)),
    ];
    let kernel = format!("nms_fwd_{sd}_{cd}");
    let name = format!("nms {sd} {cd} n {n} classes {classes} iou {iou} max_out {max_out}");
    Case::new(name, ins, EXACT, &[&kernel], move |g, x| {
        g.push(Op::Nms { iou_threshold: iou, max_out }, &[x[0], x[1], x[2]])
    })
}

fn topk_case(dt: DType, shape: &[usize], k: usize, how: Gen) -> Case {
    let kernel = format!("topk_fwd_{dt}");
    let name = format!("topk {dt} {shape:?} k {k} {how:?}");
    Case::new(name, vec![(shape.to_vec(), dt, how)], EXACT, &[&kernel], move |g, x| g.push(Op::TopK { k }, &[x[0]]))
}

fn gather_case(dt: DType, it: DType, x: &[usize], idx: &[usize], axis: usize) -> Case {
    let how = if dt.is_float() { Gen::Normal } else { Gen::Index(1000) };
    let ins = vec![(x.to_vec(), dt, how), (idx.to_vec(), it, Gen::Index(x[axis]))];
    let kernel = format!("gather_fwd_{it}_{dt}");
    let name = format!("gather {dt} {it} {x:?} idx {idx:?} axis {axis}");
    // A copy: exact.
    Case::new(name, ins, Tol { atol: 0.0, rtol: 0.0 }, &[&kernel], move |g, x| g.push(Op::Gather { axis }, &[x[0], x[1]]))
}

fn gather_bwd_case(dt: DType, it: DType, shape: &[usize], axis: usize, size: usize) -> Case {
    let ins = vec![(shape.to_vec(), it, Gen::Index(size)), (shape.to_vec(), dt, Gen::Normal)];
    let kernel = format!("gather_bwd_{it}_{dt}");
    let name = format!("gather_bwd {dt} {it} {shape:?} axis {axis} size {size}");
    // Sums of a few terms: f32 sums on the GPU vs f64 on the CPU.
    Case::new(name, ins, Tol::for_dtype(dt), &[&kernel], move |g, x| {
        g.push(Op::GatherBwd { axis, size }, &[x[0], x[1]])
    })
}

/// Parity cases.
fn kernel_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in FLOATS {
        v.push(box_iou_case(dt, &[3, 5, 4], &[3, 7, 4], false));
        v.push(box_iou_case(dt, &[6, 4], &[9, 4], true));
        v.push(encode_case(dt, 13));
        v.push(decode_case(dt, 11, 3, WEIGHTS, 3.0));
        // Unit weights and deltas up to 6: dw/dh above the clamp ln(1000/16) are clamped.
        v.push(decode_case(dt, 7, 1, [1.0; 4], 6.0));
        v.push(topk_case(dt, &[3, 300], 10, Gen::Normal));
        v.push(topk_case(dt, &[2, 77], 77, Gen::Uniform(-1.0, 1.0)));
    }
    // Many ties: the equal keys at the threshold are taken by lowest index.
    v.push(topk_case(DType::F32, &[4, 500], 100, Gen::Index(5)));
    v.push(topk_case(DType::BF16, &[1, 1500], 300, Gen::Uniform(0.0, 1.0)));
    for sd in FLOATS {
        for cd in INDEX {
            v.push(nms_case(sd, cd, 150, 3, 0.5, 200));
        }
    }
    // The cap, a single class, a low and a high threshold.
    v.push(nms_case(DType::F32, DType::I64, 300, 1, 0.3, 20));
    v.push(nms_case(DType::F32, DType::I32, 200, 5, 0.7, 1000));
    v.push(nms_case(DType::F16, DType::I64, 1, 1, 0.5, 4));
    // More boxes than threads (each thread scans several), stopped by the cap.
    v.push(nms_case(DType::F32, DType::I64, 1500, 20, 0.5, 60));
    for it in INDEX {
        for dt in [DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64] {
            v.push(gather_case(dt, it, &[4, 7, 5], &[4, 3, 5], 1));
        }
        // idx smaller than x off the axis, other axes.
        v.push(gather_case(DType::F32, it, &[5, 6], &[3, 4], 0));
        v.push(gather_case(DType::F32, it, &[2, 3, 9], &[2, 2, 4], 2));
        for dt in FLOATS {
            v.push(gather_bwd_case(dt, it, &[4, 9, 5], 1, 6));
        }
        v.push(gather_bwd_case(DType::F32, it, &[3, 8], 1, 20));
    }
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let mut v = Vec::new();
    // NMS at detector sizes: 1k (after a per-image top-k), 10k (RPN proposals), 100k (many classes' boxes).
    for n in [1000usize, 10_000, 100_000] {
        let bytes = (n * (16 + 4 + 8) + 8 * 1001) as u64;
        v.push((nms_case(DType::F32, DType::I64, n, 80, 0.5, 1000), Work::Bytes(bytes)));
    }
    // Top-k: the RPN's pre-NMS top 1000 of one FPN level's objectness (200k anchors), and of 8 rows.
    v.push((topk_case(DType::F32, &[1, 200_000], 1000, Gen::Normal), Work::Bytes(200_000 * 4 + 8000)));
    v.push((topk_case(DType::F16, &[8, 20_000], 1000, Gen::Normal), Work::Bytes(8 * (20_000 * 2 + 8000))));
    // IoU of 200k anchors against 20 ground-truth boxes (target assignment), GIoU 900 queries x 20 (DETR).
    v.push((box_iou_case(DType::F32, &[200_000, 4], &[20, 4], false), Work::Bytes(200_000 * 16 + 200_000 * 20 * 4)));
    v.push((box_iou_case(DType::F32, &[8, 900, 4], &[8, 20, 4], true), Work::Bytes(8 * (900 * 16 + 900 * 20 * 4))));
    v.push((encode_case(DType::F32, 200_000), Work::Bytes(200_000 * 48)));
    // Faster R-CNN box head: 1000 proposals x 91 classes.
    v.push((decode_case(DType::F32, 1000, 91, WEIGHTS, 1.0), Work::Bytes((1000 * 16 + 2 * 1000 * 364 * 4) as u64)));
    // Reading the top-k values back, and its gradient.
    v.push((gather_case(DType::F32, DType::I64, &[8, 20_000], &[8, 1000], 1), Work::Bytes(8 * 1000 * (8 + 4 + 4))));
    v.push((gather_bwd_case(DType::F32, DType::I64, &[8, 1000], 1, 2000), Work::Bytes(8 * (1000 * 12 + 2000 * 4))));
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks: gather (with top-k indices, and along axis 0 with smaller and repeated indices); the
/// non-differentiable box ops run on constant boxes and scale a differentiable input.
fn grad_cases() -> Vec<Case> {
    // Values 0.07 apart, so +-h never changes which are the top 3; TopK itself has no gradient.
    let mut v = vec![
        Case::grad("gather of topk", &[(&[3, 8], Gen::Distinct)], |g, x| {
            let idx = g.push(Op::TopK { k: 3 }, &[x[0]])?;
            g.push(Op::Gather { axis: 1 }, &[x[0], idx])
        }),
        Case::grad("gather axis 0, smaller idx", &[(&[4, 6], Gen::Normal), (&[5, 4], Gen::Distinct)], |g, x| {
            let idx = g.push(Op::TopK { k: 2 }, &[x[1]])?; // [5, 2], values in 0..4
            let idx = g.permute(idx, &[1, 0])?; // [2, 5]
            let twice = g.concat(&[idx, idx], 0)?; // [4, 5]: every index twice
            g.push(Op::Gather { axis: 0 }, &[x[0], twice])
        }),
    ];
    let a = [0.0, 0.0, 10.0, 10.0, 5.0, 5.0, 15.0, 20.0, 2.0, 1.0, 9.0, 12.0];
    let b = [1.0, 1.0, 11.0, 9.0, 30.0, 30.0, 40.0, 45.0];
    v.push(Case::grad("box_iou / giou on constant boxes", &[(&[3, 2], Gen::Normal)], move |g, x| {
        let (ca, cb) = (constant(g, &a, &[3, 4])?, constant(g, &b, &[2, 4])?);
        let iou = g.push(Op::BoxIou { giou: false }, &[ca, cb])?;
        let giou = g.push(Op::BoxIou { giou: true }, &[ca, cb])?;
        let y = g.mul(x[0], iou)?;
        g.add(y, giou)
    }));
    v.push(Case::grad("box_encode / decode on constant boxes", &[(&[3, 4], Gen::Normal)], move |g, x| {
        let (r, t) = (constant(g, &a, &[3, 4])?, constant(g, &[&b[..], &b[..4]].concat(), &[3, 4])?);
        let d = g.push(Op::BoxEncode { weights: [10.0, 10.0, 5.0, 5.0] }, &[r, t])?;
        let back = g.push(Op::BoxDecode { weights: [10.0, 10.0, 5.0, 5.0], clamp: 4.135 }, &[r, d])?;
        let y = g.mul(x[0], d)?;
        g.add(y, back)
    }));
    v.push(Case::grad("nms on constant boxes", &[(&[4], Gen::Normal)], move |g, x| {
        let bx = constant(g, &a, &[3, 4])?;
        let s = constant(g, &[0.9, 0.8, 0.7], &[3])?;
        let c = constant(g, &[0.0, 0.0, 1.0], &[3])?;
        let c = g.cast(c, DType::I64)?;
        let keep = g.push(Op::Nms { iou_threshold: 0.3, max_out: 3 }, &[bx, s, c])?;
        let keep = g.cast(keep, DType::F32)?;
        g.mul(x[0], keep)
    }));
    v
}
