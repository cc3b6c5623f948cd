//! Multi-head attention over token tensors `[B, T, C]` through the fused `Attention` op.

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op};

/// `softmax(q k^T / sqrt(D)) v` with `heads` heads of `D = C / heads` channels: q `[B, Tq, C]`, k and v
/// `[B, Tk, C]` -> `[B, Tq, C]`. The reshapes to `[B, T, H, D]` and back are free (no data moves). `causal`
/// masks key j > query i (CLIP's text encoder).
pub fn attention(g: &mut Graph, q: NodeId, k: NodeId, v: NodeId, heads: usize, causal: bool) -> Result<NodeId> {
    let (qs, ks) = (g.shape(q).to_vec(), g.shape(k).to_vec());
    if qs.len() != 3 || ks.len() != 3 || heads == 0 || qs[2] % heads != 0 {
        return Err(Error::graph(
            "nn::attention",
            format!("q {qs:?} and k {ks:?} must be [B, T, C] with C divisible by {heads} heads"),
        ));
    }
    let (b, tq, c) = (qs[0], qs[1], qs[2]);
    let d = c / heads;
    let q4 = g.reshape(q, &[b, tq, heads, d])?; // (B, Tq, H, D)
    let k4 = g.reshape(k, &[ks[0], ks[1], heads, ks[2] / heads])?; // (B, Tk, H, D)
    let vs = g.shape(v).to_vec();
    if vs.len() != 3 || vs[2] % heads != 0 {
        return Err(Error::graph("nn::attention", format!("v {vs:?} must be [B, Tk, C]")));
    }
    let v4 = g.reshape(v, &[vs[0], vs[1], heads, vs[2] / heads])?; // (B, Tk, H, D)
    let o = g.push(Op::Attention { causal, scale: 1.0 / (d as f32).sqrt() }, &[q4, k4, v4])?; // (B, Tq, H, D)
    g.reshape(o, &[b, tq, c]) // (B, Tq, C)
}
