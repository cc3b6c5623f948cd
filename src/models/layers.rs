//! The layers the SD models need from the conv and attn work (SPEC signatures), in one place, so the models
//! do not depend on where they come from.
//!
//! Conv2d, GroupNorm and nearest 2x upsampling are `nn::spatial` (conv helper: fused `Conv2d` / `GroupNorm`
//! ops). Interim, until attn M1 is merged: attention is matmul + softmax with an in-graph causal mask and
//! quick-GELU is `x * sigmoid(1.702 x)` from primitive ops.

use crate::error::Result;
use crate::graph::{BinaryOp, Graph, NodeId, UnaryOp};
use crate::nn::spatial;

/// `x * sigmoid(1.702 x)` (CLIP's activation).
pub fn quick_gelu(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    let s = g.scale(x, 1.702)?;
    let s = g.unary(UnaryOp::Sigmoid, s)?;
    g.mul(x, s)
}

/// Multi-head attention on `[B, T, C]` tensors: scale 1/sqrt(C/heads), causal when asked; returns `[B, Tq, C]`.
pub fn attention(g: &mut Graph, q: NodeId, k: NodeId, v: NodeId, heads: usize, causal: bool) -> Result<NodeId> {
    let (qs, ks) = (g.shape(q).to_vec(), g.shape(k).to_vec());
    let (b, tq, c, tk) = (qs[0], qs[1], qs[2], ks[1]);
    let d = c / heads;
    let split = |g: &mut Graph, x: NodeId, t: usize| -> Result<NodeId> {
        let x = g.reshape(x, &[b, t, heads, d])?; // (B, T, H, D)
        g.permute(x, &[0, 2, 1, 3]) // (B, H, T, D)
    };
    let (qh, kh, vh) = (split(g, q, tq)?, split(g, k, tk)?, split(g, v, tk)?);
    let s = g.matmul_t(qh, kh, false, true)?; // (B, H, Tq, Tk)
    let mut s = g.scale(s, 1.0 / (d as f32).sqrt())?;
    if causal {
        let (dt, f32) = (g.dtype(q), crate::tensor::DType::F32);
        let fills: Vec<NodeId> = (0..tq.max(tk)).map(|i| g.fill(i as f32, &[1], f32)).collect();
        let iota = g.concat(&fills, 0)?; // (T)
        let rows = g.slice(iota, 0, 0, tq)?;
        let rows = g.reshape(rows, &[tq, 1])?;
        let cols = g.slice(iota, 0, 0, tk)?;
        let cols = g.reshape(cols, &[1, tk])?;
        let above = g.binary(BinaryOp::Gt, cols, rows)?; // (Tq, Tk): 1 where key j > query i
        let mask = g.scale(above, -1e9)?;
        let s32 = g.cast(s, f32)?;
        s = g.add(s32, mask)?;
        s = g.cast(s, dt)?;
    }
    let p = g.softmax(s, 3)?;
    let o = g.matmul(p, vh)?; // (B, H, Tq, D)
    let o = g.permute(o, &[0, 2, 1, 3])?; // (B, Tq, H, D)
    g.reshape(o, &[b, tq, c])
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
