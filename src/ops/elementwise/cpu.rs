//! Elementwise ops: unary functions, their derivatives (`UnaryBwd`), broadcasting binary ops, fill and cast.
//!
//! Transcendental functions are evaluated in f64 and rounded once to f32, so this reference is as accurate
//! as f32 storage allows; the exactly rounded f32 operations (+, -, *, /, sqrt) are done in f32.

use std::f64::consts::FRAC_1_SQRT_2;

use crate::backend::cpu::kernels::walk::Walk;
use crate::backend::cpu::kernels::{
    COST_ARITH, COST_COPY, COST_TRANSCENDENTAL, View, broadcast_strides, cpu_err, decode_into, encode, floats, par_chunks,
    par_chunks_unit, require_float, with_f32_out,
};
use crate::ops::Op;
use crate::error::Result;
use crate::ops::{BinaryOp, UnaryOp};
use crate::tensor::{self, DType};

/// sqrt(2 / pi), the GELU tanh-approximation constant.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// 1 / sqrt(2 pi), the standard normal density at 0.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
const GELU_TANH_C: f64 = 0.044_715;
/// The sigmoid slope of quick GELU (CLIP), 1.702 as an f32 constant (what PyTorch multiplies by).
const QUICK_GELU_K: f64 = 1.702f32 as f64;

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Standard normal CDF, accurate in both tails.
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * FRAC_1_SQRT_2)
}

fn gelu_tanh_arg(x: f64) -> f64 {
    SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)
}

/// `f(x)` for one element.
fn forward(u: UnaryOp, x: f32) -> f32 {
    let d = x as f64;
    match u {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => d.exp() as f32,
        UnaryOp::Log => d.ln() as f32,
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => (1.0 / d.sqrt()) as f32,
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Square => x * x,
        UnaryOp::Tanh => d.tanh() as f32,
        UnaryOp::Sigmoid => sigmoid(d) as f32,
        UnaryOp::Relu => {
            if x > 0.0 || x.is_nan() {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Gelu => (d * normal_cdf(d)) as f32,
        // 0.5 x (1 + tanh u) == x sigmoid(2u), without the cancellation for negative x.
        UnaryOp::GeluTanh => (d * sigmoid(2.0 * gelu_tanh_arg(d))) as f32,
        UnaryOp::Silu => (d * sigmoid(d)) as f32,
        UnaryOp::Sin => d.sin() as f32,
        UnaryOp::Cos => d.cos() as f32,
        UnaryOp::Affine { mul, add } => (mul as f64 * d + add as f64) as f32,
        UnaryOp::Powf(p) => d.powf(p as f64) as f32,
        UnaryOp::QuickGelu => (d * sigmoid(QUICK_GELU_K * d)) as f32,
    }
}

/// `f'(x)` in f64.
fn derivative(u: UnaryOp, x: f32) -> f64 {
    let d = x as f64;
    match u {
        UnaryOp::Neg => -1.0,
        UnaryOp::Exp => d.exp(),
        UnaryOp::Log => 1.0 / d,
        UnaryOp::Sqrt => 0.5 / d.sqrt(),
        UnaryOp::Rsqrt => -0.5 / (d * d.sqrt()),
        UnaryOp::Recip => -1.0 / (d * d),
        UnaryOp::Abs => {
            if d > 0.0 {
                1.0
            } else if d < 0.0 {
                -1.0
            } else if d == 0.0 {
                0.0
            } else {
                f64::NAN
            }
        }
        UnaryOp::Square => 2.0 * d,
        UnaryOp::Tanh => {
            let t = d.tanh();
            1.0 - t * t
        }
        UnaryOp::Sigmoid => {
            let s = sigmoid(d);
            s * (1.0 - s)
        }
        UnaryOp::Relu => {
            if d > 0.0 {
                1.0
            } else if d.is_nan() {
                f64::NAN
            } else {
                0.0
            }
        }
        UnaryOp::Gelu => normal_cdf(d) + d * INV_SQRT_2PI * (-0.5 * d * d).exp(),
        UnaryOp::GeluTanh => {
            let t = gelu_tanh_arg(d).tanh();
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * d * d);
            0.5 * (1.0 + t) + 0.5 * d * (1.0 - t * t) * du
        }
        UnaryOp::Silu => {
            let s = sigmoid(d);
            s * (1.0 + d * (1.0 - s))
        }
        UnaryOp::Sin => d.cos(),
        UnaryOp::Cos => -d.sin(),
        UnaryOp::Affine { mul, .. } => mul as f64,
        UnaryOp::Powf(p) => {
            // PyTorch: the gradient of x^0 is 0 everywhere (also at x = 0).
            if p == 0.0 { 0.0 } else { p as f64 * d.powf(p as f64 - 1.0) }
        }
        UnaryOp::QuickGelu => {
            let s = sigmoid(QUICK_GELU_K * d);
            s + QUICK_GELU_K * d * s * (1.0 - s)
        }
    }
}

/// Rough cost of one element of `f` (or of `f'` for the backward op), for [`par_chunks`].
fn cost(u: UnaryOp) -> usize {
    match u {
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Square | UnaryOp::Relu | UnaryOp::Affine { .. } => COST_COPY,
        UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip => COST_ARITH,
        _ => COST_TRANSCENDENTAL,
    }
}

pub(super) fn unary(u: UnaryOp, x: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("unary", &[x, out])?;
    let xs = floats(x);
    with_f32_out(out.dtype, out_bytes, |o| {
        par_chunks(o, cost(u), |s, c| {
            let n = c.len();
            for (y, &v) in c.iter_mut().zip(&xs[s..s + n]) {
                *y = forward(u, v);
            }
        });
        Ok(())
    })
}

pub(super) fn unary_bwd(u: UnaryOp, x: &View, dy: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("unary_bwd", &[x, dy, out])?;
    let (xs, gs) = (floats(x), floats(dy));
    with_f32_out(out.dtype, out_bytes, |o| {
        par_chunks(o, cost(u) + COST_COPY, |s, c| {
            let n = c.len();
            for ((y, &v), &g) in c.iter_mut().zip(&xs[s..s + n]).zip(&gs[s..s + n]) {
                *y = (g as f64 * derivative(u, v)) as f32;
            }
        });
        Ok(())
    })
}

/// Maximum that propagates NaN from either side (like `torch.maximum`).
fn max_nan(x: f32, y: f32) -> f32 {
    if x > y || x.is_nan() { x } else { y }
}

fn min_nan(x: f32, y: f32) -> f32 {
    if x < y || x.is_nan() { x } else { y }
}

fn indicator(c: bool) -> f32 {
    if c { 1.0 } else { 0.0 }
}

/// `out[j] = f(a[oa + j*sa], b[ob + j*sb])` with the common stride patterns specialised.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn apply_run(
    f: impl Fn(f32, f32) -> f32,
    out: &mut [f32],
    a: &[f32],
    oa: usize,
    sa: usize,
    b: &[f32],
    ob: usize,
    sb: usize,
) {
    let n = out.len();
    match (sa, sb) {
        (1, 1) => {
            for ((y, &x), &z) in out.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                *y = f(x, z);
            }
        }
        (1, 0) => {
            let z = b[ob];
            for (y, &x) in out.iter_mut().zip(&a[oa..oa + n]) {
                *y = f(x, z);
            }
        }
        (0, 1) => {
            let x = a[oa];
            for (y, &z) in out.iter_mut().zip(&b[ob..ob + n]) {
                *y = f(x, z);
            }
        }
        _ => {
            for (j, y) in out.iter_mut().enumerate() {
                *y = f(a[oa + j * sa], b[ob + j * sb]);
            }
        }
    }
}

fn binary_with(f: impl Fn(f32, f32) -> f32 + Sync, walk: &Walk<2>, a: &[f32], b: &[f32], o: &mut [f32]) {
    let [sa, sb] = walk.inner_strides();
    par_chunks(o, COST_COPY, |s, chunk| {
        walk.runs(s, s + chunk.len(), |pos, [oa, ob], len| {
            let dst = &mut chunk[pos - s..pos - s + len];
            apply_run(&f, dst, a, oa, sa, b, ob, sb);
        });
    });
}

pub(super) fn binary(op: BinaryOp, a: &View, b: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("binary", &[a, b, out])?;
    let (xa, xb) = (floats(a), floats(b));
    let sa = broadcast_strides(a.shape, out.shape);
    let sb = broadcast_strides(b.shape, out.shape);
    let walk = Walk::new(out.shape, [&sa, &sb]);
    with_f32_out(out.dtype, out_bytes, |o| {
        let (a, b) = (&xa[..], &xb[..]);
        match op {
            BinaryOp::Add => binary_with(|x, y| x + y, &walk, a, b, o),
            BinaryOp::Sub => binary_with(|x, y| x - y, &walk, a, b, o),
            BinaryOp::Mul => binary_with(|x, y| x * y, &walk, a, b, o),
            BinaryOp::Div => binary_with(|x, y| x / y, &walk, a, b, o),
            BinaryOp::Max => binary_with(max_nan, &walk, a, b, o),
            BinaryOp::Min => binary_with(min_nan, &walk, a, b, o),
            BinaryOp::Eq => binary_with(|x, y| indicator(x == y), &walk, a, b, o),
            BinaryOp::Gt => binary_with(|x, y| indicator(x > y), &walk, a, b, o),
            BinaryOp::Ge => binary_with(|x, y| indicator(x >= y), &walk, a, b, o),
        }
        Ok(())
    })
}


/// Fills `out` with `value` stored as `dtype` (integers take the value truncated, saturating).
pub fn fill(value: f32, dtype: DType, out: &mut [u8]) {
    let es = dtype.size();
    let mut one = [0u8; 8];
    tensor::encode_f32(dtype, &[value], &mut one[..es]);
    par_chunks_unit(out, es, COST_COPY, |_, chunk| {
        for c in chunk.chunks_exact_mut(es) {
            c.copy_from_slice(&one[..es]);
        }
    });
}

/// An integer element as i64.
fn read_int(dtype: DType, c: &[u8]) -> i64 {
    match dtype {
        DType::U8 => c[0] as i64,
        DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
        _ => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&c[..8]);
            i64::from_le_bytes(b)
        }
    }
}

/// Stores `v` into an integer element with Rust `as` semantics.
fn write_int(dtype: DType, v: i64, c: &mut [u8]) {
    match dtype {
        DType::U8 => c[0] = v as u8,
        DType::I32 => c.copy_from_slice(&(v as i32).to_le_bytes()),
        _ => c.copy_from_slice(&v.to_le_bytes()),
    }
}

/// Any dtype to any other: integers to integers by value (Rust `as`), floats to integers truncating and
/// saturating, everything else through f32.
fn cast(x: &View, to: DType, out_bytes: &mut [u8]) -> Result<()> {
    let from = x.dtype;
    if from == to {
        out_bytes.copy_from_slice(x.data);
    } else if !from.is_float() && !to.is_float() {
        let (ef, et) = (from.size(), to.size());
        par_chunks_unit(out_bytes, et, COST_COPY, |s, chunk| {
            let i0 = s / et;
            for (i, c) in chunk.chunks_exact_mut(et).enumerate() {
                let src = &x.data[(i0 + i) * ef..(i0 + i + 1) * ef];
                write_int(to, read_int(from, src), c);
            }
        });
    } else if to == DType::F32
        && let Ok(o) = bytemuck::try_cast_slice_mut::<u8, f32>(out_bytes)
    {
        let ef = from.size();
        par_chunks(o, COST_COPY, |s, c| decode_into(from, &x.data[s * ef..(s + c.len()) * ef], c));
    } else {
        let vals = floats(x);
        encode(to, &vals, out_bytes);
    }
    Ok(())
}

/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::Fill { .. } => Ok(()), // written by `backend::cpu::run_op` (it has no inputs to check)
        Op::Unary(u) => unary(*u, &ins[0], out, out_bytes),
        Op::UnaryBwd(u) => unary_bwd(*u, &ins[0], &ins[1], out, out_bytes),
        Op::Binary(b) => binary(*b, &ins[0], &ins[1], out, out_bytes),
        Op::Cast { dtype } => cast(&ins[0], *dtype, out_bytes),
        _ => Err(cpu_err(format!("{} is not a elementwise op", op.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::kernels::test_util::*;
    use super::*;
    use crate::ops::Op;
    use crate::tensor::{DType, numel};

    /// Naive numpy broadcasting: the input index of output multi-index `idx`.
    fn bcast_index(shape: &[usize], out: &[usize], idx: &[usize]) -> usize {
        let pad = out.len() - shape.len();
        let mut off = 0;
        for (i, &d) in shape.iter().enumerate() {
            let j = if d == 1 { 0 } else { idx[i + pad] };
            off = off * d + j;
        }
        off
    }

    #[test]
    fn binary_broadcast_matches_naive() {
        let pairs: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[4]),
            (&[4], &[2, 3, 4]),
            (&[2, 1, 4], &[3, 1]),
            (&[3, 1], &[1, 5]),
            (&[1], &[2, 3]),
            (&[2, 3, 1, 5], &[1, 3, 4, 1]),
            (&[], &[3, 2]),
            (&[64, 300], &[300]),
            (&[7, 1, 700], &[1, 9, 700]),
        ];
        let ops = [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Max,
            BinaryOp::Min,
            BinaryOp::Eq,
            BinaryOp::Gt,
            BinaryOp::Ge,
        ];
        for (pi, &(sa, sb)) in pairs.iter().enumerate() {
            let a = rand_vals(numel(sa), pi as u64 * 2 + 1);
            // Integers in b make Eq/Ge hit equal values too.
            let mut b = rand_vals(numel(sb), pi as u64 * 2 + 2);
            for (i, v) in b.iter_mut().enumerate() {
                if i % 3 == 0 {
                    *v = a[i % a.len().max(1)];
                }
            }
            let out_shape = crate::ops::broadcast_shapes(sa, sb).unwrap();
            for op in ops {
                let got = run_f32(&Op::Binary(op), &[(sa, &a), (sb, &b)], DType::F32);
                let ost = crate::tensor::strides(&out_shape);
                for (e, g) in got.iter().enumerate() {
                    let idx: Vec<usize> = out_shape.iter().zip(&ost).map(|(d, s)| (e / s) % d).collect();
                    let x = a[bcast_index(sa, &out_shape, &idx)];
                    let y = b[bcast_index(sb, &out_shape, &idx)];
                    let want = match op {
                        BinaryOp::Add => x + y,
                        BinaryOp::Sub => x - y,
                        BinaryOp::Mul => x * y,
                        BinaryOp::Div => x / y,
                        BinaryOp::Max => x.max(y),
                        BinaryOp::Min => x.min(y),
                        BinaryOp::Eq => (x == y) as i32 as f32,
                        BinaryOp::Gt => (x > y) as i32 as f32,
                        BinaryOp::Ge => (x >= y) as i32 as f32,
                    };
                    assert_eq!(*g, want, "{op:?} {sa:?} {sb:?} at {e}");
                }
            }
        }
    }

    #[test]
    fn binary_large_parallel_and_f16() {
        let (sa, sb): (&[usize], &[usize]) = (&[50, 40, 30], &[40, 1]);
        let a = rand_vals(numel(sa), 7);
        let b = rand_vals(numel(sb), 8);
        let got = run_f32(&Op::Binary(BinaryOp::Mul), &[(sa, &a), (sb, &b)], DType::F32);
        for (e, g) in got.iter().enumerate() {
            assert_eq!(*g, a[e] * b[(e / 30) % 40]);
        }
        let got16 = run_f32(&Op::Binary(BinaryOp::Add), &[(sa, &a), (sb, &b)], DType::F16);
        for (e, g) in got16.iter().enumerate() {
            let x = half::f16::from_f32(a[e]).to_f32();
            let y = half::f16::from_f32(b[(e / 30) % 40]).to_f32();
            assert_eq!(*g, half::f16::from_f32(x + y).to_f32());
        }
    }

    #[test]
    fn unary_values() {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.0];
        let s: &[usize] = &[5];
        let check = |u: UnaryOp, f: &dyn Fn(f64) -> f64| {
            let got = run_f32(&Op::Unary(u), &[(s, &xs)], DType::F32);
            for (g, &x) in got.iter().zip(&xs) {
                let w = f(x as f64);
                assert!(
                    (*g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0) || (w.is_nan() && g.is_nan()),
                    "{u:?}({x}) = {g}, want {w}"
                );
            }
        };
        check(UnaryOp::Gelu, &|x| 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())));
        check(UnaryOp::GeluTanh, &|x| 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh()));
        check(UnaryOp::Silu, &|x| x / (1.0 + (-x).exp()));
        check(UnaryOp::Sigmoid, &|x| 1.0 / (1.0 + (-x).exp()));
        check(UnaryOp::Relu, &|x| x.max(0.0));
        check(UnaryOp::Affine { mul: 2.0, add: -1.0 }, &|x| 2.0 * x - 1.0);
        check(UnaryOp::Abs, &|x| x.abs());
        check(UnaryOp::Powf(3.0), &|x| x.powi(3));
        // Stable sigmoid at the extremes.
        let big: &[f32] = &[-1000.0, 1000.0];
        let got = run_f32(&Op::Unary(UnaryOp::Sigmoid), &[(&[2], big)], DType::F32);
        assert_eq!(got, vec![0.0, 1.0]);
        let got = run_f32(&Op::Unary(UnaryOp::Silu), &[(&[2], big)], DType::F32);
        assert_eq!(got, vec![-0.0, 1000.0]);
    }

    #[test]
    fn unary_bwd_matches_finite_differences() {
        let us = UnaryOp::EXAMPLES;
        let xs: Vec<f32> = vec![0.3, 0.9, 1.7, 2.4, 0.05];
        let dy: Vec<f32> = vec![1.0, -0.5, 2.0, 0.25, 1.5];
        let s: &[usize] = &[5];
        for u in us {
            let got = run_f32(&Op::UnaryBwd(u), &[(s, &xs), (s, &dy)], DType::F32);
            for i in 0..xs.len() {
                let x = xs[i] as f64;
                let h = 1e-4 * x.abs().max(1e-2);
                let f = |v: f64| forward_f64(u, v);
                let want = dy[i] as f64 * (f(x + h) - f(x - h)) / (2.0 * h);
                assert!(
                    (got[i] as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{u:?} at {x}: {} vs {want}",
                    got[i]
                );
            }
        }
        // Conventions at 0.
        let z: &[f32] = &[0.0];
        let one: &[f32] = &[1.0];
        assert_eq!(run_f32(&Op::UnaryBwd(UnaryOp::Relu), &[(&[1], z), (&[1], one)], DType::F32), vec![0.0]);
        assert_eq!(run_f32(&Op::UnaryBwd(UnaryOp::Abs), &[(&[1], z), (&[1], one)], DType::F32), vec![0.0]);
    }

    /// The forward functions in f64, for finite differences.
    fn forward_f64(u: UnaryOp, x: f64) -> f64 {
        match u {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Square => x * x,
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::Gelu => x * normal_cdf(x),
            UnaryOp::GeluTanh => 0.5 * x * (1.0 + gelu_tanh_arg(x).tanh()),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Affine { mul, add } => mul as f64 * x + add as f64,
            UnaryOp::Powf(p) => x.powf(p as f64),
            UnaryOp::QuickGelu => x * sigmoid(QUICK_GELU_K * x),
        }
    }
}
