//! The engine trains: a small MLP (regression) and a small transformer (a sequence task that needs attention),
//! forward and backward through autodiff, AdamW updates on the CPU backend.

use instagen::backend::cpu::CpuBackend;
use instagen::graph::{autodiff, Graph};
use instagen::runtime::Executor;
use instagen::nn;
use instagen::optim::AdamWConfig;
use instagen::pipeline::selfcheck;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

#[test]
fn mlp_fits_a_smooth_function() {
    let r = selfcheck::train_mlp(300, 42).unwrap();
    eprintln!("MLP: MSE {} -> {} in {} steps", r.first_loss, r.final_loss, r.steps);
    // The target has variance ~0.2; a fit that explains >97% of it is a trained network.
    assert!(r.final_loss < 0.006, "MLP final MSE {} (started at {})", r.final_loss, r.first_loss);
}

/// Task: at every position t >= 1 output the token seen at t - 1 (at t = 0, the token itself). Solving it
/// needs attention to the previous position; chance level is ln(8) = 2.08 nats.
#[test]
fn transformer_block_learns_to_copy_the_previous_token() {
    let (b, t, v, c, heads) = (16, 8, 8, 32, 2);
    let mut g = Graph::new();
    let x = g.input("tokens", &[b, t, v], DType::F32).unwrap(); // (B, T, V) one-hot
    let target = g.input("target", &[b * t, v], DType::F32).unwrap(); // (B*T, V) one-hot
    let mask = g.input("mask", &[t, t], DType::F32).unwrap(); // (T, T)
    let h = nn::linear(&mut g, "wte", x, c, false).unwrap(); // (B, T, C)
    let pos = g.param("wpe", &[t, c], DType::F32).unwrap(); // (T, C)
    let h = g.add(h, pos).unwrap(); // (B, T, C)
    let h = nn::transformer_block(&mut g, "h.0", h, heads, Some(mask)).unwrap(); // (B, T, C)
    let h = nn::layer_norm(&mut g, "ln_f", h, 1e-5).unwrap(); // (B, T, C)
    let logits = nn::linear(&mut g, "lm_head", h, v, false).unwrap(); // (B, T, V)
    let logits = g.reshape(logits, &[b * t, v]).unwrap(); // (B*T, V)
    let loss = nn::cross_entropy(&mut g, logits, target).unwrap(); // ()
    let grads = autodiff::param_grads(&mut g, loss).unwrap();
    let store = nn::init_params(&g, 3).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &store).unwrap();
    eprintln!("transformer graph: {}", ex.plan().summary());

    let mut rng = Rng::new(11);
    let mask_t = nn::causal_mask(t, DType::F32).unwrap();
    let cfg = AdamWConfig { lr: 3e-3, weight_decay: 0.0, ..AdamWConfig::default() };
    let mut losses = Vec::new();
    for _ in 0..400 {
        let toks: Vec<usize> = (0..b * t).map(|_| rng.below(v)).collect();
        let mut xo = vec![0f32; b * t * v];
        let mut yo = vec![0f32; b * t * v];
        for (i, &tok) in toks.iter().enumerate() {
            xo[i * v + tok] = 1.0;
            let prev = if i % t == 0 { tok } else { toks[i - 1] };
            yo[i * v + prev] = 1.0;
        }
        let xt = HostTensor::from_f32(&[b, t, v], DType::F32, &xo).unwrap();
        let yt = HostTensor::from_f32(&[b * t, v], DType::F32, &yo).unwrap();
        ex.run(&[("tokens", &xt), ("target", &yt), ("mask", &mask_t)]).unwrap();
        losses.push(ex.get(loss).unwrap().scalar_f32().unwrap());
        ex.adamw_step(&grads, &cfg, Some(1.0)).unwrap();
    }
    let tail: f32 = losses[losses.len() - 20..].iter().sum::<f32>() / 20.0;
    eprintln!("transformer: cross-entropy {:.4} -> {:.4} (mean of last 20 steps), chance 2.079", losses[0], tail);
    assert!(losses[0] > 1.5, "initial loss {} should be near chance", losses[0]);
    assert!(tail < 0.05, "final loss {tail}");
}

/// The same transformer block forward in f16 and bf16 storage (f32 compute) agrees with f32 storage to within
/// what rounding the stored activations allows. About 20 stored intermediates each add a relative rounding
/// error of up to one unit roundoff u (f16: 2^-11, bf16: 2^-8), mostly independent, so the expected relative L2
/// error is a few u; we accept 8u (seen: f16 4.2e-4 = 0.9u, bf16 3.2e-3 = 0.8u).
#[test]
fn half_precision_storage_tracks_f32() {
    let (b, t, c, heads) = (2, 8, 32, 4);
    let mut rng = Rng::new(5);
    let xs = rng.normal_vec(b * t * c, 1.0);
    let build = |dtype: DType| {
        let mut g = Graph::new();
        let x = g.input("x", &[b, t, c], dtype).unwrap(); // (B, T, C)
        let y = nn::transformer_block(&mut g, "h.0", x, heads, None).unwrap(); // (B, T, C)
        let y = g.cast(y, DType::F32).unwrap(); // (B, T, C)
        g.mark_output(y);
        (g, y)
    };
    let store32 = nn::init_params(&build(DType::F32).0, 9).unwrap();
    let run = |dtype: DType| {
        let (g, y) = build(dtype);
        let mut store = instagen::params::ParamStore::new();
        for (name, t) in store32.iter() {
            store.insert(name, t.cast(dtype));
        }
        let x = HostTensor::from_f32(&[b, t, c], DType::F32, &xs).unwrap().cast(dtype);
        let mut ex = Executor::new(CpuBackend, g, &store).unwrap();
        ex.run(&[("x", &x)]).unwrap();
        ex.get(y).unwrap().to_f32()
    };
    let reference = run(DType::F32);
    for (dtype, unit) in [(DType::F16, 2f32.powi(-11)), (DType::BF16, 2f32.powi(-8))] {
        let got = run(dtype);
        let num: f32 = got.iter().zip(&reference).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
        let den: f32 = reference.iter().map(|v| v * v).sum::<f32>().sqrt();
        let rel = num / den;
        eprintln!("{dtype} storage: relative L2 error vs f32 {rel:.2e} (bound {:.2e})", 8.0 * unit);
        assert!(rel > 0.0 && rel <= 8.0 * unit, "{dtype}: relative error {rel}");
    }
}
