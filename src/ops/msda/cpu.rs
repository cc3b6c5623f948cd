//! CPU reference of the MSDA ops (f64 accumulation; the sampling geometry in f32 exactly as the kernels compute
//! it). Layouts and semantics: `ops/msda/mod.rs`.

use super::Dims;
use crate::backend::cpu::kernels::{COST_ARITH, View, cpu_err, floats, par_chunks_unit, with_f32_out};
use crate::error::Result;
use crate::ops::Op;

/// The four bilinear corners of one sample on an `h x w` level, in the order (y0, x0), (y0, x1), (y1, x0),
/// (y1, x1): the pixel index inside the level (`None` outside the map: zero padding), the weight, and the
/// derivatives of the weight w.r.t. the pixel coordinates x and y.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Corners {
    pub idx: [Option<usize>; 4],
    pub w: [f32; 4],
    pub dwx: [f32; 4],
    pub dwy: [f32; 4],
}

/// Pixel coordinate of a normalised location on an axis of `size` pixels (`grid_sample` with
/// align_corners=False), clamped into [-2, size + 1] (outside it every corner is off the map either way; NaN
/// lands on -2).
#[inline]
pub(crate) fn pixel(loc: f32, size: usize) -> f32 {
    (loc * size as f32 - 0.5).max(-2.0).min(size as f32 + 1.0)
}

#[inline]
pub(crate) fn corners(lx: f32, ly: f32, h: usize, w: usize) -> Corners {
    let (x, y) = (pixel(lx, w), pixel(ly, h));
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (gx, gy) = (1.0 - fx, 1.0 - fy);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let at = |yy: i64, xx: i64| -> Option<usize> {
        (yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w).then(|| yy as usize * w + xx as usize)
    };
    Corners {
        idx: [at(y0, x0), at(y0, x0 + 1), at(y0 + 1, x0), at(y0 + 1, x0 + 1)],
        w: [gy * gx, gy * fx, fy * gx, fy * fx],
        dwx: [-gy, gy, -fy, fy],
        dwy: [-gx, -fx, gx, fx],
    }
}

/// Forward: `out [B, Q, H*D]`.
pub(crate) fn forward(dm: &Dims, value: &[f32], loc: &[f32], attn: &[f32], out: &mut [f32]) {
    let (h, d, l, p) = (dm.h, dm.d, dm.l(), dm.p);
    if h * d == 0 {
        return;
    }
    let work = l * p * 4 * COST_ARITH;
    par_chunks_unit(out, h * d, work, |start, chunk| {
        let mut acc = vec![0f64; d];
        for (ri, row) in chunk.chunks_mut(d).enumerate() {
            let r = start / d + ri; // (b, q, h)
            let (b, hh) = (r / (dm.q * h), r % h);
            acc.fill(0.0);
            for li in 0..l {
                let [lh, lw] = dm.levels[li];
                for pi in 0..p {
                    let k = (r * l + li) * p + pi;
                    let c = corners(loc[2 * k], loc[2 * k + 1], lh, lw);
                    let a = attn[k] as f64;
                    for ci in 0..4 {
                        let Some(pix) = c.idx[ci] else { continue };
                        let wt = a * c.w[ci] as f64;
                        let v0 = ((b * dm.s + dm.starts[li] + pix) * h + hh) * d;
                        for (acc_v, &v) in acc.iter_mut().zip(&value[v0..v0 + d]) {
                            *acc_v += wt * v as f64;
                        }
                    }
                }
            }
            for (o, a) in row.iter_mut().zip(&acc) {
                *o = *a as f32;
            }
        }
    });
}

/// Gradient w.r.t. value: `dvalue [B, S, H, D]`, one sample image at a time, every sample's corners added in
/// (q, h, l, p) order in f64.
pub(crate) fn bwd_value(dm: &Dims, loc: &[f32], attn: &[f32], dy: &[f32], out: &mut [f32]) {
    let (h, d, l, p) = (dm.h, dm.d, dm.l(), dm.p);
    let img = dm.s * h * d;
    if img == 0 {
        return;
    }
    let work = dm.q * h * l * p * 4 * d * COST_ARITH / img.max(1) + 1;
    par_chunks_unit(out, img, work, |start, chunk| {
        let mut acc = vec![0f64; img];
        for (bi, oimg) in chunk.chunks_mut(img).enumerate() {
            let b = start / img + bi;
            acc.fill(0.0);
            for q in 0..dm.q {
                for hh in 0..h {
                    let r = (b * dm.q + q) * h + hh;
                    let g = &dy[r * d..(r + 1) * d];
                    for li in 0..l {
                        let [lh, lw] = dm.levels[li];
                        for pi in 0..p {
                            let k = (r * l + li) * p + pi;
                            let c = corners(loc[2 * k], loc[2 * k + 1], lh, lw);
                            let a = attn[k] as f64;
                            for ci in 0..4 {
                                let Some(pix) = c.idx[ci] else { continue };
                                let wt = a * c.w[ci] as f64;
                                let v0 = ((dm.starts[li] + pix) * h + hh) * d;
                                for (acc_v, &gv) in acc[v0..v0 + d].iter_mut().zip(g) {
                                    *acc_v += wt * gv as f64;
                                }
                            }
                        }
                    }
                }
            }
            for (o, a) in oimg.iter_mut().zip(&acc) {
                *o = *a as f32;
            }
        }
    });
}

/// Gradients w.r.t. the locations and the weights: `[B, Q, H, L, P, 3]` = (d loc_x, d loc_y, d attn). With
/// `s_c = sum_d dy_d v_{c,d}` per corner: d attn = sum_c w_c s_c, d loc_x = attn * w_level * sum_c dwx_c s_c
/// (x = loc_x * w_level - 0.5), likewise y.
pub(crate) fn bwd_loc_attn(dm: &Dims, value: &[f32], loc: &[f32], attn: &[f32], dy: &[f32], out: &mut [f32]) {
    let (h, d, l, p) = (dm.h, dm.d, dm.l(), dm.p);
    let unit = l * p * 3;
    if unit == 0 {
        return;
    }
    par_chunks_unit(out, unit, 4 * d * COST_ARITH, |start, chunk| {
        for (ri, row) in chunk.chunks_mut(unit).enumerate() {
            let r = start / unit + ri; // (b, q, h)
            let (b, hh) = (r / (dm.q * h), r % h);
            let g = &dy[r * d..(r + 1) * d];
            for li in 0..l {
                let [lh, lw] = dm.levels[li];
                for pi in 0..p {
                    let k = (r * l + li) * p + pi;
                    let c = corners(loc[2 * k], loc[2 * k + 1], lh, lw);
                    let (mut da, mut gx, mut gy) = (0f64, 0f64, 0f64);
                    for ci in 0..4 {
                        let Some(pix) = c.idx[ci] else { continue };
                        let v0 = ((b * dm.s + dm.starts[li] + pix) * h + hh) * d;
                        let s: f64 = value[v0..v0 + d].iter().zip(g).map(|(&v, &gv)| v as f64 * gv as f64).sum();
                        da += c.w[ci] as f64 * s;
                        gx += c.dwx[ci] as f64 * s;
                        gy += c.dwy[ci] as f64 * s;
                    }
                    let a = attn[k] as f64;
                    let o = &mut row[(li * p + pi) * 3..(li * p + pi) * 3 + 3];
                    o[0] = (a * lw as f64 * gx) as f32;
                    o[1] = (a * lh as f64 * gy) as f32;
                    o[2] = da as f32;
                }
            }
        }
    });
}

/// The dimensions of a call from its op and input views (shapes already checked by `infer`).
pub(crate) fn dims(op: &Op, ins: &[View]) -> Result<Dims> {
    match op {
        Op::Msda { levels } | Op::MsdaBwdLocAttn { levels } => Ok(Dims::new(ins[1].shape, ins[0].shape[3], levels)),
        Op::MsdaBwdValue { levels } => {
            let (loc, dy) = (ins[0].shape, ins[2].shape);
            Ok(Dims::new(loc, dy[2] / loc[2].max(1), levels))
        }
        _ => Err(cpu_err(format!("{} is not an msda op", op.describe()))),
    }
}

/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let dm = dims(op, ins)?;
    with_f32_out(out.dtype, out_bytes, |o| {
        match op {
            Op::Msda { .. } => forward(&dm, &floats(&ins[0]), &floats(&ins[1]), &floats(&ins[2]), o),
            Op::MsdaBwdValue { .. } => bwd_value(&dm, &floats(&ins[0]), &floats(&ins[1]), &floats(&ins[2]), o),
            _ => bwd_loc_attn(&dm, &floats(&ins[0]), &floats(&ins[1]), &floats(&ins[2]), &floats(&ins[3]), o),
        }
        Ok(())
    })
}
