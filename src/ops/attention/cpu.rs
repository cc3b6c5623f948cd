//! Fused attention (`Op::Attention`), its row statistics (`Op::AttentionStats`) and its gradients
//! (`Op::AttentionBwd`), the reference for `kernels/attention.cu`.
//!
//! Layout: q `[B, Tq, H, D]`, k and v `[B, Tk, H, D]`; row (b, t, h) is `D` contiguous values. Every
//! (batch, head, query) row is computed in f64 from f32-decoded inputs: scores `s_j = scale * q.k_j` (key
//! `j > i` masked when causal), `p = softmax(s)`, `o = sum_j p_j v_j`.
//!
//! The backward follows flash-attention 2: P is recomputed from q, k and the row logsumexp (`AttentionStats`
//! row 0), `dP = dy v^T`, `dS = P * (dP - delta)` with `delta_i = sum_d dy_id o_id` (stats row 1), then
//! `dq = scale dS k`, `dk = scale dS^T q`, `dv = P^T dy`. The output is `[B, Tq + 2 Tk, H, D]` = (dq, dk, dv)
//! along axis 1.

use rayon::prelude::*;

use crate::backend::cpu::kernels::{View, cpu_err, floats, par_chunks_unit, require_float, with_f32_out};
use crate::ops::Op;
use crate::error::Result;

/// `[B, T, H, D]` of a 4-D shape.
fn dims(shape: &[usize]) -> Result<(usize, usize, usize, usize)> {
    match shape {
        [b, t, h, d] => Ok((*b, *t, *h, *d)),
        _ => Err(cpu_err(format!("attention needs [B, T, H, D] tensors, got {shape:?}"))),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Scaled, masked scores of query `i` against every key of one (b, h) into `s` (`-inf` where masked).
#[allow(clippy::too_many_arguments)]
fn scores(q: &[f32], ks: &[f32], krow: impl Fn(usize) -> usize, tk: usize, d: usize, i: usize, causal: bool, scale: f32, s: &mut Vec<f64>) {
    s.clear();
    s.extend((0..tk).map(|j| {
        if causal && j > i { f64::NEG_INFINITY } else { scale as f64 * dot(q, &ks[krow(j)..krow(j) + d]) }
    }));
}

/// Natural logsumexp of `s` (`-inf` when every entry is).
fn logsumexp(s: &[f64]) -> f64 {
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + s.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

pub(super) fn attention(causal: bool, scale: f32, q: &View, k: &View, v: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("attention", &[q, k, v, out])?;
    let (_, tq, h, d) = dims(q.shape)?;
    let (_, tk, _, _) = dims(k.shape)?;
    let (qs, ks, vs) = (floats(q), floats(k), floats(v));
    with_f32_out(out.dtype, out_bytes, |o| {
        if d == 0 {
            return Ok(());
        }
        par_chunks_unit(o, d, (4 * tk).max(1), |start, chunk| {
            let mut s = Vec::with_capacity(tk);
            let mut acc = vec![0f64; d];
            for (ri, orow) in chunk.chunks_mut(d).enumerate() {
                let row = start / d + ri; // (b * tq + i) * h + hh
                let (hh, bi) = (row % h, row / h);
                let (b, i) = (bi / tq, bi % tq);
                let krow = |j: usize| ((b * tk + j) * h + hh) * d;
                scores(&qs[row * d..(row + 1) * d], &ks, krow, tk, d, i, causal, scale, &mut s);
                let lse = logsumexp(&s);
                acc.fill(0.0);
                for (j, &sj) in s.iter().enumerate() {
                    let p = (sj - lse).exp();
                    if p != 0.0 {
                        for (a, &vv) in acc.iter_mut().zip(&vs[krow(j)..krow(j) + d]) {
                            *a += p * vv as f64;
                        }
                    }
                }
                for (ov, &a) in orow.iter_mut().zip(&acc) {
                    *ov = a as f32;
                }
            }
        });
        Ok(())
    })
}

pub(super) fn attention_stats(
    causal: bool,
    scale: f32,
    q: &View,
    k: &View,
    o: &View,
    dy: &View,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("attention_stats", &[q, k, o, dy, out])?;
    let (_, tq, h, d) = dims(q.shape)?;
    let (_, tk, _, _) = dims(k.shape)?;
    let (qs, ks, os, gs) = (floats(q), floats(k), floats(o), floats(dy));
    with_f32_out(out.dtype, out_bytes, |st| {
        if tq == 0 {
            return Ok(());
        }
        // One (b, h) block of 2 * Tq values per unit.
        par_chunks_unit(st, 2 * tq, (4 * tk * d.max(1) / 16).max(1), |start, chunk| {
            let mut s = Vec::with_capacity(tk);
            for (bi, blk) in chunk.chunks_mut(2 * tq).enumerate() {
                let bh = start / (2 * tq) + bi;
                let (b, hh) = (bh / h, bh % h);
                let krow = |j: usize| ((b * tk + j) * h + hh) * d;
                for i in 0..tq {
                    let r = ((b * tq + i) * h + hh) * d;
                    scores(&qs[r..r + d], &ks, krow, tk, d, i, causal, scale, &mut s);
                    blk[i] = logsumexp(&s) as f32;
                    blk[tq + i] = dot(&os[r..r + d], &gs[r..r + d]) as f32;
                }
            }
        });
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn attention_bwd(
    causal: bool,
    scale: f32,
    q: &View,
    k: &View,
    v: &View,
    dy: &View,
    stats: &View,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("attention_bwd", &[q, k, v, dy, stats, out])?;
    let (bsz, tq, h, d) = dims(q.shape)?;
    let (_, tk, _, _) = dims(k.shape)?;
    let (qs, ks, vs, gs, st) = (floats(q), floats(k), floats(v), floats(dy), floats(stats));
    let tout = tq + 2 * tk;
    // Per (b, h): dq [Tq, D], dk [Tk, D], dv [Tk, D] in f64, then scattered into the interleaved layout.
    let per_head: Vec<Vec<f64>> = (0..bsz * h)
        .into_par_iter()
        .map(|bh| {
            let (b, hh) = (bh / h, bh % h);
            let qrow = |i: usize| ((b * tq + i) * h + hh) * d;
            let krow = |j: usize| ((b * tk + j) * h + hh) * d;
            let mut g = vec![0f64; tout * d];
            let (mut s, mut ds) = (Vec::with_capacity(tk), vec![0f64; tk]);
            for i in 0..tq {
                let (lse, delta) = (st[bh * 2 * tq + i] as f64, st[bh * 2 * tq + tq + i] as f64);
                let (qi, gi) = (&qs[qrow(i)..qrow(i) + d], &gs[qrow(i)..qrow(i) + d]);
                scores(qi, &ks, krow, tk, d, i, causal, scale, &mut s);
                for j in 0..tk {
                    let p = (s[j] - lse).exp();
                    let dp = dot(gi, &vs[krow(j)..krow(j) + d]);
                    ds[j] = p * (dp - delta);
                    if p != 0.0 {
                        let dv = &mut g[(tq + tk + j) * d..(tq + tk + j + 1) * d];
                        for (a, &gv) in dv.iter_mut().zip(gi) {
                            *a += p * gv as f64;
                        }
                    }
                }
                for j in 0..tk {
                    if ds[j] == 0.0 {
                        continue;
                    }
                    let c = scale as f64 * ds[j];
                    let kj = &ks[krow(j)..krow(j) + d];
                    let (dq, rest) = g.split_at_mut(tq * d);
                    for (a, &kv) in dq[i * d..(i + 1) * d].iter_mut().zip(kj) {
                        *a += c * kv as f64;
                    }
                    for (a, &qv) in rest[j * d..(j + 1) * d].iter_mut().zip(qi) {
                        *a += c * qv as f64;
                    }
                }
            }
            g
        })
        .collect();
    with_f32_out(out.dtype, out_bytes, |o| {
        for (bh, g) in per_head.iter().enumerate() {
            let (b, hh) = (bh / h, bh % h);
            for t in 0..tout {
                let dst = ((b * tout + t) * h + hh) * d;
                for (ov, &gv) in o[dst..dst + d].iter_mut().zip(&g[t * d..(t + 1) * d]) {
                    *ov = gv as f32;
                }
            }
        }
        Ok(())
    })
}


/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::Attention { causal, scale } => attention(*causal, *scale, &ins[0], &ins[1], &ins[2], out, out_bytes),
        Op::AttentionStats { causal, scale } => {
            attention_stats(*causal, *scale, &ins[0], &ins[1], &ins[2], &ins[3], out, out_bytes)
        }
        Op::AttentionBwd { causal, scale } => {
            attention_bwd(*causal, *scale, &ins[0], &ins[1], &ins[2], &ins[3], &ins[4], out, out_bytes)
        }
        _ => Err(cpu_err(format!("{} is not a attention op", op.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::kernels::test_util::*;
    use crate::ops::Op;
    use crate::tensor::DType;

    /// Naive attention through explicit softmax of the score matrix, in f64.
    fn naive(q: &[f32], k: &[f32], v: &[f32], dims: [usize; 5], causal: bool, scale: f32) -> Vec<f64> {
        let [b, tq, tk, h, d] = dims;
        let mut o = vec![0f64; b * tq * h * d];
        for bb in 0..b {
            for hh in 0..h {
                for i in 0..tq {
                    let qi = &q[((bb * tq + i) * h + hh) * d..][..d];
                    let s: Vec<f64> = (0..tk)
                        .map(|j| {
                            let kj = &k[((bb * tk + j) * h + hh) * d..][..d];
                            let v: f64 = qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum();
                            if causal && j > i { f64::NEG_INFINITY } else { v * scale as f64 }
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for dd in 0..d {
                        let mut acc = 0.0;
                        for j in 0..tk {
                            acc += e[j] / z * v[((bb * tk + j) * h + hh) * d + dd] as f64;
                        }
                        o[((bb * tq + i) * h + hh) * d + dd] = acc;
                    }
                }
            }
        }
        o
    }

    #[test]
    fn forward_matches_naive_softmax() {
        for causal in [false, true] {
            let (b, tq, tk, h, d) = (2, 5, if causal { 5 } else { 7 }, 3, 4);
            let q = rand_vals(b * tq * h * d, 1);
            let k = rand_vals(b * tk * h * d, 2);
            let v = rand_vals(b * tk * h * d, 3);
            let scale = 0.7;
            let got = run_f32(
                &Op::Attention { causal, scale },
                &[(&[b, tq, h, d], &q), (&[b, tk, h, d], &k), (&[b, tk, h, d], &v)],
                DType::F32,
            );
            let want = naive(&q, &k, &v, [b, tq, tk, h, d], causal, scale);
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
            }
        }
    }

    /// The backward against central differences of `L = sum(o * dy)` through the naive forward.
    #[test]
    fn backward_matches_finite_differences() {
        for causal in [false, true] {
            let (b, tq, tk, h, d) = (1, 4, if causal { 4 } else { 3 }, 2, 3);
            let scale = 0.9;
            let q = rand_vals(b * tq * h * d, 4);
            let k = rand_vals(b * tk * h * d, 5);
            let v = rand_vals(b * tk * h * d, 6);
            let dy = rand_vals(b * tq * h * d, 7);
            let (qs, ks): (&[usize], &[usize]) = (&[b, tq, h, d], &[b, tk, h, d]);
            let op = Op::Attention { causal, scale };
            let o = run_f32(&op, &[(qs, &q), (ks, &k), (ks, &v)], DType::F32);
            let stats = run_f32(
                &Op::AttentionStats { causal, scale },
                &[(qs, &q), (ks, &k), (qs, &o), (qs, &dy)],
                DType::F32,
            );
            let g = run_f32(
                &Op::AttentionBwd { causal, scale },
                &[(qs, &q), (ks, &k), (ks, &v), (qs, &dy), (&[b, h, 2, tq], &stats)],
                DType::F32,
            );
            let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
                naive(q, k, v, [b, tq, tk, h, d], causal, scale).iter().zip(&dy).map(|(a, &c)| a * c as f64).sum()
            };
            let eps = 1e-3f32;
            let fd = |which: usize, idx: usize| {
                let mut ins = [q.clone(), k.clone(), v.clone()];
                ins[which][idx] += eps;
                let lp = loss(&ins[0], &ins[1], &ins[2]);
                ins[which][idx] -= 2.0 * eps;
                let lm = loss(&ins[0], &ins[1], &ins[2]);
                (lp - lm) / (2.0 * eps as f64)
            };
            // Output rows (b, t, h): t < tq is dq, then dk, then dv.
            let tout = tq + 2 * tk;
            for t in 0..tout {
                for hh in 0..h {
                    for dd in 0..d {
                        let (which, row) = if t < tq { (0, t) } else if t < tq + tk { (1, t - tq) } else { (2, t - tq - tk) };
                        let want = fd(which, (row * h + hh) * d + dd);
                        let got = g[(t * h + hh) * d + dd] as f64;
                        assert!((got - want).abs() < 1e-3 * (1.0 + want.abs()), "causal {causal} t {t} h {hh} d {dd}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
