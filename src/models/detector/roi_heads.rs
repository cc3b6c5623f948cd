//! The box branch of torchvision's Faster R-CNN `RoIHeads` (`models/detection/roi_heads.py`): multi-scale RoI
//! Align, `TwoMLPHead`, `FastRCNNPredictor` as graph nodes; training targets, the two losses, and inference
//! post-processing.
//!
//! The graph is static: a batch has `rows_per_image` RoI rows per image (`batch_size_per_image` = 512 in
//! training, the RPN's `post_nms_top_n` in evaluation), fed as [`ROI_ROIS`] `[B * rows, 5]`; an image with
//! fewer RoIs fills its rows with batch index -1, which pools zeros, and its loss weights are 0.
//!
//! Per-source loss rule: `class_mask[i]` (`num_classes` values, 1 = takes part; background must be 1) removes
//! the masked-out logits of image i from its softmax, so the classification loss of a RoI of that image is the
//! cross-entropy among the allowed classes only. With every mask 1 the losses are torchvision's
//! `fastrcnn_loss`: the mean cross-entropy over the sampled RoIs and the smooth-L1 (beta 1/9) sum over the
//! positives divided by the number sampled.

use serde::{Deserialize, Serialize};

use super::rpn::{batched_nms, check_gt_boxes, check_sample, clip_box, iou_gt, is_large_enough, match_boxes, sample, smooth_l1, Proposals, Sampled};
use crate::boxes::{BoxCoder, BBOX_XFORM_CLIP};
use crate::detection::roi::MultiScaleRoiAlign;
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, ReduceOp, UnaryOp};
use crate::nn::linear;
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// RoI head settings; the defaults are torchvision's `fasterrcnn_resnet50_fpn` (COCO: 91 classes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoiHeadsConfig {
    /// Classes including the background (index 0), as torchvision's `num_classes`.
    pub num_classes: usize,
    /// Width of `TwoMLPHead` (fc6, fc7).
    pub representation_size: usize,
    /// RoI Align output side and sampling ratio.
    pub pool_size: usize,
    pub sampling_ratio: i32,
    /// Matcher thresholds: IoU >= fg is foreground, < bg background.
    pub fg_iou_thresh: f32,
    pub bg_iou_thresh: f32,
    /// RoIs sampled per image in training, and the fraction that may be positive.
    pub batch_size_per_image: usize,
    pub positive_fraction: f64,
    /// Box coder weights (x, y, w, h).
    pub bbox_reg_weights: [f32; 4],
    /// Inference: class probability threshold (strict), NMS IoU per class, detections per image.
    pub score_thresh: f32,
    pub nms_thresh: f32,
    pub detections_per_img: usize,
}

impl Default for RoiHeadsConfig {
    fn default() -> Self {
        RoiHeadsConfig {
            num_classes: 91,
            representation_size: 1024,
            pool_size: 7,
            sampling_ratio: 2,
            fg_iou_thresh: 0.5,
            bg_iou_thresh: 0.5,
            batch_size_per_image: 512,
            positive_fraction: 0.25,
            bbox_reg_weights: [10.0, 10.0, 5.0, 5.0],
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_img: 100,
        }
    }
}

/// torchvision's `RoIHeads.postprocess_detections`: boxes narrower or lower than this are dropped.
pub const ROI_MIN_SIZE: f32 = 1e-2;

/// Graph input names of the box head (fed by [`rois_tensor`] / [`roi_targets`]).
pub const ROI_ROIS: &str = "roi_heads.rois";
pub const ROI_CLASS_MASK: &str = "roi_heads.class_mask";
pub const ROI_CLASS_TARGET: &str = "roi_heads.class_target";
pub const ROI_BOX_TARGETS: &str = "roi_heads.box_targets";
pub const ROI_BOX_WEIGHT: &str = "roi_heads.box_weight";

impl RoiHeadsConfig {
    /// Checks the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::Other(format!("roi heads config: {field}: {msg}")));
        if self.num_classes < 2 {
            return bad("num_classes", format!("needs the background and at least one class, got {}", self.num_classes));
        }
        for (f, v) in [
            ("representation_size", self.representation_size),
            ("pool_size", self.pool_size),
            ("batch_size_per_image", self.batch_size_per_image),
            ("detections_per_img", self.detections_per_img),
        ] {
            if v == 0 {
                return bad(f, "must be at least 1".into());
            }
        }
        if !(0.0..=1.0).contains(&self.bg_iou_thresh) || !(self.bg_iou_thresh..=1.0).contains(&self.fg_iou_thresh) {
            return bad("fg_iou_thresh", format!("needs 0 <= bg_iou_thresh ({}) <= fg_iou_thresh ({}) <= 1", self.bg_iou_thresh, self.fg_iou_thresh));
        }
        if !(0.0..=1.0).contains(&self.positive_fraction) {
            return bad("positive_fraction", format!("must be in [0, 1], got {}", self.positive_fraction));
        }
        if self.bbox_reg_weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            return bad("bbox_reg_weights", format!("must be positive, got {:?}", self.bbox_reg_weights));
        }
        if !(0.0..=1.0).contains(&self.nms_thresh) {
            return bad("nms_thresh", format!("must be in [0, 1], got {}", self.nms_thresh));
        }
        if !self.score_thresh.is_finite() {
            return bad("score_thresh", format!("must be finite, got {}", self.score_thresh));
        }
        Ok(())
    }
    fn coder(&self) -> BoxCoder {
        BoxCoder { weights: self.bbox_reg_weights, clamp: BBOX_XFORM_CLIP }
    }
}

/// The box head's outputs, as graph nodes.
#[derive(Clone, Copy, Debug)]
pub struct BoxHead {
    /// f32 `[K, num_classes]`.
    pub class_logits: NodeId,
    /// f32 `[K, num_classes * 4]` (deltas per class, box coder weights `bbox_reg_weights`).
    pub box_regression: NodeId,
}

/// The RoI input [`ROI_ROIS`] `[rows, 5]` f32 (batch index, x1, y1, x2, y2), declared in stage `stage`.
pub fn rois_input(g: &mut Graph, rows: usize, stage: usize) -> Result<NodeId> {
    g.input_stage(ROI_ROIS, &[rows, 5], DType::F32, stage)
}

/// The box branch on `rois` `[K, 5]`: `MultiScaleRoIAlign` (pool_size, sampling_ratio, not aligned, level
/// mapper 224 at level 4) over `feats` (NHWC, finest first: P2..P5 for torchvision) of `strides` (4, 8, 16,
/// 32), then `TwoMLPHead` (`roi_heads.box_head.fc6`, `fc7`, ReLU after each; the pooled features are flattened
/// channel-major as PyTorch's NCHW `flatten(1)`, so torchvision's fc6 weight loads unchanged) and
/// `FastRCNNPredictor` (`roi_heads.box_predictor.cls_score`, `bbox_pred`).
pub fn box_head(g: &mut Graph, cfg: &RoiHeadsConfig, feats: &[NodeId], strides: &[usize], rois: NodeId) -> Result<BoxHead> {
    cfg.validate()?;
    if feats.is_empty() || feats.len() != strides.len() {
        return Err(Error::graph("box_head", format!("{} feature maps and {} strides", feats.len(), strides.len())));
    }
    let pool = MultiScaleRoiAlign {
        out_h: cfg.pool_size,
        out_w: cfg.pool_size,
        sampling_ratio: cfg.sampling_ratio,
        ..MultiScaleRoiAlign::default()
    };
    let scales: Vec<f32> = strides.iter().map(|&s| 1.0 / s as f32).collect();
    let x = pool.apply(g, feats, &scales, rois)?; // (K, P, P, C)
    let s = g.shape(x).to_vec();
    let (k, c) = (s[0], s[3]);
    let x = g.permute(x, &[0, 3, 1, 2])?; // (K, C, P, P)
    let x = g.reshape(x, &[k, c * cfg.pool_size * cfg.pool_size])?;
    let x = linear(g, "roi_heads.box_head.fc6", x, cfg.representation_size, true)?;
    let x = g.unary(UnaryOp::Relu, x)?;
    let x = linear(g, "roi_heads.box_head.fc7", x, cfg.representation_size, true)?;
    let x = g.unary(UnaryOp::Relu, x)?;
    let mut class_logits = linear(g, "roi_heads.box_predictor.cls_score", x, cfg.num_classes, true)?;
    let mut box_regression = linear(g, "roi_heads.box_predictor.bbox_pred", x, 4 * cfg.num_classes, true)?;
    if g.dtype(class_logits) != DType::F32 {
        class_logits = g.cast(class_logits, DType::F32)?;
        box_regression = g.cast(box_regression, DType::F32)?;
    }
    Ok(BoxHead { class_logits, box_regression })
}

/// The [`ROI_ROIS`] tensor for inference: image i's proposals in rows `i * rows_per_image ..`, the rest of
/// its rows batch index -1 (pooled as zeros).
pub fn rois_tensor(proposals: &[Proposals], rows_per_image: usize) -> Result<HostTensor> {
    let boxes: Vec<&[[f32; 4]]> = proposals.iter().map(|p| p.boxes.as_slice()).collect();
    rois_from(&boxes, rows_per_image)
}

fn rois_from(boxes: &[&[[f32; 4]]], rows: usize) -> Result<HostTensor> {
    let mut v = vec![0f32; boxes.len() * rows * 5];
    for (i, bs) in boxes.iter().enumerate() {
        if bs.len() > rows {
            return Err(Error::Other(format!("roi heads: image {i} has {} RoIs but the graph has {rows} rows per image", bs.len())));
        }
        for r in 0..rows {
            let row = &mut v[(i * rows + r) * 5..(i * rows + r + 1) * 5];
            match bs.get(r) {
                Some(b) => {
                    row[0] = i as f32;
                    row[1..].copy_from_slice(b);
                }
                None => row[0] = -1.0,
            }
        }
    }
    HostTensor::from_f32(&[boxes.len() * rows, 5], DType::F32, &v)
}

/// The RoI losses (torchvision's `loss_classifier`, `loss_box_reg`), each `[]` f32.
#[derive(Clone, Copy, Debug)]
pub struct RoiLosses {
    pub classifier: NodeId,
    pub box_reg: NodeId,
}

/// The RoI losses on `head` for `batch` images (K = batch x rows per image), with the inputs
/// [`ROI_CLASS_MASK`] `[B, 1, C]`, [`ROI_CLASS_TARGET`] `[K, C]` (one-hot times the RoI's weight),
/// [`ROI_BOX_TARGETS`] `[K, 1, 4]` and [`ROI_BOX_WEIGHT`] `[K, C, 1]` (the weight at a positive's class)
/// declared in stage `stage` and filled by [`roi_targets`]. Classification: `-sum(target * log_softmax)` where
/// the softmax of image i runs over its unmasked classes only (masked logits are replaced by -1e9 before it,
/// so they get no gradient); box: `sum(weight * smooth_l1(regression[class] - target, 1/9))`.
pub fn roi_losses(g: &mut Graph, head: &BoxHead, batch: usize, stage: usize) -> Result<RoiLosses> {
    let s = g.shape(head.class_logits).to_vec();
    let (k, c) = (s[0], s[1]);
    if batch == 0 || k % batch != 0 {
        return Err(Error::graph("roi_losses", format!("{k} RoI rows do not split into {batch} images")));
    }
    let rows = k / batch;
    let mask = g.input_stage(ROI_CLASS_MASK, &[batch, 1, c], DType::F32, stage)?;
    let target = g.input_stage(ROI_CLASS_TARGET, &[k, c], DType::F32, stage)?;
    let box_t = g.input_stage(ROI_BOX_TARGETS, &[k, 1, 4], DType::F32, stage)?;
    let box_w = g.input_stage(ROI_BOX_WEIGHT, &[k, c, 1], DType::F32, stage)?;
    let logits = g.reshape(head.class_logits, &[batch, rows, c])?; // (B, S, C)
    let kept = g.mul(logits, mask)?;
    let off = g.affine(mask, 1e9, -1e9)?; // 0 where allowed, -1e9 where masked
    let lm = g.add(kept, off)?;
    let m = g.reduce(ReduceOp::Max, lm, &[2], true)?; // (B, S, 1)
    let z = g.sub(lm, m)?;
    let e = g.unary(UnaryOp::Exp, z)?;
    let se = g.sum(e, &[2], true)?;
    let lse = g.unary(UnaryOp::Log, se)?;
    let logp = g.sub(z, lse)?; // (B, S, C)
    let logp = g.reshape(logp, &[k, c])?;
    let picked = g.mul(logp, target)?;
    let total = g.sum_all(picked)?;
    let classifier = g.scale(total, -1.0)?;
    let reg = g.reshape(head.box_regression, &[k, c, 4])?;
    let d = g.sub(reg, box_t)?; // (K, C, 4)
    let l1 = smooth_l1(g, d, 1.0 / 9.0)?;
    let l1 = g.mul(l1, box_w)?;
    let box_reg = g.sum_all(l1)?;
    Ok(RoiLosses { classifier, box_reg })
}

/// One batch's RoI training inputs.
#[derive(Clone, Debug)]
pub struct RoiTargets {
    /// [`ROI_ROIS`] `[B * batch_size_per_image, 5]`: image i's sampled RoIs (ascending index in proposals ++
    /// ground truth) in its rows, then padding.
    pub rois: HostTensor,
    /// The loss inputs ([`ROI_CLASS_MASK`], [`ROI_CLASS_TARGET`], [`ROI_BOX_TARGETS`], [`ROI_BOX_WEIGHT`]).
    pub feed: Vec<(String, HostTensor)>,
    /// Per image: the sample (indices into its proposals followed by its ground-truth boxes).
    pub samples: Vec<Sampled>,
    /// Per image: the class label of each sampled RoI (0 background), in row order.
    pub labels: Vec<Vec<i64>>,
}

/// torchvision's `select_training_samples` for a batch: ground-truth boxes appended to each image's
/// proposals, Matcher(fg, bg, no low-quality matches), labels from `gt_labels` (1..num_classes-1), the balanced
/// sample (`given[i]` when supplied, checked against the labels; else drawn with `rng`), box targets encoded with
/// `bbox_reg_weights`. `class_mask[i]` (`num_classes` values of 0 or 1, background 1; `None` = all 1) is image
/// i's class mask; a positive RoI of a masked-out class is an error. Rows per image: `batch_size_per_image`.
#[allow(clippy::too_many_arguments)]
pub fn roi_targets(
    cfg: &RoiHeadsConfig,
    proposals: &[Proposals],
    gt_boxes: &[Vec<[f32; 4]>],
    gt_labels: &[Vec<i64>],
    class_mask: Option<&[Vec<f32>]>,
    given: Option<&[Sampled]>,
    rng: &mut Rng,
) -> Result<RoiTargets> {
    cfg.validate()?;
    let (b, nc, rows) = (proposals.len(), cfg.num_classes, cfg.batch_size_per_image);
    if gt_boxes.len() != b || gt_labels.len() != b || class_mask.is_some_and(|m| m.len() != b) || given.is_some_and(|s| s.len() != b) {
        return Err(Error::Other(format!(
            "roi targets: {b} images of proposals but {} of gt boxes, {} of gt labels, {} class masks, {} given samples",
            gt_boxes.len(),
            gt_labels.len(),
            class_mask.map_or(b, |m| m.len()),
            given.map_or(b, |s| s.len())
        )));
    }
    check_gt_boxes(gt_boxes)?;
    let coder = cfg.coder();
    let mut all_rois: Vec<Vec<[f32; 4]>> = Vec::with_capacity(b);
    let mut all_labels = Vec::with_capacity(b);
    let mut all_targets: Vec<Vec<[f32; 4]>> = Vec::with_capacity(b);
    let mut samples = Vec::with_capacity(b);
    let mut masks = Vec::with_capacity(b * nc);
    for i in 0..b {
        let (gtb, gtl) = (&gt_boxes[i], &gt_labels[i]);
        if gtb.len() != gtl.len() {
            return Err(Error::Other(format!("roi targets: image {i} has {} gt boxes but {} labels", gtb.len(), gtl.len())));
        }
        if let Some(l) = gtl.iter().find(|&&l| l < 1 || l as usize >= nc) {
            return Err(Error::Other(format!("roi targets: image {i} has gt label {l}, outside 1..{} (num_classes {nc})", nc - 1)));
        }
        let mask: Vec<f32> = match class_mask {
            Some(m) => m[i].clone(),
            None => vec![1.0; nc],
        };
        if mask.len() != nc || mask.iter().any(|&v| v != 0.0 && v != 1.0) || mask[0] != 1.0 {
            return Err(Error::Other(format!(
                "roi targets: class_mask of image {i} must have {nc} values of 0 or 1 with the background (0) at 1, got {} values",
                mask.len()
            )));
        }
        let cand: Vec<[f32; 4]> = proposals[i].boxes.iter().chain(gtb.iter()).copied().collect();
        let (labels, matched): (Vec<i64>, Vec<usize>) = if gtb.is_empty() {
            (vec![0; cand.len()], vec![0; cand.len()])
        } else {
            let iou = iou_gt(gtb, &cand);
            let m = match_boxes(&iou, gtb.len(), cand.len(), cfg.fg_iou_thresh, cfg.bg_iou_thresh, false);
            m.iter().map(|&k| (if k >= 0 { gtl[k as usize] } else if k == -1 { 0 } else { -1 }, k.max(0) as usize)).unzip()
        };
        let s = match given {
            Some(s) => check_sample(&s[i], &labels, &format!("roi sample of image {i}"))?,
            None => sample(&labels, rows, cfg.positive_fraction, rng),
        };
        let mut idx: Vec<usize> = s.pos.iter().chain(&s.neg).copied().collect();
        idx.sort_unstable();
        if idx.len() > rows {
            return Err(Error::Other(format!("roi targets: image {i}: {} RoIs sampled, more than batch_size_per_image {rows}", idx.len())));
        }
        for &k in &s.pos {
            if mask[labels[k] as usize] == 0.0 {
                return Err(Error::Other(format!(
                    "roi targets: image {i} has a ground-truth box of class {} that its class_mask excludes",
                    labels[k]
                )));
            }
        }
        let zero = [0f32; 4];
        all_targets.push(
            idx.iter()
                .map(|&k| coder.encode_one(&cand[k], gtb.get(matched[k]).unwrap_or(&zero)))
                .collect(),
        );
        all_rois.push(idx.iter().map(|&k| cand[k]).collect());
        all_labels.push(idx.iter().map(|&k| labels[k]).collect::<Vec<i64>>());
        samples.push(s);
        masks.extend(mask);
    }
    let total: usize = all_labels.iter().map(|l| l.len()).sum();
    let w = if total > 0 { (1.0 / total as f64) as f32 } else { 0.0 };
    let k = b * rows;
    let mut cls_t = vec![0f32; k * nc];
    let mut box_t = vec![0f32; k * 4];
    let mut box_w = vec![0f32; k * nc];
    for i in 0..b {
        for (r, (&l, t)) in all_labels[i].iter().zip(&all_targets[i]).enumerate() {
            let row = i * rows + r;
            cls_t[row * nc + l as usize] = w;
            if l > 0 {
                box_w[row * nc + l as usize] = w;
                box_t[4 * row..4 * row + 4].copy_from_slice(t);
            }
        }
    }
    let roi_refs: Vec<&[[f32; 4]]> = all_rois.iter().map(|r| r.as_slice()).collect();
    let feed = vec![
        (ROI_CLASS_MASK.to_string(), HostTensor::from_f32(&[b, 1, nc], DType::F32, &masks)?),
        (ROI_CLASS_TARGET.to_string(), HostTensor::from_f32(&[k, nc], DType::F32, &cls_t)?),
        (ROI_BOX_TARGETS.to_string(), HostTensor::from_f32(&[k, 1, 4], DType::F32, &box_t)?),
        (ROI_BOX_WEIGHT.to_string(), HostTensor::from_f32(&[k, nc, 1], DType::F32, &box_w)?),
    ];
    Ok(RoiTargets { rois: rois_from(&roi_refs, rows)?, feed, samples, labels: all_labels })
}

/// One image's detections, by descending score; labels are class indices (1..num_classes-1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detections {
    pub boxes: Vec<[f32; 4]>,
    pub scores: Vec<f32>,
    pub labels: Vec<i64>,
}

/// torchvision's `postprocess_detections`: per image, the softmax of each RoI's logits, its boxes decoded per
/// class on the RoI and clipped to the image's `(h, w)`, the background dropped, scores > `score_thresh`
/// kept, boxes smaller than 1e-2 dropped, NMS per class (`batched_nms`), the best `detections_per_img`.
/// `class_logits` `[B * rows_per_image, C]` and `box_regression` `[B * rows_per_image, 4C]` are the box head's
/// outputs read back; image i's RoIs are `proposals[i]` in its first rows.
pub fn postprocess(
    cfg: &RoiHeadsConfig,
    class_logits: &[f32],
    box_regression: &[f32],
    proposals: &[Proposals],
    rows_per_image: usize,
    image_sizes: &[(usize, usize)],
) -> Result<Vec<Detections>> {
    let (b, nc) = (proposals.len(), cfg.num_classes);
    let k = b * rows_per_image;
    if image_sizes.len() != b || class_logits.len() != k * nc || box_regression.len() != 4 * k * nc {
        return Err(Error::Other(format!(
            "roi postprocess: {b} images x {rows_per_image} rows x {nc} classes need {} logits and {} deltas, got {} and {} ({} image sizes)",
            k * nc,
            4 * k * nc,
            class_logits.len(),
            box_regression.len(),
            image_sizes.len()
        )));
    }
    let coder = cfg.coder();
    let mut out = Vec::with_capacity(b);
    for (i, p) in proposals.iter().enumerate() {
        if p.boxes.len() > rows_per_image {
            return Err(Error::Other(format!("roi postprocess: image {i} has {} RoIs for {rows_per_image} rows", p.boxes.len())));
        }
        let (mut boxes, mut scores, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for (r, roi) in p.boxes.iter().enumerate() {
            let row = i * rows_per_image + r;
            let logits = &class_logits[row * nc..(row + 1) * nc];
            // F.softmax in f32 as torch's CPU kernel: exp(x - max), their sum, times 1 / sum (a probability
            // saturates to 1.0, and ties, where torch's does).
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|&x| (x - m).exp()).collect();
            let inv = 1.0 / e.iter().sum::<f32>();
            for c in 1..nc {
                let s = e[c] * inv;
                let d = &box_regression[4 * (row * nc + c)..4 * (row * nc + c) + 4];
                let bx = clip_box(coder.decode_one(roi, d), image_sizes[i]);
                if s > cfg.score_thresh && is_large_enough(&bx, ROI_MIN_SIZE) {
                    boxes.push(bx);
                    scores.push(s);
                    labels.push(c as i64);
                }
            }
        }
        let mut keep = batched_nms(&boxes, &scores, &labels, cfg.nms_thresh);
        keep.truncate(cfg.detections_per_img);
        out.push(Detections {
            boxes: keep.iter().map(|&j| boxes[j]).collect(),
            scores: keep.iter().map(|&j| scores[j]).collect(),
            labels: keep.iter().map(|&j| labels[j]).collect(),
        });
    }
    Ok(out)
}
