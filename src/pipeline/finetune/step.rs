//! One training step of InstaGen stage 1 (../shared/docs/INSTAGEN.md): SD's noise-prediction loss on a batch of
//! images and prompts, gradients for the UNet only, then AdamW on the UNet.
//!
//! - [`NoiseSchedule`]: DDPM's forward process from the scheduler config (`alphas_cumprod`, as diffusers'
//!   `DDPMScheduler.add_noise`: `sqrt(ab_t) x0 + sqrt(1 - ab_t) eps`, the two factors in f32 as torch computes them).
//! - [`build_train_graph`]: one graph per (batch, latent size): inputs [`LATENTS`] x0, [`NOISE`] eps, the per-sample
//!   factors [`SQRT_ALPHA_BAR`] / [`SQRT_ONE_MINUS_ALPHA_BAR`] `[B, 1, 1, 1]`, [`TIMESTEP`] `[B]` f32 and
//!   [`CONTEXT`] `[B, T, D]`; the noisy latent is formed in the graph, the UNet predicts eps and the loss is
//!   `mean((pred - eps)^2)` over all elements (`F.mse_loss`), computed in f32. Only UNet parameters exist in this
//!   graph, so autodiff adds gradient nodes for them alone.
//! - [`UnetTrainer`]: that graph planned once and run every step (`forward_backward`, then `update` = AdamW with
//!   optional clipping), with each parameter's gradient readable in between (for the parity test).
//! - Mixed precision: f16/bf16 parameters get f32 master weights in the trainer. f16 also gets dynamic loss
//!   scaling as PyTorch's `GradScaler` (bf16 has f32's exponent range and, as in PyTorch, is not scaled): the graph
//!   differentiates `loss * loss_scale` ([`runtime::scaled_loss`]), the trainer feeds its current scale, and a step
//!   whose gradients hold inf/NaN is skipped (parameters, moments and EMA untouched) and halves the scale.
//! - [`Stage1Trainer`]: the whole step from a diffusers folder. The frozen VAE encoder and CLIP text encoder run
//!   as their own forward-only graphs (no gradient nodes, no optimiser state): latents are the encoder's posterior
//!   sample `mean + exp(logvar / 2) * n` times `scaling_factor` (minus `shift_factor` first when set), contexts
//!   are CLIP's `last_hidden_state` of the 77-token prompts (an over-long prompt is an error).
//! - Randomness: [`StepDraws`] holds every random draw of a step (posterior noise, timesteps, eps); it comes from
//!   a seeded [`Rng`] ([`StepDraws::draw`]) or from the caller (tests feed their own).

use std::path::Path;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::{autodiff, Graph, NodeId, Plan};
use crate::models::clip_text::ClipTextModel;
use crate::models::scheduler::{DdimScheduler, PredictionType};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::{self, UNetConfig};
use crate::models::vae::Vae;
use crate::models::weights::{Component, SdCheckpoint};
use crate::optim::{AdamWConfig, Algorithm, LossScaleConfig, ParamGroup, TrainConfig};
use crate::params::ParamStore;
use crate::runtime::{self, Executor, Trainer, TrainerState};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// Graph input: the clean latents x0 `[B, h, w, C]`.
pub const LATENTS: &str = "latents";
/// Graph input: the noise eps `[B, h, w, C]` (also the regression target).
pub const NOISE: &str = "noise";
/// Graph input: `sqrt(alpha_bar_t)` per sample, `[B, 1, 1, 1]`.
pub const SQRT_ALPHA_BAR: &str = "sqrt_alpha_bar";
/// Graph input: `sqrt(1 - alpha_bar_t)` per sample, `[B, 1, 1, 1]`.
pub const SQRT_ONE_MINUS_ALPHA_BAR: &str = "sqrt_one_minus_alpha_bar";
/// Graph input: the timesteps `[B]` as f32 (the UNet's input).
pub const TIMESTEP: &str = "timestep";
/// Graph input: the text embeddings `[B, T, D]`.
pub const CONTEXT: &str = "context";

fn mismatch(what: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Mismatch { what: what.into(), msg: msg.into() }
}

/// DDPM's forward (noising) process of a diffusers scheduler config.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// From a parsed scheduler (its betas and `alphas_cumprod` are diffusers'). Training targets eps, so the
    /// config's `prediction_type` must be `epsilon`.
    pub fn new(sched: &DdimScheduler, origin: &str) -> Result<Self> {
        if sched.prediction_type != PredictionType::Epsilon {
            return Err(mismatch(
                format!("scheduler config {origin}"),
                format!("prediction_type {:?}: training supports \"epsilon\" only", sched.config.prediction_type),
            ));
        }
        Ok(NoiseSchedule { alphas_cumprod: sched.alphas_cumprod().to_vec() })
    }

    /// `scheduler/scheduler_config.json` of a diffusers folder, or SD v1's schedule (scaled_linear 0.00085..0.012,
    /// 1000 steps) when the folder has none.
    pub fn from_checkpoint(ckpt: &SdCheckpoint) -> Result<Self> {
        match ckpt.scheduler_config() {
            Some(p) => Self::new(&DdimScheduler::from_file(&p)?, &p.display().to_string()),
            None => Self::sd_v1(),
        }
    }

    /// SD v1's training schedule.
    pub fn sd_v1() -> Result<Self> {
        Self::new(&DdimScheduler::sd_v1()?, "<SD v1 default>")
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// `(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))` in f32, as diffusers' `add_noise` computes them.
    pub fn factors(&self, t: usize) -> Result<(f32, f32)> {
        let ab = *self.alphas_cumprod.get(t).ok_or_else(|| {
            mismatch("timestep", format!("{t} is outside [0, {}) (num_train_timesteps)", self.alphas_cumprod.len()))
        })?;
        Ok((ab.sqrt(), (1.0f32 - ab).sqrt()))
    }

    /// `sqrt(ab_t) x0 + sqrt(1 - ab_t) eps` on the host, per sample of `timesteps` (`x0` and `eps` hold
    /// `timesteps.len()` equal-sized samples). The graph does the same; this is the reference.
    pub fn add_noise(&self, x0: &[f32], eps: &[f32], timesteps: &[usize]) -> Result<Vec<f32>> {
        if x0.len() != eps.len() || timesteps.is_empty() || x0.len() % timesteps.len() != 0 {
            return Err(mismatch("add_noise", format!("{} latents, {} noise values, {} timesteps", x0.len(), eps.len(), timesteps.len())));
        }
        let per = x0.len() / timesteps.len();
        let mut out = Vec::with_capacity(x0.len());
        for (i, &t) in timesteps.iter().enumerate() {
            let (a, b) = self.factors(t)?;
            out.extend(x0[i * per..(i + 1) * per].iter().zip(&eps[i * per..(i + 1) * per]).map(|(x, e)| a * x + b * e));
        }
        Ok(out)
    }
}

/// Every random draw of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDraws {
    /// Standard normal noise for the VAE posterior sample, `B * h * w * C` (NHWC); unused when latents are given.
    pub posterior_noise: Vec<f32>,
    /// One timestep per sample, uniform in `[0, num_train_timesteps)`.
    pub timesteps: Vec<usize>,
    /// The noise eps added to the latents and predicted by the UNet, `B * h * w * C` (NHWC).
    pub noise: Vec<f32>,
}

impl StepDraws {
    /// Draws in this order from `rng`: the posterior noise, the timesteps, eps (`latent_len` = `h * w * C`).
    pub fn draw(rng: &mut Rng, batch: usize, latent_len: usize, num_train_timesteps: usize) -> Self {
        let posterior_noise = rng.normal_vec(batch * latent_len, 1.0);
        let timesteps = (0..batch).map(|_| rng.below(num_train_timesteps)).collect();
        let noise = rng.normal_vec(batch * latent_len, 1.0);
        StepDraws { posterior_noise, timesteps, noise }
    }
}

/// Batch, latent size, context and storage dtype of a training graph.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainShape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub context_len: usize,
    pub dtype: DType,
}

impl TrainShape {
    /// Elements of one sample's latent (`h * w * C`).
    pub fn latent_len(&self, cfg: &UNetConfig) -> usize {
        self.height * self.width * cfg.in_channels
    }
}

/// The UNet training graph: forward, loss, backward.
#[derive(Clone, Debug)]
pub struct TrainGraph {
    pub graph: Graph,
    /// The scalar loss (f32).
    pub loss: NodeId,
    /// The UNet's prediction `[B, h, w, C]`.
    pub pred: NodeId,
    /// `(parameter name, gradient node)` for every UNet parameter (graph outputs). With loss scaling these are
    /// the gradients of `loss * loss_scale`.
    pub grads: Vec<(String, NodeId)>,
    /// The graph differentiates `loss` times the f32 input [`runtime::LOSS_SCALE_INPUT`] (f16 storage).
    pub loss_scaling: bool,
}

/// Whether training in `dtype` uses dynamic loss scaling: f16 only (bf16 and f32 do not need it, as in PyTorch).
pub fn loss_scaling(dtype: DType) -> bool {
    dtype == DType::F16
}

/// Builds the training graph of the UNet `cfg` at `shape` (see the module doc for its inputs).
pub fn build_train_graph(cfg: &UNetConfig, shape: &TrainShape) -> Result<TrainGraph> {
    let (b, dt) = (shape.batch, shape.dtype);
    if b == 0 {
        return Err(mismatch("training graph", "the batch must be >= 1"));
    }
    if cfg.out_channels != cfg.in_channels {
        return Err(mismatch(
            "unet config",
            format!("noise prediction needs out_channels == in_channels (got {} and {})", cfg.out_channels, cfg.in_channels),
        ));
    }
    let lat = [b, shape.height, shape.width, cfg.in_channels];
    let mut g = Graph::new();
    let x0 = g.input(LATENTS, &lat, dt)?; // (B, h, w, C)
    let eps = g.input(NOISE, &lat, dt)?; // (B, h, w, C)
    let a = g.input(SQRT_ALPHA_BAR, &[b, 1, 1, 1], dt)?; // (B, 1, 1, 1)
    let s = g.input(SQRT_ONE_MINUS_ALPHA_BAR, &[b, 1, 1, 1], dt)?; // (B, 1, 1, 1)
    let t = g.input(TIMESTEP, &[b], DType::F32)?; // (B)
    let ctx = g.input(CONTEXT, &[b, shape.context_len, cfg.cross_attention_dim], dt)?; // (B, T, D)
    let ax = g.mul(x0, a)?;
    let se = g.mul(eps, s)?;
    let noisy = g.add(ax, se)?; // (B, h, w, C)
    let nodes = unet::forward(&mut g, cfg, noisy, t, ctx)?;
    let pred = nodes.out; // (B, h, w, C)
    let (p32, e32) = if dt == DType::F32 { (pred, eps) } else { (g.cast(pred, DType::F32)?, g.cast(eps, DType::F32)?) };
    let loss = crate::nn::mse(&mut g, p32, e32)?; // ()
    let scaling = loss_scaling(dt);
    let grads = if scaling {
        let scaled = runtime::scaled_loss(&mut g, loss)?; // ()
        g.mark_output(loss);
        autodiff::param_grads(&mut g, scaled)?
    } else {
        autodiff::param_grads(&mut g, loss)?
    };
    Ok(TrainGraph { graph: g, loss, pred, grads, loss_scaling: scaling })
}

/// What one step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The loss (unscaled).
    pub loss: f32,
    /// Global L2 norm of the (unscaled) UNet gradients, before clipping; inf or NaN on a skipped step.
    pub grad_norm: f32,
    /// The gradients held inf/NaN: nothing was updated (loss scaling backed off).
    pub skipped: bool,
    /// The loss scale the step ran with (f16 only).
    pub loss_scale: Option<f32>,
}

/// The UNet's training graph, planned once, with its parameters and AdamW state on the backend.
pub struct UnetTrainer<B: Backend> {
    ex: Executor<B>,
    cfg: UNetConfig,
    shape: TrainShape,
    loss: NodeId,
    grads: Vec<(String, NodeId)>,
    schedule: NoiseSchedule,
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this (`clip_grad_norm_`), when set.
    pub max_grad_norm: Option<f32>,
    /// AdamW state (and the EMA of the weights, when enabled) on the executor's device parameters.
    trainer: Trainer<B>,
    ema_decay: Option<f32>,
    /// Dynamic loss scaling (when the graph scales the loss).
    loss_scale: Option<LossScaleConfig>,
    ready: bool,
}

/// The AdamW trainer of every UNet parameter (one group: AdamW's weight decay on every tensor, as
/// `torch.optim.AdamW(unet.parameters())` in the reference training script).
fn unet_trainer<B: Backend>(
    ex: &Executor<B>,
    grads: &[(String, NodeId)],
    adamw: AdamWConfig,
    ema: bool,
    loss_scale: Option<LossScaleConfig>,
) -> Result<Trainer<B>> {
    let names: Vec<String> = grads.iter().map(|(n, _)| n.clone()).collect();
    let cfg = TrainConfig { algorithm: Algorithm::AdamW(adamw), ema_decay: ema.then_some(1.0), loss_scale, ..TrainConfig::default() };
    Trainer::new(ex.device_params(), &names, cfg, |_, _| ParamGroup::default_for(adamw.weight_decay))
}

impl<B: Backend> UnetTrainer<B> {
    /// Builds and plans the graph and uploads `weights` (every UNet parameter, in `shape.dtype`).
    pub fn new(backend: B, cfg: &UNetConfig, weights: &ParamStore, shape: TrainShape, schedule: NoiseSchedule, adamw: AdamWConfig) -> Result<Self> {
        let tg = build_train_graph(cfg, &shape)?;
        Self::with_graph(backend, cfg, tg, weights, shape, schedule, adamw)
    }

    /// [`Self::new`] with the graph already built by [`build_train_graph`] for `cfg` and `shape`.
    pub fn with_graph(
        backend: B,
        cfg: &UNetConfig,
        tg: TrainGraph,
        weights: &ParamStore,
        shape: TrainShape,
        schedule: NoiseSchedule,
        adamw: AdamWConfig,
    ) -> Result<Self> {
        let plan = Plan::new(&tg.graph);
        let ex = Executor::with_plan(backend, tg.graph, plan, weights)?;
        // GradScaler's defaults (init 2^16, growth 2 every 2000 good steps, backoff 0.5).
        let loss_scale = tg.loss_scaling.then(LossScaleConfig::default);
        let trainer = unet_trainer(&ex, &tg.grads, adamw, false, loss_scale)?;
        Ok(UnetTrainer {
            ex,
            cfg: cfg.clone(),
            shape,
            loss: tg.loss,
            grads: tg.grads,
            schedule,
            adamw,
            max_grad_norm: None,
            trainer,
            ema_decay: None,
            loss_scale,
            ready: false,
        })
    }

    /// Keep an exponential moving average of the weights on the device, as diffusers' `EMAModel` with its
    /// defaults: after update k (0-based) `ema = d ema + (1 - d) w` with `d = min(decay, (1 + k) / (10 + k))`.
    /// Only before the first update (it starts from the current weights).
    pub fn enable_ema(&mut self, decay: f32) -> Result<()> {
        if self.trainer.steps() > 0 {
            return Err(mismatch("EMA", "enable it before the first update"));
        }
        if !(decay > 0.0 && decay < 1.0) {
            return Err(mismatch("--ema-decay", format!("{decay} is not in (0, 1)")));
        }
        self.trainer = unet_trainer(&self.ex, &self.grads, self.adamw, true, self.loss_scale)?;
        self.ema_decay = Some(decay);
        Ok(())
    }

    /// Replace the loss-scaling settings (GradScaler's defaults unless set); only for a graph that scales its
    /// loss (f16) and only before the first update.
    pub fn set_loss_scale(&mut self, cfg: LossScaleConfig) -> Result<()> {
        if self.loss_scale.is_none() {
            return Err(mismatch("loss scaling", format!("not used for {} training (f16 only)", self.shape.dtype)));
        }
        if self.trainer.steps() > 0 || self.trainer.state().skipped_steps > 0 {
            return Err(mismatch("loss scaling", "set it before the first update"));
        }
        if !(cfg.init_scale.is_finite() && cfg.init_scale > 0.0 && cfg.growth >= 1.0 && cfg.backoff > 0.0 && cfg.backoff < 1.0 && cfg.growth_interval > 0) {
            return Err(mismatch("loss scaling", format!("{cfg:?}: want a finite init_scale > 0, growth >= 1, backoff in (0, 1), growth_interval >= 1")));
        }
        self.loss_scale = Some(cfg);
        self.trainer = unet_trainer(&self.ex, &self.grads, self.adamw, self.ema_decay.is_some(), self.loss_scale)?;
        Ok(())
    }

    /// The current loss scale (`None` without loss scaling).
    pub fn loss_scale(&self) -> Option<f32> {
        self.loss_scale.map(|_| self.trainer.loss_scale())
    }

    /// Updates skipped for inf/NaN gradients so far.
    pub fn skipped_steps(&self) -> u64 {
        self.trainer.state().skipped_steps
    }

    /// The optimiser (and EMA) state, for a checkpoint: tensors plus scalars (`Trainer::export_state`).
    pub fn export_state(&self) -> Result<(ParamStore, TrainerState)> {
        self.trainer.export_state()
    }

    /// Take back parameters and a state saved by [`Self::params`] and [`Self::export_state`].
    pub fn load_state(&mut self, params: &ParamStore, tensors: &ParamStore, state: &TrainerState) -> Result<()> {
        for name in self.grads.iter().map(|(n, _)| n) {
            let t = params.get(name).ok_or_else(|| mismatch(format!("parameter '{name}'"), "missing from the saved parameters"))?;
            self.ex.device_params().set(name, t)?;
        }
        self.trainer.load_state(tensors, state)
    }

    /// Every UNet parameter with the trained ones replaced by their EMA (in their own dtype); an error when
    /// the EMA is not enabled.
    pub fn ema_params(&self) -> Result<ParamStore> {
        self.trainer.ema_model()
    }

    pub fn shape(&self) -> &TrainShape {
        &self.shape
    }
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }
    pub fn executor(&self) -> &Executor<B> {
        &self.ex
    }
    /// The memory plan (`planned X MiB (naive Y MiB)`).
    pub fn plan_summary(&self) -> String {
        self.ex.plan().summary()
    }
    /// Activation arena bytes of the plan.
    pub fn arena_bytes(&self) -> usize {
        self.ex.plan().arena_bytes
    }
    /// The trained parameters' names, in graph order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.grads.iter().map(|(n, _)| n.as_str())
    }

    /// Forward and backward on clean latents `[B * h * w * C]` (NHWC values), contexts, timesteps and eps;
    /// returns the loss. Gradients are then readable with [`Self::gradient`] until the next call.
    pub fn forward_backward(&mut self, latents: &[f32], context: &HostTensor, timesteps: &[usize], noise: &[f32]) -> Result<f32> {
        let s = &self.shape;
        let lat = [s.batch, s.height, s.width, self.cfg.in_channels];
        let n: usize = lat.iter().product();
        if latents.len() != n || noise.len() != n || timesteps.len() != s.batch {
            return Err(mismatch(
                "training step",
                format!("want {n} latent and noise values ({lat:?}) and {} timesteps; got {}, {} and {}", s.batch, latents.len(), noise.len(), timesteps.len()),
            ));
        }
        let mut fa = Vec::with_capacity(s.batch);
        let mut fb = Vec::with_capacity(s.batch);
        for &t in timesteps {
            let (a, b) = self.schedule.factors(t)?;
            fa.push(a);
            fb.push(b);
        }
        let dt = s.dtype;
        let x0 = HostTensor::from_f32(&lat, dt, latents)?;
        let eps = HostTensor::from_f32(&lat, dt, noise)?;
        let a = HostTensor::from_f32(&[s.batch, 1, 1, 1], dt, &fa)?;
        let b = HostTensor::from_f32(&[s.batch, 1, 1, 1], dt, &fb)?;
        let tt = HostTensor::from_f32(&[s.batch], DType::F32, &timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>())?;
        let ctx = if context.dtype == dt { context.clone() } else { context.cast(dt) };
        let mut feed = vec![(LATENTS, &x0), (NOISE, &eps), (SQRT_ALPHA_BAR, &a), (SQRT_ONE_MINUS_ALPHA_BAR, &b), (TIMESTEP, &tt), (CONTEXT, &ctx)];
        let scale = match self.loss_scale {
            Some(_) => Some(self.trainer.loss_scale_input(self.ex.graph().shape(self.loss))?),
            None => None,
        };
        if let Some(s) = &scale {
            feed.push((runtime::LOSS_SCALE_INPUT, s));
        }
        self.ex.run(&feed)?;
        let loss = self.ex.get(self.loss)?.scalar_f32()?;
        // With loss scaling an overflow is expected now and then: the update sees inf/NaN gradients and skips.
        if !loss.is_finite() && self.loss_scale.is_none() {
            return Err(mismatch("training step", format!("the loss is {loss} (timesteps {timesteps:?})")));
        }
        self.ready = true;
        Ok(loss)
    }

    /// The gradient of parameter `name` from the last [`Self::forward_backward`] (times the loss scale when
    /// loss scaling is on).
    pub fn gradient(&self, name: &str) -> Result<HostTensor> {
        let (_, id) = self.grads.iter().find(|(n, _)| n == name).ok_or_else(|| mismatch(format!("parameter '{name}'"), "not a UNet parameter"))?;
        self.ex.get(*id)
    }

    /// AdamW on every UNet parameter with the gradients of the last [`Self::forward_backward`] (unscaled, clipped
    /// to `max_grad_norm` when set), or nothing when they hold inf/NaN (`skipped`). Consumes those gradients.
    pub fn update(&mut self) -> Result<runtime::StepStats> {
        if !self.ready {
            return Err(mismatch("AdamW update", "no gradients: call forward_backward first (once per update)"));
        }
        self.ready = false;
        let k = self.trainer.steps();
        let c = self.trainer.config_mut();
        c.algorithm = Algorithm::AdamW(self.adamw);
        c.max_grad_norm = self.max_grad_norm;
        c.ema_decay = self.ema_decay.map(|d| d.min((1 + k) as f32 / (10 + k) as f32));
        self.trainer.step(&mut self.ex, &self.grads, self.adamw.lr)
    }

    /// `forward_backward` then `update`.
    pub fn step(&mut self, latents: &[f32], context: &HostTensor, timesteps: &[usize], noise: &[f32]) -> Result<StepStats> {
        let loss = self.forward_backward(latents, context, timesteps, noise)?;
        let st = self.update()?;
        Ok(StepStats { loss, grad_norm: st.grad_norm, skipped: st.skipped, loss_scale: self.loss_scale.map(|_| st.loss_scale) })
    }

    /// The current value of one parameter.
    pub fn param(&self, name: &str) -> Result<HostTensor> {
        self.ex.param(name)
    }
    /// Every UNet parameter, read back.
    pub fn params(&self) -> Result<ParamStore> {
        self.ex.params()
    }
}

/// Settings of the stage-1 step.
#[derive(Clone, Debug)]
pub struct Stage1Options {
    pub batch: usize,
    /// Image side in pixels (a multiple of the VAE's downscale factor and of the UNet's).
    pub resolution: usize,
    /// Storage dtype of all three models.
    pub dtype: DType,
    pub adamw: AdamWConfig,
    pub max_grad_norm: Option<f32>,
}

impl Default for Stage1Options {
    /// InstaGen's settings at the fixture scale: AdamW lr 1e-4 (PyTorch's other defaults), f32.
    fn default() -> Self {
        Stage1Options {
            batch: 1,
            resolution: 512,
            dtype: DType::F32,
            adamw: AdamWConfig { lr: 1e-4, ..AdamWConfig::default() },
            max_grad_norm: None,
        }
    }
}

/// The stage-1 step from a diffusers folder: frozen VAE encoder and CLIP text encoder, trained UNet.
pub struct Stage1Trainer<B: Backend> {
    tokenizer: ClipTokenizer,
    clip: ClipTextModel,
    clip_ex: Executor<B>,
    clip_out: NodeId,
    vae_ex: Executor<B>,
    vae_sample: NodeId,
    scaling_factor: f32,
    shift_factor: f32,
    latent_shape: [usize; 4],
    opts: Stage1Options,
    unet: UnetTrainer<B>,
}

impl<B: Backend> Stage1Trainer<B> {
    /// Opens `weights` (a diffusers folder with text_encoder/, vae/, unet/, tokenizer/ and optionally scheduler/),
    /// builds the three graphs for `opts.batch` images of `opts.resolution` and uploads the weights (`mk` makes
    /// one backend per graph).
    pub fn new(mk: impl Fn() -> Result<B>, weights: &Path, opts: Stage1Options) -> Result<Self> {
        let ckpt = SdCheckpoint::open(weights)?;
        let (b, r, dt) = (opts.batch, opts.resolution, opts.dtype);
        if b == 0 {
            return Err(mismatch("stage 1", "the batch must be >= 1"));
        }
        let tok_dir = ckpt.tokenizer_dir().ok_or_else(|| Error::Weights {
            path: weights.join("tokenizer"),
            msg: "no tokenizer/ folder (vocab.json + merges.txt or tokenizer.json)".into(),
        })?;
        let tokenizer = ClipTokenizer::from_folder(&tok_dir)?;
        let vocab = ckpt.text_config.vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::Weights {
                path: tok_dir,
                msg: format!("{} tokens, but the text encoder has vocab_size {vocab}", tokenizer.vocab_size()),
            });
        }
        let ucfg = ckpt.unet_config()?;
        let width = ckpt.text_config.hidden_size;
        if ucfg.cross_attention_dim != width {
            return Err(Error::Weights {
                path: weights.join("unet/config.json"),
                msg: format!("cross_attention_dim {} != the text encoder's hidden_size {width}", ucfg.cross_attention_dim),
            });
        }
        let vcfg = ckpt.vae_config.clone();
        let f = vcfg.downscale();
        let div = f << (ucfg.block_out_channels.len() - 1);
        if r == 0 || r % div != 0 {
            return Err(mismatch("resolution", format!("{r} must be a positive multiple of {div} (VAE downscale {f} x UNet levels)")));
        }
        if vcfg.latent_channels != ucfg.in_channels {
            return Err(Error::Weights {
                path: weights.join("unet/config.json"),
                msg: format!("in_channels {} != the VAE's latent_channels {}", ucfg.in_channels, vcfg.latent_channels),
            });
        }
        let schedule = NoiseSchedule::from_checkpoint(&ckpt)?;

        let clip = ClipTextModel::new(ckpt.text_config.clone(), b, dt)?;
        let cg = clip.build(false)?;
        let cw = ckpt.component(Component::TextEncoder)?.load_for(&cg.graph)?;
        let clip_ex = Executor::new(mk()?, cg.graph, &cw).map_err(|e| e.building("text encoder graph"))?;
        drop(cw);

        let vae = Vae::new(vcfg.clone(), dt)?;
        let vg = vae.encode_graph(b, r, r, false)?;
        let vw = ckpt.component(Component::Vae)?.load_for(&vg.graph)?;
        let vae_ex = Executor::new(mk()?, vg.graph, &vw).map_err(|e| e.building("VAE encoder graph"))?;
        drop(vw);

        let side = r / f;
        let shape = TrainShape { batch: b, height: side, width: side, context_len: clip.seq, dtype: dt };
        let ug = build_train_graph(&ucfg, &shape)?;
        let uw = ckpt.component(Component::Unet)?.load_for(&ug.graph)?;
        let mut unet = UnetTrainer::with_graph(mk()?, &ucfg, ug, &uw, shape, schedule, opts.adamw).map_err(|e| e.building("UNet training graph"))?;
        unet.max_grad_norm = opts.max_grad_norm;
        Ok(Stage1Trainer {
            tokenizer,
            clip,
            clip_ex,
            clip_out: cg.last_hidden_state,
            vae_ex,
            vae_sample: vg.sample,
            scaling_factor: vcfg.scaling_factor,
            shift_factor: vcfg.shift_factor.unwrap_or(0.0),
            latent_shape: [b, side, side, vcfg.latent_channels],
            opts,
            unet,
        })
    }

    pub fn unet(&self) -> &UnetTrainer<B> {
        &self.unet
    }
    pub fn unet_mut(&mut self) -> &mut UnetTrainer<B> {
        &mut self.unet
    }
    pub fn options(&self) -> &Stage1Options {
        &self.opts
    }
    /// `[B, h, w, C]` of the latents.
    pub fn latent_shape(&self) -> [usize; 4] {
        self.latent_shape
    }

    /// The random draws of one step from `rng`.
    pub fn draw(&self, rng: &mut Rng) -> StepDraws {
        let [b, h, w, c] = self.latent_shape;
        StepDraws::draw(rng, b, h * w * c, self.unet.schedule.num_train_timesteps())
    }

    /// CLIP `last_hidden_state` of the prompts, `[B, 77, D]`. A prompt over 77 tokens is an error.
    pub fn encode_prompts<S: AsRef<str>>(&mut self, prompts: &[S]) -> Result<HostTensor> {
        if prompts.len() != self.opts.batch {
            return Err(mismatch("prompts", format!("{} prompts for a batch of {}", prompts.len(), self.opts.batch)));
        }
        let mut ids = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let e = self.tokenizer.encode(p.as_ref())?;
            if e.truncated {
                return Err(mismatch(
                    format!("prompt {i} ({:?})", p.as_ref()),
                    format!("over 77 tokens ({} tokens past the limit, from {:?})", e.dropped_tokens, e.dropped_text),
                ));
            }
            ids.push(e.ids);
        }
        let feed = self.clip.inputs(&ids)?;
        let feed: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
        self.clip_ex.run(&feed)?;
        self.clip_ex.get(self.clip_out)
    }

    /// Scaled latents (NHWC values) of `images` `[B, R, R, 3]` in [-1, 1]: the posterior sample with
    /// `posterior_noise`, `(sample - shift_factor) * scaling_factor`.
    pub fn encode_images(&mut self, images: &HostTensor, posterior_noise: &[f32]) -> Result<Vec<f32>> {
        let (b, r) = (self.opts.batch, self.opts.resolution);
        if images.shape != [b, r, r, 3] {
            return Err(mismatch("images", format!("want [{b}, {r}, {r}, 3], got {:?}", images.shape)));
        }
        let vals = images.to_f32();
        if let Some((i, v)) = vals.iter().enumerate().find(|(_, v)| !(v.abs() <= 1.0)) {
            return Err(mismatch("images", format!("value {v} at element {i} is outside [-1, 1]")));
        }
        let n: usize = self.latent_shape.iter().product();
        if posterior_noise.len() != n {
            return Err(mismatch("posterior noise", format!("want {n} values, got {}", posterior_noise.len())));
        }
        let dt = self.opts.dtype;
        let img = if images.dtype == dt { images.clone() } else { HostTensor::from_f32(&images.shape, dt, &vals)? };
        let noise = HostTensor::from_f32(&self.latent_shape, dt, posterior_noise)?;
        self.vae_ex.run(&[(Vae::IMAGE, &img), (Vae::NOISE, &noise)])?;
        let z = self.vae_ex.get(self.vae_sample)?.to_f32();
        Ok(z.iter().map(|v| (v - self.shift_factor) * self.scaling_factor).collect())
    }

    /// One step with the caller's random draws.
    pub fn step_with<S: AsRef<str>>(&mut self, images: &HostTensor, prompts: &[S], draws: &StepDraws) -> Result<StepStats> {
        let ctx = self.encode_prompts(prompts)?;
        let latents = self.encode_images(images, &draws.posterior_noise)?;
        self.unet.step(&latents, &ctx, &draws.timesteps, &draws.noise)
    }

    /// One step with draws from `rng` (reproducible for a given seed).
    pub fn step<S: AsRef<str>>(&mut self, images: &HostTensor, prompts: &[S], rng: &mut Rng) -> Result<StepStats> {
        let draws = self.draw(rng);
        self.step_with(images, prompts, &draws)
    }
}
