//! Launcher for `kernels/groupnorm.cu` (`Op::GroupNorm`, `Op::GroupNormBwd`): one 512-thread block per
//! (sample, group), or, for few large groups ([`split`]), each group over several blocks through the node's
//! workspace: `group_norm_part` (chunk statistics), then `group_norm_fwd_split`, or `group_norm_bwd_part` (chunk
//! sums) and `group_norm_bwd_split`.

use crate::backend::launch::{suffix, Arg, Launch, NodeCtx};
use crate::error::{Error, Result};
use crate::graph::Node;
use crate::ops::Op;

/// Threads of a group-norm block (`GN_THREADS` in `kernels/groupnorm.cu`).
const GN_THREADS: u32 = 512;
/// Smallest chunk of a split group (16 elements a thread), most chunks a group, and the blocks a split aims
/// for (about 4 of 512 threads on each SM of an H100/H200).
const MIN_CHUNK: usize = 8192;
const MAX_SPLITS: usize = 64;
const TARGET_BLOCKS: usize = 512;
/// Workspace bytes a (group, chunk) pair takes per pass: two f64.
const PART_BYTES: usize = 16;

/// `(splits, chunk)` for `blocks` (sample, group) pairs of `count` elements each, when a group is worth
/// splitting: fewer than [`TARGET_BLOCKS`] blocks, and at least two chunks of [`MIN_CHUNK`] elements.
/// Every chunk is non-empty.
pub fn split(blocks: usize, count: usize) -> Option<(usize, usize)> {
    if blocks == 0 || blocks >= TARGET_BLOCKS {
        return None;
    }
    let want = (count / MIN_CHUNK).min(TARGET_BLOCKS.div_ceil(blocks)).min(MAX_SPLITS);
    if want < 2 {
        return None;
    }
    let chunk = count.div_ceil(want);
    Some((count.div_ceil(chunk), chunk))
}

/// (N, S, C) of a group norm's x (`[N, S..., C]`).
fn dims(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1..shape.len() - 1].iter().product(), shape[shape.len() - 1])
}

/// Workspace of a group-norm node: the split path's partials (one pass forward, two backward), else none.
pub fn workspace(node: &Node, _inputs: &[&Node]) -> usize {
    let (groups, passes) = match &node.op {
        Op::GroupNorm { groups, .. } => (*groups, 1),
        Op::GroupNormBwd { groups, .. } => (*groups, 2),
        _ => return 0,
    };
    if !node.dtype.is_float() || node.shape.len() < 2 || groups == 0 {
        return 0;
    }
    let (n, s, c) = dims(&node.shape);
    if c % groups != 0 {
        return 0;
    }
    split(n * groups, s * (c / groups)).map_or(0, |(splits, _)| n * groups * splits * PART_BYTES * passes)
}

fn group_norm(ctx: &NodeCtx, groups: usize, eps: f32, silu: bool, bwd: bool) -> Result<Option<Vec<Launch>>> {
    let n_in = if bwd { 4 } else { 3 };
    let (shape, dtype) = (&ctx.node.shape, ctx.node.dtype);
    if ctx.ins.len() != n_in || !dtype.is_float() || ctx.inputs.iter().any(|n| n.dtype != dtype) {
        return Ok(None);
    }
    if shape.len() < 2 || groups == 0 {
        return Ok(None);
    }
    let (n, s, c) = dims(shape);
    if n * s * c == 0 {
        return Ok(Some(Vec::new()));
    }
    let dt = suffix(dtype);
    let launch = |kernel: &str, blocks: usize, args: Vec<Arg>| Launch {
        file: "groupnorm",
        kernel: format!("{kernel}_{dt}"),
        grid: [blocks as u32, 1, 1],
        block: [GN_THREADS, 1, 1],
        smem: 0,
        args,
    };
    let ins: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
    let tail = [Arg::I64(s as i64), Arg::I64(c as i64), Arg::I32(groups as i32), Arg::F32(eps), Arg::I32(silu as i32)];
    let too_many = |blocks: usize| {
        Error::backend("kernels", format!("group_norm: {blocks} blocks exceed the grid (x {:?}, {groups} groups)", shape))
    };
    if let Some((splits, chunk)) = split(n * groups, s * (c / groups)) {
        let blocks = n * groups * splits;
        if blocks > i32::MAX as usize {
            return Err(too_many(blocks));
        }
        let ws = Arg::Ptr(ctx.workspace(blocks * PART_BYTES * if bwd { 2 } else { 1 })?);
        let geom = [Arg::I64(chunk as i64), Arg::I32(splits as i32)];
        let cat = |parts: &[&[Arg]]| parts.concat();
        let mut v = vec![launch(
            "group_norm_part",
            blocks,
            cat(&[&ins[..1], &[ws.clone()], &tail[..3], &geom]),
        )];
        if bwd {
            v.push(launch("group_norm_bwd_part", blocks, cat(&[&ins, &[ws.clone()], &tail, &geom])));
            v.push(launch("group_norm_bwd_split", blocks, cat(&[&ins, &[ws, Arg::Ptr(ctx.out)], &tail, &geom])));
        } else {
            v.push(launch("group_norm_fwd_split", blocks, cat(&[&ins, &[ws, Arg::Ptr(ctx.out)], &tail, &geom])));
        }
        return Ok(Some(v));
    }
    let blocks = n * groups;
    if blocks > i32::MAX as usize || groups > i32::MAX as usize {
        return Err(too_many(blocks));
    }
    let args = [&ins[..], &[Arg::Ptr(ctx.out)], &tail].concat();
    Ok(Some(vec![launch(if bwd { "group_norm_bwd" } else { "group_norm_fwd" }, blocks, args)]))
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    match &ctx.node.op {
        Op::GroupNorm { groups, eps, silu } => group_norm(ctx, *groups, *eps, *silu, false),
        Op::GroupNormBwd { groups, eps, silu } => group_norm(ctx, *groups, *eps, *silu, true),
        _ => Ok(None),
    }
}
