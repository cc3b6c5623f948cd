//! Parity cases: reduction kernels (`kernels/reduce.cu`, launcher `ops/reduce/launch.rs`).

use crate::parity::{Case, Gen, Tol, Work};
use crate::graph::ReduceOp;
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const OPS: [(ReduceOp, &str); 3] = [(ReduceOp::Sum, "sum"), (ReduceOp::Mean, "mean"), (ReduceOp::Max, "max")];

/// A reduction case: `col` names the kernel variant the launcher picks for this layout (the column kernel
/// when the innermost kept axis is contiguous).
fn case(op: ReduceOp, name: &str, dt: DType, shape: &[usize], axes: &[usize], keepdim: bool, col: bool) -> Case {
    let kernel = format!("reduce_{name}{}_{dt}", if col { "_col" } else { "" });
    case_with(op, name, dt, shape, axes, keepdim, &[&kernel])
}

/// A case of the two-pass path (few outputs, long rows): the partials kernel, then the combining one.
fn split_case(op: ReduceOp, name: &str, dt: DType, shape: &[usize], axes: &[usize]) -> Case {
    let part = if name == "max" { "max" } else { "sum" };
    let kernels = [format!("reduce_{part}_part_{dt}"), format!("reduce_{name}_fin_{dt}")];
    case_with(op, name, dt, shape, axes, false, &[&kernels[0], &kernels[1]])
}

fn case_with(op: ReduceOp, name: &str, dt: DType, shape: &[usize], axes: &[usize], keepdim: bool, kernels: &[&str]) -> Case {
    let axes_v = axes.to_vec();
    Case::new(
        format!("reduce {name} {dt} {shape:?} axes {axes:?}{}", if keepdim { " keepdim" } else { "" }),
        vec![(shape.to_vec(), dt, Gen::Normal)],
        // Sum and mean accumulate with a compensated f32 sum (reduce_util.cuh), so even the 5000-element
        // rows stay well inside the default f32 tolerance; max is exact.
        Tol::for_dtype(dt),
        kernels,
        move |g, x| g.reduce(op, x[0], &axes_v, keepdim),
    )
}

/// Parity cases.
fn kernel_cases() -> Vec<Case> {
    // (shape, axes, keepdim, column kernel)
    let layouts: &[(&[usize], &[usize], bool, bool)] = &[
        (&[37, 129], &[0], false, true),
        (&[37, 129], &[1], false, false),             // a block per row, scalar loads
        (&[37, 129], &[0, 1], false, false),
        (&[3, 5, 7, 11], &[1, 3], true, false), // a warp per output, two reduced axes
        (&[3, 5, 7, 11], &[1, 3], false, false),
        (&[3, 5, 7, 11], &[0, 2], false, true),
        (&[1, 5000], &[0, 1], false, false),          // one long row (16-byte packs)
        (&[6, 1000], &[1], false, false),             // rows in 16-byte packs
        (&[3, 4, 5, 6, 7], &[0, 2, 4], false, false), // three reduced axes in the row kernel
        (&[2, 3, 2, 3, 2, 3, 5], &[0, 2, 4], true, true), // three reduced axes in the column kernel
        (&[5, 0], &[1], false, false),                 // empty: sum 0, mean NaN, max -inf
    ];
    let mut v = Vec::new();
    for &(shape, axes, keepdim, col) in layouts {
        for (op, name) in OPS {
            for dt in DTYPES {
                if shape.contains(&0) && dt != DType::F32 {
                    continue;
                }
                v.push(case(op, name, dt, shape, axes, keepdim, col));
            }
        }
    }
    // The two-pass path through the workspace: 2 rows of 40000 (5 chunks each), one odd-length row
    // (uneven last chunk), and 6 outputs over two strided reduced axes (chunks start mid-axis).
    let split: &[(&[usize], &[usize])] = &[(&[2, 40_000], &[1]), (&[1, 70_001], &[0, 1]), (&[2, 300, 3, 120], &[1, 3])];
    for &(shape, axes) in split {
        for (op, name) in OPS {
            for dt in DTYPES {
                v.push(split_case(op, name, dt, shape, axes));
            }
        }
    }
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let (rows, cols) = (4096usize, 4096usize);
    let c = case(ReduceOp::Sum, "sum", DType::F32, &[rows, cols], &[1], false, false);
    let mut v = vec![(c, Work::Bytes((rows * cols * 4 + rows * 4) as u64))];
    // Bias-gradient-like column reductions over tokens and row reductions over channels, SD-sized, f16.
    let (t, ch) = (2 * 4096usize, 320usize);
    v.push((case(ReduceOp::Sum, "sum", DType::F16, &[t, ch], &[0], false, true), Work::Bytes((t * ch * 2 + ch * 2) as u64)));
    v.push((case(ReduceOp::Mean, "mean", DType::F16, &[t, ch], &[0], false, true), Work::Bytes((t * ch * 2 + ch * 2) as u64)));
    v.push((case(ReduceOp::Max, "max", DType::F16, &[t, ch], &[0], false, true), Work::Bytes((t * ch * 2 + ch * 2) as u64)));
    v.push((case(ReduceOp::Mean, "mean", DType::F16, &[t, ch], &[1], false, false), Work::Bytes((t * ch * 2 + t * 2) as u64)));
    v.push((case(ReduceOp::Max, "max", DType::F16, &[t, ch], &[1], false, false), Work::Bytes((t * ch * 2 + t * 2) as u64)));
    // Few long rows: the two-pass path (a loss or a norm over a whole tensor).
    let (r, n) = (4usize, 1usize << 22);
    v.push((split_case(ReduceOp::Sum, "sum", DType::F32, &[r, n], &[1]), Work::Bytes((r * n * 4 + r * 4) as u64)));
    v.push((split_case(ReduceOp::Mean, "mean", DType::F16, &[r, n], &[1]), Work::Bytes((r * n * 2 + r * 2) as u64)));
    v.push((split_case(ReduceOp::Max, "max", DType::F16, &[r, n], &[1]), Work::Bytes((r * n * 2 + r * 2) as u64)));
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks: every reduction over several axis sets (distinct values: no ties in max).
fn grad_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        for (axes, keep) in [(&[1usize][..], false), (&[0, 2][..], true), (&[2][..], true), (&[0, 1, 2][..], false)] {
            let name = format!("reduce {op:?} {axes:?} keep={keep}");
            v.push(Case::grad(name, &[(&[2, 3, 4], Gen::Distinct)], move |g, x| g.reduce(op, x[0], axes, keep)));
        }
    }
    v
}
