//! Launcher for `kernels/adamw.cu`: one fused AdamW update of one parameter tensor (`adamw_<param dtype>`,
//! the gradient dtype an argument), with the per-step constants computed here in f64 as the CPU reference.

use super::{grid_for, suffix, Arg, Launch, BLOCK};
use crate::backend::{AdamWSlot, Loc};
use crate::error::{Error, Result};
use crate::optim::AdamWConfig;
use crate::tensor::DType;

/// Mirror of `struct AdamWArgs` in `kernels/adamw.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamWArgs {
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    grad_scale: f32,
    pad: f32,
    n: i64,
    grad_dtype: i32,
    pad2: i32,
}

fn err(slot: &AdamWSlot, msg: impl std::fmt::Display) -> Error {
    let (p, g, n) = (slot.param_dtype, slot.grad_dtype, slot.numel);
    Error::backend("kernels", format!("adamw on {p} params ({g} grads, {n} elements): {msg}"))
}

fn check_len(slot: &AdamWSlot, what: &str, loc: Loc, elem: usize) -> Result<()> {
    if loc.bytes < slot.numel * elem {
        return Err(err(slot, format!("{what} holds {} bytes, needs {}", loc.bytes, slot.numel * elem)));
    }
    Ok(())
}

pub fn launches(slot: &AdamWSlot, cfg: &AdamWConfig, step: u32, grad_scale: f32) -> Result<Vec<Launch>> {
    let grad_dtype = match slot.grad_dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        other => return Err(err(slot, format!("gradient dtype {other} is not a float type"))),
    };
    if !slot.param_dtype.is_float() {
        return Err(err(slot, "parameters must be f32, f16 or bf16"));
    }
    check_len(slot, "param", slot.param, slot.param_dtype.size())?;
    check_len(slot, "grad", slot.grad, slot.grad_dtype.size())?;
    check_len(slot, "m", slot.m, 4)?;
    check_len(slot, "v", slot.v, 4)?;
    if let Some(w) = slot.master {
        check_len(slot, "master", w, 4)?;
    }
    if slot.numel == 0 {
        return Ok(Vec::new());
    }
    let t = step.max(1) as i32;
    let (b1, b2, lr) = (cfg.beta1 as f64, cfg.beta2 as f64, cfg.lr as f64);
    let args = AdamWArgs {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        one_minus_beta1: (1.0 - b1) as f32,
        one_minus_beta2: (1.0 - b2) as f32,
        eps: cfg.eps,
        decay: (1.0 - lr * cfg.weight_decay as f64) as f32,
        step_size: (lr / (1.0 - b1.powi(t))) as f32,
        bc2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
        grad_scale,
        pad: 0.0,
        n: slot.numel as i64,
        grad_dtype,
        pad2: 0,
    };
    Ok(vec![Launch {
        file: "adamw",
        kernel: format!("adamw_{}", suffix(slot.param_dtype)),
        grid: grid_for(slot.numel),
        block: [BLOCK, 1, 1],
        smem: 0,
        args: vec![
            Arg::Ptr(slot.param),
            Arg::Ptr(slot.grad),
            Arg::Ptr(slot.m),
            Arg::Ptr(slot.v),
            slot.master.map_or(Arg::I64(0), Arg::Ptr),
            Arg::Bytes(bytemuck::bytes_of(&args).to_vec()),
        ],
    }])
}
