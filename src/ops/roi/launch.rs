//! Launchers for `kernels/roi_align.cu`: `Op::RoiAlign` (one thread per output element), `Op::RoiAlignBwd` (a
//! gather: one thread per element of dfeat, see the kernel file) and `Op::FpnLevels` (one thread per RoI).

use crate::backend::launch::{grid_for, suffix, Arg, Launch, NodeCtx, BLOCK};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::DType;

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::backend("kernels", format!("roi_align: {what} {v} does not fit in i32")))
}

fn launch(kernel: String, n: usize, args: Vec<Arg>) -> Vec<Launch> {
    vec![Launch { file: "roi_align", kernel, grid: grid_for(n), block: [BLOCK, 1, 1], smem: 0, args }]
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let (shape, dtype) = (&ctx.node.shape, ctx.node.dtype);
    let total: usize = shape.iter().product();
    match &ctx.node.op {
        Op::RoiAlign { out_h, out_w, spatial_scale, sampling_ratio, aligned } => {
            let fs = &ctx.inputs[0].shape;
            if ctx.inputs[1].dtype != DType::F32 || !dtype.is_float() {
                return Ok(None);
            }
            if total == 0 {
                return Ok(Some(Vec::new()));
            }
            let mut args = vec![Arg::Ptr(ctx.ins[0]), Arg::Ptr(ctx.ins[1]), Arg::Ptr(ctx.out), Arg::I64(total as i64)];
            for (what, v) in [("n", fs[0]), ("h", fs[1]), ("w", fs[2]), ("c", fs[3]), ("out_h", *out_h), ("out_w", *out_w)] {
                args.push(Arg::I32(int(what, v)?));
            }
            args.extend([Arg::F32(*spatial_scale), Arg::I32(*sampling_ratio), Arg::I32(*aligned as i32)]);
            Ok(Some(launch(format!("roi_align_fwd_{}", suffix(dtype)), total, args)))
        }
        Op::RoiAlignBwd { out_h, out_w, spatial_scale, sampling_ratio, aligned, n, h, w } => {
            if ctx.inputs[0].dtype != DType::F32 || !dtype.is_float() {
                return Ok(None);
            }
            if total == 0 {
                return Ok(Some(Vec::new()));
            }
            let k = ctx.inputs[0].shape[0];
            let mut args = vec![Arg::Ptr(ctx.ins[0]), Arg::Ptr(ctx.ins[1]), Arg::Ptr(ctx.out), Arg::I64(total as i64)];
            let dims = [("k", k), ("n", *n), ("h", *h), ("w", *w), ("c", shape[3]), ("out_h", *out_h), ("out_w", *out_w)];
            for (what, v) in dims {
                args.push(Arg::I32(int(what, v)?));
            }
            args.extend([Arg::F32(*spatial_scale), Arg::I32(*sampling_ratio), Arg::I32(*aligned as i32)]);
            Ok(Some(launch(format!("roi_align_bwd_{}", suffix(dtype)), total, args)))
        }
        Op::FpnLevels { k_min, k_max, canonical_scale, canonical_level, eps } => {
            let input = ctx.inputs[0];
            if !input.dtype.is_float() || dtype != DType::I64 {
                return Ok(None);
            }
            if total == 0 {
                return Ok(Some(Vec::new()));
            }
            let args = vec![
                Arg::Ptr(ctx.ins[0]),
                Arg::Ptr(ctx.out),
                Arg::I64(total as i64),
                Arg::I32(input.shape[1] as i32),
                Arg::I32(*k_min),
                Arg::I32(*k_max),
                Arg::F32(*canonical_scale),
                Arg::I32(*canonical_level),
                Arg::F32(*eps),
            ];
            Ok(Some(launch(format!("fpn_levels_fwd_{}", suffix(input.dtype)), total, args)))
        }
        _ => Ok(None),
    }
}
