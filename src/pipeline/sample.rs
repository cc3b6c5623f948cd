//! Guided DDIM sampling (InstaGen stage 2) and the t=1 feature capture (stage 3) around the UNet graph.
//!
//! One UNet call per step on the batch `[uncond (N); cond (N)]`; guidance `uncond + s (cond - uncond)` and the
//! DDIM step run on the host (`models::scheduler`, f64 per element). Initial latents come from our seeded
//! [`GaussianNoise`] (not torch's stream): `N * h * w * 4` draws in NHWC order, image after image, times
//! `init_noise_sigma`. At the last step (t = 1 for SD v1 settings) the feature levels of that same call are read
//! back when asked for. The UNet output and the latents are checked after every step: a NaN or infinity (bad
//! weights, an extreme guidance) is an error naming the step. The caller divides the returned latents by the VAE's
//! `scaling_factor` for the decoder.
//!
//! The text encoder and VAE are not called here: the caller passes the `uncond`/`cond` contexts (CLIP outputs) and
//! decodes `decoder_latents`.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::Plan;
use crate::runtime::Executor;
use crate::models::scheduler::{DdimScheduler, GaussianNoise, classifier_free_guidance};
use crate::pipeline::checks;
use crate::pipeline::timing::{measure, BenchReport, Timing};
use crate::models::unet::{self, UNetConfig, UNetShape};
use crate::params::ParamStore;
use crate::tensor::{DType, HostTensor};

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    /// Latent height and width (image size / 8).
    pub height: usize,
    pub width: usize,
    /// Storage dtype of the UNet graph (its weights must be stored in it).
    pub dtype: DType,
    /// Read the t=1 feature levels at the last step.
    pub capture_features: bool,
    /// Start from these latents (`[N, h, w, 4]` NHWC values) instead of the seeded draw.
    pub init_latents: Option<Vec<f32>>,
}

impl Default for SampleOptions {
    /// InstaGen's generation settings: 50 steps, guidance 5, seed 42, 64x64 latents, f16.
    fn default() -> Self {
        SampleOptions { steps: 50, guidance: 5.0, seed: 42, height: 64, width: 64, dtype: DType::F16, capture_features: false, init_latents: None }
    }
}

#[derive(Clone, Debug)]
pub struct SampleOutput {
    /// The final latents `[N, h, w, 4]` (NHWC), as the scheduler left them.
    pub latents: HostTensor,
    /// `(name, [N, h, w, C])` feature levels of the last step's call, when captured.
    pub features: Vec<(String, HostTensor)>,
    /// The memory plan of the UNet graph (`planned X MiB (naive Y MiB)`).
    pub plan: String,
    pub timesteps: Vec<usize>,
}

/// Seeded initial latents `[n, h, w, 4]` (f32 values; see the module doc for the order).
pub fn initial_latents(seed: u64, n: usize, h: usize, w: usize, sigma: f32) -> Vec<f32> {
    GaussianNoise::new(seed).sample(n * h * w * 4, sigma)
}

/// Runs the guided DDIM loop. `uncond` is `[1 or N, T, D]` (broadcast over the batch when 1), `cond` `[N, T, D]`;
/// both in `opts.dtype`. `progress(step, total)` is called after each step.
pub fn sample<B: Backend>(
    backend: B,
    cfg: &UNetConfig,
    weights: &ParamStore,
    mut sched: DdimScheduler,
    uncond: &HostTensor,
    cond: &HostTensor,
    opts: &SampleOptions,
    progress: impl FnMut(usize, usize),
) -> Result<SampleOutput> {
    let bad = |msg: String| Error::Mismatch { what: "sample".into(), msg };
    if cond.shape.len() != 3 || uncond.shape.len() != 3 || uncond.shape[1..] != cond.shape[1..] {
        return Err(bad(format!("contexts must be [N, T, D] and [1 or N, T, D]; got uncond {:?}, cond {:?}", uncond.shape, cond.shape)));
    }
    let n = cond.shape[0];
    checks::check_guidance(opts.guidance)?;
    let rows = n.checked_mul(2).ok_or_else(|| bad(format!("batch {n} overflows")))?;
    let culprit = format!("batch {n} of {}x{} latents", opts.height, opts.width);
    checks::check_unet_fits(cfg, rows, opts.height, opts.dtype, backend.memory_available()?, &culprit)?;
    let mut sampler = Sampler::new(backend, cfg, weights, n, opts.height, opts.width, cond.shape[1], opts.dtype, opts.capture_features)
        .map_err(|e| e.building(format!("UNet graph ({culprit})")))?;
    sched.set_timesteps(opts.steps)?;
    let (h, w) = (opts.height, opts.width);
    let init = match &opts.init_latents {
        Some(v) if v.len() == n * h * w * 4 => v.clone(),
        Some(v) => return Err(bad(format!("init_latents has {} values, want {n}x{h}x{w}x4", v.len()))),
        None => GaussianNoise::new(opts.seed).sample(n * h * w * 4, 1.0),
    };
    let run = sampler.run(&sched, uncond, cond, &init, opts.guidance, progress)?;
    Ok(SampleOutput { latents: run.latents, features: run.features, plan: sampler.plan.clone(), timesteps: sched.timesteps().to_vec() })
}

/// What one [`Sampler::run`] gives.
#[derive(Clone, Debug)]
pub struct SamplerRun {
    /// The final latents `[N, h, w, 4]` (NHWC, f32).
    pub latents: HostTensor,
    /// The latents fed to the last step's UNet call (t = 1 for SD's schedules), `[N, h, w, 4]` f32.
    pub last_input: HostTensor,
    /// `(name, [N, h, w, C])` feature levels of the last step's call, when the sampler captures them.
    pub features: Vec<(String, HostTensor)>,
}

/// The UNet graph of one batch shape, built and loaded once, run for any number of DDIM loops.
pub struct Sampler<B: Backend> {
    ex: Executor<B>,
    out: crate::graph::NodeId,
    features: Vec<(String, crate::graph::NodeId)>,
    n: usize,
    h: usize,
    w: usize,
    context: [usize; 2],
    dtype: DType,
    /// The memory plan of the UNet graph (`planned X MiB (naive Y MiB)`).
    pub plan: String,
}

impl<B: Backend> Sampler<B> {
    /// The UNet at batch `2 n` (`[uncond; cond]`), `h x w` latents and `t` context tokens, in `dtype`; with
    /// `features` the t=1 feature levels are outputs too.
    #[allow(clippy::too_many_arguments)]
    pub fn new(backend: B, cfg: &UNetConfig, weights: &ParamStore, n: usize, h: usize, w: usize, t: usize, dtype: DType, features: bool) -> Result<Self> {
        let shape = UNetShape { batch: 2 * n, height: h, width: w, context_len: t, dtype, features, taps: false };
        let ug = unet::build(cfg, &shape)?;
        let plan = Plan::new(&ug.graph);
        let plan_text = plan.summary();
        let ex = Executor::with_plan(backend, ug.graph.clone(), plan, weights)?;
        Ok(Sampler { ex, out: ug.nodes.out, features: ug.features, n, h, w, context: [t, cfg.cross_attention_dim], dtype, plan: plan_text })
    }

    /// The batch (images per run).
    pub fn batch(&self) -> usize {
        self.n
    }

    /// One guided DDIM loop over `sched`'s timesteps (set by the caller) from `init` (`[N, h, w, 4]` standard
    /// normal values, scaled here by `init_noise_sigma`). Contexts as [`sample`].
    pub fn run(
        &mut self,
        sched: &DdimScheduler,
        uncond: &HostTensor,
        cond: &HostTensor,
        init: &[f32],
        guidance: f32,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<SamplerRun> {
        let bad = |msg: String| Error::Mismatch { what: "sample".into(), msg };
        let (n, h, w) = (self.n, self.h, self.w);
        let [t, d] = self.context;
        if cond.shape != [n, t, d] || (uncond.shape != [1, t, d] && uncond.shape != [n, t, d]) {
            return Err(bad(format!("contexts must be [{n}, {t}, {d}] and [1 or {n}, {t}, {d}]; got uncond {:?}, cond {:?}", uncond.shape, cond.shape)));
        }
        if uncond.dtype != self.dtype || cond.dtype != self.dtype {
            return Err(bad(format!("contexts must be {} (got {} and {})", self.dtype, uncond.dtype, cond.dtype)));
        }
        if init.len() != n * h * w * 4 {
            return Err(bad(format!("initial latents have {} values, want {n}x{h}x{w}x4", init.len())));
        }
        // Context [uncond x N; cond], fixed for the whole loop.
        let row = t * d * self.dtype.size();
        let mut ctx = Vec::with_capacity(2 * n * row);
        for i in 0..n {
            let j = if uncond.shape[0] == 1 { 0 } else { i };
            ctx.extend_from_slice(&uncond.data[j * row..(j + 1) * row]);
        }
        ctx.extend_from_slice(&cond.data);
        let context = HostTensor::from_bytes(&[2 * n, t, d], self.dtype, ctx)?;
        let timesteps = sched.timesteps().to_vec();
        if timesteps.is_empty() {
            return Err(bad("the scheduler has no timesteps (set_timesteps first)".into()));
        }
        let sigma = sched.init_noise_sigma();
        let mut latents: Vec<f32> = init.iter().map(|x| x * sigma).collect();
        let len = latents.len();
        let mut features = Vec::new();
        let mut last_input = Vec::new();
        for (i, &ts) in timesteps.iter().enumerate() {
            let model_in = sched.scale_model_input(&latents, ts);
            let doubled: Vec<f32> = model_in.iter().chain(model_in.iter()).copied().collect();
            let sample = HostTensor::from_f32(&[2 * n, h, w, 4], self.dtype, &doubled)?;
            let tt = HostTensor::from_f32(&[2 * n], DType::F32, &vec![ts as f32; 2 * n])?;
            self.ex.run(&[("sample", &sample), ("timestep", &tt), ("context", &context)])?;
            let eps = self.ex.get(self.out)?.to_f32();
            let step = || format!("step {}/{} (t={ts})", i + 1, timesteps.len());
            checks::check_finite(&eps, || format!("UNet output at {}", step()))?;
            let guided = classifier_free_guidance(&eps[..len], &eps[len..], guidance)?;
            if i + 1 == timesteps.len() {
                last_input = latents.clone();
                for (name, id) in &self.features {
                    features.push((name.clone(), self.ex.get(*id)?));
                }
            }
            latents = sched.step(&guided, ts, &latents, 0.0, None)?.prev_sample;
            checks::check_finite(&latents, || format!("latents after {}", step()))?;
            progress(i + 1, timesteps.len());
        }
        Ok(SamplerRun {
            latents: HostTensor::from_f32(&[n, h, w, 4], DType::F32, &latents)?,
            last_input: HostTensor::from_f32(&[n, h, w, 4], DType::F32, &last_input)?,
            features,
        })
    }
}

/// Weights for a UNet config directory: `diffusion_pytorch_model.safetensors` (or its `.fp16` variant) cast to
/// `dtype`, or, when the directory has no weights, PyTorch-like random ones (for timing only).
pub fn unet_weights(dir: &std::path::Path, graph: &crate::graph::Graph, dtype: DType) -> Result<(ParamStore, String)> {
    for file in ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"] {
        let p = dir.join(file);
        if p.exists() {
            let raw = ParamStore::load_safetensors(&p)?;
            let mut s = ParamStore::new();
            for (k, v) in raw.iter() {
                s.insert(k, if v.dtype == dtype { v.clone() } else { v.cast(dtype) });
            }
            return Ok((s, p.display().to_string()));
        }
    }
    Ok((crate::nn::init_params(graph, 0)?, "random (no weights in the directory)".into()))
}

/// Model benches: `--batch` >= 1 and `--min-seconds` finite and >= 0.
pub fn check_bench_args(batch: usize, min_seconds: f64) -> Result<()> {
    if batch == 0 {
        return Err(Error::Other("--batch 0: the batch must be >= 1".into()));
    }
    if !(min_seconds.is_finite() && min_seconds >= 0.0) {
        return Err(Error::Other(format!("--min-seconds {min_seconds}: must be a finite number >= 0")));
    }
    Ok(())
}

fn time_unet<B: Backend>(
    backend: B,
    cfg: &UNetConfig,
    shape: &UNetShape,
    weights: &ParamStore,
    min_seconds: f64,
) -> Result<(Timing, String)> {
    let ug = unet::build(cfg, shape)?;
    let plan = Plan::new(&ug.graph);
    let summary = plan.summary();
    let mut ex = Executor::with_plan(backend, ug.graph.clone(), plan, weights)?;
    let n = shape.batch;
    let sample = HostTensor::from_f32(
        &[n, shape.height, shape.width, cfg.in_channels],
        shape.dtype,
        &initial_latents(1, n, shape.height, shape.width, 1.0)[..n * shape.height * shape.width * cfg.in_channels],
    )?;
    let tt = HostTensor::from_f32(&[n], DType::F32, &vec![501.0; n])?;
    let ctx_vals = GaussianNoise::new(2).sample(n * shape.context_len * cfg.cross_attention_dim, 1.0);
    let context = HostTensor::from_f32(&[n, shape.context_len, cfg.cross_attention_dim], shape.dtype, &ctx_vals)?;
    let feed = [("sample", &sample), ("timestep", &tt), ("context", &context)];
    let t = measure(2, min_seconds, || {
        ex.run(&feed)?;
        ex.get(ug.nodes.out).map(|_| ()) // waits for the device
    })?;
    Ok((t, summary))
}

/// The embedded config of the fixture UNet (`tests/fixtures/sd/unet/config.json`: 2 levels of 16 / 32 channels,
/// 16x16 latents, cross-attention width 32): `--config fixture` of the UNet benches, with random weights.
pub const FIXTURE_UNET_CONFIG: &str = include_str!("../../tests/fixtures/sd/unet/config.json");

/// A UNet bench's `--config`: `sd-v1` (SD v1.x), `fixture` ([`FIXTURE_UNET_CONFIG`]), or a diffusers `unet/`
/// folder or its `config.json` (then also the folder, for its weights).
pub fn unet_config(config: &str) -> Result<(UNetConfig, Option<std::path::PathBuf>)> {
    match config {
        "sd-v1" => Ok((UNetConfig::sd_v1(), None)),
        "fixture" => Ok((UNetConfig::from_json(FIXTURE_UNET_CONFIG, "the embedded fixture config")?, None)),
        _ => {
            let dir = std::path::PathBuf::from(config);
            let file = if dir.is_dir() { dir.join("config.json") } else { dir.clone() };
            Ok((UNetConfig::from_file(&file)?, file.parent().map(|p| p.to_path_buf())))
        }
    }
}

/// `instagen bench unet`: the time per UNet call at `config`'s config (see [`unet_config`]; random weights where
/// no folder with weights is given) and the given batch, latent size and dtype.
pub fn bench_unet(
    kind: crate::backend::BackendKind,
    config: &str,
    batch: usize,
    latent: Option<usize>,
    dtype: DType,
    min_seconds: f64,
) -> Result<BenchReport> {
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
    let shape = UNetShape { batch, height: side, width: side, context_len: 77, dtype, features: false, taps: false };
    let graph = unet::build(&cfg, &shape)?.graph;
    let (weights, source) = match &dir {
        Some(d) => unet_weights(d, &graph, dtype)?,
        None => (crate::nn::init_params(&graph, 0)?, "random".into()),
    };
    let (timing, plan) = crate::with_backend!(kind, |mk| time_unet(mk()?, &cfg, &shape, &weights, min_seconds))
        .map_err(|e| e.building(format!("UNet graph ({culprit})")))?;
    let text = format!(
        "unet {config}: batch {batch}, latent {side}x{side}, context 77x{}, {dtype}, backend {kind:?}, weights {source}\n\
         memory: {plan}\n{:.3} ms per call (median of {} calls after 1 warm-up)\n",
        cfg.cross_attention_dim,
        timing.seconds * 1e3,
        timing.runs
    );
    Ok(BenchReport { text, timing })
}

/// Writes the captured feature levels to a safetensors file (one tensor per level, `[N, h, w, C]`).
pub fn save_features(out: &SampleOutput, path: &std::path::Path) -> Result<()> {
    let mut s = ParamStore::new();
    for (name, t) in &out.features {
        s.insert(name, t.clone());
    }
    s.save_safetensors(path)
}
