//! The InstaGen grounding head (GroundingDINO / DINO style) on the UNet's t=1 feature levels: config, parameter
//! initialisation, the forward graph, Hungarian matching and the losses, and [`GroundingModel`] (one training step
//! and prediction on a backend). See DESIGN.md "Grounding head" for every choice.
//!
//! Training step, as a staged run of one graph: stage 0 is the forward (the outputs of every decoder layer and
//! of the selected encoder proposals are read back), the matching runs on the host, stage 1 computes the losses
//! from the fed matching and differentiates them; the caller's [`Trainer`] then updates the parameters
//! ([`GroundingModel::update`]).

pub mod config;
pub mod graph;
pub mod layers;
pub mod loss;
pub mod text;

use std::collections::HashMap;

pub use config::GroundingConfig;
pub use graph::HeadShape;
pub use text::{pad_text, TextEmbedder};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::plan::Plan;
use crate::graph::{Graph, NodeId};
use crate::params::ParamStore;
use crate::runtime::{DeviceParams, Executor, StepStats, Trainer};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// Targets of a batch: per image, boxes (cxcywh, normalised to [0, 1]) and their labels (index of the text token,
/// i.e. of the category in that image's text rows).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroundTargets {
    pub boxes: Vec<Vec<[f32; 4]>>,
    pub labels: Vec<Vec<usize>>,
}

/// The losses of one training step: per output (`enc`, `dec0`, `dec1`, ...) the focal, L1 and GIoU terms (each
/// already divided by the number of boxes), and the weighted total that was differentiated.
#[derive(Clone, Debug, PartialEq)]
pub struct LossTerms {
    pub total: f32,
    pub terms: Vec<(String, [f32; 3])>,
}

/// The last decoder layer's output: `logits [B, K, T]` (raw, before the sigmoid; padding text tokens hold
/// meaningless values) and `boxes [B, K, 4]` (cxcywh normalised to [0, 1]).
#[derive(Clone, Debug)]
pub struct Predictions {
    pub logits: HostTensor,
    pub boxes: HostTensor,
}

/// Name and shape of every parameter of a head with this config.
pub fn param_shapes(cfg: &GroundingConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let levels = vec![[cfg.queries, 1]; cfg.levels()];
    let hg = graph::build_forward(cfg, &HeadShape { batch: 1, levels, text_tokens: 1 }, false)?;
    Ok(hg.graph.params().into_iter().map(|(id, n)| (n.to_string(), hg.graph.shape(id).to_vec())).collect())
}

/// Fresh f32 parameters (Deformable DETR / DINO initialisation): xavier-uniform linears and neck convolutions
/// with zero biases, norms 1 / 0, deformable sampling offsets zero-weighted with biases spreading the points of
/// each head in its own direction (point p at p + 1 pixels), attention-weight linears zero, the box heads' last
/// linear zero, level and content-query embeddings N(0, 1), fusion layer scales `fusion_gamma_init`, class scale
/// and bias from the config.
pub fn init_params(cfg: &GroundingConfig, seed: u64) -> Result<ParamStore> {
    let mut rng = Rng::new(seed);
    let mut store = ParamStore::new();
    let (nh, l_n, p_n) = (cfg.deform_heads, cfg.levels(), cfg.points);
    for (name, shape) in param_shapes(cfg)? {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = if name == "class_scale" {
            vec![cfg.class_scale_init]
        } else if name == "class_bias" {
            vec![cfg.class_bias_init]
        } else if name.contains(".gamma_") {
            vec![cfg.fusion_gamma_init; n]
        } else if name == "level_embed" || name == "tgt_embed" {
            rng.normal_vec(n, 1.0)
        } else if name.ends_with(".offsets.bias") {
            let mut v = Vec::with_capacity(n);
            for h in 0..nh {
                let th = 2.0 * std::f64::consts::PI * h as f64 / nh as f64;
                let (c, s) = (th.cos(), th.sin());
                let m = c.abs().max(s.abs());
                for _ in 0..l_n {
                    for p in 0..p_n {
                        v.push((c / m * (p + 1) as f64) as f32);
                        v.push((s / m * (p + 1) as f64) as f32);
                    }
                }
            }
            v
        } else if name.ends_with(".offsets.weight")
            || name.ends_with(".weights.weight")
            || name.ends_with(".weights.bias")
            || name.starts_with("bbox_embed.2.")
            || name.starts_with("enc_bbox.2.")
            || name.ends_with(".bias")
        {
            vec![0.0; n]
        } else if shape.len() == 1 {
            vec![1.0; n] // norm weights
        } else {
            let fan_in: usize = shape[1..].iter().product();
            let bound = (6.0 / (fan_in + shape[0]) as f32).sqrt();
            rng.uniform_vec(n, -bound, bound)
        };
        store.insert(&name, HostTensor::from_f32(&shape, DType::F32, &vals)?);
    }
    Ok(store)
}

/// The graph sizes of a [`GroundingModel`]: batch, feature level shapes `(h, w)` (largest first), text tokens per
/// image, and the target rows per image the loss graph starts with (it is rebuilt larger when a batch has more).
#[derive(Clone, Debug, PartialEq)]
pub struct GroundingShape {
    pub batch: usize,
    pub levels: Vec<[usize; 2]>,
    pub text_tokens: usize,
    pub max_targets: usize,
}

struct TrainGraph<B: Backend> {
    ex: Executor<B>,
    topk: NodeId,
    outputs: Vec<(String, NodeId, NodeId)>,
    loss: loss::LossGraph,
    grads: Vec<(String, NodeId)>,
    consts: Vec<(String, HostTensor)>,
    dropout_keys: Vec<String>,
}

struct InferGraph<B: Backend> {
    ex: Executor<B>,
    logits: NodeId,
    boxes: NodeId,
    consts: Vec<(String, HostTensor)>,
}

/// The head on one backend's parameters: a training graph (dropout as built) and a forward-only graph (never
/// dropout), each planned at its first use, sharing the [`DeviceParams`].
pub struct GroundingModel<B: Backend> {
    cfg: GroundingConfig,
    shape: GroundingShape,
    dev: DeviceParams<B>,
    dropout: bool,
    dropout_seed: u64,
    dropout_step: u64,
    train: Option<TrainGraph<B>>,
    infer: Option<InferGraph<B>>,
    last_outputs: Vec<(String, HostTensor, HostTensor)>,
    last_topk: Option<HostTensor>,
    last_matchings: Vec<(String, Vec<(Vec<usize>, Vec<usize>)>)>,
}

impl<B: Backend> GroundingModel<B> {
    /// `dropout`: whether the training graph applies the config's dropout (the student; a teacher or inference
    /// model is built without). Nothing is planned yet.
    pub fn new(dev: &DeviceParams<B>, cfg: &GroundingConfig, shape: &GroundingShape, dropout: bool) -> Result<Self> {
        cfg.validate(None)?;
        // Checks the shape against the config now (a cheap build, nothing planned).
        graph::build_forward(cfg, &head_shape(shape), false)?;
        Ok(GroundingModel {
            cfg: cfg.clone(),
            shape: shape.clone(),
            dev: dev.clone(),
            dropout: dropout && cfg.dropout > 0.0,
            dropout_seed: 0,
            dropout_step: 0,
            train: None,
            infer: None,
            last_outputs: Vec::new(),
            last_topk: None,
            last_matchings: Vec::new(),
        })
    }

    pub fn config(&self) -> &GroundingConfig {
        &self.cfg
    }

    pub fn shape(&self) -> &GroundingShape {
        &self.shape
    }

    pub fn device_params(&self) -> &DeviceParams<B> {
        &self.dev
    }

    /// The dropout masks of the next training step: a pure function of (seed, step, site); `train_step`
    /// advances the step by one.
    pub fn set_dropout_seed(&mut self, seed: u64, step: u64) {
        self.dropout_seed = seed;
        self.dropout_step = step;
    }

    /// Checks the features (`[B, h_l, w_l, C_l]` per level, any float dtype) and text (`[B, T, text_dim]`) and
    /// returns them as f32 with the text mask `[B, 1, T]` (a token is padding when its row is all zero).
    fn stage0_inputs(&self, features: &[HostTensor], text: &HostTensor) -> Result<Vec<(String, HostTensor)>> {
        let (b, t) = (self.shape.batch, self.shape.text_tokens);
        if features.len() != self.cfg.levels() {
            return Err(Error::Mismatch {
                what: "grounding head features".into(),
                msg: format!("{} levels given, the head has {}", features.len(), self.cfg.levels()),
            });
        }
        let mut out = Vec::new();
        for (l, f) in features.iter().enumerate() {
            let [h, w] = self.shape.levels[l];
            let want = [b, h, w, self.cfg.feature_channels[l]];
            if f.shape != want || !f.dtype.is_float() {
                return Err(Error::Mismatch {
                    what: format!("grounding head feature level {l} ({})", graph::feature_input(l)),
                    msg: format!("{} {:?}, want a float tensor {want:?}", f.dtype, f.shape),
                });
            }
            out.push((graph::feature_input(l), if f.dtype == DType::F32 { f.clone() } else { f.cast(DType::F32) }));
        }
        let want = [b, t, self.cfg.text_dim];
        if text.shape != want || !text.dtype.is_float() {
            return Err(Error::Mismatch {
                what: "grounding head text".into(),
                msg: format!("{} {:?}, want a float tensor {want:?}", text.dtype, text.shape),
            });
        }
        let tv = text.to_f32();
        let d = self.cfg.text_dim;
        let mask: Vec<f32> = tv.chunks(d).map(|r| if r.iter().any(|&x| x != 0.0) { 1.0 } else { 0.0 }).collect();
        out.push((graph::TEXT.into(), HostTensor::from_f32(&want, DType::F32, &tv)?));
        out.push((graph::TEXT_MASK.into(), HostTensor::from_f32(&[b, 1, t], DType::F32, &mask)?));
        Ok(out)
    }

    fn check_targets(&self, targets: &GroundTargets, text_mask: &HostTensor) -> Result<()> {
        let (b, t) = (self.shape.batch, self.shape.text_tokens);
        if targets.boxes.len() != b || targets.labels.len() != b {
            return Err(Error::Mismatch {
                what: "grounding targets".into(),
                msg: format!("{} box lists and {} label lists for a batch of {b}", targets.boxes.len(), targets.labels.len()),
            });
        }
        let mask = text_mask.to_f32();
        for i in 0..b {
            if targets.boxes[i].len() != targets.labels[i].len() {
                return Err(Error::Mismatch {
                    what: format!("grounding targets of image {i}"),
                    msg: format!("{} boxes but {} labels", targets.boxes[i].len(), targets.labels[i].len()),
                });
            }
            for (j, (bx, &lab)) in targets.boxes[i].iter().zip(&targets.labels[i]).enumerate() {
                if lab >= t || mask[i * t + lab] == 0.0 {
                    return Err(Error::Mismatch {
                        what: format!("grounding target {j} of image {i}"),
                        msg: format!("label {lab} is not one of the image's text tokens (it has {} of {t})",
                            mask[i * t..(i + 1) * t].iter().filter(|&&m| m != 0.0).count()),
                    });
                }
                if !bx.iter().all(|v| v.is_finite()) || bx[2] <= 0.0 || bx[3] <= 0.0 {
                    return Err(Error::Mismatch {
                        what: format!("grounding target {j} of image {i}"),
                        msg: format!("box {bx:?} must be finite cxcywh with positive size"),
                    });
                }
            }
        }
        Ok(())
    }

    fn build_train(&mut self, max_targets: usize) -> Result<()> {
        let mut hg = graph::build_forward(&self.cfg, &head_shape(&self.shape), self.dropout)?;
        for (_, lg, bx) in &hg.outputs {
            hg.graph.mark_stage_output(*lg);
            hg.graph.mark_stage_output(*bx);
        }
        hg.graph.mark_stage_output(hg.topk);
        let lg = loss::build_loss(&mut hg.graph, &mut hg.ctx, &self.cfg, &hg.outputs, hg.text_mask, max_targets)?;
        let mut g: Graph = hg.graph;
        let grads = crate::graph::autodiff::param_grads(&mut g, lg.total)?;
        let plan = Plan::new(&g);
        let ex = Executor::with_params(g, plan, &self.dev).map_err(|e| e.building("the grounding head's training graph"))?;
        self.train = Some(TrainGraph {
            ex,
            topk: hg.topk,
            outputs: hg.outputs,
            loss: lg,
            grads,
            consts: hg.ctx.consts,
            dropout_keys: hg.ctx.dropout_keys,
        });
        Ok(())
    }

    /// Forward, matching, losses and gradients of one batch (no parameter update: see [`Self::update`]).
    /// `features`: per level `[B, h, w, C]`; `text`: `[B, T, text_dim]` (zero rows are padding).
    pub fn train_step(&mut self, features: &[HostTensor], text: &HostTensor, targets: &GroundTargets) -> Result<LossTerms> {
        let mut inputs = self.stage0_inputs(features, text)?;
        self.check_targets(targets, &inputs.last().expect("mask").1)?;
        let needed = targets.labels.iter().map(|l| l.len()).max().unwrap_or(0).max(1);
        let have = self.train.as_ref().map(|t| t.loss.max_targets);
        if have.is_none_or(|m| m < needed) {
            self.build_train(needed.max(self.shape.max_targets))?;
        }
        let (seed, step) = (self.dropout_seed, self.dropout_step);
        self.dropout_step += 1;
        let cfg = self.cfg.clone();
        let tg = self.train.as_mut().expect("built");
        inputs.extend(tg.consts.iter().cloned());
        for (i, name) in tg.dropout_keys.iter().enumerate() {
            let site_seed = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            inputs.push((name.clone(), loss::i64_tensor(&[2], &[site_seed as i64, step as i64])?));
        }
        let feed: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tg.ex.run_stage(0, &feed)?;
        let m = tg.loss.max_targets;
        let mut stage1 = loss::target_inputs(targets, m)?;
        self.last_outputs.clear();
        self.last_matchings.clear();
        self.last_topk = Some(tg.ex.get(tg.topk)?);
        for (name, lg, bx) in &tg.outputs {
            let l = tg.ex.get(*lg)?;
            let dims = [l.shape[0], l.shape[1], l.shape[2]];
            let boxes = tg.ex.get(*bx)?;
            let matching = loss::match_output(&cfg, &l.to_f32(), &boxes.to_f32(), dims, targets)?;
            stage1.extend(loss::match_inputs(name, &matching, targets, dims, m)?);
            self.last_matchings.push((name.clone(), matching));
            self.last_outputs.push((name.clone(), l, boxes));
        }
        let feed: Vec<(&str, &HostTensor)> = stage1.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tg.ex.run_stage(1, &feed)?;
        let mut terms = Vec::new();
        for (name, f, l1, gi) in &tg.loss.terms {
            terms.push((name.clone(), [tg.ex.get(*f)?.scalar_f32()?, tg.ex.get(*l1)?.scalar_f32()?, tg.ex.get(*gi)?.scalar_f32()?]));
        }
        let total = tg.ex.get(tg.loss.total)?.scalar_f32()?;
        Ok(LossTerms { total, terms })
    }

    /// The gradient of a parameter after [`Self::train_step`].
    pub fn gradient(&self, name: &str) -> Result<HostTensor> {
        let tg = self.train.as_ref().ok_or_else(|| Error::Other("no training step has run".into()))?;
        let id = tg.grads.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
            .ok_or_else(|| Error::Other(format!("no gradient for parameter '{name}'")))?;
        tg.ex.get(id)
    }

    /// Names of the parameters that get gradients (all of the head's).
    pub fn trainable(&self) -> Result<Vec<String>> {
        Ok(param_shapes(&self.cfg)?.into_iter().map(|(n, _)| n).collect())
    }

    /// Applies the gradients of the last [`Self::train_step`] with `trainer` (built on this model's
    /// `DeviceParams`).
    pub fn update(&mut self, trainer: &mut Trainer<B>, lr: f32) -> Result<StepStats> {
        let tg = self.train.as_mut().ok_or_else(|| Error::Other("update before a training step".into()))?;
        trainer.step(&mut tg.ex, &tg.grads, lr)
    }

    /// The last decoder layer's logits and boxes (no dropout).
    pub fn predict(&mut self, features: &[HostTensor], text: &HostTensor) -> Result<Predictions> {
        let mut inputs = self.stage0_inputs(features, text)?;
        if self.infer.is_none() {
            let mut hg = graph::build_forward(&self.cfg, &head_shape(&self.shape), false)?;
            let (_, logits, boxes) = hg.outputs.last().cloned().expect("decoder outputs");
            hg.graph.mark_output(logits);
            hg.graph.mark_output(boxes);
            let plan = Plan::new(&hg.graph);
            let ex = Executor::with_params(hg.graph, plan, &self.dev).map_err(|e| e.building("the grounding head's forward graph"))?;
            self.infer = Some(InferGraph { ex, logits, boxes, consts: hg.ctx.consts });
        }
        let ig = self.infer.as_mut().expect("built");
        inputs.extend(ig.consts.iter().cloned());
        let feed: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        ig.ex.run(&feed)?;
        Ok(Predictions { logits: ig.ex.get(ig.logits)?, boxes: ig.ex.get(ig.boxes)? })
    }

    /// Every output (`enc`, `dec0`, ...) of the last training step's forward: `(name, logits, boxes)`.
    pub fn training_outputs(&self) -> &[(String, HostTensor, HostTensor)] {
        &self.last_outputs
    }

    /// The selected token of each query in the last training step, i64 `[B, K]`.
    pub fn training_topk(&self) -> Option<&HostTensor> {
        self.last_topk.as_ref()
    }

    /// The matching of each output in the last training step: per image (query indices, target indices).
    pub fn training_matchings(&self) -> &[(String, Vec<(Vec<usize>, Vec<usize>)>)] {
        &self.last_matchings
    }
}

fn head_shape(s: &GroundingShape) -> HeadShape {
    HeadShape { batch: s.batch, levels: s.levels.clone(), text_tokens: s.text_tokens }
}

/// The parameter names of `cfg` that `store` lacks or holds with another shape, as one error naming them (for
/// checking a loaded head against its config).
pub fn check_params(cfg: &GroundingConfig, store: &ParamStore) -> Result<()> {
    let mut bad = Vec::new();
    let shapes: HashMap<String, Vec<usize>> = param_shapes(cfg)?.into_iter().collect();
    for (name, shape) in &shapes {
        match store.get(name) {
            None => bad.push(format!("{name} missing")),
            Some(t) if &t.shape != shape => bad.push(format!("{name} is {:?}, want {shape:?}", t.shape)),
            _ => {}
        }
    }
    bad.sort();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Other(format!("grounding head parameters do not match the config: {}", bad.join(", "))))
    }
}
