//! Graph-building entry points for RoI pooling and detection losses: RoI Align on one feature map, the FPN
//! level mapper, multi-level RoI Align over an FPN (torchvision's `MultiScaleRoIAlign`), the sigmoid focal
//! loss and the GIoU loss. Features are NHWC; RoIs are f32 [K, 5] = (batch_index, x1, y1, x2, y2) in input
//! image pixels.

use crate::error::{Error, Result};
use crate::graph::{BinaryOp, Graph, NodeId, Op};
use crate::tensor::DType;

/// RoI Align of `rois` on `feat` [N, H, W, C] -> [K, out_h, out_w, C] (torchvision.ops.roi_align).
pub fn roi_align(
    g: &mut Graph,
    feat: NodeId,
    rois: NodeId,
    (out_h, out_w): (usize, usize),
    spatial_scale: f32,
    sampling_ratio: i32,
    aligned: bool,
) -> Result<NodeId> {
    g.push(Op::RoiAlign { out_h, out_w, spatial_scale, sampling_ratio, aligned }, &[feat, rois])
}

/// Multi-level RoI Align, as torchvision.ops.MultiScaleRoIAlign: each RoI is pooled from the FPN level the
/// level mapper assigns it. Defaults are torchvision's Faster R-CNN box head (7x7, sampling ratio 2, not
/// aligned, canonical scale 224 at level 4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MultiScaleRoiAlign {
    pub out_h: usize,
    pub out_w: usize,
    pub sampling_ratio: i32,
    pub aligned: bool,
    pub canonical_scale: f32,
    pub canonical_level: i32,
    pub eps: f32,
}

impl Default for MultiScaleRoiAlign {
    fn default() -> Self {
        MultiScaleRoiAlign {
            out_h: 7,
            out_w: 7,
            sampling_ratio: 2,
            aligned: false,
            canonical_scale: 224.0,
            canonical_level: 4,
            eps: 1e-6,
        }
    }
}

/// The FPN level (0 = the finest of `k_min..=k_max`) of each RoI [K, 5] (or box [K, 4]) -> i64 [K], with
/// torchvision's canonical scale 224 at level 4. (mmdet's `finest_scale = 56` mapper is `Op::FpnLevels` with
/// canonical_scale 56 and canonical_level = k_min.)
pub fn fpn_levels(g: &mut Graph, rois: NodeId, k_min: i32, k_max: i32) -> Result<NodeId> {
    g.push(Op::FpnLevels { k_min, k_max, canonical_scale: 224.0, canonical_level: 4, eps: 1e-6 }, &[rois])
}

/// `log2` of a power-of-two scale such as 1/4, or an error.
fn level_of(scale: f32) -> Result<i32> {
    let l = -scale.log2();
    if !(l.is_finite() && (l - l.round()).abs() < 1e-6) {
        return Err(Error::graph("multi_scale_roi_align", format!("scale {scale} is not a power of two")));
    }
    Ok(l.round() as i32)
}

impl MultiScaleRoiAlign {
    /// Pools `rois` [K, 5] from `feats` (finest first, NHWC, the same N and C) whose scales relative to the
    /// input image are `scales` (powers of two, halving level to level, e.g. 1/4, 1/8, 1/16, 1/32) ->
    /// [K, out_h, out_w, C]. The graph is static: level l aligns a copy of the RoIs in which those assigned to
    /// another level have batch index -1 (RoI Align skips them and writes zeros, forward and backward), and the
    /// L results are summed, so each RoI is sampled on its own level alone, as torchvision's gather/scatter,
    /// without data-dependent shapes. Differentiable w.r.t. the features.
    pub fn apply(&self, g: &mut Graph, feats: &[NodeId], scales: &[f32], rois: NodeId) -> Result<NodeId> {
        if feats.is_empty() || feats.len() != scales.len() {
            return Err(Error::graph(
                "multi_scale_roi_align",
                format!("{} feature maps and {} scales", feats.len(), scales.len()),
            ));
        }
        let (k_min, k_max) = (level_of(scales[0])?, level_of(scales[scales.len() - 1])?);
        if (k_max - k_min) as usize + 1 != feats.len() {
            return Err(Error::graph("multi_scale_roi_align", format!("scales {scales:?} are not consecutive levels")));
        }
        let align = |g: &mut Graph, f: NodeId, s: f32, rois: NodeId| {
            let op = Op::RoiAlign {
                out_h: self.out_h,
                out_w: self.out_w,
                spatial_scale: s,
                sampling_ratio: self.sampling_ratio,
                aligned: self.aligned,
            };
            g.push(op, &[f, rois])
        };
        if feats.len() == 1 {
            return align(g, feats[0], scales[0], rois);
        }
        let op = Op::FpnLevels {
            k_min,
            k_max,
            canonical_scale: self.canonical_scale,
            canonical_level: self.canonical_level,
            eps: self.eps,
        };
        let levels = g.push(op, &[rois])?;
        let k = g.shape(rois)[0];
        let levels = g.cast(levels, DType::F32)?;
        let levels = g.reshape(levels, &[k, 1])?;
        let batch_index = g.slice(rois, 1, 0, 1)?; // (K, 1)
        let boxes = g.slice(rois, 1, 1, 5)?; // (K, 4)
        let batch_plus_one = g.affine(batch_index, 1.0, 1.0)?;
        let mut out = None;
        for (l, (&f, &s)) in feats.iter().zip(scales).enumerate() {
            // batch index where the RoI's level is l, else -1: mask * (b + 1) - 1, exact for small integers.
            let want = g.fill(l as f32, &[1], DType::F32);
            let mask = g.binary(BinaryOp::Eq, levels, want)?;
            let b = g.mul(mask, batch_plus_one)?;
            let b = g.affine(b, 1.0, -1.0)?;
            let level_rois = g.concat(&[b, boxes], 1)?;
            let y = align(g, f, s, level_rois)?;
            out = Some(match out {
                None => y,
                Some(acc) => g.add(acc, y)?,
            });
        }
        Ok(out.expect("at least two levels"))
    }
}

/// Elementwise sigmoid focal loss (torchvision.ops.sigmoid_focal_loss, reduction none); `alpha < 0` disables
/// the weighting. Differentiable w.r.t. the logits.
pub fn sigmoid_focal_loss(g: &mut Graph, logits: NodeId, targets: NodeId, alpha: f32, gamma: f32) -> Result<NodeId> {
    g.push(Op::SigmoidFocalLoss { alpha, gamma }, &[logits, targets])
}

/// 1 - GIoU per box pair [..., 4] -> [...] (torchvision.ops.generalized_box_iou_loss, reduction none, eps
/// 1e-7). Differentiable w.r.t. `pred`.
pub fn giou_loss(g: &mut Graph, pred: NodeId, target: NodeId) -> Result<NodeId> {
    g.push(Op::GiouLoss { eps: 1e-7 }, &[pred, target])
}

/// RoIs [K, 5] for one image's boxes [K, 4]: a zero batch-index column, then the boxes (f32).
pub fn boxes_to_rois(g: &mut Graph, boxes: NodeId) -> Result<NodeId> {
    let k = g.shape(boxes)[0];
    let b = if g.dtype(boxes) == DType::F32 { boxes } else { g.cast(boxes, DType::F32)? };
    let zero = g.fill(0.0, &[k, 1], DType::F32);
    g.concat(&[zero, b], 1)
}
