//! Launchers for `kernels/conv.cu` (`Op::Conv2d`, `Op::Conv2dBwdData`, `Op::Conv2dBwdWeight`).
//!
//! Convolutions are implicit GEMMs (see the `.cu` header): f16/bf16 go to the tensor-core kernels (128 x 128
//! tiles), f32 to the SIMT ones (64 x 64 tiles); one block per output tile, 256 threads, grid along x.

use crate::backend::launch::{suffix, Arg, Launch, NodeCtx};
use crate::error::{Error, Result};
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
    let (variant, tile) = if dtype == DType::F32 { ("simt", 64) } else { ("tc", 128) };
    let tiles = m.div_ceil(tile) * n.div_ceil(tile);
    if tiles > i32::MAX as usize {
        return Err(err(format!("conv2d: {tiles} tiles exceed the grid")));
    }
    let name = match mode {
        Mode::Fwd => "conv2d_fwd",
        Mode::BwdData => "conv2d_bwd_data",
        Mode::BwdWeight => "conv2d_bwd_weight",
    };
    let mut args: Vec<Arg> = vec![Arg::Ptr(ctx.ins[0]), Arg::Ptr(ctx.ins[1])];
    if mode == Mode::Fwd {
        args.push(if bias { Arg::Ptr(ctx.ins[2]) } else { Arg::I64(0) });
    }
    args.push(Arg::Ptr(ctx.out));
    args.push(Arg::Bytes(bytemuck::bytes_of(&p).to_vec()));
    Ok(Some(vec![Launch {
        file: "conv",
        kernel: format!("{name}_{variant}_{}", suffix(dtype)),
        grid: [tiles as u32, 1, 1],
        block: [THREADS, 1, 1],
        smem: 0,
        args,
    }]))
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    match &ctx.node.op {
        Op::Conv2d { stride, padding, bias } => conv(ctx, Mode::Fwd, *stride, *padding, *bias),
        Op::Conv2dBwdData { stride, padding, .. } => conv(ctx, Mode::BwdData, *stride, *padding, false),
        Op::Conv2dBwdWeight { stride, padding, .. } => conv(ctx, Mode::BwdWeight, *stride, *padding, false),
        _ => Ok(None),
    }
}
