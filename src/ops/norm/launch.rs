//! Launchers for `kernels/softmax.cu` (`Op::Softmax`, `Op::SoftmaxBwd`) and `kernels/layernorm.cu`
//! (`Op::LayerNorm`, `Op::LayerNormBwd`).
//!
//! Row kernels (softmax along the last axis, layer norm) take one warp per row when a row fits in 32 threads'
//! register cache and one block of up to 512 threads per row otherwise; `vec` selects 16-byte loads when the
//! row length is a multiple of the pack and every tensor starts 16-byte aligned. Softmax along another axis
//! runs the column kernels (blocks of 32 neighbouring columns by `ny` threads along the axis).

use crate::backend::launch::{suffix, Arg, Launch, NodeCtx};
use crate::backend::Loc;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::DType;

/// Largest grid; kernels loop (grid stride) over the rest.
const MAX_GRID: usize = 1 << 20;
/// Threads per row at most (`ROW_MAX_THREADS` in `kernels/reduce_util.cuh`, the kernels' launch bound).
const ROW_MAX_THREADS: usize = 512;
/// Elements each thread caches per tensor (`ROW_CACHE` in `kernels/reduce_util.cuh`).
const ROW_CACHE: usize = 16;

/// Which row kernel: its packs cached per thread follow the `K` of each kernel in the `.cu` files.
#[derive(Clone, Copy)]
enum RowKernel {
    Softmax,
    LayerNormFwd,
    LayerNormBwd,
}

impl RowKernel {
    /// Packs of `pack` elements a thread caches (`constexpr int K` in the kernel).
    fn cached_packs(self, pack: usize) -> usize {
        match self {
            RowKernel::Softmax | RowKernel::LayerNormFwd => {
                if pack == 1 { ROW_CACHE / 2 } else { ROW_CACHE / pack }
            }
            RowKernel::LayerNormBwd => (if pack == 1 { ROW_CACHE / 4 } else { ROW_CACHE / 2 }) / pack,
        }
    }
}

/// Elements per 16-byte pack when rows of `dim` elements of every tensor in `locs` can be loaded in packs.
fn pack_for(dtype: DType, dim: usize, locs: &[Loc]) -> usize {
    let p = 16 / dtype.size();
    if dim.is_multiple_of(p) && locs.iter().all(|l| l.offset.is_multiple_of(16)) { p } else { 1 }
}

/// Grid and block of a row kernel over `rows` rows of `np` packs.
fn row_geometry(kind: RowKernel, rows: usize, np: usize, pack: usize) -> ([u32; 3], [u32; 3]) {
    let k = kind.cached_packs(pack);
    if np <= 32 * k {
        // One warp per row, four rows per block.
        return ([rows.div_ceil(4).clamp(1, MAX_GRID) as u32, 1, 1], [32, 4, 1]);
    }
    // One block per row with about half its cache used (more threads in flight); rows longer than the cache
    // of ROW_MAX_THREADS threads are streamed by the kernel instead.
    let target = (k / 2).max(1);
    let tx = np.div_ceil(target).next_multiple_of(32).clamp(64, ROW_MAX_THREADS);
    ([rows.clamp(1, MAX_GRID) as u32, 1, 1], [tx as u32, 1, 1])
}

/// Grid and block of a column kernel over `cols` columns of `dim` elements.
fn col_geometry(cols: usize, dim: usize) -> ([u32; 3], [u32; 3]) {
    let ny = dim.div_ceil(4).next_power_of_two().clamp(1, 32);
    ([cols.div_ceil(32).clamp(1, MAX_GRID) as u32, 1, 1], [32, ny as u32, 1])
}

fn too_long(what: &str, shape: &[usize]) -> Error {
    Error::backend("kernels", format!("{what} on {shape:?}: rows of 2^31 or more elements are not supported"))
}

fn softmax(ctx: &NodeCtx, axis: usize, bwd: bool) -> Result<Option<Vec<Launch>>> {
    let n_in = if bwd { 2 } else { 1 };
    if ctx.inputs.len() != n_in || ctx.ins.len() != n_in {
        return Ok(None);
    }
    let (shape, dtype) = (&ctx.node.shape, ctx.node.dtype);
    if !dtype.is_float() || ctx.inputs.iter().any(|n| n.dtype != dtype || &n.shape != shape) || axis >= shape.len() {
        return Ok(None);
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let dim = shape[axis];
    if outer * inner * dim == 0 {
        return Ok(Some(Vec::new()));
    }
    let name = if bwd { "softmax_bwd" } else { "softmax_fwd" };
    let mut args: Vec<Arg> = ctx.ins.iter().map(|l| Arg::Ptr(*l)).collect();
    args.push(Arg::Ptr(ctx.out));
    let (kernel, grid, block) = if inner == 1 {
        if dim > i32::MAX as usize {
            return Err(too_long(name, shape));
        }
        let mut locs = ctx.ins.to_vec();
        locs.push(ctx.out);
        let pack = pack_for(dtype, dim, &locs);
        let (grid, block) = row_geometry(RowKernel::Softmax, outer, dim / pack, pack);
        args.extend([Arg::I64(outer as i64), Arg::I64(dim as i64), Arg::I32((pack > 1) as i32)]);
        (format!("{name}_{}", suffix(dtype)), grid, block)
    } else {
        let (grid, block) = col_geometry(outer * inner, dim);
        args.extend([Arg::I64(outer as i64), Arg::I64(dim as i64), Arg::I64(inner as i64)]);
        (format!("{name}_col_{}", suffix(dtype)), grid, block)
    };
    Ok(Some(vec![Launch { file: "softmax", kernel, grid, block, smem: 0, args }]))
}

fn layer_norm(ctx: &NodeCtx, eps: f32, affine: bool, bwd: bool) -> Result<Option<Vec<Launch>>> {
    // Forward: (x, [w, b]); backward: (x, [w], dy).
    let n_in = match (affine, bwd) {
        (false, false) => 1,
        (false, true) | (true, true) => 2 + affine as usize,
        (true, false) => 3,
    };
    if ctx.inputs.len() != n_in || ctx.ins.len() != n_in {
        return Ok(None);
    }
    let (shape, dtype) = (&ctx.node.shape, ctx.node.dtype);
    if !dtype.is_float() || ctx.inputs.iter().any(|n| n.dtype != dtype) {
        return Ok(None);
    }
    let dim = shape.last().copied().unwrap_or(1);
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Ok(Some(Vec::new()));
    }
    let name = if bwd { "layer_norm_bwd" } else { "layer_norm_fwd" };
    if dim > i32::MAX as usize {
        return Err(too_long(name, shape));
    }
    let rows = numel / dim;
    let ins = ctx.ins;
    let ptr_or_null = |i: usize| if affine { Arg::Ptr(ins[i]) } else { Arg::I64(0) };
    // Forward: (x, w, b, y); backward: (x, w, dy, dx); no affine transform: null w (and b).
    let third = if bwd { Arg::Ptr(ins[n_in - 1]) } else { ptr_or_null(2) };
    let mut args = vec![Arg::Ptr(ins[0]), ptr_or_null(1), third, Arg::Ptr(ctx.out)];
    let mut locs = ins.to_vec();
    locs.push(ctx.out);
    let pack = pack_for(dtype, dim, &locs);
    let kind = if bwd { RowKernel::LayerNormBwd } else { RowKernel::LayerNormFwd };
    let (grid, block) = row_geometry(kind, rows, dim / pack, pack);
    args.extend([Arg::I64(rows as i64), Arg::I64(dim as i64), Arg::F32(eps), Arg::I32((pack > 1) as i32)]);
    let kernel = format!("{name}_{}", suffix(dtype));
    Ok(Some(vec![Launch { file: "layernorm", kernel, grid, block, smem: 0, args }]))
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    match &ctx.node.op {
        Op::Softmax { axis } => softmax(ctx, *axis, false),
        Op::SoftmaxBwd { axis } => softmax(ctx, *axis, true),
        Op::LayerNorm { eps, affine } => layer_norm(ctx, *eps, *affine, false),
        Op::LayerNormBwd { eps, affine } => layer_norm(ctx, *eps, *affine, true),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_geometry_caches_rows_up_to_the_thread_limit() {
        // SD attention scores: 4096 f16 per row in 16-byte packs: 512 threads, one pack each.
        assert_eq!(row_geometry(RowKernel::Softmax, 100, 512, 8), ([100, 1, 1], [512, 1, 1]));
        // Short rows: a warp per row.
        assert_eq!(row_geometry(RowKernel::LayerNormFwd, 10, 40, 8).1, [32, 4, 1]);
        for (kind, pack) in [(RowKernel::Softmax, 1), (RowKernel::LayerNormBwd, 4), (RowKernel::LayerNormBwd, 1)] {
            let k = kind.cached_packs(pack);
            for np in [33, 100, 1000, 4096, 20000] {
                let (_, [tx, ty, _]) = row_geometry(kind, 3, np, pack);
                assert!(tx % 32 == 0 && tx as usize <= ROW_MAX_THREADS && (ty == 1 || tx == 32));
                // Cached whenever the largest block can hold the row.
                if np <= ROW_MAX_THREADS * k {
                    assert!(np <= tx as usize * k, "np {np} pack {pack}: {tx} threads");
                }
            }
        }
    }
}
