//! Max pooling over NHWC feature maps (`kernels/pool.cu`): `MaxPool2d` (torch `F.max_pool2d` with
//! `ceil_mode=False`, dilation 1) and its gradient `MaxPool2dBwd`.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.
//!
//! The element a window picks is PyTorch's: the window is scanned row by row from its first in-bounds element
//! with a running max starting at -inf, and an element replaces it when it is larger or NaN (so the first of
//! tied maxima wins, a NaN propagates, and a window of -inf picks its first element). Padding is never picked.
//! The gradient of an output goes to the element it picked.

pub mod cpu;
pub mod launch;
pub mod parity;

use super::{Op, no_second_order, require_float, same_dtype};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Output side of a pooling window sweep: `(size + 2 * padding - kernel) / stride + 1`, or `None` when the
/// window does not fit.
pub fn out_size(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = size + 2 * padding;
    if kernel == 0 || stride == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

/// The (inclusive start, exclusive end) in-bounds input range of output position `o` along one axis.
pub fn window(o: usize, size: usize, kernel: usize, stride: usize, padding: usize) -> (usize, usize) {
    let start = (o * stride) as isize - padding as isize;
    let end = (start + kernel as isize).min(size as isize);
    (start.max(0) as usize, end.max(0) as usize)
}

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    let (kernel, stride, padding) = match op {
        Op::MaxPool2d { kernel, stride, padding } | Op::MaxPool2dBwd { kernel, stride, padding } => {
            (*kernel, *stride, *padding)
        }
        _ => return err("not a pool op".into()),
    };
    require_float(op, dtypes)?;
    let d = same_dtype(op, dtypes)?;
    let x = shapes[0];
    if x.len() != 4 {
        return err(format!("needs x [N, H, W, C], got {x:?}"));
    }
    if kernel == 0 || stride == 0 {
        return err("kernel and stride must be at least 1".into());
    }
    // PyTorch's rule: a window centred on the border still holds an input element.
    if 2 * padding > kernel {
        return err(format!("padding {padding} is more than half the kernel {kernel}"));
    }
    let (Some(ho), Some(wo)) = (out_size(x[1], kernel, stride, padding), out_size(x[2], kernel, stride, padding)) else {
        return err(format!("kernel {kernel} (padding {padding}) does not fit x {x:?}"));
    };
    let y = vec![x[0], ho, wo, x[3]];
    match op {
        Op::MaxPool2d { .. } => Ok((y, d)),
        _ => {
            if shapes[1] != y.as_slice() {
                return err(format!("dy shape {:?} is not the pooled shape {y:?} of x {x:?}", shapes[1]));
            }
            Ok((x.to_vec(), d))
        }
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    match op {
        Op::MaxPool2d { kernel, stride, padding } => {
            let dx = if needs[0] {
                let bwd = Op::MaxPool2dBwd { kernel: *kernel, stride: *stride, padding: *padding };
                Some(g.push(bwd, &[ins[0], dy])?)
            } else {
                None
            };
            Ok(vec![dx])
        }
        Op::MaxPool2dBwd { .. } => no_second_order(op),
        _ => super::err(op, "not a pool op".into()),
    }
}
