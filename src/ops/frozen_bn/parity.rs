//! Parity cases for `kernels/frozen_bn.cu` (launcher `ops/frozen_bn/launch.rs`) and the gradient check of
//! frozen batch norm w.r.t. x.

use crate::graph::UnaryOp;
use crate::parity::{frozen, Case, Gen, Tol, Work};
use crate::ops::Op;
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// `FrozenBatchNorm2d` on `x` (channels last) with random weight, bias, mean and a positive variance.
pub fn frozen_bn_case(dt: DType, x: &[usize], eps: f32, relu: bool) -> Case {
    let c = *x.last().expect("rank >= 1");
    let ins = vec![
        (x.to_vec(), dt, Gen::Normal),
        (vec![c], dt, Gen::Uniform(-1.5, 1.5)),
        (vec![c], dt, Gen::Normal),
        (vec![c], dt, Gen::Normal),
        (vec![c], dt, Gen::Uniform(0.0, 3.0)),
    ];
    let kernel = format!("frozen_batch_norm_fwd_{dt}");
    // f32: the kernel rounds every step as the reference does, so the results are equal.
    let tol = if dt == DType::F32 { Tol { atol: 0.0, rtol: 0.0 } } else { Tol::for_dtype(dt) };
    let name = format!("frozen_batch_norm {dt} {x:?} eps {eps}{}", if relu { " relu" } else { "" });
    Case::new(name, ins, tol, &[&kernel], move |g, x| {
        g.push(Op::FrozenBatchNorm { eps, relu }, x)
    })
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        v.push(frozen_bn_case(dt, &[2, 5, 7, 6], 1e-5, false));
        v.push(frozen_bn_case(dt, &[2, 5, 7, 6], 1e-5, true));
        v.push(frozen_bn_case(dt, &[3, 17], 0.0, false));
        v.push(frozen_bn_case(dt, &[1, 3, 4, 300], 1e-3, true));
    }
    v.extend(grad_cases());
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    // ResNet-50's widest frozen norm at 800x1333, batch 2: [2, 200, 334, 256].
    let x = [2usize, 200, 334, 256];
    let n = x.iter().product::<usize>() as u64;
    vec![
        (frozen_bn_case(DType::F16, &x, 1e-5, true), Work::Bytes(n * 4)),
        (frozen_bn_case(DType::F32, &x, 1e-5, true), Work::Bytes(n * 8)),
    ]
}

/// Gradient checks w.r.t. x; the statistics come through `frozen` (no gradient, as in torchvision), the
/// variance made positive (at least 0.75). With ReLU: zero bias and mean, weights in [0.25, 1.25] and x away
/// from zero, so no output is within a finite-difference step of the kink.
fn grad_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for relu in [false, true] {
        let x_gen = if relu { Gen::AwayFromZero } else { Gen::Normal };
        let ins: &[(&[usize], Gen)] = &[(&[2, 3, 4, 5], x_gen), (&[4, 5], Gen::GridB)];
        let name = format!("frozen_batch_norm{}", if relu { " relu" } else { "" });
        v.push(Case::grad(name, ins, move |g, x| {
            let s = frozen(g, x[1])?;
            let row = |g: &mut crate::graph::Graph, i: usize| -> crate::error::Result<_> {
                let r = g.slice(s, 0, i, i + 1)?;
                g.reshape(r, &[5])
            };
            let (w, b, m, var) = (row(g, 0)?, row(g, 1)?, row(g, 2)?, row(g, 3)?);
            let var = g.unary(UnaryOp::Abs, var)?;
            let var = g.affine(var, 1.0, 0.75)?;
            // Weights of at most 1.25 keep the loss small enough that f32 rounding stays out of the differences.
            let (w, b, m) = if relu {
                let w = g.unary(UnaryOp::Abs, w)?;
                let w = g.affine(w, 0.5, 0.25)?;
                let z = g.fill(0.0, &[5], crate::tensor::DType::F32);
                (w, z, z)
            } else {
                (g.scale(w, 0.5)?, b, m)
            };
            g.push(Op::FrozenBatchNorm { eps: 1e-5, relu }, &[x[0], w, b, m, var])
        }));
    }
    v
}
