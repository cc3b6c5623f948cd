//! The stage-1 training step (`pipeline::finetune::step`).
//!
//! - Parity with PyTorch: one step of the fixture UNet (tests/fixtures/sd/unet, f16 weights run in f32) on the
//!   latents, noise, timesteps and text embeddings of tests/fixtures/sd/train_step.* (written by
//!   tools/make_train_fixtures.py with diffusers' UNet2DConditionModel + DDPMScheduler and torch.optim.AdamW):
//!   the loss, every UNet parameter's gradient and the AdamW-updated values of a few tensors.
//! - The whole step from a diffusers folder (frozen VAE encoder and CLIP, tests/common/sd.rs's assembled folder):
//!   reproducible from a seed, the loss falls when one batch is trained on, only UNet parameters are trained, and
//!   an over-long prompt is an error naming it.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use instagen::backend::cpu::CpuBackend;
use instagen::models::unet::UNetConfig;
use instagen::optim::{AdamWConfig, LossScaleConfig};
use instagen::params::ParamStore;
use instagen::pipeline::finetune::{NoiseSchedule, Stage1Options, Stage1Trainer, StepDraws, TrainShape, UnetTrainer};
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
}

/// The fixture's tensors: f32 ones as HostTensors, the int16 gradients decoded with their scales (exact to
/// 0.5 * scale).
struct Fixture {
    f32s: HashMap<String, HostTensor>,
    timesteps: Vec<usize>,
    grads: HashMap<String, (Vec<usize>, Vec<f32>, f32)>,
    meta: serde_json::Value,
}

fn load_fixture() -> Fixture {
    let bytes = std::fs::read(fixtures().join("train_step.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut f32s = HashMap::new();
    let mut q = HashMap::new();
    let mut scales = HashMap::new();
    let mut timesteps = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        match view.dtype() {
            safetensors::Dtype::F32 => {
                let v: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                if let Some(p) = name.strip_prefix("gradscale.") {
                    scales.insert(p.to_string(), v[0]);
                } else {
                    f32s.insert(name.clone(), HostTensor::from_f32(view.shape(), DType::F32, &v).unwrap());
                }
            }
            safetensors::Dtype::I16 => {
                let v: Vec<i16> = data.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
                q.insert(name.strip_prefix("grad.").unwrap().to_string(), (view.shape().to_vec(), v));
            }
            safetensors::Dtype::I64 => {
                timesteps = data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize).collect();
            }
            d => panic!("{name}: unexpected dtype {d:?}"),
        }
    }
    let grads = q
        .into_iter()
        .map(|(name, (shape, v))| {
            let s = scales[&name];
            let vals = v.iter().map(|&x| x as f32 * s).collect();
            (name, (shape, vals, s))
        })
        .collect();
    let meta = serde_json::from_str(&std::fs::read_to_string(fixtures().join("train_step.json")).unwrap()).unwrap();
    Fixture { f32s, timesteps, grads, meta }
}

fn unet_weights_f32() -> (UNetConfig, ParamStore) {
    let cfg = UNetConfig::from_file(fixtures().join("unet/config.json")).unwrap();
    let raw = ParamStore::load_safetensors(&fixtures().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let mut s = ParamStore::new();
    for (k, v) in raw.iter() {
        s.insert(k, v.cast(DType::F32));
    }
    (cfg, s)
}

/// Largest |got - want| over the largest |want| (elementwise relative errors are meaningless where values cross
/// zero). Computed in f64.
fn rel_max(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &w| m.max((w as f64).abs()));
    let err = got.iter().zip(want).fold(0f64, |m, (&g, &w)| if g.is_finite() { m.max((g as f64 - w as f64).abs()) } else { f64::INFINITY });
    err / scale.max(1e-30)
}

/// Loss within 1e-5 relative; every gradient within 1e-4 of its tensor's largest magnitude; the AdamW step.
///
/// The reference gradients are stored as int16 times a per-tensor scale `max|g| / 32767`, so a stored value is
/// within `max|g| / 65534` (1.53e-5 of the scale) of torch's; the check subtracts that from 1e-4, so a pass
/// means every gradient is within 1e-4 of torch's own. Measured on the CPU backend: see the printed worst
/// tensors (both sides compute in f32 and differ in summation order).
#[test]
fn one_step_matches_pytorch() {
    let f = load_fixture();
    let (cfg, weights) = unet_weights_f32();
    let x0 = &f.f32s["in.latents"];
    let (b, h, w) = (x0.shape[0], x0.shape[1], x0.shape[2]);
    let ctx = &f.f32s["in.context"];
    let a = &f.meta["adamw"];
    let adamw = AdamWConfig {
        lr: a["lr"].as_f64().unwrap() as f32,
        beta1: a["betas"][0].as_f64().unwrap() as f32,
        beta2: a["betas"][1].as_f64().unwrap() as f32,
        eps: a["eps"].as_f64().unwrap() as f32,
        weight_decay: a["weight_decay"].as_f64().unwrap() as f32,
    };
    assert_eq!(f.meta["scheduler"]["beta_schedule"], "scaled_linear", "the fixture uses SD v1's schedule");
    let shape = TrainShape { batch: b, height: h, width: w, context_len: ctx.shape[1], dtype: DType::F32 };
    let mut tr = UnetTrainer::new(CpuBackend, &cfg, &weights, shape, NoiseSchedule::sd_v1().unwrap(), adamw).unwrap();

    let loss = tr.forward_backward(&x0.to_f32(), ctx, &f.timesteps, &f.f32s["in.noise"].to_f32()).unwrap();
    let want = f.f32s["loss"].scalar_f32().unwrap();
    let rel = ((loss as f64 - want as f64) / want as f64).abs();
    eprintln!("loss {loss} vs torch {want}: relative error {rel:.2e} (timesteps {:?})", f.timesteps);
    assert!(rel <= 1e-5, "loss {loss} vs {want}: {rel:.2e}");

    let names: Vec<String> = tr.param_names().map(String::from).collect();
    assert_eq!(names.len(), f.grads.len(), "every UNet parameter has a reference gradient and vice versa");
    let bound = 1e-4 - 0.5 / 32767.0;
    let mut errs = Vec::new();
    for name in &names {
        let (shape, want, _) = f.grads.get(name).unwrap_or_else(|| panic!("no reference gradient for {name}"));
        let got = tr.gradient(name).unwrap();
        assert_eq!(&got.shape, shape, "{name}: gradient shape");
        errs.push((rel_max(&got.to_f32(), want), name.clone()));
    }
    errs.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (e, n) in errs.iter().take(5) {
        eprintln!("gradient {n:70} max err {e:.2e} of its scale");
    }
    let bad: Vec<_> = errs.iter().filter(|(e, _)| !(*e <= bound)).collect();
    assert!(bad.is_empty(), "{} gradients over {bound:.2e} of their scale, worst: {:?}", bad.len(), &bad[..bad.len().min(5)]);

    // AdamW: the first step moves each element by about lr (m / sqrt(v) = sign(g)); measured in units of lr.
    tr.update().unwrap();
    let lr = adamw.lr as f64;
    for name in f.meta["adamw_params"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let want = f.f32s[&format!("adamw.{name}")].to_f32();
        let before = weights.get(name).unwrap().to_f32();
        let got = tr.param(name).unwrap().to_f32();
        let err = got.iter().zip(&want).fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs())) / lr;
        let moved = before.iter().zip(&want).fold(0f64, |m, (&p, &w)| m.max((p as f64 - w as f64).abs())) / lr;
        eprintln!("adamw {name:70} max err {err:.2e} lr (torch moved it by up to {moved:.3} lr)");
        assert!(moved > 0.5, "{name}: the reference step should move the tensor");
        assert!(err <= 1e-2, "{name}: updated values differ from torch's by {err:.2e} lr");
    }
}

/// `add_noise` against the closed form with alphas_cumprod from the same config, and the SD v1 values.
#[test]
fn noise_schedule_is_sd_v1() {
    let s = NoiseSchedule::sd_v1().unwrap();
    assert_eq!(s.num_train_timesteps(), 1000);
    // beta_t = (sqrt(0.00085) + t/999 (sqrt(0.012) - sqrt(0.00085)))^2, alpha_bar = prod (1 - beta).
    let mut ab = 1f64;
    for t in 0..1000 {
        let r = 0.00085f64.sqrt() + t as f64 / 999.0 * (0.012f64.sqrt() - 0.00085f64.sqrt());
        ab *= 1.0 - r * r;
        let got = s.alphas_cumprod()[t] as f64;
        assert!((got - ab).abs() <= 1e-6 * ab.max(1e-3), "alpha_bar[{t}] {got} vs {ab}");
    }
    let x0 = [1.0f32, -2.0, 0.5, 3.0];
    let eps = [0.25f32, 1.0, -1.0, 2.0];
    let y = s.add_noise(&x0, &eps, &[0, 999]).unwrap();
    for (i, t) in [(0usize, 0usize), (1, 0), (2, 999), (3, 999)] {
        let a = s.alphas_cumprod()[t];
        let want = a.sqrt() * x0[i] + (1.0 - a).sqrt() * eps[i];
        assert_eq!(y[i], want);
    }
    assert!(s.add_noise(&x0, &eps, &[0, 1000]).unwrap_err().to_string().contains("1000"));
}

fn stage1(root: &std::path::Path, lr: f32) -> Stage1Trainer<CpuBackend> {
    let opts = Stage1Options {
        batch: 2,
        resolution: 32,
        dtype: DType::F32,
        adamw: AdamWConfig { lr, weight_decay: 0.0, ..AdamWConfig::default() },
        max_grad_norm: Some(1.0),
    };
    Stage1Trainer::new(|| Ok(CpuBackend), root, opts).unwrap()
}

fn images(seed: u64) -> HostTensor {
    let v = Rng::new(seed).uniform_vec(2 * 32 * 32 * 3, -1.0, 1.0);
    HostTensor::from_f32(&[2, 32, 32, 3], DType::F32, &v).unwrap()
}

/// The whole step from a diffusers folder: reproducible, trains only the UNet, and fits one batch.
#[test]
fn stage1_step_from_a_diffusers_folder() {
    let Some(root) = common::sd::assemble("train_step") else { return };
    let prompts = ["a photograph of dog", "a photograph of cat and person"];
    let img = images(3);

    // Only UNet parameters are trained.
    let tr = stage1(&root, 1e-3);
    let names: Vec<&str> = tr.unet().param_names().collect();
    let unet_keys = ParamStore::load_safetensors(&root.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(names.len(), unet_keys.len());
    assert!(names.iter().all(|n| unet_keys.get(n).is_some()), "a trained parameter is not a UNet key");
    drop(tr);

    // Same seed, same steps: bit-identical losses and parameters.
    let run = |steps: usize| {
        let mut tr = stage1(&root, 1e-3);
        let mut rng = Rng::new(42);
        let losses: Vec<f32> = (0..steps).map(|_| tr.step(&img, &prompts, &mut rng).unwrap().loss).collect();
        (losses, tr.unet().param("conv_in.weight").unwrap().data)
    };
    let (l1, p1) = run(2);
    let (l2, p2) = run(2);
    assert_eq!(l1, l2, "losses with the same seed");
    assert_eq!(p1, p2, "parameters with the same seed");
    assert_ne!(l1[0], l1[1], "each step draws new timesteps and noise");

    // One fixed batch with fixed draws: the loss falls.
    let mut tr = stage1(&root, 1e-3);
    let draws: StepDraws = tr.draw(&mut Rng::new(5));
    let losses: Vec<f32> = (0..15).map(|_| tr.step_with(&img, &prompts, &draws).unwrap().loss).collect();
    eprintln!("fixed batch: loss {:.4} -> {:.4} in 15 steps", losses[0], losses[14]);
    assert!(losses[14] < 0.8 * losses[0], "loss {:?}", losses);

    // The latents are the posterior sample times scaling_factor: with zero noise, the mean; the noise moves them.
    let zero = vec![0.0; draws.posterior_noise.len()];
    let mean = tr.encode_images(&img, &zero).unwrap();
    let sampled = tr.encode_images(&img, &draws.posterior_noise).unwrap();
    assert!(mean.iter().zip(&sampled).any(|(a, b)| a != b));

    // Bad input names what is wrong.
    let long = "a photograph of ".to_string() + &"dog and cat and ".repeat(30);
    let e = tr.step_with(&img, &[prompts[0], long.as_str()], &draws).unwrap_err().to_string();
    assert!(e.contains("prompt 1") && e.contains("77"), "{e}");
    let mut bad = img.to_f32();
    bad[7] = 1.5;
    let bad = HostTensor::from_f32(&[2, 32, 32, 3], DType::F32, &bad).unwrap();
    let e = tr.step_with(&bad, &prompts, &draws).unwrap_err().to_string();
    assert!(e.contains("[-1, 1]") && e.contains("element 7"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

fn stage1_dtype(root: &std::path::Path, dtype: DType) -> Stage1Trainer<CpuBackend> {
    let opts = Stage1Options {
        batch: 2,
        resolution: 32,
        dtype,
        adamw: AdamWConfig { lr: 1e-3, weight_decay: 0.0, ..AdamWConfig::default() },
        max_grad_norm: Some(1.0),
    };
    Stage1Trainer::new(|| Ok(CpuBackend), root, opts).unwrap()
}

/// f16 training with dynamic loss scaling: GradScaler's initial scale, finite unscaled losses that fall on a
/// fixed batch; a forced overflow skips the step (parameters, EMA and AdamW's step count untouched) and halves
/// the scale, which the checkpoint state carries. bf16 and f32 are not scaled.
#[test]
fn stage1_f16_loss_scaling() {
    let Some(root) = common::sd::assemble("train_f16") else { return };
    let prompts = ["a photograph of dog", "a photograph of cat and person"];
    let img = images(3);

    let mut tr = stage1_dtype(&root, DType::F16);
    assert_eq!(tr.unet().loss_scale(), Some(65536.0), "GradScaler's initial scale");
    let draws: StepDraws = tr.draw(&mut Rng::new(5));
    let mut losses = Vec::new();
    let mut skipped = 0;
    for k in 0..12 {
        let st = tr.step_with(&img, &prompts, &draws).unwrap();
        eprintln!("f16 step {k}: loss {:.5} scale {:?} grad norm {:.4} skipped {}", st.loss, st.loss_scale, st.grad_norm, st.skipped);
        assert!(st.loss.is_finite(), "step {k}: loss {}", st.loss);
        assert!(st.loss_scale.is_some());
        if st.skipped {
            skipped += 1;
        } else {
            losses.push(st.loss);
        }
    }
    assert_eq!(tr.unet().skipped_steps(), skipped);
    assert!(losses.len() >= 8, "{skipped} of 12 steps skipped");
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("f16 fixed batch: loss {first:.4} -> {last:.4} in {} updates ({skipped} skipped)", losses.len());
    assert!(last < 0.8 * first, "loss {losses:?}");

    // A huge scale overflows the f16 gradients: skipped, nothing changes, the scale backs off.
    let mut tr = stage1_dtype(&root, DType::F16);
    tr.unet_mut().enable_ema(0.9).unwrap();
    tr.unet_mut().set_loss_scale(LossScaleConfig { init_scale: 1e30, ..LossScaleConfig::default() }).unwrap();
    let before = tr.unet().params().unwrap();
    let ema_before = tr.unet().ema_params().unwrap();
    let st = tr.step_with(&img, &prompts, &draws).unwrap();
    assert!(st.skipped && !st.grad_norm.is_finite(), "{st:?}");
    assert!(st.loss.is_finite(), "the reported loss is the unscaled one: {}", st.loss);
    assert_eq!(st.loss_scale, Some(1e30));
    assert_eq!(tr.unet().loss_scale(), Some(0.5e30));
    let (_, state) = tr.unet().export_state().unwrap();
    assert_eq!((state.step, state.skipped_steps, state.loss_scale, state.good_steps), (0, 1, 0.5e30, 0));
    let after = tr.unet().params().unwrap();
    let ema_after = tr.unet().ema_params().unwrap();
    for (name, t) in before.iter() {
        assert!(after.get(name).unwrap().data == t.data, "{name} changed on a skipped step");
        assert!(ema_after.get(name).unwrap().data == ema_before.get(name).unwrap().data, "EMA of {name} changed on a skipped step");
    }
    // After the first update the settings are fixed.
    let mut tr = stage1_dtype(&root, DType::F16);
    tr.step_with(&img, &prompts, &draws).unwrap();
    assert!(tr.unet_mut().set_loss_scale(LossScaleConfig::default()).is_err());

    // bf16 and f32: no loss scaling.
    for dt in [DType::BF16, DType::F32] {
        let mut tr = stage1_dtype(&root, dt);
        assert_eq!(tr.unet().loss_scale(), None);
        let e = tr.unet_mut().set_loss_scale(LossScaleConfig::default()).unwrap_err().to_string();
        assert!(e.contains("f16 only"), "{e}");
        let st = tr.step_with(&img, &prompts, &draws).unwrap();
        assert!(!st.skipped && st.loss_scale.is_none() && st.loss.is_finite(), "{dt}: {st:?}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// The SD v1.x UNet's training graph (batch 1, 64x64 latents, f32): built and planned without running it (a step
/// needs ~14 GB for parameters, gradients and AdamW state alone). Every gradient is a graph output, so the arena
/// holds at least all of them; reuse must still cut the naive total.
#[test]
fn sd_v1_training_graph_plan() {
    use instagen::graph::Plan;
    use instagen::pipeline::finetune::build_train_graph;
    let cfg = UNetConfig::sd_v1();
    let shape = TrainShape { batch: 1, height: 64, width: 64, context_len: 77, dtype: DType::F32 };
    let tg = build_train_graph(&cfg, &shape).unwrap();
    let plan = Plan::new(&tg.graph);
    let grad_bytes: usize = tg.grads.iter().map(|(_, id)| tg.graph.node(*id).bytes()).sum();
    let params: usize = tg.grads.iter().map(|(_, id)| tg.graph.node(*id).numel()).sum();
    eprintln!(
        "SD v1 training graph: {} nodes, {params} parameters ({:.0} MiB of gradients), {}",
        tg.graph.len(),
        grad_bytes as f64 / 1048576.0,
        plan.summary()
    );
    assert!(params > 850_000_000 && params < 870_000_000, "SD v1's UNet has ~860M parameters, got {params}");
    assert!(plan.arena_bytes >= grad_bytes && plan.arena_bytes < plan.naive_bytes);
}
