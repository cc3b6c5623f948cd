//! Matrix multiplication (`kernels/gemm.cu`), with transposes and broadcast batch axes.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
pub mod launch;
pub mod parity;

use super::{Op, require_float, same_dtype, broadcast_shapes};
use crate::error::Result;
use crate::graph::autodiff::sum_to_shape;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::MatMul { ta, tb } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (a, b) = (shapes[0], shapes[1]);
            if a.len() < 2 || b.len() < 2 {
                return err(format!("needs rank >= 2, got {a:?} and {b:?}"));
            }
            let (m, ka) = if *ta { (a[a.len() - 1], a[a.len() - 2]) } else { (a[a.len() - 2], a[a.len() - 1]) };
            let (kb, n) = if *tb { (b[b.len() - 1], b[b.len() - 2]) } else { (b[b.len() - 2], b[b.len() - 1]) };
            if ka != kb {
                return err(format!("inner dimensions differ: {a:?} (ta={ta}) x {b:?} (tb={tb}): {ka} vs {kb}"));
            }
            let Some(mut batch) = broadcast_shapes(&a[..a.len() - 2], &b[..b.len() - 2]) else {
                return err(format!("batch dimensions of {a:?} and {b:?} do not broadcast"));
            };
            batch.push(m);
            batch.push(n);
            Ok((batch, d))
        }
        _ => err("not a gemm op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    Ok(match op {
        Op::MatMul { ta, tb } => {
            // Only the gradients asked for get nodes (a frozen weight's gradient is never built).
            let (a, b) = (ins[0], ins[1]);
            let need = |i: usize| needs.get(i).copied().unwrap_or(true);
            let da = match (need(0), ta, tb) {
                (false, _, _) => None,
                (true, false, false) => Some(g.matmul_t(dy, b, false, true)?),
                (true, false, true) => Some(g.matmul_t(dy, b, false, false)?),
                (true, true, false) => Some(g.matmul_t(b, dy, false, true)?),
                (true, true, true) => Some(g.matmul_t(b, dy, true, true)?),
            };
            let db = match (need(1), ta, tb) {
                (false, _, _) => None,
                (true, false, false) => Some(g.matmul_t(a, dy, true, false)?),
                (true, false, true) => Some(g.matmul_t(dy, a, true, false)?),
                (true, true, false) => Some(g.matmul_t(a, dy, false, false)?),
                (true, true, true) => Some(g.matmul_t(dy, a, true, true)?),
            };
            let (sa, sb) = (shape_of(g, 0), shape_of(g, 1));
            let da = match da {
                Some(d) => Some(sum_to_shape(g, d, &sa)?),
                None => None,
            };
            let db = match db {
                Some(d) => Some(sum_to_shape(g, d, &sb)?),
                None => None,
            };
            vec![da, db]
        }
        _ => return super::err(op, "not a gemm op".into()),
    })
}
