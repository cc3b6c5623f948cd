//! Group norm over `x [N, ..., C]` (channels last) with an affine transform and an optional fused SiLU, and
//! its gradient w.r.t. x. Statistics per (sample, group) are two-pass sums in f64.

use rayon::prelude::*;

use crate::backend::cpu::kernels::{COST_TRANSCENDENTAL, View, cpu_err, floats, par_chunks_unit, require_float, with_f32_out};
use crate::ops::Op;
use crate::error::Result;

/// (N, S = product of the middle axes, C) of a group-norm input.
fn dims(shape: &[usize]) -> (usize, usize, usize) {
    let n = shape[0];
    let c = shape[shape.len() - 1];
    (n, shape[1..shape.len() - 1].iter().product(), c)
}

/// Mean and 1/sqrt(biased variance + eps) of every (sample, group), in that order.
fn stats(xs: &[f32], n: usize, s: usize, c: usize, groups: usize, eps: f32) -> Vec<(f64, f64)> {
    let cpg = c / groups;
    let count = (s * cpg) as f64;
    (0..n * groups)
        .into_par_iter()
        .map(|ng| {
            let (b, gi) = (ng / groups, ng % groups);
            let group = |p: usize| {
                let at = (b * s + p) * c + gi * cpg;
                &xs[at..at + cpg]
            };
            let mut sum = 0f64;
            for p in 0..s {
                sum += group(p).iter().map(|&v| v as f64).sum::<f64>();
            }
            let mean = sum / count;
            let mut sq = 0f64;
            for p in 0..s {
                sq += group(p).iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>();
            }
            (mean, 1.0 / (sq / count + eps as f64).sqrt())
        })
        .collect()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn check(what: &str, shape: &[usize], groups: usize, w: usize, b: usize) -> Result<()> {
    let c = shape.last().copied().unwrap_or(0);
    if shape.len() < 2 || groups == 0 || c % groups != 0 || w != c || b != c {
        return Err(cpu_err(format!("{what}: bad shape {shape:?} for {groups} groups and {w}/{b} weights")));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn group_norm(
    groups: usize,
    eps: f32,
    silu: bool,
    x: &View,
    w: &View,
    b: &View,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("group_norm", &[x, w, b, out])?;
    let (xs, ws, bs) = (floats(x), floats(w), floats(b));
    check("group_norm", x.shape, groups, ws.len(), bs.len())?;
    let (n, s, c) = dims(x.shape);
    if n * s * c == 0 {
        return Ok(());
    }
    let st = stats(&xs, n, s, c, groups, eps);
    let cpg = c / groups;
    with_f32_out(out.dtype, out_bytes, |o| {
        par_chunks_unit(o, c, COST_TRANSCENDENTAL, |start, chunk| {
            for (ri, y) in chunk.chunks_mut(c).enumerate() {
                let row = start / c + ri;
                let (b0, xrow) = (row / s * groups, &xs[row * c..(row + 1) * c]);
                for (j, yv) in y.iter_mut().enumerate() {
                    let (mean, rstd) = st[b0 + j / cpg];
                    let z = (xrow[j] as f64 - mean) * rstd * ws[j] as f64 + bs[j] as f64;
                    *yv = if silu { z * sigmoid(z) } else { z } as f32;
                }
            }
        });
        Ok(())
    })
}

/// With z = xhat * w + b and g = dy * silu'(z) (or dy): dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)),
/// gw = g * w, means over the (sample, group).
#[allow(clippy::too_many_arguments)]
pub(super) fn group_norm_bwd(
    groups: usize,
    eps: f32,
    silu: bool,
    x: &View,
    w: &View,
    b: &View,
    dy: &View,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("group_norm_bwd", &[x, w, b, dy, out])?;
    let (xs, ws, bs, gs) = (floats(x), floats(w), floats(b), floats(dy));
    check("group_norm_bwd", x.shape, groups, ws.len(), bs.len())?;
    let (n, s, c) = dims(x.shape);
    if n * s * c == 0 {
        return Ok(());
    }
    let st = stats(&xs, n, s, c, groups, eps);
    let cpg = c / groups;
    let count = (s * cpg) as f64;
    // gw and xhat of element i (row-major index), recomputed in both passes.
    let terms = |i: usize| -> (f64, f64) {
        let (j, row) = (i % c, i / c);
        let (mean, rstd) = st[row / s * groups + j / cpg];
        let xhat = (xs[i] as f64 - mean) * rstd;
        let mut g = gs[i] as f64;
        if silu {
            let z = xhat * ws[j] as f64 + bs[j] as f64;
            let sg = sigmoid(z);
            g *= sg * (1.0 + z * (1.0 - sg));
        }
        (g * ws[j] as f64, xhat)
    };
    // Per (sample, group): mean(gw) and mean(gw * xhat).
    let sums: Vec<(f64, f64)> = (0..n * groups)
        .into_par_iter()
        .map(|ng| {
            let (bi, gi) = (ng / groups, ng % groups);
            let (mut a, mut bb) = (0f64, 0f64);
            for p in 0..s {
                let at = (bi * s + p) * c + gi * cpg;
                for i in at..at + cpg {
                    let (gw, xhat) = terms(i);
                    a += gw;
                    bb += gw * xhat;
                }
            }
            (a / count, bb / count)
        })
        .collect();
    with_f32_out(out.dtype, out_bytes, |o| {
        par_chunks_unit(o, c, COST_TRANSCENDENTAL, |start, chunk| {
            for (k, dv) in chunk.iter_mut().enumerate() {
                let i = start + k;
                let ng = i / c / s * groups + (i % c) / cpg;
                let (gw, xhat) = terms(i);
                let (mg, mgx) = sums[ng];
                *dv = (st[ng].1 * (gw - mg - xhat * mgx)) as f32;
            }
        });
        Ok(())
    })
}


/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::GroupNorm { groups, eps, silu } => {
            group_norm(*groups, *eps, *silu, &ins[0], &ins[1], &ins[2], out, out_bytes)
        }
        Op::GroupNormBwd { groups, eps, silu } => {
            group_norm_bwd(*groups, *eps, *silu, &ins[0], &ins[1], &ins[2], &ins[3], out, out_bytes)
        }
        _ => Err(cpu_err(format!("{} is not a groupnorm op", op.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::kernels::test_util::*;
    use crate::ops::Op;
    use crate::tensor::DType;

    fn forward64(x: &[f64], w: &[f32], b: &[f32], shape: [usize; 3], groups: usize, eps: f32, silu: bool) -> Vec<f64> {
        let [n, s, c] = shape;
        let cpg = c / groups;
        let mut y = vec![0f64; x.len()];
        for bi in 0..n {
            for gi in 0..groups {
                let idx: Vec<usize> =
                    (0..s).flat_map(|p| (0..cpg).map(move |j| (bi * s + p) * c + gi * cpg + j)).collect();
                let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64;
                let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / idx.len() as f64;
                for &i in &idx {
                    let z = (x[i] - mean) / (var + eps as f64).sqrt() * w[i % c] as f64 + b[i % c] as f64;
                    y[i] = if silu { z / (1.0 + (-z).exp()) } else { z };
                }
            }
        }
        y
    }

    #[test]
    fn forward_and_backward_match_f64_formula_and_finite_differences() {
        let (shape, groups) = ([2usize, 3, 4, 6], 3);
        let [n, h, wd, c] = shape;
        let x: Vec<f32> = rand_vals(n * h * wd * c, 1).iter().map(|v| v * 3.0 + 0.5).collect();
        let w: Vec<f32> = rand_vals(c, 2).iter().map(|v| 1.0 + v * 0.5).collect();
        let b = rand_vals(c, 3);
        let dy = rand_vals(x.len(), 4);
        for (silu, eps) in [(false, 1e-5f32), (true, 1e-6)] {
            let op = Op::GroupNorm { groups, eps, silu };
            let y = run_f32(&op, &[(&shape, &x), (&[c], &w), (&[c], &b)], DType::F32);
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let want = forward64(&x64, &w, &b, [n, h * wd, c], groups, eps, silu);
            for (a, e) in y.iter().zip(&want) {
                assert!((*a as f64 - e).abs() < 1e-6 * (1.0 + e.abs()), "{a} vs {e}");
            }
            let dx = run_f32(
                &Op::GroupNormBwd { groups, eps, silu },
                &[(&shape, &x), (&[c], &w), (&[c], &b), (&shape, &dy)],
                DType::F32,
            );
            let loss = |xv: &[f64]| -> f64 {
                let y = forward64(xv, &w, &b, [n, h * wd, c], groups, eps, silu);
                y.iter().zip(&dy).map(|(a, &d)| a * d as f64).sum()
            };
            for i in 0..x.len() {
                let hstep = 1e-5;
                let (mut xp, mut xm) = (x64.clone(), x64.clone());
                xp[i] += hstep;
                xm[i] -= hstep;
                let num = (loss(&xp) - loss(&xm)) / (2.0 * hstep);
                assert!((dx[i] as f64 - num).abs() < 1e-4 * (1.0 + num.abs()), "silu={silu} dx[{i}] {} vs {num}", dx[i]);
            }
        }
    }

    #[test]
    fn rank_two_input_normalises_each_group_of_a_row() {
        // [N, C] with no middle axes: statistics over the group's channels only.
        let x = [1.0f32, 3.0, 10.0, 20.0];
        let y = run_f32(
            &Op::GroupNorm { groups: 2, eps: 0.0, silu: false },
            &[(&[1, 4], &x), (&[4], &[1.0; 4]), (&[4], &[0.0; 4])],
            DType::F32,
        );
        assert_eq!(y, vec![-1.0, 1.0, -1.0, 1.0]);
    }
}
