//! CPU reference of `Op::Dropout` (see `super` for the mask).

use super::{draw24, keep_scale, stream_key, threshold};
use crate::backend::cpu::kernels::{COST_ARITH, View, cpu_err, floats, par_chunks, require_float, with_f32_out};
use crate::error::Result;
use crate::ops::Op;

pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let (Op::Dropout { p }, [x, key]) = (op, ins) else { return Err(cpu_err(format!("not a dropout node: {op:?}"))) };
    require_float("dropout", &[x, out])?;
    let k: &[u8] = key.data;
    if k.len() != 16 {
        return Err(cpu_err(format!("dropout key must be i64 [2], got {} bytes", k.len())));
    }
    let word = |j: usize| u64::from_le_bytes(k[8 * j..8 * j + 8].try_into().unwrap_or([0; 8]));
    let stream = stream_key(word(0), word(1));
    let (thr, scale) = (threshold(*p), keep_scale(*p));
    let xs = floats(x);
    with_f32_out(out.dtype, out_bytes, |o| {
        par_chunks(o, COST_ARITH, |start, chunk| {
            for (j, y) in chunk.iter_mut().enumerate() {
                let i = start + j;
                let m = if draw24(stream, i as u64) >= thr { scale } else { 0.0 };
                *y = xs[i] * m;
            }
        });
        Ok(())
    })
}
