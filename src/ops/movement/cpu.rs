//! Data movement, for any dtype: permute, broadcast, concat, slice and pad. Copies move whole elements (as
//! u8/u16/u32/u64) or whole rows of bytes; nothing here rounds a value.

use std::borrow::Cow;

use bytemuck::Pod;

use crate::backend::cpu::kernels::walk::Walk;
use crate::backend::cpu::kernels::{COST_COPY, View, broadcast_strides, cpu_err, par_chunks, par_chunks_unit};
use crate::ops::Op;
use crate::error::Result;
use crate::tensor::{self, DType};


/// `dst[e] = src[offset of e]` for a walk over the output with one operand.
fn gather<T: Copy + Send + Sync>(walk: &Walk<1>, src: &[T], dst: &mut [T]) {
    let [st] = walk.inner_strides();
    par_chunks(dst, COST_COPY, |s, chunk| {
        walk.runs(s, s + chunk.len(), |pos, [off], len| {
            let d = &mut chunk[pos - s..pos - s + len];
            match st {
                1 => d.copy_from_slice(&src[off..off + len]),
                0 => d.fill(src[off]),
                _ => {
                    for (j, v) in d.iter_mut().enumerate() {
                        *v = src[off + j * st];
                    }
                }
            }
        });
    });
}

/// [`gather`] on bytes holding elements of type `T` (copied to aligned buffers when the bytes are not).
fn gather_as<T: Pod + Send + Sync>(walk: &Walk<1>, src: &[u8], dst: &mut [u8]) {
    let es = std::mem::size_of::<T>();
    let s: Cow<[T]> = match bytemuck::try_cast_slice::<u8, T>(src) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            let n = src.len() / es;
            let mut v = vec![T::zeroed(); n];
            bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(&src[..n * es]);
            Cow::Owned(v)
        }
    };
    match bytemuck::try_cast_slice_mut::<u8, T>(dst) {
        Ok(d) => gather(walk, &s, d),
        Err(_) => {
            let mut tmp = vec![T::zeroed(); dst.len() / es];
            gather(walk, &s, &mut tmp);
            dst.copy_from_slice(bytemuck::cast_slice(&tmp));
        }
    }
}

/// Copies elements of `dtype` from `src` into the row-major output `out_shape`, reading output axis `i`
/// with element stride `strides[i]`.
fn strided_copy(out_shape: &[usize], strides: &[usize], dtype: DType, src: &[u8], dst: &mut [u8]) -> Result<()> {
    let walk = Walk::new(out_shape, [strides]);
    match dtype.size() {
        1 => gather_as::<u8>(&walk, src, dst),
        2 => gather_as::<u16>(&walk, src, dst),
        4 => gather_as::<u32>(&walk, src, dst),
        8 => gather_as::<u64>(&walk, src, dst),
        n => return Err(cpu_err(format!("no copy kernel for {n}-byte elements"))),
    }
    Ok(())
}

pub(super) fn permute(perm: &[usize], x: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let st = tensor::strides(x.shape);
    let strides: Vec<usize> = perm.iter().map(|&p| st.get(p).copied().unwrap_or(0)).collect();
    strided_copy(out.shape, &strides, x.dtype, x.data, out_bytes)
}

pub(super) fn broadcast_to(x: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let strides = broadcast_strides(x.shape, out.shape);
    strided_copy(out.shape, &strides, x.dtype, x.data, out_bytes)
}

/// Rows of `outer` and the byte length of everything after `axis`, for a row-major shape.
fn outer_inner(shape: &[usize], axis: usize, es: usize) -> (usize, usize) {
    let outer = shape[..axis.min(shape.len())].iter().product();
    let inner = shape[(axis + 1).min(shape.len())..].iter().product::<usize>() * es;
    (outer, inner)
}

pub(super) fn concat(axis: usize, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let (_, inner) = outer_inner(out.shape, axis, out.dtype.size());
    let row = out.shape[axis] * inner;
    if row == 0 {
        return Ok(());
    }
    par_chunks_unit(out_bytes, row, COST_COPY, |s, chunk| {
        let r0 = s / row;
        for (ri, dst) in chunk.chunks_mut(row).enumerate() {
            let mut pos = 0;
            for v in ins {
                let blk = v.shape[axis] * inner;
                let o = r0 + ri;
                dst[pos..pos + blk].copy_from_slice(&v.data[o * blk..(o + 1) * blk]);
                pos += blk;
            }
        }
    });
    Ok(())
}

pub(super) fn slice(axis: usize, start: usize, end: usize, x: &View, out_bytes: &mut [u8]) -> Result<()> {
    let (_, inner) = outer_inner(x.shape, axis, x.dtype.size());
    let (row_in, row_out) = (x.shape[axis] * inner, (end - start) * inner);
    if row_out == 0 {
        return Ok(());
    }
    par_chunks_unit(out_bytes, row_out, COST_COPY, |s, chunk| {
        let r0 = s / row_out;
        for (ri, dst) in chunk.chunks_mut(row_out).enumerate() {
            let b = (r0 + ri) * row_in + start * inner;
            dst.copy_from_slice(&x.data[b..b + row_out]);
        }
    });
    Ok(())
}

pub(super) fn pad(axis: usize, before: usize, after: usize, x: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let (_, inner) = outer_inner(x.shape, axis, x.dtype.size());
    let row_in = x.shape[axis] * inner;
    let row_out = out.shape[axis] * inner;
    if row_out == 0 {
        return Ok(());
    }
    let (lo, hi) = (before * inner, before * inner + row_in);
    if row_out != hi + after * inner {
        return Err(cpu_err(format!("pad: output shape {:?} does not match input {:?}", out.shape, x.shape)));
    }
    par_chunks_unit(out_bytes, row_out, COST_COPY, |s, chunk| {
        let r0 = s / row_out;
        for (ri, dst) in chunk.chunks_mut(row_out).enumerate() {
            let b = (r0 + ri) * row_in;
            dst[..lo].fill(0);
            dst[lo..hi].copy_from_slice(&x.data[b..b + row_in]);
            dst[hi..].fill(0);
        }
    });
    Ok(())
}





/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::Input { .. } | Op::Param { .. } => Ok(()), // refused by `backend::cpu::run_op`
        Op::Reshape { .. } | Op::StopGradient => {
            out_bytes.copy_from_slice(ins[0].data);
            Ok(())
        }
        Op::Permute { perm } => permute(perm, &ins[0], out, out_bytes),
        Op::BroadcastTo { .. } => broadcast_to(&ins[0], out, out_bytes),
        Op::Concat { axis } => concat(*axis, ins, out, out_bytes),
        Op::Slice { axis, start, end } => slice(*axis, *start, *end, &ins[0], out_bytes),
        Op::Pad { axis, before, after } => pad(*axis, *before, *after, &ins[0], out, out_bytes),
        _ => Err(cpu_err(format!("{} is not a movement op", op.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::kernels::test_util::*;
    use crate::ops::Op;
    use crate::tensor::{DType, HostTensor, numel, strides};

    #[test]
    fn permute_rank4_matches_naive() {
        let shape: &[usize] = &[2, 3, 4, 5];
        let x = rand_vals(numel(shape), 31);
        let st = strides(shape);
        for perm in [[0, 2, 1, 3], [3, 2, 1, 0], [1, 3, 0, 2], [0, 1, 3, 2], [0, 1, 2, 3]] {
            for dtype in [DType::F32, DType::BF16] {
                let xr = round_to(dtype, &x);
                let got = run_f32(&Op::Permute { perm: perm.to_vec() }, &[(shape, &xr)], dtype);
                let osh: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                let ost = strides(&osh);
                for (e, g) in got.iter().enumerate() {
                    let src: usize = (0..4).map(|i| ((e / ost[i]) % osh[i]) * st[perm[i]]).sum();
                    assert_eq!(*g, xr[src], "perm {perm:?} at {e}");
                }
            }
        }
        // i64 elements (8 bytes) through a big permute, in parallel.
        let shape: &[usize] = &[40, 30, 50];
        let vals: Vec<i64> = (0..numel(shape) as i64).map(|v| v * 3 - 7).collect();
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (osh, _, out) = run_raw(&Op::Permute { perm: vec![2, 0, 1] }, &[(shape, DType::I64, &data)]);
        let got = HostTensor::from_bytes(&osh, DType::I64, out).unwrap().to_i64();
        let (st, ost) = (strides(shape), strides(&osh));
        for (e, g) in got.iter().enumerate() {
            let (k, i, j) = ((e / ost[0]) % 50, (e / ost[1]) % 40, e % 30);
            assert_eq!(*g, vals[i * st[0] + j * st[1] + k]);
        }
    }

    #[test]
    fn broadcast_concat_slice_pad() {
        let x = rand_vals(6, 41);
        let got = run_f32(&Op::BroadcastTo { shape: vec![2, 3, 2] }, &[(&[3, 1], &x[..3])], DType::F32);
        let want: Vec<f32> = (0..12).map(|e| x[(e / 2) % 3]).collect();
        assert_eq!(got, want);

        let a = rand_vals(2 * 2 * 3, 42);
        let b = rand_vals(2 * 3, 43);
        let got = run_f32(&Op::Concat { axis: 1 }, &[(&[2, 2, 3], &a), (&[2, 1, 3], &b)], DType::F16);
        let (ar, br) = (round_to(DType::F16, &a), round_to(DType::F16, &b));
        let mut want = Vec::new();
        for o in 0..2 {
            want.extend_from_slice(&ar[o * 6..o * 6 + 6]);
            want.extend_from_slice(&br[o * 3..o * 3 + 3]);
        }
        assert_eq!(got, want);

        let x = rand_vals(2 * 5 * 3, 44);
        let got = run_f32(&Op::Slice { axis: 1, start: 1, end: 4 }, &[(&[2, 5, 3], &x)], DType::F32);
        let want: Vec<f32> = (0..2).flat_map(|o| x[o * 15 + 3..o * 15 + 12].to_vec()).collect();
        assert_eq!(got, want);

        let got = run_f32(&Op::Pad { axis: 1, before: 1, after: 2 }, &[(&[2, 5, 3], &x)], DType::F32);
        let mut want = Vec::new();
        for o in 0..2 {
            want.extend(vec![0.0; 3]);
            want.extend_from_slice(&x[o * 15..o * 15 + 15]);
            want.extend(vec![0.0; 6]);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn cast_round_trips_and_fill() {
        let vals: Vec<f32> = vec![-3.7, -1.0, 0.0, 0.5, 2.5, 255.9, 300.0, 1e10, f32::NAN];
        let s: &[usize] = &[vals.len()];
        let f32b = bytes_of(DType::F32, &vals);
        let to = |d: DType, bytes: &[u8], from: DType| run_raw(&Op::Cast { dtype: d }, &[(s, from, bytes)]).2;
        // f32 -> i32 truncates and saturates (NaN -> 0); -> u8 saturates.
        let i = to(DType::I32, &f32b, DType::F32);
        let iv = HostTensor::from_bytes(s, DType::I32, i.clone()).unwrap().to_i64();
        assert_eq!(iv, vec![-3, -1, 0, 0, 2, 255, 300, i32::MAX as i64, 0]);
        let u = to(DType::U8, &f32b, DType::F32);
        assert_eq!(u, vec![0, 0, 0, 0, 2, 255, 255, 255, 0]);
        // i32 -> i64 -> u8 -> i32 by value with `as`.
        let l = to(DType::I64, &i, DType::I32);
        assert_eq!(HostTensor::from_bytes(s, DType::I64, l.clone()).unwrap().to_i64(), iv);
        let u2 = to(DType::U8, &l, DType::I64);
        assert_eq!(u2, iv.iter().map(|&v| v as u8).collect::<Vec<u8>>());
        // i64 -> f32 by value.
        let big: Vec<u8> = [1i64 << 40, -5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = run_raw(&Op::Cast { dtype: DType::F32 }, &[(&[2], DType::I64, &big)]).2;
        assert_eq!(bytemuck::pod_read_unaligned::<f32>(&f[..4]), (1u64 << 40) as f32);
        // f32 -> bf16 -> f32 rounds to nearest; f16 -> f32 -> f16 is exact.
        let b = to(DType::BF16, &f32b, DType::F32);
        let back = to(DType::F32, &b, DType::BF16);
        let mut bv = vec![0f32; vals.len()];
        crate::tensor::decode_f32(DType::F32, &back, &mut bv);
        for (x, y) in vals.iter().zip(&bv) {
            assert!(x.is_nan() && y.is_nan() || *y == half::bf16::from_f32(*x).to_f32());
        }
        let h = bytes_of(DType::F16, &[0.1, -2.0, 65504.0]);
        let hf = run_raw(&Op::Cast { dtype: DType::F32 }, &[(&[3], DType::F16, &h)]).2;
        assert_eq!(run_raw(&Op::Cast { dtype: DType::F16 }, &[(&[3], DType::F32, &hf)]).2, h);

        // Fill, float and integer.
        let mut out = vec![0u8; 12];
        let shape = [3usize];
        let view = crate::backend::cpu::kernels::View { shape: &shape, dtype: DType::I32, data: &[] };
        crate::backend::cpu::kernels::run_op(&Op::Fill { value: -2.7 }, &[], &view, &mut out).unwrap();
        assert_eq!(HostTensor::from_bytes(&shape, DType::I32, out).unwrap().to_i64(), vec![-2; 3]);
        let mut out = vec![0u8; 6];
        let view = crate::backend::cpu::kernels::View { shape: &shape, dtype: DType::BF16, data: &[] };
        crate::backend::cpu::kernels::run_op(&Op::Fill { value: 1.5 }, &[], &view, &mut out).unwrap();
        assert_eq!(HostTensor::from_bytes(&shape, DType::BF16, out).unwrap().to_f32(), vec![1.5; 3]);
    }
}
