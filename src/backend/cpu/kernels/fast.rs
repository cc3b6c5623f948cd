//! What the CPU fast paths (`ops/<family>/fast.rs`) share: f32 functions written to vectorise (no branches,
//! no libm calls: `exp`, `sigmoid`, the erf-GELU and its derivative), f32 sums with independent lanes, and
//! block-wise access to f16/bf16 operands and results (a chunk decoded or encoded at a time, never a
//! whole-tensor copy).

use super::{Buf, View, decode_into, encode_into, par_chunks_unit};
use crate::tensor::DType;

/// Independent accumulators in [`sum`] and [`dot`]: enough for the compiler to use full vector registers.
const LANES: usize = 16;

/// Sum of `xs` in f32 with [`LANES`] independent accumulators, combined in a fixed order.
#[inline]
pub(crate) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = xs.chunks_exact(LANES);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(it.remainder()) {
        *a += v;
    }
    fold(acc)
}

/// `sum(a[i] * b[i])` as [`sum`] adds.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (mut ia, mut ib) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    for ((s, &x), &y) in acc.iter_mut().zip(ia.remainder()).zip(ib.remainder()) {
        *s += x * y;
    }
    fold(acc)
}

/// Pairwise sum of the lanes (a fixed tree).
#[inline]
fn fold(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

/// e^x in f32, within about 2 ulp for normal results; 0 below -87.3 (no subnormals), +inf above 88.7, NaN
/// for NaN. Branch-free, so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that k * LN2_HI is exact for |k| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer (round to nearest) held in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let xc = x.clamp(-87.33, 88.72);
    let t = xc * LOG2E + SHIFTER;
    let k = t - SHIFTER;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    // Taylor polynomial of e^r on |r| <= ln2 / 2 (truncation below 2^-28).
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2^k (k in -126..=128 after the clamp) from the integer in t's low bits, as 2^(k/2) * 2^(k - k/2) so
    // that k = 128 needs no special case.
    let ki = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let half_k = ki >> 1;
    let s1 = f32::from_bits(((half_k + 127) as u32) << 23);
    let s2 = f32::from_bits(((ki - half_k + 127) as u32) << 23);
    let y = p * s1 * s2;
    let y = if x > 88.72 { f32::INFINITY } else { y };
    let y = if x < -87.33 { 0.0 } else { y };
    if x.is_nan() { x } else { y }
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// erfc(u) for u >= 0 as e^(-u^2) * R(u), R(u) = erfc(u) e^(u^2) fitted (weighted least squares, relative
/// error 6e-8 on [0, 10]) as `t * P(t)`, `t = 1 / (1 + 0.4 u)`. About 1e-6 relative in f32 up to u = 9.
#[inline(always)]
fn erfc_pos(u: f32) -> f32 {
    const C: [f32; 9] = [
        2.256_333_822e-1,
        2.264_590_319e-1,
        2.017_631_324e-1,
        1.939_233_140e-1,
        7.840_850_960e-2,
        9.006_521_036e-2,
        8.202_166_400e-2,
        -1.393_066_768e-1,
        4.103_248_830e-2,
    ];
    let u = u.min(10.0);
    let t = 1.0 / (1.0 + 0.4 * u);
    let mut p = C[8];
    for &c in C[..8].iter().rev() {
        p = p * t + c;
    }
    t * p * exp(-u * u)
}

/// 0.5 * (1 + erf(x / sqrt 2)) (the normal CDF), accurate relative to its value on both tails.
#[inline(always)]
fn phi(x: f32) -> f32 {
    let e = 0.5 * erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x < 0.0 { e } else { 1.0 - e }
}

/// GELU, erf form: x * Phi(x).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    x * phi(x)
}

/// d/dx of [`gelu`]: Phi(x) + x * e^(-x^2 / 2) / sqrt(2 pi).
#[inline(always)]
pub(crate) fn gelu_deriv(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    phi(x) + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

/// A float input read a block at a time: f32 storage that is 4-byte aligned is borrowed, anything else is
/// decoded chunk by chunk into the caller's buffer.
#[derive(Clone, Copy)]
pub(crate) struct Input<'a> {
    view: View<'a>,
    f32s: Option<&'a [f32]>,
}

impl<'a> Input<'a> {
    pub(crate) fn new(view: &View<'a>) -> Input<'a> {
        let f32s = if view.dtype == DType::F32 { bytemuck::try_cast_slice::<u8, f32>(view.data).ok() } else { None };
        Input { view: *view, f32s }
    }

    /// Elements `start..start + len` as f32 (`buf` holds them when they had to be decoded).
    #[inline]
    pub(crate) fn get<'b>(&'b self, start: usize, len: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        if let Some(s) = self.f32s {
            return &s[start..start + len];
        }
        buf.resize(len, 0.0);
        let es = self.view.dtype.size();
        decode_into(self.view.dtype, &self.view.data[start * es..(start + len) * es], buf);
        buf
    }

    /// Elements `start..start + len` as f32, copied or decoded into `dst` (for computing in place).
    #[inline]
    pub(crate) fn read_into(&self, start: usize, len: usize, dst: &mut Vec<f32>) {
        dst.resize(len, 0.0);
        match self.f32s {
            Some(s) => dst.copy_from_slice(&s[start..start + len]),
            None => {
                let es = self.view.dtype.size();
                decode_into(self.view.dtype, &self.view.data[start * es..(start + len) * es], dst);
            }
        }
    }

    /// The whole tensor as f32 (for small operands such as weights).
    pub(crate) fn all(&self) -> Vec<f32> {
        let n = self.view.data.len() / self.view.dtype.size();
        let mut buf = Vec::new();
        self.get(0, n, &mut buf).to_vec()
    }
}

/// Runs `f(first_row, rows)` over chunks of whole rows (`row` elements each) of the output, in parallel when the
/// work (elements times `cost`) is large; an f16/bf16 output is computed into an f32 buffer and encoded a chunk
/// at a time. `rows` is uninitialised data that `f` overwrites. The chunking never changes an element's value.
pub(crate) fn par_rows_out(dtype: DType, out: &mut [u8], row: usize, cost: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let row = row.max(1);
    if dtype == DType::F32
        && let Ok(o) = bytemuck::try_cast_slice_mut::<u8, f32>(out)
    {
        par_chunks_unit(o, row, cost, |s, c| f(s / row, c));
        return;
    }
    let es = dtype.size();
    par_chunks_unit(out, row * es, cost.div_ceil(es), |s, c| {
        let mut buf = Buf::new(c.len() / es);
        f(s / (row * es), &mut buf);
        encode_into(dtype, &buf, c);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn gelu_and_its_derivative_match_f64() {
        // Relative error, except far in the negative tail (|x| > 7, values below 1e-11), where e^(-x^2 / 2)
        // inherits the rounding of x^2 (a few 1e-6 relative): there an absolute 1e-10 is allowed.
        let (mut worst, mut worst_d) = (0f64, 0f64);
        for i in 0..100_000 {
            let x = -14.0 + 28.0 * i as f32 / 100_000.0;
            let xd = x as f64;
            let cdf = 0.5 * libm::erfc(-xd * std::f64::consts::FRAC_1_SQRT_2);
            let want = xd * cdf;
            let want_d = cdf + xd * (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            worst = worst.max((gelu(x) as f64 - want).abs() / (want.abs() + 1e-10 / 2e-6));
            // gelu' crosses 0 near x = -0.75 as the difference of two terms near 0.23: an absolute 1e-7 there.
            worst_d = worst_d.max((gelu_deriv(x) as f64 - want_d).abs() / (want_d.abs() + 1e-7 / 2e-6));
        }
        assert!(worst < 2e-6, "gelu: worst relative error {worst}");
        assert!(worst_d < 2e-6, "gelu': worst relative error {worst_d}");
    }

    #[test]
    fn lane_sums_add_everything() {
        let xs: Vec<f32> = (0..1001).map(|i| (i % 7) as f32 - 3.0).collect();
        let want: f32 = xs.iter().sum();
        assert_eq!(sum(&xs), want);
        let ys: Vec<f32> = (0..1001).map(|i| (i % 5) as f32).collect();
        let want: f32 = xs.iter().zip(&ys).map(|(a, b)| a * b).sum();
        assert_eq!(dot(&xs, &ys), want);
    }
}

#[cfg(test)]
mod thread_tests {
    use crate::backend::cpu::kernels::test_util::{bytes_of, rand_vals};
    use crate::backend::cpu::kernels::{CpuMode, View, run_op_mode};
    use crate::ops::{Op, UnaryOp};
    use crate::tensor::{DType, numel};

    /// The fast path's bytes for `op` on f32 inputs, with `threads` rayon threads.
    fn fast_bytes(threads: usize, op: &Op, ins: &[(&[usize], Vec<f32>)], out_shape: &[usize]) -> Vec<u8> {
        let raw: Vec<Vec<u8>> = ins.iter().map(|(_, v)| bytes_of(DType::F32, v)).collect();
        let views: Vec<View> = ins.iter().zip(&raw).map(|((s, _), b)| View { shape: s, dtype: DType::F32, data: b }).collect();
        let mut out = vec![0u8; numel(out_shape) * 4];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            run_op_mode(CpuMode::Fast, op, &views, &View { shape: out_shape, dtype: DType::F32, data: &[] }, &mut out)
        })
        .unwrap();
        out
    }

    #[test]
    fn fast_paths_do_not_depend_on_thread_count() {
        let x: &[usize] = &[2, 40, 40, 64];
        let n = numel(x);
        let c: &[usize] = &[64];
        let rows: &[usize] = &[700, 300];
        let cases: Vec<(Op, Vec<(&[usize], Vec<f32>)>, Vec<usize>)> = vec![
            (
                Op::GroupNorm { groups: 8, eps: 1e-5, silu: true },
                vec![(x, rand_vals(n, 1)), (c, rand_vals(64, 2)), (c, rand_vals(64, 3))],
                x.to_vec(),
            ),
            (
                Op::GroupNormBwd { groups: 8, eps: 1e-5, silu: true },
                vec![(x, rand_vals(n, 1)), (c, rand_vals(64, 2)), (c, rand_vals(64, 3)), (x, rand_vals(n, 4))],
                x.to_vec(),
            ),
            (Op::LayerNorm { eps: 1e-5, affine: false }, vec![(rows, rand_vals(210_000, 5))], rows.to_vec()),
            (Op::Softmax { axis: 1 }, vec![(rows, rand_vals(210_000, 6))], rows.to_vec()),
            (Op::Geglu, vec![(rows, rand_vals(210_000, 7))], vec![700, 150]),
            (Op::Unary(UnaryOp::Gelu), vec![(rows, rand_vals(210_000, 8))], rows.to_vec()),
        ];
        for (op, ins, out) in &cases {
            assert_eq!(fast_bytes(1, op, ins, out), fast_bytes(3, op, ins, out), "{op:?}");
        }
    }
}
