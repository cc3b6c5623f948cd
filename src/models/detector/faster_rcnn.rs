//! The Faster R-CNN assembly: transform -> backbone + FPN -> RPN -> RoI heads -> boxes in the original image, as
//! torchvision's `GeneralizedRCNN` in eval mode.
//!
//! One graph per (batch, padded height, padded width), built on first use and cached with its executor
//! (static shapes). Stage 0 runs the backbone and the RPN head; the host decodes proposals
//! (`rpn::proposals`) and feeds them as the RoIs of stage 1 (the box head: `post_nms_top_n_test` rows per
//! image, unused rows zero); the host then decodes detections (`roi_heads::postprocess`) and scales them
//! back to each image's original size (`transform::postprocess_boxes`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::backbone::{self, BackboneConfig, STRIDES};
use super::roi_heads::{self, box_head, rois_input, rois_tensor, BoxHead, Detections, RoiHeadsConfig};
use super::rpn::{self, rpn_head, RpnConfig, RpnHead};
use super::transform::{postprocess_boxes, ImageBatch, TransformConfig};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::params::ParamStore;
use crate::runtime::Executor;
use crate::tensor::DType;

/// The graph input holding the padded `[B, Hp, Wp, 3]` batch.
pub const IMAGES: &str = "images";

/// The whole detector; the defaults are torchvision's `fasterrcnn_resnet50_fpn`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FasterRcnnConfig {
    pub backbone: BackboneConfig,
    pub rpn: RpnConfig,
    pub roi_heads: RoiHeadsConfig,
    pub transform: TransformConfig,
}

impl FasterRcnnConfig {
    pub fn validate(&self) -> Result<()> {
        self.backbone.validate()?;
        self.rpn.validate()?;
        self.roi_heads.validate()?;
        self.transform.validate()
    }
}

/// The eval graph of one input shape.
pub struct EvalGraph {
    pub g: Graph,
    pub rpn: RpnHead,
    pub boxes: BoxHead,
    /// RoI rows per image (`post_nms_top_n_test`).
    pub rows: usize,
    pub batch: usize,
    pub padded: (usize, usize),
}

/// Builds the eval graph for `batch` images padded to `padded` (h, w).
pub fn build_eval_graph(cfg: &FasterRcnnConfig, batch: usize, padded: (usize, usize)) -> Result<EvalGraph> {
    build_eval_graph_as(cfg, batch, padded, DType::F32)
}

/// [`build_eval_graph`] with parameters and activations stored as `dtype` (the f32 images are cast once; the
/// heads' outputs come back in f32).
pub fn build_eval_graph_as(cfg: &FasterRcnnConfig, batch: usize, padded: (usize, usize), dtype: DType) -> Result<EvalGraph> {
    let mut g = Graph::new();
    let mut x = g.input(IMAGES, &[batch, padded.0, padded.1, 3], DType::F32)?;
    if dtype != DType::F32 {
        x = g.cast(x, dtype)?;
    }
    let feats = backbone::build_backbone(&mut g, &cfg.backbone, x)?;
    let rpn = rpn_head(&mut g, &cfg.rpn, &feats.levels)?;
    g.mark_stage_output(rpn.objectness);
    g.mark_stage_output(rpn.deltas);
    let rows = cfg.rpn.post_nms_top_n_test;
    let rois = rois_input(&mut g, batch * rows, 1)?;
    let boxes = box_head(&mut g, &cfg.roi_heads, &feats.levels[..4], &STRIDES[..4], rois)?;
    g.mark_output(boxes.class_logits);
    g.mark_output(boxes.box_regression);
    Ok(EvalGraph { g, rpn, boxes, rows, batch, padded })
}

/// Inference with cached graphs.
pub struct FasterRcnn<B: Backend> {
    pub cfg: FasterRcnnConfig,
    store: ParamStore,
    /// Makes a backend for each new graph (`with_backend!`'s constructor).
    backend: Box<dyn Fn() -> Result<B>>,
    cache: HashMap<(usize, usize, usize), (EvalGraph, Executor<B>)>,
    /// Storage dtype of the graphs (the parameters must have it).
    dtype: DType,
}

impl<B: Backend> FasterRcnn<B> {
    pub fn new(cfg: FasterRcnnConfig, store: ParamStore, backend: impl Fn() -> Result<B> + 'static) -> Result<Self> {
        cfg.validate()?;
        Ok(FasterRcnn { cfg, store, backend: Box::new(backend), cache: HashMap::new(), dtype: DType::F32 })
    }

    /// Graphs stored as `dtype` (f16 / bf16 on a GPU); the parameters given to `new` must have that dtype.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self.cache.clear();
        self
    }

    /// The parameters (for saving).
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// Detections of a transformed batch, boxes in each image's original coordinates.
    pub fn detect(&mut self, batch: &ImageBatch) -> Result<Vec<Detections>> {
        let shape = &batch.tensor.shape;
        if shape.len() != 4 || shape[3] != 3 {
            return Err(Error::Other(format!("faster rcnn: images must be [B, H, W, 3], got {shape:?}")));
        }
        let key = (shape[0], shape[1], shape[2]);
        if !self.cache.contains_key(&key) {
            let eg = build_eval_graph_as(&self.cfg, key.0, (key.1, key.2), self.dtype)?;
            let ex = Executor::new((self.backend)()?, eg.g.clone(), &self.store)?;
            self.cache.insert(key, (eg, ex));
        }
        let (eg, ex) = self.cache.get_mut(&key).expect("inserted");
        ex.run_stage(0, &[(IMAGES, &batch.tensor)])?;
        let obj = ex.get(eg.rpn.objectness)?.to_f32();
        let del = ex.get(eg.rpn.deltas)?.to_f32();
        let anchors = eg.rpn.anchors(&self.cfg.rpn, eg.padded)?;
        let props = rpn::proposals(&self.cfg.rpn, false, &anchors, &obj, &del, &batch.image_sizes)?;
        let rois = rois_tensor(&props, eg.rows)?;
        ex.run_stage(1, &[(roi_heads::ROI_ROIS, &rois)])?;
        let logits = ex.get(eg.boxes.class_logits)?.to_f32();
        let reg = ex.get(eg.boxes.box_regression)?.to_f32();
        let mut dets = roi_heads::postprocess(&self.cfg.roi_heads, &logits, &reg, &props, eg.rows, &batch.image_sizes)?;
        for (d, (size, orig)) in dets.iter_mut().zip(batch.image_sizes.iter().zip(&batch.original_sizes)) {
            postprocess_boxes(&mut d.boxes, *size, *orig);
        }
        Ok(dets)
    }

    /// Transforms `[h, w, 3]` images in [0, 1] (eval short side) and detects.
    pub fn detect_images(&mut self, images: &[(&[f32], usize, usize)]) -> Result<Vec<Detections>> {
        let t = &self.cfg.transform;
        let prepared = images.iter().map(|(rgb, h, w)| t.prepare(rgb, *h, *w, t.eval_min_size())).collect::<Result<Vec<_>>>()?;
        let batch = t.batch(&prepared)?;
        self.detect(&batch)
    }
}
