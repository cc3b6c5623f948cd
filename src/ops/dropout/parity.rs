//! Parity cases: dropout (`kernels/dropout.cu`, launcher `ops/dropout/launch.rs`). The mask is a pure function
//! of (seed, step, index) computed identically on both sides, so parity is exact; and gradient checks.

use crate::ops::Op;
use crate::parity::{Case, Gen, Tol, Work};
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn case(dt: DType, shape: &[usize], p: f32) -> Case {
    let ins = vec![(shape.to_vec(), dt, Gen::Normal), (vec![2], DType::I64, Gen::Index(1 << 30))];
    Case::new(
        format!("dropout p {p} {dt} {shape:?}"),
        ins,
        Tol { atol: 0.0, rtol: 0.0 },
        &[&format!("dropout_fwd_{dt}")],
        move |g, x| g.push(Op::Dropout { p }, x),
    )
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        for p in [0.0, 0.1, 0.5] {
            v.push(case(dt, &[3, 1037], p));
        }
    }
    v.extend(grad_cases());
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    // SD-sized activations, f16: read x, write y.
    let n = 2 * 4096 * 1280usize;
    vec![(case(DType::F16, &[2, 4096, 1280], 0.1), Work::Bytes((2 * n * 2) as u64))]
}

/// Gradient checks: the mask is fixed by a constant key, so dropout is linear in x.
fn grad_cases() -> Vec<Case> {
    vec![Case::grad("dropout p 0.3", &[(&[4, 9], Gen::Normal)], |g, x| {
        let key = g.fill(12345.0, &[2], DType::I64);
        g.push(Op::Dropout { p: 0.3 }, &[x[0], key])
    })]
}
