//! Stable Diffusion helpers: GEGLU (`Op::Geglu`, `Op::GegluBwd`) and the sinusoidal timestep embedding
//! (`Op::TimestepEmbedding`), the reference for `kernels/sd_misc.cu`.

use std::f64::consts::FRAC_1_SQRT_2;

use crate::backend::cpu::kernels::{COST_TRANSCENDENTAL, View, floats, par_chunks_unit, require_float, with_f32_out, cpu_err};
use crate::ops::Op;
use crate::error::Result;

/// 1 / sqrt(2 pi).
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

fn gelu(x: f64) -> f64 {
    x * 0.5 * libm::erfc(-x * FRAC_1_SQRT_2)
}

fn gelu_deriv(x: f64) -> f64 {
    0.5 * libm::erfc(-x * FRAC_1_SQRT_2) + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
}

/// `y[.., c] = x[.., c] * gelu(x[.., C + c])`.
pub(super) fn geglu(x: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("geglu", &[x, out])?;
    let c = out.shape.last().copied().unwrap_or(1);
    let xs = floats(x);
    with_f32_out(out.dtype, out_bytes, |o| {
        if c == 0 {
            return Ok(());
        }
        par_chunks_unit(o, c, COST_TRANSCENDENTAL, |start, chunk| {
            for (ri, y) in chunk.chunks_mut(c).enumerate() {
                let r = start / c + ri;
                let (hid, gate) = xs[2 * c * r..2 * c * (r + 1)].split_at(c);
                for ((yv, &hv), &gv) in y.iter_mut().zip(hid).zip(gate) {
                    *yv = (hv as f64 * gelu(gv as f64)) as f32;
                }
            }
        });
        Ok(())
    })
}

/// `dx[.., c] = dy * gelu(gate)`, `dx[.., C + c] = dy * hidden * gelu'(gate)`.
pub(super) fn geglu_bwd(x: &View, dy: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("geglu_bwd", &[x, dy, out])?;
    let c2 = out.shape.last().copied().unwrap_or(2);
    let c = c2 / 2;
    let (xs, gs) = (floats(x), floats(dy));
    with_f32_out(out.dtype, out_bytes, |o| {
        if c == 0 {
            return Ok(());
        }
        par_chunks_unit(o, c2, COST_TRANSCENDENTAL, |start, chunk| {
            for (ri, dx) in chunk.chunks_mut(c2).enumerate() {
                let r = start / c2 + ri;
                let (hid, gate) = xs[c2 * r..c2 * (r + 1)].split_at(c);
                let g = &gs[c * r..c * (r + 1)];
                let (dh, dg) = dx.split_at_mut(c);
                for j in 0..c {
                    let (hv, gv, dyv) = (hid[j] as f64, gate[j] as f64, g[j] as f64);
                    dh[j] = (dyv * gelu(gv)) as f32;
                    dg[j] = (dyv * hv * gelu_deriv(gv)) as f32;
                }
            }
        });
        Ok(())
    })
}

/// The frequencies of diffusers `get_timestep_embedding`, rounded as its f32 tensor arithmetic rounds them:
/// `exponent = f32(-ln(max_period)) * i / (half - shift)` in f32, then `exp` (here in f64, rounded once).
pub(super) fn timestep_frequencies(dim: usize, shift: f32, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let c = -(max_period as f64).ln() as f32;
    let denom = half as f32 - shift;
    (0..half).map(|i| (((c * i as f32) / denom) as f64).exp() as f32).collect()
}

/// `[N, dim]`: `[sin(t f), cos(t f)]` (or `[cos, sin]` when `flip`), a zero column when `dim` is odd.
/// `t * f` is rounded to f32 (as diffusers computes it); sin and cos are evaluated in f64 and rounded once.
pub(super) fn timestep_embedding(
    dim: usize,
    flip: bool,
    shift: f32,
    max_period: f32,
    t: &View,
    out: &View,
    out_bytes: &mut [u8],
) -> Result<()> {
    require_float("timestep_embedding", &[t])?;
    let ts = floats(t);
    let freqs = timestep_frequencies(dim, shift, max_period);
    let half = dim / 2;
    with_f32_out(out.dtype, out_bytes, |o| {
        for (n, row) in o.chunks_mut(dim).enumerate() {
            let tv = ts[n];
            for (i, &f) in freqs.iter().enumerate() {
                let arg = (tv * f) as f64;
                let (s, c) = (arg.sin() as f32, arg.cos() as f32);
                if flip {
                    row[i] = c;
                    row[half + i] = s;
                } else {
                    row[i] = s;
                    row[half + i] = c;
                }
            }
            if dim % 2 == 1 {
                row[dim - 1] = 0.0;
            }
        }
        Ok(())
    })
}


/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::Geglu => geglu(&ins[0], out, out_bytes),
        Op::GegluBwd => geglu_bwd(&ins[0], &ins[1], out, out_bytes),
        Op::TimestepEmbedding { dim, flip_sin_to_cos, shift, max_period } => {
            timestep_embedding(*dim, *flip_sin_to_cos, *shift, *max_period, &ins[0], out, out_bytes)
        }
        _ => Err(cpu_err(format!("{} is not a sd_misc op", op.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::kernels::test_util::*;
    use crate::ops::Op;
    use crate::tensor::DType;

    #[test]
    fn geglu_halves_and_gradient() {
        let x = rand_vals(2 * 6, 3).iter().map(|v| v * 3.0).collect::<Vec<_>>();
        let y = run_f32(&Op::Geglu, &[(&[2, 6], &x)], DType::F32);
        for r in 0..2 {
            for j in 0..3 {
                let (h, g) = (x[r * 6 + j] as f64, x[r * 6 + 3 + j] as f64);
                let want = h * 0.5 * g * (1.0 + libm::erf(g / 2f64.sqrt()));
                assert!((y[r * 3 + j] as f64 - want).abs() < 1e-6);
            }
        }
        let dy = rand_vals(6, 4);
        let dx = run_f32(&Op::GegluBwd, &[(&[2, 6], &x), (&[2, 3], &dy)], DType::F32);
        let loss = |x: &[f32]| -> f64 {
            let y = run_f32(&Op::Geglu, &[(&[2, 6], x)], DType::F32);
            y.iter().zip(&dy).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        for i in 0..12 {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += 1e-2;
            m[i] -= 1e-2;
            let want = (loss(&p) - loss(&m)) / 2e-2;
            assert!((dx[i] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()), "{i}: {} vs {want}", dx[i]);
        }
    }

    #[test]
    fn timestep_embedding_layout() {
        let t = [0.0f32, 1.0, 500.0];
        let e = run_f32(
            &Op::TimestepEmbedding { dim: 7, flip_sin_to_cos: true, shift: 0.0, max_period: 10000.0 },
            &[(&[3], &t)],
            DType::F32,
        );
        // t = 0: cos = 1 then sin = 0, then the zero pad column.
        assert_eq!(&e[..7], &[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        // Frequency 0 is 1: cos(1) first, sin(1) at half = 3.
        assert!((e[7] - 1f32.cos()).abs() < 1e-7 && (e[10] - 1f32.sin()).abs() < 1e-7);
    }
}
