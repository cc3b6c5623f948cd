//! Layers that build sub-graphs and own their parameter names (PyTorch layouts: a Linear weight is
//! `[out, in]`), so checkpoints load by walking names.

pub mod attention;
pub mod msda;
pub mod spatial;

use crate::error::Result;
use crate::graph::{BinaryOp, Graph, NodeId, UnaryOp};
use crate::params::ParamStore;
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// `y = x @ weight^T + bias` over the last axis; parameters `{name}.weight [out, in]`, `{name}.bias [out]`.
pub fn linear(g: &mut Graph, name: &str, x: NodeId, out_features: usize, bias: bool) -> Result<NodeId> {
    let (shape, dtype) = (g.shape(x).to_vec(), g.dtype(x));
    let in_features = shape.last().copied().unwrap_or(1);
    let w = g.param(&format!("{name}.weight"), &[out_features, in_features], dtype)?; // (out, in)
    let y = g.matmul_t(x, w, false, true)?; // (..., out)
    if !bias {
        return Ok(y);
    }
    let b = g.param(&format!("{name}.bias"), &[out_features], dtype)?; // (out)
    g.add(y, b) // (..., out)
}

/// LayerNorm over the last axis with `{name}.weight` and `{name}.bias`.
pub fn layer_norm(g: &mut Graph, name: &str, x: NodeId, eps: f32) -> Result<NodeId> {
    let (shape, dtype) = (g.shape(x).to_vec(), g.dtype(x));
    let d = shape.last().copied().unwrap_or(1);
    let w = g.param(&format!("{name}.weight"), &[d], dtype)?; // (d)
    let b = g.param(&format!("{name}.bias"), &[d], dtype)?; // (d)
    g.layer_norm(x, Some((w, b)), eps) // (..., d)
}

/// Multi-head self-attention on `x (B, T, C)` with fused `{name}.qkv` and `{name}.proj` linears. `mask` is an
/// additive `(T, T)` tensor (e.g. 0 / -1e9 for causal attention).
pub fn self_attention(g: &mut Graph, name: &str, x: NodeId, heads: usize, mask: Option<NodeId>) -> Result<NodeId> {
    let s = g.shape(x).to_vec();
    let (b, t, c) = (s[0], s[1], s[2]);
    let hd = c / heads.max(1);
    let qkv = linear(g, &format!("{name}.qkv"), x, 3 * c, true)?; // (B, T, 3C)
    let qkv = g.reshape(qkv, &[b, t, 3, heads, hd])?; // (B, T, 3, H, D)
    let qkv = g.permute(qkv, &[2, 0, 3, 1, 4])?; // (3, B, H, T, D)
    let mut qkv_parts = Vec::with_capacity(3);
    for i in 0..3 {
        let p = g.slice(qkv, 0, i, i + 1)?; // (1, B, H, T, D)
        qkv_parts.push(g.reshape(p, &[b, heads, t, hd])?); // (B, H, T, D)
    }
    let (q, k, v) = (qkv_parts[0], qkv_parts[1], qkv_parts[2]);
    let att = g.matmul_t(q, k, false, true)?; // (B, H, T, T)
    let mut att = g.scale(att, 1.0 / (hd as f32).sqrt())?; // (B, H, T, T)
    if let Some(m) = mask {
        att = g.add(att, m)?; // (B, H, T, T)
    }
    let att = g.softmax(att, 3)?; // (B, H, T, T)
    let y = g.matmul(att, v)?; // (B, H, T, D)
    let y = g.permute(y, &[0, 2, 1, 3])?; // (B, T, H, D)
    let y = g.reshape(y, &[b, t, c])?; // (B, T, C)
    linear(g, &format!("{name}.proj"), y, c, true) // (B, T, C)
}

/// A pre-LayerNorm transformer block (GPT-2 layout): `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))` with GELU.
pub fn transformer_block(g: &mut Graph, name: &str, x: NodeId, heads: usize, mask: Option<NodeId>) -> Result<NodeId> {
    let c = g.shape(x)[2];
    let h = layer_norm(g, &format!("{name}.ln_1"), x, 1e-5)?; // (B, T, C)
    let h = self_attention(g, &format!("{name}.attn"), h, heads, mask)?; // (B, T, C)
    let x = g.add(x, h)?; // (B, T, C)
    let h = layer_norm(g, &format!("{name}.ln_2"), x, 1e-5)?; // (B, T, C)
    let h = linear(g, &format!("{name}.mlp.fc"), h, 4 * c, true)?; // (B, T, 4C)
    let h = g.unary(UnaryOp::Gelu, h)?; // (B, T, 4C)
    let h = linear(g, &format!("{name}.mlp.proj"), h, c, true)?; // (B, T, C)
    g.add(x, h) // (B, T, C)
}

/// Mean cross-entropy of `logits (N, V)` against one-hot (or soft) `targets (N, V)`, through a stable
/// log-softmax. Returns a tensor of shape `[]`.
pub fn cross_entropy(g: &mut Graph, logits: NodeId, targets: NodeId) -> Result<NodeId> {
    let m = g.reduce(crate::graph::ReduceOp::Max, logits, &[1], true)?; // (N, 1)
    let z = g.sub(logits, m)?; // (N, V)
    let e = g.unary(UnaryOp::Exp, z)?; // (N, V)
    let s = g.sum(e, &[1], true)?; // (N, 1)
    let ls = g.unary(UnaryOp::Log, s)?; // (N, 1)
    let logp = g.sub(z, ls)?; // (N, V)
    let picked = g.binary(BinaryOp::Mul, logp, targets)?; // (N, V)
    let total = g.sum(picked, &[1], false)?; // (N)
    let mean = g.mean_all(total)?; // ()
    g.scale(mean, -1.0)
}

/// Mean squared error between two same-shaped tensors, shape `[]`.
pub fn mse(g: &mut Graph, a: NodeId, b: NodeId) -> Result<NodeId> {
    let d = g.sub(a, b)?;
    let d2 = g.unary(UnaryOp::Square, d)?;
    g.mean_all(d2)
}

/// An additive causal mask `(T, T)`: 0 on and below the diagonal, -1e9 above.
pub fn causal_mask(t: usize, dtype: DType) -> Result<HostTensor> {
    let v: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { -1e9 } else { 0.0 }).collect();
    HostTensor::from_f32(&[t, t], dtype, &v)
}

/// Fresh parameters for every `Param` of a graph, PyTorch-style: 1-D `*.weight` ones (norm scales), `*.bias`
/// zeros, other weights uniform in `±1/sqrt(fan_in)` (fan_in = product of all but the first axis).
pub fn init_params(g: &Graph, seed: u64) -> Result<ParamStore> {
    let mut rng = Rng::new(seed);
    let mut store = ParamStore::new();
    for (id, name) in g.params() {
        let n = g.node(id);
        let numel = n.numel();
        let vals = if name.ends_with(".bias") {
            vec![0.0; numel]
        } else if n.shape.len() == 1 && name.ends_with(".weight") {
            vec![1.0; numel]
        } else {
            let fan_in: usize = n.shape.iter().skip(1).product::<usize>().max(1);
            let bound = 1.0 / (fan_in as f32).sqrt();
            rng.uniform_vec(numel, -bound, bound)
        };
        store.insert(name, HostTensor::from_f32(&n.shape, n.dtype, &vals)?);
    }
    Ok(store)
}
