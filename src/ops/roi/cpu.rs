//! RoI Align (forward and the gradient w.r.t. the features) on NHWC features, and the FPN level mapper, as
//! torchvision.ops.roi_align and torchvision.ops.poolers.LevelMapper define them.
//!
//! Sampling geometry (torchvision, all in f32): with `off = 0.5` when `aligned` (else 0), a RoI starts at
//! `x1 * scale - off` and is `(x2 - x1) * scale` wide (at least 1 when not aligned); each of the `out_h x out_w`
//! bins averages `gh x gw` bilinear samples (`sampling_ratio`, or `ceil(roi_h / out_h)` when it is <= 0) at
//! `y = y1 + ph * bin_h + (iy + 0.5) * bin_h / gh`. A sample with `y < -1 || y > H` (or in x) contributes 0;
//! otherwise `y` is clamped to >= 0 and to row H-1 at the bottom edge. A RoI whose batch index is not in
//! `[0, N)` gives zeros (torchvision would read out of bounds).

use crate::backend::cpu::kernels::{COST_ARITH, View, cpu_err, floats, par_chunks_unit, with_f32_out};
use crate::ops::Op;
use crate::error::Result;

/// The sampling geometry of one RoI.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RoiGeom {
    pub batch: Option<usize>,
    pub y1: f32,
    pub x1: f32,
    pub bin_h: f32,
    pub bin_w: f32,
    pub gh: usize,
    pub gw: usize,
    /// 1 / max(gh * gw, 1).
    pub inv_count: f32,
}

pub(crate) fn roi_geom(
    roi: &[f32],
    n: usize,
    out_h: usize,
    out_w: usize,
    scale: f32,
    sampling_ratio: i32,
    aligned: bool,
) -> RoiGeom {
    let b = roi[0];
    let batch = if b >= 0.0 && (b as usize) < n { Some(b as usize) } else { None };
    let off = if aligned { 0.5f32 } else { 0.0 };
    let (x1, y1) = (roi[1] * scale - off, roi[2] * scale - off);
    let (x2, y2) = (roi[3] * scale - off, roi[4] * scale - off);
    let (mut rw, mut rh) = (x2 - x1, y2 - y1);
    if !aligned {
        rw = rw.max(1.0);
        rh = rh.max(1.0);
    }
    let (bin_h, bin_w) = (rh / out_h as f32, rw / out_w as f32);
    let grid = |r: f32, o: usize| -> usize {
        if sampling_ratio > 0 { sampling_ratio as usize } else { (r / o as f32).ceil().max(0.0) as usize }
    };
    let (gh, gw) = (grid(rh, out_h), grid(rw, out_w));
    RoiGeom { batch, y1, x1, bin_h, bin_w, gh, gw, inv_count: 1.0 / (gh * gw).max(1) as f32 }
}

/// Position of sample `i` (of `g`) in bin `p` along one axis.
#[inline]
pub(crate) fn sample_pos(start: f32, p: usize, bin: f32, i: usize, g: usize) -> f32 {
    start + p as f32 * bin + (i as f32 + 0.5) * bin / g as f32
}

/// Bilinear taps of a sample at `y` on an axis of `size` pixels: (low, high, weight low, weight high), or
/// `None` when the sample lies outside `[-1, size]`.
#[inline]
pub(crate) fn axis_taps(y: f32, size: usize) -> Option<(usize, usize, f32, f32)> {
    if y < -1.0 || y > size as f32 || size == 0 {
        return None;
    }
    let y = if y <= 0.0 { 0.0 } else { y };
    let lo = y as usize;
    if lo >= size - 1 {
        return Some((size - 1, size - 1, 1.0, 0.0));
    }
    let l = y - lo as f32;
    Some((lo, lo + 1, 1.0 - l, l))
}

pub(super) struct RoiParams {
    pub out_h: usize,
    pub out_w: usize,
    pub scale: f32,
    pub sampling_ratio: i32,
    pub aligned: bool,
}

pub(super) fn roi_align(p: &RoiParams, feat: &View, rois: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let &[n, h, w, c] = feat.shape else { return Err(cpu_err("roi_align: features must be [N,H,W,C]")) };
    let (fs, rs) = (floats(feat), floats(rois));
    let bin_elems = c;
    with_f32_out(out.dtype, out_bytes, |o| {
        if c == 0 {
            return Ok(());
        }
        // One unit = the C channels of one output bin.
        par_chunks_unit(o, bin_elems, COST_ARITH * 16, |start, chunk| {
            let mut acc = vec![0f64; c];
            for (bi, ob) in chunk.chunks_mut(c).enumerate() {
                let bin = start / c + bi;
                let (k, ph, pw) = (bin / (p.out_h * p.out_w), bin / p.out_w % p.out_h, bin % p.out_w);
                let g = roi_geom(&rs[k * 5..k * 5 + 5], n, p.out_h, p.out_w, p.scale, p.sampling_ratio, p.aligned);
                acc.fill(0.0);
                if let Some(b) = g.batch {
                    let img = &fs[b * h * w * c..(b + 1) * h * w * c];
                    for iy in 0..g.gh {
                        let Some((yl, yh, wyl, wyh)) = axis_taps(sample_pos(g.y1, ph, g.bin_h, iy, g.gh), h) else {
                            continue;
                        };
                        for ix in 0..g.gw {
                            let Some((xl, xh, wxl, wxh)) = axis_taps(sample_pos(g.x1, pw, g.bin_w, ix, g.gw), w)
                            else {
                                continue;
                            };
                            let taps = [(yl, xl, wyl * wxl), (yl, xh, wyl * wxh), (yh, xl, wyh * wxl), (yh, xh, wyh * wxh)];
                            for (y, x, wt) in taps {
                                let px = &img[(y * w + x) * c..(y * w + x + 1) * c];
                                for (a, &v) in acc.iter_mut().zip(px) {
                                    *a += wt as f64 * v as f64;
                                }
                            }
                        }
                    }
                }
                for (o, a) in ob.iter_mut().zip(&acc) {
                    *o = (*a * g.inv_count as f64) as f32;
                }
            }
        });
        Ok(())
    })
}

pub(super) fn roi_align_bwd(p: &RoiParams, rois: &View, dy: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let &[n, h, w, c] = out.shape else { return Err(cpu_err("roi_align_bwd: output must be [N,H,W,C]")) };
    let (rs, gs) = (floats(rois), floats(dy));
    let k_count = rois.shape[0];
    let img = h * w * c;
    with_f32_out(out.dtype, out_bytes, |o| {
        // Images are independent: each accumulates the RoIs that point at it (in RoI order) in f64.
        par_chunks_unit(o, img.max(1), COST_ARITH * 64, |start, chunk| {
            let mut acc = vec![0f64; img];
            for (ii, oimg) in chunk.chunks_mut(img.max(1)).enumerate() {
                let b = start / img.max(1) + ii;
                acc.fill(0.0);
                for k in 0..k_count {
                    let g = roi_geom(&rs[k * 5..k * 5 + 5], n, p.out_h, p.out_w, p.scale, p.sampling_ratio, p.aligned);
                    if g.batch != Some(b) {
                        continue;
                    }
                    for ph in 0..p.out_h {
                        for pw in 0..p.out_w {
                            let d0 = ((k * p.out_h + ph) * p.out_w + pw) * c;
                            let d = &gs[d0..d0 + c];
                            for iy in 0..g.gh {
                                let Some((yl, yh, wyl, wyh)) = axis_taps(sample_pos(g.y1, ph, g.bin_h, iy, g.gh), h)
                                else {
                                    continue;
                                };
                                for ix in 0..g.gw {
                                    let Some((xl, xh, wxl, wxh)) =
                                        axis_taps(sample_pos(g.x1, pw, g.bin_w, ix, g.gw), w)
                                    else {
                                        continue;
                                    };
                                    let taps =
                                        [(yl, xl, wyl * wxl), (yl, xh, wyl * wxh), (yh, xl, wyh * wxl), (yh, xh, wyh * wxh)];
                                    for (y, x, wt) in taps {
                                        let wt = wt as f64 * g.inv_count as f64;
                                        let a = &mut acc[(y * w + x) * c..(y * w + x + 1) * c];
                                        for (av, &dv) in a.iter_mut().zip(d) {
                                            *av += wt * dv as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                for (ov, a) in oimg.iter_mut().zip(&acc) {
                    *ov = *a as f32;
                }
            }
        });
        Ok(())
    })
}

/// torchvision LevelMapper, in f32 as torch computes it (`floor(k0 + log2(s / s0) + eps)`: torchvision adds eps
/// to the level, not inside the log); a NaN level (degenerate box) maps to `k_min`.
pub(crate) fn fpn_level(box4: &[f32], k_min: i32, k_max: i32, s0: f32, k0: i32, eps: f32) -> i64 {
    let area = (box4[2] - box4[0]) * (box4[3] - box4[1]);
    let s = area.sqrt();
    let l = ((k0 as f32 + (s / s0).log2()) + eps).floor();
    let l = if l.is_nan() { k_min as f32 } else { l.clamp(k_min as f32, k_max as f32) };
    l as i64 - k_min as i64
}

pub(super) fn fpn_levels(
    (k_min, k_max, s0, k0, eps): (i32, i32, f32, i32, f32),
    rois: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    let rs = floats(rois);
    let cols = rois.shape[1];
    for (r, o) in rs.chunks_exact(cols).zip(out_bytes.chunks_exact_mut(8)) {
        let v = fpn_level(&r[cols - 4..], k_min, k_max, s0, k0, eps);
        o.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::RoiAlign { out_h, out_w, spatial_scale, sampling_ratio, aligned } => {
            let p = RoiParams {
                out_h: *out_h,
                out_w: *out_w,
                scale: *spatial_scale,
                sampling_ratio: *sampling_ratio,
                aligned: *aligned,
            };
            roi_align(&p, &ins[0], &ins[1], out, out_bytes)
        }
        Op::RoiAlignBwd { out_h, out_w, spatial_scale, sampling_ratio, aligned, .. } => {
            let p = RoiParams {
                out_h: *out_h,
                out_w: *out_w,
                scale: *spatial_scale,
                sampling_ratio: *sampling_ratio,
                aligned: *aligned,
            };
            roi_align_bwd(&p, &ins[0], &ins[1], out, out_bytes)
        }
        Op::FpnLevels { k_min, k_max, canonical_scale, canonical_level, eps } => {
            fpn_levels((*k_min, *k_max, *canonical_scale, *canonical_level, *eps), &ins[0], out_bytes)
        }
        _ => Err(cpu_err(format!("{} is not a roi op", op.describe()))),
    }
}
