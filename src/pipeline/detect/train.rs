//! `instagen detect train`: Faster R-CNN training on the generic loop (`runtime::train_loop`: loader threads,
//! checkpoints, resume, metrics, curves).
//!
//! One step is the two-stage graph of one (batch, padded height, padded width), built on first use and cached
//! (static shapes; the executors share one set of device parameters, so one `Trainer` updates them all):
//! stage 0 = backbone + FPN + RPN head + RPN losses (their inputs, `rpn::rpn_loss_feed`, depend only on the
//! anchors, the ground truth and the source's `rpn_weight`); the host reads the objectness and deltas, decodes
//! the training proposals and samples the RoIs with their targets (`roi_heads::roi_targets`, the source's class
//! mask); stage 1 = box head + RoI losses and the backward of the four losses' sum through both stages. SGD with
//! momentum and weight decay on every trainable tensor (torchvision's reference), the rate from
//! `RunConfig::lr_at` (warmup, then steps at the milestone epochs). Trainable: torchvision's
//! `trainable_backbone_layers` of the body, the FPN, the RPN and the box head; frozen norms never.
//!
//! At the end `RUN/model.safetensors` holds every parameter under torchvision's key names and `RUN/labels.json`
//! the label map (category id per label index), which `instagen detect infer --weights --labels` read, and
//! `RUN/model.json` the detector's whole config (`FasterRcnnConfig`: anchors, proposal counts, RoI sampling,
//! detections per image, transform), which `detect infer` reads from the weights' folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;
use crate::data::{Batch, Dataset, LoaderConfig};
use crate::error::{Error, Result};
use crate::graph::autodiff::param_grads_for;
use crate::graph::plan::Plan;
use crate::graph::{Graph, NodeId};
use crate::models::detector::backbone::{self, BackboneConfig, STRIDES};
use crate::models::detector::faster_rcnn::{build_eval_graph, FasterRcnnConfig, IMAGES};
use crate::models::detector::roi_heads::{self, box_head, roi_losses, rois_input};
use crate::models::detector::rpn::{self, rpn_head, rpn_loss_feed, rpn_losses, RpnHead};
use crate::models::detector::weights::{self, Layout};
use crate::optim::{Algorithm, ParamGroup, SgdConfig, TrainConfig};
use crate::params::ParamStore;
use crate::runtime::params::DeviceParams;
use crate::runtime::train_loop::{train, LoopConfig, StepOutput, TrainState, TrainTask};
use crate::runtime::{Executor, Trainer, TrainerState};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

use super::config::RunConfig;
use super::data::{DetectDataset, DetectSample};

/// The four losses, in the order they are reported.
pub const LOSS_NAMES: [&str; 4] = ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"];

/// The training graph of one input shape.
pub struct TrainGraph {
    pub g: Graph,
    pub rpn: RpnHead,
    /// `LOSS_NAMES` order.
    pub losses: [NodeId; 4],
    pub total: NodeId,
    /// (trainable parameter, its gradient node).
    pub grads: Vec<(String, NodeId)>,
    pub batch: usize,
    pub padded: (usize, usize),
}

/// Whether parameter `name` trains: the backbone's rule, and every RPN and box-head tensor.
pub fn is_trainable(cfg: &BackboneConfig, name: &str) -> bool {
    backbone::is_trainable(cfg, name) || name.starts_with("rpn.") || name.starts_with("roi_heads.")
}

/// Builds the two-stage training graph for `batch` images padded to `padded` (h, w).
pub fn build_train_graph(cfg: &FasterRcnnConfig, batch: usize, padded: (usize, usize)) -> Result<TrainGraph> {
    let mut g = Graph::new();
    let x = g.input(IMAGES, &[batch, padded.0, padded.1, 3], DType::F32)?;
    let feats = backbone::build_backbone(&mut g, &cfg.backbone, x)?;
    let rpn = rpn_head(&mut g, &cfg.rpn, &feats.levels)?;
    g.mark_stage_output(rpn.objectness);
    g.mark_stage_output(rpn.deltas);
    let rl = rpn_losses(&mut g, &rpn, 0)?;
    let rois = rois_input(&mut g, batch * cfg.roi_heads.batch_size_per_image, 1)?;
    let boxes = box_head(&mut g, &cfg.roi_heads, &feats.levels[..4], &STRIDES[..4], rois)?;
    let ol = roi_losses(&mut g, &boxes, batch, 1)?;
    let losses = [rl.objectness, rl.box_reg, ol.classifier, ol.box_reg];
    let mut total = losses[0];
    for &l in &losses[1..] {
        total = g.add(total, l)?;
    }
    let bb = cfg.backbone.clone();
    let grads = param_grads_for(&mut g, total, |n| is_trainable(&bb, n))?;
    for &l in &losses {
        g.mark_output(l);
    }
    Ok(TrainGraph { g, rpn, losses, total, grads, batch, padded })
}

/// torchvision's initialisation of the heads: RPN convs normal(std 0.01), bias 0; the box head's and
/// predictor's `nn.Linear` default (weight and bias uniform in +-1/sqrt(fan_in)).
pub fn init_heads(g: &Graph, seed: u64) -> Result<ParamStore> {
    let mut rng = Rng::new(seed ^ 0x4845_4144_5321);
    let mut store = ParamStore::new();
    let shapes: HashMap<String, Vec<usize>> = g.params().into_iter().map(|(id, n)| (n.to_string(), g.node(id).shape.clone())).collect();
    for (id, name) in g.params() {
        let n = g.node(id);
        let numel = n.numel();
        let vals = if name.starts_with("rpn.") {
            if name.ends_with(".bias") { vec![0.0; numel] } else { rng.normal_vec(numel, 0.01) }
        } else if name.starts_with("roi_heads.") {
            let w = format!("{}.weight", name.rsplit_once('.').map_or(name, |p| p.0));
            let fan_in = shapes.get(&w).and_then(|s| s.get(1)).copied().ok_or_else(|| Error::Other(format!("init: no 2-D weight for '{name}'")))?;
            let b = 1.0 / (fan_in as f32).sqrt();
            rng.uniform_vec(numel, -b, b)
        } else {
            continue;
        };
        store.insert(name, HostTensor::from_f32(&n.shape, n.dtype, &vals)?);
    }
    Ok(store)
}

/// The detector's config, written next to its weights (`RUN/model.json`) and read back by `detect infer`.
pub const MODEL_JSON: &str = "model.json";

/// The model config a run config implies (`num_logits` classes incl. background).
pub fn model_config(run: &RunConfig, num_logits: usize) -> FasterRcnnConfig {
    run.model.detector(num_logits, &run.model.min_size)
}

/// The starting parameters: `model.weights` (a whole detector), else torchvision's initialisation with the
/// body from `model.backbone_weights` (ImageNet ResNet layout) when given.
pub fn initial_params(run: &RunConfig, cfg: &FasterRcnnConfig) -> Result<ParamStore> {
    let probe = build_eval_graph(cfg, 1, (64, 64))?;
    if let Some(w) = &run.model.weights {
        return weights::load(w, &probe.g, Layout::Detector);
    }
    let mut store = backbone::init_params(&probe.g, run.seed)?;
    for (name, t) in init_heads(&probe.g, run.seed)?.iter() {
        store.insert(name, t.clone());
    }
    if let Some(w) = &run.model.backbone_weights {
        for (name, t) in weights::load(w, &probe.g, Layout::ImagenetResnet)?.iter() {
            store.insert(name, t.clone());
        }
    }
    Ok(store)
}

/// What one step measured.
#[derive(Clone, Debug)]
pub struct DetectStep {
    /// `LOSS_NAMES` order.
    pub losses: [f32; 4],
    pub grad_norm: f32,
    pub skipped: bool,
}

/// The detector's trainer: shared device parameters, SGD state, a graph + executor per input shape.
pub struct DetectTrainer<B: Backend> {
    pub cfg: FasterRcnnConfig,
    dev: DeviceParams<B>,
    trainer: Trainer<B>,
    cache: HashMap<(usize, usize, usize), (TrainGraph, Executor<B>)>,
    /// Shapes in the order they were built (the oldest is dropped past `MAX_GRAPHS`).
    order: Vec<(usize, usize, usize)>,
}

/// Executors kept at once (each holds its activation arena).
const MAX_GRAPHS: usize = 4;

impl<B: Backend> DetectTrainer<B> {
    pub fn new(backend: B, cfg: FasterRcnnConfig, store: &ParamStore, momentum: f32, weight_decay: f32) -> Result<Self> {
        cfg.validate()?;
        let dev = DeviceParams::upload(backend, store)?;
        let probe = build_eval_graph(&cfg, 1, (64, 64))?;
        let trainable: Vec<String> = probe.g.params().into_iter().map(|(_, n)| n.to_string()).filter(|n| is_trainable(&cfg.backbone, n)).collect();
        let sgd = SgdConfig { lr: 0.0, momentum, weight_decay, ..SgdConfig::default() };
        let tc = TrainConfig { algorithm: Algorithm::Sgd(sgd), ..TrainConfig::default() };
        let trainer = Trainer::new(&dev, &trainable, tc, |_, _| ParamGroup::default_for(weight_decay))?;
        Ok(DetectTrainer { cfg, dev, trainer, cache: HashMap::new(), order: Vec::new() })
    }

    /// One SGD step at rate `lr` on a batch of samples (boxes in the transformed image's pixels).
    pub fn step(&mut self, samples: &[DetectSample], lr: f32, rng: &mut Rng) -> Result<DetectStep> {
        if samples.is_empty() {
            return Err(Error::Other("detect train: an empty batch".into()));
        }
        let prepared: Vec<_> = samples.iter().map(|s| s.image.clone()).collect();
        let images = self.cfg.transform.batch(&prepared)?;
        let sh = &images.tensor.shape;
        let key = (sh[0], sh[1], sh[2]);
        if !self.cache.contains_key(&key) {
            if self.order.len() >= MAX_GRAPHS {
                let old = self.order.remove(0);
                self.cache.remove(&old);
            }
            let tg = build_train_graph(&self.cfg, key.0, (key.1, key.2))?;
            let plan = Plan::new(&tg.g);
            let ex = Executor::with_params(tg.g.clone(), plan, &self.dev)?;
            self.cache.insert(key, (tg, ex));
            self.order.push(key);
        }
        let (tg, ex) = self.cache.get_mut(&key).expect("inserted");
        let gt: Vec<Vec<[f32; 4]>> = samples.iter().map(|s| s.boxes.clone()).collect();
        let gt_labels: Vec<Vec<i64>> = samples.iter().map(|s| s.labels.clone()).collect();
        let rpn_weight: Vec<f32> = samples.iter().map(|s| s.rpn_weight).collect();
        let masks: Vec<Vec<f32>> = samples.iter().map(|s| s.class_mask.clone()).collect();
        let anchors = tg.rpn.anchors(&self.cfg.rpn, tg.padded)?;
        let rf = rpn_loss_feed(&self.cfg.rpn, &anchors, &gt, &rpn_weight, None, rng)?;
        let mut feed: Vec<(&str, &HostTensor)> = vec![(IMAGES, &images.tensor)];
        feed.extend(rf.feed.iter().map(|(n, t)| (n.as_str(), t)));
        ex.run_stage(0, &feed)?;
        let obj = ex.get(tg.rpn.objectness)?.to_f32();
        let del = ex.get(tg.rpn.deltas)?.to_f32();
        let props = rpn::proposals(&self.cfg.rpn, true, &anchors, &obj, &del, &images.image_sizes)?;
        let t = roi_heads::roi_targets(&self.cfg.roi_heads, &props, &gt, &gt_labels, Some(&masks), None, rng)?;
        let mut feed: Vec<(&str, &HostTensor)> = vec![(roi_heads::ROI_ROIS, &t.rois)];
        feed.extend(t.feed.iter().map(|(n, t)| (n.as_str(), t)));
        ex.run_stage(1, &feed)?;
        let mut losses = [0f32; 4];
        for (l, &n) in losses.iter_mut().zip(&tg.losses) {
            *l = ex.get(n)?.to_f32()[0];
        }
        let st = self.trainer.step(ex, &tg.grads, lr)?;
        Ok(DetectStep { losses, grad_norm: st.grad_norm, skipped: st.skipped })
    }

    /// Every parameter (torchvision's names).
    pub fn params(&self) -> Result<ParamStore> {
        self.dev.download()
    }

    pub fn export_state(&self) -> Result<(ParamStore, TrainerState)> {
        self.trainer.export_state()
    }

    /// Parameters and optimiser state back (a checkpoint).
    pub fn load_state(&mut self, params: &ParamStore, tensors: &ParamStore, state: &TrainerState) -> Result<()> {
        for (name, _) in self.dev.slots() {
            let t = params.get(&name).ok_or_else(|| Error::Other(format!("parameter '{name}' missing from the saved parameters")))?;
            self.dev.set(&name, t)?;
        }
        self.trainer.load_state(tensors, state)
    }
}

/// Everything `instagen detect train` takes.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub config: PathBuf,
    pub out: PathBuf,
    pub resume: bool,
    /// Total steps (overrides the config's `steps` / `epochs`).
    pub steps: Option<u64>,
    pub save_every: u64,
    pub keep: usize,
    pub workers: usize,
    pub progress: bool,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub run_dir: PathBuf,
    pub weights: PathBuf,
    pub labels: PathBuf,
    pub resumed_from: u64,
    pub steps: u64,
    pub samples: usize,
    /// The last step's losses (`LOSS_NAMES` order).
    pub last_losses: Vec<(String, f32)>,
}

impl std::fmt::Display for TrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.resumed_from > 0 {
            writeln!(f, "resumed from step {}", self.resumed_from)?;
        }
        let l: Vec<String> = self.last_losses.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
        writeln!(f, "{} steps ({} samples per epoch); last step: {}", self.steps, self.samples, l.join(", "))?;
        writeln!(f, "run folder {} (checkpoints/, metrics.jsonl, loss.png, lr.png)", self.run_dir.display())?;
        writeln!(f, "weights {} labels {}", self.weights.display(), self.labels.display())
    }
}

struct DetectTask<B: Backend> {
    model: DetectTrainer<B>,
    run: RunConfig,
    steps_per_epoch: u64,
}


impl<B: Backend> TrainTask for DetectTask<B> {
    type Item = DetectSample;

    fn step(&mut self, step: u64, batch: Batch<DetectSample>, rng: &mut Rng) -> Result<StepOutput> {
        let lr = self.run.lr_at(step, self.steps_per_epoch) as f32;
        let st = self.model.step(&batch.items, lr, rng)?;
        Ok(StepOutput {
            losses: LOSS_NAMES.iter().map(|n| n.to_string()).zip(st.losses).collect(),
            lr,
            grad_norm: Some(st.grad_norm),
            loss_scale: None,
            skipped: st.skipped,
            samples: batch.items.len(),
        })
    }

    fn save_state(&mut self) -> Result<TrainState> {
        let (optim, state) = self.model.export_state()?;
        Ok(TrainState {
            params: self.model.params()?,
            optim,
            ema: None,
            loss_scale: None,
            scalars: TrainState::trainer_scalars(&state)?,
        })
    }

    fn load_state(&mut self, s: TrainState) -> Result<()> {
        let state = s.trainer_state()?;
        self.model.load_state(&s.params, &s.optim, &state)
    }
}

/// The run's settings a resume must share (all of the config but the step count).
fn fingerprint(run: &RunConfig) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(run).map_err(|e| Error::Other(format!("run config: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("steps");
        o.insert("stage".into(), "detect".into());
    }
    Ok(v)
}

/// `instagen detect train` on the backend `mk` makes.
pub fn run<B: Backend>(o: &TrainOptions, mk: impl Fn() -> Result<B>) -> Result<TrainReport> {
    let bad = |what: &str, msg: &str| Err(Error::Mismatch { what: what.into(), msg: msg.into() });
    if o.save_every == 0 {
        return bad("--save-every", "must be at least 1");
    }
    if o.keep == 0 {
        return bad("--keep", "must be at least 1");
    }
    if o.steps == Some(0) {
        return bad("--steps", "must be at least 1");
    }
    let run = RunConfig::load(&o.config)?;
    let dataset = Arc::new(DetectDataset::open(&run)?);
    let per_epoch = (dataset.len() / run.batch) as u64;
    if per_epoch == 0 {
        return Err(Error::Other(format!(
            "{}: batch {} is larger than the {} training samples",
            o.config.display(),
            run.batch,
            dataset.len()
        )));
    }
    let steps = o.steps.or(run.steps).unwrap_or(run.epochs * per_epoch);
    let cfg = model_config(&run, dataset.labels.num_logits());
    let store = initial_params(&run, &cfg)?;
    let model = DetectTrainer::new(mk()?, cfg, &store, run.optimizer.momentum, run.optimizer.weight_decay)?;
    drop(store);
    let mut task = DetectTask { model, run: run.clone(), steps_per_epoch: per_epoch };
    let mut loader = LoaderConfig::new(run.batch, o.workers, run.seed);
    loader.lenient = run.lenient;
    let lc = LoopConfig {
        run_dir: o.out.clone(),
        steps,
        save_every: o.save_every,
        keep: o.keep,
        resume: o.resume,
        seed: run.seed,
        config: fingerprint(&run)?,
        may_differ: Vec::new(),
        progress: o.progress,
    };
    let report = train(dataset.clone(), loader, &mut task, &lc)?;
    let weights = o.out.join("model.safetensors");
    let labels = o.out.join("labels.json");
    save_model(&task.model.params()?, &weights)?;
    let ids = serde_json::to_string(&dataset.labels.ids).map_err(|e| Error::Other(format!("labels: {e}")))?;
    std::fs::write(&labels, ids).map_err(|e| Error::io(&labels, e))?;
    // The settings the weights do not carry (anchors, proposal counts, detections per image, transform).
    let model_json = o.out.join(MODEL_JSON);
    let text = serde_json::to_string_pretty(&task.model.cfg).map_err(|e| Error::Other(format!("model config: {e}")))?;
    crate::util::files::write_atomic(&model_json, text.as_bytes()).map_err(|e| Error::io(&model_json, e))?;
    let last_losses = report
        .last
        .as_ref()
        .map(|r| LOSS_NAMES.iter().filter_map(|n| r.losses.get(*n).copied().flatten().map(|v| (n.to_string(), v))).collect())
        .unwrap_or_default();
    Ok(TrainReport { run_dir: o.out.clone(), weights, labels, resumed_from: report.resumed_from, steps: report.steps, samples: dataset.len(), last_losses })
}

/// Writes `params` to `path` through a temporary sibling (never half written).
fn save_model(params: &ParamStore, path: &Path) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    params.save_safetensors(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
