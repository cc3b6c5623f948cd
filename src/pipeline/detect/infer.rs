//! `instagen detect infer` / `instagen detect eval`: a detector's weights (torchvision's
//! `fasterrcnn_*_fpn` key names, safetensors) on the images of a COCO file, written as COCO results; eval
//! adds the evaluator (and the OV-COCO split).
//!
//! The model's shape comes from the weights: depth from the `backbone.body.layer*` blocks (a `conv3` means
//! bottlenecks), the FPN width, the MLP width and the class count from their tensors. Labels: a classifier of
//! 91 logits is torchvision's COCO index (label = category id); otherwise `--labels FILE` (a JSON list of
//! category ids, index = label, entry 0 background) must say which category each label is. Images are run one at
//! a time (each its own padded size, cached graphs). An image that is missing or does not decode is an error
//! naming it; with `lenient` it is skipped and listed in the report. A `model.json` beside the weights (what
//! `detect train` writes) gives the settings the weights do not carry: anchors, proposal counts, detections per
//! image and the transform (`--min-size` / `--max-size` override its sizes); its shape must agree with the weights'.

use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::detection::coco::{self, Dataset, Detection, LoadOptions, Policy};
use crate::detection::eval::{evaluate, EvalParams};
use crate::pipeline::eval::SplitSpec;
use crate::error::{Error, Result};
use crate::models::detector::backbone::BackboneConfig;
use crate::models::detector::faster_rcnn::{build_eval_graph, FasterRcnn, FasterRcnnConfig};
use crate::models::detector::roi_heads::RoiHeadsConfig;
use crate::pipeline::detect::train::MODEL_JSON;
use crate::models::detector::weights::{self, Layout};
use crate::models::weights::WeightFile;

#[derive(Clone, Debug)]
pub struct InferOptions {
    pub weights: PathBuf,
    /// Label index -> category id; `None`: torchvision's 91-entry COCO index.
    pub labels: Option<PathBuf>,
    pub data: PathBuf,
    pub images: PathBuf,
    pub out: PathBuf,
    pub score_thresh: f32,
    /// Short side / longest side in inference; `None`: the saved model's (`model.json`), else 800 / 1333.
    pub min_size: Option<usize>,
    pub max_size: Option<usize>,
    pub caffe_stride: bool,
    pub lenient: bool,
}

/// The detector config a torchvision-layout weight file implies.
pub fn config_from_weights(file: &WeightFile) -> Result<FasterRcnnConfig> {
    let p = file.path().display();
    let shape = |k: &str| -> Result<Vec<usize>> {
        file.shape(k).map(|s| s.to_vec()).ok_or_else(|| Error::Other(format!("{p}: no key '{k}' (not a torchvision Faster R-CNN state dict?)")))
    };
    let blocks = |layer: usize| file.keys().filter_map(|k| k.strip_prefix(&format!("backbone.body.layer{layer}.")).and_then(|r| r.split('.').next()?.parse::<usize>().ok())).max().map_or(0, |m| m + 1);
    let bottleneck = file.shape("backbone.body.layer1.0.conv3.weight").is_some();
    let depth = match (bottleneck, blocks(3)) {
        (false, 2) => 18,
        (false, 6) => 34,
        (true, 6) => 50,
        (true, 23) => 101,
        (b, n) => return Err(Error::Other(format!("{p}: layer3 has {n} {} blocks: not ResNet-18/34/50/101", if b { "bottleneck" } else { "basic" }))),
    };
    let fpn = shape("backbone.fpn.inner_blocks.0.0.weight")?;
    let cls = shape("roi_heads.box_predictor.cls_score.weight")?;
    let fc7 = shape("roi_heads.box_head.fc7.weight")?;
    Ok(FasterRcnnConfig {
        backbone: BackboneConfig { depth, out_channels: fpn[0], ..Default::default() },
        roi_heads: RoiHeadsConfig { num_classes: cls[0], representation_size: fc7[0], ..Default::default() },
        ..Default::default()
    })
}

/// The config `detect train` saved next to `weights` (`model.json` in its folder), checked against the shape
/// the weights imply (`from_weights`); `None` when there is none (torchvision's settings then).
pub fn saved_config(weights: &Path, from_weights: &FasterRcnnConfig) -> Result<Option<FasterRcnnConfig>> {
    let path = weights.with_file_name(MODEL_JSON);
    if !path.is_file() {
        return Ok(None);
    }
    let text = crate::util::files::read_text(&path, Some(1 << 20)).map_err(|e| Error::io(&path, e))?;
    let cfg: FasterRcnnConfig = crate::util::json::from_object(&text).map_err(|m| Error::Other(format!("{}: {m}", path.display())))?;
    let (a, b) = (from_weights, &cfg);
    for (what, saved, implied) in [
        ("backbone.depth", b.backbone.depth, a.backbone.depth),
        ("backbone.out_channels", b.backbone.out_channels, a.backbone.out_channels),
        ("roi_heads.num_classes", b.roi_heads.num_classes, a.roi_heads.num_classes),
        ("roi_heads.representation_size", b.roi_heads.representation_size, a.roi_heads.representation_size),
    ] {
        if saved != implied {
            return Err(Error::Other(format!("{}: {what} is {saved} but the weights {} have {implied}", path.display(), weights.display())));
        }
    }
    cfg.validate().map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    Ok(Some(cfg))
}

/// Label index -> category id.
fn label_ids(opts: &InferOptions, num_classes: usize) -> Result<Vec<u64>> {
    match &opts.labels {
        None if num_classes == 91 => Ok((0..91).collect()),
        None => Err(Error::Other(format!(
            "{}: {num_classes} classes is not torchvision's 91-entry COCO index: give --labels (a JSON list of category ids, index = label)",
            opts.weights.display()
        ))),
        Some(path) => {
            let text = crate::util::files::read_text(path, Some(1 << 20)).map_err(|e| Error::io(path, e))?;
            let ids: Vec<u64> = serde_json::from_str(&text).map_err(|e| Error::Other(format!("{}: {}", path.display(), crate::util::json::describe(text.as_bytes(), &e))))?;
            if ids.len() != num_classes {
                return Err(Error::Other(format!("{}: {} labels for a classifier of {num_classes} logits", path.display(), ids.len())));
            }
            Ok(ids)
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct InferReport {
    pub images: usize,
    pub detections: usize,
    /// (image file, reason) of each image skipped in lenient mode.
    pub skipped: Vec<(PathBuf, String)>,
    pub seconds: f64,
}

/// Runs the detector on every image of `opts.data` and writes the COCO results to `opts.out`.
pub fn infer<B: Backend>(opts: &InferOptions, backend: impl Fn() -> Result<B> + 'static) -> Result<(InferReport, Dataset, Vec<Detection>)> {
    if !(0.0..=1.0).contains(&opts.score_thresh) {
        return Err(Error::Mismatch { what: "--score-thresh".into(), msg: format!("{} is not a score in [0, 1]", opts.score_thresh) });
    }
    let file = WeightFile::open(&opts.weights)?;
    let mut cfg = config_from_weights(&file)?;
    if let Some(saved) = saved_config(&opts.weights, &cfg)? {
        cfg = saved;
    }
    cfg.backbone.caffe_stride |= opts.caffe_stride;
    cfg.roi_heads.score_thresh = opts.score_thresh;
    if let Some(m) = opts.min_size {
        cfg.transform.min_size = vec![m];
    }
    if let Some(m) = opts.max_size {
        cfg.transform.max_size = m;
    }
    cfg.validate()?;
    let ids = label_ids(opts, cfg.roi_heads.num_classes)?;
    // Load by the graph's names (missing / unexpected / wrong-shape keys listed in one error).
    let probe = build_eval_graph(&cfg, 1, (64, 64))?;
    let store = weights::load_from(&file, &probe.g, Layout::Detector)?;
    drop(probe);
    let policy = if opts.lenient { Policy::Lenient } else { Policy::Strict };
    let (ds, _) = Dataset::load(&opts.data, &LoadOptions { policy, ..Default::default() })?;
    let known: std::collections::HashSet<u64> = ds.categories.iter().map(|c| c.id).collect();
    let mut model = FasterRcnn::new(cfg, store, backend)?;
    let t0 = std::time::Instant::now();
    let mut dets = Vec::new();
    let mut skipped = Vec::new();
    let mut done = 0;
    for im in &ds.images {
        let path = ds.image_path(&opts.images, im);
        let rgb = match coco::read_image(&path) {
            Ok(r) => r,
            Err(e) if opts.lenient => {
                skipped.push((path.clone(), e.to_string()));
                continue;
            }
            Err(e) => return Err(Error::Other(format!("image {} of {}: {e}", im.id, opts.data.display()))),
        };
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let pixels: Vec<f32> = rgb.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
        let d = model.detect_images(&[(&pixels, h, w)])?.remove(0);
        for ((b, s), l) in d.boxes.iter().zip(&d.scores).zip(&d.labels) {
            let cat = ids[*l as usize];
            if !known.contains(&cat) {
                continue; // a class the evaluated file does not have (e.g. the 11 unused COCO ids)
            }
            let bb = coco::xyxy_to_xywh([b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64]);
            dets.push(Detection { image_id: im.id, category_id: cat, bbox: bb, score: *s as f64 });
        }
        done += 1;
    }
    coco::save_results(&opts.out, &dets)?;
    let report = InferReport { images: done, detections: dets.len(), skipped, seconds: t0.elapsed().as_secs_f64() };
    Ok((report, ds, dets))
}

/// `instagen detect eval`: [`infer`], then the evaluator; returns the printable summary.
pub fn eval<B: Backend>(opts: &InferOptions, split: Option<&str>, backend: impl Fn() -> Result<B> + 'static) -> Result<String> {
    // The split is read and resolved against the ground truth before the slow inference.
    let split = match split {
        None => None,
        Some(s) => {
            let spec = SplitSpec::parse(s)?;
            let policy = if opts.lenient { Policy::Lenient } else { Policy::Strict };
            let (gt, _) = Dataset::load(&opts.data, &LoadOptions { policy, ..Default::default() })?;
            Some(spec.resolve(&gt)?)
        }
    };
    let (rep, ds, dets) = infer(opts, backend)?;
    let r = evaluate(&ds, &dets, &EvalParams::default());
    let mut out = summary(&rep, &opts.out);
    out.push_str(&r.summary_lines());
    if let Some(s) = split {
        out.push_str(&r.split_report(&s).line());
    }
    Ok(out)
}

/// The lines `detect infer` prints.
pub fn summary(rep: &InferReport, out: &Path) -> String {
    let mut s = format!("{} images, {} detections in {:.1} s -> {}\n", rep.images, rep.detections, rep.seconds, out.display());
    for (p, why) in &rep.skipped {
        s.push_str(&format!("skipped {}: {why}\n", p.display()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saved_config_is_read_back_and_checked_against_the_weights() {
        let d = std::env::temp_dir().join(format!("instagen_saved_cfg_{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let weights = d.join("model.safetensors");
        let mut saved = FasterRcnnConfig::default();
        saved.backbone.depth = 18;
        saved.backbone.out_channels = 64;
        saved.roi_heads.num_classes = 9;
        saved.roi_heads.representation_size = 256;
        saved.roi_heads.detections_per_img = 20;
        saved.rpn.anchor_sizes = vec![vec![16.0], vec![32.0], vec![64.0], vec![128.0], vec![256.0]];
        saved.rpn.post_nms_top_n_test = 100;
        saved.transform.min_size = vec![128];
        saved.transform.max_size = 128;
        // What the weights imply: the shapes only, torchvision's defaults elsewhere.
        let mut implied = FasterRcnnConfig::default();
        implied.backbone.depth = 18;
        implied.backbone.out_channels = 64;
        implied.roi_heads.num_classes = 9;
        implied.roi_heads.representation_size = 256;
        assert_eq!(saved_config(&weights, &implied).unwrap(), None, "no model.json: torchvision's settings");
        std::fs::write(d.join(MODEL_JSON), serde_json::to_string(&saved).unwrap()).unwrap();
        assert_eq!(saved_config(&weights, &implied).unwrap(), Some(saved.clone()));
        implied.roi_heads.representation_size = 1024;
        let e = saved_config(&weights, &implied).unwrap_err().to_string();
        assert!(e.contains("model.json") && e.contains("roi_heads.representation_size is 256") && e.contains("1024"), "{e}");
        std::fs::write(d.join(MODEL_JSON), r#"{"rpn": {"anchor_size": [[1]]}}"#).unwrap();
        let e = saved_config(&weights, &implied).unwrap_err().to_string();
        assert!(e.contains("model.json") && e.contains("anchor_size"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }
}
