//! Optimiser-kernel parity: the AdamW kernel (`kernels/adamw.cu`, launcher `backend/launch/adamw.rs`) and the
//! SGD / EMA / accumulation / sum-of-squares kernels (`kernels/optim.cu`, `backend/launch/optim.rs`) run
//! directly on a backend's memory (optimiser steps, not graph ops), and their benches.

use super::{compare, random_tensor, BenchResult, Gen, Outcome, Tol, Work};
use crate::backend::cpu::CpuReference;
use crate::backend::{AdamWSlot, Backend, Loc, Mems, SgdSlot, Space};
use crate::error::Result;
use crate::optim::{AdamWConfig, SgdConfig};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// One AdamW setup on a backend's memory: params in `Params`, the gradient in `Arena`, m/v/master in
/// `State`, every tensor 256-byte aligned.
pub fn adamw_setup<B: Backend>(
    b: &B,
    n: usize,
    pdt: DType,
    gdt: DType,
    master: bool,
    rng: &mut Rng,
) -> Result<(Mems<B::Mem>, AdamWSlot)> {
    let al = |bytes: usize| bytes.div_ceil(256) * 256;
    let p = random_tensor(&[n], pdt, Gen::Normal, rng)?;
    let g = random_tensor(&[n], gdt, Gen::Normal, rng)?;
    let mut params = b.alloc(al(p.data.len()))?;
    b.write(&mut params, 0, &p.data)?;
    let mut arena = b.alloc(al(g.data.len()))?;
    b.write(&mut arena, 0, &g.data)?;
    let f32_bytes = n * 4;
    let mut state = b.alloc(3 * al(f32_bytes))?;
    // Non-zero moments, as after earlier steps (v >= 0).
    let m0 = random_tensor(&[n], DType::F32, Gen::Normal, rng)?;
    let v0 = random_tensor(&[n], DType::F32, Gen::Uniform(0.0, 2.0), rng)?;
    b.write(&mut state, 0, &m0.data)?;
    b.write(&mut state, al(f32_bytes), &v0.data)?;
    b.write(&mut state, 2 * al(f32_bytes), &p.cast(DType::F32).data)?;
    let loc = |space, offset, bytes| Loc { space, offset, bytes };
    let slot = AdamWSlot {
        numel: n,
        param: loc(Space::Params, 0, p.data.len()),
        param_dtype: pdt,
        grad: loc(Space::Arena, 0, g.data.len()),
        grad_dtype: gdt,
        m: loc(Space::State, 0, f32_bytes),
        v: loc(Space::State, al(f32_bytes), f32_bytes),
        master: master.then(|| loc(Space::State, 2 * al(f32_bytes), f32_bytes)),
    };
    Ok((Mems { arena, params, state }, slot))
}

/// Every tensor of an AdamW slot as f32: param, m, v and master (when present).
fn adamw_read<B: Backend>(b: &B, mems: &Mems<B::Mem>, slot: &AdamWSlot) -> Result<Vec<Vec<f32>>> {
    let get = |l: Loc, dt: DType| -> Result<Vec<f32>> {
        let mut t = HostTensor::zeros(&[slot.numel], dt);
        b.read(mems.get(l.space), l.offset, &mut t.data)?;
        Ok(t.to_f32())
    };
    let mut out = vec![get(slot.param, slot.param_dtype)?, get(slot.m, DType::F32)?, get(slot.v, DType::F32)?];
    if let Some(w) = slot.master {
        out.push(get(w, DType::F32)?);
    }
    Ok(out)
}

/// AdamW kernel parity without a graph: random parameters, gradients and moments (an odd element count),
/// three steps with gradient scaling on `backend` and on the CPU reference, every tensor compared after each
/// step. Covers the parameter/gradient dtype pairs the executor produces (f32 without master weights, f16 and
/// bf16 with them) plus mixed ones the kernel also accepts.
pub fn run_adamw_direct<B: Backend, F: Fn() -> B>(make: F, seed: u64) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let (mut worst, mut max_abs, mut elements) = (0f32, 0f32, 0usize);
    let combos = [
        (DType::F32, DType::F32, false),
        (DType::F16, DType::F16, true),
        (DType::BF16, DType::BF16, true),
        (DType::F32, DType::BF16, false),
        (DType::F16, DType::F32, true),
        (DType::BF16, DType::F16, false),
    ];
    let n = 1237;
    let cfg = AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..AdamWConfig::default() };
    for (i, &(pdt, gdt, master)) in combos.iter().enumerate() {
        let dev = make();
        let (mut dm, slot) = adamw_setup(&dev, n, pdt, gdt, master, &mut Rng::new(seed ^ (i as u64 + 1)))?;
        let (mut cm, cslot) = adamw_setup(&CpuReference, n, pdt, gdt, master, &mut Rng::new(seed ^ (i as u64 + 1)))?;
        for step in 1..=3u32 {
            dev.adamw(&slot, &cfg, step, 0.5, &mut dm)?;
            CpuReference.adamw(&cslot, &cfg, step, 0.5, &mut cm)?;
            let (got, want) = (adamw_read(&dev, &dm, &slot)?, adamw_read(&CpuReference, &cm, &cslot)?);
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                // The parameter in its storage dtype; moments and master weights in f32.
                let tol = Tol::for_dtype(if k == 0 { pdt } else { DType::F32 });
                let (r, m) = compare(g, w, tol);
                worst = worst.max(r);
                max_abs = max_abs.max(m);
                elements += w.len();
            }
        }
    }
    Ok(Outcome {
        name: format!("adamw direct, 6 param/grad dtype pairs [{n}], 3 steps"),
        elements,
        worst_ratio: worst,
        max_abs_err: max_abs,
        passed: worst <= 1.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Time one AdamW update of `numel` f32 parameters with f32 gradients (no master weights) on `backend`:
/// 4 reads and 3 writes of 4 bytes per parameter. AdamW is not a graph op, so it is not a bench [`Case`].
pub fn bench_adamw<B: Backend>(backend: B, numel: usize, min_runs: usize, min_seconds: f64) -> Result<BenchResult> {
    let (mut mems, slot) = adamw_setup(&backend, numel, DType::F32, DType::F32, false, &mut Rng::new(1))?;
    let cfg = AdamWConfig::default();
    for step in 1..=2 {
        backend.adamw(&slot, &cfg, step, 1.0, &mut mems)?;
    }
    backend.synchronize()?;
    let start = std::time::Instant::now();
    let mut runs = 0;
    while runs < min_runs || start.elapsed().as_secs_f64() < min_seconds {
        backend.adamw(&slot, &cfg, 3 + runs as u32, 1.0, &mut mems)?;
        runs += 1;
    }
    backend.synchronize()?;
    Ok(BenchResult {
        name: format!("adamw f32 [{numel}]"),
        work: Work::Bytes(numel as u64 * 28),
        seconds_per_run: start.elapsed().as_secs_f64() / runs as f64,
    })
}

/// The AdamW bench size: SD's UNet (860M parameters) / 16.
pub const ADAMW_BENCH_NUMEL: usize = 860_000_000 / 16;

/// Memory for one direct optimiser-kernel case: a param (`Params`), a gradient (`Arena`) and `state` f32
/// tensors of `n` elements (`State`), 256-byte aligned, filled with random values (state in [0, 2)).
struct Direct<M> {
    mems: Mems<M>,
    param: Loc,
    grad: Loc,
    state: Vec<Loc>,
}

fn direct_setup<B: Backend>(b: &B, n: usize, pdt: DType, gdt: DType, state: usize, rng: &mut Rng) -> Result<Direct<B::Mem>> {
    let al = |bytes: usize| bytes.div_ceil(256) * 256;
    let p = random_tensor(&[n], pdt, Gen::Normal, rng)?;
    let g = random_tensor(&[n], gdt, Gen::Normal, rng)?;
    let mut params = b.alloc(al(p.data.len()))?;
    b.write(&mut params, 0, &p.data)?;
    let mut arena = b.alloc(al(g.data.len()))?;
    b.write(&mut arena, 0, &g.data)?;
    let mut st = b.alloc(state.max(1) * al(n * 4))?;
    let mut locs = Vec::new();
    for k in 0..state {
        let t = random_tensor(&[n], DType::F32, Gen::Uniform(0.0, 2.0), rng)?;
        b.write(&mut st, k * al(n * 4), &t.data)?;
        locs.push(Loc { space: Space::State, offset: k * al(n * 4), bytes: n * 4 });
    }
    Ok(Direct {
        mems: Mems { arena, params, state: st },
        param: Loc { space: Space::Params, offset: 0, bytes: p.data.len() },
        grad: Loc { space: Space::Arena, offset: 0, bytes: g.data.len() },
        state: locs,
    })
}

fn read_f32<B: Backend>(b: &B, mems: &Mems<B::Mem>, l: Loc, dt: DType) -> Result<Vec<f32>> {
    let mut t = HostTensor::zeros(&[l.bytes / dt.size()], dt);
    b.read(mems.get(l.space), l.offset, &mut t.data)?;
    Ok(t.to_f32())
}

/// Running worst-case bookkeeping of a direct parity run.
#[derive(Default)]
struct Tally {
    worst: f32,
    max_abs: f32,
    elements: usize,
}

impl Tally {
    fn add(&mut self, got: &[f32], want: &[f32], tol: Tol) {
        let (r, m) = compare(got, want, tol);
        self.worst = self.worst.max(r);
        self.max_abs = self.max_abs.max(m);
        self.elements += want.len();
    }
    fn outcome(self, name: String, start: std::time::Instant) -> Outcome {
        Outcome {
            name,
            elements: self.elements,
            worst_ratio: self.worst,
            max_abs_err: self.max_abs,
            passed: self.worst <= 1.0,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// SGD kernel parity (`kernels/optim.cu`): every param/grad dtype pair, f32 master weights for f16/bf16
/// params, with and without (Nesterov) momentum and weight decay, three steps (the first starts the momentum
/// buffer), gradient scaling; the parameter, momentum buffer and master weights compared after each step.
pub fn run_sgd_direct<B: Backend, F: Fn() -> B>(make: F, seed: u64) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let mut tally = Tally::default();
    let n = 1237;
    let cfgs = [
        SgdConfig { lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 0.01, nesterov: false },
        SgdConfig { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: true },
        SgdConfig { lr: 0.05, momentum: 0.0, dampening: 0.0, weight_decay: 0.1, nesterov: false },
    ];
    let mut case = 0u64;
    for pdt in FLOATS {
        for gdt in FLOATS {
            for cfg in &cfgs {
                case += 1;
                let master = pdt != DType::F32;
                let dev = make();
                let mut d = direct_setup(&dev, n, pdt, gdt, 2, &mut Rng::new(seed ^ case))?;
                let mut c = direct_setup(&CpuReference, n, pdt, gdt, 2, &mut Rng::new(seed ^ case))?;
                // Master weights start as the parameter.
                let w = read_f32(&CpuReference, &c.mems, c.param, pdt)?;
                let wb: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
                dev.write(&mut d.mems.state, d.state[1].offset, &wb)?;
                CpuReference.write(&mut c.mems.state, c.state[1].offset, &wb)?;
                let slot = |param: Loc, grad: Loc, state: &[Loc]| SgdSlot {
                    numel: n,
                    param,
                    param_dtype: pdt,
                    grad,
                    grad_dtype: gdt,
                    momentum: Some(state[0]),
                    master: master.then_some(state[1]),
                };
                let (ds, cs) = (slot(d.param, d.grad, &d.state), slot(c.param, c.grad, &c.state));
                for step in 0..3 {
                    dev.sgd(&ds, cfg, step == 0, 0.5, &mut d.mems)?;
                    CpuReference.sgd(&cs, cfg, step == 0, 0.5, &mut c.mems)?;
                    let p = (read_f32(&dev, &d.mems, d.param, pdt)?, read_f32(&CpuReference, &c.mems, c.param, pdt)?);
                    tally.add(&p.0, &p.1, Tol::for_dtype(pdt));
                    for k in 0..2 {
                        let (g, w) = (read_f32(&dev, &d.mems, d.state[k], DType::F32)?, read_f32(&CpuReference, &c.mems, c.state[k], DType::F32)?);
                        tally.add(&g, &w, Tol::for_dtype(DType::F32));
                    }
                }
            }
        }
    }
    Ok(tally.outcome(format!("sgd direct, 9 param/grad dtype pairs x 3 settings [{n}], 3 steps"), start))
}

/// EMA and gradient-accumulation kernel parity (`kernels/optim.cu`), every source dtype, three updates each.
pub fn run_ema_accumulate_direct<B: Backend, F: Fn() -> B>(make: F, seed: u64) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let mut tally = Tally::default();
    let n = 1237;
    for (i, dt) in FLOATS.into_iter().enumerate() {
        let dev = make();
        let mut d = direct_setup(&dev, n, dt, dt, 2, &mut Rng::new(seed ^ (100 + i as u64)))?;
        let mut c = direct_setup(&CpuReference, n, dt, dt, 2, &mut Rng::new(seed ^ (100 + i as u64)))?;
        for step in 0..3 {
            dev.ema(d.state[0], d.param, dt, n, 0.9, &mut d.mems)?;
            CpuReference.ema(c.state[0], c.param, dt, n, 0.9, &mut c.mems)?;
            dev.accumulate(d.state[1], d.grad, dt, n, step == 0, &mut d.mems)?;
            CpuReference.accumulate(c.state[1], c.grad, dt, n, step == 0, &mut c.mems)?;
            for k in 0..2 {
                let (g, w) = (read_f32(&dev, &d.mems, d.state[k], DType::F32)?, read_f32(&CpuReference, &c.mems, c.state[k], DType::F32)?);
                tally.add(&g, &w, Tol::for_dtype(DType::F32));
            }
        }
    }
    Ok(tally.outcome(format!("ema + accumulate direct, f32/f16/bf16 [{n}], 3 steps"), start))
}

/// Device sum of squares (the squared global gradient norm) against the CPU's f64 sum: tensors of every float
/// dtype and of sizes from 1 element to several partial-sum blocks, in one reduction. Both sides sum the same
/// f64 squares in different orders, so they agree to `count * 2^-53` relative (each addition rounds once).
pub fn run_sum_squares_direct<B: Backend, F: Fn() -> B>(make: F, seed: u64) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let sizes = [1usize, 255, 1237, 70_001];
    let dev = make();
    let mut rng = Rng::new(seed ^ 0x5ca1e);
    let al = |bytes: usize| bytes.div_ceil(256) * 256;
    let mut tensors = Vec::new();
    let mut bytes = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let dt = FLOATS[k % 3];
        let t = random_tensor(&[n], dt, Gen::Normal, &mut rng)?;
        tensors.push((Loc { space: Space::Arena, offset: bytes.len(), bytes: t.data.len() }, dt));
        bytes.extend(&t.data);
        bytes.resize(al(bytes.len()), 0);
    }
    let numels: Vec<usize> = sizes.to_vec();
    let scratch_bytes = dev.sum_squares_scratch(&numels);
    let mut arena = dev.alloc(bytes.len())?;
    dev.write(&mut arena, 0, &bytes)?;
    let mut mems = Mems { arena, params: dev.alloc(0)?, state: dev.alloc(scratch_bytes.max(8))? };
    let scratch = (scratch_bytes > 0).then_some(Loc { space: Space::State, offset: 0, bytes: scratch_bytes });
    let got = dev.sum_squares_many(&tensors, scratch, &mut mems)?;
    let mut cpu_mems = Mems { arena: CpuReference.alloc(bytes.len())?, params: CpuReference.alloc(0)?, state: CpuReference.alloc(0)? };
    CpuReference.write(&mut cpu_mems.arena, 0, &bytes)?;
    let want = CpuReference.sum_squares_many(&tensors, None, &mut cpu_mems)?;
    let count: usize = numels.iter().sum();
    let bound = count as f64 * f64::EPSILON / 2.0 * want.abs();
    let err = (got - want).abs();
    let ratio = if bound > 0.0 { (err / bound) as f32 } else if err == 0.0 { 0.0 } else { f32::INFINITY };
    Ok(Outcome {
        name: format!("sum of squares on the device, {} tensors, {count} elements (bound n*2^-53)", sizes.len()),
        elements: count,
        worst_ratio: if got.is_finite() { ratio } else { f32::INFINITY },
        max_abs_err: err as f32,
        passed: got.is_finite() && ratio <= 1.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Every optimiser-kernel parity run besides AdamW's.
pub fn run_optim_direct<B: Backend, F: Fn() -> B>(make: F, seed: u64) -> Result<Vec<Outcome>> {
    Ok(vec![
        run_sgd_direct(&make, seed)?,
        run_ema_accumulate_direct(&make, seed)?,
        run_sum_squares_direct(&make, seed)?,
    ])
}

/// Time the other optimiser kernels on `numel` f32 elements: SGD with momentum (4 reads, 2 writes of 4 bytes
/// per parameter), the EMA (2 reads, 1 write), gradient accumulation (2 reads, 1 write) and the device sum of
/// squares (1 read).
pub fn bench_optim<B: Backend>(backend: B, numel: usize, min_runs: usize, min_seconds: f64) -> Result<Vec<BenchResult>> {
    let mut d = direct_setup(&backend, numel, DType::F32, DType::F32, 2, &mut Rng::new(1))?;
    let scratch_bytes = backend.sum_squares_scratch(&[numel]);
    let mut sums = Mems { arena: backend.alloc(0)?, params: backend.alloc(0)?, state: backend.alloc(scratch_bytes.max(8))? };
    let scratch = (scratch_bytes > 0).then_some(Loc { space: Space::State, offset: 0, bytes: scratch_bytes });
    let slot = SgdSlot {
        numel,
        param: d.param,
        param_dtype: DType::F32,
        grad: d.grad,
        grad_dtype: DType::F32,
        momentum: Some(d.state[0]),
        master: None,
    };
    let cfg = SgdConfig { momentum: 0.9, ..SgdConfig::default() };
    let (param, grad, s0, s1) = (d.param, d.grad, d.state[0], d.state[1]);
    let mut out = Vec::new();
    let mut time = |name: &str, bytes: u64, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        f()?;
        backend.synchronize()?;
        let start = std::time::Instant::now();
        let mut runs = 0;
        while runs < min_runs || start.elapsed().as_secs_f64() < min_seconds {
            f()?;
            runs += 1;
        }
        backend.synchronize()?;
        out.push(BenchResult {
            name: format!("{name} f32 [{numel}]"),
            work: Work::Bytes(numel as u64 * bytes),
            seconds_per_run: start.elapsed().as_secs_f64() / runs as f64,
        });
        Ok(())
    };
    time("sgd momentum", 24, &mut || backend.sgd(&slot, &cfg, false, 1.0, &mut d.mems))?;
    time("ema", 12, &mut || backend.ema(s1, param, DType::F32, numel, 0.999, &mut d.mems))?;
    time("accumulate", 12, &mut || backend.accumulate(s0, grad, DType::F32, numel, false, &mut d.mems))?;
    // The sum of squares reads the gradient from the arena and reduces in its own scratch region.
    std::mem::swap(&mut sums.arena, &mut d.mems.arena);
    time("sum of squares", 4, &mut || backend.sum_squares_many(&[(grad, DType::F32)], scratch, &mut sums).map(|_| ()))?;
    Ok(out)
}
