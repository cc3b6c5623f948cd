//! Group norm with an optional fused SiLU (`kernels/groupnorm.cu`), and its backward op.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
pub(crate) mod fast;
pub mod launch;
pub mod parity;

use super::UnaryOp;
use super::{Op, require_float, same_dtype, no_second_order};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::GroupNorm { groups, .. } | Op::GroupNormBwd { groups, .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let x = shapes[0];
            if x.len() < 2 {
                return err(format!("needs x [N, ..., C] of rank >= 2, got {x:?}"));
            }
            let c = x[x.len() - 1];
            if *groups == 0 || c % groups != 0 {
                return err(format!("{c} channels do not split into {groups} groups"));
            }
            if shapes[1] != [c] || shapes[2] != [c] {
                return err(format!("weight/bias shapes {:?}/{:?} are not [{c}]", shapes[1], shapes[2]));
            }
            if shapes.len() == 4 && shapes[3] != x {
                return err(format!("dy shape {:?} differs from x shape {x:?}", shapes[3]));
            }
            Ok((x.to_vec(), d))
        }
        _ => err("not a groupnorm op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    Ok(match op {
        Op::GroupNorm { groups, eps, silu } => {
            let (groups, eps, silu) = (*groups, *eps, *silu);
            let (x, w, b) = (ins[0], ins[1], ins[2]);
            let dx = if needs[0] { Some(g.push(Op::GroupNormBwd { groups, eps, silu }, &[x, w, b, dy])?) } else { None };
            let (dw, db) = if needs[1] || needs[2] {
                // xhat = GroupNorm(x, 1, 0); gz = dy * silu'(xhat * w + b) (or dy);
                // dweight = sum(gz * xhat), dbias = sum(gz) over every axis but the channels.
                let xs = shape_of(g, 0);
                let c = xs[xs.len() - 1];
                let dt = g.dtype(x);
                let ones = g.fill(1.0, &[c], dt);
                let zeros = g.fill(0.0, &[c], dt);
                let xhat = g.push(Op::GroupNorm { groups, eps, silu: false }, &[x, ones, zeros])?;
                let gz = if silu {
                    let z = g.mul(xhat, w)?;
                    let z = g.add(z, b)?;
                    g.push(Op::UnaryBwd(UnaryOp::Silu), &[z, dy])?
                } else {
                    dy
                };
                let lead: Vec<usize> = (0..xs.len() - 1).collect();
                let t = g.mul(gz, xhat)?;
                let dw = if needs[1] { Some(g.sum(t, &lead, false)?) } else { None };
                let db = if needs[2] { Some(g.sum(gz, &lead, false)?) } else { None };
                (dw, db)
            } else {
                (None, None)
            };
            vec![dx, dw, db]
        }
        Op::GroupNormBwd { .. } => {
            return no_second_order(op);
        }
        _ => return super::err(op, "not a groupnorm op".into()),
    })
}
