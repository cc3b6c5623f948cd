//! `instagen bench train-unet`: one stage-1 training step of a UNet (forward, MSE loss, backward, AdamW), its time
//! and memory, and on host backends the time per op kind (which ops dominate a step).
//!
//! The profile comes from [`Profiled`], a backend wrapper that times every `exec` call by the op's description;
//! on asynchronous backends (cuda) it would time the launch only, so it is used on synchronous ones alone.

use std::cell::RefCell;
use std::rc::Rc;
use std::collections::HashMap;
use std::time::Instant;

use crate::backend::{AdamWSlot, Backend, BackendKind, Loc, Mems, SgdSlot};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::models::unet::UNetConfig;
use crate::optim::{AdamWConfig, SgdConfig};
use crate::pipeline::checks;
use crate::pipeline::sample::{check_bench_args, unet_config, unet_weights};
use crate::pipeline::timing::{measure, BenchReport};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

use super::step::{build_train_graph, NoiseSchedule, StepDraws, TrainShape, UnetTrainer};

/// Seconds and calls per op kind.
#[derive(Default)]
struct Profile {
    ops: HashMap<String, (f64, usize)>,
}

/// A backend that times each op it runs (per op kind: `Op::describe` without the parameters; the AdamW and norm calls as `adamw` /
/// `sum_squares`).
#[derive(Clone)]
pub struct Profiled<B: Backend> {
    inner: B,
    profile: Rc<RefCell<Profile>>,
}

impl<B: Backend> Profiled<B> {
    pub fn new(inner: B) -> Self {
        Profiled { inner, profile: Rc::new(RefCell::new(Profile::default())) }
    }

    fn time<T>(&self, key: impl FnOnce() -> String, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let r = f()?;
        let secs = start.elapsed().as_secs_f64();
        let mut p = self.profile.borrow_mut();
        let e = p.ops.entry(key()).or_default();
        e.0 += secs;
        e.1 += 1;
        Ok(r)
    }

    /// Forget what was timed so far.
    pub fn reset(&self) {
        self.profile.borrow_mut().ops.clear();
    }

    /// `(op kind, seconds, calls)` sorted by time, longest first.
    pub fn report(&self) -> Vec<(String, f64, usize)> {
        let p = self.profile.borrow();
        let mut v: Vec<_> = p.ops.iter().map(|(k, (s, n))| (k.clone(), *s, *n)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

impl<B: Backend> Backend for Profiled<B> {
    type Mem = B::Mem;
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn alloc(&self, bytes: usize) -> Result<Self::Mem> {
        self.inner.alloc(bytes)
    }
    fn write(&self, mem: &mut Self::Mem, offset: usize, data: &[u8]) -> Result<()> {
        self.inner.write(mem, offset, data)
    }
    fn read(&self, mem: &Self::Mem, offset: usize, out: &mut [u8]) -> Result<()> {
        self.inner.read(mem, offset, out)
    }
    fn memory_available(&self) -> Result<usize> {
        self.inner.memory_available()
    }
    fn device_name(&self) -> String {
        self.inner.device_name()
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn exec(&self, graph: &Graph, id: NodeId, ins: &[Loc], out: Loc, ws: Loc, inplace: Option<usize>, mems: &mut Mems<Self::Mem>) -> Result<()> {
        // The op's kind without its parameters (`Attention`, `Conv2dBwdWeight`, `binary Add`), so a kind is one row.
        let kind = || graph.node(id).op.describe().split(" {").next().unwrap_or_default().to_string();
        self.time(kind, || self.inner.exec(graph, id, ins, out, ws, inplace, mems))
    }
    fn adamw(&self, slot: &AdamWSlot, cfg: &AdamWConfig, step: u32, grad_scale: f32, mems: &mut Mems<Self::Mem>) -> Result<()> {
        self.time(|| "adamw".into(), || self.inner.adamw(slot, cfg, step, grad_scale, mems))
    }
    fn sum_squares(&self, loc: Loc, dtype: DType, mems: &Mems<Self::Mem>) -> Result<f64> {
        self.time(|| "sum_squares".into(), || self.inner.sum_squares(loc, dtype, mems))
    }
    fn sgd(&self, slot: &SgdSlot, cfg: &SgdConfig, first: bool, grad_scale: f32, mems: &mut Mems<Self::Mem>) -> Result<()> {
        self.time(|| "sgd".into(), || self.inner.sgd(slot, cfg, first, grad_scale, mems))
    }
    fn ema(&self, ema: Loc, src: Loc, src_dtype: DType, numel: usize, decay: f32, mems: &mut Mems<Self::Mem>) -> Result<()> {
        self.time(|| "ema".into(), || self.inner.ema(ema, src, src_dtype, numel, decay, mems))
    }
    fn accumulate(&self, acc: Loc, grad: Loc, grad_dtype: DType, numel: usize, first: bool, mems: &mut Mems<Self::Mem>) -> Result<()> {
        self.time(|| "accumulate".into(), || self.inner.accumulate(acc, grad, grad_dtype, numel, first, mems))
    }
    fn sum_squares_scratch(&self, numels: &[usize]) -> usize {
        self.inner.sum_squares_scratch(numels)
    }
    fn sum_squares_many(&self, tensors: &[(Loc, DType)], scratch: Option<Loc>, mems: &mut Mems<Self::Mem>) -> Result<f64> {
        self.time(|| "sum_squares".into(), || self.inner.sum_squares_many(tensors, scratch, mems))
    }
}

/// The step time, the plan summary, and the profile over the timed steps (empty when not profiled).
struct StepTiming {
    timing: crate::pipeline::timing::Timing,
    plan: String,
    profile: Vec<(String, f64, usize)>,
}

/// `instagen bench train-unet`: the time of one training step (forward + backward + AdamW) of the UNet at
/// `config` (`sd-v1`, `fixture` or a folder: [`unet_config`]; random weights unless the folder has some) for
/// `batch` latents of side `latent` (default: the config's `sample_size`) and 77 context tokens. One warm-up
/// step, then steps until `min_seconds` have passed (at least one); the median step. On the cpu and emu backends the timed steps are also profiled per op kind.
pub fn bench_train_unet(kind: BackendKind, config: &str, batch: usize, latent: Option<usize>, dtype: DType, min_seconds: f64) -> Result<BenchReport> {
    check_bench_args(batch, min_seconds)?;
    let (cfg, dir) = unet_config(config)?;
    let (side, source) = match latent {
        Some(s) => (s, "--latent"),
        None => (cfg.sample_size, "sample_size of the UNet config"),
    };
    checks::check_latent_side(&cfg, side, source)?;
    let culprit = format!("--batch {batch} with {source} {side}");
    let available = crate::with_backend!(kind, |mk| mk()?.memory_available()?);
    checks::check_unet_fits(&cfg, batch, side, dtype, available, &culprit)?;
    let shape = TrainShape { batch, height: side, width: side, context_len: 77, dtype };
    let tg = build_train_graph(&cfg, &shape)?;
    checks::check_graph_fits(&tg.graph, available).map_err(|e| e.building(format!("UNet training graph ({culprit})")))?;
    let (weights, wsource) = match &dir {
        Some(d) => unet_weights(d, &tg.graph, dtype)?,
        None => (crate::nn::init_params(&tg.graph, 0)?, "random".into()),
    };
    let param_bytes: usize = weights.iter().map(|(_, t)| t.data.len()).sum();
    let param_count = weights.numel();
    let adamw = AdamWConfig { lr: 1e-4, ..AdamWConfig::default() };
    let schedule = NoiseSchedule::sd_v1()?;
    let t = match kind {
        BackendKind::Cpu => time_steps(Profiled::new(crate::backend::cpu::CpuBackend), true, &cfg, tg, &weights, &shape, schedule, adamw, min_seconds),
        BackendKind::CpuReference => {
            time_steps(Profiled::new(crate::backend::cpu::CpuReference), true, &cfg, tg, &weights, &shape, schedule, adamw, min_seconds)
        }
        BackendKind::Emu => time_steps(Profiled::new(crate::backend::emu::EmuBackend::new()), true, &cfg, tg, &weights, &shape, schedule, adamw, min_seconds),
        BackendKind::Cuda => {
            time_steps(Profiled::new(crate::backend::cuda::CudaBackend::new(0)?), false, &cfg, tg, &weights, &shape, schedule, adamw, min_seconds)
        }
    }
    .map_err(|e| e.building(format!("UNet training graph ({culprit})")))?;
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    // AdamW keeps m and v in f32 per parameter, plus an f32 master copy when the storage is not f32.
    let state_bytes = param_count * 4 * if dtype == DType::F32 { 2 } else { 3 };
    let mut s = format!(
        "train-unet {config}: batch {batch}, latent {side}x{side}, context 77x{}, {dtype}, backend {kind:?}, weights {wsource}\n\
         parameters: {param_count} ({:.2} MiB), AdamW state {:.2} MiB; activations: {}\n\
         {:.3} s per training step (forward + backward + AdamW; median of {} timed after 1 warm-up)\n",
        cfg.cross_attention_dim,
        mib(param_bytes),
        mib(state_bytes),
        t.plan,
        t.timing.seconds,
        t.timing.runs,
    );
    let steps = t.timing.runs;
    if !t.profile.is_empty() {
        let total: f64 = t.profile.iter().map(|p| p.1).sum();
        s += &format!("per-op profile over the timed steps ({:.3} s in ops, per step):\n", total / steps as f64);
        for (name, secs, calls) in t.profile.iter().take(15) {
            s += &format!(
                "  {:>6.1}%  {:>9.3} ms  {:>6} calls  {name}\n",
                100.0 * secs / total.max(1e-12),
                1e3 * secs / steps as f64,
                calls / steps
            );
        }
    }
    Ok(BenchReport { text: s, timing: t.timing })
}

#[allow(clippy::too_many_arguments)]
fn time_steps<B: Backend>(
    backend: Profiled<B>,
    profile: bool,
    cfg: &UNetConfig,
    tg: super::step::TrainGraph,
    weights: &crate::params::ParamStore,
    shape: &TrainShape,
    schedule: NoiseSchedule,
    adamw: AdamWConfig,
    min_seconds: f64,
) -> Result<StepTiming> {
    let mut tr = UnetTrainer::with_graph(backend, cfg, tg, weights, shape.clone(), schedule, adamw)?;
    let plan = tr.plan_summary();
    let mut rng = Rng::new(7);
    let n = shape.latent_len(cfg);
    let latents = rng.normal_vec(shape.batch * n, 1.0);
    let ctx_vals = rng.normal_vec(shape.batch * shape.context_len * cfg.cross_attention_dim, 1.0);
    let context = HostTensor::from_f32(&[shape.batch, shape.context_len, cfg.cross_attention_dim], shape.dtype, &ctx_vals)?;
    let steps_total = tr.schedule().num_train_timesteps();
    // The first call is the warm-up (first touch of the arena, the optimiser state is allocated): the profile
    // starts after it.
    let mut calls = 0;
    let timing = measure(1, min_seconds, || {
        if calls == 1 {
            tr.executor().backend().reset();
        }
        calls += 1;
        let d = StepDraws::draw(&mut rng, shape.batch, n, steps_total);
        tr.step(&latents, &context, &d.timesteps, &d.noise)?;
        tr.executor().backend().synchronize()
    })?;
    let profile = if profile { tr.executor().backend().report() } else { Vec::new() };
    if !profile.is_empty() && profile.iter().all(|p| p.1 == 0.0) {
        return Err(Error::Other("profile recorded no time".into()));
    }
    Ok(StepTiming { timing, plan, profile })
}
