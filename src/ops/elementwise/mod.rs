//! Elementwise ops (`kernels/elementwise.cu`): unary functions and their derivatives, broadcasting binary ops,
//! fill and cast.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
pub(crate) mod fast;
pub mod launch;
pub mod parity;

use super::{Op, require_float, same_dtype, broadcast_shapes, no_second_order};
use crate::error::Result;
use crate::graph::autodiff::sum_to_shape;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Elementwise functions of one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Abs,
    Square,
    Tanh,
    Sigmoid,
    Relu,
    /// GELU with the exact erf form (PyTorch's default, used by SD's GEGLU).
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    Silu,
    Sin,
    Cos,
    /// `y = mul * x + add`.
    Affine { mul: f32, add: f32 },
    /// `y = x ^ p` (x > 0 where p is not an integer).
    Powf(f32),
    /// `x * sigmoid(1.702 x)` (CLIP's quick GELU).
    QuickGelu,
}

impl UnaryOp {
    /// One instance of every unary op (parameterised ones with example parameters), for tests.
    pub const EXAMPLES: [UnaryOp; 19] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Abs,
        UnaryOp::Square,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Affine { mul: -1.5, add: 0.25 },
        UnaryOp::Powf(2.5),
        UnaryOp::QuickGelu,
    ];
}

/// Elementwise functions of two tensors with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    /// 1 where `a == b`, else 0 (not differentiable).
    Eq,
    /// 1 where `a > b`, else 0 (not differentiable).
    Gt,
    /// 1 where `a >= b`, else 0 (not differentiable).
    Ge,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::Gt | BinaryOp::Ge)
    }
}

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::Fill { .. } => err("leaf ops are made by Graph::input/param/fill".into()),
        Op::Unary(_) => {
            require_float(op, dtypes)?;
            Ok((shapes[0].to_vec(), dtypes[0]))
        }
        Op::UnaryBwd(_) => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            if shapes[0] != shapes[1] {
                return err(format!("shape mismatch: {:?} vs {:?}", shapes[0], shapes[1]));
            }
            Ok((shapes[0].to_vec(), d))
        }
        Op::Binary(_) => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            match broadcast_shapes(shapes[0], shapes[1]) {
                Some(s) => Ok((s, d)),
                None => err(format!("shapes {:?} and {:?} do not broadcast", shapes[0], shapes[1])),
            }
        }
        Op::Cast { dtype } => Ok((shapes[0].to_vec(), *dtype)),
        _ => err("not a elementwise op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    Ok(match op {
        Op::Fill { .. } => vec![],
        Op::Unary(u) => vec![Some(match u {
            UnaryOp::Neg => g.unary(UnaryOp::Neg, dy)?,
            UnaryOp::Affine { mul, .. } => g.scale(dy, *mul)?,
            _ => g.push(Op::UnaryBwd(*u), &[ins[0], dy])?,
        })],
        Op::Binary(b) => {
            let (a, bb) = (ins[0], ins[1]);
            let (sa, sb) = (shape_of(g, 0), shape_of(g, 1));
            let (da, db) = match b {
                BinaryOp::Add => (dy, dy),
                BinaryOp::Sub => (dy, g.unary(UnaryOp::Neg, dy)?),
                BinaryOp::Mul => (g.mul(dy, bb)?, g.mul(dy, a)?),
                BinaryOp::Div => {
                    let da = g.div(dy, bb)?;
                    // d(a/b)/db = -a/b^2 = -(a/b)/b, with a/b the forward output.
                    let t = g.div(id, bb)?;
                    let t = g.mul(dy, t)?;
                    (da, g.unary(UnaryOp::Neg, t)?)
                }
                BinaryOp::Max | BinaryOp::Min => {
                    // Ties go to `a`.
                    let (ma, mb) = if *b == BinaryOp::Max {
                        (g.binary(BinaryOp::Ge, a, bb)?, g.binary(BinaryOp::Gt, bb, a)?)
                    } else {
                        (g.binary(BinaryOp::Ge, bb, a)?, g.binary(BinaryOp::Gt, a, bb)?)
                    };
                    (g.mul(dy, ma)?, g.mul(dy, mb)?)
                }
                BinaryOp::Eq | BinaryOp::Gt | BinaryOp::Ge => return Ok(vec![None, None]),
            };
            let da = if needs[0] { Some(sum_to_shape(g, da, &sa)?) } else { None };
            let db = if needs[1] { Some(sum_to_shape(g, db, &sb)?) } else { None };
            vec![da, db]
        }
        Op::Cast { .. } => {
            let d = g.dtype(ins[0]);
            if !d.is_float() {
                return Ok(vec![None]);
            }
            vec![Some(g.cast(dy, d)?)]
        }
        Op::UnaryBwd(_) => return no_second_order(op),
        _ => return super::err(op, "not a elementwise op".into()),
    })
}
