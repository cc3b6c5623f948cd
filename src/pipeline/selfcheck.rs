//! A short end-to-end check of the engine on the CPU backend: train a small MLP, plan and run a transformer
//! block forward + backward with and without the memory planner and compare the results bit for bit.

use crate::backend::cpu::{CpuBackend, CpuReference};
use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::graph::{autodiff, Graph, Plan, UnaryOp};
use crate::runtime::Executor;
use crate::nn;
use crate::optim::AdamWConfig;
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

#[derive(Clone, Debug)]
pub struct MlpReport {
    pub steps: usize,
    pub first_loss: f32,
    pub final_loss: f32,
}

/// Fit `y = sin(3 x0) * cos(2 x1)` on 256 fixed points in [-1, 1]^2 with a 2-64-64-1 tanh MLP and AdamW.
pub fn train_mlp(steps: usize, seed: u64) -> Result<MlpReport> {
    let n = 256;
    let mut g = Graph::new();
    let x = g.input("x", &[n, 2], DType::F32)?; // (N, 2)
    let y = g.input("y", &[n, 1], DType::F32)?; // (N, 1)
    let h = nn::linear(&mut g, "fc1", x, 64, true)?; // (N, 64)
    let h = g.unary(UnaryOp::Tanh, h)?; // (N, 64)
    let h = nn::linear(&mut g, "fc2", h, 64, true)?; // (N, 64)
    let h = g.unary(UnaryOp::Tanh, h)?; // (N, 64)
    let p = nn::linear(&mut g, "fc3", h, 1, true)?; // (N, 1)
    let loss = nn::mse(&mut g, p, y)?; // ()
    let grads = autodiff::param_grads(&mut g, loss)?;
    let store = nn::init_params(&g, seed)?;
    let mut ex = Executor::new(CpuBackend, g, &store)?;

    let mut rng = Rng::new(seed ^ 0xdada);
    let xs = rng.uniform_vec(n * 2, -1.0, 1.0);
    let ys: Vec<f32> = xs.chunks(2).map(|p| (3.0 * p[0]).sin() * (2.0 * p[1]).cos()).collect();
    let (xt, yt) = (HostTensor::from_f32(&[n, 2], DType::F32, &xs)?, HostTensor::from_f32(&[n, 1], DType::F32, &ys)?);
    let cfg = AdamWConfig { lr: 1e-2, weight_decay: 0.0, ..AdamWConfig::default() };
    let mut first = f32::NAN;
    let mut last = f32::NAN;
    for step in 0..steps {
        ex.run(&[("x", &xt), ("y", &yt)])?;
        last = ex.get(loss)?.scalar_f32()?;
        if step == 0 {
            first = last;
        }
        if !last.is_finite() {
            return Err(Error::Other(format!("selfcheck: MLP loss is {last} at step {step}")));
        }
        ex.adamw_step(&grads, &cfg, None)?;
    }
    Ok(MlpReport { steps, first_loss: first, final_loss: last })
}

/// A transformer block `(batch, seq, width, heads)` with a causal mask, its loss and every parameter gradient.
pub fn transformer_graph(batch: usize, seq: usize, width: usize, heads: usize) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.input("x", &[batch, seq, width], DType::F32)?; // (B, T, C)
    let mask = g.input("mask", &[seq, seq], DType::F32)?; // (T, T)
    let target = g.input("target", &[batch, seq, width], DType::F32)?; // (B, T, C)
    let y = nn::transformer_block(&mut g, "h.0", x, heads, Some(mask))?; // (B, T, C)
    let loss = nn::mse(&mut g, y, target)?; // ()
    autodiff::param_grads(&mut g, loss)?;
    Ok(g)
}

#[derive(Clone, Debug)]
pub struct PlanReport {
    pub nodes: usize,
    pub planned_bytes: usize,
    pub naive_bytes: usize,
    /// Every output equal, bit for bit, between the planned and the unplanned run.
    pub identical: bool,
}

/// Plan the transformer block forward + backward, run it planned and unplanned, compare.
pub fn plan_transformer(batch: usize, seq: usize, width: usize, heads: usize, seed: u64) -> Result<PlanReport> {
    let g = transformer_graph(batch, seq, width, heads)?;
    let store = nn::init_params(&g, seed)?;
    let mut rng = Rng::new(seed);
    let x = HostTensor::from_f32(&[batch, seq, width], DType::F32, &rng.normal_vec(batch * seq * width, 1.0))?;
    let t = HostTensor::from_f32(&[batch, seq, width], DType::F32, &rng.normal_vec(batch * seq * width, 1.0))?;
    let mask = nn::causal_mask(seq, DType::F32)?;
    let feed = [("x", &x), ("mask", &mask), ("target", &t)];
    let plan = Plan::new(&g);
    let (planned, naive) = (plan.arena_bytes, plan.naive_bytes);
    let mut a = Executor::with_plan(CpuBackend, g.clone(), plan, &store)?;
    let mut b = Executor::with_plan(CpuBackend, g.clone(), Plan::naive(&g), &store)?;
    a.run(&feed)?;
    b.run(&feed)?;
    let mut identical = true;
    for &o in g.outputs() {
        identical &= a.get(o)? == b.get(o)?;
    }
    Ok(PlanReport { nodes: g.len(), planned_bytes: planned, naive_bytes: naive, identical })
}

/// The transformer block forward + backward on `backend` against the CPU backend: the worst relative L2 error
/// over every output.
pub fn compare_backend<B: Backend>(backend: B, seed: u64) -> Result<f32> {
    let (batch, seq, width, heads) = (2, 16, 32, 4);
    let g = transformer_graph(batch, seq, width, heads)?;
    let store = nn::init_params(&g, seed)?;
    let mut rng = Rng::new(seed);
    let n = batch * seq * width;
    let x = HostTensor::from_f32(&[batch, seq, width], DType::F32, &rng.normal_vec(n, 1.0))?;
    let t = HostTensor::from_f32(&[batch, seq, width], DType::F32, &rng.normal_vec(n, 1.0))?;
    let mask = nn::causal_mask(seq, DType::F32)?;
    let feed = [("x", &x), ("mask", &mask), ("target", &t)];
    let mut cpu = Executor::new(CpuReference, g.clone(), &store)?;
    let mut other = Executor::new(backend, g.clone(), &store)?;
    other.poison_arena()?;
    cpu.run(&feed)?;
    other.run(&feed)?;
    let mut worst = 0f32;
    for &o in g.outputs() {
        let (want, got) = (cpu.get(o)?.to_f32(), other.get(o)?.to_f32());
        let num: f32 = got.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
        let den: f32 = want.iter().map(|b| b * b).sum::<f32>().sqrt().max(1e-30);
        worst = worst.max(if num.is_nan() { f32::INFINITY } else { num / den });
    }
    Ok(worst)
}

/// Run the self-check and return a printable report; an error if any part fails. With a non-CPU backend,
/// the transformer block also runs there and is compared with the CPU.
pub fn run(kind: BackendKind) -> Result<String> {
    let mlp = train_mlp(300, 42)?;
    let plan = plan_transformer(4, 32, 64, 4, 7)?;
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let mut s = String::new();
    s += &format!(
        "MLP 2-64-64-1 (tanh), AdamW lr 1e-2, {} steps on 256 points: MSE {:.5} -> {:.5}\n",
        mlp.steps, mlp.first_loss, mlp.final_loss
    );
    s += &format!(
        "transformer block B=4 T=32 C=64 H=4, forward+backward ({} nodes): planned {:.3} MiB (naive {:.3} MiB, {:.1}x)\n",
        plan.nodes,
        mib(plan.planned_bytes),
        mib(plan.naive_bytes),
        plan.naive_bytes as f64 / plan.planned_bytes.max(1) as f64
    );
    s += &format!("planned run equals unplanned run bit for bit: {}\n", plan.identical);
    if !plan.identical {
        return Err(Error::Plan(format!("planned and unplanned runs differ\n{s}")));
    }
    let other = match kind {
        BackendKind::Cpu | BackendKind::CpuReference => None,
        _ => Some(crate::with_backend!(kind, |mk| compare_backend(mk()?, 3)?)),
    };
    if let Some(err) = other {
        s += &format!("transformer block fwd+bwd on {kind:?} vs cpu: worst relative L2 error {err:.2e}\n");
        if !(err < 1e-5) {
            return Err(Error::Other(format!("{kind:?} backend disagrees with the CPU reference\n{s}")));
        }
    }
    if !(mlp.final_loss < 0.1 * mlp.first_loss) {
        return Err(Error::Other(format!("MLP did not train (loss fell less than 10x)\n{s}")));
    }
    Ok(s)
}
