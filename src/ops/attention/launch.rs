//! Launchers for `kernels/attention.cu`: `Op::Attention`, `Op::AttentionStats`, `Op::AttentionBwd`.
//!
//! The forward and the statistics pass take the tensor-core kernels (`*_d<DP>_<f16|bf16>`) when D is a
//! multiple of 8 and at most 160 (DP = the smallest of 48, 64, 80, 160 that holds D) and q, k (and v, o) start
//! 16-byte aligned; everything else (f32, odd D, unaligned views) runs the SIMT kernels, which take any D up to
//! 512. The backward is two SIMT launches (dq rows, then dk/dv rows) writing disjoint rows of the output.

use crate::backend::launch::{suffix, Arg, Launch, NodeCtx};
use crate::backend::Loc;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::DType;

const FILE: &str = "attention";
/// Threads per block (`ATT_THREADS`); the SIMT kernels take one row per warp.
const THREADS: u32 = 128;
const WARPS: usize = 4;
/// Query rows per tensor-core block (`ATT_BR`).
const BR: usize = 64;
/// Largest head dimension of the SIMT kernels (`32 * SIMT_MAXR`).
const SIMT_MAX_D: usize = 512;
/// Padded head dimensions with tensor-core kernels.
const TC_DIMS: [usize; 4] = [48, 64, 80, 160];
const MAX_GRID: usize = 1 << 20;

/// Mirror of `AttShape` in kernels/attention.cu.
fn shape_arg(b: usize, tq: usize, tk: usize, h: usize, d: usize) -> Arg {
    let mut v = Vec::with_capacity(40);
    for x in [b, tq, tk, h, d] {
        v.extend_from_slice(&(x as i64).to_le_bytes());
    }
    Arg::Bytes(v)
}

/// The padded head dimension of the tensor-core kernel for `d`, if one applies.
pub(crate) fn tc_dim(dtype: DType, d: usize, locs: &[Loc]) -> Option<usize> {
    if !matches!(dtype, DType::F16 | DType::BF16) || d == 0 || !d.is_multiple_of(8) {
        return None;
    }
    if !locs.iter().all(|l| l.offset.is_multiple_of(16)) {
        return None;
    }
    TC_DIMS.into_iter().find(|&p| d <= p)
}

fn simt_geometry(ctx: &NodeCtx, rows: usize, d: usize, floats_per_warp: usize) -> Result<([u32; 3], u32)> {
    if d > SIMT_MAX_D {
        return Err(Error::backend(
            "kernels",
            format!("{}: head dimension {d} > {SIMT_MAX_D} has no kernel", ctx.node.op.describe()),
        ));
    }
    let blocks = rows.div_ceil(WARPS).clamp(1, MAX_GRID);
    Ok(([blocks as u32, 1, 1], (WARPS * floats_per_warp * d * 4) as u32))
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let (causal, scale, n_in) = match ctx.node.op {
        Op::Attention { causal, scale } => (causal, scale, 3),
        Op::AttentionStats { causal, scale } => (causal, scale, 4),
        Op::AttentionBwd { causal, scale } => (causal, scale, 5),
        _ => return Ok(None),
    };
    if ctx.inputs.len() != n_in || ctx.ins.len() != n_in {
        return Ok(None);
    }
    let dt = ctx.inputs[0].dtype;
    let (qs, ks) = (&ctx.inputs[0].shape, &ctx.inputs[1].shape);
    let (b, tq, h, d, tk) = (qs[0], qs[1], qs[2], qs[3], ks[1]);
    if ctx.node.numel() == 0 {
        return Ok(Some(Vec::new()));
    }
    let sfx = suffix(dt);
    let mut args: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
    args.push(Arg::Ptr(ctx.out));
    args.extend([shape_arg(b, tq, tk, h, d), Arg::I32(causal as i32), Arg::F32(scale)]);
    let block = [THREADS, 1, 1];
    let launch = |kernel: String, grid: [u32; 3], smem: u32, args: Vec<Arg>| Launch {
        file: FILE,
        kernel,
        grid,
        block,
        smem,
        args,
    };
    let tc_grid = || -> Result<[u32; 3]> {
        if b * h > 65_535 {
            return Err(Error::backend("kernels", format!("attention: B*H = {} > 65535", b * h)));
        }
        Ok([tq.div_ceil(BR).max(1) as u32, (b * h) as u32, 1])
    };
    let l = match ctx.node.op {
        Op::Attention { .. } | Op::AttentionStats { .. } => {
            let stats = matches!(ctx.node.op, Op::AttentionStats { .. });
            let name = if stats { "attention_stats_fwd" } else { "attention_fwd" };
            // The tensor-core path reads q, k (and v) with 16-byte chunks / 4-byte pairs and stores o in pairs.
            let mut locs = vec![ctx.ins[0], ctx.ins[1]];
            if !stats {
                locs.extend([ctx.ins[2], ctx.out]);
            }
            match tc_dim(dt, d, &locs) {
                Some(dp) => vec![launch(format!("{name}_d{dp}_{sfx}"), tc_grid()?, 0, args)],
                None => {
                    let (grid, smem) = simt_geometry(ctx, b * tq * h, d, 1)?;
                    vec![launch(format!("{name}_simt_{sfx}"), grid, smem, args)]
                }
            }
        }
        _ => {
            let (g1, s1) = simt_geometry(ctx, b * tq * h, d, 2)?;
            let (g2, s2) = simt_geometry(ctx, b * tk * h, d, 2)?;
            vec![
                launch(format!("attention_bwd_dq_simt_{sfx}"), g1, s1, args.clone()),
                launch(format!("attention_bwd_dkv_simt_{sfx}"), g2, s2, args),
            ]
        }
    };
    Ok(Some(l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Space;

    #[test]
    fn tensor_core_dims() {
        let al = [Loc { space: Space::Arena, offset: 256, bytes: 0 }];
        let un = [Loc { space: Space::Arena, offset: 8, bytes: 0 }];
        assert_eq!(tc_dim(DType::F16, 40, &al), Some(48));
        assert_eq!(tc_dim(DType::BF16, 64, &al), Some(64));
        assert_eq!(tc_dim(DType::F16, 80, &al), Some(80));
        assert_eq!(tc_dim(DType::F16, 160, &al), Some(160));
        assert_eq!(tc_dim(DType::F16, 128, &al), Some(160));
        assert_eq!(tc_dim(DType::F16, 168, &al), None);
        assert_eq!(tc_dim(DType::F16, 36, &al), None);
        assert_eq!(tc_dim(DType::F32, 64, &al), None);
        assert_eq!(tc_dim(DType::F16, 64, &un), None);
    }
}
