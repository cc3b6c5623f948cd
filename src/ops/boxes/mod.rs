//! Box ops (`kernels/boxes.cu`, `kernels/topk.cu`): IoU, box coding, NMS, top-k, gather (and its backward).
//! The CPU code calls the host algorithms of `crate::boxes`.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
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
        Op::BoxIou { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (a, b) = (shapes[0], shapes[1]);
            let (ra, rb) = (a.len(), b.len());
            if ra < 2 || ra != rb || a[ra - 1] != 4 || b[rb - 1] != 4 || a[..ra - 2] != b[..rb - 2] {
                return err(format!("needs boxes [..., N, 4] and [..., M, 4] with the same leading axes, got {a:?} and {b:?}"));
            }
            let mut out = a[..ra - 1].to_vec();
            out.push(b[rb - 2]);
            Ok((out, d))
        }
        Op::BoxEncode { .. } | Op::BoxDecode { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (r, t) = (shapes[0], shapes[1]);
            let enc = matches!(op, Op::BoxEncode { .. });
            let ok = r.len() == 2
                && r[1] == 4
                && t.len() == 2
                && t[0] == r[0]
                && if enc { t[1] == 4 } else { t[1] % 4 == 0 };
            if !ok {
                let want = if enc { "[N, 4] and [N, 4]" } else { "[N, 4] and [N, 4K]" };
                return err(format!("needs {want}, got {r:?} and {t:?}"));
            }
            Ok((t.to_vec(), d))
        }
        Op::Nms { .. } => {
            let (b, s, c) = (shapes[0], shapes[1], shapes[2]);
            if dtypes[0] != DType::F32 || !dtypes[1].is_float() || !matches!(dtypes[2], DType::I32 | DType::I64) {
                return err(format!("needs f32 boxes, float scores and i32/i64 classes, got {dtypes:?}"));
            }
            if b.len() != 2 || b[1] != 4 || s != [b[0]] || c != [b[0]] {
                return err(format!("needs boxes [N, 4], scores [N], classes [N], got {b:?}, {s:?}, {c:?}"));
            }
            let Op::Nms { max_out, .. } = op else { unreachable!() };
            Ok((vec![max_out + 1], DType::I64))
        }
        Op::TopK { k } => {
            require_float(op, dtypes)?;
            let s = shapes[0];
            match s.last() {
                Some(&n) if *k <= n => {
                    let mut out = s.to_vec();
                    *out.last_mut().unwrap() = *k;
                    Ok((out, DType::I64))
                }
                _ => err(format!("k = {k} needs a last axis of at least k, got {s:?}")),
            }
        }
        Op::Gather { axis } => {
            let (x, idx) = (shapes[0], shapes[1]);
            if !matches!(dtypes[1], DType::I32 | DType::I64) {
                return err(format!("indices must be i32 or i64, got {}", dtypes[1]));
            }
            check_axis(op, *axis, x.len(), x)?;
            if idx.len() != x.len() || idx.iter().zip(x).enumerate().any(|(d, (i, s))| d != *axis && i > s) {
                return err(format!("indices {idx:?} must have the rank of {x:?} and no larger size off axis {axis}"));
            }
            Ok((idx.to_vec(), dtypes[0]))
        }
        Op::GatherBwd { axis, size } => {
            let (idx, dy) = (shapes[0], shapes[1]);
            if !matches!(dtypes[0], DType::I32 | DType::I64) {
                return err(format!("indices must be i32 or i64, got {}", dtypes[0]));
            }
            require_float(op, &dtypes[1..])?;
            check_axis(op, *axis, dy.len(), dy)?;
            if idx != dy {
                return err(format!("indices {idx:?} and dy {dy:?} differ in shape"));
            }
            let mut out = dy.to_vec();
            out[*axis] = *size;
            Ok((out, dtypes[1]))
        }
        _ => err("not a boxes op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, _needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    Ok(match op {
        Op::BoxIou { .. } | Op::BoxEncode { .. } | Op::BoxDecode { .. } => vec![None, None],
        Op::Nms { .. } => vec![None, None, None],
        Op::TopK { .. } => vec![None],
        Op::Gather { axis } => {
            // Scatter-add into x's size along the axis, then zero-pad the other axes where idx is smaller.
            let xs = shape_of(g, 0);
            let mut dx = g.push(Op::GatherBwd { axis: *axis, size: xs[*axis] }, &[ins[1], dy])?;
            for (d, &n) in xs.iter().enumerate() {
                let have = g.shape(dx)[d];
                if have < n {
                    dx = g.pad(dx, d, 0, n - have)?;
                }
            }
            vec![Some(dx), None]
        }
        Op::GatherBwd { .. } => {
            return no_second_order(op);
        }
        _ => return super::err(op, "not a boxes op".into()),
    })
}
