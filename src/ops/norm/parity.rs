//! Parity cases: softmax and layer norm kernels (`kernels/softmax.cu`, `kernels/layernorm.cu`, launcher
//! `ops/norm/launch.rs`).
//!
//! Row lengths are chosen to reach every path of the row kernels: a warp per row (short rows), a block per
//! row with the row cached in registers, and rows too long for the cache (streamed), each with 16-byte
//! packs (length a multiple of 8) and with scalar loads (odd lengths).

use crate::graph::Op;
use crate::parity::{Case, Gen, Tol, Work};
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const EPS: f32 = 1e-5;

/// Rows for the last-axis kernels: warp per row (scalar, packed), block per row (packed), streamed rows
/// (packed, scalar).
const ROWS: [[usize; 2]; 5] = [[7, 129], [5, 72], [7, 1000], [2, 8200], [2, 4099]];

fn softmax_case(dt: DType, shape: &[usize], axis: usize, bwd: bool) -> Case {
    let col = axis + 1 != shape.len() && shape[axis + 1..].iter().product::<usize>() > 1;
    let kernel = format!("softmax_{}{}_{dt}", if bwd { "bwd" } else { "fwd" }, if col { "_col" } else { "" });
    let name = format!("softmax{} {dt} {shape:?} axis {axis}", if bwd { "_bwd" } else { "" });
    if bwd {
        // y need not be a softmax output: the op is defined for any y (the CPU reference is the expected value).
        let ins = vec![(shape.to_vec(), dt, Gen::Uniform(0.0, 1.0)), (shape.to_vec(), dt, Gen::Normal)];
        let build = move |g: &mut crate::graph::Graph, x: &[crate::graph::NodeId]| {
            g.push(Op::SoftmaxBwd { axis }, &[x[0], x[1]])
        };
        Case::new(name, ins, Tol::for_dtype(dt), &[&kernel], build)
    } else {
        let ins = vec![(shape.to_vec(), dt, Gen::Uniform(-8.0, 8.0))];
        Case::new(name, ins, Tol::for_dtype(dt), &[&kernel], move |g, x| g.softmax(x[0], axis))
    }
}

fn layer_norm_case(dt: DType, shape: &[usize], affine: bool, bwd: bool) -> Case {
    let d = shape[shape.len() - 1];
    let pass = if bwd { "bwd" } else { "fwd" };
    let kernel = format!("layer_norm_{pass}_{dt}");
    let name = format!("layer_norm_{pass} {dt} {shape:?}{}", if affine { " affine" } else { "" });
    // x with an offset, so the mean matters; weights around 1.
    let mut ins = vec![(shape.to_vec(), dt, Gen::Uniform(-1.0, 3.0))];
    if affine {
        ins.push((vec![d], dt, Gen::Uniform(0.5, 1.5)));
        if !bwd {
            ins.push((vec![d], dt, Gen::Normal));
        }
    }
    if bwd {
        ins.push((shape.to_vec(), dt, Gen::Normal));
    }
    let op = if bwd { Op::LayerNormBwd { eps: EPS, affine } } else { Op::LayerNorm { eps: EPS, affine } };
    Case::new(name, ins, Tol::for_dtype(dt), &[&kernel], move |g, x| g.push(op.clone(), x))
}

/// Parity cases.
fn kernel_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        for bwd in [false, true] {
            for axis in 0..3 {
                v.push(softmax_case(dt, &[3, 37, 5], axis, bwd));
            }
            for shape in ROWS {
                v.push(softmax_case(dt, &shape, 1, bwd));
            }
            for affine in [false, true] {
                v.push(layer_norm_case(dt, &[3, 4, 1000], affine, bwd));
                for shape in ROWS {
                    v.push(layer_norm_case(dt, &shape, affine, bwd));
                }
            }
        }
    }
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let mut v = Vec::new();
    // SD attention scores: batch 2 x 8 heads x 4096 queries, 4096 keys (f16, last axis).
    let (rows, d) = (2 * 8 * 4096usize, 4096usize);
    v.push((softmax_case(DType::F16, &[rows, d], 1, false), Work::Bytes((2 * rows * d * 2) as u64)));
    // SD transformer layer norms: 64x64 tokens x 320 channels and 32x32 x 1280 (batch 2 and 8).
    for (rows, d) in [(2 * 4096usize, 320usize), (8192, 1280)] {
        let bytes = 2 * rows * d * 2 + 2 * d * 2;
        v.push((layer_norm_case(DType::F16, &[rows, d], true, false), Work::Bytes(bytes as u64)));
    }
    // Backward passes (x, w, dy in; dx out) and the column variants (softmax over a non-last axis).
    let (rows, d) = (2 * 4096usize, 320usize);
    v.push((layer_norm_case(DType::F16, &[rows, d], true, true), Work::Bytes((4 * rows * d * 2) as u64)));
    // f32 (the CPU engine's case): SD's widest layer norm, a softmax over 1024 keys.
    let (rows, d) = (8192usize, 1280usize);
    v.push((layer_norm_case(DType::F32, &[rows, d], true, false), Work::Bytes((2 * rows * d * 4) as u64)));
    v.push((softmax_case(DType::F32, &[16384, 1024], 1, false), Work::Bytes((2 * 16384 * 1024 * 4) as u64)));
    let (r, k) = (8 * 4096usize, 4096usize);
    v.push((softmax_case(DType::F16, &[r, k], 1, true), Work::Bytes((3 * r * k * 2) as u64)));
    v.push((softmax_case(DType::F16, &[16, 4096, 77], 1, false), Work::Bytes((2 * 16 * 4096 * 77 * 2) as u64)));
    v.push((softmax_case(DType::F16, &[16, 4096, 77], 1, true), Work::Bytes((3 * 16 * 4096 * 77 * 2) as u64)));
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks: softmax along every axis, layer norm with and without weight and bias.
fn grad_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for axis in [0, 1, 2] {
        v.push(Case::grad(format!("softmax axis {axis}"), &[(&[2, 3, 4], Gen::Normal)], move |g, x| g.softmax(x[0], axis)));
    }
    v.push(Case::grad("layer_norm", &[(&[3, 6], Gen::Normal)], |g, x| g.layer_norm(x[0], None, 1e-5)));
    v.push(Case::grad("layer_norm affine", &[(&[2, 3, 6], Gen::Normal), (&[6], Gen::Normal), (&[6], Gen::Normal)], |g, x| {
        g.layer_norm(x[0], Some((x[1], x[2])), 1e-5)
    }));
    v
}

/// Cases for the CPU fast path only (`ops::cpu_fast_cases`): many rows over several threads, rows longer than
/// the 16 summation lanes with a remainder, f16/bf16, SD's widths.
pub(crate) fn cpu_fast_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for bwd in [false, true] {
        for dt in DTYPES {
            v.push(softmax_case(dt, &[600, 1031], 1, bwd));
            v.push(layer_norm_case(dt, &[2, 500, 1280], true, bwd));
        }
        v.push(layer_norm_case(DType::F32, &[4000, 77], false, bwd));
        v.push(softmax_case(DType::F32, &[2, 8, 64, 77], 3, bwd));
    }
    v
}
