//! CPU reference of `Op::FrozenBatchNorm` (also what the CPU engine runs: one multiply and one add per element
//! in f32, chunks of whole pixels in parallel). `scale` and `shift` are rounded at each step as torchvision's
//! `FrozenBatchNorm2d.forward` computes them in f32, so f32 results equal torch's. The fused ReLU keeps NaN.

use crate::backend::cpu::kernels::{COST_ARITH, View, cpu_err, floats, par_chunks_unit, with_f32_out};
use crate::error::Result;
use crate::ops::Op;

/// Per-channel `(scale, shift)` from weight, bias, running mean and variance, in torch's f32 steps.
pub fn scale_shift(w: &[f32], b: &[f32], mean: &[f32], var: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = w.iter().zip(var).map(|(&w, &v)| w * (1.0 / (v + eps).sqrt())).collect();
    let shift = b.iter().zip(mean).zip(&scale).map(|((&b, &m), &s)| b - m * s).collect();
    (scale, shift)
}

/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let &Op::FrozenBatchNorm { eps, relu } = op else {
        return Err(cpu_err(format!("{} is not a frozen_bn op", op.describe())));
    };
    let xs = floats(&ins[0]);
    let (w, b, m, v) = (floats(&ins[1]), floats(&ins[2]), floats(&ins[3]), floats(&ins[4]));
    let (scale, shift) = scale_shift(&w, &b, &m, &v, eps);
    let c = scale.len();
    with_f32_out(out.dtype, out_bytes, |o| {
        if c == 0 {
            return Ok(());
        }
        par_chunks_unit(o, c, COST_ARITH, |start, chunk| {
            for (orow, xrow) in chunk.chunks_mut(c).zip(xs[start..].chunks(c)) {
                for (((y, &x), &s), &t) in orow.iter_mut().zip(xrow).zip(&scale).zip(&shift) {
                    let z = x * s + t;
                    // max(z, 0) that keeps a NaN (torch's relu).
                    *y = if relu && z <= 0.0 { 0.0 } else { z };
                }
            }
        });
        Ok(())
    })
}
