//! Launcher for `kernels/dropout.cu`: `Op::Dropout` (a grid-stride elementwise kernel; the key is read from
//! its tensor, the threshold and scale come from the host as in the CPU reference).

use super::{keep_scale, threshold};
use crate::backend::launch::{grid_for, suffix, Arg, Launch, NodeCtx, BLOCK};
use crate::error::Result;
use crate::ops::Op;
use crate::tensor::DType;

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let Op::Dropout { p } = &ctx.node.op else { return Ok(None) };
    let ([x, key], [xin, kin]) = (ctx.inputs.as_slice(), ctx.ins) else { return Ok(None) };
    if !x.dtype.is_float() || x.dtype != ctx.node.dtype || key.dtype != DType::I64 {
        return Ok(None);
    }
    let n = ctx.node.numel();
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    Ok(Some(vec![Launch {
        file: "dropout",
        kernel: format!("dropout_fwd_{}", suffix(x.dtype)),
        grid: grid_for(n),
        block: [BLOCK, 1, 1],
        smem: 0,
        args: vec![
            Arg::Ptr(*xin),
            Arg::Ptr(*kin),
            Arg::Ptr(ctx.out),
            Arg::I64(n as i64),
            Arg::I32(threshold(*p) as i32),
            Arg::F32(keep_scale(*p)),
        ],
    }]))
}
