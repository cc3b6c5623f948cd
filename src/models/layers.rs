//! The layers the SD models need from the conv and attn work (SPEC signatures), in one place, so the models
//! do not depend on where they come from.
//!
//! Conv2d, GroupNorm and nearest 2x upsampling are `nn::spatial` (conv helper: fused `Conv2d` / `GroupNorm`
//! ops); attention is `nn::attention` (fused `Attention`) and quick-GELU `UnaryOp::QuickGelu` (attn helper).

use crate::error::Result;
use crate::graph::{Graph, NodeId, UnaryOp};
use crate::nn::spatial;

/// `x * sigmoid(1.702 x)` (CLIP's activation), `UnaryOp::QuickGelu`.
pub fn quick_gelu(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    g.unary(UnaryOp::QuickGelu, x)
}

/// Multi-head attention on `[B, T, C]` tensors (fused `Attention`, scale 1/sqrt(C/heads), causal when asked);
/// returns `[B, Tq, C]`.
pub fn attention(g: &mut Graph, q: NodeId, k: NodeId, v: NodeId, heads: usize, causal: bool) -> Result<NodeId> {
    crate::nn::attention::attention(g, q, k, v, heads, causal)
}

/// 2-D convolution on NHWC `x` with params `{prefix}.weight [cout, cin, k, k]` and `{prefix}.bias [cout]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(g: &mut Graph, x: NodeId, prefix: &str, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> Result<NodeId> {
    spatial::conv2d(g, x, prefix, cin, cout, k, stride, padding)
}

/// GroupNorm over NHWC `x` (statistics per sample and group over all middle axes), params
/// `{prefix}.weight`/`{prefix}.bias` `[C]`, then SiLU when `silu`.
pub fn group_norm(g: &mut Graph, x: NodeId, prefix: &str, groups: usize, eps: f32, silu: bool) -> Result<NodeId> {
    spatial::group_norm(g, x, prefix, groups, eps, silu)
}

/// Nearest-neighbour 2x upsampling of NHWC `x`.
pub fn upsample_nearest2x(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    spatial::upsample_nearest2x(g, x)
}
