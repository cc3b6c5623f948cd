//! Reductions (`kernels/reduce.cu`): sum, mean and max over any set of axes.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
pub mod launch;
pub mod parity;

use super::BinaryOp;
use super::{Op, require_float, check_axis};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::Reduce { axes, keepdim, .. } => {
            require_float(op, dtypes)?;
            let s = shapes[0];
            let mut seen = vec![false; s.len()];
            for &a in axes {
                check_axis(op, a, s.len(), s)?;
                if seen[a] {
                    return err(format!("axis {a} repeated in {axes:?}"));
                }
                seen[a] = true;
            }
            let out = if *keepdim {
                s.iter().enumerate().map(|(i, &d)| if seen[i] { 1 } else { d }).collect()
            } else {
                s.iter().enumerate().filter(|(i, _)| !seen[*i]).map(|(_, &d)| d).collect()
            };
            Ok((out, dtypes[0]))
        }
        _ => err("not a reduce op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, id: NodeId, ins: &[NodeId], dy: NodeId, _needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    Ok(match op {
        Op::Reduce { op, axes, keepdim } => {
            let xs = shape_of(g, 0);
            let mut kept = xs.clone();
            for &a in axes {
                kept[a] = 1;
            }
            let dyk = if *keepdim { dy } else { g.reshape(dy, &kept)? };
            let dx = match op {
                ReduceOp::Sum => g.broadcast_to(dyk, &xs)?,
                ReduceOp::Mean => {
                    let count: usize = axes.iter().map(|&a| xs[a]).product();
                    let s = g.scale(dyk, 1.0 / count.max(1) as f32)?;
                    g.broadcast_to(s, &xs)?
                }
                ReduceOp::Max => {
                    // Split the gradient evenly among the maxima (PyTorch's amax rule).
                    let m = if *keepdim { id } else { g.reshape(id, &kept)? };
                    let mask = g.binary(BinaryOp::Eq, ins[0], m)?;
                    let count = g.sum(mask, axes, true)?;
                    let share = g.div(dyk, count)?;
                    g.mul(mask, share)?
                }
            };
            vec![Some(dx)]
        }
        _ => return super::err(op, "not a reduce op".into()),
    })
}
