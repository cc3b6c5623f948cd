//! The CPU engine's MSDA (`CpuBackend`): f32 arithmetic on all cores, deterministic for any thread count. The
//! exact reference is `cpu.rs`; both share the sampling geometry ([`corners`]).
//!
//! - Forward: tasks are ranges of (batch, query) rows; each output row `[H, D]` adds `attn * weight * value
//!   row` for the (up to) four in-map corners of each sample, one contiguous `D`-vector at a time.
//! - Gradient w.r.t. value: a scatter, made race-free by ownership instead of atomics: one task per (batch,
//!   head, level) owns that slice of dvalue (the level's pixels of one head) in a private f32 buffer and adds
//!   the samples of every query in (query, point) order; the buffers are then copied into `[B, S, H, D]`. The
//!   order of every sum is fixed, so results do not depend on the thread count.
//! - Gradients w.r.t. locations and weights: tasks are ranges of (batch, query, head) rows; per sample, four dot
//!   products `dy . value_corner` over D (8 f32 lanes, then the lanes in a fixed order).

use rayon::prelude::*;

use super::cpu::{corners, dims};
use super::Dims;
use crate::backend::cpu::kernels::{COST_ARITH, View, floats, par_chunks_unit, with_f32_out, worth_parallel};
use crate::error::Result;
use crate::ops::Op;

/// Runs `op` if it is one of this family's ops (inputs, output shape and byte counts already checked).
pub(crate) fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Option<Result<()>> {
    if !matches!(op, Op::Msda { .. } | Op::MsdaBwdValue { .. } | Op::MsdaBwdLocAttn { .. }) {
        return None;
    }
    let dm = match dims(op, ins) {
        Ok(d) => d,
        Err(e) => return Some(Err(e)),
    };
    Some(with_f32_out(out.dtype, out_bytes, |o| {
        match op {
            Op::Msda { .. } => forward(&dm, &floats(&ins[0]), &floats(&ins[1]), &floats(&ins[2]), o),
            Op::MsdaBwdValue { .. } => bwd_value(&dm, &floats(&ins[0]), &floats(&ins[1]), &floats(&ins[2]), o),
            _ => bwd_loc_attn(&dm, &floats(&ins[0]), &floats(&ins[1]), &floats(&ins[2]), &floats(&ins[3]), o),
        }
        Ok(())
    }))
}

/// `o += a * x`.
#[inline]
fn axpy(o: &mut [f32], a: f32, x: &[f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o += a * x;
    }
}

/// `x . y` with 8 independent f32 lanes (vectorised), added in a fixed order.
#[inline]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (a, b) in xr.iter().zip(yr) {
        s += a * b;
    }
    s
}

fn forward(dm: &Dims, value: &[f32], loc: &[f32], attn: &[f32], out: &mut [f32]) {
    let (h, d, l, p) = (dm.h, dm.d, dm.l(), dm.p);
    let row = h * d;
    if row == 0 {
        return;
    }
    par_chunks_unit(out, row, l * p * 4 * COST_ARITH, |start, chunk| {
        for (ri, orow) in chunk.chunks_mut(row).enumerate() {
            let bq = start / row + ri;
            let b = bq / dm.q;
            orow.fill(0.0);
            for (hh, o) in orow.chunks_mut(d).enumerate() {
                let r = bq * h + hh;
                for li in 0..l {
                    let [lh, lw] = dm.levels[li];
                    let base = (b * dm.s + dm.starts[li]) * h + hh;
                    for pi in 0..p {
                        let k = (r * l + li) * p + pi;
                        let c = corners(loc[2 * k], loc[2 * k + 1], lh, lw);
                        let a = attn[k];
                        for ci in 0..4 {
                            if let Some(pix) = c.idx[ci] {
                                let v0 = (base + pix * h) * d;
                                axpy(o, a * c.w[ci], &value[v0..v0 + d]);
                            }
                        }
                    }
                }
            }
        }
    });
}

fn bwd_value(dm: &Dims, loc: &[f32], attn: &[f32], dy: &[f32], out: &mut [f32]) {
    let (h, d, l, p) = (dm.h, dm.d, dm.l(), dm.p);
    if out.is_empty() {
        return;
    }
    // Task t = (b, head, level) accumulates its level's pixels of one head.
    let tasks = dm.b * h * l;
    let task = |t: usize| -> Vec<f32> {
        let (b, hh, li) = (t / (h * l), t / l % h, t % l);
        let [lh, lw] = dm.levels[li];
        let mut acc = vec![0f32; lh * lw * d];
        for q in 0..dm.q {
            let r = (b * dm.q + q) * h + hh;
            let g = &dy[r * d..(r + 1) * d];
            for pi in 0..p {
                let k = (r * l + li) * p + pi;
                let c = corners(loc[2 * k], loc[2 * k + 1], lh, lw);
                let a = attn[k];
                for ci in 0..4 {
                    if let Some(pix) = c.idx[ci] {
                        axpy(&mut acc[pix * d..(pix + 1) * d], a * c.w[ci], g);
                    }
                }
            }
        }
        acc
    };
    let work = dm.b * dm.q * h * l * p * 4 * d * COST_ARITH;
    let parts: Vec<Vec<f32>> =
        if worth_parallel(work) { (0..tasks).into_par_iter().map(task).collect() } else { (0..tasks).map(task).collect() };
    // Copy into [B, S, H, D], one token row [H, D] at a time.
    let row = h * d;
    par_chunks_unit(out, row, 1, |start, chunk| {
        for (ri, orow) in chunk.chunks_mut(row).enumerate() {
            let bs = start / row + ri;
            let (b, s) = (bs / dm.s, bs % dm.s);
            let li = dm.starts.partition_point(|&st| st <= s) - 1;
            let pix = s - dm.starts[li];
            for (hh, o) in orow.chunks_mut(d).enumerate() {
                o.copy_from_slice(&parts[(b * h + hh) * l + li][pix * d..(pix + 1) * d]);
            }
        }
    });
}

fn bwd_loc_attn(dm: &Dims, value: &[f32], loc: &[f32], attn: &[f32], dy: &[f32], out: &mut [f32]) {
    let (h, d, l, p) = (dm.h, dm.d, dm.l(), dm.p);
    let unit = l * p * 3;
    if unit == 0 {
        return;
    }
    par_chunks_unit(out, unit, 4 * d * COST_ARITH, |start, chunk| {
        for (ri, orow) in chunk.chunks_mut(unit).enumerate() {
            let r = start / unit + ri; // (b, q, head)
            let (b, hh) = (r / (dm.q * h), r % h);
            let g = &dy[r * d..(r + 1) * d];
            for li in 0..l {
                let [lh, lw] = dm.levels[li];
                let base = (b * dm.s + dm.starts[li]) * h + hh;
                for pi in 0..p {
                    let k = (r * l + li) * p + pi;
                    let c = corners(loc[2 * k], loc[2 * k + 1], lh, lw);
                    let (mut da, mut gx, mut gy) = (0f32, 0f32, 0f32);
                    for ci in 0..4 {
                        if let Some(pix) = c.idx[ci] {
                            let v0 = (base + pix * h) * d;
                            let s = dot(&value[v0..v0 + d], g);
                            da += c.w[ci] * s;
                            gx += c.dwx[ci] * s;
                            gy += c.dwy[ci] * s;
                        }
                    }
                    let a = attn[k];
                    let o = &mut orow[(li * p + pi) * 3..(li * p + pi) * 3 + 3];
                    o[0] = a * lw as f32 * gx;
                    o[1] = a * lh as f32 * gy;
                    o[2] = da;
                }
            }
        }
    });
}
