//! Launchers for `kernels/msda.cu`: `Op::Msda` (one thread per output element), `Op::MsdaBwdValue` (per-chunk
//! f32 partials in the node's workspace, then their sum in chunk order: deterministic, no atomics) and
//! `Op::MsdaBwdLocAttn` (one thread per sample). At most [`MAX_LEVELS`] levels (more: no kernel).

use crate::backend::launch::{grid_for, suffix, Arg, Launch, NodeCtx, BLOCK};
use crate::error::Result;
use crate::graph::Node;
use crate::ops::Op;
use crate::tensor::DType;

/// `MSDA_MAX_LEVELS` in `kernels/msda.cu`.
pub const MAX_LEVELS: usize = 8;
/// The backward-value split aims for this many threads (columns), with at least [`MIN_QCHUNK`] queries per
/// chunk and at most [`MAX_PART_BYTES`] of partials (one chunk always).
const TARGET_COLUMNS: usize = 16384;
const MIN_QCHUNK: usize = 4;
const MAX_PART_BYTES: usize = 256 << 20;

/// Mirrors `MsdaParams` in `kernels/msda.cu` (every field 8 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MsdaParams {
    pub b: i64,
    pub q: i64,
    pub s: i64,
    pub h: i64,
    pub d: i64,
    pub l: i64,
    pub p: i64,
    pub chunks: i64,
    pub qchunk: i64,
    pub lh: [i64; MAX_LEVELS],
    pub lw: [i64; MAX_LEVELS],
    pub start: [i64; MAX_LEVELS],
}

/// (chunks, queries per chunk) of the backward-value split for B, Q, H, D and S tokens: a function of the
/// shapes only. Every chunk is non-empty.
pub fn split(b: usize, q: usize, h: usize, d: usize, s: usize) -> (usize, usize) {
    let cols = (b * h * d).max(1);
    let by_threads = (TARGET_COLUMNS / cols).max(1);
    let by_queries = q.div_ceil(MIN_QCHUNK).max(1);
    let by_bytes = (MAX_PART_BYTES / (cols * s * 4).max(1)).max(1);
    let want = by_threads.min(by_queries).min(by_bytes);
    let qchunk = q.div_ceil(want).max(1);
    (q.div_ceil(qchunk).max(1), qchunk)
}

/// Workspace of an `MsdaBwdValue` node: the f32 partials (`chunks x B x S x H x D`).
pub fn workspace(node: &Node, inputs: &[&Node]) -> usize {
    if !matches!(node.op, Op::MsdaBwdValue { .. }) || inputs.is_empty() || node.shape.len() != 4 {
        return 0;
    }
    let [b, s, h, d] = [node.shape[0], node.shape[1], node.shape[2], node.shape[3]];
    let (chunks, _) = split(b, inputs[0].shape[1], h, d, s);
    chunks * b * s * h * d * 4
}

fn params(levels: &[[usize; 2]], loc: &[usize], d: usize) -> MsdaParams {
    let mut p = MsdaParams {
        b: loc[0] as i64,
        q: loc[1] as i64,
        h: loc[2] as i64,
        d: d as i64,
        l: levels.len() as i64,
        p: loc[4] as i64,
        chunks: 1,
        qchunk: loc[1] as i64,
        ..Default::default()
    };
    let mut s = 0;
    for (i, [lh, lw]) in levels.iter().enumerate() {
        p.lh[i] = *lh as i64;
        p.lw[i] = *lw as i64;
        p.start[i] = s as i64;
        s += lh * lw;
    }
    p.s = s as i64;
    p
}

fn launch(kernel: &str, dtype: DType, n: usize, args: Vec<Arg>) -> Launch {
    Launch { file: "msda", kernel: format!("{kernel}_{}", suffix(dtype)), grid: grid_for(n), block: [BLOCK, 1, 1], smem: 0, args }
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let (shape, dtype) = (&ctx.node.shape, ctx.node.dtype);
    let total: usize = shape.iter().product();
    let ins: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
    let bytes = |p: &MsdaParams| Arg::Bytes(bytemuck::bytes_of(p).to_vec());
    match &ctx.node.op {
        Op::Msda { levels } => {
            let (value, loc) = (ctx.inputs[0], ctx.inputs[1]);
            if levels.len() > MAX_LEVELS || loc.dtype != DType::F32 || !dtype.is_float() {
                return Ok(None);
            }
            if total == 0 {
                return Ok(Some(Vec::new()));
            }
            let p = params(levels, &loc.shape, value.shape[3]);
            let args = [&ins[..], &[Arg::Ptr(ctx.out), Arg::I64(total as i64), bytes(&p)]].concat();
            Ok(Some(vec![launch("msda_fwd", dtype, total, args)]))
        }
        Op::MsdaBwdValue { levels } => {
            let loc = ctx.inputs[0];
            if levels.len() > MAX_LEVELS || loc.dtype != DType::F32 || !dtype.is_float() {
                return Ok(None);
            }
            if total == 0 {
                return Ok(Some(Vec::new()));
            }
            let mut p = params(levels, &loc.shape, shape[3]);
            let (chunks, qchunk) = split(shape[0], loc.shape[1], shape[2], shape[3], shape[1]);
            p.chunks = chunks as i64;
            p.qchunk = qchunk as i64;
            let ws = Arg::Ptr(ctx.workspace(chunks * total * 4)?);
            let cols = chunks * shape[0] * shape[2] * shape[3];
            let part = [&ins[..], &[ws.clone(), bytes(&p)]].concat();
            let fin = vec![ws, Arg::Ptr(ctx.out), Arg::I64(total as i64), bytes(&p)];
            Ok(Some(vec![launch("msda_bwd_value_part", dtype, cols, part), launch("msda_bwd_value_fin", dtype, total, fin)]))
        }
        Op::MsdaBwdLocAttn { levels } => {
            let (value, loc) = (ctx.inputs[0], ctx.inputs[1]);
            if levels.len() > MAX_LEVELS || loc.dtype != DType::F32 || !value.dtype.is_float() || dtype != DType::F32 {
                return Ok(None);
            }
            let samples = total / 3;
            if samples == 0 {
                return Ok(Some(Vec::new()));
            }
            let p = params(levels, &loc.shape, value.shape[3]);
            let args = [&ins[..], &[Arg::Ptr(ctx.out), Arg::I64(samples as i64), bytes(&p)]].concat();
            Ok(Some(vec![launch("msda_bwd_loc_attn", value.dtype, samples, args)]))
        }
        _ => Ok(None),
    }
}
