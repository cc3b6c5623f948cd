//! Gradient-check cases of the det_losses ops (their parity cases are still with the family they were written with).

use crate::graph::{BinaryOp, UnaryOp};
use crate::parity::{frozen, Case, Gen, Work};
use crate::ops::Op;
use crate::tensor::DType;

pub fn cases() -> Vec<Case> {
    grad_cases()
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    vec![]
}

/// Gradient checks: focal loss w.r.t. the logits (0/1 targets from a comparison, no gradient); GIoU loss
/// w.r.t. pred, whose corners are odd multiples of 1/8 while the target's are integers, so no min/max tie
/// (kink) is within a step: pred = (a, a + b + 2.25) with b on the 1/4 grid (positive sides).
fn grad_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (alpha, gamma) in [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5)] {
        let name = format!("sigmoid_focal_loss alpha={alpha} gamma={gamma}");
        v.push(Case::grad(name, &[(&[3, 5], Gen::Normal), (&[3, 5], Gen::AwayFromZero)], move |g, x| {
            let zero = g.fill(0.0, &[1], DType::F32);
            let t = g.binary(BinaryOp::Gt, x[1], zero)?;
            let x0 = g.scale(x[0], 2.0)?;
            g.push(Op::SigmoidFocalLoss { alpha, gamma }, &[x0, t])
        }));
    }
    v.push(Case::grad("giou_loss", &[(&[6, 2], Gen::GridA), (&[6, 2], Gen::GridB), (&[6, 4], Gen::GridB)], |g, x| {
        let wh = g.affine(x[1], 1.0, 2.25)?;
        let hi = g.add(x[0], wh)?;
        let pred = g.concat(&[x[0], hi], 1)?;
        let t = frozen(g, x[2])?;
        let t = g.scale(t, 0.5)?;
        let tlo = g.slice(t, 1, 0, 2)?;
        let twh = g.slice(t, 1, 2, 4)?;
        let twh = g.unary(UnaryOp::Abs, twh)?;
        let twh = g.affine(twh, 1.0, 1.0)?;
        let thi = g.add(tlo, twh)?;
        let target = g.concat(&[tlo, thi], 1)?;
        g.push(Op::GiouLoss { eps: 1e-7 }, &[pred, target])
    }));
    v
}
