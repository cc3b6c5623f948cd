//! Launchers for `kernels/optim.cu`: the SGD update, the weight EMA, gradient accumulation and the device sum
//! of squares (the global gradient norm read back as one f64).

use super::{grid_for, suffix, Arg, Launch, BLOCK};
use crate::backend::{Loc, SgdSlot};
use crate::error::{Error, Result};
use crate::optim::SgdConfig;
use crate::tensor::DType;

/// Mirror of `struct SgdArgs` in `kernels/optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct SgdArgs {
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    weight_decay: f32,
    grad_scale: f32,
    nesterov: i32,
    first: i32,
    grad_dtype: i32,
    n: i64,
}

fn err(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::backend("kernels", format!("{what}: {msg}"))
}

fn float_code(what: &str, d: DType) -> Result<i32> {
    match d {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        DType::BF16 => Ok(2),
        other => Err(err(what, format!("dtype {other} is not a float type"))),
    }
}

fn check_len(what: &str, name: &str, loc: Loc, bytes: usize) -> Result<()> {
    if loc.bytes < bytes {
        return Err(err(what, format!("{name} holds {} bytes, needs {bytes}", loc.bytes)));
    }
    Ok(())
}

pub fn sgd_launches(slot: &SgdSlot, cfg: &SgdConfig, first: bool, grad_scale: f32) -> Result<Vec<Launch>> {
    let what = format!("sgd on {} params ({} grads, {} elements)", slot.param_dtype, slot.grad_dtype, slot.numel);
    let grad_dtype = float_code(&what, slot.grad_dtype)?;
    float_code(&what, slot.param_dtype)?;
    check_len(&what, "param", slot.param, slot.numel * slot.param_dtype.size())?;
    check_len(&what, "grad", slot.grad, slot.numel * slot.grad_dtype.size())?;
    for (name, l) in [("momentum", slot.momentum), ("master", slot.master)] {
        if let Some(l) = l {
            check_len(&what, name, l, slot.numel * 4)?;
        }
    }
    if cfg.momentum != 0.0 && slot.momentum.is_none() {
        return Err(err(&what, "momentum is set but there is no momentum buffer"));
    }
    if slot.numel == 0 {
        return Ok(Vec::new());
    }
    let args = SgdArgs {
        lr: cfg.lr,
        momentum: cfg.momentum,
        one_minus_dampening: 1.0 - cfg.dampening,
        weight_decay: cfg.weight_decay,
        grad_scale,
        nesterov: cfg.nesterov as i32,
        first: first as i32,
        grad_dtype,
        n: slot.numel as i64,
    };
    let momentum = if cfg.momentum != 0.0 { slot.momentum } else { None };
    Ok(vec![Launch {
        file: "optim",
        kernel: format!("sgd_{}", suffix(slot.param_dtype)),
        grid: grid_for(slot.numel),
        block: [BLOCK, 1, 1],
        smem: 0,
        args: vec![
            Arg::Ptr(slot.param),
            Arg::Ptr(slot.grad),
            momentum.map_or(Arg::I64(0), Arg::Ptr),
            slot.master.map_or(Arg::I64(0), Arg::Ptr),
            Arg::Bytes(bytemuck::bytes_of(&args).to_vec()),
        ],
    }])
}

pub fn ema_launches(ema: Loc, src: Loc, src_dtype: DType, numel: usize, decay: f32) -> Result<Vec<Launch>> {
    let what = format!("ema of {numel} {src_dtype} elements");
    float_code(&what, src_dtype)?;
    check_len(&what, "ema", ema, numel * 4)?;
    check_len(&what, "source", src, numel * src_dtype.size())?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    Ok(vec![Launch {
        file: "optim",
        kernel: format!("ema_{}", suffix(src_dtype)),
        grid: grid_for(numel),
        block: [BLOCK, 1, 1],
        smem: 0,
        args: vec![
            Arg::Ptr(ema),
            Arg::Ptr(src),
            Arg::F32(decay),
            Arg::F32((1.0 - decay as f64) as f32),
            Arg::I64(numel as i64),
        ],
    }])
}

pub fn accumulate_launches(acc: Loc, grad: Loc, grad_dtype: DType, numel: usize, first: bool) -> Result<Vec<Launch>> {
    let what = format!("gradient accumulation of {numel} {grad_dtype} elements");
    float_code(&what, grad_dtype)?;
    check_len(&what, "accumulator", acc, numel * 4)?;
    check_len(&what, "gradient", grad, numel * grad_dtype.size())?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    Ok(vec![Launch {
        file: "optim",
        kernel: format!("accumulate_{}", suffix(grad_dtype)),
        grid: grid_for(numel),
        block: [BLOCK, 1, 1],
        smem: 0,
        args: vec![Arg::Ptr(acc), Arg::Ptr(grad), Arg::I32(first as i32), Arg::I64(numel as i64)],
    }])
}

/// Elements per thread a partial-sum block aims at, and the most blocks per tensor.
const SUMSQ_PER_THREAD: usize = 8;
const SUMSQ_MAX_BLOCKS: usize = 1024;

fn sumsq_blocks(numel: usize) -> usize {
    numel.div_ceil(BLOCK as usize * SUMSQ_PER_THREAD).clamp(1, SUMSQ_MAX_BLOCKS)
}

/// Scratch bytes of [`sumsq_launches`]: one f64 per block of every tensor, plus the result.
pub fn sumsq_scratch_bytes(numels: &[usize]) -> usize {
    (numels.iter().map(|&n| sumsq_blocks(n)).sum::<usize>() + 1) * 8
}

/// The launches that leave the sum of squares of every tensor in the last f64 of `scratch`; returns them and
/// that f64's byte offset within the scratch region's space.
pub fn sumsq_launches(tensors: &[(Loc, DType)], scratch: Loc) -> Result<(Vec<Launch>, usize)> {
    let numels: Vec<usize> = tensors.iter().map(|(l, d)| l.bytes / d.size()).collect();
    let need = sumsq_scratch_bytes(&numels);
    check_len("sum of squares", "scratch", scratch, need)?;
    let mut launches = Vec::new();
    let mut at = 0;
    for (&(loc, dtype), &n) in tensors.iter().zip(&numels) {
        float_code("sum of squares", dtype)?;
        let blocks = sumsq_blocks(n);
        let part = Loc { space: scratch.space, offset: scratch.offset + at * 8, bytes: blocks * 8 };
        launches.push(Launch {
            file: "optim",
            kernel: format!("sumsq_partial_{}", suffix(dtype)),
            grid: [blocks as u32, 1, 1],
            block: [BLOCK, 1, 1],
            smem: 0,
            args: vec![Arg::Ptr(loc), Arg::Ptr(part), Arg::I64(n as i64)],
        });
        at += blocks;
    }
    let all = Loc { space: scratch.space, offset: scratch.offset, bytes: (at + 1) * 8 };
    launches.push(Launch {
        file: "optim",
        kernel: "sumsq_final".into(),
        grid: [1, 1, 1],
        block: [BLOCK, 1, 1],
        smem: 0,
        args: vec![Arg::Ptr(all), Arg::I64(at as i64)],
    });
    Ok((launches, scratch.offset + at * 8))
}
