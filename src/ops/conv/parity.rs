//! Parity cases: convolutions (`kernels/conv.cu`, launcher `ops/conv/launch.rs`) and nearest 2x upsampling (`nn::spatial`, a
//! reshape + broadcast on the movement kernels, and its gradient, a sum over the two repeat axes).
//!
//! Convolution shapes cover 3x3 and 1x1, stride 1 and 2, padding 0 and 1, tails in every GEMM dimension
//! (more than one 128-row / 128-column tile, partial k-tiles, enough k-tiles for the 3-stage ring to wrap),
//! channel counts that are multiples of 8 (16-byte `cp.async` gathers) and ones that are not (3, 5: the
//! element-gather fallback), bias and no bias, in f32, f16 and bf16.
//!
//! Tolerance: `Tol::for_dtype`, as for the GEMM (products of 16-bit inputs are exact in f32; both sides sum
//! them in f32 and round once). One exception, written at the case: f32 `Conv2dBwdWeight`, whose CPU reference
//! sums the pixels in 128-row blocks and adds block-group partials in f64, while the kernel sums them in
//! order with fmaf, so the two differ by f32 rounding of sums over K = N*Ho*Wo products.

use crate::parity::{Case, Gen, Tol, Work};
use crate::graph::{Graph, NodeId, Op};
use crate::nn::spatial;
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn variant(dt: DType) -> &'static str {
    if dt == DType::F32 { "simt" } else { "tc" }
}

fn out_size(size: usize, k: usize, s: usize, p: usize) -> usize {
    (size + 2 * p - k) / s + 1
}

/// Conv2d of x [n, h, w, c] with w [o, c, k, k].
fn conv_case(dt: DType, x: [usize; 4], o: usize, k: usize, s: usize, p: usize, bias: bool) -> Case {
    let kernel = format!("conv2d_fwd_{}_{dt}", variant(dt));
    let name = format!("conv2d {dt} {x:?} -> {o} k{k} s{s} p{p}{}", if bias { " bias" } else { "" });
    let mut ins = vec![(x.to_vec(), dt, Gen::Normal), (vec![o, x[3], k, k], dt, Gen::Normal)];
    if bias {
        ins.push((vec![o], dt, Gen::Normal));
    }
    Case::new(name, ins, Tol::for_dtype(dt), &[&kernel], move |g, ids| {
        g.push(Op::Conv2d { stride: s, padding: p, bias }, ids)
    })
}

/// Conv2dBwdData: dy [n, ho, wo, o] and w [o, c, k, k] -> dx [n, h, w, c].
fn bwd_data_case(dt: DType, x: [usize; 4], o: usize, k: usize, s: usize, p: usize) -> Case {
    let kernel = format!("conv2d_bwd_data_{}_{dt}", variant(dt));
    let name = format!("conv2d_bwd_data {dt} {x:?} <- {o} k{k} s{s} p{p}");
    let (ho, wo) = (out_size(x[1], k, s, p), out_size(x[2], k, s, p));
    let ins = vec![(vec![x[0], ho, wo, o], dt, Gen::Normal), (vec![o, x[3], k, k], dt, Gen::Normal)];
    let (h, w) = (x[1], x[2]);
    Case::new(name, ins, Tol::for_dtype(dt), &[&kernel], move |g, ids| {
        g.push(Op::Conv2dBwdData { stride: s, padding: p, h, w }, ids)
    })
}

/// Conv2dBwdWeight: x [n, h, w, c] and dy [n, ho, wo, o] -> dw [o, c, k, k].
fn bwd_weight_case(dt: DType, x: [usize; 4], o: usize, k: usize, s: usize, p: usize) -> Case {
    let kernel = format!("conv2d_bwd_weight_{}_{dt}", variant(dt));
    let name = format!("conv2d_bwd_weight {dt} {x:?} x {o} k{k} s{s} p{p}");
    let (ho, wo) = (out_size(x[1], k, s, p), out_size(x[2], k, s, p));
    let ins = vec![(x.to_vec(), dt, Gen::Normal), (vec![x[0], ho, wo, o], dt, Gen::Normal)];
    let tol = if dt == DType::F32 {
        // Sums of K = n*ho*wo (<= 200 here) products of normal values in two different orders: each side's
        // f32 rounding error is about sqrt(K) * 2^-24 * sum|x dy| <= 15 * 6e-8 * 160 ~ 1.4e-4 in the worst
        // case and ~1e-5 typically, on results of size ~sqrt(K) ~ 14, so an absolute floor of 1e-4 is needed
        // for results near zero (relative 1e-5 as for_dtype).
        Tol { atol: 1e-4, rtol: 1e-5 }
    } else {
        Tol::for_dtype(dt)
    };
    Case::new(name, ins, tol, &[&kernel], move |g, ids| {
        g.push(Op::Conv2dBwdWeight { stride: s, padding: p, kh: k, kw: k }, ids)
    })
}

/// Conv2dBwdWeight with a long K and few output tiles: the split-K path (partials in the workspace, then
/// `conv2d_bwd_weight_fin`). f32 tolerance: as [`bwd_weight_case`] (K = n*ho*wo is 16x larger here, but the
/// chunks are summed separately, so the kernel's rounding error stays within the same bound; seen: 1.8e-4 on
/// results of size ~50).
fn split_k_case(dt: DType, x: [usize; 4], o: usize, k: usize, s: usize, p: usize) -> Case {
    let kernels = [format!("conv2d_bwd_weight_{}_{dt}", variant(dt)), format!("conv2d_bwd_weight_fin_{dt}")];
    let name = format!("conv2d_bwd_weight split-K {dt} {x:?} x {o} k{k} s{s} p{p}");
    let (ho, wo) = (out_size(x[1], k, s, p), out_size(x[2], k, s, p));
    let ins = vec![(x.to_vec(), dt, Gen::Normal), (vec![x[0], ho, wo, o], dt, Gen::Normal)];
    let tol = if dt == DType::F32 { Tol { atol: 1e-4, rtol: 1e-5 } } else { Tol::for_dtype(dt) };
    Case::new(name, ins, tol, &[&kernels[0], &kernels[1]], move |g, ids| {
        g.push(Op::Conv2dBwdWeight { stride: s, padding: p, kh: k, kw: k }, ids)
    })
}

/// Nearest 2x upsampling, or its gradient (the sum of each 2x2 block of dy).
fn upsample_case(dt: DType, x: [usize; 4], bwd: bool) -> Case {
    let [n, h, w, c] = x;
    if bwd {
        let name = format!("upsample_nearest2x_bwd {dt} {x:?}");
        let ins = vec![(vec![n, 2 * h, 2 * w, c], dt, Gen::Normal)];
        Case::new(name, ins, Tol::for_dtype(dt), &[], move |g: &mut Graph, ids: &[NodeId]| {
            // The gradient autodiff builds for `upsample_nearest2x`.
            let t = g.reshape(ids[0], &[n, h, 2, w, 2, c])?;
            let t = g.sum(t, &[2, 4], true)?;
            g.reshape(t, &[n, h, w, c])
        })
    } else {
        let name = format!("upsample_nearest2x {dt} {x:?}");
        Case::new(name, vec![(x.to_vec(), dt, Gen::Normal)], Tol::for_dtype(dt), &[], move |g, ids| {
            spatial::upsample_nearest2x(g, ids[0])
        })
    }
}

/// Parity cases.
fn kernel_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        // Forward: 3x3 s1 p1 with 16 channels (cp.async path, K = 144: 5 k-tiles), bias.
        v.push(conv_case(dt, [2, 6, 5, 16], 24, 3, 1, 1, true));
        // 3x3 s2 p1, odd sizes; 1x1 s1 with 144 output rows (two M tiles) and 136 outputs (two N tiles).
        v.push(conv_case(dt, [1, 9, 7, 16], 8, 3, 2, 1, false));
        v.push(conv_case(dt, [1, 12, 12, 8], 136, 1, 1, 0, true));
        // 1x1 s2 p0; 3x3 p0; 3 and 5 input channels (element gathers), 3x3 s1 p1 and s2 p1.
        v.push(conv_case(dt, [2, 7, 6, 24], 16, 1, 2, 0, true));
        v.push(conv_case(dt, [1, 6, 7, 8], 8, 3, 1, 0, true));
        v.push(conv_case(dt, [1, 6, 6, 3], 8, 3, 1, 1, true));
        v.push(conv_case(dt, [2, 5, 5, 5], 6, 3, 2, 1, false));
        // Backward data: the same geometries (dy channels = o: 16 and 24 gather 16 bytes, 5 and 6 do not).
        v.push(bwd_data_case(dt, [2, 6, 5, 16], 24, 3, 1, 1));
        v.push(bwd_data_case(dt, [1, 9, 7, 8], 16, 3, 2, 1));
        v.push(bwd_data_case(dt, [1, 12, 12, 136], 8, 1, 1, 0));
        v.push(bwd_data_case(dt, [2, 7, 6, 8], 16, 1, 2, 0));
        v.push(bwd_data_case(dt, [1, 6, 6, 3], 5, 3, 1, 1));
        v.push(bwd_data_case(dt, [1, 6, 7, 4], 6, 3, 2, 0));
        // Backward weight: K = n*ho*wo pixels (200 in the first: 7 k-tiles), 3x3/1x1, s1/s2, p0/p1.
        v.push(bwd_weight_case(dt, [2, 10, 10, 16], 24, 3, 1, 1));
        v.push(bwd_weight_case(dt, [1, 9, 7, 8], 16, 3, 2, 1));
        v.push(bwd_weight_case(dt, [1, 12, 12, 16], 136, 1, 1, 0));
        v.push(bwd_weight_case(dt, [2, 7, 6, 24], 8, 1, 2, 0));
        v.push(bwd_weight_case(dt, [1, 6, 6, 3], 8, 3, 1, 1));
        v.push(bwd_weight_case(dt, [1, 7, 6, 8], 5, 3, 2, 0));
        // Split-K: K = 3200 in 3 chunks (the last shorter), and C = 5 at stride 2 (K = 2500, 2 chunks).
        v.push(split_k_case(dt, [2, 40, 40, 8], 16, 3, 1, 1));
        v.push(split_k_case(dt, [1, 100, 100, 5], 8, 3, 2, 1));
        v.push(upsample_case(dt, [2, 3, 5, 6], false));
        v.push(upsample_case(dt, [2, 3, 5, 6], true));
    }
    v
}

fn conv_flops(x: [usize; 4], o: usize, k: usize, s: usize, p: usize) -> u64 {
    let (ho, wo) = (out_size(x[1], k, s, p), out_size(x[2], k, s, p));
    2 * (x[0] * ho * wo * o * k * k * x[3]) as u64
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let mut v = Vec::new();
    let f16 = DType::F16;
    // SD UNet at 64x64 latents, batch 2 (CFG): the 3x3 convolutions of each resolution, a 1x1 shortcut, the
    // stride-2 downsample; the VAE decoder's 128-channel convolution at 256x256 (batch 1).
    for (x, o, k, s, p) in [
        ([2, 64, 64, 320], 320, 3, 1, 1),
        ([2, 32, 32, 640], 640, 3, 1, 1),
        ([2, 16, 16, 1280], 1280, 3, 1, 1),
        ([2, 32, 32, 320], 640, 1, 1, 0),
        ([2, 64, 64, 320], 320, 3, 2, 1),
        ([1, 256, 256, 128], 128, 3, 1, 1),
    ] {
        v.push((conv_case(f16, x, o, k, s, p, true), Work::Flops(conv_flops(x, o, k, s, p))));
    }
    let x = [2, 64, 64, 320];
    v.push((bwd_data_case(f16, x, 320, 3, 1, 1), Work::Flops(conv_flops(x, 320, 3, 1, 1))));
    v.push((bwd_weight_case(f16, x, 320, 3, 1, 1), Work::Flops(conv_flops(x, 320, 3, 1, 1))));
    v.push((bwd_data_case(DType::BF16, x, 320, 3, 2, 1), Work::Flops(conv_flops(x, 320, 3, 2, 1))));
    // f32 at SD's 64x64 x 320 level (the CPU engine's case) and at 32x32.
    for x in [[2, 64, 64, 320], [2, 32, 32, 320]] {
        v.push((conv_case(DType::F32, x, 320, 3, 1, 1, true), Work::Flops(conv_flops(x, 320, 3, 1, 1))));
        v.push((bwd_data_case(DType::F32, x, 320, 3, 1, 1), Work::Flops(conv_flops(x, 320, 3, 1, 1))));
        v.push((bwd_weight_case(DType::F32, x, 320, 3, 1, 1), Work::Flops(conv_flops(x, 320, 3, 1, 1))));
    }
    // f32 1x1 shortcut and stride-2 downsample.
    let x = [2, 32, 32, 320];
    v.push((conv_case(DType::F32, x, 640, 1, 1, 0, true), Work::Flops(conv_flops(x, 640, 1, 1, 0))));
    let x = [2, 64, 64, 320];
    v.push((conv_case(DType::F32, x, 320, 3, 2, 1, true), Work::Flops(conv_flops(x, 320, 3, 2, 1))));
    v.push((bwd_data_case(DType::F32, x, 320, 3, 2, 1), Work::Flops(conv_flops(x, 320, 3, 2, 1))));
    // Upsampling before the UNet's up blocks: [2, 32, 32, 640] -> [2, 64, 64, 640], and its gradient.
    let x = [2, 32, 32, 640];
    let n: usize = x.iter().product();
    v.push((upsample_case(f16, x, false), Work::Bytes((5 * n * 2) as u64)));
    v.push((upsample_case(f16, x, true), Work::Bytes((5 * n * 2) as u64)));
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks: a convolution with the weight as an input (the nn-level ones with bias and parameters are
/// in tests/gradcheck.rs), and the two backward ops as forward ops (they are linear in each input; their own
/// gradients are convolutions again).
fn grad_cases() -> Vec<Case> {
    vec![
        Case::grad("conv2d no bias, weight as input", &[(&[1, 4, 4, 2], Gen::Normal), (&[3, 2, 3, 3], Gen::Normal)], |g, x| {
            g.push(Op::Conv2d { stride: 1, padding: 1, bias: false }, &[x[0], x[1]])
        }),
        Case::grad("conv2d with bias, all inputs", &[(&[1, 5, 4, 2], Gen::Normal), (&[3, 2, 3, 3], Gen::Normal), (&[3], Gen::Normal)], |g, x| {
            g.push(Op::Conv2d { stride: 2, padding: 1, bias: true }, &[x[0], x[1], x[2]])
        }),
        Case::grad("conv2d_bwd_data as a forward op", &[(&[1, 3, 3, 2], Gen::Normal), (&[2, 3, 3, 3], Gen::Normal)], |g, x| {
            g.push(Op::Conv2dBwdData { stride: 2, padding: 1, h: 6, w: 5 }, &[x[0], x[1]])
        }),
        Case::grad("conv2d_bwd_weight as a forward op", &[(&[1, 5, 4, 2], Gen::Normal), (&[1, 3, 2, 3], Gen::Normal)], |g, x| {
            g.push(Op::Conv2dBwdWeight { stride: 2, padding: 1, kh: 3, kw: 3 }, &[x[0], x[1]])
        }),
    ]
}

/// Larger cases for the CPU fast path only (`ops::cpu_fast_cases`): rows that cross its patch tile (8 MiB of
/// patch: 3584 rows of 576 = 9 x 64 elements, so 4608 rows are two tiles), 1x1 products of 8192 rows, stride 2,
/// f16 and bf16, each of the three ops.
///
/// f32 tolerance where a sum runs over many products (K = 576 for the forward and backward-data 3x3 cases,
/// K = 4608 / 8192 pixels for the weight gradients): both sides sum in f32 but in different blocks (`gemm`'s
/// depth blocking depends on the product's shape and on the machine's SIMD width, and the reference adds
/// 128-row blocks in f64), so they differ by f32 rounding of the partial sums. For sums of K products of
/// normal values the partial sums grow like sqrt(i), so each side's error has a standard deviation of about
/// 2^-24 * K / sqrt(6) (sequential order; blocked sums do better), their difference about 3.4e-8 * K, and
/// the largest over 1e5 results about 5 of those: an absolute floor of 2e-7 * K (seen: 7.6e-5 at K = 576,
/// 2.9e-4 at K = 4608). Relative 1e-5 as `for_dtype`.
pub(crate) fn cpu_fast_cases() -> Vec<Case> {
    let f32_tol = |k: usize| Tol { atol: 2e-7 * k as f32, rtol: 1e-5 };
    let (f32, f16, bf16) = (DType::F32, DType::F16, DType::BF16);
    let with = |mut c: Case, tol: Tol| {
        c.tol = tol;
        c
    };
    vec![
        with(conv_case(f32, [2, 48, 48, 64], 32, 3, 1, 1, true), f32_tol(576)),
        with(conv_case(f32, [2, 64, 64, 48], 40, 1, 1, 0, true), f32_tol(48)),
        conv_case(f16, [1, 40, 40, 32], 24, 3, 2, 1, true),
        conv_case(bf16, [2, 64, 64, 16], 24, 1, 1, 0, false),
        with(bwd_data_case(f32, [2, 48, 48, 32], 64, 3, 1, 1), f32_tol(576)),
        with(bwd_data_case(f32, [2, 64, 64, 40], 48, 1, 1, 0), f32_tol(48)),
        bwd_data_case(bf16, [1, 41, 40, 24], 16, 3, 2, 1),
        with(bwd_data_case(f32, [2, 33, 32, 24], 40, 3, 2, 1), f32_tol(4 * 40)),
        with(bwd_data_case(f32, [1, 10, 11, 8], 8, 3, 3, 1), f32_tol(72)),
        with(bwd_data_case(f32, [1, 9, 9, 8], 8, 1, 2, 0), f32_tol(8)),
        with(bwd_weight_case(f32, [2, 48, 48, 64], 32, 3, 1, 1), f32_tol(4608)),
        with(bwd_weight_case(f32, [2, 64, 64, 48], 40, 1, 1, 0), f32_tol(8192)),
        bwd_weight_case(f16, [1, 40, 40, 32], 24, 3, 2, 1),
        bwd_weight_case(bf16, [2, 64, 64, 16], 24, 1, 1, 0),
    ]
}
