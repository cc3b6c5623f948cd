//! `instagen ground infer`: boxes of each image's prompt categories in COCO results format.
//!
//! Per image the text tokens are its prompt categories (restricted to `--categories` when given); the head's last
//! decoder layer scores every (query, token) pair with `sigmoid(logit)`. Post-processing: the `top_k` best pairs,
//! those with score >= `score_thresh`, class-wise NMS at `nms` IoU; boxes go from normalised cxcywh to pixel
//! `[x, y, w, h]` clipped to the image, categories to the dataset's ids. An image none of whose categories is
//! asked for gets no detection.

use std::path::PathBuf;

use super::dataset::{GroundImage, GroundSet};
use super::head::Head;
use super::train::{cxcywh_to_xyxy, nms_per_class, Inputs};

use crate::backend::{Backend, BackendKind};
use crate::detection::coco::{self, Detection};
use crate::error::{Error, Result};
use crate::models::grounding::{GroundingModel, GroundingShape};
use crate::runtime::DeviceParams;
use crate::tensor::DType;

#[derive(Clone, Debug)]
pub struct InferOptions {
    /// A head folder or a run folder with `head/`.
    pub head: PathBuf,
    pub sd: PathBuf,
    pub dataset: PathBuf,
    /// Category names to detect (default: every prompt category).
    pub categories: Option<Vec<String>>,
    pub out: PathBuf,
    pub features_cache: Option<PathBuf>,
    pub batch: usize,
    pub top_k: usize,
    pub score_thresh: f32,
    pub nms: f32,
    pub dtype: DType,
    pub seed: u64,
}

#[derive(Clone, Debug)]
pub struct InferReport {
    pub out: PathBuf,
    pub images: usize,
    pub detections: usize,
}

impl std::fmt::Display for InferReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} detections on {} images\nwrote {}", self.detections, self.images, self.out.display())
    }
}

pub fn run_infer(kind: BackendKind, o: &InferOptions) -> Result<InferReport> {
    crate::with_backend!(kind, |mk| infer_with(mk, o))
}

pub fn infer_with<B: Backend>(mk: impl Fn() -> Result<B>, o: &InferOptions) -> Result<InferReport> {
    if o.batch == 0 || o.top_k == 0 {
        return Err(Error::Mismatch { what: "--batch / --top-k".into(), msg: "must be at least 1".into() });
    }
    if !(o.score_thresh.is_finite() && (0.0..=1.0).contains(&o.score_thresh)) || !(o.nms.is_finite() && o.nms > 0.0 && o.nms <= 1.0) {
        return Err(Error::Mismatch { what: "--score-thresh / --nms".into(), msg: format!("{} / {} must be in [0, 1] / (0, 1]", o.score_thresh, o.nms) });
    }
    let set = GroundSet::open_dir(&o.dataset)?;
    let wanted: Option<Vec<u64>> = match &o.categories {
        Some(v) if v.is_empty() => return Err(Error::Mismatch { what: "--categories".into(), msg: "the list is empty".into() }),
        Some(v) => Some(v.iter().map(|n| set.category_id(n, "--categories")).collect::<Result<_>>()?),
        None => None,
    };
    // Each image's text tokens (dataset category ids).
    let tokens_of = |im: &GroundImage| -> Vec<u64> { im.categories.iter().copied().filter(|c| wanted.as_ref().is_none_or(|w| w.contains(c))).collect() };
    let work: Vec<(&GroundImage, Vec<u64>)> = set.images.iter().map(|im| (im, tokens_of(im))).filter(|(_, t)| !t.is_empty()).collect();
    let head = Head::open(&o.head)?;
    let mut dets = Vec::new();
    if !work.is_empty() {
        let t = work.iter().map(|(_, c)| c.len()).max().unwrap_or(1);
        let b = o.batch.min(work.len());
        let mut inputs = Inputs::open(&mk, &o.sd, &head, o.features_cache.as_deref(), o.dtype, o.seed, t)?;
        let dev = DeviceParams::upload(mk()?, &head.params)?;
        let shape = GroundingShape { batch: b, levels: head.levels.iter().map(|l| [l.shape[0], l.shape[1]]).collect(), text_tokens: t, max_targets: 1 };
        let mut model = GroundingModel::new(&dev, &head.config, &shape, false)?;
        for chunk in work.chunks(b) {
            // The last chunk is padded with its first image (those outputs are dropped).
            let padded: Vec<&(&GroundImage, Vec<u64>)> = (0..b).map(|i| chunk.get(i).unwrap_or(&chunk[0])).collect();
            let imgs: Vec<&GroundImage> = padded.iter().map(|(im, _)| *im).collect();
            let feats = inputs.features.batch(&imgs, DType::F32)?;
            let names: Vec<Vec<String>> = padded.iter().map(|(_, c)| c.iter().map(|&id| set.name(id).to_string()).collect()).collect();
            let text = inputs.text_for(&names)?;
            let p = model.predict(&feats, &text)?;
            let (q, tt) = (p.logits.shape[1], p.logits.shape[2]);
            let logits = p.logits.to_f32();
            let boxes = p.boxes.to_f32();
            let post = PostProcess { top_k: o.top_k, score: o.score_thresh, nms: o.nms };
            for (j, (im, cats)) in chunk.iter().enumerate() {
                for (b, tok, s) in post.image(&logits, &boxes, (q, tt), j, cats.len(), (im.width as f32, im.height as f32))? {
                    dets.push(Detection {
                        image_id: im.id,
                        category_id: cats[tok],
                        bbox: coco::xyxy_to_xywh([b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64]),
                        score: s as f64,
                    });
                }
            }
        }
    }
    if let Some(p) = o.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    coco::save_results(&o.out, &dets)?;
    Ok(InferReport { out: o.out.clone(), images: set.images.len(), detections: dets.len() })
}

/// The head's post-processing of one image (`ground infer` and `generate`): the `top_k` best (query, token) pairs
/// by `sigmoid(logit)` over the image's real tokens, those with score >= `score`, boxes from normalised cxcywh to
/// pixel xyxy clipped to the image, empty ones dropped, class-wise NMS at IoU `nms` (classes = tokens).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PostProcess {
    pub top_k: usize,
    pub score: f32,
    pub nms: f32,
}

impl PostProcess {
    /// Image `j` of a prediction (`logits` `[B, Q, T]`, `boxes` `[B, Q, 4]` as f32 values, `(Q, T)`), whose first
    /// `tokens` text tokens are real, in a `(w, h)` image: `(xyxy, token, score)`, best first.
    pub fn image(&self, logits: &[f32], boxes: &[f32], (q, tt): (usize, usize), j: usize, tokens: usize, (w, h): (f32, f32)) -> Result<Vec<([f32; 4], usize, f32)>> {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::with_capacity(q * tokens);
        for k in 0..q {
            for tok in 0..tokens {
                let s = 1.0 / (1.0 + (-logits[(j * q + k) * tt + tok]).exp());
                pairs.push((s, k, tok));
            }
        }
        let scores: Vec<f32> = pairs.iter().map(|p| p.0).collect();
        let top = crate::boxes::topk_row(&scores, self.top_k.min(pairs.len()));
        let cand: Vec<([f32; 4], usize, f32)> = top
            .iter()
            .map(|&i| pairs[i])
            .filter(|&(s, _, _)| s >= self.score)
            .map(|(s, k, tok)| (cxcywh_to_xyxy(&boxes[(j * q + k) * 4..(j * q + k) * 4 + 4], w, h), tok, s))
            .filter(|(b, _, _)| b[2] > b[0] && b[3] > b[1])
            .collect();
        Ok(nms_per_class(&cand, self.nms)?.into_iter().map(|c| cand[c]).collect())
    }
}

/// A comma list of names for the CLI (`None` for an absent flag; `Some(empty)` for an empty list).
pub fn split_names(s: Option<&str>) -> Option<Vec<String>> {
    s.map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect())
}
