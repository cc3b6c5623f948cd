//! Box operations on the host: the reference algorithms behind the CPU backend's `BoxIou`, `BoxEncode`,
//! `BoxDecode`, `Nms` and `TopK` ops (`ops/boxes/cpu.rs` decodes tensors and calls these), and convenient
//! functions for pipeline code that holds boxes in plain vectors (`detection::boxes` re-exports this module).
//! It depends on nothing in the crate but `error`, so every layer may use it.
//!
//! Boxes are xyxy f32 in pixels. Formulas follow torchvision (`box_iou`, `generalized_box_iou`, `nms` /
//! `batched_nms`, `models.detection._utils.BoxCoder`) operation by operation in f32, so results match it to the
//! last bit in most cases (logarithms and exponentials are evaluated in f64 and rounded once).
//!
//! Ordering by score uses [`score_key`]: descending, ties to the lower index, NaN above everything, -0 == +0
//! (the order of a stable descending `torch.sort`). The GPU kernels use the same keys.

use crate::error::{Error, Result};

/// `ln(1000 / 16)`: torchvision's default clamp of dw/dh when decoding.
pub const BBOX_XFORM_CLIP: f32 = 4.135_166_6;

/// A 32-bit key whose unsigned order is the order of scores: every NaN is the largest key, -0.0 equals +0.0.
pub fn score_key(v: f32) -> u32 {
    if v.is_nan() {
        return u32::MAX;
    }
    let b = if v == 0.0 { 0 } else { v.to_bits() };
    if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 }
}

/// Indices `0..keys.len()` ordered by descending key, ties to the lower index.
fn order_desc(keys: &[u32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| keys[b as usize].cmp(&keys[a as usize]).then(a.cmp(&b)));
    order
}

/// Area of an xyxy box, `(x2 - x1) * (y2 - y1)` (negative for inverted boxes, as torchvision's).
#[inline]
pub fn area(b: &[f32]) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// Intersection of two boxes (0 when disjoint).
#[inline]
fn inter(a: &[f32], b: &[f32]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

/// IoU of two boxes with their areas given: `inter / (area_a + area_b - inter)` (NaN for two empty boxes).
#[inline]
pub fn iou_with_areas(a: &[f32], b: &[f32], area_a: f32, area_b: f32) -> f32 {
    let i = inter(a, b);
    i / (area_a + area_b - i)
}

/// IoU or generalized IoU of two boxes, as torchvision's `box_iou` / `generalized_box_iou` compute each pair.
#[inline]
pub fn pair_iou(a: &[f32], b: &[f32], giou: bool) -> f32 {
    let i = inter(a, b);
    let union = area(a) + area(b) - i;
    let iou = i / union;
    if !giou {
        return iou;
    }
    let w = (a[2].max(b[2]) - a[0].min(b[0])).max(0.0);
    let h = (a[3].max(b[3]) - a[1].min(b[1])).max(0.0);
    let hull = w * h;
    iou - (hull - union) / hull
}

/// IoU (or GIoU) matrix of `a` (`n` boxes, flat xyxy) against `b` (`m` boxes) into `out` (`n * m`, row-major).
pub fn iou_matrix(a: &[f32], b: &[f32], giou: bool, out: &mut [f32]) {
    let m = b.len() / 4;
    for (i, row) in out.chunks_mut(m.max(1)).enumerate().take(a.len() / 4) {
        let ab = &a[4 * i..4 * i + 4];
        for (j, o) in row.iter_mut().enumerate() {
            *o = pair_iou(ab, &b[4 * j..4 * j + 4], giou);
        }
    }
}

/// Faster R-CNN box coder (torchvision `BoxCoder`, = mmdet `DeltaXYWHBBoxCoder` with means 0, stds 1/weights).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxCoder {
    pub weights: [f32; 4],
    /// Upper clamp of dw/dh when decoding.
    pub clamp: f32,
}

impl BoxCoder {
    pub fn new(weights: [f32; 4]) -> BoxCoder {
        BoxCoder { weights, clamp: BBOX_XFORM_CLIP }
    }

    /// Deltas of one `target` box relative to its `reference` (anchor / proposal).
    pub fn encode_one(&self, reference: &[f32], target: &[f32]) -> [f32; 4] {
        let [wx, wy, ww, wh] = self.weights;
        let (ew, eh) = (reference[2] - reference[0], reference[3] - reference[1]);
        let (ex, ey) = (reference[0] + 0.5 * ew, reference[1] + 0.5 * eh);
        let (gw, gh) = (target[2] - target[0], target[3] - target[1]);
        let (gx, gy) = (target[0] + 0.5 * gw, target[1] + 0.5 * gh);
        let ln = |r: f32| (r as f64).ln() as f32;
        [wx * (gx - ex) / ew, wy * (gy - ey) / eh, ww * ln(gw / ew), wh * ln(gh / eh)]
    }

    /// The box that `deltas` (4 values) describe relative to `reference`.
    pub fn decode_one(&self, reference: &[f32], deltas: &[f32]) -> [f32; 4] {
        let [wx, wy, ww, wh] = self.weights;
        let (w, h) = (reference[2] - reference[0], reference[3] - reference[1]);
        let (cx, cy) = (reference[0] + 0.5 * w, reference[1] + 0.5 * h);
        let (dx, dy) = (deltas[0] / wx, deltas[1] / wy);
        // torch.clamp(max=): NaN stays NaN.
        let clip = |d: f32| if d > self.clamp { self.clamp } else { d };
        let (dw, dh) = (clip(deltas[2] / ww), clip(deltas[3] / wh));
        let (px, py) = (dx * w + cx, dy * h + cy);
        let exp = |d: f32| (d as f64).exp() as f32;
        let (pw, ph) = (exp(dw) * w, exp(dh) * h);
        let (hw, hh) = (0.5 * pw, 0.5 * ph);
        [px - hw, py - hh, px + hw, py + hh]
    }

    /// Encodes `n` pairs (flat xyxy) into `out` (`4n`).
    pub fn encode(&self, reference: &[f32], target: &[f32], out: &mut [f32]) {
        for ((r, t), o) in reference.chunks_exact(4).zip(target.chunks_exact(4)).zip(out.chunks_exact_mut(4)) {
            o.copy_from_slice(&self.encode_one(r, t));
        }
    }

    /// Decodes deltas `[n, 4k]` relative to `reference` `[n, 4]` into `out` `[n, 4k]`.
    pub fn decode(&self, reference: &[f32], deltas: &[f32], k: usize, out: &mut [f32]) {
        if k == 0 {
            return;
        }
        for ((r, d), o) in reference.chunks_exact(4).zip(deltas.chunks_exact(4 * k)).zip(out.chunks_exact_mut(4 * k)) {
            for (dd, oo) in d.chunks_exact(4).zip(o.chunks_exact_mut(4)) {
                oo.copy_from_slice(&self.decode_one(r, dd));
            }
        }
    }
}

/// Batched NMS (torchvision `batched_nms`): greedy in descending score order ([`score_key`]), a box is dropped
/// when a kept box of the same class overlaps it with IoU > `iou_threshold`; at most `max_out` are kept.
/// Returns the kept indices in descending score order. `boxes` is flat xyxy (`4n`).
pub fn nms_flat(boxes: &[f32], scores: &[f32], classes: &[i64], iou_threshold: f32, max_out: usize) -> Vec<usize> {
    let n = scores.len();
    let keys: Vec<u32> = scores.iter().map(|&s| score_key(s)).collect();
    let order = order_desc(&keys);
    // Per class: the class's boxes in score order, contiguous (position in `order`, box, area).
    let mut class_ids: Vec<i64> = classes[..n].to_vec();
    class_ids.sort_unstable();
    class_ids.dedup();
    let slot = |c: i64| class_ids.binary_search(&c).unwrap_or(0);
    let mut lists: Vec<Vec<(u32, [f32; 4], f32)>> = vec![Vec::new(); class_ids.len()];
    // Where each sorted box sits in its class list.
    let mut at = vec![0u32; n];
    for &i in &order {
        let i = i as usize;
        let l = &mut lists[slot(classes[i])];
        at[i] = l.len() as u32;
        let b = [boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3]];
        l.push((i as u32, b, area(&b)));
    }
    let mut removed: Vec<Vec<bool>> = lists.iter().map(|l| vec![false; l.len()]).collect();
    let mut keep = Vec::new();
    for &i in &order {
        if keep.len() >= max_out {
            break;
        }
        let i = i as usize;
        let c = slot(classes[i]);
        let p = at[i] as usize;
        if removed[c][p] {
            continue;
        }
        keep.push(i);
        let (list, rem) = (&lists[c], &mut removed[c]);
        let (bi, ai) = (list[p].1, list[p].2);
        for q in p + 1..list.len() {
            if !rem[q] && iou_with_areas(&bi, &list[q].1, ai, list[q].2) > iou_threshold {
                rem[q] = true;
            }
        }
    }
    keep
}

/// [`nms_flat`] on boxes as arrays.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], classes: &[i64], iou_threshold: f32, max_out: usize) -> Result<Vec<usize>> {
    if scores.len() != boxes.len() || classes.len() != boxes.len() {
        return Err(Error::Other(format!(
            "nms: {} boxes, {} scores, {} classes",
            boxes.len(),
            scores.len(),
            classes.len()
        )));
    }
    Ok(nms_flat(boxes.as_flattened(), scores, classes, iou_threshold, max_out))
}

/// Plain NMS (every box in one class), as torchvision `nms`.
pub fn nms_single_class(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Result<Vec<usize>> {
    nms(boxes, scores, &vec![0; boxes.len()], iou_threshold, boxes.len())
}

/// Indices of the `k` largest of `row` ([`score_key`] order: descending, ties to the lower index).
pub fn topk_row(row: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<(u32, u32)> = row.iter().enumerate().map(|(i, &v)| (score_key(v), i as u32)).collect();
    let cmp = |a: &(u32, u32), b: &(u32, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    idx.into_iter().map(|(_, i)| i as usize).collect()
}

/// IoU matrix of two box lists (row-major `a.len() x b.len()`).
pub fn box_iou(a: &[[f32; 4]], b: &[[f32; 4]]) -> Vec<f32> {
    let mut out = vec![0.0; a.len() * b.len()];
    iou_matrix(a.as_flattened(), b.as_flattened(), false, &mut out);
    out
}

/// Generalized IoU matrix of two box lists.
pub fn generalized_box_iou(a: &[[f32; 4]], b: &[[f32; 4]]) -> Vec<f32> {
    let mut out = vec![0.0; a.len() * b.len()];
    iou_matrix(a.as_flattened(), b.as_flattened(), true, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_scores() {
        let v = [f32::NEG_INFINITY, -2.0, -0.0, 0.0, 1e-30, 3.0, f32::INFINITY, f32::NAN];
        for w in v.windows(2) {
            assert!(score_key(w[0]) <= score_key(w[1]), "{w:?}");
        }
        assert_eq!(score_key(-0.0), score_key(0.0));
    }

    #[test]
    fn nms_per_class_and_cap() {
        let b = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]];
        let s = [0.9, 0.8, 0.7, 0.6];
        assert_eq!(nms(&b, &s, &[0, 0, 1, 0], 0.5, 10).unwrap(), vec![0, 2, 3]);
        assert_eq!(nms(&b, &s, &[0, 0, 0, 0], 0.5, 10).unwrap(), vec![0, 3]);
        assert_eq!(nms(&b, &s, &[0, 0, 1, 0], 0.5, 2).unwrap(), vec![0, 2]);
        assert_eq!(nms_single_class(&b, &s, 0.9).unwrap(), vec![0, 1, 2, 3].into_iter().filter(|&i| i != 2).collect::<Vec<_>>());
    }

    #[test]
    fn topk_ties_go_to_the_lower_index() {
        assert_eq!(topk_row(&[1.0, 3.0, 3.0, f32::NAN, 2.0], 3), vec![3, 1, 2]);
        assert_eq!(topk_row(&[0.5; 6], 4), vec![0, 1, 2, 3]);
    }

    #[test]
    fn coder_round_trip() {
        let c = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
        let r = [10.0, 20.0, 50.0, 80.0];
        let t = [12.0, 18.0, 70.0, 75.0];
        let d = c.encode_one(&r, &t);
        let back = c.decode_one(&r, &d);
        for (a, b) in back.iter().zip(&t) {
            assert!((a - b).abs() < 1e-4, "{back:?} vs {t:?}");
        }
    }
}
