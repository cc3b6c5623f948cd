//! Gradient-check cases of the groupnorm ops (their parity cases are still with the family they were written with).

use crate::parity::{Case, Gen, Work};
use crate::ops::Op;

pub fn cases() -> Vec<Case> {
    grad_cases()
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    vec![]
}

/// Gradient checks of group norm with weight and bias as inputs (the nn-level ones with parameters are in
/// tests/gradcheck.rs).
fn grad_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (silu, eps) in [(false, 1e-5), (true, 1e-6)] {
        let ins: &[(&[usize], Gen)] = &[(&[2, 3, 2, 6], Gen::Normal), (&[6], Gen::Normal), (&[6], Gen::Normal)];
        v.push(Case::grad(format!("group_norm silu={silu}"), ins, move |g, x| {
            g.push(Op::GroupNorm { groups: 3, eps, silu }, &[x[0], x[1], x[2]])
        }));
    }
    v
}
