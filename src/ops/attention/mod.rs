//! Fused multi-head attention (`kernels/attention.cu`), its statistics pass and its backward op.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
pub(crate) mod fast;
pub mod launch;
pub mod parity;

use super::{Op, require_float, same_dtype, no_second_order};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        // q [B,Tq,H,D], k and v [B,Tk,H,D], o and dy like q, stats [B,H,2,Tq] f32.
        Op::Attention { .. } | Op::AttentionStats { .. } | Op::AttentionBwd { .. } => {
            // Every input but the f32 stats shares the storage dtype.
            let n_same = if matches!(op, Op::AttentionBwd { .. }) { 4 } else { shapes.len() };
            require_float(op, &dtypes[..n_same])?;
            let d = same_dtype(op, &dtypes[..n_same])?;
            let (q, k) = (shapes[0], shapes[1]);
            if q.len() != 4 || k.len() != 4 || q[0] != k[0] || q[2] != k[2] || q[3] != k[3] {
                return err(format!("q {q:?} and k {k:?} must be [B, T, H, D] with equal B, H and D"));
            }
            let (b, tq, h, hd, tk) = (q[0], q[1], q[2], q[3], k[1]);
            match op {
                Op::Attention { .. } => {
                    if shapes[2] != k {
                        return err(format!("v {:?} must have k's shape {k:?}", shapes[2]));
                    }
                    Ok((q.to_vec(), d))
                }
                Op::AttentionStats { .. } => {
                    if shapes[2] != q || shapes[3] != q {
                        return err(format!("o {:?} and dy {:?} must have q's shape {q:?}", shapes[2], shapes[3]));
                    }
                    Ok((vec![b, h, 2, tq], DType::F32))
                }
                _ => {
                    if shapes[2] != k || shapes[3] != q {
                        return err(format!("v {:?} must be k's shape {k:?} and dy {:?} q's shape {q:?}", shapes[2], shapes[3]));
                    }
                    if shapes[4] != [b, h, 2, tq] || dtypes[4] != DType::F32 {
                        return err(format!("stats must be f32 {:?}, got {} {:?}", [b, h, 2, tq], dtypes[4], shapes[4]));
                    }
                    Ok((vec![b, tq + 2 * tk, h, hd], d))
                }
            }
        }
        _ => err("not a attention op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    Ok(match op {
        Op::Attention { causal, scale } => {
            // Flash-attention 2 style: the backward recomputes P from q, k and the row logsumexp (a first pass
            // over the keys, `AttentionStats`, which also forms delta = rowsum(dy * o)), then one fused op.
            let (causal, scale) = (*causal, *scale);
            let (q, k, v) = (ins[0], ins[1], ins[2]);
            let (tq, tk) = (g.shape(q)[1], g.shape(k)[1]);
            let stats = g.push(Op::AttentionStats { causal, scale }, &[q, k, id, dy])?;
            let all = g.push(Op::AttentionBwd { causal, scale }, &[q, k, v, dy, stats])?;
            let mut v = Vec::with_capacity(3);
            for (i, (a, b)) in [(0, tq), (tq, tq + tk), (tq + tk, tq + 2 * tk)].into_iter().enumerate() {
                v.push(if needs[i] { Some(g.slice(all, 1, a, b)?) } else { None });
            }
            v
        }
        Op::AttentionStats { .. } | Op::AttentionBwd { .. } => return no_second_order(op),
        _ => return super::err(op, "not a attention op".into()),
    })
}
