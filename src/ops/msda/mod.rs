//! Multi-scale deformable attention (`kernels/msda.cu`): Deformable DETR's / GroundingDINO's
//! `multi_scale_deformable_attn_pytorch`, i.e. per level a `grid_sample(bilinear, padding zeros,
//! align_corners=False)` of the value map at normalised locations, weighted by attention weights and summed over
//! levels and points.
//!
//! Layouts (`levels` = the (h, w) of each level, a field of the op):
//! - value `[B, S, H, D]`, S = sum of h * w, levels one after another, row-major inside a level (the
//!   flattened encoder tokens);
//! - sampling locations `[B, Q, H, L, P, 2]` f32, (x, y) in [0, 1] over the level's map (outside is zero
//!   padding), pixel = loc * size - 0.5;
//! - attention weights `[B, Q, H, L, P]` (already normalised by the caller), the value's dtype;
//! - output `[B, Q, H * D]`.
//!
//! Locations are f32 only, as RoIs are (`ops/roi`): in bf16 a location near 1 moves in steps of 2^-8, a quarter
//! pixel on a 64-pixel level, coarser than the interpolation it feeds (f16: 1/32 pixel). Value and weights are
//! f32/f16/bf16 storage, arithmetic in f32.
//!
//! Backward (one output per node): `MsdaBwdValue` (loc, attn, dy) -> dvalue, a scatter of every sample's
//! corner weights (see `kernels/msda.cu` and DESIGN.md for how it stays deterministic), and `MsdaBwdLocAttn`
//! (value, loc, attn, dy) -> f32 `[B, Q, H, L, P, 3]` = (d loc_x, d loc_y, d attn), which the rule slices.
//! Neither has a second-order rule.
//!
//! Bilinear weights follow `grid_sample`: x0 = floor(x), weight of x0 + 1 = x - x0; a corner outside the map
//! reads 0. At an integer position the derivative w.r.t. x is the right-hand one (as PyTorch's floor gives).
//! A location that is not finite samples zeros (it is clamped into [-2, size + 1] first, where every corner of
//! a point below -1 or above size is outside the map).

pub mod cpu;
pub mod fast;
pub mod launch;
pub mod parity;

use super::{Op, no_second_order, require_float};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// The dimensions of an MSDA call.
#[derive(Clone, Debug, PartialEq)]
pub struct Dims {
    pub b: usize,
    /// Queries.
    pub q: usize,
    /// Heads.
    pub h: usize,
    /// Head width.
    pub d: usize,
    /// Points per level.
    pub p: usize,
    /// (h, w) of each level.
    pub levels: Vec<[usize; 2]>,
    /// First token of each level in S.
    pub starts: Vec<usize>,
    /// Tokens (sum of h * w).
    pub s: usize,
}

impl Dims {
    pub fn l(&self) -> usize {
        self.levels.len()
    }

    /// From the locations' shape `[B, Q, H, L, P, 2]`, the head width and the levels (shapes already checked).
    pub fn new(loc: &[usize], d: usize, levels: &[[usize; 2]]) -> Dims {
        let mut starts = Vec::with_capacity(levels.len());
        let mut s = 0;
        for [lh, lw] in levels {
            starts.push(s);
            s += lh * lw;
        }
        Dims { b: loc[0], q: loc[1], h: loc[2], d, p: loc[4], levels: levels.to_vec(), starts, s }
    }
}

/// Tokens of the levels, or an error for an empty level list or an empty level.
fn tokens(op: &Op, levels: &[[usize; 2]]) -> Result<usize> {
    if levels.is_empty() {
        return super::err(op, "needs at least one level".into());
    }
    if let Some(l) = levels.iter().position(|[h, w]| *h == 0 || *w == 0) {
        return super::err(op, format!("level {l} has an empty shape {:?}", levels[l]));
    }
    levels.iter().try_fold(0usize, |acc, [h, w]| h.checked_mul(*w).and_then(|n| acc.checked_add(n))).map_or_else(
        || super::err(op, format!("levels {levels:?} overflow")),
        Ok,
    )
}

/// Checks loc `[B, Q, H, L, P, 2]` f32 and attn `[B, Q, H, L, P]` against `levels`; returns (B, Q, H).
fn check_loc_attn(op: &Op, levels: &[[usize; 2]], loc: &[usize], loc_dt: DType, attn: &[usize]) -> Result<(usize, usize, usize)> {
    if loc_dt != DType::F32 {
        return super::err(op, format!("sampling locations must be f32 (f16/bf16 are too coarse), got {loc_dt}"));
    }
    if loc.len() != 6 || loc[5] != 2 || loc[3] != levels.len() {
        return super::err(op, format!("sampling locations must be [B, Q, H, L={}, P, 2], got {loc:?}", levels.len()));
    }
    if attn != &loc[..5] {
        return super::err(op, format!("attention weights {attn:?} must be [B, Q, H, L, P] = {:?}", &loc[..5]));
    }
    Ok((loc[0], loc[1], loc[2]))
}

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::Msda { levels } | Op::MsdaBwdLocAttn { levels } => {
            let s = tokens(op, levels)?;
            let bwd = matches!(op, Op::MsdaBwdLocAttn { .. });
            let (value, loc, attn) = (shapes[0], shapes[1], shapes[2]);
            require_float(op, &[dtypes[0], dtypes[2]])?;
            if dtypes[2] != dtypes[0] {
                return err(format!("attention weights ({}) must have the value's dtype ({})", dtypes[2], dtypes[0]));
            }
            let (b, q, h) = check_loc_attn(op, levels, loc, dtypes[1], attn)?;
            if value.len() != 4 || value[0] != b || value[1] != s || value[2] != h {
                return err(format!("value must be [B={b}, S={s}, H={h}, D] for levels {levels:?}, got {value:?}"));
            }
            if bwd {
                let dy = shapes[3];
                if dy != [b, q, h * value[3]] || dtypes[3] != dtypes[0] {
                    return err(format!("dy must be {} [{b}, {q}, {}], got {} {dy:?}", dtypes[0], h * value[3], dtypes[3]));
                }
                let mut out = attn.to_vec();
                out.push(3);
                Ok((out, DType::F32))
            } else {
                Ok((vec![b, q, h * value[3]], dtypes[0]))
            }
        }
        Op::MsdaBwdValue { levels } => {
            let s = tokens(op, levels)?;
            let (loc, attn, dy) = (shapes[0], shapes[1], shapes[2]);
            require_float(op, &[dtypes[1], dtypes[2]])?;
            if dtypes[2] != dtypes[1] {
                return err(format!("dy ({}) must have the attention weights' dtype ({})", dtypes[2], dtypes[1]));
            }
            let (b, q, h) = check_loc_attn(op, levels, loc, dtypes[0], attn)?;
            if dy.len() != 3 || dy[0] != b || dy[1] != q || dy[2] % h != 0 {
                return err(format!("dy must be [B={b}, Q={q}, H*D] with H={h}, got {dy:?}"));
            }
            Ok((vec![b, s, h, dy[2] / h], dtypes[2]))
        }
        _ => err("not an msda op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let Op::Msda { levels } = op else {
        return no_second_order(op);
    };
    let (value, loc, attn) = (ins[0], ins[1], ins[2]);
    let dvalue = if needs[0] { Some(g.push(Op::MsdaBwdValue { levels: levels.clone() }, &[loc, attn, dy])?) } else { None };
    let (mut dloc, mut dattn) = (None, None);
    if needs[1] || needs[2] {
        let la = g.push(Op::MsdaBwdLocAttn { levels: levels.clone() }, &[value, loc, attn, dy])?; // [B,Q,H,L,P,3]
        if needs[1] {
            dloc = Some(g.slice(la, 5, 0, 2)?);
        }
        if needs[2] {
            let a = g.slice(la, 5, 2, 3)?;
            let a = g.reshape(a, &g.shape(attn).to_vec())?;
            let dt = g.dtype(attn);
            dattn = Some(if dt == DType::F32 { a } else { g.cast(a, dt)? });
        }
    }
    Ok(vec![dvalue, dloc, dattn])
}
