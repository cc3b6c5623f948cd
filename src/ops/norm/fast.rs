//! The CPU fast path of layer norm and of softmax along the last axis (and their gradients): one row at a
//! time, f32 sums with independent lanes (`kernels::fast::sum`), rows spread over all cores, f16/bf16 decoded
//! a row at a time. Softmax along another axis runs the reference.

use crate::backend::cpu::kernels::fast::{Input, dot, exp, par_rows_out, sum};
use crate::backend::cpu::kernels::{COST_ARITH, COST_TRANSCENDENTAL, View};
use crate::error::Result;
use crate::ops::Op;

/// Row length of a call this path handles (last axis, every tensor a float type, affine operands of one row),
/// or `None`.
fn row_len(ins: &[View], out: &View, affine_ins: &[usize]) -> Option<usize> {
    let d = *ins[0].shape.last()?;
    let ok = d > 0
        && ins.iter().chain([out]).all(|v| v.dtype.is_float())
        && affine_ins.iter().all(|&i| ins[i].shape.iter().product::<usize>() == d);
    ok.then_some(d)
}

/// Mean and 1 / sqrt(biased variance + eps) of a row (two passes over the row, which is in cache).
#[inline]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = sum(x) / d;
    let mut acc = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    let tail: f32 = it.remainder().iter().map(|&v| (v - mean) * (v - mean)).sum();
    let var = (sum(&acc) + tail) / d;
    (mean, 1.0 / (var + eps).sqrt())
}

fn layer_norm(eps: f32, ins: &[View], out: &View, out_bytes: &mut [u8], d: usize) {
    let x = Input::new(&ins[0]);
    let affine = (ins.len() == 3).then(|| (Input::new(&ins[1]).all(), Input::new(&ins[2]).all()));
    par_rows_out(out.dtype, out_bytes, d, 2 * COST_ARITH, |row0, ys| {
        let mut buf = Vec::new();
        for (r, y) in ys.chunks_exact_mut(d).enumerate() {
            let xr = x.get((row0 + r) * d, d, &mut buf);
            let (mean, rstd) = row_stats(xr, eps);
            match &affine {
                Some((w, b)) => {
                    for (((yv, &xv), &wv), &bv) in y.iter_mut().zip(xr).zip(w).zip(b) {
                        *yv = (xv - mean) * rstd * wv + bv;
                    }
                }
                None => {
                    for (yv, &xv) in y.iter_mut().zip(xr) {
                        *yv = (xv - mean) * rstd;
                    }
                }
            }
        }
    });
}

/// With g = dy * w (or dy): dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
fn layer_norm_bwd(eps: f32, ins: &[View], out: &View, out_bytes: &mut [u8], d: usize) {
    let x = Input::new(&ins[0]);
    let (w, dy) = if ins.len() == 3 { (Some(Input::new(&ins[1]).all()), Input::new(&ins[2])) } else { (None, Input::new(&ins[1])) };
    par_rows_out(out.dtype, out_bytes, d, 3 * COST_ARITH, |row0, dxs| {
        let (mut xb, mut g, mut xhat) = (Vec::new(), Vec::new(), vec![0f32; d]);
        for (r, dx) in dxs.chunks_exact_mut(d).enumerate() {
            let at = (row0 + r) * d;
            let xr = x.get(at, d, &mut xb);
            dy.read_into(at, d, &mut g);
            if let Some(w) = &w {
                for (gv, &wv) in g.iter_mut().zip(w) {
                    *gv *= wv;
                }
            }
            let (mean, rstd) = row_stats(xr, eps);
            for (h, &xv) in xhat.iter_mut().zip(xr) {
                *h = (xv - mean) * rstd;
            }
            let mg = sum(&g) / d as f32;
            let mgx = dot(&g, &xhat) / d as f32;
            for ((dv, &gv), &h) in dx.iter_mut().zip(&g).zip(&xhat) {
                *dv = rstd * (gv - mg - h * mgx);
            }
        }
    });
}

/// `sum(a[i] * b[i])` in f64 with 8 independent lanes.
#[inline]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (mut ia, mut ib) = (a.chunks_exact(8), b.chunks_exact(8));
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x as f64 * y as f64;
        }
    }
    let tail: f64 = ia.remainder().iter().zip(ib.remainder()).map(|(&x, &y)| x as f64 * y as f64).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Largest value of a row, NaNs skipped (as the reference; a NaN still makes its row NaN through the sum).
#[inline]
fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let m = it.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    acc.iter().fold(m, |m, &v| if v > m { v } else { m })
}

fn softmax(ins: &[View], out: &View, out_bytes: &mut [u8], d: usize) {
    let x = Input::new(&ins[0]);
    par_rows_out(out.dtype, out_bytes, d, COST_TRANSCENDENTAL, |row0, ys| {
        let mut buf = Vec::new();
        for (r, y) in ys.chunks_exact_mut(d).enumerate() {
            let xr = x.get((row0 + r) * d, d, &mut buf);
            let m = row_max(xr);
            for (yv, &xv) in y.iter_mut().zip(xr) {
                *yv = exp(xv - m);
            }
            let inv = 1.0 / sum(y);
            for yv in y.iter_mut() {
                *yv *= inv;
            }
        }
    });
}

fn softmax_bwd(ins: &[View], out: &View, out_bytes: &mut [u8], d: usize) {
    let (y, dy) = (Input::new(&ins[0]), Input::new(&ins[1]));
    par_rows_out(out.dtype, out_bytes, d, COST_ARITH, |row0, dxs| {
        let (mut yb, mut gb) = (Vec::new(), Vec::new());
        for (r, dx) in dxs.chunks_exact_mut(d).enumerate() {
            let at = (row0 + r) * d;
            let (yr, gr) = (y.get(at, d, &mut yb), dy.get(at, d, &mut gb));
            // In f64: y * (dy - s) keeps the absolute error of s, which an f32 sum of a long row (s up to
            // ~sqrt(len) with cancellation) makes larger than the tolerance.
            let s = dot_f64(yr, gr) as f32;
            for ((dv, &yv), &gv) in dx.iter_mut().zip(yr).zip(gr) {
                *dv = yv * (gv - s);
            }
        }
    });
}

/// This family's fast path (see `ops::run_cpu_fast`).
pub(crate) fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Option<Result<()>> {
    match op {
        Op::Softmax { axis } | Op::SoftmaxBwd { axis } if *axis + 1 == ins[0].shape.len() => {
            let d = row_len(ins, out, &[])?;
            if ins.len() == 2 && ins[1].shape != ins[0].shape {
                return None;
            }
            if matches!(op, Op::Softmax { .. }) { softmax(ins, out, out_bytes, d) } else { softmax_bwd(ins, out, out_bytes, d) }
        }
        Op::LayerNorm { eps, affine } => {
            let d = row_len(ins, out, if *affine { &[1, 2] } else { &[] })?;
            layer_norm(*eps, ins, out, out_bytes, d);
        }
        Op::LayerNormBwd { eps, affine } => {
            let d = row_len(ins, out, if *affine { &[1] } else { &[] })?;
            if ins.last()?.shape != ins[0].shape {
                return None;
            }
            layer_norm_bwd(*eps, ins, out, out_bytes, d);
        }
        _ => return None,
    }
    Some(Ok(()))
}
