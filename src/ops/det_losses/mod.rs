//! Detection losses (`kernels/det_losses.cu`): sigmoid focal loss and GIoU loss, with their gradients.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
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
        Op::SigmoidFocalLoss { .. } | Op::SigmoidFocalLossBwd { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            if shapes.iter().any(|s| *s != shapes[0]) {
                return err(format!("inputs must have the same shape, got {shapes:?}"));
            }
            Ok((shapes[0].to_vec(), d))
        }
        Op::GiouLoss { .. } | Op::GiouLossBwd { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (p, t) = (shapes[0], shapes[1]);
            if p.last() != Some(&4) || p != t {
                return err(format!("pred and target must be the same shape [..., 4], got {p:?} and {t:?}"));
            }
            let lead = p[..p.len() - 1].to_vec();
            if let Op::GiouLossBwd { .. } = op {
                if shapes[2] != lead.as_slice() {
                    return err(format!("dy {:?} must be {lead:?}", shapes[2]));
                }
                return Ok((p.to_vec(), d));
            }
            Ok((lead, d))
        }
        _ => err("not a det_losses op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    Ok(match op {
        Op::SigmoidFocalLoss { alpha, gamma } => {
            let op = Op::SigmoidFocalLossBwd { alpha: *alpha, gamma: *gamma };
            vec![if needs[0] { Some(g.push(op, &[ins[0], ins[1], dy])?) } else { None }, None]
        }
        Op::GiouLoss { eps } => {
            vec![if needs[0] { Some(g.push(Op::GiouLossBwd { eps: *eps }, &[ins[0], ins[1], dy])?) } else { None }, None]
        }
        Op::SigmoidFocalLossBwd { .. } | Op::GiouLossBwd { .. } => return no_second_order(op),
        _ => return super::err(op, "not a det_losses op".into()),
    })
}
