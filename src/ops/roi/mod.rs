//! RoI Align (`kernels/roi_align.cu`, with its backward op) and the FPN level of each RoI.
//! Spec here (shape and dtype rule, backward rule); CPU reference in `cpu.rs`, launcher in `launch.rs`, parity
//! and gradient-check cases in `parity.rs`.

pub mod cpu;
pub mod launch;
pub mod parity;

use super::{Op, require_float, no_second_order};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let err = |msg: String| -> Result<(Vec<usize>, DType)> { super::err(op, msg) };
    match op {
        Op::RoiAlign { out_h, out_w, .. } | Op::RoiAlignBwd { out_h, out_w, .. } => {
            let bwd = matches!(op, Op::RoiAlignBwd { .. });
            let (ri, di) = if bwd { (0, 1) } else { (1, 0) };
            let (rois, data) = (shapes[ri], shapes[di]);
            if dtypes[ri] != DType::F32 {
                return err(format!("rois must be f32 (box coordinates in f16/bf16 are too coarse), got {}", dtypes[ri]));
            }
            require_float(op, &dtypes[di..di + 1])?;
            if rois.len() != 2 || rois[1] != 5 {
                return err(format!("rois must be [K, 5], got {rois:?}"));
            }
            if *out_h == 0 || *out_w == 0 {
                return err("out_h and out_w must be positive".into());
            }
            if data.len() != 4 {
                return err(format!("{} must be rank 4, got {data:?}", if bwd { "dy" } else { "feat [N,H,W,C]" }));
            }
            if let Op::RoiAlignBwd { n, h, w, .. } = op {
                if data[..3] != [rois[0], *out_h, *out_w] {
                    return err(format!("dy {data:?} must be [K={}, {out_h}, {out_w}, C]", rois[0]));
                }
                Ok((vec![*n, *h, *w, data[3]], dtypes[di]))
            } else {
                Ok((vec![rois[0], *out_h, *out_w, data[3]], dtypes[di]))
            }
        }
        Op::FpnLevels { k_min, k_max, .. } => {
            require_float(op, dtypes)?;
            let s = shapes[0];
            if s.len() != 2 || (s[1] != 5 && s[1] != 4) {
                return err(format!("needs rois [K, 5] or boxes [K, 4], got {s:?}"));
            }
            if k_min > k_max {
                return err(format!("k_min {k_min} > k_max {k_max}"));
            }
            Ok((vec![s[0]], DType::I64))
        }
        _ => err("not a roi op".into()),
    }
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    Ok(match op {
        Op::RoiAlign { out_h, out_w, spatial_scale, sampling_ratio, aligned } => {
            // Linear in the features; the RoI coordinates get no gradient.
            let fs = shape_of(g, 0);
            let op = Op::RoiAlignBwd {
                out_h: *out_h,
                out_w: *out_w,
                spatial_scale: *spatial_scale,
                sampling_ratio: *sampling_ratio,
                aligned: *aligned,
                n: fs[0],
                h: fs[1],
                w: fs[2],
            };
            vec![if needs[0] { Some(g.push(op, &[ins[1], dy])?) } else { None }, None]
        }
        Op::FpnLevels { .. } => vec![None],
        Op::RoiAlignBwd { .. } => return no_second_order(op),
        _ => return super::err(op, "not a roi op".into()),
    })
}
