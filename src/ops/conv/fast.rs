//! The CPU fast path of the convolutions (`CpuBackend`): the same patch products as the reference
//! (`cpu.rs`), f32 throughout, but shaped for speed.
//!
//! - 1x1 convolutions with stride 1 and no padding are one matrix product on the NHWC rows, no patches:
//!   forward `y [M, O] = x [M, C] @ w^T`, backward data `dx [M, C] = dy [M, O] @ w [O, C]`, backward weight
//!   `dw [O, C] = dy^T @ x`.
//! - Other convolutions build patch rows in large tiles (`tile_rows`: about 8 MiB of patch, the rows built in
//!   parallel) and multiply each tile in one `gemm` call that uses rayon's threads itself, so the threads share
//!   one packed weight matrix instead of each multiplying 128-row blocks alone.
//! - The forward bias is written into the output first and the product accumulated onto it (one pass).
//! - The weight gradient sums its tiles in order into one f32 accumulator; `gemm` splits only rows and
//!   columns between threads, never the sum, so the result is the same for any thread count.
//!
//! f16/bf16 inputs are decoded once, whole, in parallel blocks (`floats`); the output is rounded once.

use gemm::Parallelism;

use super::cpu::{Geom, fill_grad_patch, fill_input_patch, repack_weight};
use crate::backend::cpu::kernels::{
    Buf, COST_COPY, View, cpu_err, floats, par_chunks_unit, require_float, with_f32_out, worth_parallel,
};
use crate::error::Result;
use crate::ops::Op;

/// Patch elements built and multiplied at once (8 MiB of f32).
const TILE_ELEMS: usize = 1 << 21;

/// Rows per patch tile for patch rows of `k` elements: at least 64, a multiple of 64 unless it is all `m`.
fn tile_rows(k: usize, m: usize) -> usize {
    let t = (TILE_ELEMS / k.max(1)).max(64) / 64 * 64;
    t.min(m).max(1)
}

/// A matrix operand: its values and its row and column strides in elements.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(data: &'a [f32], rs: usize) -> Mat<'a> {
        Mat { data, rs, cs: 1 }
    }

    fn cols(data: &'a [f32], cs: usize) -> Mat<'a> {
        Mat { data, rs: 1, cs }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst [m, n] (+)= lhs [m, k] @ rhs [k, n]`, `dst` row-major; `acc` adds to `dst`. Large products use rayon's
/// threads inside `gemm`, which splits rows and columns (never `k`), so the result does not depend on them.
fn gemm_f32(m: usize, n: usize, k: usize, dst: &mut [f32], acc: bool, lhs: Mat, rhs: Mat) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(dst.len() >= m * n && lhs.fits(m, k) && rhs.fits(k, n));
    let par = if worth_parallel(m * n * k) { Parallelism::Rayon(0) } else { Parallelism::None };
    // SAFETY: the assert keeps every element read from `lhs` (i*rs + j*cs), `rhs` (likewise) and written to
    // `dst` (i*n + j) inside its slice; `dst` is a unique borrow, so it aliases neither operand. With
    // `read_dst`, gemm computes dst = 1*dst + 1*lhs@rhs; without it, dst = 1*lhs@rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            acc,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// Fills `patch` (`rows` patch rows of `k` elements) with `fill(row0 + r, row)`, rows in parallel.
fn build_patch(patch: &mut [f32], k: usize, row0: usize, fill: &(impl Fn(usize, &mut [f32]) + Sync)) {
    par_chunks_unit(patch, k, COST_COPY, |start, chunk| {
        for (r, p) in chunk.chunks_mut(k).enumerate() {
            fill(row0 + start / k + r, p);
        }
    });
}

/// `out [m, ncols] (+)= patch [m, k] @ b [k, ncols]`, patch row `r` given by `fill(r, row)`, in tiles.
fn patch_gemm(k: usize, ncols: usize, b: &[f32], out: &mut [f32], acc: bool, fill: impl Fn(usize, &mut [f32]) + Sync) {
    if ncols == 0 {
        return;
    }
    let m = out.len() / ncols;
    let t = tile_rows(k, m);
    let mut patch = Buf::new(t * k);
    for (ti, block) in out.chunks_mut(t * ncols).enumerate() {
        let rows = block.len() / ncols;
        let p = &mut patch[..rows * k];
        build_patch(p, k, ti * t, &fill);
        gemm_f32(rows, ncols, k, block, acc, Mat::rows(p, k), Mat::rows(b, ncols));
    }
}

fn conv2d(g: &Geom, x: &View, w: &View, bias: Option<&View>, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let (xs, wv) = (floats(x), floats(w));
    let bv = bias.map(floats);
    with_f32_out(out.dtype, out_bytes, |y| {
        if let Some(b) = &bv {
            par_chunks_unit(y, g.o, COST_COPY, |_, chunk| {
                for r in chunk.chunks_mut(g.o) {
                    r.copy_from_slice(b);
                }
            });
        }
        let acc = bv.is_some();
        if g.is_pointwise() {
            // y [M, O] (+)= x [M, C] @ w^T, w [O, C] read with swapped strides.
            let m = g.n * g.h * g.w;
            gemm_f32(m, g.o, g.c, y, acc, Mat::rows(&xs, g.c), Mat::cols(&wv, g.c));
        } else {
            let wt = repack_weight(g, &wv, true);
            patch_gemm(g.kh * g.kw * g.c, g.o, &wt, y, acc, |row, p| fill_input_patch(g, &xs, row, p));
        }
        Ok(())
    })
}

fn conv2d_bwd_data(g: &Geom, dy: &View, w: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let (dys, wv) = (floats(dy), floats(w));
    with_f32_out(out.dtype, out_bytes, |dx| {
        if g.is_pointwise() {
            // dx [M, C] = dy [M, O] @ w [O, C].
            let m = g.n * g.h * g.w;
            gemm_f32(m, g.c, g.o, dx, false, Mat::rows(&dys, g.o), Mat::rows(&wv, g.c));
        } else if g.stride == 1 {
            let wp = repack_weight(g, &wv, false);
            patch_gemm(g.kh * g.kw * g.o, g.c, &wp, dx, false, |row, p| fill_grad_patch(g, &dys, row, p));
        } else {
            bwd_data_strided(g, &dys, &wv, dx);
        }
        Ok(())
    })
}

/// Backward data with stride `s > 1`, by input pixel class: the pixels `(hi, wi)` with `hi % s == rh` and
/// `wi % s == rw` are reached only through the taps `ky` with `(rh + padding - ky) % s == 0` (and likewise
/// `kx`), so each class is a patch product over those taps alone, without the zero blocks (for 3x3 stride 2
/// that is 2.25 taps on average instead of 9). Each class's rows are computed into a tile and scattered.
fn bwd_data_strided(g: &Geom, dys: &[f32], wv: &[f32], dx: &mut [f32]) {
    let s = g.stride;
    let wp = repack_weight(g, wv, false);
    let taps = |r: usize, k: usize| -> Vec<usize> { (0..k).filter(|&t| (r + g.padding + s - t % s).is_multiple_of(s)).collect() };
    for rh in 0..s.min(g.h) {
        for rw in 0..s.min(g.w) {
            let (hc, wc) = ((g.h - rh).div_ceil(s), (g.w - rw).div_ceil(s));
            let m = g.n * hc * wc;
            // dx row of class row `i`.
            let dx_row = |i: usize| {
                let (j, rest) = (i % wc, i / wc);
                let (ii, n) = (rest % hc, rest / hc);
                (n * g.h + rh + ii * s) * g.w + rw + j * s
            };
            let class_taps: Vec<(usize, usize)> =
                taps(rh, g.kh).into_iter().flat_map(|ky| taps(rw, g.kw).into_iter().map(move |kx| (ky, kx))).collect();
            if class_taps.is_empty() {
                for i in 0..m {
                    dx[dx_row(i) * g.c..][..g.c].fill(0.0);
                }
                continue;
            }
            // The weight rows of these taps: [(tap, o), c].
            let k = class_taps.len() * g.o;
            let mut wc_mat = Vec::with_capacity(k * g.c);
            for &(ky, kx) in &class_taps {
                wc_mat.extend_from_slice(&wp[(ky * g.kw + kx) * g.o * g.c..][..g.o * g.c]);
            }
            let fill = |i: usize, p: &mut [f32]| {
                let row = dx_row(i);
                let (wi, rest) = (row % g.w, row / g.w);
                let (hi, n) = (rest % g.h, rest / g.h);
                for (pt, &(ky, kx)) in p.chunks_mut(g.o).zip(&class_taps) {
                    // (hi + padding - ky) is a multiple of s for this class's taps.
                    let ty = (hi + g.padding).checked_sub(ky).map(|t| t / s).filter(|&t| t < g.ho);
                    let tx = (wi + g.padding).checked_sub(kx).map(|t| t / s).filter(|&t| t < g.wo);
                    match (ty, tx) {
                        (Some(ho), Some(wo)) => pt.copy_from_slice(&dys[((n * g.ho + ho) * g.wo + wo) * g.o..][..g.o]),
                        _ => pt.fill(0.0),
                    }
                }
            };
            let t = tile_rows(k, m);
            let mut patch = Buf::new(t * k);
            let mut tile = Buf::new(t * g.c);
            for r0 in (0..m).step_by(t) {
                let rows = t.min(m - r0);
                let p = &mut patch[..rows * k];
                build_patch(p, k, r0, &fill);
                gemm_f32(rows, g.c, k, &mut tile, false, Mat::rows(p, k), Mat::rows(&wc_mat, g.c));
                for (i, src) in tile[..rows * g.c].chunks(g.c).enumerate() {
                    dx[dx_row(r0 + i) * g.c..][..g.c].copy_from_slice(src);
                }
            }
        }
    }
}

fn conv2d_bwd_weight(g: &Geom, x: &View, dy: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let (xs, dys) = (floats(x), floats(dy));
    let m = g.n * g.ho * g.wo;
    with_f32_out(out.dtype, out_bytes, |dw| {
        if g.is_pointwise() {
            // dw [O, C] = dy^T [O, M] @ x [M, C].
            gemm_f32(g.o, g.c, m, dw, false, Mat::cols(&dys, g.o), Mat::rows(&xs, g.c));
            return Ok(());
        }
        let k = g.kh * g.kw * g.c;
        // acc [o, (ky, kx, c)] = sum over patch tiles, in order, of dy_tile^T @ patch_tile.
        let mut acc = Buf::new(g.o * k);
        let t = tile_rows(k, m);
        let mut patch = Buf::new(t * k);
        for (ti, r0) in (0..m).step_by(t).enumerate() {
            let rows = t.min(m - r0);
            let p = &mut patch[..rows * k];
            build_patch(p, k, r0, &|row, pr: &mut [f32]| fill_input_patch(g, &xs, row, pr));
            let lhs = Mat::cols(&dys[r0 * g.o..(r0 + rows) * g.o], g.o);
            gemm_f32(g.o, k, rows, &mut acc, ti > 0, lhs, Mat::rows(p, k));
        }
        // dw [o, c, ky, kx] from acc [o, (ky, kx, c)].
        let taps = g.kh * g.kw;
        par_chunks_unit(dw, k, COST_COPY, |start, chunk| {
            for (i, row) in chunk.chunks_mut(k).enumerate() {
                let a = &acc[(start / k + i) * k..][..k];
                for c in 0..g.c {
                    for tap in 0..taps {
                        row[c * taps + tap] = a[tap * g.c + c];
                    }
                }
            }
        });
        Ok(())
    })
}

/// Runs one of this family's ops on the fast path (every op, shape and float dtype).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Option<Result<()>> {
    let r = match op {
        Op::Conv2d { stride, padding, bias } => require_float("conv2d", &[&ins[0], &ins[1], out]).and_then(|()| {
            let g = Geom::new("conv2d", ins[0].shape, out.shape, ins[1].shape[2], ins[1].shape[3], *stride, *padding)?;
            let b = if *bias { Some(&ins[2]) } else { None };
            if let Some(b) = b {
                require_float("conv2d", &[b])?;
            }
            conv2d(&g, &ins[0], &ins[1], b, out, out_bytes)
        }),
        Op::Conv2dBwdData { stride, padding, .. } => {
            require_float("conv2d_bwd_data", &[&ins[0], &ins[1], out]).and_then(|()| {
                let (dy, w) = (&ins[0], &ins[1]);
                let g = Geom::new("conv2d_bwd_data", out.shape, dy.shape, w.shape[2], w.shape[3], *stride, *padding)?;
                conv2d_bwd_data(&g, dy, w, out, out_bytes)
            })
        }
        Op::Conv2dBwdWeight { stride, padding, .. } => {
            require_float("conv2d_bwd_weight", &[&ins[0], &ins[1], out]).and_then(|()| {
                let (x, dy) = (&ins[0], &ins[1]);
                let g = Geom::new("conv2d_bwd_weight", x.shape, dy.shape, out.shape[2], out.shape[3], *stride, *padding)?;
                conv2d_bwd_weight(&g, x, dy, out, out_bytes)
            })
        }
        _ => Err(cpu_err(format!("{} is not a conv op", op.describe()))),
    };
    Some(r)
}
