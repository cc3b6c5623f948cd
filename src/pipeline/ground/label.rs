//! `instagen ground label`: a detector's COCO results on generated base images -> grounding labels.
//!
//! Kept: detections with `score >= alpha` whose category is one of the image's prompt categories (InstaGen keeps the
//! prompt's base classes at alpha 0.8). Boxes are clipped to the image; a box left with no area is dropped (and
//! counted). The detections are validated against the dataset first (malformed JSON, unknown image or category
//! ids, non-finite or empty boxes: errors naming the file, the record and the field).
//!
//! The output is a COCO instances file (see `dataset.rs`): the dataset's images with an explicit `categories`
//! field, one annotation per kept box with its `score`, the dataset's categories, and `info` with `image_root` (the
//! dataset folder), the detections file and alpha.

use std::path::{Path, PathBuf};

use super::dataset::{image_record, GroundSet};
use crate::detection::coco::{self, Annotation, Dataset, Policy};
use crate::error::{Error, Result};

/// What `ground label` did.
#[derive(Clone, Debug)]
pub struct LabelReport {
    pub out: PathBuf,
    pub images: usize,
    pub detections: usize,
    pub kept: usize,
    pub below_alpha: usize,
    pub not_in_prompt: usize,
    pub empty_after_clip: usize,
    /// Images with no kept box.
    pub images_without_box: usize,
}

impl std::fmt::Display for LabelReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} detections on {} images: kept {} (dropped {} below alpha, {} not of the prompt's categories, {} empty inside the image)",
            self.detections, self.images, self.kept, self.below_alpha, self.not_in_prompt, self.empty_after_clip
        )?;
        writeln!(f, "{} images have no box (they train the no-object term only)", self.images_without_box)?;
        writeln!(f, "wrote {}", self.out.display())
    }
}

/// Labels `dataset` (a folder with instances.json) from `detections` (COCO results) at `alpha`, written to `out`.
pub fn label(dataset: &Path, detections: &Path, alpha: f32, out: &Path) -> Result<LabelReport> {
    if !(alpha.is_finite() && (0.0..=1.0).contains(&alpha)) {
        return Err(Error::Mismatch { what: "--alpha".into(), msg: format!("{alpha} is not a score in [0, 1]") });
    }
    let set = GroundSet::open_dir(dataset)?;
    let (dets, _) = coco::load_results(detections, &set.coco, Policy::Strict)?;
    let index = set.coco.image_index();
    let mut r = LabelReport {
        out: out.to_path_buf(),
        images: set.images.len(),
        detections: dets.len(),
        kept: 0,
        below_alpha: 0,
        not_in_prompt: 0,
        empty_after_clip: 0,
        images_without_box: 0,
    };
    let mut anns = Vec::new();
    let mut has_box = vec![false; set.images.len()];
    for d in &dets {
        if d.score < alpha as f64 {
            r.below_alpha += 1;
            continue;
        }
        let k = index[&d.image_id];
        let (im, g) = (&set.coco.images[k], &set.images[k]);
        if !g.categories.contains(&d.category_id) {
            r.not_in_prompt += 1;
            continue;
        }
        let [x1, y1, x2, y2] = coco::xywh_to_xyxy(d.bbox);
        let (w, h) = (im.width as f64, im.height as f64);
        let (x1, y1, x2, y2) = (x1.clamp(0.0, w), y1.clamp(0.0, h), x2.clamp(0.0, w), y2.clamp(0.0, h));
        if x2 <= x1 || y2 <= y1 {
            r.empty_after_clip += 1;
            continue;
        }
        let bbox = [x1, y1, x2 - x1, y2 - y1];
        anns.push(Annotation {
            id: anns.len() as u64 + 1,
            image_id: d.image_id,
            category_id: d.category_id,
            bbox,
            area: bbox[2] * bbox[3],
            iscrowd: false,
            segmentation: None,
            score: Some(d.score),
        });
        has_box[k] = true;
    }
    r.kept = anns.len();
    r.images_without_box = has_box.iter().filter(|h| !**h).count();
    let images = set.coco.images.iter().zip(&set.images).map(|(im, g)| image_record(&set, im, g)).collect();
    let root = crate::util::files::canonical(dataset);
    let info = serde_json::json!({
        "description": "grounding labels (instagen ground label)",
        "image_root": root.display().to_string(),
        "detections": crate::util::files::canonical(detections).display().to_string(),
        "alpha": alpha.to_string(),
    });
    let labels = Dataset { info: Some(info), licenses: None, images, annotations: anns, categories: set.coco.categories.clone() };
    if let Some(p) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    labels.save(out)?;
    Ok(r)
}
