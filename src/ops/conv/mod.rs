//! 2-D convolution (`kernels/conv.cu`) and its two backward ops.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
pub mod fast;
pub mod launch;
pub mod parity;

use super::{Op, require_float, same_dtype};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::Conv2d { .. } | Op::Conv2dBwdData { .. } | Op::Conv2dBwdWeight { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (a, b) = (shapes[0], shapes[1]);
            if a.len() != 4 || b.len() != 4 {
                return err(format!("needs rank-4 inputs, got {a:?} and {b:?}"));
            }
            // Output size along one axis: (size + 2*padding - k) / stride + 1.
            let out = |size: usize, k: usize, stride: usize, padding: usize| -> Result<usize> {
                if stride == 0 || k == 0 || size + 2 * padding < k {
                    return Err(Error::graph(
                        op.describe(),
                        format!("a {k}-wide kernel (stride {stride}, padding {padding}) does not fit size {size}"),
                    ));
                }
                Ok((size + 2 * padding - k) / stride + 1)
            };
            match *op {
                Op::Conv2d { stride, padding, bias } => {
                    // (x [N,H,W,C], w [O,C,kh,kw][, bias [O]])
                    if a[3] != b[1] {
                        return err(format!("x {a:?} has {} channels but w {b:?} expects {}", a[3], b[1]));
                    }
                    if bias && shapes[2] != [b[0]] {
                        return err(format!("bias shape {:?} is not [{}]", shapes[2], b[0]));
                    }
                    Ok((vec![a[0], out(a[1], b[2], stride, padding)?, out(a[2], b[3], stride, padding)?, b[0]], d))
                }
                Op::Conv2dBwdData { stride, padding, h, w } => {
                    // (dy [N,Ho,Wo,O], w [O,C,kh,kw])
                    let (ho, wo) = (out(h, b[2], stride, padding)?, out(w, b[3], stride, padding)?);
                    if a[1..] != [ho, wo, b[0]] {
                        return err(format!("dy {a:?} does not match a {h}x{w} input convolved with w {b:?}"));
                    }
                    Ok((vec![a[0], h, w, b[1]], d))
                }
                Op::Conv2dBwdWeight { stride, padding, kh, kw } => {
                    // (x [N,H,W,C], dy [N,Ho,Wo,O])
                    let (ho, wo) = (out(a[1], kh, stride, padding)?, out(a[2], kw, stride, padding)?);
                    if a[0] != b[0] || b[1] != ho || b[2] != wo {
                        return err(format!("dy {b:?} does not match x {a:?} convolved with a {kh}x{kw} kernel"));
                    }
                    Ok((vec![b[3], a[3], kh, kw], d))
                }
                _ => unreachable!(),
            }
        }
        _ => err("not a conv op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    Ok(match op {
        Op::Conv2d { stride, padding, bias } => {
            let (x, w) = (ins[0], ins[1]);
            let (xs, ws) = (shape_of(g, 0), shape_of(g, 1));
            let (stride, padding) = (*stride, *padding);
            let dx = if needs[0] {
                Some(g.push(Op::Conv2dBwdData { stride, padding, h: xs[1], w: xs[2] }, &[dy, w])?)
            } else {
                None
            };
            let dw = if needs[1] {
                Some(g.push(Op::Conv2dBwdWeight { stride, padding, kh: ws[2], kw: ws[3] }, &[x, dy])?)
            } else {
                None
            };
            let mut v = vec![dx, dw];
            if *bias {
                v.push(if needs[2] { Some(g.sum(dy, &[0, 1, 2], false)?) } else { None });
            }
            v
        }
        // Both backward ops are linear in each input, so their gradients are convolutions again.
        Op::Conv2dBwdData { stride, padding, .. } => {
            // dx = BwdData(dy, w): d dy = Conv2d(G, w), d w = BwdWeight(G, dy).
            let (dyin, w) = (ins[0], ins[1]);
            let ws = shape_of(g, 1);
            let (stride, padding) = (*stride, *padding);
            let a = if needs[0] { Some(g.push(Op::Conv2d { stride, padding, bias: false }, &[dy, w])?) } else { None };
            let b = if needs[1] {
                Some(g.push(Op::Conv2dBwdWeight { stride, padding, kh: ws[2], kw: ws[3] }, &[dy, dyin])?)
            } else {
                None
            };
            vec![a, b]
        }
        Op::Conv2dBwdWeight { stride, padding, .. } => {
            // dw = BwdWeight(x, dy): d x = BwdData(dy, G), d dy = Conv2d(x, G).
            let (x, dyin) = (ins[0], ins[1]);
            let xs = shape_of(g, 0);
            let (stride, padding) = (*stride, *padding);
            let a = if needs[0] {
                Some(g.push(Op::Conv2dBwdData { stride, padding, h: xs[1], w: xs[2] }, &[dyin, dy])?)
            } else {
                None
            };
            let b = if needs[1] { Some(g.push(Op::Conv2d { stride, padding, bias: false }, &[x, dy])?) } else { None };
            vec![a, b]
        }
        _ => return super::err(op, "not a conv op".into()),
    })
}
