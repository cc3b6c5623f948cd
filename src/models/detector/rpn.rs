//! The region proposal network of torchvision's Faster R-CNN (`models/detection/rpn.py`): the head as graph
//! nodes, proposal filtering, training targets and the two losses.
//!
//! What runs where:
//! - graph ([`rpn_head`], [`rpn_losses`]): the 3x3 conv + ReLU and the two 1x1 convs, shared by every FPN level,
//!   flattened as torchvision's `concat_box_prediction_layers` (level, row, column, anchor); the losses over
//!   every anchor, weighted by inputs the host fills ([`rpn_loss_feed`]), so the graph stays static;
//! - host ([`proposals`], [`rpn_targets`], [`sample`], [`rpn_loss_feed`]): decoding, clipping, per-level top-k,
//!   NMS, matching and sampling, in f32 operation by operation as torchvision.
//!
//! Per-source loss rule: `rpn_weight[i]` multiplies image i's sampled anchors; the losses are divided by
//! `sum_i rpn_weight[i] * sampled_i` (torchvision's division by the number of sampled anchors of the batch when
//! every weight is 1; an image of weight 0 counts as if it were not in the batch).

use serde::{Deserialize, Serialize};

use super::anchors::{self, Anchors};
use crate::boxes::{nms_flat, topk_row, BoxCoder, BBOX_XFORM_CLIP};
use crate::error::{Error, Result};
use crate::graph::{BinaryOp, Graph, NodeId, UnaryOp};
use crate::nn::spatial::conv2d;
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// RPN settings; the defaults are torchvision's `fasterrcnn_resnet50_fpn`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpnConfig {
    /// Anchor sizes per FPN level (finest first): torchvision's ((32,), (64,), (128,), (256,), (512,)).
    pub anchor_sizes: Vec<Vec<f32>>,
    /// Aspect ratios (height / width), the same for every level.
    pub aspect_ratios: Vec<f32>,
    /// IoU at or above which an anchor is positive.
    pub fg_iou_thresh: f32,
    /// IoU below which an anchor is negative.
    pub bg_iou_thresh: f32,
    /// Anchors sampled per image for the losses.
    pub batch_size_per_image: usize,
    /// Fraction of them that may be positive.
    pub positive_fraction: f64,
    /// Top-k per level before NMS, in training and in evaluation.
    pub pre_nms_top_n_train: usize,
    pub pre_nms_top_n_test: usize,
    /// Proposals kept per image after NMS.
    pub post_nms_top_n_train: usize,
    pub post_nms_top_n_test: usize,
    pub nms_thresh: f32,
    /// Proposals with objectness probability below this are dropped.
    pub score_thresh: f32,
}

impl Default for RpnConfig {
    fn default() -> Self {
        RpnConfig {
            anchor_sizes: vec![vec![32.0], vec![64.0], vec![128.0], vec![256.0], vec![512.0]],
            aspect_ratios: vec![0.5, 1.0, 2.0],
            fg_iou_thresh: 0.7,
            bg_iou_thresh: 0.3,
            batch_size_per_image: 256,
            positive_fraction: 0.5,
            pre_nms_top_n_train: 2000,
            pre_nms_top_n_test: 1000,
            post_nms_top_n_train: 2000,
            post_nms_top_n_test: 1000,
            nms_thresh: 0.7,
            score_thresh: 0.0,
        }
    }
}

/// torchvision's `RegionProposalNetwork.min_size`: proposals narrower or lower than this are dropped.
pub const RPN_MIN_SIZE: f32 = 1e-3;

/// Graph input names of the RPN losses (fed by [`rpn_loss_feed`]).
pub const RPN_LABELS: &str = "rpn.labels";
pub const RPN_OBJECTNESS_WEIGHT: &str = "rpn.objectness_weight";
pub const RPN_BOX_TARGETS: &str = "rpn.box_targets";
pub const RPN_BOX_WEIGHT: &str = "rpn.box_weight";

impl RpnConfig {
    /// Checks the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::Other(format!("rpn config: {field}: {msg}")));
        if self.anchor_sizes.is_empty() || self.anchor_sizes.iter().any(|s| s.is_empty()) {
            return bad("anchor_sizes", format!("needs at least one size per level, got {:?}", self.anchor_sizes));
        }
        if self.anchor_sizes.iter().any(|s| s.len() != self.anchor_sizes[0].len()) {
            return bad("anchor_sizes", format!("every level needs as many sizes (one head for all levels), got {:?}", self.anchor_sizes));
        }
        if self.anchor_sizes.iter().flatten().any(|&s| !(s.is_finite() && s > 0.0)) {
            return bad("anchor_sizes", format!("sizes must be positive, got {:?}", self.anchor_sizes));
        }
        if self.aspect_ratios.is_empty() || self.aspect_ratios.iter().any(|&r| !(r.is_finite() && r > 0.0)) {
            return bad("aspect_ratios", format!("needs positive ratios, got {:?}", self.aspect_ratios));
        }
        if !(0.0..=1.0).contains(&self.bg_iou_thresh) || !(self.bg_iou_thresh..=1.0).contains(&self.fg_iou_thresh) {
            return bad("fg_iou_thresh", format!("needs 0 <= bg_iou_thresh ({}) <= fg_iou_thresh ({}) <= 1", self.bg_iou_thresh, self.fg_iou_thresh));
        }
        if self.batch_size_per_image == 0 {
            return bad("batch_size_per_image", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.positive_fraction) {
            return bad("positive_fraction", format!("must be in [0, 1], got {}", self.positive_fraction));
        }
        for (f, v) in [
            ("pre_nms_top_n_train", self.pre_nms_top_n_train),
            ("pre_nms_top_n_test", self.pre_nms_top_n_test),
            ("post_nms_top_n_train", self.post_nms_top_n_train),
            ("post_nms_top_n_test", self.post_nms_top_n_test),
        ] {
            if v == 0 {
                return bad(f, "must be at least 1".into());
            }
        }
        if !(0.0..=1.0).contains(&self.nms_thresh) {
            return bad("nms_thresh", format!("must be in [0, 1], got {}", self.nms_thresh));
        }
        if !self.score_thresh.is_finite() {
            return bad("score_thresh", format!("must be finite, got {}", self.score_thresh));
        }
        Ok(())
    }
    /// Anchors per feature-map cell (the head's `num_anchors`).
    pub fn anchors_per_location(&self) -> usize {
        self.anchor_sizes[0].len() * self.aspect_ratios.len()
    }
    pub fn pre_nms_top_n(&self, training: bool) -> usize {
        if training { self.pre_nms_top_n_train } else { self.pre_nms_top_n_test }
    }
    pub fn post_nms_top_n(&self, training: bool) -> usize {
        if training { self.post_nms_top_n_train } else { self.post_nms_top_n_test }
    }
}

/// The RPN head's outputs for a batch, as graph nodes.
#[derive(Clone, Debug)]
pub struct RpnHead {
    /// Objectness logits, f32 `[B, N]` (N anchors per image, in [`Anchors`] order).
    pub objectness: NodeId,
    /// Box deltas (BoxCoder weights 1, 1, 1, 1), f32 `[B, N, 4]`.
    pub deltas: NodeId,
    /// (h, w) of each level's feature map.
    pub grids: Vec<(usize, usize)>,
}

impl RpnHead {
    /// The anchors of these feature maps for a padded input of `padded` (h, w) pixels.
    pub fn anchors(&self, cfg: &RpnConfig, padded: (usize, usize)) -> Result<Anchors> {
        anchors::anchors(padded, &self.grids, &cfg.anchor_sizes, &cfg.aspect_ratios)
    }
    /// Anchors per image.
    pub fn num_anchors(&self, cfg: &RpnConfig) -> usize {
        self.grids.iter().map(|(h, w)| h * w).sum::<usize>() * cfg.anchors_per_location()
    }
}

/// torchvision's `RPNHead` on the FPN levels `feats` (NHWC `[B, H, W, C]`, finest first, as many as
/// `cfg.anchor_sizes`): parameters `rpn.head.conv.0.0.{weight,bias}` (3x3, C -> C, then ReLU),
/// `rpn.head.cls_logits.{weight,bias}` (1x1, C -> A) and `rpn.head.bbox_pred.{weight,bias}` (1x1, C -> 4A).
pub fn rpn_head(g: &mut Graph, cfg: &RpnConfig, feats: &[NodeId]) -> Result<RpnHead> {
    cfg.validate()?;
    if feats.len() != cfg.anchor_sizes.len() {
        return Err(Error::graph(
            "rpn_head",
            format!("{} feature maps but anchor sizes for {} levels", feats.len(), cfg.anchor_sizes.len()),
        ));
    }
    let a = cfg.anchors_per_location();
    let s0 = g.shape(feats[0]).to_vec();
    if s0.len() != 4 {
        return Err(Error::graph("rpn_head", format!("expects NHWC feature maps, got {s0:?}")));
    }
    let (b, c) = (s0[0], s0[3]);
    let (mut logits, mut deltas, mut grids) = (Vec::new(), Vec::new(), Vec::new());
    for &f in feats {
        let s = g.shape(f).to_vec();
        if s.len() != 4 || s[0] != b || s[3] != c {
            return Err(Error::graph("rpn_head", format!("feature maps {s0:?} and {s:?} differ in batch or channels")));
        }
        let (h, w) = (s[1], s[2]);
        let t = conv2d(g, f, "rpn.head.conv.0.0", c, c, 3, 1, 1)?; // (B, H, W, C)
        let t = g.unary(UnaryOp::Relu, t)?;
        let l = conv2d(g, t, "rpn.head.cls_logits", c, a, 1, 1, 0)?; // (B, H, W, A)
        logits.push(g.reshape(l, &[b, h * w * a])?); // (B, HWA)
        let d = conv2d(g, t, "rpn.head.bbox_pred", c, 4 * a, 1, 1, 0)?; // (B, H, W, 4A)
        deltas.push(g.reshape(d, &[b, h * w * a, 4])?); // (B, HWA, 4)
        grids.push((h, w));
    }
    let mut objectness = g.concat(&logits, 1)?; // (B, N)
    let mut deltas = g.concat(&deltas, 1)?; // (B, N, 4)
    if g.dtype(objectness) != DType::F32 {
        objectness = g.cast(objectness, DType::F32)?;
        deltas = g.cast(deltas, DType::F32)?;
    }
    Ok(RpnHead { objectness, deltas, grids })
}

/// The proposals of one image: boxes (xyxy, clipped to the image) by descending objectness probability.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Proposals {
    pub boxes: Vec<[f32; 4]>,
    pub scores: Vec<f32>,
}

/// `1 / (1 + exp(-x))` in f32 step by step, as torch's CPU kernel (so probabilities saturate to 1.0, and tie,
/// where torch's do).
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Clips an xyxy box to an image of `(h, w)` pixels (torchvision `clip_boxes_to_image`).
pub fn clip_box(b: [f32; 4], (h, w): (usize, usize)) -> [f32; 4] {
    let (w, h) = (w as f32, h as f32);
    let c = |v: f32, hi: f32| v.max(0.0).min(hi);
    [c(b[0], w), c(b[1], h), c(b[2], w), c(b[3], h)]
}

/// torchvision `remove_small_boxes`: both sides at least `min_size`.
pub fn is_large_enough(b: &[f32; 4], min_size: f32) -> bool {
    b[2] - b[0] >= min_size && b[3] - b[1] >= min_size
}

/// torchvision `batched_nms` on the CPU, including its choice of algorithm: above 4000 coordinates (1000
/// boxes) NMS runs per class on the boxes as they are; up to that, on boxes shifted by `class * (max
/// coordinate + 1)` in one class (the "coordinate trick", whose f32 rounding can move an IoU by an ulp).
/// Returns the kept indices by descending score.
pub fn batched_nms(boxes: &[[f32; 4]], scores: &[f32], classes: &[i64], iou_threshold: f32) -> Vec<usize> {
    let n = boxes.len();
    if n == 0 {
        return Vec::new();
    }
    if 4 * n > 4000 {
        return nms_flat(boxes.as_flattened(), scores, classes, iou_threshold, n);
    }
    let max = boxes.as_flattened().iter().copied().fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
    let shifted: Vec<f32> = (boxes.iter().zip(classes))
        .flat_map(|(b, &c)| {
            let off = c as f32 * (max + 1.0);
            b.map(|v| v + off)
        })
        .collect();
    nms_flat(&shifted, scores, &vec![0; n], iou_threshold, n)
}

/// torchvision's `RegionProposalNetwork.filter_proposals` (after decoding): per image, the top
/// `pre_nms_top_n` logits of each level, decoded on their anchors (BoxCoder weights 1, dw/dh clamped at
/// log(1000/16)), clipped to the image's `(h, w)` (its size before padding), boxes smaller than 1e-3 dropped,
/// probabilities below `score_thresh` dropped, NMS per level, then the best `post_nms_top_n`.
/// `objectness` is `[B, N]` and `deltas` `[B, N, 4]` (the [`RpnHead`] outputs read back), `image_sizes` has
/// B entries.
pub fn proposals(
    cfg: &RpnConfig,
    training: bool,
    anchors: &Anchors,
    objectness: &[f32],
    deltas: &[f32],
    image_sizes: &[(usize, usize)],
) -> Result<Vec<Proposals>> {
    let (n, b) = (anchors.len(), image_sizes.len());
    if objectness.len() != b * n || deltas.len() != 4 * b * n {
        return Err(Error::Other(format!(
            "rpn proposals: {} images of {n} anchors need {} objectness and {} delta values, got {} and {}",
            b,
            b * n,
            4 * b * n,
            objectness.len(),
            deltas.len()
        )));
    }
    let coder = BoxCoder { weights: [1.0; 4], clamp: BBOX_XFORM_CLIP };
    let (pre, post) = (cfg.pre_nms_top_n(training), cfg.post_nms_top_n(training));
    let mut out = Vec::with_capacity(b);
    for (i, &size) in image_sizes.iter().enumerate() {
        let obj = &objectness[i * n..(i + 1) * n];
        let del = &deltas[4 * i * n..4 * (i + 1) * n];
        let (mut boxes, mut scores, mut levels) = (Vec::new(), Vec::new(), Vec::new());
        let mut offset = 0;
        for (l, &count) in anchors.per_level.iter().enumerate() {
            for j in topk_row(&obj[offset..offset + count], pre) {
                let k = offset + j;
                let bx = clip_box(coder.decode_one(&anchors.boxes[k], &del[4 * k..4 * k + 4]), size);
                let s = sigmoid(obj[k]);
                if is_large_enough(&bx, RPN_MIN_SIZE) && s >= cfg.score_thresh {
                    boxes.push(bx);
                    scores.push(s);
                    levels.push(l as i64);
                }
            }
            offset += count;
        }
        let mut keep = batched_nms(&boxes, &scores, &levels, cfg.nms_thresh);
        keep.truncate(post);
        out.push(Proposals { boxes: keep.iter().map(|&k| boxes[k]).collect(), scores: keep.iter().map(|&k| scores[k]).collect() });
    }
    Ok(out)
}

/// torchvision's `Matcher`: for each of `n` predictions, the ground-truth box (row of the `m x n` quality
/// matrix `iou`) it matches, or -1 (best quality below `low`) or -2 (in `[low, high)`). With
/// `allow_low_quality_matches`, each ground truth's best predictions (all ties, even at quality 0) keep their
/// best match whatever its quality. Ties in a column go to the first ground truth. `m` must be at least 1.
pub fn match_boxes(iou: &[f32], m: usize, n: usize, high: f32, low: f32, allow_low_quality_matches: bool) -> Vec<i64> {
    let mut best = vec![0i64; n];
    let mut best_val = iou[..n].to_vec();
    for i in 1..m {
        for j in 0..n {
            let v = iou[i * n + j];
            if v > best_val[j] {
                best_val[j] = v;
                best[j] = i as i64;
            }
        }
    }
    let mut matches: Vec<i64> = (0..n)
        .map(|j| {
            let v = best_val[j];
            if v < low {
                -1
            } else if v < high {
                -2
            } else {
                best[j]
            }
        })
        .collect();
    if allow_low_quality_matches {
        for i in 0..m {
            let row = &iou[i * n..(i + 1) * n];
            let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (j, &v) in row.iter().enumerate() {
                if v == top {
                    matches[j] = best[j];
                }
            }
        }
    }
    matches
}

/// IoU matrix `gt x boxes` (torchvision `box_iou(gt, boxes)`).
pub fn iou_gt(gt: &[[f32; 4]], boxes: &[[f32; 4]]) -> Vec<f32> {
    crate::boxes::box_iou(gt, boxes)
}

/// One image's sampled elements (torchvision `BalancedPositiveNegativeSampler`): indices of positives and
/// of negatives, each ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sampled {
    pub pos: Vec<usize>,
    pub neg: Vec<usize>,
}

impl Sampled {
    pub fn len(&self) -> usize {
        self.pos.len() + self.neg.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pos.is_empty() && self.neg.is_empty()
    }
}

/// `k` distinct elements of `from`, uniformly (partial Fisher-Yates), returned ascending.
fn choose(from: &[usize], k: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v = from.to_vec();
    let k = k.min(v.len());
    for i in 0..k {
        let j = i + rng.below(v.len() - i);
        v.swap(i, j);
    }
    v.truncate(k);
    v.sort_unstable();
    v
}

/// torchvision's `BalancedPositiveNegativeSampler` on one image's labels (>= 1 positive, 0 negative, < 0
/// ignored): at most `int(batch * fraction)` positives, negatives up to `batch` in all, each chosen uniformly
/// with `rng` (torch's `randperm` draws cannot be reproduced; feed torchvision's choice through
/// [`check_sample`] for parity).
pub fn sample(labels: &[i64], batch: usize, positive_fraction: f64, rng: &mut Rng) -> Sampled {
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 1).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 0).collect();
    let num_pos = ((batch as f64 * positive_fraction) as usize).min(pos.len());
    let num_neg = (batch - num_pos).min(neg.len());
    Sampled { pos: choose(&pos, num_pos, rng), neg: choose(&neg, num_neg, rng) }
}

/// Checks a caller's sample against the labels it was drawn from: indices in range, positives labelled >= 1,
/// negatives 0, no index twice. `what` names the image in the error.
pub fn check_sample(s: &Sampled, labels: &[i64], what: &str) -> Result<Sampled> {
    let mut seen = vec![false; labels.len()];
    let mut out = s.clone();
    for (list, positive) in [(&s.pos, true), (&s.neg, false)] {
        for &i in list {
            if i >= labels.len() || seen[i] {
                return Err(Error::Other(format!("{what}: sampled index {i} is out of range (0..{}) or repeated", labels.len())));
            }
            seen[i] = true;
            if (labels[i] >= 1) != positive || (!positive && labels[i] != 0) {
                return Err(Error::Other(format!(
                    "{what}: index {i} was sampled as a {} but its label is {}",
                    if positive { "positive" } else { "negative" },
                    labels[i]
                )));
            }
        }
    }
    out.pos.sort_unstable();
    out.neg.sort_unstable();
    Ok(out)
}

/// One image's RPN training targets: label per anchor (1 object, 0 background, -1 ignored) and the matched
/// ground-truth box per anchor (`None` where there is none); [`RpnTargets::deltas`] encodes an anchor's target.
#[derive(Clone, Debug, PartialEq)]
pub struct RpnTargets {
    pub labels: Vec<i64>,
    pub matched: Vec<Option<[f32; 4]>>,
}

impl RpnTargets {
    /// The regression target of anchor `k` (torchvision `box_coder.encode`, weights 1), zeros without a match.
    pub fn deltas(&self, anchors: &Anchors, k: usize) -> [f32; 4] {
        match self.matched[k] {
            Some(gt) => BoxCoder::new([1.0; 4]).encode_one(&anchors.boxes[k], &gt),
            None => [0.0; 4],
        }
    }
}

/// torchvision's `assign_targets_to_anchors` for one image with ground-truth boxes `gt` (xyxy, in the padded
/// input's pixels): Matcher(fg, bg, allow_low_quality_matches). Targets are encoded only for the anchors that
/// need them ([`RpnTargets::deltas`]; torchvision encodes every anchor and uses the positives').
pub fn rpn_targets(cfg: &RpnConfig, anchors: &Anchors, gt: &[[f32; 4]]) -> RpnTargets {
    let n = anchors.len();
    if gt.is_empty() {
        return RpnTargets { labels: vec![0; n], matched: vec![None; n] };
    }
    let iou = iou_gt(gt, &anchors.boxes);
    let m = match_boxes(&iou, gt.len(), n, cfg.fg_iou_thresh, cfg.bg_iou_thresh, true);
    let labels = m.iter().map(|&k| if k >= 0 { 1 } else if k == -1 { 0 } else { -1 }).collect();
    let matched = m.iter().map(|&k| (k >= 0).then(|| gt[k as usize])).collect();
    RpnTargets { labels, matched }
}

/// Ground-truth boxes must be finite with positive width and height (torchvision's `GeneralizedRCNN` refuses
/// degenerate boxes too: their targets would be `log(0)`). The error names the image and the box.
pub fn check_gt_boxes(gt: &[Vec<[f32; 4]>]) -> Result<()> {
    for (i, boxes) in gt.iter().enumerate() {
        for (k, b) in boxes.iter().enumerate() {
            if !(b.iter().all(|v| v.is_finite()) && b[2] > b[0] && b[3] > b[1]) {
                return Err(Error::Other(format!(
                    "ground-truth box {k} of image {i} is {b:?}: boxes need finite x1 < x2 and y1 < y2"
                )));
            }
        }
    }
    Ok(())
}

/// The RPN loss inputs of a batch ([`rpn_loss_feed`]).
#[derive(Clone, Debug)]
pub struct RpnLossFeed {
    /// ([`RPN_LABELS`], ...) with their tensors, to feed in the losses' stage.
    pub feed: Vec<(String, HostTensor)>,
    /// Per image: the anchors sampled.
    pub samples: Vec<Sampled>,
}

/// The RPN loss inputs of a batch, ready to feed. `gt[i]` are image i's boxes (in the padded input's pixels),
/// `rpn_weight[i]` its loss weight (0 drops it), `given[i]` (optional) a caller's sample of image i (checked
/// against the labels), else one is drawn with `rng`.
pub fn rpn_loss_feed(
    cfg: &RpnConfig,
    anchors: &Anchors,
    gt: &[Vec<[f32; 4]>],
    rpn_weight: &[f32],
    given: Option<&[Sampled]>,
    rng: &mut Rng,
) -> Result<RpnLossFeed> {
    let (b, n) = (gt.len(), anchors.len());
    if rpn_weight.len() != b || given.is_some_and(|s| s.len() != b) {
        return Err(Error::Other(format!(
            "rpn loss inputs: {b} images, {} rpn_weight values, {} given samples",
            rpn_weight.len(),
            given.map_or(b, |s| s.len())
        )));
    }
    check_gt_boxes(gt)?;
    if let Some(w) = rpn_weight.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(Error::Other(format!("rpn loss inputs: rpn_weight must be finite and >= 0, got {w}")));
    }
    let mut targets = Vec::with_capacity(b);
    let mut samples = Vec::with_capacity(b);
    for (i, boxes) in gt.iter().enumerate() {
        let t = rpn_targets(cfg, anchors, boxes);
        let s = match given {
            Some(s) => check_sample(&s[i], &t.labels, &format!("rpn sample of image {i}"))?,
            None => sample(&t.labels, cfg.batch_size_per_image, cfg.positive_fraction, rng),
        };
        targets.push(t);
        samples.push(s);
    }
    let total: f64 = samples.iter().zip(rpn_weight).map(|(s, &w)| w as f64 * s.len() as f64).sum();
    let mut labels = vec![0f32; b * n];
    let mut obj_w = vec![0f32; b * n];
    let mut box_t = vec![0f32; 4 * b * n];
    let mut box_w = vec![0f32; b * n];
    for (i, (t, s)) in targets.iter().zip(&samples).enumerate() {
        let w = if total > 0.0 { (rpn_weight[i] as f64 / total) as f32 } else { 0.0 };
        for &k in &s.pos {
            labels[i * n + k] = 1.0;
            obj_w[i * n + k] = w;
            box_w[i * n + k] = w;
            box_t[4 * (i * n + k)..4 * (i * n + k) + 4].copy_from_slice(&t.deltas(anchors, k));
        }
        for &k in &s.neg {
            obj_w[i * n + k] = w;
        }
    }
    let feed = vec![
        (RPN_LABELS.to_string(), HostTensor::from_f32(&[b, n], DType::F32, &labels)?),
        (RPN_OBJECTNESS_WEIGHT.to_string(), HostTensor::from_f32(&[b, n], DType::F32, &obj_w)?),
        (RPN_BOX_TARGETS.to_string(), HostTensor::from_f32(&[b, n, 4], DType::F32, &box_t)?),
        (RPN_BOX_WEIGHT.to_string(), HostTensor::from_f32(&[b, n, 1], DType::F32, &box_w)?),
    ];
    Ok(RpnLossFeed { feed, samples })
}

/// Elementwise `binary_cross_entropy_with_logits(x, y)` = `max(x, 0) - x y + log(1 + exp(-|x|))`.
pub fn bce_with_logits(g: &mut Graph, x: NodeId, y: NodeId) -> Result<NodeId> {
    let r = g.unary(UnaryOp::Relu, x)?;
    let xy = g.mul(x, y)?;
    let a = g.unary(UnaryOp::Abs, x)?;
    let na = g.unary(UnaryOp::Neg, a)?;
    let e = g.unary(UnaryOp::Exp, na)?;
    let l = g.affine(e, 1.0, 1.0)?;
    let l = g.unary(UnaryOp::Log, l)?;
    let t = g.sub(r, xy)?;
    g.add(t, l)
}

/// Elementwise smooth L1 of a difference `d` (torch `smooth_l1_loss`, reduction none): `0.5 d^2 / beta` below
/// `beta`, `|d| - 0.5 beta` above, written as `0.5 c^2 / beta + (|d| - c)` with `c = min(|d|, beta)`.
pub fn smooth_l1(g: &mut Graph, d: NodeId, beta: f32) -> Result<NodeId> {
    let n = g.unary(UnaryOp::Abs, d)?;
    let bt = g.fill(beta, &[1], g.dtype(d));
    let c = g.binary(BinaryOp::Min, n, bt)?;
    let c2 = g.unary(UnaryOp::Square, c)?;
    let q = g.scale(c2, 0.5 / beta)?;
    let lin = g.sub(n, c)?;
    g.add(q, lin)
}

/// The RPN losses (torchvision's `loss_objectness`, `loss_rpn_box_reg`), each `[]` f32.
#[derive(Clone, Copy, Debug)]
pub struct RpnLosses {
    pub objectness: NodeId,
    pub box_reg: NodeId,
}

/// The RPN losses on `head`'s outputs: `sum(w * bce(logit, label))` and `sum(w_pos * smooth_l1(delta -
/// target, 1/9))`, with the inputs [`RPN_LABELS`] `[B, N]`, [`RPN_OBJECTNESS_WEIGHT`] `[B, N]`,
/// [`RPN_BOX_TARGETS`] `[B, N, 4]` and [`RPN_BOX_WEIGHT`] `[B, N, 1]` declared in stage `stage` (filled by
/// [`rpn_loss_feed`]: with every rpn_weight 1 these are torchvision's mean BCE over the sampled anchors and
/// smooth-L1 sum over the sampled positives divided by the number sampled).
pub fn rpn_losses(g: &mut Graph, head: &RpnHead, stage: usize) -> Result<RpnLosses> {
    let s = g.shape(head.objectness).to_vec();
    let (b, n) = (s[0], s[1]);
    let labels = g.input_stage(RPN_LABELS, &[b, n], DType::F32, stage)?;
    let obj_w = g.input_stage(RPN_OBJECTNESS_WEIGHT, &[b, n], DType::F32, stage)?;
    let box_t = g.input_stage(RPN_BOX_TARGETS, &[b, n, 4], DType::F32, stage)?;
    let box_w = g.input_stage(RPN_BOX_WEIGHT, &[b, n, 1], DType::F32, stage)?;
    let bce = bce_with_logits(g, head.objectness, labels)?; // (B, N)
    let bce = g.mul(bce, obj_w)?;
    let objectness = g.sum_all(bce)?;
    let d = g.sub(head.deltas, box_t)?; // (B, N, 4)
    let l1 = smooth_l1(g, d, 1.0 / 9.0)?;
    let l1 = g.mul(l1, box_w)?;
    let box_reg = g.sum_all(l1)?;
    Ok(RpnLosses { objectness, box_reg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matcher_thresholds_and_low_quality() {
        // 2 gt x 4 predictions.
        let iou = [0.8, 0.5, 0.1, 0.0, 0.1, 0.2, 0.25, 0.0];
        assert_eq!(match_boxes(&iou, 2, 4, 0.7, 0.3, false), vec![0, -2, -1, -1]);
        // gt 1's best prediction is 2 (0.25): kept as a match. Both gts have 0.0 at prediction 3, but neither's
        // best is 0, so it stays negative.
        assert_eq!(match_boxes(&iou, 2, 4, 0.7, 0.3, true), vec![0, -2, 1, -1]);
        // A gt that overlaps nothing makes every zero-IoU prediction a (low-quality) match, as torchvision does.
        let iou = [0.9, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(match_boxes(&iou, 2, 3, 0.7, 0.3, true), vec![0, 0, 0]);
    }

    #[test]
    fn sampler_counts() {
        let labels: Vec<i64> = (0..100).map(|i| if i < 10 { 1 } else if i < 20 { -1 } else { 0 }).collect();
        let s = sample(&labels, 16, 0.25, &mut Rng::new(1));
        assert_eq!((s.pos.len(), s.neg.len()), (4, 12));
        assert!(s.pos.iter().all(|&i| i < 10) && s.neg.iter().all(|&i| i >= 20));
        let s = sample(&labels, 64, 0.5, &mut Rng::new(1));
        assert_eq!((s.pos.len(), s.neg.len()), (10, 54));
        assert!(check_sample(&Sampled { pos: vec![12], neg: vec![] }, &labels, "x").is_err());
        assert!(check_sample(&Sampled { pos: vec![1], neg: vec![1] }, &labels, "x").is_err());
    }

    #[test]
    fn loss_weights_follow_rpn_weight() {
        let cfg = RpnConfig::default();
        let a = anchors::anchors((64, 64), &[(16, 16), (8, 8)], &[vec![32.0], vec![64.0]], &cfg.aspect_ratios).unwrap();
        let gt = vec![vec![[4.0, 4.0, 36.0, 40.0]], vec![[10.0, 20.0, 60.0, 50.0], [0.0, 0.0, 20.0, 20.0]]];
        let sum = |f: &RpnLossFeed, name: &str, from: usize, to: usize| -> f64 {
            let t = &f.feed.iter().find(|(n, _)| n == name).unwrap().1;
            t.to_f32()[from..to].iter().map(|&v| v as f64).sum()
        };
        let n = a.len();
        let f = rpn_loss_feed(&cfg, &a, &gt, &[1.0, 1.0], None, &mut Rng::new(3)).unwrap();
        let sampled: Vec<usize> = f.samples.iter().map(|s| s.len()).collect();
        assert!(f.samples.iter().all(|s| !s.pos.is_empty() && s.len() <= 256), "{sampled:?}");
        assert!((sum(&f, RPN_OBJECTNESS_WEIGHT, 0, 2 * n) - 1.0).abs() < 1e-5);
        let pos = (f.samples[0].pos.len() + f.samples[1].pos.len()) as f64;
        assert!((sum(&f, RPN_BOX_WEIGHT, 0, 2 * n) - pos / (sampled[0] + sampled[1]) as f64).abs() < 1e-5);
        // Image 1 dropped: image 0's anchors carry the whole mean.
        let f = rpn_loss_feed(&cfg, &a, &gt, &[1.0, 0.0], None, &mut Rng::new(3)).unwrap();
        assert!((sum(&f, RPN_OBJECTNESS_WEIGHT, 0, n) - 1.0).abs() < 1e-5);
        assert_eq!(sum(&f, RPN_OBJECTNESS_WEIGHT, n, 2 * n), 0.0);
        let f = rpn_loss_feed(&cfg, &a, &gt, &[0.0, 0.0], None, &mut Rng::new(3)).unwrap();
        assert_eq!(sum(&f, RPN_OBJECTNESS_WEIGHT, 0, 2 * n), 0.0);
        assert!(rpn_loss_feed(&cfg, &a, &gt, &[1.0], None, &mut Rng::new(3)).is_err());
        assert!(rpn_loss_feed(&cfg, &a, &gt, &[1.0, f32::NAN], None, &mut Rng::new(3)).is_err());
    }

    #[test]
    fn coordinate_trick_path_keeps_classes_apart() {
        let b = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]];
        assert_eq!(batched_nms(&b, &[0.9, 0.8, 0.7], &[0, 1, 0], 0.5), vec![0, 1]);
    }
}
