//! `instagen vae train`: AutoencoderKL training from scratch (or from any diffusers VAE) on whole images.
//!
//! - The loss is LDM's autoencoder objective without its GAN and LPIPS terms (neither is implemented here: the
//!   world's flat shapes need no perceptual loss to be recognisable at 64x64, and a discriminator would double
//!   the step): a reconstruction term, L1 (LDM's `|x - x_rec|`, the default) or MSE, as a mean over pixel
//!   values, plus `kl_weight` times the posterior's KL divergence to N(0, I) summed over the latent and divided
//!   by the pixel values of an image. That is LDM's `(sum |d| + w KL) / (B * 3HW)`, so `--kl-weight` has LDM's
//!   meaning (1e-6 in its configs). The reconstruction decodes the posterior SAMPLE `mean + exp(logvar/2) n`
//!   (logvar clamped to [-30, 20] as diffusers does), with the noise from the loop's generator.
//! - One training graph (encoder, sample, decoder, loss, backward) built once for the batch; AdamW with
//!   PyTorch's defaults but the learning rate, on every VAE parameter (`runtime::Trainer`), optional gradient
//!   clipping. The generic loop (`runtime::train_loop`) gives checkpoints, resume, `metrics.jsonl` and curves.
//! - At the end: `scaling_factor = 1 / std` of the trained encoder's posterior samples over the first
//!   `--scale-images` images (LDM's `scale_by_std`, which is how SD's 0.18215 was found), and `RUN/model/`: the
//!   `--sd` folder with `vae/` replaced by the trained weights and that scaling factor in its config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, BackendKind};
use crate::data::crops::CropSample;
use crate::data::{stack, Batch, Dataset, LoaderConfig};
use crate::error::{Error, Result};
use crate::graph::{autodiff, BinaryOp, Graph, NodeId, Plan, UnaryOp};
use crate::models::config::VaeConfig;
use crate::models::vae::Vae;
use crate::models::weights::{Component, SdCheckpoint};
use crate::optim::{AdamWConfig, Algorithm, ParamGroup, TrainConfig};
use crate::params::ParamStore;
use crate::runtime::train_loop::{train, LoopConfig, StepOutput, TrainState, TrainTask};
use crate::runtime::{Executor, Trainer, TrainerState};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

use super::data::CaptionSet;

fn mismatch(what: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Mismatch { what: what.into(), msg: msg.into() }
}

/// The reconstruction term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecLoss {
    L1,
    Mse,
}

impl RecLoss {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "l1" => Ok(RecLoss::L1),
            "mse" => Ok(RecLoss::Mse),
            _ => Err(mismatch("--rec-loss", format!("'{s}' (l1 or mse)"))),
        }
    }
    fn name(self) -> &'static str {
        match self {
            RecLoss::L1 => "l1",
            RecLoss::Mse => "mse",
        }
    }
}

/// The VAE training graph of one batch shape.
#[derive(Clone, Debug)]
pub struct VaeTrainGraph {
    pub graph: Graph,
    /// The total loss `rec + kl_weight * kl / (3HW)` (scalar, f32).
    pub loss: NodeId,
    /// Mean reconstruction error per pixel value.
    pub rec: NodeId,
    /// KL divergence of the posterior to N(0, I) per latent value (nats; summed over an image's latent it is
    /// LDM's `posterior.kl()`). Logged in this unit so that it shares the loss plot's scale with `rec`.
    pub kl: NodeId,
    /// The reconstruction `[B, R, R, 3]`.
    pub recon: NodeId,
    pub grads: Vec<(String, NodeId)>,
}

/// Builds the training graph for `batch` images of `res x res` (inputs [`Vae::IMAGE`], [`Vae::NOISE`]).
pub fn build_vae_train_graph(cfg: &VaeConfig, batch: usize, res: usize, rec: RecLoss, kl_weight: f32) -> Result<VaeTrainGraph> {
    let vae = Vae::new(cfg.clone(), DType::F32)?;
    let f = cfg.downscale();
    if batch == 0 || res == 0 || res % f != 0 {
        return Err(mismatch("VAE training graph", format!("batch {batch}, image side {res}: want >= 1 and a multiple of {f}")));
    }
    let (lat, l) = (res / f, cfg.latent_channels);
    let mut g = Graph::new();
    let x = g.input(Vae::IMAGE, &[batch, res, res, cfg.in_channels], DType::F32)?; // (B, R, R, 3)
    let (moments, _) = vae.encoder(&mut g, x)?; // (B, h, w, 2l)
    let mean = g.slice(moments, 3, 0, l)?; // (B, h, w, l)
    let logvar = g.slice(moments, 3, l, 2 * l)?; // (B, h, w, l)
    let lo = g.fill(-30.0, &[1], DType::F32);
    let hi = g.fill(20.0, &[1], DType::F32);
    let logvar = g.binary(BinaryOp::Max, logvar, lo)?;
    let logvar = g.binary(BinaryOp::Min, logvar, hi)?;
    let half = g.scale(logvar, 0.5)?;
    let std = g.unary(UnaryOp::Exp, half)?; // (B, h, w, l)
    let noise = g.input(Vae::NOISE, &[batch, lat, lat, l], DType::F32)?; // (B, h, w, l)
    let e = g.mul(std, noise)?;
    let z = g.add(mean, e)?; // (B, h, w, l)
    let (recon, _) = vae.decoder(&mut g, z)?; // (B, R, R, 3)
    let d = g.sub(recon, x)?;
    let d = g.unary(if rec == RecLoss::L1 { UnaryOp::Abs } else { UnaryOp::Square }, d)?;
    let rec_term = g.mean_all(d)?; // ()
    // KL(N(mean, var) || N(0, 1)) per latent element: 0.5 (mean^2 + var - 1 - logvar).
    let m2 = g.unary(UnaryOp::Square, mean)?;
    let var = g.unary(UnaryOp::Exp, logvar)?;
    let k = g.add(m2, var)?;
    let k = g.sub(k, logvar)?;
    let k = g.affine(k, 0.5, -0.5)?; // (B, h, w, l)
    let kl = g.mean_all(k)?; // () per latent value
    let per_image = (lat * lat * l) as f32;
    let pixels = (res * res * cfg.in_channels) as f32;
    let kl_term = g.scale(kl, kl_weight * per_image / pixels)?; // kl_weight x (KL summed over the latent) / 3HW
    let loss = g.add(rec_term, kl_term)?; // ()
    for id in [rec_term, kl] {
        g.mark_output(id);
    }
    let grads = autodiff::param_grads(&mut g, loss)?;
    Ok(VaeTrainGraph { graph: g, loss, rec: rec_term, kl, recon, grads })
}

/// What one VAE step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VaeStepStats {
    pub loss: f32,
    pub rec: f32,
    pub kl: f32,
    pub grad_norm: f32,
}

/// The VAE's training graph planned once, its parameters and AdamW state on the backend.
pub struct VaeTrainer<B: Backend> {
    ex: Executor<B>,
    trainer: Trainer<B>,
    g: VaeTrainGraph,
    batch: usize,
    res: usize,
    latent: [usize; 4],
    pub adamw: AdamWConfig,
    pub max_grad_norm: Option<f32>,
}

impl<B: Backend> VaeTrainer<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(backend: B, cfg: &VaeConfig, weights: &ParamStore, batch: usize, res: usize, rec: RecLoss, kl_weight: f32, adamw: AdamWConfig) -> Result<Self> {
        let g = build_vae_train_graph(cfg, batch, res, rec, kl_weight)?;
        let plan = Plan::new(&g.graph);
        let ex = Executor::with_plan(backend, g.graph.clone(), plan, weights)?;
        let names: Vec<String> = g.grads.iter().map(|(n, _)| n.clone()).collect();
        let tc = TrainConfig { algorithm: Algorithm::AdamW(adamw), ..TrainConfig::default() };
        let trainer = Trainer::new(ex.device_params(), &names, tc, |_, _| ParamGroup::default_for(adamw.weight_decay))?;
        let f = cfg.downscale();
        let latent = [batch, res / f, res / f, cfg.latent_channels];
        Ok(VaeTrainer { ex, trainer, g, batch, res, latent, adamw, max_grad_norm: None })
    }

    /// `[B, h, w, l]` of the posterior noise.
    pub fn latent_shape(&self) -> [usize; 4] {
        self.latent
    }

    /// The memory plan (`planned X MiB (naive Y MiB)`).
    pub fn plan_summary(&self) -> String {
        self.ex.plan().summary()
    }

    /// Forward, backward and AdamW on `images` `[B, R, R, 3]` in [-1, 1] with the posterior noise `noise`.
    pub fn step(&mut self, images: &HostTensor, noise: &[f32]) -> Result<VaeStepStats> {
        let (b, r) = (self.batch, self.res);
        if images.shape != [b, r, r, 3] {
            return Err(mismatch("images", format!("want [{b}, {r}, {r}, 3], got {:?}", images.shape)));
        }
        let n: usize = self.latent.iter().product();
        if noise.len() != n {
            return Err(mismatch("posterior noise", format!("want {n} values, got {}", noise.len())));
        }
        let img = if images.dtype == DType::F32 { images.clone() } else { images.cast(DType::F32) };
        let nz = HostTensor::from_f32(&self.latent, DType::F32, noise)?;
        self.ex.run(&[(Vae::IMAGE, &img), (Vae::NOISE, &nz)])?;
        let loss = self.ex.get(self.g.loss)?.scalar_f32()?;
        let rec = self.ex.get(self.g.rec)?.scalar_f32()?;
        let kl = self.ex.get(self.g.kl)?.scalar_f32()?;
        let c = self.trainer.config_mut();
        c.algorithm = Algorithm::AdamW(self.adamw);
        c.max_grad_norm = self.max_grad_norm;
        let st = self.trainer.step(&mut self.ex, &self.g.grads, self.adamw.lr)?;
        Ok(VaeStepStats { loss, rec, kl, grad_norm: st.grad_norm })
    }

    /// Every VAE parameter, read back.
    pub fn params(&self) -> Result<ParamStore> {
        self.ex.params()
    }

    pub fn export_state(&self) -> Result<(ParamStore, TrainerState)> {
        self.trainer.export_state()
    }

    pub fn load_state(&mut self, params: &ParamStore, tensors: &ParamStore, state: &TrainerState) -> Result<()> {
        for (name, _) in &self.g.grads {
            let t = params.get(name).ok_or_else(|| mismatch(format!("parameter '{name}'"), "missing from the saved parameters"))?;
            self.ex.device_params().set(name, t)?;
        }
        self.trainer.load_state(tensors, state)
    }
}

/// Everything `instagen vae train` takes.
#[derive(Clone, Debug)]
pub struct VaeTrainOptions {
    /// The SD diffusers folder whose `vae/` is trained (e.g. from `instagen sd init`).
    pub sd: PathBuf,
    /// A COCO dataset folder (`instances.json` + images) or an instances file (images beside it).
    pub data: PathBuf,
    pub out: PathBuf,
    pub steps: u64,
    pub batch: usize,
    pub lr: f32,
    pub kl_weight: f32,
    pub rec: RecLoss,
    pub seed: u64,
    pub save_every: u64,
    pub keep: usize,
    pub resume: bool,
    pub workers: usize,
    pub max_grad_norm: Option<f32>,
    /// Images whose posterior samples set `scaling_factor`.
    pub scale_images: usize,
}

impl VaeTrainOptions {
    fn fingerprint(&self) -> serde_json::Value {
        serde_json::json!({
            "stage": "vae",
            "sd": self.sd.display().to_string(),
            "data": self.data.display().to_string(),
            "batch": self.batch,
            "lr": self.lr.to_string(),
            "kl_weight": self.kl_weight.to_string(),
            "rec_loss": self.rec.name(),
            "seed": self.seed,
            "max_grad_norm": self.max_grad_norm.map(|m| m.to_string()),
        })
    }
}

/// `DIR/instances.json` with images in DIR, or a JSON file with images beside it.
pub fn dataset_paths(data: &Path) -> (PathBuf, PathBuf) {
    if data.is_dir() {
        (data.join("instances.json"), data.to_path_buf())
    } else {
        let root = data.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        (data.to_path_buf(), root)
    }
}

/// What a VAE run did.
#[derive(Clone, Debug)]
pub struct VaeTrainReport {
    pub run_dir: PathBuf,
    pub model_dir: PathBuf,
    pub resumed_from: u64,
    pub steps: u64,
    pub images: usize,
    pub last: Option<(f32, f32, f32)>,
    pub latent_std: f32,
    pub latent_mean: f32,
    pub scaling_factor: f32,
    pub scale_images: usize,
}

impl std::fmt::Display for VaeTrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.resumed_from > 0 {
            writeln!(f, "resumed from step {}", self.resumed_from)?;
        }
        match self.last {
            Some((l, r, k)) => writeln!(f, "vae train: {} steps on {} images, last loss {l:.6} (rec {r:.6}, kl {k:.4} per latent value)", self.steps, self.images)?,
            None => writeln!(f, "vae train: {} steps on {} images", self.steps, self.images)?,
        }
        writeln!(
            f,
            "latents of {} images: mean {:.4}, std {:.4} -> scaling_factor {:.5}",
            self.scale_images, self.latent_mean, self.latent_std, self.scaling_factor
        )?;
        writeln!(f, "run folder {} (checkpoints/, metrics.jsonl, loss.png, lr.png)", self.run_dir.display())?;
        writeln!(f, "model {} (the SD folder with the trained vae/)", self.model_dir.display())
    }
}

struct VaeTask<B: Backend> {
    vae: VaeTrainer<B>,
    lr: f32,
}


impl<B: Backend> TrainTask for VaeTask<B> {
    type Item = CropSample;

    fn step(&mut self, _step: u64, batch: Batch<CropSample>, rng: &mut Rng) -> Result<StepOutput> {
        let images: Vec<_> = batch.items.iter().map(|s| s.image.clone()).collect();
        let images = stack(&images)?;
        let n: usize = self.vae.latent_shape().iter().product();
        let noise = rng.normal_vec(n, 1.0);
        let st = self.vae.step(&images, &noise)?;
        Ok(StepOutput {
            losses: vec![("loss".into(), st.loss), ("rec".into(), st.rec), ("kl".into(), st.kl)],
            lr: self.lr,
            grad_norm: Some(st.grad_norm),
            loss_scale: None,
            skipped: false,
            samples: batch.items.len(),
        })
    }

    fn save_state(&mut self) -> Result<TrainState> {
        let (optim, state) = self.vae.export_state()?;
        Ok(TrainState {
            params: self.vae.params()?,
            optim,
            ema: None,
            loss_scale: None,
            scalars: TrainState::trainer_scalars(&state)?,
        })
    }

    fn load_state(&mut self, s: TrainState) -> Result<()> {
        let state = s.trainer_state()?;
        self.vae.load_state(&s.params, &s.optim, &state)
    }
}

fn check(o: &VaeTrainOptions) -> Result<()> {
    let bad = |what: &str, msg: String| Err(mismatch(what, msg));
    if o.batch == 0 || o.steps == 0 || o.save_every == 0 || o.keep == 0 || o.scale_images == 0 {
        return bad("--batch / --steps / --save-every / --keep / --scale-images", "must be at least 1".into());
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return bad("--lr", format!("{} is not a positive number", o.lr));
    }
    if !(o.kl_weight.is_finite() && o.kl_weight >= 0.0) {
        return bad("--kl-weight", format!("{} is not a finite number >= 0", o.kl_weight));
    }
    Ok(())
}

/// Run `instagen vae train` on the backend `kind`.
pub fn run(kind: BackendKind, o: &VaeTrainOptions) -> Result<VaeTrainReport> {
    crate::with_backend!(kind, |mk| run_with(mk, o))
}

pub fn run_with<B: Backend>(mk: impl Fn() -> Result<B>, o: &VaeTrainOptions) -> Result<VaeTrainReport> {
    check(o)?;
    let ckpt = SdCheckpoint::open(&o.sd)?;
    let vcfg = ckpt.vae_config.clone();
    let res = vcfg.sample_size;
    let (json, root) = dataset_paths(&o.data);
    let data = Arc::new(CaptionSet::open(&json, &root, res, false, true)?);
    if data.len() < o.batch {
        return Err(mismatch("--batch", format!("{} is larger than the {} images of {}", o.batch, data.len(), json.display())));
    }
    let g = build_vae_train_graph(&vcfg, o.batch, res, o.rec, o.kl_weight)?;
    let weights = ckpt.component(Component::Vae)?.load_for(&g.graph)?;
    drop(g);
    let adamw = AdamWConfig { lr: o.lr, ..AdamWConfig::default() };
    let mut vae = VaeTrainer::new(mk()?, &vcfg, &weights, o.batch, res, o.rec, o.kl_weight, adamw).map_err(|e| e.building("VAE training graph"))?;
    drop(weights);
    vae.max_grad_norm = o.max_grad_norm;
    let mut task = VaeTask { vae, lr: o.lr };
    let cfg = LoopConfig {
        run_dir: o.out.clone(),
        steps: o.steps,
        save_every: o.save_every,
        keep: o.keep,
        resume: o.resume,
        seed: o.seed,
        config: o.fingerprint(),
        may_differ: Vec::new(),
        progress: true,
    };
    let report = train(data.clone(), LoaderConfig::new(o.batch, o.workers, o.seed), &mut task, &cfg)?;
    let params = task.vae.params()?;
    drop(task);
    let n = o.scale_images.min(data.len());
    let (mean, std) = latent_stats(&mk, &vcfg, &params, &data, n, o.seed)?;
    if !(std.is_finite() && std > 0.0) {
        return Err(Error::Other(format!("the trained encoder's latents have std {std}: no scaling factor")));
    }
    let scaling_factor = 1.0 / std;
    let src_cfg = o.sd.join("vae/config.json");
    let text = crate::util::files::read_text(&src_cfg, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&src_cfg, e))?;
    let mut vjson: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Weights { path: src_cfg.clone(), msg: e.to_string() })?;
    vjson["scaling_factor"] = serde_json::json!(scaling_factor);
    let model_dir = o.out.join("model");
    crate::pipeline::finetune::export_component(&o.sd, Component::Vae, &params, &vjson, &model_dir)?;
    let last = report.last.as_ref().map(|r| {
        let get = |k: &str| r.losses.get(k).copied().flatten().unwrap_or(f32::NAN);
        (get("loss"), get("rec"), get("kl"))
    });
    Ok(VaeTrainReport {
        run_dir: o.out.clone(),
        model_dir,
        resumed_from: report.resumed_from,
        steps: report.steps,
        images: data.len(),
        last,
        latent_std: std,
        latent_mean: mean,
        scaling_factor,
        scale_images: n,
    })
}

/// Mean and standard deviation (around the mean, as `torch.std`) of the posterior samples of the first `n`
/// images (no flip), with noise from `seed`.
fn latent_stats<B: Backend>(
    mk: &impl Fn() -> Result<B>,
    cfg: &VaeConfig,
    params: &ParamStore,
    data: &CaptionSet,
    n: usize,
    seed: u64,
) -> Result<(f32, f32)> {
    let res = data.resolution();
    let batch = n.min(8);
    let vae = Vae::new(cfg.clone(), DType::F32)?;
    let eg = vae.encode_graph(batch, res, res, false)?;
    let mut ex = Executor::new(mk()?, eg.graph.clone(), params).map_err(|e| e.building("VAE encoder graph"))?;
    let f = cfg.downscale();
    let lat = [batch, res / f, res / f, cfg.latent_channels];
    let mut rng = Rng::new(seed ^ 0x5CA1_E000);
    let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0usize);
    let mut i = 0;
    while i < n {
        let take = batch.min(n - i);
        // The last batch is padded with its first image; the padding's latents are not counted.
        let imgs: Vec<HostTensor> = (0..batch).map(|k| data.image(i + k.min(take - 1))).collect::<Result<_>>()?;
        let imgs = stack(&imgs)?;
        let noise = HostTensor::from_f32(&lat, DType::F32, &rng.normal_vec(lat.iter().product(), 1.0))?;
        ex.run(&[(Vae::IMAGE, &imgs), (Vae::NOISE, &noise)])?;
        let z = ex.get(eg.sample)?.to_f32();
        let per = z.len() / batch;
        for v in &z[..take * per] {
            sum += *v as f64;
            sum2 += (*v as f64) * (*v as f64);
        }
        count += take * per;
        i += take;
    }
    let mean = sum / count as f64;
    let var = (sum2 - count as f64 * mean * mean) / (count.max(2) - 1) as f64;
    Ok((mean as f32, var.max(0.0).sqrt() as f32))
}

/// `instagen bench train-vae`: the time of one VAE training step (encoder, posterior sample, decoder, L1 + KL,
/// backward, AdamW) for `batch` images of the config's `sample_size`, random weights; `config` is a diffusers
/// `vae/` folder (its `config.json`) or `sd-v1`. One warm-up step, then steps until `min_seconds` (at least
/// one); the median. On cpu / emu the timed steps are profiled per op kind.
pub fn bench_train_vae(kind: BackendKind, config: &str, batch: usize, min_seconds: f64) -> Result<crate::pipeline::timing::BenchReport> {
    crate::pipeline::sample::check_bench_args(batch, min_seconds)?;
    let cfg = if config == "sd-v1" { VaeConfig::default() } else { VaeConfig::from_file(&Path::new(config).join("config.json"))? };
    let res = cfg.sample_size;
    let g = build_vae_train_graph(&cfg, batch, res, RecLoss::L1, 1e-6)?;
    let weights = crate::nn::init_params(&g.graph, 0)?;
    let params = weights.numel();
    drop(g);
    let profile = kind != BackendKind::Cuda;
    let adamw = AdamWConfig { lr: 1e-4, ..AdamWConfig::default() };
    let (timing, plan, prof) = crate::with_backend!(kind, |mk| {
        let backend = crate::pipeline::finetune::bench::Profiled::new(mk()?);
        let mut tr = VaeTrainer::new(backend, &cfg, &weights, batch, res, RecLoss::L1, 1e-6, adamw)?;
        let plan = tr.plan_summary();
        let mut rng = Rng::new(7);
        let images = HostTensor::from_f32(&[batch, res, res, 3], DType::F32, &rng.uniform_vec(batch * res * res * 3, -1.0, 1.0))?;
        let n: usize = tr.latent_shape().iter().product();
        let mut calls = 0;
        let timing = crate::pipeline::timing::measure(1, min_seconds, || {
            if calls == 1 {
                tr.ex.backend().reset();
            }
            calls += 1;
            let noise = rng.normal_vec(n, 1.0);
            tr.step(&images, &noise)?;
            tr.ex.backend().synchronize()
        })?;
        let prof = if profile { tr.ex.backend().report() } else { Vec::new() };
        Ok::<_, Error>((timing, plan, prof))
    })?;
    let mut s = format!(
        "train-vae {config}: batch {batch}, image {res}x{res}, latent {}x{}x{}, f32, backend {kind:?}, random weights\n\
         parameters: {params}; activations: {plan}\n\
         {:.3} s per training step (forward + backward + AdamW; median of {} timed after 1 warm-up), {:.2} images/s\n",
        res / cfg.downscale(),
        res / cfg.downscale(),
        cfg.latent_channels,
        timing.seconds,
        timing.runs,
        batch as f64 / timing.seconds,
    );
    if !prof.is_empty() {
        let total: f64 = prof.iter().map(|p| p.1).sum();
        let steps = timing.runs;
        s += &format!("per-op profile over the timed steps ({:.3} s in ops, per step):\n", total / steps as f64);
        for (name, secs, calls) in prof.iter().take(15) {
            s += &format!("  {:>6.1}%  {:>9.3} ms  {:>6} calls  {name}\n", 100.0 * secs / total.max(1e-12), 1e3 * secs / steps as f64, calls / steps);
        }
    }
    Ok(crate::pipeline::timing::BenchReport { text: s, timing })
}
