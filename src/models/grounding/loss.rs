//! Matching (on the host, Hungarian per image) and the loss graph (stage 1 of the training graph): sigmoid focal,
//! L1 and GIoU on every decoder layer and the selected encoder proposals, normalised by the number of boxes.

use super::layers::Ctx;
use super::{GroundTargets, GroundingConfig};
use crate::detection::hungarian;
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op, UnaryOp};
use crate::tensor::{DType, HostTensor};

/// The loss nodes added to a forward graph.
pub struct LossGraph {
    /// Weighted sum over outputs of `loss_class * focal + loss_bbox * l1 + loss_giou * giou`, shape `[]`.
    pub total: NodeId,
    /// `(output name, focal, l1, giou)` per output, each `[]`.
    pub terms: Vec<(String, NodeId, NodeId, NodeId)>,
    /// Target rows per image in the graph.
    pub max_targets: usize,
}

pub const INV_NUM_BOXES: &str = "loss.inv_num_boxes";
pub const TGT_BOXES: &str = "loss.tgt_boxes";
pub const TGT_WEIGHT: &str = "loss.tgt_weight";
pub fn onehot_input(output: &str) -> String {
    format!("loss.onehot.{output}")
}
pub fn idx_input(output: &str) -> String {
    format!("loss.idx.{output}")
}

/// Adds the stage-1 loss inputs and nodes for every output of `head` (targets padded to `max_targets` rows).
///
/// `outputs`: `(name, logits [B, K, T], boxes [B, K, 4])` of the forward graph; `text_mask` its `[B, 1, T]` input.
pub fn build_loss(
    g: &mut Graph,
    ctx: &mut Ctx,
    cfg: &GroundingConfig,
    outputs: &[(String, NodeId, NodeId)],
    text_mask: NodeId,
    max_targets: usize,
) -> Result<LossGraph> {
    let m = max_targets.max(1);
    let (b, k, t) = {
        let s = g.shape(outputs[0].1);
        (s[0], s[1], s[2])
    };
    let inv_num = g.input_stage(INV_NUM_BOXES, &[1], DType::F32, 1)?;
    let tgt = g.input_stage(TGT_BOXES, &[b, m, 4], DType::F32, 1)?;
    let w = g.input_stage(TGT_WEIGHT, &[b, m, 1], DType::F32, 1)?;
    // cxcywh -> xyxy as a product with a constant matrix (each entry one exact product, one rounding).
    let conv = HostTensor::from_f32(&[4, 4], DType::F32, &[1., 0., 1., 0., 0., 1., 0., 1., -0.5, 0., 0.5, 0., 0., -0.5, 0., 0.5])?;
    let conv = ctx.constant(g, "cxcywh_to_xyxy", conv)?;
    let tgt_xyxy = g.matmul(tgt, conv)?;
    let w2 = g.reshape(w, &[b, m])?;
    let mut total: Option<NodeId> = None;
    let mut terms = Vec::new();
    for (name, logits, boxes) in outputs {
        let onehot = g.input_stage(&onehot_input(name), &[b, k, t], DType::F32, 1)?;
        let idx = g.input_stage(&idx_input(name), &[b, m, 4], DType::I64, 1)?;
        let focal = g.push(Op::SigmoidFocalLoss { alpha: cfg.focal_alpha, gamma: cfg.focal_gamma }, &[*logits, onehot])?;
        let focal = g.mul(focal, text_mask)?; // padding text tokens carry no loss
        let focal = g.sum_all(focal)?;
        let focal = g.mul(focal, inv_num)?;
        let pred = g.push(Op::Gather { axis: 1 }, &[*boxes, idx])?; // (B, M, 4)
        let diff = g.sub(pred, tgt)?;
        let diff = g.unary(UnaryOp::Abs, diff)?;
        let diff = g.mul(diff, w)?;
        let l1 = g.sum_all(diff)?;
        let l1 = g.mul(l1, inv_num)?;
        let pred_xyxy = g.matmul(pred, conv)?;
        let gl = g.push(Op::GiouLoss { eps: 1e-7 }, &[pred_xyxy, tgt_xyxy])?; // (B, M)
        let gl = g.mul(gl, w2)?;
        let gl = g.sum_all(gl)?;
        let gl = g.mul(gl, inv_num)?;
        let a = g.scale(focal, cfg.loss_class)?;
        let bb = g.scale(l1, cfg.loss_bbox)?;
        let c = g.scale(gl, cfg.loss_giou)?;
        let s = g.add(a, bb)?;
        let s = g.add(s, c)?;
        total = Some(match total {
            None => s,
            Some(t0) => g.add(t0, s)?,
        });
        for n in [focal, l1, gl] {
            g.mark_output(n);
        }
        terms.push((name.clone(), focal, l1, gl));
    }
    let total = total.expect("the head has outputs");
    let total = g.reshape(total, &[])?;
    Ok(LossGraph { total, terms, max_targets: m })
}

/// Hungarian matching of one output for every image: per image `(query indices, target indices)`, from logits
/// `[B, K, T]` and boxes `[B, K, 4]` (cxcywh) read back from stage 0. Costs as DETR / DINO with focal class cost:
/// `cost_bbox * L1 + cost_class * (pos - neg) - cost_giou * GIoU`.
pub fn match_output(
    cfg: &GroundingConfig,
    logits: &[f32],
    boxes: &[f32],
    dims: [usize; 3],
    targets: &GroundTargets,
) -> Result<Vec<(Vec<usize>, Vec<usize>)>> {
    let [b_n, k, t] = dims;
    let (a, gm) = (cfg.focal_alpha as f64, cfg.focal_gamma as f64);
    let mut out = Vec::with_capacity(b_n);
    for b in 0..b_n {
        let (tb, tl) = (&targets.boxes[b], &targets.labels[b]);
        if tl.is_empty() {
            out.push((vec![], vec![]));
            continue;
        }
        let n = tl.len();
        let pred: Vec<[f32; 4]> = (0..k).map(|q| {
            let o = (b * k + q) * 4;
            xyxy([boxes[o], boxes[o + 1], boxes[o + 2], boxes[o + 3]])
        }).collect();
        let tx: Vec<[f32; 4]> = tb.iter().map(|&bx| xyxy(bx)).collect();
        let giou = crate::boxes::generalized_box_iou(&pred, &tx); // (K, n)
        let mut cost = vec![0.0f64; k * n];
        for q in 0..k {
            let o = (b * k + q) * 4;
            for j in 0..n {
                let x = logits[(b * k + q) * t + tl[j]] as f64;
                let p = 1.0 / (1.0 + (-x).exp());
                let neg = (1.0 - a) * p.powf(gm) * (-(1.0 - p + 1e-8).ln());
                let pos = a * (1.0 - p).powf(gm) * (-(p + 1e-8).ln());
                let l1: f64 = (0..4).map(|c| (boxes[o + c] as f64 - tb[j][c] as f64).abs()).sum();
                cost[q * n + j] = cfg.cost_bbox as f64 * l1 + cfg.cost_class as f64 * (pos - neg)
                    - cfg.cost_giou as f64 * giou[q * n + j] as f64;
            }
        }
        let asg = hungarian::linear_sum_assignment(&cost, k, n, false)
            .map_err(|e| Error::Other(format!("grounding matching, image {b}: {e}")))?;
        out.push((asg.row_ind, asg.col_ind));
    }
    Ok(out)
}

fn xyxy(b: [f32; 4]) -> [f32; 4] {
    [b[0] - 0.5 * b[2], b[1] - 0.5 * b[3], b[0] + 0.5 * b[2], b[1] + 0.5 * b[3]]
}

/// An i64 tensor.
pub fn i64_tensor(shape: &[usize], vals: &[i64]) -> Result<HostTensor> {
    let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    HostTensor::from_bytes(shape, DType::I64, data)
}

/// The stage-1 inputs shared by every output: target boxes `[B, M, 4]` (padding rows hold a dummy box), weights
/// `[B, M, 1]` and `1 / max(number of boxes, 1)`.
pub fn target_inputs(targets: &GroundTargets, m: usize) -> Result<Vec<(String, HostTensor)>> {
    let b_n = targets.boxes.len();
    let mut tb = Vec::with_capacity(b_n * m * 4);
    let mut w = Vec::with_capacity(b_n * m);
    for b in 0..b_n {
        for j in 0..m {
            match targets.boxes[b].get(j) {
                Some(bx) => {
                    tb.extend_from_slice(bx);
                    w.push(1.0);
                }
                None => {
                    tb.extend_from_slice(&[0.5, 0.5, 0.5, 0.5]);
                    w.push(0.0);
                }
            }
        }
    }
    let n: usize = targets.labels.iter().map(|l| l.len()).sum();
    Ok(vec![
        (TGT_BOXES.into(), HostTensor::from_f32(&[b_n, m, 4], DType::F32, &tb)?),
        (TGT_WEIGHT.into(), HostTensor::from_f32(&[b_n, m, 1], DType::F32, &w)?),
        (INV_NUM_BOXES.into(), HostTensor::from_f32(&[1], DType::F32, &[1.0 / (n.max(1) as f32)])?),
    ])
}

/// The stage-1 inputs of one output from its matching: one-hot targets `[B, K, T]` and the matched query of
/// each target row, `[B, M, 4]` i64 (0 on padding rows).
pub fn match_inputs(
    name: &str,
    matching: &[(Vec<usize>, Vec<usize>)],
    targets: &GroundTargets,
    dims: [usize; 3],
    m: usize,
) -> Result<Vec<(String, HostTensor)>> {
    let [b_n, k, t] = dims;
    let mut onehot = vec![0.0f32; b_n * k * t];
    let mut idx = vec![0i64; b_n * m * 4];
    for (b, (qs, js)) in matching.iter().enumerate() {
        for (&q, &j) in qs.iter().zip(js) {
            onehot[(b * k + q) * t + targets.labels[b][j]] = 1.0;
            for c in 0..4 {
                idx[(b * m + j) * 4 + c] = q as i64;
            }
        }
    }
    Ok(vec![
        (onehot_input(name), HostTensor::from_f32(&[b_n, k, t], DType::F32, &onehot)?),
        (idx_input(name), i64_tensor(&[b_n, m, 4], &idx)?),
    ])
}
