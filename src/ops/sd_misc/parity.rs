//! Gradient-check cases of the sd_misc ops (their parity cases are still with the family they were written with).

use crate::parity::{Case, Gen, Work};
use crate::ops::Op;
use crate::tensor::DType;

pub fn cases() -> Vec<Case> {
    grad_cases()
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    vec![]
}

/// Gradient checks: GEGLU, and the timestep embedding (not differentiable in t: t is a constant here, the
/// gradient flows to the other factor).
fn grad_cases() -> Vec<Case> {
    vec![
        Case::grad("geglu", &[(&[2, 3, 8], Gen::Normal)], |g, x| g.push(Op::Geglu, &[x[0]])),
        Case::grad("timestep_embedding (constant t)", &[(&[3, 9], Gen::Normal)], |g, x| {
            let t = g.fill(17.0, &[3], DType::F32);
            let op = Op::TimestepEmbedding { dim: 9, flip_sin_to_cos: true, shift: 0.0, max_period: 10000.0 };
            let e = g.push(op, &[t])?;
            g.mul(e, x[0])
        }),
    ]
}
