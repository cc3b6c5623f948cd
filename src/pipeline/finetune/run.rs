//! `instagen finetune`: InstaGen stage 1 from end to end. The COCO crop dataset (`data::crops`) feeds the
//! generic training loop (`runtime::train_loop`: loader threads, checkpoints, resume, metrics, curves), whose
//! step is [`Stage1Trainer`] (frozen VAE + CLIP, noise-prediction MSE, AdamW on the UNet, EMA on the device).
//! At the end `RUN/model/` is a complete diffusers folder with the EMA UNet and the untouched text encoder, VAE,
//! tokenizer and scheduler of the source, which `instagen sample` loads as it is.
//! `--data-mode captions` trains on whole captioned images instead (`pipeline::sdtrain::data::CaptionSet`: the
//! world corpus, training the small SD's UNet from scratch) with the same step, loop and outputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, BackendKind};
use crate::data::crops::{Categories, CropDataset, CropOptions, CropSample};
use crate::data::{stack, Batch, Dataset, LoaderConfig};
use crate::pipeline::sdtrain::data::CaptionSet;
use crate::error::{Error, Result};
use crate::models::weights::Component;
use crate::optim::AdamWConfig;
use crate::params::ParamStore;
use crate::runtime::train_loop::{train, LoopConfig, StepOutput, TrainState, TrainTask};
use crate::tensor::DType;
use crate::util::Rng;

use super::step::{Stage1Options, Stage1Trainer};

/// Everything `instagen finetune` takes.
#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    /// The SD diffusers folder to start from (text_encoder/, vae/, unet/, tokenizer/, scheduler/).
    pub weights: PathBuf,
    /// COCO `instances_*.json`.
    pub data: PathBuf,
    /// The folder of its images.
    pub images: PathBuf,
    /// The run folder.
    pub out: PathBuf,
    /// `base`, `all` or a comma list of names.
    pub categories: String,
    /// Total optimiser steps; else `epochs` times the batches of one epoch.
    pub steps: Option<u64>,
    pub epochs: Option<u64>,
    pub batch: usize,
    pub lr: f32,
    pub ema_decay: f32,
    pub resolution: usize,
    pub seed: u64,
    pub save_every: u64,
    pub keep: usize,
    pub resume: bool,
    pub workers: usize,
    pub lenient: bool,
    pub dtype: DType,
    pub max_grad_norm: Option<f32>,
    /// What a sample is: a detection crop (stage 1) or a whole captioned image (training from scratch).
    pub data_mode: DataMode,
    /// Captions mode: the probability of training a sample on the empty prompt (0: never).
    pub caption_dropout: f32,
}

/// The samples `instagen finetune` trains on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataMode {
    /// InstaGen stage 1: crops around the boxes of a COCO detection set, prompts from their category names.
    #[default]
    Crops,
    /// Whole images of the size `--resolution`, prompts from each image's `caption` field
    /// (`pipeline::sdtrain::data::CaptionSet`: the world corpus); `--categories` does not apply.
    Captions,
}

impl FinetuneOptions {
    /// The settings a resumed run must share with the run it continues (the step count, the backend, the
    /// worker count and the checkpoint cadence may change).
    fn fingerprint(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "stage": "finetune",
            "weights": self.weights.display().to_string(),
            "data": self.data.display().to_string(),
            "images": self.images.display().to_string(),
            "categories": self.categories,
            "batch": self.batch,
            // f32 settings as their shortest decimal text: exact through the JSON round trip of a checkpoint.
            "lr": self.lr.to_string(),
            "ema_decay": self.ema_decay.to_string(),
            "resolution": self.resolution,
            "seed": self.seed,
            "lenient": self.lenient,
            "dtype": self.dtype.to_string(),
            "max_grad_norm": self.max_grad_norm.map(|m| m.to_string()),
        });
        // Only for the newer mode, so crop runs resume from checkpoints written before it existed.
        if self.data_mode == DataMode::Captions {
            v["data_mode"] = serde_json::json!("captions");
            v["caption_dropout"] = serde_json::json!(self.caption_dropout.to_string());
        }
        v
    }
}

/// The dataset of either mode.
enum FinetuneData {
    Crops(Box<CropDataset>),
    Captions(CaptionSet),
}

impl Dataset for FinetuneData {
    type Item = CropSample;
    fn len(&self) -> usize {
        match self {
            FinetuneData::Crops(d) => d.len(),
            FinetuneData::Captions(d) => d.len(),
        }
    }
    fn get(&self, index: usize, rng: &mut Rng) -> Result<CropSample> {
        match self {
            FinetuneData::Crops(d) => d.get(index, rng),
            FinetuneData::Captions(d) => d.get(index, rng),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct FinetuneReport {
    pub run_dir: PathBuf,
    pub model_dir: PathBuf,
    pub resumed_from: u64,
    pub steps: u64,
    pub samples: usize,
    pub last_loss: Option<f32>,
    pub dataset: String,
    pub skipped_samples: u64,
}

impl std::fmt::Display for FinetuneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "finetune: {}", self.dataset)?;
        if self.resumed_from > 0 {
            writeln!(f, "resumed from step {}", self.resumed_from)?;
        }
        let loss = self.last_loss.map_or("-".to_string(), |l| format!("{l:.6}"));
        writeln!(f, "{} steps ({} samples per epoch), last loss {loss}", self.steps, self.samples)?;
        if self.skipped_samples > 0 {
            writeln!(f, "{} samples skipped (--lenient)", self.skipped_samples)?;
        }
        writeln!(f, "run folder {} (checkpoints/, metrics.jsonl, loss.png, lr.png)", self.run_dir.display())?;
        writeln!(f, "model {} (EMA UNet; load it with `instagen sample --weights {}`)", self.model_dir.display(), self.model_dir.display())
    }
}

/// The loop's side of stage 1: a batch of crops -> one optimiser step.
struct Stage1Task<B: Backend> {
    stage: Stage1Trainer<B>,
    lr: f32,
}


impl<B: Backend> TrainTask for Stage1Task<B> {
    type Item = CropSample;

    fn step(&mut self, _step: u64, batch: Batch<CropSample>, rng: &mut Rng) -> Result<StepOutput> {
        let images: Vec<_> = batch.items.iter().map(|s| s.image.clone()).collect();
        let images = stack(&images)?;
        let prompts: Vec<&str> = batch.items.iter().map(|s| s.prompt.as_str()).collect();
        let st = self.stage.step(&images, &prompts, rng)?;
        Ok(StepOutput {
            losses: vec![("mse".into(), st.loss)],
            lr: self.lr,
            grad_norm: Some(st.grad_norm),
            loss_scale: st.loss_scale,
            skipped: st.skipped,
            samples: prompts.len(),
        })
    }

    fn save_state(&mut self) -> Result<TrainState> {
        let unet = self.stage.unet();
        let (tensors, state) = unet.export_state()?;
        let (mut optim, mut ema) = (ParamStore::new(), ParamStore::new());
        for (name, t) in tensors.iter() {
            if name.starts_with("ema/") { &mut ema } else { &mut optim }.insert(name, t.clone());
        }
        Ok(TrainState {
            params: unet.params()?,
            optim,
            ema: Some(ema),
            loss_scale: None,
            scalars: TrainState::trainer_scalars(&state)?,
        })
    }

    fn load_state(&mut self, s: TrainState) -> Result<()> {
        let state = s.trainer_state()?;
        let mut tensors = s.optim;
        for (name, t) in s.ema.iter().flat_map(|e| e.iter()) {
            tensors.insert(name, t.clone());
        }
        self.stage.unet_mut().load_state(&s.params, &tensors, &state)
    }
}

fn check(o: &FinetuneOptions) -> Result<()> {
    let bad = |what: &str, msg: String| Err(Error::Mismatch { what: what.into(), msg });
    if o.batch == 0 {
        return bad("--batch", "must be at least 1".into());
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return bad("--lr", format!("{} is not a positive number", o.lr));
    }
    if !(o.ema_decay > 0.0 && o.ema_decay < 1.0) {
        return bad("--ema-decay", format!("{} is not in (0, 1)", o.ema_decay));
    }
    if o.save_every == 0 {
        return bad("--save-every", "must be at least 1".into());
    }
    if o.keep == 0 {
        return bad("--keep", "must be at least 1".into());
    }
    if o.steps == Some(0) || o.epochs == Some(0) {
        return bad("--steps / --epochs", "must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&o.caption_dropout) || (o.caption_dropout > 0.0 && o.data_mode != DataMode::Captions) {
        return bad("--caption-dropout", format!("{} is not a probability in [0, 1] (captions mode only)", o.caption_dropout));
    }
    Ok(())
}

/// Run stage 1 on the backend `kind`.
pub fn run(kind: BackendKind, o: &FinetuneOptions) -> Result<FinetuneReport> {
    crate::with_backend!(kind, |mk| run_with(mk, o))
}

pub fn run_with<B: Backend>(mk: impl Fn() -> Result<B>, o: &FinetuneOptions) -> Result<FinetuneReport> {
    check(o)?;
    let (dataset, summary) = match o.data_mode {
        DataMode::Crops => {
            let crop_opts = CropOptions { resolution: o.resolution, categories: Categories::parse(&o.categories), lenient: o.lenient };
            let d = CropDataset::open(&o.data, &o.images, &crop_opts)?;
            let summary = d.summary();
            if o.lenient && !summary.is_clean() {
                eprintln!("{summary}");
            }
            let line = summary.to_string().lines().next().unwrap_or_default().to_string();
            (FinetuneData::Crops(Box::new(d)), line)
        }
        DataMode::Captions => {
            let d = CaptionSet::open(&o.data, &o.images, o.resolution, true, true)?.with_caption_dropout(o.caption_dropout)?;
            let line = format!("{} captioned images of {}", d.len(), o.data.display());
            (FinetuneData::Captions(d), line)
        }
    };
    let dataset = Arc::new(dataset);
    let per_epoch = dataset.len() / o.batch;
    if per_epoch == 0 {
        return Err(Error::Mismatch {
            what: "--batch".into(),
            msg: format!("{} is larger than the {} usable crops of {}", o.batch, dataset.len(), o.data.display()),
        });
    }
    let steps = match (o.steps, o.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e.checked_mul(per_epoch as u64).ok_or_else(|| Error::Mismatch {
            what: "--epochs".into(),
            msg: format!("{e} epochs of {per_epoch} steps overflow the step count"),
        })?,
        (None, None) => 6 * per_epoch as u64,
    };
    let stage_opts = Stage1Options {
        batch: o.batch,
        resolution: o.resolution,
        dtype: o.dtype,
        adamw: AdamWConfig { lr: o.lr, ..AdamWConfig::default() },
        max_grad_norm: o.max_grad_norm,
    };
    let mut stage = Stage1Trainer::new(&mk, &o.weights, stage_opts)?;
    stage.unet_mut().enable_ema(o.ema_decay)?;
    let mut task = Stage1Task { stage, lr: o.lr };

    let mut loader = LoaderConfig::new(o.batch, o.workers, o.seed);
    loader.lenient = o.lenient;
    let cfg = LoopConfig {
        run_dir: o.out.clone(),
        steps,
        save_every: o.save_every,
        keep: o.keep,
        resume: o.resume,
        seed: o.seed,
        config: o.fingerprint(),
        may_differ: Vec::new(),
        progress: true,
    };
    let report = train(dataset.clone(), loader, &mut task, &cfg)?;
    let model_dir = o.out.join("model");
    export_model(&o.weights, &task.stage.unet().ema_params()?, &model_dir)?;
    Ok(FinetuneReport {
        run_dir: o.out.clone(),
        model_dir,
        resumed_from: report.resumed_from,
        steps: report.steps,
        samples: dataset.len(),
        last_loss: report.last.as_ref().and_then(|r| r.losses.get("mse").copied().flatten()),
        dataset: summary,
        skipped_samples: report.skipped_samples,
    })
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source: e }
}

/// Write `dst` as a complete diffusers folder: `unet/` holds `unet` (diffusers key names) and the source's UNet
/// config; every other entry of `src` (text_encoder/, vae/, tokenizer/, scheduler/, model_index.json, ...) is
/// copied untouched (hard-linked where the file system allows). Written to a temporary sibling and renamed, so
/// `dst` is never half written.
pub fn export_model(src: &Path, unet: &ParamStore, dst: &Path) -> Result<()> {
    let cfg = src.join("unet/config.json");
    let text = crate::util::files::read_text(&cfg, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| io_err(&cfg, e))?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Weights { path: cfg.clone(), msg: e.to_string() })?;
    export_component(src, Component::Unet, unet, &config, dst)
}

/// [`export_model`] for any component: `dst` is `src` with `component/` replaced by `weights` (diffusers key
/// names, saved under the component's file name) and `config` as its `config.json`.
pub fn export_component(src: &Path, component: Component, weights: &ParamStore, config: &serde_json::Value, dst: &Path) -> Result<()> {
    let sub = component.subfolder();
    let parent = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dst.file_name().map_or("model".into(), |n| n.to_string_lossy().to_string());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::create_dir_all(tmp.join(sub)).map_err(|e| io_err(&tmp, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| io_err(src, e))? {
        let entry = entry.map_err(|e| io_err(src, e))?;
        if entry.file_name() != sub {
            copy_tree(&entry.path(), &tmp.join(entry.file_name()))?;
        }
    }
    let cfg_path = tmp.join(sub).join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::Other(format!("{}: {e}", cfg_path.display())))?;
    std::fs::write(&cfg_path, format!("{text}\n")).map_err(|e| io_err(&cfg_path, e))?;
    weights.save_safetensors(&tmp.join(sub).join(component.file_name()))?;
    if dst.exists() {
        std::fs::remove_dir_all(dst).map_err(|e| io_err(dst, e))?;
    }
    std::fs::rename(&tmp, dst).map_err(|e| io_err(dst, e))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::metadata(from).map_err(|e| io_err(from, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| io_err(to, e))?;
        for entry in std::fs::read_dir(from).map_err(|e| io_err(from, e))? {
            let entry = entry.map_err(|e| io_err(from, e))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if std::fs::hard_link(from, to).is_ok() {
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ()).map_err(|e| io_err(from, e))
    }
}
