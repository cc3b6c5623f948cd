//! Parity cases: gemm kernels (`kernels/gemm.cu`, launcher `ops/gemm/launch.rs`).
//!
//! Shapes are not multiples of the 128 x 128 x 32 (tc) / 128 x 128 x 8 (simt) tiles, cover every ta/tb
//! layout, unaligned leading dimensions (the tc kernel's register-load path), z-batches, broadcast
//! batches folded into M, and mixed broadcasting that needs a launch per outer batch.
//!
//! Tolerance: `Tol::for_dtype`. f16/bf16: products of 16-bit inputs are exact in f32, so both sides differ
//! only by the order of the f32 sums, about sqrt(K) * 2^-24 * sum|a||b| (< 1e-5 at K <= 256 for normal
//! inputs), far below the final rounding to 16 bits, which `for_dtype` allows one unit of (at most one unit
//! of difference is possible, and ulp(x) <= 2^-10 |x| for f16, 2^-7 |x| for bf16, so rtol covers it).
//! f32: `gemm_simt_f32` accumulates each output in k order with fmaf, as the `gemm` crate's kernel does at
//! these sizes; measured bit-identical on emu (max error 0 over 20 seeds).

use crate::parity::{Case, Gen, Tol, Work};
use crate::tensor::DType;

fn kernel(d: DType) -> &'static str {
    match d {
        DType::F16 => "gemm_tc_f16",
        DType::BF16 => "gemm_tc_bf16",
        _ => "gemm_simt_f32",
    }
}

/// The stored shape of an operand: `[.., rows, cols]` of its op, transposed when `t`.
fn stored(batch: &[usize], rows: usize, cols: usize, t: bool) -> Vec<usize> {
    let mut s = batch.to_vec();
    if t {
        s.extend([cols, rows]);
    } else {
        s.extend([rows, cols]);
    }
    s
}

/// `op(a) @ op(b)` with op(a) `[a_batch.., m, k]` and op(b) `[b_batch.., k, n]`.
#[allow(clippy::too_many_arguments)]
fn case(d: DType, a_batch: &[usize], b_batch: &[usize], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Case {
    let a = stored(a_batch, m, k, ta);
    let b = stored(b_batch, k, n, tb);
    let name = format!("matmul {} {a:?}{} x {b:?}{}", d.name(), if ta { "^T" } else { "" }, if tb { "^T" } else { "" });
    Case::new(
        name,
        vec![(a, d, Gen::Normal), (b, d, Gen::Normal)],
        Tol::for_dtype(d),
        &[kernel(d)],
        move |g, ids| g.matmul_t(ids[0], ids[1], ta, tb),
    )
}

const LAYOUTS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

/// Parity cases.
fn kernel_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for d in [DType::F16, DType::BF16] {
        // Leading dimensions 53 / 45 / 37: no 16-byte rows, every chunk through registers.
        v.push(case(d, &[], &[], 37, 45, 53, false, false));
        v.push(case(d, &[], &[], 37, 45, 53, true, true));
        // Aligned K and N, tails in M (130 = 128 + 2).
        v.push(case(d, &[], &[], 130, 72, 96, false, false));
        v.push(case(d, &[], &[], 64, 128, 64, false, false));
        // Tails in M and N, one partial k-tile (40 = 32 + 8), every layout.
        for (ta, tb) in LAYOUTS {
            v.push(case(d, &[], &[], 129, 136, 40, ta, tb));
        }
        // K = 200: 7 k-tiles, so the 3-stage ring wraps around twice.
        v.push(case(d, &[], &[], 33, 40, 200, false, d == DType::BF16));
        v.push(case(d, &[3], &[3], 33, 24, 40, false, false));
        v.push(case(d, &[2, 1], &[3], 17, 16, 32, false, false));
    }
    // 10 x 2 output tiles: the grouped raster (8 tile rows a group) wraps into a partial group.
    v.push(case(DType::F16, &[], &[], 1153, 136, 16, false, false));
    // Unaligned (lda 19, ldb 21) with a long K.
    v.push(case(DType::F16, &[], &[], 19, 21, 203, true, false));
    // z-batched with a broadcast B and a transposed A (no folding into M).
    v.push(case(DType::F16, &[3], &[], 24, 16, 40, true, false));
    // Batches folded into M ([2, 5, 7, 16] x [16, 24] is one 70-row product).
    v.push(case(DType::BF16, &[2, 5], &[], 7, 24, 16, false, false));
    for (ta, tb) in LAYOUTS {
        v.push(case(DType::F32, &[], &[], 37, 45, 53, ta, tb));
    }
    v.push(case(DType::F32, &[], &[], 130, 140, 20, false, false));
    v.push(case(DType::F32, &[], &[], 1153, 136, 9, true, false));
    v.push(case(DType::F32, &[2, 1], &[3], 17, 19, 33, false, true));
    v.push(case(DType::F32, &[2, 5], &[], 7, 24, 16, false, false));
    v
}

fn bench(d: DType, batch: usize, m: usize, n: usize, k: usize) -> (Case, Work) {
    let bt: &[usize] = if batch > 1 { &[batch] } else { &[] };
    let c = case(d, bt, bt, m, n, k, false, false);
    (c, Work::Flops(2 * (m * n * k * batch) as u64))
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let mut v = Vec::new();
    for d in [DType::F16, DType::BF16] {
        for s in [4096, 2048, 1024] {
            v.push(bench(d, 1, s, s, s));
        }
        // SD UNet at 64x64 latents, batch 2 (CFG): attention projections and the feed-forward up-projection.
        v.push(bench(d, 1, 2 * 4096, 320, 320));
        v.push(bench(d, 1, 2 * 4096, 1280, 320));
        // Attention scores, 2 x 8 heads of dim 40: [16, 4096, 40] x [16, 40, 4096].
        v.push(bench(d, 16, 4096, 4096, 40));
    }
    v.push(bench(DType::F32, 1, 2048, 2048, 2048));
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks: every transpose combination, and broadcast batch axes.
fn grad_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a: &[usize] = if ta { &[2, 4, 3] } else { &[2, 3, 4] };
        let b: &[usize] = if tb { &[5, 4] } else { &[4, 5] };
        v.push(Case::grad(format!("matmul ta={ta} tb={tb}"), &[(a, Gen::Normal), (b, Gen::Normal)], move |g, x| {
            g.matmul_t(x[0], x[1], ta, tb)
        }));
    }
    v.push(Case::grad("batched matmul broadcast", &[(&[2, 1, 3, 4], Gen::Normal), (&[3, 4, 2], Gen::Normal)], |g, x| {
        g.matmul(x[0], x[1])
    }));
    v
}
