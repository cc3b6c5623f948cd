//! Parity cases: the SD helpers (`kernels/sd_misc.cu`, launcher `ops/sd_misc/launch.rs`): GEGLU forward and
//! backward, the timestep embedding; and their gradient checks.

use crate::parity::{Case, Gen, Tol, Work};
use crate::ops::Op;
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn geglu_case(dt: DType, shape: &[usize], bwd: bool) -> Case {
    let pass = if bwd { "bwd" } else { "fwd" };
    let mut ins = vec![(shape.to_vec(), dt, Gen::Uniform(-4.0, 4.0))];
    if bwd {
        let mut half = shape.to_vec();
        *half.last_mut().unwrap() /= 2;
        ins.push((half, dt, Gen::Normal));
    }
    let op = if bwd { Op::GegluBwd } else { Op::Geglu };
    Case::new(format!("geglu_{pass} {dt} {shape:?}"), ins, Tol::for_dtype(dt), &[&format!("geglu_{pass}_{dt}")], move |g, x| {
        g.push(op.clone(), x)
    })
}

fn timestep_case(dt: DType, n: usize, dim: usize, flip: bool, shift: f32) -> Case {
    let op = Op::TimestepEmbedding { dim, flip_sin_to_cos: flip, shift, max_period: 10000.0 };
    let ins = vec![(vec![n], dt, Gen::Uniform(0.0, 1000.0))];
    // The output is f32 whatever t's storage is; both sides take the same rounded t.
    Case::new(
        format!("timestep_embedding t {dt} [{n}] dim {dim} flip {flip} shift {shift}"),
        ins,
        Tol::for_dtype(DType::F32),
        &[&format!("timestep_embedding_fwd_{dt}")],
        move |g, x| g.push(op.clone(), x),
    )
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        for bwd in [false, true] {
            v.push(geglu_case(dt, &[3, 5, 74], bwd));
        }
        v.push(timestep_case(dt, 5, 320, true, 0.0));
        v.push(timestep_case(dt, 3, 7, false, 1.0));
    }
    v.extend(grad_cases());
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let mut v = Vec::new();
    // GEGLU of SD's 64x64 transformer feed-forward (320 -> 2 x 1280), forward and backward; bytes moved.
    let (rows, c) = (2 * 4096usize, 1280usize);
    v.push((geglu_case(DType::F16, &[2, 4096, 2 * c], false), Work::Bytes((3 * rows * c * 2) as u64)));
    v.push((geglu_case(DType::F16, &[2, 4096, 2 * c], true), Work::Bytes((6 * rows * c * 2) as u64)));
    v.push((geglu_case(DType::F32, &[2, 4096, 2 * c], false), Work::Bytes((3 * rows * c * 4) as u64)));
    // Timestep embedding for a batch of 2 (SD).
    v.push((timestep_case(DType::F32, 2, 320, true, 0.0), Work::Bytes((2 * 4 + 2 * 320 * 4) as u64)));
    v
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

/// Cases for the CPU fast path only (`ops::cpu_fast_cases`): many rows, SD's width, and gates far into both
/// tails of the erf.
pub(crate) fn cpu_fast_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        for bwd in [false, true] {
            v.push(geglu_case(dt, &[2, 256, 2 * 1280], bwd));
        }
    }
    for bwd in [false, true] {
        let mut c = geglu_case(DType::F32, &[300, 2 * 333], bwd);
        c.inputs[0].2 = Gen::Uniform(-12.0, 12.0);
        c.name = format!("{} wide gates", c.name);
        v.push(c);
    }
    v
}
