//! Helpers for the kernel tests: deterministic pseudo-random data and a one-call op runner.

use super::{View, run_op};
use crate::graph::op::{self, Op};
use crate::tensor::{DType, decode_f32, encode_f32, numel};

/// `n` values in [-1, 1) from a fixed-seed generator (splitmix64).
pub(crate) fn rand_vals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x1234_5678);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Encodes f32 values as `dtype` bytes.
pub(crate) fn bytes_of(dtype: DType, vals: &[f32]) -> Vec<u8> {
    let mut b = vec![0u8; vals.len() * dtype.size()];
    encode_f32(dtype, vals, &mut b);
    b
}

/// Runs `op` on raw inputs `(shape, dtype, bytes)`, returning the output shape and bytes.
pub(crate) fn run_raw(op: &Op, ins: &[(&[usize], DType, &[u8])]) -> (Vec<usize>, DType, Vec<u8>) {
    let shapes: Vec<&[usize]> = ins.iter().map(|i| i.0).collect();
    let dtypes: Vec<DType> = ins.iter().map(|i| i.1).collect();
    let (shape, dtype) = op::infer(op, &shapes, &dtypes).unwrap();
    let views: Vec<View> = ins.iter().map(|&(shape, dtype, data)| View { shape, dtype, data }).collect();
    let mut out = vec![0u8; numel(&shape) * dtype.size()];
    run_op(op, &views, &View { shape: &shape, dtype, data: &[] }, &mut out).unwrap();
    (shape, dtype, out)
}

/// Runs `op` on f32 values stored as `dtype`, returning the output decoded to f32.
pub(crate) fn run_f32(op: &Op, ins: &[(&[usize], &[f32])], dtype: DType) -> Vec<f32> {
    let bytes: Vec<Vec<u8>> = ins.iter().map(|(_, v)| bytes_of(dtype, v)).collect();
    let raw: Vec<(&[usize], DType, &[u8])> = ins.iter().zip(&bytes).map(|((s, _), b)| (*s, dtype, &b[..])).collect();
    let (shape, odt, out) = run_raw(op, &raw);
    let mut v = vec![0f32; numel(&shape)];
    decode_f32(odt, &out, &mut v);
    v
}

/// Rounds f32 values through `dtype` storage.
pub(crate) fn round_to(dtype: DType, vals: &[f32]) -> Vec<f32> {
    let b = bytes_of(dtype, vals);
    let mut v = vec![0f32; vals.len()];
    decode_f32(dtype, &b, &mut v);
    v
}
