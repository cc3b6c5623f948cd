//! The CPU fast path of the transcendental unary ops (exp, sigmoid, SiLU, erf-GELU, quick GELU) and their
//! gradients: f32 throughout with the vectorised functions of `kernels::fast`, all cores, f16/bf16 decoded a
//! chunk at a time. The other elementwise ops run the reference, which is already f32 arithmetic with the
//! common broadcasts specialised.

use crate::backend::cpu::kernels::fast::{Input, exp, gelu, gelu_deriv, par_rows_out, sigmoid};
use crate::backend::cpu::kernels::{COST_TRANSCENDENTAL, View};
use crate::error::Result;
use crate::ops::{Op, UnaryOp};

/// The sigmoid slope of quick GELU, as the reference and PyTorch take it (an f32 constant).
const QUICK_GELU_K: f32 = 1.702;

/// Elements handled per call of the inner loops (decoded, computed and encoded together).
const BLOCK: usize = 4096;

/// Whether this path computes `u` (and its gradient).
fn handled(u: UnaryOp) -> bool {
    matches!(u, UnaryOp::Exp | UnaryOp::Sigmoid | UnaryOp::Silu | UnaryOp::Gelu | UnaryOp::QuickGelu)
}

#[inline(always)]
fn forward(u: UnaryOp, x: f32) -> f32 {
    match u {
        UnaryOp::Exp => exp(x),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Silu => x * sigmoid(x),
        UnaryOp::Gelu => gelu(x),
        _ => x * sigmoid(QUICK_GELU_K * x),
    }
}

#[inline(always)]
fn derivative(u: UnaryOp, x: f32) -> f32 {
    match u {
        UnaryOp::Exp => exp(x),
        UnaryOp::Sigmoid => {
            let s = sigmoid(x);
            s * (1.0 - s)
        }
        UnaryOp::Silu => {
            let s = sigmoid(x);
            s * (1.0 + x * (1.0 - s))
        }
        UnaryOp::Gelu => gelu_deriv(x),
        _ => {
            let s = sigmoid(QUICK_GELU_K * x);
            s + QUICK_GELU_K * x * s * (1.0 - s)
        }
    }
}

/// Runs `f` over blocks of the output: `f(start, out_block)`.
fn blocks(out: &View, out_bytes: &mut [u8], f: impl Fn(usize, &mut [f32]) + Sync) {
    par_rows_out(out.dtype, out_bytes, 1, COST_TRANSCENDENTAL, |s, o| {
        for (k, blk) in o.chunks_mut(BLOCK).enumerate() {
            f(s + k * BLOCK, blk);
        }
    });
}

/// One loop per op, so that each is compiled (and vectorised) with its function inlined.
macro_rules! per_op {
    ($u:expr, |$k:ident| $body:expr) => {
        match $u {
            UnaryOp::Exp => { let $k = UnaryOp::Exp; $body }
            UnaryOp::Sigmoid => { let $k = UnaryOp::Sigmoid; $body }
            UnaryOp::Silu => { let $k = UnaryOp::Silu; $body }
            UnaryOp::Gelu => { let $k = UnaryOp::Gelu; $body }
            _ => { let $k = UnaryOp::QuickGelu; $body }
        }
    };
}

/// This family's fast path (see `ops::run_cpu_fast`).
pub(crate) fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Option<Result<()>> {
    if !ins.iter().chain([out]).all(|v| v.dtype.is_float()) {
        return None;
    }
    match op {
        Op::Unary(u) if handled(*u) => {
            let x = Input::new(&ins[0]);
            per_op!(*u, |k| blocks(out, out_bytes, |s, o| {
                let mut buf = Vec::new();
                let xs = x.get(s, o.len(), &mut buf);
                for (y, &v) in o.iter_mut().zip(xs) {
                    *y = forward(k, v);
                }
            }));
        }
        Op::UnaryBwd(u) if handled(*u) && ins[0].shape == ins[1].shape => {
            let (x, dy) = (Input::new(&ins[0]), Input::new(&ins[1]));
            per_op!(*u, |k| blocks(out, out_bytes, |s, o| {
                let (mut xb, mut gb) = (Vec::new(), Vec::new());
                let (xs, gs) = (x.get(s, o.len(), &mut xb), dy.get(s, o.len(), &mut gb));
                for ((y, &v), &g) in o.iter_mut().zip(xs).zip(gs) {
                    *y = g * derivative(k, v);
                }
            }));
        }
        _ => return None,
    }
    Some(Ok(()))
}
