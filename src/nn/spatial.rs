//! Layers on NHWC feature maps `[N, H, W, C]` with diffusers parameter names: convolutions (weights kept in the
//! checkpoint layout `[out, in, kh, kw]`), group norm (optionally fused with SiLU) and nearest 2x upsampling.

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op};

/// A `k x k` convolution with `{prefix}.weight [cout, cin, k, k]` and `{prefix}.bias [cout]` (as
/// `torch.nn.Conv2d(cin, cout, k, stride, padding)`): `x [N, H, W, cin]` -> `[N, Ho, Wo, cout]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    g: &mut Graph,
    x: NodeId,
    prefix: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<NodeId> {
    let (shape, dtype) = (g.shape(x).to_vec(), g.dtype(x));
    if shape.len() != 4 || shape[3] != cin {
        return Err(Error::graph(format!("conv2d '{prefix}'"), format!("expects x [N, H, W, {cin}], got {shape:?}")));
    }
    let w = g.param(&format!("{prefix}.weight"), &[cout, cin, k, k], dtype)?; // (cout, cin, k, k)
    let b = g.param(&format!("{prefix}.bias"), &[cout], dtype)?; // (cout)
    g.push(Op::Conv2d { stride, padding, bias: true }, &[x, w, b]) // (N, Ho, Wo, cout)
}

/// Group norm over `x [N, ..., C]` with `{prefix}.weight [C]` and `{prefix}.bias [C]` (as
/// `torch.nn.GroupNorm(groups, C, eps)`), followed by SiLU when `silu` (one fused op).
pub fn group_norm(g: &mut Graph, x: NodeId, prefix: &str, groups: usize, eps: f32, silu: bool) -> Result<NodeId> {
    let (shape, dtype) = (g.shape(x).to_vec(), g.dtype(x));
    let c = shape.last().copied().unwrap_or(0);
    let w = g.param(&format!("{prefix}.weight"), &[c], dtype)?; // (C)
    let b = g.param(&format!("{prefix}.bias"), &[c], dtype)?; // (C)
    g.push(Op::GroupNorm { groups, eps, silu }, &[x, w, b]) // (N, ..., C)
}

/// Nearest-neighbour 2x upsampling of `x [N, H, W, C]` to `[N, 2H, 2W, C]` (torch
/// `F.interpolate(scale_factor=2, mode="nearest")`), as a broadcast: `[N, H, 1, W, 1, C]` repeated to
/// `[N, H, 2, W, 2, C]`. Its gradient is the matching sum over the two size-2 axes.
pub fn upsample_nearest2x(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    let s = g.shape(x).to_vec();
    if s.len() != 4 {
        return Err(Error::graph("upsample_nearest2x", format!("expects x [N, H, W, C], got {s:?}")));
    }
    let (n, h, w, c) = (s[0], s[1], s[2], s[3]);
    let t = g.reshape(x, &[n, h, 1, w, 1, c])?; // (N, H, 1, W, 1, C)
    let t = g.broadcast_to(t, &[n, h, 2, w, 2, c])?; // (N, H, 2, W, 2, C)
    g.reshape(t, &[n, 2 * h, 2 * w, c]) // (N, 2H, 2W, C)
}
