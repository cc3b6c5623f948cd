//! Softmax along any axis and layer norm over the last axis, with their backward ops. Statistics and sums are
//! accumulated in f64; independent rows (or blocks of columns) run in parallel.

use crate::backend::cpu::kernels::{COST_ARITH, COST_TRANSCENDENTAL, View, cpu_err, floats, par_chunks_unit, require_float, with_f32_out};
use crate::ops::Op;
use crate::error::Result;

/// (outer, axis length, inner) of a row-major shape split around `axis`.
fn split(shape: &[usize], axis: usize) -> Result<(usize, usize, usize)> {
    if axis >= shape.len() {
        return Err(cpu_err(format!("axis {axis} out of range for shape {shape:?}")));
    }
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    Ok((outer, shape[axis], inner))
}

/// Scratch buffers reused across the blocks of one task.
#[derive(Default)]
struct Scratch {
    e: Vec<f64>,
    max: Vec<f32>,
    sum: Vec<f64>,
}

/// Softmax of one contiguous row.
fn softmax_row(x: &[f32], y: &mut [f32], e: &mut Vec<f64>) {
    // NaN propagates: it is skipped here, but exp(NaN - m) is NaN and so is the sum.
    let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m }) as f64;
    e.clear();
    e.extend(x.iter().map(|&v| (v as f64 - m).exp()));
    let s: f64 = e.iter().sum();
    for (yv, &ev) in y.iter_mut().zip(e.iter()) {
        *yv = (ev / s) as f32;
    }
}

/// Softmax of one block `x` of `len * inner` elements along the `len` axis (stride `inner`), into `y`.
fn softmax_block(x: &[f32], y: &mut [f32], len: usize, inner: usize, sc: &mut Scratch) {
    if inner == 1 {
        return softmax_row(x, y, &mut sc.e);
    }
    let Scratch { e, max, sum } = sc;
    e.clear();
    e.resize(len * inner, 0.0);
    max.clear();
    max.resize(inner, f32::NEG_INFINITY);
    for r in 0..len {
        for (m, &v) in max.iter_mut().zip(&x[r * inner..(r + 1) * inner]) {
            if v > *m {
                *m = v;
            }
        }
    }
    sum.clear();
    sum.resize(inner, 0.0);
    for r in 0..len {
        let row = r * inner..(r + 1) * inner;
        for (((ev, &v), &m), s) in e[row.clone()].iter_mut().zip(&x[row]).zip(max.iter()).zip(sum.iter_mut()) {
            *ev = (v as f64 - m as f64).exp();
            *s += *ev;
        }
    }
    for r in 0..len {
        let row = r * inner..(r + 1) * inner;
        for ((yv, &ev), &s) in y[row.clone()].iter_mut().zip(&e[row]).zip(sum.iter()) {
            *yv = (ev / s) as f32;
        }
    }
}

pub(super) fn softmax(axis: usize, x: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("softmax", &[x, out])?;
    let (_, len, inner) = split(x.shape, axis)?;
    let xs = floats(x);
    let block = len * inner;
    with_f32_out(out.dtype, out_bytes, |o| {
        if block == 0 {
            return Ok(());
        }
        par_chunks_unit(o, block, COST_TRANSCENDENTAL, |s, chunk| {
            let mut sc = Scratch::default();
            for (bi, y) in chunk.chunks_mut(block).enumerate() {
                let b0 = s + bi * block;
                softmax_block(&xs[b0..b0 + block], y, len, inner, &mut sc);
            }
        });
        Ok(())
    })
}

pub(super) fn softmax_bwd(axis: usize, y: &View, dy: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("softmax_bwd", &[y, dy, out])?;
    let (_, len, inner) = split(y.shape, axis)?;
    let (ys, gs) = (floats(y), floats(dy));
    let block = len * inner;
    with_f32_out(out.dtype, out_bytes, |o| {
        if block == 0 {
            return Ok(());
        }
        par_chunks_unit(o, block, COST_ARITH, |s, chunk| {
            let mut dot = vec![0f64; inner];
            for (bi, dx) in chunk.chunks_mut(block).enumerate() {
                let b0 = s + bi * block;
                let (yb, gb) = (&ys[b0..b0 + block], &gs[b0..b0 + block]);
                if inner == 1 {
                    let d: f64 = yb.iter().zip(gb).map(|(&yv, &gv)| yv as f64 * gv as f64).sum();
                    for ((dv, &yv), &gv) in dx.iter_mut().zip(yb).zip(gb) {
                        *dv = (yv as f64 * (gv as f64 - d)) as f32;
                    }
                    continue;
                }
                dot.fill(0.0);
                for r in 0..len {
                    let row = r * inner..(r + 1) * inner;
                    for ((d, &yv), &gv) in dot.iter_mut().zip(&yb[row.clone()]).zip(&gb[row]) {
                        *d += yv as f64 * gv as f64;
                    }
                }
                for r in 0..len {
                    let row = r * inner..(r + 1) * inner;
                    for (((dv, &yv), &gv), &d) in
                        dx[row.clone()].iter_mut().zip(&yb[row.clone()]).zip(&gb[row]).zip(&dot)
                    {
                        *dv = (yv as f64 * (gv as f64 - d)) as f32;
                    }
                }
            }
        });
        Ok(())
    })
}

/// Mean and 1/sqrt(biased variance + eps) of one row, in f64.
fn row_stats(x: &[f32], eps: f32) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps as f64).sqrt())
}

/// Layer norm over the last axis; `wb` holds the affine weight and bias.
pub(super) fn layer_norm(
    eps: f32,
    x: &View,
    wb: Option<(&View, &View)>,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("layer_norm", &[x, out])?;
    let d = x.shape.last().copied().unwrap_or(1);
    let xs = floats(x);
    let affine = match wb {
        Some((w, b)) => {
            require_float("layer_norm", &[w, b])?;
            Some((floats(w), floats(b)))
        }
        None => None,
    };
    with_f32_out(out.dtype, out_bytes, |o| {
        if d == 0 {
            return Ok(());
        }
        if let Some((w, b)) = &affine
            && (w.len() != d || b.len() != d)
        {
            return Err(cpu_err(format!(
                "layer_norm: weight/bias of {}/{} elements for rows of {d}",
                w.len(),
                b.len()
            )));
        }
        par_chunks_unit(o, d, 2 * COST_ARITH, |s, chunk| {
            for (ri, y) in chunk.chunks_mut(d).enumerate() {
                let r0 = s + ri * d;
                let row = &xs[r0..r0 + d];
                let (mean, rstd) = row_stats(row, eps);
                match &affine {
                    Some((w, b)) => {
                        for (((yv, &xv), &wv), &bv) in y.iter_mut().zip(row).zip(w.iter()).zip(b.iter()) {
                            *yv = ((xv as f64 - mean) * rstd * wv as f64 + bv as f64) as f32;
                        }
                    }
                    None => {
                        for (yv, &xv) in y.iter_mut().zip(row) {
                            *yv = ((xv as f64 - mean) * rstd) as f32;
                        }
                    }
                }
            }
        });
        Ok(())
    })
}

/// Gradient of layer norm w.r.t. x: with g = dy * w (or dy), dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
pub(super) fn layer_norm_bwd(
    eps: f32,
    x: &View,
    w: Option<&View>,
    dy: &View,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("layer_norm_bwd", &[x, dy, out])?;
    let d = x.shape.last().copied().unwrap_or(1);
    let (xs, gs) = (floats(x), floats(dy));
    let ws = match w {
        Some(w) => {
            require_float("layer_norm_bwd", &[w])?;
            Some(floats(w))
        }
        None => None,
    };
    with_f32_out(out.dtype, out_bytes, |o| {
        if d == 0 {
            return Ok(());
        }
        if let Some(w) = &ws
            && w.len() != d
        {
            return Err(cpu_err(format!("layer_norm_bwd: weight of {} elements for rows of {d}", w.len())));
        }
        par_chunks_unit(o, d, 2 * COST_ARITH, |s, chunk| {
            let mut g = vec![0f64; d];
            for (ri, dx) in chunk.chunks_mut(d).enumerate() {
                let r0 = s + ri * d;
                let row = &xs[r0..r0 + d];
                let (mean, rstd) = row_stats(row, eps);
                for (j, (gv, &dyv)) in g.iter_mut().zip(&gs[r0..r0 + d]).enumerate() {
                    *gv = dyv as f64 * ws.as_ref().map_or(1.0, |w| w[j] as f64);
                }
                let (mut mg, mut mgx) = (0f64, 0f64);
                for (&gv, &xv) in g.iter().zip(row) {
                    mg += gv;
                    mgx += gv * (xv as f64 - mean) * rstd;
                }
                mg /= d as f64;
                mgx /= d as f64;
                for ((dv, &gv), &xv) in dx.iter_mut().zip(&g).zip(row) {
                    let xhat = (xv as f64 - mean) * rstd;
                    *dv = (rstd * (gv - mg - xhat * mgx)) as f32;
                }
            }
        });
        Ok(())
    })
}


/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::Softmax { axis } => softmax(*axis, &ins[0], out, out_bytes),
        Op::SoftmaxBwd { axis } => softmax_bwd(*axis, &ins[0], &ins[1], out, out_bytes),
        Op::LayerNorm { eps, affine } => {
            let wb = if *affine { Some((&ins[1], &ins[2])) } else { None };
            layer_norm(*eps, &ins[0], wb, out, out_bytes)
        }
        Op::LayerNormBwd { eps, affine } => {
            let (w, dy) = if *affine { (Some(&ins[1]), &ins[2]) } else { (None, &ins[1]) };
            layer_norm_bwd(*eps, &ins[0], w, dy, out, out_bytes)
        }
        _ => Err(cpu_err(format!("{} is not a norm op", op.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::kernels::test_util::*;
    use crate::ops::Op;
    use crate::tensor::{DType, numel, strides};

    #[test]
    fn softmax_middle_axis_matches_naive() {
        let shape: &[usize] = &[3, 5, 4];
        let x: Vec<f32> = rand_vals(60, 11).iter().map(|v| v * 10.0).collect();
        let got = run_f32(&Op::Softmax { axis: 1 }, &[(shape, &x)], DType::F32);
        let st = strides(shape);
        for i in 0..3 {
            for k in 0..4 {
                let at = |j: usize| i * st[0] + j * st[1] + k;
                let m = (0..5).map(|j| x[at(j)] as f64).fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = (0..5).map(|j| (x[at(j)] as f64 - m).exp()).sum();
                for j in 0..5 {
                    let want = ((x[at(j)] as f64 - m).exp() / s) as f32;
                    assert!((got[at(j)] - want).abs() <= 1e-7, "{i} {j} {k}: {} vs {want}", got[at(j)]);
                }
            }
        }
        // Last axis, large and parallel, bf16 in and out.
        let shape: &[usize] = &[300, 257];
        let x = round_to(DType::BF16, &rand_vals(numel(shape), 12));
        let got = run_f32(&Op::Softmax { axis: 1 }, &[(shape, &x)], DType::BF16);
        for r in 0..300 {
            let row = &x[r * 257..(r + 1) * 257];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            let want: Vec<f32> = row.iter().map(|&v| ((v as f64 - m).exp() / s) as f32).collect();
            assert_eq!(&got[r * 257..(r + 1) * 257], &round_to(DType::BF16, &want)[..]);
        }
    }

    #[test]
    fn softmax_bwd_matches_formula() {
        let shape: &[usize] = &[2, 3, 4];
        let y = run_f32(&Op::Softmax { axis: 1 }, &[(shape, &rand_vals(24, 1))], DType::F32);
        let dy = rand_vals(24, 2);
        let got = run_f32(&Op::SoftmaxBwd { axis: 1 }, &[(shape, &y), (shape, &dy)], DType::F32);
        for i in 0..2 {
            for k in 0..4 {
                let at = |j: usize| i * 12 + j * 4 + k;
                let dot: f64 = (0..3).map(|j| y[at(j)] as f64 * dy[at(j)] as f64).sum();
                for j in 0..3 {
                    let want = (y[at(j)] as f64 * (dy[at(j)] as f64 - dot)) as f32;
                    assert!((got[at(j)] - want).abs() <= 1e-7);
                }
            }
        }
    }

    fn ln_forward(x: &[f32], w: &[f32], b: &[f32], d: usize, eps: f32) -> Vec<f32> {
        let shape = [x.len() / d, d];
        run_f32(&Op::LayerNorm { eps, affine: true }, &[(&shape, x), (&[d], w), (&[d], b)], DType::F32)
    }

    #[test]
    fn layer_norm_forward_and_bwd_vs_finite_difference() {
        let (rows, d, eps) = (3, 7, 1e-5f32);
        let x = rand_vals(rows * d, 21);
        let w: Vec<f32> = rand_vals(d, 22).iter().map(|v| 1.0 + v * 0.5).collect();
        let b = rand_vals(d, 23);
        let dy = rand_vals(rows * d, 24);
        let y = ln_forward(&x, &w, &b, d, eps);
        for r in 0..rows {
            let row = &x[r * d..(r + 1) * d];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                let want = (row[j] as f64 - mean) / (var + eps as f64).sqrt() * w[j] as f64 + b[j] as f64;
                assert!((y[r * d + j] as f64 - want).abs() < 1e-6);
            }
        }
        let shape = [rows, d];
        let dx =
            run_f32(&Op::LayerNormBwd { eps, affine: true }, &[(&shape, &x), (&[d], &w), (&shape, &dy)], DType::F32);
        // Finite differences of L = sum(y * dy) in f64 with a central step.
        let loss = |xv: &[f64]| -> f64 {
            let mut l = 0.0;
            for r in 0..rows {
                let row = &xv[r * d..(r + 1) * d];
                let mean = row.iter().sum::<f64>() / d as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
                for j in 0..d {
                    let yv = (row[j] - mean) / (var + eps as f64).sqrt() * w[j] as f64 + b[j] as f64;
                    l += yv * dy[r * d + j] as f64;
                }
            }
            l
        };
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for i in 0..rows * d {
            let h = 1e-5;
            let (mut xp, mut xm) = (x64.clone(), x64.clone());
            xp[i] += h;
            xm[i] -= h;
            let want = (loss(&xp) - loss(&xm)) / (2.0 * h);
            assert!((dx[i] as f64 - want).abs() < 1e-4 * want.abs().max(1.0), "dx[{i}] = {} vs {want}", dx[i]);
        }
        // Without affine: the same as w = 1.
        let ones = vec![1f32; d];
        let plain = run_f32(&Op::LayerNormBwd { eps, affine: false }, &[(&shape, &x), (&shape, &dy)], DType::F32);
        let with_ones =
            run_f32(&Op::LayerNormBwd { eps, affine: true }, &[(&shape, &x), (&[d], &ones), (&shape, &dy)], DType::F32);
        assert_eq!(plain, with_ones);
    }
}
