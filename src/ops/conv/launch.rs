//! Launchers for `kernels/conv.cu` (`Op::Conv2d`, `Op::Conv2dBwdData`, `Op::Conv2dBwdWeight`).
//!
//! Convolutions are implicit GEMMs (see the `.cu` header): f16/bf16 go to the tensor-core kernels (128 x 128
//! tiles), f32 to the SIMT ones (64 x 64 tiles); one block per output tile, 256 threads, grid along x.
//! Backward weight with few output tiles and a long K is split along K ([`split_k`]): grid y = chunks, f32
//! partials in the node's workspace, then `conv2d_bwd_weight_fin_<dt>` adds them in order.

use crate::backend::launch::{suffix, Arg, Launch, NodeCtx};
use crate::error::{Error, Result};
use crate::graph::Node;
use crate::ops::Op;
use crate::tensor::DType;

/// Mirrors `ConvParams` in `kernels/conv.cu` (every field 8 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConvParams {
    pub n: i64,
    pub h: i64,
    pub w: i64,
    pub c: i64,
    pub ho: i64,
    pub wo: i64,
    pub o: i64,
    pub kh: i64,
    pub kw: i64,
    pub stride: i64,
    pub pad: i64,
    pub reserved: i64,
}

const THREADS: u32 = 256;

/// Split-K of backward weight: fewer output tiles than this (a GPU has ~100+ SMs) ...
const SPLIT_MAX_TILES: usize = 128;
/// ... and at least this many k (output pixels) per output; about `SPLIT_K_PER_CHUNK` k per chunk, at most
/// `SPLIT_MAX` chunks and `SPLIT_MAX_BYTES` of f32 partials.
const SPLIT_MIN_K: usize = 2048;
const SPLIT_K_PER_CHUNK: usize = 1024;
const SPLIT_MAX: usize = 32;
const SPLIT_MAX_BYTES: usize = 64 << 20;

/// Output tile side of the kernel for a dtype.
fn tile_of(dtype: DType) -> usize {
    if dtype == DType::F32 { 64 } else { 128 }
}

/// The split of backward weight's GEMM (M x N outputs, K long): `(chunks, k per chunk)`, the chunk a multiple of
/// 32 (whole k-tiles of both kernels), or `None` for one pass.
fn split_k(m: usize, n: usize, k: usize, tile: usize) -> Option<(usize, usize)> {
    let tiles = m.div_ceil(tile) * n.div_ceil(tile);
    if tiles >= SPLIT_MAX_TILES || k < SPLIT_MIN_K {
        return None;
    }
    let by_bytes = SPLIT_MAX_BYTES / (m * n * 4).max(1);
    let want = (k / SPLIT_K_PER_CHUNK).min(SPLIT_MAX).min(by_bytes);
    if want < 2 {
        return None;
    }
    let chunk = k.div_ceil(want).next_multiple_of(32);
    Some((k.div_ceil(chunk), chunk))
}

/// Workspace of a convolution node: split-K partials of backward weight, else none.
pub fn workspace(node: &Node, inputs: &[&Node]) -> usize {
    let (Op::Conv2dBwdWeight { .. }, [x, dy]) = (&node.op, inputs) else { return 0 };
    let dtype = node.dtype;
    if !dtype.is_float() || x.dtype != dtype || dy.dtype != dtype || x.shape.len() != 4 || dy.shape.len() != 4 {
        return 0;
    }
    if node.shape.len() != 4 {
        return 0;
    }
    let (kh, kw) = (node.shape[2], node.shape[3]);
    let (m, n, k) = (dy.shape[3], kh * kw * x.shape[3], dy.shape[0] * dy.shape[1] * dy.shape[2]);
    split_k(m, n, k, tile_of(dtype)).map_or(0, |(s, _)| s * m * n * 4)
}

fn err(msg: String) -> Error {
    Error::backend("kernels", msg)
}

/// Which of the three implicit GEMMs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fwd,
    BwdData,
    BwdWeight,
}

fn conv(ctx: &NodeCtx, mode: Mode, stride: usize, padding: usize, bias: bool) -> Result<Option<Vec<Launch>>> {
    let n_in = if bias { 3 } else { 2 };
    let dtype = ctx.node.dtype;
    if ctx.ins.len() != n_in || !dtype.is_float() || ctx.inputs.iter().any(|n| n.dtype != dtype) {
        return Ok(None);
    }
    let (a, b, out) = (&ctx.inputs[0].shape, &ctx.inputs[1].shape, &ctx.node.shape);
    // x [n, h, w, c], y [n, ho, wo, o], w [o, c, kh, kw] from whichever tensors this op has.
    let d4 = |s: &[usize]| -> Option<[usize; 4]> { s.try_into().ok() };
    let (ix, iy, iw) = match mode {
        Mode::Fwd => (a, out, b),
        Mode::BwdData => (out, a, b),
        Mode::BwdWeight => (a, b, out),
    };
    let (Some(x), Some(y), Some(w)) = (d4(ix), d4(iy), d4(iw)) else {
        return Err(err(format!("conv2d: rank-4 tensors expected, got {a:?}, {b:?} -> {out:?}")));
    };
    let p = ConvParams {
        n: x[0] as i64,
        h: x[1] as i64,
        w: x[2] as i64,
        c: x[3] as i64,
        ho: y[1] as i64,
        wo: y[2] as i64,
        o: y[3] as i64,
        kh: w[2] as i64,
        kw: w[3] as i64,
        stride: stride as i64,
        pad: padding as i64,
        reserved: 0,
    };
    let kk = w[2] * w[3];
    let (m, n, k) = match mode {
        Mode::Fwd => (x[0] * y[1] * y[2], y[3], kk * x[3]),
        Mode::BwdData => (x[0] * x[1] * x[2], x[3], kk * y[3]),
        Mode::BwdWeight => (y[3], kk * x[3], x[0] * y[1] * y[2]),
    };
    // The kernels index pixels and k with 32-bit arithmetic.
    if [m, n, k].iter().any(|&v| v > i32::MAX as usize) {
        return Err(err(format!("conv2d: GEMM {m} x {n} x {k} too large for 32-bit indexing")));
    }
    if m == 0 || n == 0 {
        return Ok(Some(Vec::new()));
    }
    let variant = if dtype == DType::F32 { "simt" } else { "tc" };
    let tile = tile_of(dtype);
    let tiles = m.div_ceil(tile) * n.div_ceil(tile);
    if tiles > i32::MAX as usize {
        return Err(err(format!("conv2d: {tiles} tiles exceed the grid")));
    }
    let name = match mode {
        Mode::Fwd => "conv2d_fwd",
        Mode::BwdData => "conv2d_bwd_data",
        Mode::BwdWeight => "conv2d_bwd_weight",
    };
    let split = if mode == Mode::BwdWeight { split_k(m, n, k, tile) } else { None };
    let mut p = p;
    let mut args: Vec<Arg> = vec![Arg::Ptr(ctx.ins[0]), Arg::Ptr(ctx.ins[1])];
    if mode == Mode::Fwd {
        args.push(if bias { Arg::Ptr(ctx.ins[2]) } else { Arg::I64(0) });
    }
    args.push(Arg::Ptr(ctx.out));
    let mut ws = None;
    if mode == Mode::BwdWeight {
        if let Some((chunks, chunk)) = split {
            p.reserved = chunk as i64;
            ws = Some((ctx.workspace(chunks * m * n * 4)?, chunks));
        }
        args.push(ws.map_or(Arg::I64(0), |(l, _)| Arg::Ptr(l)));
    }
    let params = Arg::Bytes(bytemuck::bytes_of(&p).to_vec());
    args.push(params.clone());
    let mut v = vec![Launch {
        file: "conv",
        kernel: format!("{name}_{variant}_{}", suffix(dtype)),
        grid: [tiles as u32, ws.map_or(1, |(_, c)| c as u32), 1],
        block: [THREADS, 1, 1],
        smem: 0,
        args,
    }];
    if let Some((l, chunks)) = ws {
        v.push(Launch {
            file: "conv",
            kernel: format!("conv2d_bwd_weight_fin_{}", suffix(dtype)),
            grid: crate::backend::launch::grid_for(m * n),
            block: [crate::backend::launch::BLOCK, 1, 1],
            smem: 0,
            args: vec![Arg::Ptr(l), Arg::Ptr(ctx.out), params, Arg::I64(chunks as i64)],
        });
    }
    Ok(Some(v))
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    match &ctx.node.op {
        Op::Conv2d { stride, padding, bias } => conv(ctx, Mode::Fwd, *stride, *padding, *bias),
        Op::Conv2dBwdData { stride, padding, .. } => conv(ctx, Mode::BwdData, *stride, *padding, false),
        Op::Conv2dBwdWeight { stride, padding, .. } => conv(ctx, Mode::BwdWeight, *stride, *padding, false),
        _ => Ok(None),
    }
}
