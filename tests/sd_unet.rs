//! The UNet graph against diffusers' `UNet2DConditionModel`: fixtures in tests/fixtures/sd/unet (a small random
//! model with SD v1.x's architecture, f16 weights) and tests/fixtures/sd/unet_parity.* (reference activations in
//! f32 from the same f16-rounded weights, and a 3-step guided DDIM run), written by tools/make_unet_fixtures.py.
//! Also: the t=1 feature levels of the full SD v1.x UNet by shape inference, the memory plan of the full UNet, and
//! CompVis checkpoint keys.

use std::collections::HashMap;
use std::path::PathBuf;

use instagen::backend::Backend;
use instagen::backend::cpu::CpuBackend;
use instagen::backend::emu::EmuBackend;
use instagen::graph::Plan;
use instagen::runtime::Executor;
use instagen::models::scheduler::{DdimScheduler, classifier_free_guidance};
use instagen::models::unet::{self, UNetConfig, UNetShape};
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
}

struct Fixture {
    cfg: UNetConfig,
    /// f16, as stored.
    weights: ParamStore,
    refs: HashMap<String, HostTensor>,
    meta: serde_json::Value,
}

fn load() -> Fixture {
    let dir = fixtures();
    let cfg = UNetConfig::from_file(dir.join("unet/config.json")).unwrap();
    let weights = ParamStore::load_safetensors(&dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let refs = ParamStore::load_safetensors(&dir.join("unet_parity.safetensors")).unwrap();
    let refs = refs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("unet_parity.json")).unwrap()).unwrap();
    Fixture { cfg, weights, refs, meta }
}

impl Fixture {
    fn r(&self, name: &str) -> &HostTensor {
        self.refs.get(name).unwrap_or_else(|| panic!("fixture tensor {name} missing"))
    }
    fn weights_as(&self, dtype: DType) -> ParamStore {
        let mut s = ParamStore::new();
        for (k, v) in self.weights.iter() {
            s.insert(k, v.cast(dtype));
        }
        s
    }
}

/// (max |got - want| / max |want|, relative L2 error).
fn errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &w| m.max((w as f64).abs())).max(1e-30);
    let (mut max_abs, mut num, mut den) = (0f64, 0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite output");
        let d = (g as f64 - w as f64).abs();
        max_abs = max_abs.max(d);
        num += d * d;
        den += (w as f64) * (w as f64);
    }
    (max_abs / scale, (num / den.max(1e-60)).sqrt())
}

/// Per-tensor bound on max |error| relative to the tensor's largest magnitude.
///
/// f32: both sides compute in f32 from the same weights and differ in summation order only (our GEMMs, convs,
/// norms and attention accumulate differently from ATen). Measured on the CPU backend: at most 1.1e-6 over all
/// 29 modules. 2e-5 leaves room for other backends' orders (tiled GEMM/conv kernels) and is still five orders of
/// magnitude below what a wrong op, wrong key or wrong layout gives (O(1)).
/// f16: every activation is stored in f16 (unit roundoff 4.9e-4) while the reference keeps f32; the rounding of
/// ~150 intermediate tensors in sequence gives, measured on the CPU backend, at most 2.4e-3; the bound 1e-2 allows
/// kernels that round differently (e.g. attention probabilities in f16 before P V).
fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2e-5,
        _ => 1e-2,
    }
}

/// Bound for the guided DDIM steps: the guided eps is `u + 5 (c - u)`, so the UNet's error is amplified by up to
/// ~9x before the step (measured: f32 4.1e-6, f16 8.3e-3 on the guided eps; latents 1.5e-6 / 3.6e-3).
fn tol_ddim(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 5e-5,
        _ => 3e-2,
    }
}

/// Runs the small model with every tap marked and compares each module's output with diffusers' (always `Some`:
/// any error, a missing kernel included, fails).
fn forward_per_block<B: Backend>(backend: B, dtype: DType) -> Option<f64> {
    let f = load();
    let shape = UNetShape { batch: 2, height: 16, width: 16, context_len: 77, dtype, features: false, taps: true };
    let ug = unet::build(&f.cfg, &shape).unwrap();
    let mut ex = Executor::new(backend, ug.graph.clone(), &f.weights_as(dtype)).unwrap();
    ex.poison_arena().unwrap();
    let sample = f.r("in.sample").cast(dtype);
    let context = f.r("in.context").cast(dtype);
    if let Err(e) = ex.run(&[("sample", &sample), ("timestep", f.r("in.timestep")), ("context", &context)]) {
        panic!("{e}");
    }
    let order: Vec<String> = (f.meta["modules_in_forward_order"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let taps: HashMap<&str, _> = ug.nodes.taps.iter().map(|(n, id)| (n.as_str(), *id)).collect();
    assert_eq!(taps.len(), order.len(), "every hooked module has a tap");
    let mut worst = (0f64, String::new());
    for name in &order {
        let id = *taps.get(name.as_str()).unwrap_or_else(|| panic!("no tap for {name}"));
        let got = ex.get(id).unwrap().to_f32();
        let want = f.r(&format!("act.{name}"));
        assert_eq!(ug.graph.shape(id), &want.shape[..], "{name}: shape");
        let (e, l2) = errors(&got, &want.to_f32());
        eprintln!("{dtype} {name:32} max err {e:.2e} of scale, rel L2 {l2:.2e}");
        assert!(e <= tol(dtype), "{name}: max error {e:.3e} of the tensor scale > {:.0e}", tol(dtype));
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    let (e, _) = errors(&ex.get(ug.nodes.out).unwrap().to_f32(), &f.r("out.sample").to_f32());
    assert!(e <= tol(dtype), "out.sample: {e:.3e}");
    eprintln!("{dtype}: largest relative error {:.3e} at {} (output {e:.3e})", worst.0, worst.1);
    Some(worst.0)
}

#[test]
fn forward_matches_diffusers_cpu_f32() {
    forward_per_block(CpuBackend, DType::F32).expect("the CPU backend runs every op");
}

#[test]
fn forward_matches_diffusers_cpu_f16() {
    forward_per_block(CpuBackend, DType::F16).expect("the CPU backend runs every op");
}

#[test]
fn forward_matches_diffusers_emu_f32() {
    forward_per_block(EmuBackend::new(), DType::F32);
}

#[test]
fn forward_matches_diffusers_emu_f16() {
    forward_per_block(EmuBackend::new(), DType::F16);
}

/// Three DDIM steps with classifier-free guidance (scale 5), uncond and cond batched in one UNet call, each step
/// fed our own latents (as a sampler does), against diffusers' loop.
fn guided_ddim(dtype: DType) -> f64 {
    let f = load();
    let shape = UNetShape { batch: 2, height: 16, width: 16, context_len: 77, dtype, features: false, taps: false };
    let ug = unet::build(&f.cfg, &shape).unwrap();
    let mut ex = Executor::new(CpuBackend, ug.graph.clone(), &f.weights_as(dtype)).unwrap();
    let mut sched = DdimScheduler::sd_v1().unwrap();
    let steps = f.meta["ddim"]["steps"].as_u64().unwrap() as usize;
    let guidance = f.meta["ddim"]["guidance"].as_f64().unwrap() as f32;
    sched.set_timesteps(steps).unwrap();
    let want_ts: Vec<usize> =
        f.meta["ddim"]["timesteps"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(sched.timesteps(), &want_ts[..]);
    let ctx: Vec<f32> = [f.r("ddim.uncond").to_f32(), f.r("ddim.cond").to_f32()].concat();
    let context = HostTensor::from_f32(&[2, 77, 32], dtype, &ctx).unwrap();
    let mut latents = f.r("ddim.init").to_f32();
    let n = latents.len();
    let mut worst = 0f64;
    for (i, &t) in sched.timesteps().to_vec().iter().enumerate() {
        let sample = HostTensor::from_f32(&[2, 16, 16, 4], dtype, &[latents.clone(), latents.clone()].concat()).unwrap();
        let ts = HostTensor::from_f32(&[2], DType::F32, &[t as f32, t as f32]).unwrap();
        let start = std::time::Instant::now();
        ex.run(&[("sample", &sample), ("timestep", &ts), ("context", &context)]).unwrap();
        let eps = ex.get(ug.nodes.out).unwrap().to_f32();
        eprintln!("{dtype} step {i}: UNet call (batch 2, 16x16) {:.1} ms on the CPU backend", start.elapsed().as_secs_f64() * 1e3);
        let guided = classifier_free_guidance(&eps[..n], &eps[n..], guidance).unwrap();
        let (e_eps, _) = errors(&guided, &f.r(&format!("ddim.eps{i}")).to_f32());
        latents = sched.step(&guided, t, &latents, 0.0, None).unwrap().prev_sample;
        let (e, l2) = errors(&latents, &f.r(&format!("ddim.step{i}")).to_f32());
        eprintln!("{dtype} step {i} (t={t}): guided eps max err {e_eps:.2e}, latents max err {e:.2e} (rel L2 {l2:.2e})");
        assert!(e_eps <= tol_ddim(dtype), "step {i}: guided eps error {e_eps:.3e}");
        assert!(e <= tol_ddim(dtype), "step {i}: latents error {e:.3e}");
        worst = worst.max(e);
    }
    worst
}

#[test]
fn guided_ddim_three_steps_match_diffusers_f32() {
    guided_ddim(DType::F32);
}

#[test]
fn guided_ddim_three_steps_match_diffusers_f16() {
    guided_ddim(DType::F16);
}

#[test]
fn feature_levels_of_the_small_model_are_the_block_outputs() {
    // Build the expected levels from diffusers' module outputs: CompVis input blocks = conv_in, each
    // resnet(+attention), each downsampler; middle; output blocks = each resnet(+attention), the last of a level
    // followed by the upsampler.
    let f = load();
    let shape = UNetShape { batch: 2, height: 16, width: 16, context_len: 77, dtype: DType::F32, features: true, taps: false };
    let ug = unet::build(&f.cfg, &shape).unwrap();
    let names: Vec<&str> = ug.features.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["feat_16", "feat_8"]);
    let mut ex = Executor::new(CpuBackend, ug.graph.clone(), &f.weights_as(DType::F32)).unwrap();
    ex.run(&[("sample", f.r("in.sample")), ("timestep", f.r("in.timestep")), ("context", f.r("in.context"))]).unwrap();
    let blocks_16 = [
        "conv_in",
        "down_blocks.0.attentions.0",
        "down_blocks.0.attentions.1",
        "up_blocks.0.upsamplers.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",
    ];
    let blocks_8 = [
        "down_blocks.0.downsamplers.0",
        "down_blocks.1.attentions.0",
        "down_blocks.1.attentions.1",
        "mid_block",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
    ];
    for ((name, id), blocks) in ug.features.iter().zip([&blocks_16[..], &blocks_8[..]]) {
        // want[h, w, :] = concat over blocks of (batch 0 channels, batch 1 channels).
        let parts: Vec<HostTensor> = blocks.iter().map(|b| f.r(&format!("act.{b}")).clone()).collect();
        let hw = parts[0].shape[1] * parts[0].shape[2];
        let total: usize = parts.iter().map(|p| 2 * p.shape[3]).sum();
        let mut want = Vec::with_capacity(hw * total);
        let vals: Vec<Vec<f32>> = parts.iter().map(|p| p.to_f32()).collect();
        for pix in 0..hw {
            for (p, v) in parts.iter().zip(&vals) {
                let c = p.shape[3];
                want.extend_from_slice(&v[pix * c..(pix + 1) * c]);
                want.extend_from_slice(&v[(hw + pix) * c..(hw + pix + 1) * c]);
            }
        }
        let got = ex.get(*id).unwrap();
        assert_eq!(got.shape, vec![1, parts[0].shape[1], parts[0].shape[2], total], "{name}");
        let (e, _) = errors(&got.to_f32(), &want);
        assert!(e <= tol(DType::F32), "{name}: {e:.3e}");
        eprintln!("{name}: {total} channels, max err {e:.2e}");
    }
}

#[test]
fn sd_v1_feature_levels_have_the_instagen_channel_counts() {
    // Shape inference only: building the graph allocates nothing.
    let shape = UNetShape { features: true, ..UNetShape::sd_v1(2, DType::F16) };
    let ug = unet::build(&UNetConfig::sd_v1(), &shape).unwrap();
    let got: Vec<(String, Vec<usize>)> =
        ug.features.iter().map(|(n, id)| (n.clone(), ug.graph.shape(*id).to_vec())).collect();
    let want = [("feat_64", 64, 5120), ("feat_32", 32, 8320), ("feat_16", 16, 14080), ("feat_8", 8, 15360)];
    assert_eq!(got.len(), 4);
    for ((n, s), (wn, hw, c)) in got.iter().zip(want) {
        assert_eq!(n, wn);
        assert_eq!(s, &vec![1, hw, hw, c], "{n}");
    }
    assert_eq!(ug.nodes.input_blocks.len(), 12);
    assert_eq!(ug.nodes.output_blocks.len(), 12);
    assert_eq!(ug.graph.shape(ug.nodes.out), &[2, 64, 64, 4]);
}

#[test]
fn sd_v1_parameters_are_860m_in_686_tensors() {
    let ug = unet::build(&UNetConfig::sd_v1(), &UNetShape::sd_v1(1, DType::F16)).unwrap();
    let params = ug.graph.params();
    let numel: usize = params.iter().map(|(id, _)| ug.graph.node(*id).numel()).sum();
    // diffusers' UNet2DConditionModel for SD v1.x: 686 tensors, 859,520,964 parameters.
    assert_eq!(params.len(), 686);
    assert_eq!(numel, 859_520_964);
}

#[test]
fn compvis_keys_round_trip_for_every_sd_v1_parameter() {
    let ug = unet::build(&UNetConfig::sd_v1(), &UNetShape::sd_v1(1, DType::F16)).unwrap();
    let mut seen = std::collections::HashSet::new();
    for (_, name) in ug.graph.params() {
        // SD v1: up block 0 is an UpBlock2D (no transformers).
        let cv = unet::diffusers_to_compvis(name, 2, |i| i > 0).unwrap_or_else(|| panic!("no CompVis key for {name}"));
        assert!(cv.starts_with("model.diffusion_model."), "{cv}");
        assert!(seen.insert(cv.clone()), "two keys map to {cv}");
        assert_eq!(unet::compvis_key(&cv).as_deref(), Some(name), "{cv}");
    }
    assert_eq!(seen.len(), 686);
    // The small fixture model (layers_per_block 2, attention in every block).
    let f = load();
    for (name, _) in f.weights.iter() {
        let cv = unet::diffusers_to_compvis(name, 2, |_| true).unwrap();
        assert_eq!(unet::compvis_key_for(&cv, 2).as_deref(), Some(name), "{cv}");
    }
}

#[test]
fn planner_figures_for_the_sd_v1_unet_f16() {
    for batch in [2, 8] {
        let ug = unet::build(&UNetConfig::sd_v1(), &UNetShape::sd_v1(batch, DType::F16)).unwrap();
        let (planned, naive) = (Plan::new(&ug.graph), Plan::naive(&ug.graph));
        assert_eq!(planned.naive_bytes, naive.arena_bytes);
        assert!(planned.arena_bytes * 4 < naive.arena_bytes, "reuse should save most of the arena");
        eprintln!(
            "SD v1.x UNet forward, f16, batch {batch}, 64x64 latents, context 77x768: {} ({} nodes)",
            planned.summary(),
            ug.graph.len()
        );
    }
}

#[test]
fn sampling_loop_reproduces_diffusers_guided_ddim() {
    // pipeline::sample (batched uncond+cond call, guidance, DDIM, feature capture at the last step) from the
    // fixture's initial latents and contexts, against the latents after diffusers' third step.
    use instagen::pipeline::sample::{SampleOptions, sample};
    let f = load();
    let opts = SampleOptions {
        steps: 3,
        guidance: 5.0,
        seed: 0,
        height: 16,
        width: 16,
        dtype: DType::F32,
        capture_features: true,
        init_latents: Some(f.r("ddim.init").to_f32()),
    };
    let mut calls = 0;
    let out = sample(
        CpuBackend,
        &f.cfg,
        &f.weights_as(DType::F32),
        DdimScheduler::sd_v1().unwrap(),
        f.r("ddim.uncond"),
        f.r("ddim.cond"),
        &opts,
        |_, _| calls += 1,
    )
    .unwrap();
    assert_eq!(calls, 3);
    assert_eq!(out.timesteps, vec![667, 334, 1]);
    let (e, _) = errors(&out.latents.to_f32(), &f.r("ddim.step2").to_f32());
    assert!(e <= tol_ddim(DType::F32), "final latents: {e:.3e}");
    let shapes: Vec<(&str, &[usize])> = out.features.iter().map(|(n, t)| (n.as_str(), &t.shape[..])).collect();
    // 16x16: conv_in 16 + 2 x 16 + upsampler 32 + 3 x 16 = 128 channels, doubled (uncond|cond) = 256;
    // 8x8: downsampler 16 + 2 x 32 + mid 32 + 2 x 32 = 176, doubled = 352.
    assert_eq!(shapes, vec![("feat_16", &[1, 16, 16, 256][..]), ("feat_8", &[1, 8, 8, 352][..])]);
    eprintln!("sampling loop: final latents max err {e:.2e}; plan {}", out.plan);
}

#[test]
fn seeded_initial_latents_are_fixed() {
    use instagen::pipeline::sample::initial_latents;
    let a = initial_latents(42, 2, 8, 8, 1.0);
    assert_eq!(a, initial_latents(42, 2, 8, 8, 1.0));
    assert_eq!(a.len(), 2 * 8 * 8 * 4);
    // The first values are the scheduler's GaussianNoise stream for seed 42 (frozen in tests/ddim.rs).
    assert_eq!(&a[..4], &[0.41471976, 0.65268123, -0.89188623, 1.3268336]);
}
