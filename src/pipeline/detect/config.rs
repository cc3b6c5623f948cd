//! The run config of `instagen detect train` (JSON) and what it resolves to: the label map and, per source,
//! the loss rules every image of that source carries into the step (`rpn_weight`, `class_mask`).
//!
//! ```json
//! {"model": {"depth": 50, "trainable_layers": 3, "labels": "contiguous", "min_size": [800], "max_size": 1333},
//!  "optimizer": {"lr": null, "momentum": 0.9, "weight_decay": 1e-4, "warmup_iters": 500,
//!                "warmup_factor": 0.001, "milestones": [8, 11], "gamma": 0.1},
//!  "epochs": 12, "batch": 2, "seed": 0, "flip": 0.5,
//!  "sources": [{"name": "synthetic", "instances": "syn.json", "images": "syn/", "min_size": [224, 256, 800]},
//!              {"name": "real", "instances": "real.json", "images": "train2017/", "rpn_loss": false,
//!               "classify": "base"}]}
//! ```
//! - The loss rules of an image are those of the source it comes from, a flag of the config: never a match on
//!   its path (the published code's path substring silently dropped the masking for users who moved their
//!   data: `../shared/docs/INSTAGEN.md`, stage 5).
//! - `rpn_loss: false` gives the source's images `rpn_weight` 0 (the RPN loss of that image is dropped);
//!   `classify` (`"all"`, `"base"` = the 48 OV-COCO base ids, or a list of category ids) gives `class_mask`,
//!   1 for background and for each listed class. An annotation of a source whose class its `classify` leaves
//!   out is an error naming the source and the annotation (its proposals would have a target the loss cannot
//!   see).
//! - `weight` (a positive integer, default 1) repeats each image of the source that many times per epoch.
//! - `min_size` of a source replaces the model's short-side list for its images (InstaGen: synthetic images
//!   jittered 224..800, real ones at 800).
//! - `labels`: `"contiguous"` numbers the union of the sources' categories 1..=K by category id (0 is
//!   background); `"coco91"` is torchvision's 91-entry COCO index (label = category id, 91 logits), which
//!   torchvision's COCO weights use.
//! - `optimizer.lr` null means torchvision's rule 0.02 x batch / 16. The learning rate of step t is
//!   `lr x warmup(t) x gamma^(milestones passed)`: warmup linear from `warmup_factor` to 1 over `warmup_iters`
//!   steps (`LinearLR`), milestones in epochs (`MultiStepLR` stepped per epoch, as torchvision's references).
//! - The model's head settings (serde defaults = torchvision's, so older configs give the same model):
//!   `anchor_sizes` (per FPN level), `rpn_batch_size_per_image`, `rpn_{pre,post}_nms_top_n_{train,test}`,
//!   `roi_batch_size_per_image`, `representation_size` (the box head's MLP width), `detections_per_img`. The
//!   trained model's whole config is saved as `RUN/model.json` next to `RUN/model.safetensors`, which
//!   `detect infer|eval` read back (anchors, proposal counts, detections per image, the transform).
//! - Relative paths are taken from the config file's folder. Unknown keys are errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::detection::coco;
use crate::detection::eval::OVCOCO;
use crate::error::{Error, Result};
use crate::models::detector::backbone::BackboneConfig;
use crate::models::detector::faster_rcnn::FasterRcnnConfig;
use crate::models::detector::roi_heads::RoiHeadsConfig;
use crate::models::detector::rpn::RpnConfig;
use crate::models::detector::transform::TransformConfig;
use crate::runtime::schedule::Schedule;

fn d_true() -> bool {
    true
}
fn d_one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// ResNet depth: 18, 34 or 50.
    pub depth: u32,
    /// torchvision's `trainable_backbone_layers` (0..=5).
    pub trainable_layers: u32,
    pub caffe_stride: bool,
    pub labels: Labels,
    pub min_size: Vec<usize>,
    pub max_size: usize,
    /// A whole detector in torchvision's key names to start from.
    pub weights: Option<PathBuf>,
    /// ImageNet ResNet weights (torchvision layout) for the backbone.
    pub backbone_weights: Option<PathBuf>,
    /// RPN anchor sizes per FPN level (5 levels, finest first; the same count per level).
    pub anchor_sizes: Vec<Vec<f32>>,
    /// Anchors sampled per image for the RPN losses.
    pub rpn_batch_size_per_image: usize,
    /// Proposals kept per image before / after the RPN's NMS, in training and in inference.
    pub rpn_pre_nms_top_n_train: usize,
    pub rpn_pre_nms_top_n_test: usize,
    pub rpn_post_nms_top_n_train: usize,
    pub rpn_post_nms_top_n_test: usize,
    /// RoIs sampled per image for the box head's losses.
    pub roi_batch_size_per_image: usize,
    /// Width of the box head's two-layer MLP (fc6, fc7).
    pub representation_size: usize,
    /// Detections kept per image in inference.
    pub detections_per_img: usize,
}

impl Default for ModelConfig {
    /// torchvision's `fasterrcnn_resnet50_fpn`.
    fn default() -> Self {
        let (rpn, roi) = (RpnConfig::default(), RoiHeadsConfig::default());
        ModelConfig {
            depth: 50,
            trainable_layers: 3,
            caffe_stride: false,
            labels: Labels::Contiguous,
            min_size: vec![800],
            max_size: 1333,
            weights: None,
            backbone_weights: None,
            anchor_sizes: rpn.anchor_sizes,
            rpn_batch_size_per_image: rpn.batch_size_per_image,
            rpn_pre_nms_top_n_train: rpn.pre_nms_top_n_train,
            rpn_pre_nms_top_n_test: rpn.pre_nms_top_n_test,
            rpn_post_nms_top_n_train: rpn.post_nms_top_n_train,
            rpn_post_nms_top_n_test: rpn.post_nms_top_n_test,
            roi_batch_size_per_image: roi.batch_size_per_image,
            representation_size: roi.representation_size,
            detections_per_img: roi.detections_per_img,
        }
    }
}

impl ModelConfig {
    /// Field checks; the message names the field as `model.FIELD`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if ![18, 34, 50].contains(&self.depth) {
            return Err(format!("model.depth must be 18, 34 or 50, got {}", self.depth));
        }
        if self.trainable_layers > 5 {
            return Err(format!("model.trainable_layers must be 0..=5, got {}", self.trainable_layers));
        }
        if self.anchor_sizes.len() != 5 {
            return Err(format!("model.anchor_sizes needs one list per FPN level (5), got {}", self.anchor_sizes.len()));
        }
        // The heads' settings, checked by the detector's own validation (which names the field).
        self.detector(2, &self.min_size).validate().map_err(|e| format!("model: {e}"))
    }

    /// The detector these settings give, with `num_logits` classes (background included) and the short-side
    /// list `min_size`: torchvision's defaults for everything the config does not set.
    pub fn detector(&self, num_logits: usize, min_size: &[usize]) -> FasterRcnnConfig {
        FasterRcnnConfig {
            backbone: BackboneConfig { depth: self.depth as usize, trainable_layers: self.trainable_layers as usize, caffe_stride: self.caffe_stride, ..Default::default() },
            rpn: RpnConfig {
                anchor_sizes: self.anchor_sizes.clone(),
                batch_size_per_image: self.rpn_batch_size_per_image,
                pre_nms_top_n_train: self.rpn_pre_nms_top_n_train,
                pre_nms_top_n_test: self.rpn_pre_nms_top_n_test,
                post_nms_top_n_train: self.rpn_post_nms_top_n_train,
                post_nms_top_n_test: self.rpn_post_nms_top_n_test,
                ..Default::default()
            },
            roi_heads: RoiHeadsConfig {
                num_classes: num_logits,
                batch_size_per_image: self.roi_batch_size_per_image,
                representation_size: self.representation_size,
                detections_per_img: self.detections_per_img,
                ..Default::default()
            },
            transform: TransformConfig { min_size: min_size.to_vec(), max_size: self.max_size, ..Default::default() },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    Contiguous,
    Coco91,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: Option<f32>,
    pub momentum: f32,
    pub weight_decay: f32,
    pub warmup_iters: u64,
    pub warmup_factor: f64,
    /// Epochs at which the rate is multiplied by `gamma`.
    pub milestones: Vec<u64>,
    pub gamma: f64,
}

impl Default for OptimConfig {
    /// torchvision's detection reference, 1x schedule.
    fn default() -> Self {
        OptimConfig { lr: None, momentum: 0.9, weight_decay: 1e-4, warmup_iters: 500, warmup_factor: 0.001, milestones: vec![8, 11], gamma: 0.1 }
    }
}

/// Which classes take part in the classification loss of a source's images.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Classify {
    #[default]
    All,
    /// The 48 OV-COCO base classes.
    Base,
    Ids(Vec<u64>),
}

impl Serialize for Classify {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Classify::All => s.serialize_str("all"),
            Classify::Base => s.serialize_str("base"),
            Classify::Ids(ids) => ids.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Classify {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            L(Vec<u64>),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("classify must be \"all\", \"base\" or a list of category ids"))? {
            Raw::S(s) if s == "all" => Ok(Classify::All),
            Raw::S(s) if s == "base" => Ok(Classify::Base),
            Raw::S(s) => Err(serde::de::Error::custom(format!("classify must be \"all\", \"base\" or a list of category ids, got \"{s}\""))),
            Raw::L(ids) => Ok(Classify::Ids(ids)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub instances: PathBuf,
    pub images: PathBuf,
    #[serde(default = "d_true")]
    pub rpn_loss: bool,
    #[serde(default)]
    pub classify: Classify,
    #[serde(default = "d_one")]
    pub weight: u32,
    #[serde(default)]
    pub min_size: Option<Vec<usize>>,
}

fn d_epochs() -> u64 {
    12
}
fn d_batch() -> usize {
    2
}
fn d_flip() -> f32 {
    0.5
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub optimizer: OptimConfig,
    pub sources: Vec<SourceConfig>,
    #[serde(default = "d_epochs")]
    pub epochs: u64,
    /// Total steps instead of `epochs` (a short run; milestones stay in epochs).
    #[serde(default)]
    pub steps: Option<u64>,
    #[serde(default = "d_batch")]
    pub batch: usize,
    #[serde(default)]
    pub seed: u64,
    /// Probability of a horizontal flip per image.
    #[serde(default = "d_flip")]
    pub flip: f32,
    /// Skip unreadable images (reported) instead of failing.
    #[serde(default)]
    pub lenient: bool,
}

impl RunConfig {
    /// Reads and validates `path`; relative source and weight paths are made relative to its folder.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = crate::util::files::read_text(path, Some(16 << 20)).map_err(|e| Error::io(path, e))?;
        let mut cfg: RunConfig = crate::util::json::from_object(&text).map_err(|m| Error::Other(format!("{}: {m}", path.display())))?;
        cfg.validate().map_err(|m| Error::Other(format!("{}: {m}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for s in &mut cfg.sources {
            fix(&mut s.instances);
            fix(&mut s.images);
        }
        if let Some(w) = &mut cfg.model.weights {
            fix(w);
        }
        if let Some(w) = &mut cfg.model.backbone_weights {
            fix(w);
        }
        Ok(cfg)
    }

    /// Field checks that need no file; the message names the field as a dotted path.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.model.validate()?;
        let o = &self.optimizer;
        if let Some(lr) = o.lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return Err(format!("optimizer.lr must be positive, got {lr}"));
        }
        for (k, v) in [("momentum", o.momentum as f64), ("weight_decay", o.weight_decay as f64), ("gamma", o.gamma)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("optimizer.{k} must be finite and >= 0, got {v}"));
            }
        }
        if !(o.warmup_factor > 0.0 && o.warmup_factor <= 1.0) {
            return Err(format!("optimizer.warmup_factor must be in (0, 1], got {}", o.warmup_factor));
        }
        if o.milestones.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("optimizer.milestones must increase, got {:?}", o.milestones));
        }
        if self.batch == 0 {
            return Err("batch must be at least 1".into());
        }
        if self.epochs == 0 || self.steps == Some(0) {
            return Err("epochs and steps must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.flip) {
            return Err(format!("flip must be a probability, got {}", self.flip));
        }
        if self.sources.is_empty() {
            return Err("sources: at least one source is needed".into());
        }
        let mut names = BTreeMap::new();
        for (i, s) in self.sources.iter().enumerate() {
            if s.name.is_empty() {
                return Err(format!("sources[{i}].name is empty"));
            }
            if let Some(j) = names.insert(s.name.as_str(), i) {
                return Err(format!("sources[{i}].name '{}' is also sources[{j}].name", s.name));
            }
            if s.weight == 0 {
                return Err(format!("sources[{i}] ('{}').weight must be at least 1", s.name));
            }
            if let Classify::Ids(ids) = &s.classify
                && ids.is_empty()
            {
                return Err(format!("sources[{i}] ('{}').classify is an empty list", s.name));
            }
            if let Some(ms) = &s.min_size {
                self.transform(ms).validate().map_err(|e| format!("sources[{i}] ('{}').min_size: {e}", s.name))?;
            }
        }
        Ok(())
    }

    /// The transform with the short-side list `min_size`.
    pub fn transform(&self, min_size: &[usize]) -> TransformConfig {
        self.model.detector(2, min_size).transform
    }

    /// The base rate: `optimizer.lr`, else 0.02 x batch / 16.
    pub fn base_lr(&self) -> f32 {
        self.optimizer.lr.unwrap_or(0.02 * self.batch as f32 / 16.0)
    }

    /// The rate of step `t` when an epoch has `steps_per_epoch` steps.
    pub fn lr_at(&self, t: u64, steps_per_epoch: u64) -> f64 {
        let o = &self.optimizer;
        let warm = Schedule::LinearWarmup { start_factor: o.warmup_factor, warmup: o.warmup_iters };
        let steps = Schedule::MultiStep { milestones: o.milestones.iter().map(|e| e * steps_per_epoch).collect(), gamma: o.gamma };
        steps.lr(warm.lr(self.base_lr() as f64, t), t)
    }
}

/// Label index -> COCO category id (index 0 is background, id 0).
#[derive(Clone, Debug, PartialEq)]
pub struct LabelMap {
    pub ids: Vec<u64>,
    pub names: Vec<String>,
}

impl LabelMap {
    /// Logits of the classifier: classes plus background.
    pub fn num_logits(&self) -> usize {
        self.ids.len()
    }
    pub fn label_of(&self, category_id: u64) -> Option<usize> {
        self.ids.iter().skip(1).position(|&c| c == category_id).map(|p| p + 1)
    }

    /// The map over the sources' datasets (`srcs[i]` = (name, path, dataset)).
    pub fn build(kind: Labels, srcs: &[(&str, &Path, &coco::Dataset)]) -> Result<LabelMap> {
        let mut by_id: BTreeMap<u64, (String, String)> = BTreeMap::new();
        for (name, path, ds) in srcs {
            for c in &ds.categories {
                if let Some((other, from)) = by_id.get(&c.id) {
                    if *other != c.name {
                        return Err(Error::Other(format!(
                            "{}: category id {} is '{}' here but '{}' in {from} (source '{name}')",
                            path.display(),
                            c.id,
                            c.name,
                            other
                        )));
                    }
                } else {
                    by_id.insert(c.id, (c.name.clone(), path.display().to_string()));
                }
            }
        }
        match kind {
            Labels::Contiguous => {
                let mut ids = vec![0];
                let mut names = vec!["__background__".to_string()];
                for (id, (n, _)) in by_id {
                    ids.push(id);
                    names.push(n);
                }
                Ok(LabelMap { ids, names })
            }
            Labels::Coco91 => {
                if let Some((&id, (n, from))) = by_id.iter().find(|(id, _)| **id == 0 || **id > 90) {
                    return Err(Error::Other(format!("{from}: category {id} ('{n}') is outside torchvision's COCO index 1..=90 (model.labels coco91)")));
                }
                let ids: Vec<u64> = (0..91).collect();
                let names = ids.iter().map(|i| if *i == 0 { "__background__".into() } else { by_id.get(i).map(|v| v.0.clone()).unwrap_or_default() }).collect();
                Ok(LabelMap { ids, names })
            }
        }
    }
}

/// The per-image loss inputs of one source.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRules {
    /// 1 keeps the RPN loss of the image, 0 drops it.
    pub rpn_weight: f32,
    /// `[num_logits]`: 1 = the class takes part in the classification loss; background always 1.
    pub class_mask: Vec<f32>,
    /// Category ids allowed in the source's annotations.
    pub classes: Vec<u64>,
}

impl SourceRules {
    /// The rules of source `s` (index `i`) under `labels`; `ds` is its dataset.
    pub fn resolve(i: usize, s: &SourceConfig, ds: &coco::Dataset, labels: &LabelMap) -> Result<SourceRules> {
        let err = |m: String| Error::Other(format!("sources[{i}] ('{}').classify: {m}", s.name));
        let classes: Vec<u64> = match &s.classify {
            Classify::All => ds.categories.iter().map(|c| c.id).collect(),
            Classify::Base => {
                let missing: Vec<u64> = OVCOCO.base.iter().copied().filter(|id| labels.label_of(*id).is_none()).collect();
                if !missing.is_empty() {
                    return Err(err(format!("\"base\" needs the 48 OV-COCO base ids, and the label map lacks {missing:?}")));
                }
                OVCOCO.base.to_vec()
            }
            Classify::Ids(ids) => {
                if let Some(id) = ids.iter().find(|id| labels.label_of(**id).is_none()) {
                    return Err(err(format!("category id {id} is in no source's categories")));
                }
                ids.clone()
            }
        };
        let mut class_mask = vec![0f32; labels.num_logits()];
        class_mask[0] = 1.0;
        for id in &classes {
            class_mask[labels.label_of(*id).expect("checked")] = 1.0;
        }
        Ok(SourceRules { rpn_weight: if s.rpn_loss { 1.0 } else { 0.0 }, class_mask, classes })
    }
}
