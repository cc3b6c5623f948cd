//! Multi-scale deformable attention as a graph layer (the sampling core of Deformable DETR / GroundingDINO;
//! the projections around it are the caller's `linear`s).

use crate::error::Result;
use crate::graph::{Graph, NodeId, Op};

/// `multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)` with
/// value `[B, S, H, D]` (S = sum of h * w over `levels`, level-major, row-major inside a level), sampling
/// locations `[B, Q, H, L, P, 2]` f32 ((x, y) normalised to [0, 1] per level, zero padding outside) and
/// attention weights `[B, Q, H, L, P]` (already softmaxed, the value's dtype); `levels` = (h, w) per level.
/// Returns `[B, Q, H * D]`. Differentiable w.r.t. all three inputs.
pub fn msda(g: &mut Graph, value: NodeId, loc: NodeId, attn: NodeId, levels: &[[usize; 2]]) -> Result<NodeId> {
    g.push(Op::Msda { levels: levels.to_vec() }, &[value, loc, attn])
}
