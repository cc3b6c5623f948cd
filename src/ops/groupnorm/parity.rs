//! Parity cases: group norm (`kernels/groupnorm.cu`, launcher `ops/groupnorm/launch.rs`), forward and backward,
//! with and without the fused SiLU; and its gradient checks.

use crate::parity::{Case, Gen, Tol, Work};
use crate::tensor::DType;
use crate::ops::Op;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn group_norm_case(dt: DType, shape: &[usize], groups: usize, silu: bool, bwd: bool) -> Case {
    let c = shape[shape.len() - 1];
    let pass = if bwd { "bwd" } else { "fwd" };
    // The kernels the launcher picks: one block per group, or the split path (launch::split).
    let count = shape[1..].iter().product::<usize>() / groups;
    let kernels: Vec<String> = if super::launch::split(shape[0] * groups, count).is_some() {
        let mut k = vec![format!("group_norm_part_{dt}")];
        if bwd {
            k.push(format!("group_norm_bwd_part_{dt}"));
        }
        k.push(format!("group_norm_{pass}_split_{dt}"));
        k
    } else {
        vec![format!("group_norm_{pass}_{dt}")]
    };
    let name = format!("group_norm_{pass} {dt} {shape:?} groups {groups}{}", if silu { " silu" } else { "" });
    // x with an offset, so the mean matters; weights around 1.
    let mut ins = vec![
        (shape.to_vec(), dt, Gen::Uniform(-1.0, 3.0)),
        (vec![c], dt, Gen::Uniform(0.5, 1.5)),
        (vec![c], dt, Gen::Normal),
    ];
    if bwd {
        ins.push((shape.to_vec(), dt, Gen::Normal));
    }
    let eps = 1e-5;
    let op = if bwd { Op::GroupNormBwd { groups, eps, silu } } else { Op::GroupNorm { groups, eps, silu } };
    let kernels: Vec<&str> = kernels.iter().map(|k| k.as_str()).collect();
    Case::new(name, ins, Tol::for_dtype(dt), &kernels, move |g, x| g.push(op.clone(), x))
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        // Group norm: 4 channels a group; a group of 1200 elements with 3 channels (512 % 3 != 0: carries);
        // one group of 1100 channels (more channels than threads); rank 3 and rank 2 (no middle axes).
        for bwd in [false, true] {
            for silu in [false, true] {
                v.push(group_norm_case(dt, &[2, 3, 4, 16], 4, silu, bwd));
                v.push(group_norm_case(dt, &[1, 20, 20, 6], 2, silu, bwd));
            }
            v.push(group_norm_case(dt, &[1, 2, 1100], 1, true, bwd));
            v.push(group_norm_case(dt, &[3, 12], 3, false, bwd));
            // Split over blocks (launch::split): 2 chunks of 8192; 2 chunks of 8402 elements with 3 channels a
            // group (a chunk starts mid-pixel); 2 samples of one group, 4 chunks each.
            v.push(group_norm_case(dt, &[1, 64, 64, 8], 2, false, bwd));
            v.push(group_norm_case(dt, &[1, 3, 1867, 6], 2, true, bwd));
            v.push(group_norm_case(dt, &[2, 100, 100, 4], 1, false, bwd));
        }
    }
    v.extend(grad_cases());
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let mut v = Vec::new();
    let f16 = DType::F16;
    // Group norm (32 groups, SiLU): UNet [2, 64, 64, 320] and the VAE's [1, 512, 512, 128] (both split over
    // blocks), UNet [2, 16, 16, 1280] (one block a group).
    for shape in [&[2usize, 64, 64, 320][..], &[1, 512, 512, 128][..], &[2, 16, 16, 1280][..]] {
        let n: usize = shape.iter().product();
        v.push((group_norm_case(f16, shape, 32, true, false), Work::Bytes((2 * n * 2) as u64)));
        v.push((group_norm_case(f16, shape, 32, true, true), Work::Bytes((3 * n * 2) as u64)));
    }
    let n = 2 * 64 * 64 * 320;
    v.push((group_norm_case(DType::F32, &[2, 64, 64, 320], 32, false, false), Work::Bytes((2 * n * 4) as u64)));
    // f32 with SiLU, forward and backward: the CPU engine's case (what PyTorch on the CPU is timed at).
    v.push((group_norm_case(DType::F32, &[2, 64, 64, 320], 32, true, false), Work::Bytes((2 * n * 4) as u64)));
    v.push((group_norm_case(DType::F32, &[2, 64, 64, 320], 32, true, true), Work::Bytes((3 * n * 4) as u64)));
    v
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

/// Cases for the CPU fast path only (`ops::cpu_fast_cases`): several statistics tasks per sample (`fast.rs`
/// cuts a sample into tasks of 2^15 elements and runs of 32 pixels), many groups, f16/bf16, with and without
/// SiLU.
pub(crate) fn cpu_fast_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for bwd in [false, true] {
        v.push(group_norm_case(DType::F32, &[2, 32, 32, 320], 32, true, bwd));
        v.push(group_norm_case(DType::F32, &[1, 33, 41, 96], 3, false, bwd));
        v.push(group_norm_case(DType::F16, &[2, 24, 24, 128], 32, true, bwd));
        v.push(group_norm_case(DType::BF16, &[1, 70, 70, 64], 32, true, bwd));
    }
    v
}
