//! Launchers for `kernels/sd_misc.cu`: `Op::Geglu`, `Op::GegluBwd`, `Op::TimestepEmbedding` (grid-stride
//! elementwise kernels, one output element (GEGLU backward: one pair) per thread step).

use crate::backend::launch::{grid_for, suffix, Arg, Launch, NodeCtx, BLOCK};
use crate::error::Result;
use crate::ops::Op;

const FILE: &str = "sd_misc";

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let n_in = match ctx.node.op {
        Op::Geglu | Op::TimestepEmbedding { .. } => 1,
        Op::GegluBwd => 2,
        _ => return Ok(None),
    };
    if ctx.inputs.len() != n_in || ctx.ins.len() != n_in || !ctx.inputs[0].dtype.is_float() {
        return Ok(None);
    }
    let n = ctx.node.numel();
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    let sfx = suffix(ctx.inputs[0].dtype);
    let mut args: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
    args.push(Arg::Ptr(ctx.out));
    let (kernel, threads) = match &ctx.node.op {
        Op::TimestepEmbedding { dim, flip_sin_to_cos, shift, max_period } => {
            args.extend([
                Arg::I64(ctx.inputs[0].numel() as i64),
                Arg::I64(*dim as i64),
                Arg::I32(*flip_sin_to_cos as i32),
                Arg::F32(*shift),
                Arg::F32(*max_period),
            ]);
            (format!("timestep_embedding_fwd_{sfx}"), n)
        }
        op => {
            let c = ctx.inputs[0].shape.last().copied().unwrap_or(0) / 2;
            let rows = ctx.inputs[0].numel() / (2 * c).max(1);
            args.extend([Arg::I64(rows as i64), Arg::I64(c as i64)]);
            let pass = if matches!(op, Op::Geglu) { "fwd" } else { "bwd" };
            (format!("geglu_{pass}_{sfx}"), rows * c)
        }
    };
    Ok(Some(vec![Launch { file: FILE, kernel, grid: grid_for(threads), block: [BLOCK, 1, 1], smem: 0, args }]))
}
