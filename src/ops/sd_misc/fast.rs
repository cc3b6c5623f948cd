//! The CPU fast path of GEGLU and its gradient: rows spread over all cores, the erf-GELU in f32
//! (`kernels::fast::gelu`, vectorised), f16/bf16 decoded a row at a time.

use crate::backend::cpu::kernels::fast::{Input, gelu, gelu_deriv, par_rows_out};
use crate::backend::cpu::kernels::{COST_TRANSCENDENTAL, View};
use crate::error::Result;
use crate::ops::Op;

/// `y[.., c] = x[.., c] * gelu(x[.., C + c])`, C = `c`.
fn geglu(x: &Input, out: &View, out_bytes: &mut [u8], c: usize) {
    par_rows_out(out.dtype, out_bytes, c, COST_TRANSCENDENTAL, |row0, ys| {
        let mut buf = Vec::new();
        for (r, y) in ys.chunks_exact_mut(c).enumerate() {
            let (hid, gate) = x.get((row0 + r) * 2 * c, 2 * c, &mut buf).split_at(c);
            for ((yv, &h), &g) in y.iter_mut().zip(hid).zip(gate) {
                *yv = h * gelu(g);
            }
        }
    });
}

/// `dx[.., c] = dy * gelu(gate)`, `dx[.., C + c] = dy * hidden * gelu'(gate)`.
fn geglu_bwd(x: &Input, dy: &Input, out: &View, out_bytes: &mut [u8], c: usize) {
    par_rows_out(out.dtype, out_bytes, 2 * c, 2 * COST_TRANSCENDENTAL, |row0, dxs| {
        let (mut xb, mut gb) = (Vec::new(), Vec::new());
        for (r, dx) in dxs.chunks_exact_mut(2 * c).enumerate() {
            let (hid, gate) = x.get((row0 + r) * 2 * c, 2 * c, &mut xb).split_at(c);
            let g = dy.get((row0 + r) * c, c, &mut gb);
            let (dh, dg) = dx.split_at_mut(c);
            for ((((dhv, dgv), &h), &gt), &gv) in dh.iter_mut().zip(dg.iter_mut()).zip(hid).zip(gate).zip(g) {
                *dhv = gv * gelu(gt);
                *dgv = gv * h * gelu_deriv(gt);
            }
        }
    });
}

/// This family's fast path (see `ops::run_cpu_fast`); the timestep embedding runs the reference.
pub(crate) fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Option<Result<()>> {
    if !ins.iter().chain([out]).all(|v| v.dtype.is_float()) {
        return None;
    }
    match op {
        Op::Geglu => {
            let c = *out.shape.last()?;
            if c == 0 || *ins[0].shape.last()? != 2 * c {
                return None;
            }
            geglu(&Input::new(&ins[0]), out, out_bytes, c);
        }
        Op::GegluBwd => {
            let c2 = *out.shape.last()?;
            if c2 == 0 || c2 % 2 != 0 || ins[0].shape != out.shape || *ins[1].shape.last()? != c2 / 2 {
                return None;
            }
            geglu_bwd(&Input::new(&ins[0]), &Input::new(&ins[1]), out, out_bytes, c2 / 2);
        }
        _ => return None,
    }
    Some(Ok(()))
}
