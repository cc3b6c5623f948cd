//! Softmax (`kernels/softmax.cu`) and layer norm (`kernels/layernorm.cu`), with their backward ops.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
pub(crate) mod fast;
pub mod launch;
pub mod parity;

use super::{Op, require_float, same_dtype, check_axis, no_second_order};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::Softmax { axis } => {
            require_float(op, dtypes)?;
            check_axis(op, *axis, shapes[0].len(), shapes[0])?;
            Ok((shapes[0].to_vec(), dtypes[0]))
        }
        Op::SoftmaxBwd { axis } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            if shapes[0] != shapes[1] {
                return err(format!("shape mismatch: {:?} vs {:?}", shapes[0], shapes[1]));
            }
            check_axis(op, *axis, shapes[0].len(), shapes[0])?;
            Ok((shapes[0].to_vec(), d))
        }
        Op::LayerNorm { affine, .. } | Op::LayerNormBwd { affine, .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let x = shapes[0];
            let Some(&dim) = x.last() else { return err("needs rank >= 1".into()) };
            let is_bwd = matches!(op, Op::LayerNormBwd { .. });
            // Forward: (x, [weight, bias]); backward: (x, [weight], dy).
            let n_affine = match (*affine, is_bwd) {
                (false, _) => 0,
                (true, false) => 2,
                (true, true) => 1,
            };
            for s in &shapes[1..1 + n_affine] {
                if *s != [dim] {
                    return err(format!("weight/bias shape {s:?} does not match the last axis of x {x:?}"));
                }
            }
            if is_bwd && shapes[shapes.len() - 1] != x {
                return err(format!("dy shape {:?} differs from x shape {x:?}", shapes[shapes.len() - 1]));
            }
            Ok((x.to_vec(), d))
        }
        _ => err("not a norm op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    Ok(match op {
        Op::Softmax { axis } => vec![Some(g.push(Op::SoftmaxBwd { axis: *axis }, &[id, dy])?)],
        Op::LayerNorm { eps, affine } => {
            if !affine {
                vec![Some(g.push(Op::LayerNormBwd { eps: *eps, affine: false }, &[ins[0], dy])?)]
            } else {
                let dx = g.push(Op::LayerNormBwd { eps: *eps, affine: true }, &[ins[0], ins[1], dy])?;
                let xs = shape_of(g, 0);
                let lead: Vec<usize> = (0..xs.len() - 1).collect();
                let (dw, db) = if needs[1] || needs[2] {
                    let xhat = g.layer_norm(ins[0], None, *eps)?;
                    let t = g.mul(dy, xhat)?;
                    let dw = if lead.is_empty() { t } else { g.sum(t, &lead, false)? };
                    let db = if lead.is_empty() { dy } else { g.sum(dy, &lead, false)? };
                    (Some(dw), Some(db))
                } else {
                    (None, None)
                };
                vec![Some(dx), dw, db]
            }
        }
        Op::SoftmaxBwd { .. } | Op::LayerNormBwd { .. } => return no_second_order(op),
        _ => return super::err(op, "not a norm op".into()),
    })
}
