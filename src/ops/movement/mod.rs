//! Data movement (`kernels/movement.cu`): reshape, permute, broadcast, concat, slice, pad; and the leaves
//! `Input` and `Param` (no kernel: the executor supplies their data).
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
pub mod launch;
pub mod parity;

use super::{Op, same_dtype, check_axis, broadcast_shapes};
use crate::error::Result;
use crate::graph::autodiff::sum_to_shape;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::Input { .. } | Op::Param { .. } => err("leaf ops are made by Graph::input/param/fill".into()),
        Op::StopGradient => Ok((shapes[0].to_vec(), dtypes[0])),
        Op::Reshape { shape } => {
            let (a, b) = (crate::tensor::numel(shapes[0]), crate::tensor::numel(shape));
            if a != b {
                return err(format!("cannot reshape {:?} ({a} elements) to {shape:?} ({b} elements)", shapes[0]));
            }
            Ok((shape.clone(), dtypes[0]))
        }
        Op::Permute { perm } => {
            let s = shapes[0];
            let mut seen = vec![false; s.len()];
            if perm.len() != s.len() || perm.iter().any(|&p| p >= s.len() || std::mem::replace(&mut seen[p], true)) {
                return err(format!("{perm:?} is not a permutation of the axes of {s:?}"));
            }
            Ok((perm.iter().map(|&p| s[p]).collect(), dtypes[0]))
        }
        Op::BroadcastTo { shape } => match broadcast_shapes(shapes[0], shape) {
            Some(s) if &s == shape => Ok((shape.clone(), dtypes[0])),
            _ => err(format!("cannot broadcast {:?} to {shape:?}", shapes[0])),
        },
        Op::Concat { axis } => {
            let d = same_dtype(op, dtypes)?;
            let s0 = shapes[0];
            check_axis(op, *axis, s0.len(), s0)?;
            let mut out = s0.to_vec();
            for s in &shapes[1..] {
                let ok = s.len() == s0.len() && s.iter().zip(s0).enumerate().all(|(i, (a, b))| i == *axis || a == b);
                if !ok {
                    return err(format!("input shapes {shapes:?} differ off axis {axis}"));
                }
                out[*axis] += s[*axis];
            }
            Ok((out, d))
        }
        Op::Slice { axis, start, end } => {
            let s = shapes[0];
            check_axis(op, *axis, s.len(), s)?;
            if start > end || *end > s[*axis] {
                return err(format!("range {start}..{end} out of bounds for axis {axis} of {s:?}"));
            }
            let mut out = s.to_vec();
            out[*axis] = end - start;
            Ok((out, dtypes[0]))
        }
        Op::Pad { axis, before, after } => {
            let s = shapes[0];
            check_axis(op, *axis, s.len(), s)?;
            let mut out = s.to_vec();
            out[*axis] += before + after;
            Ok((out, dtypes[0]))
        }
        _ => err("not a movement op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    Ok(match op {
        Op::Input { .. } | Op::Param { .. } => vec![],
        Op::StopGradient => vec![None],
        Op::Reshape { .. } => {
            let s = shape_of(g, 0);
            vec![Some(g.reshape(dy, &s)?)]
        }
        Op::Permute { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(g.permute(dy, &inv)?)]
        }
        Op::BroadcastTo { .. } => {
            let s = shape_of(g, 0);
            vec![Some(sum_to_shape(g, dy, &s)?)]
        }
        Op::Concat { axis } => {
            let mut start = 0;
            let mut v = Vec::with_capacity(ins.len());
            for i in 0..ins.len() {
                let len = g.shape(ins[i])[*axis];
                v.push(if needs[i] { Some(g.slice(dy, *axis, start, start + len)?) } else { None });
                start += len;
            }
            v
        }
        Op::Slice { axis, start, end } => {
            let dim = g.shape(ins[0])[*axis];
            vec![Some(g.pad(dy, *axis, *start, dim - end)?)]
        }
        Op::Pad { axis, before, .. } => {
            let dim = g.shape(ins[0])[*axis];
            vec![Some(g.slice(dy, *axis, *before, before + dim)?)]
        }
        _ => return super::err(op, "not a movement op".into()),
    })
}
