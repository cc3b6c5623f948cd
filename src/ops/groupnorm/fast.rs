//! The CPU fast path of group norm (+ SiLU) and its gradient, channels last: f32 arithmetic over contiguous
//! channel vectors (vectorised), all cores, f16/bf16 decoded and encoded a block of pixels at a time.
//!
//! Statistics: every sample's pixels are cut into tasks of a fixed number of pixels (independent of the thread
//! count); a task sums per channel in f32 over runs of [`F32_RUN`] pixels and adds each run's sums into f64;
//! the tasks' sums are added in task order, then over the group's channels, in f64. The variance is taken
//! around a shift (the mean of the group's values in the sample's first pixel), which keeps the one-pass
//! formula from cancelling. The output pass is one more read of x (and dy) per element.

use rayon::prelude::*;

use crate::backend::cpu::kernels::fast::{Input, par_rows_out, sigmoid};
use crate::backend::cpu::kernels::{COST_ARITH, COST_TRANSCENDENTAL, View, worth_parallel};
use crate::error::Result;
use crate::ops::Op;

/// Elements (pixels times channels) a statistics task covers, at least one pixel.
const TASK_ELEMS: usize = 1 << 15;
/// Pixels summed in f32 before the sums are added into f64.
const F32_RUN: usize = 32;

/// Shapes of a call this path handles: (N, S = product of the middle axes, C); `None` (the reference runs and
/// reports the error) for anything else.
fn dims(groups: usize, ins: &[View], out: &View) -> Option<(usize, usize, usize)> {
    let x = &ins[0];
    let c = *x.shape.last()?;
    let ok = x.shape.len() >= 2
        && groups > 0
        && c % groups == 0
        && ins.iter().chain([out]).all(|v| v.dtype.is_float())
        && ins[1].shape.iter().product::<usize>() == c
        && ins[2].shape.iter().product::<usize>() == c
        && ins.get(3).is_none_or(|dy| dy.shape == x.shape);
    ok.then(|| (x.shape[0], x.shape[1..x.shape.len() - 1].iter().product(), c))
}

/// Per (sample, channel): the sums over the sample's pixels of the two terms `term` adds into its f32
/// accumulators for pixels `p0..p1` of sample `b` (`term(scratch, b, p0, p1, sum_a, sum_b)`, at most
/// [`F32_RUN`] pixels a call, accumulators zeroed before each call).
fn channel_sums<F>(n: usize, s: usize, c: usize, cost: usize, term: F) -> Vec<[f64; 2]>
where
    F: Fn(&mut Scratch, usize, usize, usize, &mut [f32], &mut [f32]) + Sync,
{
    let per_task = (TASK_ELEMS / c).max(1);
    let tasks_per_sample = s.div_ceil(per_task);
    let task = |t: usize| -> Vec<[f64; 2]> {
        let (b, p_start) = (t / tasks_per_sample, (t % tasks_per_sample) * per_task);
        let p_end = (p_start + per_task).min(s);
        let mut sc = Scratch::default();
        let (mut sa, mut sb) = (vec![0f32; c], vec![0f32; c]);
        let mut tot = vec![[0f64; 2]; c];
        let mut p0 = p_start;
        while p0 < p_end {
            let p1 = (p0 + F32_RUN).min(p_end);
            sa.fill(0.0);
            sb.fill(0.0);
            term(&mut sc, b, p0, p1, &mut sa, &mut sb);
            for ((t, &a), &bb) in tot.iter_mut().zip(&sa).zip(&sb) {
                t[0] += a as f64;
                t[1] += bb as f64;
            }
            p0 = p1;
        }
        tot
    };
    let n_tasks = n * tasks_per_sample;
    let parts: Vec<Vec<[f64; 2]>> = if worth_parallel(n * s * c * cost) {
        (0..n_tasks).into_par_iter().map(task).collect()
    } else {
        (0..n_tasks).map(task).collect()
    };
    let mut sums = vec![[0f64; 2]; n * c];
    for (t, part) in parts.iter().enumerate() {
        let b = t / tasks_per_sample;
        for (acc, v) in sums[b * c..(b + 1) * c].iter_mut().zip(part) {
            acc[0] += v[0];
            acc[1] += v[1];
        }
    }
    sums
}

/// Decoding buffers of one task.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    g: Vec<f32>,
}

/// Per (sample, channel) of the channel's group: the mean and 1 / sqrt(biased variance + eps), as f32 vectors.
fn stats(x: &Input, n: usize, s: usize, c: usize, groups: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let cpg = c / groups;
    // The shift of each (sample, group): the mean of its values in the sample's first pixel.
    let mut shift = vec![0f32; n * c];
    let mut buf = Vec::new();
    for b in 0..n {
        let first = x.get(b * s * c, c, &mut buf);
        for (sh, xs) in shift[b * c..(b + 1) * c].chunks_mut(cpg).zip(first.chunks(cpg)) {
            sh.fill((xs.iter().map(|&v| v as f64).sum::<f64>() / cpg as f64) as f32);
        }
    }
    let sums = channel_sums(n, s, c, COST_ARITH, |sc, b, p0, p1, sa, sb| {
        let xs = x.get((b * s + p0) * c, (p1 - p0) * c, &mut sc.x);
        let sh = &shift[b * c..(b + 1) * c];
        for row in xs.chunks_exact(c) {
            for (((a, q), &v), &m) in sa.iter_mut().zip(sb.iter_mut()).zip(row).zip(sh) {
                let d = v - m;
                *a += d;
                *q += d * d;
            }
        }
    });
    let count = (s * cpg) as f64;
    let (mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n * c]);
    for ng in 0..n * groups {
        let at = ng * cpg..(ng + 1) * cpg;
        let (s1, s2) = sums[at.clone()].iter().fold((0f64, 0f64), |(a, q), v| (a + v[0], q + v[1]));
        let md = s1 / count;
        let var = (s2 / count - md * md).max(0.0);
        mean[at.clone()].fill((shift[ng * cpg] as f64 + md) as f32);
        rstd[at].fill((1.0 / (var + eps as f64).sqrt()) as f32);
    }
    (mean, rstd)
}

/// Group norm (+ SiLU): y = (x - mean) * (rstd * w) + bias.
fn forward(groups: usize, eps: f32, silu: bool, ins: &[View], out: &View, out_bytes: &mut [u8], (n, s, c): (usize, usize, usize)) {
    let x = Input::new(&ins[0]);
    let (w, bias) = (Input::new(&ins[1]).all(), Input::new(&ins[2]).all());
    let (mean, rstd) = stats(&x, n, s, c, groups, eps);
    let scale: Vec<f32> = rstd.iter().enumerate().map(|(i, &r)| r * w[i % c]).collect();
    let cost = if silu { COST_TRANSCENDENTAL } else { COST_ARITH };
    par_rows_out(out.dtype, out_bytes, c, cost, |row0, ys| {
        let mut buf = Vec::new();
        for (k, block) in ys.chunks_mut(F32_RUN * c).enumerate() {
            let row0 = row0 + k * F32_RUN;
            let xs = x.get(row0 * c, block.len(), &mut buf);
            for (r, (y, xr)) in block.chunks_exact_mut(c).zip(xs.chunks_exact(c)).enumerate() {
                let b = (row0 + r) / s;
                let (m, a) = (&mean[b * c..(b + 1) * c], &scale[b * c..(b + 1) * c]);
                for ((((yv, &xv), &mv), &av), &bv) in y.iter_mut().zip(xr).zip(m).zip(a).zip(&bias) {
                    *yv = (xv - mv) * av + bv;
                }
                if silu {
                    for yv in y.iter_mut() {
                        *yv *= sigmoid(*yv);
                    }
                }
            }
        }
    });
}

/// With xhat = (x - mean) * rstd, z = xhat * w + bias, g = dy * silu'(z) (or dy):
/// dx = rstd * (g w - mean(g w) - xhat * mean(g w xhat)), means over the (sample, group).
fn backward(groups: usize, eps: f32, silu: bool, ins: &[View], out: &View, out_bytes: &mut [u8], (n, s, c): (usize, usize, usize)) {
    let (x, dy) = (Input::new(&ins[0]), Input::new(&ins[3]));
    let (w, bias) = (Input::new(&ins[1]).all(), Input::new(&ins[2]).all());
    let (mean, rstd) = stats(&x, n, s, c, groups, eps);
    // g (dy through the SiLU) and xhat of one pixel row of sample b, in place of dy and x.
    let grad_terms = |b: usize, xr: &mut [f32], gr: &mut [f32]| {
        let (m, r) = (&mean[b * c..(b + 1) * c], &rstd[b * c..(b + 1) * c]);
        for ((xv, &mv), &rv) in xr.iter_mut().zip(m).zip(r) {
            *xv = (*xv - mv) * rv;
        }
        if silu {
            for (((gv, &xh), &wv), &bv) in gr.iter_mut().zip(xr.iter()).zip(&w).zip(&bias) {
                let z = xh * wv + bv;
                let sg = sigmoid(z);
                *gv *= sg * (1.0 + z * (1.0 - sg));
            }
        }
    };
    let cost = if silu { COST_TRANSCENDENTAL } else { COST_ARITH };
    let sums = channel_sums(n, s, c, cost, |sc, b, p0, p1, sa, sb| {
        let at = (b * s + p0) * c;
        x.read_into(at, (p1 - p0) * c, &mut sc.x);
        dy.read_into(at, (p1 - p0) * c, &mut sc.g);
        for (xr, gr) in sc.x.chunks_exact_mut(c).zip(sc.g.chunks_exact_mut(c)) {
            grad_terms(b, xr, gr);
            for (((a, q), &g), &xh) in sa.iter_mut().zip(sb.iter_mut()).zip(gr.iter()).zip(xr.iter()) {
                *a += g;
                *q += g * xh;
            }
        }
    });
    let cpg = c / groups;
    let count = (s * cpg) as f64;
    let (mut mg, mut mgx) = (vec![0f32; n * c], vec![0f32; n * c]);
    for ng in 0..n * groups {
        let at = ng * cpg..(ng + 1) * cpg;
        let (s1, s2) = sums[at.clone()]
            .iter()
            .zip(&w[(ng % groups) * cpg..(ng % groups + 1) * cpg])
            .fold((0f64, 0f64), |(a, q), (v, &wv)| (a + v[0] * wv as f64, q + v[1] * wv as f64));
        mg[at.clone()].fill((s1 / count) as f32);
        mgx[at].fill((s2 / count) as f32);
    }
    par_rows_out(out.dtype, out_bytes, c, cost, |row0, dxs| {
        let mut sc = Scratch::default();
        for (k, block) in dxs.chunks_mut(F32_RUN * c).enumerate() {
            let row0 = row0 + k * F32_RUN;
            x.read_into(row0 * c, block.len(), &mut sc.x);
            dy.read_into(row0 * c, block.len(), &mut sc.g);
            let rows = block.chunks_exact_mut(c).zip(sc.x.chunks_exact_mut(c)).zip(sc.g.chunks_exact_mut(c));
            for (r, ((dx, xr), gr)) in rows.enumerate() {
                let b = (row0 + r) / s;
                grad_terms(b, xr, gr);
                let at = b * c..(b + 1) * c;
                let (rs, a, q) = (&rstd[at.clone()], &mg[at.clone()], &mgx[at]);
                for ((((((d, &xh), &g), &wv), &rv), &av), &qv) in
                    dx.iter_mut().zip(xr.iter()).zip(gr.iter()).zip(&w).zip(rs).zip(a).zip(q)
                {
                    *d = rv * (g * wv - av - xh * qv);
                }
            }
        }
    });
}

/// This family's fast path (see `ops::run_cpu_fast`).
pub(crate) fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Option<Result<()>> {
    match op {
        Op::GroupNorm { groups, eps, silu } => {
            let d = dims(*groups, ins, out)?;
            forward(*groups, *eps, *silu, ins, out, out_bytes, d);
        }
        Op::GroupNormBwd { groups, eps, silu } => {
            let d = dims(*groups, ins, out)?;
            backward(*groups, *eps, *silu, ins, out, out_bytes, d);
        }
        _ => return None,
    }
    Some(Ok(()))
}
