//! Launchers for `kernels/det_losses.cu`: `Op::SigmoidFocalLoss(Bwd)` (one thread per element) and
//! `Op::GiouLoss(Bwd)` (one thread per box pair).

use crate::backend::launch::{grid_for, suffix, Arg, Launch, NodeCtx, BLOCK};
use crate::error::Result;
use crate::ops::Op;

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let dtype = ctx.node.dtype;
    let (kernel, n, scalars) = match &ctx.node.op {
        Op::SigmoidFocalLoss { alpha, gamma } => ("sigmoid_focal_loss_fwd", ctx.node.numel(), vec![*alpha, *gamma]),
        Op::SigmoidFocalLossBwd { alpha, gamma } => ("sigmoid_focal_loss_bwd", ctx.node.numel(), vec![*alpha, *gamma]),
        Op::GiouLoss { eps } => ("giou_loss_fwd", ctx.node.numel(), vec![*eps]),
        Op::GiouLossBwd { eps } => ("giou_loss_bwd", ctx.node.numel() / 4, vec![*eps]),
        _ => return Ok(None),
    };
    if !dtype.is_float() || ctx.inputs.iter().any(|i| i.dtype != dtype) {
        return Ok(None);
    }
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    let mut args: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
    args.push(Arg::Ptr(ctx.out));
    args.push(Arg::I64(n as i64));
    args.extend(scalars.into_iter().map(Arg::F32));
    let kernel = format!("{kernel}_{}", suffix(dtype));
    Ok(Some(vec![Launch { file: "det_losses", kernel, grid: grid_for(n), block: [BLOCK, 1, 1], smem: 0, args }]))
}
