//! Frozen batch norm (`kernels/frozen_bn.cu`), torchvision's `FrozenBatchNorm2d` on channel-last tensors:
//! `y = x * scale + shift` per channel with `scale = weight * rsqrt(running_var + eps)` and
//! `shift = bias - running_mean * scale`, each step rounded to f32 as torch does (so results match it bit for
//! bit on f32 storage), then ReLU when `relu` (ResNet's norm + activation in one pass). Spec here; CPU reference in `cpu.rs`, launcher in `launch.rs`, cases in `parity.rs`.
//!
//! The four statistics are frozen (buffers in torchvision): the backward gives the gradient of x only,
//! `dx = dy * scale`, which is this same op on dy with zero bias and zero mean (`shift` is then 0); with `relu`
//! dy first goes through ReLU's gradient at the output (`y > 0` exactly where the pre-activation is). Weight, bias,
//! mean and variance get no gradient, like the inputs of the box ops.

pub mod cpu;
pub mod launch;
pub mod parity;

use super::{Op, UnaryOp, require_float, same_dtype};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::FrozenBatchNorm { eps, .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            if !(eps.is_finite() && *eps >= 0.0) {
                return err(format!("eps must be finite and >= 0, got {eps}"));
            }
            let x = shapes[0];
            let Some(&c) = x.last() else {
                return err("needs x [..., C] of rank >= 1, got a scalar".into());
            };
            for (i, what) in [(1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")] {
                if shapes[i] != [c] {
                    return err(format!("{what} shape {:?} is not [{c}] (x {x:?})", shapes[i]));
                }
            }
            Ok((x.to_vec(), d))
        }
        _ => err("not a frozen_bn op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    match op {
        Op::FrozenBatchNorm { eps, relu } => {
            let dx = if needs[0] {
                let c = g.shape(ins[1])[0];
                let zeros = g.fill(0.0, &[c], g.dtype(ins[1]));
                let dz = if *relu { g.push(Op::UnaryBwd(UnaryOp::Relu), &[id, dy])? } else { dy };
                Some(g.push(Op::FrozenBatchNorm { eps: *eps, relu: false }, &[dz, ins[1], zeros, zeros, ins[4]])?)
            } else {
                None
            };
            Ok(vec![dx, None, None, None, None])
        }
        _ => super::err(op, "not a frozen_bn op".into()),
    }
}
