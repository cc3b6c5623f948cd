//! Launchers for `kernels/movement.cu`: Reshape, Permute, BroadcastTo, Slice, Pad and Concat as strided
//! copies (`copy_strided_b1/b2/b4/b8`, by element size, bit for bit, so every dtype is served).
//!
//! Each op becomes a walk over an iteration shape with input and output element strides per axis
//! ([`Walk`]). Before launching, adjacent axes that are contiguous for both sides are merged, size-1 axes
//! dropped, and, where the innermost axis is a contiguous run on both sides, elements are widened to up to
//! 8 bytes (an f16 permute with 40 contiguous halves per run moves 8-byte units). The struct handed to the
//! kernel lists axes innermost first with the magic numbers of [`magic_div`] for 32-bit index division.
//! The shared pieces ([`merge_axes`], [`magic_div`]) also serve `elementwise.rs`.

use bytemuck::{Pod, Zeroable};

use crate::backend::launch::{Arg, BLOCK, Launch, NodeCtx, grid_for};
use crate::backend::Loc;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DType, strides};

/// Most axes a strided kernel takes after merging (`STRIDED_MAX_DIMS` in kernels/strided.cuh).
pub(crate) const MAX_DIMS: usize = 8;

/// Walks that reach this many elements divide indices in 64 bits on the device (`wide`); below it, the
/// 32-bit magic division applies (numerators < 2^31).
const WIDE_FROM: usize = 1 << 31;

/// `INSTAGEN_WIDE_INDEX=1` forces the 64-bit index path of the strided kernels (to test it at small sizes).
pub(crate) fn force_wide() -> bool {
    std::env::var("INSTAGEN_WIDE_INDEX").is_ok_and(|v| v == "1")
}

/// Whether a walk over `n` elements needs 64-bit index division.
pub(crate) fn wide_index(n: usize) -> bool {
    n >= WIDE_FROM || force_wide()
}

/// `(magic, shift)` such that `floor(n / d) == (((n * magic) >> 32) + n) >> shift` for every `n < 2^31`
/// (Granlund & Montgomery, "Division by invariant integers using multiplication", 1994, with the add done
/// in 64 bits on the device so it cannot overflow). `d` must be in `1..2^31`.
pub(crate) fn magic_div(d: u64) -> (u32, u32) {
    let d = d.clamp(1, 1 << 31);
    let shift = 64 - (d - 1).leading_zeros(); // ceil(log2 d); 0 for d = 1
    let magic = ((1u64 << 32) * ((1u64 << shift) - d)) / d + 1;
    (magic as u32, shift)
}

/// The division the device does with [`magic_div`]'s numbers (for tests).
#[cfg(test)]
pub(crate) fn div_with_magic(n: u32, (magic, shift): (u32, u32)) -> u32 {
    let hi = (n as u64 * magic as u64) >> 32;
    ((hi + n as u64) >> shift) as u32
}

/// Merged axes: dims and per-operand strides (outermost first), and where the kept axis went with its scale.
pub(crate) type Merged<const K: usize> = (Vec<usize>, [Vec<i64>; K], Option<(usize, i64)>);

/// Merges row-major `shape` walked with `K` operands' element strides: drops size-1 axes and merges each axis
/// into the one before it when every operand is contiguous across the pair. `keep` is an axis that must not
/// be merged into its outer neighbour (the pad bound); merging inner axes into it multiplies `scale[keep]`.
/// Returns (dims, per-operand strides, the index of `keep` in dims, the factor `keep`'s coordinate was scaled
/// by), outermost first, at least one axis.
pub(crate) fn merge_axes<const K: usize>(shape: &[usize], st: [&[i64]; K], keep: Option<usize>) -> Merged<K> {
    let mut dims: Vec<usize> = Vec::new();
    let mut out: [Vec<i64>; K] = std::array::from_fn(|_| Vec::new());
    let mut kept: Option<(usize, i64)> = None;
    for (i, &d) in shape.iter().enumerate() {
        let is_keep = keep == Some(i);
        if d == 1 && !is_keep {
            continue;
        }
        let contiguous = !dims.is_empty() && (0..K).all(|k| out[k].last() == Some(&(st[k][i] * d as i64)));
        if contiguous && !is_keep {
            if let Some(last) = dims.last_mut() {
                *last *= d;
            }
            for k in 0..K {
                if let Some(s) = out[k].last_mut() {
                    *s = st[k][i];
                }
            }
            if let Some((at, scale)) = kept.as_mut()
                && *at == dims.len() - 1
            {
                *scale *= d as i64;
            }
        } else {
            dims.push(d);
            for k in 0..K {
                out[k].push(st[k][i]);
            }
            if is_keep {
                kept = Some((dims.len() - 1, 1));
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        for s in out.iter_mut() {
            s.push(0);
        }
    }
    (dims, out, kept)
}

/// Mirror of `CopyShape` in kernels/movement.cu (axes innermost first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct CopyShape {
    ndim: i64,
    wide: i64,
    in_off: i64,
    out_off: i64,
    bound_dim: i64,
    bound_lo: i64,
    bound_hi: i64,
    pad_: i64,
    shape: [i64; MAX_DIMS],
    in_stride: [i64; MAX_DIMS],
    out_stride: [i64; MAX_DIMS],
    magic: [u32; MAX_DIMS],
    shift: [u32; MAX_DIMS],
}

/// A copy described on the unmerged axes (outermost first), in elements of `es` bytes: element `c` of
/// `shape` reads `x[in_off + c . in_st]` into `y[out_off + c . out_st]`; with `bound = (axis, lo, hi)`, output
/// elements whose coordinate along `axis` is outside `lo..hi` are zero instead.
struct Walk {
    shape: Vec<usize>,
    in_st: Vec<i64>,
    out_st: Vec<i64>,
    in_off: i64,
    out_off: i64,
    bound: Option<(usize, i64, i64)>,
}

fn err(ctx: &NodeCtx, msg: String) -> Error {
    Error::backend("kernels", format!("node {} ({}): {msg}", ctx.id.0, ctx.node.op.describe()))
}

fn row_major(shape: &[usize]) -> Vec<i64> {
    strides(shape).iter().map(|&s| s as i64).collect()
}

impl Walk {
    /// A walk over `shape` with a contiguous output.
    fn contiguous_out(shape: &[usize], in_st: Vec<i64>, in_off: i64) -> Walk {
        Walk { shape: shape.to_vec(), in_st, out_st: row_major(shape), in_off, out_off: 0, bound: None }
    }

    /// The launch of this walk from `x` to `y` for `es`-byte elements (none for an empty walk).
    fn launch(self, ctx: &NodeCtx, es: usize, x: Loc, y: Loc) -> Result<Option<Launch>> {
        let n: usize = self.shape.iter().product();
        if n == 0 {
            return Ok(None);
        }
        let keep = self.bound.map(|(a, _, _)| a);
        let (mut dims, [mut ins, mut outs], kept) = merge_axes(&self.shape, [&self.in_st, &self.out_st], keep);
        let (mut in_off, mut out_off) = (self.in_off, self.out_off);
        let mut bound = match (self.bound, kept) {
            (Some((_, lo, hi)), Some((at, scale))) => Some((at, lo * scale, hi * scale)),
            _ => None,
        };
        if dims.len() > MAX_DIMS {
            return Err(err(ctx, format!("{} axes after merging (the kernel takes {MAX_DIMS})", dims.len())));
        }
        // Wider elements: the inner axis must be a contiguous run on both sides, and every other stride, both
        // offsets, both byte offsets and the inner bound divisible by the widening factor.
        let last = dims.len() - 1;
        let mut es = es;
        if ins[last] == 1 && outs[last] == 1 {
            for w in [8usize, 4, 2] {
                if w <= es || !w.is_multiple_of(es) {
                    continue;
                }
                let f = (w / es) as i64;
                let inner_bound_ok = bound.is_none_or(|(at, lo, hi)| at != last || (lo % f == 0 && hi % f == 0));
                let ok = dims[last] as i64 % f == 0
                    && ins[..last].iter().chain(&outs[..last]).all(|s| s % f == 0)
                    && in_off % f == 0
                    && out_off % f == 0
                    && x.offset.is_multiple_of(w)
                    && y.offset.is_multiple_of(w)
                    && inner_bound_ok;
                if ok {
                    dims[last] /= f as usize;
                    for s in ins[..last].iter_mut().chain(outs[..last].iter_mut()) {
                        *s /= f;
                    }
                    in_off /= f;
                    out_off /= f;
                    if let Some((at, lo, hi)) = bound.as_mut()
                        && *at == last
                    {
                        *lo /= f;
                        *hi /= f;
                    }
                    es = w;
                    break;
                }
            }
        }
        let n: usize = dims.iter().product();
        let nd = dims.len();
        let mut s = CopyShape {
            ndim: nd as i64,
            wide: wide_index(n) as i64,
            in_off,
            out_off,
            bound_dim: -1,
            bound_lo: 0,
            bound_hi: 0,
            pad_: 0,
            shape: [1; MAX_DIMS],
            in_stride: [0; MAX_DIMS],
            out_stride: [0; MAX_DIMS],
            magic: [0; MAX_DIMS],
            shift: [0; MAX_DIMS],
        };
        for j in 0..nd {
            let i = nd - 1 - j; // innermost first
            s.shape[j] = dims[i] as i64;
            s.in_stride[j] = ins[i];
            s.out_stride[j] = outs[i];
            (s.magic[j], s.shift[j]) = magic_div(dims[i] as u64);
        }
        if let Some((at, lo, hi)) = bound {
            (s.bound_dim, s.bound_lo, s.bound_hi) = ((nd - 1 - at) as i64, lo, hi);
        }
        Ok(Some(Launch {
            file: "movement",
            kernel: format!("copy_strided_b{es}"),
            grid: grid_for(n),
            block: [BLOCK, 1, 1],
            smem: 0,
            args: vec![Arg::Ptr(x), Arg::Ptr(y), Arg::Bytes(bytemuck::bytes_of(&s).to_vec()), Arg::I64(n as i64)],
        }))
    }
}

/// A plain contiguous copy of `numel` elements of `dtype` (also used by other launchers).
pub(crate) fn contiguous_copy(ctx: &NodeCtx, numel: usize, dtype: DType, x: Loc, y: Loc) -> Result<Vec<Launch>> {
    let w = Walk::contiguous_out(&[numel], vec![1], 0);
    Ok(w.launch(ctx, dtype.size(), x, y)?.into_iter().collect())
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let movement = matches!(
        ctx.node.op,
        Op::Reshape { .. }
            | Op::StopGradient
            | Op::Permute { .. }
            | Op::BroadcastTo { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Concat { .. }
    );
    if !movement {
        return Ok(None);
    }
    if ctx.inputs.is_empty() || ctx.ins.len() != ctx.inputs.len() {
        return Err(err(ctx, format!("{} inputs with {} locations", ctx.inputs.len(), ctx.ins.len())));
    }
    let (x, xn, out) = (ctx.ins[0], ctx.inputs[0], &ctx.node.shape);
    let es = ctx.node.dtype.size();
    if ctx.inputs.iter().any(|n| n.dtype != ctx.node.dtype) {
        return Err(err(ctx, "inputs and output differ in dtype".into()));
    }
    let single =
        |w: Walk| -> Result<Option<Vec<Launch>>> { Ok(Some(w.launch(ctx, es, x, ctx.out)?.into_iter().collect())) };
    match &ctx.node.op {
        Op::Reshape { .. } => {
            // The planner may hand the input's bytes to the output: then there is nothing to move.
            if x.space == ctx.out.space && x.offset == ctx.out.offset {
                return Ok(Some(vec![]));
            }
            Ok(Some(contiguous_copy(ctx, ctx.node.numel(), ctx.node.dtype, x, ctx.out)?))
        }
        Op::StopGradient => Ok(Some(contiguous_copy(ctx, ctx.node.numel(), ctx.node.dtype, x, ctx.out)?)),
        Op::Permute { perm } => {
            let st = row_major(&xn.shape);
            let in_st = perm
                .iter()
                .map(|&p| st.get(p).copied().ok_or_else(|| err(ctx, format!("bad perm {perm:?}"))))
                .collect::<Result<Vec<_>>>()?;
            single(Walk::contiguous_out(out, in_st, 0))
        }
        Op::BroadcastTo { .. } => {
            let st = row_major(&xn.shape);
            let pad = out
                .len()
                .checked_sub(xn.shape.len())
                .ok_or_else(|| err(ctx, "input rank exceeds the output's".into()))?;
            let in_st =
                (0..out.len()).map(|i| if i < pad || xn.shape[i - pad] == 1 { 0 } else { st[i - pad] }).collect();
            single(Walk::contiguous_out(out, in_st, 0))
        }
        Op::Slice { axis, start, .. } => {
            let st = row_major(&xn.shape);
            let off = st.get(*axis).ok_or_else(|| err(ctx, format!("axis {axis} out of range")))? * *start as i64;
            single(Walk::contiguous_out(out, st, off))
        }
        Op::Pad { axis, before, .. } => {
            let st = row_major(&xn.shape);
            let (a, b) = (*axis, *before as i64);
            let len = *xn.shape.get(a).ok_or_else(|| err(ctx, format!("axis {a} out of range")))? as i64;
            let mut w = Walk::contiguous_out(out, st.clone(), -b * st[a]);
            w.bound = Some((a, b, b + len));
            single(w)
        }
        Op::Concat { axis } => {
            let ost = row_major(out);
            let a = *axis;
            let mut at = 0i64;
            let mut v = Vec::new();
            for (inp, loc) in ctx.inputs.iter().zip(ctx.ins) {
                let w = Walk {
                    shape: inp.shape.clone(),
                    in_st: row_major(&inp.shape),
                    out_st: ost.clone(),
                    in_off: 0,
                    out_off: at * ost.get(a).copied().ok_or_else(|| err(ctx, format!("axis {a} out of range")))?,
                    bound: None,
                };
                at += inp.shape[a] as i64;
                v.extend(w.launch(ctx, es, *loc, ctx.out)?);
            }
            Ok(Some(v))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_division_is_exact() {
        let mut divisors: Vec<u64> = (1..=300).collect();
        divisors.extend([7 * 7 * 7, 4096, 4095, 4097, 40, 320, 1 << 20, (1 << 20) + 1, 65_537, 1_000_003]);
        divisors.extend([(1 << 30) - 1, 1 << 30, (1 << 30) + 1, (1 << 31) - 1, 1 << 31]);
        let mut nums: Vec<u32> = (0..2000).collect();
        let mut x = 0x1234_5678_u64;
        for _ in 0..2000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            nums.push(((x >> 33) as u32) & 0x7fff_ffff);
        }
        nums.extend([(1 << 31) - 1, (1 << 31) - 2, 1 << 30, (1 << 30) - 1]);
        for &d in &divisors {
            let m = magic_div(d);
            let mut check = nums.clone();
            // Numerators next to multiples of d, where an off-by-one would show.
            for k in [1u64, 2, 3, 1000, (1u64 << 31) / d] {
                for delta in [-1i64, 0, 1] {
                    let v = (k * d) as i64 + delta;
                    if (0..1i64 << 31).contains(&v) {
                        check.push(v as u32);
                    }
                }
            }
            for &n in &check {
                assert_eq!(div_with_magic(n, m), (n as u64 / d) as u32, "{n} / {d} with {m:?}");
            }
        }
    }

    use crate::backend::Space;
    use crate::graph::{Graph, NodeId, Plan};

    /// The launches of the last node of `g`, with every tensor at its planned arena location.
    fn planned_launches(g: &mut Graph) -> Vec<Launch> {
        let id = NodeId(g.len() - 1);
        g.mark_output(id);
        let plan = Plan::new(g);
        let loc = |n: NodeId| {
            let b = plan.buffers[n.0].expect("planned");
            Loc { space: Space::Arena, offset: b.offset, bytes: b.bytes }
        };
        let ins: Vec<Loc> = g.node(id).inputs.iter().map(|&i| loc(i)).collect();
        let ws = Loc { space: Space::Arena, offset: 0, bytes: 0 };
        crate::backend::launch::node_launches(g, id, &ins, loc(id), ws).unwrap()
    }

    fn shape_of(l: &Launch) -> CopyShape {
        match &l.args[2] {
            Arg::Bytes(b) => bytemuck::pod_read_unaligned(b),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reshape_in_place_launches_nothing_and_a_copy_widens() {
        let mut g = Graph::new();
        let x = g.input("x", &[3, 5, 7], DType::F16).unwrap();
        let y = g.unary(crate::graph::UnaryOp::Exp, x).unwrap();
        g.reshape(y, &[105]).unwrap();
        assert_eq!(planned_launches(&mut g), vec![]);
        let mut g = Graph::new();
        let x = g.input("x", &[6, 35], DType::F32).unwrap();
        g.mark_output(x);
        g.reshape(x, &[210]).unwrap();
        let l = planned_launches(&mut g);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel, "copy_strided_b8");
        assert_eq!((shape_of(&l[0]).ndim, shape_of(&l[0]).shape[0]), (1, 105));
    }

    #[test]
    fn permute_pad_and_concat_describe_their_walks() {
        // The attention head split of the bench: 40 contiguous halves per run move as ten 8-byte units.
        let mut g = Graph::new();
        let x = g.input("x", &[2, 4096, 8, 40], DType::F16).unwrap();
        g.permute(x, &[0, 2, 1, 3]).unwrap();
        let l = planned_launches(&mut g);
        let s = shape_of(&l[0]);
        assert_eq!(l[0].kernel, "copy_strided_b8");
        assert_eq!((s.ndim, &s.shape[..4], &s.in_stride[..4]), (4, &[10, 4096, 8, 2][..], &[1, 80, 10, 327_680][..]));
        // Pad: one launch over the output, zeros outside the bound on the merged axis.
        let mut g = Graph::new();
        let x = g.input("x", &[5, 37, 29], DType::U8).unwrap();
        g.pad(x, 1, 2, 3).unwrap();
        let l = planned_launches(&mut g);
        let s = shape_of(&l[0]);
        assert_eq!((l.len(), l[0].kernel.as_str()), (1, "copy_strided_b1"));
        assert_eq!((s.ndim, s.bound_dim, s.bound_lo, s.bound_hi, s.in_off), (2, 0, 58, 58 + 37 * 29, -58));
        // Concat: one launch per non-empty input, each at its offset along the axis.
        let mut g = Graph::new();
        let a = g.input("a", &[4, 2, 7], DType::I64).unwrap();
        let b = g.input("b", &[4, 0, 7], DType::I64).unwrap();
        let c = g.input("c", &[4, 5, 7], DType::I64).unwrap();
        g.concat(&[a, b, c], 1).unwrap();
        let l = planned_launches(&mut g);
        assert_eq!(l.len(), 2);
        assert_eq!((shape_of(&l[0]).out_off, shape_of(&l[1]).out_off), (0, 14));
    }

    #[test]
    fn merge_axes_merges_and_keeps_the_bound() {
        let (d, [a, b], _) = merge_axes(&[2, 3, 4], [&[12, 4, 1], &[12, 4, 1]], None);
        assert_eq!((d, a, b), (vec![24], vec![1], vec![1]));
        let (d, [a, b], _) = merge_axes(&[2, 1, 3, 4], [&[12, 12, 4, 1], &[0, 0, 4, 1]], None);
        assert_eq!((d, a, b), (vec![2, 12], vec![12, 1], vec![0, 1]));
        // Pad of axis 1 of [2, 3, 4] by (1, 2): the output walk [2, 6, 4]; inner axis merges into the bound axis.
        let (d, [a, b], kept) = merge_axes(&[2, 6, 4], [&[12, 4, 1], &[24, 4, 1]], Some(1));
        assert_eq!((d, a, b, kept), (vec![2, 24], vec![12, 1], vec![24, 1], Some((1, 4))));
        let (d, _, _) = merge_axes(&[1, 1], [&[1, 1]], None);
        assert_eq!(d, vec![1]);
    }
}
