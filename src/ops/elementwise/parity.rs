//! Parity cases: elementwise kernels (`kernels/elementwise.cu`): every unary op forward and backward, every
//! binary op under several broadcast patterns, fill for all six dtypes and cast for all 36 dtype pairs.
//!
//! Tolerances are `Tol::for_dtype` throughout, with no widening needed. The kernels evaluate transcendental
//! functions in f32 (CUDA's libm on a GPU, glibc's under emu) while the CPU reference computes them in f64 and
//! rounds once; CUDA documents at most 2 ulp for expf/logf/tanhf/sinf/cosf and 4 for erfcf/powf, far inside
//! the f32 tolerance of 1e-5 relative (~40-80 ulp). The derivatives are written without cancellation (sigmoid
//! pairs, tanh' = 4e/(1+e)^2, GELU through erfc) except at the zeros of silu' and GELU', where the absolute
//! error (~1e-7) is covered by atol = 1e-6. Measured on emu over 60 seeds: worst err/tol 0.09 for f32
//! (GeluTanh backward; forward ops <= 0.02), and at most one f16/bf16 ulp (err/tol <= 0.82, which one ulp
//! never exceeds 1) where f32 results straddle a rounding boundary. Binary ops, fill and cast are exact.

use crate::parity::{Case, Gen, Tol, Work};
use crate::graph::op::{BinaryOp, Op, UnaryOp};
use crate::tensor::DType;

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Every unary op with inputs drawn from its domain.
fn unary_ops() -> Vec<(UnaryOp, Gen)> {
    let positive = Gen::Uniform(0.05, 8.0);
    let wide = Gen::Uniform(-8.0, 8.0);
    vec![
        (UnaryOp::Neg, Gen::Normal),
        (UnaryOp::Exp, Gen::Uniform(-6.0, 6.0)),
        (UnaryOp::Log, positive),
        (UnaryOp::Sqrt, positive),
        (UnaryOp::Rsqrt, positive),
        (UnaryOp::Recip, positive),
        // Normal draws are never exactly 0 (the kink of abs and relu, where both sides agree anyway).
        (UnaryOp::Abs, Gen::Normal),
        (UnaryOp::Square, Gen::Normal),
        (UnaryOp::Tanh, wide),
        (UnaryOp::Sigmoid, wide),
        (UnaryOp::Relu, Gen::Normal),
        (UnaryOp::Gelu, wide),
        (UnaryOp::GeluTanh, wide),
        (UnaryOp::Silu, wide),
        (UnaryOp::Sin, wide),
        (UnaryOp::Cos, wide),
        (UnaryOp::Affine { mul: -1.75, add: 0.3 }, Gen::Normal),
        (UnaryOp::Powf(2.5), Gen::Uniform(0.1, 4.0)),
        (UnaryOp::Powf(-0.5), Gen::Uniform(0.1, 4.0)),
        (UnaryOp::Powf(3.0), Gen::Normal),
        (UnaryOp::Powf(0.0), Gen::Normal),
    ]
}

/// Every binary op with its input draws: comparisons, max and min on small integers so ties happen.
fn binary_ops() -> Vec<(BinaryOp, Gen)> {
    let ints = Gen::Index(4);
    vec![
        (BinaryOp::Add, Gen::Normal),
        (BinaryOp::Sub, Gen::Normal),
        (BinaryOp::Mul, Gen::Normal),
        (BinaryOp::Div, Gen::Normal),
        (BinaryOp::Max, ints),
        (BinaryOp::Min, ints),
        (BinaryOp::Eq, ints),
        (BinaryOp::Gt, ints),
        (BinaryOp::Ge, ints),
    ]
}

/// Broadcast patterns `(a, b)`: same shape (packed path with a tail), outer product, a row broadcast whose
/// inner axis is not a pack multiple, scalar-shaped operands on either side, a packed bias add, rank 5.
fn binary_shapes() -> Vec<(Vec<usize>, Vec<usize>)> {
    vec![
        (vec![3, 337], vec![3, 337]),
        (vec![37, 1], vec![1, 29]),
        (vec![3, 1, 41], vec![41]),
        (vec![1], vec![5, 67]),
        (vec![5, 67], vec![1]),
        (vec![7, 3, 64], vec![3, 1]),
        (vec![9, 64], vec![64]),
        (vec![2, 3, 1, 5, 7], vec![3, 4, 1, 7]),
    ]
}

fn unary_cases(v: &mut Vec<Case>) {
    let shape = vec![3, 337];
    for (u, draw) in unary_ops() {
        for dt in FLOATS {
            let k = format!("unary_fwd_{}", dt.name());
            v.push(Case::new(
                format!("unary {u:?} {dt} {shape:?}"),
                vec![(shape.clone(), dt, draw)],
                Tol::for_dtype(dt),
                &[&k],
                move |g, x| g.unary(u, x[0]),
            ));
            let k = format!("unary_bwd_{}", dt.name());
            let ins = vec![(shape.clone(), dt, draw), (shape.clone(), dt, Gen::Normal)];
            v.push(Case::new(
                format!("unary_bwd {u:?} {dt} {shape:?}"),
                ins,
                Tol::for_dtype(dt),
                &[&k],
                move |g, x| g.push(Op::UnaryBwd(u), &[x[0], x[1]]),
            ));
        }
    }
}

fn binary_cases(v: &mut Vec<Case>) {
    for (op, draw) in binary_ops() {
        for (sa, sb) in binary_shapes() {
            for dt in FLOATS {
                let k = format!("binary_fwd_{}", dt.name());
                let ins = vec![(sa.clone(), dt, draw), (sb.clone(), dt, draw)];
                let name = format!("binary {op:?} {dt} {sa:?} {sb:?}");
                v.push(Case::new(name, ins, Tol::for_dtype(dt), &[&k], move |g, x| g.binary(op, x[0], x[1])));
            }
        }
    }
}

fn fill_cases(v: &mut Vec<Case>) {
    // Inexact in every float format; integers truncate toward zero and saturate (u8: 300 -> 255, -3 -> 0).
    let fills = [
        (DType::F32, 0.1f32, vec![1001]),
        (DType::F16, -0.1, vec![3, 7, 11]),
        (DType::BF16, 3.3, vec![13, 17]),
        (DType::I32, -2.7, vec![1001]),
        (DType::I64, -123_456.9, vec![5, 201]),
        (DType::U8, 300.0, vec![1003]),
        (DType::U8, -3.0, vec![17]),
    ];
    for (dt, value, shape) in fills {
        let k = format!("fill_{}", dt.name());
        let name = format!("fill {value} {dt} {shape:?}");
        v.push(Case::new(name, vec![], Tol::for_dtype(dt), &[&k], move |g, _| Ok(g.fill(value, &shape, dt))));
    }
}

fn cast_cases(v: &mut Vec<Case>) {
    let shape = vec![7, 143];
    for src in DType::ALL {
        for dst in DType::ALL {
            // Small non-negative integers are exact in every dtype.
            let k = format!("cast_{}_{}", src.name(), dst.name());
            let name = format!("cast {src}->{dst} {shape:?} integers 0..100");
            v.push(Case::new(
                name,
                vec![(shape.clone(), src, Gen::Index(100))],
                Tol::for_dtype(dst),
                &[&k],
                move |g, x| g.cast(x[0], dst),
            ));
        }
    }
    // Rounding, truncation, saturation and wrapping (inputs are drawn in f32 and cast to the source dtype).
    let edges: [(DType, DType, Gen, &str); 14] = [
        (DType::F32, DType::F16, Gen::Uniform(-7.0e4, 7.0e4), "overflow to inf"),
        (DType::F32, DType::F16, Gen::Normal, "rounding"),
        (DType::F32, DType::BF16, Gen::Normal, "rounding"),
        (DType::F16, DType::BF16, Gen::Normal, "rounding"),
        (DType::BF16, DType::F16, Gen::Uniform(-1.0e5, 1.0e5), "overflow to inf"),
        (DType::F32, DType::I32, Gen::Uniform(-300.0, 300.0), "truncation"),
        (DType::F32, DType::I32, Gen::Uniform(-5.0e9, 5.0e9), "saturation"),
        (DType::F32, DType::I64, Gen::Uniform(-300.0, 300.0), "truncation"),
        (DType::F32, DType::U8, Gen::Uniform(-300.0, 300.0), "truncation and saturation"),
        (DType::F16, DType::U8, Gen::Uniform(-300.0, 300.0), "truncation and saturation"),
        (DType::I64, DType::I32, Gen::Uniform(-1.0e10, 1.0e10), "wrapping"),
        (DType::I64, DType::U8, Gen::Uniform(-1000.0, 1000.0), "wrapping"),
        (DType::I32, DType::U8, Gen::Uniform(-1000.0, 1000.0), "wrapping"),
        (DType::I32, DType::F16, Gen::Uniform(-1.0e5, 1.0e5), "rounding and overflow"),
    ];
    for (src, dst, draw, what) in edges {
        let k = format!("cast_{}_{}", src.name(), dst.name());
        let name = format!("cast {src}->{dst} {shape:?} {what}");
        v.push(Case::new(name, vec![(shape.clone(), src, draw)], Tol::for_dtype(dst), &[&k], move |g, x| {
            g.cast(x[0], dst)
        }));
    }
}

/// Quick GELU (CLIP's activation) on its own rows: the SD-sized shapes of the text encoder.
fn quick_gelu_case(dt: DType, bwd: bool) -> Case {
    let shape = vec![5, 77];
    let pass = if bwd { "bwd" } else { "fwd" };
    let mut ins = vec![(shape.clone(), dt, Gen::Uniform(-8.0, 8.0))];
    if bwd {
        ins.push((shape, dt, Gen::Normal));
    }
    Case::new(format!("unary{} QuickGelu {dt} [5, 77]", if bwd { "_bwd" } else { "" }), ins, Tol::for_dtype(dt), &[&format!("unary_{pass}_{dt}")], move |g, x| {
        if bwd { g.push(Op::UnaryBwd(UnaryOp::QuickGelu), x) } else { g.unary(UnaryOp::QuickGelu, x[0]) }
    })
}

/// Parity cases.
fn kernel_cases() -> Vec<Case> {
    let mut v = Vec::new();
    unary_cases(&mut v);
    binary_cases(&mut v);
    fill_cases(&mut v);
    cast_cases(&mut v);
    for dt in FLOATS {
        for bwd in [false, true] {
            v.push(quick_gelu_case(dt, bwd));
        }
    }
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let act = vec![2, 320, 64, 64];
    let n: u64 = act.iter().product::<usize>() as u64;
    let mut v = Vec::new();
    for dt in [DType::F16, DType::F32] {
        let es = dt.size() as u64;
        let k = format!("unary_fwd_{}", dt.name());
        let c = Case::new(
            format!("unary Gelu {dt} {act:?}"),
            vec![(act.clone(), dt, Gen::Normal)],
            Tol::for_dtype(dt),
            &[&k],
            |g, x| g.unary(UnaryOp::Gelu, x[0]),
        );
        v.push((c, Work::Bytes(2 * n * es)));
        let k = format!("binary_fwd_{}", dt.name());
        let ins = vec![(act.clone(), dt, Gen::Normal), (act.clone(), dt, Gen::Normal)];
        let c = Case::new(format!("binary Add {dt} {act:?}"), ins, Tol::for_dtype(dt), &[&k], |g, x| g.add(x[0], x[1]));
        v.push((c, Work::Bytes(3 * n * es)));
        let k = format!("unary_bwd_{}", dt.name());
        let ins = vec![(act.clone(), dt, Gen::Normal), (act.clone(), dt, Gen::Normal)];
        let c = Case::new(format!("unary_bwd Silu {dt} {act:?}"), ins, Tol::for_dtype(dt), &[&k], |g, x| {
            g.push(crate::graph::Op::UnaryBwd(UnaryOp::Silu), &[x[0], x[1]])
        });
        v.push((c, Work::Bytes(3 * n * es)));
        let k = format!("fill_{}", dt.name());
        let shape = act.clone();
        let c = Case::new(format!("fill {dt} {act:?}"), vec![(vec![1], dt, Gen::Normal)], Tol::for_dtype(dt), &[&k], move |g, x| {
            let f = g.fill(0.5, &shape, g.dtype(x[0]));
            let _ = x;
            Ok(f)
        });
        v.push((c, Work::Bytes(n * es)));
    }
    let (rows, cols) = (8192usize, 1280usize);
    let ins = vec![(vec![rows, cols], DType::F16, Gen::Normal), (vec![cols], DType::F16, Gen::Normal)];
    let c = Case::new(
        format!("binary Add f16 [{rows}, {cols}] + [{cols}]"),
        ins,
        Tol::for_dtype(DType::F16),
        &["binary_fwd_f16"],
        |g, x| g.add(x[0], x[1]),
    );
    v.push((c, Work::Bytes(((2 * rows * cols + cols) * 2) as u64)));
    let m = 16usize << 20;
    let c = Case::new(
        format!("cast f32->f16 [{m}]"),
        vec![(vec![m], DType::F32, Gen::Normal)],
        Tol::for_dtype(DType::F16),
        &["cast_f32_f16"],
        |g, x| g.cast(x[0], DType::F16),
    );
    v.push((c, Work::Bytes((m * 6) as u64)));
    // Quick GELU over CLIP-L's MLP activations.
    let n = 2 * 77 * 3072;
    let qg = Case::new("unary QuickGelu f16 [2, 77, 3072]", vec![(vec![2, 77, 3072], DType::F16, Gen::Normal)], Tol::for_dtype(DType::F16), &["unary_fwd_f16"], |g, x| g.unary(UnaryOp::QuickGelu, x[0]));
    v.push((qg, Work::Bytes((2 * n * 2) as u64)));
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks: every unary op on its smooth domain, every binary op under broadcasting (max, min and the
/// comparisons on interleaved grids, so no pair is within a step of a tie), a cast round trip, a fill.
fn grad_cases() -> Vec<Case> {
    use BinaryOp::*;
    let positive = Gen::Uniform(0.5, 2.0);
    let unary: Vec<(UnaryOp, Gen)> = vec![
        (UnaryOp::Neg, Gen::Normal),
        (UnaryOp::Exp, Gen::Normal),
        (UnaryOp::Log, positive),
        (UnaryOp::Sqrt, positive),
        (UnaryOp::Rsqrt, positive),
        (UnaryOp::Recip, positive),
        (UnaryOp::Abs, Gen::AwayFromZero),
        (UnaryOp::Square, Gen::Normal),
        (UnaryOp::Tanh, Gen::Normal),
        (UnaryOp::Sigmoid, Gen::Normal),
        (UnaryOp::Relu, Gen::AwayFromZero),
        (UnaryOp::Gelu, Gen::Normal),
        (UnaryOp::GeluTanh, Gen::Normal),
        (UnaryOp::Silu, Gen::Normal),
        (UnaryOp::Sin, Gen::Normal),
        (UnaryOp::Cos, Gen::Normal),
        (UnaryOp::Affine { mul: -1.5, add: 0.25 }, Gen::Normal),
        (UnaryOp::Powf(1.7), positive),
        (UnaryOp::QuickGelu, Gen::Normal),
    ];
    let mut v = Vec::new();
    for (u, gk) in unary {
        v.push(Case::grad(format!("unary {u:?}"), &[(&[3, 5], gk)], move |g, x| g.unary(u, x[0])));
    }
    let shapes: [(&[usize], &[usize]); 3] = [(&[3, 4], &[3, 4]), (&[2, 3, 4], &[4]), (&[3, 1], &[1, 4])];
    for op in [Add, Sub, Mul, Div, Max, Min, Eq, Gt, Ge] {
        for (sa, sb) in shapes {
            let (ga, gb) = match op {
                Div => (Gen::Normal, positive),
                Max | Min | Eq | Gt | Ge => (Gen::GridA, Gen::GridB),
                _ => (Gen::Normal, Gen::Normal),
            };
            let name = format!("binary {op:?} {sa:?} {sb:?}");
            v.push(Case::grad(name, &[(sa, ga), (sb, gb)], move |g, x| g.binary(op, x[0], x[1])));
        }
    }
    v.push(Case::grad("cast f32->f16->f32", &[(&[4, 3], Gen::F16Grid)], |g, x| {
        let h = g.cast(x[0], DType::F16)?;
        g.cast(h, DType::F32)
    }));
    v.push(Case::grad("fill (constant operand)", &[(&[2, 3], Gen::Normal)], |g, x| {
        let c = g.fill(2.5, &[3], DType::F32);
        g.mul(x[0], c)
    }));
    v
}

/// Cases for the CPU fast path only (`ops::cpu_fast_cases`): the transcendental unary ops on many blocks and
/// threads, over wide ranges (both tails of sigmoid and erf, exp near its overflow and underflow).
pub(crate) fn cpu_fast_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let shape = vec![300, 1001];
    let ops = [
        (UnaryOp::Exp, Gen::Uniform(-85.0, 85.0)),
        (UnaryOp::Sigmoid, Gen::Uniform(-30.0, 30.0)),
        (UnaryOp::Silu, Gen::Uniform(-30.0, 30.0)),
        (UnaryOp::Gelu, Gen::Uniform(-12.0, 12.0)),
        (UnaryOp::QuickGelu, Gen::Uniform(-30.0, 30.0)),
    ];
    for (u, draw) in ops {
        for dt in [DType::F32, DType::BF16] {
            v.push(Case::new(format!("unary {u:?} {dt} {shape:?} wide"), vec![(shape.clone(), dt, draw)], Tol::for_dtype(dt), &[], move |g, x| {
                g.unary(u, x[0])
            }));
            let ins = vec![(shape.clone(), dt, draw), (shape.clone(), dt, Gen::Normal)];
            v.push(Case::new(format!("unary_bwd {u:?} {dt} {shape:?} wide"), ins, Tol::for_dtype(dt), &[], move |g, x| {
                g.push(Op::UnaryBwd(u), &[x[0], x[1]])
            }));
        }
    }
    v
}
