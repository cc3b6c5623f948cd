//! Launchers for `kernels/gemm.cu`: `Op::MatMul { ta, tb }` with numpy batch broadcasting.
//!
//! Kernels: `gemm_tc_f16` / `gemm_tc_bf16` (tensor cores; any M, N, K, any leading dimension: operands whose
//! rows are not 16-byte aligned are loaded through registers inside the same kernel) and `gemm_simt_f32`.
//!
//! Batches: the output's batch axes are coalesced (size-1 axes dropped, neighbours merged where every
//! operand's stride allows), then
//! - `[.., M, K] x [K, N]` with A's batch contiguous and B broadcast is one product of `batch*M` rows;
//! - the innermost remaining batch axis is `blockIdx.z`, with one 64-bit stride per operand (0 for a
//!   broadcast operand), split into launches of at most 65,535;
//! - any outer batch axes (only when broadcasting mixes, e.g. `[2, 1, M, K] x [3, K, N]`) are a loop of
//!   launches, each with its operands' offsets.

use crate::backend::launch::{Arg, Launch, NodeCtx};
use crate::backend::Loc;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::DType;

/// `GemmParams` of `kernels/gemm_util.cuh`; all fields in elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GemmParams {
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub lda: i64,
    pub ldb: i64,
    pub ldc: i64,
    pub sa: i64,
    pub sb: i64,
    pub sc: i64,
    pub ta: i64,
    pub tb: i64,
    pub reserved: i64,
}

/// One launch of a plan: its parameters, how many batches (`gridDim.z`), and where its first batch of
/// A, B and C starts (elements from the tensors' starts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmCall {
    pub params: GemmParams,
    pub batch: u32,
    pub offsets: [usize; 3],
}

/// Block tile of both kernels (rows and columns of C).
const TILE: usize = 128;
/// Threads per block of both kernels.
const THREADS: u32 = 256;
/// The largest `gridDim.z`.
const MAX_Z: usize = 65_535;

fn err(msg: String) -> Error {
    Error::backend("kernels", format!("gemm: {msg}"))
}

fn to_i64(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| err(format!("size {v} does not fit in 64 bits")))
}

/// Row-major strides of `shape`, in units of one element.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides of `shape` (left-padded to `out`'s rank) over `out`, 0 where `shape` broadcasts.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = strides(shape);
    let pad = out.len().saturating_sub(shape.len());
    (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 { 0 } else { st[i - pad] }).collect()
}

/// The launches of `op(a) @ op(b)` for operand shapes `a`, `b` (rank >= 2, batch axes broadcast as numpy)
/// and output shape `out`.
pub fn plan(a: &[usize], b: &[usize], out: &[usize], ta: bool, tb: bool) -> Result<Vec<GemmCall>> {
    let (ra, rb, ro) = (a.len(), b.len(), out.len());
    if ra < 2 || rb < 2 || ro < 2 {
        return Err(err(format!("needs rank >= 2: {a:?} x {b:?} -> {out:?}")));
    }
    let (m, k) = if ta { (a[ra - 1], a[ra - 2]) } else { (a[ra - 2], a[ra - 1]) };
    let (kb, n) = if tb { (b[rb - 1], b[rb - 2]) } else { (b[rb - 2], b[rb - 1]) };
    if kb != k || out[ro - 2] != m || out[ro - 1] != n {
        return Err(err(format!("shapes do not multiply: {a:?} (ta={ta}) x {b:?} (tb={tb}) -> {out:?}")));
    }
    let ob = &out[..ro - 2];
    for (s, name) in [(&a[..ra - 2], "a"), (&b[..rb - 2], "b")] {
        let pad = ob.len().checked_sub(s.len()).ok_or_else(|| err(format!("{name} has more batch axes than the output")))?;
        if s.iter().enumerate().any(|(i, &d)| d != 1 && d != ob[pad + i]) {
            return Err(err(format!("batch axes of {a:?} and {b:?} do not broadcast to {out:?}")));
        }
    }
    let nbatch: usize = ob.iter().product();
    if m == 0 || n == 0 || nbatch == 0 {
        return Ok(Vec::new());
    }
    // Per output batch axis: size and the strides of A, B, C in elements.
    let (ma, mb, mc) = (m * k, k * n, m * n);
    let (sa, sb, sc) = (broadcast_strides(&a[..ra - 2], ob), broadcast_strides(&b[..rb - 2], ob), strides(ob));
    let mut dims: Vec<(usize, [usize; 3])> = Vec::new();
    for i in 0..ob.len() {
        if ob[i] == 1 {
            continue;
        }
        let s = [sa[i] * ma, sb[i] * mb, sc[i] * mc];
        // Merge with the axis before when that axis steps over exactly this one in every operand.
        if let Some((size, outer)) = dims.last_mut()
            && (0..3).all(|j| outer[j] == s[j] * ob[i])
        {
            *size *= ob[i];
            *outer = s;
            continue;
        }
        dims.push((ob[i], s));
    }
    let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
    let mut p = GemmParams {
        m: to_i64(m)?,
        n: to_i64(n)?,
        k: to_i64(k)?,
        lda: to_i64(lda)?,
        ldb: to_i64(ldb)?,
        ldc: to_i64(n)?,
        ta: ta as i64,
        tb: tb as i64,
        ..GemmParams::default()
    };
    // [.., M, K] x [K, N]: A's batches are consecutive row blocks, as are C's: one product of batch*M rows.
    if let [(size, [s_a, 0, s_c])] = dims.as_slice()
        && !ta
        && *s_a == ma
        && *s_c == mc
    {
        p.m = to_i64(size * m)?;
        return Ok(vec![GemmCall { params: p, batch: 1, offsets: [0, 0, 0] }]);
    }
    let (inner, outer) = match dims.split_last() {
        Some((&(size, s), rest)) => ((size, s), rest.to_vec()),
        None => ((1, [0, 0, 0]), Vec::new()),
    };
    p.sa = to_i64(inner.1[0])?;
    p.sb = to_i64(inner.1[1])?;
    p.sc = to_i64(inner.1[2])?;
    let outer_count: usize = outer.iter().map(|d| d.0).product();
    let mut calls = Vec::new();
    let mut idx = vec![0usize; outer.len()];
    for _ in 0..outer_count {
        let mut base = [0usize; 3];
        for (d, &i) in outer.iter().zip(&idx) {
            for (b, s) in base.iter_mut().zip(d.1) {
                *b += i * s;
            }
        }
        let mut z0 = 0;
        while z0 < inner.0 {
            let count = (inner.0 - z0).min(MAX_Z);
            let offsets = [base[0] + z0 * inner.1[0], base[1] + z0 * inner.1[1], base[2] + z0 * inner.1[2]];
            calls.push(GemmCall { params: p, batch: count as u32, offsets });
            z0 += count;
        }
        for d in (0..outer.len()).rev() {
            idx[d] += 1;
            if idx[d] < outer[d].0 {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(calls)
}

/// `loc` advanced by `elems` elements of `esize` bytes.
fn advance(loc: Loc, elems: usize, esize: usize) -> Result<Loc> {
    let bytes = elems.checked_mul(esize).filter(|&b| b <= loc.bytes).ok_or_else(|| {
        err(format!("offset of {elems} elements lies outside {loc:?}"))
    })?;
    Ok(Loc { space: loc.space, offset: loc.offset + bytes, bytes: loc.bytes - bytes })
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let Op::MatMul { ta, tb } = ctx.node.op else {
        return Ok(None);
    };
    let dt = ctx.node.dtype;
    let kernel = match dt {
        DType::F16 => "gemm_tc_f16",
        DType::BF16 => "gemm_tc_bf16",
        DType::F32 => "gemm_simt_f32",
        _ => return Ok(None),
    };
    if ctx.inputs.len() != 2 || ctx.ins.len() != 2 || ctx.inputs.iter().any(|i| i.dtype != dt) {
        return Err(err(format!("node {} takes two {dt} inputs", ctx.id.0)));
    }
    let (a, b) = (&ctx.inputs[0].shape, &ctx.inputs[1].shape);
    let calls = plan(a, b, &ctx.node.shape, ta, tb)?;
    let esize = dt.size();
    let mut out = Vec::with_capacity(calls.len());
    for c in calls {
        let p = &c.params;
        let tiles = (p.m as usize).div_ceil(TILE).checked_mul((p.n as usize).div_ceil(TILE));
        let tiles = tiles.and_then(|t| u32::try_from(t).ok()).filter(|&t| t < (1u32 << 31)).ok_or_else(|| {
            err(format!("{}x{} output has too many {TILE}x{TILE} tiles for one launch", p.m, p.n))
        })?;
        out.push(Launch {
            file: "gemm",
            kernel: kernel.to_string(),
            grid: [tiles, 1, c.batch],
            block: [THREADS, 1, 1],
            smem: 0,
            args: vec![
                Arg::Ptr(advance(ctx.ins[0], c.offsets[0], esize)?),
                Arg::Ptr(advance(ctx.ins[1], c.offsets[1], esize)?),
                Arg::Ptr(advance(ctx.out, c.offsets[2], esize)?),
                Arg::Bytes(bytemuck::bytes_of(p).to_vec()),
            ],
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_transposed() {
        let c = plan(&[37, 53], &[45, 53], &[37, 45], false, true).unwrap();
        assert_eq!(c.len(), 1);
        let p = c[0].params;
        assert_eq!((p.m, p.n, p.k, p.lda, p.ldb, p.ldc, p.ta, p.tb), (37, 45, 53, 53, 53, 45, 0, 1));
        let c = plan(&[53, 37], &[53, 45], &[37, 45], true, false).unwrap();
        assert_eq!((c[0].params.lda, c[0].params.ldb), (37, 45));
    }

    #[test]
    fn batch_rows_fold_into_m() {
        let c = plan(&[2, 5, 7, 16], &[16, 8], &[2, 5, 7, 8], false, false).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].params.m, c[0].batch), (70, 1));
        // Transposed A cannot fold: batches on z with B broadcast.
        let c = plan(&[10, 16, 7], &[16, 8], &[10, 7, 8], true, false).unwrap();
        assert_eq!(c.len(), 1);
        let p = c[0].params;
        assert_eq!((p.m, p.sa, p.sb, p.sc, c[0].batch), (7, 112, 0, 56, 10));
    }

    #[test]
    fn batched_and_broadcast() {
        let c = plan(&[3, 33, 40], &[3, 40, 24], &[3, 33, 24], false, false).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].params.sa, c[0].params.sb, c[0].params.sc, c[0].batch), (1320, 960, 792, 3));
        // [2, 1, M, K] x [3, K, N]: z over the 3 of B, a launch per batch of A.
        let (m, k, n) = (17, 32, 16);
        let c = plan(&[2, 1, m, k], &[3, k, n], &[2, 3, m, n], false, false).unwrap();
        assert_eq!(c.len(), 2);
        for (i, call) in c.iter().enumerate() {
            assert_eq!(call.batch, 3);
            assert_eq!((call.params.sa, call.params.sb, call.params.sc), (0, (k * n) as i64, (m * n) as i64));
            assert_eq!(call.offsets, [i * m * k, 0, i * 3 * m * n]);
        }
        // Size-1 axes vanish and contiguous axes merge: [2, 3, 1, M, K] x [2, 3, K, N] is 6 batches.
        let c = plan(&[2, 3, 1, m, k], &[1, 2, 3, 1, k, n], &[1, 2, 3, 1, m, n], false, false).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].batch, c[0].params.sa, c[0].params.sb), (6, (m * k) as i64, (k * n) as i64));
    }

    #[test]
    fn empty_products_launch_nothing() {
        assert!(plan(&[0, 4], &[4, 3], &[0, 3], false, false).unwrap().is_empty());
        assert!(plan(&[2, 0, 5, 4], &[4, 3], &[2, 0, 5, 3], false, false).unwrap().is_empty());
        // K = 0 still launches: the kernel writes zeros.
        assert_eq!(plan(&[5, 0], &[0, 3], &[5, 3], false, false).unwrap().len(), 1);
    }

    #[test]
    fn many_batches_split_z() {
        let c = plan(&[70_000, 2, 2], &[70_000, 2, 2], &[70_000, 2, 2], false, false).unwrap();
        assert_eq!(c.iter().map(|c| c.batch as usize).sum::<usize>(), 70_000);
        assert_eq!(c[1].offsets, [65_535 * 4, 65_535 * 4, 65_535 * 4]);
    }
}
