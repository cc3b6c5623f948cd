//! Stable Diffusion's small ops (`kernels/sd_misc.cu`): GEGLU (and its backward) and the timestep embedding.
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
        Op::Geglu | Op::GegluBwd => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let x = shapes[0];
            let Some(&c2) = x.last() else { return err("needs rank >= 1".into()) };
            if c2 % 2 != 0 {
                return err(format!("last axis of {x:?} must be even (hidden and gate halves)"));
            }
            let mut half = x.to_vec();
            *half.last_mut().unwrap() = c2 / 2;
            if matches!(op, Op::GegluBwd) {
                if shapes[1] != half.as_slice() {
                    return err(format!("dy shape {:?} must be {half:?} for x {x:?}", shapes[1]));
                }
                return Ok((x.to_vec(), d));
            }
            Ok((half, d))
        }
        Op::TimestepEmbedding { dim, shift, .. } => {
            // Float timesteps (cast integer ones first); the embedding is computed in f32 as diffusers does.
            require_float(op, dtypes)?;
            let t = shapes[0];
            if t.len() != 1 {
                return err(format!("timesteps must have shape [N], got {t:?}"));
            }
            if *dim < 2 || (dim / 2) as f32 - shift == 0.0 {
                return err(format!("dim {dim} with shift {shift} gives no frequencies"));
            }
            Ok((vec![t[0], *dim], DType::F32))
        }
        _ => err("not a sd_misc op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, _needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    Ok(match op {
        Op::Geglu => vec![Some(g.push(Op::GegluBwd, &[ins[0], dy])?)],
        Op::TimestepEmbedding { .. } => vec![None],
        Op::GegluBwd => return no_second_order(op),
        _ => return super::err(op, "not a sd_misc op".into()),
    })
}
