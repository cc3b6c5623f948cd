//! Parity cases for `kernels/det_losses.cu` (sigmoid focal loss, GIoU loss, and their gradients; launcher
//! `ops/det_losses/launch.rs`), and the gradient checks of both losses.

use crate::graph::{BinaryOp, UnaryOp};
use crate::parity::{frozen, Case, Gen, Tol, Work};
use crate::ops::Op;
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

pub fn focal_case(dt: DType, shape: &[usize], alpha: f32, gamma: f32, soft: bool, bwd: bool) -> Case {
    let pass = if bwd { "bwd" } else { "fwd" };
    let name = format!("sigmoid_focal_loss_{pass} {dt} {shape:?} alpha={alpha} gamma={gamma}{}", if soft { " soft" } else { "" });
    let mut ins = vec![
        (shape.to_vec(), dt, Gen::Uniform(-6.0, 6.0)),
        (shape.to_vec(), dt, if soft { Gen::Uniform(0.0, 1.0) } else { Gen::Index(2) }),
    ];
    let op = if bwd {
        ins.push((shape.to_vec(), dt, Gen::Normal));
        Op::SigmoidFocalLossBwd { alpha, gamma }
    } else {
        Op::SigmoidFocalLoss { alpha, gamma }
    };
    let kernel = format!("sigmoid_focal_loss_{pass}_{dt}");
    Case::new(name, ins, Tol::for_dtype(dt), &[&kernel], move |g, x| g.push(op.clone(), x))
}

/// GIoU loss on random box pairs in a 64-pixel image (overlapping, nested and disjoint pairs all occur).
pub fn giou_case(dt: DType, lead: &[usize], bwd: bool) -> Case {
    let pass = if bwd { "bwd" } else { "fwd" };
    let mut shape = lead.to_vec();
    shape.push(4);
    let mut ins = vec![(shape.clone(), dt, Gen::Boxes(64.0)), (shape, dt, Gen::Boxes(64.0))];
    let op = if bwd {
        ins.push((lead.to_vec(), dt, Gen::Normal));
        Op::GiouLossBwd { eps: 1e-7 }
    } else {
        Op::GiouLoss { eps: 1e-7 }
    };
    let kernel = format!("giou_loss_{pass}_{dt}");
    // f32: the kernel computes in f32 what the reference computes in f64; areas of up to 1e3 px^2 enter
    // differences like (C - U) / C, so allow 1e-5 absolute on values of order 1.
    let tol = if dt == DType::F32 { Tol { atol: 1e-5, rtol: 1e-5 } } else { Tol::for_dtype(dt) };
    Case::new(format!("giou_loss_{pass} {dt} {lead:?}"), ins, tol, &[&kernel], move |g, x| g.push(op.clone(), x))
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        for bwd in [false, true] {
            for (alpha, gamma, soft) in [(0.25, 2.0, false), (-1.0, 0.0, true), (0.5, 1.5, true)] {
                v.push(focal_case(dt, &[7, 13], alpha, gamma, soft, bwd));
            }
            v.push(giou_case(dt, &[37], bwd));
            v.push(giou_case(dt, &[2, 5], bwd));
        }
    }
    v.extend(grad_cases());
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let mut v = Vec::new();
    // RetinaNet-sized classification loss: 2 images x ~50k anchors x 80 classes.
    let n = 2 * 50_000 * 80;
    v.push((focal_case(DType::F16, &[2, 50_000, 80], 0.25, 2.0, false, false), Work::Bytes(n as u64 * 6)));
    v.push((focal_case(DType::F16, &[2, 50_000, 80], 0.25, 2.0, false, true), Work::Bytes(n as u64 * 8)));
    // DETR-style box loss over many matched pairs.
    let m = 100_000;
    v.push((giou_case(DType::F32, &[m], false), Work::Bytes(m as u64 * 36)));
    v.push((giou_case(DType::F32, &[m], true), Work::Bytes(m as u64 * 52)));
    v
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
