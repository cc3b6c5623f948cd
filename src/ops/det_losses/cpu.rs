//! Detection losses: sigmoid focal loss (torchvision.ops.sigmoid_focal_loss) and the GIoU loss
//! (torchvision.ops.generalized_box_iou_loss), both with reduction "none", and their gradients w.r.t. the
//! logits / the predicted boxes. Computed per element in f64 from the stored values, rounded once.

use crate::backend::cpu::kernels::{COST_TRANSCENDENTAL, View, floats, par_chunks, par_chunks_unit, with_f32_out, cpu_err};
use crate::ops::Op;
use crate::error::Result;

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 { 1.0 / (1.0 + (-x).exp()) } else { x.exp() / (1.0 + x.exp()) }
}

/// (loss, dloss/dx) of the focal loss at logit `x`, target `t`.
pub(crate) fn focal(x: f64, t: f64, alpha: f64, gamma: f64) -> (f64, f64) {
    let (p, q) = (sigmoid(x), sigmoid(-x));
    // Binary cross-entropy with logits, in the stable form.
    let ce = x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
    // 1 - p_t = p (1 - t) + (1 - p) t, without cancellation.
    let m = p * (1.0 - t) + q * t;
    let mg = if gamma == 0.0 { 1.0 } else { m.powf(gamma) };
    let a = if alpha >= 0.0 { alpha * t + (1.0 - alpha) * (1.0 - t) } else { 1.0 };
    // d ce / dx = p - t;  d m / dx = (1 - 2t) p q;  d m^g / dm = g m^(g-1).
    let dmg = if gamma == 0.0 { 0.0 } else { gamma * m.powf(gamma - 1.0) * (1.0 - 2.0 * t) * p * q };
    (a * ce * mg, a * ((p - t) * mg + ce * dmg))
}

pub(super) fn sigmoid_focal_loss(
    alpha: f32,
    gamma: f32,
    x: &View,
    t: &View,
    dy: Option<&View>,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    let (xs, ts) = (floats(x), floats(t));
    let gs = dy.map(floats);
    with_f32_out(out.dtype, out_bytes, |o| {
        par_chunks(o, COST_TRANSCENDENTAL * 2, |s, c| {
            for (i, v) in c.iter_mut().enumerate() {
                let j = s + i;
                let (l, d) = focal(xs[j] as f64, ts[j] as f64, alpha as f64, gamma as f64);
                *v = match &gs {
                    Some(g) => (d * g[j] as f64) as f32,
                    None => l as f32,
                };
            }
        });
        Ok(())
    })
}

/// d max(a, b) / da as torch defines it: 1, 0.5 on a tie, 0.
fn dmax(a: f64, b: f64) -> f64 {
    if a > b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// (1 - GIoU(p, t), d/dp) for one pair of xyxy boxes, with torchvision's formulas: the intersection counts only
/// when both its sides are positive; `eps` is added to the union and to the enclosing area.
pub(crate) fn giou_loss(p: [f64; 4], t: [f64; 4], eps: f64) -> (f64, [f64; 4]) {
    let [x1, y1, x2, y2] = p;
    let [a1, b1, a2, b2] = t;
    let (ix1, iy1, ix2, iy2) = (x1.max(a1), y1.max(b1), x2.min(a2), y2.min(b2));
    let (iw, ih) = (ix2 - ix1, iy2 - iy1);
    let mask = iw > 0.0 && ih > 0.0;
    let inter = if mask { iw * ih } else { 0.0 };
    let area_p = (x2 - x1) * (y2 - y1);
    let union = area_p + (a2 - a1) * (b2 - b1) - inter;
    let iou = inter / (union + eps);
    let (cx1, cy1, cx2, cy2) = (x1.min(a1), y1.min(b1), x2.max(a2), y2.max(b2));
    let (cw, ch) = (cx2 - cx1, cy2 - cy1);
    let area_c = cw * ch;
    let giou = iou - (area_c - union) / (area_c + eps);
    let (ue, ce) = (union + eps, area_c + eps);
    // d giou / d inter, d area_p, d area_c.
    let d_inter = 1.0 / ue + inter / (ue * ue) - 1.0 / ce;
    let d_area = -inter / (ue * ue) + 1.0 / ce;
    let d_c = -1.0 / ce + (area_c - union) / (ce * ce);
    let mut g = [0.0; 4];
    // Predicted area.
    g[0] -= d_area * (y2 - y1);
    g[2] += d_area * (y2 - y1);
    g[1] -= d_area * (x2 - x1);
    g[3] += d_area * (x2 - x1);
    if mask {
        g[0] -= d_inter * ih * dmax(x1, a1);
        g[2] += d_inter * ih * dmax(-x2, -a2);
        g[1] -= d_inter * iw * dmax(y1, b1);
        g[3] += d_inter * iw * dmax(-y2, -b2);
    }
    // Enclosing box.
    g[0] -= d_c * ch * dmax(-x1, -a1);
    g[2] += d_c * ch * dmax(x2, a2);
    g[1] -= d_c * cw * dmax(-y1, -b1);
    g[3] += d_c * cw * dmax(y2, b2);
    (1.0 - giou, g.map(|v| -v))
}

pub(super) fn giou(eps: f32, p: &View, t: &View, dy: Option<&View>, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let (ps, ts) = (floats(p), floats(t));
    let gs = dy.map(floats);
    let box4 = |s: &[f32], i: usize| -> [f64; 4] { std::array::from_fn(|k| s[i * 4 + k] as f64) };
    with_f32_out(out.dtype, out_bytes, |o| {
        match &gs {
            None => par_chunks(o, 32, |s, c| {
                for (i, v) in c.iter_mut().enumerate() {
                    *v = giou_loss(box4(&ps, s + i), box4(&ts, s + i), eps as f64).0 as f32;
                }
            }),
            Some(g) => par_chunks_unit(o, 4, 64, |s, c| {
                for (i, v) in c.chunks_mut(4).enumerate() {
                    let j = s / 4 + i;
                    let (_, d) = giou_loss(box4(&ps, j), box4(&ts, j), eps as f64);
                    for (vk, dk) in v.iter_mut().zip(d) {
                        *vk = (dk * g[j] as f64) as f32;
                    }
                }
            }),
        }
        Ok(())
    })
}

/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::SigmoidFocalLoss { alpha, gamma } => {
            sigmoid_focal_loss(*alpha, *gamma, &ins[0], &ins[1], None, out, out_bytes)
        }
        Op::SigmoidFocalLossBwd { alpha, gamma } => {
            sigmoid_focal_loss(*alpha, *gamma, &ins[0], &ins[1], Some(&ins[2]), out, out_bytes)
        }
        Op::GiouLoss { eps } => giou(*eps, &ins[0], &ins[1], None, out, out_bytes),
        Op::GiouLossBwd { eps } => giou(*eps, &ins[0], &ins[1], Some(&ins[2]), out, out_bytes),
        _ => Err(cpu_err(format!("{} is not a det_losses op", op.describe()))),
    }
}
