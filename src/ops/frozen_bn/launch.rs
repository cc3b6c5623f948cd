//! Launcher for `kernels/frozen_bn.cu`: `Op::FrozenBatchNorm`, one thread per element.

use crate::backend::launch::{grid_for, suffix, Arg, Launch, NodeCtx, BLOCK};
use crate::error::Result;
use crate::ops::Op;

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let Op::FrozenBatchNorm { eps, relu } = &ctx.node.op else {
        return Ok(None);
    };
    let dtype = ctx.node.dtype;
    if !dtype.is_float() || ctx.inputs.iter().any(|i| i.dtype != dtype) {
        return Ok(None);
    }
    let n = ctx.node.numel();
    let c = ctx.node.shape.last().copied().unwrap_or(0);
    if n == 0 || c == 0 {
        return Ok(Some(Vec::new()));
    }
    let mut args: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
    args.extend([Arg::Ptr(ctx.out), Arg::I64(n as i64), Arg::I64(c as i64), Arg::F32(*eps), Arg::I32(*relu as i32)]);
    let kernel = format!("frozen_batch_norm_fwd_{}", suffix(dtype));
    Ok(Some(vec![Launch { file: "frozen_bn", kernel, grid: grid_for(n), block: [BLOCK, 1, 1], smem: 0, args }]))
}
