//! 2-D convolution on NHWC activations with `[O, C, kh, kw]` weights, and its two backward ops.
//!
//! All three are "gather a patch row, multiply by a repacked weight matrix" products through the `gemm` crate
//! (f32), so the reference is both simple and reasonably fast:
//! - forward: row `(n, ho, wo)` of the output is `patch [kh*kw*C] @ Wt [kh*kw*C, O]`, the patch holding the
//!   input pixels under the kernel (zeros in the padding), `Wt[(ky, kx, c), o] = w[o, c, ky, kx]`.
//! - backward data: row `(n, hi, wi)` of dx is `patch [kh*kw*O] @ W' [kh*kw*O, C]`, where the patch holds
//!   `dy[n, ho, wo, :]` for every tap `(ky, kx)` with `hi = ho*stride - padding + ky` (and the same for w),
//!   zeros where no output pixel reaches this input through that tap.
//! - backward weight: `dw[o, (ky, kx, c)] = sum over rows of dy[row, o] * patch[row, (ky, kx, c)]`: rows in
//!   fixed blocks, a fixed number of groups of blocks summed in parallel, the groups added in f64 in order, so
//!   the result does not depend on the number of threads.
//!
//! Patches are built 128 rows at a time, so memory stays small for any image size.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::backend::cpu::kernels::{COST_ARITH, View, cpu_err, floats, par_chunks_unit, require_float, with_f32_out, worth_parallel};
use crate::ops::Op;
use crate::error::Result;

/// Patch rows built and multiplied at once.
const ROWS: usize = 128;
/// Groups of row blocks whose partial weight gradients are summed in parallel (fixed: determinism).
const WGRAD_GROUPS: usize = 16;

/// Convolution geometry, from the input and output shapes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
}

impl Geom {
    /// The geometry of a convolution from input `x [n, h, w, c]` to output `y [n, ho, wo, o]` with a `kh x kw`
    /// kernel, checked for consistency.
    pub(super) fn new(what: &str, x: &[usize], y: &[usize], kh: usize, kw: usize, stride: usize, padding: usize) -> Result<Geom> {
        let g = Geom { n: x[0], h: x[1], w: x[2], c: x[3], ho: y[1], wo: y[2], o: y[3], kh, kw, stride, padding };
        let ok = |size: usize, k: usize, out: usize| {
            stride > 0 && size + 2 * padding >= k && (size + 2 * padding - k) / stride + 1 == out
        };
        if !ok(g.h, g.kh, g.ho) || !ok(g.w, g.kw, g.wo) || y[0] != x[0] {
            return Err(cpu_err(format!("{what}: inconsistent geometry {g:?}")));
        }
        Ok(g)
    }

    /// Whether the convolution is a plain matrix product over pixels: 1x1, stride 1, no padding.
    pub(super) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }
}

/// The weight `w [o, c, kh, kw]` as the matrix `[(ky, kx, c), o]` (forward, `by_input`) or `[(ky, kx, o), c]`
/// (backward data): a pure permutation, done in 16 x 16 tiles of (c, o) with every tap of a tile at once, so
/// each cache line of `w` is read once and each line of the result written whole; tasks are blocks of result
/// rows. (The element-by-element scatter this replaces was 17% of an SD v1 UNet forward.)
pub(super) fn repack_weight(g: &Geom, wv: &[f32], by_input: bool) -> Vec<f32> {
    const BLOCK: usize = 16;
    let taps = g.kh * g.kw;
    // Result row (tap, a), column b; w[o, c, tap] with (a, b) = (c, o) forward, (o, c) backward data.
    let (rows, cols) = if by_input { (g.c, g.o) } else { (g.o, g.c) };
    let (a_stride, b_stride) = if by_input { (taps, g.c * taps) } else { (g.c * taps, taps) };
    let mut m = vec![0f32; taps * rows * cols];
    if m.is_empty() {
        return m;
    }
    let parallel = worth_parallel(m.len());
    // Task i owns rows (tap, a) for a in block i, for every tap: one slice per tap.
    let mut tasks: Vec<Vec<&mut [f32]>> = (0..rows.div_ceil(BLOCK)).map(|_| Vec::with_capacity(taps)).collect();
    for tap_rows in m.chunks_mut(rows * cols) {
        for (task, block) in tasks.iter_mut().zip(tap_rows.chunks_mut(BLOCK * cols)) {
            task.push(block);
        }
    }
    let run = |(i, mut dst): (usize, Vec<&mut [f32]>)| {
        let a0 = i * BLOCK;
        let a_len = dst[0].len() / cols;
        for b0 in (0..cols).step_by(BLOCK) {
            for ai in 0..a_len {
                for b in b0..(b0 + BLOCK).min(cols) {
                    let src = &wv[(a0 + ai) * a_stride + b * b_stride..][..taps];
                    for (row, &v) in dst.iter_mut().zip(src) {
                        row[ai * cols + b] = v;
                    }
                }
            }
        }
    };
    if parallel {
        tasks.into_par_iter().enumerate().for_each(run);
    } else {
        tasks.into_iter().enumerate().for_each(run);
    }
    m
}

/// `dst [m, n] (+)= lhs [m, k] @ rhs [k, n]`: `lhs` row stride `lrs` and column stride `lcs`, `rhs` row-major,
/// `dst` row-major; `acc` adds to `dst` instead of overwriting it. One thread.
#[allow(clippy::too_many_arguments)]
fn gemm_f32(m: usize, n: usize, k: usize, dst: &mut [f32], acc: bool, lhs: &[f32], lrs: usize, lcs: usize, rhs: &[f32]) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(dst.len() >= m * n && rhs.len() >= k * n);
    assert!(lhs.len() > (m - 1) * lrs + (k - 1) * lcs);
    // SAFETY: the asserts above keep every element read from `lhs` (i*lrs + j*lcs), `rhs` (i*n + j) and
    // written to `dst` (i*n + j) inside its slice; `dst` is a unique borrow, so it aliases neither operand.
    // With `read_dst`, gemm computes dst = alpha*dst + beta*lhs@rhs; without it, dst = beta*lhs@rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            acc,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `out [rows, ncols] = patch [rows, k] @ b [k, ncols]` with patch row `r` filled by `fill(r, row)`; rows
/// are split over rayon tasks, each building its patches `ROWS` at a time.
fn patch_gemm(k: usize, ncols: usize, b: &[f32], out: &mut [f32], fill: impl Fn(usize, &mut [f32]) + Sync) {
    if ncols == 0 {
        return;
    }
    par_chunks_unit(out, ncols, 2 * k.max(1), |start, chunk| {
        let mut patch = vec![0f32; ROWS * k];
        let row0 = start / ncols;
        for (bi, block) in chunk.chunks_mut(ROWS * ncols).enumerate() {
            let rows = block.len() / ncols;
            for r in 0..rows {
                fill(row0 + bi * ROWS + r, &mut patch[r * k..(r + 1) * k]);
            }
            gemm_f32(rows, ncols, k, block, false, &patch, k, 1, b);
        }
    });
}

/// The input patch under output pixel `row = (n, ho, wo)`, ordered `(ky, kx, c)`, zeros in the padding.
pub(super) fn fill_input_patch(g: &Geom, xs: &[f32], row: usize, p: &mut [f32]) {
    let (wo, rest) = (row % g.wo, row / g.wo);
    let (ho, n) = (rest % g.ho, rest / g.ho);
    let c = g.c;
    for ky in 0..g.kh {
        let hi = (ho * g.stride + ky) as isize - g.padding as isize;
        for kx in 0..g.kw {
            let wi = (wo * g.stride + kx) as isize - g.padding as isize;
            let dst = &mut p[(ky * g.kw + kx) * c..(ky * g.kw + kx + 1) * c];
            if hi < 0 || wi < 0 || hi as usize >= g.h || wi as usize >= g.w {
                dst.fill(0.0);
            } else {
                let at = ((n * g.h + hi as usize) * g.w + wi as usize) * c;
                dst.copy_from_slice(&xs[at..at + c]);
            }
        }
    }
}

/// The dy rows that reach input pixel `row = (n, hi, wi)`, one per tap `(ky, kx)`, zeros where none does.
pub(super) fn fill_grad_patch(g: &Geom, dys: &[f32], row: usize, p: &mut [f32]) {
    let (wi, rest) = (row % g.w, row / g.w);
    let (hi, n) = (rest % g.h, rest / g.h);
    let (o, s) = (g.o, g.stride);
    // Output index along one axis reached through tap k, if any: (i + padding - k) / stride when exact.
    let reach = |i: usize, k: usize, lim: usize| -> Option<usize> {
        let t = (i + g.padding).checked_sub(k)?;
        (t % s == 0 && t / s < lim).then_some(t / s)
    };
    for ky in 0..g.kh {
        let ho = reach(hi, ky, g.ho);
        for kx in 0..g.kw {
            let dst = &mut p[(ky * g.kw + kx) * o..(ky * g.kw + kx + 1) * o];
            match (ho, reach(wi, kx, g.wo)) {
                (Some(ho), Some(wo)) => {
                    let at = ((n * g.ho + ho) * g.wo + wo) * o;
                    dst.copy_from_slice(&dys[at..at + o]);
                }
                _ => dst.fill(0.0),
            }
        }
    }
}

pub(super) fn conv2d(
    stride: usize,
    padding: usize,
    x: &View,
    w: &View,
    bias: Option<&View>,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("conv2d", &[x, w, out])?;
    let g = Geom::new("conv2d", x.shape, out.shape, w.shape[2], w.shape[3], stride, padding)?;
    let (xs, wv) = (floats(x), floats(w));
    let bv = match bias {
        Some(b) => {
            require_float("conv2d", &[b])?;
            Some(floats(b))
        }
        None => None,
    };
    let k = g.kh * g.kw * g.c;
    let wt = repack_weight(&g, &wv, true);
    with_f32_out(out.dtype, out_bytes, |o| {
        patch_gemm(k, g.o, &wt, o, |row, p| fill_input_patch(&g, &xs, row, p));
        if let Some(b) = &bv {
            par_chunks_unit(o, g.o, COST_ARITH, |_, chunk| {
                for r in chunk.chunks_mut(g.o) {
                    for (v, &bb) in r.iter_mut().zip(b.iter()) {
                        *v += bb;
                    }
                }
            });
        }
        Ok(())
    })
}

pub(super) fn conv2d_bwd_data(
    stride: usize,
    padding: usize,
    dy: &View,
    w: &View,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("conv2d_bwd_data", &[dy, w, out])?;
    let g = Geom::new("conv2d_bwd_data", out.shape, dy.shape, w.shape[2], w.shape[3], stride, padding)?;
    let (dys, wv) = (floats(dy), floats(w));
    let k = g.kh * g.kw * g.o;
    let wp = repack_weight(&g, &wv, false);
    with_f32_out(out.dtype, out_bytes, |o| {
        patch_gemm(k, g.c, &wp, o, |row, p| fill_grad_patch(&g, &dys, row, p));
        Ok(())
    })
}

pub(super) fn conv2d_bwd_weight(
    stride: usize,
    padding: usize,
    x: &View,
    dy: &View,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("conv2d_bwd_weight", &[x, dy, out])?;
    let g = Geom::new("conv2d_bwd_weight", x.shape, dy.shape, out.shape[2], out.shape[3], stride, padding)?;
    let (xs, dys) = (floats(x), floats(dy));
    let k = g.kh * g.kw * g.c;
    let m = g.n * g.ho * g.wo;
    let blocks = m.div_ceil(ROWS);
    let groups = blocks.clamp(1, WGRAD_GROUPS);
    let per_group = blocks.div_ceil(groups);
    // Partial dw [o, (ky, kx, c)] of each group of row blocks.
    let partials: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|gi| {
            let mut acc = vec![0f32; g.o * k];
            let mut patch = vec![0f32; ROWS * k];
            for b in gi * per_group..((gi + 1) * per_group).min(blocks) {
                let r0 = b * ROWS;
                let rows = ROWS.min(m - r0);
                for r in 0..rows {
                    fill_input_patch(&g, &xs, r0 + r, &mut patch[r * k..(r + 1) * k]);
                }
                // dy block viewed as [o, rows]: element (o, r) at r*O + o.
                gemm_f32(g.o, k, rows, &mut acc, true, &dys[r0 * g.o..], 1, g.o, &patch);
            }
            acc
        })
        .collect();
    with_f32_out(out.dtype, out_bytes, |dw| {
        par_chunks_unit(dw, 1, COST_ARITH * groups, |start, chunk| {
            for (i, v) in chunk.iter_mut().enumerate() {
                // dw index (o, c, ky, kx) -> partial index (o, (ky, kx, c)).
                let idx = start + i;
                let (kx, rest) = (idx % g.kw, idx / g.kw);
                let (ky, rest) = (rest % g.kh, rest / g.kh);
                let (c, o) = (rest % g.c, rest / g.c);
                let at = o * k + (ky * g.kw + kx) * g.c + c;
                *v = partials.iter().map(|p| p[at] as f64).sum::<f64>() as f32;
            }
        });
        Ok(())
    })
}


/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::Conv2d { stride, padding, bias } => {
            let b = if *bias { Some(&ins[2]) } else { None };
            conv2d(*stride, *padding, &ins[0], &ins[1], b, out, out_bytes)
        }
        Op::Conv2dBwdData { stride, padding, .. } => {
            conv2d_bwd_data(*stride, *padding, &ins[0], &ins[1], out, out_bytes)
        }
        Op::Conv2dBwdWeight { stride, padding, .. } => {
            conv2d_bwd_weight(*stride, *padding, &ins[0], &ins[1], out, out_bytes)
        }
        _ => Err(cpu_err(format!("{} is not a conv op", op.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::kernels::test_util::*;
    use crate::ops::Op;
    use crate::tensor::DType;

    /// Direct seven-loop convolution in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(x: &[f32], w: &[f32], xs: [usize; 4], ws: [usize; 4], s: usize, p: usize) -> (Vec<f64>, [usize; 4]) {
        let [n, h, wd, c] = xs;
        let [o, _, kh, kw] = ws;
        let ho = (h + 2 * p - kh) / s + 1;
        let wo = (wd + 2 * p - kw) / s + 1;
        let mut y = vec![0f64; n * ho * wo * o];
        for b in 0..n {
            for i in 0..ho {
                for j in 0..wo {
                    for oo in 0..o {
                        let mut acc = 0f64;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (hi, wi) = ((i * s + ky) as isize - p as isize, (j * s + kx) as isize - p as isize);
                                if hi < 0 || wi < 0 || hi as usize >= h || wi as usize >= wd {
                                    continue;
                                }
                                for cc in 0..c {
                                    acc += x[((b * h + hi as usize) * wd + wi as usize) * c + cc] as f64
                                        * w[((oo * c + cc) * kh + ky) * kw + kx] as f64;
                                }
                            }
                        }
                        y[((b * ho + i) * wo + j) * o + oo] = acc;
                    }
                }
            }
        }
        (y, [n, ho, wo, o])
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            assert!((a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}[{i}]: {a} vs {b}");
        }
    }

    #[test]
    fn conv_and_both_backward_ops_match_naive_loops() {
        // 300 output rows: more than one patch block of 128 rows.
        for (xs, ws, s, p) in [
            ([2, 5, 7, 3], [4, 3, 3, 3], 1, 1),
            ([1, 7, 6, 5], [3, 5, 3, 3], 2, 1),
            ([2, 6, 5, 4], [6, 4, 1, 1], 2, 0),
            ([3, 10, 10, 2], [2, 2, 3, 3], 1, 0),
            ([1, 9, 8, 3], [2, 3, 2, 3], 2, 2),
        ] {
            let x = rand_vals(xs.iter().product(), 1);
            let w = rand_vals(ws.iter().product(), 2);
            let (want, ys) = naive(&x, &w, xs, ws, s, p);
            let b = rand_vals(ws[0], 3);
            let got = run_f32(&Op::Conv2d { stride: s, padding: p, bias: false }, &[(&xs, &x), (&ws, &w)], DType::F32);
            close(&got, &want, "conv2d");
            let got = run_f32(
                &Op::Conv2d { stride: s, padding: p, bias: true },
                &[(&xs, &x), (&ws, &w), (&[ws[0]], &b)],
                DType::F32,
            );
            let with_b: Vec<f64> = want.iter().enumerate().map(|(i, v)| v + b[i % ws[0]] as f64).collect();
            close(&got, &with_b, "conv2d + bias");
            // Backward ops against the adjoint identities <conv(x, w), dy> = <x, dx(dy)> = <w, dw(x, dy)>,
            // checked elementwise by probing with unit vectors through the naive forward.
            let dy = rand_vals(ys.iter().product(), 4);
            let dx = run_f32(
                &Op::Conv2dBwdData { stride: s, padding: p, h: xs[1], w: xs[2] },
                &[(&ys, &dy), (&ws, &w)],
                DType::F32,
            );
            let dw = run_f32(
                &Op::Conv2dBwdWeight { stride: s, padding: p, kh: ws[2], kw: ws[3] },
                &[(&xs, &x), (&ys, &dy)],
                DType::F32,
            );
            let dot = |y: &[f64]| y.iter().zip(&dy).map(|(a, &b)| a * b as f64).sum::<f64>();
            let mut want_dx = vec![0f64; x.len()];
            for (i, v) in want_dx.iter_mut().enumerate() {
                let mut e = vec![0f32; x.len()];
                e[i] = 1.0;
                *v = dot(&naive(&e, &w, xs, ws, s, p).0);
            }
            close(&dx, &want_dx, "conv2d_bwd_data");
            let mut want_dw = vec![0f64; w.len()];
            for (i, v) in want_dw.iter_mut().enumerate() {
                let mut e = vec![0f32; w.len()];
                e[i] = 1.0;
                *v = dot(&naive(&x, &e, xs, ws, s, p).0);
            }
            close(&dw, &want_dw, "conv2d_bwd_weight");
        }
    }

    #[test]
    fn bf16_storage_rounds_the_f32_result_once() {
        let (xs, ws) = ([1, 6, 6, 8], [5, 8, 3, 3]);
        let x = round_to(DType::BF16, &rand_vals(288, 5));
        let w = round_to(DType::BF16, &rand_vals(360, 6));
        let op = Op::Conv2d { stride: 1, padding: 1, bias: false };
        let f = run_f32(&op, &[(&xs, &x), (&ws, &w)], DType::F32);
        let h = run_f32(&op, &[(&xs, &x), (&ws, &w)], DType::BF16);
        assert_eq!(h, round_to(DType::BF16, &f));
    }
}
