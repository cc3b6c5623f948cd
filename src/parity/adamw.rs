//! AdamW parity: the AdamW kernel (`kernels/adamw.cu`, launcher `backend/launch/adamw.rs`) run directly on a
//! backend's memory (an optimiser step, not a graph op), and its bench.

use super::{compare, random_tensor, BenchResult, Gen, Outcome, Tol, Work};
use crate::backend::cpu::CpuBackend;
use crate::backend::{AdamWSlot, Backend, Loc, Mems, Space};
use crate::error::Result;
use crate::optim::AdamWConfig;
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
        let (mut cm, cslot) = adamw_setup(&CpuBackend, n, pdt, gdt, master, &mut Rng::new(seed ^ (i as u64 + 1)))?;
        for step in 1..=3u32 {
            dev.adamw(&slot, &cfg, step, 0.5, &mut dm)?;
            CpuBackend.adamw(&cslot, &cfg, step, 0.5, &mut cm)?;
            let (got, want) = (adamw_read(&dev, &dm, &slot)?, adamw_read(&CpuBackend, &cm, &cslot)?);
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
