//! Launchers for `kernels/reduce.cu`: `Op::Reduce` (sum, mean, max over any set of axes).
//!
//! The input is not moved: the kernel gets a [`ReduceDesc`] (kept axes, then reduced axes, each as
//! dimension/stride lists after dropping size-1 axes and merging neighbours that are contiguous). When the
//! innermost kept axis is contiguous the column kernel (`reduce_<op>_col_<dt>`: 32 neighbouring outputs per
//! block, coalesced) runs, else the row kernel (`reduce_<op>_<dt>`: a warp or a block per output). Few
//! outputs over long rows take two passes through a workspace ([`split`]): `reduce_<sum|max>_part_<dt>`
//! (a block per chunk of a row) and `reduce_<op>_fin_<dt>` (a warp per output combines its chunks).

use crate::backend::launch::{suffix, Arg, Launch, NodeCtx};
use crate::error::{Error, Result};
use crate::graph::Node;
use crate::ops::{Op, ReduceOp};
use crate::tensor;

/// Kept and reduced axes the kernel describes at most (each, after merging).
const DIMS: usize = 8;
/// Largest grid; kernels loop (grid stride) over the rest.
const MAX_GRID: usize = 1 << 20;
/// The two-pass path: at most this many outputs (fewer blocks than a GPU has SMs, give or take) ...
const SPLIT_MAX_OUT: usize = 64;
/// ... each reducing at least this many elements, in chunks of about `SPLIT_CHUNK` (at most `SPLIT_MAX` chunks).
const SPLIT_MIN_COUNT: usize = 1 << 15;
const SPLIT_CHUNK: usize = 1 << 13;
const SPLIT_MAX: usize = 128;

/// Kept and reduced axes of `x` as (dim, stride) lists (merged), with the number of outputs and of reduced
/// elements per output.
fn layout(axes: &[usize], x: &Node) -> (Vec<(usize, usize)>, Vec<(usize, usize)>, usize, usize) {
    let strides = tensor::strides(&x.shape);
    let (mut kept, mut red) = (Vec::new(), Vec::new());
    for (i, (&d, &s)) in x.shape.iter().zip(&strides).enumerate() {
        if axes.contains(&i) { red.push((d, s)) } else { kept.push((d, s)) }
    }
    let n_out: usize = kept.iter().map(|a| a.0).product();
    let count: usize = red.iter().map(|a| a.0).product();
    let (kept, mut red) = (coalesce(&kept), coalesce(&red));
    if count == 0 {
        red.clear(); // nothing is read; the kernel writes the empty-reduction value
    }
    (kept, red, n_out, count)
}

/// The number of chunks per output when the two-pass path runs: few outputs (row layout) over long rows.
fn split(kept: &[(usize, usize)], n_out: usize, count: usize) -> Option<usize> {
    let columns = kept.last().is_some_and(|&(_, s)| s == 1);
    (!columns && n_out >= 1 && n_out <= SPLIT_MAX_OUT && count >= SPLIT_MIN_COUNT)
        .then(|| count.div_ceil(SPLIT_CHUNK).clamp(2, SPLIT_MAX))
}

/// Bytes of one partial result: a compensated sum (two f32) or a max (one f32).
fn partial_bytes(op: &ReduceOp) -> usize {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => 8,
        ReduceOp::Max => 4,
    }
}

/// Workspace of a reduction node: the partials of the two-pass path, else none.
pub fn workspace(node: &Node, inputs: &[&Node]) -> usize {
    let (Op::Reduce { op, axes, .. }, Some(x)) = (&node.op, inputs.first()) else { return 0 };
    if !x.dtype.is_float() || x.dtype != node.dtype {
        return 0; // no kernel: the launcher refuses the node
    }
    let (kept, _, n_out, count) = layout(axes, x);
    split(&kept, n_out, count).map_or(0, |s| n_out * s * partial_bytes(op))
}

/// Mirror of `struct ReduceDesc` in `kernels/reduce.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceDesc {
    n_out: i64,
    count: i64,
    nk: i64,
    nr: i64,
    kdim: [i64; DIMS],
    kstr: [i64; DIMS],
    rdim: [i64; DIMS],
    rstr: [i64; DIMS],
    vec: i64,
}

/// `(dim, stride)` pairs in axis order with size-1 axes dropped and contiguous neighbours merged.
fn coalesce(axes: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &(d, s) in axes {
        if d == 1 {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == s * d => *last = (last.0 * d, s),
            _ => out.push((d, s)),
        }
    }
    out
}

/// Copies `axes` into the descriptor arrays; no axes become one axis of size 1 and stride 0.
fn fill(axes: &[(usize, usize)], dims: &mut [i64; DIMS], strides: &mut [i64; DIMS]) -> i64 {
    if axes.is_empty() {
        dims[0] = 1;
        return 1;
    }
    for (i, &(d, s)) in axes.iter().enumerate() {
        dims[i] = d as i64;
        strides[i] = s as i64;
    }
    axes.len() as i64
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let Op::Reduce { op, axes, .. } = &ctx.node.op else { return Ok(None) };
    let (Some(x), Some(&xin)) = (ctx.inputs.first(), ctx.ins.first()) else { return Ok(None) };
    if !x.dtype.is_float() || x.dtype != ctx.node.dtype {
        return Ok(None);
    }
    let (kept, red, n_out, count) = layout(axes, x);
    if n_out == 0 {
        return Ok(Some(Vec::new()));
    }
    if kept.len() > DIMS || red.len() > DIMS {
        return Err(Error::backend(
            "kernels",
            format!(
                "reduce over axes {axes:?} of {:?}: more than {DIMS} kept or reduced axes after merging",
                x.shape
            ),
        ));
    }
    let mut d = ReduceDesc {
        n_out: n_out as i64,
        count: count as i64,
        nk: 0,
        nr: 0,
        kdim: [0; DIMS],
        kstr: [0; DIMS],
        rdim: [0; DIMS],
        rstr: [0; DIMS],
        vec: 0,
    };
    d.nk = fill(&kept, &mut d.kdim, &mut d.kstr);
    d.nr = fill(&red, &mut d.rdim, &mut d.rstr);
    let op_name = match op {
        ReduceOp::Sum => "sum",
        ReduceOp::Mean => "mean",
        ReduceOp::Max => "max",
    };
    // 16-byte packs: one contiguous reduced axis, every row (and the tensor) 16-byte aligned.
    let (esize, pack) = (x.dtype.size(), 16 / x.dtype.size());
    d.vec = (red.len() == 1
        && red[0].1 == 1
        && count.is_multiple_of(pack)
        && xin.offset.is_multiple_of(16)
        && kept.iter().all(|&(_, s)| (s * esize).is_multiple_of(16))) as i64;
    let dt = suffix(x.dtype);
    let desc = Arg::Bytes(bytemuck::bytes_of(&d).to_vec());
    if let Some(splits) = split(&kept, n_out, count) {
        let ws = ctx.workspace(n_out * splits * partial_bytes(op))?;
        let part = if matches!(op, ReduceOp::Max) { "max" } else { "sum" };
        let blocks = n_out * splits;
        return Ok(Some(vec![
            Launch {
                file: "reduce",
                kernel: format!("reduce_{part}_part_{dt}"),
                grid: [blocks.clamp(1, MAX_GRID) as u32, 1, 1],
                block: [256, 1, 1],
                smem: 0,
                args: vec![Arg::Ptr(xin), Arg::Ptr(ws), desc.clone(), Arg::I64(splits as i64)],
            },
            Launch {
                file: "reduce",
                kernel: format!("reduce_{op_name}_fin_{dt}"),
                grid: [n_out.div_ceil(4).clamp(1, MAX_GRID) as u32, 1, 1],
                block: [32, 4, 1],
                smem: 0,
                args: vec![Arg::Ptr(ws), Arg::Ptr(ctx.out), desc, Arg::I64(splits as i64)],
            },
        ]));
    }
    let columns = kept.last().is_some_and(|&(_, s)| s == 1);
    let (variant, grid, block) = if columns {
        // 32 outputs per block; ny threads split the reduced elements (about 4 or more each).
        let ny = count.div_ceil(4).next_power_of_two().clamp(1, 32);
        ("_col", n_out.div_ceil(32), [32, ny as u32, 1])
    } else if count <= 64 {
        // One warp per output, 4 outputs per block.
        ("", n_out.div_ceil(4), [32, 4, 1])
    } else {
        // One block per output, about 8 or more elements (4 or more packs) per thread.
        let per_thread = if d.vec == 1 { 4 * pack } else { 8 };
        let tx = count.div_ceil(per_thread).next_multiple_of(32).clamp(64, 1024);
        ("", n_out, [tx as u32, 1, 1])
    };
    Ok(Some(vec![Launch {
        file: "reduce",
        kernel: format!("reduce_{op_name}{variant}_{dt}"),
        grid: [grid.clamp(1, MAX_GRID) as u32, 1, 1],
        block,
        smem: 0,
        args: vec![Arg::Ptr(xin), Arg::Ptr(ctx.out), desc],
    }]))
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn coalesce_merges_contiguous_axes_and_drops_ones() {
        // [3, 5, 7, 11]: kept axes 0 and 2 are not contiguous; reduced axes 1 and 3 are not either.
        assert_eq!(coalesce(&[(3, 385), (7, 11)]), vec![(3, 385), (7, 11)]);
        assert_eq!(coalesce(&[(3, 385), (5, 77), (7, 11), (11, 1)]), vec![(1155, 1)]);
        assert_eq!(coalesce(&[(1, 5), (4, 5), (5, 1)]), vec![(20, 1)]);
        assert_eq!(coalesce(&[(1, 1)]), vec![]);
    }
}
