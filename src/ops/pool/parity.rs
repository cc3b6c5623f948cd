//! Parity cases for `kernels/pool.cu` (max pooling and its gradient; launcher `ops/pool/launch.rs`) and the
//! gradient checks of max pooling.

use crate::parity::{Case, Gen, Tol, Work};
use crate::ops::Op;
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// `F.max_pool2d(x, kernel, stride, padding)` on `x` (NHWC), or its gradient with a random dy.
pub fn max_pool_case(dt: DType, x: &[usize], kernel: usize, stride: usize, padding: usize, bwd: bool, draw: Gen) -> Case {
    let pass = if bwd { "bwd" } else { "fwd" };
    let name = format!("max_pool2d_{pass} {dt} {x:?} k{kernel} s{stride} p{padding}");
    let mut ins = vec![(x.to_vec(), dt, draw)];
    let op = if bwd {
        let ho = super::out_size(x[1], kernel, stride, padding).expect("case geometry");
        let wo = super::out_size(x[2], kernel, stride, padding).expect("case geometry");
        ins.push((vec![x[0], ho, wo, x[3]], dt, Gen::Normal));
        Op::MaxPool2dBwd { kernel, stride, padding }
    } else {
        Op::MaxPool2d { kernel, stride, padding }
    };
    let kernel_name = format!("max_pool2d_{pass}_{dt}");
    Case::new(name, ins, Tol::for_dtype(dt), &[&kernel_name], move |g, x| g.push(op.clone(), x))
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in DTYPES {
        for bwd in [false, true] {
            // ResNet's stem pool (3, 2, 1) on odd and even sides; FPN's top level (1, 2, 0); overlapping
            // stride-1 windows; 2x2 windows; a window as large as the map. Values on a coarse grid (F16Grid, 257
            // values) make tied maxima common, so the pick among ties is checked too.
            v.push(max_pool_case(dt, &[2, 9, 12, 5], 3, 2, 1, bwd, Gen::Normal));
            v.push(max_pool_case(dt, &[1, 8, 7, 3], 3, 2, 1, bwd, Gen::F16Grid));
            v.push(max_pool_case(dt, &[2, 7, 6, 4], 1, 2, 0, bwd, Gen::Normal));
            v.push(max_pool_case(dt, &[1, 6, 5, 2], 3, 1, 1, bwd, Gen::F16Grid));
            v.push(max_pool_case(dt, &[1, 7, 9, 6], 2, 2, 0, bwd, Gen::Normal));
            v.push(max_pool_case(dt, &[1, 4, 4, 3], 4, 1, 2, bwd, Gen::Normal));
        }
    }
    v.extend(grad_cases());
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    // ResNet-50's stem pool at 800x1333, batch 2: [2, 400, 667, 64] -> [2, 200, 334, 64].
    let x = [2usize, 400, 667, 64];
    let (nx, ny) = (x.iter().product::<usize>(), 2 * 200 * 334 * 64);
    let mut v = Vec::new();
    for dt in [DType::F16, DType::F32] {
        let b = dt.size() as u64;
        v.push((max_pool_case(dt, &x, 3, 2, 1, false, Gen::Normal), Work::Bytes((nx + ny) as u64 * b)));
        v.push((max_pool_case(dt, &x, 3, 2, 1, true, Gen::Normal), Work::Bytes((nx * 2 + ny) as u64 * b)));
    }
    v
}

/// Gradient checks: distinct values (no two within 0.02) so no tie moves under the finite-difference step.
fn grad_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (k, s, p) in [(3, 2, 1), (1, 2, 0), (2, 1, 0)] {
        v.push(Case::grad(format!("max_pool2d k{k} s{s} p{p}"), &[(&[2, 5, 6, 3], Gen::Distinct)], move |g, x| {
            g.push(Op::MaxPool2d { kernel: k, stride: s, padding: p }, &[x[0]])
        }));
    }
    v
}
