//! `instagen ground train` (supervised, on base labels) and `instagen ground selftrain` (the mean teacher on novel
//! images), both on the generic training loop (`runtime::train_loop`: checkpoints, resume, metrics, curves).
//!
//! A step: the batch's images -> t=1 features (frozen original SD, or the cache) and text tokens (each image's
//! prompt categories, CLIP name embeddings, zero-padded to the run's token count) -> `GroundingModel::train_step`
//! (forward, matching, losses, gradients) -> `update` with a `runtime::Trainer` (AdamW, weight decay on every
//! tensor, global-norm clipping). The learning rate follows `MultiStep` with one milestone, `--lr-drop-epoch`
//! epochs in (x0.1). Dropout masks are a function of (seed, step), so a resumed run repeats an uninterrupted one.
//!
//! `ground train` also snapshots the whole state at the end of epoch `--teacher-epoch` (6) in
//! `RUN/student-epoch-N/` (a checkpoint folder), where `ground selftrain` starts.
//!
//! Self-training (`ground selftrain --run RUN --novel-dataset DIR`): the student restarts from that snapshot
//! (parameters and AdamW state); its `Trainer` keeps an EMA with decay `--momentum` (0.999), which starts as the
//! student's copy and is updated after every optimiser step: that EMA is the teacher. Each step is a base batch
//! (labels) then a novel batch: novel images are taken in a seeded order, the teacher (no dropout) predicts on
//! them, boxes of the image's novel categories with score > beta (after class-wise NMS 0.5) become targets, images
//! with no kept box are skipped until a batch is full (at most one pass over the novel set per step; a step that
//! finds no full batch does the base update only and says so in its losses). Dropout is in the student only. The
//! run covers epochs `teacher_epoch..epochs` of the base set; the learning-rate schedule continues the base run's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dataset::{GroundImage, GroundSet};
use super::features::{FeatureCache, FeatureExtractor, Features};
use super::head::Head;
use crate::backend::{Backend, BackendKind};
use crate::data::{Batch, Dataset, LoaderConfig};
use crate::error::{Error, Result};
use crate::models::grounding::{pad_text, GroundTargets, GroundingModel, GroundingShape, TextEmbedder};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::weights::{Component, SdCheckpoint};
use crate::optim::{AdamWConfig, Algorithm, ParamGroup, TrainConfig};
use crate::params::ParamStore;
use crate::runtime::checkpoint::{self, Checkpoint, CheckpointState};
use crate::runtime::train_loop::{train, LoopConfig, StepOutput, TrainState, TrainTask};
use crate::runtime::{DeviceParams, Schedule, Trainer};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// Everything `instagen ground train` takes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    /// The ORIGINAL SD diffusers folder (features and name embeddings).
    pub sd: PathBuf,
    pub labels: PathBuf,
    /// The head to start from (`ground init`).
    pub head: PathBuf,
    pub out: PathBuf,
    pub features_cache: Option<PathBuf>,
    pub epochs: u64,
    /// Total steps instead of `epochs` (small runs).
    pub steps: Option<u64>,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    /// The epoch from which the learning rate is x0.1.
    pub lr_drop_epoch: u64,
    /// The epoch whose end is snapshotted for self-training.
    pub teacher_epoch: u64,
    pub seed: u64,
    /// Checkpoint cadence in steps (default: every epoch).
    pub save_every: Option<u64>,
    pub keep: usize,
    pub resume: bool,
    pub workers: usize,
    /// Storage dtype of the frozen SD graphs (the features).
    #[serde(with = "dtype_name")]
    pub dtype: DType,
}

/// A `DType` as its name in JSON.
mod dtype_name {
    use crate::tensor::DType;
    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.name())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let s = String::deserialize(d)?;
        [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| serde::de::Error::custom(format!("dtype {s:?} is not f32, f16 or bf16")))
    }
}

impl TrainOptions {
    /// InstaGen's settings (AdamW 1e-4, weight decay 1e-4, clip 0.1, 12 epochs, x0.1 at epoch 11, batch 32).
    pub fn new(sd: &Path, labels: &Path, head: &Path, out: &Path) -> Self {
        TrainOptions {
            sd: sd.to_path_buf(),
            labels: labels.to_path_buf(),
            head: head.to_path_buf(),
            out: out.to_path_buf(),
            features_cache: None,
            epochs: 12,
            steps: None,
            batch: 32,
            lr: 1e-4,
            weight_decay: 1e-4,
            max_grad_norm: 0.1,
            lr_drop_epoch: 11,
            teacher_epoch: 6,
            seed: 42,
            save_every: None,
            keep: 3,
            resume: false,
            workers: 0,
            dtype: DType::F32,
        }
    }

    /// What a resumed run must share with the run it continues.
    fn fingerprint(&self, stage: &str) -> serde_json::Value {
        serde_json::json!({
            "stage": stage,
            "sd": self.sd.display().to_string(),
            "labels": self.labels.display().to_string(),
            "head": self.head.display().to_string(),
            "epochs": self.epochs,
            "batch": self.batch,
            "lr": self.lr.to_string(),
            "weight_decay": self.weight_decay.to_string(),
            "max_grad_norm": self.max_grad_norm.to_string(),
            "lr_drop_epoch": self.lr_drop_epoch,
            "seed": self.seed,
            "dtype": self.dtype.to_string(),
        })
    }

    fn check(&self) -> Result<()> {
        let bad = |what: &str, msg: String| Err(Error::Mismatch { what: what.into(), msg });
        if self.batch == 0 {
            return bad("--batch", "must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr", format!("{} is not a positive number", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("--weight-decay", format!("{} is not a number >= 0", self.weight_decay));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return bad("--max-grad-norm", format!("{} is not a positive number", self.max_grad_norm));
        }
        if self.epochs == 0 || self.steps == Some(0) || self.save_every == Some(0) || self.keep == 0 {
            return bad("--epochs / --steps / --save-every / --keep", "must be at least 1".into());
        }
        Ok(())
    }
}

/// The run's settings as `RUN/ground_train.json` (what `ground selftrain --run RUN` reads).
pub const TRAIN_JSON: &str = "ground_train.json";

/// The samples of a run are image indices; the step reads the images itself (features need the backend).
struct Indices(usize);

impl Dataset for Indices {
    type Item = usize;
    fn len(&self) -> usize {
        self.0
    }
    fn get(&self, index: usize, _rng: &mut Rng) -> Result<usize> {
        Ok(index)
    }
}

/// Features, text and targets for batches of grounding images.
pub struct Inputs<B: Backend> {
    pub features: Features<B>,
    pub text: TextEmbedder<B>,
    /// Text tokens per image (the graph's T).
    pub tokens: usize,
}

impl<B: Backend> Inputs<B> {
    /// The frozen SD models of `sd` and the name embedder; checks the SD's levels against the head's.
    pub fn open(mk: &impl Fn() -> Result<B>, sd: &Path, head: &Head, cache: Option<&Path>, dtype: DType, seed: u64, tokens: usize) -> Result<Self> {
        let fx = FeatureExtractor::new(mk, sd, dtype, seed)?;
        head.check_levels(sd, fx.levels())?;
        let ckpt = SdCheckpoint::open(sd)?;
        if ckpt.text_config.hidden_size != head.config.text_dim {
            return Err(Error::Weights {
                path: head.dir.join(super::head::CONFIG),
                msg: format!("text_dim {} but the text encoder of {} is {} wide", head.config.text_dim, sd.display(), ckpt.text_config.hidden_size),
            });
        }
        let tok_dir = ckpt.tokenizer_dir().ok_or_else(|| Error::Weights { path: sd.join("tokenizer"), msg: "no tokenizer/ folder".into() })?;
        let tokenizer = ClipTokenizer::from_folder(&tok_dir)?;
        let clip = crate::models::clip_text::ClipTextModel::new(ckpt.text_config.clone(), 1, DType::F32)?;
        let cw = ckpt.component(Component::TextEncoder)?.load_for(&clip.build(false)?.graph)?;
        let text = TextEmbedder::new(mk()?, ckpt.text_config.clone(), &cw, tokenizer)?;
        let cache = cache.map(FeatureCache::new).transpose()?;
        Ok(Inputs { features: Features::new(fx, cache), text, tokens })
    }

    /// `[B, T, D]` text of images whose text tokens are `cats` (names per image).
    pub fn text_for(&mut self, cats: &[Vec<String>]) -> Result<HostTensor> {
        let per: Vec<HostTensor> = cats
            .iter()
            .map(|names| {
                let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
                self.text.text_embeddings(&refs)
            })
            .collect::<Result<_>>()?;
        pad_text(&per, self.tokens)
    }
}

/// The targets of labelled images: normalised cxcywh boxes, labels = the category's position among the image's
/// text tokens.
pub fn targets_of(imgs: &[&GroundImage]) -> GroundTargets {
    let mut t = GroundTargets::default();
    for im in imgs {
        let (w, h) = (im.width as f32, im.height as f32);
        let mut boxes = Vec::new();
        let mut labels = Vec::new();
        for (b, c, _) in &im.boxes {
            boxes.push([(b[0] + b[2]) / 2.0 / w, (b[1] + b[3]) / 2.0 / h, (b[2] - b[0]) / w, (b[3] - b[1]) / h]);
            labels.push(im.categories.iter().position(|x| x == c).expect("validated: the box's category is in the prompt"));
        }
        t.boxes.push(boxes);
        t.labels.push(labels);
    }
    t
}

fn names_of(set: &GroundSet, im: &GroundImage) -> Vec<String> {
    im.categories.iter().map(|&c| set.name(c).to_string()).collect()
}

/// The model, its trainer and the inputs of a supervised step.
struct Student<B: Backend> {
    model: GroundingModel<B>,
    trainer: Trainer<B>,
    dev: DeviceParams<B>,
}

impl<B: Backend> Student<B> {
    fn new(backend: B, head: &Head, shape: &GroundingShape, o: &TrainOptions, ema: Option<f32>) -> Result<Self> {
        let dev = DeviceParams::upload(backend, &head.params)?;
        let model = GroundingModel::new(&dev, &head.config, shape, true)?;
        let cfg = TrainConfig {
            algorithm: Algorithm::AdamW(AdamWConfig { lr: o.lr, weight_decay: o.weight_decay, ..AdamWConfig::default() }),
            max_grad_norm: Some(o.max_grad_norm),
            loss_scale: None,
            ema_decay: ema,
            accumulation: false,
        };
        let wd = o.weight_decay;
        let trainer = Trainer::new(&dev, &model.trainable()?, cfg, |_, _| ParamGroup::default_for(wd))?;
        Ok(Student { model, trainer, dev })
    }

    /// One supervised update; returns (total, focal, l1, giou summed over outputs, grad norm).
    fn step(&mut self, feats: &[HostTensor], text: &HostTensor, targets: &GroundTargets, lr: f32, seed: u64, step: u64) -> Result<([f32; 4], f32)> {
        self.model.set_dropout_seed(seed, step);
        let lt = self.model.train_step(feats, text, targets)?;
        let st = self.model.update(&mut self.trainer, lr)?;
        let mut s = [lt.total, 0.0, 0.0, 0.0];
        for (_, t) in &lt.terms {
            for k in 0..3 {
                s[k + 1] += t[k];
            }
        }
        Ok((s, st.grad_norm))
    }

    fn save(&mut self) -> Result<TrainState> {
        let (tensors, state) = self.trainer.export_state()?;
        let (mut optim, mut ema) = (ParamStore::new(), ParamStore::new());
        for (name, t) in tensors.iter() {
            if name.starts_with("ema/") { &mut ema } else { &mut optim }.insert(name, t.clone());
        }
        Ok(TrainState {
            params: self.dev.download()?,
            optim,
            ema: (!ema.is_empty()).then_some(ema),
            loss_scale: None,
            scalars: TrainState::trainer_scalars(&state)?,
        })
    }

    fn load(&mut self, s: &TrainState) -> Result<()> {
        let state = s.trainer_state()?;
        for (name, t) in s.params.iter() {
            self.dev.set(name, t)?;
        }
        let mut tensors = s.optim.clone();
        for (name, t) in s.ema.iter().flat_map(|e| e.iter()) {
            tensors.insert(name, t.clone());
        }
        self.trainer.load_state(&tensors, &state)
    }
}


fn losses(s: [f32; 4]) -> Vec<(String, f32)> {
    vec![("loss".into(), s[0]), ("focal".into(), s[1]), ("l1".into(), s[2]), ("giou".into(), s[3])]
}

struct SupervisedTask<B: Backend> {
    student: Student<B>,
    inputs: Inputs<B>,
    set: Arc<GroundSet>,
    schedule: Schedule,
    lr: f32,
    seed: u64,
    /// Snapshot the state after this many steps (the teacher epoch's end) into this run folder.
    snapshot: Option<(u64, PathBuf, serde_json::Value)>,
}

impl<B: Backend> TrainTask for SupervisedTask<B> {
    type Item = usize;

    fn step(&mut self, step: u64, batch: Batch<usize>, _rng: &mut Rng) -> Result<StepOutput> {
        let imgs: Vec<&GroundImage> = batch.items.iter().map(|&i| &self.set.images[i]).collect();
        let dt = DType::F32;
        let feats = self.inputs.features.batch(&imgs, dt)?;
        let names: Vec<Vec<String>> = imgs.iter().map(|im| names_of(&self.set, im)).collect();
        let text = self.inputs.text_for(&names)?;
        let targets = targets_of(&imgs);
        let lr = self.schedule.lr(self.lr as f64, step) as f32;
        let (s, gn) = self.student.step(&feats, &text, &targets, lr, self.seed, step)?;
        if let Some((at, dir, config)) = &self.snapshot {
            if step + 1 == *at && s.iter().all(|v| v.is_finite()) {
                let st = self.student.save()?;
                let state = CheckpointState {
                    step: *at,
                    position: Default::default(),
                    rng: 0,
                    config: config.clone(),
                    version: checkpoint::VERSION.to_string(),
                    loss_scale: None,
                    ema: st.ema.is_some(),
                    scalars: st.scalars,
                    skipped_samples: 0,
                };
                Checkpoint { params: st.params, optim: st.optim, ema: st.ema, state }.save(dir, 1)?;
            }
        }
        Ok(StepOutput { losses: losses(s), lr, grad_norm: Some(gn), loss_scale: None, skipped: false, samples: imgs.len() })
    }

    fn save_state(&mut self) -> Result<TrainState> {
        self.student.save()
    }

    fn load_state(&mut self, s: TrainState) -> Result<()> {
        self.student.load(&s)
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub run_dir: PathBuf,
    pub head_dir: PathBuf,
    pub resumed_from: u64,
    pub steps: u64,
    pub per_epoch: u64,
    pub last: Vec<(String, Option<f32>)>,
    pub features: (usize, usize),
    pub note: String,
}

impl std::fmt::Display for TrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.resumed_from > 0 {
            writeln!(f, "resumed from step {}", self.resumed_from)?;
        }
        let l: Vec<String> = self.last.iter().map(|(k, v)| format!("{k} {}", v.map_or("-".into(), |v| format!("{v:.5}")))).collect();
        writeln!(f, "{} steps ({} per epoch); last step: {}", self.steps, self.per_epoch, l.join(", "))?;
        writeln!(f, "features: {} read from the cache, {} computed", self.features.0, self.features.1)?;
        if !self.note.is_empty() {
            writeln!(f, "{}", self.note)?;
        }
        writeln!(f, "run folder {} (checkpoints/, metrics.jsonl, loss.png, lr.png)", self.run_dir.display())?;
        writeln!(f, "head {}", self.head_dir.display())
    }
}

fn tokens_of(sets: &[&GroundSet]) -> usize {
    sets.iter().flat_map(|s| s.images.iter().map(|i| i.categories.len())).max().unwrap_or(1).max(1)
}

fn max_boxes(set: &GroundSet) -> usize {
    set.images.iter().map(|i| i.boxes.len()).max().unwrap_or(0).max(1)
}

/// The snapshot folder `ground train` writes at the end of epoch `e`.
pub fn snapshot_dir(run: &Path, e: u64) -> PathBuf {
    run.join(format!("student-epoch-{e}"))
}

/// `instagen ground train` on the backend `kind`.
pub fn run_train(kind: BackendKind, o: &TrainOptions) -> Result<TrainReport> {
    crate::with_backend!(kind, |mk| train_with(mk, o))
}

pub fn train_with<B: Backend>(mk: impl Fn() -> Result<B>, o: &TrainOptions) -> Result<TrainReport> {
    o.check()?;
    let set = Arc::new(GroundSet::open_labels(&o.labels)?);
    let head = Head::open(&o.head)?;
    let per_epoch = (set.images.len() / o.batch) as u64;
    if per_epoch == 0 {
        return Err(Error::Mismatch {
            what: "--batch".into(),
            msg: format!("{} is larger than the {} images of {}", o.batch, set.images.len(), o.labels.display()),
        });
    }
    let steps = o.steps.unwrap_or(o.epochs * per_epoch);
    let tokens = tokens_of(&[&set]);
    let inputs = Inputs::open(&mk, &o.sd, &head, o.features_cache.as_deref(), o.dtype, o.seed, tokens)?;
    let shape = GroundingShape {
        batch: o.batch,
        levels: head.levels.iter().map(|l| [l.shape[0], l.shape[1]]).collect(),
        text_tokens: tokens,
        max_targets: max_boxes(&set),
    };
    let student = Student::new(mk()?, &head, &shape, o, None)?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let config = o.fingerprint("ground train");
    let snap_at = o.teacher_epoch * per_epoch;
    let snapshot = (o.teacher_epoch > 0 && snap_at <= steps).then(|| (snap_at, snapshot_dir(&o.out, o.teacher_epoch), config.clone()));
    let mut task = SupervisedTask {
        student,
        inputs,
        set: set.clone(),
        schedule: Schedule::MultiStep { milestones: vec![o.lr_drop_epoch * per_epoch], gamma: 0.1 },
        lr: o.lr,
        seed: o.seed,
        snapshot,
    };
    let json = serde_json::to_string_pretty(o).map_err(|e| Error::Other(format!("{TRAIN_JSON}: {e}")))?;
    crate::util::files::write_atomic(&o.out.join(TRAIN_JSON), json.as_bytes()).map_err(|e| Error::io(o.out.join(TRAIN_JSON), e))?;
    let lcfg = LoopConfig {
        run_dir: o.out.clone(),
        steps,
        save_every: o.save_every.unwrap_or(per_epoch),
        keep: o.keep,
        resume: o.resume,
        seed: o.seed,
        config,
        may_differ: Vec::new(),
        progress: true,
    };
    let loader = LoaderConfig::new(o.batch, o.workers, o.seed);
    let report = train(Arc::new(Indices(set.images.len())), loader, &mut task, &lcfg)?;
    let head_dir = o.out.join("head");
    let fx = &task.inputs.features.extractor;
    Head::save(&head_dir, &head.config, &head.levels, fx.image_side(), &o.sd, &task.student.dev.download()?)?;
    Ok(TrainReport {
        run_dir: o.out.clone(),
        head_dir,
        resumed_from: report.resumed_from,
        steps: report.steps,
        per_epoch,
        last: report.last.map(|r| r.losses.into_iter().collect()).unwrap_or_default(),
        features: (task.inputs.features.hits, task.inputs.features.computed),
        note: String::new(),
    })
}

// ---- self-training --------------------------------------------------------------------------------------

/// Everything `instagen ground selftrain` takes besides the base run's own settings.
#[derive(Clone, Debug)]
pub struct SelftrainOptions {
    /// The `ground train` run (its settings and its snapshot at the teacher epoch).
    pub run: PathBuf,
    pub novel: PathBuf,
    /// The self-training run folder (default `RUN/selftrain`).
    pub out: Option<PathBuf>,
    /// Novel category names (default: every category some novel image prompts that no base image prompts).
    pub novel_categories: Option<Vec<String>>,
    pub beta: f32,
    pub momentum: f32,
    pub nms: f32,
    /// Total steps of the self-training run (default: the base run's epochs from the teacher epoch on).
    pub steps: Option<u64>,
    pub save_every: Option<u64>,
    pub keep: usize,
    pub resume: bool,
    pub workers: usize,
}

/// The teacher: a forward-only model on its own parameters, refreshed from the student's EMA.
struct Teacher<B: Backend> {
    model: GroundingModel<B>,
    dev: DeviceParams<B>,
}

struct SelfTask<B: Backend> {
    student: Student<B>,
    teacher: Teacher<B>,
    inputs: Inputs<B>,
    base: Arc<GroundSet>,
    novel: GroundSet,
    /// Per novel image, its novel categories (positions in its text tokens).
    novel_tokens: Vec<Vec<usize>>,
    batch: usize,
    schedule: Schedule,
    lr: f32,
    seed: u64,
    /// Steps of the base run before this one (the teacher epoch's end).
    offset: u64,
    beta: f32,
    nms: f32,
    /// Novel images drawn so far (the position in the seeded novel order).
    cursor: u64,
    /// Novel images skipped (no kept box) and novel boxes kept, so far.
    skipped: u64,
    kept: u64,
}

const CURSOR: &str = "novel_cursor";
const SKIPPED: &str = "novel_skipped";
const KEPT: &str = "novel_boxes";

impl<B: Backend> SelfTask<B> {
    /// The novel image at position `k` of the seeded order (a permutation per pass over the novel set).
    fn novel_at(&self, k: u64) -> usize {
        let n = self.novel.images.len() as u64;
        crate::data::permutation(self.seed ^ 0x4E4F_5645_4C, k / n, n as usize)[(k % n) as usize]
    }

    /// Teacher pseudo-labels for a full batch of novel images, or `None` when one pass over the novel set does not
    /// give `batch` images with a kept box.
    fn novel_batch(&mut self) -> Result<Option<(Vec<GroundImage>, Vec<Vec<String>>)>> {
        let ema = self.student.trainer.ema_model()?;
        for (name, t) in ema.iter() {
            self.teacher.dev.set(name, t)?;
        }
        let mut chosen: Vec<GroundImage> = Vec::new();
        let mut names: Vec<Vec<String>> = Vec::new();
        let n = self.novel.images.len() as u64;
        let mut tried = 0u64;
        while chosen.len() < self.batch && tried < n {
            // Teacher predictions on the next `batch` candidates.
            let idx: Vec<usize> = (0..self.batch as u64).map(|j| self.novel_at(self.cursor + j)).collect();
            let imgs: Vec<&GroundImage> = idx.iter().map(|&i| &self.novel.images[i]).collect();
            let feats = self.inputs.features.batch(&imgs, DType::F32)?;
            let cand_names: Vec<Vec<String>> = imgs.iter().map(|im| names_of(&self.novel, im)).collect();
            let text = self.inputs.text_for(&cand_names)?;
            let p = self.teacher.model.predict(&feats, &text)?;
            let (q, t) = (p.logits.shape[1], p.logits.shape[2]);
            let logits = p.logits.to_f32();
            let boxes = p.boxes.to_f32();
            for (j, &i) in idx.iter().enumerate() {
                if chosen.len() == self.batch || tried == n {
                    break;
                }
                self.cursor += 1;
                tried += 1;
                let im = &self.novel.images[i];
                let (w, h) = (im.width as f32, im.height as f32);
                let mut cand: Vec<([f32; 4], usize, f32)> = Vec::new();
                for k in 0..q {
                    for &tok in &self.novel_tokens[i] {
                        let s = sigmoid(logits[(j * q + k) * t + tok]);
                        if s > self.beta {
                            let b = &boxes[(j * q + k) * 4..(j * q + k) * 4 + 4];
                            cand.push((cxcywh_to_xyxy(b, w, h), tok, s));
                        }
                    }
                }
                let kept = nms_per_class(&cand, self.nms)?;
                if kept.is_empty() {
                    self.skipped += 1;
                    continue;
                }
                let mut g = im.clone();
                g.boxes = kept.iter().map(|&c| (cand[c].0, im.categories[cand[c].1], cand[c].2)).filter(|(b, _, _)| b[2] > b[0] && b[3] > b[1]).collect();
                if g.boxes.is_empty() {
                    self.skipped += 1;
                    continue;
                }
                self.kept += g.boxes.len() as u64;
                names.push(cand_names[j].clone());
                chosen.push(g);
            }
        }
        Ok((chosen.len() == self.batch).then_some((chosen, names)))
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Normalised cxcywh -> pixel xyxy clipped to the image.
pub fn cxcywh_to_xyxy(b: &[f32], w: f32, h: f32) -> [f32; 4] {
    let (cx, cy, bw, bh) = (b[0] * w, b[1] * h, b[2] * w, b[3] * h);
    [(cx - bw / 2.0).clamp(0.0, w), (cy - bh / 2.0).clamp(0.0, h), (cx + bw / 2.0).clamp(0.0, w), (cy + bh / 2.0).clamp(0.0, h)]
}

/// Class-wise NMS over `(box, class, score)`: the kept indices, best first.
pub fn nms_per_class(c: &[([f32; 4], usize, f32)], iou: f32) -> Result<Vec<usize>> {
    if c.is_empty() {
        return Ok(Vec::new());
    }
    let boxes: Vec<[f32; 4]> = c.iter().map(|x| x.0).collect();
    let scores: Vec<f32> = c.iter().map(|x| x.2).collect();
    let classes: Vec<i64> = c.iter().map(|x| x.1 as i64).collect();
    crate::boxes::nms(&boxes, &scores, &classes, iou, c.len())
}

impl<B: Backend> TrainTask for SelfTask<B> {
    type Item = usize;

    fn step(&mut self, step: u64, batch: Batch<usize>, _rng: &mut Rng) -> Result<StepOutput> {
        let global = self.offset + step;
        let lr = self.schedule.lr(self.lr as f64, global) as f32;
        // Base batch.
        let imgs: Vec<&GroundImage> = batch.items.iter().map(|&i| &self.base.images[i]).collect();
        let feats = self.inputs.features.batch(&imgs, DType::F32)?;
        let names: Vec<Vec<String>> = imgs.iter().map(|im| names_of(&self.base, im)).collect();
        let text = self.inputs.text_for(&names)?;
        let (s, gn) = self.student.step(&feats, &text, &targets_of(&imgs), lr, self.seed, 2 * global)?;
        let mut out = losses(s);
        // Novel batch, labelled by the teacher.
        let mut gn_last = gn;
        let mut samples = imgs.len();
        match self.novel_batch()? {
            Some((nimgs, nnames)) => {
                let refs: Vec<&GroundImage> = nimgs.iter().collect();
                let feats = self.inputs.features.batch(&refs, DType::F32)?;
                let text = self.inputs.text_for(&nnames)?;
                let (ns, ngn) = self.student.step(&feats, &text, &targets_of(&refs), lr, self.seed, 2 * global + 1)?;
                out.extend(losses(ns).into_iter().map(|(k, v)| (format!("novel_{k}"), v)));
                gn_last = ngn;
                samples += refs.len();
            }
            // No full novel batch this step: the base update only (no novel_* losses in this step's record).
            None => {}
        }
        Ok(StepOutput { losses: out, lr, grad_norm: Some(gn_last), loss_scale: None, skipped: false, samples })
    }

    fn save_state(&mut self) -> Result<TrainState> {
        let mut st = self.student.save()?;
        st.scalars.insert(CURSOR.into(), serde_json::json!(self.cursor));
        st.scalars.insert(SKIPPED.into(), serde_json::json!(self.skipped));
        st.scalars.insert(KEPT.into(), serde_json::json!(self.kept));
        Ok(st)
    }

    fn load_state(&mut self, s: TrainState) -> Result<()> {
        let get = |k: &str| s.scalars.get(k).and_then(|v| v.as_u64()).ok_or_else(|| Error::Other(format!("scalar '{k}' missing")));
        (self.cursor, self.skipped, self.kept) = (get(CURSOR)?, get(SKIPPED)?, get(KEPT)?);
        self.student.load(&s)
    }
}

/// `instagen ground selftrain` on the backend `kind`.
pub fn run_selftrain(kind: BackendKind, o: &SelftrainOptions) -> Result<TrainReport> {
    crate::with_backend!(kind, |mk| selftrain_with(mk, o))
}

pub fn selftrain_with<B: Backend>(mk: impl Fn() -> Result<B>, so: &SelftrainOptions) -> Result<TrainReport> {
    if !(so.beta.is_finite() && (0.0..1.0).contains(&so.beta)) {
        return Err(Error::Mismatch { what: "--beta".into(), msg: format!("{} is not a score in [0, 1)", so.beta) });
    }
    if !(so.momentum > 0.0 && so.momentum < 1.0) {
        return Err(Error::Mismatch { what: "--momentum".into(), msg: format!("{} is not in (0, 1)", so.momentum) });
    }
    let jp = so.run.join(TRAIN_JSON);
    let text = crate::util::files::read_text(&jp, Some(crate::util::files::CONFIG_MAX_BYTES))
        .map_err(|e| Error::io(&jp, std::io::Error::new(e.kind(), format!("{e} (is --run a `ground train` run folder?)"))))?;
    let o: TrainOptions = crate::util::json::from_object(&text).map_err(|e| Error::Other(format!("{}: {e}", jp.display())))?;
    let base = Arc::new(GroundSet::open_labels(&o.labels)?);
    let novel = GroundSet::open_dir(&so.novel)?;
    let head = Head::open(&o.head)?;
    let per_epoch = (base.images.len() / o.batch) as u64;
    let offset = o.teacher_epoch * per_epoch;
    let snap = snapshot_dir(&so.run, o.teacher_epoch);
    let ck_dir = checkpoint::checkpoint_dir(&snap, offset);
    if !ck_dir.join(checkpoint::STATE_FILE).exists() {
        return Err(Error::Other(format!(
            "{}: no snapshot of the student at the end of epoch {} (step {offset}); the base run must reach it",
            ck_dir.display(),
            o.teacher_epoch
        )));
    }
    if novel.images.len() < o.batch {
        return Err(Error::Mismatch {
            what: "--novel-dataset".into(),
            msg: format!("{} has {} images, fewer than the batch {}", so.novel.display(), novel.images.len(), o.batch),
        });
    }
    // Novel categories.
    let base_cats: std::collections::HashSet<&str> = base.images.iter().flat_map(|i| i.categories.iter().map(|&c| base.name(c))).collect();
    let novel_names: Vec<String> = match &so.novel_categories {
        Some(v) => {
            if v.is_empty() {
                return Err(Error::Mismatch { what: "--novel-categories".into(), msg: "the list is empty".into() });
            }
            for n in v {
                novel.category_id(n, "--novel-categories")?;
            }
            v.clone()
        }
        None => {
            let mut v: Vec<String> = Vec::new();
            for im in &novel.images {
                for &c in &im.categories {
                    let n = novel.name(c);
                    if !base_cats.contains(n) && !v.iter().any(|x| x == n) {
                        v.push(n.to_string());
                    }
                }
            }
            if v.is_empty() {
                return Err(Error::Mismatch {
                    what: "--novel-dataset".into(),
                    msg: format!("{}: every prompted category is a base category; name the novel ones with --novel-categories", so.novel.display()),
                });
            }
            v
        }
    };
    let novel_tokens: Vec<Vec<usize>> = novel
        .images
        .iter()
        .map(|im| im.categories.iter().enumerate().filter(|(_, c)| novel_names.iter().any(|n| n == novel.name(**c))).map(|(k, _)| k).collect())
        .collect();

    let tokens = tokens_of(&[&base, &novel]);
    let inputs = Inputs::open(&mk, &o.sd, &head, o.features_cache.as_deref(), o.dtype, o.seed, tokens)?;
    let levels: Vec<[usize; 2]> = head.levels.iter().map(|l| [l.shape[0], l.shape[1]]).collect();
    let shape = GroundingShape { batch: o.batch, levels: levels.clone(), text_tokens: tokens, max_targets: max_boxes(&base) };
    let mut student = Student::new(mk()?, &head, &shape, &o, Some(so.momentum))?;
    // Start from the snapshot: parameters and AdamW state; the EMA (teacher) is the student's copy.
    let ck = Checkpoint::load(&ck_dir)?;
    let mut st = TrainState { params: ck.params, optim: ck.optim, ema: None, loss_scale: None, scalars: ck.state.scalars };
    let mut ema = ParamStore::new();
    for (name, t) in st.params.iter() {
        ema.insert(&format!("ema/{name}"), t.cast(DType::F32));
    }
    st.ema = Some(ema);
    student.load(&st)?;
    let tdev = DeviceParams::upload(mk()?, &st.params)?;
    let teacher = Teacher { model: GroundingModel::new(&tdev, &head.config, &shape, false)?, dev: tdev };

    let out = so.out.clone().unwrap_or_else(|| so.run.join("selftrain"));
    let steps = so.steps.unwrap_or(o.epochs.saturating_sub(o.teacher_epoch) * per_epoch);
    if steps == 0 {
        return Err(Error::Mismatch { what: "--steps".into(), msg: format!("the base run's {} epochs leave none after the teacher epoch {}", o.epochs, o.teacher_epoch) });
    }
    let mut task = SelfTask {
        student,
        teacher,
        inputs,
        base: base.clone(),
        novel,
        novel_tokens,
        batch: o.batch,
        schedule: Schedule::MultiStep { milestones: vec![o.lr_drop_epoch * per_epoch], gamma: 0.1 },
        lr: o.lr,
        seed: o.seed,
        offset,
        beta: so.beta,
        nms: so.nms,
        cursor: 0,
        skipped: 0,
        kept: 0,
    };
    let mut config = o.fingerprint("ground selftrain");
    config["novel"] = serde_json::json!(so.novel.display().to_string());
    config["novel_categories"] = serde_json::json!(novel_names);
    config["beta"] = serde_json::json!(so.beta.to_string());
    config["momentum"] = serde_json::json!(so.momentum.to_string());
    config["nms"] = serde_json::json!(so.nms.to_string());
    let lcfg = LoopConfig {
        run_dir: out.clone(),
        steps,
        save_every: so.save_every.unwrap_or(per_epoch),
        keep: so.keep,
        resume: so.resume,
        // A base data order of its own (the base run's seed, varied).
        seed: o.seed ^ 0x5E1F,
        config,
        may_differ: Vec::new(),
        progress: true,
    };
    let loader = LoaderConfig::new(o.batch, so.workers, o.seed ^ 0x5E1F);
    let report = train(Arc::new(Indices(base.images.len())), loader, &mut task, &lcfg)?;
    let head_dir = out.join("head");
    let side = task.inputs.features.extractor.image_side();
    // The saved model is the teacher (the EMA), as the mean-teacher method evaluates it.
    Head::save(&head_dir, &head.config, &head.levels, side, &o.sd, &task.student.trainer.ema_model()?)?;
    let note = format!(
        "novel categories {novel_names:?}: {} novel boxes kept (beta {}), {} novel images skipped with no kept box; head/ is the teacher (EMA {})",
        task.kept, so.beta, task.skipped, so.momentum
    );
    Ok(TrainReport {
        run_dir: out,
        head_dir,
        resumed_from: report.resumed_from,
        steps: report.steps,
        per_epoch,
        last: report.last.map(|r| r.losses.into_iter().collect()).unwrap_or_default(),
        features: (task.inputs.features.hits, task.inputs.features.computed),
        note,
    })
}
