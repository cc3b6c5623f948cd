//! Whole graphs on the emulated CUDA kernels: a transformer block forward + backward, and MLP training steps
//! with the AdamW kernel, against the CPU backend. This runs the launchers, the planner's arena (with in-place
//! reuse) and every kernel family together, as the GPU will.

use instagen::backend::cpu::CpuReference;
use instagen::backend::emu::EmuBackend;
use instagen::graph::{autodiff, Graph, UnaryOp};
use instagen::runtime::Executor;
use instagen::nn;
use instagen::optim::AdamWConfig;
use instagen::pipeline::selfcheck;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

/// Relative L2 distance.
fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
    let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    num / den.max(1e-30)
}

#[test]
fn transformer_block_forward_backward_matches_cpu() {
    let (b, t, c, h) = (2, 9, 24, 3);
    let g = selfcheck::transformer_graph(b, t, c, h).unwrap();
    let store = nn::init_params(&g, 4).unwrap();
    let mut rng = Rng::new(8);
    let x = HostTensor::from_f32(&[b, t, c], DType::F32, &rng.normal_vec(b * t * c, 1.0)).unwrap();
    let y = HostTensor::from_f32(&[b, t, c], DType::F32, &rng.normal_vec(b * t * c, 1.0)).unwrap();
    let mask = nn::causal_mask(t, DType::F32).unwrap();
    let feed = [("x", &x), ("mask", &mask), ("target", &y)];
    let mut cpu = Executor::new(CpuReference, g.clone(), &store).unwrap();
    let mut emu = Executor::new(EmuBackend::new(), g.clone(), &store).unwrap();
    emu.poison_arena().unwrap();
    cpu.run(&feed).unwrap();
    emu.run(&feed).unwrap();
    let mut worst = 0f32;
    for &o in g.outputs() {
        let (want, got) = (cpu.get(o).unwrap().to_f32(), emu.get(o).unwrap().to_f32());
        let e = rel_l2(&got, &want);
        worst = worst.max(e);
        // f32 everywhere; the kernels and the reference differ in summation order only.
        assert!(e < 1e-5, "output node {}: relative L2 error {e}", o.0);
    }
    eprintln!("transformer block fwd+bwd on emu: {} outputs, worst relative L2 error {worst:.2e}", g.outputs().len());
}

#[test]
fn mlp_trains_identically_on_emu() {
    let n = 64;
    let mut g = Graph::new();
    let x = g.input("x", &[n, 3], DType::F32).unwrap();
    let y = g.input("y", &[n, 1], DType::F32).unwrap();
    let hdn = nn::linear(&mut g, "fc1", x, 16, true).unwrap();
    let hdn = g.unary(UnaryOp::Silu, hdn).unwrap();
    let p = nn::linear(&mut g, "fc2", hdn, 1, true).unwrap();
    let loss = nn::mse(&mut g, p, y).unwrap();
    let grads = autodiff::param_grads(&mut g, loss).unwrap();
    let store = nn::init_params(&g, 1).unwrap();
    let mut rng = Rng::new(2);
    let xs = rng.normal_vec(n * 3, 1.0);
    let ys: Vec<f32> = xs.chunks(3).map(|v| v[0] * v[1] - v[2]).collect();
    let xt = HostTensor::from_f32(&[n, 3], DType::F32, &xs).unwrap();
    let yt = HostTensor::from_f32(&[n, 1], DType::F32, &ys).unwrap();
    let cfg = AdamWConfig { lr: 1e-2, ..AdamWConfig::default() };
    let mut cpu = Executor::new(CpuReference, g.clone(), &store).unwrap();
    let mut emu = Executor::new(EmuBackend::new(), g, &store).unwrap();
    let (mut first, mut last) = (0.0, 0.0);
    for step in 0..30 {
        cpu.run(&[("x", &xt), ("y", &yt)]).unwrap();
        emu.run(&[("x", &xt), ("y", &yt)]).unwrap();
        let (lc, le) = (cpu.get(loss).unwrap().scalar_f32().unwrap(), emu.get(loss).unwrap().scalar_f32().unwrap());
        assert!((lc - le).abs() <= 1e-4 * lc.abs(), "step {step}: loss cpu {lc} vs emu {le}");
        if step == 0 {
            first = le;
        }
        last = le;
        cpu.adamw_step(&grads, &cfg, Some(1.0)).unwrap();
        emu.adamw_step(&grads, &cfg, Some(1.0)).unwrap();
    }
    eprintln!("MLP on emu: loss {first:.4} -> {last:.4} in 30 steps, equal to the CPU run within 1e-4");
    assert!(last < 0.7 * first);
}
