//! Launchers for `kernels/boxes.cu` (`Op::BoxIou`, `Op::BoxEncode`, `Op::BoxDecode`, `Op::Nms`) and
//! `kernels/topk.cu` (`Op::TopK`, `Op::Gather`, `Op::GatherBwd`). Kernel designs are described at the top of
//! each `.cu` file.

use crate::backend::launch::{grid_for, suffix, Arg, Launch, NodeCtx, BLOCK};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::DType;

/// Most boxes the one-block NMS kernel takes: its removed-bit mask (N bits) must fit the 48 KiB of dynamic shared
/// memory a launch gets without an opt-in.
pub const NMS_MAX_BOXES: usize = 48 * 1024 * 8;
/// Largest k of the top-k kernel (its candidates, k rounded up to a power of two, are sorted in 32 KiB of shared
/// memory).
pub const TOPK_MAX_K: usize = 4096;
/// Axes the gather kernels handle (`GATHER_DIMS` in kernels/topk.cu).
const GATHER_DIMS: usize = 6;

/// `GatherShape` in kernels/topk.cu.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherShape {
    ishape: [i64; GATHER_DIMS],
    xstride: [i64; GATHER_DIMS],
    axis: i64,
    xsize: i64,
    total: i64,
}

fn refuse(ctx: &NodeCtx, why: String) -> Error {
    Error::backend("kernels", format!("node {} ({}): {why}", ctx.id.0, ctx.node.op.describe()))
}

/// Threads for a one-block kernel over `n` items: a multiple of 32 in [64, 1024].
fn block_threads(n: usize) -> u32 {
    n.next_multiple_of(32).clamp(64, 1024) as u32
}

fn float_inputs_match(ctx: &NodeCtx, n: usize) -> Option<DType> {
    if ctx.inputs.len() != n || ctx.ins.len() != n {
        return None;
    }
    let d = ctx.node.dtype;
    (d.is_float() && ctx.inputs.iter().all(|i| i.dtype == d)).then_some(d)
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let shape = &ctx.node.shape;
    let numel: usize = shape.iter().product();
    let ptrs = |extra: Vec<Arg>| -> Vec<Arg> {
        let mut a: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
        a.push(Arg::Ptr(ctx.out));
        a.extend(extra);
        a
    };
    let one = |file: &'static str, kernel: String, grid: [u32; 3], block: u32, smem: u32, args: Vec<Arg>| {
        Ok(Some(vec![Launch { file, kernel, grid, block: [block, 1, 1], smem, args }]))
    };
    match &ctx.node.op {
        Op::BoxIou { giou } => {
            let Some(dt) = float_inputs_match(ctx, 2) else { return Ok(None) };
            if numel == 0 {
                return Ok(Some(Vec::new()));
            }
            let a = &ctx.inputs[0].shape;
            let (n, m) = (a[a.len() - 2], shape[shape.len() - 1]);
            let batch = numel / (n * m);
            let args = ptrs(vec![Arg::I64(batch as i64), Arg::I64(n as i64), Arg::I64(m as i64), Arg::I32(*giou as i32)]);
            one("boxes", format!("box_iou_fwd_{}", suffix(dt)), grid_for(numel), BLOCK, 0, args)
        }
        Op::BoxEncode { weights } => {
            let Some(dt) = float_inputs_match(ctx, 2) else { return Ok(None) };
            let n = shape[0];
            if n == 0 {
                return Ok(Some(Vec::new()));
            }
            let mut extra = vec![Arg::I64(n as i64)];
            extra.extend(weights.iter().map(|w| Arg::F32(*w)));
            one("boxes", format!("box_encode_fwd_{}", suffix(dt)), grid_for(n), BLOCK, 0, ptrs(extra))
        }
        Op::BoxDecode { weights, clamp } => {
            let Some(dt) = float_inputs_match(ctx, 2) else { return Ok(None) };
            let (n, k) = (shape[0], shape[1] / 4);
            if n * k == 0 {
                return Ok(Some(Vec::new()));
            }
            let mut extra = vec![Arg::I64(n as i64), Arg::I64(k as i64)];
            extra.extend(weights.iter().map(|w| Arg::F32(*w)));
            extra.push(Arg::F32(*clamp));
            one("boxes", format!("box_decode_fwd_{}", suffix(dt)), grid_for(n * k), BLOCK, 0, ptrs(extra))
        }
        Op::Nms { iou_threshold, max_out } => {
            if ctx.inputs.len() != 3 || ctx.ins.len() != 3 {
                return Ok(None);
            }
            let (sd, cd) = (ctx.inputs[1].dtype, ctx.inputs[2].dtype);
            if ctx.inputs[0].dtype != DType::F32 || !sd.is_float() || !matches!(cd, DType::I32 | DType::I64) {
                return Ok(None);
            }
            let n = ctx.inputs[1].shape[0];
            if n > NMS_MAX_BOXES || *max_out > i32::MAX as usize {
                return Err(refuse(ctx, format!("{n} boxes: the NMS kernel takes at most {NMS_MAX_BOXES}")));
            }
            let smem = (n.div_ceil(32) * 4).next_multiple_of(16).max(16) as u32;
            let args = ptrs(vec![Arg::I32(n as i32), Arg::I32(*max_out as i32), Arg::F32(*iou_threshold)]);
            let kernel = format!("nms_fwd_{}_{}", suffix(sd), suffix(cd));
            one("boxes", kernel, [1, 1, 1], block_threads(n), smem, args)
        }
        Op::TopK { k } => {
            let Some(x) = ctx.inputs.first() else { return Ok(None) };
            if ctx.inputs.len() != 1 || !x.dtype.is_float() {
                return Ok(None);
            }
            let n = *x.shape.last().unwrap_or(&1);
            let rows = numel.checked_div(*k).unwrap_or(0);
            if rows == 0 || *k == 0 {
                return Ok(Some(Vec::new()));
            }
            if *k > TOPK_MAX_K || n > i32::MAX as usize {
                return Err(refuse(ctx, format!("k = {k}, row {n}: the top-k kernel takes k <= {TOPK_MAX_K}")));
            }
            let p2 = k.next_power_of_two();
            let args = ptrs(vec![Arg::I64(rows as i64), Arg::I32(n as i32), Arg::I32(*k as i32), Arg::I32(p2 as i32)]);
            let grid = [rows.min(1 << 20) as u32, 1, 1];
            let block = block_threads(n.max(p2 / 2));
            one("topk", format!("topk_fwd_{}", suffix(x.dtype)), grid, block, (p2 * 8) as u32, args)
        }
        Op::Gather { axis } => {
            if ctx.inputs.len() != 2 {
                return Ok(None);
            }
            let (x, idx) = (ctx.inputs[0], ctx.inputs[1]);
            let rank = x.shape.len();
            if rank > GATHER_DIMS || !matches!(idx.dtype, DType::I32 | DType::I64) || x.dtype == DType::U8 {
                return Ok(None);
            }
            if numel == 0 {
                return Ok(Some(Vec::new()));
            }
            let pad = GATHER_DIMS - rank;
            let xst = crate::tensor::strides(&x.shape);
            let mut s = GatherShape {
                ishape: [1; GATHER_DIMS],
                xstride: [0; GATHER_DIMS],
                axis: (axis + pad) as i64,
                xsize: x.shape[*axis] as i64,
                total: numel as i64,
            };
            for d in 0..rank {
                s.ishape[pad + d] = idx.shape[d] as i64;
                s.xstride[pad + d] = xst[d] as i64;
            }
            let args = vec![Arg::Ptr(ctx.ins[0]), Arg::Ptr(ctx.ins[1]), Arg::Ptr(ctx.out), Arg::Bytes(bytemuck::bytes_of(&s).to_vec())];
            let kernel = format!("gather_fwd_{}_{}", suffix(idx.dtype), suffix(x.dtype));
            one("topk", kernel, grid_for(numel), BLOCK, 0, args)
        }
        Op::GatherBwd { axis, size } => {
            if ctx.inputs.len() != 2 {
                return Ok(None);
            }
            let (idx, dy) = (ctx.inputs[0], ctx.inputs[1]);
            if !matches!(idx.dtype, DType::I32 | DType::I64) || !dy.dtype.is_float() {
                return Ok(None);
            }
            if numel == 0 {
                return Ok(Some(Vec::new()));
            }
            let outer: usize = dy.shape[..*axis].iter().product();
            let inner: usize = dy.shape[axis + 1..].iter().product();
            let len = dy.shape[*axis];
            let args = ptrs(vec![Arg::I64(outer as i64), Arg::I64(len as i64), Arg::I64(*size as i64), Arg::I64(inner as i64)]);
            let kernel = format!("gather_bwd_{}_{}", suffix(idx.dtype), suffix(dy.dtype));
            one("topk", kernel, grid_for(numel), BLOCK, 0, args)
        }
        _ => Ok(None),
    }
}
