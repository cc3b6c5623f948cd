//! Launcher for `kernels/groupnorm.cu` (`Op::GroupNorm`, `Op::GroupNormBwd`): one 512-thread block per
//! (sample, group).

use crate::backend::launch::{suffix, Arg, Launch, NodeCtx};
use crate::error::{Error, Result};
use crate::ops::Op;

/// Threads of a group-norm block (`GN_THREADS` in `kernels/groupnorm.cu`).
const GN_THREADS: u32 = 512;

fn group_norm(ctx: &NodeCtx, groups: usize, eps: f32, silu: bool, bwd: bool) -> Result<Option<Vec<Launch>>> {
    let n_in = if bwd { 4 } else { 3 };
    let (shape, dtype) = (&ctx.node.shape, ctx.node.dtype);
    if ctx.ins.len() != n_in || !dtype.is_float() || ctx.inputs.iter().any(|n| n.dtype != dtype) {
        return Ok(None);
    }
    if shape.len() < 2 || groups == 0 {
        return Ok(None);
    }
    let (n, c) = (shape[0], shape[shape.len() - 1]);
    let s: usize = shape[1..shape.len() - 1].iter().product();
    if n * s * c == 0 {
        return Ok(Some(Vec::new()));
    }
    let blocks = n * groups;
    if blocks > i32::MAX as usize || groups > i32::MAX as usize {
        return Err(Error::backend("kernels", format!("group_norm: {blocks} (sample, group) blocks exceed the grid")));
    }
    let mut args: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
    args.push(Arg::Ptr(ctx.out));
    args.extend([
        Arg::I64(s as i64),
        Arg::I64(c as i64),
        Arg::I32(groups as i32),
        Arg::F32(eps),
        Arg::I32(silu as i32),
    ]);
    let name = if bwd { "group_norm_bwd" } else { "group_norm_fwd" };
    Ok(Some(vec![Launch {
        file: "groupnorm",
        kernel: format!("{name}_{}", suffix(dtype)),
        grid: [blocks as u32, 1, 1],
        block: [GN_THREADS, 1, 1],
        smem: 0,
        args,
    }]))
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    match &ctx.node.op {
        Op::GroupNorm { groups, eps, silu } => group_norm(ctx, *groups, *eps, *silu, false),
        Op::GroupNormBwd { groups, eps, silu } => group_norm(ctx, *groups, *eps, *silu, true),
        _ => Ok(None),
    }
}
