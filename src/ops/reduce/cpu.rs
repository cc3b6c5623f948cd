//! `Reduce`: sum, mean and max over any set of axes, accumulated in f64.
//!
//! The kept axes are walked like an output of their own; the reduced axes become a list of base offsets plus
//! one inner run. Every output folds its reduced elements in the same (row-major) order whichever way the
//! work is split, and partial results are combined in a fixed order, so results do not depend on threads.

use rayon::prelude::*;

use crate::backend::cpu::kernels::walk::Walk;
use crate::backend::cpu::kernels::{View, floats, require_float, sum_f64, with_f32_out, worth_parallel, cpu_err};
use crate::ops::Op;
use crate::error::Result;
use crate::ops::ReduceOp;
use crate::tensor;

/// Reduced elements per partial result when a few outputs each reduce many elements.
const Q_CHUNK: usize = 1 << 14;
/// Up to this many outputs, a reduction over at least `2 * Q_CHUNK` elements is split into partial results.
/// The choice depends on the shapes only, so results never depend on the number of threads.
const SPLIT_MAX_OUTPUTS: usize = 16;

/// The reduced axes as a list of base offsets (`outer`) times one inner run of `len` elements `stride` apart.
struct Reduced {
    outer: Vec<usize>,
    len: usize,
    stride: usize,
}

impl Reduced {
    fn count(&self) -> usize {
        self.outer.len() * self.len
    }
}

/// Drops size-1 axes and merges axes that are contiguous with each other.
fn coalesce(dims: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut d, mut s): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    for (&n, &st) in dims.iter().zip(strides) {
        if n == 1 {
            continue;
        }
        match (d.last_mut(), s.last_mut()) {
            (Some(ld), Some(ls)) if *ls == st * n => {
                *ld *= n;
                *ls = st;
            }
            _ => {
                d.push(n);
                s.push(st);
            }
        }
    }
    (d, s)
}

fn reduced_layout(dims: &[usize], strides: &[usize]) -> Reduced {
    let (d, s) = coalesce(dims, strides);
    let Some((&len, outer_dims)) = d.split_last() else {
        return Reduced { outer: vec![0], len: 1, stride: 0 };
    };
    let stride = s[s.len() - 1];
    let outer_st = &s[..s.len() - 1];
    let n: usize = outer_dims.iter().product();
    let mut outer = Vec::with_capacity(n);
    let mut idx = vec![0usize; outer_dims.len()];
    let mut off = 0usize;
    for _ in 0..n {
        outer.push(off);
        for k in (0..outer_dims.len()).rev() {
            idx[k] += 1;
            off += outer_st[k];
            if idx[k] < outer_dims[k] {
                break;
            }
            idx[k] = 0;
            off -= outer_st[k] * outer_dims[k];
        }
    }
    Reduced { outer, len, stride }
}

#[inline(always)]
fn combine<const MAX: bool>(acc: f64, v: f32) -> f64 {
    if MAX {
        let v = v as f64;
        if v > acc || v.is_nan() { v } else { acc }
    } else {
        acc + v as f64
    }
}

/// Folds reduced elements `q0..q1` (row-major over the reduced axes) into `acc[j]`, the accumulator of the
/// output whose input base offset is `base + j * kst`.
#[allow(clippy::too_many_arguments)]
fn fold<const MAX: bool>(xs: &[f32], red: &Reduced, q0: usize, q1: usize, base: usize, kst: usize, acc: &mut [f64]) {
    let (rin, rst) = (red.len, red.stride);
    let mut q = q0;
    while q < q1 {
        let t0 = q % rin;
        let t1 = rin.min(t0 + (q1 - q));
        let rb = base + red.outer[q / rin];
        if kst == 1 {
            let n = acc.len();
            for t in t0..t1 {
                let row = &xs[rb + t * rst..rb + t * rst + n];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a = combine::<MAX>(*a, v);
                }
            }
        } else {
            for (j, a) in acc.iter_mut().enumerate() {
                let b = rb + j * kst;
                if rst == 1 && !MAX {
                    *a += sum_f64(&xs[b + t0..b + t1]);
                } else if rst == 1 {
                    for &v in &xs[b + t0..b + t1] {
                        *a = combine::<MAX>(*a, v);
                    }
                } else {
                    for t in t0..t1 {
                        *a = combine::<MAX>(*a, xs[b + t * rst]);
                    }
                }
            }
        }
        q += t1 - t0;
    }
}

fn finish(op: ReduceOp, acc: f64, count: usize) -> f32 {
    match op {
        ReduceOp::Sum | ReduceOp::Max => acc as f32,
        ReduceOp::Mean => (acc / count as f64) as f32,
    }
}

fn reduce_into<const MAX: bool>(op: ReduceOp, xs: &[f32], kept: &Walk<1>, red: &Reduced, o: &mut [f32]) {
    let init = if MAX { f64::NEG_INFINITY } else { 0.0 };
    let count = red.count();
    let [kst] = kept.inner_strides();
    let n_out = o.len();
    let work = n_out.saturating_mul(count);
    // All outputs in `s..s + chunk.len()` computed by one thread.
    let by_outputs = |s: usize, chunk: &mut [f32]| {
        let mut acc = Vec::new();
        kept.runs(s, s + chunk.len(), |pos, [base], len| {
            acc.clear();
            acc.resize(len, init);
            fold::<MAX>(xs, red, 0, count, base, kst, &mut acc);
            for (y, &a) in chunk[pos - s..pos - s + len].iter_mut().zip(&acc) {
                *y = finish(op, a, count);
            }
        });
    };
    if n_out >= SPLIT_MAX_OUTPUTS || count < 2 * Q_CHUNK {
        if worth_parallel(work) && n_out > 1 {
            let chunk = n_out.div_ceil(rayon::current_num_threads() * 4);
            o.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| by_outputs(i * chunk, c));
        } else {
            by_outputs(0, o);
        }
    } else {
        // Few outputs, many reduced elements each: partial results over fixed pieces of the reduced elements.
        let part = |p: usize| {
            let (q0, q1) = (p * Q_CHUNK, ((p + 1) * Q_CHUNK).min(count));
            let mut acc = vec![init; n_out];
            kept.runs(0, n_out, |pos, [base], len| {
                fold::<MAX>(xs, red, q0, q1, base, kst, &mut acc[pos..pos + len]);
            });
            acc
        };
        let n_parts = count.div_ceil(Q_CHUNK);
        let parts: Vec<Vec<f64>> = if worth_parallel(work) {
            (0..n_parts).into_par_iter().map(part).collect()
        } else {
            (0..n_parts).map(part).collect()
        };
        let mut total = vec![init; n_out];
        for part in &parts {
            for (t, &p) in total.iter_mut().zip(part) {
                *t = if MAX { if p > *t || p.is_nan() { p } else { *t } } else { *t + p };
            }
        }
        for (y, &a) in o.iter_mut().zip(&total) {
            *y = finish(op, a, count);
        }
    }
}

pub(super) fn reduce(op: ReduceOp, axes: &[usize], x: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("reduce", &[x, out])?;
    let xs = floats(x);
    let st = tensor::strides(x.shape);
    let (mut kd, mut ks, mut rd, mut rs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (&d, &s)) in x.shape.iter().zip(&st).enumerate() {
        if axes.contains(&i) {
            rd.push(d);
            rs.push(s);
        } else {
            kd.push(d);
            ks.push(s);
        }
    }
    let kept = Walk::new(&kd, [&ks]);
    let red = reduced_layout(&rd, &rs);
    with_f32_out(out.dtype, out_bytes, |o| {
        if red.count() == 0 {
            o.fill(match op {
                ReduceOp::Sum => 0.0,
                ReduceOp::Mean => f32::NAN,
                ReduceOp::Max => f32::NEG_INFINITY,
            });
        } else if op == ReduceOp::Max {
            reduce_into::<true>(op, &xs, &kept, &red, o);
        } else {
            reduce_into::<false>(op, &xs, &kept, &red, o);
        }
        Ok(())
    })
}


/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::Reduce { op: r, axes, .. } => reduce(*r, axes, &ins[0], out, out_bytes),
        _ => Err(cpu_err(format!("{} is not a reduce op", op.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::kernels::test_util::*;
    use crate::ops::{Op, ReduceOp};
    use crate::tensor::{DType, numel, strides};

    /// Naive reduction: for every input element, add it to the output it maps to.
    fn naive(op: ReduceOp, shape: &[usize], axes: &[usize], x: &[f32]) -> Vec<f32> {
        let keep: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
        let n_out = numel(&keep);
        let count = (numel(shape) / n_out.max(1)).max(1) as f64;
        let init = if op == ReduceOp::Max { f64::NEG_INFINITY } else { 0.0 };
        let mut acc = vec![init; n_out];
        let (st, kst) = (strides(shape), strides(&keep));
        for (e, &v) in x.iter().enumerate() {
            let mut o = 0;
            for i in 0..shape.len() {
                let idx = (e / st[i]) % shape[i];
                if !axes.contains(&i) {
                    o += idx * kst[i];
                }
            }
            acc[o] = if op == ReduceOp::Max { acc[o].max(v as f64) } else { acc[o] + v as f64 };
        }
        acc.iter().map(|&a| if op == ReduceOp::Mean { (a / count) as f32 } else { a as f32 }).collect()
    }

    #[test]
    fn reduce_matches_naive() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[4, 5, 6], &[1]),
            (&[4, 5, 6], &[0, 2]),
            (&[4, 5, 6], &[2, 0]),
            (&[4, 5, 6], &[0]),
            (&[4, 5, 6], &[2]),
            (&[4, 5, 6], &[0, 1, 2]),
            (&[4, 5, 6], &[]),
            (&[3, 1, 4, 2, 5], &[1, 3]),
            (&[3, 2, 4, 2, 5], &[0, 2, 4]),
            (&[300, 200], &[0]),
            (&[300, 200], &[1]),
            (&[2, 70000], &[1]),
            (&[70000, 3], &[0]),
            (&[150000], &[0]),
            (&[64, 32, 40], &[0, 2]),
        ];
        for (ci, &(shape, axes)) in cases.iter().enumerate() {
            let x = rand_vals(numel(shape), 100 + ci as u64);
            for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
                for keepdim in [false, true] {
                    let r = Op::Reduce { op, axes: axes.to_vec(), keepdim };
                    let got = run_f32(&r, &[(shape, &x)], DType::F32);
                    let want = naive(op, shape, axes, &x);
                    assert_eq!(got.len(), want.len());
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-6 * w.abs().max(1.0);
                        assert!((g - w).abs() <= tol, "{op:?} {shape:?} {axes:?} [{i}]: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn reduce_bf16_and_empty() {
        let shape: &[usize] = &[8, 16];
        let x = round_to(DType::BF16, &rand_vals(128, 5));
        let got = run_f32(&Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: true }, &[(shape, &x)], DType::BF16);
        let want = round_to(DType::BF16, &naive(ReduceOp::Sum, shape, &[1], &x));
        assert_eq!(got, want);
        let e: &[usize] = &[3, 0];
        let got = run_f32(&Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: false }, &[(e, &[])], DType::F32);
        assert_eq!(got, vec![0.0; 3]);
        let got = run_f32(&Op::Reduce { op: ReduceOp::Max, axes: vec![1], keepdim: false }, &[(e, &[])], DType::F32);
        assert_eq!(got, vec![f32::NEG_INFINITY; 3]);
    }
}
