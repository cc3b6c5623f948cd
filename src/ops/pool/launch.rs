//! Launcher for `kernels/pool.cu`: `Op::MaxPool2d` (one thread per output element) and `Op::MaxPool2dBwd`
//! (one thread per dx element, a gather over the windows that hold it).

use crate::backend::launch::{grid_for, suffix, Arg, Launch, NodeCtx, BLOCK};
use crate::error::Result;
use crate::ops::Op;

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let (kernel, k, s, p) = match &ctx.node.op {
        Op::MaxPool2d { kernel, stride, padding } => ("max_pool2d_fwd", *kernel, *stride, *padding),
        Op::MaxPool2dBwd { kernel, stride, padding } => ("max_pool2d_bwd", *kernel, *stride, *padding),
        _ => return Ok(None),
    };
    let dtype = ctx.node.dtype;
    if !dtype.is_float() || ctx.inputs.iter().any(|i| i.dtype != dtype) || k > i32::MAX as usize || s > i32::MAX as usize {
        return Ok(None);
    }
    let (x, y) = match &ctx.node.op {
        Op::MaxPool2d { .. } => (&ctx.inputs[0].shape, &ctx.node.shape),
        _ => (&ctx.node.shape, &ctx.inputs[1].shape),
    };
    let n = ctx.node.numel();
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    let mut args: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
    args.push(Arg::Ptr(ctx.out));
    for d in [x[0], x[1], x[2], x[3], y[1], y[2]] {
        args.push(Arg::I64(d as i64));
    }
    args.extend([Arg::I32(k as i32), Arg::I32(s as i32), Arg::I32(p as i32)]);
    let kernel = format!("{kernel}_{}", suffix(dtype));
    Ok(Some(vec![Launch { file: "pool", kernel, grid: grid_for(n), block: [BLOCK, 1, 1], smem: 0, args }]))
}
