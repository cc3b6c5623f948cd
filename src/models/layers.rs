//! The layers the SD models need from the conv and attn work (SPEC signatures), in one place, so the models
//! do not depend on where they come from.
//!
//! Interim bodies (until conv/attn M1 are merged): built from existing primitive ops. Conv2d is an im2col of
//! shifted slices (stride by reshape + slice) and a matmul; GroupNorm is mean/variance reductions; nearest 2x
//! upsampling is a broadcast; attention is matmul + softmax with an in-graph causal mask.

use crate::error::Result;
use crate::graph::{BinaryOp, Graph, NodeId, UnaryOp};

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
    let dt = g.dtype(x);
    let w = g.param(&format!("{prefix}.weight"), &[cout, cin, k, k], dt)?;
    let b = g.param(&format!("{prefix}.bias"), &[cout], dt)?;
    let s = g.shape(x).to_vec();
    let (n, h, wd) = (s[0], s[1], s[2]);
    let (hp, wp) = (h + 2 * padding, wd + 2 * padding);
    let (ho, wo) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    let mut xp = x;
    // Extra zeros after, so every strided slice [d, d + stride*out) stays in bounds (never selected).
    let extra = stride - 1;
    if padding > 0 || extra > 0 {
        xp = g.pad(xp, 1, padding, padding + extra)?;
        xp = g.pad(xp, 2, padding, padding + extra)?;
    }
    let mut taps = Vec::with_capacity(k * k);
    for dy in 0..k {
        for dx in 0..k {
            let mut t = g.slice(xp, 1, dy, dy + stride * ho)?;
            t = g.slice(t, 2, dx, dx + stride * wo)?; // (N, s*Ho, s*Wo, C)
            if stride > 1 {
                t = g.reshape(t, &[n, ho, stride, wo, stride, cin])?;
                t = g.slice(t, 2, 0, 1)?;
                t = g.slice(t, 4, 0, 1)?;
                t = g.reshape(t, &[n, ho, wo, cin])?;
            }
            taps.push(t);
        }
    }
    let cols = if taps.len() == 1 { taps[0] } else { g.concat(&taps, 3)? }; // (N, Ho, Wo, k*k*C)
    let cols = g.reshape(cols, &[n * ho * wo, k * k * cin])?;
    let w2 = g.permute(w, &[0, 2, 3, 1])?; // (O, k, k, C)
    let w2 = g.reshape(w2, &[cout, k * k * cin])?;
    let y = g.matmul_t(cols, w2, false, true)?; // (N*Ho*Wo, O)
    let y = g.add(y, b)?;
    g.reshape(y, &[n, ho, wo, cout])
}

/// GroupNorm over NHWC `x` (statistics per sample and group over all middle axes), params
/// `{prefix}.weight`/`{prefix}.bias` `[C]`, then SiLU when `silu`.
pub fn group_norm(g: &mut Graph, x: NodeId, prefix: &str, groups: usize, eps: f32, silu: bool) -> Result<NodeId> {
    let s = g.shape(x).to_vec();
    let dt = g.dtype(x);
    let c = *s.last().unwrap_or(&1);
    let (n, m) = (s[0], s[1..s.len() - 1].iter().product::<usize>());
    let w = g.param(&format!("{prefix}.weight"), &[c], dt)?;
    let b = g.param(&format!("{prefix}.bias"), &[c], dt)?;
    let x32 = g.cast(x, crate::tensor::DType::F32)?;
    let xr = g.reshape(x32, &[n, m, groups, c / groups])?;
    let mean = g.mean(xr, &[1, 3], true)?;
    let d = g.sub(xr, mean)?;
    let d2 = g.unary(UnaryOp::Square, d)?;
    let var = g.mean(d2, &[1, 3], true)?;
    let r = g.affine(var, 1.0, eps)?;
    let r = g.unary(UnaryOp::Rsqrt, r)?;
    let y = g.mul(d, r)?;
    let y = g.reshape(y, &s)?;
    let y = g.cast(y, dt)?;
    let y = g.mul(y, w)?;
    let y = g.add(y, b)?;
    if silu { g.unary(UnaryOp::Silu, y) } else { Ok(y) }
}

/// Nearest-neighbour 2x upsampling of NHWC `x`.
pub fn upsample_nearest2x(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    let s = g.shape(x).to_vec();
    let (n, h, w, c) = (s[0], s[1], s[2], s[3]);
    let y = g.reshape(x, &[n, h, 1, w, 1, c])?;
    let y = g.broadcast_to(y, &[n, h, 2, w, 2, c])?;
    g.reshape(y, &[n, 2 * h, 2 * w, c])
}
