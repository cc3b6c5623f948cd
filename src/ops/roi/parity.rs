//! Parity cases for `kernels/roi_align.cu` (RoI Align forward and backward, FPN levels); launcher
//! `ops/roi/launch.rs`.
//!
//! RoIs are drawn over an image slightly larger than the feature map covers (so some RoIs reach past its
//! edges), with batch indices up to one past the batch (invalid RoIs give zeros), at spatial scales 1, 1/4 and
//! 1/8, aligned or not, with fixed (2) and adaptive (0, -1) sampling ratios.

use crate::graph::UnaryOp;
use crate::parity::{frozen, frozen_rois, Case, Gen, Tol, Work};
use crate::graph::Op;
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// f32: sums of up to a few hundred weighted samples, accumulated in f32 in another order than the CPU's f64
/// (and, for the backward, per RoI): allow 2e-5 absolute on values of order 1.
fn roi_tol(dt: DType) -> Tol {
    if dt == DType::F32 { Tol { atol: 2e-5, rtol: 1e-5 } } else { Tol::for_dtype(dt) }
}

/// One RoI Align setting: (aligned, sampling ratio, spatial scale, out_h, out_w).
type Setting = (bool, i32, f32, usize, usize);

const SETTINGS: [Setting; 4] = [(false, 2, 0.25, 3, 2), (true, 0, 0.125, 2, 3), (true, -1, 1.0, 3, 3), (false, 0, 1.0, 2, 2)];

fn roi_op((aligned, sampling_ratio, spatial_scale, out_h, out_w): Setting) -> Op {
    Op::RoiAlign { out_h, out_w, spatial_scale, sampling_ratio, aligned }
}

/// RoI Align forward on features [n, h, w, c] with `k` RoIs drawn over an image 1.3x the map's extent.
pub fn roi_align_case(dt: DType, feat: [usize; 4], k: usize, s: Setting, tol: Tol) -> Case {
    let size = feat[1].max(feat[2]) as f32 / s.2 * 1.3;
    let name = format!("roi_align_fwd {dt} {feat:?} k={k} aligned={} sr={} scale={} out={}x{}", s.0, s.1, s.2, s.3, s.4);
    let ins = vec![
        (feat.to_vec(), dt, Gen::Normal),
        (vec![k, 5], DType::F32, Gen::Rois { images: feat[0] + 1, size }),
    ];
    let kernel = format!("roi_align_fwd_{dt}");
    let op = roi_op(s);
    Case::new(name, ins, tol, &[&kernel], move |g, x| g.push(op.clone(), &[x[0], x[1]]))
}

/// RoI Align backward: dfeat [n, h, w, c] from `k` RoIs and a random dy.
pub fn roi_align_bwd_case(dt: DType, feat: [usize; 4], k: usize, s: Setting, tol: Tol) -> Case {
    let (aligned, sampling_ratio, spatial_scale, out_h, out_w) = s;
    let size = feat[1].max(feat[2]) as f32 / spatial_scale * 1.3;
    let name = format!("roi_align_bwd {dt} {feat:?} k={k} aligned={aligned} sr={sampling_ratio} scale={spatial_scale} out={out_h}x{out_w}");
    let ins = vec![
        (vec![k, 5], DType::F32, Gen::Rois { images: feat[0] + 1, size }),
        (vec![k, out_h, out_w, feat[3]], dt, Gen::Normal),
    ];
    let kernel = format!("roi_align_bwd_{dt}");
    let op = Op::RoiAlignBwd { out_h, out_w, spatial_scale, sampling_ratio, aligned, n: feat[0], h: feat[1], w: feat[2] };
    Case::new(name, ins, tol, &[&kernel], move |g, x| g.push(op.clone(), &[x[0], x[1]]))
}

/// RoI Align forward or backward (f32, features [2, 7, 9, 3]) on RoIs whose corners are swapped.
fn inverted_case(s: Setting, bwd: bool) -> Case {
    let (aligned, sampling_ratio, spatial_scale, out_h, out_w) = s;
    let feat = [2usize, 7, 9, 3];
    let pass = if bwd { "bwd" } else { "fwd" };
    let name = format!("roi_align_{pass} f32 inverted rois aligned={aligned} sr={sampling_ratio}");
    let rois = (vec![6, 5], DType::F32, Gen::Rois { images: 2, size: 9.0 / spatial_scale });
    let kernel = format!("roi_align_{pass}_f32");
    let swap = |g: &mut crate::graph::Graph, r| -> crate::error::Result<crate::graph::NodeId> {
        let b = g.slice(r, 1, 0, 1)?;
        let lo = g.slice(r, 1, 1, 3)?;
        let hi = g.slice(r, 1, 3, 5)?;
        g.concat(&[b, hi, lo], 1)
    };
    if bwd {
        let ins = vec![rois, (vec![6, out_h, out_w, 3], DType::F32, Gen::Normal)];
        let op = Op::RoiAlignBwd { out_h, out_w, spatial_scale, sampling_ratio, aligned, n: 2, h: 7, w: 9 };
        Case::new(name, ins, roi_tol(DType::F32), &[&kernel], move |g, x| {
            let r = swap(g, x[0])?;
            g.push(op.clone(), &[r, x[1]])
        })
    } else {
        let ins = vec![(feat.to_vec(), DType::F32, Gen::Normal), rois];
        let op = roi_op(s);
        Case::new(name, ins, roi_tol(DType::F32), &[&kernel], move |g, x| {
            let r = swap(g, x[1])?;
            g.push(op.clone(), &[x[0], r])
        })
    }
}

/// torchvision's MultiScaleRoIAlign mapper for P2..P5.
pub const FPN_LEVELS: Op = Op::FpnLevels { k_min: 2, k_max: 5, canonical_scale: 224.0, canonical_level: 4, eps: 1e-6 };

fn fpn_case(dt: DType, k: usize, cols: usize) -> Case {
    let g = if cols == 5 { Gen::Rois { images: 2, size: 1000.0 } } else { Gen::Boxes(1000.0) };
    let kernel = format!("fpn_levels_fwd_{dt}");
    Case::new(format!("fpn_levels {dt} [{k}, {cols}]"), vec![(vec![k, cols], dt, g)], Tol::for_dtype(DType::F32), &[&kernel], |g, x| {
        let l = g.push(FPN_LEVELS, &[x[0]])?;
        g.cast(l, DType::F32)
    })
}

/// Parity cases.
fn kernel_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        for (i, s) in SETTINGS.into_iter().enumerate() {
            // Odd channel counts; one setting with a single channel and a 1-pixel-high map.
            let feat = match i {
                0 => [2, 9, 11, 5],
                1 => [2, 6, 7, 3],
                2 => [1, 1, 8, 1],
                _ => [3, 5, 4, 2],
            };
            v.push(roi_align_case(dt, feat, 7, s, roi_tol(dt)));
            v.push(roi_align_bwd_case(dt, feat, 7, s, roi_tol(dt)));
        }
        if dt == DType::F32 {
            // Inverted RoIs (x2 < x1, y2 < y1): aligned ones with a fixed sampling ratio sample backwards.
            for s in [(true, 2, 0.25, 2, 3), (false, 2, 0.25, 2, 2), (true, 0, 0.25, 2, 2)] {
                v.push(inverted_case(s, false));
                v.push(inverted_case(s, true));
            }
        }
        v.push(fpn_case(dt, 300, 5));
        v.push(fpn_case(dt, 50, 4));
    }
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let mut v = Vec::new();
    // Faster R-CNN box head on P3 of an 800x1344 batch of 2: 512 RoIs per image, 7x7, sampling ratio 2.
    let feat = [2, 100, 168, 256];
    let (k, o) = (1024, 7);
    let s: Setting = (true, 2, 0.125, o, o);
    let fbytes = feat.iter().product::<usize>() * 2;
    let obytes = k * o * o * feat[3] * 2;
    // Bytes: the features (or dfeat) once, the RoIs, the output (or dy) once: the least traffic possible.
    let work = Work::Bytes((fbytes + obytes + k * 20) as u64);
    v.push((roi_align_case(DType::F16, feat, k, s, roi_tol(DType::F16)), work));
    v.push((roi_align_bwd_case(DType::F16, feat, k, s, roi_tol(DType::F16)), work));
    v.push((fpn_case(DType::F32, 2000, 5), Work::Bytes(2000 * 28)));
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks: RoI Align is linear in the features (the bilinear kinks are in the RoI coordinates, which
/// are frozen); the FPN level of each RoI is used as a (non-differentiable) weight.
fn grad_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (aligned, sr, scale) in [(false, 2, 1.0), (true, 0, 0.5), (true, -1, 0.25), (false, 0, 1.0)] {
        let name = format!("roi_align aligned={aligned} sampling_ratio={sr} spatial_scale={scale}");
        v.push(Case::grad(name, &[(&[2, 10, 12, 3], Gen::Normal), (&[4, 5], Gen::GridB)], move |g, x| {
            let rois = frozen_rois(g, x[1], 1.0 / scale)?;
            let op = Op::RoiAlign { out_h: 2, out_w: 3, spatial_scale: scale, sampling_ratio: sr, aligned };
            g.push(op, &[x[0], rois])
        }));
    }
    // Levels 0..3 of canonical 224 at level 4.
    v.push(Case::grad("fpn_levels (as a constant factor)", &[(&[6, 3], Gen::Normal), (&[6, 5], Gen::GridB)], |g, x| {
        let r = frozen(g, x[1])?;
        let r = g.unary(UnaryOp::Abs, r)?;
        let r = g.affine(r, 30.0, 1.0)?;
        let lo = g.slice(r, 1, 0, 3)?;
        let wh = g.slice(r, 1, 3, 5)?;
        let xy = g.slice(lo, 1, 1, 3)?;
        let hi = g.add(xy, wh)?;
        let rois = g.concat(&[lo, hi], 1)?;
        let op = Op::FpnLevels { k_min: 2, k_max: 5, canonical_scale: 224.0, canonical_level: 4, eps: 1e-6 };
        let lv = g.push(op, &[rois])?;
        let lv = g.cast(lv, DType::F32)?;
        let lv = g.affine(lv, 0.5, 1.0)?;
        let lv = g.reshape(lv, &[6, 1])?;
        g.mul(x[0], lv)
    }));
    v
}
