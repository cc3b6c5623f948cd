//! Box ops (`BoxIou`, `BoxEncode`, `BoxDecode`, `Nms`), `TopK` and `Gather` / `GatherBwd`. The box algorithms
//! live in `crate::boxes` (shared with pipeline code); this file decodes the tensors and calls them.

use crate::backend::cpu::kernels::{COST_ARITH, COST_COPY, View, cpu_err, floats, par_chunks_unit, require_float, with_f32_out};
use crate::ops::Op;
use crate::boxes::{self as bx, BoxCoder};
use crate::error::Result;
use crate::tensor::DType;

/// The values of an i32 / i64 tensor.
fn ints(v: &View) -> Result<Vec<i64>> {
    match v.dtype {
        DType::I32 => Ok(v.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()),
        DType::I64 => Ok(v
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()),
        d => Err(cpu_err(format!("expected i32 or i64 indices, got {d}"))),
    }
}

fn write_i64(vals: &[i64], out_bytes: &mut [u8]) {
    for (o, v) in out_bytes.chunks_exact_mut(8).zip(vals) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

pub(super) fn box_iou(giou: bool, a: &View, b: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("box_iou", &[a, b, out])?;
    let (av, bv) = (floats(a), floats(b));
    let n = a.shape[a.shape.len() - 2];
    let m = b.shape[b.shape.len() - 2];
    with_f32_out(out.dtype, out_bytes, |o| {
        if n * m == 0 {
            return Ok(());
        }
        // Rows of the output (one box of `a` against all of `b`) in parallel.
        par_chunks_unit(o, m, COST_ARITH * 4, |s, chunk| {
            for (r, row) in chunk.chunks_mut(m).enumerate() {
                let gr = s / m + r;
                let (batch, i) = (gr / n, gr % n);
                let ab = &av[(batch * n + i) * 4..(batch * n + i) * 4 + 4];
                let bb = &bv[batch * m * 4..(batch + 1) * m * 4];
                for (j, v) in row.iter_mut().enumerate() {
                    *v = bx::pair_iou(ab, &bb[4 * j..4 * j + 4], giou);
                }
            }
        });
        Ok(())
    })
}

pub(super) fn box_encode(weights: [f32; 4], r: &View, t: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("box_encode", &[r, t, out])?;
    let (rv, tv) = (floats(r), floats(t));
    with_f32_out(out.dtype, out_bytes, |o| {
        BoxCoder::new(weights).encode(&rv, &tv, o);
        Ok(())
    })
}

pub(super) fn box_decode(
    weights: [f32; 4],
    clamp: f32,
    r: &View,
    d: &View,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("box_decode", &[r, d, out])?;
    let (rv, dv) = (floats(r), floats(d));
    let k = d.shape[1] / 4;
    with_f32_out(out.dtype, out_bytes, |o| {
        BoxCoder { weights, clamp }.decode(&rv, &dv, k, o);
        Ok(())
    })
}

pub(super) fn nms(
    iou_threshold: f32,
    max_out: usize,
    boxes: &View,
    scores: &View,
    classes: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("nms", &[boxes, scores])?;
    let (bv, sv, cv) = (floats(boxes), floats(scores), ints(classes)?);
    let keep = bx::nms_flat(&bv, &sv, &cv, iou_threshold, max_out);
    let mut res = vec![-1i64; max_out + 1];
    for (r, &k) in res.iter_mut().zip(&keep) {
        *r = k as i64;
    }
    res[max_out] = keep.len() as i64;
    write_i64(&res, out_bytes);
    Ok(())
}

pub(super) fn topk(k: usize, x: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("topk", &[x])?;
    let xv = floats(x);
    let n = *x.shape.last().unwrap_or(&1);
    if k == 0 || n == 0 {
        return Ok(());
    }
    let out: &mut [u8] = out_bytes;
    par_chunks_unit(out, 8 * k, COST_ARITH * (n / k).max(1), |s, chunk| {
        for (r, o) in chunk.chunks_mut(8 * k).enumerate() {
            let row = s / (8 * k) + r;
            let idx: Vec<i64> = bx::topk_row(&xv[row * n..(row + 1) * n], k).into_iter().map(|i| i as i64).collect();
            write_i64(&idx, o);
        }
    });
    Ok(())
}

/// (outer, len, inner) around `axis`.
fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    crate::tensor::strides(shape)
}

pub(super) fn gather(axis: usize, x: &View, idx: &View, out_bytes: &mut [u8]) -> Result<()> {
    let iv = ints(idx)?;
    let es = x.dtype.size();
    let size = x.shape[axis] as i64;
    if let Some(bad) = iv.iter().find(|&&i| i < 0 || i >= size) {
        return Err(cpu_err(format!("gather: index {bad} out of range for axis {axis} of {:?}", x.shape)));
    }
    let (xs, is) = (strides(x.shape), strides(idx.shape));
    let ishape = idx.shape;
    par_chunks_unit(out_bytes, es, COST_COPY * 4, |s, chunk| {
        for (e, o) in chunk.chunks_exact_mut(es).enumerate() {
            let flat = s / es + e;
            // The x offset: idx's coordinates, with the axis coordinate replaced by the index.
            let mut off = 0;
            for d in 0..ishape.len() {
                let c = (flat / is[d]) % ishape[d];
                off += if d == axis { iv[flat] as usize } else { c } * xs[d];
            }
            o.copy_from_slice(&x.data[off * es..(off + 1) * es]);
        }
    });
    Ok(())
}

pub(super) fn gather_bwd(axis: usize, size: usize, idx: &View, dy: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("gather_bwd", &[dy, out])?;
    let iv = ints(idx)?;
    if let Some(bad) = iv.iter().find(|&&i| i < 0 || i >= size as i64) {
        return Err(cpu_err(format!("gather_bwd: index {bad} out of range for size {size}")));
    }
    let g = floats(dy);
    let (outer, len, inner) = split(dy.shape, axis);
    with_f32_out(out.dtype, out_bytes, |o| {
        let block = size * inner;
        if block == 0 {
            return Ok(());
        }
        // One [size, inner] block per outer index; sums in f64 in index order.
        par_chunks_unit(o, block, COST_ARITH * len.div_ceil(size).max(1), |s, chunk| {
            let mut acc = vec![0f64; block];
            for (bi, ob) in chunk.chunks_mut(block).enumerate() {
                let b = s / block + bi;
                acc.fill(0.0);
                for j in 0..len {
                    let base = (b * len + j) * inner;
                    for t in 0..inner {
                        acc[iv[base + t] as usize * inner + t] += g[base + t] as f64;
                    }
                }
                for (v, a) in ob.iter_mut().zip(&acc) {
                    *v = *a as f32;
                }
            }
        });
        let _ = outer;
        Ok(())
    })
}

/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::BoxIou { giou } => box_iou(*giou, &ins[0], &ins[1], out, out_bytes),
        Op::BoxEncode { weights } => box_encode(*weights, &ins[0], &ins[1], out, out_bytes),
        Op::BoxDecode { weights, clamp } => box_decode(*weights, *clamp, &ins[0], &ins[1], out, out_bytes),
        Op::Nms { iou_threshold, max_out } => {
            nms(*iou_threshold, *max_out, &ins[0], &ins[1], &ins[2], out_bytes)
        }
        Op::TopK { k } => topk(*k, &ins[0], out_bytes),
        Op::Gather { axis } => gather(*axis, &ins[0], &ins[1], out_bytes),
        Op::GatherBwd { axis, size } => gather_bwd(*axis, *size, &ins[0], &ins[1], out, out_bytes),
        _ => Err(cpu_err(format!("{} is not a boxes op", op.describe()))),
    }
}
